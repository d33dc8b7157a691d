//! `kernel::conntrack` against the real kernel, with the `conntrack` tool (conntrack-tools) as the
//! oracle: our dump lists what `conntrack -L` lists, our delete removes exactly the entry named
//! (by tuple and id) as `conntrack -L` then shows, and an entry `conntrack -D` deleted is gone
//! from our dump. Then what deleting an entry does to a flow: the next packet meets the rules
//! (local UDP, both families; a flow forwarded through a router namespace, both families), and
//! where that is not enough on its own (a TCP flow whose peer sends first is picked up again
//! with the peer as its originator). And the route lookups that find the interfaces of a
//! forwarded flow, which its entry does not record. Needs root; everything happens in throwaway
//! namespaces.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{CLIENT4, CLIENT6, PEER4, PEER6, pair, run_in};
use kernel::conntrack::{self, Entry, L4};
use kernel::netns::NetNs;
use kernel::testutil::{need_root, nft_load};

/// A table that makes conntrack track this namespace's flows (it is only active once a
/// ruleset uses it) and accepts everything.
const TRACK: &str = "table inet t {\n chain o { type filter hook output priority 0; policy accept; ct state established accept; }\n}\n";

/// (proto, orig src, orig dst, sport, dport, id) of every TCP and UDP entry.
type Key = (u8, IpAddr, IpAddr, u16, u16, u32);

fn keys(entries: &[Entry]) -> BTreeSet<Key> {
    entries
        .iter()
        .filter_map(|e| match e.orig.l4 {
            L4::Ports { src, dst } if e.orig.proto == 6 || e.orig.proto == 17 => {
                Some((e.orig.proto, e.orig.src, e.orig.dst, src, dst, e.id))
            }
            _ => None,
        })
        .collect()
}

/// `conntrack -L -o id`, TCP and UDP lines, as keys.
fn oracle(ns: &NetNs) -> BTreeSet<Key> {
    let (ok, out, err) = run_in(ns, "conntrack", &["-L", "-o", "id"]);
    assert!(ok, "conntrack -L failed: {err}");
    out.lines()
        .filter_map(|l| {
            let proto = match l.split_whitespace().next()? {
                "tcp" => 6,
                "udp" => 17,
                _ => return None,
            };
            // The first src=, dst=, sport=, dport= are the original direction.
            let field = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or_else(|| panic!("{k} in {l}"));
            Some((
                proto,
                field("src=").parse().unwrap(),
                field("dst=").parse().unwrap(),
                field("sport=").parse().unwrap(),
                field("dport=").parse().unwrap(),
                field("id=").parse().unwrap(),
            ))
        })
        .collect()
}

fn dump(ns: &NetNs) -> Vec<Entry> {
    ns.run(conntrack::dump).unwrap()
}

fn find(entries: &[Entry], proto: u8, dst: SocketAddr) -> Entry {
    *entries
        .iter()
        .find(|e| e.orig.proto == proto && e.orig.dst == dst.ip() && e.orig.dport() == Some(dst.port()))
        .unwrap_or_else(|| panic!("no entry for {proto} {dst} in {entries:#?}"))
}

