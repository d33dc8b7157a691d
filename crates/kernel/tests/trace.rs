//! `kernel::trace` against the real kernel: the tracing rule is byte for byte what nft sends,
//! real connections in scratch namespaces are traced to the rule that decided them, only packets
//! that match the filter are, and the tracing chain is gone afterwards. Needs root; every test
//! makes its own network namespaces (see `kernel::testutil`).

mod common;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::*;
use kernel::netns::NetNs;
use kernel::rtnl::{self, Rtnl};
use kernel::testutil::{self, batch_messages, need_root};
use kernel::trace::{
    self, Assembler, ChainEnd, Error, Outcome, PacketTrace, Refresh, TRACE_CHAIN, TraceFilter,
    Tracer,
};
use ruleset::*;

const NEWCHAIN: u16 = 3;
const DELCHAIN: u16 = 5;
const NEWRULE: u16 = 6;

/// Low byte of an nf_tables message type.
fn nft_msg(ty: u16) -> Option<u16> {
    (ty >> 8 == 10).then_some(ty & 0xff)
}

fn pick(msgs: &[(u16, Vec<u8>)], kind: u16) -> Vec<Vec<u8>> {
    msgs.iter()
        .filter(|(t, _)| nft_msg(*t) == Some(kind))
        .map(|(_, b)| b.clone())
        .collect()
}

fn assert_same(kind: u16, theirs: &[(u16, Vec<u8>)], ours: &[(u16, Vec<u8>)], what: &str) {
    let (t, o) = (pick(theirs, kind), pick(ours, kind));
    assert_eq!(
        o.len(),
        t.len(),
        "{what}: number of messages of kind {kind}"
    );
    for (o, t) in o.iter().zip(&t) {
        assert!(
            o == t,
            "{what}: message of kind {kind} differs from nft's\n--- nft ---\n{}--- ours ---\n{}",
            testutil::attr_tree(t),
            testutil::attr_tree(o)
        );
    }
}

/// The nft text of the tracing chain with `filter`'s rule, commented for `pid`.
fn trace_chain_text(filter: &TraceFilter, pid: u32) -> String {
    format!(
        "table inet leash {{\n  chain trace {{\n    type filter hook output priority {};\n    policy accept;\n    {} comment \"{}\"\n  }}\n}}\n",
        trace::TRACE_PRIORITY,
        filter.nft_rule(),
        trace::trace_comment(pid)
    )
}

fn filters() -> Vec<TraceFilter> {
    let net = |s: &str| Some(s.parse().unwrap());
    vec![
        TraceFilter::default(),
        TraceFilter::new(net("203.0.113.9/32"), Some(1000), Some(443)),
        TraceFilter::new(net("192.0.2.0/24"), None, None),
        TraceFilter::new(net("192.0.2.0/20"), None, Some(53)),
        TraceFilter::new(net("0.0.0.0/0"), None, None),
        TraceFilter::new(net("2001:db8::/32"), Some(0), Some(53)),
        TraceFilter::new(net("2001:db8::/127"), None, None),
        TraceFilter::new(net("2001:db8::1/128"), None, None),
        TraceFilter::new(None, Some(u32::MAX - 1), None),
        TraceFilter::new(None, None, Some(1)),
    ]
}

#[test]
fn trace_rule_encodes_the_bytes_nft_sends() {
    if !need_root("trace_rule_encodes_the_bytes_nft_sends") {
        return;
    }
    for filter in filters() {
        let text = trace_chain_text(&filter, 4242);
        let ns = NetNs::new().unwrap();
        let theirs = testutil::nft_messages(&ns, &text);
        let ours = batch_messages(&trace::encode_install_batch(&filter, 4242, false).unwrap());
        assert_same(NEWCHAIN, &theirs, &ours, &text);
        assert_same(NEWRULE, &theirs, &ours, &text);
        // And the DELCHAIN of the removal is nft's `delete chain`.
        let theirs = testutil::nft_messages(&ns, "delete chain inet leash trace\n");
        let ours = batch_messages(&trace::encode_remove_batch().unwrap());
        assert_same(DELCHAIN, &theirs, &ours, "delete chain inet leash trace");
        assert!(
            testutil::list_leash(&ns)
                .unwrap()
                .lines()
                .all(|l| !l.contains("chain trace")),
            "nft deleted the chain"
        );
    }
}

/// The chain a tracer adds lists exactly like nft's text of it.
#[test]
fn trace_chain_lists_like_nft() {
    if !need_root("trace_chain_lists_like_nft") {
        return;
    }
    let pid = std::process::id();
    for filter in filters() {
        let by_nft = NetNs::new().unwrap();
        testutil::nft_load(&by_nft, &trace_chain_text(&filter, pid));
        let ours = NetNs::new().unwrap();
        let tracer = ours.run(|| {
            kernel::apply(&table(), &Default::default()).unwrap();
            Tracer::start(filter).unwrap()
        });
        let list = |ns: &NetNs| {
            let (ok, out, err) =
                testutil::nft_raw(ns, &["list", "chain", "inet", "leash", "trace"], None);
            assert!(ok, "{err}");
            out
        };
        assert_eq!(list(&ours), list(&by_nft), "{}", filter.nft_rule());
        assert!(tracer.stop().unwrap());
    }
    testutil::root_has_no_leash_table();
}

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

