//! Test harness: a fake upstream resolver on loopback driven by a per-test handler, a recording
//! SetSink, a client, and a forwarder on 127.0.0.1:0 wired to them.

#![allow(dead_code)]

use dns::{Forwarder, ForwarderConfig, Handle, Insert, RuleSets, SetSink, SinkError};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use policy::Policy;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Domain rules: a refused name, exact and wildcard allow rules, an allow_private rule and a deny
/// rule with a port condition (which fills sets instead of refusing).
pub const POLICY: &str = r#"
version = 1

[dns]
upstreams = ["127.0.0.1:5353"]

[[rule]]
name = "refused"
action = "deny"
to = ["blocked.example.test"]

[[rule]]
name = "api"
action = "allow"
proto = "tcp"
ports = [443]
to = ["api.example.test", "*.cdn.example.test", "www.example.test", "v6.example.test", "big.example.test", "long.example.test", "short.example.test"]

[[rule]]
name = "lan"
action = "allow"
proto = "tcp"
ports = [80]
to = ["nas.example.test"]
allow_private = true

[[rule]]
name = "smtp"
action = "deny"
proto = "tcp"
ports = [25]
to = ["mail.example.test"]
"#;

pub fn hname(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

pub fn a(name: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(hname(name), ttl, RData::A(A(ip.parse().unwrap())))
}

pub fn aaaa(name: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(hname(name), ttl, RData::AAAA(AAAA(ip.parse().unwrap())))
}

pub fn cname(name: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(hname(name), ttl, RData::CNAME(CNAME(hname(target))))
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A response to `q` with `answers`.
pub fn reply(q: &Message, answers: Vec<Record>) -> Message {
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(q.queries.clone());
    m.add_answers(answers);
    if q.edns.is_some() {
        m.set_edns(hickory_proto::op::Edns::new());
    }
    m
}

/// NXDOMAIN with an SOA whose minimum is `neg_ttl`.
pub fn nxdomain(q: &Message, neg_ttl: u32) -> Message {
    let mut m = reply(q, vec![]);
    m.metadata.response_code = ResponseCode::NXDomain;
    let soa = SOA::new(hname("ns.example.test."), hname("hostmaster.example.test."), 1, 3600, 600, 86400, neg_ttl);
    m.add_authority(Record::from_rdata(hname("example.test."), 3600, RData::SOA(soa)));
    m
}

/// Answers from a fixed record list: the CNAME chain from the question name, then the records
/// of the asked type at its end; NXDOMAIN (negative TTL 30) when the name has no records.
pub fn zone(records: Vec<Record>) -> impl Fn(&Message, bool) -> Vec<Act> + Send + Sync + 'static {
    move |q, _tcp| {
        let question = &q.queries[0];
        let mut name = question.name().to_lowercase();
        let mut answers = Vec::new();
        for _ in 0..8 {
            match records.iter().find(|r| r.record_type() == RecordType::CNAME && r.name.to_lowercase() == name) {
                Some(c) => {
                    answers.push(c.clone());
                    let RData::CNAME(t) = &c.data else { unreachable!() };
                    name = t.0.to_lowercase();
                }
                None => break,
            }
        }
        let finals: Vec<Record> = records.iter().filter(|r| r.name.to_lowercase() == name && r.record_type() == question.query_type()).cloned().collect();
        let exists = !answers.is_empty() || records.iter().any(|r| r.name.to_lowercase() == name);
        answers.extend(finals);
        if exists { vec![Act::Reply(reply(q, answers))] } else { vec![Act::Reply(nxdomain(q, 30))] }
    }
}

/// What the fake upstream does for one query.
pub enum Act {
    Reply(Message),
    Raw(Vec<u8>),
    /// Sent from another socket (another source port).
    FromOther(Vec<u8>),
    Sleep(Duration),
}

type Handler = Arc<dyn Fn(&Message, bool) -> Vec<Act> + Send + Sync>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A UDP socket on 127.0.0.1 with a receive buffer large enough for every query a test sends
/// at once: with the default buffer, 300 concurrent clients could overflow it and the fake
/// upstream would lose queries (a test failure that says nothing about the forwarder).
fn big_buffer_udp() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).unwrap();
    const SIZE: libc::c_int = 8 << 20;
    // SO_RCVBUFFORCE passes net.core.rmem_max (tests run as root); otherwise take what we get.
    // SAFETY: setsockopt with a valid fd and a c_int option value.
    let forced = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &SIZE as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced {
        let _ = s.set_recv_buffer_size(SIZE as usize);
    }
    s.set_nonblocking(true).unwrap();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    UdpSocket::from_std(s.into()).unwrap()
}

