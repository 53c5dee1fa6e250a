//! The microVM provider against real QEMU (TCG on our machines): the
//! provider contract, isolation, failures and the pre-booted pool.
//!
//! The image is the lean test image `cargo xtask test` builds
//! (`HANGAR_TEST_MICROVM_*`); its runner is `hangar-test-runner`, which
//! prints its uid and a hash of the JIT config it was given, runs the shell
//! snippet in the spec's `HANGAR_TEST_SCRIPT` and exits with its status.
//! The guest's serial console (the VM's console log) is where the tests
//! read what happened inside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_provider::{InstanceState, Provider, RunnerSpec};
use hangar_provider_microvm::{MicrovmConfig, MicrovmProvider, NetworkConfig};
use hangar_test_harness::{require_env, wait_for};
use hangar_types::{Labels, PoolName, RunnerId, Secret};
use sha2::Digest as _;

const BOOT: Duration = Duration::from_secs(180);

struct Env {
    kernel: PathBuf,
    rootfs: PathBuf,
    qemu: PathBuf,
}

fn env() -> Option<Env> {
    let what = "microVM provider tests (real QEMU)";
    Some(Env {
        kernel: require_env("HANGAR_TEST_MICROVM_KERNEL", what)?.into(),
        rootfs: require_env("HANGAR_TEST_MICROVM_ROOTFS", what)?.into(),
        qemu: require_env("HANGAR_TEST_QEMU", what)?.into(),
    })
}

/// Kills every VM under a state dir when a test ends, also when it fails
/// half-way (a failed assertion must not leave QEMU running on CI).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for dir in dir_entries(&self.0) {
            let pid = std::fs::read_to_string(self.0.join(&dir).join("pid")).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&dir) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn config(env: &Env, state: &Path) -> MicrovmConfig {
    let mut c = MicrovmConfig::new(env.kernel.clone(), env.rootfs.clone(), state.to_owned());
    c.qemu = env.qemu.clone();
    c.vcpus = 1;
    c.memory_mib = 512;
    c.boot_timeout = Duration::from_secs(150);
    c
}

fn pool() -> PoolName {
    PoolName("mvm".into())
}

fn spec(script: &str) -> RunnerSpec {
    RunnerSpec {
        runner_id: RunnerId::new(&pool(), rand::random()),
        pool: pool(),
        labels: Labels::default(),
        jit_config: Secret::new(format!("jit-secret-{:016x}", rand::random::<u64>())),
        env: vec![("HANGAR_TEST_SCRIPT".into(), script.into())],
    }
}

async fn state_of(provider: &MicrovmProvider, id: &RunnerId) -> Option<InstanceState> {
    provider.list().await.unwrap().into_iter().find(|i| &i.runner_id == id).map(|i| i.state)
}

async fn exit_code(provider: &MicrovmProvider, id: &RunnerId) -> Option<i32> {
    wait_for("the runner to exit", BOOT, || async {
        match state_of(provider, id).await {
            Some(InstanceState::Exited { code }) => Some(code),
            _ => None,
        }
    })
    .await
}

