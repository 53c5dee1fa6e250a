//! Measurements for `hangar bench microvm` and the pre-booted pool's
//! snapshot path.
//!
//! A [`Snapshot`] is a booted, idle VM frozen to a file with QEMU migration,
//! plus its disk frozen as a read-only qcow2 (the state refers to the disk
//! as it was). Restoring gives each clone its own overlay on that frozen
//! disk and `-incoming` the state; the agent inside is idle and answers a
//! `ping` with `ready`.

use std::path::PathBuf;

/// A saved idle VM.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// QEMU's migration stream.
    pub state: PathBuf,
    /// The VM's disk at the time of the snapshot (qcow2 over the base image).
    pub disk: PathBuf,
}

use std::time::{Duration, Instant};

use hangar_provider::{InstanceState, Provider, RunnerSpec};
use hangar_types::{ErrorChain, Labels, PoolName, RunnerId, Secret};
use serde::Serialize;

use crate::vmm::Qemu;
use crate::{Accel, MicrovmConfig, MicrovmError, MicrovmProvider};

/// p50/p99 of one measurement, in the unit its field name says.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub p50: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(mut xs: Vec<f64>) -> Option<Stat> {
        if xs.is_empty() {
            return None;
        }
        xs.sort_by(f64::total_cmp);
        let pick = |percent: usize| {
            // Nearest rank.
            let rank = (percent * xs.len()).div_ceil(100).max(1);
            xs[rank.min(xs.len()) - 1]
        };
        Some(Stat { p50: pick(50), p99: pick(99), min: xs[0], max: xs[xs.len() - 1], n: xs.len() })
    }
}

/// What `hangar bench microvm --json` prints. All times in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `kvm` or `tcg`: TCG figures are an upper bound, not a prediction.
    pub accel: String,
    pub runs: usize,
    /// `launch()` → guest agent says ready, one VM booting alone.
    pub cold_boot_ms: Option<Stat>,
    /// CPU time (user + system, 10 ms resolution) the VM's QEMU process had
    /// used when its agent said ready: the cold boot's cost, which unlike
    /// its wall time barely depends on what else the host is running.
    pub cold_boot_qemu_cpu_ms: Option<Stat>,
    /// QEMU started with `-incoming` of an idle VM's state → agent ready.
    pub snapshot_restore_ms: Option<Stat>,
    /// Runner spec sent to a pre-booted VM the moment it is idle → runner
    /// process started (a burst: the refill is taken as soon as it is ready).
    pub dispatch_ms: Option<Stat>,
    /// The same, into a VM that has been idle for [`SETTLE`] (the usual
    /// case: a pre-booted VM waiting for a job). The agent reads the
    /// runner's files ahead once it is ready (`hangar_guest_agent::prewarm`).
    pub dispatch_settled_ms: Option<Stat>,
    /// `launch()` on a pool with a pre-booted VM → runner process started
    /// (the provider's share of webhook → runner started).
    pub launch_to_runner_started_prebooted_ms: Option<Stat>,
    /// 4 VMs launched at the same instant: each one's launch → agent ready.
    pub boot_4_at_once_ms: Option<Stat>,
    /// Resident set size of an idle pre-booted VM's QEMU process.
    pub idle_vm_rss_mib: Option<Stat>,
    /// Snapshot state file size.
    pub snapshot_state_mib: Option<f64>,
    /// With `--reference-kernel`: the research's reference guest, launch →
    /// its PID 1 prints a marker on the serial console, booted alternately
    /// with the cold boots (see [`Reference`]).
    pub reference_pid1_ms: Option<Stat>,
    /// Per pair of a cold boot and the reference boot next to it: cold boot
    /// − reference (negative: hangar's guest reached `ready` sooner than the
    /// reference guest reached its PID 1).
    pub cold_boot_minus_reference_ms: Option<Stat>,
}

