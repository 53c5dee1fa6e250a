//! End to end with real microVMs: the GitHub simulator queues a job and
//! sends its webhook to a running `hangar serve` (the real binary) with a
//! microVM pool; hangar mints a JIT config and boots a VM; the simulator's
//! stand-in runner inside the VM takes the job over the network and
//! completes it; the VM powers off and hangar removes everything it made
//! (QEMU process, VM directory with overlay and sockets, tap), and on
//! shutdown the pool's firewall table.
//!
//! The network is arranged the way production needs it: a VM may reach no
//! host service and no private address unless the pool's `allow` list names
//! it. So the simulator ("GitHub") runs in a network namespace this test
//! makes, bound to its end of a veth pair (a private /30 in 10.231.0.0/16),
//! and the pool allows exactly that address. hangar talks to the simulator
//! through the veth too, and the simulator delivers webhooks to hangar on
//! the host end. Needs root, QEMU and the test image (`cargo xtask
//! prepare`), like the provider's own tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hangar_simulator::netns::Netns;
use hangar_simulator::{JobSpec, SimConfig, SimJobStatus, Simulator};
use hangar_test_harness::{require_env, wait_for};
use sha2::Digest as _;

/// TCG boots take seconds, more when other tests boot VMs at once.
const SLOW: Duration = Duration::from_secs(300);

struct Env {
    kernel: PathBuf,
    rootfs: PathBuf,
    qemu: PathBuf,
}

fn env() -> Option<Env> {
    let what = "the microVM end-to-end test (real QEMU, root for netns/tap/nftables)";
    Some(Env {
        kernel: require_env("HANGAR_TEST_MICROVM_KERNEL", what)?.into(),
        rootfs: require_env("HANGAR_TEST_MICROVM_ROOTFS", what)?.into(),
        qemu: require_env("HANGAR_TEST_QEMU", what)?.into(),
    })
}

/// Names the provider derives from a pool's state dir.
fn pool_names(state: &Path) -> (String, String) {
    let hash = hex::encode(sha2::Sha256::digest(state.as_os_str().as_encoded_bytes()));
    (format!("hg{}", &hash[..4]), format!("hangar_{}", &hash[..8]))
}

fn taps_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn nft_tables() -> String {
    let out = Command::new("nft").args(["list", "tables"]).output().expect("nft runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vm_dirs(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vm-")))
                .collect()
        })
        .unwrap_or_default()
}

fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}

