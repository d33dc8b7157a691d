//! Live connections: every TCP and UDP socket of the network namespace (sock_diag), joined with
//! the process that owns it (`/proc`, see [`crate::procs`]) and, for outgoing connections, the
//! verdict and deciding rule of a policy ([`policy::explain`]).
//!
//! The verdict is what the policy decides for a *new* connection with the same protocol,
//! destination, port, socket owner and group: the question "would this policy let it through".
//! Two consequences worth knowing when reading it:
//! - A connection the policy denies can still be up: it was opened before the policy was
//!   applied, and `allow_established` lets its packets pass until it closes (conntrack keeps it).
//!   Its next connect fails. With `allow_established = false` it stalls at its next packet.
//! - Under `deny_with = "drop"` a denied TCP connect stays in SYN_SENT (its SYNs are dropped and
//!   retransmitted) until it times out; such sockets show their verdict like any other.
//!
//! Direction: only sockets this host opened towards a peer (`out`) get a verdict. A TCP socket
//! whose local port is one this host listens on was accepted (`in`): its packets in the output
//! hook are replies, which the established rule lets through, so no rule decides them. Listening
//! and unconnected sockets have no destination. TIME_WAIT sockets are already closed and have
//! no owner (the kernel reports none), so they get no verdict either.
//!
//! The group a rule's `group` condition sees is the socket's gid (`meta skgid`): the effective
//! gid of the process that created it. sock_diag does not report it, so it is the effective gid
//! of the owning process when that is known, else the primary group of the socket's uid.
//!
//! The DNS forwarder's own upstream queries are let out by the table's `@dns-forwarder` rule
//! before any policy rule; a socket carrying the policy's `[dns] mark` towards one of its
//! upstreams (address and port) is such a query and shows `allow (dns-forwarder)`. The mark is
//! reported only to root; without it those sockets are judged like any other (the bypass
//! control denies them).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use kernel::nl::NlError;
use kernel::sockdiag::{DiagSocket, Proto, Query, SockDiag, State, States};
use policy::{Action, Connection, Decider, Policy};
use serde::Serialize;

use crate::procs::{self, ScanStats, SocketOwners};

/// Which way a socket talks; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Opened by this host towards `remote`: the policy decides these.
    Out,
    /// Accepted from `remote` by a listener of this host.
    In,
    /// A TCP listener.
    Listen,
    /// A UDP socket without a fixed peer, or a TCP socket that is bound but not connected.
    Unconnected,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
            Direction::Listen => "listen",
            Direction::Unconnected => "unconnected",
        }
    }
}

/// What a policy decides for a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `allow` or `deny`.
    pub verdict: &'static str,
    /// The deciding rule's name; `None` when the default, loopback or the DNS bypass control
    /// decided.
    pub rule: Option<String>,
    /// `rule`, `default`, `loopback`, `dns-bypass`, `dns-redirect` or `name-refused` (the
    /// kinds `leash explain --json` reports), or `dns-forwarder` for the forwarder's own
    /// upstream queries (see the module docs).
    pub decided_by: &'static str,
}

impl Verdict {
    pub fn allows(&self) -> bool {
        self.verdict == "allow"
    }

    /// `rule NAME`, `default`, `loopback`, ...: what decided, in a few words.
    pub fn decider_text(&self) -> String {
        match (&self.rule, self.decided_by) {
            (Some(r), "rule") => r.clone(),
            (Some(r), kind) => format!("{r} ({kind})"),
            (None, kind) => format!("({kind})"),
        }
    }
}

