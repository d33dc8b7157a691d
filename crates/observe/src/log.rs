//! Blocked (and rule-logged) attempts: NFLOG packets turned into [`Blocked`] events with the rule,
//! the connection, the socket owner and, when it can still be found, the process.
//!
//! leash's compiler gives every log statement the prefix `leash <action> <rule>: ` (see
//! `ruleset::compile::log_prefix`), so the prefix says which rule decided and what it did. Packets
//! with any other prefix (somebody else's rule logging to the same group) are skipped and counted.
//!
//! # Finding the process
//!
//! NFLOG carries the socket owner's uid and gid but no pid. For an outgoing TCP SYN or a UDP
//! datagram the packet's 5-tuple names the local socket that sent it, so [`Decoder`] asks
//! sock_diag for that socket ([`kernel::sockdiag::SockDiag::lookup`]), takes its inode and looks
//! for a process holding `socket:[INODE]` among `/proc/*/fd`. This races with the sender:
//!
//! - **drop**: a dropped SYN leaves the socket in SYN_SENT, retrying, for as long as the caller
//!   waits, and a dropped UDP send fails with EPERM but leaves the socket open. The socket is
//!   nearly always still there when the event is read.
//! - **reject**: the TCP reset is delivered at once, the socket goes to CLOSE and leaves the
//!   lookup tables, usually before the NFLOG batch is even read; such SYNs are mostly not
//!   attributable (the uid is still known). A UDP socket survives its ICMP error and is found as
//!   long as the program has not closed it.
//! - Short-lived processes (a `curl` that fails fast) may have exited by then; the socket is gone
//!   with them. Other packets (ICMP, TCP without SYN, forwarded traffic) are not looked up.
//!
//! Every event says which of these happened ([`Attribution`]) and [`DecodeStats`] counts them.
//! Measured by the `leash log` integration test `attribution_rates_by_deny_mode` (20 attempts
//! each, kernel 6.18, the event read within about 10 ms; the same with 25 attempts and 100 ms):
//!
//! | attempt | `drop` | `reject` |
//! |---|---|---|
//! | TCP connect (caller waits 250 ms) | 20/20 found | 0/20 (socket gone: the reset closed it before the event was read) |
//! | UDP send, program closes on the ICMP error (or after 100 ms without one) | 20/20 found | 0/20 (socket gone) |
//! | UDP send, program keeps the socket 250 ms | 20/20 found | 20/20 found |
//!
//! So attribution works when the socket outlives the attempt by a few milliseconds: always
//! under `drop`, and under `reject` for programs that retry or keep their socket (resolvers,
//! daemons), not for a TCP connect. An allowed connection logged by `log = true` that is over
//! within a millisecond is usually gone too. The uid and gid are always there.
//!
//! Lookups are cached briefly by 5-tuple (a burst from one socket costs one lookup) and the
//! `/proc` scan stops at the first match. The decoder must run in the network namespace of the
//! packets (sock_diag is per namespace); `/proc` is whatever this process sees.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kernel::nflog::{self, Packet};
use kernel::sockdiag::{self, SockDiag};
use serde::Serialize;

use crate::procs::{self, Process};

// The IP header parser is shared with `trace`; these are its items as `log` has always offered them.
pub use crate::ip::{
    IPPROTO_DCCP, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
    IPPROTO_UDPLITE, IpSummary, parse_ip, proto_name, tcp_flags_text,
};

/// How long a socket lookup result is reused for the same 5-tuple.
const LOOKUP_TTL: Duration = Duration::from_secs(1);
/// Lookup caches are cleared when they grow past this (a scan of many distinct sources).
const CACHE_MAX: usize = 4096;

