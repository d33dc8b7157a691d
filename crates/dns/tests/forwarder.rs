//! The forwarder end to end on loopback: a fake upstream, a recording set sink, real sockets.

mod common;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn std_zone() -> impl Fn(&Message, bool) -> Vec<Act> + Send + Sync + 'static {
    zone(vec![
        a("api.example.test.", 300, "192.0.2.10"),
        a("x.y.cdn.example.test.", 300, "192.0.2.20"),
        a("unrelated.test.", 300, "198.51.100.30"),
        cname("www.example.test.", 600, "edge.cdn-provider.test."),
        cname("edge.cdn-provider.test.", 45, "node7.cdn-provider.test."),
        a("node7.cdn-provider.test.", 900, "192.0.2.77"),
        aaaa("v6.example.test.", 300, "2001:db8::6"),
        a("mail.example.test.", 300, "203.0.113.25"),
        a("long.example.test.", 86400, "192.0.2.40"),
        a("short.example.test.", 5, "192.0.2.41"),
        a("nas.example.test.", 300, "10.1.2.3"),
        a("blocked.example.test.", 300, "192.0.2.66"),
    ])
}

#[tokio::test]
async fn exact_and_wildcard_names_fill_their_rules_sets_before_the_answer() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;

    let (m, at) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), vec![ip("192.0.2.10")]);
    f.sink.assert_acked_before(&m, at, &["api"]);

    let (m, at) = ask(f.addr, "X.Y.cdn.EXAMPLE.test.", RecordType::A).await;
    assert_eq!(m.queries[0].name().to_ascii(), "X.Y.cdn.EXAMPLE.test.", "the client's spelling is echoed");
    assert_eq!(addrs(&m), vec![ip("192.0.2.20")]);
    f.sink.assert_acked_before(&m, at, &["api"]);

    // A deny rule with a port condition fills its sets instead of refusing the name.
    let (m, at) = ask(f.addr, "mail.example.test.", RecordType::A).await;
    f.sink.assert_acked_before(&m, at, &["smtp"]);

    // A name no rule lists is answered and inserted nowhere.
    let before = f.sink.entries().len();
    let (m, _) = ask(f.addr, "unrelated.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![ip("198.51.100.30")]);
    assert_eq!(f.sink.entries().len(), before);

    let sets: Vec<String> = f.sink.elements().into_iter().map(|e| e.0).collect();
    assert_eq!(sets, vec!["api_v4", "api_v4", "smtp_v4"]);
    let s = f.handle.stats();
    assert_eq!((s.queries, s.upstream_queries, s.inserted_elements), (4, 4, 3));
    f.stop().await;
}

#[tokio::test]
async fn cname_chain_addresses_go_into_the_question_names_sets_with_the_chains_ttl() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let (m, at) = ask(f.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(m.answers.len(), 3);
    assert_eq!(addrs(&m), vec![ip("192.0.2.77")]);
    f.sink.assert_acked_before(&m, at, &["api"]);
    // The address record is capped at the chain's smallest TTL (45), and so is its element
    // (45 is below min_ttl 60: 60 + grace 120).
    let ttls: Vec<u32> = m.answers.iter().map(|r| r.ttl).collect();
    assert_eq!(ttls, vec![600, 45, 45]);
    assert_eq!(f.sink.elements(), vec![("api_v4".to_string(), ip("192.0.2.77"), 180_000)]);
    f.stop().await;
}

#[tokio::test]
async fn aaaa_goes_into_the_v6_set() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let (m, at) = ask(f.addr, "v6.example.test.", RecordType::AAAA).await;
    assert_eq!(addrs(&m), vec![ip("2001:db8::6")]);
    f.sink.assert_acked_before(&m, at, &["api"]);
    assert_eq!(f.sink.elements(), vec![("api_v6".to_string(), ip("2001:db8::6"), 420_000)]);
    f.stop().await;
}

#[tokio::test]
async fn ttls_are_capped_at_max_ttl_and_element_timeouts_follow_them() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |c| {
        c.max_ttl = 300;
        c.grace = 30;
    })
    .await;
    let (m, _) = ask(f.addr, "long.example.test.", RecordType::A).await;
    assert_eq!(m.answers[0].ttl, 300);
    let (m, _) = ask(f.addr, "short.example.test.", RecordType::A).await;
    assert_eq!(m.answers[0].ttl, 5);
    // long: (300 + 30) s; short: TTL 5 raised to min_ttl 60, + 30.
    let timeouts: Vec<u64> = f.sink.elements().into_iter().map(|e| e.2).collect();
    assert_eq!(timeouts, vec![330_000, 90_000]);
    f.stop().await;
}

