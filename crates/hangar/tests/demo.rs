//! `hangar demo --jobs N` is a contract for scripts: exit 0 only when all N
//! jobs completed and nothing is left. Runs the real binary.

use std::process::Command;

/// With no `--runner`, as the README runs it: the demo's runners are the
/// binary's own `standin-runner` subcommand, so nothing else needs building.
#[test]
fn demo_completes_a_burst_and_exits_zero() {
    let output = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["demo", "--jobs", "6", "--job-ms", "50", "--timeout", "120"])
        .output()
        .expect("hangar runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("6 of 6 jobs completed"), "{stdout}");
    assert!(stdout.contains("OK: every job completed and nothing is left."), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.trim_start().starts_with("100000")).count(),
        6,
        "{stdout}"
    );
}

#[test]
fn demo_exits_non_zero_when_jobs_do_not_complete() {
    // A "runner" that exits at once never runs a job.
    let output = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["demo", "--jobs", "2", "--timeout", "3", "--runner", "/bin/true"])
        .output()
        .expect("hangar runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not every job completed"));
}