/// One logged packet of one of leash's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    /// RFC 3339, UTC, microseconds: the kernel's timestamp, or (output hook: the kernel sends
    /// none) when the packet was read, normally within milliseconds of the attempt.
    pub time: String,
    /// `deny` or `allow` (rules with `log = true` log allowed packets too).
    pub action: &'static str,
    /// The policy rule, or `@default` (the default verdict) / `@dns-bypass`.
    pub rule: String,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, or the protocol number.
    pub proto: String,
    pub src: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    pub dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// ICMP/ICMPv6 type and code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// TCP flags, e.g. `syn` or `rst,ack`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// Length of the packet (from its IP header).
    pub len: u32,
    /// The socket owner (locally generated packets).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The user name of `uid`, when the system knows one.
    pub user: Option<String>,
    /// The process holding the socket, when found.
    pub process: Option<Process>,
    /// Why `process` is (not) there.
    pub attribution: Attribution,
    /// The DNS name the destination was looked up as, when the deciding rule is a domain rule
    /// and its set holds the address (the element's comment; see `ruleset::TimedAddr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// NFLOG group, hook and per-group sequence number.
    pub group: u16,
    pub hook: &'static str,
    pub seq: Option<u32>,
}

/// The outcome of looking for the process of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attribution {
    /// The socket and a process holding it were found.
    Found,
    /// No socket with the packet's 5-tuple exists any more (a reset closed it, or its program
    /// exited).
    SocketGone,
    /// The socket exists but no process in `/proc` holds it (closed descriptor, another PID
    /// namespace, or no permission to read the process's descriptors).
    NoProcess,
    /// Not looked up: not an outgoing TCP SYN or UDP datagram, or attribution is off.
    NotTried,
    /// sock_diag failed (the error is counted, the event kept).
    Error,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Found => "found",
            Attribution::SocketGone => "socket-gone",
            Attribution::NoProcess => "no-process",
            Attribution::NotTried => "not-tried",
            Attribution::Error => "error",
        }
    }
}

/// What a [`Decoder`] has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DecodeStats {
    /// Events produced.
    pub events: u64,
    /// Packets whose prefix is not leash's (skipped).
    pub foreign: u64,
    /// leash packets whose IP header did not parse (skipped).
    pub unparsable: u64,
    /// Events for which a lookup was made, and how those ended.
    pub tried: u64,
    pub found: u64,
    pub socket_gone: u64,
    pub no_process: u64,
    pub errors: u64,
}

/// Splits a leash log prefix `leash <action> <rule>: ` into action and rule.
pub fn parse_prefix(prefix: &str) -> Option<(&'static str, &str)> {
    let rest = prefix.strip_prefix("leash ")?;
    let (action, rest) = rest.split_once(' ')?;
    let action = match action {
        "deny" => "deny",
        "allow" => "allow",
        _ => return None,
    };
    // The kernel keeps at most 127 bytes of prefix; a cut one has lost its ": " but still names
    // the rule as far as it goes.
    let rule = rest
        .strip_suffix(": ")
        .or_else(|| rest.strip_suffix(':'))
        .unwrap_or(rest);
    if rule.is_empty() || rule.contains(char::is_whitespace) {
        return None;
    }
    Some((action, rule))
}

/// RFC 3339 in UTC with microseconds: `2025-06-01T12:34:56.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl Blocked {
    /// The one-line text form for people:
    /// `TIME deny RULE tcp SRC:PORT -> DST:PORT [syn] uid=N(name) gid=N pid=N(comm)`.
    pub fn line(&self) -> String {
        let ep = |a: IpAddr, p: Option<u16>| match (a, p) {
            (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
            (a, Some(p)) => format!("{a}:{p}"),
            (a, None) => a.to_string(),
        };
        let mut s = format!(
            "{} {} {} {} {} -> {}",
            self.time,
            self.action,
            self.rule,
            self.proto,
            ep(self.src, self.src_port),
            ep(self.dst, self.dst_port)
        );
        if let Some(h) = &self.host {
            s.push_str(&format!(" ({h})"));
        }
        if let Some(f) = &self.tcp_flags {
            s.push_str(&format!(" [{f}]"));
        }
        if let Some(t) = self.icmp_type {
            s.push_str(&format!(" type {t} code {}", self.icmp_code.unwrap_or(0)));
        }
        match (self.uid, &self.user) {
            (Some(u), Some(n)) => s.push_str(&format!(" uid={u}({n})")),
            (Some(u), None) => s.push_str(&format!(" uid={u}")),
            (None, _) => s.push_str(" uid=-"),
        }
        if let Some(g) = self.gid {
            s.push_str(&format!(" gid={g}"));
        }
        match &self.process {
            Some(p) => {
                s.push_str(&format!(" pid={}({})", p.pid, p.comm));
                if let Some(e) = &p.exe {
                    s.push_str(&format!(" exe={e}"));
                }
            }
            None if self.attribution != Attribution::NotTried => {
                s.push_str(&format!(" pid=-({})", self.attribution.as_str()));
            }
            None => {}
        }
        s
    }
}

