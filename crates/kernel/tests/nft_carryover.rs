//! What `leash apply` needs to carry the DNS forwarder's elements over a re-apply, and what the
//! forwarder polls to notice one: `kernel::timed_elements` (the addresses of a timeout set with
//! the time each has left) and `kernel::table_comment` (the table's handle and comment); and
//! `kernel::set_elements`, the plain listing of any set's elements. Needs root; every test works
//! in its own network namespace (see `kernel::testutil`).

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use kernel::netns::NetNs;
use kernel::testutil::{self, need_root, nft_load};
use kernel::{ApplyOptions, SetElement, SetWriter, TableInfo, TimedElement};
use ruleset::*;

/// A namespace with `table` applied.
fn applied(table: &Table) -> NetNs {
    let ns = NetNs::new().unwrap();
    ns.run(|| kernel::apply(table, &ApplyOptions::default()))
        .unwrap();
    ns
}

fn el<'a>(set: &'a str, addr: &str, timeout_ms: u64) -> TimedElement<'a> {
    TimedElement {
        set,
        addr: addr.parse().unwrap(),
        timeout_ms,
        name: None,
    }
}

/// `timed_elements` of table leash inside `ns`, which must exist, as a map.
fn timed(ns: &NetNs, set: &str) -> BTreeMap<IpAddr, u64> {
    let v = ns
        .run(|| kernel::timed_elements(TABLE_NAME, set))
        .unwrap()
        .unwrap_or_else(|| panic!("set {set} exists"));
    let n = v.len();
    let m: BTreeMap<IpAddr, u64> = v.into_iter().map(|e| (e.addr, e.left_ms)).collect();
    assert_eq!(m.len(), n, "one entry per address");
    m
}

/// Asserts that `addr` is listed with at most `timeout_ms` and more than `timeout_ms` - 2 s left
/// (the time since it was added, with room for a loaded machine).
fn assert_left(got: &BTreeMap<IpAddr, u64>, addr: &str, timeout_ms: u64) {
    let a: IpAddr = addr.parse().unwrap();
    let left = *got
        .get(&a)
        .unwrap_or_else(|| panic!("{addr} missing from {got:?}"));
    assert!(
        left <= timeout_ms && left > timeout_ms.saturating_sub(2000),
        "{addr}: {left} ms left, added with {timeout_ms} ms"
    );
}

fn info(ns: &NetNs) -> Option<TableInfo> {
    ns.run(|| kernel::table_comment(TABLE_NAME)).unwrap()
}

/// Elements added by apply (the model's timed elements) and by a writer, IPv4 and IPv6, each with
/// the time it has left; an expired element is not listed.
#[test]
fn timed_elements_lists_each_address_with_its_time_left() {
    if !need_root("timed_elements_lists_each_address_with_its_time_left") {
        return;
    }
    let ns = applied(&dns_redirect().0);
    let mut w = ns.run(SetWriter::open).unwrap();
    w.add_timed(
        TABLE_NAME,
        &[
            el("dom4", "192.0.2.1", 10_000),
            el("dom4", "203.0.113.200", 86_400_000),
            el("dom6", "2001:db8::53", 45_000),
            el("empty6", "2001:db8:1::1", 600_000),
            el("empty4", "198.51.100.1", 300),
        ],
    )
    .unwrap();

    let dom4 = timed(&ns, "dom4");
    assert_eq!(dom4.len(), 5, "{dom4:?}");
    // From the model (dns_redirect's dom4).
    assert_left(&dom4, "198.51.100.9", 3_600_000);
    assert_left(&dom4, "192.0.2.7", 300_000);
    assert_left(&dom4, "203.0.113.1", 93_784_500);
    // From the writer.
    assert_left(&dom4, "192.0.2.1", 10_000);
    assert_left(&dom4, "203.0.113.200", 86_400_000);

    let dom6 = timed(&ns, "dom6");
    assert_eq!(dom6.len(), 3, "{dom6:?}");
    assert_left(&dom6, "2001:db8::9", 30_000);
    assert_left(&dom6, "2001:db8::1", 7_200_000);
    assert_left(&dom6, "2001:db8::53", 45_000);
    let empty6 = timed(&ns, "empty6");
    assert_eq!(empty6.len(), 1);
    assert_left(&empty6, "2001:db8:1::1", 600_000);
    // Sorted by address.
    let keys: Vec<IpAddr> = dom4.keys().copied().collect();
    let listed: Vec<IpAddr> = ns
        .run(|| kernel::timed_elements(TABLE_NAME, "dom4"))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| e.addr)
        .collect();
    assert_eq!(listed, keys);

    // The time goes down.
    sleep(Duration::from_millis(400));
    let later = timed(&ns, "dom4");
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(
        later[&a] <= dom4[&a] - 300,
        "{} then {}",
        dom4[&a],
        later[&a]
    );
    // 300 ms elapsed: gone, even if the kernel has not removed it yet.
    assert!(timed(&ns, "empty4").is_empty());
    testutil::root_has_no_leash_table();
}

