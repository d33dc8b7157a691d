//! Policy -> table model: the one place that decides which nftables rules a policy becomes.
//!
//! The chain mirrors the evaluation order `policy::explain` uses: loopback, established, ICMPv6
//! neighbour discovery, the policy's rules in file order (first match wins), then the default.
//! One policy rule becomes one kernel rule per (address family, protocol) it needs, all carrying the
//! rule's name as comment so counters can be summed back per policy rule. Destination lists, port
//! lists and id lists compile to named sets, so a rule costs one lookup however long its lists are.

use crate::model::*;
use ipnet::IpNet;
use policy::ranges::{merge, net_ranges};
use policy::{Action, DenyWith, LimitPer, Policy, Proto};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Name of the base chain on the output hook.
pub const OUTPUT_CHAIN: &str = "output";
/// Name of the base chain on the forward hook: it sends new connections from local workloads to
/// [`WORKLOAD_CHAIN`] and accepts everything else (other tables still decide it).
pub const FORWARD_CHAIN: &str = "forward";
/// Name of the regular chain holding the policy for forwarded connections from workloads.
pub const WORKLOAD_CHAIN: &str = "workload";
/// Sets of the workload source networks (`[forward] sources` and every rule's `from`).
pub const WORKLOAD_SOURCES_V4: &str = "workload_v4";
pub const WORKLOAD_SOURCES_V6: &str = "workload_v6";

/// Comments of the rules leash adds on its own. They start with `@`, which policy rule names cannot
/// contain, so they never collide with a policy rule.
pub const LOOPBACK_COMMENT: &str = "@loopback";
pub const ESTABLISHED_COMMENT: &str = "@established";
pub const NDP_COMMENT: &str = "@icmpv6-nd";
pub const DEFAULT_COMMENT: &str = "@default";
/// The forwarder's own queries to its upstreams: its socket mark, its user, an upstream's
/// address and port.
pub const DNS_FORWARDER_COMMENT: &str = "@dns-forwarder";
/// The jump of every packet to a DNS port (new or established) into the DNS chain.
pub const DNS_CONTROL_COMMENT: &str = "@dns-control";
/// Replies of connections from outside (a local DNS server answering a client whose source port
/// is 53) leave the DNS chain: they are not queries.
pub const DNS_REPLY_COMMENT: &str = "@dns-reply";
/// DNS to anywhere but the forwarder, denied by the bypass control.
pub const DNS_BYPASS_COMMENT: &str = "@dns-bypass";
/// DNS to anywhere, redirected to the forwarder.
pub const DNS_REDIRECT_COMMENT: &str = "@dns-redirect";
/// A forwarded packet from a workload interface or source, sent to the workload chain.
pub const WORKLOAD_COMMENT: &str = "@workload";
/// A forwarded packet from one workload to another, left to the other tables.
pub const BETWEEN_WORKLOADS_COMMENT: &str = "@between-workloads";

/// Name of the nat chain that redirects DNS to the forwarder.
pub const DNS_REDIRECT_CHAIN: &str = "dns-redirect";
/// Set of the DNS ports (53 and 853) the bypass control guards.
pub const DNS_PORTS_SET: &str = "dns_ports";
/// Set of the destination ports whose packets go through the DNS chain: 53, 853, every
/// upstream's port and the forwarder's listen ports.
pub const DNS_CHAIN_PORTS_SET: &str = "dns_chain_ports";
/// Name of the regular chain holding the DNS control (see `dns_control`).
pub const DNS_CHAIN: &str = "dns";

/// Name of the timeout set the forwarder fills with the addresses it answers for a domain rule.
pub fn domain_set_name(rule: &str, family: Family) -> String {
    match family {
        Family::Ipv4 => format!("r_{rule}_d4"),
        Family::Ipv6 => format!("r_{rule}_d6"),
    }
}

/// Set of the ICMPv6 types that IPv6 cannot work without: router and neighbour solicitation and
/// advertisement, redirect (133-137) and MLDv2 reports (143). They are always allowed out, as
/// IPv4's ARP is (ARP is not IP, so the inet table never sees it).
pub const NDP_SET: &str = "icmpv6_nd";
pub const NDP_TYPES: [u32; 6] = [133, 134, 135, 136, 137, 143];

/// Name of an interval set holding one family of a `[[set]]`'s addresses. Both families always
/// exist, so that `leash set update` can fill either whatever the file held at apply time.
pub fn named_set_name(set: &str, family: Family) -> String {
    match family {
        Family::Ipv4 => format!("s_{set}_v4"),
        Family::Ipv6 => format!("s_{set}_v6"),
    }
}

/// Name of the regular chain that holds a limited rule's rate limit and connection count: every
/// kernel rule of the policy rule jumps there, so the rule has one limiter, not one per family
/// and protocol.
pub fn limit_chain_name(rule: &str) -> String {
    format!("limit_{rule}")
}

/// Name of the regular chain holding the two deny tails (TCP reset, ICMP otherwise) of a rule
/// whose match looks a set up (see `compile_rule`).
pub fn deny_chain_name(rule: &str) -> String {
    format!("deny_{rule}")
}

/// Whether a statement looks a named set up (the costly part of a match).
fn looks_up_a_set(s: &Stmt) -> bool {
    matches!(
        s,
        Stmt::Daddr4(Value::InSet(_))
            | Stmt::Daddr6(Value::InSet(_))
            | Stmt::Dport { value: Value::InSet(_), .. }
            | Stmt::SkUid(Value::InSet(_))
            | Stmt::SkGid(Value::InSet(_))
    )
}

/// Elements a meter (the dynamic set of a per-destination or per-user limit) holds at most.
pub const METER_SIZE: u32 = 65_535;

