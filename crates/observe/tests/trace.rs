//! `observe::trace` against the real kernel: real connections in scratch namespaces, traced by
//! `kernel::trace::Tracer`, grouped per packet and explained to the rule that decided them, and
//! only packets that match the filter are traced. Needs root; every test makes its own network
//! namespaces (see `kernel::testutil`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use kernel::netns::NetNs;
use kernel::rtnl::{self, Rtnl};
use kernel::testutil::{self, need_root};
use kernel::trace::{TRACE_CHAIN, TraceFilter, Tracer};
use observe::trace::{self, Assembler, ChainEnd, Outcome, PacketTrace};
use ruleset::*;

// --- scratch network ----------------------------------------------------------------------------

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Traced in the tests.
const TRACED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// Allowed like TRACED but outside the filter.
const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT_IFINDEX: u32 = 10;
const UP: Duration = Duration::from_secs(3);

/// A client namespace joined by a veth pair to a peer namespace that owns TRACED and OTHER and
/// listens on TCP 443 on both. The listeners are never accepted from: the kernel completes
/// connections into their backlog.
struct Net {
    client: NetNs,
    _peer: NetNs,
    _listeners: Vec<TcpListener>,
}

fn net() -> Net {
    let client = NetNs::new().unwrap();
    let peer = NetNs::new().unwrap();
    let ci = client
        .run(|| -> Result<u32, rtnl::Error> {
            let mut r = Rtnl::open()?;
            r.create_veth_with_indexes("tr0", CLIENT_IFINDEX, "tr1", 20, peer.as_fd())?;
            let i = r.link_index("tr0")?;
            r.add_address(i, CLIENT.into(), 32)?;
            r.set_link_up(i)?;
            r.add_default_route(i, rtnl::Family::V4)?;
            Ok(i)
        })
        .unwrap();
    let listeners = peer
        .run(
            || -> Result<Vec<TcpListener>, Box<dyn std::error::Error + Send + Sync>> {
                let mut r = Rtnl::open()?;
                let i = r.link_index("tr1")?;
                for a in [TRACED, OTHER] {
                    r.add_address(i, a.into(), 32)?;
                }
                r.set_link_up(i)?;
                r.add_default_route(i, rtnl::Family::V4)?;
                r.wait_oper_up(i, UP)?;
                let mut l = Vec::new();
                for a in [TRACED, OTHER] {
                    r.wait_local(a.into(), UP)?;
                    l.push(TcpListener::bind((a, 443))?);
                }
                Ok(l)
            },
        )
        .unwrap();
    client
        .run(|| Rtnl::open().unwrap().wait_oper_up(ci, UP))
        .unwrap();
    Net {
        client,
        _peer: peer,
        _listeners: listeners,
    }
}

fn table() -> Table {
    testutil::policy_shaped_table(TRACED, OTHER)
}

