//! A network namespace for serving the simulator where microVMs can reach
//! it.
//!
//! A NAT pool lets a VM reach no host service and no private address unless
//! the pool's `allow` list names it, so "GitHub" cannot be on the host's
//! loopback. [`Netns`] makes a namespace joined to the host by a veth pair on
//! a private /30 in 10.231.0.0/16 (`.1` the host end, `.2` the namespace
//! end); [`Netns::listen`] binds a socket inside it for
//! [`crate::Simulator::start_with_listener`]. Needs root. Dropping it
//! deletes the namespace and both ends of the pair.

use std::net::Ipv4Addr;
use std::process::Command;

/// What went wrong making the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("running `ip`")]
    Spawn(#[source] std::io::Error),
    #[error("binding a socket inside namespace {name}")]
    Bind {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A network namespace with a veth pair to the host.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// The host end of the veth pair.
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    /// The namespace's address: what a pool's `allow` list names.
    pub ns_ip: Ipv4Addr,
}

impl Netns {
    /// Makes the namespace `<prefix>-<pid>`, one /30 per process.
    pub fn create(prefix: &str) -> Result<Netns, NetnsError> {
        let pid = std::process::id();
        let base = u32::from(Ipv4Addr::new(10, 231, 0, 0)) + (pid % 16_000) * 4;
        let netns = Netns {
            name: format!("{prefix}-{pid}"),
            // `hgv`/`hgp`: never a microVM pool's tap prefix (`hg` + hex).
            host_if: format!("hgv{pid}"),
            host_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
        };
        let peer = format!("hgp{pid}");
        let (host_cidr, ns_cidr) = (format!("{}/30", netns.host_ip), format!("{}/30", netns.ns_ip));
        let host_ip = netns.host_ip.to_string();
        let name = netns.name.as_str();
        ip(&["netns", "add", name])?;
        ip(&["link", "add", &netns.host_if, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", name])?;
        ip(&["addr", "add", &host_cidr, "dev", &netns.host_if])?;
        ip(&["link", "set", &netns.host_if, "up"])?;
        ip(&["netns", "exec", name, "ip", "addr", "add", &ns_cidr, "dev", &peer])?;
        ip(&["netns", "exec", name, "ip", "link", "set", &peer, "up"])?;
        ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
        // Replies to VMs (their own addresses, not masqueraded) go back via the host.
        ip(&["netns", "exec", name, "ip", "route", "add", "default", "via", &host_ip])?;
        Ok(netns)
    }

    /// A socket listening on the namespace's address (any port), made from
    /// a thread that entered the namespace: a socket stays in the namespace
    /// it was made in.
    pub fn listen(&self) -> Result<std::net::TcpListener, NetnsError> {
        let path = format!("/var/run/netns/{}", self.name);
        let ip = self.ns_ip;
        let bind_error = |source| NetnsError::Bind { name: self.name.clone(), source };
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            std::net::TcpListener::bind((ip, 0))
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
        .map_err(bind_error)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip").args(args).output().map_err(NetnsError::Spawn)?;
    if !out.status.success() {
        return Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
