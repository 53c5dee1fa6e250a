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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hangar::config::{Overrides, ProviderConfig};
use hangar_provider::Provider as _;
use hangar_provider_microvm::MicrovmProvider;
use hangar_provider_microvm::bench::Stat;
use hangar_simulator::netns::Netns;
use hangar_simulator::{JobSpec, SimConfig, SimJobStatus, Simulator};

/// Measures `runs` jobs, one at a time, each into a pre-booted VM.
pub(super) async fn measure(
    kernel: &Path,
    rootfs: &Path,
    initrd: Option<&PathBuf>,
    qemu: &Path,
    runs: usize,
) -> Result<Option<Stat>> {
    let netns = Netns::create("hangar-bench")?;
    let sim = Simulator::start_with_listener(
        SimConfig { long_poll: Duration::from_secs(2), ..SimConfig::default() },
        netns.listen()?,
    )
    .await?;
    let dir = tempfile::Builder::new().prefix("hgb").tempdir_in("/tmp")?;
    let initrd_line = initrd.map(|p| format!("initrd = \"{}\"\n", p.display())).unwrap_or_default();
    let text = format!(
        r#"{github}
[[pools]]
name = "bench"
labels = ["linux", "bench"]
max_runners = 2
[pools.provider.microvm]
kernel = "{kernel}"
rootfs = "{rootfs}"
{initrd_line}qemu = "{qemu}"
state_dir = "{state}"
vcpus = 1
memory_mib = 512
min_hot = 1
network = {{ mode = "nat", subnet = "172.31.0.0/16", dns = "127.0.0.1", allow = ["{sim_ip}/32"] }}
"#,
        github = sim.hangar_toml("reconcile_interval = \"1s\"\ngithub_sync_interval = \"5s\""),
        kernel = kernel.display(),
        rootfs = rootfs.display(),
        qemu = qemu.display(),
        state = dir.path().join("vms").display(),
        sim_ip = netns.ns_ip,
    );
    let listener = tokio::net::TcpListener::bind((netns.host_ip, 0)).await?;
    let overrides = Overrides {
        listen: Some(listener.local_addr()?),
        data_dir: Some(dir.path().to_owned()),
        ..Overrides::default()
    };
    let config = hangar::config::load_text("bench.toml", &text, &hangar::config::no_env, overrides)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The pool's provider is built here, not by the app, to read its
    // timings; the app wires everything else as `serve` does.
    let pool = config.pools.first().context("the bench pool")?;
    let ProviderConfig::Microvm(settings) = &pool.provider else { bail!("a microvm pool") };
    let provider =
        hangar::providers::microvm_provider(&pool.name, settings.clone(), dir.path()).await?;
    let parts = hangar::Parts {
        providers: HashMap::from([(pool.name.clone(), Arc::new(provider.clone()) as _)]),
        ..hangar::Parts::default()
    };
    let app = hangar::App::build(&config, parts).await?;
    app.start();
    sim.webhook_url_set(Some(format!("http://{}/webhook", listener.local_addr()?)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let result = {
        let admin = hangar::local_admin_listener().await?;
        let serve = app.serve(hangar_server::Bound::Tcp(listener), admin, async move {
            let _ = stopped.await;
        });
        let measure = async {
            let result = measure_runs(&provider, &sim, runs).await;
            let _ = stop.send(());
            result
        };
        let ((), result) = tokio::join!(serve, measure);
        result
    };
    app.stop().await;
    result
}

async fn measure_runs(
    provider: &MicrovmProvider,
    sim: &hangar_simulator::SimHandle,
    runs: usize,
) -> Result<Option<Stat>> {
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