/// One socket, as `leash conns` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Conn {
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// `ipv4` or `ipv6` (the socket's family; a dual-stack IPv6 socket talking to an IPv4 peer
    /// is `ipv6` with an IPv4-mapped remote).
    pub family: &'static str,
    /// `ESTABLISHED`, `SYN_SENT`, `LISTEN`, `TIME_WAIT`, ... (netstat's names); an unconnected
    /// UDP socket is `UNCONN`.
    pub state: &'static str,
    pub direction: Direction,
    pub local: SocketAddr,
    /// `None` for listening and unconnected sockets.
    pub remote: Option<SocketAddr>,
    /// Owner of the socket (`meta skuid`); `None` for TIME_WAIT and half-open incoming sockets,
    /// which have none.
    pub uid: Option<u32>,
    /// The owner's user name, when the user database knows the uid.
    pub user: Option<String>,
    /// Socket inode (`socket:[INODE]`); 0 for sockets without an owner.
    pub inode: u64,
    /// The process holding the socket (the lowest pid when several do); `None` when process
    /// information was not asked for, the socket has no owner, or the process is not visible.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    /// The socket's group as the policy sees it (see the module docs).
    pub gid: Option<u32>,
    /// TCP payload bytes sent (retransmissions included), acknowledged by the peer, and
    /// received; round-trip time and retransmitted segments. `None` for UDP and mini sockets.
    pub bytes_sent: Option<u64>,
    pub bytes_acked: Option<u64>,
    pub bytes_received: Option<u64>,
    pub rtt_us: Option<u32>,
    pub retransmits: Option<u32>,
    /// `allow` or `deny` for outgoing sockets when a policy was given.
    pub verdict: Option<&'static str>,
    /// The deciding rule (see [`Verdict::rule`]).
    pub rule: Option<String>,
    /// What decided (see [`Verdict::decided_by`]).
    pub decided_by: Option<&'static str>,
    /// For a destination the DNS forwarder answered: the name that was looked up
    /// (`img.cdn.example.com`), as the kernel's set element records it, or, for an element
    /// without a name, the domain patterns of the rules whose sets hold it.
    pub host: Option<String>,
    /// The kernel's record, for callers that want more (queues, cookie, full `tcp_info`).
    #[serde(skip)]
    pub socket: DiagSocket,
}

impl Conn {
    /// The verdict fields as one value.
    pub fn verdict(&self) -> Option<Verdict> {
        Some(Verdict {
            verdict: self.verdict?,
            rule: self.rule.clone(),
            decided_by: self.decided_by?,
        })
    }
}

/// What [`snapshot`] lists.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Protocols, families and states (the kernel filters by these).
    pub query: Query,
    /// Find each socket's process (the `/proc` scan; most of the cost of a snapshot).
    pub processes: bool,
    /// Only sockets owned by this uid.
    pub uid: Option<u32>,
    /// Only sockets held by this process (implies `processes`; only its `/proc` entry is read).
    pub pid: Option<u32>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            query: Query::default(),
            processes: true,
            uid: None,
            pid: None,
        }
    }
}

/// Where a snapshot's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    pub dump: Duration,
    pub processes: Duration,
    pub verdicts: Duration,
}

/// The sockets at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub conns: Vec<Conn>,
    pub timings: Timings,
    /// What the process scan read (zero when processes were not asked for).
    pub scan: ScanStats,
}

