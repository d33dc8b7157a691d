//! Alerts over snapshots of live sockets (`leash watch`, the alert counters of `leash metrics`),
//! and the data-source boundary that `leash watch`, `leash top` and `leash metrics` read through.
//!
//! The operating system is behind the [`Source`] trait: a [`Sock`] is one socket as these tools
//! need it and a [`Blocked`] one denied attempt, whatever produced them. The live implementation
//! ([`LiveSource`]) adapts sock_diag + `/proc` ([`crate::conns`]) and NFLOG ([`crate::log`]);
//! tests hand in fixed snapshots, so every detector and the terminal UI run without a kernel.
//!
//! The detectors look at egress only: connections this host opened to other hosts. Listening
//! sockets, sockets a local listener accepted (inbound), sockets without a peer, and loopback
//! peers are left out; `TIME_WAIT` and closed sockets are finished connections and left out too.
//!
//! Alerts are edge-triggered, so a `leash watch` that polls every second reports a condition once
//! when it starts, not once per poll: a count alert fires when the count goes over its threshold
//! and re-arms when it is back at or under it; an unusual-port alert fires once per connection
//! (the same connection seen again in the next poll is not new).

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

/// Transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A socket's state, in the kernel's terms (the sock_diag type: one list of states and their
/// names for the whole project). UDP sockets are `Established` when connected and `Close`
/// otherwise, as the kernel reports them.
pub use kernel::sockdiag::State;

/// Alerts carry the state by its name (`SYN_SENT`).
fn state_name<S: serde::Serializer>(st: &State, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(st.as_str())
}

/// One socket as `watch`, `top` and `metrics` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sock {
    pub proto: Proto,
    pub state: State,
    pub local: SocketAddr,
    /// The peer; port 0 and an unspecified address for listening and unconnected sockets.
    pub remote: SocketAddr,
    /// The socket's owner (what `meta skuid` matches).
    pub uid: u32,
    /// The process holding the socket, when one was found in `/proc` (a socket can be shared by
    /// several; this is one of them).
    pub pid: Option<u32>,
    /// That process's name (`/proc/PID/comm`).
    pub comm: Option<String>,
    /// Payload bytes sent (`tcp_info.tcpi_bytes_sent`, retransmissions included); `None` where
    /// the kernel does not say (UDP).
    pub bytes_sent: Option<u64>,
    /// Bytes received (`tcp_info.tcpi_bytes_received`); `None` where the kernel does not say.
    pub bytes_received: Option<u64>,
    /// The active policy's verdict for this destination (`allow`/`deny`) and the rule deciding
    /// it, when a policy is active.
    pub verdict: Option<String>,
    pub rule: Option<String>,
    /// The name the remote address was looked up as, when a domain set records it.
    pub host: Option<String>,
}

impl Sock {
    /// What identifies a connection from one snapshot to the next.
    pub fn key(&self) -> ConnKey {
        ConnKey { proto: self.proto, local: self.local, remote: self.remote }
    }

    fn has_peer(&self) -> bool {
        self.remote.port() != 0 && !self.remote.ip().is_unspecified()
    }
}

/// Protocol and both ends: unique among live connected sockets of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// One denied (or rule-logged) attempt, as NFLOG reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    /// The policy rule that logged it (`default` for the default verdict).
    pub rule: String,
    /// `deny`, or `allow` for rules with `log = true`.
    pub action: String,
    /// `tcp`, `udp`, `icmp`, ...
    pub proto: String,
    pub dst: IpAddr,
    pub port: Option<u16>,
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The name the destination was looked up as (see [`crate::log::Blocked::host`]).
    pub host: Option<String>,
}

/// Where the tools get their data: the boundary to the operating system.
pub trait Source {
    /// Every TCP and UDP socket of the network namespace now.
    fn sockets(&mut self) -> io::Result<Vec<Sock>>;
    /// Attempts logged since the last call, without waiting. Sources without NFLOG return none.
    fn blocked(&mut self) -> Vec<Blocked> {
        Vec::new()
    }
}

