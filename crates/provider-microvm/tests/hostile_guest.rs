//! A hostile guest against the provider's side of its channels, with a fake
//! VMM: `spawn` starts a stand-in process (so the provider has a real child
//! to wait for and kill) and a thread that does what a guest with root
//! could do through QEMU, on the very sockets QEMU would connect to the
//! guest agent's port and the serial console. The host side under test is
//! the real provider.

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_provider::{InstanceState, Provider, RunnerSpec};
use hangar_provider_microvm::vmm::{VmPlan, Vmm, VmmError};
use hangar_provider_microvm::{GUEST_LOG_BURST, MAX_AGENT_LINE, MicrovmConfig, MicrovmProvider};
use hangar_test_harness::wait_for;
use hangar_types::{Labels, PoolName, RunnerId, Secret};

type Guest = dyn Fn(&VmPlan) -> u64 + Send + Sync;

/// The fake VMM: `guest` runs on a thread per VM and returns how many bytes
/// it got through; the totals arrive on `done`.
struct FakeVmm {
    guest: Arc<Guest>,
    done: std::sync::mpsc::SyncSender<u64>,
}

impl std::fmt::Debug for FakeVmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeVmm")
    }
}

#[async_trait::async_trait]
impl Vmm for FakeVmm {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn spawn(&self, plan: &VmPlan) -> Result<tokio::process::Child, VmmError> {
        std::fs::write(&plan.vmm_log, b"")
            .map_err(|source| VmmError::Log { path: plan.vmm_log.clone(), source })?;
        // Runs until killed, with the VM dir on its command line (the
        // provider recognises its VMM processes by it).
        let child = tokio::process::Command::new("tail")
            .arg("-f")
            .arg(&plan.vmm_log)
            .process_group(0)
            .spawn()
            .map_err(|source| VmmError::Spawn { program: "tail".into(), source })?;
        let (guest, done, plan) = (Arc::clone(&self.guest), self.done.clone(), plan.clone());
        std::thread::spawn(move || {
            let _ = done.send(guest(&plan));
        });
        Ok(child)
    }

    async fn quit(&self, _: &VmPlan) -> Result<(), VmmError> {
        Err(VmmError::Timeout)
    }

    async fn snapshot_save(&self, _: &VmPlan, _: &Path) -> Result<(), VmmError> {
        Err(VmmError::Timeout)
    }
}

fn pool() -> PoolName {
    PoolName("hostile".into())
}

fn spec() -> RunnerSpec {
    RunnerSpec {
        runner_id: RunnerId::new(&pool(), rand::random()),
        pool: pool(),
        labels: Labels::default(),
        jit_config: Secret::new("jit".to_owned()),
        env: Vec::new(),
    }
}

/// A provider over the fake VMM, or `None` (said loudly) without qemu-img,
/// which makes every VM's overlay.
async fn provider(
    dir: &Path,
    guest: Arc<Guest>,
) -> Option<(MicrovmProvider, std::sync::mpsc::Receiver<u64>, MicrovmConfig)> {
    if hangar_exec::find("qemu-img").is_none() {
        eprintln!("SKIPPED: qemu-img is not installed (Debian package qemu-utils)");
        return None;
    }
    let rootfs = dir.join("rootfs.raw");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    let state = dir.join("vms");
    let config = MicrovmConfig::new(dir.join("vmlinux"), rootfs, state);
    let (done_tx, done) = std::sync::mpsc::sync_channel(4);
    let vmm = Arc::new(FakeVmm { guest, done: done_tx });
    let provider = MicrovmProvider::with_vmm(pool(), config.clone(), vmm).await.unwrap();
    Some((provider, done, config))
}

/// The provider listens on its sockets before it spawns the VMM.
fn connect(path: &Path) -> UnixStream {
    UnixStream::connect(path).unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()))
}

