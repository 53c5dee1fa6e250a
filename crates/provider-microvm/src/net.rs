//! NAT networking for a pool's VMs: one tap device per VM on its own /30,
//! and one nftables table per pool that lets VMs out to the internet and
//! nowhere else.
//!
//! Why not QEMU user networking (slirp): its guest reaches every TCP service
//! on the host's loopback through 10.0.2.2 (shared research §7), and
//! `restrict=on` cuts the internet too. With a tap the host kernel routes,
//! so the firewall decides, by interface name (a guest cannot spoof that):
//!
//! - `input`: nothing from a VM reaches the host itself (admin API, cache,
//!   loopback-bound services, sshd...).
//! - `forward`: no VM → VM, no VM → private/reserved ranges (RFC 1918, CGNAT,
//!   link-local with the cloud metadata service, loopback, multicast) unless
//!   the pool lists them in `allow`; no IPv6; new connections into a VM are
//!   dropped; everything else goes out of the uplink, masqueraded.
//!
//! Per VM there are no rules to clean up, only the tap. Tap names carry a
//! per-pool prefix so two pools' rules never match each other's VMs.
//!
//! NAT needs `net.ipv4.ip_forward = 1`. When it was 0, hangar turns it on
//! and turns it off again when the last NAT pool on the host is gone (no
//! `hangar_*` nftables table left, whichever hangar process made it). The
//! check and the write happen under a lock file in [`FORWARD_DIR`], where a
//! marker file records that hangar was the one that turned it on; a host
//! that had forwarding on keeps it on.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use hangar_types::ErrorChain;
use sha2::Digest as _;

use crate::config::NetworkConfig;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad network config: {0}")]
    Config(String),
    /// `ip` or `nft` missing (named with its package) or failing.
    #[error(transparent)]
    Exec(#[from] hangar_exec::ExecError),
    #[error("running {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free /30 left in the pool's subnet")]
    Exhausted,
}

/// The network of one pool.
#[derive(Debug)]
pub(crate) struct Network {
    prefix: String,
    table: String,
    base: Ipv4Addr,
    dns: String,
    used: Mutex<BTreeSet<u32>>,
}

/// One VM's link.
#[derive(Debug, Clone)]
pub(crate) struct VmNet {
    pub(crate) ifname: String,
    pub(crate) host_ip: Ipv4Addr,
    pub(crate) guest_ip: Ipv4Addr,
    dns: String,
}

impl VmNet {
    /// What the guest agent reads to configure eth0 (not secret).
    pub(crate) fn kernel_arg(&self) -> String {
        format!("hangar_net={}/30,{},{}", self.guest_ip, self.host_ip, self.dns)
    }

