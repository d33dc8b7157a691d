//! `kernel::SetWriter`, the DNS forwarder's way into timeout sets, and what the kernel does with
//! timed elements: they appear, match packets, expire, are refreshed by a re-add, and a batch with
//! a bad message changes nothing. Also measures the speed of `add_timed`. Needs root; every test
//! works in its own network namespaces (see `kernel::testutil`).

mod common;

use std::net::IpAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use kernel::netns::NetNs;
use kernel::testutil::{self, need_root, nft_raw};
use kernel::{ApplyOptions, ElementCount, Error, Refresh, SetWriter, TimedElement};
use ruleset::*;

/// Two empty timeout sets and a filter chain that drops what they hold (so a UDP send to a member
/// fails with EPERM and one to anything else goes out).
fn table() -> Table {
    Table {
        name: TABLE_NAME.into(),
        comment: None,
        sets: vec![
            timed_set("dom4", SetElements::TimedV4(vec![])),
            timed_set("dom6", SetElements::TimedV6(vec![])),
            set("v4", KeyType::Ipv4Addr, SetElements::V4(vec![])),
        ],
        chains: vec![chain(
            ChainPolicy::Accept,
            vec![
                rule(
                    vec![
                        Stmt::Daddr4(Value::InSet("dom4".into())),
                        Stmt::Counter,
                        Stmt::Drop,
                    ],
                    Some("dom4"),
                ),
                rule(
                    vec![
                        Stmt::Daddr6(Value::InSet("dom6".into())),
                        Stmt::Counter,
                        Stmt::Drop,
                    ],
                    Some("dom6"),
                ),
            ],
        )],
    }
}

/// A namespace with `table()` applied and a writer whose socket lives in it (opened by a thread in
/// the namespace; the socket stays there, whichever thread uses it later).
fn setup() -> (NetNs, SetWriter) {
    let ns = NetNs::new().unwrap();
    ns.run(|| kernel::apply(&table(), &ApplyOptions::default()))
        .unwrap();
    let w = ns.run(SetWriter::open).unwrap();
    (ns, w)
}

fn el<'a>(set: &'a str, addr: &str, timeout_ms: u64) -> TimedElement<'a> {
    TimedElement {
        set,
        addr: addr.parse().unwrap(),
        timeout_ms,
        name: None,
    }
}

/// `nft get element`: is `addr` in the set (and not expired)?
fn has(ns: &NetNs, set: &str, addr: &str) -> bool {
    let elem = format!("{{ {addr} }}");
    let (ok, _, err) = nft_raw(ns, &["get", "element", "inet", "leash", set, &elem], None);
    assert!(
        ok || err.contains("No such file or directory"),
        "nft get element: {err}"
    );
    ok
}

/// What `nft get element` says is left of the element's life, in milliseconds.
fn expires_ms(ns: &NetNs, set: &str, addr: &str) -> u64 {
    let elem = format!("{{ {addr} }}");
    let (ok, out, err) = nft_raw(ns, &["get", "element", "inet", "leash", set, &elem], None);
    assert!(ok, "nft get element {set} {addr}: {err}");
    let at = out
        .find(" expires ")
        .unwrap_or_else(|| panic!("no expires in {out}"));
    parse_duration(&out[at + " expires ".len()..])
}

/// Parses nft's `1h2m3s4ms` up to the first character that is not part of it.
fn parse_duration(s: &str) -> u64 {
    let mut total = 0;
    let mut n = 0u64;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(d) = c.to_digit(10) {
            n = n * 10 + u64::from(d);
            continue;
        }
        let unit = match c {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            'm' => 60_000,
            's' => 1000,
            _ => break,
        };
        total += n * unit;
        n = 0;
    }
    total
}

/// Counts the elements of a set through `kernel::status`.
fn count(ns: &NetNs, set: &str) -> usize {
    let st = ns.run(kernel::status).unwrap().unwrap();
    let s = st.sets.iter().find(|s| s.name == set).unwrap();
    assert!(s.timeout, "set {set} has flags timeout");
    match s.elements {
        ElementCount::Exact(n) => n,
        other => panic!("{other:?}"),
    }
}

