//! `kernel::nflog` against the real kernel: a table whose rules `log group N`, packets sent over
//! loopback inside a throwaway network namespace, and what the subscriber reads: prefix, owner,
//! hook, payload, sequence numbers, loss accounting, one reader per group, per-namespace groups.
//! Needs root; every test works in its own network namespaces.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use kernel::netns::NetNs;
use kernel::nflog::{self, Config, Error, Packet, Subscriber};
use kernel::testutil::need_root;
use ruleset::*;

/// UDP port whose packets are logged to group `DROP_GROUP` and dropped.
const DROP_PORT: u16 = 9;
const DROP_GROUP: u16 = 7;
/// UDP port whose packets are logged to group `ALLOW_GROUP` and let through.
const ALLOW_PORT: u16 = 10;
const ALLOW_GROUP: u16 = 8;

fn table() -> Table {
    let log_rule = |port: u16, prefix: &str, group: u16, verdict: Stmt, name: &str| {
        rule(
            vec![
                Stmt::Dport {
                    l4: L4::Udp,
                    value: Value::Eq(port),
                },
                Stmt::Counter,
                Stmt::Log {
                    prefix: prefix.into(),
                    group,
                },
                verdict,
            ],
            Some(name),
        )
    };
    Table {
        name: TABLE_NAME.into(),
        comment: None,
        sets: vec![],
        chains: vec![chain(
            ChainPolicy::Accept,
            vec![
                log_rule(DROP_PORT, "leash deny t: ", DROP_GROUP, Stmt::Drop, "t"),
                log_rule(
                    ALLOW_PORT,
                    "leash allow a: ",
                    ALLOW_GROUP,
                    Stmt::Accept,
                    "a",
                ),
            ],
        )],
    }
}

/// A namespace with [`table`] applied.
fn namespace() -> NetNs {
    let ns = NetNs::new().expect("new netns");
    ns.run(|| kernel::apply(&table(), &kernel::ApplyOptions::default()))
        .expect("apply");
    ns
}

fn subscribe(ns: &NetNs, config: &Config) -> Subscriber {
    ns.run(|| Subscriber::open(config))
        .expect("bind NFLOG group")
}

/// Sends `n` datagrams of `size` bytes to `to` from a socket created inside `ns`, on a thread that
/// first became `uid`/`gid` (thread-only credentials, as `meta skuid` and NFLOG see them).
/// Returns how many sends failed with EPERM (dropped by the output hook).
fn send(ns: &NetNs, to: SocketAddr, n: usize, size: usize, owner: Option<(u32, u32)>) -> usize {
    ns.run(|| {
        if let Some((uid, gid)) = owner {
            become_user(uid, gid);
        }
        let bind: SocketAddr = if to.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        }
        .parse()
        .unwrap();
        let s = UdpSocket::bind(bind).unwrap();
        let buf = vec![0x5a; size];
        let mut eperm = 0;
        for _ in 0..n {
            match s.send_to(&buf, to) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
                Err(e) => panic!("send to {to}: {e}"),
            }
        }
        eperm
    })
}

/// Raw syscalls change only the calling thread (glibc's wrappers would change the whole process).
fn become_user(uid: u32, gid: u32) {
    // SAFETY: plain syscalls with integer arguments and an empty group list.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
        assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
    }
}

/// Reads until `n` packets arrived or `limit` passed.
fn read(sub: &mut Subscriber, n: usize, limit: Duration) -> Vec<Packet> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        out.extend(
            sub.recv(Some(left.min(Duration::from_millis(100))))
                .expect("recv"),
        );
    }
    out
}

/// Reads whatever arrives within `quiet` of the previous batch.
fn drain(sub: &mut Subscriber, quiet: Duration) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut last = Instant::now();
    // Bounded: a loss returns an empty batch too, so wait for `quiet` without anything at all.
    while last.elapsed() < quiet {
        let got = sub.recv(Some(Duration::from_millis(20))).expect("recv");
        if !got.is_empty() {
            last = Instant::now();
            out.extend(got);
        }
    }
    out
}

/// The destination address of an IPv4 or IPv6 packet and its UDP destination port.
fn udp_dst(payload: &[u8]) -> (std::net::IpAddr, u16) {
    match payload[0] >> 4 {
        4 => {
            let ihl = usize::from(payload[0] & 0xf) * 4;
            let a: [u8; 4] = payload[16..20].try_into().unwrap();
            (
                a.into(),
                u16::from_be_bytes([payload[ihl + 2], payload[ihl + 3]]),
            )
        }
        6 => {
            assert_eq!(payload[6], 17, "next header UDP");
            let a: [u8; 16] = payload[24..40].try_into().unwrap();
            (a.into(), u16::from_be_bytes([payload[42], payload[43]]))
        }
        v => panic!("IP version {v}"),
    }
}

