//! What `leash top` shows, computed from snapshots without any terminal: egress connections
//! grouped by process and destination, byte totals and rates from the kernel's `tcp_info`
//! counters, new connections per second, and blocked attempts per process.
//!
//! Rates compare two snapshots: a connection's bytes now minus its bytes in the previous
//! snapshot (all of them for a connection that is new), divided by the time between the two.
//! A connection that closed in between takes its last bytes with it, so rates are a lower bound,
//! as in every tool that samples (nethogs, iftop read packets instead, which needs a capture).

use observe::detect::{Blocked, ConnKey, Proto, Sock, State};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// Who a row is: a process, or (for sockets and attempts whose process was not found) a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProcKey {
    Pid(u32),
    /// No process found; `u32::MAX` when not even the user is known.
    Uid(u32),
}

/// One destination of a process (remote address, port and protocol).
#[derive(Debug, Clone, PartialEq)]
pub struct DestRow {
    pub proto: Proto,
    pub remote: SocketAddr,
    pub conns: usize,
    /// The state most of its connections are in.
    pub state: State,
    pub sent: u64,
    pub received: u64,
    /// Bytes per second, both directions; `None` before the second snapshot.
    pub rate: Option<f64>,
    pub verdict: Option<String>,
    pub rule: Option<String>,
    /// The name the address was looked up as (a domain set's element records it).
    pub host: Option<String>,
}

/// One process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcRow {
    pub key: ProcKey,
    pub pid: Option<u32>,
    pub comm: String,
    pub uid: Option<u32>,
    pub conns: usize,
    /// Connections in SYN_SENT.
    pub half_open: usize,
    /// Connections per second that were not there in the previous snapshot.
    pub new_rate: Option<f64>,
    pub sent: u64,
    pub received: u64,
    pub tx_rate: Option<f64>,
    pub rx_rate: Option<f64>,
    /// Blocked attempts since `leash top` started.
    pub blocked: u64,
    /// Most connections first.
    pub dests: Vec<DestRow>,
}

impl ProcRow {
    /// `comm[pid]`, or `uid N` for sockets without a known process.
    pub fn label(&self) -> String {
        match self.key {
            ProcKey::Pid(pid) => format!("{}[{pid}]", self.comm),
            ProcKey::Uid(u32::MAX) => "unknown".into(),
            ProcKey::Uid(uid) => format!("uid {uid}"),
        }
    }
    fn bytes(&self) -> u64 {
        self.sent + self.received
    }
    fn rate(&self) -> f64 {
        self.tx_rate.unwrap_or(0.0) + self.rx_rate.unwrap_or(0.0)
    }
}

/// A blocked attempt as the UI lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedLine {
    /// `HH:MM:SS` when it was read.
    pub time: String,
    pub who: String,
    pub event: Blocked,
}

/// How the process list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Conns,
    Bytes,
    Rate,
    New,
    Blocked,
    Pid,
}

impl Sort {
    pub fn name(self) -> &'static str {
        match self {
            Sort::Conns => "connections",
            Sort::Bytes => "bytes",
            Sort::Rate => "rate",
            Sort::New => "new connections",
            Sort::Blocked => "blocked",
            Sort::Pid => "pid",
        }
    }
    /// The sort a key selects (`c`, `b`, `r`, `n`, `x`, `p`).
    pub fn from_key(c: char) -> Option<Sort> {
        Some(match c {
            'c' => Sort::Conns,
            'b' => Sort::Bytes,
            'r' => Sort::Rate,
            'n' => Sort::New,
            'x' => Sort::Blocked,
            'p' => Sort::Pid,
            _ => return None,
        })
    }
}

/// How many blocked attempts the model keeps for the list.
const RECENT: usize = 200;

/// The aggregated state; feed it with [`Model::update`].
#[derive(Debug, Default)]
pub struct Model {
    prev: HashMap<ConnKey, (u64, u64)>,
    blocked_by: HashMap<ProcKey, (u64, String, Option<u32>)>,
    /// Every process with connections now or blocked attempts since the start, unsorted.
    pub rows: Vec<ProcRow>,
    /// Egress connections now.
    pub conns: usize,
    pub blocked_total: u64,
    /// Most recent first.
    pub recent: VecDeque<BlockedLine>,
    pub samples: u64,
    /// The last error of the source, shown in the header.
    pub error: Option<String>,
}