/// Sends one UDP datagram from inside `ns`; `Err(errno)` when the output hook dropped it.
fn udp_send(ns: &NetNs, to: &str) -> Result<usize, Option<i32>> {
    let to: IpAddr = to.parse().unwrap();
    ns.run(|| {
        let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = std::net::UdpSocket::bind(any).unwrap();
        s.send_to(b"x", (to, 9)).map_err(|e| e.raw_os_error())
    })
}

/// Makes 192.0.2.0/24 and 2001:db8::/64 local (addresses on lo): datagrams to them pass the output
/// hook and never leave the namespace.
fn local_prefixes(ns: &NetNs) {
    ns.run(|| {
        let mut rt = kernel::rtnl::Rtnl::open().unwrap();
        rt.add_address(1, "192.0.2.254".parse().unwrap(), 24)
            .unwrap();
        rt.add_address(1, "2001:db8::fe".parse().unwrap(), 64)
            .unwrap();
        rt.wait_local("2001:db8::fe".parse().unwrap(), Duration::from_secs(5))
            .unwrap();
    });
}

#[test]
fn added_elements_appear_and_match_packets() {
    if !need_root("added_elements_appear_and_match_packets") {
        return;
    }
    let (ns, mut w) = setup();
    local_prefixes(&ns);
    assert_eq!(udp_send(&ns, "192.0.2.1"), Ok(1));
    let gen_before = w.generation().unwrap();
    // v4 and v6 into two sets, interleaved, in one batch.
    w.add_timed(
        "leash",
        &[
            el("dom4", "192.0.2.1", 60_000),
            el("dom6", "2001:db8::1", 60_000),
            el("dom4", "192.0.2.2", 120_000),
        ],
    )
    .unwrap();
    assert_eq!(
        w.generation().unwrap(),
        gen_before.wrapping_add(1),
        "one batch, one commit"
    );
    assert!(has(&ns, "dom4", "192.0.2.1"));
    assert!(has(&ns, "dom4", "192.0.2.2"));
    assert!(has(&ns, "dom6", "2001:db8::1"));
    assert!(!has(&ns, "dom4", "192.0.2.3"));
    assert!(!has(&ns, "dom6", "2001:db8::2"));
    assert_eq!((count(&ns, "dom4"), count(&ns, "dom6")), (2, 1));
    let left = expires_ms(&ns, "dom4", "192.0.2.2");
    assert!((110_000..=120_000).contains(&left), "{left} ms left");

    // The kernel's lookups see them at once.
    assert_eq!(udp_send(&ns, "192.0.2.1"), Err(Some(libc::EPERM)));
    assert_eq!(udp_send(&ns, "2001:db8::1"), Err(Some(libc::EPERM)));
    assert_eq!(udp_send(&ns, "192.0.2.3"), Ok(1));
    assert_eq!(udp_send(&ns, "2001:db8::3"), Ok(1));
    testutil::root_has_no_leash_table();
}

#[test]
fn elements_expire_after_their_timeout() {
    if !need_root("elements_expire_after_their_timeout") {
        return;
    }
    let (ns, mut w) = setup();
    local_prefixes(&ns);
    w.add_timed(
        "leash",
        &[
            el("dom4", "192.0.2.1", 1000),
            el("dom6", "2001:db8::1", 1000),
            el("dom4", "192.0.2.2", 30_000),
        ],
    )
    .unwrap();
    assert!(has(&ns, "dom4", "192.0.2.1") && has(&ns, "dom6", "2001:db8::1"));
    assert_eq!(udp_send(&ns, "192.0.2.1"), Err(Some(libc::EPERM)));
    sleep(Duration::from_millis(1300));
    assert!(!has(&ns, "dom4", "192.0.2.1"));
    assert!(!has(&ns, "dom6", "2001:db8::1"));
    assert!(has(&ns, "dom4", "192.0.2.2"));
    assert_eq!((count(&ns, "dom4"), count(&ns, "dom6")), (1, 0));
    assert_eq!(
        udp_send(&ns, "192.0.2.1"),
        Ok(1),
        "expired: no longer matches"
    );
    assert_eq!(udp_send(&ns, "2001:db8::1"), Ok(1));
}

