//! Warnings about valid policies that probably do not do what their author meant.
//!
//! Every lint is sound in the direction that matters: a `shadowed` or `never-matches` warning is
//! only given when it is certain (per the semantics of [`crate::explain()`]); subtler cases, such as
//! a rule covered only by several earlier rules together, go unreported rather than misreported.

use crate::ranges::{Ranges, merge, net_ranges};
use crate::diag::Diagnostic;
use crate::model::*;
use ipnet::IpNet;

/// Lints a validated policy. `today` is passed in (this crate never reads the clock) and only
/// matters for `review-overdue`. The warnings come sorted by position.
///
/// Codes: `shadowed`, `never-matches`, `no-dns`, `established-off`, `review-overdue`,
/// `undocumented-broad-allow`, `not-for-forwarded`.
pub fn lint(policy: &Policy, today: Date) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let d = &policy.defaults;

    let sets: Vec<Sets> = policy.rules.iter().map(|r| Sets::of(policy, r)).collect();
    for (j, rule) in policy.rules.iter().enumerate() {
        let never = never_matches(rule);
        let mut decides = never.is_none();
        if let Some(why) = &never {
            out.push(Diagnostic::warning(
                "never-matches",
                rule.name_span.clone(),
                format!("rule `{}` can never match: {why}", rule.name),
            ));
        } else if let Some(i) = (0..j).find(|&i| sets[i].covers(&sets[j])) {
            let earlier = &policy.rules[i];
            decides = false;
            out.push(Diagnostic::warning(
                "shadowed",
                rule.name_span.clone(),
                format!(
                    "rule `{}` never decides: the earlier rule `{}` matches every connection it matches",
                    rule.name, earlier.name
                ),
            ));
        }

        if let (Some(review), Some(span)) = (rule.review, &rule.review_span)
            && review < today
        {
            out.push(Diagnostic::warning(
                "review-overdue",
                span.clone(),
                format!("rule `{}` was due for review on {review}", rule.name),
            ));
        }

        // A rule that never decides is not broad in effect; the warning above is what to fix.
        if rule.action == Action::Allow && decides {
            let broad = broad_because(rule);
            let missing: Vec<&str> = [("purpose", &rule.purpose), ("owner", &rule.owner)]
                .into_iter()
                .filter(|(_, v)| v.as_deref().is_none_or(|s| s.trim().is_empty()))
                .map(|(k, _)| k)
                .collect();
            if let (Some(broad), false) = (broad, missing.is_empty()) {
                out.push(Diagnostic::warning(
                    "undocumented-broad-allow",
                    rule.name_span.clone(),
                    format!(
                        "rule `{}` allows {broad} but has no {}; say why it exists and who answers for it",
                        rule.name,
                        missing.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" or ")
                    ),
                ));
            }
        }
    }

    // With domain rules the forwarder does the resolving, and the compiled ruleset lets it out.
    if d.outbound == Action::Deny && !policy.has_domain_rules() && !policy.rules.iter().any(allows_dns) {
        out.push(Diagnostic::warning(
            "no-dns",
            d.outbound_span.clone().unwrap_or(0..0),
            "outbound is deny and no rule allows DNS (udp or tcp port 53); name resolution will fail",
        ));
    }

    if policy.has_domain_rules()
        && policy.dns.bypass == Bypass::Redirect
        && let Some(up) = policy.dns.upstreams.iter().find(|u| u.ip().is_loopback())
    {
        out.push(Diagnostic::warning(
            "dns-loop",
            policy.dns.span.clone().unwrap_or(0..0),
            format!(
                "upstream {up} is on this host: if that resolver forwards to the internet, its queries are \
                 redirected back to leash and loop; give leash the real upstreams (or use bypass = \"deny\")"
            ),
        ));
    }

    // A rate counts the packets that reach the rule; with established traffic accepted first
    // those are the first packets of new connections, otherwise every packet.
    if !d.allow_established
        && let Some(r) = policy.rules.iter().find(|r| r.limits.rate.is_some())
    {
        out.push(Diagnostic::warning(
            "rate-counts-packets",
            r.limits.span.clone().unwrap_or(r.name_span.clone()),
            format!(
                "rule `{}` has a rate, but allow_established is off: the rate then counts every packet of its \
                 connections, not new connections",
                r.name
            ),
        ));
    }

    // An expectation without `at` is checked at the time the test runs; when its verdict differs
    // across the windows' edges it then depends on the hour the test runs.
    if policy.rules.iter().any(|r| r.cond.when.is_some()) {
        let edges = window_edges(policy);
        for x in policy.expects.iter().filter(|x| x.at.is_none()) {
            let mut c = x.connection();
            let verdicts: std::collections::HashSet<Action> = edges
                .iter()
                .map(|t| {
                    c.at = Some(*t);
                    crate::explain::explain(policy, &c).verdict
                })
                .collect();
            if verdicts.len() > 1 {
                out.push(Diagnostic::warning(
                    "expect-without-time",
                    x.span.clone(),
                    "this expectation's verdict depends on the time of day (time windows decide it) but it has no `at`",
                ));
            }
        }
    }

    // Forwarded packets have no local socket: rules about users, groups or processes pass them
    // by. Said once, at the first such rule; a `[forward]` section says the author has thought
    // about forwarded traffic (and `leash check`'s note names these rules anyway).
    let socket_rules: Vec<&Rule> =
        policy.rules.iter().filter(|r| r.needs_socket() && r.matches_nothing().is_none()).collect();
    if policy.governs_forwarded()
        && policy.forward.span.is_none()
        && !(policy.workload_interfaces().is_empty() && policy.workload_sources().is_empty())
        && let Some(first) = socket_rules.first()
    {
        let span = first
            .cond
            .users
            .as_ref()
            .and_then(|u| u.first().map(|p| p.span.clone()))
            .or_else(|| first.cond.groups.as_ref().and_then(|g| g.first().map(|p| p.span.clone())))
            .or_else(|| first.cond.cgroups_span.clone())
            .or_else(|| first.limits.span.clone())
            .unwrap_or_else(|| first.name_span.clone());
        let names: Vec<String> = socket_rules.iter().map(|r| format!("`{}`", r.name)).collect();
        out.push(Diagnostic::warning(
            "not-for-forwarded",
            span,
            format!(
                "{} by user, group, service or cgroup (or limit per user): forwarded connections from containers \
                 and VMs have no local socket, so {} to them (they go on to the later rules and the default); add a \
                 [forward] section to say which forwarded traffic the policy governs",
                if names.len() == 1 { format!("rule {} matches", names[0]) } else { format!("rules {} match", names.join(", ")) },
                if names.len() == 1 { "it never applies" } else { "they never apply" },
            ),
        ));
    }

    if !d.allow_established {
        out.push(Diagnostic::warning(
            "established-off",
            d.allow_established_span.clone().unwrap_or(0..0),
            "allow_established is off: replies to inbound connections and every packet after the first \
             of an outbound connection need rules of their own",
        ));
    }

    out.sort_by_key(|d| (d.span.start, d.span.end));
    out
}

