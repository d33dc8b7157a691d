//! Tables used by several kernel tests, each with the nft text that means the same, and throwaway
//! cgroup v2 directories for `socket cgroupv2`. (nft itself runs through `kernel::testutil`, with
//! `TZ=UTC`.)
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use kernel::netns::NetNs;
use ruleset::*;

pub use kernel::testutil::{chain, rule};

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
        size: None,
        elements,
    }
}

/// A table with every statement kind and every set kind except those that need a cgroup
/// directory or dynamic sets (see [`every_new_stmt`]), and its nft text (load it with `TZ=UTC`).
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
                rule(
                    vec![
                        MetaDay { first: 1, last: 5 },
                        MetaHour {
                            first: 8 * 3600,
                            last: 18 * 3600 - 1,
                        },
                        Limit(RateLimit {
                            rate: 100,
                            unit: RateUnit::Second,
                            burst: 50,
                        }),
                        CtCount(64),
                        Accept,
                    ],
                    Some("office"),
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
    meta day 1-5 meta hour "08:00"-"17:59:59" limit rate 100/second burst 50 packets ct count 64 accept comment "office"
    meta l4proto tcp reject with tcp reset comment "reject"
    counter reject with icmpx admin-prohibited comment "default"
  }
}
"#;
    (table, text.to_string())
}

/// Seconds since the epoch of 2024-03-31 01:00:00 UTC (a daylight-saving change in Europe).
pub const DST_START_2024: i64 = 1_711_846_800;
/// 2024-10-27 01:00:00 UTC.
pub const DST_END_2024: i64 = 1_729_990_800;

pub fn rate(rate: u64, unit: RateUnit, burst: u32) -> RateLimit {
    RateLimit { rate, unit, burst }
}

/// An empty dynamic set (a meter's); `Set::timeout` restates whether it has a timeout, as the
/// compiler writes it.
pub fn dynamic_set(name: &str, key: KeyType, size: u32, timeout_ms: Option<u64>) -> Set {
    let elements = match key {
        KeyType::Ipv4Addr => SetElements::V4(vec![]),
        KeyType::Ipv6Addr => SetElements::V6(vec![]),
        _ => SetElements::Ids(vec![]),
    };
    Set {
        name: name.into(),
        key,
        interval: false,
        timeout: timeout_ms.is_some(),
        dynamic: Some(Dynamic { size, timeout_ms }),
        size: None,
        elements,
    }
}

