//! The microVM provider: every runner gets a fresh QEMU `microvm` with its
//! own kernel and a copy-on-write disk over an immutable base image.
//!
//! # Shape
//!
//! - One [`MicrovmProvider`] per pool (the [`Provider`] contract). Its VMs
//!   live in directories `state_dir/vm-<hex>/` holding everything made for
//!   the VM: the qcow2 overlay, the agent and QMP sockets, the console log,
//!   the QEMU pid and (once assigned) the runner id. The directory is the
//!   record: after a restart, [`Provider::list`] still reports VMs this
//!   process never launched, and `destroy` reaps them.
//! - The VMM sits behind [`vmm::Vmm`]; QEMU is the one implementation.
//! - One supervisor task per VM owns the QEMU child process and the host end
//!   of the guest agent channel (a virtio-serial port QEMU connects to a
//!   unix socket we listen on, see `hangar-guest-agent`). It drives the VM
//!   through [`VmState`].
//! - Pre-booted pool: `min_hot` VMs boot with no runner and wait idle; a
//!   launch takes one and only has to send the spec. A refill task keeps the
//!   count; boots at once are capped (boot is CPU-bound).
//!
//! # VM states (transitions only go down, or to `Gone` from anywhere)
//!
//! ```text
//!   Booting ──(agent: ready)──► Idle ──(host: start)──► Assigned
//!     ──(agent: runner_started)──► RunnerRunning ──(agent: runner_exited)──► RunnerExited
//!   any ──(QEMU process ended)──► Gone
//! ```
//!
//! Secrets: the JIT config goes only into the `start` message on the agent
//! channel; never on the kernel command line, QEMU's argv, the disk or logs.
//!
//! # The guest is not trusted
//!
//! A job runs as root in its guest, so everything the guest sends is
//! bounded before it costs the host anything:
//!
//! - agent lines: at most [`MAX_AGENT_LINE`] bytes; a longer one kills the
//!   VM, with the reason in its instance detail and the log;
//! - guest text (agent `error` messages, malformed lines) is logged escaped
//!   (`escape_debug`, no newlines or escape sequences), truncated, and at
//!   most [`GUEST_LOG_BURST`] lines per VM per minute (then one line
//!   counting what was left out);
//! - the serial console comes over a socket (not a file QEMU writes) and
//!   hangar keeps at most `console_log_max_bytes` of it on disk,
//!   `console.log` plus one rotation `console.log.1`.

pub mod accel;
pub mod bench;
pub mod config;
pub mod image;
pub mod initramfs;
mod net;
pub mod qmp;
pub mod vmm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hangar_guest_agent::{GuestMessage, HostMessage};
use hangar_provider::{Health, Instance, InstanceState, Provider, ProviderError, RunnerSpec};
use hangar_types::{ErrorChain, PoolName, RunnerId, Timestamp};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

pub use crate::accel::{Accel, AccelChoice};
pub use crate::config::{MicrovmConfig, MicrovmSettings, NetworkConfig, VmPaths};
use crate::vmm::{Qemu, VmPlan, Vmm};

/// Where one VM is; see the module docs for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Booting,
    Idle,
    Assigned,
    RunnerRunning,
    RunnerExited {
        code: Option<i32>,
    },
    /// The VM process ended; `code` is the runner's when it had exited.
    Gone {
        code: Option<i32>,
    },
}

impl VmState {
    fn instance_state(self) -> InstanceState {
        match self {
            VmState::Booting | VmState::Idle | VmState::Assigned => InstanceState::Starting,
            VmState::RunnerRunning => InstanceState::Running,
            VmState::RunnerExited { code } | VmState::Gone { code } => {
                InstanceState::Exited { code }
            }
        }
    }
}

/// When things happened to a VM (for `hangar bench microvm`).
#[derive(Debug, Clone, Copy, Default)]
pub struct VmTimings {
    pub spawned: Option<Instant>,
    pub ready: Option<Instant>,
    pub start_sent: Option<Instant>,
    pub runner_started: Option<Instant>,
    pub runner_exited: Option<Instant>,
}

/// The files of one VM directory.
const RUNNER_FILE: &str = "runner";
const PID_FILE: &str = "pid";
const OVERLAY_FILE: &str = "overlay.qcow2";
const AGENT_SOCKET: &str = "agent.sock";
const QMP_SOCKET: &str = "qmp.sock";
const CONSOLE_LOG: &str = "console.log";
/// The older half of the console once `console.log` rotated.
const CONSOLE_LOG_OLD: &str = "console.log.1";
const CONSOLE_SOCKET: &str = "console.sock";
const VMM_LOG: &str = "vmm.log";
/// Under the state dir: the pool's idle-VM snapshot.
const SNAPSHOT_DIR: &str = "snapshot";
/// Unix socket paths must fit `sun_path` (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The longest agent line accepted (the agent's are well under 1 KiB).
pub const MAX_AGENT_LINE: usize = 64 * 1024;
/// Guest text lines logged per VM per minute, at most.
pub const GUEST_LOG_BURST: u32 = 20;
/// Guest text is cut to this many characters before it is logged.
const GUEST_TEXT_MAX: usize = 512;
/// How long a `qemu-img` or `qemu --version` call may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a NAT pool's firewall table is checked (and before each launch).
const FIREWALL_CHECK: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Vm {
    id: String,
    dir: PathBuf,
    plan: VmPlan,
    pid: Option<u32>,
    launched_at: Timestamp,
    state: watch::Sender<VmState>,
    to_guest: mpsc::UnboundedSender<HostMessage>,
    timings: Mutex<VmTimings>,
    net: Option<net::VmNet>,
    /// Why hangar killed the VM, when it did (a guest breaking the rules).
    killed: Mutex<Option<String>>,
}

impl Vm {
    fn state(&self) -> VmState {
        *self.state.borrow()
    }

    fn set_state(&self, next: VmState) {
        self.state.send_replace(next);
    }

    fn timing(&self, f: impl FnOnce(&mut VmTimings)) {
        f(&mut self.timings.lock().expect("timings lock"));
    }

