//! The forwarder when someone tries to get an address past the firewall or to shut others out:
//! a re-applied policy, an unknown one, a query in flight across a re-apply, a full set, TCP
//! connections held open, rebinding through an embedded IPv4 address, address records off the
//! CNAME chain, and a flood of log lines. Fake upstream and recording sink on loopback.

mod common;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpStream;

fn zone_all() -> impl Fn(&Message, bool) -> Vec<Act> + Send + Sync + 'static {
    zone(vec![
        a("api.example.test.", 300, "192.0.2.10"),
        a("x.cdn.example.test.", 300, "192.0.2.20"),
        a("unrelated.test.", 300, "198.51.100.30"),
        aaaa("nat64.cdn.example.test.", 300, "64:ff9b::a00:1"),
        aaaa("sixtofour.cdn.example.test.", 300, "2002:a9fe:a9fe::1"),
        aaaa("v6.example.test.", 300, "2001:db8::6"),
    ])
}

/// The test policy without the wildcard: what `apply p2` put in place in the issue.
fn without_wildcard(f: &Running, table: u64) -> dns::Applied {
    let text = POLICY.replace("\"*.cdn.example.test\", ", "");
    let (p, d) = policy::load(&text, &policy::StaticResolver::default());
    let p = Arc::new(p.unwrap_or_else(|| panic!("{d:?}")));
    let mut p2 = (*p).clone();
    p2.dns = f.policy.dns.clone();
    let p2 = Arc::new(p2);
    dns::Applied { sets: sets(&p2), policy: p2, table }
}