/// Local times just inside and just outside every window edge of the policy, in the reference
/// week of `time::parse_at`: the verdict of any connection can only change at these.
fn window_edges(policy: &Policy) -> Vec<jiff::civil::DateTime> {
    let mut seconds: Vec<i64> = vec![0];
    for w in policy.rules.iter().filter_map(|r| r.cond.when.as_ref()).flatten() {
        for (a, b) in w.week_intervals() {
            seconds.extend([a as i64, b as i64 - 1, b as i64]);
        }
    }
    seconds.sort_unstable();
    seconds.dedup();
    let sunday = jiff::civil::date(2026, 1, 4).at(0, 0, 0, 0);
    seconds
        .into_iter()
        .filter_map(|s| sunday.checked_add(jiff::Span::new().seconds(s.rem_euclid(crate::time::WEEK))).ok())
        .collect()
}

/// Why a rule can never match, if it cannot.
fn never_matches(rule: &Rule) -> Option<String> {
    let Conditions {
        protos: _, // through `effective_protos`
        ports: _,
        ports_span: _,
        to,
        to_span: _,
        domains,
        allow_private: _,
        sets,
        countries: _,
        country_ranges,
        // Users, groups and windows can only make a rule match nothing by being empty, which
        // `matches_nothing` says.
        users: _,
        groups: _,
        cgroups,
        cgroups_span: _,
        when: _,
        when_span: _,
        // Like users and groups: only an empty list (`matches_nothing`) matches nothing.
        from: _,
        from_span: _,
    } = &rule.cond;
    // Limits never make a rule match nothing (they are at least 1).
    let Limits { rate: _, max_connections: _, per: _, span: _ } = &rule.limits;
    // Services that do not exist were already warned about when the policy was loaded, each at
    // its own position (`missing-cgroup`); saying it again for the rule adds nothing.
    let cgroups_missing = cgroups.as_ref().is_some_and(|c| !c.is_empty() && c.iter().all(|c| c.id.is_none()));
    if let Some(why) = rule.matches_nothing().filter(|_| !cgroups_missing) {
        return Some(why);
    }
    // ICMP only exists over IPv4 and ICMPv6 only over IPv6: the rule needs at least one
    // protocol that can reach at least one of its destinations.
    // A domain may resolve to either family, so only rules without domains are checked (and a
    // named set may get either family by `leash set update`; countries are checked by their ranges).
    if let (Some(protos), Some(to), true) = (rule.effective_protos(), to, domains.is_empty() && sets.is_empty()) {
        let c = country_ranges;
        let reachable = protos.iter().any(|p| {
            to.iter().any(|n| match p {
                Proto::Icmp => matches!(n, IpNet::V4(_)),
                Proto::Icmpv6 => matches!(n, IpNet::V6(_)),
                Proto::Tcp | Proto::Udp => true,
            }) || match p {
                Proto::Icmp => !c.v4.is_empty(),
                Proto::Icmpv6 => !c.v6.is_empty(),
                Proto::Tcp | Proto::Udp => !c.is_empty(),
            }
        });
        if !reachable {
            let names: Vec<&str> = protos.iter().map(|p| p.as_str()).collect();
            return Some(format!(
                "{} cannot reach any of its destinations (wrong address family)",
                names.join(" and ")
            ));
        }
    }
    None
}

