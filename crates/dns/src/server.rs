//! The forwarder: listeners on the `[dns] listen` addresses (UDP and TCP), the per-query flow
//! (cache, policy, upstream, set inserts, answer), and the handle the binary keeps.
//!
//! Order of a query: validate → cache hit whose set elements are known to outlive the answer:
//! answer at once (no task, no allocation) → refused name: NXDOMAIN → otherwise a task asks the
//! upstreams, processes the answer, waits until the kernel acked the set elements, and only then
//! answers. An answer never reaches a client before its addresses are in the sets.
//!
//! Where that runs: UDP queries are read by blocking OS threads (see `udp`), which do the first
//! two steps themselves. The rest (with a copy of the packet) they start up to its first wait
//! and hand over a channel to the tokio runtime, which finishes it and answers through the same
//! socket (see `SlowStart`). TCP runs on the runtime entirely.

use crate::cache::{Cache, Entry, KernelState};
use crate::inserter::{Insert, Inserter, SetSink};
use crate::message::{self, Query};
use crate::rules::{self, Planned, RuleSets, Rules};
use crate::stats::{Stats, StatsSnapshot};
use crate::udp::{self, Listener, Threads};
use crate::upstream::{SocketError, Upstreams, read_framed};
use crate::error::Error;
use policy::Policy;
use policy::{DnsConfig, NameDecision};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

/// Queries of one UDP listen address waiting for an upstream or the kernel at once; more are
/// dropped (and counted) so a flood of uncached names cannot grow memory without bound. Clients
/// retry.
const MAX_INFLIGHT: usize = 4096;
/// Concurrent TCP client connections; more are closed at once.
const MAX_TCP_CLIENTS: usize = 256;
/// A TCP client connection idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the forwarder needs from its caller.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// The policy: its domain rules decide names, `policy.dns` configures the forwarder.
    pub policy: Arc<Policy>,
    /// Per rule index of `policy.rules`, the nftables sets of that rule (`None` for rules without
    /// domains, or whose sets the caller does not want filled).
    pub sets: Vec<Option<RuleSets>>,
    /// The host's own addresses: the rebinding guard keeps them out of allow sets.
    pub own_addresses: Vec<IpAddr>,
}

#[derive(Debug)]
struct State {
    cache: Cache,
    kernel: KernelState,
}

#[derive(Debug)]
struct Shared {
    cfg: DnsConfig,
    rules: Rules,
    own: RwLock<Arc<[IpAddr]>>,
    state: Mutex<State>,
    stats: Arc<Stats>,
    upstreams: Upstreams,
    inserter: Inserter,
    /// How long a client waits for the kernel's ack before it gets SERVFAIL.
    insert_deadline: Duration,
}

/// A forwarder whose sockets are bound; [`Forwarder::serve`] runs it.
#[derive(Debug)]
pub struct Forwarder {
    shared: Arc<Shared>,
    /// Per listen address, its UDP sockets (one per CPU, see `udp`).
    udp: Vec<Vec<Listener>>,
    tcp: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
}

/// What the binary keeps while the forwarder runs: counters, and the two events it must tell the
/// forwarder about. Does not keep the forwarder alive.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Weak<Shared>,
    stats: Arc<Stats>,
}

impl Handle {
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The table was re-applied (its sets may be empty): forget which elements the kernel has,
    /// so the next answer for each name inserts again, cached or not. Call it after the new
    /// table is in place; acks of inserts submitted before the call are not trusted.
    pub fn forget_kernel_state(&self) {
        if let Some(s) = self.shared.upgrade() {
            s.state.lock().unwrap().kernel.clear();
        }
    }

    /// The host's addresses changed. Cached answers were guarded against the old list, so the
    /// cache is emptied.
    pub fn set_own_addresses(&self, own: Vec<IpAddr>) {
        if let Some(s) = self.shared.upgrade() {
            *s.own.write().unwrap() = own.into();
            s.state.lock().unwrap().cache.clear();
        }
    }
}

