//! `nft` as the oracle: what `kernel::apply` puts into a namespace must list exactly like what
//! `nft -f` makes of the same text in another namespace, and each message must carry the bytes
//! nft sends. Needs root (each test makes its own network namespaces; see `kernel::testutil`).

mod common;

use common::*;
use kernel::netns::NetNs;
use kernel::testutil::{self, batch_messages, need_root};
use ruleset::*;

/// Applies `table` and loads `text`, in two fresh namespaces, and compares the listings (with
/// the `expires` countdown of timed elements taken out).
fn assert_same_listing(table: &Table, text: &str) {
    let (want, got) = testutil::listings(table, text);
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
    let theirs = testutil::nft_messages(&ns, text);
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

#[test]
fn every_statement_lists_like_nft() {
    if !need_root("every_statement_lists_like_nft") {
        return;
    }
    let (table, text) = every_stmt();
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
}

/// The lead's renderer (`ruleset::render::nft_text`) and this encoder agree: nft makes of the
/// rendered text exactly the bytes `apply` sends, and the same listing.
#[test]
fn rendered_text_encodes_like_apply() {
    if !need_root("rendered_text_encodes_like_apply") {
        return;
    }
    for table in [
        every_stmt().0,
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

/// The JSON rendering loads with `nft -j -f` into the same table as the text rendering. (nft's JSON
/// has whole-second timeouts, so timed elements are rounded up to seconds for this comparison; and
/// nft 1.0.6 ignores a table's `comment` in JSON, so the comparison leaves the table comment out.)
#[test]
fn rendered_json_loads_like_rendered_text() {
    if !need_root("rendered_json_loads_like_rendered_text") {
        return;
    }
    for mut table in [
        every_stmt().0,
        dns_redirect().0,
        protocol_deps().0,
        interval_edges().0,
    ] {
        for set in &mut table.sets {
            match &mut set.elements {
                SetElements::TimedV4(v) => {
                    v.iter_mut().for_each(|e| e.1 = e.1.div_ceil(1000) * 1000)
                }
                SetElements::TimedV6(v) => {
                    v.iter_mut().for_each(|e| e.1 = e.1.div_ceil(1000) * 1000)
                }
                _ => {}
            }
        }
        let text = ruleset::render::nft_text(&table);
        let json = ruleset::render::nft_json(&table).to_string();
        let from_text = NetNs::new().unwrap();
        testutil::nft_load(&from_text, &text);
        let from_json = NetNs::new().unwrap();
        let (ok, _, err) = testutil::nft_raw(&from_json, &["-j", "-f", "-"], Some(&json));
        assert!(ok, "nft -j -f failed: {err}\n--- json ---\n{json}");
        let without_table_comment = |l: String| -> String {
            normalize_listing(&l)
                .lines()
                .filter(|l| !l.starts_with("\tcomment "))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            without_table_comment(testutil::list_leash(&from_json).unwrap()),
            without_table_comment(testutil::list_leash(&from_text).unwrap()),
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