fn console(provider: &MicrovmProvider, id: &RunnerId) -> String {
    let path = provider.console_log(id).expect("a console log");
    std::fs::read_to_string(path).unwrap_or_default()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The nftables table name the provider uses for a pool's state dir.
fn table_of(state: &Path) -> String {
    let hash = hex::encode(sha2::Sha256::digest(state.as_os_str().as_encoded_bytes()));
    format!("hangar_{}", &hash[..8])
}

/// The prefix of the tap names of a pool's VMs.
fn tap_prefix_of(state: &Path) -> String {
    let hash = hex::encode(sha2::Sha256::digest(state.as_os_str().as_encoded_bytes()));
    format!("hg{}", &hash[..4])
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}

/// Hashes with coreutils: the test profile's unoptimised sha2 needs a
/// minute for the image.
fn sha256_file(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_runs_unprivileged_with_its_jit_config_and_destroy_leaves_nothing() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let provider = MicrovmProvider::new(pool(), config(&env, state.path())).await.unwrap();
    assert!(provider.health().await.ok, "{:?}", provider.health().await);
    let spec = spec("cat /proc/cmdline; echo job-ran; exit 7");

    let first = provider.launch(&spec).await.unwrap();
    let pid = provider.vm_pid(&spec.runner_id).expect("a qemu pid");
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let again = provider.launch(&spec).await.unwrap();
    assert_eq!(first.detail, again.detail, "launch is idempotent by runner id");
    assert_eq!(provider.list().await.unwrap().len(), 1);
    let vm_dirs = dir_entries(state.path());
    assert_eq!(vm_dirs.len(), 1, "one vm directory");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.path().join(&vm_dirs[0])).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "only hangar's user may reach the agent socket");

    assert_eq!(exit_code(&provider, &spec.runner_id).await, Some(7));
    let out = console(&provider, &spec.runner_id);
    let jit = spec.jit_config.expose();
    let jit_sha = hex::encode(sha2::Sha256::digest(jit.as_bytes()));
    assert!(out.contains(&format!("uid=1000 runner_id={}", spec.runner_id)), "{out}");
    assert!(
        out.contains(&format!("jit_sha256={jit_sha}")),
        "the runner got the JIT config:\n{out}"
    );
    assert!(
        out.contains("init=/usr/local/sbin/hangar-guest-agent"),
        "the guest printed its cmdline:\n{out}"
    );
    assert!(out.contains("job-ran") && out.contains("hangar-test-runner: exit=7"), "{out}");
    assert!(
        !out.contains(jit),
        "the JIT config is not on the guest kernel command line or console"
    );
    assert!(!String::from_utf8_lossy(&argv).contains(jit), "the JIT config is not in QEMU's argv");

    provider.destroy(&spec.runner_id).await.unwrap();
    assert!(!process_alive(pid), "qemu is gone");
    assert_eq!(dir_entries(state.path()), Vec::<String>::new(), "destroy leaves nothing");
    assert!(provider.list().await.unwrap().is_empty());
    provider.destroy(&spec.runner_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_writes_never_reach_the_base_image_or_another_vm() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let before = sha256_file(&env.rootfs);
    let provider = MicrovmProvider::new(pool(), config(&env, state.path())).await.unwrap();
    let marker = format!("marker-{:016x}", rand::random::<u64>());

    // The runner writes its home and tries the raw disk (it is not root).
    let writer = spec(&format!(
        "echo data > /home/runner/{marker} && sync && \
         if head -c1 /dev/vda >/dev/null 2>&1; then echo raw-disk-readable; exit 9; fi"
    ));
    provider.launch(&writer).await.unwrap();
    assert_eq!(
        exit_code(&provider, &writer.runner_id).await,
        Some(0),
        "{}",
        console(&provider, &writer.runner_id)
    );
    provider.destroy(&writer.runner_id).await.unwrap();

    let reader = spec(&format!("test ! -e /home/runner/{marker}"));
    provider.launch(&reader).await.unwrap();
    assert_eq!(
        exit_code(&provider, &reader.runner_id).await,
        Some(0),
        "the next vm does not see the write"
    );
    provider.destroy(&reader.runner_id).await.unwrap();
    assert_eq!(sha256_file(&env.rootfs), before, "the base image is never written");
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_without_network_cannot_reach_host_loopback_services() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let provider = MicrovmProvider::new(pool(), config(&env, state.path())).await.unwrap();
    // slirp's default gateway (10.0.2.2 = host loopback), the guest's own
    // loopback (a different kernel's), and the host's address from the
    // guest's point of view if it had one.
    let spec = spec(&format!(
        "for a in 10.0.2.2 127.0.0.1 172.29.0.1; do \
           if timeout 3 bash -c \"echo hi > /dev/tcp/$a/{port}\" 2>/dev/null; then echo reached-$a; exit 1; fi; \
         done; ls /sys/class/net"
    ));
    provider.launch(&spec).await.unwrap();
    let code = exit_code(&provider, &spec.runner_id).await;
    let out = console(&provider, &spec.runner_id);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("eth0"), "no network device: {out}");
    assert!(listener.accept().is_err(), "nothing connected to the host's loopback service");
    provider.destroy(&spec.runner_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_vm_cannot_reach_the_host_itself() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let mut config = config(&env, state.path());
    config.network = NetworkConfig::Nat {
        // A range no test machine uses; nothing is sent beyond the host:
        // the only destination tried is the host's own end of the tap.
        subnet: "172.29.0.0/16".into(),
        uplink: None,
        dns: "127.0.0.1".into(),
        allow: Vec::new(),
    };
    let provider = MicrovmProvider::new(pool(), config).await.unwrap();
    // The host end of the tap is the guest's gateway. A port nobody listens
    // on answers "refused" at once unless the firewall drops the packet, in
    // which case the connect times out (rc 124).
    let spec = spec(
        "gw=$(ip route | awk '/default/ {print $3}'); echo gateway=$gw; \
         timeout 3 bash -c \"echo > /dev/tcp/$gw/9\" 2>/dev/null; echo connect-rc=$?",
    );
    provider.launch(&spec).await.unwrap();
    assert_eq!(exit_code(&provider, &spec.runner_id).await, Some(0));
    let out = console(&provider, &spec.runner_id);
    assert!(out.contains("gateway=172.29."), "eth0 is configured: {out}");
    assert!(out.contains("connect-rc=124"), "the host drops packets from VMs: {out}");
    let taps = || -> Vec<String> {
        let prefix = tap_prefix_of(state.path());
        dir_entries(Path::new("/sys/class/net"))
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    };
    assert_eq!(taps().len(), 1, "the vm has its tap");
    provider.destroy(&spec.runner_id).await.unwrap();
    // Other tests' pools have taps too: only this pool's prefix counts.
    assert_eq!(taps(), Vec::<String>::new(), "destroy removed the tap");
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
    provider.shutdown().await;
    let tables = std::process::Command::new("nft").args(["list", "tables"]).output().unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(
        !tables.contains(&table_of(state.path())),
        "shutdown removed the pool's firewall: {tables}"
    );
}

