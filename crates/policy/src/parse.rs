//! Policy text -> validated [`Policy`], reporting every error with the span it is about.
//!
//! The document is walked by hand over `toml_edit`'s span-keeping tree instead of going through
//! serde: serde stops at the first problem and cannot point at an unknown key, while an operator
//! fixing a policy wants all errors at once, each at the exact key or value that is wrong.

use crate::resolver::Resolver;
use crate::diag::Diagnostic;
use crate::model::*;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use toml_edit::{Document, Item, TableLike, Value};

/// Keys of the top-level table.
const TOP_KEYS: &[&str] = &["version", "defaults", "dns", "set", "countries", "rule", "expect"];
/// Keys of a `[[set]]`.
const SET_KEYS: &[&str] = &["name", "file"];
/// Keys of `[countries]`.
const COUNTRIES_KEYS: &[&str] = &["database", "locations"];
/// Keys of `[dns]`.
const DNS_KEYS: &[&str] =
    &["listen", "upstreams", "min_ttl", "max_ttl", "grace", "timeout_ms", "bypass", "mark", "cache_size"];
/// Keys of `[defaults]`.
const DEFAULTS_KEYS: &[&str] =
    &["outbound", "deny_with", "log_denied", "log_group", "allow_loopback", "allow_established", "timezone"];
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
/// Keys of an `[[expect]]`.
const EXPECT_KEYS: &[&str] = &["to", "address", "proto", "user", "group", "service", "cgroup", "at", "verdict"];

/// Parses and validates a policy text.
///
/// Returns the policy when there is no error (warnings do not prevent it), and every diagnostic
/// found, sorted by position. A TOML syntax error is reported alone, since nothing after it can be
/// trusted; otherwise every key and value is checked and each problem is reported. User and group
/// names are resolved through `resolver`.
pub fn load(src: &str, resolver: &dyn Resolver) -> (Option<Policy>, Vec<Diagnostic>) {
    let doc = match Document::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            let span = clamp(src, e.span().unwrap_or(0..0));
            let message = e.message().trim().trim_end_matches('.').to_string();
            let message = if message.is_empty() { "invalid TOML".to_string() } else { message };
            return (None, vec![Diagnostic::error("syntax", span, format!("TOML syntax: {message}"))]);
        }
    };
    let mut p = Parser { src, resolver, diags: Vec::new(), sets: Vec::new(), failed_sets: Vec::new(), countries: None, country_db: None };
    let policy = p.policy(doc.as_table());
    let mut diags = p.diags;
    diags.sort_by_key(|d| (d.span.start, d.span.end));
    let ok = !diags.iter().any(|d| d.severity == crate::diag::Severity::Error);
    (policy.filter(|_| ok), diags)
}

/// Keeps a span inside the text whatever the parser reported, so rendering never goes out of bounds.
fn clamp(src: &str, span: Span) -> Span {
    let end = span.end.min(src.len());
    span.start.min(end)..end
}

struct Parser<'a> {
    src: &'a str,
    resolver: &'a dyn Resolver,
    diags: Vec<Diagnostic>,
    /// The `[[set]]`s, read before the rules so that rules can name them wherever they stand.
    sets: Vec<NamedSet>,
    /// Names of `[[set]]`s whose file did not load (already reported): rules naming them are not
    /// reported a second time.
    failed_sets: Vec<String>,
    countries: Option<CountryDbRef>,
    /// The loaded country database, when `[countries]` names one that loads.
    country_db: Option<crate::geo::CountryDb>,
}

/// One entry of a table: the key's name and span, and the item.
struct Entry<'d> {
    key: &'d str,
    key_span: Span,
    item: &'d Item,
}

impl<'a> Parser<'a> {
    fn error(&mut self, code: &'static str, span: Span, message: impl Into<String>) {
        let span = clamp(self.src, span);
        self.diags.push(Diagnostic::error(code, span, message));
    }

    /// Span of an item, falling back to `fallback` (usually its key) for the rare items that
    /// carry none.
    fn span(&self, item: &Item, fallback: &Span) -> Span {
        clamp(self.src, item.span().unwrap_or_else(|| fallback.clone()))
    }

    fn vspan(&self, value: &Value, fallback: &Span) -> Span {
        clamp(self.src, value.span().unwrap_or_else(|| fallback.clone()))
    }

