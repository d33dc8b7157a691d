//! Live connections when a policy is tightened (issue 12, item 6): a lab (client and peer
//! namespaces, echo servers on the peer), a policy that allows TCP 443 and UDP 5353 applied in
//! the client, and connections opened by this test process inside the client namespace: TCP
//! over IPv4 and IPv6, a connected UDP socket, and unconnected UDP sockets of both families
//! (flows only conntrack knows). Then a policy that denies all of them:
//! - `leash apply` reports each (text and JSON) and they keep working: a policy decides new
//!   connections, and the established rule carries the old ones;
//! - `leash apply --cut` (and `on_apply = "cut"`, which `--no-cut` overrides) ends them: the
//!   sockets get ECONNABORTED, the unconnected sockets' next datagram meets the new rules;
//! - a failed apply cuts nothing; the forwarder's marked upstream query is never cut;
//! - without SOCK_DESTROY (the testing aid imitating a kernel built without it) the entries
//!   alone are deleted and a TCP flow's next outgoing segment is reset by the new rules.

use crate::harness::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

const WEB4: &str = "192.0.2.10";
const WEB6: &str = "2001:db8::10";

/// Allows what the test opens.
const OPEN: &str = r#"version = 1
[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["192.0.2.10", "2001:db8::10"]

[[rule]]
name = "mdns-ish"
action = "allow"
proto = "udp"
ports = [5353]
to = ["192.0.2.10", "2001:db8::10"]
"#;

/// Denies all of it (default deny, nothing allowed).
const TIGHT: &str = "version = 1\n";

/// The same, cutting by default.
const TIGHT_CUT: &str = "version = 1\n[defaults]\non_apply = \"cut\"\n";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Sends `msg` on a TCP stream and reads the echo; the error when there is none.
fn tcp_echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    assert_eq!(buf, msg);
    Ok(())
}

/// Sends a datagram (to `to`, or to the connected peer) and waits up to 500 ms for the echo.
fn udp_echo(s: &UdpSocket, to: Option<SocketAddr>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    match to {
        Some(to) => s.send_to(b"ping", to)?,
        None => s.send(b"ping")?,
    };
    let mut buf = [0u8; 16];
    let n = s.recv(&mut buf)?;
    assert_eq!(&buf[..n], b"ping");
    Ok(())
}

/// The connections of the test, opened inside the client namespace.
struct Flows {
    tcp4: TcpStream,
    tcp6: TcpStream,
    connected4: UdpSocket,
    unconnected4: UdpSocket,
    unconnected6: UdpSocket,
}

impl Flows {
    fn open(lab: &lab::Lab) -> Flows {
        let (c4, c6) = lab.client_addrs();
        lab.client().run(|| {
            let connected4 = UdpSocket::bind((c4, 0)).unwrap();
            connected4.connect(addr(WEB4, 5353)).unwrap();
            Flows {
                tcp4: TcpStream::connect(addr(WEB4, 443)).unwrap(),
                tcp6: TcpStream::connect(addr(WEB6, 443)).unwrap(),
                connected4,
                unconnected4: UdpSocket::bind((c4, 0)).unwrap(),
                unconnected6: UdpSocket::bind((c6, 0)).unwrap(),
            }
        })
    }

    /// Whether each flow works: (tcp4, tcp6, connected4, unconnected4, unconnected6).
    fn working(&mut self) -> [bool; 5] {
        [
            tcp_echo(&mut self.tcp4, b"4").is_ok(),
            tcp_echo(&mut self.tcp6, b"6").is_ok(),
            udp_echo(&self.connected4, None).is_ok(),
            udp_echo(&self.unconnected4, Some(addr(WEB4, 5353))).is_ok(),
            udp_echo(&self.unconnected6, Some(addr(WEB6, 5353))).is_ok(),
        ]
    }

    /// The local address of each flow, as the report shows it.
    fn locals(&self) -> [SocketAddr; 5] {
        [
            self.tcp4.local_addr().unwrap(),
            self.tcp6.local_addr().unwrap(),
            self.connected4.local_addr().unwrap(),
            self.unconnected4.local_addr().unwrap(),
            self.unconnected6.local_addr().unwrap(),
        ]
    }
}

fn denied(r: &Run) -> Vec<Value> {
    r.json()["live_connections"]["denied"].as_array().unwrap_or_else(|| panic!("no live_connections.denied{r}")).clone()
}

/// The denied flow whose local end is `local`.
fn flow<'a>(d: &'a [Value], local: SocketAddr, r: &Run) -> &'a Value {
    d.iter().find(|f| f["local"] == local.to_string()).unwrap_or_else(|| panic!("{local} not reported{r}"))
}

