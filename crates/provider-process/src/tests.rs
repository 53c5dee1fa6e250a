//! The conformance suite against the process provider, plus what only a
//! process can show: the JIT config arrives in the environment and not on
//! the command line; nothing else of hangar's environment does; work
//! directories and logs are private; runners outlive a forgotten provider
//! value and are still listed (orphans after a crash).

use std::time::Duration;

use hangar_provider::{InstanceState, Provider, conformance};

use super::{INHERITED, ProcessConfig, ProcessProvider};

fn provider(root: &std::path::Path, script: &str) -> ProcessProvider {
    let config = ProcessConfig {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        work_root: None,
        env: Default::default(),
    };
    ProcessProvider::new(config, root)
}

#[tokio::test]
async fn long_running_runners_pass_the_conformance_suite() {
    let root = tempfile::tempdir().expect("tempdir");
    let p = provider(root.path(), "sleep 30");
    conformance::check(&p, conformance::Options::default()).await;
    assert!(p.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn exiting_runners_pass_the_conformance_suite() {
    let root = tempfile::tempdir().expect("tempdir");
    let p = provider(root.path(), "exit 3");
    let options = conformance::Options { runner_exits_within: Some(Duration::from_secs(10)) };
    conformance::check(&p, options).await;
}

#[tokio::test]
async fn jit_config_is_in_the_environment_and_not_on_the_command_line() {
    let root = tempfile::tempdir().expect("tempdir");
    let script =
        "printf %s \"$ACTIONS_RUNNER_INPUT_JITCONFIG\" > jit; cat /proc/$$/cmdline > cmdline";
    let p = provider(root.path(), script);
    let spec = conformance::spec("env");
    p.launch(&spec).await.expect("launch");
    let dir = root.path().join(spec.runner_id.as_str());
    let jit =
        hangar_test_harness::wait_for("runner wrote its files", Duration::from_secs(10), || {
            let dir = dir.clone();
            async move {
                let exit = tokio::fs::read_to_string(dir.join("exit_code")).await.ok()?;
                assert_eq!(exit, "0");
                tokio::fs::read_to_string(dir.join("jit")).await.ok()
            }
        })
        .await;
    assert_eq!(jit, "jit-secret-env");
    let cmdline = tokio::fs::read(dir.join("cmdline")).await.expect("cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains("jit-secret"));
    let listed = p.list().await.expect("list");
    assert_eq!(listed[0].state, InstanceState::Exited { code: Some(0) });
    p.destroy(&spec.runner_id).await.expect("destroy");
    assert!(!dir.exists());
}

/// A real child prints its whole environment: it holds the JIT config,
/// its id, `HOME` (its work directory), the pool's `env` and what
/// [`INHERITED`] lets through, and none of the test process's own
/// variables (which stand in for hangar's secrets; `hangar/tests/
/// isolation.rs` checks the same with canary secrets given to `hangar
/// serve`). The directory is 0700 and the log 0600.
#[tokio::test]
async fn a_runner_inherits_nothing_of_hangars_environment_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let ours: Vec<String> = std::env::vars()
        .map(|(name, _)| name)
        .filter(|n| !INHERITED.contains(&n.as_str()))
        .collect();
    assert!(ours.iter().any(|n| n.starts_with("CARGO")), "cargo sets CARGO_* for tests: {ours:?}");
    let root = tempfile::tempdir().expect("tempdir");
    let config = ProcessConfig {
        command: "/usr/bin/env".into(),
        args: vec!["-0".into()],
        work_root: None,
        env: [("POOL_PROXY".to_owned(), "http://proxy:3128".to_owned())].into(),
    };
    let work_root = root.path().join("runners");
    let p = ProcessProvider::new(config, &work_root);
    let spec = conformance::spec("clean-env");
    p.launch(&spec).await.expect("launch");
    let dir = work_root.join(spec.runner_id.as_str());
    let log = hangar_test_harness::wait_for("the runner exited", Duration::from_secs(10), || {
        let dir = dir.clone();
        async move {
            tokio::fs::read_to_string(dir.join("exit_code")).await.ok()?;
            tokio::fs::read_to_string(dir.join("runner.log")).await.ok()
        }
    })
    .await;
    let env: std::collections::BTreeMap<&str, &str> =
        log.split('\0').filter(|l| !l.is_empty()).filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env.get("ACTIONS_RUNNER_INPUT_JITCONFIG"), Some(&"jit-secret-clean-env"));
    assert_eq!(env.get("HANGAR_RUNNER_ID"), Some(&spec.runner_id.as_str()));
    assert_eq!(env.get("HOME").map(std::path::Path::new), Some(dir.as_path()));
    assert_eq!(env.get("POOL_PROXY"), Some(&"http://proxy:3128"));
    assert!(env.contains_key("PATH"), "{env:?}");
    assert_eq!(env.get("HANGAR_CONFORMANCE"), Some(&"1"), "the spec's env");
    let given = [
        "ACTIONS_RUNNER_INPUT_JITCONFIG",
        "HANGAR_RUNNER_ID",
        "HOME",
        "POOL_PROXY",
        "HANGAR_CONFORMANCE",
    ];
    let unexpected: Vec<&&str> =
        env.keys().filter(|n| !given.contains(n) && !INHERITED.contains(n)).collect();
    assert!(unexpected.is_empty(), "inherited from the parent: {unexpected:?}");
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    };
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("runner.log")), 0o600);
    assert_eq!(mode(&work_root), 0o700, "the work root is created private too");
    p.destroy(&spec.runner_id).await.expect("destroy");
}