/// Connects from the client namespace as `uid` (a thread of its own drops to it), and says
/// whether the connection was made.
fn connect(net: &Net, to: Ipv4Addr, port: u16, uid: u32) -> io::Result<()> {
    net.client.run(|| {
        if uid != 0 {
            // Raw syscalls change only this (throwaway) thread's credentials.
            // SAFETY: plain syscalls without pointers.
            unsafe {
                if libc::syscall(libc::SYS_setresgid, uid, uid, uid) != 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        TcpStream::connect_timeout(&SocketAddr::new(to.into(), port), Duration::from_secs(2))
            .map(drop)
    })
}

/// Reads events until `done` holds for the packets so far (or `max` passes), then a little
/// longer so that stray packets would show up too.
fn collect(
    tracer: &mut Tracer,
    max: Duration,
    done: impl Fn(&[PacketTrace]) -> bool,
) -> Vec<PacketTrace> {
    let mut asm = Assembler::new(
        tracer.rules().final_chain().unwrap_or("output"),
        Duration::from_millis(300),
    );
    let mut out = Vec::new();
    let start = Instant::now();
    let mut settle: Option<Instant> = None;
    while start.elapsed() < max && settle.is_none_or(|s| s.elapsed() < Duration::from_millis(300)) {
        for ev in tracer.wait(Duration::from_millis(50)).unwrap() {
            out.extend(asm.push(ev, Instant::now()));
        }
        out.extend(asm.expire(Instant::now()));
        if settle.is_none() && done(&out) {
            settle = Some(Instant::now());
        }
    }
    out.extend(asm.finish());
    out
}

fn is_syn_to(p: &PacketTrace, dst: Ipv4Addr, port: u16) -> bool {
    p.packet.as_ref().is_some_and(|k| {
        k.dst == IpAddr::V4(dst) && k.dport == Some(port) && k.tcp_flags == Some(0x02)
    })
}

fn has_chain(ns: &NetNs, chain: &str) -> bool {
    testutil::nft_raw(ns, &["list", "chain", "inet", "leash", chain], None).0
}

#[test]
fn trace_shows_the_deciding_rule_of_allowed_and_blocked_connections() {
    if !need_root("trace_shows_the_deciding_rule_of_allowed_and_blocked_connections") {
        return;
    }
    let net = net();
    let filter = TraceFilter::new(Some(IpAddr::V4(TRACED).into()), None, None);
    let mut tracer = net.client.run(|| {
        kernel::apply(&table(), &Default::default()).unwrap();
        Tracer::start(filter).unwrap()
    });
    assert!(has_chain(&net.client, TRACE_CHAIN));
    connect(&net, TRACED, 443, 0).expect("allowed");
    let e = connect(&net, TRACED, 80, 0).expect_err("blocked");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    connect(&net, OTHER, 443, 0).expect("allowed, not traced");

    let packets = collect(&mut tracer, Duration::from_secs(5), |p| {
        p.iter().any(|p| is_syn_to(p, TRACED, 443)) && p.iter().any(|p| is_syn_to(p, TRACED, 80))
    });
    let rules = tracer.rules().clone();
    let show = || {
        packets
            .iter()
            .map(|p| format!("{p:?}\n  => {:?}", trace::explain(p, &rules)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for p in &packets {
        let k = p
            .packet
            .as_ref()
            .unwrap_or_else(|| panic!("no headers:\n{}", show()));
        assert_eq!(
            k.dst,
            IpAddr::V4(TRACED),
            "only the filter's packets are traced:\n{}",
            show()
        );
        assert!(p.complete, "{}", show());
        assert_eq!(p.oif, Some(CLIENT_IFINDEX));
    }
    let allowed = packets
        .iter()
        .find(|p| is_syn_to(p, TRACED, 443))
        .unwrap_or_else(|| panic!("{}", show()));
    let e = trace::explain(allowed, &rules);
    assert_eq!(e.outcome, Some(Outcome::Accept), "{}", show());
    assert_eq!(
        (e.chain.as_deref(), e.rule.as_deref()),
        (Some("output"), Some("web"))
    );
    let path: Vec<(&str, Option<String>)> = e.chains[0]
        .rules
        .iter()
        .map(|r| (r.rule.as_str(), r.action()))
        .collect();
    assert_eq!(
        path,
        vec![
            ("@loopback", None),
            ("@established", None),
            ("dns", None),
            ("web", Some("accept".into()))
        ]
    );
    assert_eq!(e.chains[0].end, ChainEnd::Rule);

    let blocked = packets
        .iter()
        .find(|p| is_syn_to(p, TRACED, 80))
        .unwrap_or_else(|| panic!("{}", show()));
    let e = trace::explain(blocked, &rules);
    assert_eq!(e.outcome, Some(Outcome::Reject), "{}", show());
    assert_eq!(e.rule.as_deref(), Some("@default"));
    let path: Vec<(&str, Option<String>)> = e.chains[0]
        .rules
        .iter()
        .map(|r| (r.rule.as_str(), r.action()))
        .collect();
    assert_eq!(
        path,
        vec![
            ("@loopback", None),
            ("@established", None),
            ("dns", None),
            ("web", None),
            ("@default", Some("reject".into()))
        ]
    );
    // The rest of the allowed connection (its ACK) went out as established.
    assert!(
        packets
            .iter()
            .any(|p| trace::explain(p, &rules).rule.as_deref() == Some("@established")),
        "{}",
        show()
    );
    assert_eq!(tracer.lost(), 0);
    assert!(tracer.stop().unwrap(), "the chain was there to remove");
    assert!(
        !has_chain(&net.client, TRACE_CHAIN),
        "the tracing chain is gone"
    );
    let listing = testutil::list_leash(&net.client).unwrap();
    assert!(
        listing.contains("comment \"@default\""),
        "the table is intact:\n{listing}"
    );
    testutil::root_has_no_leash_table();
}

#[test]
fn uid_and_port_filters_trace_only_matching_packets() {
    if !need_root("uid_and_port_filters_trace_only_matching_packets") {
        return;
    }
    let net = net();
    let filter = TraceFilter::new(None, Some(1000), Some(443));
    let mut tracer = net.client.run(|| {
        kernel::apply(&table(), &Default::default()).unwrap();
        Tracer::start(filter).unwrap()
    });
    connect(&net, TRACED, 443, 0).expect("root: allowed, not traced");
    connect(&net, OTHER, 80, 1000).expect_err("port 80: blocked, not traced");
    connect(&net, OTHER, 443, 1000).expect("uid 1000 to 443: allowed and traced");
    let packets = collect(&mut tracer, Duration::from_secs(5), |p| {
        p.iter().any(|p| is_syn_to(p, OTHER, 443))
    });
    let rules = tracer.rules().clone();
    assert!(!packets.is_empty());
    for p in &packets {
        let k = p.packet.as_ref().unwrap();
        assert_eq!(
            (k.dst, k.dport),
            (IpAddr::V4(OTHER), Some(443)),
            "{packets:#?}"
        );
    }
    let syn = packets.iter().find(|p| is_syn_to(p, OTHER, 443)).unwrap();
    let e = trace::explain(syn, &rules);
    assert_eq!(
        (e.outcome, e.rule.as_deref()),
        (Some(Outcome::Accept), Some("web"))
    );
    // The second kernel rule of `web` decided: the group still reads as one policy rule.
    assert_eq!(e.chains[0].rules.last().unwrap().matched.len(), 1);
    tracer.stop().unwrap();
    assert!(!has_chain(&net.client, TRACE_CHAIN));
}
