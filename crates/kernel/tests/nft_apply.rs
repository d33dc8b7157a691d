//! apply / disable / status against the kernel, each test in its own network namespaces. Needs
//! root (see `kernel::testutil::need_root`).

mod common;

use std::net::{TcpListener, TcpStream};

use common::*;
use kernel::netns::NetNs;
use kernel::testutil::{self, list_leash, need_root, nft_load};
use kernel::{ApplyOptions, ElementCount, Error};
use ruleset::*;

fn fault() -> ApplyOptions {
    ApplyOptions { fault_inject: true }
}

#[test]
fn apply_replaces_the_previous_table() {
    if !need_root("apply_replaces_the_previous_table") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let (first, _) = every_stmt();
    let (second, second_text) = big_v4(10);
    ns.run(|| kernel::apply(&first, &ApplyOptions::default()))
        .unwrap();
    let report = ns
        .run(|| kernel::apply(&second, &ApplyOptions::default()))
        .unwrap();
    assert_eq!(report.elements, 10);
    assert_eq!(
        report.messages, 9,
        "BEGIN, NEWTABLE, DELTABLE, NEWTABLE, NEWSET, NEWSETELEM, NEWCHAIN, NEWRULE, END"
    );
    let oracle = NetNs::new().unwrap();
    nft_load(&oracle, &second_text);
    assert_eq!(list_leash(&ns), list_leash(&oracle));
    testutil::root_has_no_leash_table();
}

#[test]
fn a_failing_batch_leaves_the_previous_table_intact() {
    if !need_root("a_failing_batch_leaves_the_previous_table_intact") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let (first, _) = every_stmt();
    let (second, _) = big_v4(1000);
    ns.run(|| kernel::apply(&first, &ApplyOptions::default()))
        .unwrap();
    let before = list_leash(&ns).unwrap();
    let err = ns.run(|| kernel::apply(&second, &fault())).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with("NEWRULE for the injected fault"), "{msg}");
    assert!(msg.contains("ENOENT"), "{msg}");
    assert_eq!(
        list_leash(&ns).unwrap(),
        before,
        "the aborted batch changed the table"
    );

    // Without a previous table, nothing at all is left behind (the NEWTABLE is rolled back too).
    let empty = NetNs::new().unwrap();
    assert!(matches!(
        empty.run(|| kernel::apply(&second, &fault())),
        Err(Error::Rejected { .. })
    ));
    assert_eq!(list_leash(&empty), None);
    assert_eq!(empty.run(kernel::status).unwrap(), None);
}

#[test]
fn disable_deletes_only_the_leash_table() {
    if !need_root("disable_deletes_only_the_leash_table") {
        return;
    }
    let ns = NetNs::new().unwrap();
    nft_load(
        &ns,
        "table inet other {\n  chain c {\n    type filter hook output priority 10\n    counter\n  }\n}\n",
    );
    assert!(!ns.run(kernel::disable).unwrap(), "no leash table yet");
    let (table, _) = every_stmt();
    ns.run(|| kernel::apply(&table, &ApplyOptions::default()))
        .unwrap();
    assert!(ns.status_is_some());
    assert!(ns.run(kernel::disable).unwrap());
    assert_eq!(list_leash(&ns), None);
    assert_eq!(ns.run(kernel::status).unwrap(), None);
    assert!(!ns.run(kernel::disable).unwrap());
    let (ok, other, _) = testutil::nft_raw(&ns, &["list", "table", "inet", "other"], None);
    assert!(
        ok && other.contains("counter"),
        "table inet other must survive: {other}"
    );
}

trait StatusExt {
    fn status_is_some(&self) -> bool;
}

impl StatusExt for NetNs {
    fn status_is_some(&self) -> bool {
        self.run(kernel::status).unwrap().is_some()
    }
}