impl Forwarder {
    /// Opens the upstream socket pools (failing with [`Error::Mark`] without CAP_NET_ADMIN),
    /// binds UDP and TCP on every listen address (port 0: one free port shared by UDP and TCP)
    /// and starts the set inserter thread. Must run inside a tokio runtime.
    pub async fn bind(cfg: ForwarderConfig, sink: Box<dyn SetSink>) -> Result<Forwarder, Error> {
        let dns = cfg.policy.dns.clone();
        if dns.upstreams.is_empty() {
            return Err(Error::NoUpstreams);
        }
        if dns.listen.is_empty() {
            return Err(Error::NoListen);
        }
        let stats = Arc::new(Stats::default());
        let timeout = Duration::from_millis(u64::from(dns.timeout_ms.max(1)));
        let upstreams = Upstreams::new(&dns.upstreams, timeout, dns.mark, stats.clone()).map_err(|(addr, e)| match e {
            SocketError::Mark(source) => Error::Mark { mark: dns.mark, source },
            SocketError::Other(source) => Error::Upstream { addr, source },
        })?;
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut addrs = Vec::new();
        let cpus = udp::allowed_cpus();
        for &addr in &dns.listen {
            let (u, t) = bind_pair(addr, &cpus)?;
            addrs.push(u[0].sock.local_addr().map_err(|source| Error::Listen { addr, source })?);
            udp.push(u);
            tcp.push(t);
        }
        let inserter = Inserter::start(sink, stats.clone()).map_err(Error::Thread)?;
        let shared = Shared {
            rules: Rules::new(cfg.policy.clone(), cfg.sets),
            own: RwLock::new(cfg.own_addresses.into()),
            state: Mutex::new(State { cache: Cache::new(dns.cache_size), kernel: KernelState::default() }),
            stats,
            upstreams,
            inserter,
            // The kernel acks a batch in well under a millisecond; this only bounds a stuck one.
            insert_deadline: timeout.max(Duration::from_secs(2)),
            cfg: dns,
        };
        Ok(Forwarder { shared: Arc::new(shared), udp, tcp, addrs })
    }

    /// The bound addresses, in the order of `listen` (UDP and TCP share each).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    pub fn handle(&self) -> Handle {
        Handle { shared: Arc::downgrade(&self.shared), stats: self.shared.stats.clone() }
    }

    /// Serves until `shutdown` completes; then stops every listener thread (joined before this
    /// returns) and every in-flight query.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let mut set = JoinSet::new();
        // Dropped on every way out, also when this future is dropped before `shutdown`
        // completes: the threads must not outlive the forwarder and keep its port.
        let mut threads = Vec::new();
        let runtime = tokio::runtime::Handle::current();
        for listeners in self.udp {
            let (tx, rx) = mpsc::channel(MAX_INFLIGHT);
            set.spawn(udp_slow_loop(rx));
            let slow = SlowStart { shared: self.shared.clone(), runtime: runtime.clone(), inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)), tx };
            let t = Threads::start(&listeners, move |sock, stop, affinity| udp_fast_loop(&slow, sock, stop, affinity)).map_err(Error::Thread)?;
            threads.push(t);
        }
        for t in self.tcp {
            set.spawn(tcp_loop(self.shared.clone(), t));
        }
        shutdown.await;
        for t in &mut threads {
            t.stop();
        }
        set.shutdown().await;
        Ok(())
    }
}