#[test]
fn apply_reports_live_connections_the_new_policy_denies_and_cut_ends_them() {
    if !need_root("apply_reports_live_connections_the_new_policy_denies_and_cut_ends_them") {
        return;
    }
    let dests: Vec<IpAddr> = vec![WEB4.parse().unwrap(), WEB6.parse().unwrap()];
    let lab = lab::Lab::new(&dests, &[443], &[5353]).expect("lab");
    let ns = lab.client();
    let dir = TempDir::new("cut");
    let open = dir.file("open.toml", OPEN);
    let tight = dir.file("tight.toml", TIGHT);
    let tight_cut = dir.file("tight-cut.toml", TIGHT_CUT);
    let r = leash_in(ns, &["apply", &open]);
    assert!(r.ok(), "{r}");
    let mut f = Flows::open(&lab);
    assert_eq!(f.working(), [true; 5], "every flow works under the open policy");
    let me = std::process::id();
    // A socket that is gone leaves its UDP entry behind for a later socket on its port to ride.
    let gone = lab.client().run(|| UdpSocket::bind((lab.client_addrs().0, 0)).unwrap());
    udp_echo(&gone, Some(addr(WEB4, 5353))).unwrap();
    drop(gone);

    // What `leash conns --policy` says the tightened policy would cut is what apply reports.
    let r = leash_in(ns, &["conns", "--json", "--policy", &tight]);
    assert!(r.ok(), "{r}");
    assert_eq!(r.json()["would_deny"], 5, "{r}");
    assert_eq!(r.json()["would_deny_now_allowed"], 3, "the sockets the active policy allows today{r}");

    // Tightened, reported: every flow is listed with its process and keeps working.
    let r = leash_in(ns, &["apply", "--json", &tight]);
    assert!(r.ok(), "{r}");
    assert_eq!(r.json()["live_connections"]["mode"], "report", "{r}");
    let d = denied(&r);
    let origins = ["socket", "socket", "socket", "conntrack", "conntrack"];
    let remotes = [addr(WEB4, 443), addr(WEB6, 443), addr(WEB4, 5353), addr(WEB4, 5353), addr(WEB6, 5353)];
    for ((local, origin), remote) in f.locals().into_iter().zip(origins).zip(remotes) {
        let x = flow(&d, local, &r);
        assert_eq!((x["origin"].as_str(), x["remote"].as_str()), (Some(origin), Some(remote.to_string().as_str())), "{x:#}{r}");
        assert_eq!((x["pid"].as_u64(), x["decided_by"].as_str(), x["user"].as_str()), (Some(u64::from(me)), Some("default"), Some("root")), "{x:#}{r}");
    }
    assert_eq!(d.len(), 5, "{r}");
    assert!(r.json()["live_connections"]["leftover_entries"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(f.working(), [true; 5], "reported, not cut: a policy decides new connections only");

    // The text report names them.
    let t = leash_in(ns, &["apply", &tight]);
    assert!(t.ok(), "{t}");
    assert!(t.stdout.contains("live connections the new policy denies: 5 (listed after the commit)"), "{t}");
    assert!(t.stdout.contains(&format!("tcp {} -> {}", f.tcp6.local_addr().unwrap(), addr(WEB6, 443))), "{t}");
    assert!(t.stdout.contains("`leash apply --cut` ends them"), "{t}");

    // A failed apply cuts nothing, even when asked to.
    let r = leash_in(ns, &["apply", "--cut", "--fault-inject", &tight]);
    assert_eq!(r.code, Some(3), "{r}");
    assert_eq!(f.working(), [true; 5], "a failed apply cut something");

    // on_apply = "cut", overridden by --no-cut: reported only.
    let r = leash_in(ns, &["apply", "--json", "--no-cut", &tight_cut]);
    assert!(r.ok(), "{r}");
    assert_eq!((r.json()["live_connections"]["mode"].as_str(), denied(&r).len()), (Some("report"), 5), "{r}");
    assert!(r.json()["live_connections"]["cut"].is_null(), "{r}");
    assert_eq!(f.working(), [true; 5]);
    assert_eq!(leash_in(ns, &["apply", "--cut", "--no-cut", &tight]).code, Some(2));

    // on_apply = "cut": ended.
    let r = leash_in(ns, &["apply", "--json", &tight_cut]);
    assert!(r.ok(), "{r}");
    let live = &r.json()["live_connections"];
    assert_eq!((live["mode"].as_str(), live["cut"]["destroy"].as_str()), (Some("cut"), Some("supported")), "{r}");
    assert_eq!(live["cut"]["sockets_destroyed"], 3, "{r}");
    assert!(live["cut"]["entries_deleted"].as_u64().unwrap() >= 5, "{r}");
    assert!(live["cut"]["leftovers_deleted"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(live["cut"]["errors"].as_array().unwrap().len(), 0, "{r}");
    // The sockets were aborted; the unconnected sockets' next datagrams meet the rules.
    let mut buf = [0u8; 4];
    for s in [&mut f.tcp4, &mut f.tcp6] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let e = s.read(&mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}{r}");
    }
    f.connected4.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(f.connected4.recv(&mut buf).unwrap_err().raw_os_error(), Some(libc::ECONNABORTED), "{r}");
    assert!(udp_echo(&f.unconnected4, Some(addr(WEB4, 5353))).is_err(), "IPv4 unconnected flow still alive{r}");
    assert!(udp_echo(&f.unconnected6, Some(addr(WEB6, 5353))).is_err(), "IPv6 unconnected flow still alive{r}");

    // Nothing left to cut.
    let t = leash_in(ns, &["apply", "--cut", &tight]);
    assert!(t.ok(), "{t}");
    assert!(t.stdout.contains("live connections: none that the new policy denies, nothing cut"), "{t}");
    root_has_no_leash_table();
}

/// Without SOCK_DESTROY only the conntrack entries go: the flow's next outgoing segment is new
/// to conntrack, meets the rules and is reset (deny_with = "reject"). apply warns that a peer
/// sending first would take the flow up again (crates/kernel/tests/conntrack.rs shows that).
#[test]
fn a_cut_without_sock_destroy_deletes_the_entries_and_the_next_segment_is_reset() {
    if !need_root("a_cut_without_sock_destroy_deletes_the_entries_and_the_next_segment_is_reset") {
        return;
    }
    let dests: Vec<IpAddr> = vec![WEB4.parse().unwrap(), WEB6.parse().unwrap()];
    let lab = lab::Lab::new(&dests, &[443], &[5353]).expect("lab");
    let ns = lab.client();
    let dir = TempDir::new("cut-nodestroy");
    let r = leash_in(ns, &["apply", &dir.file("open.toml", OPEN)]);
    assert!(r.ok(), "{r}");
    let mut f = Flows::open(&lab);
    assert_eq!(f.working(), [true; 5]);
    let r = leash_in(ns, &["apply", "--cut", "--fault-no-sock-destroy", &dir.file("tight.toml", TIGHT)]);
    assert!(r.ok(), "{r}");
    assert!(r.stderr.contains("warning: this kernel cannot destroy sockets"), "{r}");
    assert!(r.stdout.contains("0 socket(s) destroyed"), "{r}");
    for s in [&mut f.tcp4, &mut f.tcp6] {
        let e = tcp_echo(s, b"x").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}{r}");
    }
    assert!(udp_echo(&f.unconnected4, Some(addr(WEB4, 5353))).is_err(), "{r}");
    assert!(udp_echo(&f.unconnected6, Some(addr(WEB6, 5353))).is_err(), "{r}");
}

/// The forwarder's own upstream query (its mark and its user, to a configured upstream) is let
/// out by the table's forwarder rule: never reported, never cut. The same connection without the
/// mark is DNS past the forwarder, which the bypass control denies: reported and cut.
#[test]
fn a_cut_spares_the_forwarders_upstream_queries() {
    if !need_root("a_cut_spares_the_forwarders_upstream_queries") {
        return;
    }
    let dests: Vec<IpAddr> = vec![WEB4.parse().unwrap()];
    let lab = lab::Lab::new(&dests, &[853], &[]).expect("lab");
    let ns = lab.client();
    let dir = TempDir::new("cut-forwarder");
    // Domain rules (a wildcard only: nothing to warm up), so the forwarder rule and the bypass
    // control are in the table.
    const TIGHT_DNS: &str = "version = 1\n[dns]\nupstreams = [\"192.0.2.10:853\"]\nmark = 0x6c6e\nuser = 64653\n\n\
         [[rule]]\nname = \"cdn\"\naction = \"allow\"\nports = [443]\nto = [\"*.cdn.example.com\"]\n";
    // Both connections are opened under a policy without domain rules (so without the bypass
    // control, which would refuse the unmarked one).
    let open = dir.file("open.toml", "version = 1\n[[rule]]\nname = \"dot\"\naction = \"allow\"\nports = [853]\nto = [\"192.0.2.10\"]\n");
    let tight = dir.file("tight.toml", TIGHT_DNS);
    let r = leash_in(ns, &["apply", &open]);
    assert!(r.ok(), "{r}");
    let (mut marked, mut plain) = ns.run(|| {
        // The forwarder's socket: owned by its user (64653, as `[dns] user` says), with its mark.
        let s = dns::owned_by(64653, || socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap()).unwrap();
        s.set_mark(0x6c6e).unwrap();
        s.connect(&addr(WEB4, 853).into()).unwrap();
        (TcpStream::from(s), TcpStream::connect(addr(WEB4, 853)).unwrap())
    });
    tcp_echo(&mut marked, b"m").unwrap();
    tcp_echo(&mut plain, b"p").unwrap();
    let r = leash_in(ns, &["apply", "--json", "--cut", &tight]);
    assert!(r.ok(), "{r}");
    let d = denied(&r);
    assert_eq!(d.len(), 1, "{r}");
    let x = flow(&d, plain.local_addr().unwrap(), &r);
    assert_eq!(x["decided_by"], "dns-bypass", "{r}");
    tcp_echo(&mut marked, b"still").expect("the forwarder's query survives the cut");
    assert!(tcp_echo(&mut plain, b"p").is_err(), "{r}");
}