    /// The entries of a table, reporting every key not in `allowed` (with a suggestion when it
    /// looks like a typo of an allowed one). Also returns the keys suggested, so that a missing
    /// required key that was merely misspelt is not reported a second time.
    fn entries<'d>(
        &mut self,
        table: &'d dyn TableLike,
        section: &str,
        allowed: &'static [&'static str],
    ) -> (Vec<Entry<'d>>, Vec<&'static str>) {
        let mut out = Vec::new();
        let mut suggested = Vec::new();
        for (key, item) in table.iter() {
            let key_span = table.get_key_value(key).and_then(|(k, _)| k.span()).or_else(|| item.span()).unwrap_or(0..0);
            let key_span = clamp(self.src, key_span);
            if allowed.contains(&key) {
                out.push(Entry { key, key_span, item });
            } else {
                let hint = match suggest(key, allowed) {
                    Some(s) => {
                        suggested.push(s);
                        format!("did you mean `{s}`?")
                    }
                    None => format!("expected {}", one_of(allowed)),
                };
                self.error("unknown-key", key_span, format!("unknown key `{key}` in {section}; {hint}"));
            }
        }
        (out, suggested)
    }

    /// Reports a missing required key, unless an unknown key was already reported as its typo.
    fn require(&mut self, t: &dyn TableLike, key: &str, suggested: &[&str], span: &Span, message: &str) {
        if !t.contains_key(key) && !suggested.contains(&key) {
            self.error("missing-key", span.clone(), message);
        }
    }

    fn policy(&mut self, root: &toml_edit::Table) -> Option<Policy> {
        let mut version = None;
        let mut defaults = Defaults::default();
        let mut rules = Vec::new();
        let mut expects = Vec::new();
        let mut dns = DnsConfig::default();
        let (entries, suggested) = self.entries(root, "the top level", TOP_KEYS);
        // Sets and the country database first: rules refer to them.
        for e in &entries {
            match e.key {
                "set" => {
                    for (t, span) in self.tables(e, "[[set]]") {
                        self.named_set(t, span);
                    }
                }
                "countries" => {
                    if let Some(t) = e.item.as_table_like() {
                        self.countries_section(t, self.span(e.item, &e.key_span));
                    } else {
                        let span = self.span(e.item, &e.key_span);
                        self.wrong_type(span, "a table ([countries])", e.item);
                    }
                }
                _ => {}
            }
        }
        for e in entries {
            match e.key {
                "set" | "countries" => {}
                "version" => version = self.version(&e),
                "defaults" => {
                    if let Some(t) = e.item.as_table_like() {
                        defaults = self.defaults(t);
                    } else {
                        let span = self.span(e.item, &e.key_span);
                        self.wrong_type(span, "a table ([defaults])", e.item);
                    }
                }
                "dns" => {
                    if let Some(t) = e.item.as_table_like() {
                        dns = self.dns(t, self.span(e.item, &e.key_span));
                    } else {
                        let span = self.span(e.item, &e.key_span);
                        self.wrong_type(span, "a table ([dns])", e.item);
                    }
                }
                "rule" => {
                    let mut names: HashMap<String, Span> = HashMap::new();
                    for (t, span) in self.tables(&e, "[[rule]]") {
                        if let Some(r) = self.rule(t, span, &mut names) {
                            rules.push(r);
                        }
                    }
                }
                "expect" => {
                    for (t, span) in self.tables(&e, "[[expect]]") {
                        if let Some(x) = self.expect(t, span) {
                            expects.push(x);
                        }
                    }
                }
                _ => unreachable!("entries() only returns allowed keys"),
            }
        }
        self.require(root, "version", &suggested, &(0..0), "missing `version = 1` (the policy language version)");
        self.check_dns(&dns, &rules);
        let sets = std::mem::take(&mut self.sets);
        let countries = self.countries.take();
        let mut policy = Policy { version: version?, defaults, rules, expects, dns, sets, countries };
        self.place_domain_expects(&mut policy);
        Some(policy)
    }

    /// Domain rules need somewhere to resolve; redirecting needs a loopback listener.
    fn check_dns(&mut self, dns: &DnsConfig, rules: &[Rule]) {
        let header = dns.span.clone().unwrap_or(0..0);
        if let Some(r) = rules.iter().find(|r| !r.cond.domains.is_empty())
            && dns.upstreams.is_empty()
        {
            let span = r.cond.domains[0].span.clone();
            self.error(
                "dns-no-upstream",
                span,
                "domain rules need the DNS forwarder: add `[dns]` with `upstreams = [\"ADDR\", ...]`",
            );
        }
        if dns.min_ttl > dns.max_ttl {
            self.error(
                "bad-value",
                header.clone(),
                format!("[dns] min_ttl ({}) is greater than max_ttl ({})", dns.min_ttl, dns.max_ttl),
            );
        }
        if dns.bypass == Bypass::Redirect
            && !dns.listen.is_empty()
            && dns.listen.iter().all(|a| !a.ip().is_loopback())
        {
            self.error(
                "bad-value",
                header,
                "[dns] bypass = \"redirect\" needs a `listen` address on loopback (127.0.0.1 or ::1); \
                 use bypass = \"deny\" for a forwarder on another address",
            );
        }
    }

    /// Gives every domain expectation without `address` the address it will use.
    fn place_domain_expects(&mut self, policy: &mut Policy) {
        let mut taken: Vec<IpAddr> = policy.expects.iter().map(|x| x.to).filter(|a| !a.is_unspecified()).collect();
        let mut by_name: HashMap<String, IpAddr> = HashMap::new();
        for i in 0..policy.expects.len() {
            let x = &policy.expects[i];
            let Some(name) = x.name.clone() else { continue };
            if !x.to.is_unspecified() {
                continue;
            }
            // Expectations on the same name share its address, as the forwarder would.
            if let Some(a) = by_name.get(&name).filter(|a| a.is_ipv6() == (x.proto == Proto::Icmpv6)) {
                policy.expects[i].to = *a;
                continue;
            }
            match crate::dns::synthetic_address(policy, x.proto == Proto::Icmpv6, &taken) {
                Some(a) => {
                    policy.expects[i].to = a;
                    taken.push(a);
                    by_name.insert(name, a);
                }
                None => {
                    let span = x.span.clone();
                    self.error(
                        "expect-address",
                        span,
                        "every documentation address is listed by some rule; give this expectation an `address`",
                    );
                }
            }
        }
    }

    fn dns(&mut self, t: &dyn TableLike, span: Span) -> DnsConfig {
        let mut d = DnsConfig { span: Some(span), ..Default::default() };
        for e in self.entries(t, "[dns]", DNS_KEYS).0 {
            match e.key {
                "listen" => {
                    if let Some(v) = self.socket_addrs(&e, None) {
                        d.listen = v;
                    }
                }
                "upstreams" => {
                    if let Some(v) = self.socket_addrs(&e, Some(DNS_PORT)) {
                        d.upstreams = v;
                    }
                }
                "min_ttl" => d.min_ttl = self.integer(&e, 0, u32::MAX as i64).map_or(d.min_ttl, |n| n as u32),
                "max_ttl" => d.max_ttl = self.integer(&e, 1, u32::MAX as i64).map_or(d.max_ttl, |n| n as u32),
                "grace" => d.grace = self.integer(&e, 0, 86_400).map_or(d.grace, |n| n as u32),
                "timeout_ms" => d.timeout_ms = self.integer(&e, 10, 60_000).map_or(d.timeout_ms, |n| n as u32),
                "mark" => d.mark = self.integer(&e, 1, u32::MAX as i64).map_or(d.mark, |n| n as u32),
                "cache_size" => d.cache_size = self.integer(&e, 0, 10_000_000).map_or(d.cache_size, |n| n as usize),
                "bypass" => {
                    if let Some(b) = self.choice(
                        &e,
                        &[("redirect", Bypass::Redirect), ("deny", Bypass::Deny), ("off", Bypass::Off)],
                    ) {
                        d.bypass = b;
                    }
                }
                _ => unreachable!("entries() only returns allowed keys"),
            }
        }
        d
    }

    /// An integer in `min..=max`.
    fn integer(&mut self, e: &Entry, min: i64, max: i64) -> Option<i64> {
        let v = self.value(e, "an integer")?;
        let span = self.vspan(v, &e.key_span);
        match v.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error("bad-value", span, format!("{} {n} is out of range {min} to {max}", e.key));
                None
            }
            None => {
                self.error("wrong-type", span, format!("expected an integer, found {}", value_type(v)));
                None
            }
        }
    }

    /// "ADDR:PORT" strings (`[v6]:PORT` for IPv6); with a default port, the port may be left out.
    fn socket_addrs(&mut self, e: &Entry, default_port: Option<u16>) -> Option<Vec<std::net::SocketAddr>> {
        let mut out = Vec::new();
        let mut ok = true;
        for v in self.list(e, "a list of \"ADDR:PORT\" strings")? {
            let span = self.vspan(v, &e.key_span);
            let Some(s) = v.as_str() else {
                ok = false;
                self.error("wrong-type", span, format!("expected an \"ADDR:PORT\" string, found {}", value_type(v)));
                continue;
            };
            match parse_destination(s) {
                Ok((addr, Some(port))) => out.push(std::net::SocketAddr::new(addr, port)),
                Ok((addr, None)) if default_port.is_some() => {
                    out.push(std::net::SocketAddr::new(addr, default_port.unwrap_or_default()))
                }
                Ok((_, None)) => {
                    ok = false;
                    self.error("bad-address", span, format!("`{s}` needs a port, e.g. \"127.0.0.1:53\""));
                }
                Err(m) => {
                    ok = false;
                    self.error("bad-address", span, m);
                }
            }
        }
        ok.then_some(out)
    }

    fn version(&mut self, e: &Entry) -> Option<u32> {
        let span = self.span(e.item, &e.key_span);
        match e.item.as_integer() {
            Some(1) => Some(1),
            Some(v) => {
                self.error("bad-version", span, format!("unsupported version {v}; this leash understands version 1"));
                None
            }
            None => {
                self.wrong_type(span, "the integer 1", e.item);
                None
            }
        }
    }

    /// The tables of an array of tables (`[[rule]]`), also accepting an inline array of inline
    /// tables (`rule = [{ ... }]`), which TOML considers the same data.
    fn tables<'d>(&mut self, e: &Entry<'d>, header: &str) -> Vec<(&'d dyn TableLike, Span)> {
        let mut out: Vec<(&'d dyn TableLike, Span)> = Vec::new();
        match e.item {
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    let span = clamp(self.src, t.span().unwrap_or_else(|| e.key_span.clone()));
                    out.push((t, span));
                }
            }
            Item::Value(Value::Array(a)) => {
                for v in a.iter() {
                    let span = self.vspan(v, &e.key_span);
                    match v.as_inline_table() {
                        Some(t) => out.push((t, span)),
                        None => self.error(
                            "wrong-type",
                            span,
                            format!("expected a table like {header}, found {}", value_type(v)),
                        ),
                    }
                }
            }
            other => {
                let span = self.span(other, &e.key_span);
                self.error(
                    "wrong-type",
                    span,
                    format!("`{}` must be an array of tables, written {header}; found {}", e.key, item_type(other)),
                );
            }
        }
        out
    }

    fn wrong_type(&mut self, span: Span, expected: &str, found: &Item) {
        self.error("wrong-type", span, format!("expected {expected}, found {}", item_type(found)));
    }

    /// The item as a plain value; tables where a value is expected are a type error.
    fn value<'d>(&mut self, e: &Entry<'d>, expected: &str) -> Option<&'d Value> {
        match e.item {
            Item::Value(v) => Some(v),
            other => {
                let span = self.span(other, &e.key_span);
                self.wrong_type(span, expected, other);
                None
            }
        }
    }

    fn string<'d>(&mut self, e: &Entry<'d>) -> Option<(&'d str, Span)> {
        let v = self.value(e, "a string")?;
        let span = self.vspan(v, &e.key_span);
        match v.as_str() {
            Some(s) => Some((s, span)),
            None => {
                self.error("wrong-type", span, format!("expected a string, found {}", value_type(v)));
                None
            }
        }
    }

    fn boolean(&mut self, e: &Entry) -> Option<bool> {
        let v = self.value(e, "a boolean (true or false)")?;
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                let span = self.vspan(v, &e.key_span);
                self.error("wrong-type", span, format!("expected a boolean (true or false), found {}", value_type(v)));
                None
            }
        }
    }

    /// A string that must be one of `choices`.
    fn choice<T: Copy>(&mut self, e: &Entry, choices: &[(&str, T)]) -> Option<T> {
        let (s, span) = self.string(e)?;
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == s) {
            return Some(*t);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        self.error("bad-value", span, format!("invalid {} `{s}`; expected {}", e.key, one_of(&names)));
        None
    }

    /// The elements of a list, or the value itself when a single value stands for a list of one.
    fn list<'d>(&mut self, e: &Entry<'d>, expected: &str) -> Option<Vec<&'d Value>> {
        let v = self.value(e, expected)?;
        Some(match v.as_array() {
            Some(a) => a.iter().collect(),
            None => vec![v],
        })
    }

    fn defaults(&mut self, t: &dyn TableLike) -> Defaults {
        let mut d = Defaults::default();
        for e in self.entries(t, "[defaults]", DEFAULTS_KEYS).0 {
            match e.key {
                "outbound" => {
                    if let Some(a) = self.choice(&e, ACTIONS) {
                        d.outbound = a;
                        d.outbound_span = Some(self.span(e.item, &e.key_span));
                    }
                }
                "deny_with" => {
                    if let Some(w) = self.choice(&e, &[("reject", DenyWith::Reject), ("drop", DenyWith::Drop)]) {
                        d.deny_with = w;
                    }
                }
                "log_denied" => d.log_denied = self.boolean(&e).unwrap_or(d.log_denied),
                "log_group" => {
                    if let Some(v) = self.value(&e, "an integer") {
                        let span = self.vspan(v, &e.key_span);
                        match v.as_integer() {
                            Some(n) => match u16::try_from(n) {
                                Ok(g) => d.log_group = g,
                                Err(_) => self.error(
                                    "bad-value",
                                    span,
                                    format!("log_group {n} is out of range; NFLOG groups are 0 to 65535"),
                                ),
                            },
                            None => {
                                self.error("wrong-type", span, format!("expected an integer, found {}", value_type(v)))
                            }
                        }
                    }
                }
                "allow_loopback" => d.allow_loopback = self.boolean(&e).unwrap_or(d.allow_loopback),
                "timezone" => {
                    if let Some((name, span)) = self.string(&e) {
                        match crate::time::zone(name) {
                            Ok(_) => {
                                d.timezone = Some(name.to_string());
                                d.timezone_span = Some(span);
                            }
                            Err(m) => self.error("bad-timezone", span, m),
                        }
                    }
                }
                "allow_established" => {
                    if let Some(b) = self.boolean(&e) {
                        d.allow_established = b;
                        d.allow_established_span = Some(self.span(e.item, &e.key_span));
                    }
                }
                _ => unreachable!("entries() only returns allowed keys"),
            }
        }
        d
    }

    fn rule(&mut self, t: &dyn TableLike, span: Span, names: &mut HashMap<String, Span>) -> Option<Rule> {
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
        self.check_limits(&mut rule.limits, t, action, burst, limit_per_span);
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

    /// One `[[set]]`: its name and file, read through the resolver and parsed.
    fn named_set(&mut self, t: &dyn TableLike, span: Span) {
        let mut name: Option<(String, Span)> = None;
        let mut file: Option<(String, Span)> = None;
        let (entries, suggested) = self.entries(t, "[[set]]", SET_KEYS);
        for e in entries {
            match e.key {
                "name" => {
                    if let Some((n, nspan)) = self.string(&e) {
                        if !valid_set_name(n) {
                            self.error(
                                "bad-set-name",
                                nspan,
                                format!("invalid set name `{n}`; use letters, digits, `-` and `_`, at most 48 characters"),
                            );
                            // Rules naming it are not reported a second time.
                            self.failed_sets.push(n.to_string());
                        } else if let Some(prev) = self.sets.iter().find(|s| s.name == n) {
                            let line = self.line(&prev.name_span);
                            self.error("duplicate-set", nspan, format!("set `{n}` is already defined on line {line}"));
                        } else {
                            name = Some((n.to_string(), nspan));
                        }
                    }
                }
                "file" => file = self.string(&e).map(|(f, fspan)| (f.to_string(), fspan)),
                _ => unreachable!("entries() only returns allowed keys"),
            }
        }
        self.require(t, "name", &suggested, &span, "set has no `name`");
        self.require(t, "file", &suggested, &span, "set has no `file` (one address or network a line)");
        let (Some((name, name_span)), Some((file, file_span))) = (name, file) else { return };
        // Until it loads, the set counts as failed (every early return below reported why).
        self.failed_sets.push(name.clone());
        let text = match self.resolver.read_file(&file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    self.error("set-file", file_span, format!("{file}: not a text file (invalid UTF-8)"));
                    return;
                }
            },
            Err(m) => {
                self.error("set-file", file_span, format!("cannot read set file: {m}"));
                return;
            }
        };
        match crate::setfile::parse_set_file(&text) {
            Ok(f) => {
                self.failed_sets.pop();
                self.sets.push(NamedSet {
                    name,
                    name_span,
                    file,
                    file_span,
                    ranges: std::sync::Arc::new(f.ranges),
                    entries: f.entries,
                })
            }
            Err(errors) => {
                for e in &errors {
                    self.error("set-file", file_span.clone(), format!("{file}:{}:{}: {}", e.line, e.col, e.message));
                }
            }
        }
    }

    /// `[countries]`: the database file (and GeoLite2's locations file).
    fn countries_section(&mut self, t: &dyn TableLike, span: Span) {
        let mut database: Option<(String, Span)> = None;
        let mut locations: Option<(String, Span)> = None;
        let (entries, suggested) = self.entries(t, "[countries]", COUNTRIES_KEYS);
        for e in entries {
            match e.key {
                "database" => database = self.string(&e).map(|(f, s)| (f.to_string(), s)),
                "locations" => locations = self.string(&e).map(|(f, s)| (f.to_string(), s)),
                _ => unreachable!("entries() only returns allowed keys"),
            }
        }
        self.require(t, "database", &suggested, &span, "[countries] has no `database` (an mmdb or CSV country database)");
        let Some((database, dspan)) = database else { return };
        self.countries =
            Some(CountryDbRef { database: database.clone(), span: dspan.clone(), locations: locations.as_ref().map(|l| l.0.clone()) });
        self.load_country_db(&database, dspan, locations);
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
            let prefix = self.resolver.cgroup2_prefix();
            let id = prefix.as_ref().and_then(|_| self.resolver.cgroup_id(&path));
            let what = if service { format!("service {text}") } else { format!("cgroup {text}") };
            match (&prefix, id) {
                (None, _) => self.warning(
                    "no-cgroup2",
                    span.clone(),
                    format!("cgroup v2 is not mounted here, so the rule for {what} matches no process"),
                ),
                (Some(_), None) => self.warning(
                    "missing-cgroup",
                    span.clone(),
                    format!("{what} has no cgroup yet (/{path}); the rule matches no process until the policy is applied again after it starts"),
                ),
                _ => {}
            }
            let nft_path = match prefix.as_deref() {
                Some(p) if !p.is_empty() => format!("{}/{path}", p.trim_matches('/')),
                _ => path.clone(),
            };
            out.push(CgroupMatch { written: text.to_string(), service, path, id, nft_path, span });
        }
        ok.then_some(out)
    }

    /// `when`: one window or a list of them.
    fn windows(&mut self, e: &Entry) -> Option<Vec<Window>> {
        let items: Vec<&Value> = match e.item.as_value() {
            Some(v) if v.is_str() => vec![v],
            _ => self.list(e, "a time window such as \"Mon-Fri 09:00-17:00\" or a list of them")?,
        };
        let mut out = Vec::new();
        let mut ok = true;
        for v in items {
            let span = self.vspan(v, &e.key_span);
            match v.as_str().map(crate::time::parse_window) {
                Some(Ok((days, start, end))) => out.push(Window { days, start, end, span }),
                Some(Err(m)) => {
                    ok = false;
                    self.error("bad-window", span, m);
                }
                None => {
                    ok = false;
                    self.error("wrong-type", span, format!("expected a time window (a string), found {}", value_type(v)));
                }
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

    /// Reads and parses the country database: a MaxMind DB, a DB-IP CSV, or a GeoLite2 blocks CSV
    /// with its locations file (named by `locations`, or found next to it by MaxMind's naming) and
    /// the other family's blocks file when it is there.
    fn load_country_db(&mut self, database: &str, span: Span, locations: Option<(String, Span)>) {
        use crate::geo::{CountryDb, CountryDbFormat, CsvFile, GeoError};
        let bytes = match self.resolver.read_file(database) {
            Ok(b) => b,
            Err(m) => return self.error("country-db", span, format!("cannot read the country database: {m}")),
        };
        // A path with the file name replaced, for the files MaxMind ships side by side.
        let beside = |name: &str| match database.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{name}"),
            None => name.to_string(),
        };
        let file_name = database.rsplit('/').next().unwrap_or(database);
        // Errors as `FILE:LINE:COL: message` for CSV lines, `FILE: message` otherwise.
        let describe = |e: GeoError, blocks: &[String], locations: &str| match e {
            GeoError::Csv { file, line, col, msg } => {
                let name = match file {
                    CsvFile::Blocks(i) => blocks.get(i).map_or(database, |n| n.as_str()),
                    CsvFile::Locations => locations,
                };
                format!("{name}:{line}:{col}: {msg}")
            }
            e => format!("{database}: {e}"),
        };
        let result: Result<CountryDb, String> = match CountryDb::detect(&bytes) {
            CountryDbFormat::Mmdb => CountryDb::from_mmdb(&bytes).map_err(|e| describe(e, &[], "")),
            CountryDbFormat::DbIpCsv => crate::geo::csv_text(&bytes, CsvFile::Blocks(0))
                .and_then(|t| CountryDb::from_csv(t, None))
                .map_err(|e| describe(e, &[], "")),
            CountryDbFormat::GeoLiteCsv => {
                let loc_name = match &locations {
                    Some((l, _)) => Some(l.clone()),
                    None => crate::geo::geolite_locations_name(file_name).map(|n| beside(&n)),
                };
                let Some(loc_name) = loc_name else {
                    return self.error(
                        "country-db",
                        span,
                        format!("{database} is a GeoLite2 blocks file: name its locations file with `locations = \"FILE\"`"),
                    );
                };
                let loc = match self.resolver.read_file(&loc_name) {
                    Ok(b) => b,
                    Err(m) => {
                        let lspan = locations.as_ref().map_or(span.clone(), |l| l.1.clone());
                        return self.error("country-db", lspan, format!("cannot read the GeoLite2 locations file: {m}"));
                    }
                };
                // The other family's blocks file is optional: a database may hold one family.
                let sibling = crate::geo::geolite_sibling_blocks_name(file_name)
                    .map(|n| beside(&n))
                    .and_then(|n| self.resolver.read_file(&n).ok().map(|b| (n, b)));
                let mut names = vec![database.to_string()];
                names.extend(sibling.as_ref().map(|s| s.0.clone()));
                let texts: Result<Vec<&str>, GeoError> = std::iter::once(&bytes)
                    .chain(sibling.as_ref().map(|s| &s.1))
                    .enumerate()
                    .map(|(i, b)| crate::geo::csv_text(b, CsvFile::Blocks(i)))
                    .collect();
                match (texts, crate::geo::csv_text(&loc, CsvFile::Locations)) {
                    (Ok(t), Ok(l)) => CountryDb::from_geolite_csv(&t, l),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
                .map_err(|e| describe(e, &names, &loc_name))
            }
        };
        match result {
            Ok(db) => self.country_db = Some(db),
            Err(m) => self.error("country-db", span, m),
        }
    }

    fn warning(&mut self, code: &'static str, span: Span, message: impl Into<String>) {
        self.diags.push(Diagnostic::warning(code, span, message));
    }

    fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.severity == crate::diag::Severity::Error).count()
    }

    fn line(&self, span: &Span) -> usize {
        crate::diag::line_col(self.src, span.start).0
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

    fn ports(&mut self, e: &Entry) -> Option<Vec<PortRange>> {
        let mut out = Vec::new();
        let mut ok = true;
        for v in self.list(e, "a list of ports")? {
            let span = self.vspan(v, &e.key_span);
            let r = match v {
                Value::Integer(n) => port_number(*n.value()).map(PortRange::single),
                Value::String(s) => parse_port_range(s.value()),
                other => Err(format!("expected a port number or a \"FROM-TO\" range, found {}", value_type(other))),
            };
            match r {
                Ok(r) => out.push(r),
                Err(m) => {
                    ok = false;
                    let code =
                        if matches!(v, Value::Integer(_) | Value::String(_)) { "bad-port" } else { "wrong-type" };
                    self.error(code, span, m);
                }
            }
        }
        ok.then_some(out)
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

    /// A user or group: a name resolved through the resolver, or a numeric id.
    fn principal(&mut self, v: &Value, fallback: &Span, kind: Kind) -> Option<Principal> {
        let span = self.vspan(v, fallback);
        match v {
            Value::Integer(n) => match u32::try_from(*n.value()) {
                Ok(id) => Some(Principal { name: None, id, span }),
                Err(_) => {
                    self.error(
                        "bad-value",
                        span,
                        format!("{} id {} is out of range 0 to {}", kind.word(), n.value(), u32::MAX),
                    );
                    None
                }
            },
            Value::String(s) => {
                let name = s.value();
                let id = match kind {
                    Kind::User => self.resolver.user(name),
                    Kind::Group => self.resolver.group(name),
                };
                match id {
                    Some(id) => Some(Principal { name: Some(name.to_string()), id, span }),
                    None => {
                        let hint = if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                            " (write numeric ids without quotes)"
                        } else {
                            ""
                        };
                        self.error(kind.unknown_code(), span, format!("unknown {} `{name}`{hint}", kind.word()));
                        None
                    }
                }
            }
            other => {
                self.error(
                    "wrong-type",
                    span,
                    format!("expected a {} name or numeric id, found {}", kind.word(), value_type(other)),
                );
                None
            }
        }
    }

    fn date(&mut self, e: &Entry) -> Option<Date> {
        let v = self.value(e, "a date like 2027-06-01")?;
        let span = self.vspan(v, &e.key_span);
        match v {
            Value::Datetime(dt) => {
                let dt = dt.value();
                match (dt.date, dt.time, dt.offset) {
                    (Some(d), None, None) => Some(Date { year: d.year as i16, month: d.month as i8, day: d.day as i8 }),
                    _ => {
                        self.error("bad-value", span, "expected a date like 2027-06-01 without a time");
                        None
                    }
                }
            }
            Value::String(s) => {
                self.error(
                    "wrong-type",
                    span,
                    format!(
                        "expected a TOML date like 2027-06-01, found a string; write it without quotes: {}",
                        s.value()
                    ),
                );
                None
            }
            other => {
                self.error("wrong-type", span, format!("expected a date like 2027-06-01, found {}", value_type(other)));
                None
            }
        }
    }

    fn expect(&mut self, t: &dyn TableLike, span: Span) -> Option<Expect> {
        let errors_before = self.error_count();
        let mut to: Option<(IpAddr, Option<u16>, Span)> = None;
        let mut name: Option<String> = None;
        let mut address: Option<(IpAddr, Span)> = None;
        let mut proto = Some((Proto::Tcp, None));
        let mut user: Option<Principal> = None;
        let mut group: Option<Principal> = None;
        let mut verdict = None;
        let mut cgroup: Option<String> = None;
        let mut at: Option<jiff::civil::DateTime> = None;
        let (entries, suggested) = self.entries(t, "[[expect]]", EXPECT_KEYS);
        for e in entries {
            match e.key {
                "to" => {
                    if let Some((s, sspan)) = self.string(&e) {
                        match parse_destination(s) {
                            Ok((addr, port)) => to = Some((addr, port, sspan)),
                            Err(m) => match parse_name_destination(s) {
                                // The address is filled in from `address`, or chosen once all
                                // rules are known (see `place_domain_expects`).
                                Some(Ok((n, port))) => {
                                    name = Some(n);
                                    to = Some((IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port, sspan));
                                }
                                Some(Err(dm)) => self.error("bad-domain", sspan, dm),
                                None => self.error("bad-address", sspan, m),
                            },
                        }
                    }
                }
                "address" => {
                    if let Some((s, aspan)) = self.string(&e) {
                        match s.parse::<IpAddr>() {
                            Ok(a) => address = Some((a, aspan)),
                            Err(_) => self.error(
                                "bad-address",
                                aspan,
                                format!("invalid address `{s}`; expected the IP address the name resolves to"),
                            ),
                        }
                    }
                }
                "proto" => {
                    proto = None;
                    if let Some((s, pspan)) = self.string(&e) {
                        match Proto::parse(s) {
                            Some(p) => proto = Some((p, Some(pspan))),
                            None => self.error(
                                "bad-value",
                                pspan,
                                format!(
                                    "invalid proto `{s}`; an expectation is one connection: expected {}",
                                    one_of(&["tcp", "udp", "icmp", "icmpv6"])
                                ),
                            ),
                        }
                    }
                }
                "user" => {
                    if let Some(v) = self.value(&e, "a user name or id") {
                        user = self.principal(v, &e.key_span, Kind::User);
                    }
                }
                "group" => {
                    if let Some(v) = self.value(&e, "a group name or id") {
                        group = self.principal(v, &e.key_span, Kind::Group);
                    }
                }
                "verdict" => verdict = self.choice(&e, ACTIONS),
                "service" | "cgroup" => {
                    if let Some((text, cspan)) = self.string(&e) {
                        let service = e.key == "service";
                        match if service { service_cgroup(text) } else { cgroup_path(text) } {
                            Ok(p) => cgroup = Some(p),
                            Err(m) => self.error(if service { "bad-service" } else { "bad-cgroup" }, cspan, m),
                        }
                    }
                }
                "at" => {
                    if let Some((text, aspan)) = self.string(&e) {
                        match crate::time::parse_at(text) {
                            Ok(t) => at = Some(t),
                            Err(m) => self.error("bad-time", aspan, m),
                        }
                    }
                }
                _ => unreachable!("entries() only returns allowed keys"),
            }
        }
        self.require(t, "to", &suggested, &span, "expectation has no `to` (ADDR[:PORT])");
        self.require(t, "verdict", &suggested, &span, "expectation has no `verdict` (allow or deny)");
        match (&name, &address, &mut to) {
            (Some(_), Some((a, _)), Some((addr, _, _))) => *addr = *a,
            (None, Some((_, aspan)), Some(_)) => self.error(
                "bad-value",
                aspan.clone(),
                "`address` is only for expectations whose `to` is a domain name",
            ),
            // An expectation on a name without `address` gets an IPv6 documentation address
            // for icmpv6; give `to` the right family now so the family check below is right.
            (Some(_), None, Some((addr, _, _))) if matches!(proto, Some((Proto::Icmpv6, _))) => {
                *addr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            }
            _ => {}
        }
        if let (Some((addr, port, tspan)), Some((proto, _))) = (&to, &proto) {
            let p = proto.as_str();
            match (proto.has_ports(), port) {
                (true, None) => self.error(
                    "expect-port",
                    tspan.clone(),
                    format!("a {p} expectation needs a port, e.g. \"192.0.2.1:443\" or \"[2001:db8::1]:443\""),
                ),
                (false, Some(_)) => {
                    self.error("expect-port", tspan.clone(), format!("{p} has no ports; remove the port"))
                }
                _ => {}
            }
            match (proto, addr) {
                (Proto::Icmp, IpAddr::V6(_)) => {
                    self.error("expect-family", tspan.clone(), "icmp needs an IPv4 address; use icmpv6 for IPv6")
                }
                (Proto::Icmpv6, IpAddr::V4(_)) => {
                    self.error("expect-family", tspan.clone(), "icmpv6 needs an IPv6 address; use icmp for IPv4")
                }
                _ => {}
            }
        }
        let uid = user.as_ref().map_or(0, |u| u.id);
        let gid = match &group {
            Some(g) => Some(g.id),
            None => match self.resolver.primary_group(uid) {
                Some(g) => Some(g),
                None if uid == 0 => Some(0),
                None => {
                    let uspan = user.as_ref().map_or(span.clone(), |u| u.span.clone());
                    self.error(
                        "no-primary-group",
                        uspan,
                        format!("cannot tell the primary group of uid {uid}; add `group`"),
                    );
                    None
                }
            },
        };
        if self.error_count() > errors_before {
            return None;
        }
        let (to, port, _) = to?;
        Some(Expect {
            span,
            to,
            name,
            port,
            proto: proto?.0,
            user,
            group,
            uid,
            gid: gid?,
            cgroup,
            at,
            verdict: verdict?,
        })
    }
}

/// A parsed `proto` value: whether `any` was named, and the named protocols with their spans (kept
/// even next to `any`, for the ports check).
struct Protos {
    any: bool,
    list: Vec<(Proto, Span)>,
}

const ACTIONS: &[(&str, Action)] = &[("allow", Action::Allow), ("deny", Action::Deny)];

#[derive(Clone, Copy)]
enum Kind {
    User,
    Group,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Group => "group",
        }
    }
    fn unknown_code(self) -> &'static str {
        match self {
            Kind::User => "unknown-user",
            Kind::Group => "unknown-group",
        }
    }
    fn expected_list(self) -> &'static str {
        match self {
            Kind::User => "a user or a list of users",
            Kind::Group => "a group or a list of groups",
        }
    }
}

