//! Starts the runner lifecycle (reconciler + lost-webhook recovery) from
//! the `[scheduler]`, `[[pools]]` and `[github]` sections.
//!
//! This is where provider kinds named in the config become provider
//! values: the closed list of kinds ([`PROVIDER_KINDS`]) lives here, in the
//! binary, so the scheduler never depends on a provider implementation. A
//! kind this build does not include is a config error naming the pool, not
//! a panic.
//!
//! `provider = "auto"` picks the microVM provider when this host can run
//! it (QEMU runs, it has an accelerator — KVM or TCG —, an image exists,
//! and NAT is possible) and otherwise the process provider with one loud
//! warning saying why. The choice ([`auto_choose`]) is a pure function of
//! the facts [`host_facts`] gathers, so it is table-tested.
//!
//! With no `[[pools]]`, a default pool ([`default_pool`]: `default`,
//! labels `self-hosted, linux, x64`, provider `auto`) runs as soon as
//! GitHub credentials and a runner scope are configured; without them
//! hangar only records webhooks and says what is missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hangar_github::{RestClient, RunnerScope};
use hangar_provider::Provider;
use hangar_provider_microvm::accel::{Accel, AccelProbe};
use hangar_provider_microvm::{MicrovmConfig, MicrovmProvider};
use hangar_provider_process::ProcessProvider;
use hangar_scheduler::Lifecycle;
use hangar_scheduler::config::PoolConfig;
use hangar_store::Store;
use hangar_types::PoolName;
use tokio::sync::Notify;

use crate::config::HangarConfig;

/// The provider kinds this build knows.
pub(crate) const PROVIDER_KINDS: [&str; 3] = ["auto", "microvm", "process"];

/// Names the runner scope when `[scheduler] runner_scope` does not.
pub(crate) const ENV_RUNNER_SCOPE: &str = "HANGAR_RUNNER_SCOPE";

/// What `serve` started; [`Running::shutdown`] undoes what must not
/// outlive hangar (pre-booted VMs, the pools' firewall tables).
#[derive(Debug, Default)]
pub(crate) struct Running {
    pub(crate) lifecycle: Option<Arc<Lifecycle>>,
    microvms: Vec<MicrovmProvider>,
}

impl Running {
    /// The microVM pools' providers (for `hangar bench microvm`).
    pub(crate) fn microvms(&self) -> &[MicrovmProvider] {
        &self.microvms
    }

    /// Stops the microVM pools' pre-booted VMs and, when no runner VM is
    /// left, removes their firewall tables. Runner VMs are left to the next
    /// start, which finds them on disk.
    pub(crate) async fn shutdown(self) {
        for provider in self.microvms {
            provider.shutdown().await;
        }
    }
}

/// The pool `serve` runs when the config has no `[[pools]]`.
pub(crate) fn default_pool() -> PoolConfig {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    toml::from_str(&format!(
        "name = \"default\"\nlabels = [\"linux\", \"x64\"]\nprovider = \"auto\"\nmax_runners = {cores}\n"
    ))
    .expect("the default pool parses")
}

/// The pools to run: the configured ones, else the default pool when
/// credentials and a scope exist; `Err` says what is missing.
fn pools_effective(config: &HangarConfig, scope_known: bool) -> Result<Vec<PoolConfig>, String> {
    if !config.pools.is_empty() {
        return Ok(config.pools.clone());
    }
    let credentials = config.github.client_config(|var| std::env::var(var).ok());
    match credentials {
        Ok(None) => Err("No GitHub credentials (HANGAR_GITHUB_TOKEN, or a GitHub App in \
                         [github]): jobs are recorded, no runners are started."
            .into()),
        Err(e) => Err(format!("config: {e}: no runners are started.")),
        Ok(Some(_)) if !scope_known => Err(format!(
            "GitHub credentials are set but no runner scope: set {ENV_RUNNER_SCOPE} or \
             [scheduler] runner_scope to the organization (or owner/repo) runners register in. \
             Until then jobs are recorded, no runners are started."
        )),
        Ok(Some(_)) => Ok(vec![default_pool()]),
    }
}

