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
//! - `forward`: a VM's packets must carry its own address (the `vm_addrs`
//!   set pairs each tap with its guest's address: no spoofing another VM,
//!   whose replies conntrack would hand back); no VM → VM; no cloud metadata
//!   service (link-local, and the public ones such as Azure's WireServer,
//!   [`METADATA`]) even when `allow` covers it; no VM → private/reserved
//!   ranges (RFC 1918, CGNAT, loopback, multicast) except what `allow`
//!   lists (a range, optionally ports and a protocol); no IPv6; new
//!   connections into a VM are dropped; everything else goes out of the
//!   uplink, masqueraded.
//!
//! Per VM there is its tap and its `vm_addrs` element. Tap names carry a
//! per-pool prefix so two pools' rules never match each other's VMs.
//!
//! The table is the isolation, so it is checked ([`Network::check`]: before
//! every launch and every few seconds): when it is gone or differs from what
//! hangar installed (a `nft flush ruleset`, a firewall reload), it is
//! installed again; when that fails the pool **fails closed**: every tap of
//! the pool goes down (running VMs lose their network, not their job), no VM
//! is launched, health says why, and forwarding is released. A later check
//! that installs the table again brings the taps back up.
//!
//! After a restart, the /30s of VMs that survived (busy VMs do, by design)
//! are found again from the pool's taps, so a new VM never gets a running
//! one's address.
//!
//! Every `ip`/`nft` call has a deadline ([`EXEC_TIMEOUT`]).
//!
//! NAT needs `net.ipv4.ip_forward = 1`. When it was 0, hangar turns it on
//! and turns it off again when the last NAT pool on the host is gone (no
//! `hangar_*` nftables table left, whichever hangar process made it). The
//! check and the write happen under a lock file in [`FORWARD_DIR`], where a
//! marker file records that hangar was the one that turned it on; a host
//! that had forwarding on keeps it on.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use hangar_types::ErrorChain;
use sha2::Digest as _;

use crate::config::{AllowRule, NetworkConfig};

/// How long one `ip` or `nft` call may take.
pub(crate) const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad network config: {0}")]
    Config(String),
    /// `ip` or `nft` missing (named with its package), failing or hanging.
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
    /// The firewall could not be restored: the pool is closed.
    #[error("the pool's firewall is not in place, so its VMs are cut off: {0}")]
    Closed(String),
}

/// The network of one pool.
#[derive(Debug)]
pub(crate) struct Network {
    prefix: String,
    table: String,
    base: Ipv4Addr,
    dns: String,
    uplink: String,
    allow: Vec<AllowRule>,
    /// Where the host-wide forwarding lock and marker live ([`FORWARD_DIR`]).
    forward_dir: PathBuf,
    /// The `nft` program.
    nft: PathBuf,
    state: Mutex<NetState>,
}

#[derive(Debug, Default)]
struct NetState {
    /// The pool's links by /30 index: tap name and guest address.
    links: BTreeMap<u32, (String, Ipv4Addr)>,
    /// `nft list table` as it was after hangar's last change.
    expected: String,
    /// Why the pool is closed (taps down, no launches), if it is.
    closed: Option<String>,
    /// The pool is gone and removed its table on purpose: not checked.
    removed: bool,
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

/// Cloud metadata and host-agent endpoints, dropped before `allow` is
/// looked at. Most clouds serve metadata on 169.254.169.254 (AWS, GCP,
/// Azure IMDS, Oracle, DigitalOcean, Hetzner, OpenStack) or elsewhere in
/// 169.254/16 (Tencent 169.254.0.23), Alibaba on 100.100.100.200 (CGNAT)
/// and Oracle's legacy one on 192.0.0.192; all of those are private above
/// too. Azure's WireServer/HostGAPlugin (168.63.129.16, ports 80 and
/// 32526) is a *public* address that answers only from inside Azure, as the
/// host VM: it hands out extension settings and goal state.
const METADATA: &str = "169.254.0.0/16, 100.100.100.200/32, 192.0.0.192/32, 168.63.129.16/32";

/// The seams tests move (forwarding state, the `nft` program).
#[derive(Debug, Clone)]
pub(crate) struct NetOptions {
    pub(crate) forward_dir: PathBuf,
    pub(crate) nft: PathBuf,
}

impl Default for NetOptions {
    fn default() -> NetOptions {
        NetOptions { forward_dir: FORWARD_DIR.into(), nft: "nft".into() }
    }
}

impl Network {
    pub(crate) fn new(config: &NetworkConfig, state_dir: &Path) -> Result<Network, NetError> {
        Network::with_options(config, state_dir, NetOptions::default())
    }

