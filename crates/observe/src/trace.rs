//! `leash trace`, the pure part: trace events (read by `kernel::trace::Tracer`) grouped per
//! packet, and a packet explained rule by rule with the table's rules as the tracer read them.
//!
//! What the kernel reports (measured on 6.18, see `crates/kernel/tests/trace.rs` and this crate's
//! `tests/trace.rs`): an event per rule that *matched* (with its verdict, `continue` for a rule
//! without one), one per chain policy applied, none for rules that did not match; so the rules
//! before the deciding one in its chain are the ones that did not match. The packet's headers (up
//! to 40 bytes of network header, 20 of transport header) come with the first event of each base
//! chain. Events of two packets interleave (a `reject` sends its reset while the rejected packet
//! is still being evaluated), hence the grouping by id ([`Assembler`]). [`explain`] maps the rule
//! handles to the rules' comments (the policy rule names, `@loopback`, `@default`, ...), so a
//! packet reads as "`@loopback` no, `@established` no, `web` -> accept".

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kernel::trace::{ChainRules, TRACE_CHAIN, TableRules, TraceEvent, TraceType, Verdict};

use crate::ip::{self, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// What a trace shows of a packet's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol. The kernel copies only the first 40 bytes of the network header,
    /// which leaves out IPv6 extension headers: such a packet shows the first extension header's
    /// number here, and no ports.
    pub proto: u8,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ...).
    pub tcp_flags: Option<u8>,
    /// ICMP or ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
}

impl Packet {
    /// Parses the network and transport header bytes of a trace event (with the parser `log`
    /// uses, see [`crate::ip::parse_headers`]); `None` when the network header is not an IPv4 or
    /// IPv6 header long enough to hold the addresses.
    pub fn parse(network: &[u8], transport: Option<&[u8]>) -> Option<Packet> {
        let s = ip::parse_headers(network, transport)?;
        Some(Packet {
            src: s.src,
            dst: s.dst,
            proto: s.proto,
            sport: s.src_port,
            dport: s.dst_port,
            tcp_flags: s.tcp_flags,
            icmp: s.icmp,
        })
    }

    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the protocol number.
    pub fn proto_name(&self) -> String {
        match self.proto {
            IPPROTO_TCP => "tcp".into(),
            IPPROTO_UDP => "udp".into(),
            IPPROTO_ICMP => "icmp".into(),
            IPPROTO_ICMPV6 => "icmpv6".into(),
            ip::IPPROTO_DCCP => "dccp".into(),
            ip::IPPROTO_SCTP => "sctp".into(),
            ip::IPPROTO_UDPLITE => "udplite".into(),
            n => format!("proto {n}"),
        }
    }

    /// TCP flags as nft names them, comma-separated (`syn`, `syn,ack`, `rst,ack`).
    pub fn tcp_flag_names(&self) -> Option<String> {
        let f = self.tcp_flags?;
        const NAMES: [&str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr"];
        let v: Vec<&str> = (0..8)
            .filter(|i| f & (1 << i) != 0)
            .map(|i| NAMES[i])
            .collect();
        Some(if v.is_empty() {
            "none".into()
        } else {
            v.join(",")
        })
    }
}

/// One event of a packet in a chain of leash's table (the tracing chain's own are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub chain: String,
    pub kind: TraceType,
    pub handle: Option<u64>,
    pub verdict: Option<Verdict>,
}

/// Everything traced of one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketTrace {
    pub id: u32,
    /// From the first event that carried the headers.
    pub packet: Option<Packet>,
    pub nfproto: Option<u8>,
    pub oif: Option<u32>,
    pub mark: Option<u32>,
    pub steps: Vec<Step>,
    /// The table's last word was seen (a drop anywhere, or an accept or the policy of the final
    /// chain). An incomplete trace ended otherwise: another table at an earlier hook priority
    /// dropped the packet, or events were lost, or the session ended first.
    pub complete: bool,
}