/// Builds and spawns the lifecycle; no lifecycle when there is no pool to
/// run (hangar then only records webhooks).
pub(crate) async fn start(
    config: &HangarConfig,
    store: &Store,
    data_dir: &Path,
    wake: Arc<Notify>,
) -> Result<Running> {
    let mut scheduler = config.scheduler.clone();
    if scheduler.runner_scope.is_none() {
        scheduler.runner_scope = std::env::var(ENV_RUNNER_SCOPE).ok().filter(|s| !s.is_empty());
    }
    let pools = match pools_effective(config, scheduler.runner_scope.is_some()) {
        Ok(pools) => pools,
        Err(missing) => {
            tracing::warn!("{missing}");
            return Ok(Running::default());
        }
    };
    if config.pools.is_empty() {
        tracing::info!(
            "No [[pools]] configured: running the default pool `default` \
             (labels self-hosted, linux, x64; provider auto)."
        );
    }
    hangar_scheduler::config::validate(&scheduler, &pools)
        .map_err(|e| anyhow::anyhow!("config: key `{}`: {}", e.key, e.expected))?;
    let client = config
        .github
        .client_config(|var| std::env::var(var).ok())
        .map_err(|e| anyhow::anyhow!("config: {e}"))?
        .context("pools are configured but GitHub credentials are not: set [github] or HANGAR_GITHUB_TOKEN")?;
    let github = Arc::new(RestClient::new(client).context("building the GitHub client")?);
    let scope_text = scheduler.runner_scope.as_deref().unwrap_or_default();
    let scope = RunnerScope::parse(scope_text).with_context(|| {
        format!("config: key `scheduler.runner_scope`: cannot parse {scope_text:?}")
    })?;
    let mut providers: HashMap<PoolName, Arc<dyn Provider>> = HashMap::new();
    let mut running = Running::default();
    for (i, pool) in pools.iter().enumerate() {
        let kind = match pool.provider.as_str() {
            "auto" => auto_resolve(i, pool),
            other => other.to_owned(),
        };
        let provider: Arc<dyn Provider> = match kind.as_str() {
            "process" => Arc::new(process_provider(i, pool, data_dir)?),
            "microvm" => match microvm_provider(i, pool, data_dir).await {
                Ok(provider) => {
                    running.microvms.push(provider.clone());
                    Arc::new(provider)
                }
                // `auto` promised a working pool: processes, said loudly.
                Err(e) if pool.provider == "auto" => {
                    tracing::warn!(
                        pool = %pool.name,
                        "PROVIDER AUTO FELL BACK TO THE PROCESS PROVIDER for pools[{i}]: the \
                         microVM provider failed to start: {e:#}. Runners run as local \
                         processes, NOT isolated: development only."
                    );
                    Arc::new(process_provider(i, pool, data_dir)?)
                }
                Err(e) => return Err(e),
            },
            other => bail!(
                "config: key `pools[{i}].provider`: `{other}` is not built into this hangar \
                 (expected one of {PROVIDER_KINDS:?})"
            ),
        };
        providers.insert(pool.name.clone(), provider);
    }
    let lifecycle =
        Lifecycle::new(store.clone(), github, scope, scheduler, pools.clone(), providers, wake);
    lifecycle.spawn();
    lifecycle.recovery_spawn();
    tracing::info!(pools = pools.len(), "Runner lifecycle started.");
    running.lifecycle = Some(lifecycle);
    Ok(running)
}

/// A pool's provider settings: the table itself, or for `auto` pools its
/// `microvm` / `process` sub-table.
fn settings_for(pool: &PoolConfig, kind: &str) -> toml::Table {
    if pool.provider != "auto" {
        return pool.settings.clone();
    }
    match pool.settings.get(kind) {
        Some(toml::Value::Table(t)) => t.clone(),
        _ => toml::Table::new(),
    }
}