/// What the compiler needs besides the policy.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// Table comment (leash stores the policy hash and path there; see `leash status`).
    pub comment: Option<String>,
    /// The time of the apply: time windows are projected onto UTC with the offsets the policy's
    /// time zone has from then on (the daylight-saving periods of the next year, see
    /// `policy::time::periods`). `None` takes the offsets in force at the Unix epoch.
    pub now: Option<jiff::Timestamp>,
    /// Make the kernel, at the real instant `now`, behave as the policy does at the local time
    /// `at` (`leash test` uses it for expectations with `at`): the windows are shifted by the
    /// difference, in one period.
    pub imitate: Option<(jiff::Timestamp, jiff::civil::DateTime)>,
    /// The kernel's time zone (`settimeofday`'s `tz_minuteswest`, usually 0). The kernel's
    /// `meta day` subtracts it while `meta hour` does not, so the day ranges are shifted to match.
    pub kernel_minutes_west: i32,
}

/// Compiles a validated policy into the table leash applies.
pub fn compile(policy: &Policy, opts: &CompileOptions) -> Table {
    let d = &policy.defaults;
    let mut sets = Vec::new();
    let mut rules = Vec::new();

    if d.allow_loopback {
        rules.push(builtin(vec![Stmt::OifLoopback, Stmt::Counter, Stmt::Accept], LOOPBACK_COMMENT));
    }
    let mut chains = Vec::new();
    // Before the established fast path: a DNS flow the forwarder started (its pool sockets,
    // apply's warm-up) stays in conntrack for 30 to 120 s after its socket is gone, and a
    // query from another socket on the same source port would ride it as `established` to the
    // upstream, past the redirect (nat sees only new flows) and the bypass denial.
    chains.extend(dns_redirect_chain(policy));
    if policy.has_domain_rules() {
        chains.push(dns_control(policy, &mut sets, &mut rules));
    }
    if d.allow_established {
        rules.push(builtin(
            vec![Stmt::CtStateEstablishedRelated, Stmt::Counter, Stmt::Accept],
            ESTABLISHED_COMMENT,
        ));
    }
    sets.push(Set {
        name: NDP_SET.into(),
        key: KeyType::Icmpv6Type,
        interval: false,
        timeout: false,
        dynamic: None,
        size: None,
        elements: SetElements::Ids(NDP_TYPES.to_vec()),
    });
    rules.push(builtin(
        vec![Stmt::Icmpv6Type(Value::InSet(NDP_SET.into())), Stmt::Counter, Stmt::Accept],
        NDP_COMMENT,
    ));


    for set in &policy.sets {
        for family in [Family::Ipv4, Family::Ipv6] {
            sets.push(Set {
                name: named_set_name(&set.name, family),
                key: if family == Family::Ipv4 { KeyType::Ipv4Addr } else { KeyType::Ipv6Addr },
                interval: true,
                timeout: false,
                dynamic: None,
                size: None,
                elements: match family {
                    Family::Ipv4 => SetElements::v4_of(&set.ranges),
                    Family::Ipv6 => SetElements::v6_of(&set.ranges),
                },
            });
        }
    }

    let mut limit_chains = Vec::new();
    for rule in &policy.rules {
        compile_rule(policy, rule, opts, &mut sets, &mut rules, &mut limit_chains, Side::Output);
    }

    // The default. The chain policy says the same thing, but explicit rules are what count
    // packets, log them and reject them instead of silently dropping.
    let (chain_policy, tail) = match d.outbound {
        Action::Allow => (ChainPolicy::Accept, verdict_rules_for(policy, Action::Allow, false, DEFAULT_COMMENT, None)),
        Action::Deny => (ChainPolicy::Drop, verdict_rules_for(policy, Action::Deny, d.log_denied, DEFAULT_COMMENT, None)),
    };
    rules.extend(tail.into_iter().map(|stmts| builtin(stmts, DEFAULT_COMMENT)));
    let forward = forward_chains(policy, opts, &mut sets, &mut limit_chains);

    Table {
        name: TABLE_NAME.into(),
        comment: opts.comment.as_ref().map(|c| sanitize_comment(c)),
        sets,
        chains: std::iter::once(Chain {
            name: OUTPUT_CHAIN.into(),
            kind: ChainType::Filter,
            hook: Hook::Output,
            priority: OUTPUT_PRIORITY_FILTER,
            policy: chain_policy,
            rules,
        })
        .chain(chains)
        .chain(forward)
        .chain(limit_chains)
        .collect(),
    }
}

/// The chain a policy rule is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The host's own connections (the output hook).
    Output,
    /// Forwarded connections from local workloads (the workload chain under the forward hook).
    Forward,
}

/// Adds a set unless one of that name is there already: a rule compiled for both chains names
/// the same sets (its destinations, ports, domain sets) from both, and they are one set.
fn push_set(sets: &mut Vec<Set>, set: Set) {
    if !sets.iter().any(|s| s.name == set.name) {
        sets.push(set);
    }
}

