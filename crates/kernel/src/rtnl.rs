//! rtnetlink over [`crate::nl`]: veth pairs, link state, addresses and on-link default routes,
//! and route lookups.
//!
//! Mostly what test namespaces need (the lab behind `leash test`, kernel tests); the route
//! lookups also serve the live host: [`Paths`] finds the interfaces a forwarded flow enters and
//! leaves on, which a conntrack entry does not record (see its docs). An [`Rtnl`] socket
//! acts on the network namespace of the thread that opened it, so open it on a thread inside the
//! namespace (e.g. in [`crate::netns::NetNs::run`]); it keeps acting there whatever the thread
//! does afterwards. Nothing here ever needs the root namespace: a veth pair is created in one
//! namespace with its peer end placed directly into another (`IFLA_NET_NS_FD`), so no interface
//! ever appears in the root namespace, not even for a moment.

use crate::nl::{self, MsgBuf, NlError, Socket};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

// Message types (`linux/rtnetlink.h`).
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

// Link attributes (`linux/if_link.h`).
const IFLA_IFNAME: u16 = 3;
const IFLA_QDISC: u16 = 6;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
/// `IF_OPER_UP` of `enum if_oper_state` (RFC 2863 operational state).
const IF_OPER_UP: u8 = 6;

// Address attributes and flags (`linux/if_addr.h`).
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;

// Route attributes and values (`linux/rtnetlink.h`).
const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_IIF: u16 = 3;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
/// `RTNH_F_ONLINK`: the gateway is on the link even without a route saying so.
const RTNH_F_ONLINK: u32 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;

/// Length of `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
/// Length of `struct rtmsg`.
const RTMSG_LEN: usize = 12;
/// Longest interface name (IFNAMSIZ less the terminating NUL).
const MAX_IFNAME_LEN: usize = 15;

/// Errors of this module; each names the operation and the interface it was about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel (or the netlink socket) refused an operation.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: NlError,
    },
    /// No interface has this name in the namespace the socket belongs to.
    #[error("no interface named {0:?} in this network namespace")]
    NoSuchLink(String),
    /// The name cannot be an interface name.
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no '/', ':' or whitespace")]
    BadName(String),
    /// The interface did not become operationally up in time.
    #[error("interface {name} is not operationally up after {waited:?} (operstate {operstate})")]
    NotUp { name: String, operstate: u8, waited: Duration },
    /// The address did not become usable as a local address in time.
    #[error("address {addr} is not usable as a local address after {waited:?}")]
    NotLocal { addr: IpAddr, waited: Duration },
    /// The prefix length does not fit the address family.
    #[error("prefix length /{prefix} is too long for {addr}")]
    BadPrefix { addr: IpAddr, prefix: u8 },
}

