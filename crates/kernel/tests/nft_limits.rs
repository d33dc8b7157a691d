//! Rate limits, meters and connection counts against real traffic: a client namespace with the
//! table applied sends to a peer namespace over a veth pair, and the tests count what arrives.
//! They prove that the encodings the oracle compares byte for byte also do what the statements
//! say. Needs root; every test makes its own pair of network namespaces.
//!
//! The counts do not depend on timing: a burst of packets is sent within a few milliseconds, and
//! a bucket refills at 5 packets per second, so about one bucket passes; the bound allows for the
//! tokens that can refill while the burst is sent (measured), should the sender be descheduled.

mod common;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::*;
use kernel::netns::NetNs;
use kernel::rtnl::{self, Rtnl};
use kernel::testutil::{self, need_root};
use ruleset::*;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const PEER_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const UDP_PORT: u16 = 9000;
const TCP_PORT: u16 = 8080;
const UP: Duration = Duration::from_secs(3);
/// Packets of one burst.
const BURST_SENT: usize = 20;
/// The limit in the tests: 5 packets per second with a bucket of 5.
const RATE: u64 = 5;
const BUCKET: u32 = 5;

/// A client namespace joined by a veth pair to a peer namespace that owns PEER_A and PEER_B,
/// with a UDP socket on each (port UDP_PORT) and a TCP listener on each (port TCP_PORT; never
/// accepted from: the kernel completes connections into the backlog).
struct Net {
    client: NetNs,
    _peer: NetNs,
    udp: Vec<UdpSocket>,
    _tcp: Vec<TcpListener>,
}

fn net() -> Net {
    let client = NetNs::new().unwrap();
    let peer = NetNs::new().unwrap();
    let ci = client
        .run(|| -> Result<u32, rtnl::Error> {
            let mut r = Rtnl::open()?;
            r.create_veth_with_indexes("lim0", 10, "lim1", 20, peer.as_fd())?;
            let i = r.link_index("lim0")?;
            r.add_address(i, CLIENT.into(), 32)?;
            r.set_link_up(i)?;
            r.add_default_route(i, rtnl::Family::V4)?;
            Ok(i)
        })
        .unwrap();
    type Sockets = (Vec<UdpSocket>, Vec<TcpListener>);
    let (udp, tcp) = peer
        .run(
            || -> Result<Sockets, Box<dyn std::error::Error + Send + Sync>> {
                let mut r = Rtnl::open()?;
                let i = r.link_index("lim1")?;
                for a in [PEER_A, PEER_B] {
                    r.add_address(i, a.into(), 32)?;
                }
                r.set_link_up(i)?;
                r.add_default_route(i, rtnl::Family::V4)?;
                r.wait_oper_up(i, UP)?;
                let (mut udp, mut tcp) = (Vec::new(), Vec::new());
                for a in [PEER_A, PEER_B] {
                    r.wait_local(a.into(), UP)?;
                    let u = UdpSocket::bind((a, UDP_PORT))?;
                    u.set_nonblocking(true)?;
                    udp.push(u);
                    tcp.push(TcpListener::bind((a, TCP_PORT))?);
                }
                Ok((udp, tcp))
            },
        )
        .unwrap();
    client
        .run(|| Rtnl::open().unwrap().wait_oper_up(ci, UP))
        .unwrap();
    Net {
        client,
        _peer: peer,
        udp,
        _tcp: tcp,
    }
}

fn table(sets: Vec<Set>, rules: Vec<Rule>) -> Table {
    Table {
        name: TABLE_NAME.into(),
        comment: Some("limits test".into()),
        sets,
        chains: vec![chain(ChainPolicy::Accept, rules)],
    }
}

fn udp() -> Stmt {
    Stmt::L4proto(L4::Udp)
}