/// Groups trace events into packets (see the module documentation), and hands them out in the
/// order they were first seen: a packet that ends while one seen before it is still open (the
/// reset a `reject` sends ends before the packet it answers) waits for it.
#[derive(Debug)]
pub struct Assembler {
    final_chain: String,
    idle: Duration,
    /// Packets waiting for events: id -> (time of the last event, order of first sight, trace).
    open: HashMap<u32, (Instant, u64, PacketTrace)>,
    /// Packets that ended, by order of first sight, held until no earlier packet is open.
    done: BTreeMap<u64, PacketTrace>,
    next: u64,
}

/// The base chain a packet's `chain` was reached from: follows the jumps and gotos among the
/// steps so far back to a chain no step jumped to.
fn base_chain<'a>(steps: &'a [Step], chain: &'a str) -> &'a str {
    let mut c = chain;
    // A chain cannot be entered more often than there are steps; the bound stops a loop.
    for _ in 0..=steps.len() {
        let caller = steps
            .iter()
            .rev()
            .find(|s| matches!(&s.verdict, Some(Verdict::Jump(t) | Verdict::Goto(t)) if t == c));
        match caller {
            Some(s) => c = &s.chain,
            None => break,
        }
    }
    c
}

impl Assembler {
    /// `final_chain`: see [`TableRules::final_chain`]. A packet that has seen no event for
    /// `idle` is given up as incomplete by [`Assembler::expire`].
    pub fn new(final_chain: &str, idle: Duration) -> Assembler {
        Assembler {
            final_chain: final_chain.to_string(),
            idle,
            open: HashMap::new(),
            done: BTreeMap::new(),
            next: 0,
        }
    }

    /// After the table was re-applied.
    pub fn set_final_chain(&mut self, chain: &str) {
        self.final_chain = chain.to_string();
    }

    /// Packets not handed out yet.
    pub fn pending(&self) -> usize {
        self.open.len() + self.done.len()
    }

    /// Adds an event (of leash's table); returns the packets this event lets out.
    pub fn push(&mut self, ev: TraceEvent, now: Instant) -> Vec<PacketTrace> {
        let next = &mut self.next;
        let (seen, _, p) = self.open.entry(ev.id).or_insert_with(|| {
            *next += 1;
            (
                now,
                *next,
                PacketTrace {
                    id: ev.id,
                    packet: None,
                    nfproto: None,
                    oif: None,
                    mark: None,
                    steps: Vec::new(),
                    complete: false,
                },
            )
        });
        *seen = now;
        if p.packet.is_none()
            && let Some(net) = &ev.network_header
        {
            p.packet = Packet::parse(net, ev.transport_header.as_deref());
        }
        p.nfproto = p.nfproto.or(ev.nfproto);
        p.oif = p.oif.or(ev.oif);
        if ev.mark.is_some() {
            p.mark = ev.mark;
        }
        if ev.chain == TRACE_CHAIN {
            return Vec::new();
        }
        let ended = match (&ev.kind, &ev.verdict) {
            (_, Some(v)) if ends_packet(v) => true,
            // An accept ends the base chain the packet is in, also from a regular chain it
            // jumped to (a limited rule's `limit_<rule>`, a blocklist's `deny_<rule>`).
            (TraceType::Rule | TraceType::Policy, Some(Verdict::Accept)) => {
                base_chain(&p.steps, &ev.chain) == self.final_chain
            }
            _ => false,
        };
        p.steps.push(Step {
            chain: ev.chain,
            kind: ev.kind,
            handle: ev.handle,
            verdict: ev.verdict,
        });
        if ended && let Some((_, n, mut p)) = self.open.remove(&ev.id) {
            p.complete = true;
            self.done.insert(n, p);
        }
        self.release()
    }

