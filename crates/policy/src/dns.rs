//! What the DNS forwarder does with a name and its addresses: which domain rules a name feeds,
//! when it is refused, and the rebinding guard (the `[dns]` settings themselves are
//! [`crate::model::DnsConfig`]).
//!
//! These decisions live here, in the pure policy crate, because three places must make them the
//! same way: the forwarder (which fills the kernel's sets), `explain` (which says what the kernel
//! will do) and `leash test` (which plays the forwarder in a scratch namespace).

use crate::model::{Action, Conditions, Limits, Policy, Rule};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Lowercase without the trailing dot: the form names are compared in.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// What the forwarder does with an answer for one name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NameDecision {
    /// Answer NXDOMAIN: the first domain rule naming it is this unconditional deny rule.
    pub refuse: Option<usize>,
    /// The domain rules (allow and deny) whose sets receive the name's addresses, in file order.
    pub rules: Vec<usize>,
}

/// Which domain rules a name feeds, and whether it is refused outright.
///
/// A name is refused when the first rule (in file order) whose domains match it is a deny rule
/// without any other condition: then no connection to its addresses could ever be allowed by
/// it, and NXDOMAIN tells the application so at once. A deny rule with conditions (ports,
/// protocols, users, groups, cgroups, time windows) cannot be decided at lookup time, so its sets receive the
/// addresses and the kernel decides per connection.
pub fn decide_name(policy: &Policy, qname: &str) -> NameDecision {
    let qname = normalize_name(qname);
    let mut d = NameDecision::default();
    // A rule that matches nothing has no sets in the kernel.
    for (i, rule) in policy.rules.iter().enumerate().filter(|(_, r)| r.matches_nothing().is_none()) {
        if rule.cond.domains.iter().any(|p| p.matches(&qname)) {
            if d.rules.is_empty() && is_unconditional_deny(rule) {
                d.refuse = Some(i);
                return d;
            }
            d.rules.push(i);
        }
    }
    d
}

fn is_unconditional_deny(rule: &Rule) -> bool {
    let Conditions {
        protos,
        ports,
        ports_span: _,
        // The destination is what the name stands for.
        to: _,
        to_span: _,
        domains: _,
        allow_private: _,
        sets: _,
        countries: _,
        country_ranges: _,
        users,
        groups,
        cgroups,
        cgroups_span: _,
        when,
        when_span: _,
        from,
        from_span: _,
    } = &rule.cond;
    // A deny rule has no limits (the parser refuses them: `limit-on-deny`).
    let Limits { rate: _, max_connections: _, per: _, span: _ } = &rule.limits;
    rule.action == Action::Deny
        && protos.is_none()
        && ports.is_none()
        && users.is_none()
        && groups.is_none()
        // A deny rule for some processes or some hours does not deny the name for everyone always.
        && cgroups.is_none()
        && when.is_none()
        // A deny rule for some workloads does not deny the name to the host or other workloads.
        && from.is_none()
}

/// Whether an address is one a public name has no business pointing at: loopback, private,
/// shared (CGNAT), link-local, unique-local, unspecified, broadcast or multicast, or an IPv6
/// address that leads to such an IPv4 address ([`embedded_ipv4`]). An answer pointing there is
/// the signature of DNS rebinding.
pub fn is_rebinding_target(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => v4_special(a),
        IpAddr::V6(a) => {
            if embedded_ipv4(a).any(v4_special) {
                return true;
            }
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
                // Local-use NAT64 64:ff9b:1::/48 (RFC 8215): where the IPv4 address sits depends
                // on the prefix length the local translator uses (/48 to /96, RFC 6052), which
                // nothing in the answer tells, so no one reading of it is safe. Like a
                // unique-local address it is for local use only: a public name's answer has no
                // business there (DNS64 networks on this prefix set `allow_private`).
                || (s[0], s[1], s[2]) == (0x64, 0xff9b, 0x0001)
        }
    }
}

fn v4_special(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || o[0] == 0 // "this network" 0.0.0.0/8
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64.0.0/10
}