/// A rule's conditions as sorted sets, computed once per rule so that comparing every pair of
/// rules stays cheap even with lists of 100,000 addresses. `None` means "anything".
struct Sets {
    protos: Option<Vec<Proto>>,
    ports: Option<Ranges>,
    /// IPv4 and IPv6 ranges.
    to: Option<(Ranges, Ranges)>,
    /// Domain patterns of `to`, and whether the rule admits private answers for them (allow
    /// rules without `allow_private` keep those out, deny rules take everything).
    domains: Vec<DomainPattern>,
    admits_private: bool,
    users: Option<Vec<u32>>,
    groups: Option<Vec<u32>>,
    /// Cgroup paths (only those that existed at load: the others match nothing).
    cgroups: Option<Vec<CgroupMatch>>,
    /// Time windows, compared as written.
    when: Option<Vec<(u8, u16, u16)>>,
    /// Sources of forwarded connections.
    from: Option<FromMatch>,
    /// The rule needs a local socket (user, group, cgroup or a per-user limit), so it never
    /// matches forwarded connections.
    needs_socket: bool,
}

impl Sets {
    fn of(policy: &Policy, rule: &Rule) -> Sets {
        let Conditions {
            protos: _, // through `effective_protos`
            ports,
            ports_span: _,
            to,
            to_span: _,
            domains,
            allow_private,
            sets,
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
        // A limited rule still decides every connection it matches (over the limit it denies),
        // so the limits do not change what it shadows.
        let Limits { rate: _, max_connections: _, per: _, span: _ } = &rule.limits;
        let ids = |l: &Option<Vec<Principal>>| {
            l.as_ref().map(|l| {
                let mut v: Vec<u32> = l.iter().map(|p| p.id).collect();
                v.sort_unstable();
                v.dedup();
                v
            })
        };
        Sets {
            protos: rule.effective_protos(),
            ports: ports.as_ref().map(|p| merge(p.iter().map(|r| (r.first as u128, r.last as u128)).collect())),
            to: to.as_ref().map(|nets| {
                let (mut v4, mut v6) = net_ranges(nets);
                // Named sets and countries are destinations too.
                let lists = sets
                    .iter()
                    .filter_map(|r| policy.sets.get(r.index).map(|s| &*s.ranges))
                    .chain(std::iter::once(&**country_ranges));
                for l in lists {
                    v4.extend(l.v4.iter().map(|&(a, b)| (a as u128, b as u128)));
                    v6.extend(l.v6.iter().copied());
                }
                (merge(v4), merge(v6))
            }),
            cgroups: cgroups.as_ref().map(|c| c.iter().filter(|c| c.id.is_some()).cloned().collect()),
            when: when.as_ref().map(|w| {
                let mut v: Vec<(u8, u16, u16)> = w.iter().map(|w| (w.days, w.start, w.end)).collect();
                v.sort_unstable();
                v
            }),
            users: ids(users),
            groups: ids(groups),
            from: from.clone(),
            domains: domains.clone(),
            admits_private: rule.action == Action::Deny || *allow_private,
            needs_socket: rule.needs_socket(),
        }
    }

    /// Whether every connection `later` matches is also matched by `self`, comparing each
    /// condition on its own (sound: if each condition is covered, the whole rule is). Cheap
    /// conditions are compared first.
    fn covers(&self, later: &Sets) -> bool {
        /// `None` (anything) covers everything and is covered only by `None`.
        fn dim<T>(e: &Option<T>, l: &Option<T>, sub: impl Fn(&T, &T) -> bool) -> bool {
            match (e, l) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(e), Some(l)) => sub(e, l),
            }
        }
        let ids = |e: &Vec<u32>, l: &Vec<u32>| l.iter().all(|id| e.binary_search(id).is_ok());
        // A rule without ports also matches connections without a port (and port 0), which no
        // port list covers: `dim` gives exactly that.
        dim(&self.protos, &later.protos, |e, l| l.iter().all(|p| e.contains(p)))
            && dim(&self.users, &later.users, ids)
            && dim(&self.groups, &later.groups, ids)
            && dim(&self.ports, &later.ports, |e, l| l.iter().all(|r| range_covered(*r, e)))
            && dim(&self.to, &later.to, |(e4, e6), (l4, l6)| {
                l4.iter().all(|r| range_covered(*r, e4)) && l6.iter().all(|r| range_covered(*r, e6))
            })
            && (self.to.is_none() || self.covers_domains(later))
            && dim(&self.cgroups, &later.cgroups, |e, l| l.iter().all(|c| e.iter().any(|x| x.covers(&c.path))))
            // Windows are compared as written: equal lists cover each other, anything else is
            // not claimed (sound, if not complete).
            && dim(&self.when, &later.when, |e, l| e == l)
            // Sources: every network of the later rule inside one of ours, every interface
            // pattern equal to one of ours or inside one of our wildcards.
            && dim(&self.from, &later.from, |e, l| {
                l.nets.iter().all(|n| e.nets.iter().any(|m| m.contains(n)))
                    && l.interfaces.iter().all(|p| {
                        e.interfaces.iter().any(|q| if q.wildcard { p.name.starts_with(q.name.as_str()) } else { !p.wildcard && p.name == q.name })
                    })
            })
            // A rule with a user, group or cgroup never matches forwarded traffic, which a
            // later rule without them may: it covers only later rules that match the host's
            // own connections alone (those with a socket condition themselves, or with `from`
            // covered above, which is impossible next to them).
            && (!self.needs_socket || later.needs_socket)
    }

    /// Whether every name `later` lists is covered by one of ours, for at least the addresses
    /// `later` admits.
    fn covers_domains(&self, later: &Sets) -> bool {
        later.domains.is_empty()
            || ((self.admits_private || !later.admits_private)
                && later.domains.iter().all(|l| {
                    self.domains.iter().any(|e| {
                        if l.wildcard {
                            e.wildcard && (l.name == e.name || e.matches(&l.name))
                        } else {
                            e.matches(&l.name)
                        }
                    })
                }))
    }
}