/// A [`Source`] that plays back fixed snapshots, for tests and demos: each call to `sockets`
/// returns the next snapshot (the last one again once they run out).
#[derive(Debug, Default, Clone)]
pub struct Replay {
    pub snapshots: Vec<Vec<Sock>>,
    pub blocked: Vec<Vec<Blocked>>,
    next: usize,
    next_blocked: usize,
}

impl Replay {
    pub fn new(snapshots: Vec<Vec<Sock>>, blocked: Vec<Vec<Blocked>>) -> Replay {
        Replay { snapshots, blocked, next: 0, next_blocked: 0 }
    }
}

impl Source for Replay {
    fn sockets(&mut self) -> io::Result<Vec<Sock>> {
        let i = self.next.min(self.snapshots.len().saturating_sub(1));
        self.next += 1;
        Ok(self.snapshots.get(i).cloned().unwrap_or_default())
    }
    fn blocked(&mut self) -> Vec<Blocked> {
        let b = self.blocked.get(self.next_blocked).cloned().unwrap_or_default();
        self.next_blocked += 1;
        b
    }
}

/// The live network namespace: sockets from [`crate::conns::snapshot`] (sock_diag, their
/// process from `/proc`, and the verdict of a policy when one is given), and optionally the
/// attempts logged to one NFLOG group, decoded by [`crate::log::Decoder`] (with the process when
/// it can still be found) on a thread of its own, so that nothing is lost while the caller
/// sleeps between two looks.
#[derive(Debug)]
pub struct LiveSource {
    policy: Option<policy::Policy>,
    log: Option<LogReader>,
    /// Why there is no NFLOG reader although one was asked for.
    log_error: Option<String>,
}

#[derive(Debug)]
struct LogReader {
    rx: std::sync::mpsc::Receiver<Blocked>,
    stats: std::sync::Arc<std::sync::Mutex<kernel::nflog::Stats>>,
}

impl LiveSource {
    /// A source for the calling thread's network namespace; `policy` judges the connections
    /// (verdict and rule), and NFLOG group `nflog_group` is read when one is given. Failing to
    /// bind the group (it is busy: the kernel allows one reader per group; no privilege) is not
    /// an error: [`LiveSource::log_error`] says why.
    pub fn open(nflog_group: Option<u16>, policy: Option<policy::Policy>) -> LiveSource {
        let (log, log_error) = match nflog_group {
            None => (None, None),
            Some(g) => match kernel::nflog::Subscriber::open(&kernel::nflog::Config::new(g)).map_err(|e| e.to_string()) {
                Ok(sub) => match LogReader::start(sub) {
                    Ok(r) => (Some(r), None),
                    Err(e) => (None, Some(format!("cannot start the NFLOG reader: {e}"))),
                },
                Err(e) => (None, Some(e)),
            },
        };
        LiveSource { policy, log, log_error }
    }

    /// Why blocked attempts are not read, when they were asked for and are not.
    pub fn log_error(&self) -> Option<&str> {
        self.log_error.as_deref()
    }

    /// Whether an NFLOG reader runs.
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// NFLOG packets the kernel reported lost (each `ENOBUFS` receive counts one, since the
    /// kernel does not say how many a dropped batch held, plus the sequence-number gaps).
    pub fn log_lost(&self) -> Option<u64> {
        self.log.as_ref().map(|l| {
            let s = *l.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.enobufs + s.seq_lost
        })
    }
}

impl LogReader {
    fn start(mut sub: kernel::nflog::Subscriber) -> io::Result<LogReader> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stats = std::sync::Arc::new(std::sync::Mutex::new(sub.stats()));
        let shared = stats.clone();
        // The thread inherits the caller's network namespace, which is where the decoder must
        // look sockets up.
        std::thread::Builder::new().name("nflog".into()).spawn(move || {
            let mut decoder = crate::log::Decoder::new(true);
            loop {
                let packets = match sub.recv(Some(std::time::Duration::from_millis(500))) {
                    Ok(p) => p,
                    // ENOBUFS and the like are counted in the subscriber's stats; go on.
                    Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Vec::new()
                    }
                };
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = sub.stats();
                for (_, e) in decoder.decode_batch(&packets) {
                    // The receiver is gone: nobody wants events any more. An idle reader
                    // lives as long as the process, which is what its callers want.
                    if tx.send(blocked_of(e)).is_err() {
                        return;
                    }
                }
            }
        })?;
        Ok(LogReader { rx, stats })
    }
}