/// The guest floods its serial console: what reaches the disk stays under
/// the pool's cap, and the newest output is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_flood_stays_under_the_cap() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let mut c = config(&env, state.path());
    c.console_log_max_bytes = 64 * 1024;
    let provider = MicrovmProvider::new(pool(), c).await.unwrap();
    // 512 KiB of console output (slow under TCG: the UART is emulated).
    let spec = spec("head -c 524288 /dev/zero | tr '\\0' x; echo; echo flood-done");
    provider.launch(&spec).await.unwrap();
    assert_eq!(exit_code(&provider, &spec.runner_id).await, Some(0));
    let log = provider.console_log(&spec.runner_id).unwrap();
    let dir = log.parent().unwrap().to_owned();
    wait_for("the end of the flood in the console log", BOOT, || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("flood-done").then_some(())
    })
    .await;
    let on_disk: u64 = ["console.log", "console.log.1"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(on_disk <= 64 * 1024, "{on_disk} bytes of console on disk");
    assert!(dir.join("console.log.1").exists(), "it rotated");
    provider.destroy(&spec.runner_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_failing_to_start_leaks_nothing() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let mut missing_binary = config(&env, state.path());
    missing_binary.qemu = PathBuf::from("/nonexistent/qemu-system-x86_64");
    let provider = MicrovmProvider::new(pool(), missing_binary).await.unwrap();
    assert!(!provider.health().await.ok);
    let spec1 = spec("true");
    assert!(provider.launch(&spec1).await.is_err());
    assert_eq!(dir_entries(state.path()), Vec::<String>::new(), "a failed launch cleans up");
    assert!(provider.list().await.unwrap().is_empty());

    let mut bad_kernel = config(&env, state.path());
    bad_kernel.kernel = state.path().join("no-such-vmlinux");
    let provider = MicrovmProvider::new(pool(), bad_kernel).await.unwrap();
    let spec2 = spec("true");
    provider.launch(&spec2).await.unwrap();
    assert_eq!(
        exit_code(&provider, &spec2.runner_id).await,
        None,
        "qemu exited: the runner is reported gone"
    );
    provider.destroy(&spec2.runner_id).await.unwrap();
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_reports_ready_is_killed_at_the_boot_timeout() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let mut c = config(&env, state.path());
    c.boot_timeout = Duration::from_secs(1);
    // A guest that never runs: QEMU started paused (`-S`) and never resumed.
    // (A short timeout alone is a race: a TCG boot now takes under 1 s.)
    let bin = tempfile::tempdir().unwrap();
    let frozen_qemu = bin.path().join("qemu-paused");
    std::fs::write(&frozen_qemu, format!("#!/bin/sh\nexec {} \"$@\" -S\n", c.qemu.display()))
        .unwrap();
    let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&frozen_qemu, executable).unwrap();
    c.qemu = frozen_qemu;
    let provider = MicrovmProvider::new(pool(), c).await.unwrap();
    let spec = spec("true");
    provider.launch(&spec).await.unwrap();
    let pid = provider.vm_pid(&spec.runner_id).unwrap();
    assert_eq!(exit_code(&provider, &spec.runner_id).await, None);
    assert!(!process_alive(pid));
    provider.destroy(&spec.runner_id).await.unwrap();
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_dying_mid_job_is_reported_and_leaks_nothing() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let provider = MicrovmProvider::new(pool(), config(&env, state.path())).await.unwrap();
    let spec = spec("sleep 600");
    provider.launch(&spec).await.unwrap();
    wait_for("the runner to start", BOOT, || async {
        (state_of(&provider, &spec.runner_id).await == Some(InstanceState::Running)).then_some(())
    })
    .await;
    let pid = provider.vm_pid(&spec.runner_id).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.try_into().unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(exit_code(&provider, &spec.runner_id).await, None);
    provider.destroy(&spec.runner_id).await.unwrap();
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_list_reports_forgotten_vms_and_destroy_reaps_them() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let mut hot = config(&env, state.path());
    hot.min_hot = 1;
    let before = MicrovmProvider::new(pool(), hot).await.unwrap();
    let spec = spec("sleep 600");
    before.launch(&spec).await.unwrap();
    wait_for("the runner to start and a hot vm to be idle", BOOT, || async {
        (state_of(&before, &spec.runner_id).await == Some(InstanceState::Running)
            && before.hot_idle() == 1)
            .then_some(())
    })
    .await;
    let runner_pid = before.vm_pid(&spec.runner_id).unwrap();
    let hot_pid = before.hot_pids()[0];
    drop(before); // hangar "crashes": its VMs keep running

    let after = MicrovmProvider::new(pool(), config(&env, state.path())).await.unwrap();
    wait_for("the old process's idle pre-booted vm to be reaped", BOOT, || async {
        (!process_alive(hot_pid)).then_some(())
    })
    .await;
    let listed = after.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].runner_id, spec.runner_id);
    assert_eq!(listed[0].state, InstanceState::Running);
    assert!(listed[0].detail.starts_with("orphan"), "{}", listed[0].detail);
    after.destroy(&spec.runner_id).await.unwrap();
    wait_for("the orphan's qemu to end", BOOT, || async {
        (!process_alive(runner_pid)).then_some(())
    })
    .await;
    assert!(after.list().await.unwrap().is_empty());
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prebooted_vm_takes_the_runner_spec_and_the_pool_refills() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let mut c = config(&env, state.path());
    c.min_hot = 1;
    let provider = MicrovmProvider::new(pool(), c).await.unwrap();
    wait_for("a pre-booted vm", BOOT, || async { (provider.hot_idle() == 1).then_some(()) }).await;
    let spec = spec("echo prebooted-ran");
    provider.launch(&spec).await.unwrap();
    let t = provider.timings(&spec.runner_id).unwrap();
    assert!(t.ready.unwrap() <= t.start_sent.unwrap(), "the vm was ready before the spec came");
    assert_eq!(exit_code(&provider, &spec.runner_id).await, Some(0));
    assert!(console(&provider, &spec.runner_id).contains("prebooted-ran"));
    wait_for("the pool to refill", BOOT, || async { (provider.hot_idle() == 1).then_some(()) })
        .await;
    provider.destroy(&spec.runner_id).await.unwrap();
    provider.shutdown().await;
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_vm_snapshot_restores_to_a_ready_agent() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let snap = tempfile::tempdir().unwrap();
    let provider = MicrovmProvider::new(pool(), config(&env, state.path())).await.unwrap();
    let snapshot = match provider.snapshot_create(snap.path()).await {
        Ok(s) => s,
        Err(e) => panic!("snapshot: {:?}", anyhow_chain(&e)),
    };
    assert!(snapshot.state.exists() && snapshot.disk.exists());
    assert_eq!(dir_entries(state.path()), Vec::<String>::new(), "the snapshotted vm is gone");
    for _ in 0..2 {
        if let Err(e) = provider.snapshot_restore_ready(&snapshot).await {
            panic!("restore: {:?}", anyhow_chain(&e));
        }
    }
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
}