/// A re-add of an element that is already there restarts its countdown at the new timeout: longer,
/// equal or shorter (the kernel sets it; it does not keep the larger of the two).
#[test]
fn re_adding_restarts_the_countdown() {
    if !need_root("re_adding_restarts_the_countdown") {
        return;
    }
    // The writer as the forwarder opens it: the refresh mode this kernel needs, probed. On a
    // kernel before 6.10 with the re-add alone, the second half of this test fails (issue 12,
    // item 7: the element keeps its first expiry).
    let (ns, w) = setup();
    re_adding(&ns, w);
}

/// The fallback for kernels before 6.10 (delete and add in one batch), run on whatever kernel
/// this is: it must behave exactly like the in-place refresh.
#[test]
fn delete_and_add_refreshes_like_in_place() {
    if !need_root("delete_and_add_refreshes_like_in_place") {
        return;
    }
    let (ns, _) = setup();
    let w = ns.run(|| SetWriter::open_with(Refresh::DeleteAndAdd)).unwrap();
    assert_eq!(w.refresh(), Refresh::DeleteAndAdd);
    re_adding(&ns, w);
}

/// The probe answers what the kernel really does (nft's own re-add with a longer timeout and an
/// expiration, as the in-place writer sends it), and leaves no table behind.
#[test]
fn the_refresh_probe_matches_the_kernel_and_leaves_nothing_behind() {
    if !need_root("the_refresh_probe_matches_the_kernel_and_leaves_nothing_behind") {
        return;
    }
    let (ns, _) = setup();
    let probed = ns.run(kernel::probe_refresh).unwrap();
    let (ok, tables, err) = nft_raw(&ns, &["list", "tables"], None);
    assert!(ok, "{err}");
    assert_eq!(tables.trim(), "table inet leash", "the probe's table is gone");
    let add = |elem: &str| {
        let e = format!("{{ {elem} }}");
        let (ok, _, err) = nft_raw(&ns, &["add", "element", "inet", "leash", "dom4", &e], None);
        assert!(ok, "nft add element {elem}: {err}");
    };
    add("192.0.2.9 timeout 2s expires 2s");
    add("192.0.2.9 timeout 10m expires 10m");
    let left = expires_ms(&ns, "dom4", "192.0.2.9");
    let in_place = left > 2000;
    eprintln!("kernel {}: re-add refreshes in place: {in_place}; probe: {probed:?}", kernel_release());
    assert_eq!(probed == Refresh::InPlace, in_place, "{left} ms left after a re-add with 10m");
    // Every writer of this process got the same answer.
    let w = ns.run(SetWriter::open).unwrap();
    assert_eq!(w.refresh(), probed);
}