/// `None` for a set or table that does not exist, an empty list for an empty set, and elements
/// that never expire are left out.
#[test]
fn timed_elements_is_none_without_the_set_or_the_table() {
    if !need_root("timed_elements_is_none_without_the_set_or_the_table") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let read = |table: &'static str, set: &'static str| {
        ns.run(move || kernel::timed_elements(table, set)).unwrap()
    };
    assert_eq!(read(TABLE_NAME, "dom4"), None, "no table at all");
    let (table, _) = dns_redirect();
    ns.run(|| kernel::apply(&table, &ApplyOptions::default()))
        .unwrap();
    assert_eq!(read(TABLE_NAME, "nope"), None, "missing set");
    assert_eq!(read("nope", "dom4"), None, "missing table");
    assert_eq!(read(TABLE_NAME, "empty4"), Some(vec![]));

    // Elements without a timeout: in a timeout set without a default timeout (never expires),
    // and in a set without `flags timeout`. With a set default timeout, the kernel leaves out
    // the element's NFTA_SET_ELEM_TIMEOUT but still gives the expiration.
    nft_load(
        &ns,
        r#"table inet other {
  set forever { type ipv4_addr; flags timeout; elements = { 192.0.2.1, 192.0.2.2 timeout 1m } }
  set plain { type ipv6_addr; elements = { 2001:db8::1 } }
  set dflt { type ipv4_addr; flags timeout; timeout 1m; elements = { 192.0.2.3 } }
}
"#,
    );
    let v = read("other", "forever").unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].addr, "192.0.2.2".parse::<IpAddr>().unwrap());
    assert!(v[0].left_ms <= 60_000 && v[0].left_ms > 58_000, "{v:?}");
    assert_eq!(read("other", "plain"), Some(vec![]));
    let v = read("other", "dflt").unwrap();
    assert!(v.len() == 1 && v[0].left_ms <= 60_000 && v[0].left_ms > 58_000, "{v:?}");
    // Not an address set: an error, not a guess.
    nft_load(
        &ns,
        r#"table inet other {
  set ports { type inet_service; flags timeout; elements = { 53 timeout 1m } }
}
"#,
    );
    let err = ns
        .run(|| kernel::timed_elements("other", "ports"))
        .unwrap_err();
    assert!(
        err.to_string().contains("not an IPv4 or IPv6 address"),
        "{err}"
    );
    testutil::root_has_no_leash_table();
}