    pub(crate) fn with_options(
        config: &NetworkConfig,
        state_dir: &Path,
        options: NetOptions,
    ) -> Result<Network, NetError> {
        let NetworkConfig::Nat { subnet, uplink, dns, allow } = config else {
            return Err(NetError::Config("not a nat network".into()));
        };
        let base = parse_slash16(subnet)?;
        let uplink = match uplink {
            Some(u) => u.clone(),
            None => default_uplink()?,
        };
        if uplink.is_empty()
            || !uplink.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            return Err(NetError::Config(format!("uplink {uplink:?} is not an interface name")));
        }
        // Per pool (state dir) names: "hg" + 4 hex for taps, a table name.
        let hash = hex::encode(sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes()));
        let network = Network {
            prefix: format!("hg{}", &hash[..4]),
            table: format!("hangar_{}", &hash[..8]),
            base,
            dns: dns.clone(),
            uplink,
            allow: allow.clone(),
            forward_dir: options.forward_dir,
            nft: options.nft,
            state: Mutex::new(NetState::default()),
        };
        {
            let mut state = network.state.lock().expect("net lock");
            // Taps that outlived the previous process keep their /30s.
            state.links = network.links_found()?;
            network.firewall_install(&mut state)?;
        }
        if let Err(e) = forwarding_acquire(&network.forward_dir) {
            network.firewall_remove();
            return Err(e);
        }
        Ok(network)
    }

    /// The pool's taps that exist now, with their addresses.
    fn links_found(&self) -> Result<BTreeMap<u32, (String, Ipv4Addr)>, NetError> {
        let out = hangar_exec::output_within(
            Command::new("ip").args(["-o", "-4", "addr", "show"]),
            EXEC_TIMEOUT,
        )?;
        let mut links = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "7: hgab12345678    inet 172.29.0.5/30 scope global ..."
            let mut words = line.split_whitespace().skip(1);
            let Some(ifname) = words.next() else { continue };
            let ifname = ifname.split('@').next().unwrap_or(ifname);
            if !ifname.starts_with(&self.prefix) {
                continue;
            }
            let Some(host) = words
                .skip_while(|w| *w != "inet")
                .nth(1)
                .and_then(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            if let Some(index) = self.index_of(host) {
                links.insert(index, (ifname.to_owned(), Ipv4Addr::from(u32::from(host) + 1)));
            }
        }
        Ok(links)
    }

    /// The /30 index of a host-end address in the pool's subnet.
    fn index_of(&self, host: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(host).checked_sub(u32::from(self.base))?;
        (offset < 65536 && offset % 4 == 1 && offset / 4 > 0).then_some(offset / 4)
    }

    fn ruleset(&self, links: &BTreeMap<u32, (String, Ipv4Addr)>) -> String {
        let p = &self.prefix;
        let t = &self.table;
        let uplink = &self.uplink;
        let allow: String = self
            .allow
            .iter()
            .map(|rule| format!("               iifname \"{p}*\" {} accept\n", rule.nft_match()))
            .collect();
        let elements = if links.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> =
                links.values().map(|(ifname, guest)| format!("\"{ifname}\" . {guest}")).collect();
            format!(" elements = {{ {} }};", pairs.join(", "))
        };
        format!(
            "table inet {t}\ndelete table inet {t}\n\
             table inet {t} {{\n\
             set vm_addrs {{ type ifname . ipv4_addr;{elements} }}\n\
             chain input {{ type filter hook input priority -10; policy accept;\n\
               iifname \"{p}*\" drop\n}}\n\
             chain forward {{ type filter hook forward priority -10; policy accept;\n\
               iifname \"{p}*\" iifname . ip saddr != @vm_addrs drop\n\
               iifname \"{p}*\" oifname \"{p}*\" drop\n\
               oifname \"{p}*\" ct state established,related accept\n\
               oifname \"{p}*\" drop\n\
               iifname \"{p}*\" ip daddr {{ {METADATA} }} drop\n\
             {allow}\
               iifname \"{p}*\" ip daddr {{ {PRIVATE} }} drop\n\
               iifname \"{p}*\" meta nfproto ipv6 drop\n\
               iifname \"{p}*\" oifname \"{uplink}\" accept\n\
               iifname \"{p}*\" drop\n}}\n\
             chain postrouting {{ type nat hook postrouting priority 100; policy accept;\n\
               iifname \"{p}*\" oifname \"{uplink}\" masquerade\n}}\n\
             }}\n"
        )
    }

    /// Installs the table (atomically replacing any old one) for the links
    /// in `state`, and records how it lists.
    fn firewall_install(&self, state: &mut NetState) -> Result<(), NetError> {
        let ruleset = self.ruleset(&state.links);
        let command = format!("{} -f -", self.nft.display());
        let mut child = Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| hangar_exec::start_error(self.nft.as_os_str(), command.clone(), e))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(ruleset.as_bytes())
            .map_err(|source| NetError::Spawn { command: command.clone(), source })?;
        let output = hangar_exec::wait_within(&mut child, EXEC_TIMEOUT)
            .map_err(|source| NetError::Spawn { command: command.clone(), source })?
            .ok_or(hangar_exec::ExecError::TimedOut {
                command: command.clone(),
                after: EXEC_TIMEOUT,
            })?;
        hangar_exec::check(self.nft.as_os_str(), command, Ok(output))?;
        state.expected = self.table_listing()?;
        Ok(())
    }

    fn table_listing(&self) -> Result<String, NetError> {
        let out = hangar_exec::output_within(
            Command::new(&self.nft).args(["list", "table", "inet", &self.table]),
            EXEC_TIMEOUT,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Checks that the pool's table is what hangar installed; installs it
    /// again when it is not, and closes the pool (taps down) when that
    /// fails. `Ok` means the pool's VMs are isolated now.
    pub(crate) fn check(&self) -> Result<(), NetError> {
        let mut state = self.state.lock().expect("net lock");
        if state.removed {
            return Ok(());
        }
        let intact = self.table_listing().is_ok_and(|now| now == state.expected);
        if intact && state.closed.is_none() {
            return Ok(());
        }
        if !intact {
            tracing::error!(
                table = %self.table,
                "the pool's nftables table was removed or changed outside hangar; installing it again"
            );
        }
        let restored =
            self.firewall_install(&mut state).and_then(|()| forwarding_acquire(&self.forward_dir));
        match restored {
            Ok(()) => {
                if state.closed.take().is_some() {
                    for (ifname, _) in state.links.values() {
                        if let Err(e) = self.ip(&["link", "set", "dev", ifname, "up"]) {
                            tracing::warn!(ifname, error = %ErrorChain(&e), "bringing a tap back up failed");
                        }
                    }
                    tracing::warn!(table = %self.table, "the pool's firewall is back; its VMs' taps are up again");
                }
                Ok(())
            }
            Err(e) => {
                let reason =
                    format!("installing the firewall table {}: {}", self.table, ErrorChain(&e));
                if state.closed.is_none() {
                    tracing::error!(table = %self.table, reason = %reason, "FAILING CLOSED: the pool's VM taps go down and no VM is launched until the firewall is back");
                }
                self.fail_closed(&mut state, reason.clone());
                Err(NetError::Closed(reason))
            }
        }
    }

    /// Cuts every VM of the pool off (taps down) and releases forwarding.
    fn fail_closed(&self, state: &mut NetState, reason: String) {
        for (ifname, _) in state.links.values() {
            if let Err(e) = self.ip(&["link", "set", "dev", ifname, "down"]) {
                tracing::error!(ifname, error = %ErrorChain(&e), "taking a tap down failed");
            }
        }
        state.closed = Some(reason);
        if let Err(e) = forwarding_release(&self.forward_dir, &self.nft) {
            tracing::warn!(error = %ErrorChain(&e), "restoring net.ipv4.ip_forward failed");
        }
    }

    /// Why the pool is closed, if it is.
    pub(crate) fn closed(&self) -> Option<String> {
        self.state.lock().expect("net lock").closed.clone()
    }

    /// Removes the pool's firewall table (when the pool is gone), and turns
    /// IPv4 forwarding back off if hangar turned it on and no pool needs it.
    pub(crate) fn firewall_remove(&self) {
        self.state.lock().expect("net lock").removed = true;
        let _ = hangar_exec::run_within(
            Command::new(&self.nft).args(["delete", "table", "inet", &self.table]),
            EXEC_TIMEOUT,
        );
        if let Err(e) = forwarding_release(&self.forward_dir, &self.nft) {
            tracing::warn!(error = %ErrorChain(&e), "restoring net.ipv4.ip_forward failed");
        }
    }

    fn ifname(&self, vm_id: &str) -> String {
        let hex = vm_id.trim_start_matches("vm-");
        format!("{}{}", self.prefix, &hex[hex.len().saturating_sub(8)..])
    }

    fn ip(&self, args: &[&str]) -> Result<(), NetError> {
        Ok(hangar_exec::run_within(Command::new("ip").args(args), EXEC_TIMEOUT)?)
    }

    /// Creates the VM's tap with the host end of its /30.
    pub(crate) fn vm_setup(&self, vm_id: &str) -> Result<VmNet, NetError> {
        self.vm_setup_with(vm_id, |net| {
            self.ip(&["tuntap", "add", "dev", &net.ifname, "mode", "tap"])
        })
    }

    /// [`Network::vm_setup`] with the link made by `link` (a tap; the
    /// namespace tests make a veth into a "guest" namespace instead).
    pub(crate) fn vm_setup_with(
        &self,
        vm_id: &str,
        link: impl FnOnce(&VmNet) -> Result<(), NetError>,
    ) -> Result<VmNet, NetError> {
        let mut state = self.state.lock().expect("net lock");
        if let Some(reason) = &state.closed {
            return Err(NetError::Closed(reason.clone()));
        }
        let index =
            (1..16384u32).find(|i| !state.links.contains_key(i)).ok_or(NetError::Exhausted)?;
        let base = u32::from(self.base) + index * 4;
        let net = VmNet {
            ifname: self.ifname(vm_id),
            host_ip: Ipv4Addr::from(base + 1),
            guest_ip: Ipv4Addr::from(base + 2),
            dns: self.dns.clone(),
        };
        state.links.insert(index, (net.ifname.clone(), net.guest_ip));
        let element = format!("{{ \"{}\" . {} }}", net.ifname, net.guest_ip);
        let result = (|| {
            link(&net)?;
            self.ip(&["addr", "add", &format!("{}/30", net.host_ip), "dev", &net.ifname])?;
            self.vm_addrs_change("add", &element)?;
            state.expected = self.table_listing()?;
            self.ip(&["link", "set", &net.ifname, "up"])
        })();
        if let Err(e) = result {
            drop(state);
            self.vm_teardown(vm_id);
            return Err(e);
        }
        Ok(net)
    }

    /// `nft add|delete element` of one tap ↔ address pair in `vm_addrs`.
    fn vm_addrs_change(&self, op: &str, element: &str) -> Result<(), NetError> {
        Ok(hangar_exec::run_within(
            Command::new(&self.nft).args([op, "element", "inet", &self.table, "vm_addrs", element]),
            EXEC_TIMEOUT,
        )?)
    }

    /// Deletes the VM's tap and its address pairing (idempotent).
    pub(crate) fn vm_teardown(&self, vm_id: &str) {
        let ifname = self.ifname(vm_id);
        let mut state = self.state.lock().expect("net lock");
        let index = state.links.iter().find(|(_, (name, _))| *name == ifname).map(|(i, _)| *i);
        if let Some(index) = index
            && let Some((_, guest)) = state.links.remove(&index)
        {
            let element = format!("{{ \"{ifname}\" . {guest} }}");
            let _ = self.vm_addrs_change("delete", &element);
            if let Ok(listing) = self.table_listing() {
                state.expected = listing;
            }
        }
        let _ = self.ip(&["link", "del", &ifname]);
    }
}

/// Where hangar keeps the host-wide forwarding state (tmpfs: it resets on
/// reboot, as `ip_forward` does).
pub(crate) const FORWARD_DIR: &str = "/run/hangar";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Exists while forwarding is on because hangar turned it on.
const FORWARD_MARKER: &str = "ip_forward.enabled-by-hangar";

/// Holds the host-wide forwarding lock while alive.
fn forwarding_lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, NetError> {
    let spawn = |command: &str| {
        let command = command.to_owned();
        move |source| NetError::Spawn { command, source }
    };
    std::fs::create_dir_all(dir).map_err(spawn("creating the ip_forward state dir"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("ip_forward.lock"))
        .map_err(spawn("opening the ip_forward lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| spawn("locking the ip_forward lock")(errno.into()))
}

/// Turns IPv4 forwarding on, remembering when hangar was the one to do it.
/// Called after the pool's table exists, so a concurrent release sees it.
fn forwarding_acquire(dir: &Path) -> Result<(), NetError> {
    let _lock = forwarding_lock(dir)?;
    let current = std::fs::read_to_string(IP_FORWARD).unwrap_or_default();
    if current.trim() == "0" {
        let marker = dir.join(FORWARD_MARKER);
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
fn forwarding_release(dir: &Path, nft: &Path) -> Result<(), NetError> {
    let _lock = forwarding_lock(dir)?;
    let marker = dir.join(FORWARD_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    let tables =
        hangar_exec::output_within(Command::new(nft).args(["list", "tables"]), EXEC_TIMEOUT)?;
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
    let out = hangar_exec::output_within(
        Command::new("ip").args(["-o", "-4", "route", "show", "default"]),
        EXEC_TIMEOUT,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| NetError::Config("no default route; set network.uplink".into()))
}

#[cfg(test)]
mod netns_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_checks_sources_and_drops_metadata_before_allow() {
        let network = Network {
            prefix: "hgabcd".into(),
            table: "hangar_abcd0123".into(),
            base: Ipv4Addr::new(172, 29, 0, 0),
            dns: "1.1.1.1".into(),
            uplink: "eth0".into(),
            allow: vec!["168.63.0.0/16:80/tcp".parse().unwrap()],
            forward_dir: FORWARD_DIR.into(),
            nft: "nft".into(),
            state: Mutex::new(NetState::default()),
        };
        let mut links = BTreeMap::new();
        links.insert(1, ("hgabcd00000001".to_owned(), Ipv4Addr::new(172, 29, 0, 6)));
        let rules = network.ruleset(&links);
        let metadata = rules.find("168.63.129.16/32 } drop").expect("WireServer dropped");
        let allow = rules.find("ip daddr 168.63.0.0/16 tcp dport 80 accept").expect("allow rule");
        assert!(metadata < allow, "metadata is dropped whatever allow says:\n{rules}");
        assert!(rules.contains("elements = { \"hgabcd00000001\" . 172.29.0.6 }"), "{rules}");
        assert!(
            rules.contains("iifname \"hgabcd*\" iifname . ip saddr != @vm_addrs drop"),
            "{rules}"
        );
        assert_eq!(network.index_of(Ipv4Addr::new(172, 29, 0, 5)), Some(1));
        assert_eq!(network.index_of(Ipv4Addr::new(172, 29, 0, 6)), None, "a guest address");
        assert_eq!(network.index_of(Ipv4Addr::new(172, 30, 0, 5)), None, "another subnet");
    }

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