/// The statements of time windows, rates, connection counts, cgroups and meters, each in every
/// shape nft encodes differently, and their nft text (hand-written, as nft 1.0.6 lists them;
/// loaded with `TZ=UTC`). `cg` is the cgroup the `socket cgroupv2` rule names: nft resolves its
/// path when it loads the text, so it must exist then.
pub fn every_new_stmt(cg: &TestCgroup) -> (Table, String) {
    use Stmt::*;
    let h = |hh: u32, mm: u32, ss: u32| hh * 3600 + mm * 60 + ss;
    let ns = |secs: i64| secs * 1_000_000_000;
    let meter = |set: &str, key, limit| Meter {
        set: set.into(),
        key,
        limit,
    };
    let table = Table {
        name: TABLE_NAME.into(),
        comment: Some("limits".into()),
        sets: vec![
            dynamic_set("m4", KeyType::Ipv4Addr, 65535, Some(60_000)),
            dynamic_set("m6", KeyType::Ipv6Addr, 1024, None),
            dynamic_set("mu", KeyType::Uid, 100, Some(30_500)),
            dynamic_set("c4", KeyType::Ipv4Addr, 65535, None),
            dynamic_set("cu", KeyType::Uid, 16, None),
        ],
        chains: vec![chain(
            ChainPolicy::Accept,
            vec![
                rule(
                    vec![MetaDay { first: 1, last: 5 }, Accept],
                    Some("weekdays"),
                ),
                rule(vec![MetaDay { first: 3, last: 3 }, Accept], None),
                rule(vec![MetaDay { first: 6, last: 1 }, Accept], Some("weekend")),
                rule(vec![MetaDay { first: 4, last: 2 }, Accept], None),
                rule(vec![MetaDay { first: 1, last: 0 }, Accept], None),
                rule(vec![MetaDay { first: 0, last: 6 }, Accept], None),
                rule(
                    vec![
                        MetaHour {
                            first: h(9, 0, 0),
                            last: h(17, 30, 5),
                        },
                        Accept,
                    ],
                    Some("office"),
                ),
                rule(
                    vec![
                        MetaHour {
                            first: h(12, 0, 0),
                            last: h(12, 0, 0),
                        },
                        Accept,
                    ],
                    None,
                ),
                rule(
                    vec![
                        MetaHour {
                            first: h(22, 0, 0),
                            last: h(5, 59, 59),
                        },
                        Accept,
                    ],
                    Some("night"),
                ),
                rule(vec![MetaHour { first: 10, last: 8 }, Accept], None),
                rule(
                    vec![
                        MetaHour {
                            first: h(23, 59, 59),
                            last: h(23, 59, 58),
                        },
                        Accept,
                    ],
                    None,
                ),
                rule(
                    vec![
                        MetaDay { first: 1, last: 5 },
                        MetaHour {
                            first: h(8, 0, 0),
                            last: h(18, 59, 59),
                        },
                        MetaTimeFrom(ns(DST_START_2024)),
                        MetaTimeUntil(ns(DST_END_2024)),
                        Accept,
                    ],
                    Some("summer"),
                ),
                rule(vec![MetaTimeFrom(0), Accept], None),
                rule(
                    vec![Limit(rate(10, RateUnit::Minute, 5)), Accept],
                    Some("rate"),
                ),
                rule(
                    vec![
                        Limit(rate(7, RateUnit::Second, 3)),
                        Limit(rate(1, RateUnit::Hour, 1)),
                        Limit(rate(86_400, RateUnit::Day, 100_000)),
                        Accept,
                    ],
                    None,
                ),
                rule(
                    vec![
                        Dport {
                            l4: L4::Tcp,
                            value: Value::Eq(443),
                        },
                        CtCount(4),
                        Accept,
                    ],
                    Some("conns"),
                ),
                rule(vec![CtCount(0), Drop], None),
                rule(
                    vec![
                        SocketCgroup {
                            level: cg.level,
                            path: cg.nft_path.clone(),
                            id: cg.id,
                        },
                        Counter,
                        Accept,
                    ],
                    Some("service"),
                ),
                rule(
                    vec![
                        meter(
                            "m4",
                            MeterKey::Daddr4,
                            MeterLimit::Rate(rate(10, RateUnit::Second, 5)),
                        ),
                        Accept,
                    ],
                    Some("per-destination"),
                ),
                rule(
                    vec![
                        Daddr4(Value::Eq(v4("192.0.2.1"))),
                        meter(
                            "m4",
                            MeterKey::Daddr4,
                            MeterLimit::Rate(rate(10, RateUnit::Second, 5)),
                        ),
                        Accept,
                    ],
                    None,
                ),
                rule(
                    vec![
                        meter(
                            "m6",
                            MeterKey::Daddr6,
                            MeterLimit::Rate(rate(2, RateUnit::Minute, 9)),
                        ),
                        Accept,
                    ],
                    None,
                ),
                rule(
                    vec![
                        Nfproto(Family::Ipv6),
                        meter(
                            "m6",
                            MeterKey::Daddr6,
                            MeterLimit::Rate(rate(2, RateUnit::Minute, 9)),
                        ),
                        Accept,
                    ],
                    None,
                ),
                rule(
                    vec![
                        meter(
                            "mu",
                            MeterKey::SkUid,
                            MeterLimit::Rate(rate(10, RateUnit::Minute, 7)),
                        ),
                        Accept,
                    ],
                    Some("per-user"),
                ),
                rule(
                    vec![
                        Dport {
                            l4: L4::Tcp,
                            value: Value::Eq(22),
                        },
                        meter("c4", MeterKey::Daddr4, MeterLimit::Count(4)),
                        Accept,
                    ],
                    None,
                ),
                rule(
                    vec![
                        meter("cu", MeterKey::SkUid, MeterLimit::Count(2)),
                        Counter,
                        Accept,
                    ],
                    None,
                ),
                rule(
                    vec![
                        Daddr4(Value::InSet("m4".into())),
                        SkUid(Value::InSet("cu".into())),
                        Drop,
                    ],
                    None,
                ),
            ],
        )],
    };
    let text = format!(
        r#"table inet leash {{
  comment "limits"
  set m4 {{ type ipv4_addr; size 65535; flags dynamic,timeout; timeout 1m; }}
  set m6 {{ type ipv6_addr; size 1024; flags dynamic; }}
  set mu {{ type uid; size 100; flags dynamic,timeout; timeout 30s500ms; }}
  set c4 {{ type ipv4_addr; size 65535; flags dynamic; }}
  set cu {{ type uid; size 16; flags dynamic; }}
  chain output {{
    type filter hook output priority filter; policy accept;
    meta day 1-5 accept comment "weekdays"
    meta day "Wednesday" accept
    meta day != 2-5 accept comment "weekend"
    meta day != 3 accept
    meta day 0-6 accept
    meta day "Sunday"-"Saturday" accept
    meta hour "09:00"-"17:30:05" accept comment "office"
    meta hour "12:00" accept
    meta hour != "06:00"-"21:59:59" accept comment "night"
    meta hour != "00:00:09" accept
    meta hour "00:00"-"23:59:59" accept
    meta day 1-5 meta hour "08:00"-"18:59:59" meta time >= "2024-03-31 01:00:00" meta time < "2024-10-27 01:00:00" accept comment "summer"
    meta time >= "1970-01-01 00:00:00" accept
    limit rate 10/minute burst 5 packets accept comment "rate"
    limit rate 7/second burst 3 packets limit rate 1/hour burst 1 packets limit rate 86400/day burst 100000 packets accept
    tcp dport 443 ct count 4 accept comment "conns"
    ct count 0 drop
    socket cgroupv2 level {level} "{path}" counter accept comment "service"
    update @m4 {{ ip daddr limit rate 10/second }} accept comment "per-destination"
    ip daddr 192.0.2.1 update @m4 {{ ip daddr limit rate 10/second burst 5 packets }} accept
    update @m6 {{ ip6 daddr limit rate 2/minute burst 9 packets }} accept
    meta nfproto ipv6 update @m6 {{ ip6 daddr limit rate 2/minute burst 9 packets }} accept
    update @mu {{ meta skuid limit rate 10/minute burst 7 packets }} accept comment "per-user"
    tcp dport 22 add @c4 {{ ip daddr ct count 4 }} accept
    add @cu {{ meta skuid ct count 2 }} counter accept
    ip daddr @m4 meta skuid @cu drop
  }}
}}
"#,
        level = cg.level,
        path = cg.nft_path
    );
    (table, text)
}