    pub(crate) fn nic(&self) -> crate::vmm::TapNic {
        let o = self.guest_ip.octets();
        crate::vmm::TapNic {
            ifname: self.ifname.clone(),
            mac: format!("52:54:00:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3]),
        }
    }
}

const PRIVATE: &str = "0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, \
                       172.16.0.0/12, 192.0.0.0/24, 192.168.0.0/16, 198.18.0.0/15, 224.0.0.0/4, 240.0.0.0/4";

impl Network {
    pub(crate) fn new(config: &NetworkConfig, state_dir: &Path) -> Result<Network, NetError> {
        let NetworkConfig::Nat { subnet, uplink, dns, allow } = config else {
            return Err(NetError::Config("not a nat network".into()));
        };
        let base = parse_slash16(subnet)?;
        let uplink = match uplink {
            Some(u) => u.clone(),
            None => default_uplink()?,
        };
        for cidr in allow {
            if !cidr.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '/') {
                return Err(NetError::Config(format!("allow entry {cidr:?} is not an IPv4 CIDR")));
            }
        }
        // Per pool (state dir) names: "hg" + 4 hex for taps, a table name.
        let hash = hex::encode(sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes()));
        let prefix = format!("hg{}", &hash[..4]);
        let table = format!("hangar_{}", &hash[..8]);
        let network =
            Network { prefix, table, base, dns: dns.clone(), used: Mutex::new(BTreeSet::new()) };
        network.firewall_install(&uplink, allow)?;
        if let Err(e) = forwarding_acquire() {
            network.firewall_remove();
            return Err(e);
        }
        Ok(network)
    }

    fn firewall_install(&self, uplink: &str, allow: &[String]) -> Result<(), NetError> {
        let p = &self.prefix;
        let t = &self.table;
        let allow_rule = if allow.is_empty() {
            String::new()
        } else {
            format!("iifname \"{p}*\" ip daddr {{ {} }} accept\n", allow.join(", "))
        };
        let ruleset = format!(
            "table inet {t}\ndelete table inet {t}\n\
             table inet {t} {{\n\
             chain input {{ type filter hook input priority -10; policy accept;\n\
               iifname \"{p}*\" drop\n}}\n\
             chain forward {{ type filter hook forward priority -10; policy accept;\n\
               iifname \"{p}*\" oifname \"{p}*\" drop\n\
               oifname \"{p}*\" ct state established,related accept\n\
               oifname \"{p}*\" drop\n\
               {allow_rule}\
               iifname \"{p}*\" ip daddr {{ {PRIVATE} }} drop\n\
               iifname \"{p}*\" meta nfproto ipv6 drop\n\
               iifname \"{p}*\" oifname \"{uplink}\" accept\n\
               iifname \"{p}*\" drop\n}}\n\
             chain postrouting {{ type nat hook postrouting priority 100; policy accept;\n\
               iifname \"{p}*\" oifname \"{uplink}\" masquerade\n}}\n\
             }}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| hangar_exec::start_error("nft".as_ref(), "nft -f -".into(), e))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(ruleset.as_bytes())
            .map_err(|source| NetError::Spawn { command: "nft".into(), source })?;
        hangar_exec::check("nft".as_ref(), "nft -f -".into(), child.wait_with_output())?;
        Ok(())
    }

    /// Removes the pool's firewall table (when the pool is gone), and turns
    /// IPv4 forwarding back off if hangar turned it on and no pool needs it.
    pub(crate) fn firewall_remove(&self) {
        let _ = run("nft", &["delete", "table", "inet", &self.table]);
        if let Err(e) = forwarding_release() {
            tracing::warn!(error = %ErrorChain(&e), "restoring net.ipv4.ip_forward failed");
        }
    }

    fn ifname(&self, vm_id: &str) -> String {
        let hex = vm_id.trim_start_matches("vm-");
        format!("{}{}", self.prefix, &hex[hex.len().saturating_sub(8)..])
    }

    /// Creates the VM's tap with the host end of its /30.
    pub(crate) fn vm_setup(&self, vm_id: &str) -> Result<VmNet, NetError> {
        let index = {
            let mut used = self.used.lock().expect("net lock");
            let index = (1..16384u32).find(|i| !used.contains(i)).ok_or(NetError::Exhausted)?;
            used.insert(index);
            index
        };
        let base = u32::from(self.base) + index * 4;
        let net = VmNet {
            ifname: self.ifname(vm_id),
            host_ip: Ipv4Addr::from(base + 1),
            guest_ip: Ipv4Addr::from(base + 2),
            dns: self.dns.clone(),
        };
        let result = (|| {
            run("ip", &["tuntap", "add", "dev", &net.ifname, "mode", "tap"])?;
            run("ip", &["addr", "add", &format!("{}/30", net.host_ip), "dev", &net.ifname])?;
            run("ip", &["link", "set", &net.ifname, "up"])
        })();
        if let Err(e) = result {
            self.vm_teardown(vm_id);
            return Err(e);
        }
        Ok(net)
    }

    /// Deletes the VM's tap (idempotent).
    pub(crate) fn vm_teardown(&self, vm_id: &str) {
        let ifname = self.ifname(vm_id);
        let addr = Command::new("ip").args(["-o", "-4", "addr", "show", "dev", &ifname]).output();
        if let Ok(out) = addr {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(ip) = text.split_whitespace().skip_while(|w| *w != "inet").nth(1)
                && let Ok(host) = ip.split('/').next().unwrap_or("").parse::<Ipv4Addr>()
            {
                let index = (u32::from(host).wrapping_sub(u32::from(self.base))) / 4;
                self.used.lock().expect("net lock").remove(&index);
            }
        }
        let _ = run("ip", &["link", "del", &ifname]);
    }
}

/// Where hangar keeps the host-wide forwarding state (tmpfs: it resets on
/// reboot, as `ip_forward` does).
pub(crate) const FORWARD_DIR: &str = "/run/hangar";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Exists while forwarding is on because hangar turned it on.
const FORWARD_MARKER: &str = "ip_forward.enabled-by-hangar";