/// Turns NFLOG packets into events; keeps the caches and counters. See the module docs.
#[derive(Debug)]
pub struct Decoder {
    attribute: bool,
    diag: Option<SockDiag>,
    users: HashMap<u32, Option<String>>,
    /// (proto, local, remote) -> (when looked up, the socket's inode or why there is none).
    sockets: HashMap<SocketKey, (Instant, Result<u64, Attribution>)>,
    /// Socket inode -> (when looked up, the process holding it).
    owners: HashMap<u64, (Instant, Option<Process>)>,
    /// (rule, destination) -> (when looked up, the name its domain set records for it).
    hosts: HashMap<(String, IpAddr), (Instant, Option<String>)>,
    /// The last time formatted: the packets of one batch share their read time.
    last_time: Option<(SystemTime, String)>,
    stats: DecodeStats,
}

type SocketKey = (sockdiag::Proto, SocketAddr, SocketAddr);

/// One leash packet on its way to becoming an event.
struct Parsed<'a> {
    packet: &'a Packet,
    action: &'static str,
    rule: &'a str,
    ip: IpSummary,
    /// The socket's inode, or why there is none.
    socket: Result<u64, Attribution>,
}

impl Decoder {
    /// A decoder; with `attribute` it looks up the process of outgoing TCP SYNs and UDP
    /// datagrams. Create and use it in the packets' network namespace.
    pub fn new(attribute: bool) -> Decoder {
        Decoder {
            attribute,
            diag: None,
            users: HashMap::new(),
            sockets: HashMap::new(),
            owners: HashMap::new(),
            hosts: HashMap::new(),
            last_time: None,
            stats: DecodeStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// The event for `p`, or `None` when it is not one of leash's packets (or does not parse).
    pub fn decode(&mut self, p: &Packet) -> Option<Blocked> {
        self.decode_batch(std::slice::from_ref(p))
            .pop()
            .map(|(_, e)| e)
    }

    /// The events for a batch of packets (what one receive returned), in order, each with its
    /// packet; packets that are not leash's are left out. The sockets of the whole batch are
    /// looked up first and their processes found in one `/proc` scan.
    pub fn decode_batch<'a>(&mut self, packets: &'a [Packet]) -> Vec<(&'a Packet, Blocked)> {
        let now = Instant::now();
        let mut parsed = Vec::with_capacity(packets.len());
        for p in packets {
            let Some((action, rule)) = p.prefix.as_deref().and_then(parse_prefix) else {
                self.stats.foreign += 1;
                continue;
            };
            let Some(ip) = parse_ip(&p.payload) else {
                self.stats.unparsable += 1;
                continue;
            };
            let socket = self.socket_of(p, &ip, now);
            parsed.push(Parsed {
                packet: p,
                action,
                rule,
                ip,
                socket,
            });
        }
        // Owners of the inodes not seen lately, in one scan.
        let wanted: HashSet<u64> = parsed
            .iter()
            .filter_map(|x| x.socket.ok())
            .filter(|ino| {
                self.owners
                    .get(ino)
                    .is_none_or(|(at, _)| now.duration_since(*at) >= LOOKUP_TTL)
            })
            .collect();
        if !wanted.is_empty() {
            let found = procs::SocketOwners::scan(&wanted).ok();
            if self.owners.len() + wanted.len() > CACHE_MAX {
                self.owners.clear();
            }
            for ino in wanted {
                let owner = found.as_ref().and_then(|f| f.owner(ino).cloned());
                self.owners.insert(ino, (now, owner));
            }
        }
        parsed
            .into_iter()
            .map(|x| (x.packet, self.event(x)))
            .collect()
    }

    fn event(&mut self, x: Parsed<'_>) -> Blocked {
        let (process, attribution) = match x.socket {
            Ok(ino) => match self.owners.get(&ino).and_then(|(_, p)| p.clone()) {
                Some(p) => (Some(p), Attribution::Found),
                None => (None, Attribution::NoProcess),
            },
            Err(a) => (None, a),
        };
        match attribution {
            Attribution::Found => self.stats.found += 1,
            Attribution::NoProcess => self.stats.no_process += 1,
            Attribution::SocketGone => self.stats.socket_gone += 1,
            Attribution::Error => self.stats.errors += 1,
            Attribution::NotTried => {}
        }
        let p = x.packet;
        let ip = x.ip;
        let user = p.uid.and_then(|u| self.user(u));
        let host = self.host(x.rule, ip.dst);
        self.stats.events += 1;
        let time = match &self.last_time {
            Some((t, text)) if *t == p.time() => text.clone(),
            _ => {
                let text = rfc3339(p.time());
                self.last_time = Some((p.time(), text.clone()));
                text
            }
        };
        Blocked {
            time,
            action: x.action,
            rule: x.rule.to_string(),
            family: if ip.src.is_ipv4() { "ipv4" } else { "ipv6" },
            proto: proto_name(ip.proto),
            src: ip.src,
            src_port: ip.src_port,
            dst: ip.dst,
            dst_port: ip.dst_port,
            icmp_type: ip.icmp.map(|i| i.0),
            icmp_code: ip.icmp.map(|i| i.1),
            tcp_flags: ip.tcp_flags.map(tcp_flags_text),
            len: ip.len,
            uid: p.uid,
            gid: p.gid,
            user,
            process,
            attribution,
            host,
            group: p.group,
            hook: nflog::hook_name(p.hook),
            seq: p.seq,
        }
    }

    /// The name `dst` was looked up as, if `rule` is a domain rule whose set holds it: one
    /// element lookup in the kernel per (rule, destination) and second at most.
    fn host(&mut self, rule: &str, dst: IpAddr) -> Option<String> {
        if rule.starts_with('@') {
            return None;
        }
        let now = Instant::now();
        let key = (rule.to_string(), dst);
        if let Some((at, h)) = self.hosts.get(&key)
            && now.duration_since(*at) < LOOKUP_TTL
        {
            return h.clone();
        }
        let family = if dst.is_ipv4() { ruleset::Family::Ipv4 } else { ruleset::Family::Ipv6 };
        let set = ruleset::domain_set_name(rule, family);
        let h = kernel::element_name(ruleset::TABLE_NAME, &set, dst).ok().flatten();
        if self.hosts.len() >= CACHE_MAX {
            self.hosts.clear();
        }
        self.hosts.insert(key, (now, h.clone()));
        h
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| procs::user_name(uid))
            .clone()
    }