/// Sends BURST_SENT datagrams from the client to each of `to`, interleaved, as fast as it can;
/// returns how many `send` accepted per destination (a packet the output hook drops fails with
/// EPERM) and how long the burst took.
fn send_burst(net: &Net, to: &[Ipv4Addr]) -> (Vec<usize>, Duration) {
    let to = to.to_vec();
    net.client.run(move || {
        let s = UdpSocket::bind((CLIENT, 0)).unwrap();
        let mut sent = vec![0; to.len()];
        let start = Instant::now();
        for _ in 0..BURST_SENT {
            for (i, a) in to.iter().enumerate() {
                match s.send_to(b"leash", (*a, UDP_PORT)) {
                    Ok(_) => sent[i] += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                    Err(e) => panic!("send to {a}: {e}"),
                }
            }
        }
        (sent, start.elapsed())
    })
}

/// Datagrams waiting on the peer's socket for `addr` (read until it has been quiet for 300 ms).
fn received(net: &Net, addr: Ipv4Addr) -> usize {
    let sock = &net.udp[if addr == PEER_A { 0 } else { 1 }];
    let mut n = 0;
    let mut buf = [0u8; 64];
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(300) {
        match sock.recv(&mut buf) {
            Ok(_) => {
                n += 1;
                quiet = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("recv on {addr}: {e}"),
        }
    }
    n
}

/// The bucket's packets pass, and no more than the tokens that can have refilled while the
/// burst was sent (one per 1/RATE s, plus one partly refilled).
fn assert_about_one_bucket(what: &str, sent: usize, got: usize, took: Duration) {
    eprintln!("{what}: {got} of {BURST_SENT} arrived (burst sent in {took:?})");
    assert_eq!(got, sent, "{what}: every accepted send arrives");
    let bucket = BUCKET as usize;
    let refill = 1 + (took.as_secs_f64() * RATE as f64) as usize;
    assert!(
        (bucket..=bucket + refill).contains(&got),
        "{what}: {got} of {BURST_SENT} passed, want {bucket} (up to {refill} more)"
    );
}

#[test]
fn a_rate_limit_lets_one_bucket_of_a_burst_through() {
    if !need_root("a_rate_limit_lets_one_bucket_of_a_burst_through") {
        return;
    }
    let net = net();
    let limit = Stmt::Limit(rate(RATE, RateUnit::Second, BUCKET));
    let t = table(
        vec![],
        vec![
            rule(vec![udp(), limit, Stmt::Accept], Some("limited")),
            rule(vec![udp(), Stmt::Counter, Stmt::Drop], Some("over")),
        ],
    );
    net.client
        .run(|| kernel::apply(&t, &Default::default()))
        .unwrap();
    let (sent, took) = send_burst(&net, &[PEER_A]);
    assert_about_one_bucket(
        "limit rate 5/second burst 5",
        sent[0],
        received(&net, PEER_A),
        took,
    );
    // The rest met the drop rule.
    let st = net.client.run(kernel::status).unwrap().unwrap();
    let over = st.chains[0].rules[1].counter.unwrap();
    assert_eq!(over.packets as usize, BURST_SENT - sent[0]);
    testutil::root_has_no_leash_table();
}

#[test]
fn a_meter_gives_each_destination_its_own_bucket() {
    if !need_root("a_meter_gives_each_destination_its_own_bucket") {
        return;
    }
    let net = net();
    let meter = Stmt::Meter {
        set: "per_dst".into(),
        key: MeterKey::Daddr4,
        limit: MeterLimit::Rate(rate(RATE, RateUnit::Second, BUCKET)),
    };
    let t = table(
        vec![dynamic_set(
            "per_dst",
            KeyType::Ipv4Addr,
            1024,
            Some(60_000),
        )],
        vec![
            rule(vec![udp(), meter, Stmt::Accept], Some("per destination")),
            rule(vec![udp(), Stmt::Drop], Some("over")),
        ],
    );
    net.client
        .run(|| kernel::apply(&t, &Default::default()))
        .unwrap();
    let (sent, took) = send_burst(&net, &[PEER_A, PEER_B]);
    for (i, (peer, what)) in [(PEER_A, "first"), (PEER_B, "second")]
        .into_iter()
        .enumerate()
    {
        let what = format!("meter, {what} destination");
        assert_about_one_bucket(&what, sent[i], received(&net, peer), took);
    }
    // The set now holds one element per destination (it was empty after apply).
    let st = net.client.run(kernel::status).unwrap().unwrap();
    let set = st.sets.iter().find(|s| s.name == "per_dst").unwrap();
    assert_eq!(set.elements, kernel::ElementCount::Exact(2));
    assert!(set.timeout, "a meter with a timeout has flags timeout");
    testutil::root_has_no_leash_table();
}

/// Connects from the client namespace to `to`; `Ok` with the stream, or the error.
fn connect(net: &Net, to: Ipv4Addr) -> io::Result<TcpStream> {
    net.client.run(|| {
        TcpStream::connect_timeout(&SocketAddr::from((to, TCP_PORT)), Duration::from_secs(2))
    })
}

/// Closes a connection with a reset (SO_LINGER 0), which ends its conntrack entry at once, so a
/// connection counter stops counting it.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

fn assert_refused(r: io::Result<TcpStream>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{what}: {e}"),
        Ok(s) => panic!("{what}: connected ({:?})", s.peer_addr()),
    }
}

