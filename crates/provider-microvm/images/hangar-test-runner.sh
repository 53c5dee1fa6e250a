#!/bin/sh
# hangar-test-runner: the test image's stand-in for the Actions runner's
# `run.sh --jitconfig CONFIG`. Prints what the tests check (who runs it, a
# hash of the JIT config it got, never the config itself), runs the shell
# snippet in $HANGAR_TEST_SCRIPT from the runner spec's env, and exits with
# its status, like a runner that ran one job.
if [ "$1" != "--jitconfig" ] || [ -z "$2" ]; then
    echo "usage: $0 --jitconfig CONFIG" >&2
    exit 64
fi
# A JIT config from the GitHub simulator (base64 of a JSON map of runner
# files, `.runner` among them, as GitHub's are) goes to the simulator's
# stand-in runner, when the image has it: it connects to the simulator,
# runs one job and exits like run.sh.
standin=/usr/local/bin/hangar-standin-runner
if [ -x "$standin" ] && printf %s "$2" | base64 -d 2>/dev/null | grep -q '"\.runner"'; then
    echo "hangar-test-runner: handing the JIT config to $standin"
    exec "$standin" --jitconfig "$2"
fi
jit_sha=$(printf %s "$2" | sha256sum | cut -d' ' -f1)
echo "hangar-test-runner: uid=$(id -u) runner_id=$HANGAR_RUNNER_ID jit_sha256=$jit_sha"
sh -c "${HANGAR_TEST_SCRIPT:-true}"
status=$?
echo "hangar-test-runner: exit=$status"
exit $status