#[tokio::test]
async fn a_new_provider_value_finds_and_destroys_runners_of_the_old_one() {
    let root = tempfile::tempdir().expect("tempdir");
    let first = provider(root.path(), "sleep 30");
    let spec = conformance::spec("orphan");
    first.launch(&spec).await.expect("launch");
    drop(first);
    // A restarted hangar builds a new provider value over the same directory.
    let second = provider(root.path(), "sleep 30");
    let listed = second.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, InstanceState::Running);
    second.destroy(&spec.runner_id).await.expect("destroy");
    assert!(second.list().await.expect("list").is_empty());
}

#[test]
fn settings_are_checked() {
    let config: ProcessConfig =
        toml::from_str("command = 'run.sh'\nargs = ['--once']").expect("valid");
    let p = ProcessProvider::new(config, std::path::Path::new("/tmp/x"));
    assert_eq!(p.config.args, vec!["--once".to_owned()]);
    let err = toml::from_str::<ProcessConfig>("comand = 'run.sh'").expect_err("typo");
    assert!(err.to_string().contains("comand"), "{err}");
}

/// The reaping task writes `exit_code` when a killed child is reaped; it
/// used to race the removal of the directory (ENOTEMPTY) and could land in
/// the directory of a relaunch, reporting a fresh runner as exited.
#[tokio::test]
async fn destroy_right_after_launch_never_races_the_reaper() {
    let root = tempfile::tempdir().expect("tempdir");
    let p = provider(root.path(), "sleep 30");
    let spec = conformance::spec("race");
    for round in 0..50 {
        p.launch(&spec).await.expect("launch");
        p.destroy(&spec.runner_id).await.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        let relaunched = p.launch(&spec).await.expect("relaunch");
        assert_eq!(relaunched.state, InstanceState::Running);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let listed = p.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, InstanceState::Running, "round {round}: a stale exit code");
        p.destroy(&spec.runner_id).await.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
    }
    assert!(p.list().await.expect("list").is_empty());
}

/// A runner that exits 0 is reported `Running` until its exit code is
/// known, never `Exited { code: None }`: between the child's exit and the
/// reaper's write the pid is a zombie or gone and no `exit_code` exists
/// yet, and the scheduler takes an unknown exit for a crash.
#[tokio::test]
async fn a_clean_exit_is_never_reported_as_unknown() {
    let root = tempfile::tempdir().expect("tempdir");
    let p = provider(root.path(), "exit 0");
    for round in 0..30 {
        let spec = conformance::spec(&format!("exit{round}"));
        p.launch(&spec).await.expect("launch");
        // Polled without pause: the window is a few milliseconds wide.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let code = loop {
            assert!(tokio::time::Instant::now() < deadline, "round {round}: never exited");
            if let InstanceState::Exited { code } = p.list().await.expect("list")[0].state {
                break code;
            }
        };
        assert_eq!(code, Some(0), "round {round}");
        p.destroy(&spec.runner_id).await.expect("destroy");
    }
}
