//! One `[[rule]]`: its keys, the conditions and limits they make, and the checks between keys
//! (ports need a protocol that has ports, limits need an allow rule).

use super::values::{ACTIONS, Entry, Kind, Parser, looks_like_address, one_of, parse_network, parse_rate, suggest, value_type};
use crate::model::*;
use ipnet::IpNet;
use std::collections::HashMap;
use toml_edit::{TableLike, Value};

/// Keys of a `[[rule]]`.
const RULE_KEYS: &[&str] = &[
    "name",
    "action",
    "proto",
    "ports",
    "to",
    "to_country",
    "allow_private",
    "user",
    "group",
    "service",
    "cgroup",
    "when",
    "from",
    "rate",
    "burst",
    "max_connections",
    "limit_per",
    "log",
    "purpose",
    "justification",
    "risk",
    "owner",
    "review",
];

impl<'a> Parser<'a> {
    /// One `[[rule]]`, or `None` when it has errors. `names` holds the names of the rules so far.
    pub(super) fn rule(&mut self, t: &dyn TableLike, span: Span, names: &mut HashMap<String, Span>) -> Option<Rule> {
        let errors_before = self.error_count();
        let mut name = None;
        let mut action = None;
        let mut protos: Option<Protos> = None;
        let mut burst: Option<(u32, Span)> = None;
        let mut limit_per_span: Option<Span> = None;
        let mut to_country_given = false;
        let mut rule = Rule {
            name: String::new(),
            span: span.clone(),
            name_span: span.clone(),
            action: Action::Deny,
            cond: Conditions::default(),
            limits: Limits::default(),
            log: false,
            purpose: None,
            justification: None,
            risk: None,
            owner: None,
            review: None,
            review_span: None,
        };
        let (entries, suggested) = self.entries(t, "[[rule]]", RULE_KEYS);
        for e in entries {
            match e.key {
                "name" => {
                    if let Some((n, nspan)) = self.string(&e) {
                        name = self.rule_name(n, nspan, names);
                    }
                }
                "action" => action = self.choice(&e, ACTIONS),
                "proto" => {
                    protos = self.rule_protos(&e);
                }
                "ports" => {
                    rule.cond.ports_span = Some(self.span(e.item, &e.key_span));
                    rule.cond.ports = self.ports(&e);
                }
                "to" => {
                    rule.cond.to_span = Some(self.span(e.item, &e.key_span));
                    if let Some((nets, domains, sets)) = self.destinations(&e) {
                        rule.cond.to = Some(nets);
                        rule.cond.domains = domains;
                        rule.cond.sets = sets;
                    }
                }
                "to_country" => {
                    to_country_given = true;
                    if let Some((codes, ranges)) = self.country_list(&e) {
                        rule.cond.countries = codes;
                        rule.cond.country_ranges = std::sync::Arc::new(ranges);
                    }
                }
                "service" | "cgroup" => {
                    let span = self.span(e.item, &e.key_span);
                    rule.cond.cgroups_span.get_or_insert(span);
                    if let Some(list) = self.cgroups(&e, e.key == "service") {
                        rule.cond.cgroups.get_or_insert_with(Vec::new).extend(list);
                    }
                }
                "when" => {
                    rule.cond.when_span = Some(self.span(e.item, &e.key_span));
                    rule.cond.when = self.windows(&e);
                }
                "from" => {
                    rule.cond.from_span = Some(self.span(e.item, &e.key_span));
                    rule.cond.from = self.sources(&e);
                }
                "rate" => {
                    rule.limits.span.get_or_insert(self.span(e.item, &e.key_span));
                    if let Some((s, span)) = self.string(&e) {
                        match parse_rate(s) {
                            Ok((count, per_seconds)) => {
                                let burst = rule.limits.rate.map_or(count, |r| r.burst);
                                rule.limits.rate = Some(Rate { count, per_seconds, burst });
                            }
                            Err(m) => self.error("bad-rate", span, m),
                        }
                    }
                }
                "burst" => {
                    burst = self.integer(&e, 1, 1_000_000).map(|n| (n as u32, self.span(e.item, &e.key_span)));
                }
                "max_connections" => {
                    rule.limits.span.get_or_insert(self.span(e.item, &e.key_span));
                    rule.limits.max_connections = self.integer(&e, 1, 1_000_000).map(|n| n as u32);
                }
                "limit_per" => {
                    limit_per_span = Some(self.span(e.item, &e.key_span));
                    rule.limits.per = self
                        .choice(
                            &e,
                            &[("rule", LimitPer::Rule), ("destination", LimitPer::Destination), ("user", LimitPer::User)],
                        )
                        .unwrap_or_default();
                }
                "allow_private" => rule.cond.allow_private = self.boolean(&e).unwrap_or(false),
                "user" => rule.cond.users = self.principals(&e, Kind::User),
                "group" => rule.cond.groups = self.principals(&e, Kind::Group),
                "log" => rule.log = self.boolean(&e).unwrap_or(false),
                "purpose" => rule.purpose = self.string(&e).map(|(s, _)| s.to_string()),
                "justification" => rule.justification = self.string(&e).map(|(s, _)| s.to_string()),
                "owner" => rule.owner = self.string(&e).map(|(s, _)| s.to_string()),
                "risk" => {
                    rule.risk = self.choice(&e, &[("low", Risk::Low), ("medium", Risk::Medium), ("high", Risk::High)])
                }
                "review" => {
                    rule.review_span = Some(self.span(e.item, &e.key_span));
                    rule.review = self.date(&e);
                }
                _ => unreachable!("entries() only returns allowed keys"),
            }
        }
        self.require(t, "name", &suggested, &span, "rule has no `name`");
        self.require(t, "action", &suggested, &span, "rule has no `action` (allow or deny)");
        // Ports only exist for TCP and UDP; naming ICMP next to ports is a contradiction the
        // operator has to resolve, not something to silently narrow.
        if let (Some(protos), Some(ports_span)) = (&protos, &rule.cond.ports_span) {
            for (p, pspan) in &protos.list {
                if !p.has_ports() {
                    self.error(
                        "ports-without-ports-proto",
                        pspan.clone(),
                        format!(
                            "proto {} has no ports, but the rule has `ports` (on line {})",
                            p.as_str(),
                            self.line(ports_span)
                        ),
                    );
                }
            }
        }
        self.check_limits(&mut rule.limits, t, action, burst, limit_per_span.clone());
        self.check_from(&rule, limit_per_span);
        // `to_country` alone still limits the destination, even an empty one (which matches
        // nothing, as `to = []` does): the rule no longer means "anywhere".
        if to_country_given && rule.cond.to.is_none() {
            rule.cond.to = Some(Vec::new());
        }
        if self.error_count() > errors_before {
            return None;
        }
        let (name, name_span) = name?;
        rule.name = name;
        rule.name_span = name_span;
        rule.action = action?;
        // `any` anywhere in the list means every protocol.
        rule.cond.protos = protos.filter(|p| !p.any).map(|p| p.list.into_iter().map(|(p, _)| p).collect());
        Some(rule)
    }