#[tokio::test]
async fn rebinding_guard_strips_private_and_own_addresses_from_allow_answers() {
    let up = Upstream::start(zone(vec![
        a("api.example.test.", 300, "10.9.9.9"),
        a("api.example.test.", 300, "192.0.2.10"),
        a("api.example.test.", 300, "198.51.100.1"),
        a("nas.example.test.", 300, "10.1.2.3"),
        aaaa("api.example.test.", 300, "::1"),
    ]))
    .await;
    let f = forwarder(&[up.addr], vec![ip("198.51.100.1")], |_| {}).await;
    let (m, at) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.10")], "private and own addresses are removed");
    f.sink.assert_acked_before(&m, at, &["api"]);
    assert_eq!(f.sink.elements().len(), 1);
    let (m, _) = ask(f.addr, "api.example.test.", RecordType::AAAA).await;
    assert!(addrs(&m).is_empty());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(f.handle.stats().rebinding_blocked, 3);

    // allow_private lets a LAN name through.
    let (m, at) = ask(f.addr, "nas.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![ip("10.1.2.3")]);
    f.sink.assert_acked_before(&m, at, &["lan"]);
    f.stop().await;
}

#[tokio::test]
async fn refused_names_get_nxdomain_without_asking_upstream() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let (m, _) = ask(f.addr, "Blocked.Example.Test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    assert_eq!(up.udp_queries.load(std::sync::atomic::Ordering::SeqCst), 0);
    let s = f.handle.stats();
    assert_eq!((s.refused_names, s.upstream_queries), (1, 0));
    assert!(f.sink.entries().is_empty());
    f.stop().await;
}

#[tokio::test]
async fn silent_upstreams_give_servfail_after_their_timeouts() {
    let silent1 = Upstream::start(|_, _| vec![]).await;
    let silent2 = Upstream::start(|_, _| vec![]).await;
    let f = forwarder(&[silent1.addr, silent2.addr], vec![], |c| c.timeout_ms = 300).await;
    let t0 = Instant::now();
    let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    let took = t0.elapsed();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(1500), "took {took:?}");
    let s = f.handle.stats();
    assert_eq!((s.upstream_queries, s.upstream_failures), (2, 1));
    f.stop().await;
}

/// A loopback UDP port nobody listens on: the kernel answers with ICMP port unreachable.
async fn closed_port() -> SocketAddr {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.local_addr().unwrap()
}

#[tokio::test]
async fn unreachable_upstreams_fail_over_at_once() {
    let dead = closed_port().await;
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[dead, up.addr], vec![], |c| c.timeout_ms = 3000).await;
    let t0 = Instant::now();
    let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.10")]);
    assert!(t0.elapsed() < Duration::from_millis(1000), "failed over after {:?}", t0.elapsed());
    f.stop().await;

    let dead2 = closed_port().await;
    let f = forwarder(&[dead, dead2], vec![], |c| c.timeout_ms = 3000).await;
    let t0 = Instant::now();
    let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(t0.elapsed() < Duration::from_millis(1000), "SERVFAIL after {:?}", t0.elapsed());
    f.stop().await;
}

#[tokio::test]
async fn malformed_client_packets_are_counted_and_dropped_and_the_forwarder_keeps_serving() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let good = query("api.example.test.", RecordType::A).to_vec().unwrap();
    let mut response = good.clone();
    response[2] |= 0x80;
    let mut no_question = good.clone();
    no_question[5] = 0;
    let mut update = good.clone();
    update[2] |= 0x28;
    let mut two_questions = good.clone();
    two_questions[5] = 2;
    let bad: Vec<Vec<u8>> = vec![vec![], vec![0xff; 3], b"\x00\x01garbage garbage".to_vec(), response, no_question, update, two_questions, good[..good.len() - 2].to_vec()];
    for b in &bad {
        s.send_to(b, f.addr).await.unwrap();
    }
    // Over TCP too: a bad frame, then a good query on the same connection.
    let mut t = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    write_framed(&mut t, b"\x12\x34junk").await.unwrap();
    let q = query("api.example.test.", RecordType::A);
    write_framed(&mut t, &q.to_vec().unwrap()).await.unwrap();
    let m = Message::from_vec(&read_framed(&mut t).await.unwrap()).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);

    let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.10")]);
    let mut buf = [0u8; 512];
    assert!(tokio::time::timeout(Duration::from_millis(100), s.recv(&mut buf)).await.is_err(), "malformed packets get no answer");
    let st = f.handle.stats();
    assert_eq!(st.malformed_dropped, bad.len() as u64 + 1);
    assert_eq!(st.queries, 2);
    f.stop().await;
}