/// The table of the connection-count tests: established packets pass first (so only a new
/// connection's first packet meets the count), then `count`, then a reset for the rest.
fn count_table(sets: Vec<Set>, count: Stmt) -> Table {
    let tcp = Stmt::Dport {
        l4: L4::Tcp,
        value: Value::Eq(TCP_PORT),
    };
    table(
        sets,
        vec![
            rule(vec![Stmt::CtStateEstablishedRelated, Stmt::Accept], None),
            rule(vec![tcp, count, Stmt::Accept], Some("counted")),
            rule(
                vec![Stmt::L4proto(L4::Tcp), Stmt::RejectTcpReset],
                Some("over"),
            ),
        ],
    )
}

#[test]
fn ct_count_refuses_a_third_concurrent_connection() {
    if !need_root("ct_count_refuses_a_third_concurrent_connection") {
        return;
    }
    let net = net();
    let t = count_table(vec![], Stmt::CtCount(2));
    net.client
        .run(|| kernel::apply(&t, &Default::default()))
        .unwrap();
    let a = connect(&net, PEER_A).expect("first connection");
    let b = connect(&net, PEER_B).expect("second connection");
    assert_refused(connect(&net, PEER_A), "third connection while two are open");
    // The two open connections still work (their packets are established).
    for s in [&a, &b] {
        use std::io::Write;
        (&*s).write_all(b"still open").unwrap();
    }
    // Once one is gone, a new one fits again. The counter forgets a closed connection when it
    // next walks its list, and skips that walk within the same jiffy and keeps an entry another
    // CPU added less than two jiffies ago (the refused attempt above may be one), so the first
    // attempts right after the reset can still be refused.
    reset(a);
    let start = Instant::now();
    let c = loop {
        std::thread::sleep(Duration::from_millis(20));
        match connect(&net, PEER_A) {
            Ok(c) => break c,
            Err(e) if start.elapsed() < Duration::from_secs(2) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}")
            }
            Err(e) => panic!("no connection within 2 s after one of two closed: {e}"),
        }
    };
    drop((b, c));
    testutil::root_has_no_leash_table();
}

#[test]
fn a_ct_count_meter_counts_each_destination_on_its_own() {
    if !need_root("a_ct_count_meter_counts_each_destination_on_its_own") {
        return;
    }
    let net = net();
    let meter = Stmt::Meter {
        set: "conns".into(),
        key: MeterKey::Daddr4,
        limit: MeterLimit::Count(2),
    };
    let t = count_table(
        vec![dynamic_set("conns", KeyType::Ipv4Addr, 1024, None)],
        meter,
    );
    net.client
        .run(|| kernel::apply(&t, &Default::default()))
        .unwrap();
    let a1 = connect(&net, PEER_A).expect("first connection to A");
    let a2 = connect(&net, PEER_A).expect("second connection to A");
    assert_refused(connect(&net, PEER_A), "third connection to A");
    let b1 = connect(&net, PEER_B).expect("first connection to B");
    let b2 = connect(&net, PEER_B).expect("second connection to B");
    assert_refused(connect(&net, PEER_B), "third connection to B");
    drop((a1, a2, b1, b2));
    testutil::root_has_no_leash_table();
}