/// Errors of a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list sockets over sock_diag netlink: {0}")]
    SockDiag(#[from] NlError),
    #[error("cannot scan /proc for socket owners: {0}")]
    Proc(#[from] std::io::Error),
}

/// Lists the sockets `opts` selects in the calling thread's network namespace, with their
/// processes (if asked) and, for outgoing ones, what `policy` decides (if given).
pub fn snapshot(opts: &Options, policy: Option<&Policy>) -> Result<Snapshot, Error> {
    let t0 = Instant::now();
    let mut diag = SockDiag::open()?;
    let mut sockets = Vec::with_capacity(1024);
    // Listeners are always fetched, even when the caller filters them out: they are what tells
    // an accepted connection from an outgoing one.
    let mut q = opts.query;
    q.states = q.states.with(State::Listen);
    diag.dump_into(&q, &mut sockets)?;
    let listening = Listeners::of(&sockets);
    sockets.retain(|s| {
        opts.query.states.contains(s.state)
            // The kernel reports request sockets as SYN_RECV while the mask names them
            // NEW_SYN_RECV; asking for either gets them.
            || (s.state == State::SynRecv && opts.query.states.contains(State::NewSynRecv))
    });
    if let Some(uid) = opts.uid {
        sockets.retain(|s| s.inode != 0 && s.uid == uid);
    }
    let dump = t0.elapsed();

    let t1 = Instant::now();
    let owners = if opts.processes || opts.pid.is_some() {
        let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).filter(|&i| i != 0).collect();
        let pids = opts.pid.map(|p| vec![p]);
        SocketOwners::scan_pids(&inodes, pids.as_deref())?
    } else {
        SocketOwners::default()
    };
    if let Some(pid) = opts.pid {
        sockets.retain(|s| owners.owner(s.inode).is_some_and(|p| p.pid == pid));
    }
    let processes = t1.elapsed();

    let t2 = Instant::now();
    let mut judge = policy.map(Judge::new);
    let mut users: HashMap<u32, Option<String>> = HashMap::new();
    let mut groups: HashMap<u32, Option<u32>> = HashMap::new();
    let mut conns = Vec::with_capacity(sockets.len());
    for s in sockets {
        let owner = owners.owner(s.inode);
        let has_owner = s.inode != 0;
        let uid = has_owner.then_some(s.uid);
        let gid = match (owner, uid) {
            (Some(p), _) => Some(p.egid),
            (None, Some(u)) => *groups.entry(u).or_insert_with(|| procs::primary_group(u)),
            (None, None) => None,
        };
        let user = uid.and_then(|u| users.entry(u).or_insert_with(|| procs::user_name(u)).clone());
        let direction = listening.direction(&s);
        let tcp = s.tcp;
        let mut c = Conn {
            proto: s.proto.as_str(),
            family: s.family.as_str(),
            state: state_name(&s),
            direction,
            local: s.local,
            remote: s.has_remote().then_some(s.remote),
            uid,
            user,
            inode: s.inode,
            pid: owner.map(|p| p.pid),
            comm: owner.map(|p| p.comm.clone()),
            exe: owner.and_then(|p| p.exe.clone()),
            gid,
            bytes_sent: tcp.map(|t| t.bytes_sent),
            bytes_acked: tcp.map(|t| t.bytes_acked),
            bytes_received: tcp.map(|t| t.bytes_received),
            rtt_us: tcp.map(|t| t.rtt_us),
            retransmits: tcp.map(|t| t.total_retrans),
            verdict: None,
            rule: None,
            decided_by: None,
            host: None,
            socket: s,
        };
        if let Some(j) = judge.as_mut()
            && let Some(conn) = connection(&c)
        {
            c.host = j.domains.host(j.policy, conn.dst);
            if let Some(v) = j.decide(conn, c.pid, s.mark) {
                c.verdict = Some(v.verdict);
                c.rule = v.rule;
                c.decided_by = Some(v.decided_by);
            }
        }
        conns.push(c);
    }
    Ok(Snapshot {
        conns,
        timings: Timings {
            dump,
            processes,
            verdicts: t2.elapsed(),
        },
        scan: owners.stats,
    })
}

/// The new connection a policy is asked about for `c`: only outgoing sockets with an owner
/// that are not closed yet.
pub fn connection(c: &Conn) -> Option<Connection> {
    if c.direction != Direction::Out || c.socket.state == State::TimeWait {
        return None;
    }
    let remote = c.remote?;
    let uid = c.uid?;
    Some(Connection {
        proto: match c.socket.proto {
            Proto::Tcp => policy::Proto::Tcp,
            Proto::Udp => policy::Proto::Udp,
        },
        // A dual-stack socket's IPv4-mapped peer is an IPv4 packet on the wire, and that is
        // what the ruleset matches.
        dst: remote.ip().to_canonical(),
        port: Some(remote.port()),
        uid,
        gid: c.gid.unwrap_or(uid),
        name: None,
        // A local socket: the host's own connection, never a forwarded one.
        from: None,
        // Filled in by the caller when the policy has service or cgroup rules (see
        // `with_cgroup`): reading /proc for every socket would cost more than the rest.
        cgroup: None,
        // Filled in by `decide`, which knows the policy's time zone.
        at: None,
    })
}