/// Checks the shape of a pool's provider and settings without touching the
/// host (for `hangar config check` and config loading).
pub(crate) fn pool_check(pool: &PoolConfig) -> Result<(), (String, String)> {
    let kind = pool.provider.as_str();
    if !PROVIDER_KINDS.contains(&kind) {
        return Err((
            "provider".into(),
            format!("expected one of {PROVIDER_KINDS:?}, got {kind:?}"),
        ));
    }
    let microvm = |table: toml::Table| {
        let mut table = table;
        for key in ["kernel", "rootfs", "state_dir"] {
            table.entry(key).or_insert_with(|| "/checked-at-start".into());
        }
        table.try_into::<MicrovmConfig>().map(drop).map_err(|e| e.message().trim().to_owned())
    };
    let process = |table: toml::Table| {
        let mut table = table;
        table.entry("command").or_insert_with(|| "/checked-at-start".into());
        table
            .try_into::<hangar_provider_process::ProcessConfig>()
            .map(drop)
            .map_err(|e| e.message().trim().to_owned())
    };
    match kind {
        "microvm" => microvm(pool.settings.clone()).map_err(|e| ("settings".into(), e)),
        "process" if pool.settings.contains_key("command") => {
            process(pool.settings.clone()).map_err(|e| ("settings".into(), e))
        }
        "process" => Err(("settings.command".into(), "expected the runner program".into())),
        _ => {
            if let Some(key) = pool.settings.keys().find(|k| *k != "microvm" && *k != "process") {
                return Err((
                    format!("settings.{key}"),
                    "expected only [settings.microvm] and [settings.process] in an auto pool"
                        .into(),
                ));
            }
            microvm(settings_for(pool, "microvm")).map_err(|e| ("settings.microvm".into(), e))?;
            process(settings_for(pool, "process")).map_err(|e| ("settings.process".into(), e))
        }
    }
}

/// What `auto` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostFacts {
    /// QEMU's version line, or why it cannot run.
    pub(crate) qemu: Result<String, String>,
    /// Accelerators this QEMU build has (`qemu -accel help`).
    pub(crate) qemu_accels: Vec<String>,
    pub(crate) accel: AccelProbe,
    /// The guest kernel and root filesystem, or why there are none.
    pub(crate) image: Result<ImagePaths, String>,
    /// Whether the pool's NAT network can be set up (root, nft); `None`
    /// when the pool has no network.
    pub(crate) nat: Option<Result<(), String>>,
}

/// Which provider an `auto` pool gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AutoChoice {
    Microvm { accel: Accel },
    Process { why: String },
}

/// The `auto` rule, see the module docs.
pub(crate) fn auto_choose(facts: &HostFacts) -> AutoChoice {
    let process = |why: String| AutoChoice::Process { why };
    if let Err(why) = &facts.qemu {
        return process(why.clone());
    }
    let has = |a: &str| facts.qemu_accels.iter().any(|x| x == a);
    let accel = if facts.accel.accel == Accel::Kvm && has("kvm") {
        Accel::Kvm
    } else if has("tcg") {
        Accel::Tcg
    } else {
        return process(format!(
            "QEMU has neither a usable KVM ({}) nor TCG (accelerators: {:?})",
            facts.accel.reason, facts.qemu_accels
        ));
    };
    if let Err(why) = &facts.image {
        return process(why.clone());
    }
    if let Some(Err(why)) = &facts.nat {
        return process(why.clone());
    }
    AutoChoice::Microvm { accel }
}

/// Gathers [`HostFacts`] for an `auto` pool's microVM settings.
fn host_facts(microvm: &toml::Table) -> HostFacts {
    let qemu_path = microvm
        .get("qemu")
        .and_then(toml::Value::as_str)
        .unwrap_or("qemu-system-x86_64")
        .to_owned();
    let run = |args: &[&str]| std::process::Command::new(&qemu_path).args(args).output();
    let qemu = match run(&["--version"]) {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("qemu").to_owned())
        }
        Ok(out) => Err(format!("`{qemu_path} --version` failed ({})", out.status)),
        Err(e) => Err(format!("QEMU ({qemu_path}) cannot run: {e}; install qemu-system-x86")),
    };
    let qemu_accels = run(&["-accel", "help"])
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .skip(1)
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let image = image_paths(microvm);
    let nat = match microvm.get("network") {
        Some(n) if n.get("mode").and_then(toml::Value::as_str) == Some("none") => None,
        _ => Some(nat_possible()),
    };
    HostFacts {
        qemu,
        qemu_accels,
        accel: hangar_provider_microvm::accel::accel_probe(Path::new("/")),
        image,
        nat,
    }
}