/// Delete and add in one batch keeps the element in the packet path: a sender in the namespace
/// keeps hitting the drop rule for the member while it is refreshed 300 times.
///
/// Not perfectly: the transaction switches generations at once, but a lookup that read the old
/// generation just before the commit and reaches the element's bucket after the commit removed
/// the old element finds neither (the new one belongs to the new generation). Measured in the
/// kernel-matrix VM (6.1 under qemu TCG, which stretches such windows): 1 datagram of 3,898
/// passed during 300 refreshes; 0 on this machine's kernel in every run so far. For an allow
/// set such a packet is denied (fail closed; a TCP connect is refused or retries its SYN), never
/// let through, and the forwarder refreshes an element at most once per half grace period.
#[test]
fn delete_and_add_keeps_the_element_in_the_packet_path() {
    if !need_root("delete_and_add_keeps_the_element_in_the_packet_path") {
        return;
    }
    let (ns, _) = setup();
    local_prefixes(&ns);
    let mut w = ns.run(|| SetWriter::open_with(Refresh::DeleteAndAdd)).unwrap();
    w.add_timed("leash", &[el("dom4", "192.0.2.1", 60_000)]).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (sent, passed) = std::thread::scope(|sc| {
        let sender = sc.spawn(|| {
            ns.run(|| {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                let (mut sent, mut passed) = (0u32, 0u32);
                let t0 = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                    sent += 1;
                    if s.send_to(b"x", ("192.0.2.1", 9)).is_ok() {
                        passed += 1;
                    }
                }
                (sent, passed)
            })
        });
        for i in 0..300u64 {
            w.add_timed("leash", &[el("dom4", "192.0.2.1", 60_000 + i)]).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sender.join().unwrap()
    });
    assert!(sent > 300, "only {sent} datagrams tried");
    eprintln!("kernel {}: {passed} of {sent} datagrams missed the element during 300 refreshes", kernel_release());
    // A window between a lookup and the commit (see above), not a gap: rare, and never long.
    assert!(passed * 100 <= sent, "{passed} of {sent} datagrams passed while the element was refreshed");
    assert_eq!(count(&ns, "dom4"), 1);
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

fn re_adding(ns: &NetNs, mut w: SetWriter) {
    let a = "192.0.2.1";
    // Seconds, not milliseconds: `nft get element` takes a few ms here and a few hundred in the
    // kernel-matrix VM (qemu without KVM), and the bounds must hold on both.
    w.add_timed("leash", &[el("dom4", a, 4000)]).unwrap();
    sleep(Duration::from_millis(2400));
    let before = expires_ms(ns, "dom4", a);
    assert!(before <= 1600, "{before} ms left");
    // Same timeout again: without NFTA_SET_ELEM_EXPIRATION the kernel would not restart it, and
    // before 6.10 a re-add alone restarts nothing.
    let refreshed = Instant::now();
    w.add_timed("leash", &[el("dom4", a, 4000)]).unwrap();
    let after = expires_ms(ns, "dom4", a);
    assert!(after >= 3000, "same timeout re-added: {after} ms left");
    sleep(Duration::from_millis(2400).saturating_sub(refreshed.elapsed()));
    assert!(
        has(ns, "dom4", a),
        "4.8 s after the first add, refreshed at 2.4 s"
    );
    sleep(Duration::from_millis(4300).saturating_sub(refreshed.elapsed()));
    assert!(!has(ns, "dom4", a), "expired 4 s after the refresh");

    // Longer.
    w.add_timed("leash", &[el("dom4", a, 10_000)]).unwrap();
    w.add_timed("leash", &[el("dom4", a, 60_000)]).unwrap();
    let left = expires_ms(ns, "dom4", a);
    assert!(left > 59_000, "longer timeout: {left} ms left");
    // Shorter: the kernel shortens it.
    w.add_timed("leash", &[el("dom4", a, 1000)]).unwrap();
    let left = expires_ms(ns, "dom4", a);
    assert!(left <= 1000, "shorter timeout: {left} ms left");
    sleep(Duration::from_millis(1300));
    assert!(!has(ns, "dom4", a), "the shorter timeout applies");

    // The same address twice in one batch: the later one wins.
    w.add_timed("leash", &[el("dom4", a, 60_000), el("dom4", a, 5000)])
        .unwrap();
    let left = expires_ms(ns, "dom4", a);
    assert!((4000..=5000).contains(&left), "{left} ms left");
    assert_eq!(count(ns, "dom4"), 1);
}

/// The kernel behaviour `SetWriter` relies on, shown with nft itself: from 6.10 on, a re-add with
/// only a timeout restarts the countdown only when the timeout changes, and an explicit
/// expiration always does; before 6.10 neither does anything.
#[test]
fn kernel_restarts_the_countdown_only_for_a_new_timeout_or_an_expiration() {
    if !need_root("kernel_restarts_the_countdown_only_for_a_new_timeout_or_an_expiration") {
        return;
    }
    let (ns, _) = setup();
    let add = |elem: &str| {
        let e = format!("{{ {elem} }}");
        let (ok, _, err) = nft_raw(&ns, &["add", "element", "inet", "leash", "dom4", &e], None);
        assert!(ok, "nft add element {elem}: {err}");
    };
    let a = "192.0.2.1";
    add("192.0.2.1 timeout 10s");
    sleep(Duration::from_millis(2000));
    add("192.0.2.1 timeout 10s");
    let left = expires_ms(&ns, "dom4", a);
    assert!(
        left <= 8100,
        "same timeout, no expiration: not restarted ({left} ms left)"
    );
    add("192.0.2.1 timeout 10s expires 10s");
    let left = expires_ms(&ns, "dom4", a);
    if ns.run(kernel::probe_refresh).unwrap() == Refresh::DeleteAndAdd {
        // Before 6.10 a re-add changes nothing at all, which is why the writer deletes and adds.
        assert!(left <= 8100, "kernel {}: restarted ({left} ms left)", kernel_release());
        return;
    }
    assert!(
        left >= 9000,
        "with an expiration: restarted ({left} ms left)"
    );
    sleep(Duration::from_millis(2000));
    add("192.0.2.1 timeout 20s");
    let left = expires_ms(&ns, "dom4", a);
    assert!(left >= 19_000, "a new timeout: restarted ({left} ms left)");
}

#[test]
fn a_missing_set_fails_the_whole_batch() {
    if !need_root("a_missing_set_fails_the_whole_batch") {
        return;
    }
    let (ns, mut w) = setup();
    let gen_before = w.generation().unwrap();
    let err = w
        .add_timed(
            "leash",
            &[
                el("dom4", "192.0.2.1", 60_000),
                el("nope", "192.0.2.2", 60_000),
                el("dom6", "2001:db8::1", 60_000),
            ],
        )
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("NEWSETELEM for set `nope` of table inet leash (1 element): ENOENT"),
        "{msg}"
    );
    assert!(matches!(err, Error::Rejected { .. }));
    assert!(
        !has(&ns, "dom4", "192.0.2.1"),
        "nothing of the batch is applied"
    );
    assert!(!has(&ns, "dom6", "2001:db8::1"));
    assert_eq!(w.generation().unwrap(), gen_before, "nothing was committed");

    // A missing table, too.
    let err = w
        .add_timed("other", &[el("dom4", "192.0.2.1", 60_000)])
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(
        err.to_string().contains("set `dom4` of table inet other"),
        "{err}"
    );

    // The writer is still usable after errors.
    w.add_timed("leash", &[el("dom4", "192.0.2.1", 60_000)])
        .unwrap();
    assert!(has(&ns, "dom4", "192.0.2.1"));
}

