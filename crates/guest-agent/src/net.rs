//! The guest's network setup over rtnetlink, from the agent itself: loopback
//! up, and for NAT pools eth0's address, link and default route.
//!
//! Why not `ip` (iproute2) any more: every `ip` run was a fork + exec of a
//! dynamically linked binary read through the qcow2 overlay, which under
//! TCG cost up to ~0.9 s of boot for `ip link set lo up` alone. These
//! requests are one socket and a few small messages, answered by the
//! kernel in microseconds.
//!
//! Why rtnetlink through `netlink-packet-route` + `netlink-sys` (the
//! rust-netlink crates that `rtnetlink` itself is built on) rather than the
//! `SIOCSIFFLAGS`/`SIOCADDRT` ioctls: the workspace forbids `unsafe`, and
//! ioctls need it; netlink is also what iproute2 speaks, so the requests are
//! the same ones `ip` sent. Not `rtnetlink` itself: it is async and would put
//! a tokio runtime into PID 1; `netlink-sys` without features is a plain
//! blocking socket.

use std::net::Ipv4Addr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A connected rtnetlink socket; each request waits for the kernel's ack.
pub(crate) struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    pub(crate) fn open() -> Result<Rtnl, String> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| format!("opening a netlink socket: {e}"))?;
        socket.bind_auto().map_err(|e| format!("binding the netlink socket: {e}"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| format!("connecting the netlink socket: {e}"))?;
        Ok(Rtnl { socket, sequence: 0 })
    }

    /// `ip link set NAME up`.
    pub(crate) fn link_up(&mut self, name: &str) -> Result<(), String> {
        let mut link = LinkMessage::default();
        link.header.index = if_index(name)?;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(link), 0)
            .map_err(|e| format!("setting {name} up: {e}"))
    }

    /// `ip addr add ADDR/PREFIX dev NAME`.
    pub(crate) fn addr_add(
        &mut self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), String> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.index = if_index(name)?;
        message.attributes.push(AddressAttribute::Local(addr.into()));
        message.attributes.push(AddressAttribute::Address(addr.into()));
        if prefix < 31 {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            let broadcast = Ipv4Addr::from(u32::from(addr) | host_bits);
            message.attributes.push(AddressAttribute::Broadcast(broadcast));
        }
        self.request(RouteNetlinkMessage::NewAddress(message), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| format!("adding {addr}/{prefix} to {name}: {e}"))
    }

    /// `ip route add default via GATEWAY`.
    pub(crate) fn default_route_add(&mut self, gateway: Ipv4Addr) -> Result<(), String> {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.destination_prefix_length = 0;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        route.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        self.request(RouteNetlinkMessage::NewRoute(route), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| format!("adding the default route via {gateway}: {e}"))
    }

    /// Sends one request and waits for its ack (or the kernel's error).
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<(), String> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| format!("sending: {e}"))?;
        let mut reply = Vec::with_capacity(8192);
        loop {
            reply.clear();
            self.socket.recv(&mut reply, 0).map_err(|e| format!("receiving: {e}"))?;
            let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
                .map_err(|e| format!("decoding the answer: {e}"))?;
            if answer.header.sequence_number != self.sequence {
                continue;
            }
            return match answer.payload {
                NetlinkPayload::Error(e) => match e.code {
                    None => Ok(()),
                    Some(code) => Err(std::io::Error::from_raw_os_error(-code.get()).to_string()),
                },
                _ => Ok(()),
            };
        }
    }
}

/// An interface's index, from sysfs (mounted before the network comes up).
fn if_index(name: &str) -> Result<u32, String> {
    let path = format!("/sys/class/net/{name}/ifindex");
    std::fs::read_to_string(&path)
        .map_err(|e| format!("reading {path}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("parsing {path}: {e}"))
}