/// Holds the host-wide forwarding lock while alive.
fn forwarding_lock() -> Result<nix::fcntl::Flock<std::fs::File>, NetError> {
    let spawn = |command: &str| {
        let command = command.to_owned();
        move |source| NetError::Spawn { command, source }
    };
    std::fs::create_dir_all(FORWARD_DIR).map_err(spawn("creating /run/hangar"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(FORWARD_DIR).join("ip_forward.lock"))
        .map_err(spawn("opening the ip_forward lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| spawn("locking the ip_forward lock")(errno.into()))
}

/// Turns IPv4 forwarding on, remembering when hangar was the one to do it.
/// Called after the pool's table exists, so a concurrent release sees it.
fn forwarding_acquire() -> Result<(), NetError> {
    let _lock = forwarding_lock()?;
    let current = std::fs::read_to_string(IP_FORWARD).unwrap_or_default();
    if current.trim() == "0" {
        let marker = Path::new(FORWARD_DIR).join(FORWARD_MARKER);
        std::fs::write(&marker, b"").map_err(|source| NetError::Spawn {
            command: format!("writing {}", marker.display()),
            source,
        })?;
        std::fs::write(IP_FORWARD, "1")
            .map_err(|source| NetError::Spawn { command: "enabling ip_forward".into(), source })?;
        tracing::info!("turned net.ipv4.ip_forward on for NAT (off again when no pool needs it)");
    }
    Ok(())
}

/// Turns IPv4 forwarding off when hangar turned it on and no hangar NAT
/// pool (of any process) is left.
fn forwarding_release() -> Result<(), NetError> {
    let _lock = forwarding_lock()?;
    let marker = Path::new(FORWARD_DIR).join(FORWARD_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    let tables = hangar_exec::output(Command::new("nft").args(["list", "tables"]))?;
    let in_use = String::from_utf8_lossy(&tables.stdout)
        .split_whitespace()
        .any(|w| w.starts_with("hangar_"));
    if !in_use {
        std::fs::write(IP_FORWARD, "0")
            .map_err(|source| NetError::Spawn { command: "disabling ip_forward".into(), source })?;
        let _ = std::fs::remove_file(&marker);
        tracing::info!("turned net.ipv4.ip_forward off again (hangar had turned it on)");
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<(), NetError> {
    Ok(hangar_exec::run(Command::new(program).args(args))?)
}

fn parse_slash16(subnet: &str) -> Result<Ipv4Addr, NetError> {
    let (addr, len) = subnet
        .split_once('/')
        .ok_or_else(|| NetError::Config(format!("subnet {subnet:?}: expected A.B.0.0/16")))?;
    let addr: Ipv4Addr =
        addr.parse().map_err(|_| NetError::Config(format!("subnet {subnet:?}: bad address")))?;
    if len != "16" || addr.octets()[2] != 0 || addr.octets()[3] != 0 {
        return Err(NetError::Config(format!("subnet {subnet:?}: expected A.B.0.0/16")));
    }
    Ok(addr)
}

fn default_uplink() -> Result<String, NetError> {
    let out =
        hangar_exec::output(Command::new("ip").args(["-o", "-4", "route", "show", "default"]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| NetError::Config("no default route; set network.uplink".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_must_be_slash_16() {
        assert_eq!(parse_slash16("172.29.0.0/16").unwrap(), Ipv4Addr::new(172, 29, 0, 0));
        assert!(parse_slash16("172.29.0.0/24").is_err());
        assert!(parse_slash16("172.29.1.0/16").is_err());
        assert!(parse_slash16("nope").is_err());
    }

    #[test]
    fn guest_addressing_is_on_the_kernel_line_without_secrets() {
        let net = VmNet {
            ifname: "hgabcd12345678".into(),
            host_ip: Ipv4Addr::new(172, 29, 0, 5),
            guest_ip: Ipv4Addr::new(172, 29, 0, 6),
            dns: "1.1.1.1".into(),
        };
        assert_eq!(net.kernel_arg(), "hangar_net=172.29.0.6/30,172.29.0.5,1.1.1.1");
        assert_eq!(net.nic().mac, "52:54:00:1d:00:06");
        assert!(net.ifname.len() <= 15);
    }
}