impl Upstream {
    pub async fn start(h: impl Fn(&Message, bool) -> Vec<Act> + Send + Sync + 'static) -> Upstream {
        let h: Handler = Arc::new(h);
        let (udp, tcp) = loop {
            let udp = big_buffer_udp();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (Arc::new(udp), tcp);
            }
        };
        let other = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = udp.local_addr().unwrap();
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let (h2, n) = (h.clone(), udp_queries.clone());
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((len, peer)) = udp.recv_from(&mut buf).await else { continue };
                let Ok(q) = Message::from_vec(&buf[..len]) else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                let (h, udp, other) = (h2.clone(), udp.clone(), other.clone());
                tokio::spawn(async move {
                    for act in h(&q, false) {
                        match act {
                            Act::Reply(m) => drop(udp.send_to(&m.to_vec().unwrap(), peer).await),
                            Act::Raw(b) => drop(udp.send_to(&b, peer).await),
                            Act::FromOther(b) => drop(other.send_to(&b, peer).await),
                            Act::Sleep(d) => tokio::time::sleep(d).await,
                        }
                    }
                });
            }
        });
        let n = tcp_queries.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else { continue };
                let (h, n) = (h.clone(), n.clone());
                tokio::spawn(async move {
                    while let Ok(msg) = read_framed(&mut s).await {
                        let Ok(q) = Message::from_vec(&msg) else { return };
                        n.fetch_add(1, Ordering::SeqCst);
                        for act in h(&q, true) {
                            match act {
                                Act::Reply(m) => drop(write_framed(&mut s, &m.to_vec().unwrap()).await),
                                Act::Raw(b) | Act::FromOther(b) => drop(write_framed(&mut s, &b).await),
                                Act::Sleep(d) => tokio::time::sleep(d).await,
                            }
                        }
                    }
                });
            }
        });
        Upstream { addr, udp_queries, tcp_queries, tasks: vec![udp_task, tcp_task] }
    }
}

pub async fn read_framed(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut b = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut b).await?;
    Ok(b)
}

