//! The walk through a whole policy document: [`load`], the top-level keys (`[[set]]` and
//! `[countries]` first, since rules refer to them), `[defaults]` and `[dns]`, and the checks that
//! need the whole policy (domain rules need an upstream; domain expectations get their address).

use super::values::{ACTIONS, Entry, Parser, clamp, valid_set_name, value_type};
use crate::diag::{Diagnostic, Severity};
use crate::model::*;
use crate::resolver::Resolver;
use std::collections::HashMap;
use std::net::IpAddr;
use toml_edit::{Document, TableLike};

/// Keys of the top-level table.
const TOP_KEYS: &[&str] = &["version", "defaults", "dns", "forward", "set", "countries", "rule", "expect"];
/// Keys of `[forward]`.
const FORWARD_KEYS: &[&str] = &["mode", "interfaces", "sources"];
/// Keys of a `[[set]]`.
const SET_KEYS: &[&str] = &["name", "file"];
/// Keys of `[countries]`.
const COUNTRIES_KEYS: &[&str] = &["database", "locations"];
/// Keys of `[dns]`.
const DNS_KEYS: &[&str] = &[
    "listen",
    "upstreams",
    "min_ttl",
    "max_ttl",
    "grace",
    "timeout_ms",
    "bypass",
    "mark",
    "user",
    "allow_remote_clients",
    "set_size",
    "cache_size",
];
/// Keys of `[defaults]`.
const DEFAULTS_KEYS: &[&str] =
    &["outbound", "deny_with", "log_denied", "log_group", "allow_loopback", "allow_established", "timezone", "on_apply"];

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
    let ok = !diags.iter().any(|d| d.severity == Severity::Error);
    (policy.filter(|_| ok), diags)
}