/// The use: read the forwarder's elements, re-apply the table with them (time left as timeout),
/// and they are there again with the same time left, while the handle tells the re-apply.
#[test]
fn elements_carried_over_a_reapply_keep_their_time() {
    if !need_root("elements_carried_over_a_reapply_keep_their_time") {
        return;
    }
    let (mut table, _) = dns_redirect();
    let ns = applied(&table);
    let before_apply = info(&ns).unwrap();
    let mut w = ns.run(SetWriter::open).unwrap();
    w.add_timed(
        TABLE_NAME,
        &[
            el("dom4", "192.0.2.50", 120_000),
            el("dom6", "2001:db8::50", 240_000),
        ],
    )
    .unwrap();
    let dom4 = timed(&ns, "dom4");
    let dom6 = timed(&ns, "dom6");
    let v4: Vec<TimedAddr<Ipv4Addr>> = dom4
        .iter()
        .map(|(a, &ms)| match a {
            IpAddr::V4(a) => TimedAddr::new(*a, ms, None),
            IpAddr::V6(_) => panic!("{a} in an ipv4_addr set"),
        })
        .collect();
    let v6: Vec<TimedAddr<Ipv6Addr>> = dom6
        .iter()
        .map(|(a, &ms)| match a {
            IpAddr::V6(a) => TimedAddr::new(*a, ms, None),
            IpAddr::V4(_) => panic!("{a} in an ipv6_addr set"),
        })
        .collect();
    table.sets[0].elements = SetElements::TimedV4(v4);
    table.sets[1].elements = SetElements::TimedV6(v6);
    ns.run(|| kernel::apply(&table, &ApplyOptions::default()))
        .unwrap();
    assert_ne!(info(&ns).unwrap().handle, before_apply.handle);
    let again4 = timed(&ns, "dom4");
    let again6 = timed(&ns, "dom6");
    assert_eq!(again4.len(), dom4.len());
    assert_eq!(again6.len(), dom6.len());
    for (a, ms) in dom4.iter().chain(&dom6) {
        assert_left(
            if a.is_ipv4() { &again4 } else { &again6 },
            &a.to_string(),
            *ms,
        );
    }
    testutil::root_has_no_leash_table();
}

/// Handle and comment: a re-apply of the same table gives a new handle, a new comment shows, and
/// after `disable` there is no table.
#[test]
fn table_comment_gives_the_handle_and_the_comment() {
    if !need_root("table_comment_gives_the_handle_and_the_comment") {
        return;
    }
    let ns = NetNs::new().unwrap();
    assert_eq!(info(&ns), None);
    let (mut table, _) = dns_redirect();
    table.comment = Some("policy sha256:0123abcd".into());
    ns.run(|| kernel::apply(&table, &ApplyOptions::default()))
        .unwrap();
    let first = info(&ns).unwrap();
    assert_eq!(first.comment.as_deref(), Some("policy sha256:0123abcd"));
    assert_eq!(
        info(&ns).unwrap(),
        first,
        "nothing changed, nothing differs"
    );

    ns.run(|| kernel::apply(&table, &ApplyOptions::default()))
        .unwrap();
    let second = info(&ns).unwrap();
    assert_ne!(second.handle, first.handle, "a re-apply makes a new table");
    assert_eq!(second.comment, first.comment);

    // A failed apply changes nothing, not even the handle.
    let err = ns
        .run(|| kernel::apply(&table, &ApplyOptions { fault_inject: true }))
        .unwrap_err();
    assert!(matches!(err, kernel::Error::Rejected { .. }), "{err}");
    assert_eq!(info(&ns).unwrap(), second);

    table.comment = Some("policy sha256:4567cdef".into());
    ns.run(|| kernel::apply(&table, &ApplyOptions::default()))
        .unwrap();
    let third = info(&ns).unwrap();
    assert_eq!(third.comment.as_deref(), Some("policy sha256:4567cdef"));
    assert_ne!(third.handle, second.handle);

    table.comment = None;
    ns.run(|| kernel::apply(&table, &ApplyOptions::default()))
        .unwrap();
    assert_eq!(info(&ns).unwrap().comment, None);

    // Any table name, e.g. one made by nft.
    nft_load(&ns, "table inet other { comment \"by hand\"; }\n");
    let other = ns.run(|| kernel::table_comment("other")).unwrap().unwrap();
    assert_eq!(other.comment.as_deref(), Some("by hand"));

    assert!(ns.run(kernel::disable).unwrap());
    assert_eq!(info(&ns), None);
    assert!(ns.run(|| kernel::table_comment("other")).unwrap().is_some());
    testutil::root_has_no_leash_table();
}