#[tokio::test]
async fn mismatched_responses_are_discarded_and_the_real_answer_is_used() {
    let up = Upstream::start(|q, _| {
        let mut wrong_id = reply(q, vec![a("api.example.test.", 300, "203.0.113.1")]);
        wrong_id.metadata.id = q.metadata.id.wrapping_add(1);
        let wrong_question = {
            let mut other = q.clone();
            other.queries[0].set_name(hname("evil.example.test."));
            reply(&other, vec![a("evil.example.test.", 300, "203.0.113.2")])
        };
        let wrong_type = {
            let mut other = q.clone();
            other.queries[0].set_query_type(RecordType::AAAA);
            reply(&other, vec![])
        };
        let from_other = reply(q, vec![a("api.example.test.", 300, "203.0.113.3")]).to_vec().unwrap();
        vec![
            Act::Reply(wrong_id),
            Act::Reply(wrong_question),
            Act::Reply(wrong_type),
            Act::Raw(vec![0xde, 0xad]),
            Act::FromOther(from_other),
            Act::Sleep(Duration::from_millis(50)),
            Act::Reply(reply(q, vec![a("api.example.test.", 300, "192.0.2.10")])),
        ]
    })
    .await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let (m, at) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.10")]);
    f.sink.assert_acked_before(&m, at, &["api"]);
    assert_eq!(f.sink.elements().len(), 1, "no spoofed address went into a set");
    // The datagram from another source port never reaches the connected socket.
    assert_eq!(f.handle.stats().mismatched_responses, 4);
    f.stop().await;
}

#[tokio::test]
async fn cache_hits_refresh_set_elements_only_when_needed() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |c| c.cache_size = 100).await;
    let (m1, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    let (m2, at) = ask(f.addr, "API.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m2), vec![ip("192.0.2.10")]);
    assert_eq!(m2.queries[0].name().to_ascii(), "API.example.test.");
    assert!(m2.answers[0].ttl <= m1.answers[0].ttl);
    f.sink.assert_acked_before(&m2, at, &["api"]);
    let s = f.handle.stats();
    assert_eq!((s.cache_hits, s.upstream_queries, s.insert_batches), (1, 1, 1), "the element outlives the cached answer: no refresh");

    // TTLs count down on hits.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (m3, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert!(m3.answers[0].ttl < m1.answers[0].ttl, "{} !< {}", m3.answers[0].ttl, m1.answers[0].ttl);

    // After the table is re-applied (the forwarder follows the new table), the cache starts
    // empty and the answer goes into the new table before it is sent.
    f.sink.table.store(2, std::sync::atomic::Ordering::SeqCst);
    f.handle.follow(f.applied(2)).unwrap();
    let (m4, at) = ask(f.addr, "api.example.test.", RecordType::A).await;
    let s = f.handle.stats();
    assert_eq!((s.cache_hits, s.upstream_queries, s.insert_batches), (2, 2, 2));
    let last = f.sink.entries().last().cloned().unwrap();
    assert!(last.at <= at);
    assert_eq!(last.insert.timeout_ms, (u64::from(m4.answers[0].ttl) + 120) * 1000);
    f.stop().await;
}

#[tokio::test]
async fn negative_answers_are_cached_for_the_soa_minimum() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |c| c.cache_size = 100).await;
    for _ in 0..3 {
        let (m, _) = ask(f.addr, "nonexistent.example.test.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities.len(), 1);
    }
    let s = f.handle.stats();
    assert_eq!((s.cache_hits, s.upstream_queries), (2, 1));
    f.stop().await;
}