/// Egress governance of forwarded traffic: a base chain on the forward hook and the workload
/// chain it jumps to. Empty when `[forward] mode = "ignore"` or nothing counts as a workload.
///
/// ```text
/// chain forward   (filter, hook forward, priority filter, policy accept)
///     ct state established,related accept      (allow_established)
///     iifname "docker0" jump workload          (one per workload interface pattern)
///     ip saddr @workload_v4 jump workload      (workload source networks, per family)
///     -- anything else: the policy accept; Docker's and the administrator's tables still decide
/// chain workload
///     oifname "docker0" return                 (to another workload: left alone)
///     ip daddr @workload_v4 return
///     tcp/udp dport @dns_ports deny            (domain rules with bypass control: DNS goes to the forwarder)
///     the policy's rules, compiled a second time without those that need a local socket
///     the default
/// ```
///
/// Only new connections reach the jump rules when established traffic is accepted first, so a
/// connection pays for the policy once, as on the output hook. Limited rules jump to the same
/// `limit_<rule>` chain from both hooks: the host and its workloads share one budget.
fn forward_chains(policy: &Policy, opts: &CompileOptions, sets: &mut Vec<Set>, chains: &mut Vec<Chain>) -> Vec<Chain> {
    let ifaces = policy.workload_interfaces();
    let sources = policy.workload_sources();
    if !policy.governs_forwarded() || (ifaces.is_empty() && sources.is_empty()) {
        return Vec::new();
    }
    let d = &policy.defaults;
    let mut base = Vec::new();
    if d.allow_established {
        base.push(builtin(vec![Stmt::CtStateEstablishedRelated, Stmt::Counter, Stmt::Accept], ESTABLISHED_COMMENT));
    }
    let mut work = Vec::new();
    for p in &ifaces {
        base.push(builtin(
            vec![Stmt::IifName { name: p.name.clone(), wildcard: p.wildcard }, Stmt::Jump(WORKLOAD_CHAIN.into())],
            WORKLOAD_COMMENT,
        ));
        work.push(builtin(
            vec![Stmt::OifName { name: p.name.clone(), wildcard: p.wildcard }, Stmt::Counter, Stmt::Return],
            BETWEEN_WORKLOADS_COMMENT,
        ));
    }
    let (v4, v6) = merge_nets(&sources);
    if !v4.is_empty() {
        push_set(sets, Set {
            name: WORKLOAD_SOURCES_V4.into(),
            key: KeyType::Ipv4Addr,
            interval: true,
            timeout: false,
            dynamic: None,
            size: None,
            elements: SetElements::V4(v4),
        });
        base.push(builtin(
            vec![Stmt::Saddr4(Value::InSet(WORKLOAD_SOURCES_V4.into())), Stmt::Jump(WORKLOAD_CHAIN.into())],
            WORKLOAD_COMMENT,
        ));
        work.push(builtin(
            vec![Stmt::Daddr4(Value::InSet(WORKLOAD_SOURCES_V4.into())), Stmt::Counter, Stmt::Return],
            BETWEEN_WORKLOADS_COMMENT,
        ));
    }
    if !v6.is_empty() {
        push_set(sets, Set {
            name: WORKLOAD_SOURCES_V6.into(),
            key: KeyType::Ipv6Addr,
            interval: true,
            timeout: false,
            dynamic: None,
            size: None,
            elements: SetElements::V6(v6),
        });
        base.push(builtin(
            vec![Stmt::Saddr6(Value::InSet(WORKLOAD_SOURCES_V6.into())), Stmt::Jump(WORKLOAD_CHAIN.into())],
            WORKLOAD_COMMENT,
        ));
        work.push(builtin(
            vec![Stmt::Daddr6(Value::InSet(WORKLOAD_SOURCES_V6.into())), Stmt::Counter, Stmt::Return],
            BETWEEN_WORKLOADS_COMMENT,
        ));
    }
    if policy.has_domain_rules() {
        work.extend(forward_dns_control(policy));
    }
    for rule in &policy.rules {
        compile_rule(policy, rule, opts, sets, &mut work, chains, Side::Forward);
    }
    let tail = match d.outbound {
        Action::Allow => verdict_rules_for(policy, Action::Allow, false, DEFAULT_COMMENT, None),
        Action::Deny => verdict_rules_for(policy, Action::Deny, d.log_denied, DEFAULT_COMMENT, None),
    };
    work.extend(tail.into_iter().map(|stmts| builtin(stmts, DEFAULT_COMMENT)));
    vec![
        Chain {
            name: FORWARD_CHAIN.into(),
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: OUTPUT_PRIORITY_FILTER,
            policy: ChainPolicy::Accept,
            rules: base,
        },
        Chain {
            name: WORKLOAD_CHAIN.into(),
            kind: ChainType::Regular,
            hook: Hook::Forward,
            priority: 0,
            policy: ChainPolicy::Accept,
            rules: work,
        },
    ]
}

/// The DNS bypass control for forwarded connections from workloads: with domain rules and
/// `bypass` on, their DNS (53 and 853) is denied, under `redirect` too, since a forward hook
/// cannot redirect a packet to the host's loopback forwarder. The forwarder's own queries are
/// the host's, never forwarded, so no exemption is needed here. It uses the `dns_ports` set that
/// [`dns_control`] adds and the same comment, so counters and logs read as the output chain's.
fn forward_dns_control(policy: &Policy) -> Vec<Rule> {
    use policy::Bypass;
    if policy.dns.bypass == Bypass::Off {
        return Vec::new();
    }
    let mut out = Vec::new();
    for l4 in [L4::Udp, L4::Tcp] {
        let proto = if l4 == L4::Tcp { Proto::Tcp } else { Proto::Udp };
        for mut tail in
            verdict_rules_for(policy, Action::Deny, policy.defaults.log_denied, DNS_BYPASS_COMMENT, Some(proto))
        {
            let mut stmts = vec![Stmt::Dport { l4, value: Value::InSet(DNS_PORTS_SET.into()) }];
            stmts.append(&mut tail);
            out.push(builtin(stmts, DNS_BYPASS_COMMENT));
        }
    }
    out
}

