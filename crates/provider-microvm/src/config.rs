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
    /// Bytes of a VM's serial console kept on disk, at most (see
    /// [`MicrovmConfig::console_log_max_bytes`]).
    #[serde(default = "default_console_log_max_bytes")]
    pub console_log_max_bytes: u64,
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
            console_log_max_bytes: default_console_log_max_bytes(),
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
            console_log_max_bytes,
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
            console_log_max_bytes: console_log_max_bytes.max(MIN_CONSOLE_LOG_BYTES),
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
    /// A VM's serial console on disk is at most this many bytes (default
    /// 1 MiB): `console.log` moves to `console.log.1` when it reaches half,
    /// so the newest output is always kept. The guest writes it, so it is
    /// capped: QEMU hands the serial port to hangar over a socket instead
    /// of writing a file itself.
    pub console_log_max_bytes: u64,
    pub network: NetworkConfig,
}

/// The smallest console cap honoured (a smaller one is raised to it).
pub const MIN_CONSOLE_LOG_BYTES: u64 = 8 * 1024;

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
        /// Private destinations the VMs may reach anyway (e.g. a registry):
        /// `ADDR[/LEN][:PORT[-PORT]][/tcp|/udp]`, see [`AllowRule`]. Cloud
        /// metadata addresses stay unreachable whatever this says.
        #[serde(default)]
        allow: Vec<AllowRule>,
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

/// One `allow` entry: a private IPv4 destination, optionally narrowed to
/// ports and a protocol. Written `ADDR[/LEN][:PORT[-PORT]][/tcp|/udp]`:
///
/// - `10.0.0.0/24`: every port and protocol (the whole range, as before);
/// - `10.0.0.5:5000/tcp`: TCP to port 5000 of one host;
/// - `10.0.0.5:5000`: TCP and UDP to port 5000;
/// - `10.0.0.0/24:8000-8100/udp`, `10.0.0.5/tcp`.
///
/// Parsed and checked when the config is loaded (host bits must be zero,
/// ports 1-65535, low ≤ high).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AllowRule {
    pub addr: std::net::Ipv4Addr,
    pub prefix_len: u8,
    /// Inclusive port range; `None` is every port.
    pub ports: Option<(u16, u16)>,
    /// `None` is every protocol (with `ports`: TCP and UDP).
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::str::FromStr for AllowRule {
    type Err = String;

    fn from_str(text: &str) -> Result<AllowRule, String> {
        let bad = |why: &str| {
            format!(
                "allow entry {text:?}: {why} (expected ADDR[/LEN][:PORT[-PORT]][/tcp|/udp], \
                 e.g. \"10.0.0.5:5000/tcp\" or \"10.0.0.0/24\")"
            )
        };
        let (rest, protocol) = match text.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Some(Protocol::Tcp)),
            Some((rest, "udp")) => (rest, Some(Protocol::Udp)),
            _ => (text, None),
        };
        let (cidr, ports) = match rest.split_once(':') {
            Some((cidr, ports)) => {
                let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
                let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
                let (Some(lo), Some(hi)) = (port(lo), port(hi)) else {
                    return Err(bad("ports are 1-65535"));
                };
                if lo > hi {
                    return Err(bad("the port range is backwards"));
                }
                (cidr, Some((lo, hi)))
            }
            None => (rest, None),
        };
        let (addr, prefix_len) = match cidr.split_once('/') {
            Some((addr, len)) => {
                (addr, len.parse::<u8>().ok().filter(|l| *l <= 32).ok_or_else(|| bad("bad /LEN"))?)
            }
            None => (cidr, 32),
        };
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(bad("the address has bits set past /LEN"));
        }
        Ok(AllowRule { addr, prefix_len, ports, protocol })
    }
}

impl TryFrom<String> for AllowRule {
    type Error = String;

    fn try_from(text: String) -> Result<AllowRule, String> {
        text.parse()
    }
}

impl From<AllowRule> for String {
    fn from(rule: AllowRule) -> String {
        rule.to_string()
    }
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.prefix_len != 32 {
            write!(f, "/{}", self.prefix_len)?;
        }
        match self.ports {
            Some((lo, hi)) if lo == hi => write!(f, ":{lo}")?,
            Some((lo, hi)) => write!(f, ":{lo}-{hi}")?,
            None => {}
        }
        if let Some(p) = self.protocol {
            write!(f, "/{}", p.name())?;
        }
        Ok(())
    }
}

impl AllowRule {
    /// The nftables match for the rule (after `ip daddr`).
    pub(crate) fn nft_match(&self) -> String {
        let mut m = format!("ip daddr {}/{}", self.addr, self.prefix_len);
        let ports = |(lo, hi): (u16, u16)| {
            if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }
        };
        match (self.protocol, self.ports) {
            (Some(p), Some(range)) => m.push_str(&format!(" {} dport {}", p.name(), ports(range))),
            (Some(p), None) => m.push_str(&format!(" meta l4proto {}", p.name())),
            (None, Some(range)) => {
                m.push_str(&format!(" meta l4proto {{ tcp, udp }} th dport {}", ports(range)));
            }
            (None, None) => {}
        }
        m
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
fn default_console_log_max_bytes() -> u64 {
    1024 * 1024
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
            console_log_max_bytes: default_console_log_max_bytes(),
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

    #[test]
    fn allow_entries_are_typed_with_optional_ports_and_protocol() {
        let rule = |s: &str| s.parse::<AllowRule>();
        let cases = [
            ("10.0.0.0/24", "ip daddr 10.0.0.0/24"),
            ("10.0.0.5", "ip daddr 10.0.0.5/32"),
            ("10.0.0.5/32", "ip daddr 10.0.0.5/32"),
            ("10.0.0.5:5000/tcp", "ip daddr 10.0.0.5/32 tcp dport 5000"),
            ("10.0.0.5:5000", "ip daddr 10.0.0.5/32 meta l4proto { tcp, udp } th dport 5000"),
            ("10.0.0.0/24:8000-8100/udp", "ip daddr 10.0.0.0/24 udp dport 8000-8100"),
            ("10.0.0.5/tcp", "ip daddr 10.0.0.5/32 meta l4proto tcp"),
        ];
        for (text, nft) in cases {
            let r = rule(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.nft_match(), nft, "{text}");
            assert_eq!(rule(&r.to_string()).unwrap(), r, "{text} round-trips");
        }
        for bad in [
            "10.0.0.5/24",
            "10.0.0.0/33",
            "10.0.0.5:0/tcp",
            "10.0.0.5:70000",
            "10.0.0.5:9-8/tcp",
            "10.0.0.5:80/icmp",
            "10.0.0.5; flush ruleset",
            "host.example:80",
        ] {
            assert!(rule(bad).is_err(), "{bad} must be refused");
        }
        let err = toml::from_str::<MicrovmSettings>(
            "network = { mode = \"nat\", allow = [\"10.0.0.5:http\"] }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("allow entry \"10.0.0.5:http\""), "{err}");
    }
}
