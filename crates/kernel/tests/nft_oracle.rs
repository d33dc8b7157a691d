//! `nft` as the oracle: what `kernel::apply` puts into a namespace must list exactly like what
//! `nft -f` makes of the same text in another namespace, and each message must carry the bytes
//! nft sends. Needs root (each test makes its own network namespaces; see `kernel::testutil`).
//! nft runs with `TZ=UTC` throughout: it reads and prints `meta hour` and `meta time` in its local
//! time zone, and the model and the rendered text are UTC.

mod common;

use common::*;
use kernel::netns::NetNs;
use kernel::testutil::{self, batch_messages, need_root};
use ruleset::*;

/// Applies `table` and loads `text`, in two fresh namespaces, and compares the listings (with
/// the `expires` countdown of timed elements taken out).
fn assert_same_listing(table: &Table, text: &str) {
    let (want, got) = listings_utc(table, text);
    assert_eq!(
        normalize_listing(&got),
        normalize_listing(&want),
        "listing after kernel::apply differs from nft -f of:\n{text}"
    );
}

/// Low byte of an nf_tables message type.
fn nft_msg(ty: u16) -> Option<u16> {
    (ty >> 8 == 10).then_some(ty & 0xff)
}

const NEWTABLE: u16 = 0;
const NEWCHAIN: u16 = 3;
const NEWRULE: u16 = 6;
const NEWSET: u16 = 9;
const NEWSETELEM: u16 = 12;

/// Compares our batch with the messages nft sends for `text`, message kind by message kind:
/// sets, elements, chains and rules must be byte-identical (after the nlmsghdr, whose flags and
/// sequence numbers differ). The table message differs on purpose (we send NEWTABLE, DELTABLE,
/// NEWTABLE); only its last NEWTABLE is compared.
fn assert_same_bytes(table: &Table, text: &str) {
    let ns = NetNs::new().unwrap();
    let theirs = nft_messages_utc(&ns, text);
    let ours = batch_messages(&kernel::encode_apply_batch(table, &Default::default()).unwrap());
    for kind in [NEWTABLE, NEWSET, NEWSETELEM, NEWCHAIN, NEWRULE] {
        let pick = |v: &[(u16, Vec<u8>)]| -> Vec<Vec<u8>> {
            v.iter()
                .filter(|(t, _)| nft_msg(*t) == Some(kind))
                .map(|(_, b)| b.clone())
                .collect()
        };
        let (mut t, mut o) = (pick(&theirs), pick(&ours));
        if kind == NEWTABLE {
            // Only the NEWTABLE that creates the table with its comment counts (a script may
            // also create and delete it first, as ours and the renderer's do).
            o.drain(..o.len().saturating_sub(1));
            t.drain(..t.len().saturating_sub(1));
        }
        assert_eq!(o.len(), t.len(), "number of messages of kind {kind}");
        for (i, (o, t)) in o.iter().zip(&t).enumerate() {
            assert!(
                o == t,
                "message {i} of kind {kind} differs from nft's\n--- nft ---\n{}--- ours ---\n{}",
                testutil::attr_tree(t),
                testutil::attr_tree(o)
            );
        }
    }
}

/// A cgroup directory for the `socket cgroupv2` rule of [`every_new_stmt`]; the tests need one
/// (this machine mounts cgroup v2), so its absence fails them rather than skipping.
fn test_cgroup() -> TestCgroup {
    TestCgroup::new().expect("a cgroup v2 directory under /sys/fs/cgroup (is cgroup2 mounted?)")
}

#[test]
fn every_statement_lists_like_nft() {
    if !need_root("every_statement_lists_like_nft") {
        return;
    }
    let (table, text) = every_stmt();
    assert_same_listing(&table, &text);
    let cg = test_cgroup();
    let (table, text) = every_new_stmt(&cg);
    assert_same_listing(&table, &text);
    testutil::root_has_no_leash_table();
}

#[test]
fn every_statement_encodes_the_bytes_nft_sends() {
    if !need_root("every_statement_encodes_the_bytes_nft_sends") {
        return;
    }
    let (table, text) = every_stmt();
    assert_same_bytes(&table, &text);
    let cg = test_cgroup();
    let (table, text) = every_new_stmt(&cg);
    assert_same_bytes(&table, &text);
}