    fn instance(&self, runner_id: &RunnerId) -> Instance {
        let mut detail = format!(
            "vm {} pid {} dir {}",
            self.id,
            self.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            self.dir.display()
        );
        if let Some(reason) = self.killed.lock().expect("killed lock").as_deref() {
            detail.push_str(&format!("; killed by hangar: {reason}"));
        }
        Instance {
            runner_id: runner_id.clone(),
            state: self.state().instance_state(),
            launched_at: self.launched_at,
            detail,
        }
    }
}

/// The microVM provider of one pool.
#[derive(Debug, Clone)]
pub struct MicrovmProvider {
    inner: Arc<Inner>,
}

/// A backing file as an overlay sees it: path, format, size, mtime.
type OverlayKey = (PathBuf, &'static str, u64, Option<std::time::SystemTime>);

/// How long `shutdown` waits for the supervisors it cancelled.
const SUPERVISORS_STOP: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Inner {
    pool: PoolName,
    config: MicrovmConfig,
    vmm: Arc<dyn Vmm>,
    accel: Accel,
    boots: Arc<Semaphore>,
    /// Serialises launches so two launches of one runner id make one VM.
    launching: tokio::sync::Mutex<()>,
    runners: Mutex<HashMap<RunnerId, Arc<Vm>>>,
    hot: Mutex<Vec<Arc<Vm>>>,
    refill: tokio::sync::Notify,
    /// Empty qcow2 overlays by backing file (see `overlay_template`).
    overlay_templates: Mutex<HashMap<OverlayKey, Arc<Vec<u8>>>>,
    /// Pre-booted VMs a launch took whose runner has not started yet; the
    /// refill waits for them (see `refill_loop`).
    dispatching: Arc<std::sync::atomic::AtomicUsize>,
    network: Option<Arc<net::Network>>,
    /// The idle-VM snapshot pre-booted VMs are restored from
    /// (`prebooted_restore`).
    snapshot: tokio::sync::Mutex<Option<bench::Snapshot>>,
    /// Set by `shutdown`: the refill task stops booting and ends.
    closed: std::sync::atomic::AtomicBool,
    refill_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The per-VM supervisors and refill hand-offs; `shutdown` ends them
    /// and waits (a runner VM keeps running: it is the record on disk, and
    /// the next start adopts it).
    tasks: tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter state_dir")]
    SocketPath { path: PathBuf },
    #[error("creating the overlay")]
    Overlay(#[source] hangar_exec::ExecError),
    #[error("starting the vmm")]
    Vmm(#[from] vmm::VmmError),
    #[error("network setup")]
    Network(#[from] net::NetError),
    #[error("the network task failed")]
    NetworkTask(#[source] tokio::task::JoinError),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MicrovmError + 'a {
    move |source| MicrovmError::Io { what, path: path.to_owned(), source }
}

impl MicrovmProvider {
    /// Builds the provider of `pool`. Reaps idle VMs a previous hangar
    /// process left behind (VMs with a runner are kept for `list`/`destroy`),
    /// and starts the pre-booted pool. Must run inside a tokio runtime.
    pub async fn new(
        pool: PoolName,
        config: MicrovmConfig,
    ) -> Result<MicrovmProvider, MicrovmError> {
        let vmm: Arc<dyn Vmm> = Arc::new(Qemu::new(config.qemu.clone()));
        MicrovmProvider::with_vmm(pool, config, vmm).await
    }

    /// As [`MicrovmProvider::new`] with another VMM.
    pub async fn with_vmm(
        pool: PoolName,
        config: MicrovmConfig,
        vmm: Arc<dyn Vmm>,
    ) -> Result<MicrovmProvider, MicrovmError> {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(io_err("creating the state dir", &config.state_dir))?;
        private_dir(&config.state_dir)?;
        let probe = accel::accel_probe(Path::new("/"));
        let accel = accel::accel_resolve(config.accel, &probe);
        let boots = config.max_parallel_boots.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        });
        let network = match &config.network {
            NetworkConfig::None => None,
            nat @ NetworkConfig::Nat { .. } => {
                let (nat, dir) = (nat.clone(), config.state_dir.clone());
                let network = tokio::task::spawn_blocking(move || net::Network::new(&nat, &dir))
                    .await
                    .map_err(MicrovmError::NetworkTask)??;
                Some(Arc::new(network))
            }
        };
        let inner = Arc::new(Inner {
            pool,
            config,
            vmm,
            accel,
            boots: Arc::new(Semaphore::new(boots.max(1))),
            launching: tokio::sync::Mutex::new(()),
            runners: Mutex::new(HashMap::new()),
            hot: Mutex::new(Vec::new()),
            refill: tokio::sync::Notify::new(),
            dispatching: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            overlay_templates: Mutex::new(HashMap::new()),
            network,
            snapshot: tokio::sync::Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            refill_task: Mutex::new(None),
            tasks: tokio_util::task::TaskTracker::new(),
            stop: tokio_util::sync::CancellationToken::new(),
        });
        inner.reap_unassigned().await;
        if inner.network.is_some() {
            inner.tasks.spawn(firewall_watch(Arc::downgrade(&inner), inner.stop.clone()));
        }
        if inner.config.min_hot > 0 {
            let task = tokio::spawn(refill_loop(Arc::downgrade(&inner)));
            *inner.refill_task.lock().expect("refill lock") = Some(task);
        }
        Ok(MicrovmProvider { inner })
    }

    /// The accelerator VMs of this pool run with.
    pub fn accel(&self) -> Accel {
        self.inner.accel
    }

    /// The serial console log of a runner's VM (what the API shows).
    pub fn console_log(&self, runner_id: &RunnerId) -> Option<PathBuf> {
        if let Some(vm) = self.inner.runners.lock().expect("runners lock").get(runner_id) {
            return Some(vm.dir.join(CONSOLE_LOG));
        }
        self.inner
            .disk_vms()
            .into_iter()
            .find(|d| d.runner.as_ref() == Some(runner_id))
            .map(|d| d.dir.join(CONSOLE_LOG))
    }

    /// When things happened to a runner's VM.
    pub fn timings(&self, runner_id: &RunnerId) -> Option<VmTimings> {
        let runners = self.inner.runners.lock().expect("runners lock");
        runners.get(runner_id).map(|vm| *vm.timings.lock().expect("timings lock"))
    }

    /// The QEMU pid of a runner's VM.
    pub fn vm_pid(&self, runner_id: &RunnerId) -> Option<u32> {
        self.inner.runners.lock().expect("runners lock").get(runner_id).and_then(|vm| vm.pid)
    }

    /// Pre-booted VMs that are idle now (booted, agent ready, no runner).
    pub fn hot_idle(&self) -> usize {
        self.inner
            .hot
            .lock()
            .expect("hot lock")
            .iter()
            .filter(|vm| vm.state() == VmState::Idle)
            .count()
    }

    /// The QEMU pids of the pre-booted VMs (for RSS measurements).
    pub fn hot_pids(&self) -> Vec<u32> {
        self.inner.hot.lock().expect("hot lock").iter().filter_map(|vm| vm.pid).collect()
    }

    /// Stops the pre-booted pool and destroys its VMs (runner VMs stay;
    /// the pool's firewall table goes when no runner VM is left).
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.refill.notify_one();
        let task = self.inner.refill_task.lock().expect("refill lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let hot: Vec<Arc<Vm>> = std::mem::take(&mut *self.inner.hot.lock().expect("hot lock"));
        for vm in hot {
            self.inner.vm_destroy(&vm).await;
        }
        self.inner.snapshot.lock().await.take();
        let _ = std::fs::remove_dir_all(self.inner.config.state_dir.join(SNAPSHOT_DIR));
        if let Some(network) = &self.inner.network
            && self.inner.runners.lock().expect("runners lock").is_empty()
            && self.inner.disk_vms().is_empty()
        {
            network.firewall_remove();
        }
        self.inner.stop.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(SUPERVISORS_STOP, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(pool = %self.inner.pool, "VM supervisors still running after the stop");
        }
    }

    /// Boots a VM to idle and saves it (state + frozen disk) under `dir`.
    pub async fn snapshot_create(&self, dir: &Path) -> Result<bench::Snapshot, MicrovmError> {
        self.inner.snapshot_create(dir).await
    }

    /// Restores one VM from `snapshot`, waits for its agent's `ready`,
    /// destroys it; returns launch → ready.
    pub async fn snapshot_restore_ready(
        &self,
        snapshot: &bench::Snapshot,
    ) -> Result<Duration, MicrovmError> {
        let inner = &self.inner;
        let t0 = Instant::now();
        let vm = inner.vm_boot(None, Some(snapshot)).await?;
        let timeout = inner.config.boot_timeout;
        let ok = wait_idle(&vm, timeout).await;
        let elapsed = t0.elapsed();
        inner.vm_destroy(&vm).await;
        if ok { Ok(elapsed) } else { Err(MicrovmError::Vmm(vmm::VmmError::Timeout)) }
    }

    /// The full QEMU argv a plan would use (for tests and `--dry-run`).
    pub fn vmm_args_preview(&self) -> Vec<String> {
        let dir = self.inner.config.state_dir.join("vm-preview");
        Qemu::new(self.inner.config.qemu.clone()).args(&self.inner.plan("vm-preview", &dir, None))
    }
}

#[async_trait::async_trait]
impl Provider for MicrovmProvider {
    fn kind(&self) -> &'static str {
        "microvm"
    }

    async fn launch(&self, spec: &RunnerSpec) -> Result<Instance, ProviderError> {
        let inner = &self.inner;
        // No VM starts while the pool's isolation is not in place.
        if let Err(e) = inner.firewall_check().await {
            return Err(launch_error(&spec.runner_id, "the pool's firewall", e));
        }
        let _launching = inner.launching.lock().await;
        if let Some(vm) = inner.runners.lock().expect("runners lock").get(&spec.runner_id) {
            return Ok(vm.instance(&spec.runner_id));
        }
        if let Some(orphan) =
            inner.disk_vms().into_iter().find(|d| d.runner.as_ref() == Some(&spec.runner_id))
        {
            return Ok(orphan.instance(&spec.runner_id));
        }
        let start = HostMessage::Start {
            runner_id: spec.runner_id.to_string(),
            jit_config: spec.jit_config.expose().to_owned(),
            env: spec.env.clone(),
            now_unix_ms: u64::try_from(chrono::Utc::now().timestamp_millis()).ok(),
        };
        let hot = {
            let mut hot = inner.hot.lock().expect("hot lock");
            let idle = hot.iter().position(|vm| vm.state() == VmState::Idle);
            idle.map(|i| hot.remove(i))
        };
        let vm = if let Some(vm) = hot {
            let runner_file = vm.dir.join(RUNNER_FILE);
            if let Err(source) = std::fs::write(&runner_file, spec.runner_id.as_str()) {
                inner.vm_destroy(&vm).await;
                return Err(launch_error(&spec.runner_id, "recording the runner id", source));
            }
            refill_after_dispatch(inner, &vm);
            vm
        } else {
            match inner.vm_boot(Some(&spec.runner_id), None).await {
                Ok(vm) => vm,
                Err(e) => return Err(launch_error(&spec.runner_id, "booting the vm", e)),
            }
        };
        vm.timing(|t| t.start_sent = Some(Instant::now()));
        // The supervisor holds it until the agent is ready.
        let _ = vm.to_guest.send(start);
        tracing::info!(runner_id = %spec.runner_id, pool = %inner.pool, vm = %vm.id, "microvm launched");
        let instance = vm.instance(&spec.runner_id);
        inner.runners.lock().expect("runners lock").insert(spec.runner_id.clone(), vm);
        Ok(instance)
    }

    async fn destroy(&self, runner_id: &RunnerId) -> Result<(), ProviderError> {
        let inner = &self.inner;
        let vm = inner.runners.lock().expect("runners lock").remove(runner_id);
        if let Some(vm) = vm {
            inner.vm_destroy(&vm).await;
        }
        // Also anything on disk for this runner (a VM from before a restart).
        for leftover in
            inner.disk_vms().into_iter().filter(|d| d.runner.as_ref() == Some(runner_id))
        {
            leftover.reap(inner.network.as_ref()).await.map_err(|source| {
                ProviderError::Destroy {
                    runner_id: runner_id.clone(),
                    reason: format!("removing {}", leftover.dir.display()),
                    source: Some(Box::new(source)),
                }
            })?;
        }
        tracing::info!(runner_id = %runner_id, pool = %inner.pool, "microvm destroyed");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let inner = &self.inner;
        let mut instances: Vec<Instance> = inner
            .runners
            .lock()
            .expect("runners lock")
            .iter()
            .map(|(id, vm)| vm.instance(id))
            .collect();
        for d in inner.disk_vms() {
            if let Some(runner) = &d.runner
                && !instances.iter().any(|i| &i.runner_id == runner)
            {
                instances.push(d.instance(runner));
            }
        }
        instances.sort_by(|a, b| a.runner_id.cmp(&b.runner_id));
        Ok(instances)
    }

    async fn health(&self) -> Health {
        let c = &self.inner.config;
        if let Some(reason) = self.inner.network.as_ref().and_then(|n| n.closed()) {
            return Health {
                ok: false,
                message: format!(
                    "the pool's firewall is not in place, its VMs are cut off: {reason}"
                ),
            };
        }
        for (what, path) in [("kernel", &c.kernel), ("rootfs", &c.rootfs)] {
            if !path.exists() {
                return Health {
                    ok: false,
                    message: format!("{what} {} does not exist", path.display()),
                };
            }
        }
        let mut qemu = tokio::process::Command::new(&c.qemu);
        qemu.arg("--version").kill_on_drop(true);
        // A missing QEMU is named with its Debian package.
        match output_within(&mut qemu, EXEC_TIMEOUT).await {
            Ok(out) => Health {
                ok: true,
                message: format!(
                    "{} with {:?}",
                    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("qemu"),
                    self.inner.accel
                ),
            },
            Err(e) => Health { ok: false, message: hangar_types::ErrorChain(&e).to_string() },
        }
    }

    async fn shutdown(&self) {
        MicrovmProvider::shutdown(self).await;
    }
}

/// Waits until the VM leaves `Booting`; true when it became `Idle`.
async fn wait_idle(vm: &Vm, timeout: Duration) -> bool {
    let mut rx = vm.state.subscribe();
    let res = tokio::time::timeout(timeout, rx.wait_for(|s| *s != VmState::Booting)).await;
    matches!(res, Ok(Ok(ref state)) if **state == VmState::Idle)
}

fn launch_error(
    runner_id: &RunnerId,
    reason: &str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> ProviderError {
    ProviderError::Launch {
        runner_id: runner_id.clone(),
        reason: reason.into(),
        source: Some(Box::new(source)),
    }
}

impl Inner {
    fn plan(&self, id: &str, dir: &Path, net: Option<&net::VmNet>) -> VmPlan {
        let mut kernel_args = Vec::new();
        let mut tap = None;
        if let Some(n) = net {
            kernel_args.push(n.kernel_arg());
            tap = Some(n.nic());
        }
        VmPlan {
            name: id.to_owned(),
            kernel: absolute(&self.config.kernel),
            initrd: self.config.initrd.as_deref().map(absolute),
            disk: dir.join(OVERLAY_FILE),
            agent_socket: dir.join(AGENT_SOCKET),
            control_socket: dir.join(QMP_SOCKET),
            console_socket: dir.join(CONSOLE_SOCKET),
            vmm_log: dir.join(VMM_LOG),
            vcpus: self.config.vcpus,
            memory_mib: self.config.memory_mib,
            accel: self.accel,
            kernel_args,
            tap,
            incoming_state: None,
        }
    }

    /// Boots one VM: directory, overlay, agent socket, network, VMM.
    /// Cleans up after itself when a step fails.
    async fn vm_boot(
        &self,
        runner: Option<&RunnerId>,
        restore: Option<&bench::Snapshot>,
    ) -> Result<Arc<Vm>, MicrovmError> {
        let permit =
            Arc::clone(&self.boots).acquire_owned().await.expect("boot semaphore is never closed");
        let id = format!("vm-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let dir = self.config.state_dir.join(&id);
        let result = self.vm_boot_in(&id, &dir, runner, restore, permit).await;
        if result.is_err() {
            if let Some(network) = &self.network {
                network.vm_teardown(&id);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    async fn vm_boot_in(
        &self,
        id: &str,
        dir: &Path,
        runner: Option<&RunnerId>,
        restore: Option<&bench::Snapshot>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Arc<Vm>, MicrovmError> {
        let socket = dir.join(AGENT_SOCKET);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(MicrovmError::SocketPath { path: socket });
        }
        std::fs::create_dir_all(dir).map_err(io_err("creating the vm dir", dir))?;
        private_dir(dir)?;
        if let Some(runner) = runner {
            let file = dir.join(RUNNER_FILE);
            std::fs::write(&file, runner.as_str()).map_err(io_err("writing", &file))?;
        }
        let (backing, backing_format) = match restore {
            Some(snapshot) => (snapshot.disk.clone(), "qcow2"),
            None => (absolute(&self.config.rootfs), "raw"),
        };
        let overlay = dir.join(OVERLAY_FILE);
        let template = self.overlay_template(&backing, backing_format, &overlay).await?;
        std::fs::write(&overlay, template.as_slice()).map_err(io_err("writing", &overlay))?;
        let listener = UnixListener::bind(&socket).map_err(io_err("listening on", &socket))?;
        let console_socket = dir.join(CONSOLE_SOCKET);
        let console =
            UnixListener::bind(&console_socket).map_err(io_err("listening on", &console_socket))?;
        let vm_net = match &self.network {
            Some(network) => Some(network.vm_setup(id)?),
            None => None,
        };
        let mut plan = self.plan(id, dir, vm_net.as_ref());
        if let Some(snapshot) = restore {
            plan.incoming_state = Some(snapshot.state.clone());
        }
        let child = self.vmm.spawn(&plan)?;
        let pid = child.id();
        if let Some(pid) = pid {
            let file = dir.join(PID_FILE);
            std::fs::write(&file, pid.to_string()).map_err(io_err("writing", &file))?;
        }
        let (to_guest, from_host) = mpsc::unbounded_channel();
        let vm = Arc::new(Vm {
            id: id.to_owned(),
            dir: dir.to_owned(),
            plan,
            pid,
            launched_at: chrono::Utc::now(),
            state: watch::Sender::new(VmState::Booting),
            to_guest,
            timings: Mutex::new(VmTimings {
                spawned: Some(Instant::now()),
                ..VmTimings::default()
            }),
            net: vm_net,
            killed: Mutex::new(None),
        });
        self.tasks.spawn(console_pump(
            console,
            dir.to_owned(),
            self.config.console_log_max_bytes,
            vm.state.subscribe(),
            self.stop.clone(),
        ));
        if restore.is_some() {
            // The restored agent already said ready to another process.
            let _ = vm.to_guest.send(HostMessage::Ping);
        }
        let boot_timeout = self.config.boot_timeout;
        let supervisor =
            supervise(Arc::clone(&vm), listener, child, from_host, boot_timeout, permit);
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = supervisor => {}
            }
        });
        Ok(vm)
    }

    /// The bytes of a fresh qcow2 overlay over `backing`. qemu-img makes
    /// one per backing file (and its size and mtime), once; each VM's
    /// overlay is a copy of those few hundred KiB, which spares every
    /// launch and restore an exec of qemu-img (10 ms idle, 30-60 ms on a
    /// loaded host). The copy is byte for byte what qemu-img would write.
    async fn overlay_template(
        &self,
        backing: &Path,
        format: &'static str,
        scratch: &Path,
    ) -> Result<Arc<Vec<u8>>, MicrovmError> {
        let meta = std::fs::metadata(backing).map_err(io_err("reading", backing))?;
        let key = (backing.to_owned(), format, meta.len(), meta.modified().ok());
        if let Some(bytes) = self.overlay_templates.lock().expect("templates lock").get(&key) {
            return Ok(Arc::clone(bytes));
        }
        let mut qemu_img = tokio::process::Command::new(&self.config.qemu_img);
        qemu_img
            .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
            .arg(backing)
            .arg(scratch);
        output_within(&mut qemu_img, EXEC_TIMEOUT).await.map_err(MicrovmError::Overlay)?;
        let bytes = Arc::new(std::fs::read(scratch).map_err(io_err("reading", scratch))?);
        let mut templates = self.overlay_templates.lock().expect("templates lock");
        // Backing files come and go (new images, new snapshots).
        templates.retain(|(path, ..), _| path.exists());
        templates.insert(key, Arc::clone(&bytes));
        Ok(bytes)
    }

    /// Ends a VM and removes everything made for it. Never fails: each step
    /// is best effort and idempotent, and the directory goes last.
    async fn vm_destroy(&self, vm: &Vm) {
        if !matches!(vm.state(), VmState::Gone { .. }) {
            if let Err(e) = self.vmm.quit(&vm.plan).await {
                tracing::debug!(vm = %vm.id, error = %ErrorChain(&e), "qmp quit failed; killing");
            }
            let mut gone = vm.state.subscribe();
            let exited = tokio::time::timeout(
                Duration::from_secs(3),
                gone.wait_for(|s| matches!(s, VmState::Gone { .. })),
            )
            .await
            .is_ok();
            if !exited {
                if let Some(pid) = vm.pid {
                    kill_vm_process(pid, &vm.dir);
                }
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    gone.wait_for(|s| matches!(s, VmState::Gone { .. })),
                )
                .await;
            }
        }
        if let (Some(network), Some(_)) = (&self.network, &vm.net) {
            network.vm_teardown(&vm.id);
        }
        if let Err(e) = std::fs::remove_dir_all(&vm.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(vm = %vm.id, error = %ErrorChain(&e), "removing the vm dir failed");
        }
    }

    async fn snapshot_create(&self, dir: &Path) -> Result<bench::Snapshot, MicrovmError> {
        let inner = self;
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let vm = inner.vm_boot(None, None).await?;
        let timeout = inner.config.boot_timeout;
        if !wait_idle(&vm, timeout).await {
            inner.vm_destroy(&vm).await;
            return Err(MicrovmError::Vmm(vmm::VmmError::Timeout));
        }
        let snapshot =
            bench::Snapshot { state: dir.join("state.bin"), disk: dir.join("disk.qcow2") };
        let saved = inner.vmm.snapshot_save(&vm.plan, &snapshot.state).await;
        if saved.is_ok() {
            // QEMU holds the overlay open; the name moves, the VM is paused.
            std::fs::rename(&vm.plan.disk, &snapshot.disk)
                .map_err(io_err("freezing the disk to", &snapshot.disk))?;
        }
        inner.vm_destroy(&vm).await;
        saved?;
        Ok(snapshot)
    }

    /// The pool's snapshot of an idle VM, made on first use.
    async fn pool_snapshot(&self) -> Result<bench::Snapshot, MicrovmError> {
        let mut cached = self.snapshot.lock().await;
        if let Some(snapshot) = cached.as_ref() {
            return Ok(snapshot.clone());
        }
        let snapshot = self.snapshot_create(&self.config.state_dir.join(SNAPSHOT_DIR)).await?;
        *cached = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// Checks the pool's firewall (re-installing it, or closing the pool;
    /// see `net`). Always `Ok` without a network.
    async fn firewall_check(&self) -> Result<(), net::NetError> {
        let Some(network) = &self.network else { return Ok(()) };
        let network = Arc::clone(network);
        tokio::task::spawn_blocking(move || network.check())
            .await
            .unwrap_or_else(|e| Err(net::NetError::Closed(format!("the check panicked: {e}"))))
    }

    /// VM directories on disk (the truth after a restart).
    fn disk_vms(&self) -> Vec<DiskVm> {
        let Ok(entries) = std::fs::read_dir(&self.config.state_dir) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("vm-"))
            .map(|e| DiskVm::read(&e.path()))
            .collect()
    }

    /// Idle VMs of a previous process cannot be reused (their agent
    /// channel died with it): reap them.
    async fn reap_unassigned(&self) {
        for d in self.disk_vms() {
            if d.runner.is_none() {
                tracing::info!(pool = %self.pool, dir = %d.dir.display(), "reaping a leftover idle vm");
                if let Err(e) = d.reap(self.network.as_ref()).await {
                    tracing::warn!(dir = %d.dir.display(), error = %ErrorChain(&e), "reaping failed");
                }
            }
        }
    }
}

/// A VM directory as found on disk.
#[derive(Debug)]
struct DiskVm {
    dir: PathBuf,
    id: String,
    runner: Option<RunnerId>,
    pid: Option<u32>,
}

impl DiskVm {
    fn read(dir: &Path) -> DiskVm {
        let runner = std::fs::read_to_string(dir.join(RUNNER_FILE))
            .ok()
            .and_then(|s| RunnerId::try_from(s.trim().to_owned()).ok());
        let pid =
            std::fs::read_to_string(dir.join(PID_FILE)).ok().and_then(|s| s.trim().parse().ok());
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        DiskVm { dir: dir.to_owned(), id, runner, pid }
    }

    fn alive(&self) -> bool {
        self.pid.is_some_and(|pid| vm_process_alive(pid, &self.dir))
    }

    fn instance(&self, runner_id: &RunnerId) -> Instance {
        let launched_at = std::fs::metadata(&self.dir)
            .and_then(|m| m.modified())
            .map_or_else(|_| chrono::Utc::now(), chrono::DateTime::<chrono::Utc>::from);
        Instance {
            runner_id: runner_id.clone(),
            // Its agent channel is gone with the process that launched it:
            // alive means "still running, state unknown".
            state: if self.alive() {
                InstanceState::Running
            } else {
                InstanceState::Exited { code: None }
            },
            launched_at,
            detail: format!("orphan vm {} pid {:?} dir {}", self.id, self.pid, self.dir.display()),
        }
    }

    async fn reap(&self, network: Option<&Arc<net::Network>>) -> std::io::Result<()> {
        if let Some(pid) = self.pid {
            kill_vm_process(pid, &self.dir);
            let deadline = Instant::now() + Duration::from_secs(5);
            while vm_process_alive(pid, &self.dir) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if let Some(network) = network {
            network.vm_teardown(&self.id);
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Whether `pid` is a live (not zombie) VMM process of the VM in `dir`;
/// checking the command line guards against pid reuse.
fn vm_process_alive(pid: u32, dir: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else { return false };
    let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
    let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
    let dir = dir.as_os_str().as_encoded_bytes();
    !zombie && cmdline.windows(dir.len()).any(|w| w == dir)
}

fn kill_vm_process(pid: u32, dir: &Path) {
    if vm_process_alive(pid, dir)
        && let Ok(raw) = i32::try_from(pid)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Only hangar's user may enter: the agent socket in a VM directory is
/// where the JIT config goes, and the first process to connect gets it.
fn private_dir(dir: &Path) -> Result<(), MicrovmError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("restricting", dir))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Owns one VM's process and agent channel until the process ends.
async fn supervise(
    vm: Arc<Vm>,
    listener: UnixListener,
    mut child: tokio::process::Child,
    mut from_host: mpsc::UnboundedReceiver<HostMessage>,
    boot_timeout: Duration,
    permit: OwnedSemaphorePermit,
) {
    let mut permit = Some(permit);
    let boot_deadline = tokio::time::sleep(boot_timeout);
    tokio::pin!(boot_deadline);
    let mut killed_for_timeout = false;

    let stream = tokio::select! {
        accepted = listener.accept() => accepted.ok().map(|(s, _)| s),
        status = child.wait() => {
            tracing::warn!(vm = %vm.id, ?status, "vmm exited before connecting the agent channel");
            None
        }
        () = &mut boot_deadline => None,
    };
    drop(listener);
    if let Some(stream) = stream {
        let (read, mut write) = stream.into_split();
        let mut lines = LineReader::new(read, MAX_AGENT_LINE);
        let mut said = GuestLog::new();
        let mut ready = false;
        let mut pending: Vec<HostMessage> = Vec::new();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let line = match line {
                        Ok(Some(line)) => line,
                        Ok(None) => break,
                        Err(LineError::TooLong) => {
                            let reason = format!(
                                "the guest agent sent a line longer than {MAX_AGENT_LINE} bytes"
                            );
                            tracing::warn!(vm = %vm.id, reason = %reason, "killing the vm");
                            *vm.killed.lock().expect("killed lock") = Some(reason);
                            let _ = child.start_kill();
                            break;
                        }
                        Err(LineError::Io(e)) => {
                            tracing::debug!(vm = %vm.id, error = %ErrorChain(&e), "agent channel read failed");
                            break;
                        }
                    };
                    match serde_json::from_slice::<GuestMessage>(&line) {
                        Ok(GuestMessage::Ready) => {
                            ready = true;
                            permit.take();
                            if vm.state() == VmState::Booting {
                                vm.set_state(VmState::Idle);
                            }
                            vm.timing(|t| t.ready = Some(Instant::now()));
                            for message in pending.drain(..) {
                                if send_to_guest(&vm, &mut write, &message).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Ok(GuestMessage::RunnerStarted { pid }) => {
                            vm.timing(|t| t.runner_started = Some(Instant::now()));
                            vm.set_state(VmState::RunnerRunning);
                            tracing::info!(vm = %vm.id, guest_pid = pid, "runner started");
                        }
                        Ok(GuestMessage::RunnerExited { code }) => {
                            vm.timing(|t| t.runner_exited = Some(Instant::now()));
                            vm.set_state(VmState::RunnerExited { code });
                            tracing::info!(vm = %vm.id, ?code, "runner exited");
                        }
                        Ok(GuestMessage::Error { message }) => {
                            if said.allow(&vm.id) {
                                tracing::warn!(vm = %vm.id, message = %guest_text(message.as_bytes()), "guest agent error");
                            }
                        }
                        Err(e) => {
                            if said.allow(&vm.id) {
                                tracing::warn!(vm = %vm.id, error = %ErrorChain(&e), line = %guest_text(&line), "malformed agent message");
                            }
                        }
                    }
                }
                message = from_host.recv() => {
                    let Some(message) = message else { continue };
                    if ready && !matches!(message, HostMessage::Ping) {
                        let _ = send_to_guest(&vm, &mut write, &message).await;
                    } else if ready || matches!(message, HostMessage::Ping) {
                        let _ = write.write_all(&hangar_guest_agent::encode_line(&message)).await;
                    } else {
                        pending.push(message);
                    }
                }
                status = child.wait() => {
                    tracing::debug!(vm = %vm.id, ?status, "vmm exited");
                    break;
                }
                () = &mut boot_deadline, if !ready && !killed_for_timeout => {
                    tracing::warn!(vm = %vm.id, "guest agent never reported ready; killing the vm");
                    killed_for_timeout = true;
                    let _ = child.start_kill();
                }
            }
        }
        said.flush(&vm.id);
    } else {
        let _ = child.start_kill();
    }
    drop(permit);
    let _ = child.wait().await;
    let code = match vm.state() {
        VmState::RunnerExited { code } | VmState::Gone { code } => code,
        _ => None,
    };
    vm.set_state(VmState::Gone { code });
}

/// Why a line from the guest was not read.
#[derive(Debug)]
enum LineError {
    TooLong,
    Io(std::io::Error),
}

/// Reads `\n`-terminated lines of at most `max` bytes, holding no more
/// than that (`BufReader::lines` grows without bound on an endless line).
/// Cancel-safe: a partial line stays in `line` across calls.
struct LineReader<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> LineReader<R> {
    fn new(read: R, max: usize) -> LineReader<R> {
        LineReader { reader: BufReader::new(read), line: Vec::new(), max }
    }

    /// The next line without its newline; `None` at the end (a last line
    /// without a newline is dropped).
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        loop {
            let available = self.reader.fill_buf().await.map_err(LineError::Io)?;
            if available.is_empty() {
                return Ok(None);
            }
            let (take, done) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (i, true),
                None => (available.len(), false),
            };
            if self.line.len() + take > self.max {
                return Err(LineError::TooLong);
            }
            self.line.extend_from_slice(&available[..take]);
            self.reader.consume(take + usize::from(done));
            if done {
                return Ok(Some(std::mem::take(&mut self.line)));
            }
        }
    }
}

/// Guest text as it may be logged: control characters, newlines and
/// non-UTF-8 escaped (a guest cannot forge log lines or send terminal
/// escapes), cut to [`GUEST_TEXT_MAX`] characters.
fn guest_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(GUEST_TEXT_MAX).flat_map(char::escape_debug).collect();
    let total = text.chars().count();
    if total > GUEST_TEXT_MAX {
        out.push_str(&format!("… ({} more characters)", total - GUEST_TEXT_MAX));
    }
    out
}

/// At most [`GUEST_LOG_BURST`] guest lines per VM per minute reach the log.
#[derive(Debug)]
struct GuestLog {
    window: Instant,
    logged: u32,
    dropped: u64,
}

impl GuestLog {
    const WINDOW: Duration = Duration::from_secs(60);

    fn new() -> GuestLog {
        GuestLog { window: Instant::now(), logged: 0, dropped: 0 }
    }

    /// Whether the next guest line may be logged now.
    fn allow(&mut self, vm: &str) -> bool {
        self.allow_at(vm, Instant::now())
    }

    fn allow_at(&mut self, vm: &str, now: Instant) -> bool {
        if now.duration_since(self.window) >= Self::WINDOW {
            self.flush(vm);
            self.window = now;
            self.logged = 0;
        }
        if self.logged < GUEST_LOG_BURST {
            self.logged += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Says how many lines were left out, if any.
    fn flush(&mut self, vm: &str) {
        if self.dropped > 0 {
            tracing::warn!(vm = %vm, dropped = self.dropped, "guest messages left out of the log (at most {GUEST_LOG_BURST} a minute)");
            self.dropped = 0;
        }
    }
}

/// Copies the guest's serial console (QEMU connects it to `listener`) to
/// `dir/console.log`, keeping at most `max` bytes on disk: at `max / 2`
/// the log moves to `console.log.1` (replacing the older one). Ends when
/// QEMU closes the console, the VM is gone, or the provider stops.
async fn console_pump(
    listener: UnixListener,
    dir: PathBuf,
    max: u64,
    mut state: watch::Receiver<VmState>,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::io::AsyncReadExt as _;
    let mut stream = tokio::select! {
        accepted = listener.accept() => match accepted {
            Ok((stream, _)) => stream,
            Err(_) => return,
        },
        _ = state.wait_for(|s| matches!(s, VmState::Gone { .. })) => return,
        () = stop.cancelled() => return,
    };
    drop(listener);
    let _ = std::fs::remove_file(dir.join(CONSOLE_SOCKET));
    let path = dir.join(CONSOLE_LOG);
    let half = (max / 2).max(1);
    let open = |path: &Path| std::fs::OpenOptions::new().create(true).append(true).open(path);
    let Ok(mut file) = open(&path) else { return };
    let mut size = file.metadata().map_or(0, |m| m.len());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            () = stop.cancelled() => return,
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            if size >= half {
                // The VM dir may be gone (destroyed): then stop.
                if std::fs::rename(&path, dir.join(CONSOLE_LOG_OLD)).is_err() {
                    return;
                }
                let Ok(fresh) = open(&path) else { return };
                file = fresh;
                size = 0;
            }
            let room = usize::try_from(half - size).unwrap_or(usize::MAX);
            let (now, later) = chunk.split_at(chunk.len().min(room));
            if std::io::Write::write_all(&mut file, now).is_err() {
                return;
            }
            size += now.len() as u64;
            chunk = later;
        }
    }
}

/// Checks a NAT pool's firewall every [`FIREWALL_CHECK`] until the
/// provider stops or is dropped.
async fn firewall_watch(inner: Weak<Inner>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(FIREWALL_CHECK) => {}
            () = stop.cancelled() => return,
        }
        let Some(strong) = inner.upgrade() else { return };
        // `check` logs what it finds and does.
        let _ = strong.firewall_check().await;
    }
}

/// Runs a tokio command (output captured) to completion within `timeout`;
/// one that is still running then is killed.
async fn output_within(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
) -> Result<std::process::Output, hangar_exec::ExecError> {
    let shown = hangar_exec::shown(cmd.as_std());
    let program = cmd.as_std().get_program().to_owned();
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(result) => hangar_exec::check(&program, shown, result),
        Err(_) => Err(hangar_exec::ExecError::TimedOut { command: shown, after: timeout }),
    }
}