/// Binds UDP (the group of `udp`) and TCP on `addr`; for port 0 on the same free port.
fn bind_pair(addr: SocketAddr, cpus: &[usize]) -> Result<(Vec<Listener>, TcpListener), Error> {
    let err = |source| Error::Listen { addr, source };
    for _ in 0..16 {
        let first = udp::bind_first(addr).map_err(err)?;
        let actual = first.local_addr().map_err(err)?.as_socket().ok_or_else(|| err(io::Error::other("no IP address")))?;
        match bind_tcp(actual) {
            Ok(tcp) => return Ok((udp::bind_rest(first, cpus).map_err(err)?, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && addr.port() == 0 => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(io::Error::new(io::ErrorKind::AddrInUse, "no port free for both UDP and TCP")))
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Binds and serves until `shutdown` completes.
pub async fn run(cfg: ForwarderConfig, sink: Box<dyn SetSink>, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Forwarder::bind(cfg, sink).await?.serve(shutdown).await
}

/// What the synchronous first look at a query decided.
enum Step {
    /// `out` holds the answer.
    Answered,
    /// A cache hit whose elements must be refreshed first.
    Refresh(Arc<Entry>),
    /// Ask upstream.
    Resolve(NameDecision),
}

/// A UDP query a listener thread could not answer at once, already started: the rest of its
/// work, from the wait for the upstream or the kernel to the answer.
type SlowQuery = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a listener thread needs to start slow queries and hand them to the runtime.
struct SlowStart {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    /// Slow queries of this listen address started and not yet finished (waiting in the channel
    /// or running): at most [`MAX_INFLIGHT`].
    inflight: Arc<Semaphore>,
    tx: mpsc::Sender<SlowQuery>,
}

impl SlowStart {
    /// Starts the slow path of a query here, on the listener thread, up to its first wait (for
    /// a cache hit that needs a refresh: the insert is queued; otherwise the query is on its way
    /// to the upstream), then hands it to the runtime.
    ///
    /// Why not hand it over unstarted: waking the runtime thread costs, on an idle vCPU, about as
    /// much as the upstream's whole answer (tens of µs in the bench VM). Handed over unstarted,
    /// that wake-up came before the upstream query left, on the path of every uncached answer;
    /// in the bench, forwarding alone then needed 24 µs of CPU per answer where every other run
    /// needed 15 to 21 (BENCHMARKS.md, DNS forwarder). Started here, the runtime wakes while the
    /// upstream works.
    ///
    /// Safe because the future only meets its first wait through tokio resources of the
    /// runtime, whose context this thread entered (see [`udp_fast_loop`]): what it registered
    /// with the no-op waker of this first poll is registered again when the runtime polls the
    /// spawned task, and a wake-up that came in between is not lost (readiness and channel
    /// values are kept, and a spawned task is always polled).
    fn start(&self, raw: &[u8], step: Step, peer: SocketAddr, sock: &Arc<std::net::UdpSocket>) {
        // Taken before anything starts: a query dropped later would leave its upstream id
        // registered.
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            Stats::inc(&self.shared.stats.overload_dropped);
            return;
        };
        let (shared, raw, sock) = (self.shared.clone(), raw.to_vec(), sock.clone());
        let mut query: SlowQuery = Box::pin(async move {
            let _permit = permit;
            // Parsed again: the future owns its copy of the packet.
            let Ok(q) = message::parse_query(&raw) else { return };
            let mut out = Vec::new();
            shared.finish(&q, step, q.max_udp(), &mut out).await;
            udp::send_nonblocking(&sock, &out, peer).await;
        });
        if query.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_ready() {
            return;
        }
        // Fails only once the runtime side is gone (shutting down); the permits keep the
        // channel from filling.
        let _ = self.tx.try_send(query);
    }
}

/// Datagrams a listener thread takes per `recvmmsg`.
const BATCH: usize = 32;

/// A listener thread (see `udp`): blocking receive of whatever is queued, validate, answer cache
/// hits and refused names inline, send those answers together, start the rest and hand them to
/// [`udp_slow_loop`]. Allocates nothing for the queries it answers itself.
fn udp_fast_loop(slow: &SlowStart, sock: &Arc<std::net::UdpSocket>, stop: &AtomicBool, affinity: &mut udp::Affinity) {
    // For the first poll of slow queries (SlowStart::start); nothing on the hit path uses it.
    let _runtime = slow.runtime.enter();
    let shared = &*slow.shared;
    let mut batch = udp::Batch::new(BATCH);
    loop {
        let r = batch.recv(sock);
        // Checked after every receive: shutdown(2) ends a blocked receive with 0 bytes.
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let n = match r {
            Ok(n) => n,
            // The receive timeout of the loaded mode (see udp::Affinity).
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("leash dns: receiving a query: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        affinity.after_batch(n);
        for i in 0..n {
            let (raw, peer, out) = batch.get(i);
            let Some(q) = shared.accept(raw) else { continue };
            match shared.first_look(&q, q.max_udp(), out) {
                Step::Answered => batch.answer(i),
                step => {
                    if let Some(peer) = peer.addr() {
                        slow.start(raw, step, peer, sock);
                    }
                }
            }
        }
        batch.send(sock);
    }
}

/// The runtime side of one UDP listen address: runs the slow queries the listener threads
/// started. Their number is bounded by the threads (`SlowStart::inflight`).
async fn udp_slow_loop(mut rx: mpsc::Receiver<SlowQuery>) {
    let mut tasks = JoinSet::new();
    while let Some(query) = rx.recv().await {
        while tasks.try_join_next().is_some() {}
        tasks.spawn(query);
    }
}

async fn tcp_loop(shared: Arc<Shared>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    let mut tasks = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("leash dns: accepting a TCP client: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
        tasks.spawn(tcp_client(shared.clone(), stream, permit));
    }
}

/// One TCP client: length-prefixed queries answered in order until it closes or idles.
async fn tcp_client(shared: Arc<Shared>, mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    let mut out = Vec::new();
    let mut frame = Vec::new();
    loop {
        let Ok(Ok(msg)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else { return };
        let Some(q) = shared.accept(&msg) else { continue };
        let step = shared.first_look(&q, usize::from(u16::MAX), &mut out);
        if !matches!(step, Step::Answered) {
            shared.finish(&q, step, usize::from(u16::MAX), &mut out).await;
        }
        frame.clear();
        frame.extend_from_slice(&(out.len() as u16).to_be_bytes());
        frame.extend_from_slice(&out);
        if !matches!(tokio::time::timeout(TCP_IDLE, stream.write_all(&frame)).await, Ok(Ok(()))) {
            return;
        }
    }
}

impl Shared {
    /// Validates a client packet; malformed ones are counted and dropped without an answer: a
    /// FORMERR would let anyone who spoofs our clients' addresses bounce packets off us, and a
    /// sender that cannot form a query has no use for one.
    fn accept<'a>(&self, raw: &'a [u8]) -> Option<Query<'a>> {
        match message::parse_query(raw) {
            Ok(q) => {
                Stats::inc(&self.stats.queries);
                Some(q)
            }
            Err(_) => {
                Stats::inc(&self.stats.malformed_dropped);
                None
            }
        }
    }

    /// Everything that needs no waiting: a cache hit whose elements outlive the answer, or a
    /// refused name. Holds the state lock only for the lookup.
    fn first_look(&self, q: &Query<'_>, max_len: usize, out: &mut Vec<u8>) -> Step {
        if self.cfg.cache_size > 0 {
            let now = Instant::now();
            let key = q.key();
            let mut st = self.state.lock().unwrap();
            if let Some(e) = st.cache.get(key.as_bytes(), now) {
                let age = e.age(now);
                let fresh = !e.inserts.iter().any(|p| st.kernel.needs(p, p.ttl.saturating_sub(age), self.cfg.grace, now));
                drop(st);
                if !fresh {
                    return Step::Refresh(e);
                }
                message::write_answer(&e.prepared, q, age, max_len, out);
                Stats::inc(&self.stats.cache_hits);
                return Step::Answered;
            }
        }
        let decision = self.rules.decide(&q.qname);
        if let Some(rule) = decision.refuse {
            Stats::inc(&self.stats.refused_names);
            eprintln!("leash dns: refused {} (rule {})", q.qname.to_dotted(), self.rules.rule_name(rule));
            message::nxdomain(q, out);
            return Step::Answered;
        }
        Step::Resolve(decision)
    }

    async fn finish(&self, q: &Query<'_>, step: Step, max_len: usize, out: &mut Vec<u8>) {
        match step {
            Step::Answered => {}
            Step::Refresh(e) => self.refresh(q, &e, max_len, out).await,
            Step::Resolve(d) => self.resolve(q, &d, max_len, out).await,
        }
    }

    async fn refresh(&self, q: &Query<'_>, e: &Entry, max_len: usize, out: &mut Vec<u8>) {
        let now = Instant::now();
        let age = e.age(now);
        let need: Vec<Planned> = {
            let st = self.state.lock().unwrap();
            e.inserts.iter().filter(|p| st.kernel.needs(p, p.ttl.saturating_sub(age), self.cfg.grace, now)).copied().collect()
        };
        if !self.insert(q, &need, age, now).await {
            return message::servfail(q, out);
        }
        message::write_answer(&e.prepared, q, age, max_len, out);
        Stats::inc(&self.stats.cache_hits);
    }

    async fn resolve(&self, q: &Query<'_>, decision: &NameDecision, max_len: usize, out: &mut Vec<u8>) {
        let Some(resp) = self.upstreams.exchange(q).await else {
            Stats::inc(&self.stats.upstream_failures);
            return message::servfail(q, out);
        };
        let own = self.own.read().unwrap().clone();
        let outcome = match rules::process(&self.rules, decision, q, &resp, &own, self.cfg.max_ttl) {
            Ok(o) => o,
            Err(_) => {
                Stats::inc(&self.stats.mismatched_responses);
                Stats::inc(&self.stats.upstream_failures);
                return message::servfail(q, out);
            }
        };
        for b in &outcome.blocked {
            Stats::inc(&self.stats.rebinding_blocked);
            eprintln!(
                "leash dns: rebinding guard: {} -> {} removed from the answer (private or own address; rule {} has no allow_private)",
                q.qname.to_dotted(),
                b.addr,
                self.rules.rule_name(b.rule)
            );
        }
        let now = Instant::now();
        let need: Vec<Planned> = {
            let st = self.state.lock().unwrap();
            outcome.inserts.iter().filter(|p| st.kernel.needs(p, p.ttl, self.cfg.grace, now)).copied().collect()
        };
        if !self.insert(q, &need, 0, now).await {
            return message::servfail(q, out);
        }
        message::write_answer(&outcome.prepared, q, 0, max_len, out);
        if self.cfg.cache_size > 0 && outcome.prepared.lifetime.is_some() {
            let entry = Arc::new(Entry { prepared: outcome.prepared, inserts: outcome.inserts, stored: now });
            self.state.lock().unwrap().cache.put(q.key().as_bytes(), entry, now);
        }
    }

    /// Sends `planned` (answered `age` seconds ago, for `q`'s name) to the kernel and waits for
    /// the ack; on success records the new expiries. `true` for nothing to do.
    async fn insert(&self, q: &Query<'_>, planned: &[Planned], age: u32, submitted: Instant) -> bool {
        if planned.is_empty() {
            return true;
        }
        let name: Arc<str> = q.qname.to_dotted().into();
        let inserts: Vec<Insert> = planned
            .iter()
            .map(|p| Insert {
                set: self.rules.set_name(p.set).clone(),
                addr: p.addr,
                timeout_ms: self.cfg.element_timeout_ms(p.ttl.saturating_sub(age)),
                name: Some(name.clone()),
            })
            .collect();
        let timeouts: Vec<u64> = inserts.iter().map(|i| i.timeout_ms).collect();
        let generation = self.state.lock().unwrap().kernel.generation();
        if !self.inserter.insert(inserts, self.insert_deadline).await {
            return false;
        }
        let mut st = self.state.lock().unwrap();
        for (p, t) in planned.iter().zip(timeouts) {
            st.kernel.inserted(p.set, p.addr, submitted, t, generation);
        }
        true
    }
}
