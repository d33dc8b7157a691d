//! Forwarded flows when a policy is tightened (issue 12, item 6 for forwarded traffic): workload
//! namespaces routed through the lab's client stand in for containers. Flows are opened from
//! them under an open policy: TCP and UDP from a container on docker0 (IPv4 and IPv6), a flow
//! from a network that is no workload (not governed) and flows between two workloads. Then a
//! policy that denies everything:
//! - `leash apply` reports the container's flows (origin `forwarded`, with the interfaces found
//!   by route lookups) in text and JSON, `leash conns --policy` lists them, and they keep working;
//! - `leash apply --cut` deletes their conntrack entries: the container's next packet meets the
//!   new rules (a TCP reset, an ICMP error for UDP);
//! - the flow that is not from a workload and those between workloads are neither reported nor
//!   cut, and keep working;
//! - what a cut cannot do, as documented: a flow routed without NAT whose peer sends first after
//!   the cut is taken up again by conntrack as the peer's (inbound to a workload, not governed);
//! - a masqueraded flow (Docker's NAT: the entry's reply tuple names the host's address) is
//!   reported by the container's own address and cut the same way, also when its peer sends
//!   first (nothing translates the peer's segment back: the host resets it).

use crate::harness::*;
use lab::{Lab, WorkloadSpec};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

const DST: &str = "192.0.2.10";
const DST6: &str = "2001:db8::10";
/// A container on docker0 (a default workload interface).
const CONTAINER: &str = "198.18.0.2";
const CONTAINER6: &str = "2001:db8:c0::2";
/// Another workload, on a bridge `br-*` covers: flows to it are between workloads.
const NEIGHBOUR: &str = "198.18.1.2";
const NEIGHBOUR6: &str = "2001:db8:c1::2";
/// A routed network that is no workload (its interface is no workload interface).
const OTHER: &str = "198.18.10.5";
const OTHER6: &str = "2001:db8:c9::5";

const OPEN: &str = "version = 1\n[defaults]\noutbound = \"allow\"\n";
/// Default deny for the host and its workloads.
const TIGHT: &str = "version = 1\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(a: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(a), port)
}

fn lab() -> Lab {
    let w = |iif: &str, srcs: &[&str]| WorkloadSpec { iif: iif.into(), sources: srcs.iter().map(|s| ip(s)).collect() };
    let specs = [w("docker0", &[CONTAINER, CONTAINER6]), w("br-apps", &[NEIGHBOUR, NEIGHBOUR6]), w("eth7", &[OTHER, OTHER6])];
    Lab::with_workloads(&[ip(DST), ip(DST6)], &[443], &[5353], &specs).expect("lab")
}

/// The namespace of the lab's workload entering on `iif`.
fn workload<'a>(lab: &'a Lab, iif: &str) -> &'a kernel::netns::NetNs {
    lab.workloads().find(|(_, s)| s.iif == iif).map(|(ns, _)| ns).unwrap()
}

/// Sends `msg` and reads the echo (TCP).
fn tcp_echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    assert_eq!(buf, msg);
    Ok(())
}

/// Sends a datagram on a connected socket and waits up to 500 ms for the echo.
fn udp_echo(s: &UdpSocket) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.send(b"ping")?;
    let mut buf = [0u8; 16];
    let n = s.recv(&mut buf)?;
    assert_eq!(&buf[..n], b"ping");
    Ok(())
}

/// A connected UDP socket from `src` to `dst`, made in `ns`; the first datagrams may wait for
/// neighbour resolution on two links, so it tries a few times until the echo comes.
fn udp_flow(ns: &kernel::netns::NetNs, src: &str, dst: SocketAddr) -> UdpSocket {
    let s = ns.run(|| {
        let s = UdpSocket::bind((ip(src), 0)).unwrap();
        s.connect(dst).unwrap();
        s
    });
    assert!((0..10).any(|_| udp_echo(&s).is_ok()), "udp {src} -> {dst} under the open policy");
    // Late echoes of the tries are not answers to what follows.
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while s.recv(&mut [0u8; 16]).is_ok() {}
    s
}