async fn send_to_guest(
    vm: &Vm,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    message: &HostMessage,
) -> std::io::Result<()> {
    write.write_all(&hangar_guest_agent::encode_line(message)).await?;
    if matches!(message, HostMessage::Start { .. }) && vm.state() == VmState::Idle {
        vm.set_state(VmState::Assigned);
    }
    Ok(())
}

/// How long a refill waits for a taken VM's runner to start, at most.
const REFILL_HOLD: Duration = Duration::from_secs(5);

/// Wakes the refill once `vm`, just taken from the pre-booted pool, has
/// started its runner (or ended, or [`REFILL_HOLD`] passed). Until then the
/// refill does not boot: a boot is CPU-bound (several cores' worth under
/// TCG) and would compete with the dispatch the pool exists to make fast.
fn refill_after_dispatch(inner: &Arc<Inner>, vm: &Arc<Vm>) {
    use std::sync::atomic::Ordering;
    inner.dispatching.fetch_add(1, Ordering::SeqCst);
    let weak = Arc::downgrade(inner);
    let dispatching = Arc::clone(&inner.dispatching);
    let mut state = vm.state.subscribe();
    inner.tasks.spawn(async move {
        let started = state.wait_for(|s| !matches!(s, VmState::Idle | VmState::Assigned));
        let _ = tokio::time::timeout(REFILL_HOLD, started).await;
        dispatching.fetch_sub(1, Ordering::SeqCst);
        if let Some(inner) = weak.upgrade() {
            inner.refill.notify_one();
        }
    });
}

