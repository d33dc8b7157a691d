//! Large interval sets (a blocklist of 200,000 ranges) against the kernel, each test in its own
//! network namespaces: applied in the same transaction as the rules, looked up by real packets,
//! a failing element aborting everything, and `replace_set_elements` (`leash set update`) swapping
//! the contents atomically under a prober. Needs root (see `kernel::testutil::need_root`).
//!
//! Packets: addresses from 203.0.113.0/24, 198.51.100.0/24 and 2001:db8::/64 are made local on
//! `lo` inside the namespace, so datagrams to them pass the output hook and never leave the
//! namespace. A `drop` there fails the send with EPERM, which is how the tests see a hit.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kernel::netns::NetNs;
use kernel::nl::{self, Messages, NLMSG_ERROR, Socket};
use kernel::testutil::{self, list_leash, need_root};
use kernel::{ApplyOptions, ElementCount, Error, ReplaceOptions, SetContents};
use ruleset::*;

/// Ranges in the generated part of a blocklist.
const RANGES: u32 = 200_000;

/// `RANGES` non-adjacent ranges spread over 10.0.0.0/8 and 11.0.0.0/8 (alternately a /32 and a
/// /26, 128 addresses apart; `shift` moves every range, so two lists with different shifts share
/// nothing), plus `extra`; sorted and merged as the policy crate merges a feed.
fn blocklist(shift: u32, extra: &[(Ipv4Addr, Ipv4Addr)]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut r: Vec<(u32, u32)> = (0..RANGES)
        .map(|i| {
            let base = 0x0a00_0000 + i * 128 + shift;
            if i % 2 == 0 {
                (base, base)
            } else {
                (base, base + 63)
            }
        })
        .collect();
    r.extend(extra.iter().map(|&(a, b)| (u32::from(a), u32::from(b))));
    r.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
        .into_iter()
        .map(|(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b)))
        .collect()
}

fn one(a: &str) -> (Ipv4Addr, Ipv4Addr) {
    (v4(a), v4(a))
}

/// Table `inet leash` with sets `bl` (IPv4 ranges) and `bl6` and a chain that drops what they
/// hold: `ip daddr @bl counter drop`, `ip6 daddr @bl6 counter drop`.
fn table(v4s: Vec<(Ipv4Addr, Ipv4Addr)>, v6s: Vec<(Ipv6Addr, Ipv6Addr)>) -> Table {
    Table {
        name: TABLE_NAME.into(),
        comment: Some("bigsets test".into()),
        sets: vec![
            set("bl", KeyType::Ipv4Addr, SetElements::V4(v4s)),
            set("bl6", KeyType::Ipv6Addr, SetElements::V6(v6s)),
        ],
        chains: vec![chain(
            ChainPolicy::Accept,
            vec![
                rule(
                    vec![
                        Stmt::Daddr4(Value::InSet("bl".into())),
                        Stmt::Counter,
                        Stmt::Drop,
                    ],
                    Some("blocklist"),
                ),
                rule(
                    vec![
                        Stmt::Daddr6(Value::InSet("bl6".into())),
                        Stmt::Counter,
                        Stmt::Drop,
                    ],
                    Some("blocklist"),
                ),
            ],
        )],
    }
}

/// Makes the test networks local on `lo` (run inside the namespace).
fn local_test_nets() {
    let mut rt = kernel::rtnl::Rtnl::open().unwrap();
    for (a, p) in [
        ("203.0.113.2", 24),
        ("198.51.100.2", 24),
        ("2001:db8::2", 64),
    ] {
        rt.add_address(1, a.parse().unwrap(), p).unwrap();
    }
}

/// Whether a datagram to `addr` was dropped by the output hook (EPERM) rather than sent; any
/// other error fails the test.
fn dropped(s4: &UdpSocket, s6: &UdpSocket, addr: IpAddr) -> bool {
    let s = if addr.is_ipv4() { s4 } else { s6 };
    match s.send_to(b"x", (addr, 9)) {
        Ok(_) => false,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => true,
        Err(e) => panic!("send to {addr}: {e}"),
    }
}

fn sockets() -> (UdpSocket, UdpSocket) {
    (
        UdpSocket::bind("0.0.0.0:0").unwrap(),
        UdpSocket::bind("[::]:0").unwrap(),
    )
}