/// The DNS control. One rule in the output chain (`th dport @dns_chain_ports jump dns`, right
/// after loopback, before `ct state established`) sends every packet to a DNS port into the
/// regular chain `dns`, new or established, so the fast path of everything else costs one
/// lookup. There, in order:
///
/// 1. `ct direction reply return`: replies of connections from outside (a local DNS server
///    answering a client that used source port 53) are not queries;
/// 2. `@dns-forwarder`, per upstream and protocol: `meta mark M meta skuid U ip daddr A udp
///    dport P accept`. Every packet of the flow must carry all four: the mark alone is no proof
///    (CAP_NET_RAW sets it since Linux 5.17), and neither is uid 0 (a `--network host`
///    container), so the forwarder runs as a user of its own. Without a known user there is no
///    such rule: the forwarder's queries are denied (fail closed);
/// 3. `@dns-redirect` (redirect mode): what the nat chain redirected to the forwarder;
/// 4. `@dns-bypass` (unless `bypass = "off"`): everything else to port 53 or 853 is denied,
///    established or not.
///
/// What the chain does not decide (other upstream ports, bypass off) returns to the output
/// chain. With `bypass = "redirect"` a nat chain (returned too) redirects new flows to port 53
/// that do not carry the mark to the forwarder on loopback.
fn dns_control(policy: &Policy, sets: &mut Vec<Set>, rules: &mut Vec<Rule>) -> Chain {
    use policy::{Bypass, DNS_PORT, DOT_PORT};
    let dns = &policy.dns;
    let mut chain_ports: Vec<u16> = vec![DNS_PORT, DOT_PORT];
    chain_ports.extend(dns.upstreams.iter().map(|u| u.port()));
    if dns.bypass == Bypass::Redirect {
        chain_ports.extend([false, true].into_iter().filter_map(|v6| dns.redirect_port(v6)));
    }
    chain_ports.sort_unstable();
    chain_ports.dedup();
    sets.push(Set {
        name: DNS_PORTS_SET.into(),
        key: KeyType::InetService,
        interval: true,
        timeout: false,
        dynamic: None,
        size: None,
        elements: SetElements::Ports(vec![(DNS_PORT, DNS_PORT), (DOT_PORT, DOT_PORT)]),
    });
    sets.push(Set {
        name: DNS_CHAIN_PORTS_SET.into(),
        key: KeyType::InetService,
        interval: true,
        timeout: false,
        dynamic: None,
        size: None,
        elements: SetElements::Ports(merge_ports(chain_ports.iter().map(|&p| (p, p)))),
    });
    rules.push(builtin(
        vec![Stmt::ThDport(Value::InSet(DNS_CHAIN_PORTS_SET.into())), Stmt::Jump(DNS_CHAIN.into())],
        DNS_CONTROL_COMMENT,
    ));

    let mut chain = vec![builtin(vec![Stmt::CtDirectionReply, Stmt::Return], DNS_REPLY_COMMENT)];
    if let Some(uid) = dns.user.uid {
        for up in &dns.upstreams {
            let daddr = match up.ip() {
                std::net::IpAddr::V4(a) => Stmt::Daddr4(Value::Eq(a)),
                std::net::IpAddr::V6(a) => Stmt::Daddr6(Value::Eq(a)),
            };
            for l4 in [L4::Udp, L4::Tcp] {
                chain.push(builtin(
                    vec![
                        Stmt::MarkEq(dns.mark),
                        Stmt::SkUid(Value::Eq(uid)),
                        daddr.clone(),
                        Stmt::Dport { l4, value: Value::Eq(up.port()) },
                        Stmt::Counter,
                        Stmt::Accept,
                    ],
                    DNS_FORWARDER_COMMENT,
                ));
            }
        }
    }
    // Redirected queries: the nat chain rewrote the destination to the forwarder on loopback,
    // but the filter chain still sees the original output interface (the hook's device is fixed
    // before nat reroutes), so `oif "lo"` misses them; they are accepted by their new address.
    if dns.bypass == Bypass::Redirect {
        for (family, v6) in [(Family::Ipv4, false), (Family::Ipv6, true)] {
            let Some(port) = dns.redirect_port(v6) else { continue };
            let daddr = match family {
                Family::Ipv4 => Stmt::Daddr4(Value::Eq(Ipv4Addr::LOCALHOST)),
                Family::Ipv6 => Stmt::Daddr6(Value::Eq(Ipv6Addr::LOCALHOST)),
            };
            for l4 in [L4::Udp, L4::Tcp] {
                chain.push(builtin(
                    vec![daddr.clone(), Stmt::Dport { l4, value: Value::Eq(port) }, Stmt::Counter, Stmt::Accept],
                    DNS_REDIRECT_COMMENT,
                ));
            }
        }
    }
    if dns.bypass != Bypass::Off {
        for l4 in [L4::Udp, L4::Tcp] {
            let proto = if l4 == L4::Tcp { Proto::Tcp } else { Proto::Udp };
            for mut tail in
                verdict_rules_for(policy, Action::Deny, policy.defaults.log_denied, DNS_BYPASS_COMMENT, Some(proto))
            {
                let mut stmts = vec![Stmt::Dport { l4, value: Value::InSet(DNS_PORTS_SET.into()) }];
                stmts.append(&mut tail);
                chain.push(builtin(stmts, DNS_BYPASS_COMMENT));
            }
        }
    }
    Chain {
        name: DNS_CHAIN.into(),
        kind: ChainType::Regular,
        hook: Hook::Output,
        priority: OUTPUT_PRIORITY_FILTER,
        policy: ChainPolicy::Accept,
        rules: chain,
    }
}

/// The nat chain of `bypass = "redirect"`: new flows to port 53 elsewhere that do not carry the
/// forwarder's mark go to the forwarder on loopback (per family, when it listens on that
/// family's loopback). A flow that carries the mark without being the forwarder's is not
/// redirected, and the DNS chain denies it.
fn dns_redirect_chain(policy: &Policy) -> Option<Chain> {
    use policy::{Bypass, DNS_PORT};
    let dns = &policy.dns;
    if !policy.has_domain_rules() || dns.bypass != Bypass::Redirect {
        return None;
    }
    let mut nat = Vec::new();
    for (family, v6) in [(Family::Ipv4, false), (Family::Ipv6, true)] {
        let Some(port) = dns.redirect_port(v6) else { continue };
        for l4 in [L4::Udp, L4::Tcp] {
            nat.push(builtin(
                vec![
                    Stmt::Nfproto(family),
                    Stmt::OifNotLoopback,
                    Stmt::MarkNe(dns.mark),
                    Stmt::Dport { l4, value: Value::Eq(DNS_PORT) },
                    Stmt::Counter,
                    Stmt::Redirect { port },
                ],
                DNS_REDIRECT_COMMENT,
            ));
        }
    }
    Some(Chain {
        name: DNS_REDIRECT_CHAIN.into(),
        kind: ChainType::Nat,
        hook: Hook::Output,
        priority: OUTPUT_PRIORITY_DSTNAT,
        policy: ChainPolicy::Accept,
        rules: nat,
    })
}


