//! A microVM pool's part of `hangar.toml` (`[pools.provider.microvm]`):
//! what one pool's VMs look like.
//!
//! Two types, as options and resolved values: [`MicrovmSettings`] is what
//! the file says (the image and state directory may be left out), parsed
//! and checked when the file is loaded; [`MicrovmConfig`] is what the
//! provider runs with, every path filled in by the binary (the newest
//! image `hangar image build` made, `<data_dir>/vms/<pool>`).

use std::path::PathBuf;
use std::time::Duration;

use hangar_types::duration;
use serde::{Deserialize, Serialize};

use crate::accel::AccelChoice;

/// One pool's microVM settings as the file gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicrovmSettings {
    /// The guest kernel; default: the newest image's.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// The stock kernel's initramfs; default: the newest image's (only
    /// when `kernel` is not given either).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The base root filesystem; default: the newest image's.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Default: `<data_dir>/vms/<pool>`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// VMs kept booted and idle, waiting for a runner spec.
    #[serde(default)]
    pub min_hot: usize,
    #[serde(default)]
    pub prebooted_restore: bool,
    #[serde(default)]
    pub accel: AccelChoice,
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    #[serde(default = "default_qemu_img")]
    pub qemu_img: PathBuf,
    /// Launch → agent ready longer than this fails the VM.
    #[serde(default = "default_boot_timeout", with = "duration")]
    pub boot_timeout: Duration,
    #[serde(default)]
    pub max_parallel_boots: Option<usize>,
    /// Default: no network (an `auto` pool's default is NAT).
    #[serde(default)]
    pub network: Option<NetworkConfig>,
}

impl Default for MicrovmSettings {
    fn default() -> MicrovmSettings {
        MicrovmSettings {
            kernel: None,
            initrd: None,
            rootfs: None,
            state_dir: None,
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            min_hot: 0,
            prebooted_restore: false,
            accel: AccelChoice::Auto,
            qemu: default_qemu(),
            qemu_img: default_qemu_img(),
            boot_timeout: default_boot_timeout(),
            max_parallel_boots: None,
            network: None,
        }
    }
}

/// The paths a pool's VMs boot from and live in, once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub rootfs: PathBuf,
    pub state_dir: PathBuf,
}

impl MicrovmSettings {
    /// The provider's config, with the paths resolved by the caller.
    pub fn resolve(self, paths: VmPaths) -> MicrovmConfig {
        let MicrovmSettings {
            kernel: _,
            initrd: _,
            rootfs: _,
            state_dir: _,
            vcpus,
            memory_mib,
            min_hot,
            prebooted_restore,
            accel,
            qemu,
            qemu_img,
            boot_timeout,
            max_parallel_boots,
            network,
        } = self;
        MicrovmConfig {
            kernel: paths.kernel,
            initrd: paths.initrd,
            rootfs: paths.rootfs,
            state_dir: paths.state_dir,
            vcpus,
            memory_mib,
            min_hot,
            prebooted_restore,
            accel,
            qemu,
            qemu_img,
            boot_timeout,
            max_parallel_boots,
            network: network.unwrap_or_default(),
        }
    }
}

/// One pool's microVM settings, resolved (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MicrovmConfig {
    /// The guest kernel (`vmlinux` with a PVH note, from `hangar image build`).
    pub kernel: PathBuf,
    /// The initramfs of a stock (modular) kernel, from `hangar image build`'s
    /// fallback; none for the project's own kernel.
    pub initrd: Option<PathBuf>,
    /// The base root filesystem (raw ext4). Never written: each VM gets a
    /// qcow2 overlay over it.
    pub rootfs: PathBuf,
    /// Where this pool's VM directories live (overlays, sockets, console
    /// logs). hangar finds VMs it has forgotten here after a restart.
    pub state_dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// VMs kept booted and idle, waiting for a runner spec.
    pub min_hot: usize,
    /// Pre-booted VMs are restored from a snapshot of an idle VM (taken once
    /// per pool) instead of booted: ~10x faster under TCG. Clones share the
    /// guest kernel's state at snapshot time (including its RNG pool until
    /// it reseeds from virtio-rng), hence off by default.
    pub prebooted_restore: bool,
    pub accel: AccelChoice,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    /// Launch → agent ready longer than this fails the VM.
    #[serde(with = "duration")]
    pub boot_timeout: Duration,
    /// VMs booting at once (boot is CPU-bound); default: the core count.
    pub max_parallel_boots: Option<usize>,
    pub network: NetworkConfig,
}

/// How a pool's VMs reach the network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", deny_unknown_fields)]
pub enum NetworkConfig {
    /// No network device at all (loopback only).
    #[default]
    None,
    /// A tap device per VM with NAT to the internet through the host. The
    /// VM cannot reach the host itself, other VMs or private ranges, except
    /// the CIDRs listed in `allow`.
    Nat {
        /// /16 the per-VM /30 links are carved from (default 172.29.0.0/16).
        #[serde(default = "default_subnet")]
        subnet: String,
        /// The host's outgoing interface for NAT (default: the one with the
        /// default route).
        #[serde(default)]
        uplink: Option<String>,
        /// DNS server the guest uses.
        #[serde(default = "default_dns")]
        dns: String,
        /// Private destinations the VMs may reach anyway (e.g. a registry).
        #[serde(default)]
        allow: Vec<String>,
    },
}

impl NetworkConfig {
    /// NAT with every default.
    pub fn nat() -> NetworkConfig {
        NetworkConfig::Nat {
            subnet: default_subnet(),
            uplink: None,
            dns: default_dns(),
            allow: Vec::new(),
        }
    }
}

fn default_vcpus() -> u32 {
    2
}
fn default_memory_mib() -> u32 {
    2048
}
fn default_qemu() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}
fn default_qemu_img() -> PathBuf {
    PathBuf::from("qemu-img")
}
fn default_boot_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_subnet() -> String {
    "172.29.0.0/16".into()
}
fn default_dns() -> String {
    "1.1.1.1".into()
}

impl MicrovmConfig {
    /// A config with defaults for everything but the paths.
    pub fn new(kernel: PathBuf, rootfs: PathBuf, state_dir: PathBuf) -> MicrovmConfig {
        MicrovmConfig {
            kernel,
            initrd: None,
            rootfs,
            state_dir,
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            min_hot: 0,
            prebooted_restore: false,
            accel: AccelChoice::Auto,
            qemu: default_qemu(),
            qemu_img: default_qemu_img(),
            boot_timeout: default_boot_timeout(),
            max_parallel_boots: None,
            network: NetworkConfig::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_rejects_unknown_keys() {
        let settings: MicrovmSettings = toml::from_str(
            r#"
            min_hot = 2
            boot_timeout = "90s"
            network = { mode = "nat", allow = ["10.1.0.0/16"] }
            "#,
        )
        .unwrap();
        assert_eq!(settings.vcpus, 2);
        assert_eq!(settings.min_hot, 2);
        assert_eq!(settings.boot_timeout, Duration::from_secs(90));
        assert!(
            matches!(settings.network, Some(NetworkConfig::Nat { ref allow, .. }) if allow.len() == 1)
        );
        let paths = VmPaths {
            kernel: "/k".into(),
            initrd: None,
            rootfs: "/r".into(),
            state_dir: "/s".into(),
        };
        let config = settings.resolve(paths);
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.min_hot, 2);
        let err = toml::from_str::<MicrovmSettings>("cpus = 3\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `cpus`"), "{err}");
        let err = toml::from_str::<MicrovmSettings>("boot_timeout = 60\n").unwrap_err();
        assert!(err.to_string().contains("write \"60s\""), "{err}");
    }
}