fn contains(r: &[(Ipv4Addr, Ipv4Addr)], a: Ipv4Addr) -> bool {
    let i = r.partition_point(|&(lo, _)| lo <= a);
    i > 0 && r[i - 1].1 >= a
}

/// Every address of 203.0.113.0/24 (and a few of 198.51.100.0/24) is dropped exactly when the
/// list holds it.
fn check_datapath(want: &[(Ipv4Addr, Ipv4Addr)]) {
    let (s4, s6) = sockets();
    let probes = (0..=255u8)
        .map(|x| Ipv4Addr::new(203, 0, 113, x))
        .chain([1u8, 100, 254].map(|x| Ipv4Addr::new(198, 51, 100, x)));
    for a in probes {
        if a == v4("203.0.113.2") || a == v4("203.0.113.255") || a == v4("203.0.113.0") {
            continue; // our own address and the broadcast/network addresses of the /24
        }
        assert_eq!(dropped(&s4, &s6, a.into()), contains(want, a), "{a}");
    }
}

/// The test addresses of every list: every third address of 203.0.113.0/24 from .5, and
/// 198.51.100.0/24 whole.
fn test_entries() -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut v: Vec<_> = (5..250u8)
        .step_by(3)
        .map(|x| one(&format!("203.0.113.{x}")))
        .collect();
    v.push((v4("198.51.100.0"), v4("198.51.100.255")));
    v
}

#[test]
fn two_hundred_thousand_ranges_apply_with_the_rules_and_packets_hit_and_miss() {
    if !need_root("two_hundred_thousand_ranges_apply_with_the_rules_and_packets_hit_and_miss") {
        return;
    }
    let list = blocklist(0, &test_entries());
    let n = list.len();
    assert!(n > RANGES as usize, "{n}");
    let t = table(list.clone(), vec![(v6("2001:db8::7"), v6("2001:db8::7"))]);
    let ns = NetNs::new().unwrap();
    let report = ns
        .run(|| kernel::apply(&t, &ApplyOptions::default()))
        .unwrap();
    eprintln!(
        "{n} ranges: send+ack {:?}, verify {:?}, {} messages, {} bytes",
        report.send_and_ack, report.verify, report.messages, report.bytes
    );
    assert_eq!(report.elements, n + 1);
    assert_eq!(
        report.sampled_sets, 1,
        "the big set is verified by sample, not counted"
    );
    // Table, set, elements, chain and rules in one batch: BEGIN, NEWTABLE x2, DELTABLE, NEWSET x2,
    // the NEWSETELEMs (200,000 ranges are 8 MB: more than a hundred under 64 KiB each), NEWCHAIN,
    // NEWRULE x2, END.
    assert!(report.messages > 100, "{}", report.messages);
    assert!(report.table_handle > 0);

    ns.run(|| {
        local_test_nets();
        check_datapath(&list);
        let (s4, s6) = sockets();
        assert!(dropped(&s4, &s6, "2001:db8::7".parse().unwrap()));
        assert!(!dropped(&s4, &s6, "2001:db8::8".parse().unwrap()));
    });

    // Counting stops at the limit; a recorded count is taken as is, without reading the set.
    let st = ns.run(kernel::status).unwrap().unwrap();
    assert!(
        matches!(st.sets[0].elements, ElementCount::AtLeast(c) if c > kernel::nft::COUNT_LIMIT),
        "{:?}",
        st.sets[0]
    );
    assert_eq!(st.sets[1].elements, ElementCount::Exact(1));
    let handle = report.table_handle;
    let st = ns
        .run(|| kernel::status_with(|h, s| (h == handle && s.name == "bl").then_some(n)))
        .unwrap()
        .unwrap();
    assert_eq!(st.sets[0].elements, ElementCount::Recorded(n));
    assert_eq!(st.sets[1].elements, ElementCount::Exact(1));
    testutil::root_has_no_leash_table();
}