/// What nft and the kernel refuse, leash's encoder refuses first, with a message that says why;
/// and what it lets through, the kernel takes. Each refusal is checked against nft itself.
#[test]
fn invalid_limits_and_meters_are_refused_like_nft() {
    if !need_root("invalid_limits_and_meters_are_refused_like_nft") {
        return;
    }
    use Stmt::*;
    let count = |set: &str| Meter {
        set: set.into(),
        key: MeterKey::Daddr4,
        limit: MeterLimit::Count(2),
    };
    let table = |sets: Vec<Set>, stmts: Vec<Stmt>| Table {
        name: TABLE_NAME.into(),
        comment: None,
        sets,
        chains: vec![chain(ChainPolicy::Accept, vec![rule(stmts, None)])],
    };
    let timed = dynamic_set("c", KeyType::Ipv4Addr, 10, Some(1000));
    let cases: Vec<(Table, &str, &str)> = vec![
        (
            // A connection counter in a set with a timeout: EOPNOTSUPP from the kernel.
            table(vec![timed.clone()], vec![count("c"), Accept]),
            "cannot have a timeout",
            "table inet leash { set c { type ipv4_addr; size 10; flags dynamic,timeout; timeout 1s; }\n chain output { type filter hook output priority filter;\n add @c { ip daddr ct count 2 } accept\n } }\n",
        ),
        (
            table(vec![], vec![Limit(rate(0, RateUnit::Second, 5)), Accept]),
            "at least 1",
            "table inet leash { chain output { type filter hook output priority filter;\n limit rate 0/second accept\n } }\n",
        ),
        (
            table(vec![], vec![Limit(rate(1, RateUnit::Second, 0)), Accept]),
            "at least 1",
            "table inet leash { chain output { type filter hook output priority filter;\n limit rate 1/second burst 0 packets accept\n } }\n",
        ),
        (
            // 86,400 s per token times 2^32 tokens overflows the kernel's u64 of nanoseconds.
            table(vec![], vec![Limit(rate(1, RateUnit::Day, u32::MAX)), Accept]),
            "overflows",
            "table inet leash { chain output { type filter hook output priority filter;\n limit rate 1/day burst 4294967295 packets accept\n } }\n",
        ),
        (
            table(
                vec![Set {
                    interval: true,
                    ..dynamic_set("c", KeyType::Ipv4Addr, 10, None)
                }],
                vec![count("c"), Accept],
            ),
            "flags interval",
            "table inet leash { set c { type ipv4_addr; size 10; flags dynamic,interval; }\n chain output { type filter hook output priority filter;\n add @c { ip daddr ct count 2 } accept\n } }\n",
        ),
    ];
    for (t, want, text) in cases {
        let e = kernel::encode_apply_batch(&t, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
        let ns = NetNs::new().unwrap();
        let (ok, _, err) = kernel::testutil::nft_raw(&ns, &["-f", "-"], Some(text));
        assert!(!ok, "nft accepted what leash refuses ({want}):\n{text}");
        eprintln!("nft refuses it too: {}", err.lines().next().unwrap_or(""));
    }
    // The same counter in a set without a timeout goes in.
    let ok = table(
        vec![dynamic_set("c", KeyType::Ipv4Addr, 10, None)],
        vec![count("c"), Accept],
    );
    let ns = NetNs::new().unwrap();
    ns.run(|| kernel::apply(&ok, &Default::default())).unwrap();
    // Refusals that only leash makes (nft would quietly change the table, so it would no longer
    // be what the model says).
    let e = kernel::encode_apply_batch(
        &table(
            vec![set("c", KeyType::Ipv4Addr, SetElements::V4(vec![]))],
            vec![count("c")],
        ),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs a dynamic set"), "{e}");
    let e = kernel::encode_apply_batch(
        &table(
            vec![Set {
                timeout: true,
                ..dynamic_set("c", KeyType::Ipv4Addr, 10, None)
            }],
            vec![],
        ),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs Dynamic::timeout_ms"), "{e}");
    let e = kernel::encode_apply_batch(
        &table(vec![], vec![MetaTimeFrom(-1_000_000_000)]),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("whole second at or after 1970"), "{e}");
    let e = kernel::encode_apply_batch(
        &table(vec![], vec![MetaDay { first: 1, last: 7 }]),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("weekdays are 0 (Sunday) to 6"), "{e}");
    testutil::root_has_no_leash_table();
}

/// The lead's renderer (`ruleset::render::nft_text`) and this encoder agree: nft makes of the
/// rendered text exactly the bytes `apply` sends, and the same listing.
#[test]
fn rendered_text_encodes_like_apply() {
    if !need_root("rendered_text_encodes_like_apply") {
        return;
    }
    let cg = test_cgroup();
    for table in [
        every_stmt().0,
        every_new_stmt(&cg).0,
        dns_redirect().0,
        protocol_deps().0,
        interval_edges().0,
        big_v4(100).0,
    ] {
        let text = ruleset::render::nft_text(&table);
        assert_same_bytes(&table, &text);
        assert_same_listing(&table, &text);
    }
}

/// The nat chain with `redirect`, `meta mark`, `oif !=`, and timeout sets with timed elements.
#[test]
fn dns_redirect_and_timeout_sets_like_nft() {
    if !need_root("dns_redirect_and_timeout_sets_like_nft") {
        return;
    }
    let (table, text) = dns_redirect();
    assert_same_bytes(&table, &text);
    assert_same_listing(&table, &text);
    testutil::root_has_no_leash_table();
}

/// The forward hook, `iifname`/`oifname` (exact, wildcard, 15 bytes), `ip saddr`/`ip6 saddr`
/// and `return`: the same bytes and listing as nft.
#[test]
fn forward_chain_like_nft() {
    if !need_root("forward_chain_like_nft") {
        return;
    }
    let (table, text) = forward();
    assert_same_bytes(&table, &text);
    assert_same_listing(&table, &text);
    let rendered = ruleset::render::nft_text(&table);
    assert_same_bytes(&table, &rendered);
    assert_same_listing(&table, &rendered);
    testutil::root_has_no_leash_table();
}

/// The JSON rendering loads with `nft -j -f` into the same table as the text rendering. (nft's JSON
/// has whole-second timeouts, so timeouts are rounded up to seconds for this comparison; nft 1.0.6
/// ignores a table's `comment` in JSON, so the comparison leaves the table comment out; and its
/// JSON parser knows no `socket cgroupv2`, so rules with one are left out.)
#[test]
fn rendered_json_loads_like_rendered_text() {
    if !need_root("rendered_json_loads_like_rendered_text") {
        return;
    }
    let cg = test_cgroup();
    for mut table in [
        every_stmt().0,
        every_new_stmt(&cg).0,
        dns_redirect().0,
        protocol_deps().0,
        interval_edges().0,
        forward().0,
    ] {
        for chain in &mut table.chains {
            chain.rules.retain(|r| {
                !r.stmts
                    .iter()
                    .any(|s| matches!(s, Stmt::SocketCgroup { .. }))
            });
        }
        for set in &mut table.sets {
            if let Some(d) = &mut set.dynamic {
                d.timeout_ms = d.timeout_ms.map(|ms| ms.div_ceil(1000) * 1000);
            }
            match &mut set.elements {
                SetElements::TimedV4(v) => v
                    .iter_mut()
                    .for_each(|e| e.timeout_ms = e.timeout_ms.div_ceil(1000) * 1000),
                SetElements::TimedV6(v) => v
                    .iter_mut()
                    .for_each(|e| e.timeout_ms = e.timeout_ms.div_ceil(1000) * 1000),
                _ => {}
            }
        }
        let text = ruleset::render::nft_text(&table);
        let json = ruleset::render::nft_json(&table).to_string();
        let from_text = NetNs::new().unwrap();
        kernel::testutil::nft_load(&from_text, &text);
        let from_json = NetNs::new().unwrap();
        let (ok, _, err) = kernel::testutil::nft_raw(&from_json, &["-j", "-f", "-"], Some(&json));
        assert!(ok, "nft -j -f failed: {err}\n--- json ---\n{json}");
        let without_table_comment = |l: String| -> String {
            normalize_listing(&l)
                .lines()
                .filter(|l| !l.starts_with("\tcomment "))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            without_table_comment(kernel::testutil::list_leash(&from_json).unwrap()),
            without_table_comment(kernel::testutil::list_leash(&from_text).unwrap()),
            "nft -j -f of the JSON lists differently from nft -f of the text:\n{text}"
        );
    }
}

/// nft's protocol-dependency elimination: a dependency already established earlier in the rule is
/// not repeated, an explicit statement always is.
#[test]
fn protocol_dependencies_like_nft() {
    if !need_root("protocol_dependencies_like_nft") {
        return;
    }
    let (table, text) = protocol_deps();
    assert_same_bytes(&table, &text);
    assert_same_listing(&table, &text);
}

/// Interval sets at the edges: ranges starting at 0 (no leading zero element), ending at the
/// maximum (no end element, nft's interval-open flag), the full range, single values at both ends.
#[test]
fn interval_edges_like_nft() {
    if !need_root("interval_edges_like_nft") {
        return;
    }
    let (table, text) = interval_edges();
    assert_same_bytes(&table, &text);
    assert_same_listing(&table, &text);
}

#[test]
fn table_comment_and_empty_table_like_nft() {
    if !need_root("table_comment_and_empty_table_like_nft") {
        return;
    }
    let table = Table {
        name: TABLE_NAME.into(),
        comment: Some("leash policy sha256:ff00 (127 bytes max)".into()),
        sets: vec![],
        chains: vec![],
    };
    let text = "table inet leash { comment \"leash policy sha256:ff00 (127 bytes max)\"; }\n";
    assert_same_bytes(&table, text);
    assert_same_listing(&table, text);
    let bare = Table {
        comment: None,
        ..table
    };
    assert_same_listing(&bare, "table inet leash { }\n");
}

/// 100,000 /30 ranges: same listing as nft; prints the time of both for the report.
#[test]
fn large_v4_interval_set_lists_like_nft() {
    if !need_root("large_v4_interval_set_lists_like_nft") {
        return;
    }
    let (table, text) = big_v4(100_000);
    let oracle = NetNs::new().unwrap();
    let t = std::time::Instant::now();
    testutil::nft_load(&oracle, &text);
    let nft_time = t.elapsed();
    let ours = NetNs::new().unwrap();
    let t = std::time::Instant::now();
    let report = ours
        .run(|| kernel::apply(&table, &Default::default()))
        .unwrap();
    let our_time = t.elapsed();
    eprintln!(
        "100k ranges: nft -f {nft_time:?}; kernel::apply {our_time:?} (send+ack {:?}, verify {:?}, {} messages, {} bytes)",
        report.send_and_ack, report.verify, report.messages, report.bytes
    );
    assert_eq!(report.elements, 100_000);
    assert_eq!(
        testutil::list_leash(&ours).unwrap(),
        testutil::list_leash(&oracle).unwrap()
    );
}
