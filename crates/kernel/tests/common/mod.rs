//! Tables used by several kernel tests, each with the nft text that means the same.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use ruleset::*;

pub fn chain(policy: ChainPolicy, rules: Vec<Rule>) -> Chain {
    Chain {
        name: "output".into(),
        kind: ChainType::Filter,
        hook: Hook::Output,
        priority: OUTPUT_PRIORITY_FILTER,
        policy,
        rules,
    }
}

pub fn rule(stmts: Vec<Stmt>, comment: Option<&str>) -> Rule {
    Rule {
        stmts,
        comment: comment.map(String::from),
    }
}

pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

pub fn set(name: &str, key: KeyType, elements: SetElements) -> Set {
    let interval = !matches!(elements, SetElements::Ids(_));
    Set {
        name: name.into(),
        key,
        interval,
        timeout: false,
        dynamic: None,
        elements,
    }
}

/// A table with every statement kind and every set kind, and its nft text.
pub fn every_stmt() -> (Table, String) {
    use Stmt::*;
    let table = Table {
        name: TABLE_NAME.into(),
        comment: Some("policy sha256:0123abcd".into()),
        sets: vec![
            set(
                "v4",
                KeyType::Ipv4Addr,
                SetElements::V4(vec![
                    (v4("192.0.2.0"), v4("192.0.2.255")),
                    (v4("198.51.100.7"), v4("198.51.100.7")),
                    (v4("203.0.113.5"), v4("255.255.255.255")),
                ]),
            ),
            set(
                "v6",
                KeyType::Ipv6Addr,
                SetElements::V6(vec![
                    (
                        v6("2001:db8::"),
                        v6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
                    ),
                    (v6("ffff::"), v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
                ]),
            ),
            set(
                "ports",
                KeyType::InetService,
                SetElements::Ports(vec![(53, 53), (80, 443), (60000, 65535)]),
            ),
            set("uids", KeyType::Uid, SetElements::Ids(vec![0, 1000])),
            set("gids", KeyType::Gid, SetElements::Ids(vec![0, 100])),
            set(
                "icmp6",
                KeyType::Icmpv6Type,
                SetElements::Ids(vec![1, 2, 135, 136]),
            ),
        ],
        chains: vec![chain(
            ChainPolicy::Drop,
            vec![
                rule(vec![OifLoopback, Accept], Some("loopback")),
                rule(vec![CtStateEstablishedRelated, Accept], None),
                rule(
                    vec![MarkEq(0x6c6e), OifNotLoopback, Accept],
                    Some("forwarder"),
                ),
                rule(vec![MarkNe(0), MarkEq(u32::MAX), Drop], None),
                rule(
                    vec![
                        Nfproto(Family::Ipv4),
                        Dport {
                            l4: L4::Tcp,
                            value: Value::Eq(53),
                        },
                        Daddr4(Value::Eq(v4("192.0.2.1"))),
                        Counter,
                        Accept,
                    ],
                    Some("dns"),
                ),
                rule(
                    vec![
                        Dport {
                            l4: L4::Udp,
                            value: Value::InSet("ports".into()),
                        },
                        Daddr4(Value::InSet("v4".into())),
                        SkUid(Value::Eq(1000)),
                        Accept,
                    ],
                    Some("web"),
                ),
                rule(
                    vec![
                        Daddr6(Value::InSet("v6".into())),
                        SkUid(Value::InSet("uids".into())),
                        SkGid(Value::InSet("gids".into())),
                        Accept,
                    ],
                    Some("web"),
                ),
                rule(
                    vec![
                        Daddr6(Value::Eq(v6("2001:db8::1"))),
                        SkGid(Value::Eq(100)),
                        Drop,
                    ],
                    None,
                ),
                rule(
                    vec![Icmpv6Type(Value::InSet("icmp6".into())), Accept],
                    Some("icmp"),
                ),
                rule(vec![Icmpv6Type(Value::Eq(135)), Accept], None),
                rule(
                    vec![Nfproto(Family::Ipv6), L4proto(L4::Icmpv6), Accept],
                    None,
                ),
                rule(
                    vec![
                        L4proto(L4::Icmp),
                        Counter,
                        Log {
                            prefix: "leash drop ".into(),
                            group: 5,
                        },
                        Drop,
                    ],
                    None,
                ),
                rule(vec![L4proto(L4::Tcp), RejectTcpReset], Some("reject")),
                rule(vec![Counter, RejectAdminProhibited], Some("default")),
            ],
        )],
    };
    let text = r#"table inet leash {
  comment "policy sha256:0123abcd"
  set v4 { type ipv4_addr; flags interval; elements = { 192.0.2.0/24, 198.51.100.7, 203.0.113.5-255.255.255.255 } }
  set v6 { type ipv6_addr; flags interval; elements = { 2001:db8::/32, ffff::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff } }
  set ports { type inet_service; flags interval; elements = { 53, 80-443, 60000-65535 } }
  set uids { type uid; elements = { 0, 1000 } }
  set gids { type gid; elements = { 0, 100 } }
  set icmp6 { type icmpv6_type; elements = { 1, 2, 135, 136 } }
  chain output {
    type filter hook output priority filter; policy drop;
    oif "lo" accept comment "loopback"
    ct state established,related accept
    meta mark 0x00006c6e oif != "lo" accept comment "forwarder"
    meta mark != 0x00000000 meta mark 0xffffffff drop
    meta nfproto ipv4 tcp dport 53 ip daddr 192.0.2.1 counter accept comment "dns"
    udp dport @ports ip daddr @v4 meta skuid 1000 accept comment "web"
    ip6 daddr @v6 meta skuid @uids meta skgid @gids accept comment "web"
    ip6 daddr 2001:db8::1 meta skgid 100 drop
    icmpv6 type @icmp6 accept comment "icmp"
    icmpv6 type 135 accept
    meta nfproto ipv6 meta l4proto ipv6-icmp accept
    meta l4proto icmp counter log prefix "leash drop " group 5 drop
    meta l4proto tcp reject with tcp reset comment "reject"
    counter reject with icmpx admin-prohibited comment "default"
  }
}
"#;
    (table, text.to_string())
}