    /// The inode of the local socket that sent `p`, or why there is none.
    fn socket_of(&mut self, p: &Packet, ip: &IpSummary, now: Instant) -> Result<u64, Attribution> {
        let proto = match (ip.proto, ip.tcp_flags) {
            // A SYN without ACK: the connect of a local socket (a SYN-ACK belongs to a request
            // socket, which has no process).
            (IPPROTO_TCP, Some(f)) if f & 0x12 == 0x02 => sockdiag::Proto::Tcp,
            (IPPROTO_UDP, _) => sockdiag::Proto::Udp,
            _ => return Err(Attribution::NotTried),
        };
        // Only packets this host sent have a local socket.
        let local_out = p.hook == nflog::NF_INET_LOCAL_OUT || p.hook == nflog::NF_INET_POST_ROUTING;
        let (Some(sp), Some(dp)) = (ip.src_port, ip.dst_port) else {
            return Err(Attribution::NotTried);
        };
        if !self.attribute || !local_out {
            return Err(Attribution::NotTried);
        }
        self.stats.tried += 1;
        let key = (
            proto,
            SocketAddr::new(ip.src, sp),
            SocketAddr::new(ip.dst, dp),
        );
        if let Some((at, r)) = self.sockets.get(&key)
            && now.duration_since(*at) < LOOKUP_TTL
        {
            return *r;
        }
        let r = self.lookup(key);
        // Errors are not cached (the next packet tries again); the inode, or that the socket is
        // gone, holds for LOOKUP_TTL: a burst from one socket costs one lookup.
        if r != Err(Attribution::Error) {
            if self.sockets.len() >= CACHE_MAX {
                self.sockets.clear();
            }
            self.sockets.insert(key, (now, r));
        }
        r
    }