impl Model {
    /// Takes one snapshot: `dt` is the time since the previous one (`None` for the first),
    /// `now` the wall-clock time to stamp new blocked attempts with.
    pub fn update(&mut self, socks: &[Sock], blocked: Vec<Blocked>, dt: Option<Duration>, now: &str) {
        let secs = dt.map(|d| d.as_secs_f64()).filter(|s| *s > 0.0);
        let egress = observe::detect::egress(socks);
        self.conns = egress.len();

        for b in blocked {
            let key = match b.pid {
                Some(pid) => ProcKey::Pid(pid),
                None => ProcKey::Uid(b.uid.unwrap_or(u32::MAX)),
            };
            let comm = b.comm.clone().unwrap_or_default();
            let e = self.blocked_by.entry(key).or_insert((0, comm.clone(), b.uid));
            e.0 += 1;
            if !comm.is_empty() {
                e.1 = comm;
            }
            self.blocked_total += 1;
            let who = match (b.pid, &b.comm) {
                (Some(pid), Some(c)) => format!("{c}[{pid}]"),
                (Some(pid), None) => format!("pid {pid}"),
                _ => b.uid.map(|u| format!("uid {u}")).unwrap_or_else(|| "unknown".into()),
            };
            self.recent.push_front(BlockedLine { time: now.to_string(), who, event: b });
        }
        self.recent.truncate(RECENT);

        /// Per destination: the row, bytes since the previous snapshot, connections by state.
        type DestAcc = (DestRow, u64, BTreeMap<State, usize>);
        struct Acc {
            row: ProcRow,
            tx: u64,
            rx: u64,
            new: usize,
            dests: BTreeMap<(Proto, SocketAddr), DestAcc>,
        }
        let mut procs: BTreeMap<ProcKey, Acc> = BTreeMap::new();
        let mut next_prev = HashMap::with_capacity(egress.len());
        for s in &egress {
            let key = match s.pid {
                Some(pid) => ProcKey::Pid(pid),
                None => ProcKey::Uid(s.uid),
            };
            let acc = procs.entry(key).or_insert_with(|| Acc {
                row: ProcRow {
                    key,
                    pid: s.pid,
                    comm: s.comm.clone().unwrap_or_default(),
                    uid: Some(s.uid),
                    conns: 0,
                    half_open: 0,
                    new_rate: None,
                    sent: 0,
                    received: 0,
                    tx_rate: None,
                    rx_rate: None,
                    blocked: 0,
                    dests: Vec::new(),
                },
                tx: 0,
                rx: 0,
                new: 0,
                dests: BTreeMap::new(),
            });
            let (sent, recv) = (s.bytes_sent.unwrap_or(0), s.bytes_received.unwrap_or(0));
            let (psent, precv) = match self.prev.get(&s.key()) {
                Some(&p) => p,
                None => {
                    acc.new += 1;
                    (0, 0)
                }
            };
            next_prev.insert(s.key(), (sent, recv));
            let (dtx, drx) = (sent.saturating_sub(psent), recv.saturating_sub(precv));
            acc.tx += dtx;
            acc.rx += drx;
            acc.row.conns += 1;
            acc.row.half_open += usize::from(s.state == State::SynSent);
            acc.row.sent += sent;
            acc.row.received += recv;
            let d = acc.dests.entry((s.proto, s.remote)).or_insert_with(|| {
                (
                    DestRow {
                        proto: s.proto,
                        remote: s.remote,
                        conns: 0,
                        state: s.state,
                        sent: 0,
                        received: 0,
                        rate: None,
                        verdict: s.verdict.clone(),
                        rule: s.rule.clone(),
                        host: s.host.clone(),
                    },
                    0,
                    BTreeMap::new(),
                )
            });
            d.0.conns += 1;
            d.0.sent += sent;
            d.0.received += recv;
            d.1 += dtx + drx;
            *d.2.entry(s.state).or_default() += 1;
        }
        self.prev = next_prev;

        let mut rows = Vec::with_capacity(procs.len());
        let mut seen = HashSet::new();
        for (key, acc) in procs {
            let mut row = acc.row;
            // Rates need a previous snapshot to compare with.
            if let Some(secs) = secs.filter(|_| self.samples > 0) {
                row.tx_rate = Some(acc.tx as f64 / secs);
                row.rx_rate = Some(acc.rx as f64 / secs);
                row.new_rate = Some(acc.new as f64 / secs);
            }
            let mut dests: Vec<DestRow> = acc
                .dests
                .into_values()
                .map(|(mut d, bytes, states)| {
                    d.state = states.iter().max_by_key(|(st, n)| (**n, std::cmp::Reverse(**st))).map(|(s, _)| *s).unwrap_or(d.state);
                    d.rate = row.tx_rate.map(|_| bytes as f64 / secs.unwrap_or(1.0));
                    d
                })
                .collect();
            dests.sort_by(|a, b| b.conns.cmp(&a.conns).then(a.remote.cmp(&b.remote)));
            row.dests = dests;
            row.blocked = self.blocked_by.get(&key).map_or(0, |b| b.0);
            seen.insert(key);
            rows.push(row);
        }
        // Processes with blocked attempts but no connection now stay listed: a process whose
        // every connect is refused has nothing else to show.
        for (key, (n, comm, uid)) in &self.blocked_by {
            if seen.contains(key) {
                continue;
            }
            rows.push(ProcRow {
                key: *key,
                pid: match key {
                    ProcKey::Pid(p) => Some(*p),
                    ProcKey::Uid(_) => None,
                },
                comm: comm.clone(),
                uid: *uid,
                conns: 0,
                half_open: 0,
                new_rate: None,
                sent: 0,
                received: 0,
                tx_rate: None,
                rx_rate: None,
                blocked: *n,
                dests: Vec::new(),
            });
        }
        self.rows = rows;
        self.samples += 1;
    }

