//! apply and status while something else commits in the same namespace (a DNS forwarder inserting
//! answers), and what verification compares. Needs root; every test works in its own network
//! namespace (see `kernel::testutil`).
//!
//! nf_tables flags a dump interrupted (NLM_F_DUMP_INTR) when any commit lands while it runs; the
//! readers must start such a dump again, and an apply whose batch the kernel committed must never
//! be reported as one that changed nothing.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kernel::netns::NetNs;
use kernel::testutil::{need_root, nft_raw};
use kernel::{ApplyOptions, Error, SetWriter, TimedElement};
use ruleset::*;

/// A table whose dump spans many replies (so a commit can land in the middle of one): `rules`
/// rules with comments, and the timeout set a forwarder fills.
fn busy_table(rules: usize) -> Table {
    let mut rs: Vec<Rule> = (0..rules)
        .map(|i| {
            rule(
                vec![
                    Stmt::Daddr4(Value::Eq(Ipv4Addr::from(0xc612_0000 + i as u32))),
                    Stmt::Counter,
                    Stmt::Accept,
                ],
                Some(&format!("rule-{i}")),
            )
        })
        .collect();
    rs.push(rule(
        vec![Stmt::Daddr4(Value::InSet("dom4".into())), Stmt::Counter, Stmt::Accept],
        Some("dom4"),
    ));
    Table {
        name: TABLE_NAME.into(),
        comment: Some("policy sha256:busy".into()),
        sets: vec![timed_set("dom4", SetElements::TimedV4(vec![]))],
        chains: vec![chain(ChainPolicy::Accept, rs)],
    }
}

#[test]
fn applies_and_status_succeed_while_a_forwarder_commits_inserts() {
    if !need_root("applies_and_status_succeed_while_a_forwarder_commits_inserts") {
        return;
    }
    let ns = Arc::new(NetNs::new().unwrap());
    let table = busy_table(300);
    ns.run(|| kernel::apply(&table, &ApplyOptions::default())).unwrap();

    // The "forwarder": one insert batch every millisecond (a thousand answers a second, a busy
    // resolver), for at most 60 s (it stops as soon as the applies are done).
    let stop = Arc::new(AtomicBool::new(false));
    let inserts = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (ns, stop, inserts) = (ns.clone(), stop.clone(), inserts.clone());
        std::thread::spawn(move || {
            let mut w = ns.run(SetWriter::open).unwrap();
            let t0 = Instant::now();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                i = i.wrapping_add(1);
                let addr = IpAddr::V4(Ipv4Addr::from(0xc613_0000 + (i % 50_000)));
                // A re-applied table may be between its delete and re-create for this writer:
                // errors are the writer's business, only successes are counted.
                if w.add_timed(TABLE_NAME, &[TimedElement { set: "dom4", addr, timeout_ms: 60_000, name: None }]).is_ok() {
                    inserts.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // Let the writer get going.
    let t0 = Instant::now();
    while inserts.load(Ordering::Relaxed) < 100 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut failures = Vec::new();
    for round in 0..15 {
        match ns.run(|| kernel::apply(&table, &ApplyOptions::default())) {
            Ok(_) => {}
            Err(e) => failures.push(format!("apply {round}: {e} (changed nothing: {})", e.changed_nothing())),
        }
        match ns.run(kernel::status) {
            Ok(Some(s)) => assert_eq!(s.chains[0].rules.len(), 301),
            Ok(None) => failures.push(format!("status {round}: no table")),
            Err(e) => failures.push(format!("status {round}: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let n = inserts.load(Ordering::Relaxed);
    assert!(n > 100, "the writer committed only {n} inserts: no load");
    assert!(failures.is_empty(), "{} of 30 operations failed under {n} concurrent inserts:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn verification_compares_the_rules_expressions_not_only_comments_and_counts() {
    if !need_root("verification_compares_the_rules_expressions_not_only_comments_and_counts") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let table = Table {
        name: TABLE_NAME.into(),
        comment: None,
        sets: vec![],
        chains: vec![chain(
            ChainPolicy::Drop,
            vec![rule(
                vec![Stmt::Daddr4(Value::Eq(v4("192.0.2.1"))), Stmt::Counter, Stmt::Accept],
                Some("web"),
            )],
        )],
    };
    ns.run(|| kernel::apply(&table, &ApplyOptions::default())).unwrap();
    assert_eq!(ns.run(|| kernel::verify(&table)).unwrap(), 0, "what was applied verifies");

    // Someone swaps the rule's destination, keeping its comment: same chains, comments and counts.
    let (ok, listing, err) = nft_raw(&ns, &["-a", "list", "chain", "inet", "leash", "output"], None);
    assert!(ok, "{err}");
    let handle = listing
        .lines()
        .find(|l| l.contains("comment \"web\""))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| panic!("no rule web in {listing}"));
    let (ok, _, err) = nft_raw(
        &ns,
        &["replace", "rule", "inet", "leash", "output", "handle", &handle, "ip", "daddr", "192.0.2.99", "counter", "accept", "comment", "\"web\""],
        None,
    );
    assert!(ok, "{err}");
    let e = ns.run(|| kernel::verify(&table)).unwrap_err();
    assert!(matches!(e, Error::Verify(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("chain output rule 1 (web)") && msg.contains("cmp"), "{msg}");
}