fn builtin(stmts: Vec<Stmt>, comment: &str) -> Rule {
    Rule { stmts, comment: Some(comment.into()) }
}

/// Keeps a comment within what nft accepts: printable, no double quote, at most 127 bytes.
pub fn sanitize_comment(c: &str) -> String {
    let mut out: String =
        c.chars().map(|ch| if ch == '"' || ch == '\\' || ch.is_control() { '?' } else { ch }).collect();
    while out.len() > MAX_COMMENT_LEN {
        out.pop();
    }
    out
}

/// Prefix of NFLOG messages for a rule; `leash log` (and anyone reading NFLOG) parses it back.
pub fn log_prefix(action: Action, rule: &str) -> String {
    format!("leash {} {}: ", action.as_str(), rule)
}

fn l4_of(p: Proto) -> L4 {
    match p {
        Proto::Tcp => L4::Tcp,
        Proto::Udp => L4::Udp,
        Proto::Icmp => L4::Icmp,
        Proto::Icmpv6 => L4::Icmpv6,
    }
}

fn compile_rule(
    policy: &Policy,
    rule: &policy::Rule,
    opts: &CompileOptions,
    sets: &mut Vec<Set>,
    out: &mut Vec<Rule>,
    chains: &mut Vec<Chain>,
    side: Side,
) {
    // A rule that can match nothing (an empty list, services that do not exist) compiles to no
    // kernel rule and no set at all (the linter warns about it).
    if rule.matches_nothing().is_some() {
        return;
    }
    // A rule with `from` is about forwarded connections only; a rule that needs a local socket
    // (user, group, cgroup, a per-user limit) can never match a forwarded packet (and `socket
    // cgroupv2` is not even allowed on the forward hook).
    match side {
        Side::Output if rule.cond.from.is_some() => return,
        Side::Forward if rule.needs_socket() => return,
        _ => {}
    }
    let policy::Conditions {
        protos: _, // through `effective_protos`
        ports,
        ports_span: _,
        to,
        to_span: _,
        domains,
        // The forwarder's business: it decides which answers go into the domain sets.
        allow_private: _,
        sets: named_sets,
        countries: _, // their networks are `country_ranges`
        country_ranges,
        users,
        groups,
        cgroups,
        cgroups_span: _,
        when,
        when_span: _,
        from,
        from_span: _,
    } = &rule.cond;
    // The limits go into the rule's own chain (`limit_chain`).
    let policy::Limits { rate, max_connections, per: _, span: _ } = &rule.limits;
    let protos = rule.effective_protos();
    let set_name = |suffix: &str| format!("r_{}_{}", rule.name, suffix);

    // Destinations, split by family. `None` = any destination, any family.
    let families: Vec<Option<Stmt>> = match to {
        None => vec![None],
        Some(nets) => {
            let (v4, v6) = merge_nets(nets);
            let mut f = Vec::new();
            if !v4.is_empty() {
                f.push(Some(Stmt::Daddr4(if v4.len() == 1 && v4[0].0 == v4[0].1 {
                    Value::Eq(v4[0].0)
                } else {
                    push_set(sets, Set {
                        name: set_name("v4"),
                        key: KeyType::Ipv4Addr,
                        interval: true,
                        timeout: false,
                        dynamic: None,
                        size: None,
                        elements: SetElements::V4(v4),
                    });
                    Value::InSet(set_name("v4"))
                })));
            }
            if !v6.is_empty() {
                f.push(Some(Stmt::Daddr6(if v6.len() == 1 && v6[0].0 == v6[0].1 {
                    Value::Eq(v6[0].0)
                } else {
                    push_set(sets, Set {
                        name: set_name("v6"),
                        key: KeyType::Ipv6Addr,
                        interval: true,
                        timeout: false,
                        dynamic: None,
                        size: None,
                        elements: SetElements::V6(v6),
                    });
                    Value::InSet(set_name("v6"))
                })));
            }
            // Named sets: the shared `s_NAME_v4`/`s_NAME_v6` interval sets.
            for r in named_sets {
                let Some(named) = policy.sets.get(r.index) else { continue };
                f.push(Some(Stmt::Daddr4(Value::InSet(named_set_name(&named.name, Family::Ipv4)))));
                f.push(Some(Stmt::Daddr6(Value::InSet(named_set_name(&named.name, Family::Ipv6)))));
            }
            // Countries: the union of the rule's countries, one interval set per family.
            let c = country_ranges;
            if !c.v4.is_empty() {
                push_set(sets, Set {
                    name: set_name("c4"),
                    key: KeyType::Ipv4Addr,
                    interval: true,
                    timeout: false,
                    dynamic: None,
                    size: None,
                    elements: SetElements::v4_of(c),
                });
                f.push(Some(Stmt::Daddr4(Value::InSet(set_name("c4")))));
            }
            if !c.v6.is_empty() {
                push_set(sets, Set {
                    name: set_name("c6"),
                    key: KeyType::Ipv6Addr,
                    interval: true,
                    timeout: false,
                    dynamic: None,
                    size: None,
                    elements: SetElements::v6_of(c),
                });
                f.push(Some(Stmt::Daddr6(Value::InSet(set_name("c6")))));
            }
            // Addresses the forwarder answered for the rule's names: one timeout set per family,
            // filled at run time (and warmed up at apply), matched like any destination list.
            if !domains.is_empty() {
                for (family, key) in [(Family::Ipv4, KeyType::Ipv4Addr), (Family::Ipv6, KeyType::Ipv6Addr)] {
                    let name = domain_set_name(&rule.name, family);
                    push_set(sets, Set {
                        name: name.clone(),
                        key,
                        interval: false,
                        timeout: true,
                        dynamic: None,
                        // Bounded: the kernel refuses elements beyond it (ENFILE) and the
                        // forwarder answers SERVFAIL for the names that need them.
                        size: Some(policy.dns.set_size),
                        elements: match family {
                            Family::Ipv4 => SetElements::TimedV4(Vec::new()),
                            Family::Ipv6 => SetElements::TimedV6(Vec::new()),
                        },
                    });
                    f.push(Some(match family {
                        Family::Ipv4 => Stmt::Daddr4(Value::InSet(name)),
                        Family::Ipv6 => Stmt::Daddr6(Value::InSet(name)),
                    }));
                }
            }
            f
        }
    };

    let ports: Option<Value<u16>> = ports.as_ref().map(|ports| {
        let merged = merge_ports(ports.iter().map(|p| (p.first, p.last)));
        if merged.len() == 1 && merged[0].0 == merged[0].1 {
            Value::Eq(merged[0].0)
        } else {
            push_set(sets, Set {
                name: set_name("ports"),
                key: KeyType::InetService,
                interval: true,
                timeout: false,
                dynamic: None,
                size: None,
                elements: SetElements::Ports(merged),
            });
            Value::InSet(set_name("ports"))
        }
    });

    let mut ids = |list: &Option<Vec<policy::Principal>>, suffix: &str, key: KeyType| {
        list.as_ref().map(|list| {
            let mut v: Vec<u32> = list.iter().map(|p| p.id).collect();
            v.sort_unstable();
            v.dedup();
            if v.len() == 1 {
                Value::Eq(v[0])
            } else {
                push_set(sets, Set { name: set_name(suffix), key, interval: false, timeout: false, dynamic: None, size: None, elements: SetElements::Ids(v) });
                Value::InSet(set_name(suffix))
            }
        })
    };
    let uid = ids(users, "uid", KeyType::Uid);
    let gid = ids(groups, "gid", KeyType::Gid);

    let protos: Vec<Option<Proto>> = match protos {
        None => vec![None],
        Some(list) => {
            let mut l = list.clone();
            l.sort();
            l.dedup();
            l.into_iter().map(Some).collect()
        }
    };

    // Processes: one kernel rule per cgroup (they may sit at different levels).
    let cgroups: Vec<Option<Stmt>> = match cgroups {
        None => vec![None],
        Some(list) => list
            .iter()
            .filter_map(|c| {
                c.id.map(|id| Some(Stmt::SocketCgroup { level: c.level(), path: c.nft_path.clone(), id }))
            })
            .collect(),
    };
    let times: Vec<Vec<Stmt>> = match when {
        None => vec![Vec::new()],
        Some(windows) => time_conditions(policy, windows, opts),
    };
    // An allow rule with limits jumps to its own chain, which holds the one limiter of the rule.
    let limited = rule.action == Action::Allow && (rate.is_some() || max_connections.is_some());
    if limited && !chains.iter().any(|c| c.name == limit_chain_name(&rule.name)) {
        chains.push(limit_chain(policy, rule, sets));
    }
    // Sources of a forwarded connection (only in the workload chain): per family a network
    // match, and each interface pattern, as alternatives like the destination families.
    let sources: Vec<Option<Stmt>> = match (side, from) {
        (Side::Forward, Some(f)) => {
            let mut v = Vec::new();
            let (v4, v6) = merge_nets(&f.nets);
            if !v4.is_empty() {
                v.push(Some(Stmt::Saddr4(if v4.len() == 1 && v4[0].0 == v4[0].1 {
                    Value::Eq(v4[0].0)
                } else {
                    push_set(sets, Set {
                        name: set_name("f4"),
                        key: KeyType::Ipv4Addr,
                        interval: true,
                        timeout: false,
                        dynamic: None,
                        size: None,
                        elements: SetElements::V4(v4),
                    });
                    Value::InSet(set_name("f4"))
                })));
            }
            if !v6.is_empty() {
                v.push(Some(Stmt::Saddr6(if v6.len() == 1 && v6[0].0 == v6[0].1 {
                    Value::Eq(v6[0].0)
                } else {
                    push_set(sets, Set {
                        name: set_name("f6"),
                        key: KeyType::Ipv6Addr,
                        interval: true,
                        timeout: false,
                        dynamic: None,
                        size: None,
                        elements: SetElements::V6(v6),
                    });
                    Value::InSet(set_name("f6"))
                })));
            }
            v.extend(f.interfaces.iter().map(|p| Some(Stmt::IifName { name: p.name.clone(), wildcard: p.wildcard })));
            v
        }
        _ => vec![None],
    };

    for src in &sources {
        for fam in &families {
            // A source of one family never sends to a destination of the other.
            match (src, fam) {
                (Some(Stmt::Saddr4(_)), Some(Stmt::Daddr6(_))) | (Some(Stmt::Saddr6(_)), Some(Stmt::Daddr4(_))) => continue,
                _ => {}
            }
            for proto in &protos {
                // ICMP exists only in IPv4 and ICMPv6 only in IPv6; such pairs can never match.
                match (src, fam, proto) {
                    (_, Some(Stmt::Daddr6(_)), Some(Proto::Icmp))
                    | (_, Some(Stmt::Daddr4(_)), Some(Proto::Icmpv6))
                    | (Some(Stmt::Saddr6(_)), _, Some(Proto::Icmp))
                    | (Some(Stmt::Saddr4(_)), _, Some(Proto::Icmpv6)) => {
                        continue;
                    }
                    _ => {}
                }
                let mut stmts = Vec::new();
                if let Some(s) = src {
                    stmts.push(s.clone());
                }
                if let Some(f) = fam {
                    stmts.push(f.clone());
                }
                match (proto, &ports) {
                    (Some(p), Some(v)) if p.has_ports() => {
                        stmts.push(Stmt::Dport { l4: l4_of(*p), value: v.clone() })
                    }
                    (Some(p), _) => stmts.push(Stmt::L4proto(l4_of(*p))),
                    (None, _) => {}
                }
                if let Some(v) = &uid {
                    stmts.push(Stmt::SkUid(v.clone()));
                }
                if let Some(v) = &gid {
                    stmts.push(Stmt::SkGid(v.clone()));
                }
                for cg in &cgroups {
                    for time in &times {
                        let mut matched = stmts.clone();
                        matched.extend(cg.iter().cloned());
                        matched.extend(time.iter().cloned());
                        if limited {
                            matched.push(Stmt::Jump(limit_chain_name(&rule.name)));
                            out.push(Rule { stmts: matched, comment: Some(rule.name.clone()) });
                            continue;
                        }
                        let tails = verdict_rules_for(policy, rule.action, rule.log, &rule.name, *proto);
                        // A reject of unknown protocol has two tails (TCP reset, ICMP otherwise). Two
                        // kernel rules would look a set up twice for every packet that misses it (a
                        // blocklist's whole traffic), so they sit in the rule's own chain, reached by
                        // one lookup and a jump.
                        if tails.len() > 1 && matched.iter().any(looks_up_a_set) {
                            let name = deny_chain_name(&rule.name);
                            if !chains.iter().any(|c| c.name == name) {
                                chains.push(Chain {
                                    name: name.clone(),
                                    kind: ChainType::Regular,
                                    hook: Hook::Output,
                                    priority: 0,
                                    policy: ChainPolicy::Accept,
                                    rules: tails.into_iter().map(|t| Rule { stmts: t, comment: Some(rule.name.clone()) }).collect(),
                                });
                            }
                            matched.push(Stmt::Jump(name));
                            out.push(Rule { stmts: matched, comment: Some(rule.name.clone()) });
                            continue;
                        }
                        for mut tail in tails {
                            let mut s = matched.clone();
                            s.append(&mut tail);
                            out.push(Rule { stmts: s, comment: Some(rule.name.clone()) });
                        }
                    }
                }
            }
        }
    }
}