/// Issue 12, item 2: after a re-apply the forwarder decides by the applied policy only.
#[tokio::test]
async fn after_a_reapply_names_are_decided_by_the_applied_policy() {
    let up = Upstream::start(zone_all()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let (m, at) = ask(f.addr, "x.cdn.example.test.", RecordType::A).await;
    f.sink.assert_acked_before(&m, at, &["api"]);
    let before = f.sink.entries().len();

    // Re-applied without the wildcard, in a new table.
    f.sink.table.store(2, Ordering::SeqCst);
    f.handle.follow(without_wildcard(&f, 2)).unwrap();
    let (m, _) = ask(f.addr, "x.cdn.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "a name no rule lists is only forwarded");
    assert_eq!(f.sink.entries().len(), before, "the removed wildcard still fed its set: {:?}", f.sink.entries());
    // The exact name still feeds the rule's set, in the new table.
    let (m, at) = ask(f.addr, "api.example.test.", RecordType::A).await;
    f.sink.assert_acked_before(&m, at, &["api"]);
    assert_eq!(f.handle.stats().policy_reloads, 1);
    f.stop().await;
}

/// Issue 12, item 2: while the applied policy is unknown every query gets SERVFAIL, and nothing
/// is inserted anywhere; following a policy again serves again.
#[tokio::test]
async fn an_unknown_applied_policy_gives_servfail_for_every_name() {
    let up = Upstream::start(zone_all()).await;
    let f = forwarder(&[up.addr], vec![], |c| c.cache_size = 100).await;
    let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let before = f.sink.entries().len();
    f.handle.suspend();
    assert!(!f.handle.is_following());
    for name in ["api.example.test.", "x.cdn.example.test.", "unrelated.test."] {
        let (m, _) = ask(f.addr, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{name}");
        let (m, _) = ask_tcp(f.addr, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{name} over TCP");
    }
    assert_eq!(f.sink.entries().len(), before);
    assert_eq!(f.handle.stats().no_policy_servfail, 6);
    f.handle.follow(f.applied(TABLE)).unwrap();
    let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    f.stop().await;
}

/// Issue 12, item 2: a query decided under the old policy whose insert reaches the sink after
/// the table was replaced gets SERVFAIL; nothing of it lands in the new table.
#[tokio::test]
async fn a_query_in_flight_across_a_reapply_feeds_nothing() {
    let slow = zone_all();
    let up = Upstream::start(move |q, tcp| {
        let mut acts = vec![Act::Sleep(Duration::from_millis(400))];
        acts.extend(slow(q, tcp));
        acts
    })
    .await;
    let f = Arc::new(forwarder(&[up.addr], vec![], |_| {}).await);
    let addr = f.addr;
    let q = tokio::spawn(async move { ask(addr, "x.cdn.example.test.", RecordType::A).await.0 });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // apply replaced the table while the upstream was thinking.
    f.sink.table.store(2, Ordering::SeqCst);
    let m = q.await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(f.sink.entries().is_empty(), "{:?}", f.sink.entries());
    assert_eq!(f.handle.stats().table_replaced, 1);
    // The forwarder told the binary to look at the table now.
    tokio::time::timeout(Duration::from_secs(1), f.handle.table_replaced()).await.expect("notified");
}

/// Issue 12, item 15: a full domain set gives SERVFAIL for names that need a new element (never
/// an answer whose address the firewall blocks), counted and logged.
#[tokio::test]
async fn a_full_set_gives_servfail_for_new_names_only() {
    let up = Upstream::start(zone_all()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    f.sink.set_size.store(1, Ordering::SeqCst);
    let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let (m, _) = ask(f.addr, "x.cdn.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.answers.is_empty());
    // The name already in the set is still answered (its refresh is no new element).
    let (m, _) = ask(f.addr, "api.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(f.handle.stats().set_full, 1);
    f.stop().await;
}

/// Issue 12, item 12: NAT64 and 6to4 answers that lead to private IPv4 addresses are kept out.
#[tokio::test]
async fn rebinding_through_embedded_ipv4_is_stripped() {
    let up = Upstream::start(zone_all()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    for name in ["nat64.cdn.example.test.", "sixtofour.cdn.example.test."] {
        let (m, _) = ask(f.addr, name, RecordType::AAAA).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(addrs(&m).is_empty(), "{name}: {:?} reached the client", addrs(&m));
    }
    assert!(f.sink.entries().is_empty(), "{:?}", f.sink.entries());
    assert_eq!(f.handle.stats().rebinding_blocked, 2);
    // A public AAAA still goes through.
    let (m, _) = ask(f.addr, "v6.example.test.", RecordType::AAAA).await;
    assert_eq!(addrs(&m), vec![ip("2001:db8::6")]);
    f.stop().await;
}

/// Issue 12, item 15: A/AAAA records off the question's CNAME chain never reach the client.
#[tokio::test]
async fn address_records_off_the_cname_chain_are_stripped() {
    let up = Upstream::start(|q: &Message, _| {
        vec![Act::Reply(reply(
            q,
            vec![
                cname("www.example.test.", 300, "edge.example.test."),
                a("edge.example.test.", 300, "192.0.2.77"),
                // A lying upstream slips in an answer for another name.
                a("bank.example.test.", 300, "203.0.113.66"),
            ],
        ))]
    })
    .await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let (m, at) = ask(f.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.77")], "{:?}", m.answers);
    assert_eq!(m.answers.len(), 2);
    f.sink.assert_acked_before(&m, at, &["api"]);
    assert_eq!(f.handle.stats().off_chain_stripped, 1);
    f.stop().await;
}

/// Issue 12, item 15: refused names and guard hits cannot flood the log.
#[tokio::test]
async fn a_flood_of_refused_names_is_logged_at_a_bounded_rate() {
    let up = Upstream::start(zone_all()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 512];
    for i in 0..500 {
        s.send_to(&query("blocked.example.test.", RecordType::A).to_vec().unwrap(), f.addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf)).await.unwrap_or_else(|_| panic!("query {i}: no answer")).unwrap();
    }
    let st = f.handle.stats();
    assert_eq!(st.refused_names, 500);
    // At most the burst plus what the rate allows while the loop ran: the rest was left out.
    assert!(st.log_suppressed >= 400, "{} of 500 lines were written", 500 - st.log_suppressed);
    f.stop().await;
}

/// Opens `n` TCP connections to `server` that never send anything.
async fn hold(server: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpStream::connect(server).await.unwrap());
    }
    held
}

/// Issue 12, item 10: one client holding more connections than the forwarder takes cannot
/// shut out another client's queries over TCP.
#[tokio::test]
async fn idle_tcp_connections_held_open_do_not_shut_out_other_clients() {
    let up = Upstream::start(zone_all()).await;
    let f = forwarder(&[up.addr], vec![], |_| {}).await;
    let _held = hold(f.addr, 300).await;
    // Let the forwarder accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        let q = query("api.example.test.", RecordType::A);
        let mut s = TcpStream::connect(f.addr).await.unwrap();
        write_framed(&mut s, &q.to_vec().unwrap()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), read_framed(&mut s)).await;
        let b = got.unwrap_or_else(|_| panic!("query {i}: no answer within 3 s")).unwrap_or_else(|e| panic!("query {i}: {e}"));
        let m = Message::from_vec(&b).unwrap();
        assert_eq!(addrs(&m), vec![ip("192.0.2.10")], "query {i}");
    }
    // The held connections beyond the limit each closed one held before them; the first query
    // closed one more, and each query's connection, closed after its answer, made room for the
    // next.
    let evicted = f.handle.stats().tcp_evicted;
    assert!(evicted > 300 - dns::MAX_TCP_CLIENTS as u64, "{evicted} evicted");
    f.stop().await;
}