/// A timeout set (hash set with `flags timeout`) holding `elements`.
pub fn timed_set(name: &str, elements: SetElements) -> Set {
    let key = match elements {
        SetElements::TimedV6(_) | SetElements::V6(_) => KeyType::Ipv6Addr,
        _ => KeyType::Ipv4Addr,
    };
    Set {
        name: name.into(),
        key,
        interval: false,
        timeout: true,
        dynamic: None,
        elements,
    }
}

/// What the DNS forwarder needs: a nat chain at dstnat that redirects DNS to a local port unless
/// the packet carries the forwarder's mark, and timeout sets with timed elements (unsorted, and
/// with timeouts that need every unit nft prints), and the filter chain using them.
pub fn dns_redirect() -> (Table, String) {
    use Stmt::*;
    let dns = |l4| Dport {
        l4,
        value: Value::Eq(53),
    };
    let table = Table {
        name: TABLE_NAME.into(),
        comment: Some("dns".into()),
        sets: vec![
            timed_set(
                "dom4",
                SetElements::TimedV4(vec![
                    (v4("198.51.100.9"), 3_600_000),
                    (v4("192.0.2.7"), 300_000),
                    (v4("203.0.113.1"), 93_784_500),
                ]),
            ),
            timed_set(
                "dom6",
                SetElements::TimedV6(vec![
                    (v6("2001:db8::9"), 30_000),
                    (v6("2001:db8::1"), 7_200_000),
                ]),
            ),
            timed_set("empty4", SetElements::TimedV4(vec![])),
            timed_set("empty6", SetElements::V6(vec![])),
        ],
        chains: vec![
            Chain {
                name: "dns".into(),
                kind: ChainType::Nat,
                hook: Hook::Output,
                priority: OUTPUT_PRIORITY_DSTNAT,
                policy: ChainPolicy::Accept,
                rules: vec![
                    rule(vec![MarkEq(0x6c6e), Accept], None),
                    rule(
                        vec![
                            MarkNe(0x6c6e),
                            OifNotLoopback,
                            dns(L4::Udp),
                            Redirect { port: 5353 },
                        ],
                        Some("dns"),
                    ),
                    rule(
                        vec![
                            MarkNe(0x6c6e),
                            OifNotLoopback,
                            dns(L4::Tcp),
                            Counter,
                            Redirect { port: 5353 },
                        ],
                        Some("dns"),
                    ),
                    rule(
                        vec![
                            Nfproto(Family::Ipv6),
                            L4proto(L4::Udp),
                            Redirect { port: 1 },
                        ],
                        None,
                    ),
                ],
            },
            chain(
                ChainPolicy::Drop,
                vec![
                    rule(
                        vec![OifNotLoopback, MarkEq(0x6c6e), Accept],
                        Some("forwarder"),
                    ),
                    rule(
                        vec![Daddr4(Value::InSet("dom4".into())), Accept],
                        Some("web"),
                    ),
                    rule(
                        vec![Daddr6(Value::InSet("dom6".into())), Counter, Accept],
                        Some("web"),
                    ),
                    rule(vec![Daddr4(Value::InSet("empty4".into())), Accept], None),
                    rule(vec![Daddr6(Value::InSet("empty6".into())), Accept], None),
                ],
            ),
        ],
    };
    let text = r#"table inet leash {
  comment "dns"
  set dom4 { type ipv4_addr; flags timeout; elements = { 198.51.100.9 timeout 1h, 192.0.2.7 timeout 5m, 203.0.113.1 timeout 1d2h3m4s500ms } }
  set dom6 { type ipv6_addr; flags timeout; elements = { 2001:db8::9 timeout 30s, 2001:db8::1 timeout 2h } }
  set empty4 { type ipv4_addr; flags timeout; }
  set empty6 { type ipv6_addr; flags timeout; }
  chain dns {
    type nat hook output priority -100; policy accept;
    meta mark 0x00006c6e accept
    meta mark != 0x00006c6e oif != "lo" udp dport 53 redirect to :5353 comment "dns"
    meta mark != 0x00006c6e oif != "lo" tcp dport 53 counter redirect to :5353 comment "dns"
    meta nfproto ipv6 meta l4proto udp redirect to :1
  }
  chain output {
    type filter hook output priority filter; policy drop;
    oif != "lo" meta mark 0x00006c6e accept comment "forwarder"
    ip daddr @dom4 accept comment "web"
    ip6 daddr @dom6 counter accept comment "web"
    ip daddr @empty4 accept
    ip6 daddr @empty6 accept
  }
}
"#;
    (table, text.to_string())
}

