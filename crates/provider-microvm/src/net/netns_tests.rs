//! The pool's firewall against real packets, in network namespaces this
//! test makes (root, `ip`, `nft`): a "host" namespace where the pool's
//! [`Network`] runs (its `ip`/`nft` calls are made from a thread inside
//! it), a "world" namespace behind the uplink holding a public address,
//! Azure's WireServer address and a private address, and one namespace per
//! "guest", joined to the host by a veth whose host end has the tap's name
//! (the firewall matches interface names; a veth carries packets without a
//! VMM). Guests send UDP; the world counts what arrives. Each check ends
//! with a packet that must arrive, sent after the ones that must not, so
//! no test waits for an absence.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;
use crate::config::AllowRule;

const WORLD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const UPLINK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const WIRESERVER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
const PRIVATE_HOST: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

/// Root and the programs, or a loud skip (never on CI).
fn usable() -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("needs root (network namespaces, nftables)".to_owned())
    } else {
        hangar_exec::require(&["ip", "nft"]).err().map(|e| e.to_string())
    };
    let Some(why) = missing else { return true };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}, and CI=true forbids skipping");
    eprintln!("SKIPPED: the firewall namespace tests: {why}");
    false
}

fn sh(args: &[&str]) {
    hangar_exec::run_within(Command::new(args[0]).args(&args[1..]), EXEC_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}", ErrorChain(&e)));
}

/// A named network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("hgt-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        sh(&["ip", "netns", "add", &name]);
        let ns = Ns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn run(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// Runs `f` on a thread inside the namespace (what it spawns is too).
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap();
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The host, the world behind its uplink, and a pool network in the host.
struct Lab {
    host: Ns,
    world: Ns,
    _state: tempfile::TempDir,
    forward: tempfile::TempDir,
    config: NetworkConfig,
}

impl Lab {
    fn new(allow: &[&str]) -> Lab {
        let (host, world) = (Ns::new("h"), Ns::new("w"));
        sh(&[
            "ip", "link", "add", "up0", "netns", &host.0, "type", "veth", "peer", "name", "w0",
            "netns", &world.0,
        ]);
        host.run(&["ip", "addr", "add", &format!("{UPLINK}/24"), "dev", "up0"]);
        host.run(&["ip", "link", "set", "up0", "up"]);
        host.run(&["ip", "route", "add", "default", "via", &WORLD.to_string()]);
        // As loose as hosts often are: nothing but the firewall stops a
        // spoofed source.
        host.run(&[
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            // A new namespace inherits the test host's IPv4 settings:
            // start with forwarding off, as on a host with no pool yet.
            "net.ipv4.ip_forward=0",
        ]);
        world.run(&["ip", "addr", "add", &format!("{WORLD}/24"), "dev", "w0"]);
        for extra in [WIRESERVER, PRIVATE_HOST] {
            world.run(&["ip", "addr", "add", &format!("{extra}/32"), "dev", "w0"]);
        }
        world.run(&["ip", "link", "set", "w0", "up"]);
        let config = NetworkConfig::Nat {
            subnet: "172.29.0.0/16".into(),
            uplink: Some("up0".into()),
            dns: "127.0.0.1".into(),
            allow: allow.iter().map(|a| a.parse::<AllowRule>().unwrap()).collect(),
        };
        Lab {
            host,
            world,
            _state: tempfile::tempdir().unwrap(),
            forward: tempfile::tempdir().unwrap(),
            config,
        }
    }

    fn state_dir(&self) -> &Path {
        self._state.path()
    }

    fn network(&self) -> Network {
        let options = NetOptions { forward_dir: self.forward.path().to_owned(), nft: "nft".into() };
        self.host
            .enter(|| Network::with_options(&self.config, self.state_dir(), options))
            .unwrap_or_else(|e| panic!("{}", ErrorChain(&e)))
    }

    /// A guest namespace on a veth named as the VM's tap would be.
    fn guest(&self, network: &Network, vm_id: &str) -> (Ns, VmNet) {
        let ns = Ns::new("g");
        let net = self
            .host
            .enter(|| {
                network.vm_setup_with(vm_id, |net| {
                    network.ip(&[
                        "link",
                        "add",
                        &net.ifname,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        "eth0",
                        "netns",
                        &ns.0,
                    ])
                })
            })
            .unwrap_or_else(|e| panic!("{}", ErrorChain(&e)));
        ns.run(&["ip", "addr", "add", &format!("{}/30", net.guest_ip), "dev", "eth0"]);
        ns.run(&["ip", "link", "set", "eth0", "up"]);
        ns.run(&["ip", "route", "add", "default", "via", &net.host_ip.to_string()]);
        (ns, net)
    }
}

/// Sends each `(from, to, payload)` from inside `ns`.
fn send(ns: &Ns, packets: &[(Ipv4Addr, SocketAddrV4, &str)]) {
    ns.enter(|| {
        for (from, to, payload) in packets {
            let socket = UdpSocket::bind((*from, 0)).unwrap();
            socket.send_to(payload.as_bytes(), to).unwrap();
        }
    });
}

/// A UDP socket bound in `ns` on `addr`.
fn listen(ns: &Ns, addr: SocketAddrV4) -> UdpSocket {
    let socket = ns.enter(|| UdpSocket::bind(addr).unwrap());
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    socket
}

/// What arrives until `last` does (which must, within 10 s).
fn until(socket: &UdpSocket, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let (n, _) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{last:?} never arrived ({e}); got {got:?}"));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text == last {
            return got;
        }
        got.push(text);
    }
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