    /// The rows to show: those matching `filter` (case-insensitive, on the process name, pid,
    /// user name, or any destination), ordered by `sort` (largest first, pid ascending among
    /// equals; `Sort::Pid` ascending).
    pub fn visible(&self, sort: Sort, filter: &str, user: &dyn Fn(u32) -> String) -> Vec<&ProcRow> {
        let f = filter.trim().to_lowercase();
        let mut v: Vec<&ProcRow> = self
            .rows
            .iter()
            .filter(|r| {
                f.is_empty()
                    || r.comm.to_lowercase().contains(&f)
                    || r.pid.is_some_and(|p| p.to_string().contains(&f))
                    || r.uid.is_some_and(|u| user(u).to_lowercase().contains(&f))
                    || r.dests.iter().any(|d| d.remote.to_string().contains(&f))
            })
            .collect();
        let tie = |a: &ProcRow, b: &ProcRow| a.key.cmp(&b.key);
        v.sort_by(|a, b| {
            let by = match sort {
                Sort::Conns => b.conns.cmp(&a.conns),
                Sort::Bytes => b.bytes().cmp(&a.bytes()),
                Sort::Rate => b.rate().total_cmp(&a.rate()),
                Sort::New => b.new_rate.unwrap_or(0.0).total_cmp(&a.new_rate.unwrap_or(0.0)),
                Sort::Blocked => b.blocked.cmp(&a.blocked),
                Sort::Pid => std::cmp::Ordering::Equal,
            };
            by.then_with(|| tie(a, b))
        });
        v
    }
}

