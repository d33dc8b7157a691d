//! `nft` as the oracle: what `kernel::apply` puts into a namespace must list exactly like what
//! `nft -f` makes of the same text in another namespace, and each message must carry the bytes
//! nft sends. Needs root (each test makes its own network namespaces; see `kernel::testutil`).

mod common;

use common::*;
use kernel::netns::NetNs;
use kernel::testutil::{self, batch_messages, need_root};
use ruleset::*;

/// Applies `table` and loads `text`, in two fresh namespaces, and compares the listings.
fn assert_same_listing(table: &Table, text: &str) {
    let (want, got) = testutil::listings(table, text);
    assert_eq!(got, want, "listing after kernel::apply differs from nft -f of:\n{text}");
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
            v.iter().filter(|(t, _)| nft_msg(*t) == Some(kind)).map(|(_, b)| b.clone()).collect()
        };
        let (t, mut o) = (pick(&theirs), pick(&ours));
        if kind == NEWTABLE {
            o.drain(..o.len().saturating_sub(1));
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

/// nft's protocol-dependency elimination: a dependency already established earlier in the rule is
/// not repeated, an explicit statement always is.
#[test]
fn protocol_dependencies_like_nft() {
    if !need_root("protocol_dependencies_like_nft") {
        return;
    }
    use Stmt::*;
    let tcp = |p| Dport { l4: L4::Tcp, value: Value::Eq(p) };
    let table = Table {
        name: TABLE_NAME.into(),
        comment: None,
        sets: vec![],
        chains: vec![chain(
            ChainPolicy::Accept,
            vec![
                rule(vec![RejectTcpReset], None),
                rule(vec![Daddr6(Value::Eq(v6("2001:db8::1"))), Icmpv6Type(Value::Eq(1)), Accept], None),
                rule(vec![L4proto(L4::Icmpv6), Icmpv6Type(Value::Eq(1)), Accept], None),
                rule(vec![Nfproto(Family::Ipv6), Icmpv6Type(Value::Eq(1)), Accept], None),
                rule(vec![tcp(1), tcp(2), Accept], None),
                rule(vec![Daddr4(Value::Eq(v4("192.0.2.1"))), Daddr4(Value::Eq(v4("192.0.2.2"))), Accept], None),
                rule(vec![L4proto(L4::Tcp), L4proto(L4::Tcp), Accept], None),
                rule(vec![Nfproto(Family::Ipv4), tcp(22), RejectTcpReset], None),
                rule(vec![tcp(22), L4proto(L4::Tcp), Accept], None),
                rule(vec![Dport { l4: L4::Udp, value: Value::Eq(53) }, Nfproto(Family::Ipv6), Accept], None),
            ],
        )],
    };
    let text = r#"table inet leash {
  chain output {
    type filter hook output priority filter; policy accept;
    reject with tcp reset
    ip6 daddr 2001:db8::1 icmpv6 type 1 accept
    meta l4proto ipv6-icmp icmpv6 type 1 accept
    meta nfproto ipv6 icmpv6 type 1 accept
    tcp dport 1 tcp dport 2 accept
    ip daddr 192.0.2.1 ip daddr 192.0.2.2 accept
    meta l4proto tcp meta l4proto tcp accept
    meta nfproto ipv4 tcp dport 22 reject with tcp reset
    tcp dport 22 meta l4proto tcp accept
    udp dport 53 meta nfproto ipv6 accept
  }
}
"#;
    assert_same_bytes(&table, text);
    assert_same_listing(&table, text);
}

/// Interval sets at the edges: ranges starting at 0 (no leading zero element), ending at the
/// maximum (no end element, nft's interval-open flag), the full range, single values at both ends.
#[test]
fn interval_edges_like_nft() {
    if !need_root("interval_edges_like_nft") {
        return;
    }
    let table = Table {
        name: TABLE_NAME.into(),
        comment: Some("edges".into()),
        sets: vec![
            set("a", KeyType::Ipv4Addr, SetElements::V4(vec![(v4("0.0.0.0"), v4("0.255.255.255")), (v4("10.0.0.1"), v4("10.0.0.1"))])),
            set("b", KeyType::Ipv4Addr, SetElements::V4(vec![(v4("255.255.255.255"), v4("255.255.255.255"))])),
            set("c", KeyType::Ipv4Addr, SetElements::V4(vec![(v4("0.0.0.0"), v4("255.255.255.255"))])),
            set("d", KeyType::InetService, SetElements::Ports(vec![(0, 0), (65535, 65535)])),
            set("e", KeyType::Ipv4Addr, SetElements::V4(vec![])),
            set("f", KeyType::Uid, SetElements::Ids(vec![])),
            set("g", KeyType::Ipv6Addr, SetElements::V6(vec![(v6("::"), v6("::")), (v6("2001:db8::1"), v6("2001:db8::5"))])),
            set("h", KeyType::Ipv6Addr, SetElements::V6(vec![(v6("::"), v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))])),
            set("i", KeyType::InetService, SetElements::Ports(vec![(1, 65535)])),
            set("j", KeyType::Icmpv6Type, SetElements::Ids(vec![0, 255])),
            set("k", KeyType::Gid, SetElements::Ids(vec![0, 4294967295])),
        ],
        chains: vec![],
    };
    let text = r#"table inet leash {
  comment "edges"
  set a { type ipv4_addr; flags interval; elements = { 0.0.0.0/8, 10.0.0.1 } }
  set b { type ipv4_addr; flags interval; elements = { 255.255.255.255 } }
  set c { type ipv4_addr; flags interval; elements = { 0.0.0.0/0 } }
  set d { type inet_service; flags interval; elements = { 0, 65535 } }
  set e { type ipv4_addr; flags interval; }
  set f { type uid; }
  set g { type ipv6_addr; flags interval; elements = { ::, 2001:db8::1-2001:db8::5 } }
  set h { type ipv6_addr; flags interval; elements = { ::/0 } }
  set i { type inet_service; flags interval; elements = { 1-65535 } }
  set j { type icmpv6_type; elements = { 0, 255 } }
  set k { type gid; elements = { 0, 4294967295 } }
}
"#;
    assert_same_bytes(&table, text);
    assert_same_listing(&table, text);
}

#[test]
fn table_comment_and_empty_table_like_nft() {
    if !need_root("table_comment_and_empty_table_like_nft") {
        return;
    }
    let table = Table { name: TABLE_NAME.into(), comment: Some("leash policy sha256:ff00 (127 bytes max)".into()), sets: vec![], chains: vec![] };
    let text = "table inet leash { comment \"leash policy sha256:ff00 (127 bytes max)\"; }\n";
    assert_same_bytes(&table, text);
    assert_same_listing(&table, text);
    let bare = Table { comment: None, ..table };
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
    let report = ours.run(|| kernel::apply(&table, &Default::default())).unwrap();
    let our_time = t.elapsed();
    eprintln!(
        "100k ranges: nft -f {nft_time:?}; kernel::apply {our_time:?} (send+ack {:?}, verify {:?}, {} messages, {} bytes)",
        report.send_and_ack, report.verify, report.messages, report.bytes
    );
    assert_eq!(report.elements, 100_000);
    assert_eq!(testutil::list_leash(&ours).unwrap(), testutil::list_leash(&oracle).unwrap());
}