/// The IPv4 addresses an IPv6 address leads to, the one normaliser the rebinding guard and the
/// own-address check use: a packet to such an address reaches the IPv4 address through the
/// host's stack or a translator on the way.
///
/// - IPv4-mapped `::ffff:a.b.c.d` (the socket API connects it over IPv4);
/// - IPv4-compatible `::a.b.c.d` (deprecated; the `sit` driver still tunnels it) and
///   IPv4-translated `::ffff:0:a.b.c.d` (SIIT, RFC 6145);
/// - the NAT64 well-known prefix `64:ff9b::/96` (RFC 6052: the last 32 bits);
/// - 6to4 `2002::/16` (RFC 3056: bits 16 to 47, the relay's IPv4 destination);
/// - Teredo `2001::/32` (RFC 4380: the server in bits 32 to 63, the client in the last 32 bits,
///   inverted).
///
/// (`64:ff9b:1::/48` has no fixed position, see [`is_rebinding_target`].)
pub fn embedded_ipv4(a: Ipv6Addr) -> impl Iterator<Item = Ipv4Addr> {
    let s = a.segments();
    let o = a.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mut found: [Option<Ipv4Addr>; 2] = [None, None];
    // ::a.b.c.d, ::ffff:a.b.c.d (`::` and `::1` are caught as unspecified and loopback anyway,
    // and read as 0.0.0.0 and 0.0.0.1 they are special too), ::ffff:0:a.b.c.d, 64:ff9b::a.b.c.d.
    let compatible_or_mapped = s[..5] == [0; 5] && (s[5] == 0 || s[5] == 0xffff);
    let translated = s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0;
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible_or_mapped || translated || nat64 {
        found[0] = Some(last);
    } else if s[0] == 0x2002 {
        found[0] = Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    } else if s[0] == 0x2001 && s[1] == 0 {
        found[0] = Some(Ipv4Addr::new(o[4], o[5], o[6], o[7]));
        found[1] = Some(Ipv4Addr::from(!u32::from(last)));
    }
    found.into_iter().flatten()
}

/// Whether `addr` is one of the host's own addresses `own`, also when written as an IPv6
/// address that leads to one of its IPv4 addresses ([`embedded_ipv4`]).
pub fn is_own_address(addr: IpAddr, own: &[IpAddr]) -> bool {
    own.contains(&addr)
        || match addr {
            IpAddr::V4(_) => false,
            IpAddr::V6(a) => embedded_ipv4(a).any(|v4| own.contains(&IpAddr::V4(v4))),
        }
}

/// Whether the forwarder may put `addr` into `rule`'s sets. Deny rules take every address; an
/// allow rule refuses rebinding targets and the host's own addresses unless it says
/// `allow_private = true`.
pub fn admits(rule: &Rule, addr: IpAddr, is_own_address: bool) -> bool {
    rule.action == Action::Deny || rule.cond.allow_private || !(is_rebinding_target(addr) || is_own_address)
}

/// The address a domain expectation without `address` connects to: the first documentation
/// address of its family that no rule lists (by network, named set or country) and no other
/// expectation uses (an address shared by two names would be in both names' sets), so that only
/// domain rules can decide it. `None` when every candidate is taken.
pub fn synthetic_address(policy: &Policy, v6: bool, taken: &[IpAddr]) -> Option<IpAddr> {
    let listed = |a: IpAddr| {
        taken.contains(&a)
            || policy.rules.iter().filter_map(|r| r.cond.to.as_ref()).flatten().any(|n| n.contains(&a))
            || policy.rules.iter().any(|r| r.cond.country_ranges.contains(a))
            || policy.sets.iter().any(|s| s.ranges.contains(a))
    };
    let candidates: Box<dyn Iterator<Item = IpAddr>> = if v6 {
        Box::new((1..=0xffffu16).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xd5, 0, 0, 0, 0, i))))
    } else {
        Box::new(
            [[192, 0, 2], [198, 51, 100], [203, 0, 113]]
                .into_iter()
                .flat_map(|p| (1..=254u8).map(move |h| IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], h)))),
        )
    };
    candidates.into_iter().find(|a| !listed(*a))
}