pub async fn write_framed(s: &mut TcpStream, b: &[u8]) -> io::Result<()> {
    let mut f = (b.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(b);
    s.write_all(&f).await
}

/// One acked set element and when the sink returned.
#[derive(Debug, Clone)]
pub struct Acked {
    pub insert: Insert,
    pub at: Instant,
}

/// The table handle the test forwarders start with.
pub const TABLE: u64 = 1;

/// Records every batch; can be told to fail or to be slow, plays the kernel's table handle
/// (`table`: batches for any other are refused as for a replaced table) and a set size limit.
#[derive(Clone)]
pub struct Sink {
    pub log: Arc<Mutex<Vec<Acked>>>,
    pub batches: Arc<AtomicUsize>,
    pub fail: Arc<AtomicBool>,
    pub delay_ms: Arc<AtomicUsize>,
    /// The handle of the table "in place".
    pub table: Arc<std::sync::atomic::AtomicU64>,
    /// Most distinct addresses per set (0: no limit).
    pub set_size: Arc<AtomicUsize>,
}

impl Default for Sink {
    fn default() -> Self {
        Sink {
            log: Arc::default(),
            batches: Arc::default(),
            fail: Arc::default(),
            delay_ms: Arc::default(),
            table: Arc::new(std::sync::atomic::AtomicU64::new(TABLE)),
            set_size: Arc::default(),
        }
    }
}

impl SetSink for Sink {
    fn add(&mut self, table: u64, batch: &[Insert]) -> Result<(), SinkError> {
        if table != self.table.load(Ordering::SeqCst) {
            return Err(SinkError::TableReplaced);
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected kernel error").into());
        }
        let limit = self.set_size.load(Ordering::SeqCst);
        if limit > 0 {
            let log = self.log.lock().unwrap();
            for i in batch {
                let mut held: Vec<IpAddr> = log.iter().filter(|e| e.insert.set == i.set).map(|e| e.insert.addr).collect();
                held.sort();
                held.dedup();
                if !held.contains(&i.addr) && held.len() >= limit {
                    return Err(SinkError::SetFull);
                }
            }
        }
        let d = self.delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            std::thread::sleep(Duration::from_millis(d as u64));
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        // "Acked": the time is taken when add returns.
        let at = Instant::now();
        self.log.lock().unwrap().extend(batch.iter().map(|i| Acked { insert: i.clone(), at }));
        Ok(())
    }
}

impl Sink {
    pub fn entries(&self) -> Vec<Acked> {
        self.log.lock().unwrap().clone()
    }

    /// (set, address, timeout) of every acked element, in order.
    pub fn elements(&self) -> Vec<(String, IpAddr, u64)> {
        self.entries().into_iter().map(|a| (a.insert.set.to_string(), a.insert.addr, a.insert.timeout_ms)).collect()
    }

    /// The invariant: every address in the answer received at `received` went into every set it
    /// belongs to before `received`.
    pub fn assert_acked_before(&self, answer: &Message, received: Instant, sets: &[&str]) {
        let log = self.entries();
        for r in &answer.answers {
            let addr = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            for set in sets {
                let family_set = if addr.is_ipv4() { format!("{set}_v4") } else { format!("{set}_v6") };
                let hit = log.iter().find(|e| e.insert.addr == addr && *e.insert.set == *family_set);
                let e = hit.unwrap_or_else(|| panic!("{addr} never went into {family_set}: {log:?}"));
                assert!(e.at <= received, "{addr} acked after the client got the answer");
            }
        }
    }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

pub fn policy() -> Policy {
    let (p, diags) = policy::load(POLICY, &policy::StaticResolver::default());
    p.unwrap_or_else(|| panic!("{diags:?}"))
}

/// Set names `RULE_v4` / `RULE_v6` for every domain rule.
pub fn sets(p: &Policy) -> Vec<Option<RuleSets>> {
    p.rules.iter().map(|r| (!r.cond.domains.is_empty()).then(|| RuleSets { v4: format!("{}_v4", r.name).into(), v6: format!("{}_v6", r.name).into() })).collect()
}

pub struct Running {
    pub addr: SocketAddr,
    pub handle: Handle,
    pub sink: Sink,
    pub policy: Arc<Policy>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// The running policy as newly applied in the table with handle `table`.
    pub fn applied(&self, table: u64) -> dns::Applied {
        dns::Applied { policy: self.policy.clone(), sets: sets(&self.policy), table }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Starts a forwarder on 127.0.0.1:0 asking `upstreams`, after `tweak` adjusted the `[dns]`
/// settings. SO_MARK is set when running as root (as the real forwarder does).
pub async fn forwarder(upstreams: &[SocketAddr], own: Vec<IpAddr>, tweak: impl FnOnce(&mut policy::DnsConfig)) -> Running {
    let mut p = policy();
    p.dns.listen = vec!["127.0.0.1:0".parse().unwrap()];
    p.dns.upstreams = upstreams.to_vec();
    p.dns.timeout_ms = 1000;
    p.dns.min_ttl = 60;
    p.dns.max_ttl = 3600;
    p.dns.grace = 120;
    p.dns.cache_size = 0;
    if !is_root() {
        p.dns.mark = 0;
    }
    tweak(&mut p.dns);
    let sets = sets(&p);
    let sink = Sink::default();
    let policy = Arc::new(p);
    let cfg = ForwarderConfig { policy: policy.clone(), sets, table: TABLE, own_addresses: own };
    let f = Forwarder::bind(cfg, Box::new(sink.clone())).await.unwrap();
    let addr = f.local_addrs()[0];
    let handle = f.handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        f.serve(async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running { addr, handle, sink, policy, stop: Some(tx), task: Some(task) }
}

pub fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(hname(name), t));
    m
}

/// Asks over UDP; returns the answer and when it arrived.
pub async fn ask(server: SocketAddr, name: &str, t: RecordType) -> (Message, Instant) {
    ask_msg(server, query(name, t)).await
}

pub async fn ask_msg(server: SocketAddr, q: Message) -> (Message, Instant) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(10), s.recv(&mut buf)).await.expect("no answer within 10 s").unwrap();
    let at = Instant::now();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    (m, at)
}

pub async fn ask_tcp(server: SocketAddr, name: &str, t: RecordType) -> (Message, Instant) {
    let q = query(name, t);
    let mut s = TcpStream::connect(server).await.unwrap();
    write_framed(&mut s, &q.to_vec().unwrap()).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), read_framed(&mut s)).await.expect("no answer within 10 s").unwrap();
    let at = Instant::now();
    let m = Message::from_vec(&b).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    (m, at)
}

pub fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}