/// The cgroup v2 path of a process (the `0::/PATH` line of `/proc/PID/cgroup`), relative to the
/// cgroup v2 root, as `socket cgroupv2` matches it. It is the process's cgroup now; the kernel
/// matches the cgroup the socket was created in, which differs only for a process moved since.
/// Read as bytes: a cgroup's name need not be UTF-8 (see `procfs::lossy` for how it compares).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cgroup")).ok()?;
    crate::procfs::cgroup_v2_path(&bytes).map(crate::procfs::lossy)
}

/// What `policy` decides for each of `conns` that is an outgoing connection (see
/// [`connection`]); `None` for the others and for those whose process's cgroup is unknown while
/// the policy has service or cgroup rules. The domain sets are read once for all of them.
pub fn verdicts(policy: &Policy, conns: &[Conn]) -> Vec<Option<Verdict>> {
    let mut judge = Judge::new(policy);
    conns.iter().map(|c| judge.decide(connection(c)?, c.pid, c.socket.mark)).collect()
}

/// A policy ready to decide live connections: its domain sets read from the kernel once, and
/// the verdict of each distinct (destination, port, owner, cgroup) key and the cgroup of each
/// process remembered (thousands of sockets usually share a few keys).
#[derive(Debug)]
pub struct Judge<'p> {
    pub policy: &'p Policy,
    pub domains: DomainSets,
    has_cgroup_rules: bool,
    cgroups: HashMap<u32, Option<String>>,
    decided: HashMap<Connection, Verdict>,
}

impl<'p> Judge<'p> {
    /// Reads `policy`'s domain sets from table inet leash in this namespace (see [`DomainSets`]).
    pub fn new(policy: &'p Policy) -> Judge<'p> {
        Judge {
            policy,
            domains: DomainSets::read(policy),
            has_cgroup_rules: policy.rules.iter().any(|r| r.cond.cgroups.is_some()),
            cgroups: HashMap::new(),
            decided: HashMap::new(),
        }
    }

    /// What the policy decides for a new connection like `conn` (as [`connection`] makes it:
    /// no cgroup yet), made by process `pid` on a socket with `mark`, or forwarded (`conn.from`,
    /// no process, no mark). `None` when the policy has service or cgroup rules and the process
    /// (so its cgroup) of a local connection is unknown.
    pub fn decide(&mut self, mut conn: Connection, pid: Option<u32>, mark: Option<u32>) -> Option<Verdict> {
        if forwarder_query(self.policy, mark, conn.uid, SocketAddr::new(conn.dst, conn.port.unwrap_or(0))) {
            return Some(Verdict { verdict: "allow", rule: None, decided_by: "dns-forwarder" });
        }
        // Rules for services need the process's cgroup; without it the verdict is unknown. A
        // forwarded connection has no process: such rules never match it (explain says so).
        if self.has_cgroup_rules && conn.from.is_none() {
            let pid = pid?;
            conn.cgroup = Some(self.cgroups.entry(pid).or_insert_with(|| cgroup_of(pid)).clone()?);
        }
        let (policy, domains) = (self.policy, &self.domains);
        Some(self.decided.entry(conn).or_insert_with_key(|k| decide(policy, k, domains)).clone())
    }
}

/// Whether a socket with `mark` talking to `remote` is one of the forwarder's upstream queries,
/// which the table lets out before any rule (see the module docs), exactly as the table's
/// `@dns-forwarder` rules decide it: the policy has domain rules (only then is there such a rule),
/// the mark is `[dns] mark`, the socket's owner is the forwarder's user (`[dns] user`; without a
/// known one there is no such rule), and `remote` is one of the upstreams.
pub fn forwarder_query(policy: &Policy, mark: Option<u32>, uid: u32, remote: SocketAddr) -> bool {
    let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    policy.has_domain_rules()
        && mark == Some(policy.dns.mark)
        && policy.dns.user.uid == Some(uid)
        && policy.dns.upstreams.iter().any(|u| SocketAddr::new(u.ip().to_canonical(), u.port()) == remote)
}

/// The addresses the forwarder put into each domain rule's sets, with the name each answer was
/// for (the element's comment), read from the kernel once per snapshot. A live connection
/// carries no name, so this is how a domain rule is seen to match it, exactly as the kernel's
/// set lookup does, and which name was looked up.
#[derive(Debug, Default)]
pub struct DomainSets {
    /// Rule index -> addresses in its `r_<rule>_d4` / `r_<rule>_d6` sets, each with its name.
    by_rule: HashMap<usize, HashMap<IpAddr, Option<String>>>,
}

impl DomainSets {
    /// Reads the sets of `policy`'s domain rules from table inet leash in this namespace. A set
    /// that is missing (another policy is applied, or none) or unreadable counts as empty.
    pub fn read(policy: &Policy) -> DomainSets {
        let mut by_rule = HashMap::new();
        for (i, r) in policy.rules.iter().enumerate().filter(|(_, r)| !r.cond.domains.is_empty()) {
            let mut addrs = HashMap::new();
            for family in [ruleset::Family::Ipv4, ruleset::Family::Ipv6] {
                let set = ruleset::domain_set_name(&r.name, family);
                if let Ok(Some(elems)) = kernel::timed_elements(ruleset::TABLE_NAME, &set) {
                    addrs.extend(elems.into_iter().map(|e| (e.addr, e.name)));
                }
            }
            by_rule.insert(i, addrs);
        }
        DomainSets { by_rule }
    }