/// The apply batch for `t` with its last NEWSETELEM message repeated before BATCH_END: every
/// element of it is then added twice, which the kernel refuses (EEXIST under `NLM_F_EXCL`).
fn batch_with_a_duplicate_element_message(t: &Table) -> Vec<u8> {
    let batch = kernel::encode_apply_batch(t, &ApplyOptions::default()).unwrap();
    let newsetelem = (10u16 << 8) | 12; // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM
    let mut offsets = Vec::new();
    let mut at = 0;
    let mut last_elem = None;
    for m in Messages::new(&batch) {
        let m = m.unwrap();
        let len = nl::align(m.header.len as usize);
        if m.header.ty == newsetelem {
            last_elem = Some(at..at + len);
        }
        offsets.push(at);
        at += len;
    }
    let end = *offsets.last().unwrap();
    let mut dup = batch[last_elem.expect("a NEWSETELEM")].to_vec();
    // A sequence number of its own (the kernel acks by it).
    dup[8..12].copy_from_slice(&9_999_999u32.to_ne_bytes());
    let mut out = batch[..end].to_vec();
    out.extend_from_slice(&dup);
    out.extend_from_slice(&batch[end..]);
    out
}

#[test]
fn a_failing_element_aborts_the_whole_transaction() {
    if !need_root("a_failing_element_aborts_the_whole_transaction") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let (first, _) = every_stmt();
    ns.run(|| kernel::apply(&first, &ApplyOptions::default()))
        .unwrap();
    let before = list_leash(&ns).unwrap();

    let bytes = batch_with_a_duplicate_element_message(&table(blocklist(0, &[]), vec![]));
    assert!(bytes.len() > 7_000_000, "{}", bytes.len());
    let errors = ns.run(|| {
        let mut sock = Socket::open(nl::NETLINK_NETFILTER).unwrap();
        sock.enable_ext_ack().unwrap();
        sock.set_send_buffer(bytes.len() + (1 << 16)).unwrap();
        sock.set_recv_buffer(4 << 20).unwrap();
        sock.send(&bytes).unwrap();
        let mut replies = Vec::new();
        sock.drain_queued(&mut replies).unwrap();
        let mut errors = Vec::new();
        for m in Messages::new(&replies) {
            let m = m.unwrap();
            if m.header.ty == NLMSG_ERROR {
                let e = nl::parse_error(&m).unwrap();
                if e.errno != 0 {
                    errors.push((e.request.seq, e.errno));
                }
            }
        }
        errors
    });
    assert!(
        errors.contains(&(9_999_999, libc::EEXIST)),
        "the repeated elements are refused: {errors:?}"
    );
    assert_eq!(
        list_leash(&ns).unwrap(),
        before,
        "the previous table is intact"
    );
    testutil::root_has_no_leash_table();
}