    fn lookup(&mut self, (proto, local, remote): SocketKey) -> Result<u64, Attribution> {
        if self.diag.is_none() {
            self.diag = Some(SockDiag::open().map_err(|_| Attribution::Error)?);
        }
        let diag = self.diag.as_mut().expect("opened above");
        match diag.lookup(proto, local, remote) {
            Ok(Some(s)) if s.inode != 0 => Ok(s.inode),
            // Inode 0: a mini socket (TIME_WAIT), which no process holds.
            Ok(_) => Err(Attribution::SocketGone),
            Err(_) => {
                // A fresh netlink socket next time: this one may be in a bad state.
                self.diag = None;
                Err(Attribution::Error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::tests::ipv4_tcp_syn;

    #[test]
    fn prefixes_parse_back() {
        assert_eq!(
            parse_prefix("leash deny @default: "),
            Some(("deny", "@default"))
        );
        assert_eq!(
            parse_prefix("leash allow web-1: "),
            Some(("allow", "web-1"))
        );
        assert_eq!(parse_prefix("leash deny cut"), Some(("deny", "cut")));
        assert_eq!(parse_prefix("leash drop x: "), None);
        assert_eq!(parse_prefix("other deny x: "), None);
        assert_eq!(parse_prefix("leash deny : "), None);
        assert_eq!(parse_prefix(""), None);
        // The compiler's prefix round-trips.
        let p = ruleset::compile::log_prefix(policy::Action::Deny, "dns_1");
        assert_eq!(parse_prefix(&p), Some(("deny", "dns_1")));
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_709_210_096_123_456);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.123456Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    fn packet(prefix: &str, payload: Vec<u8>) -> Packet {
        Packet {
            group: 3,
            family: nflog::NFPROTO_IPV4,
            hw_protocol: 0x0800,
            hook: nflog::NF_INET_LOCAL_OUT,
            prefix: Some(prefix.into()),
            uid: Some(0),
            gid: Some(0),
            mark: 0,
            indev: None,
            outdev: Some(2),
            timestamp: None,
            received: UNIX_EPOCH + Duration::from_secs(86_400),
            seq: Some(9),
            seq_global: Some(10),
            payload,
        }
    }

    #[test]
    fn events_carry_rule_connection_and_owner() {
        let mut d = Decoder::new(false);
        let e = d
            .decode(&packet("leash deny @default: ", ipv4_tcp_syn()))
            .unwrap();
        assert_eq!(
            (e.action, e.rule.as_str(), e.proto.as_str()),
            ("deny", "@default", "tcp")
        );
        assert_eq!((e.dst_port, e.src_port), (Some(443), Some(40000)));
        assert_eq!(e.time, "1970-01-02T00:00:00.000000Z");
        assert_eq!(e.user.as_deref(), Some("root"));
        assert_eq!(e.attribution, Attribution::NotTried);
        assert_eq!((e.group, e.hook, e.seq), (3, "output", Some(9)));
        assert_eq!(
            e.line(),
            "1970-01-02T00:00:00.000000Z deny @default tcp 192.0.2.1:40000 -> 198.51.100.7:443 [syn] uid=0(root) gid=0"
        );
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["attribution"], "not-tried");
        assert_eq!(j["dst"], "198.51.100.7");
        assert!(j.get("icmp_type").is_none());
        assert!(
            d.decode(&packet("someone else: ", ipv4_tcp_syn()))
                .is_none()
        );
        assert!(d.decode(&packet("leash deny x: ", vec![0x45])).is_none());
        let st = d.stats();
        assert_eq!(
            (st.events, st.foreign, st.unparsable, st.tried),
            (1, 1, 1, 0)
        );
    }
}