fn anyhow_chain(e: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prebooted_vms_restored_from_a_snapshot_run_runners() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let mut c = config(&env, state.path());
    c.min_hot = 1;
    c.prebooted_restore = true;
    let provider = MicrovmProvider::new(pool(), c).await.unwrap();
    for round in 0..2 {
        wait_for("a restored idle vm", BOOT, || async { (provider.hot_idle() == 1).then_some(()) })
            .await;
        let spec = spec(&format!("echo restored-ran-{round}; date +%s"));
        provider.launch(&spec).await.unwrap();
        assert_eq!(exit_code(&provider, &spec.runner_id).await, Some(0));
        let out = console(&provider, &spec.runner_id);
        assert!(out.contains(&format!("restored-ran-{round}")), "{out}");
        let host_now = chrono::Utc::now().timestamp();
        let guest_now: i64 = out
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("the guest printed its clock: {out}"));
        assert!(
            (host_now - guest_now).abs() < 60,
            "the restored guest's clock was set from the host: {out}"
        );
        provider.destroy(&spec.runner_id).await.unwrap();
    }
    provider.shutdown().await;
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
}

/// The one provider conformance suite, against real VMs. The test image's
/// runner exits at once when it is given no script, so exits are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_conformance_suite_passes() {
    let Some(env) = env() else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let provider = MicrovmProvider::new(pool(), config(&env, state.path())).await.unwrap();
    let options = hangar_provider::conformance::Options { runner_exits_within: Some(BOOT) };
    hangar_provider::conformance::check(&provider, options).await;
    assert_eq!(dir_entries(state.path()), Vec::<String>::new(), "nothing is left");
    provider.shutdown().await;
}