/// Keeps `min_hot` VMs booting or idle; ends when the provider is dropped.
/// Holds off while a taken VM's runner is starting (`refill_after_dispatch`).
async fn refill_loop(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        if strong.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // Forget dead pre-booted VMs (and clean their directories).
        let dead: Vec<Arc<Vm>> = {
            let mut hot = strong.hot.lock().expect("hot lock");
            let (dead, alive) =
                hot.drain(..).partition(|vm| matches!(vm.state(), VmState::Gone { .. }));
            *hot = alive;
            dead
        };
        for vm in dead {
            strong.vm_destroy(&vm).await;
        }
        let missing =
            strong.config.min_hot.saturating_sub(strong.hot.lock().expect("hot lock").len());
        let dispatching = strong.dispatching.load(std::sync::atomic::Ordering::SeqCst) > 0;
        if missing > 0 && !dispatching {
            let snapshot = if strong.config.prebooted_restore {
                match strong.pool_snapshot().await {
                    Ok(snapshot) => Some(snapshot),
                    Err(e) => {
                        tracing::warn!(pool = %strong.pool, error = %ErrorChain(&e), "snapshot failed; booting cold");
                        None
                    }
                }
            } else {
                None
            };
            match strong.vm_boot(None, snapshot.as_ref()).await {
                Ok(vm) if strong.closed.load(std::sync::atomic::Ordering::SeqCst) => {
                    strong.vm_destroy(&vm).await;
                    return;
                }
                Ok(vm) => strong.hot.lock().expect("hot lock").push(vm),
                Err(e) => {
                    tracing::warn!(pool = %strong.pool, error = %ErrorChain(&e), "pre-booting a vm failed");
                    drop(strong);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        }
        tokio::select! {
            () = strong.refill.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_escaped_and_cut() {
        assert_eq!(guest_text(b"a\nb\x1b[2J\r\t"), r"a\nb\u{1b}[2J\r\t");
        assert_eq!(guest_text(b"\xff ok"), "\u{fffd} ok");
        let long = guest_text("x".repeat(GUEST_TEXT_MAX + 10).as_bytes());
        assert!(long.ends_with("… (10 more characters)"), "{long}");
    }

    #[test]
    fn guest_lines_are_limited_per_minute() {
        let mut log = GuestLog::new();
        let t0 = log.window;
        let allowed = (0..1000).filter(|_| log.allow_at("vm", t0)).count();
        assert_eq!(allowed, GUEST_LOG_BURST as usize);
        assert_eq!(log.dropped, 1000 - u64::from(GUEST_LOG_BURST));
        assert!(log.allow_at("vm", t0 + GuestLog::WINDOW), "a new minute");
        assert_eq!(log.dropped, 0, "the count was said and reset");
    }

    #[tokio::test]
    async fn lines_over_the_limit_are_refused_without_being_held() {
        let (mut guest, host) = tokio::io::duplex(4096);
        let mut lines = LineReader::new(host, 16);
        let writer = tokio::spawn(async move {
            guest.write_all(b"short\n").await.unwrap();
            let _ = guest.write_all(&[b'A'; 1 << 20]).await;
        });
        assert_eq!(lines.next_line().await.unwrap().unwrap(), b"short");
        assert!(matches!(lines.next_line().await, Err(LineError::TooLong)));
        assert!(lines.line.len() <= 16);
        drop(lines);
        writer.await.unwrap();
    }
}