    /// Gives up packets that saw no event for the idle time (as incomplete); returns the packets
    /// this lets out.
    pub fn expire(&mut self, now: Instant) -> Vec<PacketTrace> {
        let idle = self.idle;
        let old: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, (seen, _, _))| now.duration_since(*seen) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            if let Some((_, n, p)) = self.open.remove(&id) {
                self.done.insert(n, p);
            }
        }
        self.release()
    }

    /// Every packet not handed out yet (at the end of a session), the open ones incomplete.
    pub fn finish(&mut self) -> Vec<PacketTrace> {
        for (_, (_, n, p)) in self.open.drain() {
            self.done.insert(n, p);
        }
        self.release()
    }

    /// The ended packets first seen before every open one.
    fn release(&mut self) -> Vec<PacketTrace> {
        let oldest_open = self.open.values().map(|(_, n, _)| *n).min();
        let mut out = Vec::new();
        while let Some(e) = self.done.first_entry() {
            if oldest_open.is_some_and(|o| o < *e.key()) {
                break;
            }
            out.push(e.remove());
        }
        out
    }
}

/// The packet leaves nf_tables with this verdict (no further chain of any table sees it).
fn ends_packet(v: &Verdict) -> bool {
    matches!(v, Verdict::Drop | Verdict::Stolen | Verdict::Queue)
}

/// The table's verdict on a packet, as an administrator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Drop,
    /// Dropped by a rule that sent a TCP reset or an ICMP error first.
    Reject,
    /// Another verdict (stolen, queue, ...).
    Other(Verdict),
}

impl Outcome {
    pub fn name(&self) -> String {
        match self {
            Outcome::Accept => "accept".into(),
            Outcome::Drop => "drop".into(),
            Outcome::Reject => "reject".into(),
            Outcome::Other(v) => v.name(),
        }
    }
}

/// One policy rule (consecutive kernel rules with one comment) on a packet's way through a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    /// The comment (policy rule name, `@loopback`, ...), or `handle N`.
    pub rule: String,
    /// Kernel rules of this group that matched, with their verdicts.
    pub matched: Vec<(u64, Verdict)>,
    /// Some rule of the group rejects or redirects (to name a drop or accept by it).
    pub reject: bool,
    pub redirect: bool,
}

impl PathRule {
    /// What the group did to the packet, named for people: `accept`, `reject`, `redirect`,
    /// `continue`, ...; `None` when it did not match.
    pub fn action(&self) -> Option<String> {
        let (_, v) = self.matched.last()?;
        Some(match v {
            Verdict::Drop if self.reject => "reject".into(),
            Verdict::Accept if self.redirect => "redirect".into(),
            v => v.name(),
        })
    }
}

/// How a chain ended for the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEnd {
    /// A rule's verdict (the last entry of `rules`).
    Rule,
    /// The chain's policy.
    Policy(Verdict),
    /// No verdict seen (an incomplete trace).
    Unknown,
}

/// A packet's way through one chain: the rules up to the one that ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPath {
    pub chain: String,
    pub rules: Vec<PathRule>,
    pub end: ChainEnd,
}

/// Which rule decided a packet, and which rules before it did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// `None` for an incomplete trace.
    pub outcome: Option<Outcome>,
    /// The chain and rule (comment) that decided; `rule` is `None` when the chain policy did.
    pub chain: Option<String>,
    pub rule: Option<String>,
    pub handle: Option<u64>,
    /// Every chain of leash's table the packet went through, in order.
    pub chains: Vec<ChainPath>,
}