#[tokio::test]
async fn a_failing_sink_gives_servfail_and_nothing_is_cached() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |c| c.cache_size = 100).await;
    f.sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.answers.is_empty());
    assert_eq!(f.handle.stats().insert_errors, 1);
    f.sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let (m, at) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.10")]);
    f.sink.assert_acked_before(&m, at, &["api"]);
    assert_eq!(f.handle.stats().cache_hits, 0);
    f.stop().await;
}

#[tokio::test]
async fn queries_over_tcp_are_answered_after_the_inserts() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let (m, at) = ask_tcp(f.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.77")]);
    f.sink.assert_acked_before(&m, at, &["api"]);
    f.stop().await;
}

#[tokio::test]
async fn truncated_upstream_answers_are_retried_over_tcp() {
    let records: Vec<_> = (1..=60).map(|i| a("big.example.test.", 300, &format!("192.0.2.{i}"))).collect();
    let all = records.clone();
    let up = Upstream::start(move |q, tcp| {
        if tcp {
            vec![Act::Reply(reply(q, all.clone()))]
        } else {
            let mut m = reply(q, vec![]);
            m.metadata.truncation = true;
            vec![Act::Reply(m)]
        }
    })
    .await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    // The client asks without EDNS: 60 addresses do not fit 512 bytes, so it gets TC too and
    // retries over TCP, as a stub resolver would.
    let (m, _) = ask(f.addr, "big.example.test.", RecordType::A).await;
    assert!(m.metadata.truncation);
    assert_eq!(up.tcp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
    let (m, at) = ask_tcp(f.addr, "big.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m).len(), 60);
    f.sink.assert_acked_before(&m, at, &["api"]);
    assert_eq!(up.udp_queries.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(up.tcp_queries.load(std::sync::atomic::Ordering::SeqCst), 2);
    f.stop().await;
}

/// Many concurrent clients with a slow kernel: every answer still waits for its own elements,
/// and queued elements share batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_answers_never_overtake_their_inserts() {
    let up = Upstream::start(|q, _| {
        let name = q.queries[0].name().to_ascii().to_lowercase();
        let n: u32 = name.trim_start_matches('n').split('.').next().unwrap().parse().unwrap();
        vec![Act::Reply(reply(q, vec![a(&name, 300, &format!("192.0.{}.{}", 2 + n / 250, n % 250 + 1))]))]
    })
    .await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    f.sink.delay_ms.store(5, std::sync::atomic::Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let addr = f.addr;
        tasks.push(tokio::spawn(async move { ask(addr, &format!("n{i}.cdn.example.test."), RecordType::A).await }));
    }
    for t in tasks {
        let (m, at) = t.await.unwrap();
        assert_eq!(addrs(&m).len(), 1);
        f.sink.assert_acked_before(&m, at, &["api"]);
    }
    let s = f.handle.stats();
    assert_eq!(s.inserted_elements, 300);
    assert!(s.insert_batches < 300, "{} batches for 300 answers", s.insert_batches);
    f.stop().await;
}

#[tokio::test]
async fn resolve_once_follows_cnames_for_a_and_aaaa() {
    let up = Upstream::start(zone(vec![
        cname("warm.example.test.", 300, "target.example.test."),
        a("target.example.test.", 120, "192.0.2.5"),
        aaaa("target.example.test.", 60, "2001:db8::5"),
    ]))
    .await;
    let ups = [closed_port().await, up.addr];
    let mark = if is_root() { 0x6c6e } else { 0 };
    let got = tokio::task::spawn_blocking(move || dns::resolve_once(&ups, mark, None, "warm.example.test", Duration::from_secs(2))).await.unwrap().unwrap();
    assert_eq!(got, vec![(ip("192.0.2.5"), 120), (ip("2001:db8::5"), 60)]);
    let ups = [up.addr];
    let got = tokio::task::spawn_blocking(move || dns::resolve_once(&ups, mark, None, "missing.example.test", Duration::from_secs(2))).await.unwrap().unwrap();
    assert!(got.is_empty());
    let silent = Upstream::start(|_, _| vec![]).await;
    let ups = [silent.addr];
    let err = tokio::task::spawn_blocking(move || dns::resolve_once(&ups, mark, None, "warm.example.test", Duration::from_millis(200))).await.unwrap();
    assert!(err.is_err());
}

#[tokio::test]
async fn bind_reports_missing_upstreams() {
    let mut p = policy();
    p.dns.upstreams.clear();
    let cfg = dns::ForwarderConfig { policy: std::sync::Arc::new(p), sets: vec![], table: TABLE, own_addresses: vec![] };
    let err = dns::Forwarder::bind(cfg, Box::new(Sink::default())).await.unwrap_err();
    assert!(matches!(err, dns::Error::NoUpstreams), "{err}");
}

/// Cache hits are answered by the UDP listener threads themselves: they need no runtime. Here
/// the runtime's only thread is blocked while a client asks a cached and an uncached name; the
/// cached one is answered during the block, the uncached one (upstream and sets go through the
/// runtime) only after it.
#[tokio::test]
async fn cache_hits_are_answered_while_the_runtime_is_blocked() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |c| c.cache_size = 100).await;
    ask(f.addr, "api.example.test.", RecordType::A).await;
    let server = f.addr;
    let block = Duration::from_millis(500);
    let t0 = Instant::now();
    let client = std::thread::spawn(move || {
        let ask_blocking = |name: &str| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let q = query(name, RecordType::A);
            s.send_to(&q.to_vec().unwrap(), server).unwrap();
            (s, q.metadata.id)
        };
        let recv = |(s, id): (std::net::UdpSocket, u16)| {
            let mut buf = [0u8; 4096];
            let n = s.recv(&mut buf).expect("an answer within 5 s");
            let m = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(m.metadata.id, id);
            (m, Instant::now())
        };
        let cached = ask_blocking("api.example.test.");
        let uncached = ask_blocking("x.y.cdn.example.test.");
        (recv(cached), recv(uncached))
    });
    // Blocks the current-thread runtime: no task (upstream, inserts, the fake upstream) runs.
    std::thread::sleep(block);
    let unblocked = Instant::now();
    let ((hit, hit_at), (miss, miss_at)) = tokio::task::spawn_blocking(move || client.join().unwrap()).await.unwrap();
    assert_eq!(addrs(&hit), vec![ip("192.0.2.10")]);
    assert!(hit_at < t0 + block, "the cache hit was answered {:?} after the block began, not during it", hit_at - t0);
    assert_eq!(addrs(&miss), vec![ip("192.0.2.20")]);
    assert!(miss_at >= unblocked, "the miss was answered before the runtime ran again");
    f.sink.assert_acked_before(&miss, miss_at, &["api"]);
    let s = f.handle.stats();
    assert_eq!((s.queries, s.cache_hits, s.upstream_queries), (3, 1, 2));
    f.stop().await;
}