/// Elements the set cannot hold: an IPv6 address in an IPv4 set, a timeout in a set without
/// `flags timeout`. The error names the set and the errno.
#[test]
fn elements_a_set_cannot_hold_are_refused_with_the_set_named() {
    if !need_root("elements_a_set_cannot_hold_are_refused_with_the_set_named") {
        return;
    }
    let (ns, mut w) = setup();
    let err = w
        .add_timed("leash", &[el("dom4", "2001:db8::1", 60_000)])
        .unwrap_err();
    eprintln!("v6 address into an ipv4_addr set: {err}");
    assert!(err.errno().is_some(), "{err}");
    assert!(err.to_string().contains("set `dom4`"), "{err}");
    let err = w
        .add_timed("leash", &[el("v4", "192.0.2.1", 60_000)])
        .unwrap_err();
    eprintln!("timed element into a set without flags timeout: {err}");
    assert!(err.errno().is_some(), "{err}");
    assert!(err.to_string().contains("set `v4`"), "{err}");
    assert_eq!(count(&ns, "dom4"), 0);
}

/// `apply` checks a timeout set's type and flags but not its element count: elements may expire
/// between the commit and the read-back (here: 1 ms timeouts), and the forwarder may add more.
/// Replacing the table does not disturb a writer: it names the table in every batch.
#[test]
fn apply_verifies_timeout_sets_without_counting_and_writers_survive_a_reapply() {
    if !need_root("apply_verifies_timeout_sets_without_counting_and_writers_survive_a_reapply") {
        return;
    }
    let (ns, mut w) = setup();
    let mut t = table();
    t.sets[0].elements = SetElements::TimedV4(
        (1..=200u32)
            .map(|i| TimedAddr::new(std::net::Ipv4Addr::from(0xc000_0200 + i), 1, None))
            .collect(),
    );
    t.sets[1].elements = SetElements::TimedV6(vec![TimedAddr::new("2001:db8::7".parse().unwrap(), 60_000, None)]);
    ns.run(|| kernel::apply(&t, &ApplyOptions::default()))
        .unwrap();
    sleep(Duration::from_millis(20));
    assert_eq!(count(&ns, "dom4"), 0, "1 ms elements are gone");
    assert_eq!(count(&ns, "dom6"), 1);
    w.add_timed("leash", &[el("dom4", "198.51.100.1", 60_000)])
        .unwrap();
    assert!(has(&ns, "dom4", "198.51.100.1"));
    // A reapply replaces the sets (and drops what the writer added); the writer goes on.
    ns.run(|| kernel::apply(&table(), &ApplyOptions::default()))
        .unwrap();
    assert!(!has(&ns, "dom4", "198.51.100.1"));
    w.add_timed("leash", &[el("dom4", "198.51.100.1", 60_000)])
        .unwrap();
    assert!(has(&ns, "dom4", "198.51.100.1"));
}