/// 20,000 IPv6 elements, added in one call: all come back, each with its own time. Reports how
/// long the dump takes (it grows with the square of the set's size, see `kernel::timed_elements`).
/// IPv4 gets the 768 addresses of the three documentation /24s (tests use no others).
#[test]
fn timed_elements_lists_20000_elements() {
    if !need_root("timed_elements_lists_20000_elements") {
        return;
    }
    let ns = applied(&dns_redirect().0);
    let mut w = ns.run(SetWriter::open).unwrap();
    let v6: Vec<TimedElement<'_>> = (0..20_000u32)
        .map(|i| TimedElement {
            set: "empty6",
            addr: IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(i))),
            timeout_ms: 600_000 + u64::from(i) * 1000,
            name: None,
        })
        .collect();
    let v4: Vec<TimedElement<'_>> = [[192, 0, 2], [198, 51, 100], [203, 0, 113]]
        .iter()
        .flat_map(|&[a, b, c]| (0..=255u8).map(move |d| Ipv4Addr::new(a, b, c, d)))
        .enumerate()
        .map(|(i, a)| TimedElement {
            set: "empty4",
            addr: IpAddr::V4(a),
            timeout_ms: 600_000 + i as u64 * 1000,
            name: None,
        })
        .collect();
    let t = Instant::now();
    w.add_timed(TABLE_NAME, &v6).unwrap();
    let added = t.elapsed();
    w.add_timed(TABLE_NAME, &v4).unwrap();
    for (set, want) in [("empty6", &v6), ("empty4", &v4)] {
        let t = Instant::now();
        let got = ns
            .run(|| kernel::timed_elements(TABLE_NAME, set))
            .unwrap()
            .unwrap();
        let took = t.elapsed();
        eprintln!(
            "timed_elements: {} elements of set {set} in {took:?} \
             (adding the 20,000 IPv6 took {added:?})",
            got.len()
        );
        assert_eq!(got.len(), want.len());
        let got: BTreeMap<IpAddr, u64> = got.into_iter().map(|e| (e.addr, e.left_ms)).collect();
        for e in want.iter() {
            let left = got[&e.addr];
            assert!(
                left <= e.timeout_ms && left > e.timeout_ms - 10_000,
                "{}: {left} ms left of {}",
                e.addr,
                e.timeout_ms
            );
        }
    }
    testutil::root_has_no_leash_table();
}

/// `set_elements` lists every element of any table's set as the kernel stores it: the keys of an
/// interval set with its end elements flagged, and the timeouts of a timeout set.
#[test]
fn set_elements_lists_keys_interval_ends_and_timeouts() {
    if !need_root("set_elements_lists_keys_interval_ends_and_timeouts") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let list = |table: &'static str, set: &'static str| {
        ns.run(move || kernel::set_elements(table, set)).unwrap()
    };
    assert_eq!(list("other", "ivl"), None, "no table at all");
    nft_load(
        &ns,
        r#"table inet other {
  set ivl { type ipv4_addr; flags interval; elements = { 10.0.0.0/24, 192.0.2.7 } }
  set tmo { type ipv4_addr; flags timeout; elements = { 198.51.100.1 timeout 1m, 198.51.100.2 } }
  set none { type ipv6_addr; }
}
"#,
    );
    assert_eq!(list("other", "nope"), None, "missing set");
    assert_eq!(list("other", "none"), Some(vec![]));
    let mut ivl: Vec<(Ipv4Addr, bool)> = list("other", "ivl")
        .unwrap()
        .into_iter()
        .map(|e| {
            assert_eq!((e.timeout_ms, e.expires_ms), (None, None), "{e:?}");
            (<[u8; 4]>::try_from(e.key).unwrap().into(), e.interval_end)
        })
        .collect();
    ivl.sort();
    // nft's interval encoding: a start and an end (the first address after the range) per range,
    // and the zero-key end element before the first range.
    assert_eq!(
        ivl,
        vec![
            (v4("0.0.0.0"), true),
            (v4("10.0.0.0"), false),
            (v4("10.0.1.0"), true),
            (v4("192.0.2.7"), false),
            (v4("192.0.2.8"), true),
        ]
    );
    let mut tmo = list("other", "tmo").unwrap();
    tmo.sort_by(|a, b| a.key.cmp(&b.key));
    let [timed, forever] = tmo.as_slice() else {
        panic!("{tmo:?}");
    };
    assert_eq!(timed.key, vec![198, 51, 100, 1]);
    assert_eq!(timed.timeout_ms, Some(60_000));
    assert!(
        timed.expires_ms.is_some_and(|ms| ms <= 60_000 && ms > 58_000),
        "{timed:?}"
    );
    assert!(!timed.interval_end);
    assert_eq!(
        forever,
        &SetElement {
            key: vec![198, 51, 100, 2],
            interval_end: false,
            timeout_ms: None,
            expires_ms: None,
            comment: None,
        }
    );
    testutil::root_has_no_leash_table();
}
