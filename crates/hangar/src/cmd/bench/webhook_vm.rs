//! `hangar bench microvm`'s `webhook_to_runner_started_prebooted_ms`: the
//! whole path with a pre-booted pool, in one process: the GitHub simulator
//! queues a job and sends its webhook → hangar's server stores it → the
//! reconciler mints a JIT config → the microVM provider hands it to an idle
//! pre-booted VM → the guest agent reports the runner process started.
//!
//! The VMs must reach the simulator, which a NAT pool allows only for
//! addresses on its `allow` list and never on the host itself; so, as in
//! the end-to-end test, the simulator serves from a network namespace on a
//! veth /30 (10.231.x.y) and the pool allows exactly that address. Needs
//! root (namespace, taps, nftables).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hangar_provider::Provider as _;
use hangar_provider_microvm::bench::Stat;
use hangar_server::{ApiAccess, ServerState};
use hangar_simulator::{JobSpec, SimConfig, SimJobStatus, Simulator};

/// A network namespace with a veth pair to the host, removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Netns {
    fn create() -> Result<Netns> {
        let pid = std::process::id();
        let base = u32::from(Ipv4Addr::new(10, 231, 0, 0)) + (pid % 16_000) * 4;
        let netns = Netns {
            name: format!("hangar-bench-{pid}"),
            host_if: format!("hgv{pid}"),
            host_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
        };
        let peer = format!("hgp{pid}");
        let (host_cidr, ns_cidr) = (format!("{}/30", netns.host_ip), format!("{}/30", netns.ns_ip));
        let host_ip = netns.host_ip.to_string();
        sh(&["netns", "add", &netns.name])?;
        sh(&["link", "add", &netns.host_if, "type", "veth", "peer", "name", &peer])?;
        sh(&["link", "set", &peer, "netns", &netns.name])?;
        sh(&["addr", "add", &host_cidr, "dev", &netns.host_if])?;
        sh(&["link", "set", &netns.host_if, "up"])?;
        let n = netns.name.as_str();
        sh(&["netns", "exec", n, "ip", "addr", "add", &ns_cidr, "dev", &peer])?;
        sh(&["netns", "exec", n, "ip", "link", "set", &peer, "up"])?;
        sh(&["netns", "exec", n, "ip", "route", "add", "default", "via", &host_ip])?;
        Ok(netns)
    }

    /// A listening socket made inside the namespace.
    fn listen(&self) -> Result<std::net::TcpListener> {
        let path = format!("/var/run/netns/{}", self.name);
        let ip = self.ns_ip;
        std::thread::spawn(move || -> Result<std::net::TcpListener> {
            let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(std::net::TcpListener::bind((ip, 0))?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the netns thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}

/// Measures `runs` jobs, one at a time, each into a pre-booted VM.
pub(super) async fn measure(
    kernel: &Path,
    rootfs: &Path,
    initrd: Option<&PathBuf>,
    qemu: &Path,
    runs: usize,
) -> Result<Option<Stat>> {
    let netns = Netns::create()?;
    let sim = Simulator::start_with_listener(
        SimConfig { long_poll: Duration::from_secs(2), ..SimConfig::default() },
        netns.listen()?,
    )
    .await?;
    let dir = tempfile::Builder::new().prefix("hgb").tempdir_in("/tmp")?;
    let initrd_line = initrd.map(|p| format!("initrd = \"{}\"\n", p.display())).unwrap_or_default();
    let text = format!(
        r#"
[webhook]
secret = "{secret}"
[github]
api_url = "{api}"
token = "{token}"
repositories = ["octo-org/app"]
[scheduler]
runner_scope = "octo-org"
reconcile_interval = 1
github_sync_interval = 5
[[pools]]
name = "bench"
labels = ["linux", "bench"]
provider = "microvm"
max_runners = 2
[pools.settings]
kernel = "{kernel}"
rootfs = "{rootfs}"
{initrd_line}qemu = "{qemu}"
state_dir = "{state}"
vcpus = 1
memory_mib = 512
min_hot = 1
network = {{ mode = "nat", subnet = "172.31.0.0/16", dns = "127.0.0.1", allow = ["{sim_ip}/32"] }}
"#,
        secret = SimConfig::DEFAULT_WEBHOOK_SECRET,
        api = sim.api_url(),
        token = SimConfig::DEFAULT_PAT,
        kernel = kernel.display(),
        rootfs = rootfs.display(),
        qemu = qemu.display(),
        state = dir.path().join("vms").display(),
        sim_ip = netns.ns_ip,
    );
    let config = crate::config::HangarConfig::parse(Path::new("bench.toml"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let store =
        hangar_store::Store::open(&hangar_store::Store::sqlite_url(&dir.path().join("hangar.db")))
            .await?;
    let state = ServerState::new(
        store.clone(),
        Some(hangar_github::WebhookSecret::new(SimConfig::DEFAULT_WEBHOOK_SECRET)),
        ApiAccess::new(false, None),
    );
    let running =
        crate::lifecycle::start(&config, &store, dir.path(), state.job_activity()).await?;
    let listener = tokio::net::TcpListener::bind((netns.host_ip, 0)).await?;
    sim.webhook_url_set(Some(format!("http://{}/webhook", listener.local_addr()?)));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, hangar_server::router(state)).await;
    });
    let result = measure_runs(&running, &sim, runs).await;
    server.abort();
    running.shutdown().await;
    store.close().await;
    result
}

async fn measure_runs(
    running: &crate::lifecycle::Running,
    sim: &hangar_simulator::SimHandle,
    runs: usize,
) -> Result<Option<Stat>> {
    let provider = running.microvms().first().context("no microVM pool")?.clone();
    let timeout = Duration::from_secs(180);
    let mut xs = Vec::new();
    for _ in 0..runs {
        until(timeout, "an idle pre-booted VM", || async { provider.hot_idle() >= 1 }).await?;
        let before: Vec<_> = provider.list().await?.into_iter().map(|i| i.runner_id).collect();
        let t0 = Instant::now();
        let job = sim.job_queue(JobSpec::new("octo-org/app", ["self-hosted", "linux", "bench"]));
        let started = std::cell::Cell::new(None);
        until(timeout, "the job's runner to start", || {
            let provider = provider.clone();
            let before = before.clone();
            let found = &started;
            async move {
                for instance in provider.list().await.unwrap_or_default() {
                    if before.contains(&instance.runner_id) {
                        continue;
                    }
                    if let Some(t) =
                        provider.timings(&instance.runner_id).and_then(|t| t.runner_started)
                    {
                        found.set(Some(t));
                        return true;
                    }
                }
                false
            }
        })
        .await?;
        if let Some(t) = started.get() {
            xs.push(t.duration_since(t0).as_secs_f64() * 1000.0);
        }
        until(timeout, "the job to complete and its VM to go", || async {
            let done = sim.job(job).is_some_and(|j| j.status == SimJobStatus::Completed);
            done && provider.list().await.is_ok_and(|l| l.len() <= before.len())
        })
        .await?;
    }
    Ok(Stat::of(xs))
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes.
async fn until<F, Fut>(timeout: Duration, what: &str, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
