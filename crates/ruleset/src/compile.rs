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
use policy::{Action, DenyWith, Policy, Proto};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Name of the base chain on the output hook.
pub const OUTPUT_CHAIN: &str = "output";

/// Comments of the rules leash adds on its own. They start with `@`, which policy rule names cannot
/// contain, so they never collide with a policy rule.
pub const LOOPBACK_COMMENT: &str = "@loopback";
pub const ESTABLISHED_COMMENT: &str = "@established";
pub const NDP_COMMENT: &str = "@icmpv6-nd";
pub const DEFAULT_COMMENT: &str = "@default";
/// The forwarder's own queries to its upstreams (they carry its socket mark).
pub const DNS_FORWARDER_COMMENT: &str = "@dns-forwarder";
/// DNS to anywhere but the forwarder, denied by the bypass control.
pub const DNS_BYPASS_COMMENT: &str = "@dns-bypass";
/// DNS to anywhere, redirected to the forwarder.
pub const DNS_REDIRECT_COMMENT: &str = "@dns-redirect";

/// Name of the nat chain that redirects DNS to the forwarder.
pub const DNS_REDIRECT_CHAIN: &str = "dns-redirect";
/// Set of the DNS ports (53 and 853) the bypass control guards.
pub const DNS_PORTS_SET: &str = "dns_ports";

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

/// What the compiler needs besides the policy.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// Table comment (leash stores the policy hash and path there; see `leash status`).
    pub comment: Option<String>,
}

/// Compiles a validated policy into the table leash applies.
pub fn compile(policy: &Policy, opts: &CompileOptions) -> Table {
    let d = &policy.defaults;
    let mut sets = Vec::new();
    let mut rules = Vec::new();

    if d.allow_loopback {
        rules.push(builtin(vec![Stmt::OifLoopback, Stmt::Counter, Stmt::Accept], LOOPBACK_COMMENT));
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
        elements: SetElements::Ids(NDP_TYPES.to_vec()),
    });
    rules.push(builtin(
        vec![Stmt::Icmpv6Type(Value::InSet(NDP_SET.into())), Stmt::Counter, Stmt::Accept],
        NDP_COMMENT,
    ));

    let mut chains = Vec::new();
    if policy.has_domain_rules() {
        chains.extend(dns_control(policy, &mut sets, &mut rules));
    }

    for rule in &policy.rules {
        compile_rule(policy, rule, &mut sets, &mut rules);
    }

    // The default. The chain policy says the same thing, but explicit rules are what count
    // packets, log them and reject them instead of silently dropping.
    let (chain_policy, tail) = match d.outbound {
        Action::Allow => (ChainPolicy::Accept, verdict_rules_for(policy, Action::Allow, false, DEFAULT_COMMENT, None)),
        Action::Deny => (ChainPolicy::Drop, verdict_rules_for(policy, Action::Deny, d.log_denied, DEFAULT_COMMENT, None)),
    };
    rules.extend(tail.into_iter().map(|stmts| builtin(stmts, DEFAULT_COMMENT)));

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
        .collect(),
    }
}