/// A throwaway cgroup v2 directory two levels below the cgroup v2 root
/// (`leash-test-PID-N/a`), removed again when dropped (also when a test fails). The machine's
/// cgroup tree is shared with everything else, so nothing is ever moved into it here unless a
/// test says so, and only its own threads' processes.
pub struct TestCgroup {
    /// The leaf directory (`.../leash-test-PID-N/a`).
    pub dir: PathBuf,
    top: PathBuf,
    /// As nft writes it: relative to `/sys/fs/cgroup` (`unified/leash-test-PID-N/a` on a hybrid host).
    pub nft_path: String,
    /// Depth below the cgroup v2 root: 2.
    pub level: u32,
    /// The directory's inode number, the cgroup id the kernel compares.
    pub id: u64,
}

impl TestCgroup {
    /// A new directory, or `None` when no cgroup v2 hierarchy is mounted under /sys/fs/cgroup.
    pub fn new() -> Option<TestCgroup> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = cgroup2_mount()?;
        let rel = root.strip_prefix("/sys/fs/cgroup").ok()?.to_path_buf();
        let name = format!(
            "leash-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let top = root.join(&name);
        let dir = top.join("a");
        std::fs::create_dir(&top).ok()?;
        // From here on, Drop removes what exists.
        let mut cg = TestCgroup {
            dir: dir.clone(),
            top,
            nft_path: rel.join(&name).join("a").to_string_lossy().into_owned(),
            level: 2,
            id: 0,
        };
        std::fs::create_dir(&dir).ok()?;
        cg.id = std::fs::metadata(&dir).ok()?.ino();
        Some(cg)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup directory is removed with rmdir (its control files go with it); it must hold
        // no process by now.
        for d in [&self.dir, &self.top] {
            if let Err(e) = std::fs::remove_dir(d)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("could not remove test cgroup {}: {e}", d.display());
            }
        }
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on
/// a hybrid one), from this process's mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPER"
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2" && mount.starts_with("/sys/fs/cgroup")).then(|| PathBuf::from(mount))
    })
}