fn counter_of(ns: &NetNs, rule: &str) -> u64 {
    let st = ns.run(kernel::status).expect("status").expect("table");
    st.chains
        .iter()
        .flat_map(|c| &c.rules)
        .filter(|r| r.comment.as_deref() == Some(rule))
        .filter_map(|r| r.counter.map(|c| c.packets))
        .sum()
}

#[test]
fn logged_packets_carry_prefix_owner_hook_and_payload() {
    if !need_root("logged_packets_carry_prefix_owner_hook_and_payload") {
        return;
    }
    let ns = namespace();
    let mut sub = subscribe(&ns, &Config::new(DROP_GROUP));
    assert_eq!(sub.group(), DROP_GROUP);
    let v4: SocketAddr = format!("127.0.0.1:{DROP_PORT}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{DROP_PORT}").parse().unwrap();
    assert_eq!(send(&ns, v4, 1, 32, None), 1, "the rule drops (EPERM)");
    assert_eq!(send(&ns, v6, 1, 32, Some((65534, 65533))), 1);
    let got = read(&mut sub, 2, Duration::from_secs(5));
    assert_eq!(got.len(), 2, "{got:#?}");
    let (a, b) = (&got[0], &got[1]);

    assert_eq!(a.group, DROP_GROUP);
    assert_eq!(a.family, nflog::NFPROTO_IPV4);
    assert_eq!(a.hw_protocol, 0x0800);
    assert_eq!(a.hook, nflog::NF_INET_LOCAL_OUT);
    assert_eq!(a.prefix.as_deref(), Some("leash deny t: "));
    assert_eq!((a.uid, a.gid), (Some(0), Some(0)));
    assert_eq!(a.outdev, Some(1), "loopback is ifindex 1");
    // The output hook gives no kernel timestamp; the read time is there instead.
    assert_eq!(a.timestamp, None);
    assert!(a.received.elapsed().unwrap_or_default() < Duration::from_secs(60));
    assert_eq!(
        udp_dst(&a.payload),
        ("127.0.0.1".parse().unwrap(), DROP_PORT)
    );
    assert_eq!(
        a.payload.len(),
        20 + 8 + 32,
        "the whole datagram fits the default snap length"
    );

    assert_eq!(b.family, nflog::NFPROTO_IPV6);
    assert_eq!(b.hw_protocol, 0x86dd);
    assert_eq!(
        (b.uid, b.gid),
        (Some(65534), Some(65533)),
        "the socket owner, not the reader"
    );
    assert_eq!(udp_dst(&b.payload), ("::1".parse().unwrap(), DROP_PORT));

    // Sequence numbers: per group from 0, global ones from 1.
    assert_eq!((a.seq, b.seq), (Some(0), Some(1)));
    assert!(a.seq_global.is_some() && b.seq_global > a.seq_global);
    let st = sub.stats();
    assert_eq!(
        (
            st.packets,
            st.enobufs,
            st.seq_lost,
            st.malformed,
            st.dropped_batches
        ),
        (2, 0, 0, 0, 0),
        "{st:?}"
    );
}

#[test]
fn snap_length_cuts_the_copy() {
    if !need_root("snap_length_cuts_the_copy") {
        return;
    }
    let ns = namespace();
    let mut sub = subscribe(
        &ns,
        &Config {
            snaplen: 40,
            ..Config::new(DROP_GROUP)
        },
    );
    send(
        &ns,
        format!("127.0.0.1:{DROP_PORT}").parse().unwrap(),
        1,
        1000,
        None,
    );
    let got = read(&mut sub, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.len(), 40);
    // The IP header still says how long the packet was.
    assert_eq!(
        u16::from_be_bytes([got[0].payload[2], got[0].payload[3]]),
        20 + 8 + 1000
    );
}

#[test]
fn a_lone_packet_arrives_after_the_flush_timeout_not_the_kernel_default() {
    if !need_root("a_lone_packet_arrives_after_the_flush_timeout_not_the_kernel_default") {
        return;
    }
    let ns = namespace();
    // One packet never fills a batch of 64; the kernel sends it when the flush timer (10 ms here,
    // 1 s by default) fires.
    let mut sub = subscribe(&ns, &Config::new(DROP_GROUP));
    let t0 = Instant::now();
    send(
        &ns,
        format!("127.0.0.1:{DROP_PORT}").parse().unwrap(),
        1,
        8,
        None,
    );
    let got = read(&mut sub, 1, Duration::from_secs(5));
    let waited = t0.elapsed();
    assert_eq!(got.len(), 1);
    assert!(
        waited < Duration::from_millis(600),
        "took {waited:?}: the 10 ms flush timeout was not applied"
    );
}