#[test]
fn dump_and_delete_agree_with_the_conntrack_tool() {
    if !need_root("dump_and_delete_agree_with_the_conntrack_tool") {
        return;
    }
    let p = pair();
    nft_load(&p.client, TRACK);
    let (t4, t6, u4, u6) = p
        .peer
        .run(|| {
            (
                TcpListener::bind((PEER4, 7001)).unwrap(),
                TcpListener::bind((PEER6, 7001)).unwrap(),
                UdpSocket::bind((PEER4, 7002)).unwrap(),
                UdpSocket::bind((PEER6, 7002)).unwrap(),
            )
        });
    let _keep = p.client.run(|| {
        let c4 = TcpStream::connect(t4.local_addr().unwrap()).unwrap();
        let c6 = TcpStream::connect(t6.local_addr().unwrap()).unwrap();
        let s4 = UdpSocket::bind((CLIENT4, 0)).unwrap();
        s4.send_to(b"x", u4.local_addr().unwrap()).unwrap();
        let s6 = UdpSocket::bind((CLIENT6, 0)).unwrap();
        s6.send_to(b"x", u6.local_addr().unwrap()).unwrap();
        (c4, c6, s4, s6)
    });

    let ours = dump(&p.client);
    let theirs = oracle(&p.client);
    assert_eq!(keys(&ours), theirs, "our dump vs conntrack -L");
    assert_eq!(theirs.len(), 4, "two TCP and two UDP flows: {theirs:#?}");
    let udp4 = find(&ours, 17, u4.local_addr().unwrap());
    let tcp6 = find(&ours, 6, t6.local_addr().unwrap());
    let tcp4 = find(&ours, 6, t4.local_addr().unwrap());
    assert_eq!((udp4.orig.src, udp4.reply.src), (IpAddr::V4(CLIENT4), IpAddr::V4(PEER4)));
    assert_eq!(tcp6.tcp_state, Some(3), "ESTABLISHED: {tcp6:?}");
    assert!(tcp4.status & conntrack::IPS_SEEN_REPLY != 0, "{tcp4:?}");

    // Our delete removes exactly that entry.
    assert!(p.client.run(|| conntrack::delete(&udp4)).unwrap());
    let after = oracle(&p.client);
    let mut want = theirs.clone();
    want.retain(|k| k.5 != udp4.id);
    assert_eq!(after, want, "conntrack -L after deleting {}", udp4.orig);
    // Gone already; and an entry named with another id is not touched.
    assert!(!p.client.run(|| conntrack::delete(&udp4)).unwrap());
    let stale = Entry { id: tcp6.id.wrapping_add(1), ..tcp6 };
    assert!(!p.client.run(|| conntrack::delete(&stale)).unwrap());
    assert_eq!(oracle(&p.client), want);

    // What the tool deletes is gone from our dump.
    let (ok, _, err) = run_in(&p.client, "conntrack", &["-D", "-p", "tcp", "--orig-src", &CLIENT4.to_string()]);
    assert!(ok, "conntrack -D: {err}");
    want.retain(|k| k.5 != tcp4.id);
    assert_eq!(keys(&dump(&p.client)), want);
}

/// Sends one datagram from `s` to `to` and says whether it arrived at `at` (within 300 ms); a
/// send the output hook drops fails with EPERM and counts as not arrived.
fn udp_arrives(s: &UdpSocket, to: SocketAddr, at: &UdpSocket) -> bool {
    if s.send_to(b"ping", to).is_err() {
        return false;
    }
    at.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 16];
    at.recv_from(&mut buf).is_ok()
}