/// Speed of the forwarder's path: one element per call (what one DNS answer costs), and large
/// batches (several NEWSETELEM messages per set, still one commit).
#[test]
fn add_timed_is_fast() {
    if !need_root("add_timed_is_fast") {
        return;
    }
    let (ns, mut w) = setup();
    let addrs: Vec<String> = (0..20_000u32)
        .map(|i| std::net::Ipv4Addr::from(0xc612_0000 + i).to_string()) // 198.18.0.0/15
        .collect();
    let mut times = Vec::with_capacity(2000);
    for a in addrs.iter().take(2000) {
        let t = Instant::now();
        w.add_timed("leash", &[el("dom4", a, 60_000)]).unwrap();
        times.push(t.elapsed());
    }
    // Refreshing what is there costs the same.
    let t = Instant::now();
    for a in addrs.iter().take(2000) {
        w.add_timed("leash", &[el("dom4", a, 90_000)]).unwrap();
    }
    let refresh = t.elapsed() / 2000;
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    eprintln!(
        "add_timed, 1 element per call: p50 {:?}, p99 {:?}, max {:?}; refresh p-mean {refresh:?}",
        p(0.5),
        p(0.99),
        times[times.len() - 1]
    );

    let gen_before = w.generation().unwrap();
    let big: Vec<TimedElement<'_>> = addrs[2000..]
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut e = el("dom4", a, 60_000);
            if i % 2 == 1 {
                // Half of them into the v6 set, as v4-mapped addresses.
                e.set = "dom6";
                e.addr = IpAddr::V6(a.parse::<std::net::Ipv4Addr>().unwrap().to_ipv6_mapped());
            }
            e
        })
        .collect();
    let t = Instant::now();
    w.add_timed("leash", &big).unwrap();
    eprintln!(
        "add_timed, {} elements in 2 sets in one call: {:?}",
        big.len(),
        t.elapsed()
    );
    assert_eq!(w.generation().unwrap(), gen_before.wrapping_add(1));
    assert_eq!(count(&ns, "dom4"), 2000 + 9000);
    assert_eq!(count(&ns, "dom6"), 9000);
    assert!(has(&ns, "dom6", "::ffff:198.18.78.31"));
}

/// The handle of the table in `ns` now.
fn handle(ns: &NetNs) -> u64 {
    ns.run(|| kernel::table_comment(TABLE_NAME)).unwrap().unwrap().handle
}

/// Issue 12, item 2: a batch decided for one applied table must never land in the table that
/// replaced it, even with the same set names. `add_timed_to` binds the batch to the table's
/// handle through the ruleset generation; `add_timed` (by name only) lands anywhere.
#[test]
fn a_batch_for_a_replaced_table_never_lands_in_the_new_one() {
    if !need_root("a_batch_for_a_replaced_table_never_lands_in_the_new_one") {
        return;
    }
    let (ns, mut w) = setup();
    assert!(w.probe_generation_check().unwrap(), "this kernel checks NFNL_BATCH_GENID");
    let old = handle(&ns);
    w.add_timed_to(TABLE_NAME, old, &[el("dom4", "192.0.2.1", 60_000)]).unwrap();
    assert!(has(&ns, "dom4", "192.0.2.1"));
    // Re-applied (another policy with the same set names): a new handle.
    ns.run(|| kernel::apply(&table(), &ApplyOptions::default())).unwrap();
    let new = handle(&ns);
    assert_ne!(old, new);
    let gen_before = w.generation().unwrap();
    // The writer's guess of the generation is stale: the kernel refuses the batch, the writer
    // looks again, finds another table and gives up without adding anything.
    let e = w.add_timed_to(TABLE_NAME, old, &[el("dom4", "192.0.2.2", 60_000)]).unwrap_err();
    assert!(matches!(e, Error::TableReplaced { expected, found: Some(f), .. } if expected == old && f == new), "{e}");
    assert!(!has(&ns, "dom4", "192.0.2.2"), "an element of the old table's decision landed in the new one");
    assert_eq!(w.generation().unwrap(), gen_before, "nothing was committed");
    // Asked again (now the check comes first), the same answer.
    assert!(matches!(w.add_timed_to(TABLE_NAME, old, &[el("dom4", "192.0.2.3", 1000)]), Err(Error::TableReplaced { .. })));
    // The new table's handle works, and a table that is gone is reported as such.
    w.add_timed_to(TABLE_NAME, new, &[el("dom4", "192.0.2.4", 60_000)]).unwrap();
    assert!(has(&ns, "dom4", "192.0.2.4"));
    ns.run(kernel::disable).unwrap();
    let e = w.add_timed_to(TABLE_NAME, new, &[el("dom4", "192.0.2.5", 60_000)]).unwrap_err();
    assert!(matches!(e, Error::TableReplaced { found: None, .. }), "{e}");
}