/// Which address family a route is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// An rtnetlink socket bound to the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, Error> {
        let sock = Socket::open(nl::NETLINK_ROUTE).map_err(|e| netlink("open rtnetlink socket", e))?;
        // Extended acks turn a bare EINVAL into the kernel's reason; failure only loses the text.
        let _ = sock.enable_ext_ack();
        Ok(Rtnl { sock, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Creates a veth pair: `name` in this socket's namespace and `peer_name` directly in the
    /// namespace `peer_ns` refers to (an open `/proc/.../ns/net` descriptor, e.g. a
    /// [`crate::netns::NetNs`]). Both ends start down; the kernel picks the interface indexes.
    pub fn create_veth(&mut self, name: &str, peer_name: &str, peer_ns: BorrowedFd<'_>) -> Result<(), Error> {
        self.create_veth_with_indexes(name, 0, peer_name, 0, peer_ns)
    }

    /// Like [`Rtnl::create_veth`], with the interface index of each end chosen by the caller (0:
    /// the kernel picks).
    ///
    /// Why choose: in two fresh namespaces both ends would get index 2, and the kernel's link
    /// watcher treats a carrier change of a device whose index equals its peer's index (its
    /// `iflink`) as not urgent, so the end that was up first only starts sending (gets its qdisc)
    /// up to a second later. Distinct indexes make the change urgent and the link usable at once.
    pub fn create_veth_with_indexes(
        &mut self,
        name: &str,
        ifindex: u32,
        peer_name: &str,
        peer_ifindex: u32,
        peer_ns: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        check_name(name)?;
        check_name(peer_name)?;
        let seq = self.next_seq();
        let mut b = MsgBuf::new();
        let m = b.begin(RTM_NEWLINK, nl::NLM_F_REQUEST | nl::NLM_F_ACK | nl::NLM_F_CREATE | nl::NLM_F_EXCL, seq);
        b.put_header(&ifinfomsg(ifindex, 0, 0));
        b.attr_str(IFLA_IFNAME, name);
        let linkinfo = b.begin_nested(IFLA_LINKINFO);
        b.attr_str(IFLA_INFO_KIND, "veth");
        let data = b.begin_nested(IFLA_INFO_DATA);
        // The peer is described by a whole ifinfomsg followed by link attributes.
        let peer = b.begin_nested(VETH_INFO_PEER);
        b.put_header(&ifinfomsg(peer_ifindex, 0, 0));
        b.attr_str(IFLA_IFNAME, peer_name);
        b.attr_u32(IFLA_NET_NS_FD, peer_ns.as_raw_fd() as u32);
        b.end_nested(peer);
        b.end_nested(data);
        b.end_nested(linkinfo);
        let what = || format!("create veth pair {name} <-> {peer_name} (peer in namespace fd {})", peer_ns.as_raw_fd());
        b.end(m).map_err(|e| netlink(&what(), e))?;
        self.sock.request_ack(b.as_bytes()).map_err(|e| netlink(&what(), e))
    }

    /// The interface index of `name` in this socket's namespace.
    pub fn link_index(&mut self, name: &str) -> Result<u32, Error> {
        check_name(name)?;
        Ok(self.get_link(0, Some(name))?.index)
    }

    /// Whether the interface's operational state is `UP` (RFC 2863: up, carrier) and the kernel
    /// has finished activating it (its qdisc is no longer `noop`), so packets really leave.
    pub fn is_oper_up(&mut self, ifindex: u32) -> Result<bool, Error> {
        Ok(self.get_link(ifindex, None)?.ready())
    }

    /// Waits until [`Rtnl::is_oper_up`], polling every millisecond for at most `timeout`.
    pub fn wait_oper_up(&mut self, ifindex: u32, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let link = self.get_link(ifindex, None)?;
            if link.ready() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(Error::NotUp { name: link.name, operstate: link.operstate, waited: timeout });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// RTM_GETLINK for one interface, by index or (index 0) by name.
    fn get_link(&mut self, ifindex: u32, name: Option<&str>) -> Result<LinkInfo, Error> {
        let seq = self.next_seq();
        let mut b = MsgBuf::new();
        let m = b.begin(RTM_GETLINK, nl::NLM_F_REQUEST | nl::NLM_F_ACK, seq);
        b.put_header(&ifinfomsg(ifindex, 0, 0));
        if let Some(n) = name {
            b.attr_str(IFLA_IFNAME, n);
        }
        let label = || name.map_or_else(|| format!("#{ifindex}"), str::to_string);
        let what = || format!("look up interface {}", label());
        b.end(m).map_err(|e| netlink(&what(), e))?;
        let mut found: Option<Result<LinkInfo, NlError>> = None;
        let res = self.sock.request(b.as_bytes(), |msg| {
            if msg.header.ty == RTM_NEWLINK && found.is_none() {
                found = Some(parse_link(msg));
            }
            Ok(())
        });
        match res {
            Err(NlError::Kernel(e)) if e.errno == libc::ENODEV => Err(Error::NoSuchLink(label())),
            Err(e) => Err(netlink(&what(), e)),
            Ok(()) => match found {
                Some(Ok(l)) => Ok(l),
                Some(Err(e)) => Err(netlink(&what(), e)),
                None => Err(Error::NoSuchLink(label())),
            },
        }
    }

    /// Sets the interface up.
    pub fn set_link_up(&mut self, ifindex: u32) -> Result<(), Error> {
        let seq = self.next_seq();
        let mut b = MsgBuf::new();
        let m = b.begin(RTM_NEWLINK, nl::NLM_F_REQUEST | nl::NLM_F_ACK, seq);
        let up = libc::IFF_UP as u32;
        b.put_header(&ifinfomsg(ifindex, up, up));
        let what = || format!("set interface {ifindex} up");
        b.end(m).map_err(|e| netlink(&what(), e))?;
        self.sock.request_ack(b.as_bytes()).map_err(|e| netlink(&what(), e))
    }

    /// Adds `addr/prefix` to the interface. IPv6 addresses get `IFA_F_NODAD`, so they are usable
    /// at once instead of after duplicate address detection (about a second, and a source of
    /// flaky tests).
    pub fn add_address(&mut self, ifindex: u32, addr: IpAddr, prefix: u8) -> Result<(), Error> {
        let (family, bytes, max): (u8, Vec<u8>, u8) = match addr {
            IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec(), 32),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec(), 128),
        };
        if prefix > max {
            return Err(Error::BadPrefix { addr, prefix });
        }
        let seq = self.next_seq();
        let mut b = MsgBuf::new();
        let m = b.begin(RTM_NEWADDR, nl::NLM_F_REQUEST | nl::NLM_F_ACK | nl::NLM_F_CREATE | nl::NLM_F_EXCL, seq);
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let mut hdr = vec![family, prefix, 0, 0];
        hdr.extend_from_slice(&ifindex.to_ne_bytes());
        b.put_header(&hdr);
        // Like `ip addr add`: IFA_LOCAL is the address, IFA_ADDRESS the (same) peer address.
        b.attr(IFA_LOCAL, &bytes);
        b.attr(IFA_ADDRESS, &bytes);
        if addr.is_ipv6() {
            b.attr_u32(IFA_FLAGS, IFA_F_NODAD);
        }
        let what = || format!("add address {addr}/{prefix} to interface {ifindex}");
        b.end(m).map_err(|e| netlink(&what(), e))?;
        self.sock.request_ack(b.as_bytes()).map_err(|e| netlink(&what(), e))
    }

    /// Adds a default route through the interface without a gateway (on-link: every destination
    /// is resolved by ARP or neighbour discovery directly on the link), like
    /// `ip route add default dev IF`.
    pub fn add_default_route(&mut self, ifindex: u32, family: Family) -> Result<(), Error> {
        let seq = self.next_seq();
        let mut b = MsgBuf::new();
        let m = b.begin(RTM_NEWROUTE, nl::NLM_F_REQUEST | nl::NLM_F_ACK | nl::NLM_F_CREATE | nl::NLM_F_EXCL, seq);
        // IPv4 needs scope link for a route without gateway; IPv6 routes have no scope.
        let scope = match family {
            Family::V4 => RT_SCOPE_LINK,
            Family::V6 => RT_SCOPE_UNIVERSE,
        };
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
        let mut hdr = vec![family.af(), 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST];
        hdr.extend_from_slice(&0u32.to_ne_bytes());
        b.put_header(&hdr);
        b.attr_u32(RTA_OIF, ifindex);
        let what = || format!("add {family:?} default route via interface {ifindex}");
        b.end(m).map_err(|e| netlink(&what(), e))?;
        self.sock.request_ack(b.as_bytes()).map_err(|e| netlink(&what(), e))
    }

    /// Adds a route to `dst/prefix` through the interface, like `ip route add DST/PREFIX dev IF`
    /// (no gateway: on-link) or `ip route add DST/PREFIX via GW dev IF onlink` (the gateway is
    /// taken to be on the link, so it needs no route of its own). `dst` `None` is the default
    /// route of the gateway's family. Lets a namespace route through another one (the lab's
    /// workload namespace behind the client).
    pub fn add_route(&mut self, ifindex: u32, dst: Option<(IpAddr, u8)>, gateway: Option<IpAddr>) -> Result<(), Error> {
        let v6 = match (dst, gateway) {
            (Some((d, _)), _) => d.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => return self.add_default_route(ifindex, Family::V4),
        };
        let family = if v6 { Family::V6 } else { Family::V4 };
        let octets = |a: IpAddr| match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        if let Some((d, prefix)) = dst
            && prefix > if d.is_ipv6() { 128 } else { 32 }
        {
            return Err(Error::BadPrefix { addr: d, prefix });
        }
        let seq = self.next_seq();
        let mut b = MsgBuf::new();
        let m = b.begin(RTM_NEWROUTE, nl::NLM_F_REQUEST | nl::NLM_F_ACK | nl::NLM_F_CREATE | nl::NLM_F_EXCL, seq);
        let scope = if gateway.is_none() && !v6 { RT_SCOPE_LINK } else { RT_SCOPE_UNIVERSE };
        let flags = if gateway.is_some() { RTNH_F_ONLINK } else { 0 };
        let mut hdr = vec![family.af(), dst.map_or(0, |d| d.1), 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST];
        hdr.extend_from_slice(&flags.to_ne_bytes());
        b.put_header(&hdr);
        if let Some((d, _)) = dst {
            b.attr(RTA_DST, &octets(d));
        }
        if let Some(g) = gateway {
            b.attr(RTA_GATEWAY, &octets(g));
        }
        b.attr_u32(RTA_OIF, ifindex);
        let what = || format!("add route to {dst:?} via {gateway:?} on interface {ifindex}");
        b.end(m).map_err(|e| netlink(&what(), e))?;
        self.sock.request_ack(b.as_bytes()).map_err(|e| netlink(&what(), e))
    }

    /// Whether packets to `addr` are delivered locally in this namespace (`ip route get ADDR`
    /// says `local`).
    pub fn is_local(&mut self, addr: IpAddr) -> Result<bool, Error> {
        Ok(self.route_get(addr, None)?.is_some_and(|r| r.kind == RTN_LOCAL))
    }

    /// The route a packet to `dst` takes: without `from`, the route of a packet this namespace
    /// sends (`ip route get DST`); with `from = (SRC, IIF)`, the route of a packet from SRC that
    /// arrives on interface IIF, as forwarding looks it up (`ip route get DST from SRC iif IF`:
    /// policy routing by source or input interface applies). `None` when there is no route
    /// (`ENETUNREACH`, `EHOSTUNREACH`: also what an input lookup on an interface that does not
    /// forward gets).
    pub fn route_get(&mut self, dst: IpAddr, from: Option<(IpAddr, u32)>) -> Result<Option<Route>, Error> {
        let octets = |a: IpAddr| match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let family = if dst.is_ipv6() { Family::V6 } else { Family::V4 };
        if let Some((src, _)) = from
            && src.is_ipv6() != dst.is_ipv6()
        {
            return Err(Error::Netlink {
                what: format!("look up the route to {dst} from {src}"),
                source: NlError::Malformed("source and destination of different families".into()),
            });
        }
        let full = if dst.is_ipv6() { 128 } else { 32 };
        let seq = self.next_seq();
        let mut b = MsgBuf::new();
        let m = b.begin(RTM_GETROUTE, nl::NLM_F_REQUEST | nl::NLM_F_ACK, seq);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
        let mut hdr = vec![family.af(), full, if from.is_some() { full } else { 0 }, 0, 0, 0, 0, 0];
        hdr.extend_from_slice(&0u32.to_ne_bytes());
        b.put_header(&hdr);
        b.attr(RTA_DST, &octets(dst));
        if let Some((src, iif)) = from {
            b.attr(RTA_SRC, &octets(src));
            b.attr_u32(RTA_IIF, iif);
        }
        let what = || match from {
            None => format!("look up the route to {dst}"),
            Some((src, iif)) => format!("look up the route to {dst} from {src} arriving on interface {iif}"),
        };
        b.end(m).map_err(|e| netlink(&what(), e))?;
        let mut found: Option<Result<Route, NlError>> = None;
        let res = self.sock.request(b.as_bytes(), |msg| {
            if msg.header.ty == RTM_NEWROUTE && found.is_none() {
                found = Some(parse_route(msg));
            }
            Ok(())
        });
        match res {
            // No route at all is an answer, not a failure.
            Err(NlError::Kernel(e)) if e.errno == libc::ENETUNREACH || e.errno == libc::EHOSTUNREACH => Ok(None),
            Err(e) => Err(netlink(&what(), e)),
            Ok(()) => match found {
                Some(Ok(r)) => Ok(Some(r)),
                Some(Err(e)) => Err(netlink(&what(), e)),
                None => Ok(None),
            },
        }
    }

    /// The name of interface `ifindex`.
    pub fn link_name(&mut self, ifindex: u32) -> Result<String, Error> {
        Ok(self.get_link(ifindex, None)?.name)
    }

    /// Waits until [`Rtnl::is_local`] holds for `addr`, polling every millisecond for at most
    /// `timeout`.
    ///
    /// Why: an IPv6 address, even with `IFA_F_NODAD`, is finished asynchronously by the kernel's
    /// (machine-wide) address-configuration work queue: only then is its solicited-node multicast
    /// group joined and its local route inserted. Until that work has run, neighbour solicitations
    /// for it are ignored and the first connection to it stalls for a second; under load the
    /// queue can lag by many milliseconds.
    pub fn wait_local(&mut self, addr: IpAddr, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        while !self.is_local(addr)? {
            if start.elapsed() >= timeout {
                return Err(Error::NotLocal { addr, waited: timeout });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

/// What a route lookup found ([`Rtnl::route_get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `rtm_type`: `RTN_UNICAST` (1), `RTN_LOCAL` (2), `RTN_BLACKHOLE` (6), `RTN_UNREACHABLE`
    /// (7), `RTN_PROHIBIT` (8), ...
    pub kind: u8,
    /// The interface the packet leaves on (`RTA_OIF`), when the route has one.
    pub oif: Option<u32>,
}

impl Route {
    /// The interface a packet following this route leaves on, for a route that sends it out
    /// (not delivered locally, not a blackhole or an unreachable route).
    pub fn out_interface(&self) -> Option<u32> {
        if self.kind == RTN_LOCAL { None } else { self.oif.filter(|&i| i != 0) }
    }
}

fn parse_route(msg: &nl::Message<'_>) -> Result<Route, NlError> {
    let p = msg.payload;
    if p.len() < RTMSG_LEN {
        return Err(NlError::Malformed(format!("RTM_NEWROUTE of {} bytes", p.len())));
    }
    // struct rtmsg: ..., byte 7 is rtm_type.
    let mut r = Route { kind: p[7], oif: None };
    for a in msg.attrs(RTMSG_LEN) {
        let a = a?;
        if a.ty == RTA_OIF {
            r.oif = Some(a.u32()?);
        }
    }
    Ok(r)
}

/// Where a forwarded flow enters and leaves this namespace, as far as routing tells: `None` where
/// it cannot be found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Path {
    pub iif: Option<String>,
    pub oif: Option<String>,
}

/// The interfaces forwarded flows pass, from route lookups, each asked once (a conntrack table's
/// flows share a few sources and destinations).
///
/// A conntrack entry records no interface. The one a flow entered on is taken to be the one its
/// replies leave on: the route to its source (symmetric routing, which reverse-path filtering
/// enforces where it is on). The one it leaves on is the route a packet from that source arriving
/// on that interface takes (`ip route get DST from SRC iif IIF`, so policy routing by source or
/// input interface counts), or, when that lookup gives nothing, the route this host itself would
/// take to the destination. What cannot be found stays `None`; callers decide what an unknown
/// interface means. The socket is opened at the first lookup, in the calling thread's namespace.
#[derive(Debug, Default)]
pub struct Paths {
    rtnl: Option<Rtnl>,
    /// Why the socket could not be opened (then every interface is unknown).
    pub error: Option<String>,
    iif: HashMap<IpAddr, Option<u32>>,
    oif: HashMap<(IpAddr, IpAddr, Option<u32>), Option<u32>>,
    names: HashMap<u32, Option<String>>,
}

impl Paths {
    pub fn new() -> Paths {
        Paths::default()
    }

    /// The interfaces of a flow from `src` to `dst` (both not this host's).
    pub fn path(&mut self, src: IpAddr, dst: IpAddr) -> Path {
        if self.rtnl.is_none() && self.error.is_none() {
            match Rtnl::open() {
                Ok(r) => self.rtnl = Some(r),
                Err(e) => self.error = Some(e.to_string()),
            }
        }
        let Some(rtnl) = self.rtnl.as_mut() else { return Path::default() };
        let iif = *self.iif.entry(src).or_insert_with(|| rtnl.route_get(src, None).ok().flatten().and_then(|r| r.out_interface()));
        let oif = *self.oif.entry((src, dst, iif)).or_insert_with(|| {
            let forwarded = iif.and_then(|i| rtnl.route_get(dst, Some((src, i))).ok().flatten()).and_then(|r| r.out_interface());
            forwarded.or_else(|| rtnl.route_get(dst, None).ok().flatten().and_then(|r| r.out_interface()))
        });
        let mut name = |i: Option<u32>| {
            let i = i?;
            self.names.entry(i).or_insert_with(|| rtnl.link_name(i).ok()).clone()
        };
        Path { iif: name(iif), oif: name(oif) }
    }
}

/// What [`Rtnl::get_link`] reads from an RTM_NEWLINK reply.
struct LinkInfo {
    index: u32,
    name: String,
    operstate: u8,
    qdisc: String,
}

impl LinkInfo {
    /// Operationally up and activated: the link watcher sets the operstate just before it
    /// replaces the placeholder `noop` qdisc (which discards every packet) with the real one.
    fn ready(&self) -> bool {
        self.operstate == IF_OPER_UP && self.qdisc != "noop"
    }
}

fn parse_link(msg: &nl::Message<'_>) -> Result<LinkInfo, NlError> {
    let p = msg.payload;
    if p.len() < IFINFOMSG_LEN {
        return Err(NlError::Malformed(format!("RTM_NEWLINK of {} bytes", p.len())));
    }
    let mut link = LinkInfo {
        index: u32::from_ne_bytes([p[4], p[5], p[6], p[7]]),
        name: String::new(),
        operstate: 0,
        qdisc: String::new(),
    };
    for a in msg.attrs(IFINFOMSG_LEN) {
        let a = a?;
        match a.ty {
            IFLA_IFNAME => link.name = a.str(),
            IFLA_OPERSTATE => link.operstate = a.u8()?,
            IFLA_QDISC => link.qdisc = a.str(),
            _ => {}
        }
    }
    Ok(link)
}

/// `struct ifinfomsg`: family (unspec), pad, type, index, flags, change.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut h = [0u8; IFINFOMSG_LEN];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name.bytes().any(|c| c == b'/' || c == b':' || c.is_ascii_whitespace() || c == 0);
    if ok { Ok(()) } else { Err(Error::BadName(name.to_string())) }
}

fn netlink(what: &str, source: NlError) -> Error {
    Error::Netlink { what: what.to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::NetNs;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::fd::AsFd;

    fn need_root() -> bool {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        assert!(std::env::var_os("CI").is_none(), "kernel tests need root, and CI is set");
        eprintln!("skipped: kernel tests need root");
        false
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("veth0").is_ok());
        assert!(check_name("a23456789012345").is_ok());
        assert!(check_name("a234567890123456").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn veth_between_two_namespaces_carries_traffic() {
        if !need_root() {
            return;
        }
        let a = NetNs::new().unwrap();
        let b = NetNs::new().unwrap();
        let a4 = Ipv4Addr::new(192, 0, 2, 1);
        let b4 = Ipv4Addr::new(192, 0, 2, 2);
        let a6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b6: Ipv6Addr = "2001:db8::2".parse().unwrap();
        a.run(|| {
            let mut r = Rtnl::open().unwrap();
            r.create_veth_with_indexes("ta", 10, "tb", 20, b.as_fd()).unwrap();
            // The same names again: EEXIST, with the operation in the message.
            let err = r.create_veth("ta", "tb", b.as_fd()).unwrap_err().to_string();
            assert!(err.contains("create veth pair ta <-> tb") && err.contains("EEXIST"), "{err}");
            let i = r.link_index("ta").unwrap();
            assert_eq!(i, 10);
            assert!(!r.is_oper_up(i).unwrap());
            assert!(matches!(r.link_index("tb"), Err(Error::NoSuchLink(_))));
            r.set_link_up(i).unwrap();
            r.add_address(i, a4.into(), 32).unwrap();
            r.add_address(i, a6.into(), 128).unwrap();
            r.add_default_route(i, Family::V4).unwrap();
            r.add_default_route(i, Family::V6).unwrap();
            assert!(matches!(r.add_address(i, a4.into(), 33), Err(Error::BadPrefix { .. })));
        });
        let listeners = b.run(|| {
            let mut r = Rtnl::open().unwrap();
            let i = r.link_index("tb").unwrap();
            assert_eq!(i, 20);
            r.set_link_up(i).unwrap();
            r.wait_oper_up(i, std::time::Duration::from_secs(3)).unwrap();
            r.add_address(i, b4.into(), 32).unwrap();
            r.add_address(i, b6.into(), 128).unwrap();
            r.add_default_route(i, Family::V4).unwrap();
            r.add_default_route(i, Family::V6).unwrap();
            (std::net::TcpListener::bind((b4, 0)).unwrap(), std::net::TcpListener::bind((b6, 0)).unwrap())
        });
        let (p4, p6) = (listeners.0.local_addr().unwrap(), listeners.1.local_addr().unwrap());
        a.run(|| {
            let mut r = Rtnl::open().unwrap();
            r.wait_oper_up(10, std::time::Duration::from_secs(3)).unwrap();
            r.wait_local(a6.into(), std::time::Duration::from_secs(3)).unwrap();
            assert!(r.is_local(a4.into()).unwrap());
            assert!(!r.is_local(b6.into()).unwrap());
            assert!(matches!(r.is_oper_up(99), Err(Error::NoSuchLink(_))));
            let t = std::time::Duration::from_secs(3);
            std::net::TcpStream::connect_timeout(&p4, t).unwrap();
            std::net::TcpStream::connect_timeout(&p6, t).unwrap();
        });
    }
}
