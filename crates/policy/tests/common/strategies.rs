//! proptest strategies for policies and connections, shared by the property tests.

use ipnet::IpNet;
use policy::*;
use proptest::prelude::*;
use std::net::IpAddr;

const ADDRS: &[&str] = &[
    "10.1.2.3",
    "10.2.0.1",
    "10.255.255.255",
    "127.0.0.1",
    "127.9.9.9",
    "192.0.2.1",
    "192.0.2.200",
    "8.8.8.8",
    "::1",
    "::",
    "2001:db8::5",
    "2001:db8:1::1",
    "2001:db9::1",
    "::ffff:10.1.2.3",
    "fe80::1",
];

pub fn arb_addr() -> impl Strategy<Value = IpAddr> {
    prop::sample::select(ADDRS).prop_map(|s| s.parse().unwrap())
}

// Conditions are absent two times in three and values come from small pools, so that a fair
// share of connections is decided by a rule rather than by the default.

/// Networks around the sample addresses, so that rules match often.
pub fn arb_net() -> impl Strategy<Value = IpNet> {
    (arb_addr(), 0u8..=128).prop_map(|(a, len)| {
        let len = match a {
            IpAddr::V4(_) => len % 33,
            IpAddr::V6(_) => len,
        };
        IpNet::new(a, len).unwrap().trunc()
    })
}

pub fn arb_proto() -> impl Strategy<Value = Proto> {
    prop::sample::select(Proto::ALL.to_vec())
}

pub fn arb_ids() -> impl Strategy<Value = Option<Vec<Principal>>> {
    prop::option::weighted(0.35, prop::collection::vec(0u32..4, 0..3))
        .prop_map(|o| o.map(|v| v.into_iter().map(|id| Principal { name: None, id, span: 0..0 }).collect()))
}

/// A rule named `r` (use [`arb_policy`] for distinct names).
pub fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        any::<bool>(),
        prop::option::weighted(0.35, prop::collection::vec(arb_proto(), 0..3)),
        prop::option::weighted(0.35, prop::collection::vec((0u16..40, 0u16..10), 0..3)),
        prop::option::weighted(0.35, prop::collection::vec(arb_net(), 0..3)),
        arb_ids(),
        arb_ids(),
    )
        .prop_map(|(allow, protos, ports, to, users, groups)| Rule {
            name: "r".into(),
            span: 0..0,
            name_span: 0..0,
            action: if allow { Action::Allow } else { Action::Deny },
            cond: Conditions {
                protos,
                ports: ports.map(|v| v.into_iter().map(|(a, w)| PortRange { first: a, last: a + w }).collect()),
                ports_span: None,
                to,
                to_span: None,
                domains: vec![],
                allow_private: false,
                sets: vec![],
                countries: vec![],
                country_ranges: Default::default(),
                users,
                groups,
                cgroups: None,
                cgroups_span: None,
                when: None,
                when_span: None,
                from: None,
                from_span: None,
            },
            limits: Limits {
                rate: None,
                max_connections: None,
                per: Default::default(),
                span: None,
            },
            log: false,
            purpose: None,
            justification: None,
            risk: None,
            owner: None,
            review: None,
            review_span: None,
        })
}

pub fn arb_policy() -> impl Strategy<Value = Policy> {
    (any::<bool>(), any::<bool>(), prop::collection::vec(arb_rule(), 0..6)).prop_map(|(allow, lo, rules)| Policy {
        version: 1,
        defaults: Defaults {
            outbound: if allow { Action::Allow } else { Action::Deny },
            allow_loopback: lo,
            ..Defaults::default()
        },
        // Distinct names, so that a lint message naming a rule identifies it.
        rules: rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| Rule { name: format!("r{i}"), ..r })
            .collect(),
        expects: vec![],
        dns: Default::default(),
        sets: vec![],
        countries: None,
        forward: Default::default(),
    })
}

pub fn arb_conn() -> impl Strategy<Value = Connection> {
    (arb_proto(), arb_addr(), prop::option::of(0u16..50), 0u32..4, 0u32..4)
        .prop_map(|(proto, dst, port, uid, gid)| Connection { proto, dst, port, uid, gid, name: None, cgroup: None, at: None, from: None })
}


/// A connection that can exist: ICMP over IPv4, ICMPv6 over IPv6, a port exactly for TCP and UDP.
pub fn arb_real_conn() -> impl Strategy<Value = Connection> {
    arb_conn().prop_map(|mut c| {
        c.proto = match (c.proto, c.dst) {
            (Proto::Icmp, IpAddr::V6(_)) => Proto::Icmpv6,
            (Proto::Icmpv6, IpAddr::V4(_)) => Proto::Icmp,
            (p, _) => p,
        };
        c.port = if c.proto.has_ports() { Some(c.port.unwrap_or(0)) } else { None };
        c
    })
}