    fn rule_name(&mut self, n: &str, span: Span, names: &mut HashMap<String, Span>) -> Option<(String, Span)> {
        let valid = (1..=32).contains(&n.len())
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            self.error(
                "bad-value",
                span,
                format!("invalid rule name `{n}`; use 1 to 32 characters from a-z, 0-9, `_` and `-`"),
            );
            return None;
        }
        if let Some(first) = names.get(n) {
            let line = self.line(first);
            self.error("duplicate-name", span, format!("duplicate rule name `{n}` (first used on line {line})"));
            return None;
        }
        names.insert(n.to_string(), span.clone());
        Some((n.to_string(), span))
    }

    /// `proto`: one name or a list of them. Duplicates are dropped.
    fn rule_protos(&mut self, e: &Entry) -> Option<Protos> {
        let mut any = false;
        let mut out: Vec<(Proto, Span)> = Vec::new();
        let mut ok = true;
        for v in self.list(e, "a protocol or a list of protocols")? {
            let span = self.vspan(v, &e.key_span);
            match v.as_str() {
                Some("any") => any = true,
                Some(s) => match Proto::parse(s) {
                    Some(p) => {
                        if !out.iter().any(|(q, _)| *q == p) {
                            out.push((p, span));
                        }
                    }
                    None => {
                        ok = false;
                        self.error(
                            "bad-value",
                            span,
                            format!(
                                "invalid proto `{s}`; expected {}",
                                one_of(&["tcp", "udp", "icmp", "icmpv6", "any"])
                            ),
                        );
                    }
                },
                None => {
                    ok = false;
                    self.error(
                        "wrong-type",
                        span,
                        format!("expected a protocol name (a string), found {}", value_type(v)),
                    );
                }
            }
        }
        if !ok {
            return None;
        }
        Some(Protos { any, list: out })
    }

    /// `to`: addresses, networks and domain names, sorted into networks and domain patterns.
    fn destinations(&mut self, e: &Entry) -> Option<(Vec<IpNet>, Vec<DomainPattern>, Vec<SetRef>)> {
        let mut out = Vec::new();
        let mut domains = Vec::new();
        let mut sets = Vec::new();
        let mut ok = true;
        for v in self.list(e, "a list of addresses, networks or domain names")? {
            let span = self.vspan(v, &e.key_span);
            let Some(s) = v.as_str() else {
                ok = false;
                self.error(
                    "wrong-type",
                    span,
                    format!("expected an address, CIDR or domain name (a string), found {}", value_type(v)),
                );
                continue;
            };
            if let Some(set) = s.strip_prefix("set:") {
                match self.sets.iter().position(|x| x.name == set) {
                    Some(index) => sets.push(SetRef { index, span }),
                    None if self.failed_sets.iter().any(|f| f == set) => ok = false,
                    None => {
                        ok = false;
                        let names: Vec<&str> = self.sets.iter().map(|x| x.name.as_str()).collect();
                        let hint = match suggest(set, &names) {
                            Some(n) => format!("; did you mean `set:{n}`?"),
                            None if names.is_empty() => "; define it with [[set]] name = ... file = ...".to_string(),
                            None => format!("; the policy defines {}", one_of(&names)),
                        };
                        self.error("unknown-set", span, format!("no [[set]] named `{set}`{hint}"));
                    }
                }
                continue;
            }
            match parse_network(s) {
                Ok(n) => out.push(n),
                Err((code, m)) if looks_like_address(s) => {
                    ok = false;
                    self.error(code, span, m);
                }
                Err(_) => match crate::dns::parse_domain(s) {
                    Ok((name, wildcard)) => domains.push(DomainPattern { name, wildcard, span }),
                    Err(m) => {
                        ok = false;
                        self.error("bad-domain", span, m);
                    }
                },
            }
        }
        ok.then_some((out, domains, sets))
    }

    /// `from`: source networks and input interfaces of forwarded connections.
    fn sources(&mut self, e: &Entry) -> Option<FromMatch> {
        let mut out = FromMatch::default();
        let mut ok = true;
        for v in self.list(e, "a list of networks or interface names")? {
            let span = self.vspan(v, &e.key_span);
            let Some(s) = v.as_str() else {
                ok = false;
                self.error(
                    "wrong-type",
                    span,
                    format!("expected an address, CIDR or interface name (a string), found {}", value_type(v)),
                );
                continue;
            };
            match parse_network(s) {
                Ok(n) => out.nets.push(n),
                Err((code, m)) if looks_like_address(s) => {
                    ok = false;
                    self.error(code, span, m);
                }
                Err(_) => match IfacePattern::parse(s) {
                    Ok(p) => out.interfaces.push(p),
                    Err(m) => {
                        ok = false;
                        self.error("bad-from", span, format!("{m}, or an address or CIDR"));
                    }
                },
            }
        }
        ok.then_some(out)
    }

    /// A rule with `from` matches forwarded packets only, which have no local socket: a user,
    /// group, cgroup or per-user limit could never be matched next to it.
    fn check_from(&mut self, rule: &Rule, limit_per_span: Option<Span>) {
        let Some(from_span) = &rule.cond.from_span else { return };
        let line = self.line(from_span);
        let socket_keys: [(bool, &str, Option<Span>); 4] = [
            (rule.cond.users.is_some(), "user", None),
            (rule.cond.groups.is_some(), "group", None),
            (rule.cond.cgroups_span.is_some(), "service`/`cgroup", rule.cond.cgroups_span.clone()),
            (rule.limits.per == LimitPer::User, "limit_per = \"user\"", limit_per_span),
        ];
        for (on, key, span) in socket_keys {
            if on {
                let span = span
                    .or_else(|| rule.cond.users.as_ref().and_then(|u| u.first()).map(|p| p.span.clone()).filter(|_| key == "user"))
                    .or_else(|| rule.cond.groups.as_ref().and_then(|g| g.first()).map(|p| p.span.clone()).filter(|_| key == "group"))
                    .unwrap_or_else(|| from_span.clone());
                self.error(
                    "from-with-socket",
                    span,
                    format!(
                        "`{key}` cannot go with `from` (line {line}): `from` matches forwarded packets, which have no \
                         local socket, so no user, group or cgroup"
                    ),
                );
            }
        }
    }

    /// `to_country`: upper-case two-letter codes, looked up in the `[countries]` database.
    fn country_list(&mut self, e: &Entry) -> Option<(Vec<(String, Span)>, crate::ranges::AddrRanges)> {
        let mut codes = Vec::new();
        let mut ok = true;
        for v in self.list(e, "a list of country codes")? {
            let span = self.vspan(v, &e.key_span);
            match v.as_str() {
                Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    codes.push((c.to_ascii_uppercase(), span))
                }
                Some(c) => {
                    ok = false;
                    self.error("bad-country", span, format!("invalid country code `{c}`; expected ISO 3166-1 alpha-2, e.g. \"NL\""));
                }
                None => {
                    ok = false;
                    self.error("wrong-type", span, format!("expected a country code (a string), found {}", value_type(v)));
                }
            }
        }
        if !ok {
            return None;
        }
        let key_span = e.key_span.clone();
        if self.countries.is_none() {
            self.error("no-country-db", key_span, "`to_country` needs a country database: add `[countries]` with `database = \"FILE\"`");
            return None;
        }
        // A database that failed to load has already been reported.
        let db = self.country_db.as_ref()?;
        let refs: Vec<&str> = codes.iter().map(|c| c.0.as_str()).collect();
        let (ranges, present) = (db.ranges(&refs), db.codes());
        for (c, span) in &codes {
            if !present.iter().any(|p| p == c) {
                self.warning("unknown-country", span.clone(), format!("the country database has no networks for `{c}`"));
            }
        }
        Some((codes, ranges))
    }

    /// `service` (systemd units, under `system.slice`) or `cgroup` (cgroup v2 paths).
    fn cgroups(&mut self, e: &Entry, service: bool) -> Option<Vec<CgroupMatch>> {
        let items: Vec<&Value> = match e.item.as_value() {
            Some(v) if v.is_str() => vec![v],
            _ => self.list(e, if service { "a service name or a list of them" } else { "a cgroup path or a list of them" })?,
        };
        let mut out = Vec::new();
        let mut ok = true;
        for v in items {
            let span = self.vspan(v, &e.key_span);
            let Some(text) = v.as_str() else {
                ok = false;
                self.error("wrong-type", span, format!("expected a string, found {}", value_type(v)));
                continue;
            };
            let path = match if service { service_cgroup(text) } else { cgroup_path(text) } {
                Ok(p) => p,
                Err(m) => {
                    ok = false;
                    self.error(if service { "bad-service" } else { "bad-cgroup" }, span, m);
                    continue;
                }
            };
            out.push(self.cgroup_match(text, service, path, span));
        }
        ok.then_some(out)
    }

    fn principals(&mut self, e: &Entry, kind: Kind) -> Option<Vec<Principal>> {
        let mut out = Vec::new();
        let mut ok = true;
        for v in self.list(e, kind.expected_list())? {
            match self.principal(v, &e.key_span, kind) {
                Some(p) => out.push(p),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// `rate`, `burst`, `max_connections` and `limit_per` only make sense together and on allow
    /// rules: a limit on a deny rule would let traffic through below it.
    fn check_limits(
        &mut self,
        limits: &mut Limits,
        t: &dyn TableLike,
        action: Option<Action>,
        burst: Option<(u32, Span)>,
        per: Option<Span>,
    ) {
        if let Some((b, bspan)) = burst {
            match &mut limits.rate {
                Some(r) => r.burst = b,
                // A `rate` that did not parse was reported already.
                None if t.contains_key("rate") => {}
                None => self.error("burst-without-rate", bspan, "`burst` needs a `rate`"),
            }
        }
        if let Some(pspan) = per
            && !t.contains_key("rate")
            && !t.contains_key("max_connections")
        {
            self.error("limit-per-without-limit", pspan, "`limit_per` needs `rate` or `max_connections`");
        }
        if action == Some(Action::Deny)
            && let Some(span) = &limits.span
        {
            self.error(
                "limit-on-deny",
                span.clone(),
                "`rate` and `max_connections` limit what an allow rule lets through; a deny rule denies everything it matches",
            );
        }
    }
}


/// A parsed `proto` value: whether `any` was named, and the named protocols with their spans (kept
/// even next to `any`, for the ports check).
struct Protos {
    any: bool,
    list: Vec<(Proto, Span)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("prot", RULE_KEYS), Some("proto"));
        assert_eq!(suggest("port", RULE_KEYS), Some("ports"));
        assert_eq!(suggest("zzzzzz", RULE_KEYS), None);
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