fn tcp_flow(ns: &kernel::netns::NetNs, src: &str, dst: SocketAddr) -> TcpStream {
    ns.run(|| {
        let s = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(ip(src), 0).into()).unwrap();
        s.connect_timeout(&dst.into(), Duration::from_secs(3)).unwrap_or_else(|e| panic!("tcp {src} -> {dst}: {e}"));
        TcpStream::from(s)
    })
}

/// A TCP connection between two workloads: the far end is accepted in `server_ns`.
struct Between {
    client: TcpStream,
    server: TcpStream,
}

impl Between {
    fn open(lab: &Lab, src: &str, dst: &str) -> Between {
        let l = workload(lab, "br-apps").run(|| TcpListener::bind((ip(dst), 0)).unwrap());
        let client = tcp_flow(workload(lab, "docker0"), src, l.local_addr().unwrap());
        let (server, _) = l.accept().unwrap();
        Between { client, server }
    }

    fn works(&mut self) -> bool {
        self.server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1];
        self.client.write_all(b"b").is_ok() && self.server.read_exact(&mut buf).is_ok()
    }
}

fn denied(r: &Run, key: &str) -> Vec<Value> {
    let v = if key == "apply" { &r.json()["live_connections"]["denied"] } else { &r.json()["would_deny_flows"] };
    v.as_array().unwrap_or_else(|| panic!("no list of denied flows{r}")).clone()
}