#[test]
fn sequence_gaps_count_exactly_what_a_full_buffer_lost() {
    if !need_root("sequence_gaps_count_exactly_what_a_full_buffer_lost") {
        return;
    }
    let ns = namespace();
    // A tiny receive buffer and one packet per datagram: nobody reads while 5,000 packets are
    // logged, so most batches find the buffer full and are dropped.
    let cfg = Config {
        recv_buffer: 8192,
        queue_threshold: 1,
        ..Config::new(DROP_GROUP)
    };
    let mut sub = subscribe(&ns, &cfg);
    const N: usize = 5000;
    assert_eq!(
        send(
            &ns,
            format!("127.0.0.1:{DROP_PORT}").parse().unwrap(),
            N,
            16,
            None
        ),
        N
    );
    let mut got = drain(&mut sub, Duration::from_millis(300));
    // Before any later packet, only the socket's drop counter shows the loss at the end.
    assert!(sub.stats().dropped_batches >= 1, "{:?}", sub.stats());
    // A marker after the flood: its sequence number closes the last gap.
    send(
        &ns,
        format!("[::1]:{DROP_PORT}").parse().unwrap(),
        1,
        16,
        None,
    );
    got.extend(read(&mut sub, 1, Duration::from_secs(5)));
    let st = sub.stats();
    assert!(st.enobufs >= 1, "the kernel reported the overflow: {st:?}");
    assert!(
        st.dropped_batches >= 1,
        "the socket counted dropped batches: {st:?}"
    );
    assert!(
        st.dropped_batches <= st.seq_lost,
        "each dropped batch held at least one packet: {st:?}"
    );
    assert!(st.seq_lost > 0, "{st:?}");
    assert_eq!(st.packets, got.len() as u64);
    assert_eq!(
        st.packets + st.seq_lost,
        N as u64 + 1,
        "every packet is either read or counted lost: {st:?}"
    );
    assert_eq!(
        counter_of(&ns, "t"),
        N as u64 + 1,
        "the rule's counter agrees"
    );
    let last = got.last().unwrap();
    assert_eq!(last.family, nflog::NFPROTO_IPV6, "the marker came last");
    assert_eq!(last.seq, Some(N as u32));
}

#[test]
fn a_burst_with_a_large_buffer_loses_nothing() {
    if !need_root("a_burst_with_a_large_buffer_loses_nothing") {
        return;
    }
    let ns = namespace();
    let mut sub = subscribe(&ns, &Config::new(DROP_GROUP));
    const N: usize = 20_000;
    // Nobody reads during the burst: the 32 MiB buffer holds all of it.
    assert_eq!(
        send(
            &ns,
            format!("127.0.0.1:{DROP_PORT}").parse().unwrap(),
            N,
            16,
            None
        ),
        N
    );
    let got = read(&mut sub, N, Duration::from_secs(20));
    let st = sub.stats();
    assert_eq!(got.len(), N, "{st:?}");
    assert!(!st.lost_any(), "{st:?}");
    assert!(
        st.datagrams < N as u64 / 10,
        "packets came in batches: {st:?}"
    );
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.seq, Some(i as u32));
    }
}

#[test]
fn one_reader_per_group_and_namespace() {
    if !need_root("one_reader_per_group_and_namespace") {
        return;
    }
    let ns = namespace();
    let other = namespace();
    let _first = subscribe(&ns, &Config::new(DROP_GROUP));
    match ns.run(|| Subscriber::open(&Config::new(DROP_GROUP))) {
        Err(Error::GroupBusy { group }) => assert_eq!(group, DROP_GROUP),
        other => panic!("a second bind must fail with GroupBusy, got {other:?}"),
    }
    // Another group in the same namespace, and the same group in another namespace, are free.
    let mut allow = subscribe(&ns, &Config::new(ALLOW_GROUP));
    let mut there = subscribe(&other, &Config::new(DROP_GROUP));
    // Each sees only its own namespace's packets.
    send(
        &other,
        format!("127.0.0.1:{DROP_PORT}").parse().unwrap(),
        3,
        8,
        None,
    );
    send(
        &ns,
        format!("127.0.0.1:{ALLOW_PORT}").parse().unwrap(),
        2,
        8,
        None,
    );
    assert_eq!(read(&mut there, 3, Duration::from_secs(5)).len(), 3);
    let a = read(&mut allow, 2, Duration::from_secs(5));
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].prefix.as_deref(), Some("leash allow a: "));
    assert!(drain(&mut there, Duration::from_millis(100)).is_empty());
    // Closing a subscriber frees its group.
    drop(_first);
    let _again = subscribe(&ns, &Config::new(DROP_GROUP));
}

#[test]
fn bad_configurations_are_refused_before_binding() {
    // No kernel needed: these are checked first.
    for cfg in [
        Config {
            snaplen: 70_000,
            ..Config::new(0)
        },
        Config {
            kernel_buffer: 1 << 20,
            ..Config::new(0)
        },
        Config {
            queue_threshold: 0,
            ..Config::new(0)
        },
    ] {
        assert!(
            matches!(Subscriber::open(&cfg), Err(Error::Config(_))),
            "{cfg:?}"
        );
    }
}