/// Bytes for people: `512B`, `1.5K`, `20.0M` (powers of 1024).
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024.0 {
        return format!("{}B", n.round() as u64);
    }
    let mut v = n / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sock(pid: u32, comm: &str, state: State, local: &str, remote: &str, sent: u64, recv: u64, rule: &str) -> Sock {
        Sock {
            proto: Proto::Tcp,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: if pid < 2000 { 0 } else { 1000 },
            pid: Some(pid),
            comm: Some(comm.into()),
            bytes_sent: Some(sent),
            bytes_received: Some(recv),
            verdict: Some(if rule == "(default)" { "deny" } else { "allow" }.into()),
            rule: Some(rule.into()),
            host: None,
        }
    }

    pub(crate) fn blocked(pid: Option<u32>, comm: Option<&str>, dst: &str, port: u16) -> Blocked {
        Blocked {
            rule: "@default".into(),
            action: "deny".into(),
            proto: "tcp".into(),
            dst: dst.parse().unwrap(),
            port: Some(port),
            uid: Some(1000),
            pid,
            comm: comm.map(Into::into),
            host: None,
        }
    }

    #[test]
    fn rates_come_from_the_difference_between_snapshots() {
        let mut m = Model::default();
        let a0 = sock(100, "curl", State::Established, "192.0.2.1:40000", "198.51.100.9:443", 1000, 5000, "web");
        m.update(&[a0], vec![], None, "00:00:00");
        assert_eq!(m.rows.len(), 1);
        assert_eq!(m.rows[0].tx_rate, None, "no rate from one snapshot");
        let a1 = sock(100, "curl", State::Established, "192.0.2.1:40000", "198.51.100.9:443", 3000, 9000, "web");
        let b1 = sock(100, "curl", State::SynSent, "192.0.2.1:40001", "198.51.100.9:443", 0, 0, "web");
        m.update(&[a1, b1], vec![], Some(Duration::from_secs(2)), "00:00:02");
        let r = &m.rows[0];
        assert_eq!((r.conns, r.half_open, r.sent, r.received), (2, 1, 3000, 9000));
        assert_eq!((r.tx_rate, r.rx_rate, r.new_rate), (Some(1000.0), Some(2000.0), Some(0.5)));
        assert_eq!(r.dests.len(), 1);
        assert_eq!(r.dests[0].conns, 2);
        assert_eq!(r.dests[0].rate, Some(3000.0));
    }

    #[test]
    fn blocked_attempts_are_counted_per_process_and_kept() {
        let mut m = Model::default();
        m.update(&[], vec![blocked(Some(7), Some("nc"), "203.0.113.5", 25), blocked(None, None, "203.0.113.5", 25)], None, "t0");
        m.update(&[], vec![blocked(Some(7), Some("nc"), "203.0.113.5", 25)], Some(Duration::from_secs(1)), "t1");
        let v = m.visible(Sort::Blocked, "", &|u| u.to_string());
        let got: Vec<(String, u64)> = v.iter().map(|r| (r.label(), r.blocked)).collect();
        assert_eq!(got, [("nc[7]".to_string(), 2), ("uid 1000".to_string(), 1)]);
        assert_eq!(m.blocked_total, 3);
        assert_eq!(m.recent.front().unwrap().time, "t1");
    }

    #[test]
    fn filter_and_sort() {
        let mut m = Model::default();
        m.update(
            &[
                sock(100, "curl", State::Established, "192.0.2.1:40000", "198.51.100.9:443", 10, 10, "web"),
                sock(200, "apt", State::Established, "192.0.2.1:40001", "198.51.100.80:80", 5000, 5000, "web"),
                sock(200, "apt", State::Established, "192.0.2.1:40002", "198.51.100.80:80", 0, 0, "web"),
            ],
            vec![],
            None,
            "t",
        );
        let names = |v: Vec<&ProcRow>| v.iter().map(|r| r.comm.clone()).collect::<Vec<_>>();
        let user = |u: u32| if u == 0 { "root".to_string() } else { u.to_string() };
        assert_eq!(names(m.visible(Sort::Conns, "", &user)), ["apt", "curl"]);
        assert_eq!(names(m.visible(Sort::Pid, "", &user)), ["curl", "apt"]);
        assert_eq!(names(m.visible(Sort::Conns, "CURL", &user)), ["curl"]);
        assert_eq!(names(m.visible(Sort::Conns, "198.51.100.80", &user)), ["apt"]);
        assert_eq!(names(m.visible(Sort::Conns, "root", &user)), ["apt", "curl"]);
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0.0), "0B");
        assert_eq!(human_bytes(1023.0), "1023B");
        assert_eq!(human_bytes(1536.0), "1.5K");
        assert_eq!(human_bytes(20.0 * 1024.0 * 1024.0), "20.0M");
    }
}