/// "a string", "an integer", ... for type errors.
fn value_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "an inline table",
    }
}

fn item_type(i: &Item) -> &'static str {
    match i {
        Item::None => "nothing",
        Item::Value(v) => value_type(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

/// "`a`", "`a` or `b`", "`a`, `b` or `c`".
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Set names become part of nft set names (`s_NAME_v4`); 48 characters keep those short and
/// readable in listings, far below the kernel's 256.
fn valid_set_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 48 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `N/second`, `N/minute`, `N/hour` or `N/day` -> (N, seconds of the unit).
fn parse_rate(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("invalid rate `{s}`; expected N/second, N/minute, N/hour or N/day, e.g. \"10/minute\"");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("rate `{s}` allows nothing; use a deny rule instead"));
    }
    let per = match unit.trim() {
        "second" | "s" => 1,
        "minute" | "min" => 60,
        "hour" | "h" => 3600,
        "day" | "d" => 86_400,
        _ => return Err(bad()),
    };
    Ok((n, per))
}

/// The allowed key closest to a misspelt one, if it is close enough to be a typo.
fn suggest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|a| (edit_distance(key, a), *a))
        .filter(|(d, a)| *d <= 2 && *d < a.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn port_number(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("port {n} is out of range 1 to 65535")),
    }
}