/// `hangar image build`'s fallback kernel: Debian's stock cloud kernel with
/// the initramfs that loads its virtio modules, booting the same root
/// filesystem to a ready agent that runs a runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_debian_kernel_boots_the_image_to_a_ready_agent() {
    let Some(env) = env() else { return };
    let what = "the stock-kernel fallback test (cargo xtask prepare fetches the kernel)";
    let Some(kernel) = require_env("HANGAR_TEST_MICROVM_STOCK_KERNEL", what) else { return };
    let Some(initrd) = require_env("HANGAR_TEST_MICROVM_STOCK_INITRD", what) else { return };
    let state = tempfile::tempdir().unwrap();
    let _reaper = Reaper(state.path().to_owned());
    let mut c = config(&env, state.path());
    c.kernel = kernel.into();
    c.initrd = Some(initrd.into());
    let provider = MicrovmProvider::new(pool(), c).await.unwrap();
    let spec = spec("uname -r; echo stock-kernel-ran");
    provider.launch(&spec).await.unwrap();
    let code = exit_code(&provider, &spec.runner_id).await;
    let out = console(&provider, &spec.runner_id);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("cloud-amd64") && out.contains("stock-kernel-ran"), "{out}");
    let t = provider.timings(&spec.runner_id).unwrap();
    assert!(t.ready.is_some(), "the agent reported ready");
    provider.destroy(&spec.runner_id).await.unwrap();
    assert_eq!(dir_entries(state.path()), Vec::<String>::new());
}

/// Records what a build says.
#[derive(Debug, Default)]
struct Said(Vec<String>);

impl hangar_provider_microvm::image::Progress for Said {
    fn step(&mut self, _: usize, _: usize, message: &str) {
        self.0.push(message.to_owned());
    }
    fn done(&mut self, message: &str) {
        self.0.push(message.to_owned());
    }
}

/// Without Debian's kernel source, `hangar image build` takes the stock
/// kernel (the one `cargo xtask prepare` cached) and says so.
#[test]
fn without_kernel_source_the_build_falls_back_to_the_stock_kernel_and_says_so() {
    let what = "the stock-kernel fallback test (cargo xtask prepare fetches the kernel)";
    let Some(kernel) = require_env("HANGAR_TEST_MICROVM_STOCK_KERNEL", what) else { return };
    let kernel = PathBuf::from(kernel);
    // <cache>/kernels/stock-<package>-<hash>/vmlinuz
    let cache = kernel.ancestors().nth(3).expect("the cache dir").to_owned();
    let mut said = Said::default();
    let fragments = [hangar_provider_microvm::image::KERNEL_FRAGMENTS[0]];
    let (got, initrd) =
        hangar_provider_microvm::image::kernel_or_stock(&cache, None, &fragments, &mut said)
            .unwrap();
    assert_eq!(got, kernel);
    assert!(initrd.is_some_and(|i| i.exists()));
    let said = said.0.join("\n");
    assert!(said.contains("FALLING BACK to Debian's stock cloud kernel"), "{said}");
    assert!(said.contains("no Debian kernel source"), "{said}");
}