    /// Sets as read, for tests: rule index -> (address, name).
    pub fn from_elements(by_rule: impl IntoIterator<Item = (usize, Vec<(IpAddr, Option<String>)>)>) -> DomainSets {
        DomainSets { by_rule: by_rule.into_iter().map(|(i, v)| (i, v.into_iter().collect())).collect() }
    }

    pub fn contains(&self, rule: usize, addr: IpAddr) -> bool {
        self.by_rule.get(&rule).is_some_and(|s| s.contains_key(&addr))
    }

    /// What `addr` was looked up as, comma-separated: for every rule whose sets hold it, the name
    /// its element records, or the rule's domain patterns for an element without one.
    pub fn host(&self, policy: &Policy, addr: IpAddr) -> Option<String> {
        let mut names: Vec<String> = Vec::new();
        for (i, r) in policy.rules.iter().enumerate() {
            let Some(name) = self.by_rule.get(&i).and_then(|s| s.get(&addr)) else { continue };
            let found: Vec<String> = match name {
                Some(n) => vec![n.clone()],
                None => r.cond.domains.iter().map(|d| d.to_string()).collect(),
            };
            for n in found {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        (!names.is_empty()).then(|| names.join(","))
    }
}

fn decide(policy: &Policy, conn: &Connection, domains: &DomainSets) -> Verdict {
    let mut conn = conn.clone();
    conn.at.get_or_insert_with(|| policy.local_time(jiff::Timestamp::now()));
    let e = policy::explain_with(policy, &conn, &|rule, addr| domains.contains(rule, addr));
    let (rule, decided_by) = match e.decider {
        Decider::Rule(i) => (Some(policy.rules[i].name.clone()), "rule"),
        Decider::NameRefused(i) => (Some(policy.rules[i].name.clone()), "name-refused"),
        Decider::Default => (None, "default"),
        Decider::Loopback => (None, "loopback"),
        Decider::DnsBypass => (None, "dns-bypass"),
        Decider::DnsRedirect => (None, "dns-redirect"),
        // Forwarded flows only (`denied::survey`): left to the other tables, so allowed here.
        Decider::NotGoverned => (None, "not-governed"),
        Decider::BetweenWorkloads => (None, "between-workloads"),
    };
    Verdict {
        verdict: match e.verdict {
            Action::Allow => "allow",
            Action::Deny => "deny",
        },
        rule,
        decided_by,
    }
}

/// netstat's state name, `UNCONN` for an unconnected UDP socket (as `ss` says).
fn state_name(s: &DiagSocket) -> &'static str {
    match (s.proto, s.state) {
        (Proto::Udp, State::Close) => "UNCONN",
        (_, st) => st.as_str(),
    }
}

/// The TCP ports this host listens on, to tell accepted connections from outgoing ones.
#[derive(Debug, Default)]
struct Listeners {
    /// Ports with a wildcard listener (0.0.0.0 or ::).
    any: HashSet<u16>,
    /// (address, port) of listeners bound to one address.
    at: HashSet<(IpAddr, u16)>,
}

impl Listeners {
    fn of(sockets: &[DiagSocket]) -> Listeners {
        let mut l = Listeners::default();
        for s in sockets
            .iter()
            .filter(|s| s.proto == Proto::Tcp && s.state == State::Listen)
        {
            let ip = s.local.ip().to_canonical();
            if ip.is_unspecified() {
                l.any.insert(s.local.port());
            } else {
                l.at.insert((ip, s.local.port()));
            }
        }
        l
    }

