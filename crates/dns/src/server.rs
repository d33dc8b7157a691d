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
//!
//! **Which policy.** Names are decided by one [`Generation`]: an applied policy, the names of
//! its sets and the kernel's handle of the table they are in, with its own cache and its own
//! record of what the kernel holds. When the table is re-applied the binary loads the applied
//! policy and hands it over ([`Handle::follow`]); the new generation replaces the old one at
//! once, and every query decided from then on uses it. When the applied policy cannot be known
//! ([`Handle::suspend`]) there is no generation: every query gets SERVFAIL, because any name may
//! be one of the unknown policy's domain rules (an answer without its insert would let a deny
//! rule's address through a broader allow). Inserts carry the table handle of their generation
//! and the sink refuses them for any other table, so a query still in flight across a re-apply
//! gets SERVFAIL instead of feeding a set of the new table with the old policy's decision.
//!
//! **TCP.** At most [`MAX_TCP_CLIENTS`] connections; one is closed after [`TCP_IDLE`] without
//! a query, and when all are taken a new connection closes the one idle longest (as unbound and
//! knot do), so that holding connections open cannot shut others out of DNS over TCP.

use crate::cache::{Cache, Entry, KernelState};
use crate::error::Error;
use crate::inserter::{Insert, Inserter, Outcome, SetSink};
use crate::log::Logs;
use crate::message::{self, Query};
use crate::rules::{self, Planned, RuleSets, Rules};
use crate::stats::{Stats, StatsSnapshot};
use crate::udp::{self, Listener, Threads};
use crate::upstream::{SocketError, Upstreams, read_framed};
use policy::Policy;
use policy::{DnsConfig, NameDecision};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinSet};

/// Queries of one UDP listen address waiting for an upstream or the kernel at once; more are
/// dropped (and counted) so a flood of uncached names cannot grow memory without bound. Clients
/// retry.
const MAX_INFLIGHT: usize = 4096;
/// Concurrent TCP client connections; when all are taken, a new one closes the one idle longest.
pub const MAX_TCP_CLIENTS: usize = 256;
/// A TCP client connection without a whole query (or whose answer cannot be written) this long
/// is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the forwarder needs from its caller.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// The applied policy: its domain rules decide names, `policy.dns` configures the forwarder
    /// (its `listen` addresses for the life of the forwarder).
    pub policy: Arc<Policy>,
    /// Per rule index of `policy.rules`, the nftables sets of that rule (`None` for rules without
    /// domains, or whose sets the caller does not want filled).
    pub sets: Vec<Option<RuleSets>>,
    /// The kernel's handle of the table the sets are in: inserts go into that table only.
    pub table: u64,
    /// The host's own addresses: the rebinding guard keeps them out of allow sets.
    pub own_addresses: Vec<IpAddr>,
}

/// A newly applied policy for [`Handle::follow`].
#[derive(Debug, Clone)]
pub struct Applied {
    pub policy: Arc<Policy>,
    /// As [`ForwarderConfig::sets`].
    pub sets: Vec<Option<RuleSets>>,
    /// As [`ForwarderConfig::table`].
    pub table: u64,
}

#[derive(Debug)]
struct State {
    cache: Cache,
    kernel: KernelState,
}

/// One applied policy the forwarder decides by (see the module documentation).
#[derive(Debug)]
struct Generation {
    cfg: DnsConfig,
    rules: Rules,
    upstreams: Arc<Upstreams>,
    table: u64,
    state: Mutex<State>,
    /// How long a client waits for the kernel's ack before it gets SERVFAIL.
    insert_deadline: Duration,
}