/// "53" or "8000-8080" (digits only, no spaces or signs).
fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let num = |t: &str| -> Result<u16, String> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid port range `{s}`; expected a number or FROM-TO like \"8000-8080\""));
        }
        // Digits only, so the only parse failure is overflow; saturate to report the range.
        port_number(t.parse::<i64>().unwrap_or(i64::MAX))
    };
    match s.split_once('-') {
        None => num(s).map(PortRange::single),
        Some((a, b)) => {
            let (first, last) = (num(a)?, num(b)?);
            if first > last {
                return Err(format!("port range `{s}` is reversed; write {last}-{first}"));
            }
            Ok(PortRange { first, last })
        }
    }
}

/// An address (a host network) or a CIDR whose host bits are all zero.
fn parse_network(s: &str) -> Result<IpNet, (&'static str, String)> {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    match s.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Ok(net),
        Ok(net) => Err(("host-bits-set", format!("`{s}` has host bits set; the network is {}", net.trunc()))),
        Err(_) => Err((
            "bad-address",
            format!("invalid address `{s}`; expected an IP address or CIDR like 192.0.2.0/24 or 2001:db8::/32"),
        )),
    }
}

/// Whether a string that is no valid network was meant as an address (digits, dots, colons and
/// slashes only), so the error is about the address and not about a domain name.
fn looks_like_address(s: &str) -> bool {
    s.contains(':') || s.contains('/') || s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// NAME[:PORT] of a domain expectation; `None` when it does not look like a name at all.
fn parse_name_destination(s: &str) -> Option<Result<(String, Option<u16>), String>> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        Some(_) => return None,
        None => (s, None),
    };
    if looks_like_address(host) || host.starts_with("*.") {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            match port_number(p.parse::<i64>().unwrap_or(i64::MAX)) {
                Ok(p) => Some(p),
                Err(m) => return Some(Err(m)),
            }
        }
        Some(_) => return Some(Err(format!("invalid destination `{s}`; expected NAME[:PORT]"))),
    };
    Some(crate::dns::parse_domain(host).map(|(n, _)| (n, port)))
}