/// The regular chain of a limited allow rule: packets under the connection count and the rate
/// are accepted, the rest denied the way `deny_with` says (and logged when denials are). The
/// count comes first so that a connection over it takes no token from the rate.
fn limit_chain(policy: &Policy, rule: &policy::Rule, sets: &mut Vec<Set>) -> Chain {
    let name = &rule.name;
    let policy::Limits { rate, max_connections, per, span: _ } = &rule.limits;
    let rate = rate.map(|r| RateLimit {
        rate: r.count as u64,
        unit: match r.per_seconds {
            1 => RateUnit::Second,
            60 => RateUnit::Minute,
            3600 => RateUnit::Hour,
            _ => RateUnit::Day,
        },
        burst: r.burst,
    });
    let keys: Vec<Option<(MeterKey, &str)>> = match per {
        LimitPer::Rule => vec![None],
        LimitPer::Destination => vec![Some((MeterKey::Daddr4, "4")), Some((MeterKey::Daddr6, "6"))],
        LimitPer::User => vec![Some((MeterKey::SkUid, "u"))],
    };
    let mut rules = Vec::new();
    for key in keys {
        let mut stmts = Vec::new();
        if let Some(n) = *max_connections {
            match key {
                None => stmts.push(Stmt::CtCount(n)),
                Some((k, suffix)) => {
                    let set = format!("r_{name}_conn{suffix}");
                    // Connection counters clean up after their connections close, so their
                    // elements carry no timeout.
                    push_set(sets, meter_set(&set, k, None));
                    stmts.push(Stmt::Meter { set, key: k, limit: MeterLimit::Count(n) });
                }
            }
        }
        if let Some(l) = rate {
            match key {
                None => stmts.push(Stmt::Limit(l)),
                Some((k, suffix)) => {
                    let set = format!("r_{name}_rate{suffix}");
                    // A limiter forgotten after one idle unit (at least a minute) starts again
                    // with a full bucket, which is what it would hold by then anyway.
                    let timeout = (l.unit.seconds() * 1000).max(60_000);
                    push_set(sets, meter_set(&set, k, Some(timeout)));
                    stmts.push(Stmt::Meter { set, key: k, limit: MeterLimit::Rate(l) });
                }
            }
        }
        stmts.push(Stmt::Counter);
        if rule.log {
            stmts.push(Stmt::Log { prefix: log_prefix(Action::Allow, name), group: policy.defaults.log_group });
        }
        stmts.push(Stmt::Accept);
        rules.push(Rule { stmts, comment: Some(name.clone()) });
    }
    for tail in verdict_rules_for(policy, Action::Deny, policy.defaults.log_denied || rule.log, name, None) {
        rules.push(Rule { stmts: tail, comment: Some(name.clone()) });
    }
    Chain {
        name: limit_chain_name(name),
        kind: ChainType::Regular,
        hook: Hook::Output,
        priority: 0,
        policy: ChainPolicy::Accept,
        rules,
    }
}