/// The kernel, rootfs and (stock kernel) initramfs a microVM pool boots:
/// from its settings, else the newest image `hangar image build` left in
/// the image cache.
fn image_paths(settings: &toml::Table) -> Result<ImagePaths, String> {
    let get = |k: &str| settings.get(k).and_then(toml::Value::as_str).map(PathBuf::from);
    let (kernel, rootfs, initrd) = match (get("kernel"), get("rootfs")) {
        (Some(k), Some(r)) => (k, r, get("initrd")),
        _ => {
            let cache =
                crate::cmd::image::cache_dir(std::env::var_os("HANGAR_CACHE_DIR").map(Into::into));
            let newest = hangar_provider_microvm::image::image_list(&cache).into_iter().next();
            let Some(image) = newest else {
                return Err(format!(
                    "no microVM image in {} (build one with `hangar image build SPEC`)",
                    cache.display()
                ));
            };
            let initrd = if get("kernel").is_some() { get("initrd") } else { image.initrd };
            (get("kernel").unwrap_or(image.kernel), get("rootfs").unwrap_or(image.rootfs), initrd)
        }
    };
    for (what, path) in [("kernel", &kernel), ("rootfs", &rootfs)] {
        if !path.exists() {
            return Err(format!("the microVM {what} {} does not exist", path.display()));
        }
    }
    Ok(ImagePaths { kernel, rootfs, initrd })
}

/// What a microVM pool boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImagePaths {
    pub(crate) kernel: PathBuf,
    pub(crate) rootfs: PathBuf,
    pub(crate) initrd: Option<PathBuf>,
}

/// NAT needs root (taps, nftables, ip_forward) and `nft`.
fn nat_possible() -> Result<(), String> {
    if !is_root() {
        return Err("microVM networking (tap + NAT) needs root".into());
    }
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("microVM networking needs nftables (`nft`): install nftables".into()),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            .is_some_and(|euid| euid == "0")
    })
}

/// Decides an `auto` pool's kind, warning loudly when it is `process`.
fn auto_resolve(i: usize, pool: &PoolConfig) -> String {
    let facts = host_facts(&auto_microvm_settings(pool));
    match auto_choose(&facts) {
        AutoChoice::Microvm { accel } => {
            tracing::info!(pool = %pool.name, ?accel, qemu = ?facts.qemu, "provider auto: microVMs");
            "microvm".into()
        }
        AutoChoice::Process { why } => {
            tracing::warn!(
                pool = %pool.name,
                "PROVIDER AUTO FELL BACK TO THE PROCESS PROVIDER for pools[{i}]: {why}. Runners \
                 run as local processes, NOT isolated: development only. Install \
                 qemu-system-x86 and build an image (`hangar image build SPEC`) for microVMs."
            );
            "process".into()
        }
    }
}

/// An `auto` pool's microVM settings; a runner must reach GitHub, so its
/// VMs get NAT unless the pool says otherwise.
fn auto_microvm_settings(pool: &PoolConfig) -> toml::Table {
    let mut settings = settings_for(pool, "microvm");
    if pool.provider == "auto" && !settings.contains_key("network") {
        let mut nat = toml::Table::new();
        nat.insert("mode".into(), "nat".into());
        settings.insert("network".into(), nat.into());
    }
    settings
}

/// A process pool (or an `auto` pool that fell back). An `auto` pool
/// without `[settings.process]` runs the Actions runner from
/// `<data_dir>/actions-runner/run.sh`.
fn process_provider(i: usize, pool: &PoolConfig, data_dir: &Path) -> Result<ProcessProvider> {
    let mut settings = settings_for(pool, "process");
    if pool.provider == "auto" {
        let run_sh = data_dir.join("actions-runner").join("run.sh");
        settings.entry("command").or_insert_with(|| run_sh.display().to_string().into());
    }
    let root = data_dir.join("runners").join(&pool.name.0);
    ProcessProvider::from_settings(&settings, &root)
        .map_err(|e| anyhow::anyhow!("config: pools[{i}]: {e}"))
}

