//! Turns each pool's [`ProviderConfig`] into a provider value. Only host
//! probes happen here; the config was checked when it was loaded.
//!
//! `auto` picks microVMs when this host can run them (QEMU runs, it has an
//! accelerator — KVM or TCG —, an image exists, and NAT is possible). The
//! choice ([`auto_choose`]) is a pure function of the facts [`host_facts`]
//! gathers, so it is table-tested. When microVMs are not usable, **isolation
//! fails closed**: the pool gets an [`Unavailable`] provider whose health
//! says why (the planner starts nothing and tells the pool's jobs the
//! reason; `/healthz` says degraded), unless the pool allows local
//! processes explicitly (`allow_unisolated = true`), which then run with a
//! loud warning.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result};
use hangar_provider::{Provider, Unavailable};
use hangar_provider_microvm::accel::{Accel, AccelProbe};
use hangar_provider_microvm::{MicrovmProvider, MicrovmSettings, NetworkConfig, VmPaths};
use hangar_provider_process::{ProcessConfig, ProcessProvider};
use hangar_types::{ErrorChain, PoolName};

use crate::config::{AutoSettings, PoolSection, ProviderConfig};

/// The image cache `hangar image build` writes into and a pool without
/// `kernel`/`rootfs` boots the newest trusted image of:
/// `$HANGAR_CACHE_DIR`, else `~/.cache/hangar`, else (no `HOME`, as for
/// many system services) [`SYSTEM_IMAGE_CACHE`]; never a shared directory
/// such as `/tmp`. Which image is booted is checked on top
/// (`image::image_trusted`: owned by root or hangar's user, writable by no
/// one else, files inside the image's own directory).
pub fn image_cache_dir(flag: Option<PathBuf>) -> PathBuf {
    image_cache_dir_from(
        flag,
        std::env::var_os("HANGAR_CACHE_DIR").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

/// How long one host probe (`qemu --version`, `nft --version`) may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The image cache of a hangar that has no `HOME`.
pub const SYSTEM_IMAGE_CACHE: &str = "/var/lib/hangar";

fn image_cache_dir_from(
    flag: Option<PathBuf>,
    env: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    flag.or(env)
        .or_else(|| {
            home.filter(|h| !h.as_os_str().is_empty()).map(|h| h.join(".cache").join("hangar"))
        })
        .unwrap_or_else(|| PathBuf::from(SYSTEM_IMAGE_CACHE))
}

/// Builds the provider of `pools[i]`. A microVM pool whose provider cannot
/// start on this host, and an `auto` pool that cannot have microVMs, get
/// an [`Unavailable`] provider that says why (see the module docs): hangar
/// still starts, records jobs and says what is wrong, and never runs a job
/// outside the isolation the pool asked for.
pub async fn provider_build(i: usize, pool: &PoolSection, data_dir: &Path) -> Arc<dyn Provider> {
    match &pool.provider {
        ProviderConfig::Process(config) => Arc::new(process_provider(&pool.name, config, data_dir)),
        ProviderConfig::Microvm(settings) => {
            match microvm_provider(&pool.name, settings.clone(), data_dir).await {
                Ok(provider) => Arc::new(provider),
                Err(e) => {
                    let reason = format!(
                        "the microVM provider cannot start: {e:#} (build an image with `hangar \
                         image build SPEC`, or set kernel and rootfs)"
                    );
                    unavailable(i, &pool.name, "microvm", reason)
                }
            }
        }
        ProviderConfig::Auto(auto) => auto_provider(i, &pool.name, auto, data_dir).await,
    }
}

fn unavailable(i: usize, pool: &PoolName, kind: &'static str, reason: String) -> Arc<dyn Provider> {
    tracing::error!(
        pool = %pool,
        reason = %reason,
        "Pool pools[{i}] is UNHEALTHY and starts no runners."
    );
    Arc::new(Unavailable::new(kind, reason))
}

async fn auto_provider(
    i: usize,
    pool: &PoolName,
    auto: &AutoSettings,
    data_dir: &Path,
) -> Arc<dyn Provider> {
    let mut settings = auto.microvm.clone().unwrap_or_default();
    // A runner must reach GitHub: an auto pool's VMs get NAT unless it says
    // otherwise.
    settings.network.get_or_insert_with(NetworkConfig::nat);
    let facts = host_facts(&settings);
    let why = match auto_choose(&facts) {
        AutoChoice::Microvm { accel } => {
            tracing::info!(pool = %pool, ?accel, qemu = ?facts.qemu, "Provider auto: microVMs.");
            match microvm_provider(pool, settings, data_dir).await {
                Ok(provider) => return Arc::new(provider),
                Err(e) => format!("the microVM provider failed to start: {e:#}"),
            }
        }
        AutoChoice::Unusable { why } => why,
    };
    if auto.allow_unisolated {
        tracing::warn!(
            pool = %pool,
            "PROVIDER AUTO FELL BACK TO LOCAL PROCESSES for pools[{i}] (allow_unisolated = true): \
             {why}. Runners run as local processes, NOT isolated: a job can read anything hangar \
             can. Install qemu-system-x86 and build an image (`hangar image build SPEC`) for \
             microVMs."
        );
        let run_sh = data_dir.join("actions-runner").join("run.sh");
        let config = auto.process.clone().unwrap_or(ProcessConfig {
            command: run_sh,
            args: Vec::new(),
            work_root: None,
            env: Default::default(),
        });
        return Arc::new(process_provider(pool, &config, data_dir));
    }
    let reason = format!(
        "no isolated runners possible: {why}. Fix that (install qemu-system-x86, build an image \
         with `hangar image build SPEC`), or allow local processes (NOT isolated) with \
         `allow_unisolated = true` in [pools.provider.auto]"
    );
    unavailable(i, pool, "auto", reason)
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

/// Whether an `auto` pool can have microVMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AutoChoice {
    Microvm { accel: Accel },
    Unusable { why: String },
}

/// The `auto` rule, see the module docs.
pub(crate) fn auto_choose(facts: &HostFacts) -> AutoChoice {
    let unusable = |why: String| AutoChoice::Unusable { why };
    if let Err(why) = &facts.qemu {
        return unusable(why.clone());
    }
    let has = |a: &str| facts.qemu_accels.iter().any(|x| x == a);
    let accel = if facts.accel.accel == Accel::Kvm && has("kvm") {
        Accel::Kvm
    } else if has("tcg") {
        Accel::Tcg
    } else {
        return unusable(format!(
            "QEMU has neither a usable KVM ({}) nor TCG (accelerators: {:?})",
            facts.accel.reason, facts.qemu_accels
        ));
    };
    if let Err(why) = &facts.image {
        return unusable(why.clone());
    }
    if let Some(Err(why)) = &facts.nat {
        return unusable(why.clone());
    }
    AutoChoice::Microvm { accel }
}

/// Gathers [`HostFacts`] for an `auto` pool's microVM settings.
fn host_facts(settings: &MicrovmSettings) -> HostFacts {
    let qemu_path = settings.qemu.clone();
    let run = |args: &[&str]| {
        hangar_exec::output_within(Command::new(&qemu_path).args(args), PROBE_TIMEOUT)
    };
    let qemu = match run(&["--version"]) {
        Ok(out) => {
            Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("qemu").to_owned())
        }
        Err(e) => Err(format!("QEMU cannot run: {}", ErrorChain(&e))),
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
    let nat = match settings.network {
        Some(NetworkConfig::None) | None => None,
        Some(NetworkConfig::Nat { .. }) => Some(nat_possible()),
    };
    HostFacts {
        qemu,
        qemu_accels,
        accel: hangar_provider_microvm::accel::accel_probe(Path::new("/")),
        image: image_paths(settings),
        nat,
    }
}

/// The kernel, rootfs and (stock kernel) initramfs a microVM pool boots:
/// from its settings, else the newest trusted image `hangar image build`
/// left in the image cache (see [`image_cache_dir`]).
fn image_paths(settings: &MicrovmSettings) -> Result<ImagePaths, String> {
    let (kernel, rootfs, initrd) = match (&settings.kernel, &settings.rootfs) {
        (Some(k), Some(r)) => (k.clone(), r.clone(), settings.initrd.clone()),
        _ => {
            let cache = image_cache_dir(None);
            let image =
                hangar_provider_microvm::image::image_newest_trusted(&cache).map_err(|e| {
                    format!("no usable microVM image in {}: {}", cache.display(), ErrorChain(&e))
                })?;
            let initrd =
                if settings.kernel.is_some() { settings.initrd.clone() } else { image.initrd };
            (
                settings.kernel.clone().unwrap_or(image.kernel),
                settings.rootfs.clone().unwrap_or(image.rootfs),
                initrd,
            )
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
    if !nix::unistd::geteuid().is_root() {
        return Err("microVM networking (tap + NAT) needs root".into());
    }
    match hangar_exec::output_within(Command::new("nft").arg("--version"), PROBE_TIMEOUT) {
        Ok(_) => Ok(()),
        _ => {
            Err("microVM networking needs nftables (`nft`): install the Debian package nftables"
                .into())
        }
    }
}

/// A process pool: work directories under `<data_dir>/runners/<pool>`
/// unless the pool says otherwise.
fn process_provider(pool: &PoolName, config: &ProcessConfig, data_dir: &Path) -> ProcessProvider {
    ProcessProvider::new(config.clone(), &data_dir.join("runners").join(&pool.0))
}

/// A microVM pool: `state_dir` defaults to `<data_dir>/vms/<pool>`, and
/// `kernel`/`rootfs` to the newest image in the image cache.
pub async fn microvm_provider(
    pool: &PoolName,
    settings: MicrovmSettings,
    data_dir: &Path,
) -> Result<MicrovmProvider> {
    let image = image_paths(&settings).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state_dir =
        settings.state_dir.clone().unwrap_or_else(|| data_dir.join("vms").join(&pool.0));
    let paths =
        VmPaths { kernel: image.kernel, initrd: image.initrd, rootfs: image.rootfs, state_dir };
    let provider = MicrovmProvider::new(pool.clone(), settings.resolve(paths))
        .await
        .with_context(|| format!("starting the microVM provider of pool {pool}"))?;
    let health = provider.health().await;
    if !health.ok {
        tracing::warn!(pool = %pool, problem = %health.message, "The microVM provider cannot launch yet.");
    }
    Ok(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_cache_is_never_under_tmp() {
        let pick = |flag: Option<&str>, env: Option<&str>, home: Option<&str>| {
            image_cache_dir_from(flag.map(Into::into), env.map(Into::into), home.map(Into::into))
        };
        assert_eq!(pick(None, None, None), PathBuf::from("/var/lib/hangar"), "no HOME: not /tmp");
        assert_eq!(pick(None, None, Some("")), PathBuf::from("/var/lib/hangar"));
        assert_eq!(pick(None, None, Some("/root")), PathBuf::from("/root/.cache/hangar"));
        assert_eq!(pick(None, Some("/srv/img"), Some("/root")), PathBuf::from("/srv/img"));
        assert_eq!(pick(Some("/x"), Some("/srv/img"), None), PathBuf::from("/x"));
    }

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
    fn auto_without_microvms_says_why() {
        let why = |f: HostFacts| match auto_choose(&f) {
            AutoChoice::Unusable { why } => why,
            other @ AutoChoice::Microvm { .. } => panic!("expected unusable, got {other:?}"),
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

    /// The fail-closed rule end to end, on this host's real facts: an auto
    /// pool pointed at a QEMU that does not exist never gets processes
    /// unless it allows them.
    #[tokio::test]
    async fn auto_fails_closed_unless_unisolated_is_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let microvm =
            MicrovmSettings { qemu: "/nonexistent/qemu".into(), ..MicrovmSettings::default() };
        let pool = PoolName("p".into());
        let closed = AutoSettings { microvm: Some(microvm.clone()), ..AutoSettings::default() };
        let provider = auto_provider(0, &pool, &closed, dir.path()).await;
        assert!(provider.isolated(), "an unavailable pool claims nothing unisolated");
        let health = provider.health().await;
        assert!(!health.ok);
        assert!(health.message.contains("cannot run"), "{}", health.message);
        assert!(health.message.contains("allow_unisolated"), "{}", health.message);
        let open = AutoSettings {
            microvm: Some(microvm),
            allow_unisolated: true,
            process: Some(ProcessConfig {
                command: "/bin/true".into(),
                args: Vec::new(),
                work_root: None,
                env: Default::default(),
            }),
        };
        let provider = auto_provider(0, &pool, &open, dir.path()).await;
        assert_eq!(provider.kind(), "process");
        assert!(!provider.isolated());
    }
}