/// Other commits between two batches (another writer, `leash set update`, Docker's iptables)
/// only make the writer look again: same handle, the batch goes in.
#[test]
fn commits_by_others_in_between_cost_a_check_not_the_batch() {
    if !need_root("commits_by_others_in_between_cost_a_check_not_the_batch") {
        return;
    }
    let (ns, mut w) = setup();
    let mut other = ns.run(SetWriter::open).unwrap();
    let h = handle(&ns);
    let g0 = w.generation().unwrap();
    w.add_timed_to(TABLE_NAME, h, &[el("dom4", "192.0.2.1", 60_000)]).unwrap();
    // The writer knows the next generation after its own commit: the next batch needs no look.
    w.add_timed_to(TABLE_NAME, h, &[el("dom4", "192.0.2.2", 60_000)]).unwrap();
    assert_eq!(w.generation().unwrap(), g0.wrapping_add(2));
    other.add_timed(TABLE_NAME, &[el("dom6", "2001:db8::1", 60_000)]).unwrap();
    w.add_timed_to(TABLE_NAME, h, &[el("dom4", "192.0.2.3", 60_000)]).unwrap();
    assert_eq!(w.generation().unwrap(), g0.wrapping_add(4));
    for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        assert!(has(&ns, "dom4", a), "{a}");
    }
}

/// Issue 12, item 15: a domain set has a size; the kernel refuses the element beyond it (ENFILE,
/// nothing of the batch goes in) and takes a refresh of one already there.
#[test]
fn a_full_bounded_set_refuses_new_elements_with_enfile() {
    if !need_root("a_full_bounded_set_refuses_new_elements_with_enfile") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let mut t = table();
    t.sets[0].size = Some(2);
    ns.run(|| kernel::apply(&t, &ApplyOptions::default())).unwrap();
    let mut w = ns.run(SetWriter::open).unwrap();
    let h = handle(&ns);
    w.add_timed_to(TABLE_NAME, h, &[el("dom4", "192.0.2.1", 60_000), el("dom4", "192.0.2.2", 60_000)]).unwrap();
    let e = w.add_timed_to(TABLE_NAME, h, &[el("dom4", "192.0.2.3", 60_000)]).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENFILE), "{e}");
    assert!(!has(&ns, "dom4", "192.0.2.3"));
    assert_eq!(count(&ns, "dom4"), 2);
    // A refresh of an element that is there is not a new element.
    w.add_timed_to(TABLE_NAME, h, &[el("dom4", "192.0.2.1", 90_000)]).unwrap();
    // Once an element expired and the kernel's garbage collection (about every second) took it
    // away, there is room again.
    w.add_timed_to(TABLE_NAME, h, &[el("dom4", "192.0.2.2", 1000)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sleep(Duration::from_millis(250));
        match w.add_timed_to(TABLE_NAME, h, &[el("dom4", "192.0.2.3", 60_000)]) {
            Ok(()) => break,
            Err(e) if e.errno() == Some(libc::ENFILE) && Instant::now() < deadline => continue,
            Err(e) => panic!("no room 10 s after an element expired: {e}"),
        }
    }
    assert!(has(&ns, "dom4", "192.0.2.3"));
}