impl Generation {
    fn new(applied: Applied, upstreams: Arc<Upstreams>) -> Generation {
        let cfg = applied.policy.dns.clone();
        let timeout = Duration::from_millis(u64::from(cfg.timeout_ms.max(1)));
        Generation {
            rules: Rules::new(applied.policy, applied.sets),
            upstreams,
            table: applied.table,
            state: Mutex::new(State { cache: Cache::new(cfg.cache_size), kernel: KernelState::default() }),
            // The kernel acks a batch in well under a millisecond; this only bounds a stuck one.
            insert_deadline: timeout.max(Duration::from_secs(2)),
            cfg,
        }
    }
}

/// What the upstream pools depend on: a policy with the same ones keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolKey {
    upstreams: Vec<SocketAddr>,
    mark: u32,
    timeout_ms: u32,
}

impl PoolKey {
    fn of(d: &DnsConfig) -> PoolKey {
        PoolKey { upstreams: d.upstreams.clone(), mark: d.mark, timeout_ms: d.timeout_ms }
    }
}

#[derive(Debug)]
struct Shared {
    /// `[dns] listen` as configured (before port 0 is resolved): a policy with other listen
    /// addresses needs a restart.
    listen: Vec<SocketAddr>,
    /// The generation queries are decided by; `None` while the applied policy is unknown.
    current: RwLock<Option<Arc<Generation>>>,
    /// The pools of the last generation, kept across a suspension.
    pools: Mutex<Option<(PoolKey, Arc<Upstreams>)>>,
    own: RwLock<Arc<[IpAddr]>>,
    stats: Arc<Stats>,
    inserter: Inserter,
    logs: Arc<Logs>,
    /// Notified when the sink refused an insert because its table was replaced.
    replaced: Arc<Notify>,
}

impl Shared {
    fn current(&self) -> Option<Arc<Generation>> {
        self.current.read().unwrap().clone()
    }

    fn pools_for(&self, d: &DnsConfig) -> Result<Arc<Upstreams>, Error> {
        let key = PoolKey::of(d);
        let mut pools = self.pools.lock().unwrap();
        if let Some((k, u)) = &*pools
            && *k == key
        {
            return Ok(u.clone());
        }
        let u = Arc::new(open_upstreams(d, self.stats.clone())?);
        *pools = Some((key, u.clone()));
        Ok(u)
    }
}

