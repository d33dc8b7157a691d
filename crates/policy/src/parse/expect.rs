//! One `[[expect]]`: the connection it describes (with the defaults for user and group applied)
//! and the verdict it expects.

use super::values::{ACTIONS, Kind, Parser, one_of, parse_destination, parse_name_destination};
use crate::model::*;
use std::net::IpAddr;
use toml_edit::TableLike;

/// Keys of an `[[expect]]`.
const EXPECT_KEYS: &[&str] =
    &["to", "address", "proto", "user", "group", "service", "cgroup", "at", "from", "iif", "verdict"];

impl<'a> Parser<'a> {
    pub(super) fn expect(&mut self, t: &dyn TableLike, span: Span) -> Option<Expect> {
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
        let mut from: Option<(IpAddr, Span)> = None;
        let mut iif: Option<(String, Span)> = None;
        // Keys that describe a local process, which a forwarded connection does not have.
        let mut local_keys: Vec<(&str, Span)> = Vec::new();
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
                "from" => {
                    if let Some((s, fspan)) = self.string(&e) {
                        match s.parse::<IpAddr>() {
                            Ok(a) if a.is_loopback() || a.is_unspecified() || a.is_multicast() => self.error(
                                "bad-address",
                                fspan,
                                format!("`{s}` cannot be the source of a forwarded connection; give a workload's address"),
                            ),
                            Ok(a) => from = Some((a, fspan)),
                            Err(_) => self.error(
                                "bad-address",
                                fspan,
                                format!("invalid address `{s}`; expected the workload's source address, e.g. \"172.17.0.2\""),
                            ),
                        }
                    }
                }
                "iif" => {
                    if let Some((s, ispan)) = self.string(&e) {
                        match IfacePattern::parse(s) {
                            Ok(p) if !p.wildcard => iif = Some((p.name, ispan)),
                            Ok(_) => self.error("bad-interface", ispan, format!("`{s}` is a pattern; an expectation enters on one interface, e.g. \"br-0\"")),
                            Err(m) => self.error("bad-interface", ispan, m),
                        }
                    }
                }
                "user" => {
                    local_keys.push(("user", e.key_span.clone()));
                    if let Some(v) = self.value(&e, "a user name or id") {
                        user = self.principal(v, &e.key_span, Kind::User);
                    }
                }
                "group" => {
                    local_keys.push(("group", e.key_span.clone()));
                    if let Some(v) = self.value(&e, "a group name or id") {
                        group = self.principal(v, &e.key_span, Kind::Group);
                    }
                }
                "verdict" => verdict = self.choice(&e, ACTIONS),
                "service" | "cgroup" => {
                    local_keys.push((e.key, e.key_span.clone()));
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
        match (&from, &iif) {
            (None, Some((_, ispan))) => {
                self.error("bad-value", ispan.clone(), "`iif` is only for forwarded expectations (with `from`)")
            }
            (Some((src, fspan)), _) => {
                for (key, kspan) in &local_keys {
                    self.error(
                        "from-with-socket",
                        kspan.clone(),
                        format!(
                            "`{key}` cannot go with `from` (line {}): a forwarded connection comes from a workload, \
                             not from a local process",
                            self.line(fspan)
                        ),
                    );
                }
                if let Some((dst, _, tspan)) = &to
                    && !dst.is_unspecified()
                {
                    if dst.is_ipv4() != src.is_ipv4() {
                        self.error("expect-family", fspan.clone(), format!("`from` {src} and `to` {dst} are of different address families"));
                    }
                    if dst.is_loopback() {
                        self.error("bad-address", tspan.clone(), "a forwarded connection cannot go to a loopback address");
                    }
                }
            }
            (None, None) => {}
        }
        let uid = user.as_ref().map_or(0, |u| u.id);
        let gid = match &group {
            Some(g) => Some(g.id),
            None => self.primary_group(uid, user.as_ref().map_or(span.clone(), |u| u.span.clone())),
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
            from: from.map(|f| f.0),
            iif: iif.map(|i| i.0),
            verdict: verdict?,
        })
    }
}