/// Checks a domain name as written in a policy (`*.` prefix allowed): labels of 1 to 63
/// letters, digits, `-` or `_`, at most 253 characters, not all-numeric (that is an address).
/// Returns the normalised pattern.
pub fn parse_domain(s: &str) -> Result<(String, bool), String> {
    let (wildcard, rest) = match s.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, s),
    };
    let name = normalize_name(rest);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("invalid domain name `{s}`: it must have 1 to 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("invalid domain name `{s}`: every label needs 1 to 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            let hint = if label.contains('*') { " (`*` is only allowed as the whole first label, `*.`)" } else { "" };
            return Err(format!("invalid domain name `{s}`: labels use letters, digits, `-` and `_`{hint}"));
        }
    }
    if name.split('.').next_back().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("invalid address `{s}`"));
    }
    Ok((name, wildcard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DnsConfig, DomainPattern};

    fn pat(s: &str) -> DomainPattern {
        let (name, wildcard) = parse_domain(s).unwrap();
        DomainPattern { name, wildcard, span: 0..0 }
    }

    #[test]
    fn wildcard_matches_subdomains_at_any_depth_but_not_the_apex() {
        let p = pat("*.cdn.example.com");
        assert!(p.matches("a.cdn.example.com"));
        assert!(p.matches("x.y.cdn.example.com"));
        assert!(!p.matches("cdn.example.com"));
        assert!(!p.matches("xcdn.example.com"));
        assert!(!p.matches("example.com"));
        let e = pat("Mirror.Example.com.");
        assert!(e.matches("mirror.example.com"));
        assert!(!e.matches("a.mirror.example.com"));
    }

    #[test]
    fn domain_syntax() {
        assert!(parse_domain("api.example.test").is_ok());
        assert!(parse_domain("_srv.example.test").is_ok());
        assert!(parse_domain("a*.example.test").is_err());
        assert!(parse_domain("*.*.example.test").is_err());
        assert!(parse_domain("a..b").is_err());
        assert!(parse_domain("192.0.2.300").is_err());
        assert!(parse_domain(&format!("{}.test", "a".repeat(64))).is_err());
    }

    #[test]
    fn rebinding_targets() {
        for a in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.1.1", "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:10.0.0.1", "224.0.0.1"] {
            assert!(is_rebinding_target(a.parse().unwrap()), "{a}");
        }
        for a in ["192.0.2.1", "198.51.100.7", "8.8.8.8", "100.128.0.1", "2001:db8::1", "::ffff:192.0.2.1"] {
            assert!(!is_rebinding_target(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn embedded_ipv4_leads_to_the_same_verdict_as_the_ipv4_address() {
        // Issue 12, item 12: an AAAA of 64:ff9b::a00:1 (NAT64 to 10.0.0.1) was admitted.
        let special = [
            "64:ff9b::a00:1",        // NAT64 well-known prefix -> 10.0.0.1
            "64:ff9b::7f00:1",       // -> 127.0.0.1
            "64:ff9b::c0a8:101",     // -> 192.168.1.1
            "64:ff9b:1::c000:201",   // local-use NAT64: the whole /48
            "64:ff9b:1:ab00::",      // ... whatever the layout
            "2002:a00:1::1",         // 6to4 via 10.0.0.1
            "2002:7f00:1::",         // 6to4 via 127.0.0.1
            "2002:a9fe:a9fe::1",     // 6to4 via 169.254.169.254 (cloud metadata)
            "::a00:1",               // IPv4-compatible 10.0.0.1
            "::ffff:0:a00:1",        // IPv4-translated 10.0.0.1
            "::ffff:a9fe:a9fe",      // IPv4-mapped 169.254.169.254
            "2001:0:a00:1::1",       // Teredo server 10.0.0.1
            "2001:0:c000:201::f5ff:fffe", // Teredo client !0xf5fffffe = 10.0.0.1
        ];
        for a in special {
            assert!(is_rebinding_target(a.parse().unwrap()), "{a} must count as a rebinding target");
        }
        let public = [
            "64:ff9b::c000:201",     // NAT64 to 192.0.2.1
            "2002:c000:201::1",      // 6to4 via 192.0.2.1
            "::ffff:0:c000:201",
            "2001:0:c000:201::3fff:fdfe", // Teredo: server 192.0.2.1, client !0x3ffffdfe = 192.0.2.1
            "2001:db8::a00:1",       // documentation prefix: nothing embedded
            "64:ff9b:2::a00:1",      // outside both NAT64 prefixes
        ];
        for a in public {
            assert!(!is_rebinding_target(a.parse().unwrap()), "{a}");
        }
        let v: Vec<Ipv4Addr> = embedded_ipv4("64:ff9b::c000:201".parse().unwrap()).collect();
        assert_eq!(v, vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(embedded_ipv4("2001:db8::1".parse().unwrap()).count(), 0);
    }

    #[test]
    fn own_addresses_are_recognised_behind_an_embedding() {
        let own: Vec<IpAddr> = vec!["198.51.100.9".parse().unwrap(), "2001:db8::9".parse().unwrap()];
        for a in ["198.51.100.9", "2001:db8::9", "::ffff:198.51.100.9", "64:ff9b::c633:6409", "2002:c633:6409::1"] {
            assert!(is_own_address(a.parse().unwrap(), &own), "{a}");
        }
        for a in ["198.51.100.10", "64:ff9b::c633:640a", "2001:db8::a"] {
            assert!(!is_own_address(a.parse().unwrap(), &own), "{a}");
        }
    }

    #[test]
    fn element_outlives_the_client_ttl() {
        let c = DnsConfig::default();
        for ttl in [0, 1, 59, 60, 61, 3599, 3600, 3601, u32::MAX] {
            assert!(c.element_timeout_ms(ttl) >= u64::from(c.client_ttl(ttl)) * 1000 + u64::from(c.grace) * 1000);
        }
    }
}