fn blocked_of(e: crate::log::Blocked) -> Blocked {
    Blocked {
        rule: e.rule,
        action: e.action.to_string(),
        proto: e.proto,
        dst: e.dst,
        port: e.dst_port,
        uid: e.uid,
        pid: e.process.as_ref().map(|p| p.pid),
        comm: e.process.map(|p| p.comm),
        host: e.host,
    }
}

/// A [`crate::conns::Conn`] as a [`Sock`].
pub fn sock_of(c: &crate::conns::Conn) -> Sock {
    let unspecified = SocketAddr::new(if c.local.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() }, 0);
    Sock {
        proto: if c.proto == "tcp" { Proto::Tcp } else { Proto::Udp },
        state: c.socket.state,
        local: c.local,
        remote: c.remote.unwrap_or(unspecified),
        // Only sockets without an owner (TIME_WAIT, request sockets) lack a uid, and no
        // detector or view counts those.
        uid: c.uid.unwrap_or(0),
        pid: c.pid,
        comm: c.comm.clone(),
        // Payload bytes sent (`tcpi_bytes_sent`, retransmissions included). Not
        // `tcpi_bytes_acked`: it counts the SYN and FIN as one byte each, so an idle connection
        // would show a byte it never sent.
        bytes_sent: c.bytes_sent,
        bytes_received: c.bytes_received,
        verdict: c.verdict.map(str::to_string),
        rule: c.verdict().map(|v| v.decider_text()),
        host: c.host.clone(),
    }
}

impl Source for LiveSource {
    fn sockets(&mut self) -> io::Result<Vec<Sock>> {
        let snap = crate::conns::snapshot(&crate::conns::Options::default(), self.policy.as_ref()).map_err(io::Error::other)?;
        Ok(snap.conns.iter().map(sock_of).collect())
    }

    fn blocked(&mut self) -> Vec<Blocked> {
        self.log.as_ref().map(|l| l.rx.try_iter().collect()).unwrap_or_default()
    }
}

/// The egress connections of a snapshot (see the module docs for what is left out).
pub fn egress(socks: &[Sock]) -> Vec<&Sock> {
    // Accepted sockets share the local port of a listener; their peer's port is an ephemeral
    // one, which would otherwise look like a connection to an unusual port.
    let listeners: Vec<SocketAddr> =
        socks.iter().filter(|s| s.proto == Proto::Tcp && s.state == State::Listen).map(|s| s.local).collect();
    let accepted = |s: &Sock| {
        s.proto == Proto::Tcp
            && listeners.iter().any(|l| {
                l.port() == s.local.port() && (l.ip().is_unspecified() || same_ip(l.ip(), s.local.ip()))
            })
    };
    socks
        .iter()
        .filter(|s| {
            s.has_peer()
                && !is_loopback(s.remote.ip())
                && !matches!(s.state, State::Listen | State::TimeWait | State::Close | State::NewSynRecv | State::SynRecv)
                && !accepted(s)
        })
        .collect()
}

/// Equal addresses, an IPv4 address and its IPv4-mapped IPv6 form included (dual-stack sockets).
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

fn is_loopback(a: IpAddr) -> bool {
    a.to_canonical().is_loopback()
}

/// Ports that raise no unusual-port alert by default: SSH, DNS, HTTP, NTP, mail submission,
/// DNS over TLS, HTTPS, IMAPS.
pub const DEFAULT_USUAL_PORTS: [u16; 8] = [22, 53, 80, 123, 443, 587, 853, 993];

