//! `kernel::trace` against the real kernel: the tracing rule is byte for byte what nft sends, a
//! tracer needs a table, replaces a stale chain but not a live one, follows a re-apply, and the
//! tracing chain is gone afterwards. (Real connections traced and explained rule by rule are
//! `observe`'s `tests/trace.rs`.) Needs root; every test makes its own network namespaces (see
//! `kernel::testutil`).

use std::net::Ipv4Addr;

use kernel::netns::NetNs;
use kernel::testutil::{self, batch_messages, need_root};
use kernel::trace::{self, Error, Refresh, TRACE_CHAIN, TraceFilter, Tracer};
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

/// Destinations the table's `web` rules allow.
const TRACED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn table() -> Table {
    testutil::policy_shaped_table(TRACED, OTHER)
}

fn has_chain(ns: &NetNs, chain: &str) -> bool {
    testutil::nft_raw(ns, &["list", "chain", "inet", "leash", chain], None).0
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