/// Whatever a failed run leaves: hangar, the pool's VMs, taps and table.
/// On a failure it first prints hangar's log and the VMs' consoles.
struct Cleanup {
    hangar: Option<Child>,
    state: PathBuf,
    log: PathBuf,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- hangar log (tail) ---\n{}", tail(&self.log, 80));
            for dir in vm_dirs(&self.state) {
                let console = dir.join("console.log");
                eprintln!("--- {} ---\n{}", console.display(), tail(&console, 60));
            }
        }
        if let Some(child) = &mut self.hangar {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in vm_dirs(&self.state) {
            let pid = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let dir = dir.to_string_lossy().into_owned();
                if String::from_utf8_lossy(&cmdline).contains(&dir) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let (prefix, table) = pool_names(&self.state);
        for tap in taps_with(&prefix) {
            let _ = Command::new("ip").args(["link", "del", &tap]).output();
        }
        if nft_tables().contains(&table) {
            let _ = Command::new("nft").args(["delete", "table", "inet", &table]).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_job_runs_in_a_microvm_and_everything_it_made_is_gone() {
    let Some(env) = env() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // Short: unix socket paths inside it must fit 107 bytes.
    let state = dir.path().join("vms");
    let netns = Netns::create("hangar-e2e").expect("network namespace");
    let sim = Simulator::start_with_listener(
        SimConfig { long_poll: Duration::from_secs(2), ..SimConfig::default() },
        netns.listen().expect("a socket in the namespace"),
    )
    .await
    .expect("simulator");
    assert_eq!(sim.addr().ip(), netns.ns_ip);
    let forward_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();

    let config = dir.path().join("hangar.toml");
    std::fs::write(
        &config,
        format!(
            r#"{github}

[[pools]]
name = "mvm-e2e"
labels = ["linux", "microvm"]
max_runners = 1
idle_timeout = "300s"
[pools.provider.microvm]
kernel = "{kernel}"
rootfs = "{rootfs}"
qemu = "{qemu}"
state_dir = "{state}"
vcpus = 1
memory_mib = 512
boot_timeout = "200s"
network = {{ mode = "nat", subnet = "172.30.0.0/16", dns = "127.0.0.1", allow = ["{sim_ip}/32"] }}
"#,
            github = sim.hangar_toml(
                "reconcile_interval = \"500ms\"\ngithub_sync_interval = \"2s\"\npickup_deadline = \"280s\""
            ),
            kernel = env.kernel.display(),
            rootfs = env.rootfs.display(),
            qemu = env.qemu.display(),
            state = state.display(),
            sim_ip = netns.ns_ip,
        ),
    )
    .expect("config written");
    let log = dir.path().join("hangar.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args([
            "serve",
            "--listen",
            &format!("{}:0", netns.host_ip),
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("hangar starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut cleanup = Cleanup { hangar: Some(child), state: state.clone(), log: log.clone() };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("first line");
    let hangar_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let url = line
        .trim()
        .strip_prefix("hangar listening on ")
        .unwrap_or_else(|| panic!("no listening line: {line:?}\n{}", hangar_log()))
        .to_owned();
    sim.webhook_url_set(Some(format!("{url}/webhook")));

    let job = sim.job_queue(
        JobSpec::new("octo-org/app", ["self-hosted", "linux", "microvm"])
            .duration(Duration::from_millis(500)),
    );

    // The VM hangar boots for it, and what it made on the host.
    let (vm_dir, pid) = wait_for("a microVM for the job", SLOW, || async {
        let dir = vm_dirs(&state).into_iter().next()?;
        let pid = std::fs::read_to_string(dir.join("pid")).ok()?.trim().parse::<i32>().ok()?;
        Some((dir, pid))
    })
    .await;
    let (tap_prefix, table) = pool_names(&state);
    assert_eq!(taps_with(&tap_prefix).len(), 1, "the vm has a tap");
    assert!(nft_tables().contains(&table), "the pool has its firewall table");
    let runner_name = wait_for("the vm to be assigned its runner", SLOW, || async {
        std::fs::read_to_string(vm_dir.join("runner")).ok()
    })
    .await;

    let done = wait_for("the job to complete", SLOW, || async {
        sim.job(job).filter(|j| j.status == SimJobStatus::Completed)
    })
    .await;
    assert_eq!(done.conclusion.as_deref(), Some("success"));
    assert_eq!(
        done.runner_name.as_deref(),
        Some(runner_name.trim()),
        "the runner in the vm ran the job\n{}",
        hangar_log()
    );

    wait_for("the vm and everything it made to be gone", SLOW, || async {
        (!process_alive(pid)
            && !vm_dir.exists()
            && vm_dirs(&state).is_empty()
            && taps_with(&tap_prefix).is_empty()
            && sim.counters().registrations_alive == 0)
            .then_some(())
    })
    .await;

    // A graceful stop removes the pool's firewall table, and turns
    // forwarding off again if hangar had turned it on.
    let mut child = cleanup.hangar.take().expect("hangar");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = wait_for("hangar to stop", Duration::from_secs(60), || {
        let exited = child.try_wait().expect("wait");
        async move { exited }
    })
    .await;
    assert!(status.success(), "{status}\n{}", hangar_log());
    assert!(!nft_tables().contains(&table), "the firewall table is gone:\n{}", nft_tables());
    if forward_before.trim() == "0" && !nft_tables().contains("hangar_") {
        let after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        assert_eq!(after.trim(), "0", "ip_forward is restored");
    }
    drop(cleanup);
}