impl<'a> Parser<'a> {
    fn policy(&mut self, root: &toml_edit::Table) -> Option<Policy> {
        let mut version = None;
        let mut defaults = Defaults::default();
        let mut rules = Vec::new();
        let mut expects = Vec::new();
        let mut dns = DnsConfig::default();
        let mut forward = ForwardConfig::default();
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
                "forward" => {
                    if let Some(t) = e.item.as_table_like() {
                        forward = self.forward(t, self.span(e.item, &e.key_span));
                    } else {
                        let span = self.span(e.item, &e.key_span);
                        self.wrong_type(span, "a table ([forward])", e.item);
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
        self.check_dns(&mut dns, &rules);
        self.check_forward(&forward, &rules);
        let sets = std::mem::take(&mut self.sets);
        let countries = self.countries.take();
        let mut policy = Policy { version: version?, defaults, rules, expects, dns, sets, countries, forward };
        self.place_domain_expects(&mut policy);
        self.place_forwarded_expects(&mut policy);
        Some(policy)
    }

    /// Domain rules need somewhere to resolve and a forwarder user; redirecting needs a
    /// loopback listener.
    fn check_dns(&mut self, dns: &mut DnsConfig, rules: &[Rule]) {
        let header = dns.span.clone().unwrap_or(0..0);
        if rules.iter().any(|r| !r.cond.domains.is_empty()) {
            if dns.user.uid.is_none() {
                dns.user.uid = self.resolver.user(&dns.user.written);
            }
            if dns.user.uid.is_none() {
                let span = dns.user.span.clone().unwrap_or_else(|| header.clone());
                self.warning(
                    "dns-user",
                    span,
                    format!(
                        "the forwarder's user `{}` does not exist here: the table lets no forwarder query out \
                         (DNS of domain rules fails closed) and `leash dns` will not start; create it \
                         (contrib/sysusers.d/leash.conf) or set `[dns] user`",
                        dns.user.written
                    ),
                );
            }
        }
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

    /// `from` needs forwarded traffic to be governed: under `mode = "ignore"` there is no forward
    /// chain, so such a rule could never match.
    fn check_forward(&mut self, forward: &ForwardConfig, rules: &[Rule]) {
        if forward.mode != ForwardMode::Ignore {
            return;
        }
        for r in rules {
            if let Some(span) = &r.cond.from_span {
                let at = forward.mode_span.as_ref().map(|m| format!(" (line {})", self.line(m))).unwrap_or_default();
                self.error(
                    "from-not-governed",
                    span.clone(),
                    format!(
                        "rule `{}` has `from`, but [forward] mode = \"ignore\"{at}: forwarded traffic is not governed, \
                         so the rule could never match",
                        r.name
                    ),
                );
            }
        }
    }

    /// Gives every forwarded expectation without `iif` the interface `leash test` routes it
    /// through (and `explain` assumes): an example name of the first workload interface pattern,
    /// or `wl0` when the policy names none (then only its source networks make it a workload).
    fn place_forwarded_expects(&mut self, policy: &mut Policy) {
        let default = policy.workload_interfaces().first().map_or_else(|| "wl0".to_string(), IfacePattern::example);
        for x in &mut policy.expects {
            if x.from.is_some() && x.iif.is_none() {
                x.iif = Some(default.clone());
            }
        }
    }

    /// `[forward]`: whether forwarded traffic is governed, and what counts as a local workload.
    fn forward(&mut self, t: &dyn TableLike, span: Span) -> ForwardConfig {
        let mut f = ForwardConfig { span: Some(span), ..Default::default() };
        for e in self.entries(t, "[forward]", FORWARD_KEYS).0 {
            match e.key {
                "mode" => {
                    if let Some(m) = self.choice(&e, &[("govern", ForwardMode::Govern), ("ignore", ForwardMode::Ignore)]) {
                        f.mode = m;
                        f.mode_span = Some(self.span(e.item, &e.key_span));
                    }
                }
                "interfaces" => {
                    if let Some(list) = self.list(&e, "a list of interface names (\"docker0\", \"br-*\")") {
                        let mut out = Vec::new();
                        for v in list {
                            let vspan = self.vspan(v, &e.key_span);
                            match v.as_str().map(IfacePattern::parse) {
                                Some(Ok(p)) => out.push(p),
                                Some(Err(m)) => self.error("bad-interface", vspan, m),
                                None => self.error("wrong-type", vspan, format!("expected an interface name (a string), found {}", value_type(v))),
                            }
                        }
                        f.interfaces = out;
                    }
                }
                "sources" => {
                    if let Some(list) = self.list(&e, "a list of networks (\"172.17.0.0/16\")") {
                        let mut out = Vec::new();
                        for v in list {
                            let vspan = self.vspan(v, &e.key_span);
                            match v.as_str().map(super::values::parse_network) {
                                Some(Ok(n)) => out.push(n),
                                Some(Err((code, m))) => self.error(code, vspan, m),
                                None => self.error("wrong-type", vspan, format!("expected a network (a string), found {}", value_type(v))),
                            }
                        }
                        f.sources = out;
                    }
                }
                _ => unreachable!("entries() only returns allowed keys"),
            }
        }
        f
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
            // A forwarded expectation's destination is of its source's family.
            let v6 = x.proto == Proto::Icmpv6 || x.from.is_some_and(|f| f.is_ipv6());
            // Expectations on the same name share its address, as the forwarder would.
            if let Some(a) = by_name.get(&name).filter(|a| a.is_ipv6() == v6) {
                policy.expects[i].to = *a;
                continue;
            }
            match crate::dns::synthetic_address(policy, v6, &taken) {
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
        // Where each listen address was written, for the check after every key is read.
        let mut listen_spans: Vec<Span> = Vec::new();
        for e in self.entries(t, "[dns]", DNS_KEYS).0 {
            match e.key {
                "listen" => {
                    if let Some(v) = self.socket_addrs(&e, None) {
                        d.listen = v;
                        listen_spans = match e.item.as_value().and_then(|v| v.as_array()) {
                            Some(a) => a.iter().map(|v| self.vspan(v, &e.key_span)).collect(),
                            None => vec![self.span(e.item, &e.key_span)],
                        };
                    }
                }
                "user" => {
                    if let Some(u) = self.forwarder_user(&e) {
                        d.user = u;
                    }
                }
                "allow_remote_clients" => d.allow_remote_clients = self.boolean(&e).unwrap_or(false),
                "set_size" => d.set_size = self.integer(&e, 1024, 1 << 24).map_or(d.set_size, |n| n as u32),
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
        if !d.allow_remote_clients {
            for (a, span) in d.listen.iter().zip(listen_spans) {
                if !a.ip().is_loopback() {
                    self.error(
                        "dns-remote-listen",
                        span,
                        format!(
                            "[dns] listen address {a} is not loopback: other hosts could use the forwarder \
                             (and fill this host's sets); set `allow_remote_clients = true` if that is meant"
                        ),
                    );
                }
            }
        }
        d
    }

    /// `[dns] user`: a name (looked up once the whole policy is known, see `check_dns`) or a
    /// uid; never root.
    fn forwarder_user(&mut self, e: &Entry) -> Option<ForwarderUser> {
        let v = self.value(e, "a user name or a uid")?;
        let span = self.vspan(v, &e.key_span);
        let (written, uid) = if let Some(n) = v.as_integer() {
            if !(0..=i64::from(u32::MAX - 1)).contains(&n) {
                self.error("bad-value", span, format!("user {n} is not a uid"));
                return None;
            }
            (n.to_string(), Some(n as u32))
        } else if let Some(s) = v.as_str() {
            if s.is_empty() {
                self.error("bad-value", span, "[dns] user must not be empty");
                return None;
            }
            (s.to_string(), None)
        } else {
            self.error("wrong-type", span, format!("expected a user name or a uid, found {}", value_type(v)));
            return None;
        };
        if uid == Some(0) || written == "root" {
            self.error(
                "dns-user",
                span,
                "the forwarder must not run as root: the table exempts its user's DNS, and every root \
                 process (a container with --network host, for one) could pose as it",
            );
            return None;
        }
        Some(ForwarderUser { written, uid, span: Some(span) })
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
                "on_apply" => {
                    if let Some(o) = self.choice(&e, &[("report", OnApply::Report), ("cut", OnApply::Cut)]) {
                        d.on_apply = o;
                    }
                }
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

    /// One `[[set]]`: its name and file, which [`Parser::load_set`] reads.
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
        self.load_set(name, name_span, file, file_span);
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
}