/// Whether a plain UDP socket (no SO_REUSEPORT) can take `addr`: only once every listen socket
/// on it is closed.
fn udp_port_free(addr: SocketAddr) -> bool {
    std::net::UdpSocket::bind(addr).is_ok()
}

/// The listener threads hold the UDP sockets: the port is free again only after they ended.
/// Stopping joins them before `serve` returns; dropping the serving task (abort) stops them too.
#[tokio::test]
async fn stopping_the_forwarder_ends_its_listener_threads_and_frees_the_port() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |c| c.cache_size = 100).await;
    let addr = f.addr;
    ask(addr, "api.example.test.", RecordType::A).await;
    ask(addr, "api.example.test.", RecordType::A).await;
    assert!(!udp_port_free(addr));
    f.stop().await;
    assert!(udp_port_free(addr), "a listener socket outlived serve()");

    let f = forwarder(&[up.addr], vec![], |c| c.cache_size = 100).await;
    let addr = f.addr;
    ask(addr, "api.example.test.", RecordType::A).await;
    drop(f);
    let t0 = Instant::now();
    while !udp_port_free(addr) && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(udp_port_free(addr), "the listener threads outlived the aborted serve()");
}

/// The UDP listen sockets of one address form an SO_REUSEPORT group (one per CPU), but the
/// port is taken exclusively first: a second forwarder, or anyone else on the port, is an error
/// as it was before, not a silent split of the queries.
#[tokio::test]
async fn a_listen_port_in_use_is_an_error_even_for_a_second_forwarder() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for taken in [f.addr, other.local_addr().unwrap()] {
        let mut p = policy();
        p.dns.listen = vec![taken];
        p.dns.upstreams = vec![up.addr];
        if !is_root() {
            p.dns.mark = 0;
        }
        let cfg = dns::ForwarderConfig { policy: std::sync::Arc::new(p), sets: vec![], table: TABLE, own_addresses: vec![] };
        let err = dns::Forwarder::bind(cfg, Box::new(Sink::default())).await.unwrap_err();
        assert!(matches!(&err, dns::Error::Listen { addr, .. } if *addr == taken), "{err}");
    }
    // The first forwarder still gets every query.
    for _ in 0..20 {
        let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
        assert_eq!(addrs(&m), vec![ip("192.0.2.10")]);
    }
    f.stop().await;
}

