//! The `[pools.<name>.microvm]` section of `hangar.toml`: what one pool's
//! VMs look like. The binary composes it into the full config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::accel::AccelChoice;

/// One pool's microVM settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicrovmConfig {
    /// The guest kernel (`vmlinux` with a PVH note, from `hangar image build`).
    pub kernel: PathBuf,
    /// The initramfs of a stock (modular) kernel, from `hangar image build`'s
    /// fallback; none for the project's own kernel.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The base root filesystem (raw ext4). Never written: each VM gets a
    /// qcow2 overlay over it.
    pub rootfs: PathBuf,
    /// Where this pool's VM directories live (overlays, sockets, console
    /// logs). hangar finds VMs it has forgotten here after a restart.
    pub state_dir: PathBuf,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// VMs kept booted and idle, waiting for a runner spec.
    #[serde(default)]
    pub min_hot: usize,
    /// Pre-booted VMs are restored from a snapshot of an idle VM (taken once
    /// per pool) instead of booted: ~10x faster under TCG. Clones share the
    /// guest kernel's state at snapshot time (including its RNG pool until
    /// it reseeds from virtio-rng), hence off by default.
    #[serde(default)]
    pub prebooted_restore: bool,
    #[serde(default)]
    pub accel: AccelChoice,
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    #[serde(default = "default_qemu_img")]
    pub qemu_img: PathBuf,
    /// Launch → agent ready longer than this fails the VM.
    #[serde(default = "default_boot_timeout_secs")]
    pub boot_timeout_secs: u64,
    /// VMs booting at once (boot is CPU-bound); default: the core count.
    #[serde(default)]
    pub max_parallel_boots: Option<usize>,
    #[serde(default)]
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
fn default_boot_timeout_secs() -> u64 {
    60
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
            boot_timeout_secs: default_boot_timeout_secs(),
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
        let config: MicrovmConfig = toml::from_str(
            r#"
            kernel = "/k"
            rootfs = "/r"
            state_dir = "/s"
            min_hot = 2
            network = { mode = "nat", allow = ["10.1.0.0/16"] }
            "#,
        )
        .unwrap();
        assert_eq!(config.vcpus, 2);
        assert_eq!(config.min_hot, 2);
        assert!(matches!(config.network, NetworkConfig::Nat { ref allow, .. } if allow.len() == 1));
        let err = toml::from_str::<MicrovmConfig>(
            "kernel = \"/k\"\nrootfs = \"/r\"\nstate_dir = \"/s\"\ncpus = 3\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `cpus`"), "{err}");
    }
}