/// Whether one inclusive range lies within merged ranges. It must lie within a single one, since
/// merged ranges have gaps between them: the last range starting at or before `a`.
fn range_covered((a, b): (u128, u128), merged: &[(u128, u128)]) -> bool {
    let i = merged.partition_point(|&(x, _)| x <= a);
    i > 0 && b <= merged[i - 1].1
}

/// Whether an allow rule lets some DNS (udp or tcp to port 53) through.
fn allows_dns(rule: &Rule) -> bool {
    let Conditions {
        protos: _, // through `effective_protos`
        ports,
        ports_span: _,
        // Some DNS is enough: to some resolver, for some process, at some time.
        to: _,
        to_span: _,
        domains: _,
        allow_private: _,
        sets: _,
        countries: _,
        country_ranges: _,
        users: _,
        groups: _,
        cgroups: _,
        cgroups_span: _,
        when: _,
        when_span: _,
        from: _,
        from_span: _,
    } = &rule.cond;
    let Limits { rate: _, max_connections: _, per: _, span: _ } = &rule.limits;
    rule.action == Action::Allow
        && never_matches(rule).is_none()
        && rule.effective_protos().is_none_or(|p| p.contains(&Proto::Udp) || p.contains(&Proto::Tcp))
        && ports.as_ref().is_none_or(|p| p.iter().any(|r| r.contains(53)))
}

/// What makes an allow rule broad, if it is: every port or every destination.
fn broad_because(rule: &Rule) -> Option<&'static str> {
    let Conditions {
        protos: _, // through `effective_protos`
        ports,
        ports_span: _,
        // Domains, sets and countries come with a `to` (or `to_country`), which makes it `Some`.
        to,
        to_span: _,
        domains: _,
        allow_private: _,
        sets: _,
        countries: _,
        country_ranges: _,
        // Broad is about where to: a rule for one user to every port anywhere is still broad.
        users: _,
        groups: _,
        cgroups: _,
        cgroups_span: _,
        when: _,
        when_span: _,
        // Broad is about where to, whoever sends.
        from: _,
        from_span: _,
    } = &rule.cond;
    let Limits { rate: _, max_connections: _, per: _, span: _ } = &rule.limits;
    let all_ports = ports.is_none() && rule.effective_protos().is_none_or(|p| p.iter().any(|p| p.has_ports()));
    let anywhere = to.as_ref().is_none_or(|to| to.iter().any(|n| n.prefix_len() == 0));
    match (all_ports, anywhere) {
        (true, true) => Some("every port to any destination"),
        (true, false) => Some("every port"),
        (false, true) => Some("any destination"),
        (false, false) => None,
    }
}