/// A listing with what changes by itself taken out, so that two listings of the same table
/// compare equal: the `expires ...` countdown of timed elements is removed, and element lists,
/// which nft wraps by line length (and so by the length of `expires ...`), are joined into one
/// line per set.
pub fn normalize_listing(listing: &str) -> String {
    let mut joined = String::with_capacity(listing.len());
    for line in listing.lines() {
        if joined.ends_with(',') {
            joined.push(' ');
            joined.push_str(line.trim_start());
        } else {
            if !joined.is_empty() {
                joined.push('\n');
            }
            joined.push_str(line);
        }
    }
    let mut out = String::with_capacity(joined.len());
    let mut rest = joined.as_str();
    while let Some(i) = rest.find(" expires ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " expires ".len()..];
        let end = after.find([',', ' ', '\n']).unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A table with one v4 interval set of `n` disjoint /30 ranges (and one rule using it), and its
/// nft text.
pub fn big_v4(n: u32) -> (Table, String) {
    let ranges: Vec<(Ipv4Addr, Ipv4Addr)> = (0..n)
        .map(|i| {
            (
                Ipv4Addr::from(0x0a00_0000 + i * 8),
                Ipv4Addr::from(0x0a00_0000 + i * 8 + 3),
            )
        })
        .collect();
    let mut text = String::from(
        "table inet leash {\n  set big { type ipv4_addr; flags interval; elements = {\n",
    );
    for (a, _) in &ranges {
        text.push_str(&format!("    {a}/30,\n"));
    }
    text.push_str(
        "  } }\n  chain output {\n    type filter hook output priority filter; policy accept;\n",
    );
    text.push_str("    ip daddr @big counter drop comment \"big\"\n  }\n}\n");
    let table = Table {
        name: TABLE_NAME.into(),
        comment: None,
        sets: vec![set("big", KeyType::Ipv4Addr, SetElements::V4(ranges))],
        chains: vec![chain(
            ChainPolicy::Accept,
            vec![rule(
                vec![
                    Stmt::Daddr4(Value::InSet("big".into())),
                    Stmt::Counter,
                    Stmt::Drop,
                ],
                Some("big"),
            )],
        )],
    };
    (table, text)
}

/// Rules that exercise nft's protocol-dependency elimination: a dependency already established
/// earlier in the rule is not repeated, an explicit statement always is.
pub fn protocol_deps() -> (Table, String) {
    use Stmt::*;
    let tcp = |p| Dport {
        l4: L4::Tcp,
        value: Value::Eq(p),
    };
    let table = Table {
        name: TABLE_NAME.into(),
        comment: None,
        sets: vec![],
        chains: vec![chain(
            ChainPolicy::Accept,
            vec![
                rule(vec![RejectTcpReset], None),
                rule(
                    vec![
                        Daddr6(Value::Eq(v6("2001:db8::1"))),
                        Icmpv6Type(Value::Eq(1)),
                        Accept,
                    ],
                    None,
                ),
                rule(
                    vec![L4proto(L4::Icmpv6), Icmpv6Type(Value::Eq(1)), Accept],
                    None,
                ),
                rule(
                    vec![Nfproto(Family::Ipv6), Icmpv6Type(Value::Eq(1)), Accept],
                    None,
                ),
                rule(vec![tcp(1), tcp(2), Accept], None),
                rule(
                    vec![
                        Daddr4(Value::Eq(v4("192.0.2.1"))),
                        Daddr4(Value::Eq(v4("192.0.2.2"))),
                        Accept,
                    ],
                    None,
                ),
                rule(vec![L4proto(L4::Tcp), L4proto(L4::Tcp), Accept], None),
                rule(vec![Nfproto(Family::Ipv4), tcp(22), RejectTcpReset], None),
                rule(vec![tcp(22), L4proto(L4::Tcp), Accept], None),
                rule(
                    vec![
                        Dport {
                            l4: L4::Udp,
                            value: Value::Eq(53),
                        },
                        Nfproto(Family::Ipv6),
                        Accept,
                    ],
                    None,
                ),
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
    (table, text.to_string())
}

/// Interval sets at the edges: ranges starting at 0 (no leading zero element), ending at the
/// maximum (no end element, nft's interval-open flag), the full range, single values at both
/// ends, empty sets.
pub fn interval_edges() -> (Table, String) {
    let table = Table {
        name: TABLE_NAME.into(),
        comment: Some("edges".into()),
        sets: vec![
            set(
                "a",
                KeyType::Ipv4Addr,
                SetElements::V4(vec![
                    (v4("0.0.0.0"), v4("0.255.255.255")),
                    (v4("10.0.0.1"), v4("10.0.0.1")),
                ]),
            ),
            set(
                "b",
                KeyType::Ipv4Addr,
                SetElements::V4(vec![(v4("255.255.255.255"), v4("255.255.255.255"))]),
            ),
            set(
                "c",
                KeyType::Ipv4Addr,
                SetElements::V4(vec![(v4("0.0.0.0"), v4("255.255.255.255"))]),
            ),
            set(
                "d",
                KeyType::InetService,
                SetElements::Ports(vec![(0, 0), (65535, 65535)]),
            ),
            set("e", KeyType::Ipv4Addr, SetElements::V4(vec![])),
            set("f", KeyType::Uid, SetElements::Ids(vec![])),
            set(
                "g",
                KeyType::Ipv6Addr,
                SetElements::V6(vec![
                    (v6("::"), v6("::")),
                    (v6("2001:db8::1"), v6("2001:db8::5")),
                ]),
            ),
            set(
                "h",
                KeyType::Ipv6Addr,
                SetElements::V6(vec![(
                    v6("::"),
                    v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                )]),
            ),
            set(
                "i",
                KeyType::InetService,
                SetElements::Ports(vec![(1, 65535)]),
            ),
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
    (table, text.to_string())
}