#[test]
fn deleting_an_entry_makes_the_next_packet_of_a_local_udp_flow_meet_the_rules() {
    if !need_root("deleting_an_entry_makes_the_next_packet_of_a_local_udp_flow_meet_the_rules") {
        return;
    }
    let p = pair();
    nft_load(&p.client, TRACK);
    for (client, peer) in [(IpAddr::V4(CLIENT4), IpAddr::V4(PEER4)), (IpAddr::V6(CLIENT6), IpAddr::V6(PEER6))] {
        let server = p.peer.run(|| UdpSocket::bind((peer, 7003)).unwrap());
        let to = server.local_addr().unwrap();
        // An unconnected socket: no socket of ours names the peer, only conntrack does.
        let s = p.client.run(|| UdpSocket::bind((client, 0)).unwrap());
        assert!(udp_arrives(&s, to, &server), "{to}: before any deny");
        // The answer makes the entry established.
        server.send_to(b"pong", s.local_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.recv_from(&mut [0u8; 16]).unwrap();

        // A policy that denies the flow, behind the established accept.
        let fam = if peer.is_ipv4() { "ip" } else { "ip6" };
        nft_load(
            &p.client,
            &format!(
                "flush table inet t\ntable inet t {{\n chain o {{ type filter hook output priority 0; policy accept; ct state established accept; {fam} daddr {peer} udp dport 7003 drop; }}\n}}\n"
            ),
        );
        assert!(udp_arrives(&s, to, &server), "{to}: the entry keeps the denied flow alive");
        let e = find(&dump(&p.client), 17, to);
        assert!(p.client.run(|| conntrack::delete(&e)).unwrap());
        assert!(!udp_arrives(&s, to, &server), "{to}: after the delete the next datagram meets the drop rule");
        nft_load(&p.client, &format!("flush table inet t\n{TRACK}"));
    }
}

/// Without destroying the socket, deleting a TCP entry holds only when this side sends next:
/// with `nf_conntrack_tcp_loose` (the default) a packet in the middle of a stream is picked up
/// as a new entry from whichever side sends it. When that is the peer, the local side's packets
/// are replies of that entry and pass `ct state established`. This is why leash destroys the
/// socket too, and what happens on a kernel without SOCK_DESTROY.
#[test]
fn deleting_a_tcp_entry_alone_stops_the_flow_only_when_this_side_sends_first() {
    if !need_root("deleting_a_tcp_entry_alone_stops_the_flow_only_when_this_side_sends_first") {
        return;
    }
    let p = pair();
    nft_load(&p.client, TRACK);
    for peer in [IpAddr::V4(PEER4), IpAddr::V6(PEER6)] {
        let l = p.peer.run(|| TcpListener::bind((peer, 7004)).unwrap());
        let to = l.local_addr().unwrap();
        let flow = || {
            let mut c = p.client.run(|| TcpStream::connect(to).unwrap());
            let (mut a, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            c.write_all(b"1").unwrap();
            a.read_exact(&mut [0u8; 1]).unwrap();
            (c, a)
        };
        let (mut c1, _a1) = flow();
        let (mut c2, mut a2) = flow();
        // Let any delayed acknowledgement of the peer arrive before the entries go: it would
        // pick the first flow up as the peer's.
        std::thread::sleep(Duration::from_millis(100));
        let fam = if peer.is_ipv4() { "ip" } else { "ip6" };
        nft_load(
            &p.client,
            &format!(
                "flush table inet t\ntable inet t {{\n chain o {{ type filter hook output priority 0; policy accept; ct state established accept; {fam} daddr {peer} tcp dport 7004 reject with tcp reset; }}\n}}\n"
            ),
        );
        let entries = dump(&p.client);
        for c in [&c1, &c2] {
            let sport = c.local_addr().unwrap().port();
            let e = *entries.iter().find(|e| e.orig.sport() == Some(sport)).unwrap();
            assert!(p.client.run(|| conntrack::delete(&e)).unwrap());
        }
        // This side first: its next segment is new to conntrack and meets the reject, which
        // resets the socket.
        let _ = c1.write_all(b"2");
        let mut buf = [0u8; 1];
        let r = c1.read(&mut buf);
        assert!(matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "{to}: {r:?}");
        // The peer first: conntrack picks the flow up with the peer as originator; this side's
        // answers are replies and pass.
        a2.write_all(b"3").unwrap();
        c2.read_exact(&mut buf).unwrap();
        c2.write_all(b"4").unwrap();
        a2.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"4", "{to}: the flow lives on as the peer's");
        nft_load(&p.client, &format!("flush table inet t\n{TRACK}"));
    }
}

/// A workload namespace routed through a router namespace to an outside namespace, both
/// families, the router with a forward chain; the workload's flow has no socket on the router,
/// only a conntrack entry there.
struct Routed {
    workload: NetNs,
    router: NetNs,
    outside: NetNs,
}

fn ip(ns: &NetNs, args: &[&str]) {
    let (ok, _, err) = run_in(ns, "ip", args);
    assert!(ok, "ip {}: {err}", args.join(" "));
}

fn routed() -> Routed {
    use kernel::rtnl::Rtnl;
    use std::os::fd::AsFd;
    let up = Duration::from_secs(5);
    let (workload, router, outside) = (NetNs::new().unwrap(), NetNs::new().unwrap(), NetNs::new().unwrap());
    router
        .run(|| -> Result<(), kernel::rtnl::Error> {
            let mut r = Rtnl::open()?;
            r.create_veth_with_indexes("rw0", 10, "wl0", 20, workload.as_fd())?;
            r.create_veth_with_indexes("ro0", 11, "ou0", 21, outside.as_fd())?;
            Ok(())
        })
        .unwrap();
    type Addrs<'a> = [(&'a NetNs, &'a str, &'a [(&'a str, u8)]); 4];
    let addrs: Addrs = [
        (&router, "rw0", &[("198.51.100.1", 24), ("2001:db8:1::1", 64)]),
        (&router, "ro0", &[("203.0.113.1", 24), ("2001:db8:2::1", 64)]),
        (&workload, "wl0", &[("198.51.100.2", 24), ("2001:db8:1::2", 64)]),
        (&outside, "ou0", &[("203.0.113.2", 24), ("2001:db8:2::2", 64)]),
    ];
    for (ns, dev, list) in addrs {
        ns.run(|| -> Result<(), kernel::rtnl::Error> {
            let mut r = Rtnl::open()?;
            let i = r.link_index(dev)?;
            for (a, len) in list {
                r.add_address(i, a.parse().unwrap(), *len)?;
            }
            r.set_link_up(i)
        })
        .unwrap();
    }
    // Every end is up now, so every carrier comes.
    for (ns, dev, list) in addrs {
        ns.run(|| -> Result<(), kernel::rtnl::Error> {
            let mut r = Rtnl::open()?;
            let i = r.link_index(dev)?;
            r.wait_oper_up(i, up)?;
            for (a, _) in list {
                r.wait_local(a.parse().unwrap(), up)?;
            }
            Ok(())
        })
        .unwrap();
    }
    // Forwarding is a property of the router's namespace only.
    for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        let (ok, _, err) = run_in(&router, "sysctl", &["-q", "-w", key]);
        assert!(ok, "sysctl {key} in the router namespace: {err}");
    }
    ip(&workload, &["route", "add", "default", "via", "198.51.100.1"]);
    ip(&workload, &["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
    ip(&outside, &["route", "add", "default", "via", "203.0.113.1"]);
    ip(&outside, &["-6", "route", "add", "default", "via", "2001:db8:2::1"]);
    Routed { workload, router, outside }
}

const FORWARD: &str = "table inet t {\n chain f { type filter hook forward priority 0; policy accept; ct state established accept; }\n}\n";

#[test]
fn deleting_the_routers_entry_cuts_a_forwarded_flow() {
    if !need_root("deleting_the_routers_entry_cuts_a_forwarded_flow") {
        return;
    }
    let n = routed();
    nft_load(&n.router, FORWARD);
    for (from, to) in [("198.51.100.2", "203.0.113.2"), ("2001:db8:1::2", "2001:db8:2::2")] {
        let (from, to): (IpAddr, IpAddr) = (from.parse().unwrap(), to.parse().unwrap());
        let server = n.outside.run(|| UdpSocket::bind((to, 7005)).unwrap());
        let dst = server.local_addr().unwrap();
        let s = n.workload.run(|| UdpSocket::bind((from, 0)).unwrap());
        // The first datagrams may wait for neighbour resolution on two links: a few tries.
        assert!((0..10).any(|_| udp_arrives(&s, dst, &server)), "{dst}: routed before any deny");
        // Late copies of the tries are not answers to what follows.
        server.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        while server.recv_from(&mut [0u8; 16]).is_ok() {}
        server.send_to(b"pong", s.local_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.recv_from(&mut [0u8; 16]).unwrap();

        let fam = if to.is_ipv4() { "ip" } else { "ip6" };
        nft_load(
            &n.router,
            &format!(
                "flush table inet t\ntable inet t {{\n chain f {{ type filter hook forward priority 0; policy accept; ct state established accept; {fam} daddr {to} udp dport 7005 drop; }}\n}}\n"
            ),
        );
        assert!(udp_arrives(&s, dst, &server), "{dst}: the router's entry keeps the denied flow alive");
        let entries = dump(&n.router);
        let e = find(&entries, 17, dst);
        assert_eq!(e.orig.src, from, "the router's entry names the workload: {e:?}");
        assert!(n.router.run(|| conntrack::delete(&e)).unwrap());
        assert!(!udp_arrives(&s, dst, &server), "{dst}: after the delete the router drops the next datagram");
        nft_load(&n.router, &format!("flush table inet t\n{FORWARD}"));
    }
}

/// What `leash apply` needs to judge the router's entries: the interfaces a forwarded flow enters
/// and leaves on, which an entry does not record, found by route lookups in the router (both
/// families). The way in is the route back to the source; the way out is the route a packet
/// from that source arriving there takes, policy routing included; what has no route is unknown.
#[test]
fn route_lookups_find_where_a_forwarded_flow_enters_and_leaves() {
    use kernel::rtnl::{Path, Paths, Rtnl};
    if !need_root("route_lookups_find_where_a_forwarded_flow_enters_and_leaves") {
        return;
    }
    let n = routed();
    let path = |iif: &str, oif: &str| Path { iif: Some(iif.into()), oif: Some(oif.into()) };
    let a = |s: &str| -> IpAddr { s.parse().unwrap() };
    n.router.run(|| {
        let mut p = Paths::new();
        assert_eq!(p.path(a("198.51.100.2"), a("203.0.113.2")), path("rw0", "ro0"));
        assert_eq!(p.path(a("2001:db8:1::2"), a("2001:db8:2::2")), path("rw0", "ro0"));
        // The other way round (a flow from outside).
        assert_eq!(p.path(a("203.0.113.2"), a("198.51.100.2")), path("ro0", "rw0"));
        // No route back to the source (the router has no default route), none to the destination.
        assert_eq!(p.path(a("192.0.2.99"), a("203.0.113.2")), Path { iif: None, oif: Some("ro0".into()) });
        assert_eq!(p.path(a("198.51.100.2"), a("192.0.2.99")), Path { iif: Some("rw0".into()), oif: None });
        assert!(p.error.is_none());
        let mut r = Rtnl::open().unwrap();
        let rw0 = r.link_index("rw0").unwrap();
        assert_eq!(r.link_name(rw0).unwrap(), "rw0");
        assert!(r.route_get(a("203.0.113.1"), None).unwrap().is_some_and(|r| r.out_interface().is_none()), "local");
        assert_eq!(r.route_get(a("192.0.2.99"), None).unwrap(), None);
    });
    // Policy routing: what comes from the workload on rw0 is routed by table 100, which sends
    // 203.0.113.2 back out of rw0; the router's own packets still use ro0.
    ip(&n.router, &["rule", "add", "from", "198.51.100.2", "iif", "rw0", "lookup", "100"]);
    ip(&n.router, &["route", "add", "203.0.113.2", "dev", "rw0", "table", "100"]);
    n.router.run(|| {
        let mut p = Paths::new();
        assert_eq!(p.path(a("198.51.100.2"), a("203.0.113.2")), path("rw0", "rw0"), "the input lookup decides");
        assert_eq!(p.path(a("198.51.100.3"), a("203.0.113.2")), path("rw0", "ro0"), "another source: the main table");
    });
}