/// Explains a traced packet with the table's rules: per chain, each policy rule before the one
/// that ended the chain (which did not match) and that one; and the table's verdict.
pub fn explain(t: &PacketTrace, rules: &TableRules) -> Explanation {
    // Steps grouped by chain, in the order the packet met the chains.
    let mut by_chain: Vec<(&str, Vec<&Step>)> = Vec::new();
    for s in &t.steps {
        match by_chain.iter_mut().find(|(c, _)| *c == s.chain) {
            Some((_, v)) => v.push(s),
            None => by_chain.push((&s.chain, vec![s])),
        }
    }
    let mut chains = Vec::new();
    for (name, steps) in &by_chain {
        chains.push(chain_path(name, steps, rules.chain(name)));
    }
    let mut e = Explanation {
        outcome: None,
        chain: None,
        rule: None,
        handle: None,
        chains,
    };
    if !t.complete {
        return e;
    }
    let Some(last) = t.steps.last() else {
        return e;
    };
    e.chain = Some(last.chain.clone());
    let verdict = last.verdict.clone().unwrap_or(Verdict::Unknown(0));
    let info = last.handle.and_then(|h| {
        rules
            .chain(&last.chain)?
            .rules
            .iter()
            .find(|r| r.handle == h)
    });
    if last.kind == TraceType::Rule {
        e.handle = last.handle;
        e.rule = Some(match (info, last.handle) {
            (Some(r), _) => r.label(),
            (None, Some(h)) => format!("handle {h}"),
            (None, None) => "?".into(),
        });
    }
    e.outcome = Some(match verdict {
        Verdict::Accept => Outcome::Accept,
        Verdict::Drop if info.is_some_and(|r| r.reject) => Outcome::Reject,
        Verdict::Drop => Outcome::Drop,
        v => Outcome::Other(v),
    });
    e
}