/// The locals of the listed flows, sorted.
fn locals(d: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = d.iter().map(|f| f["local"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn sorted(v: &[SocketAddr]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

#[test]
fn apply_reports_and_cuts_forwarded_flows_from_workloads_only() {
    if !need_root("apply_reports_and_cuts_forwarded_flows_from_workloads_only") {
        return;
    }
    let lab = lab();
    let ns = lab.client();
    let dir = TempDir::new("cut-fwd");
    let (open, tight) = (dir.file("open.toml", OPEN), dir.file("tight.toml", TIGHT));
    let r = leash_in(ns, &["apply", &open]);
    assert!(r.ok(), "{r}");
    let docker = workload(&lab, "docker0");
    let other = workload(&lab, "eth7");
    let mut tcp4 = tcp_flow(docker, CONTAINER, addr(DST, 443));
    let mut tcp6 = tcp_flow(docker, CONTAINER6, addr(DST6, 443));
    let udp4 = udp_flow(docker, CONTAINER, addr(DST, 5353));
    let udp6 = udp_flow(docker, CONTAINER6, addr(DST6, 5353));
    let mut other_tcp = tcp_flow(other, OTHER, addr(DST, 443));
    let other_udp6 = udp_flow(other, OTHER6, addr(DST6, 5353));
    // A flow whose peer will send first after the cut (a server of the test's own on the peer).
    let server = lab.peer().run(|| TcpListener::bind((ip(DST), 8080)).unwrap());
    let mut peer_first = tcp_flow(docker, CONTAINER, addr(DST, 8080));
    let (mut peer_end, _) = server.accept().unwrap();
    let mut between4 = Between::open(&lab, CONTAINER, NEIGHBOUR);
    let mut between6 = Between::open(&lab, CONTAINER6, NEIGHBOUR6);
    let works = |tcp4: &mut TcpStream, tcp6: &mut TcpStream| {
        [tcp_echo(tcp4, b"4").is_ok(), tcp_echo(tcp6, b"6").is_ok(), udp_echo(&udp4).is_ok(), udp_echo(&udp6).is_ok()]
    };
    assert_eq!(works(&mut tcp4, &mut tcp6), [true; 4], "the container's flows under the open policy");
    let mut spared = || {
        [tcp_echo(&mut other_tcp, b"o").is_ok(), udp_echo(&other_udp6).is_ok(), between4.works(), between6.works()]
    };
    assert_eq!(spared(), [true; 4], "the other flows under the open policy");
    let container_flows = sorted(&[
        tcp4.local_addr().unwrap(),
        tcp6.local_addr().unwrap(),
        udp4.local_addr().unwrap(),
        udp6.local_addr().unwrap(),
        peer_first.local_addr().unwrap(),
    ]);

    // What `conns --policy` says the tight policy would cut: the container's four flows.
    let c = leash_in(ns, &["conns", "--json", "--policy", &tight]);
    assert!(c.ok(), "{c}");
    assert_eq!(locals(&denied(&c, "conns")), container_flows, "{c}");

    // Applied without --cut: reported (JSON and text), and still working.
    let r = leash_in(ns, &["apply", "--json", &tight]);
    assert!(r.ok(), "{r}");
    let d = denied(&r, "apply");
    assert_eq!(locals(&d), container_flows, "only the container's flows to the peer{r}");
    for f in &d {
        let v6 = f["local"].as_str().unwrap().starts_with('[');
        let port = if f["local"] == peer_first.local_addr().unwrap().to_string() { 8080 } else if f["proto"] == "tcp" { 443 } else { 5353 };
        let dst = if v6 { DST6 } else { DST };
        assert_eq!(f["origin"], "forwarded", "{f:#}{r}");
        assert_eq!(f["remote"], addr(dst, port).to_string(), "{f:#}{r}");
        assert_eq!((f["iif"].as_str(), f["oif"].as_str()), (Some("docker0"), Some(Lab::uplink())), "{f:#}{r}");
        assert_eq!((f["decided_by"].as_str(), f["pid"].as_u64(), f["uid"].as_u64()), (Some("default"), None, None), "{f:#}{r}");
    }
    assert_eq!(works(&mut tcp4, &mut tcp6), [true; 4], "reported, not cut");
    let t = leash_in(ns, &["apply", &tight]);
    assert!(t.ok(), "{t}");
    assert!(t.stdout.contains("live connections the new policy denies: 5"), "{t}");
    let line = format!("tcp {} -> {}", tcp6.local_addr().unwrap(), addr(DST6, 443));
    assert!(t.stdout.lines().any(|l| l.contains(&line) && l.contains("[forwarded docker0 -> lab0, conntrack entry]")), "{t}");

    // Cut: the container's entries are deleted, and its next packets meet the new rules.
    let r = leash_in(ns, &["apply", "--json", "--cut", &tight]);
    assert!(r.ok(), "{r}");
    let live = &r.json()["live_connections"];
    assert_eq!(locals(&denied(&r, "apply")), container_flows, "{r}");
    assert_eq!(live["cut"]["entries_deleted"], 5, "{r}");
    assert_eq!(live["cut"]["errors"].as_array().map(Vec::len), Some(0), "{r}");
    let e = tcp_echo(&mut tcp4, b"x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "IPv4: {e}{r}");
    let e = tcp_echo(&mut tcp6, b"x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "IPv6: {e}{r}");
    assert!(udp_echo(&udp4).is_err(), "the IPv4 UDP flow still works after the cut{r}");
    assert!(udp_echo(&udp6).is_err(), "the IPv6 UDP flow still works after the cut{r}");
    // Not from a workload, or between workloads: not leash's to cut.
    assert_eq!(spared(), [true; 4], "a flow leash does not govern was cut{r}");
    // What the cut cannot do (README says so): without NAT, a peer that sends first makes
    // conntrack take the flow up again as the peer's, traffic into a workload that leash does
    // not govern, and the container's answers pass as replies.
    peer_end.write_all(b"p").unwrap();
    let mut buf = [0u8; 1];
    peer_first.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    peer_first.read_exact(&mut buf).expect("the peer's segment reaches the container");
    peer_first.write_all(b"c").unwrap();
    peer_end.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    peer_end.read_exact(&mut buf).expect("the container's answer passes as a reply");
    let t = leash_in(ns, &["apply", "--cut", &tight]);
    assert!(t.stdout.contains("live connections: none that the new policy denies, nothing cut"), "{t}");
}

/// Docker masquerades its containers' connections: the router's entry has the container's
/// address in its original tuple and the host's in its reply tuple. The flow is the container's:
/// reported by its address, judged as coming from docker0, and cut by its original tuple.
#[test]
fn a_masqueraded_forwarded_flow_is_the_workloads_and_is_cut() {
    if !need_root("a_masqueraded_forwarded_flow_is_the_workloads_and_is_cut") {
        return;
    }
    let lab = lab();
    let ns = lab.client();
    // Docker's NAT, in a table of its own next to leash's.
    nft_load(ns, "table inet dockerish {\n chain post { type nat hook postrouting priority srcnat; oifname \"lab0\" masquerade; }\n}\n");
    let dir = TempDir::new("cut-fwd-nat");
    let (open, tight) = (dir.file("open.toml", OPEN), dir.file("tight.toml", TIGHT));
    let r = leash_in(ns, &["apply", &open]);
    assert!(r.ok(), "{r}");
    let docker = workload(&lab, "docker0");
    let mut tcp4 = tcp_flow(docker, CONTAINER, addr(DST, 443));
    let udp6 = udp_flow(docker, CONTAINER6, addr(DST6, 5353));
    tcp_echo(&mut tcp4, b"n").unwrap();
    // One whose peer sends first after the cut (a server of the test's own on the peer).
    let server = lab.peer().run(|| TcpListener::bind((ip(DST6), 8080)).unwrap());
    let mut peer_first = tcp_flow(docker, CONTAINER6, addr(DST6, 8080));
    let (mut peer_end, seen_as) = server.accept().unwrap();
    assert_eq!(seen_as.ip(), IpAddr::V6(lab.client_addrs().1), "masqueraded");
    // The entries are translated: their replies go to the client's own addresses.
    let (c4, c6) = lab.client_addrs();
    let entries = ns.run(kernel::conntrack::dump).unwrap();
    for (local, host) in [(tcp4.local_addr().unwrap(), IpAddr::V4(c4)), (udp6.local_addr().unwrap(), IpAddr::V6(c6))] {
        let e = entries
            .iter()
            .find(|e| e.orig.src == local.ip() && e.orig.sport() == Some(local.port()))
            .unwrap_or_else(|| panic!("no entry of {local} in {entries:#?}"));
        assert_eq!(e.reply.dst, host, "masqueraded: {e:?}");
    }

    let r = leash_in(ns, &["apply", "--json", &tight]);
    assert!(r.ok(), "{r}");
    let d = denied(&r, "apply");
    assert_eq!(locals(&d), sorted(&[tcp4.local_addr().unwrap(), udp6.local_addr().unwrap(), peer_first.local_addr().unwrap()]), "{r}");
    assert!(d.iter().all(|f| f["origin"] == "forwarded" && f["iif"] == "docker0"), "{r}");
    tcp_echo(&mut tcp4, b"still").expect("reported, not cut");
    udp_echo(&udp6).expect("reported, not cut");

    let r = leash_in(ns, &["apply", "--json", "--cut", &tight]);
    assert!(r.ok(), "{r}");
    assert_eq!(r.json()["live_connections"]["cut"]["entries_deleted"], 3, "{r}");
    let e = tcp_echo(&mut tcp4, b"x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}{r}");
    assert!(udp_echo(&udp6).is_err(), "the masqueraded UDP flow still works after the cut{r}");
    // The peer first: its segment reaches the client's own address, which nothing translates
    // back any more, and the client's stack resets it.
    peer_end.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    peer_end.write_all(b"p").unwrap();
    let e = peer_end.read(&mut [0u8; 1]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "the peer's end: {e}{r}");
    let e = tcp_echo(&mut peer_first, b"c").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "the container's end: {e}{r}");
}