/// A table shaped like a compiled policy: loopback, established, a rule that does not match, an
/// allow rule of two kernel rules, and the default reject.
fn table() -> Table {
    use Stmt::*;
    let tcp = |p| Dport {
        l4: L4::Tcp,
        value: Value::Eq(p),
    };
    Table {
        name: TABLE_NAME.into(),
        comment: Some("trace test".into()),
        sets: vec![],
        chains: vec![chain(
            ChainPolicy::Drop,
            vec![
                rule(vec![OifLoopback, Counter, Accept], Some("@loopback")),
                rule(
                    vec![CtStateEstablishedRelated, Counter, Accept],
                    Some("@established"),
                ),
                rule(
                    vec![
                        Daddr4(Value::Eq(v4("198.51.100.53"))),
                        Dport {
                            l4: L4::Udp,
                            value: Value::Eq(53),
                        },
                        Counter,
                        Accept,
                    ],
                    Some("dns"),
                ),
                rule(
                    vec![Daddr4(Value::Eq(TRACED)), tcp(443), Counter, Accept],
                    Some("web"),
                ),
                rule(
                    vec![Daddr4(Value::Eq(OTHER)), tcp(443), Counter, Accept],
                    Some("web"),
                ),
                rule(
                    vec![L4proto(L4::Tcp), Counter, RejectTcpReset],
                    Some("@default"),
                ),
                rule(vec![Counter, RejectAdminProhibited], Some("@default")),
            ],
        )],
    }
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

#[test]
fn without_a_table_tracing_fails_and_changes_nothing() {
    if !need_root("without_a_table_tracing_fails_and_changes_nothing") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let err = ns
        .run(|| Tracer::start(TraceFilter::default()))
        .unwrap_err();
    assert!(matches!(err, Error::NoTable), "{err}");
    assert!(
        err.to_string().contains("no leash table is active"),
        "{err}"
    );
    let (ok, out, _) = testutil::nft_raw(&ns, &["list", "ruleset"], None);
    assert!(ok && out.trim().is_empty(), "nothing was created: {out}");
}

#[test]
fn a_stale_chain_is_replaced_a_live_one_is_not_and_drop_removes_it() {
    if !need_root("a_stale_chain_is_replaced_a_live_one_is_not_and_drop_removes_it") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| kernel::apply(&table(), &Default::default()).unwrap());
    // Left by a process that is gone (no pid is this large).
    let stale = TraceFilter::new(None, Some(7), None);
    testutil::nft_load(&ns, &trace_chain_text(&stale, 999_999_999));
    let filter = TraceFilter::new(Some("192.0.2.0/24".parse().unwrap()), None, None);
    let first = ns.run(|| Tracer::start(filter).unwrap());
    let (_, chain, _) = testutil::nft_raw(&ns, &["list", "chain", "inet", "leash", "trace"], None);
    assert!(chain.contains(&filter.nft_rule()), "{chain}");
    assert!(
        !chain.contains("skuid 7"),
        "the stale rule is gone:\n{chain}"
    );
    assert_eq!(chain.matches("nftrace").count(), 1, "{chain}");

    // This process runs: a second tracer must not take the chain over.
    let err = ns
        .run(|| Tracer::start(TraceFilter::default()))
        .unwrap_err();
    assert!(
        matches!(err, Error::Busy { pid } if pid == std::process::id()),
        "{err}"
    );
    assert_eq!(first.rules().final_chain(), Some("output"));
    drop(first);
    assert!(
        !has_chain(&ns, TRACE_CHAIN),
        "dropping the tracer removed the chain"
    );
    let second = ns.run(|| Tracer::start(TraceFilter::default()).unwrap());
    assert!(second.stop().unwrap());
}

#[test]
fn a_reapplied_table_gets_the_chain_back_and_a_removed_one_ends_tracing() {
    if !need_root("a_reapplied_table_gets_the_chain_back_and_a_removed_one_ends_tracing") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| kernel::apply(&table(), &Default::default()).unwrap());
    let mut tracer = ns.run(|| Tracer::start(TraceFilter::default()).unwrap());
    assert_eq!(tracer.refresh().unwrap(), Refresh::Unchanged);
    let before = tracer.rules().handle;
    ns.run(|| kernel::apply(&table(), &Default::default()).unwrap());
    assert!(
        !has_chain(&ns, TRACE_CHAIN),
        "apply replaced the whole table"
    );
    // Not at once: the apply may still be reading its table back.
    assert_eq!(tracer.refresh().unwrap(), Refresh::Replaced);
    assert!(!has_chain(&ns, TRACE_CHAIN));
    assert_eq!(tracer.refresh().unwrap(), Refresh::Reinstalled);
    assert!(has_chain(&ns, TRACE_CHAIN));
    assert_ne!(tracer.rules().handle, before);
    assert!(ns.run(kernel::disable).unwrap());
    assert!(matches!(tracer.refresh(), Err(Error::TableGone)));
    assert!(!tracer.stop().unwrap(), "nothing left to remove");
}