fn chain_path(name: &str, steps: &[&Step], chain: Option<&ChainRules>) -> ChainPath {
    let matched: HashMap<u64, &Verdict> = steps
        .iter()
        .filter(|s| s.kind == TraceType::Rule)
        .filter_map(|s| Some((s.handle?, s.verdict.as_ref()?)))
        .collect();
    let last = steps.last();
    let end = match last {
        Some(s) if s.kind == TraceType::Policy => {
            ChainEnd::Policy(s.verdict.clone().unwrap_or(Verdict::Unknown(0)))
        }
        Some(s) if s.kind == TraceType::Rule && !matches!(s.verdict, Some(Verdict::Continue)) => {
            ChainEnd::Rule
        }
        _ => ChainEnd::Unknown,
    };
    // Walk the chain's rules up to the last rule event (all of them when the policy decided).
    let stop = match (&end, last) {
        (ChainEnd::Policy(_), _) => None,
        (_, Some(s)) => s.handle,
        _ => None,
    };
    let mut rules: Vec<PathRule> = Vec::new();
    let known = chain.map(|c| c.rules.as_slice()).unwrap_or(&[]);
    let mut seen_stop = false;
    for r in known {
        let label = r.label();
        let hit = matched.get(&r.handle).map(|v| (r.handle, (*v).clone()));
        match rules.last_mut() {
            Some(g) if r.comment.is_some() && g.rule == label => {
                g.matched.extend(hit);
                g.reject |= r.reject;
                g.redirect |= r.redirect;
            }
            _ => rules.push(PathRule {
                rule: label,
                matched: hit.into_iter().collect(),
                reject: r.reject,
                redirect: r.redirect,
            }),
        }
        if stop == Some(r.handle) {
            seen_stop = true;
            break;
        }
    }
    // Rules the table read does not know (it changed since): list the matched ones as they came.
    if stop.is_some() && !seen_stop {
        for s in steps.iter().filter(|s| s.kind == TraceType::Rule) {
            let Some(h) = s.handle else { continue };
            if known.iter().any(|r| r.handle == h) {
                continue;
            }
            rules.push(PathRule {
                rule: format!("handle {h}"),
                matched: vec![(h, s.verdict.clone().unwrap_or(Verdict::Unknown(0)))],
                reject: false,
                redirect: false,
            });
        }
    }
    ChainPath {
        chain: name.to_string(),
        rules,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::trace::RuleInfo;

    // nf_tables numbers (`linux/netfilter.h`, `linux/netfilter/nf_tables.h`).
    const NFPROTO_INET: u8 = 1;
    const NFPROTO_IPV4: u8 = 2;
    const NF_DROP: u32 = 0;

    #[test]
    fn an_accept_in_a_jumped_to_chain_ends_the_base_chain() {
        let step = |chain: &str, verdict: Option<Verdict>| Step {
            chain: chain.into(),
            kind: TraceType::Rule,
            handle: None,
            verdict,
        };
        let steps = vec![
            step("output", Some(Verdict::Continue)),
            step("output", Some(Verdict::Jump("limit_web".into()))),
            step("limit_web", Some(Verdict::Goto("deny_web".into()))),
        ];
        assert_eq!(base_chain(&steps, "limit_web"), "output");
        assert_eq!(base_chain(&steps, "deny_web"), "output");
        assert_eq!(base_chain(&steps, "output"), "output");
        assert_eq!(base_chain(&steps, "dns-redirect"), "dns-redirect");
        // A jump loop (which nft refuses) still ends.
        let looped = vec![
            step("a", Some(Verdict::Jump("b".into()))),
            step("b", Some(Verdict::Jump("a".into()))),
        ];
        let _ = base_chain(&looped, "a");
    }

    fn ev(id: u32, chain: &str, kind: TraceType, handle: Option<u64>, v: Verdict) -> TraceEvent {
        TraceEvent {
            id,
            family: NFPROTO_INET,
            table: "leash".into(),
            chain: chain.into(),
            kind,
            handle,
            verdict: Some(v),
            nfproto: Some(NFPROTO_IPV4),
            oif: None,
            iif: None,
            mark: None,
            network_header: None,
            transport_header: None,
        }
    }

    fn rule(handle: u64, comment: &str, reject: bool) -> RuleInfo {
        RuleInfo {
            handle,
            comment: Some(comment.into()),
            reject,
            redirect: false,
        }
    }

    fn table() -> TableRules {
        TableRules {
            handle: 1,
            chains: vec![ChainRules {
                name: "output".into(),
                hook: Some(3),
                priority: Some(0),
                policy: Some(NF_DROP),
                rules: vec![
                    rule(3, "@loopback", false),
                    rule(4, "@established", false),
                    rule(5, "web", false),
                    rule(6, "web", false),
                    rule(7, "@default", true),
                    rule(8, "@default", true),
                ],
            }],
        }
    }

    #[test]
    fn parses_the_headers_of_a_trace_event() {
        // As `kernel::trace`'s test event carries them: IPv4 192.0.2.1 -> 203.0.113.9, TCP
        // 40000 -> 443, SYN.
        let mut ip = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&[192, 0, 2, 1, 203, 0, 113, 9]);
        let mut tcp = vec![0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02];
        tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        let p = Packet::parse(&ip, Some(&tcp)).unwrap();
        assert_eq!(p.src, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            (p.proto_name().as_str(), p.sport, p.dport),
            ("tcp", Some(40000), Some(443))
        );
        assert_eq!(p.tcp_flag_names().as_deref(), Some("syn"));
        // The headers of the first event that has them are the packet's.
        let mut a = Assembler::new("output", Duration::from_millis(100));
        let t0 = Instant::now();
        let mut first = ev(1, "output", TraceType::Rule, Some(5), Verdict::Accept);
        first.network_header = Some(ip);
        first.transport_header = Some(tcp);
        let done = a.push(first, t0);
        assert_eq!(done[0].packet, Some(p));
    }

    #[test]
    fn events_are_grouped_per_packet_even_when_interleaved() {
        let t0 = Instant::now();
        let mut a = Assembler::new("output", Duration::from_millis(500));
        let mut push = |e| a.push(e, t0);
        // Packet 1 passes the trace chain; then packet 2 (the reset packet 1's reject sends)
        // runs through completely, but waits for packet 1; then packet 1's verdict.
        assert!(
            push(ev(
                1,
                TRACE_CHAIN,
                TraceType::Rule,
                Some(9),
                Verdict::Continue
            ))
            .is_empty()
        );
        assert!(push(ev(1, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept)).is_empty());
        assert!(push(ev(2, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept)).is_empty());
        assert!(push(ev(2, "output", TraceType::Rule, Some(4), Verdict::Accept)).is_empty());
        let out = push(ev(1, "output", TraceType::Rule, Some(7), Verdict::Drop));
        let ids: Vec<(u32, usize, bool)> = out
            .iter()
            .map(|p| (p.id, p.steps.len(), p.complete))
            .collect();
        assert_eq!(
            ids,
            vec![(1, 1, true), (2, 1, true)],
            "in the order first seen"
        );
        assert_eq!(a.pending(), 0);

        let e = explain(&out[0], &table());
        assert_eq!(e.outcome, Some(Outcome::Reject));
        assert_eq!(
            (e.chain.as_deref(), e.rule.as_deref(), e.handle),
            (Some("output"), Some("@default"), Some(7))
        );
        let path = &e.chains[0];
        let names: Vec<(&str, Option<String>)> = path
            .rules
            .iter()
            .map(|r| (r.rule.as_str(), r.action()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("@loopback", None),
                ("@established", None),
                ("web", None),
                ("@default", Some("reject".into()))
            ]
        );
        assert_eq!(path.end, ChainEnd::Rule);
    }

    #[test]
    fn an_accept_before_the_final_chain_does_not_end_the_packet() {
        let t0 = Instant::now();
        let mut a = Assembler::new("output", Duration::from_millis(100));
        assert!(
            a.push(
                ev(1, "dns-redirect", TraceType::Policy, None, Verdict::Accept),
                t0
            )
            .is_empty()
        );
        let p = a
            .push(ev(1, "output", TraceType::Policy, None, Verdict::Drop), t0)
            .pop()
            .unwrap();
        let e = explain(&p, &table());
        assert_eq!(e.outcome, Some(Outcome::Drop));
        assert_eq!(e.rule, None, "the policy decided");
        assert_eq!(e.chains.len(), 2);
        assert_eq!(e.chains[1].end, ChainEnd::Policy(Verdict::Drop));
        assert_eq!(
            e.chains[1].rules.len(),
            4,
            "every policy rule of the chain missed"
        );
    }

    #[test]
    fn idle_packets_expire_incomplete_in_order() {
        let t0 = Instant::now();
        let mut a = Assembler::new("output", Duration::from_millis(100));
        a.push(
            ev(7, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept),
            t0,
        );
        let t1 = t0 + Duration::from_millis(1);
        a.push(
            ev(3, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept),
            t1,
        );
        a.push(
            ev(5, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept),
            t1,
        );
        // Packet 5 ends, but 7 and 3 were first seen before it.
        assert!(
            a.push(
                ev(5, "output", TraceType::Rule, Some(4), Verdict::Accept),
                t1
            )
            .is_empty()
        );
        assert!(a.expire(t0 + Duration::from_millis(50)).is_empty());
        let out = a.expire(t0 + Duration::from_millis(200));
        assert_eq!(
            out.iter().map(|p| (p.id, p.complete)).collect::<Vec<_>>(),
            vec![(7, false), (3, false), (5, true)]
        );
        let e = explain(&out[0], &table());
        assert_eq!((e.outcome, e.chains.len()), (None, 0));
    }

    #[test]
    fn matched_rules_without_verdict_and_unknown_handles_are_listed() {
        let t0 = Instant::now();
        let mut a = Assembler::new("output", Duration::from_millis(100));
        a.push(
            ev(1, "output", TraceType::Rule, Some(4), Verdict::Continue),
            t0,
        );
        let p = a
            .push(
                ev(1, "output", TraceType::Rule, Some(99), Verdict::Accept),
                t0,
            )
            .pop()
            .unwrap();
        let e = explain(&p, &table());
        assert_eq!(e.rule.as_deref(), Some("handle 99"));
        let r = &e.chains[0].rules;
        assert_eq!(r[1].action().as_deref(), Some("continue"));
        assert_eq!(r.last().unwrap().rule, "handle 99");
    }
}