/// The messages nft sends for `text` (see `kernel::testutil::nft_messages`), with `TZ=UTC`.
pub fn nft_messages_utc(ns: &NetNs, text: &str) -> Vec<(u16, Vec<u8>)> {
    let (ok, out, err) = kernel::testutil::nft_raw(ns, &["--debug=mnl", "-f", "-"], Some(text));
    assert!(ok, "nft -f failed: {err}\n--- text ---\n{text}");
    kernel::testutil::parse_mnl_debug(&format!("{out}\n{err}"))
}

/// `kernel::testutil::listings` with nft run with `TZ=UTC`: `text` loaded by nft into one fresh
/// namespace, `table` applied into another; both listings, nft's first.
pub fn listings_utc(table: &Table, text: &str) -> (String, String) {
    let oracle = NetNs::new().expect("new netns");
    kernel::testutil::nft_load(&oracle, text);
    let want = kernel::testutil::list_leash(&oracle).expect("nft created the table");
    let ours = NetNs::new().expect("new netns");
    ours.run(|| kernel::apply(table, &kernel::ApplyOptions::default()))
        .expect("apply");
    let got = kernel::testutil::list_leash(&ours).expect("apply created the table");
    (want, got)
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
        size: None,
        elements,
    }
}

/// What the DNS forwarder needs: a nat chain at dstnat that redirects DNS to a local port unless
/// the packet carries the forwarder's mark, and timeout sets with timed elements (unsorted, and
/// with timeouts that need every unit nft prints; bounded with `size`), the filter chain using
/// them, and the DNS control: `th dport @set jump`, a regular chain with `ct direction reply
/// return` and the forwarder's exemption (mark, skuid, upstream address and port).
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
                    TimedAddr::new(v4("198.51.100.9"), 3_600_000, Some("api.example.com".into())),
                    TimedAddr::new(v4("192.0.2.7"), 300_000, None),
                    TimedAddr::new(v4("203.0.113.1"), 93_784_500, Some("a.b-c.cdn.example.com".into())),
                ]),
            ),
            timed_set(
                "dom6",
                SetElements::TimedV6(vec![
                    TimedAddr::new(v6("2001:db8::9"), 30_000, Some("x.test".into())),
                    TimedAddr::new(v6("2001:db8::1"), 7_200_000, None),
                ]),
            ),
            timed_set("empty4", SetElements::TimedV4(vec![])),
            timed_set("empty6", SetElements::V6(vec![])),
            Set {
                size: Some(65536),
                ..timed_set("bounded4", SetElements::TimedV4(vec![TimedAddr::new(v4("192.0.2.8"), 60_000, None)]))
            },
            Set {
                size: Some(1024),
                ..timed_set("bounded6", SetElements::TimedV6(vec![]))
            },
            set(
                "dnsports",
                KeyType::InetService,
                SetElements::Ports(vec![(53, 53), (853, 853), (5353, 5353)]),
            ),
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
                    rule(vec![Daddr4(Value::InSet("bounded4".into())), Accept], None),
                    rule(vec![Daddr6(Value::InSet("bounded6".into())), Accept], None),
                    rule(
                        vec![
                            ThDport(Value::InSet("dnsports".into())),
                            Jump("dnsc".into()),
                        ],
                        Some("@dns-control"),
                    ),
                    rule(vec![ThDport(Value::Eq(53)), Counter, Drop], None),
                ],
            ),
            Chain {
                name: "dnsc".into(),
                kind: ChainType::Regular,
                hook: Hook::Output,
                priority: 0,
                policy: ChainPolicy::Accept,
                rules: vec![
                    rule(vec![CtDirectionReply, Return], Some("@dns-reply")),
                    rule(
                        vec![
                            MarkEq(0x6c6e),
                            SkUid(Value::Eq(998)),
                            Daddr4(Value::Eq(v4("192.0.2.53"))),
                            Dport {
                                l4: L4::Udp,
                                value: Value::Eq(5353),
                            },
                            Counter,
                            Accept,
                        ],
                        Some("@dns-forwarder"),
                    ),
                    rule(
                        vec![
                            MarkEq(0x6c6e),
                            SkUid(Value::Eq(998)),
                            Daddr6(Value::Eq(v6("2001:db8::53"))),
                            Dport {
                                l4: L4::Tcp,
                                value: Value::Eq(53),
                            },
                            Counter,
                            Accept,
                        ],
                        Some("@dns-forwarder"),
                    ),
                    rule(
                        vec![
                            Dport {
                                l4: L4::Udp,
                                value: Value::InSet("dnsports".into()),
                            },
                            Counter,
                            RejectAdminProhibited,
                        ],
                        Some("@dns-bypass"),
                    ),
                ],
            },
        ],
    };
    let text = r#"table inet leash {
  comment "dns"
  set dom4 { type ipv4_addr; flags timeout; elements = { 198.51.100.9 timeout 1h comment "api.example.com", 192.0.2.7 timeout 5m, 203.0.113.1 timeout 1d2h3m4s500ms comment "a.b-c.cdn.example.com" } }
  set dom6 { type ipv6_addr; flags timeout; elements = { 2001:db8::9 timeout 30s comment "x.test", 2001:db8::1 timeout 2h } }
  set empty4 { type ipv4_addr; flags timeout; }
  set empty6 { type ipv6_addr; flags timeout; }
  set bounded4 { type ipv4_addr; size 65536; flags timeout; elements = { 192.0.2.8 timeout 1m } }
  set bounded6 { type ipv6_addr; size 1024; flags timeout; }
  set dnsports { type inet_service; flags interval; elements = { 53, 853, 5353 } }
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
    ip daddr @bounded4 accept
    ip6 daddr @bounded6 accept
    th dport @dnsports jump dnsc comment "@dns-control"
    th dport 53 counter drop
  }
  chain dnsc {
    ct direction reply return comment "@dns-reply"
    meta mark 0x00006c6e meta skuid 998 ip daddr 192.0.2.53 udp dport 5353 counter accept comment "@dns-forwarder"
    meta mark 0x00006c6e meta skuid 998 ip6 daddr 2001:db8::53 tcp dport 53 counter accept comment "@dns-forwarder"
    udp dport @dnsports counter reject with icmpx admin-prohibited comment "@dns-bypass"
  }
}
"#;
    (table, text.to_string())
}