#[test]
fn status_reports_rules_sets_and_counters_that_grow_with_traffic() {
    if !need_root("status_reports_rules_sets_and_counters_that_grow_with_traffic") {
        return;
    }
    let (mut table, _) = every_stmt();
    // Count loopback traffic first; the rest of the table stays as it is.
    let lo = rule(
        vec![Stmt::OifLoopback, Stmt::Counter, Stmt::Accept],
        Some("loopback"),
    );
    table.chains[0].rules[0] = lo;
    let ns = NetNs::new().unwrap();
    ns.run(|| kernel::apply(&table, &ApplyOptions::default()))
        .unwrap();

    let before = ns.run(kernel::status).unwrap().unwrap();
    assert_eq!(before.comment.as_deref(), Some("policy sha256:0123abcd"));
    assert_eq!(before.chains.len(), 1);
    let chain = &before.chains[0];
    assert_eq!(
        (
            chain.name.as_str(),
            chain.hook,
            chain.priority,
            chain.policy
        ),
        (
            "output",
            Some(Hook::Output),
            Some(0),
            Some(ChainPolicy::Drop)
        )
    );
    let comments: Vec<Option<&str>> = chain.rules.iter().map(|r| r.comment.as_deref()).collect();
    let want: Vec<Option<&str>> = table.chains[0]
        .rules
        .iter()
        .map(|r| r.comment.as_deref())
        .collect();
    assert_eq!(comments, want);
    assert!(
        chain.rules.windows(2).all(|w| w[0].handle < w[1].handle),
        "handles increase in rule order"
    );
    assert_eq!(
        chain.rules[0].counter,
        Some(kernel::Counter {
            packets: 0,
            bytes: 0
        })
    );
    assert_eq!(chain.rules[1].counter, None, "ct state rule has no counter");
    let sets: Vec<(&str, Option<KeyType>, bool, ElementCount)> = before
        .sets
        .iter()
        .map(|s| (s.name.as_str(), s.key, s.interval, s.elements))
        .collect();
    assert_eq!(
        sets,
        vec![
            ("v4", Some(KeyType::Ipv4Addr), true, ElementCount::Exact(3)),
            ("v6", Some(KeyType::Ipv6Addr), true, ElementCount::Exact(2)),
            (
                "ports",
                Some(KeyType::InetService),
                true,
                ElementCount::Exact(3)
            ),
            ("uids", Some(KeyType::Uid), false, ElementCount::Exact(2)),
            ("gids", Some(KeyType::Gid), false, ElementCount::Exact(2)),
            (
                "icmp6",
                Some(KeyType::Icmpv6Type),
                false,
                ElementCount::Exact(4)
            ),
        ]
    );

    // A TCP connection over loopback inside the namespace: both directions leave through lo.
    ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        drop((c, s));
    });
    let after = ns.run(kernel::status).unwrap().unwrap();
    let c = after.chains[0].rules[0].counter.unwrap();
    assert!(
        c.packets >= 3 && c.bytes >= 3 * 40,
        "loopback counter after a TCP handshake: {c:?}"
    );
    assert_eq!(after.chains[0].rules[0].handle, chain.rules[0].handle);
    testutil::root_has_no_leash_table();
}

/// A million ranges in one batch (one sendmsg of about 40 MB): applied, verified by sample, and
/// the datapath drops a packet to the last range and passes one just past it. (No `nft` here:
/// nft reads a whole interval set into its cache first, which takes minutes at this size.)
#[test]
fn one_million_elements_apply_in_one_batch() {
    if !need_root("one_million_elements_apply_in_one_batch") {
        return;
    }
    let (mut table, _) = big_v4(999_999);
    let SetElements::V4(r) = &mut table.sets[0].elements else {
        unreachable!()
    };
    r.push((v4("203.0.113.0"), v4("203.0.113.1")));
    let ns = NetNs::new().unwrap();
    let report = ns
        .run(|| kernel::apply(&table, &ApplyOptions::default()))
        .unwrap();
    eprintln!(
        "1M ranges: send+ack {:?}, verify {:?}, {} messages, {} bytes",
        report.send_and_ack, report.verify, report.messages, report.bytes
    );
    assert_eq!(report.elements, 1_000_000);
    assert_eq!(report.sampled_sets, 1);
    assert!(report.bytes > 30_000_000);

    // 203.0.113.2/24 on lo makes the whole /24 local: datagrams to it go out through lo and
    // never leave the namespace, but pass the output hook. (The port-unreachable answer to the
    // second one goes to 203.0.113.2, which is not in the set either.)
    let sent = ns.run(|| {
        let mut rt = kernel::rtnl::Rtnl::open().unwrap();
        rt.add_address(1, "203.0.113.2".parse().unwrap(), 24)
            .unwrap();
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let blocked = s
            .send_to(b"x", "203.0.113.1:9")
            .map_err(|e| e.raw_os_error());
        let passed = s
            .send_to(b"x", "203.0.113.200:9")
            .map_err(|e| e.raw_os_error());
        (blocked, passed)
    });
    assert_eq!(
        sent,
        (Err(Some(libc::EPERM)), Ok(1)),
        "drop in the output hook fails a UDP send with EPERM"
    );
    let status = ns.run(kernel::status).unwrap().unwrap();
    assert!(
        matches!(status.sets[0].elements, ElementCount::AtLeast(n) if n > kernel::nft::COUNT_LIMIT)
    );
    assert_eq!(
        status.chains[0].rules[0].counter.map(|c| c.packets),
        Some(1)
    );
}

/// Without CAP_NET_ADMIN the error says what to do. Capabilities are per thread, so a thread of
/// our own drops it from its effective set and tries.
#[test]
fn without_cap_net_admin_the_error_says_run_as_root() {
    if !need_root("without_cap_net_admin_the_error_says_run_as_root") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let (table, _) = big_v4(3);
    let err = ns.run(|| {
        drop_effective_cap_net_admin();
        kernel::apply(&table, &ApplyOptions::default())
    });
    let err = err.unwrap_err();
    assert_eq!(err.errno(), Some(libc::EPERM), "{err}");
    assert!(
        err.to_string()
            .contains("EPERM: Operation not permitted (run as root"),
        "{err}"
    );
    assert_eq!(list_leash(&ns), None);
}

/// Clears CAP_NET_ADMIN from the calling thread's effective capabilities (capset(2) acts on the
/// calling thread only).
fn drop_effective_cap_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut h = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: header and a two-element data array, as capget(2) wants for version 3.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) },
        0
    );
    d[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capset, &h, d.as_ptr()) },
        0
    );
}