#[test]
fn a_guest_cannot_send_with_another_vms_address() {
    if !usable() {
        return;
    }
    let lab = Lab::new(&[]);
    let network = lab.network();
    let (a, net_a) = lab.guest(&network, "vm-00000000000a");
    let (_b, net_b) = lab.guest(&network, "vm-00000000000b");
    // A holds B's address too, as a guest with root can.
    a.run(&["ip", "addr", "add", &format!("{}/32", net_b.guest_ip), "dev", "eth0"]);
    let world = listen(&lab.world, at(Ipv4Addr::UNSPECIFIED, 4000));
    send(
        &a,
        &[
            (net_b.guest_ip, at(WORLD, 4000), "spoofed-as-b"),
            (net_a.guest_ip, at(WORLD, 4000), "own-address"),
        ],
    );
    assert_eq!(until(&world, "own-address"), Vec::<String>::new(), "the spoofed packet got out");
}

#[test]
fn metadata_stays_closed_and_allow_opens_only_its_ports() {
    if !usable() {
        return;
    }
    // The allow list even covers the WireServer: metadata is never allowed.
    let lab = Lab::new(&[&format!("{PRIVATE_HOST}:5000/udp"), "168.63.0.0/16"]);
    let network = lab.network();
    let (g, net) = lab.guest(&network, "vm-00000000000c");
    let port80 = listen(&lab.world, at(Ipv4Addr::UNSPECIFIED, 80));
    let port5000 = listen(&lab.world, at(Ipv4Addr::UNSPECIFIED, 5000));
    let port5001 = listen(&lab.world, at(Ipv4Addr::UNSPECIFIED, 5001));
    send(
        &g,
        &[
            (net.guest_ip, at(WIRESERVER, 80), "wireserver"),
            (net.guest_ip, at(WORLD, 80), "public"),
            (net.guest_ip, at(PRIVATE_HOST, 5001), "private-other-port"),
            (net.guest_ip, at(WORLD, 5001), "public-5001"),
            (net.guest_ip, at(PRIVATE_HOST, 5000), "private-allowed"),
        ],
    );
    assert_eq!(until(&port80, "public"), Vec::<String>::new(), "Azure's WireServer was reached");
    assert_eq!(until(&port5001, "public-5001"), Vec::<String>::new(), "allow opened another port");
    assert_eq!(until(&port5000, "private-allowed"), Vec::<String>::new());
}