/// The forward hook: a base chain that jumps on `iifname` (exact and wildcard) and `ip saddr` /
/// `ip6 saddr` (sets and single addresses), a regular chain with `oifname ... return`, and
/// source matches before destinations, as `ruleset::compile` emits for `[forward]` and `from`.
pub fn forward() -> (Table, String) {
    use Stmt::*;
    let jump = || Jump("workload".into());
    let table = Table {
        name: TABLE_NAME.into(),
        comment: Some("forward".into()),
        sets: vec![
            set("workload_v4", KeyType::Ipv4Addr, SetElements::V4(vec![(v4("198.18.9.0"), v4("198.18.9.255"))])),
            set("workload_v6", KeyType::Ipv6Addr, SetElements::V6(vec![(v6("2001:db8:77::"), v6("2001:db8:77::ffff"))])),
        ],
        chains: vec![
            Chain {
                name: "forward".into(),
                kind: ChainType::Filter,
                hook: Hook::Forward,
                priority: OUTPUT_PRIORITY_FILTER,
                policy: ChainPolicy::Accept,
                rules: vec![
                    rule(vec![CtStateEstablishedRelated, Counter, Accept], Some("@established")),
                    rule(vec![IifName { name: "docker0".into(), wildcard: false }, jump()], Some("@workload")),
                    rule(vec![IifName { name: "br-".into(), wildcard: true }, jump()], Some("@workload")),
                    rule(vec![IifName { name: "abcdefghijklmno".into(), wildcard: false }, jump()], None),
                    rule(vec![Saddr4(Value::InSet("workload_v4".into())), jump()], Some("@workload")),
                    rule(vec![Saddr6(Value::InSet("workload_v6".into())), jump()], Some("@workload")),
                ],
            },
            Chain {
                name: "workload".into(),
                kind: ChainType::Regular,
                hook: Hook::Forward,
                priority: 0,
                policy: ChainPolicy::Accept,
                rules: vec![
                    rule(vec![OifName { name: "docker0".into(), wildcard: false }, Counter, Return], Some("@between-workloads")),
                    rule(vec![OifName { name: "vir".into(), wildcard: true }, Return], None),
                    rule(vec![Daddr4(Value::InSet("workload_v4".into())), Counter, Return], None),
                    rule(
                        vec![Saddr4(Value::Eq(v4("198.18.0.2"))), Daddr4(Value::Eq(v4("192.0.2.10"))), Dport { l4: L4::Tcp, value: Value::Eq(443) }, Counter, Accept],
                        Some("web"),
                    ),
                    rule(
                        vec![Saddr6(Value::Eq(v6("2001:db8:c0::2"))), Daddr6(Value::Eq(v6("2001:db8::10"))), Counter, Accept],
                        Some("web"),
                    ),
                    rule(vec![IifName { name: "podman".into(), wildcard: true }, L4proto(L4::Udp), Counter, Drop], Some("web")),
                    rule(vec![L4proto(L4::Tcp), Counter, RejectTcpReset], Some("@default")),
                    rule(vec![Counter, RejectAdminProhibited], Some("@default")),
                ],
            },
        ],
    };
    let text = r#"table inet leash {
  comment "forward"
  set workload_v4 { type ipv4_addr; flags interval; elements = { 198.18.9.0/24 } }
  set workload_v6 { type ipv6_addr; flags interval; elements = { 2001:db8:77::/112 } }
  chain forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related counter accept comment "@established"
    iifname "docker0" jump workload comment "@workload"
    iifname "br-*" jump workload comment "@workload"
    iifname "abcdefghijklmno" jump workload
    ip saddr @workload_v4 jump workload comment "@workload"
    ip6 saddr @workload_v6 jump workload comment "@workload"
  }
  chain workload {
    oifname "docker0" counter return comment "@between-workloads"
    oifname "vir*" return
    ip daddr @workload_v4 counter return
    ip saddr 198.18.0.2 ip daddr 192.0.2.10 tcp dport 443 counter accept comment "web"
    ip6 saddr 2001:db8:c0::2 ip6 daddr 2001:db8::10 counter accept comment "web"
    iifname "podman*" meta l4proto udp counter drop comment "web"
    meta l4proto tcp counter reject with tcp reset comment "@default"
    counter reject with icmpx admin-prohibited comment "@default"
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

/// Addresses of [`Pair`]: the client and the peer end of one veth, in both families.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// Two fresh namespaces joined by a veth pair (`pair0` in the client, `pair1` in the peer),
/// with [`CLIENT4`]/[`CLIENT6`] and [`PEER4`]/[`PEER6`] on them (/24 and /64, on-link), up and
/// usable when this returns.
pub struct Pair {
    pub client: NetNs,
    pub peer: NetNs,
}

pub fn pair() -> Pair {
    use kernel::rtnl::Rtnl;
    use std::os::fd::AsFd;
    let up = std::time::Duration::from_secs(5);
    let client = NetNs::new().unwrap();
    let peer = NetNs::new().unwrap();
    let ci = client
        .run(|| -> Result<u32, kernel::rtnl::Error> {
            let mut r = Rtnl::open()?;
            r.create_veth_with_indexes("pair0", 10, "pair1", 20, peer.as_fd())?;
            let i = r.link_index("pair0")?;
            r.add_address(i, CLIENT4.into(), 24)?;
            r.add_address(i, CLIENT6.into(), 64)?;
            r.set_link_up(i)?;
            Ok(i)
        })
        .unwrap();
    peer.run(|| -> Result<(), kernel::rtnl::Error> {
        let mut r = Rtnl::open()?;
        let i = r.link_index("pair1")?;
        r.add_address(i, PEER4.into(), 24)?;
        r.add_address(i, PEER6.into(), 64)?;
        r.set_link_up(i)?;
        r.wait_oper_up(i, up)?;
        r.wait_local(PEER4.into(), up)?;
        r.wait_local(PEER6.into(), up)
    })
    .unwrap();
    client
        .run(|| -> Result<(), kernel::rtnl::Error> {
            let mut r = Rtnl::open()?;
            r.wait_oper_up(ci, up)?;
            r.wait_local(CLIENT4.into(), up)?;
            r.wait_local(CLIENT6.into(), up)
        })
        .unwrap();
    Pair { client, peer }
}

/// Runs a program inside `ns` (`nsenter --net=`) and returns (success, stdout, stderr). A
/// missing program fails the test (the Debian packages are in test.sh).
pub fn run_in(ns: &NetNs, program: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nsenter {program} (util-linux, and {program} from test.sh's packages): {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