#[test]
fn set_update_replaces_the_contents_atomically_under_a_prober() {
    if !need_root("set_update_replaces_the_contents_atomically_under_a_prober") {
        return;
    }
    // 203.0.113.7 is in both lists, .9 only in the old one, .11 only in the new one.
    let (both, old_only, new_only) = (v4("203.0.113.7"), v4("203.0.113.9"), v4("203.0.113.11"));
    let old = blocklist(0, &[one("203.0.113.7"), one("203.0.113.9")]);
    let new = blocklist(17, &[one("203.0.113.7"), one("203.0.113.11")]);
    let new6 = vec![(v6("2001:db8::11"), v6("2001:db8::11"))];
    let ns = NetNs::new().unwrap();
    ns.run(|| {
        kernel::apply(
            &table(old.clone(), vec![(v6("2001:db8::9"), v6("2001:db8::9"))]),
            &ApplyOptions::default(),
        )
        .unwrap();
        local_test_nets();
    });

    let done = AtomicBool::new(false);
    let (probes, passed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (v4e, v6e) = (SetElements::V4(new.clone()), SetElements::V6(new6));
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_current_thread().unwrap();
            let (s4, s6) = sockets();
            // Bounded: until the update is done, at most 5 million probes or 120 s.
            let t0 = Instant::now();
            while !done.load(Ordering::Relaxed)
                && probes.load(Ordering::Relaxed) < 5_000_000
                && t0.elapsed() < Duration::from_secs(120)
            {
                if !dropped(&s4, &s6, both.into()) {
                    passed.fetch_add(1, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Let the prober start before the update.
        let t0 = Instant::now();
        while probes.load(Ordering::Relaxed) < 100 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let before = probes.load(Ordering::Relaxed);
        let r = ns.run(|| {
            kernel::replace_set_elements(
                TABLE_NAME,
                &[
                    SetContents {
                        name: "bl",
                        elements: &v4e,
                    },
                    SetContents {
                        name: "bl6",
                        elements: &v6e,
                    },
                ],
                &ReplaceOptions::default(),
            )
        });
        let during = probes.load(Ordering::Relaxed) - before;
        done.store(true, Ordering::Relaxed);
        (r, during)
    });
    let (report, during) = report;
    let report = report.unwrap();
    eprintln!(
        "replaced {} ranges: encode {:?}, send+ack {:?}, verify {:?}; {during} probes during the update, {} in all",
        report.elements,
        report.encode,
        report.send_and_ack,
        report.verify,
        probes.load(Ordering::Relaxed)
    );
    assert_eq!(report.elements, new.len() + 1);
    assert!(during > 0, "the prober ran while the sets were replaced");
    assert_eq!(
        passed.load(Ordering::Relaxed),
        0,
        "a probe to a listed address got through"
    );

    ns.run(|| {
        let (s4, s6) = sockets();
        assert!(dropped(&s4, &s6, both.into()));
        assert!(
            !dropped(&s4, &s6, old_only.into()),
            "old-only address no longer listed"
        );
        assert!(
            dropped(&s4, &s6, new_only.into()),
            "new-only address listed"
        );
        assert!(!dropped(&s4, &s6, "2001:db8::9".parse().unwrap()));
        assert!(dropped(&s4, &s6, "2001:db8::11".parse().unwrap()));
    });
    // The rules were not touched: same handles, the counter kept counting.
    let st = ns.run(kernel::status).unwrap().unwrap();
    assert_eq!(st.chains[0].rules.len(), 2);
    assert!(st.chains[0].rules[0].counter.unwrap().packets > 0);
    assert_eq!(
        report.table_handle,
        ns.run(|| kernel::table_comment(TABLE_NAME))
            .unwrap()
            .unwrap()
            .handle
    );
    testutil::root_has_no_leash_table();
}

#[test]
fn set_update_errors_change_nothing() {
    if !need_root("set_update_errors_change_nothing") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let v4e = SetElements::V4(blocklist(3, &[one("203.0.113.11")]));
    let v6e = SetElements::V6(vec![]);
    let contents = [
        SetContents {
            name: "bl",
            elements: &v4e,
        },
        SetContents {
            name: "bl6",
            elements: &v6e,
        },
    ];
    let replace = |opts: ReplaceOptions, sets: &[SetContents<'_>]| {
        ns.run(|| kernel::replace_set_elements(TABLE_NAME, sets, &opts))
    };

    let err = replace(ReplaceOptions::default(), &contents).unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchTable(t) if t == TABLE_NAME),
        "{err}"
    );

    let old = blocklist(0, &[one("203.0.113.9")]);
    ns.run(|| {
        kernel::apply(&table(old.clone(), vec![]), &ApplyOptions::default()).unwrap();
        local_test_nets();
    });
    let unchanged = || {
        ns.run(|| {
            let (s4, s6) = sockets();
            assert!(
                dropped(&s4, &s6, v4("203.0.113.9").into()),
                "old contents still in place"
            );
            assert!(
                !dropped(&s4, &s6, v4("203.0.113.11").into()),
                "new contents not loaded"
            );
        })
    };

    let missing = [SetContents {
        name: "nope",
        elements: &v4e,
    }];
    let err = replace(ReplaceOptions::default(), &missing).unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchSet { set, .. } if set == "nope"),
        "{err}"
    );

    let wrong_family = [SetContents {
        name: "bl",
        elements: &v6e,
    }];
    let err = replace(ReplaceOptions::default(), &wrong_family).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert!(err.to_string().contains("ipv6_addr"), "{err}");

    let overlapping = SetElements::V4(vec![
        (v4("192.0.2.0"), v4("192.0.2.10")),
        (v4("192.0.2.5"), v4("192.0.2.20")),
    ]);
    let err = replace(
        ReplaceOptions::default(),
        &[SetContents {
            name: "bl",
            elements: &overlapping,
        }],
    )
    .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    unchanged();

    // The kernel refuses the last element of the batch: nothing of it stays, not even the flush.
    let err = replace(ReplaceOptions { fault_inject: true }, &contents).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert!(err.to_string().contains("injected fault"), "{err}");
    unchanged();
    testutil::root_has_no_leash_table();
}