/// The DNS bypass control: the forwarder's marked queries go out; other DNS is redirected to
/// the forwarder (a nat chain, returned) or denied (filter rules, appended to `rules`).
fn dns_control(policy: &Policy, sets: &mut Vec<Set>, rules: &mut Vec<Rule>) -> Option<Chain> {
    use policy::dns::{Bypass, DNS_PORT, DOT_PORT};
    let dns = &policy.dns;
    sets.push(Set {
        name: DNS_PORTS_SET.into(),
        key: KeyType::InetService,
        interval: true,
        timeout: false,
        dynamic: None,
        elements: SetElements::Ports(vec![(DNS_PORT, DNS_PORT), (DOT_PORT, DOT_PORT)]),
    });
    for l4 in [L4::Udp, L4::Tcp] {
        rules.push(builtin(
            vec![
                Stmt::MarkEq(dns.mark),
                Stmt::Dport { l4, value: Value::InSet(DNS_PORTS_SET.into()) },
                Stmt::Counter,
                Stmt::Accept,
            ],
            DNS_FORWARDER_COMMENT,
        ));
    }
    if dns.bypass == Bypass::Off {
        return None;
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
                rules.push(builtin(
                    vec![daddr.clone(), Stmt::Dport { l4, value: Value::Eq(port) }, Stmt::Counter, Stmt::Accept],
                    DNS_REDIRECT_COMMENT,
                ));
            }
        }
    }
    for l4 in [L4::Udp, L4::Tcp] {
        let proto = if l4 == L4::Tcp { Proto::Tcp } else { Proto::Udp };
        for mut tail in
            verdict_rules_for(policy, Action::Deny, policy.defaults.log_denied, DNS_BYPASS_COMMENT, Some(proto))
        {
            let mut stmts = vec![Stmt::Dport { l4, value: Value::InSet(DNS_PORTS_SET.into()) }];
            stmts.append(&mut tail);
            rules.push(builtin(stmts, DNS_BYPASS_COMMENT));
        }
    }
    if dns.bypass != Bypass::Redirect {
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

fn compile_rule(policy: &Policy, rule: &policy::Rule, sets: &mut Vec<Set>, out: &mut Vec<Rule>) {
    // An empty list is a condition nothing satisfies; the rule compiles to no kernel rule at all
    // (the linter warns about it).
    let empty = |o: &Option<Vec<_>>| o.as_ref().is_some_and(|v: &Vec<_>| v.is_empty());
    let protos = rule.effective_protos();
    if empty(&protos)
        || rule.ports.as_ref().is_some_and(|v| v.is_empty())
        || (rule.to.as_ref().is_some_and(|v| v.is_empty()) && rule.domains.is_empty())
        || rule.users.as_ref().is_some_and(|v| v.is_empty())
        || rule.groups.as_ref().is_some_and(|v| v.is_empty())
    {
        return;
    }
    let set_name = |suffix: &str| format!("r_{}_{}", rule.name, suffix);

    // Destinations, split by family. `None` = any destination, any family.
    let families: Vec<Option<Stmt>> = match &rule.to {
        None => vec![None],
        Some(nets) => {
            let (v4, v6) = merge_nets(nets);
            let mut f = Vec::new();
            if !v4.is_empty() {
                f.push(Some(Stmt::Daddr4(if v4.len() == 1 && v4[0].0 == v4[0].1 {
                    Value::Eq(v4[0].0)
                } else {
                    sets.push(Set {
                        name: set_name("v4"),
                        key: KeyType::Ipv4Addr,
                        interval: true,
                        timeout: false,
                        dynamic: None,
                        elements: SetElements::V4(v4),
                    });
                    Value::InSet(set_name("v4"))
                })));
            }
            if !v6.is_empty() {
                f.push(Some(Stmt::Daddr6(if v6.len() == 1 && v6[0].0 == v6[0].1 {
                    Value::Eq(v6[0].0)
                } else {
                    sets.push(Set {
                        name: set_name("v6"),
                        key: KeyType::Ipv6Addr,
                        interval: true,
                        timeout: false,
                        dynamic: None,
                        elements: SetElements::V6(v6),
                    });
                    Value::InSet(set_name("v6"))
                })));
            }
            // Addresses the forwarder answered for the rule's names: one timeout set per family,
            // filled at run time (and warmed up at apply), matched like any destination list.
            if !rule.domains.is_empty() {
                for (family, key) in [(Family::Ipv4, KeyType::Ipv4Addr), (Family::Ipv6, KeyType::Ipv6Addr)] {
                    let name = domain_set_name(&rule.name, family);
                    sets.push(Set {
                        name: name.clone(),
                        key,
                        interval: false,
                        timeout: true,
                        dynamic: None,
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

    let ports: Option<Value<u16>> = rule.ports.as_ref().map(|ports| {
        let merged = merge_ports(ports.iter().map(|p| (p.first, p.last)));
        if merged.len() == 1 && merged[0].0 == merged[0].1 {
            Value::Eq(merged[0].0)
        } else {
            sets.push(Set {
                name: set_name("ports"),
                key: KeyType::InetService,
                interval: true,
                timeout: false,
                dynamic: None,
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
                sets.push(Set { name: set_name(suffix), key, interval: false, timeout: false, dynamic: None, elements: SetElements::Ids(v) });
                Value::InSet(set_name(suffix))
            }
        })
    };
    let uid = ids(&rule.users, "uid", KeyType::Uid);
    let gid = ids(&rule.groups, "gid", KeyType::Gid);

    let protos: Vec<Option<Proto>> = match protos {
        None => vec![None],
        Some(list) => {
            let mut l = list.clone();
            l.sort();
            l.dedup();
            l.into_iter().map(Some).collect()
        }
    };

    for fam in &families {
        for proto in &protos {
            // ICMP exists only in IPv4 and ICMPv6 only in IPv6; such pairs can never match.
            match (fam, proto) {
                (Some(Stmt::Daddr6(_)), Some(Proto::Icmp)) | (Some(Stmt::Daddr4(_)), Some(Proto::Icmpv6)) => {
                    continue;
                }
                _ => {}
            }
            let mut stmts = Vec::new();
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
            for mut tail in verdict_rules_for(policy, rule.action, rule.log, &rule.name, *proto) {
                let mut s = stmts.clone();
                s.append(&mut tail);
                out.push(Rule { stmts: s, comment: Some(rule.name.clone()) });
            }
        }
    }
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