    fn direction(&self, s: &DiagSocket) -> Direction {
        match (s.proto, s.state) {
            (Proto::Tcp, State::Listen) => Direction::Listen,
            (Proto::Tcp, State::SynRecv | State::NewSynRecv) => Direction::In,
            (Proto::Tcp, State::Close | State::BoundInactive) if !s.has_remote() => Direction::Unconnected,
            (Proto::Udp, _) if !s.has_remote() => Direction::Unconnected,
            (Proto::Tcp, _) => {
                let port = s.local.port();
                if self.any.contains(&port) || self.at.contains(&(s.local.ip().to_canonical(), port)) {
                    Direction::In
                } else {
                    Direction::Out
                }
            }
            (Proto::Udp, _) => Direction::Out,
        }
    }
}

/// Parses a `--state` value: comma-separated state names, case-insensitive, `-` or `_`
/// (`established`, `syn-sent`, `syn-recv`, `fin-wait-1`, `fin-wait-2`, `time-wait`, `close`,
/// `close-wait`, `last-ack`, `listen`, `closing`, `bound`, `unconn` for unconnected UDP), and
/// the groups `connected` (every state but listen, close, unconn and bound) and `all`.
pub fn parse_states(s: &str) -> Result<States, String> {
    let mut m = States::NONE;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let key = part.to_ascii_lowercase().replace('_', "-");
        let add: &[State] = match key.as_str() {
            "established" | "estab" => &[State::Established],
            "syn-sent" => &[State::SynSent],
            "syn-recv" | "syn-received" => &[State::SynRecv, State::NewSynRecv],
            "fin-wait-1" | "fin-wait1" => &[State::FinWait1],
            "fin-wait-2" | "fin-wait2" => &[State::FinWait2],
            "time-wait" => &[State::TimeWait],
            "close" | "closed" | "unconn" | "unconnected" => &[State::Close],
            "close-wait" => &[State::CloseWait],
            "last-ack" => &[State::LastAck],
            "listen" | "listening" => &[State::Listen],
            "closing" => &[State::Closing],
            "bound" => &[State::BoundInactive],
            "connected" => &[
                State::Established,
                State::SynSent,
                State::SynRecv,
                State::NewSynRecv,
                State::FinWait1,
                State::FinWait2,
                State::TimeWait,
                State::CloseWait,
                State::LastAck,
                State::Closing,
            ],
            "all" => &State::ALL,
            _ => {
                return Err(format!(
                    "unknown state {part:?}: expected established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, \
                     time-wait, close-wait, last-ack, closing, listen, unconn (unconnected UDP), close, bound, \
                     or the groups connected and all"
                ));
            }
        };
        for &st in add {
            m = m.with(st);
        }
    }
    if m == States::NONE {
        return Err("--state needs at least one state name".into());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::netns::NetNs;
    use kernel::testutil::need_root;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    fn policy(text: &str) -> Policy {
        let (p, d) = policy::load(text, &policy::StaticResolver::default());
        p.unwrap_or_else(|| panic!("{d:?}"))
    }

    #[test]
    fn state_names_parse() {
        let m = parse_states("ESTABLISHED, syn_sent").unwrap();
        assert!(m.contains(State::Established) && m.contains(State::SynSent) && !m.contains(State::Listen));
        assert!(parse_states("unconn").unwrap().contains(State::Close));
        let c = parse_states("connected").unwrap();
        assert!(c.contains(State::TimeWait) && !c.contains(State::Listen) && !c.contains(State::Close));
        assert!(parse_states("all").unwrap().contains(State::BoundInactive));
        assert!(parse_states("sleeping").unwrap_err().contains("unknown state"));
        assert!(parse_states(",").is_err());
    }

    #[test]
    fn the_forwarders_queries_are_its_mark_to_its_upstreams() {
        let p = policy(
            "version = 1\n[dns]\nupstreams = [\"192.0.2.53\", \"[2001:db8::53]:5353\"]\nmark = 7\nuser = 64653\n\
             [[rule]]\nname = \"api\"\naction = \"allow\"\nports = [443]\nto = [\"api.example.com\"]\n",
        );
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        // The forwarder's user: its uid is part of its identity, the mark alone is not.
        const F: u32 = 64653;
        assert!(!forwarder_query(&p, Some(7), 0, at("192.0.2.53:53")), "root with the mark");
        assert!(!forwarder_query(&p, Some(7), 65534, at("192.0.2.53:53")), "another user with the mark");
        assert!(forwarder_query(&p, Some(7), F, at("192.0.2.53:53")));
        assert!(forwarder_query(&p, Some(7), F, at("[2001:db8::53]:5353")));
        assert!(forwarder_query(&p, Some(7), F, at("[::ffff:192.0.2.53]:53")), "dual-stack socket");
        assert!(!forwarder_query(&p, Some(7), F, at("192.0.2.53:853")), "another port");
        assert!(!forwarder_query(&p, Some(7), F, at("198.51.100.1:53")), "another resolver");
        assert!(!forwarder_query(&p, Some(8), F, at("192.0.2.53:53")), "another mark");
        assert!(!forwarder_query(&p, None, F, at("192.0.2.53:53")), "mark unknown (not root)");
        let mut j = Judge::new(&p);
        let c = Connection {
            proto: policy::Proto::Udp,
            dst: "192.0.2.53".parse().unwrap(),
            port: Some(53),
            uid: F,
            gid: F,
            name: None,
            cgroup: None,
            at: None,
            from: None,
        };
        assert_eq!(j.decide(c.clone(), None, Some(7)).unwrap().decided_by, "dns-forwarder");
        // Root's socket with the mark is no forwarder: the DNS control decides it.
        assert_ne!(j.decide(Connection { uid: 0, gid: 0, ..c.clone() }, None, Some(7)).unwrap().decided_by, "dns-forwarder");
        // Unmarked, the same query is redirected to the forwarder (allowed, elsewhere).
        assert_eq!(j.decide(c.clone(), None, None).unwrap().decided_by, "dns-redirect");
        // An upstream off the DNS ports: only the mark lets it out; unmarked, the rules decide.
        let off = Connection { dst: "2001:db8::53".parse().unwrap(), port: Some(5353), ..c };
        assert_eq!(j.decide(off.clone(), None, Some(7)).unwrap().decided_by, "dns-forwarder");
        assert_eq!(j.decide(off, None, None).unwrap(), Verdict { verdict: "deny", rule: None, decided_by: "default" });
        // Without domain rules there is no forwarder rule in the table to exempt anything.
        let plain = policy("version = 1\n[dns]\nupstreams = [\"192.0.2.53\"]\nmark = 7\nuser = 64653\n");
        assert!(!forwarder_query(&plain, Some(7), F, at("192.0.2.53:53")));
    }

    /// The host shown for a destination is the name its element records; an element without one
    /// shows the rule's patterns.
    #[test]
    fn host_is_the_name_the_element_records() {
        let p = policy(
            r#"version = 1
[dns]
upstreams = ["192.0.2.53"]
[[rule]]
name = "cdn"
action = "allow"
ports = [443]
to = ["*.cdn.example.com", "api.example.com"]
"#,
        );
        let (named, unnamed, other): (IpAddr, IpAddr, IpAddr) =
            ("203.0.113.1".parse().unwrap(), "203.0.113.2".parse().unwrap(), "203.0.113.3".parse().unwrap());
        let d = DomainSets::from_elements([(0, vec![(named, Some("img.cdn.example.com".into())), (unnamed, None)])]);
        assert_eq!(d.host(&p, named).as_deref(), Some("img.cdn.example.com"));
        assert_eq!(d.host(&p, unnamed).as_deref(), Some("*.cdn.example.com,api.example.com"));
        assert_eq!(d.host(&p, other), None);
        assert!(d.contains(0, named) && !d.contains(0, other));
    }

    /// Real sockets in a namespace: directions, owners, processes and verdicts.
    #[test]
    fn snapshot_joins_sockets_processes_and_verdicts() {
        if !need_root("snapshot_joins_sockets_processes_and_verdicts") {
            return;
        }
        let p = policy(
            r#"version = 1
[defaults]
outbound = "deny"

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["127.0.0.2"]
"#,
        );
        let ns = NetNs::new().unwrap();
        ns.run(|| {
            // 127.0.0.2 on lo: loopback, which the default allow_loopback would allow; turn that
            // off to see rules decide.
            let mut p = p.clone();
            p.defaults.allow_loopback = false;
            let web = TcpListener::bind("127.0.0.2:443").unwrap();
            let other = TcpListener::bind("127.0.0.1:0").unwrap();
            let c1 = TcpStream::connect("127.0.0.2:443").unwrap();
            let c2 = TcpStream::connect(other.local_addr().unwrap()).unwrap();
            let (a1, _) = web.accept().unwrap();
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            let snap = snapshot(&Options::default(), Some(&p)).unwrap();
            let by = |local: SocketAddr| {
                snap.conns.iter().find(|c| c.local == local).unwrap_or_else(|| panic!("{local} in {:#?}", snap.conns))
            };
            let me = std::process::id();

            let c = by(c1.local_addr().unwrap());
            assert_eq!((c.direction, c.state, c.verdict, c.rule.as_deref()), (Direction::Out, "ESTABLISHED", Some("allow"), Some("web")));
            assert_eq!((c.pid, c.uid, c.user.as_deref(), c.gid), (Some(me), Some(0), Some("root"), Some(0)));
            assert!(c.exe.is_some() && c.comm.is_some() && c.bytes_acked.is_some());

            let c = by(c2.local_addr().unwrap());
            assert_eq!((c.direction, c.verdict, c.rule.as_deref(), c.decided_by), (Direction::Out, Some("deny"), None, Some("default")));

            let c = by(a1.local_addr().unwrap());
            // The accepted end shares its local address with the listener: find it by remote.
            let acc = snap.conns.iter().find(|x| x.remote == Some(c1.local_addr().unwrap())).unwrap();
            assert_eq!((acc.direction, acc.verdict), (Direction::In, None));
            assert!(c.direction == Direction::Listen || c.direction == Direction::In);

            let c = by(u.local_addr().unwrap());
            assert_eq!((c.proto, c.state, c.direction, c.remote, c.verdict), ("udp", "UNCONN", Direction::Unconnected, None, None));

            // Without processes nothing is read from /proc; the verdict falls back to the
            // primary group of the owner.
            let bare = snapshot(&Options { processes: false, ..Options::default() }, Some(&p)).unwrap();
            assert!(bare.conns.iter().all(|c| c.pid.is_none()));
            assert_eq!(bare.scan.processes, 0);
            assert_eq!(bare.conns.len(), snap.conns.len());

            // Filters: state (listeners still tell directions), pid, uid.
            let est = snapshot(
                &Options { query: Query { states: States::of(&[State::Established]), ..Query::default() }, ..Options::default() },
                Some(&p),
            )
            .unwrap();
            assert_eq!(est.conns.len(), 4, "{:#?}", est.conns);
            assert_eq!(est.conns.iter().filter(|c| c.direction == Direction::In).count(), 2);
            let mine = snapshot(&Options { pid: Some(me), ..Options::default() }, None).unwrap();
            // Every socket but the one still in the accept queue (no file, so no owner).
            assert_eq!(mine.conns.len(), snap.conns.iter().filter(|c| c.pid == Some(me)).count());
            assert_eq!(mine.conns.len(), snap.conns.len() - 1);
            assert!(mine.conns.iter().all(|c| c.verdict.is_none()));
            let nobody = snapshot(&Options { uid: Some(65534), ..Options::default() }, None).unwrap();
            assert!(nobody.conns.is_empty());
        });
    }
}