#[test]
fn a_flushed_ruleset_is_put_back_and_failing_that_the_pool_closes() {
    if !usable() {
        return;
    }
    let lab = Lab::new(&[]);
    let mut network = lab.network();
    let (g, net) = lab.guest(&network, "vm-00000000000d");
    let host = listen(&lab.host, at(net.host_ip, 7000));
    host.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let world = listen(&lab.world, at(Ipv4Addr::UNSPECIFIED, 7000));
    let probe = |round: &str| {
        let (to_host, end) = (format!("to-host-{round}"), format!("end-{round}"));
        send(
            &g,
            &[
                (net.guest_ip, at(net.host_ip, 7000), &to_host),
                (net.guest_ip, at(WORLD, 7000), &end),
            ],
        );
        until(&world, &end);
        // The host's packet came first; it is there now or never.
        let mut buf = [0u8; 64];
        host.recv_from(&mut buf).is_ok()
    };
    assert!(!probe("installed"), "the host is closed to VMs");

    lab.host.run(&["nft", "flush", "ruleset"]);
    assert!(probe("flushed"), "without the table a VM reaches the host (the hole)");
    lab.host.enter(|| network.check()).unwrap_or_else(|e| panic!("{}", ErrorChain(&e)));
    assert!(!probe("reinstalled"), "the check put the table back");
    assert!(network.closed().is_none());

    // Now the table cannot come back (nft fails): the pool closes.
    lab.host.run(&["nft", "flush", "ruleset"]);
    network.nft = "/nonexistent/nft".into();
    let e = lab.host.enter(|| network.check()).unwrap_err();
    assert!(matches!(e, NetError::Closed(_)), "{e:?}");
    assert!(network.closed().is_some());
    let link = lab.host.enter(|| {
        hangar_exec::output_within(
            Command::new("ip").args(["-o", "link", "show", &net.ifname]),
            EXEC_TIMEOUT,
        )
        .unwrap()
    });
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert!(link.contains("state DOWN"), "the VM's link is down: {link}");
    let refused = lab.host.enter(|| network.vm_setup_with("vm-00000000000e", |_| Ok(())));
    assert!(matches!(refused, Err(NetError::Closed(_))), "no VM while closed: {refused:?}");

    network.nft = "nft".into();
    lab.host.enter(|| network.check()).unwrap_or_else(|e| panic!("{}", ErrorChain(&e)));
    assert!(network.closed().is_none());
    assert!(!probe("restored"), "back up, and isolated");
}

#[test]
fn after_a_restart_new_vms_never_get_a_surviving_vms_address() {
    if !usable() {
        return;
    }
    let lab = Lab::new(&[]);
    let first = lab.network();
    let a = lab.host.enter(|| first.vm_setup("vm-0000000000a1")).unwrap();
    drop(first); // hangar dies; the VM and its tap live on

    let second = lab.network();
    let b = lab.host.enter(|| second.vm_setup("vm-0000000000b2")).unwrap();
    assert_ne!(a.host_ip, b.host_ip);
    assert_ne!(a.guest_ip, b.guest_ip);
    let listing = lab.host.enter(|| second.table_listing()).unwrap();
    for net in [&a, &b] {
        assert!(
            listing.contains(&format!("\"{}\" . {}", net.ifname, net.guest_ip)),
            "{} keeps its source check after the restart:\n{listing}",
            net.ifname
        );
    }
    lab.host.enter(|| {
        second.vm_teardown("vm-0000000000a1");
        second.vm_teardown("vm-0000000000b2");
    });
    let listing = lab.host.enter(|| second.table_listing()).unwrap();
    assert!(!listing.contains(&a.ifname), "{listing}");
    let reused = lab.host.enter(|| second.vm_setup("vm-0000000000c3")).unwrap();
    assert_eq!(reused.host_ip, a.host_ip, "a freed /30 is handed out again");
}

#[test]
fn forwarding_follows_the_pool_and_a_removed_table_stays_removed() {
    if !usable() {
        return;
    }
    let lab = Lab::new(&[]);
    let network = lab.network();
    let inside = lab.host.enter(|| std::fs::read_to_string(IP_FORWARD).unwrap());
    assert_eq!(inside.trim(), "1", "the pool turned forwarding on in its namespace");
    lab.host.enter(|| network.firewall_remove());
    let inside = lab.host.enter(|| std::fs::read_to_string(IP_FORWARD).unwrap());
    assert_eq!(inside.trim(), "0", "and off again with the pool");
    // A check after the pool removed its table on purpose puts nothing back.
    lab.host.enter(|| network.check()).unwrap();
    assert!(lab.host.enter(|| network.table_listing()).is_err(), "the table stays gone");
}