fn open_upstreams(dns: &DnsConfig, stats: Arc<Stats>) -> Result<Upstreams, Error> {
    if dns.upstreams.is_empty() {
        return Err(Error::NoUpstreams);
    }
    let timeout = Duration::from_millis(u64::from(dns.timeout_ms.max(1)));
    Upstreams::new(&dns.upstreams, timeout, dns.mark, stats).map_err(|(addr, e)| match e {
        SocketError::Mark(source) => Error::Mark { mark: dns.mark, source },
        SocketError::Other(source) => Error::Upstream { addr, source },
    })
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

/// The listen sockets, bound before the forwarder exists: `leash dns` binds them as root (port
/// 53) and then drops to the forwarder's user.
#[derive(Debug)]
pub struct Listeners {
    listen: Vec<SocketAddr>,
    udp: Vec<Vec<Listener>>,
    tcp: Vec<std::net::TcpListener>,
    addrs: Vec<SocketAddr>,
}

impl Listeners {
    /// Binds UDP and TCP on every address (port 0: one free port shared by UDP and TCP).
    pub fn bind(listen: &[SocketAddr]) -> Result<Listeners, Error> {
        if listen.is_empty() {
            return Err(Error::NoListen);
        }
        let cpus = udp::allowed_cpus();
        let mut l = Listeners { listen: listen.to_vec(), udp: Vec::new(), tcp: Vec::new(), addrs: Vec::new() };
        for &addr in listen {
            let (u, t) = bind_pair(addr, &cpus)?;
            l.addrs.push(u[0].sock.local_addr().map_err(|source| Error::Listen { addr, source })?);
            l.udp.push(u);
            l.tcp.push(t);
        }
        Ok(l)
    }

    /// The bound addresses, in the order of `listen`.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// What the binary keeps while the forwarder runs: counters, and the events it must tell the
/// forwarder about. Does not keep the forwarder alive.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Weak<Shared>,
    stats: Arc<Stats>,
    replaced: Arc<Notify>,
}

impl Handle {
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Decides names by `applied` from now on: its rules, its sets, its table, an empty cache
    /// and no record of what the kernel holds. Must run inside the runtime (new upstream pools
    /// start tasks there). Fails, changing nothing, when the policy listens elsewhere (that
    /// needs a restart) or its upstream sockets cannot be opened.
    pub fn follow(&self, applied: Applied) -> Result<(), Error> {
        let Some(s) = self.shared.upgrade() else { return Ok(()) };
        if applied.policy.dns.listen != s.listen {
            return Err(Error::ListenChanged { from: s.listen.clone(), to: applied.policy.dns.listen.clone() });
        }
        let upstreams = s.pools_for(&applied.policy.dns)?;
        let g = Arc::new(Generation::new(applied, upstreams));
        *s.current.write().unwrap() = Some(g);
        Stats::inc(&s.stats.policy_reloads);
        Ok(())
    }

    /// The applied policy is not known (it could not be loaded, or there is no table): every
    /// query gets SERVFAIL until [`Handle::follow`].
    pub fn suspend(&self) {
        if let Some(s) = self.shared.upgrade() {
            *s.current.write().unwrap() = None;
        }
    }

    /// Whether queries are answered (a policy is followed).
    pub fn is_following(&self) -> bool {
        self.shared.upgrade().is_some_and(|s| s.current().is_some())
    }

    /// Completes when an insert was refused because the table it was decided for had been
    /// replaced: the binary then looks at the table at once instead of at its next poll.
    pub async fn table_replaced(&self) {
        self.replaced.notified().await
    }

    /// The host's addresses changed. Cached answers were guarded against the old list, so the
    /// cache is emptied.
    pub fn set_own_addresses(&self, own: Vec<IpAddr>) {
        if let Some(s) = self.shared.upgrade() {
            *s.own.write().unwrap() = own.into();
            if let Some(g) = s.current() {
                g.state.lock().unwrap().cache.clear();
            }
        }
    }
}

impl Forwarder {
    /// Opens the upstream socket pools (failing with [`Error::Mark`] without CAP_NET_ADMIN),
    /// binds UDP and TCP on every listen address (port 0: one free port shared by UDP and TCP)
    /// and starts the set inserter thread. Must run inside a tokio runtime.
    pub async fn bind(cfg: ForwarderConfig, sink: Box<dyn SetSink>) -> Result<Forwarder, Error> {
        let listeners = Listeners::bind(&cfg.policy.dns.listen)?;
        Forwarder::with_listeners(cfg, listeners, sink)
    }

    /// [`Forwarder::bind`] on sockets bound before (see [`Listeners`]), which must be those of
    /// `cfg.policy.dns.listen`. Must run inside a tokio runtime.
    pub fn with_listeners(cfg: ForwarderConfig, listeners: Listeners, sink: Box<dyn SetSink>) -> Result<Forwarder, Error> {
        if listeners.listen != cfg.policy.dns.listen {
            return Err(Error::ListenChanged { from: listeners.listen, to: cfg.policy.dns.listen.clone() });
        }
        let stats = Arc::new(Stats::default());
        let logs = Arc::new(Logs::default());
        let upstreams = Arc::new(open_upstreams(&cfg.policy.dns, stats.clone())?);
        let mut tcp = Vec::new();
        for (t, &addr) in listeners.tcp.into_iter().zip(&listeners.listen) {
            tcp.push(TcpListener::from_std(t).map_err(|source| Error::Listen { addr, source })?);
        }
        let inserter = Inserter::start(sink, stats.clone(), logs.clone()).map_err(Error::Thread)?;
        let key = PoolKey::of(&cfg.policy.dns);
        let g = Generation::new(Applied { policy: cfg.policy, sets: cfg.sets, table: cfg.table }, upstreams.clone());
        let shared = Shared {
            listen: listeners.listen,
            current: RwLock::new(Some(Arc::new(g))),
            pools: Mutex::new(Some((key, upstreams))),
            own: RwLock::new(cfg.own_addresses.into()),
            stats,
            inserter,
            logs,
            replaced: Arc::new(Notify::new()),
        };
        Ok(Forwarder { shared: Arc::new(shared), udp: listeners.udp, tcp, addrs: listeners.addrs })
    }

    /// The bound addresses, in the order of `listen` (UDP and TCP share each).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    pub fn handle(&self) -> Handle {
        Handle { shared: Arc::downgrade(&self.shared), stats: self.shared.stats.clone(), replaced: self.shared.replaced.clone() }
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
fn bind_pair(addr: SocketAddr, cpus: &[usize]) -> Result<(Vec<Listener>, std::net::TcpListener), Error> {
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

fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
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
    /// to the upstream), then hands it to the runtime. It finishes in the generation its first
    /// look was made in.
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
    fn start(&self, raw: &[u8], g: Arc<Generation>, step: Step, peer: SocketAddr, sock: &Arc<std::net::UdpSocket>) {
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
            shared.finish(&g, &q, step, q.max_udp(), &mut out).await;
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
        // One generation for the whole batch: the queries of one receive are decided alike.
        let g = shared.current();
        for i in 0..n {
            let (raw, peer, out) = batch.get(i);
            let Some(q) = shared.accept(raw) else { continue };
            let Some(g) = &g else {
                shared.no_policy(&q, out);
                batch.answer(i);
                continue;
            };
            match shared.first_look(g, &q, q.max_udp(), out) {
                Step::Answered => batch.answer(i),
                step => {
                    if let Some(peer) = peer.addr() {
                        slow.start(raw, g.clone(), step, peer, sock);
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

/// One TCP client connection as the accept loop sees it.
#[derive(Debug)]
struct TcpConn {
    /// When it last finished a query or was accepted (busy: when its query arrived).
    since: Instant,
    /// A query of it is being answered.
    busy: bool,
    abort: AbortHandle,
}

/// The TCP connections of one listen address.
#[derive(Debug, Default)]
struct TcpConns {
    next: u64,
    conns: HashMap<u64, TcpConn>,
}

impl TcpConns {
    /// The connection to close for a new one: the one idle longest, or, when every one is
    /// answering a query, the one whose query came first.
    fn victim(&self) -> Option<u64> {
        self.conns.iter().min_by_key(|(_, c)| (c.busy, c.since)).map(|(&id, _)| id)
    }
}

/// Takes a TCP connection out of [`TcpConns`] however its task ends (also when it is aborted).
struct TcpSlot {
    conns: Arc<Mutex<TcpConns>>,
    id: u64,
}

impl TcpSlot {
    fn mark(&self, busy: bool) {
        if let Some(c) = self.conns.lock().unwrap().conns.get_mut(&self.id) {
            c.busy = busy;
            c.since = Instant::now();
        }
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        self.conns.lock().unwrap().conns.remove(&self.id);
    }
}

async fn tcp_loop(shared: Arc<Shared>, listener: TcpListener) {
    let conns = Arc::new(Mutex::new(TcpConns::default()));
    let mut tasks = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                shared.logs.clients.line(&shared.stats, Instant::now(), || format!("accepting a TCP client: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while tasks.try_join_next().is_some() {}
        // Held while the task is spawned and registered, so that its slot's removal (when it
        // ends at once) comes after the registration.
        let mut c = conns.lock().unwrap();
        if c.conns.len() >= MAX_TCP_CLIENTS
            && let Some(id) = c.victim()
            && let Some(v) = c.conns.remove(&id)
        {
            v.abort.abort();
            Stats::inc(&shared.stats.tcp_evicted);
        }
        c.next += 1;
        let id = c.next;
        let slot = TcpSlot { conns: conns.clone(), id };
        let abort = tasks.spawn(tcp_client(shared.clone(), stream, slot));
        c.conns.insert(id, TcpConn { since: Instant::now(), busy: false, abort });
    }
}

/// One TCP client: length-prefixed queries answered in order until it closes, idles or is
/// closed for a newer connection.
async fn tcp_client(shared: Arc<Shared>, mut stream: TcpStream, slot: TcpSlot) {
    let mut out = Vec::new();
    let mut frame = Vec::new();
    loop {
        let Ok(Ok(msg)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else { return };
        let Some(q) = shared.accept(&msg) else { continue };
        slot.mark(true);
        match shared.current() {
            None => shared.no_policy(&q, &mut out),
            Some(g) => {
                let step = shared.first_look(&g, &q, usize::from(u16::MAX), &mut out);
                if !matches!(step, Step::Answered) {
                    shared.finish(&g, &q, step, usize::from(u16::MAX), &mut out).await;
                }
            }
        }
        frame.clear();
        frame.extend_from_slice(&(out.len() as u16).to_be_bytes());
        frame.extend_from_slice(&out);
        if !matches!(tokio::time::timeout(TCP_IDLE, stream.write_all(&frame)).await, Ok(Ok(()))) {
            return;
        }
        slot.mark(false);
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

    /// The answer while no applied policy is known: SERVFAIL (see the module documentation).
    fn no_policy(&self, q: &Query<'_>, out: &mut Vec<u8>) {
        Stats::inc(&self.stats.no_policy_servfail);
        message::servfail(q, out);
    }

    /// Everything that needs no waiting: a cache hit whose elements outlive the answer, or a
    /// refused name. Holds the state lock only for the lookup.
    fn first_look(&self, g: &Generation, q: &Query<'_>, max_len: usize, out: &mut Vec<u8>) -> Step {
        if g.cfg.cache_size > 0 {
            let now = Instant::now();
            let key = q.key();
            let mut st = g.state.lock().unwrap();
            if let Some(e) = st.cache.get(key.as_bytes(), now) {
                let age = e.age(now);
                let fresh = !e.inserts.iter().any(|p| st.kernel.needs(p, p.ttl.saturating_sub(age), g.cfg.grace, now));
                drop(st);
                if !fresh {
                    return Step::Refresh(e);
                }
                message::write_answer(&e.prepared, q, age, max_len, out);
                Stats::inc(&self.stats.cache_hits);
                return Step::Answered;
            }
        }
        let decision = g.rules.decide(&q.qname);
        if let Some(rule) = decision.refuse {
            Stats::inc(&self.stats.refused_names);
            self.logs.refused.line(&self.stats, Instant::now(), || format!("refused {} (rule {})", q.qname.to_dotted(), g.rules.rule_name(rule)));
            message::nxdomain(q, out);
            return Step::Answered;
        }
        Step::Resolve(decision)
    }

    async fn finish(&self, g: &Generation, q: &Query<'_>, step: Step, max_len: usize, out: &mut Vec<u8>) {
        match step {
            Step::Answered => {}
            Step::Refresh(e) => self.refresh(g, q, &e, max_len, out).await,
            Step::Resolve(d) => self.resolve(g, q, &d, max_len, out).await,
        }
    }

    async fn refresh(&self, g: &Generation, q: &Query<'_>, e: &Entry, max_len: usize, out: &mut Vec<u8>) {
        let now = Instant::now();
        let age = e.age(now);
        let need: Vec<Planned> = {
            let st = g.state.lock().unwrap();
            e.inserts.iter().filter(|p| st.kernel.needs(p, p.ttl.saturating_sub(age), g.cfg.grace, now)).copied().collect()
        };
        if !self.insert(g, q, &need, age, now).await {
            return message::servfail(q, out);
        }
        message::write_answer(&e.prepared, q, age, max_len, out);
        Stats::inc(&self.stats.cache_hits);
    }

    async fn resolve(&self, g: &Generation, q: &Query<'_>, decision: &NameDecision, max_len: usize, out: &mut Vec<u8>) {
        let Some(resp) = g.upstreams.exchange(q).await else {
            Stats::inc(&self.stats.upstream_failures);
            return message::servfail(q, out);
        };
        let own = self.own.read().unwrap().clone();
        let outcome = match rules::process(&g.rules, decision, q, &resp, &own, g.cfg.max_ttl) {
            Ok(o) => o,
            Err(_) => {
                Stats::inc(&self.stats.mismatched_responses);
                Stats::inc(&self.stats.upstream_failures);
                return message::servfail(q, out);
            }
        };
        Stats::add(&self.stats.off_chain_stripped, outcome.off_chain as u64);
        let now = Instant::now();
        for b in &outcome.blocked {
            Stats::inc(&self.stats.rebinding_blocked);
            self.logs.guard.line(&self.stats, now, || {
                format!(
                    "rebinding guard: {} -> {} removed from the answer (private or own address; rule {} has no allow_private)",
                    q.qname.to_dotted(),
                    b.addr,
                    g.rules.rule_name(b.rule)
                )
            });
        }
        let need: Vec<Planned> = {
            let st = g.state.lock().unwrap();
            outcome.inserts.iter().filter(|p| st.kernel.needs(p, p.ttl, g.cfg.grace, now)).copied().collect()
        };
        if !self.insert(g, q, &need, 0, now).await {
            return message::servfail(q, out);
        }
        message::write_answer(&outcome.prepared, q, 0, max_len, out);
        if g.cfg.cache_size > 0 && outcome.prepared.lifetime.is_some() {
            let entry = Arc::new(Entry { prepared: outcome.prepared, inserts: outcome.inserts, stored: now });
            g.state.lock().unwrap().cache.put(q.key().as_bytes(), entry, now);
        }
    }

    /// Sends `planned` (answered `age` seconds ago) to the kernel, into the generation's table,
    /// and waits for the ack; on success records the new expiries. `true` for nothing to do.
    async fn insert(&self, g: &Generation, q: &Query<'_>, planned: &[Planned], age: u32, submitted: Instant) -> bool {
        if planned.is_empty() {
            return true;
        }
        let name: Arc<str> = q.qname.to_dotted().into();
        let inserts: Vec<Insert> = planned
            .iter()
            .map(|p| Insert {
                set: g.rules.set_name(p.set).clone(),
                addr: p.addr,
                timeout_ms: g.cfg.element_timeout_ms(p.ttl.saturating_sub(age)),
                name: Some(name.clone()),
            })
            .collect();
        let timeouts: Vec<u64> = inserts.iter().map(|i| i.timeout_ms).collect();
        let generation = g.state.lock().unwrap().kernel.generation();
        match self.inserter.insert(g.table, inserts, g.insert_deadline).await {
            Outcome::Done => {}
            Outcome::TableReplaced => {
                // The table was re-applied: this generation's decisions are void. The binary
                // loads the new policy now rather than at its next look.
                self.replaced.notify_one();
                return false;
            }
            Outcome::SetFull => {
                Stats::inc(&self.stats.set_full);
                self.logs.kernel.line(&self.stats, Instant::now(), || {
                    let mut sets: Vec<&str> = planned.iter().map(|p| &**g.rules.set_name(p.set)).collect();
                    sets.dedup();
                    format!(
                        "set {} full ([dns] set_size = {}): SERVFAIL for {} until elements expire",
                        sets.join(", "),
                        g.cfg.set_size,
                        q.qname.to_dotted()
                    )
                });
                return false;
            }
            Outcome::Failed => return false,
        }
        let mut st = g.state.lock().unwrap();
        for (p, t) in planned.iter().zip(timeouts) {
            st.kernel.inserted(p.set, p.addr, submitted, t, generation);
        }
        true
    }
}