/// IPv6 listen addresses: hits answered by the listener threads (the client's address goes back
/// as the kernel wrote it), misses by the runtime (the address converted for the hand-off).
#[tokio::test]
async fn ipv6_clients_get_cached_and_uncached_answers() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let up = Upstream::start(std_zone()).await;
    let mut p = policy();
    p.dns.listen = vec!["[::1]:0".parse().unwrap()];
    p.dns.upstreams = vec![up.addr];
    p.dns.cache_size = 100;
    if !is_root() {
        p.dns.mark = 0;
    }
    let sets = sets(&p);
    let cfg = dns::ForwarderConfig { policy: std::sync::Arc::new(p), sets, table: TABLE, own_addresses: vec![] };
    let f = dns::Forwarder::bind(cfg, Box::new(Sink::default())).await.unwrap();
    let addr = f.local_addrs()[0];
    assert!(addr.is_ipv6());
    let handle = f.handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(f.serve(async {
        let _ = rx.await;
    }));
    let ask6 = |name: &'static str| async move {
        let s = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
        let q = query(name, RecordType::A);
        s.send_to(&q.to_vec().unwrap(), addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.recv(&mut buf)).await.expect("an answer within 10 s").unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.id, q.metadata.id);
        m
    };
    for _ in 0..3 {
        assert_eq!(addrs(&ask6("api.example.test.").await), vec![ip("192.0.2.10")]);
    }
    let s = handle.stats();
    assert_eq!((s.queries, s.cache_hits, s.upstream_queries), (3, 2, 1));
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// Many clients at once, without waiting for answers: the listener threads take the queued
/// queries in batches and must send every answer to its own client, with its own id and name.
#[tokio::test]
async fn a_burst_of_cached_queries_from_many_clients_is_answered_in_full() {
    let up = Upstream::start(std_zone()).await;
    let f = forwarder(&[up.addr], vec![], |c| c.cache_size = 100).await;
    let names = [("api.example.test.", "192.0.2.10"), ("x.y.cdn.example.test.", "192.0.2.20"), ("www.example.test.", "192.0.2.77")];
    for (n, _) in names {
        ask(f.addr, n, RecordType::A).await;
    }
    let server = f.addr;
    let (clients, per_client) = (16usize, 10usize);
    tokio::task::spawn_blocking(move || {
        let socks: Vec<std::net::UdpSocket> = (0..clients).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let mut sent = std::collections::HashMap::new();
        for round in 0..per_client {
            for (c, s) in socks.iter().enumerate() {
                let (name, addr) = names[(c + round) % names.len()];
                let mut q = query(name, RecordType::A);
                q.metadata.id = (c * per_client + round) as u16;
                s.send_to(&q.to_vec().unwrap(), server).unwrap();
                sent.insert((c, q.metadata.id), (name, addr));
            }
        }
        let mut buf = [0u8; 4096];
        for (c, s) in socks.iter().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            for _ in 0..per_client {
                let n = s.recv(&mut buf).expect("every query answered within 5 s");
                let m = Message::from_vec(&buf[..n]).unwrap();
                let (name, addr) = sent.remove(&(c, m.metadata.id)).expect("an answer to a query this client sent, once");
                assert_eq!(m.queries[0].name().to_ascii(), name);
                assert_eq!(addrs(&m), vec![ip(addr)]);
            }
        }
        assert!(sent.is_empty());
    })
    .await
    .unwrap();
    let s = f.handle.stats();
    assert_eq!((s.cache_hits, s.upstream_queries), ((clients * per_client) as u64, 3));
    f.stop().await;
}