fn meter_set(name: &str, key: MeterKey, timeout_ms: Option<u64>) -> Set {
    Set {
        name: name.into(),
        key: key.key_type(),
        interval: false,
        timeout: timeout_ms.is_some(),
        dynamic: Some(Dynamic { size: METER_SIZE, timeout_ms }),
        size: None,
        elements: match key {
            MeterKey::Daddr4 => SetElements::V4(Vec::new()),
            MeterKey::Daddr6 => SetElements::V6(Vec::new()),
            MeterKey::SkUid => SetElements::Ids(Vec::new()),
        },
    }
}

/// A weekday range (`None`: every day) and inclusive seconds of the day, as `meta day` and
/// `meta hour` match them.
type DayPiece = (Option<(u8, u8)>, u32, u32);

/// A UTC slot as the kernel sees it: `meta hour` is UTC, but `meta day` is the weekday of UTC
/// minus the kernel's time zone. A slot whose seconds straddle the point where the two days
/// differ splits into two pieces, the part on the other side taking the neighbouring weekdays
/// (`meta day` ranges may wrap: Saturday to Monday). Each piece: the weekday range (`None`: every
/// day) and the inclusive seconds.
fn kernel_day_pieces(slot: policy::time::UtcSlot, minutes_west: i32) -> Vec<DayPiece> {
    const DAY: i64 = policy::time::DAY;
    let west = (minutes_west as i64 * 60).clamp(-(DAY - 1), DAY - 1);
    let all_days = slot.first_day == 0 && slot.last_day == 6;
    let days = |delta: i64| -> Option<(u8, u8)> {
        (!all_days).then(|| {
            let shift = |d: u8| (d as i64 + delta).rem_euclid(7) as u8;
            (shift(slot.first_day), shift(slot.last_day))
        })
    };
    // Seconds x of UTC day d: the kernel's day is d - 1 while x < west (west > 0), d + 1 once
    // x >= DAY + west (west < 0), else d.
    let (split, below, above) = if west > 0 { (west, -1, 0) } else { (DAY + west, 0, 1) };
    let (a, b) = (slot.first_second as i64, slot.last_second as i64);
    if west == 0 || b < split {
        return vec![(days(below), slot.first_second, slot.last_second)];
    }
    if a >= split {
        return vec![(days(above), slot.first_second, slot.last_second)];
    }
    vec![(days(below), slot.first_second, (split - 1) as u32), (days(above), split as u32, slot.last_second)]
}

