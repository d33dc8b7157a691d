//! One `[[expect]]`: the connection it describes (with the defaults for user and group applied)
//! and the verdict it expects.

use super::values::{ACTIONS, Kind, Parser, one_of, parse_destination, parse_name_destination};
use crate::model::*;
use std::net::IpAddr;
use toml_edit::TableLike;

/// Keys of an `[[expect]]`.
const EXPECT_KEYS: &[&str] = &["to", "address", "proto", "user", "group", "service", "cgroup", "at", "verdict"];

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
            verdict: verdict?,
        })
    }
}