/// Parses a port list as `--ports` takes it: numbers and `FROM-TO` ranges, comma-separated
/// (`22,53,8000-8099`). An empty list is allowed: every port is then unusual.
pub fn parse_ports(s: &str) -> Result<BTreeSet<u16>, String> {
    let mut out = BTreeSet::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("invalid port {p:?} (1-65535)")),
            }
        };
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(item)?, port(item)?),
        };
        if lo > hi {
            return Err(format!("invalid port range {item:?}: {lo} is above {hi}"));
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

/// When the detectors fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    /// Alert when there are more egress connections than this in total.
    pub max_conns: usize,
    /// Alert when one process holds more egress connections than this.
    pub max_conns_per_process: usize,
    /// Alert when this many egress connections or more are half-open (`SYN_SENT`): a scan, a
    /// flood, or connections a drop rule makes hang.
    pub syn_sent: usize,
    /// Remote ports that raise no unusual-port alert.
    pub usual_ports: BTreeSet<u16>,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            max_conns: 1000,
            max_conns_per_process: 256,
            syn_sent: 20,
            usual_ports: DEFAULT_USUAL_PORTS.into_iter().collect(),
        }
    }
}

/// The kinds of alert, as they appear in JSON (`kind`) and in the metric's `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// More egress connections than `max_conns`.
    ConnCount,
    /// One process holds more than `max_conns_per_process`.
    ProcessConnCount,
    /// A connection to a remote port not in the usual list.
    UnusualPort,
    /// `syn_sent` or more half-open connections.
    HalfOpen,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] =
        [AlertKind::ConnCount, AlertKind::ProcessConnCount, AlertKind::UnusualPort, AlertKind::HalfOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ConnCount => "conn-count",
            AlertKind::ProcessConnCount => "process-conn-count",
            AlertKind::UnusualPort => "unusual-port",
            AlertKind::HalfOpen => "half-open",
        }
    }
}

/// A process as alerts name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proc {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub uid: u32,
}

impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pid, &self.comm) {
            (Some(pid), Some(c)) => write!(f, "{c}[{pid}] uid {}", self.uid),
            (Some(pid), None) => write!(f, "pid {pid} uid {}", self.uid),
            _ => write!(f, "unknown process, uid {}", self.uid),
        }
    }
}

/// How many connections of a half-open alert one process or destination has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Share<T> {
    #[serde(flatten)]
    pub who: T,
    pub count: usize,
}

/// A destination in a [`Share`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dest {
    pub remote: SocketAddr,
}

/// One alert; serialised with a `kind` tag, one JSON object per line in `leash watch --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Alert {
    ConnCount { count: usize, threshold: usize },
    ProcessConnCount {
        #[serde(flatten)]
        process: Proc,
        count: usize,
        threshold: usize,
    },
    UnusualPort {
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
        port: u16,
        #[serde(serialize_with = "state_name")]
        state: State,
        #[serde(flatten)]
        process: Proc,
        verdict: Option<String>,
        rule: Option<String>,
    },
    HalfOpen {
        count: usize,
        threshold: usize,
        /// The processes with the most half-open connections (at most [`TOP`]).
        processes: Vec<Share<Proc>>,
        /// The destinations with the most (at most [`TOP`]).
        destinations: Vec<Share<Dest>>,
    },
}

/// How many processes and destinations a half-open alert lists.
pub const TOP: usize = 5;

impl Alert {
    pub fn kind(&self) -> AlertKind {
        match self {
            Alert::ConnCount { .. } => AlertKind::ConnCount,
            Alert::ProcessConnCount { .. } => AlertKind::ProcessConnCount,
            Alert::UnusualPort { .. } => AlertKind::UnusualPort,
            Alert::HalfOpen { .. } => AlertKind::HalfOpen,
        }
    }
}