/// The reference guest of the shared research (`microvm-boot.md` section 5,
/// configuration E, from which the issue took its cold-boot goal of
/// 800 ms): a lean tinyconfig kernel booted through PVH and a static C
/// `/init` in an initramfs that prints [`REFERENCE_MARKER`] and powers off.
/// This host's speed moves by a quarter within an hour (docs/BENCHMARKS.md),
/// so a cold-boot figure means most next to the reference measured in the
/// same minutes. `cargo xtask bench microvm-reference` builds both files.
#[derive(Debug, Clone)]
pub struct Reference {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// What the reference guest's `/init` prints on the serial console.
pub const REFERENCE_MARKER: &[u8] = b"GUEST-INIT-READY";

/// One reference boot with the research's flags: launch → the marker on
/// QEMU's stdout (the guest's serial console), in milliseconds.
async fn reference_boot(
    qemu: &Qemu,
    accel: Accel,
    memory_mib: u32,
    reference: &Reference,
    timeout: Duration,
) -> Option<f64> {
    use tokio::io::AsyncReadExt as _;
    let mut append = "console=ttyS0 quiet reboot=t panic=-1 mvm_exit=reboot".to_owned();
    let cpu = match accel {
        Accel::Kvm => ["kvm", "host"],
        Accel::Tcg => {
            if let Some(khz) = qemu.tsc_khz {
                append.push_str(&format!(" tsc_early_khz={khz} lpj={}", khz * 4));
            }
            ["tcg", "max"]
        }
    };
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(&qemu.binary)
        .args(["-M", "microvm,acpi=off", "-accel", cpu[0], "-cpu", cpu[1], "-smp", "1"])
        .arg("-m")
        .arg(memory_mib.to_string())
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio"])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(&reference.kernel)
        .arg("-initrd")
        .arg(&reference.initrd)
        .arg("-append")
        .arg(append)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let seen = async {
        let (mut seen, mut chunk) = (Vec::new(), [0u8; 4096]);
        loop {
            let n = stdout.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&chunk[..n]);
            if seen.windows(REFERENCE_MARKER.len()).any(|w| w == REFERENCE_MARKER) {
                return Some(ms(t0.elapsed()));
            }
        }
    };
    let measured = tokio::time::timeout(timeout, seen).await.ok().flatten();
    let _ = child.kill().await;
    measured
}

/// How long a VM waits idle before a `dispatch_settled_ms` dispatch.
pub const SETTLE: Duration = Duration::from_millis(500);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bench_spec(pool: &PoolName) -> RunnerSpec {
    RunnerSpec {
        runner_id: RunnerId::new(pool, rand::random()),
        pool: pool.clone(),
        labels: Labels::default(),
        jit_config: Secret::new("bench-jit-config"),
        env: vec![("HANGAR_TEST_SCRIPT".into(), "true".into())],
    }
}

async fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs every measurement `runs` times against an image with a runner that
/// exits at once (the test image's runner does).
///
/// With a [`Reference`], each cold boot has a reference boot next to it
/// (before it in odd runs, after it in even ones).
pub async fn bench_run(
    base: MicrovmConfig,
    runs: usize,
    reference: Option<&Reference>,
) -> Result<BenchReport, MicrovmError> {
    let pool = PoolName("bench".into());
    let timeout = base.boot_timeout;
    let mut report = BenchReport {
        accel: String::new(),
        runs,
        cold_boot_ms: None,
        cold_boot_qemu_cpu_ms: None,
        snapshot_restore_ms: None,
        dispatch_ms: None,
        dispatch_settled_ms: None,
        launch_to_runner_started_prebooted_ms: None,
        boot_4_at_once_ms: None,
        idle_vm_rss_mib: None,
        snapshot_state_mib: None,
        reference_pid1_ms: None,
        cold_boot_minus_reference_ms: None,
    };

    // Cold boots, one at a time.
    let cold =
        MicrovmProvider::new(pool.clone(), MicrovmConfig { min_hot: 0, ..base.clone() }).await?;
    report.accel = format!("{:?}", cold.accel()).to_lowercase();
    let qemu = Qemu::new(base.qemu.clone());
    let (mut xs, mut cpu) = (Vec::new(), Vec::new());
    let (mut references, mut differences) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let reference_first = i % 2 == 1;
        let mut reference_ms = None;
        if let (Some(r), true) = (reference, reference_first) {
            reference_ms = reference_boot(&qemu, cold.accel(), base.memory_mib, r, timeout).await;
        }
        let spec = bench_spec(&pool);
        let t0 = Instant::now();
        if cold.launch(&spec).await.is_err() {
            continue;
        }
        let cold_ms = poll(timeout, || cold.timings(&spec.runner_id).and_then(|t| t.ready))
            .await
            .map(|ready| ms(ready - t0));
        if cold_ms.is_some()
            && let Some(used) = cold.vm_pid(&spec.runner_id).and_then(cpu_ms)
        {
            cpu.push(used);
        }
        wait_exited(&cold, &spec.runner_id, timeout).await;
        let _ = cold.destroy(&spec.runner_id).await;
        if let (Some(r), false) = (reference, reference_first) {
            reference_ms = reference_boot(&qemu, cold.accel(), base.memory_mib, r, timeout).await;
        }
        xs.extend(cold_ms);
        references.extend(reference_ms);
        if let (Some(c), Some(r)) = (cold_ms, reference_ms) {
            differences.push(c - r);
        }
    }
    report.cold_boot_ms = Stat::of(xs);
    report.cold_boot_qemu_cpu_ms = Stat::of(cpu);
    report.reference_pid1_ms = Stat::of(references);
    report.cold_boot_minus_reference_ms = Stat::of(differences);

    // 4 at once.
    let four = MicrovmProvider::new(
        pool.clone(),
        MicrovmConfig { min_hot: 0, max_parallel_boots: Some(4), ..base.clone() },
    )
    .await?;
    let mut xs = Vec::new();
    for _ in 0..runs.div_ceil(4).max(1) {
        let specs: Vec<RunnerSpec> = (0..4).map(|_| bench_spec(&pool)).collect();
        let t0 = Instant::now();
        for spec in &specs {
            let _ = four.launch(spec).await;
        }
        for spec in &specs {
            if let Some(ready) =
                poll(timeout, || four.timings(&spec.runner_id).and_then(|t| t.ready)).await
            {
                xs.push(ms(ready - t0));
            }
        }
        for spec in &specs {
            wait_exited(&four, &spec.runner_id, timeout).await;
            let _ = four.destroy(&spec.runner_id).await;
        }
    }
    report.boot_4_at_once_ms = Stat::of(xs);

    // Pre-booted: dispatch, launch → runner started, idle RSS.
    let hot =
        MicrovmProvider::new(pool.clone(), MicrovmConfig { min_hot: 1, ..base.clone() }).await?;
    let (mut dispatch, mut launch_started, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let mut dispatch_settled = Vec::new();
    // Alternately: take the VM the moment it is idle, and after SETTLE.
    for i in 0..2 * runs {
        let settled = i % 2 == 1;
        if poll(timeout, || (hot.hot_idle() >= 1).then_some(())).await.is_none() {
            continue;
        }
        if settled {
            tokio::time::sleep(SETTLE).await;
        } else {
            for pid in hot.hot_pids() {
                if let Some(mib) = rss_mib(pid) {
                    rss.push(mib);
                }
            }
        }
        let spec = bench_spec(&pool);
        let t0 = Instant::now();
        if hot.launch(&spec).await.is_err() {
            continue;
        }
        let started = poll(timeout, || {
            hot.timings(&spec.runner_id).and_then(|t| Some((t.start_sent?, t.runner_started?)))
        })
        .await;
        match started {
            Some((sent, started)) if settled => dispatch_settled.push(ms(started - sent)),
            Some((sent, started)) => {
                dispatch.push(ms(started - sent));
                launch_started.push(ms(started - t0));
            }
            None => {}
        }
        wait_exited(&hot, &spec.runner_id, timeout).await;
        let _ = hot.destroy(&spec.runner_id).await;
    }
    hot.shutdown().await;
    report.dispatch_ms = Stat::of(dispatch);
    report.dispatch_settled_ms = Stat::of(dispatch_settled);
    report.launch_to_runner_started_prebooted_ms = Stat::of(launch_started);
    report.idle_vm_rss_mib = Stat::of(rss);

    // Snapshot once, restore `runs` times.
    let snap_dir = base.state_dir.join("bench-snapshot");
    let _ = std::fs::remove_dir_all(&snap_dir);
    std::fs::create_dir_all(&snap_dir).map_err(|source| MicrovmError::Io {
        what: "creating",
        path: snap_dir.clone(),
        source,
    })?;
    let restorer =
        MicrovmProvider::new(pool.clone(), MicrovmConfig { min_hot: 0, ..base.clone() }).await?;
    match restorer.snapshot_create(&snap_dir).await {
        Ok(snapshot) => {
            report.snapshot_state_mib =
                std::fs::metadata(&snapshot.state).ok().map(|m| m.len() as f64 / (1024.0 * 1024.0));
            let mut xs = Vec::new();
            for _ in 0..runs {
                match restorer.snapshot_restore_ready(&snapshot).await {
                    Ok(d) => xs.push(ms(d)),
                    Err(e) => tracing::warn!(error = %ErrorChain(&e), "restore failed"),
                }
            }
            report.snapshot_restore_ms = Stat::of(xs);
        }
        Err(e) => tracing::warn!(error = %ErrorChain(&e), "snapshot failed"),
    }
    let _ = std::fs::remove_dir_all(&snap_dir);
    Ok(report)
}

async fn wait_exited(provider: &MicrovmProvider, id: &RunnerId, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let list = provider.list().await.unwrap_or_default();
        if list
            .iter()
            .any(|i| &i.runner_id == id && matches!(i.state, InstanceState::Exited { .. }))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// utime + stime of a process, in ms (`/proc` counts in USER_HZ, which is
/// 100 on Linux/x86).
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is
    // field 3, utime and stime are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10.0)
}