/// A microVM pool. Its `settings` are a `MicrovmConfig`; `state_dir`
/// defaults to `<data_dir>/vms/<pool>`, and `kernel`/`rootfs` to the newest
/// image `hangar image build` left in the image cache.
async fn microvm_provider(i: usize, pool: &PoolConfig, data_dir: &Path) -> Result<MicrovmProvider> {
    let mut settings = auto_microvm_settings(pool);
    let state_dir = data_dir.join("vms").join(&pool.name.0);
    settings.entry("state_dir").or_insert_with(|| state_dir.display().to_string().into());
    if !settings.contains_key("kernel") || !settings.contains_key("rootfs") {
        let image = image_paths(&settings)
            .map_err(|e| anyhow::anyhow!("config: pools[{i}] (microvm): {e}"))?;
        if let (false, Some(initrd)) = (settings.contains_key("kernel"), &image.initrd) {
            settings.insert("initrd".into(), initrd.display().to_string().into());
        }
        settings.entry("kernel").or_insert_with(|| image.kernel.display().to_string().into());
        settings.entry("rootfs").or_insert_with(|| image.rootfs.display().to_string().into());
    }
    let config: MicrovmConfig = settings.try_into().map_err(|e: toml::de::Error| {
        anyhow::anyhow!("config: pools[{i}].settings (microvm): {}", e.message().trim())
    })?;
    let provider = MicrovmProvider::new(pool.name.clone(), config)
        .await
        .with_context(|| format!("starting the microVM provider of pool {}", pool.name))?;
    let health = provider.health().await;
    if !health.ok {
        tracing::warn!(pool = %pool.name, problem = %health.message, "The microVM provider cannot launch yet.");
    }
    Ok(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            qemu: Ok("QEMU emulator version 7.2.22".into()),
            qemu_accels: vec!["kvm".into(), "tcg".into()],
            accel: AccelProbe { accel: Accel::Kvm, reason: "hardware virtualisation".into() },
            image: Ok(ImagePaths { kernel: "/k".into(), rootfs: "/r".into(), initrd: None }),
            nat: Some(Ok(())),
        }
    }

    #[test]
    fn auto_takes_microvms_with_qemu_an_accelerator_and_an_image() {
        assert_eq!(auto_choose(&facts()), AutoChoice::Microvm { accel: Accel::Kvm });
        let pvm = HostFacts {
            accel: AccelProbe { accel: Accel::Tcg, reason: "/dev/kvm is PVM".into() },
            ..facts()
        };
        assert_eq!(auto_choose(&pvm), AutoChoice::Microvm { accel: Accel::Tcg });
        let no_network = HostFacts { nat: None, ..facts() };
        assert_eq!(auto_choose(&no_network), AutoChoice::Microvm { accel: Accel::Kvm });
    }

    #[test]
    fn auto_falls_back_to_processes_and_says_why() {
        let why = |f: HostFacts| match auto_choose(&f) {
            AutoChoice::Process { why } => why,
            other @ AutoChoice::Microvm { .. } => {
                panic!("expected the process provider, got {other:?}")
            }
        };
        let no_qemu = HostFacts {
            qemu: Err("QEMU (qemu-system-x86_64) cannot run: not found".into()),
            qemu_accels: Vec::new(),
            ..facts()
        };
        assert!(why(no_qemu).contains("QEMU"));
        let no_accel = HostFacts {
            qemu_accels: vec!["xen".into()],
            accel: AccelProbe { accel: Accel::Tcg, reason: "/dev/kvm does not exist".into() },
            ..facts()
        };
        assert!(why(no_accel).contains("neither a usable KVM"));
        let no_image = HostFacts { image: Err("no microVM image in /c".into()), ..facts() };
        assert_eq!(why(no_image), "no microVM image in /c");
        let no_nat = HostFacts { nat: Some(Err("needs root".into())), ..facts() };
        assert_eq!(why(no_nat), "needs root");
    }

    #[test]
    fn the_default_pool_is_auto_with_the_usual_labels() {
        let pool = default_pool();
        assert_eq!(pool.name.0, "default");
        assert_eq!(pool.provider, "auto");
        let labels = pool.runner_labels();
        for l in ["self-hosted", "linux", "x64"] {
            assert!(labels.is_superset_of(&hangar_types::Labels::new([l])), "{l}");
        }
        assert_eq!(pool_check(&pool), Ok(()));
    }

    #[test]
    fn pool_checks_name_the_key() {
        let mut pool = default_pool();
        pool.provider = "ec2".into();
        assert_eq!(pool_check(&pool).unwrap_err().0, "provider");
        let mut pool = default_pool();
        pool.settings = toml::from_str("[microvm]\nvcpu = 2\n").unwrap();
        let (key, message) = pool_check(&pool).unwrap_err();
        assert_eq!(key, "settings.microvm");
        assert!(message.contains("unknown field `vcpu`"), "{message}");
        pool.settings = toml::from_str("kernel = \"/k\"\n").unwrap();
        assert_eq!(pool_check(&pool).unwrap_err().0, "settings.kernel");
        pool.provider = "microvm".into();
        assert_eq!(pool_check(&pool), Ok(()));
        pool.provider = "process".into();
        pool.settings = toml::Table::new();
        assert_eq!(pool_check(&pool).unwrap_err().0, "settings.command");
    }
}