/// The time conditions of a rule with `when` windows, one list of statements per kernel rule:
/// each daylight-saving period (bounded by `meta time`) times each UTC slot (`meta day`,
/// `meta hour`).
pub fn time_conditions(policy: &Policy, windows: &[policy::Window], opts: &CompileOptions) -> Vec<Vec<Stmt>> {
    use policy::time::{Period, WEEK, periods, utc_slots};
    const NS: i64 = 1_000_000_000;
    let (periods, shift) = match opts.imitate {
        Some((now, at)) => {
            // The kernel sees UTC now; the windows must open as they would at local time `at`.
            let utc_now = (now.as_second() + 4 * policy::time::DAY).rem_euclid(WEEK);
            let shift = policy::explain::week_second(at) as i64 - utc_now;
            (vec![Period { from: None, until: None, offset: 0 }], shift)
        }
        None => (periods(&policy.time_zone(), opts.now.unwrap_or(jiff::Timestamp::UNIX_EPOCH)), 0),
    };
    let mut out = Vec::new();
    for p in periods {
        let mut bounds = Vec::new();
        if let Some(from) = p.from {
            bounds.push(Stmt::MetaTimeFrom(from * NS));
        }
        if let Some(until) = p.until {
            bounds.push(Stmt::MetaTimeUntil(until * NS));
        }
        for slot in utc_slots(windows, p.offset, shift) {
            for (days, first, last) in kernel_day_pieces(slot, opts.kernel_minutes_west) {
                let mut s = bounds.clone();
                if let Some((a, b)) = days {
                    s.push(Stmt::MetaDay { first: a, last: b });
                }
                if !(first == 0 && last == policy::time::DAY as u32 - 1) {
                    s.push(Stmt::MetaHour { first, last });
                }
                out.push(s);
            }
        }
    }
    out
}

/// The tails (counter, log, verdict) a matching packet meets. A reject of unknown protocol needs
/// two kernel rules: TCP gets a reset, everything else ICMP administratively prohibited.
///
/// `proto` is the protocol the rule already matched, if any: TCP needs only the reset, any
/// other known protocol only the ICMP error.
fn verdict_rules_for(policy: &Policy, action: Action, log: bool, name: &str, proto: Option<Proto>) -> Vec<Vec<Stmt>> {
    let group = policy.defaults.log_group;
    let head = |extra: Option<Stmt>| {
        let mut v = Vec::new();
        v.extend(extra);
        v.push(Stmt::Counter);
        if log {
            v.push(Stmt::Log { prefix: log_prefix(action, name), group });
        }
        v
    };
    match (action, policy.defaults.deny_with) {
        (Action::Allow, _) => {
            let mut v = head(None);
            v.push(Stmt::Accept);
            vec![v]
        }
        (Action::Deny, DenyWith::Drop) => {
            let mut v = head(None);
            v.push(Stmt::Drop);
            vec![v]
        }
        (Action::Deny, DenyWith::Reject) if proto == Some(Proto::Tcp) => {
            let mut v = head(None);
            v.push(Stmt::RejectTcpReset);
            vec![v]
        }
        (Action::Deny, DenyWith::Reject) if proto.is_some() => {
            let mut v = head(None);
            v.push(Stmt::RejectAdminProhibited);
            vec![v]
        }
        (Action::Deny, DenyWith::Reject) => {
            let mut tcp = head(Some(Stmt::L4proto(L4::Tcp)));
            tcp.push(Stmt::RejectTcpReset);
            let mut other = head(None);
            other.push(Stmt::RejectAdminProhibited);
            vec![tcp, other]
        }
    }
}

/// Inclusive IPv4 address ranges.
pub type V4Ranges = Vec<(Ipv4Addr, Ipv4Addr)>;
/// Inclusive IPv6 address ranges.
pub type V6Ranges = Vec<(Ipv6Addr, Ipv6Addr)>;

/// Sorts and merges networks into inclusive address ranges per family (overlapping and adjacent
/// networks become one range), which is what an nftables interval set needs.
pub fn merge_nets(nets: &[IpNet]) -> (V4Ranges, V6Ranges) {
    let (v4, v6) = net_ranges(nets);
    (
        merge(v4).into_iter().map(|(a, b)| (Ipv4Addr::from(a as u32), Ipv4Addr::from(b as u32))).collect(),
        merge(v6).into_iter().map(|(a, b)| (Ipv6Addr::from(a), Ipv6Addr::from(b))).collect(),
    )
}

/// Sorts and merges inclusive port ranges.
pub fn merge_ports(ports: impl IntoIterator<Item = (u16, u16)>) -> Vec<(u16, u16)> {
    merge(ports.into_iter().map(|(a, b)| (a as u128, b as u128)).collect())
        .into_iter()
        .map(|(a, b)| (a as u16, b as u16))
        .collect()
}