impl fmt::Display for Alert {
    /// One line for people, starting with the kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.kind().as_str())?;
        match self {
            Alert::ConnCount { count, threshold } => {
                write!(f, "{count} egress connections (more than {threshold})")
            }
            Alert::ProcessConnCount { process, count, threshold } => {
                write!(f, "{process} holds {count} egress connections (more than {threshold})")
            }
            Alert::UnusualPort { proto, remote, port, state, process, verdict, rule, .. } => {
                write!(f, "{process} {} to {remote} (port {port} is not a usual one), {state}", proto.as_str())?;
                if let (Some(v), Some(r)) = (verdict, rule) {
                    write!(f, ", policy: {v} by `{r}`")?;
                }
                Ok(())
            }
            Alert::HalfOpen { count, threshold, processes, destinations } => {
                write!(f, "{count} half-open (SYN_SENT) connections (threshold {threshold})")?;
                if !processes.is_empty() {
                    let p: Vec<String> = processes.iter().map(|s| format!("{} ({})", s.who, s.count)).collect();
                    write!(f, "; by {}", p.join(", "))?;
                }
                if !destinations.is_empty() {
                    let d: Vec<String> = destinations.iter().map(|s| format!("{} ({})", s.who.remote, s.count)).collect();
                    write!(f, "; to {}", d.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// The detectors with their memory (which conditions are already reported) and alert counts.
#[derive(Debug, Clone)]
pub struct Detector {
    thresholds: Thresholds,
    over_total: bool,
    over_process: HashSet<u32>,
    half_open: bool,
    /// Unusual connections already reported and still alive.
    reported: HashSet<ConnKey>,
    counts: BTreeMap<AlertKind, u64>,
}

impl Detector {
    pub fn new(thresholds: Thresholds) -> Detector {
        Detector {
            thresholds,
            over_total: false,
            over_process: HashSet::new(),
            half_open: false,
            reported: HashSet::new(),
            counts: AlertKind::ALL.iter().map(|&k| (k, 0)).collect(),
        }
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Alerts raised since the detector was made, by kind (every kind present, 0 included, so a
    /// metrics scrape shows the series before the first alert).
    pub fn counts(&self) -> &BTreeMap<AlertKind, u64> {
        &self.counts
    }

    /// Looks at one snapshot and returns the alerts that are new in it.
    pub fn check(&mut self, socks: &[Sock]) -> Vec<Alert> {
        let conns = egress(socks);
        let th = &self.thresholds;
        let mut out = Vec::new();

        // Total connection count.
        let over = conns.len() > th.max_conns;
        if over && !self.over_total {
            out.push(Alert::ConnCount { count: conns.len(), threshold: th.max_conns });
        }
        self.over_total = over;

        // Per process. Sockets whose process was not found are not attributed to anyone.
        let mut per_pid: BTreeMap<u32, (usize, &Sock)> = BTreeMap::new();
        for s in conns.iter().filter(|s| s.pid.is_some()) {
            per_pid.entry(s.pid.unwrap_or_default()).or_insert((0, s)).0 += 1;
        }
        let mut now_over = HashSet::new();
        for (&pid, &(n, s)) in &per_pid {
            if n > th.max_conns_per_process {
                now_over.insert(pid);
                if !self.over_process.contains(&pid) {
                    out.push(Alert::ProcessConnCount { process: proc_of(s), count: n, threshold: th.max_conns_per_process });
                }
            }
        }
        self.over_process = now_over;

        // Half-open connections.
        let syn: Vec<&&Sock> = conns.iter().filter(|s| s.proto == Proto::Tcp && s.state == State::SynSent).collect();
        let half_open = th.syn_sent > 0 && syn.len() >= th.syn_sent;
        if half_open && !self.half_open {
            out.push(Alert::HalfOpen {
                count: syn.len(),
                threshold: th.syn_sent,
                processes: top_shares(syn.iter().map(|s| proc_of(s))),
                destinations: top_shares(syn.iter().map(|s| Dest { remote: s.remote })),
            });
        }
        self.half_open = half_open;

        // Unusual ports: once per connection while it lives.
        let live: HashSet<ConnKey> = conns.iter().map(|s| s.key()).collect();
        self.reported.retain(|k| live.contains(k));
        let mut unusual: Vec<&&Sock> =
            conns.iter().filter(|s| !th.usual_ports.contains(&s.remote.port()) && !self.reported.contains(&s.key())).collect();
        unusual.sort_by_key(|s| (s.remote, s.local));
        for s in unusual {
            self.reported.insert(s.key());
            out.push(Alert::UnusualPort {
                proto: s.proto,
                local: s.local,
                remote: s.remote,
                port: s.remote.port(),
                state: s.state,
                process: proc_of(s),
                verdict: s.verdict.clone(),
                rule: s.rule.clone(),
            });
        }

        for a in &out {
            *self.counts.entry(a.kind()).or_default() += 1;
        }
        out
    }
}

fn proc_of(s: &Sock) -> Proc {
    Proc { pid: s.pid, comm: s.comm.clone(), uid: s.uid }
}

/// The [`TOP`] most frequent values, most frequent first (ties in first-seen order).
fn top_shares<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<Share<T>> {
    let mut shares: Vec<Share<T>> = Vec::new();
    for it in items {
        match shares.iter_mut().find(|s| s.who == it) {
            Some(s) => s.count += 1,
            None => shares.push(Share { who: it, count: 1 }),
        }
    }
    // Stable sort keeps first-seen order among equals.
    shares.sort_by_key(|s| std::cmp::Reverse(s.count));
    shares.truncate(TOP);
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sock(proto: Proto, state: State, local: &str, remote: &str, pid: u32) -> Sock {
        Sock {
            proto,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: 1000,
            pid: Some(pid),
            comm: Some(format!("proc{pid}")),
            bytes_sent: None,
            bytes_received: None,
            verdict: None,
            rule: None,
            host: None,
        }
    }

    fn tcp(state: State, local: &str, remote: &str, pid: u32) -> Sock {
        sock(Proto::Tcp, state, local, remote, pid)
    }

    fn th(max: usize, per: usize, syn: usize) -> Thresholds {
        Thresholds { max_conns: max, max_conns_per_process: per, syn_sent: syn, ..Thresholds::default() }
    }

    #[test]
    fn egress_leaves_out_listeners_accepted_loopback_and_finished() {
        let socks = vec![
            tcp(State::Listen, "0.0.0.0:8080", "0.0.0.0:0", 1),
            // Accepted by the listener above: inbound, peer port ephemeral.
            tcp(State::Established, "192.0.2.1:8080", "198.51.100.7:40000", 1),
            // Dual-stack listener accepting an IPv4 peer.
            tcp(State::Listen, "[::]:2222", "[::]:0", 2),
            tcp(State::Established, "[::ffff:192.0.2.1]:2222", "[::ffff:198.51.100.7]:40001", 2),
            tcp(State::Established, "127.0.0.1:40002", "127.0.0.1:5432", 3),
            tcp(State::Established, "[::1]:40003", "[::1]:5432", 3),
            tcp(State::TimeWait, "192.0.2.1:40004", "198.51.100.9:443", 4),
            sock(Proto::Udp, State::Close, "0.0.0.0:5353", "0.0.0.0:0", 5),
            // Egress.
            tcp(State::Established, "192.0.2.1:40005", "198.51.100.9:443", 6),
            sock(Proto::Udp, State::Established, "192.0.2.1:40006", "192.0.2.53:53", 7),
        ];
        let e: Vec<u32> = egress(&socks).iter().map(|s| s.pid.unwrap()).collect();
        assert_eq!(e, vec![6, 7]);
    }

    #[test]
    fn unusual_port_fires_once_per_connection() {
        let mut d = Detector::new(Thresholds::default());
        let a = tcp(State::Established, "192.0.2.1:40000", "198.51.100.9:6667", 10);
        let b = tcp(State::Established, "192.0.2.1:40001", "198.51.100.9:443", 10);
        let alerts = d.check(&[a.clone(), b.clone()]);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].kind(), AlertKind::UnusualPort);
        assert_eq!(
            alerts[0].to_string(),
            "unusual-port: proc10[10] uid 1000 tcp to 198.51.100.9:6667 (port 6667 is not a usual one), ESTABLISHED"
        );
        assert!(d.check(&[a.clone(), b.clone()]).is_empty(), "the same connection again is not new");
        // Gone, then a new connection to the same port: a new alert.
        assert!(d.check(std::slice::from_ref(&b)).is_empty());
        assert_eq!(d.check(&[a, b]).len(), 1);
        assert_eq!(d.counts()[&AlertKind::UnusualPort], 2);
        assert_eq!(d.counts()[&AlertKind::HalfOpen], 0);
    }

    #[test]
    fn usual_ports_are_configurable() {
        let mut d = Detector::new(Thresholds { usual_ports: [6667].into_iter().collect(), ..Thresholds::default() });
        let a = tcp(State::Established, "192.0.2.1:40000", "198.51.100.9:6667", 10);
        let b = tcp(State::Established, "192.0.2.1:40001", "198.51.100.9:443", 10);
        let alerts = d.check(&[a, b]);
        assert_eq!(alerts.len(), 1);
        let Alert::UnusualPort { port, .. } = &alerts[0] else { panic!("{alerts:?}") };
        assert_eq!(*port, 443);
    }

    fn syn_flood(n: u16, pid: u32) -> Vec<Sock> {
        (0..n).map(|i| tcp(State::SynSent, &format!("192.0.2.1:{}", 41000 + i), "198.51.100.66:443", pid)).collect()
    }

    #[test]
    fn half_open_fires_on_the_edge_and_rearms() {
        let mut d = Detector::new(th(1000, 1000, 20));
        assert!(d.check(&syn_flood(19, 7)).is_empty());
        let alerts = d.check(&syn_flood(50, 7));
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let Alert::HalfOpen { count, processes, destinations, .. } = &alerts[0] else { panic!() };
        assert_eq!(*count, 50);
        assert_eq!(processes[0].count, 50);
        assert_eq!(destinations[0].who.remote, "198.51.100.66:443".parse().unwrap());
        assert_eq!(
            alerts[0].to_string(),
            "half-open: 50 half-open (SYN_SENT) connections (threshold 20); by proc7[7] uid 1000 (50); to 198.51.100.66:443 (50)"
        );
        assert!(d.check(&syn_flood(60, 7)).is_empty(), "still over: no new alert");
        assert!(d.check(&syn_flood(3, 7)).is_empty());
        assert_eq!(d.check(&syn_flood(20, 7)).len(), 1, "re-armed, then over again");
        assert_eq!(d.counts()[&AlertKind::HalfOpen], 2);
    }

    #[test]
    fn connection_counts_total_and_per_process() {
        let mut d = Detector::new(th(5, 3, 0));
        let mut socks: Vec<Sock> = (0..4)
            .map(|i| tcp(State::Established, &format!("192.0.2.1:{}", 40000 + i), "198.51.100.9:443", 1))
            .collect();
        socks.extend((0..2).map(|i| tcp(State::Established, &format!("192.0.2.1:{}", 41000 + i), "198.51.100.9:443", 2)));
        let alerts = d.check(&socks);
        let kinds: Vec<AlertKind> = alerts.iter().map(Alert::kind).collect();
        assert_eq!(kinds, vec![AlertKind::ConnCount, AlertKind::ProcessConnCount], "{alerts:?}");
        assert_eq!(alerts[0].to_string(), "conn-count: 6 egress connections (more than 5)");
        assert_eq!(alerts[1].to_string(), "process-conn-count: proc1[1] uid 1000 holds 4 egress connections (more than 3)");
        assert!(d.check(&socks).is_empty());
        let json = serde_json::to_value(&alerts[1]).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "process-conn-count", "pid": 1, "comm": "proc1", "uid": 1000, "count": 4, "threshold": 3}));
    }

    #[test]
    fn replay_source_plays_snapshots_in_order() {
        let a = vec![tcp(State::Established, "192.0.2.1:1", "198.51.100.1:443", 1)];
        let mut r = Replay::new(vec![vec![], a.clone()], vec![]);
        assert!(r.sockets().unwrap().is_empty());
        assert_eq!(r.sockets().unwrap(), a);
        assert_eq!(r.sockets().unwrap(), a, "the last snapshot repeats");
        assert!(r.blocked().is_empty());
    }

    #[test]
    fn port_lists_parse() {
        assert_eq!(parse_ports("22, 53,8000-8002").unwrap(), [22, 53, 8000, 8001, 8002].into_iter().collect());
        assert!(parse_ports("").unwrap().is_empty());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("70000").is_err());
        assert!(parse_ports("9-3").is_err());
        assert!(parse_ports("http").is_err());
    }

    #[test]
    fn states_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("estab"), Some(State::Established));
    }
}