/// Writes `total` bytes of `byte` (after `head`) until done or the host
/// hangs up; returns the bytes written.
fn flood(stream: &mut UnixStream, head: &[u8], byte: u8, total: u64) -> u64 {
    let mut written = 0;
    if stream.write_all(head).is_err() {
        return 0;
    }
    let chunk = vec![byte; 1 << 20];
    while written < total {
        let n = chunk.len().min(usize::try_from(total - written).unwrap());
        if stream.write_all(&chunk[..n]).is_err() {
            break;
        }
        written += n as u64;
    }
    written
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const GIB: u64 = 1 << 30;

async fn instance_state(
    provider: &MicrovmProvider,
    id: &RunnerId,
) -> Option<(InstanceState, String)> {
    let listed = provider.list().await.unwrap();
    listed.into_iter().find(|i| &i.runner_id == id).map(|i| (i.state, i.detail))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_sending_an_endless_agent_line_is_killed_and_hangar_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let guest: Arc<Guest> = Arc::new(|plan: &VmPlan| {
        let _console = connect(&plan.console_socket);
        let mut agent = connect(&plan.agent_socket);
        // A valid start, then 1 GiB without a newline.
        flood(
            &mut agent,
            br#"{"type":"ready"}
{"type":"error","message":""#,
            b'A',
            GIB,
        )
    });
    let Some((provider, done, _)) = provider(dir.path(), guest).await else { return };
    let before = rss_kib();
    let spec = spec();
    provider.launch(&spec).await.unwrap();
    let written = tokio::task::spawn_blocking(move || done.recv().unwrap()).await.unwrap();
    let grew_kib = rss_kib().saturating_sub(before);
    assert!(written < GIB, "the host hung up before the guest got 1 GiB through ({written})");
    let (state, detail) =
        wait_for("the vm to be reported gone", Duration::from_secs(30), || async {
            instance_state(&provider, &spec.runner_id)
                .await
                .filter(|(state, _)| matches!(state, InstanceState::Exited { .. }))
        })
        .await;
    assert_eq!(state, InstanceState::Exited { code: None });
    assert!(
        detail.contains(&format!(
            "killed by hangar: the guest agent sent a line longer than {MAX_AGENT_LINE} bytes"
        )),
        "{detail}"
    );
    assert!(grew_kib < 10 * 1024, "hangar grew by {grew_kib} KiB");
    provider.destroy(&spec.runner_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_flooding_the_console_stays_under_the_disk_cap() {
    let dir = tempfile::tempdir().unwrap();
    let guest: Arc<Guest> = Arc::new(|plan: &VmPlan| {
        let mut console = connect(&plan.console_socket);
        let mut agent = connect(&plan.agent_socket);
        agent.write_all(b"{\"type\":\"ready\"}\n").unwrap();
        let n = flood(&mut console, b"", b'Z', GIB);
        let _ = console.write_all(b"\nEND-OF-FLOOD\n");
        n
    });
    let Some((provider, done, config)) = provider(dir.path(), guest).await else { return };
    let cap = config.console_log_max_bytes;
    let before = rss_kib();
    let spec = spec();
    provider.launch(&spec).await.unwrap();
    let log = provider.console_log(&spec.runner_id).unwrap();
    let vm_dir = log.parent().unwrap().to_owned();
    let on_disk = |dir: &PathBuf| -> u64 {
        ["console.log", "console.log.1"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    };
    let sampler = {
        let (dir, max) = (vm_dir.clone(), Arc::new(Mutex::new(0u64)));
        let seen = Arc::clone(&max);
        let task = tokio::spawn(async move {
            loop {
                let now = on_disk(&dir);
                {
                    let mut m = seen.lock().unwrap();
                    *m = (*m).max(now);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        (task, max)
    };
    let written = tokio::task::spawn_blocking(move || done.recv().unwrap()).await.unwrap();
    assert_eq!(written, GIB, "the console took the whole flood (it is not the agent channel)");
    wait_for("the end of the flood in console.log", Duration::from_secs(60), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("END-OF-FLOOD").then_some(())
    })
    .await;
    sampler.0.abort();
    let peak = *sampler.1.lock().unwrap();
    assert!(peak <= cap, "the console used {peak} bytes on disk, over the cap of {cap}");
    assert!(on_disk(&vm_dir) <= cap);
    assert!(vm_dir.join("console.log.1").exists(), "the log rotated");
    let grew_kib = rss_kib().saturating_sub(before);
    assert!(grew_kib < 10 * 1024, "hangar grew by {grew_kib} KiB");
    let (state, _) = instance_state(&provider, &spec.runner_id).await.unwrap();
    assert!(
        !matches!(state, InstanceState::Exited { .. }),
        "console output alone is no reason to kill"
    );
    provider.destroy(&spec.runner_id).await.unwrap();
}

/// Captured log output (the subscriber is this test's thread's default,
/// and the current-thread runtime runs the supervisor on it).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn guest_errors_are_logged_escaped_and_rate_limited() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    const LINES: usize = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let guest: Arc<Guest> = Arc::new(|plan: &VmPlan| {
        let _console = connect(&plan.console_socket);
        let mut agent = std::io::BufWriter::new(connect(&plan.agent_socket));
        agent.write_all(b"{\"type\":\"ready\"}\n").unwrap();
        // Each tries to forge a log line and clear the operator's terminal.
        let forged = br#"{"type":"error","message":"oops\n2026-01-01T00:00:00Z ERROR hangar: FORGED \u001b[2J"}"#;
        let mut n = 0;
        for _ in 0..LINES {
            if agent.write_all(forged).and_then(|()| agent.write_all(b"\n")).is_err() {
                break;
            }
            n += 1;
        }
        agent.write_all(b"not json \x1b[2J\n").unwrap();
        agent.flush().unwrap();
        n
    });
    let Some((provider, done, _)) = provider(dir.path(), guest).await else { return };
    let spec = spec();
    provider.launch(&spec).await.unwrap();
    let sent = wait_for("the guest to send its lines", Duration::from_secs(300), || {
        let got = done.try_recv().ok();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            got
        }
    })
    .await;
    assert_eq!(sent, LINES as u64);
    wait_for("the flood to be read", Duration::from_secs(300), || async {
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        text.contains("left out of the log").then_some(())
    })
    .await;
    provider.destroy(&spec.runner_id).await.unwrap();
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let logged = text.lines().filter(|l| l.contains("guest agent error")).count();
    assert!(
        logged <= GUEST_LOG_BURST as usize && logged > 0,
        "{logged} guest lines logged in well under a minute"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("2026-01-01")),
        "a guest forged a log line:\n{text}"
    );
    assert!(!text.contains('\u{1b}'), "a terminal escape reached the log");
    assert!(text.contains(r"oops\n2026-01-01T00:00:00Z ERROR hangar: FORGED \u{1b}[2J"), "{text}");
    assert!(text.contains("left out of the log"), "{text}");
}