/// ADDR[:PORT] of an expectation: "192.0.2.1:53", "[2001:db8::1]:443", "2001:db8::1", "192.0.2.1".
fn parse_destination(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let bad =
        || format!("invalid destination `{s}`; expected ADDR[:PORT] like \"192.0.2.53:53\" or \"[2001:db8::1]:443\"");
    let port = |p: &str| -> Result<u16, String> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        port_number(p.parse::<i64>().unwrap_or(i64::MAX))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(port(after.strip_prefix(':').ok_or_else(bad)?)?),
        };
        return Ok((IpAddr::V6(addr), port));
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok((addr, None));
    }
    let (addr, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    Ok((IpAddr::V4(addr), Some(port(p)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("53"), Ok(PortRange::single(53)));
        assert_eq!(parse_port_range("1-65535"), Ok(PortRange { first: 1, last: 65535 }));
        assert!(parse_port_range("0-5").is_err());
        assert!(parse_port_range("5-").is_err());
        assert!(parse_port_range("-5").is_err());
        assert!(parse_port_range("+5").is_err());
        assert!(parse_port_range("5 - 6").is_err());
        assert!(parse_port_range("99999999999999999999999").is_err());
        assert!(parse_port_range("9-8").unwrap_err().contains("reversed"));
    }

    #[test]
    fn destinations() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_destination("192.0.2.1:53"), Ok((v4, Some(53))));
        assert_eq!(parse_destination("192.0.2.1"), Ok((v4, None)));
        assert_eq!(parse_destination("[2001:db8::1]:443"), Ok((v6, Some(443))));
        assert_eq!(parse_destination("[2001:db8::1]"), Ok((v6, None)));
        assert_eq!(parse_destination("2001:db8::1"), Ok((v6, None)));
        for bad in [
            "",
            ":",
            "192.0.2.1:",
            "192.0.2.1:0",
            "192.0.2.1:65536",
            "[192.0.2.1]:1",
            "[::1]x",
            "[::1",
            "host:80",
            "::1:x",
        ] {
            assert!(parse_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks() {
        assert_eq!(parse_network("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
        assert_eq!(parse_network("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(parse_network("192.0.2.1/24").unwrap_err().0, "host-bits-set");
        assert_eq!(parse_network("192.0.2.0/33").unwrap_err().0, "bad-address");
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("prot", RULE_KEYS), Some("proto"));
        assert_eq!(suggest("port", RULE_KEYS), Some("ports"));
        assert_eq!(suggest("zzzzzz", RULE_KEYS), None);
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
