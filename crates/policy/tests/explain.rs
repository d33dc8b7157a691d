//! `explain`: hand-picked cases with their reasons, and a property test against a brute-force
//! reference evaluator written here from the semantics in the language description.

mod common;

use common::load_ok;
use common::strategies::{arb_conn, arb_policy};
use ipnet::IpNet;
use policy::*;
use proptest::prelude::*;
use std::net::IpAddr;

fn conn(proto: Proto, dst: &str, port: Option<u16>, uid: u32, gid: u32) -> Connection {
    Connection { proto, dst: dst.parse().unwrap(), port, uid, gid, name: None, cgroup: None, at: None, from: None }
}

const POLICY: &str = r#"version = 1
[defaults]
outbound = "deny"

[[rule]]
name = "dns"
action = "allow"
proto = "udp"
ports = [53]
to = ["192.0.2.53", "2001:db8::53"]

[[rule]]
name = "web"
action = "allow"
ports = [80, 443]
to = ["198.51.100.0/24", "2001:db8::/32"]
user = ["root", 1000]

[[rule]]
name = "dev-ssh"
action = "allow"
proto = "tcp"
ports = [22]
group = "developers"

[[rule]]
name = "ping"
action = "allow"
proto = ["icmp", "icmpv6"]

[[rule]]
name = "no-smtp"
action = "deny"
ports = ["25-25"]
"#;

#[test]
fn first_match_wins_and_misses_explain_the_rest() {
    let p = load_ok(POLICY);
    let e = explain(&p, &conn(Proto::Tcp, "198.51.100.7", Some(443), 1000, 1000));
    assert_eq!(e.verdict, Action::Allow);
    assert_eq!(e.decider, Decider::Rule(1));
    assert_eq!(e.misses.len(), 1);
    assert_eq!(e.misses[0].0, 0);
    assert_eq!(e.misses[0].1.to_string(), "proto tcp not in [udp]");

    let e = explain(&p, &conn(Proto::Udp, "192.0.2.9", Some(53), 0, 0));
    assert_eq!((e.verdict, e.decider), (Action::Deny, Decider::Default));
    let lines: Vec<String> = e.misses.iter().map(|(i, m)| format!("{}: {m}", p.rules[*i].name)).collect();
    assert_eq!(
        lines,
        vec![
            "dns: 192.0.2.9 not in 192.0.2.53, 2001:db8::53",
            "web: port 53 not in 80, 443",
            "dev-ssh: proto udp not in [tcp]",
            "ping: proto udp not in [icmp, icmpv6]",
            "no-smtp: port 53 not in 25",
        ]
    );
}

#[test]
fn every_kind_of_miss_is_printed_helpfully() {
    let p = load_ok(POLICY);
    let miss = |c: Connection, rule: usize| {
        let e = explain(&p, &c);
        e.misses.iter().find(|(i, _)| *i == rule).map(|(_, m)| m.clone()).expect("a miss")
    };
    let m = miss(conn(Proto::Tcp, "198.51.100.7", Some(443), 1001, 0), 1);
    assert_eq!(m.to_string(), "uid 1001 not in root(0), 1000");
    let m = miss(conn(Proto::Tcp, "198.51.100.7", Some(22), 1001, 10), 2);
    assert_eq!(m.to_string(), "gid 10 not in developers(1001)");
    let m = miss(conn(Proto::Icmp, "198.51.100.7", None, 0, 0), 1);
    assert_eq!(m, Miss::Proto { proto: Proto::Icmp, allowed: vec![Proto::Tcp, Proto::Udp], implied_by_ports: true });
    assert_eq!(m.to_string(), "proto icmp not in [tcp, udp] (implied by ports)");
    let m = miss(conn(Proto::Tcp, "192.0.2.9", Some(80), 0, 0), 1);
    assert_eq!(m.to_string(), "192.0.2.9 not in 198.51.100.0/24, 2001:db8::/32");

    // A connection without a port never matches a rule with ports.
    let p = load_ok("version = 1\n[[rule]]\nname = \"p\"\naction = \"allow\"\nproto = \"tcp\"\nports = [80]\n");
    let m = explain::first_miss(&p, &p.rules[0], &conn(Proto::Tcp, "192.0.2.1", None, 0, 0)).unwrap();
    assert_eq!(m.to_string(), "no port, but the rule needs port 80");

    // Empty lists show as "(nothing)".
    let p = load_ok("version = 1\n[[rule]]\nname = \"e\"\naction = \"allow\"\nuser = []\n");
    let e = explain(&p, &conn(Proto::Tcp, "192.0.2.1", Some(1), 0, 0));
    assert_eq!(e.misses[0].1.to_string(), "uid 0 not in (nothing)");
}

#[test]
fn loopback_decides_before_rules() {
    let p = load_ok(POLICY);
    for dst in ["127.0.0.1", "127.255.0.9", "::1"] {
        let e = explain(&p, &conn(Proto::Tcp, dst, Some(25), 1000, 1000));
        assert_eq!((e.verdict, e.decider), (Action::Allow, Decider::Loopback), "{dst}");
        assert!(e.misses.is_empty());
    }
    // ::ffff:127.0.0.1 and 128.0.0.1 are not loopback for this purpose.
    for dst in ["::ffff:127.0.0.1", "128.0.0.1", "::2"] {
        let e = explain(&p, &conn(Proto::Tcp, dst, Some(25), 1000, 1000));
        assert_eq!(e.decider, Decider::Rule(4), "{dst}");
    }
    // Without allow_loopback, loopback traffic goes through the rules like any other.
    let off = load_ok(&POLICY.replace("outbound = \"deny\"", "outbound = \"deny\"\nallow_loopback = false"));
    let e = explain(&off, &conn(Proto::Tcp, "127.0.0.1", Some(25), 0, 0));
    assert_eq!((e.verdict, e.decider), (Action::Deny, Decider::Rule(4)));
}

#[test]
fn default_decides_when_nothing_matches() {
    let allow = load_ok("version = 1\n[defaults]\noutbound = \"allow\"\n");
    let e = explain(&allow, &conn(Proto::Udp, "203.0.113.1", Some(9), 5, 5));
    assert_eq!((e.verdict, e.decider, e.misses.len()), (Action::Allow, Decider::Default, 0));
    let p = load_ok(POLICY);
    let e = explain(&p, &conn(Proto::Tcp, "203.0.113.1", Some(8080), 5, 5));
    assert_eq!((e.verdict, e.decider, e.misses.len()), (Action::Deny, Decider::Default, 5));
}

#[test]
fn address_families_never_mix() {
    let p = load_ok("version = 1\n[[rule]]\nname = \"v4\"\naction = \"allow\"\nto = [\"0.0.0.0/0\"]\n");
    let e = explain(&p, &conn(Proto::Tcp, "2001:db8::1", Some(1), 0, 0));
    assert_eq!(e.decider, Decider::Default);
    // An IPv4-mapped IPv6 address is IPv6.
    let e = explain(&p, &conn(Proto::Tcp, "::ffff:192.0.2.1", Some(1), 0, 0));
    assert_eq!(e.decider, Decider::Default);
    let e = explain(&p, &conn(Proto::Tcp, "192.0.2.1", Some(1), 0, 0));
    assert_eq!(e.decider, Decider::Rule(0));
}

#[test]
fn expectations_become_connections() {
    let src = format!("{POLICY}\n[[expect]]\nto = \"[2001:db8::1]:443\"\nuser = \"alice\"\nverdict = \"allow\"\n");
    let p = load_ok(&src);
    let e = explain(&p, &p.expects[0].connection());
    assert_eq!((e.verdict, e.decider), (p.expects[0].verdict, Decider::Rule(1)));
}

// ---------------------------------------------------------------- property test

/// Which condition failed, as the reference sees it.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Cond {
    Proto,
    Port,
    To,
    User,
    Group,
}

fn miss_kind(m: &Miss) -> Cond {
    match m {
        Miss::Proto { .. } => Cond::Proto,
        Miss::NoPort { .. } | Miss::Port { .. } => Cond::Port,
        Miss::To { .. } => Cond::To,
        Miss::User { .. } => Cond::User,
        Miss::Group { .. } => Cond::Group,
        _ => unreachable!("no other conditions exist yet"),
    }
}

/// Bits of an address, and its width, for prefix comparison done by hand.
fn bits(a: IpAddr) -> (u128, u32, bool) {
    match a {
        IpAddr::V4(a) => (u32::from(a) as u128, 32, true),
        IpAddr::V6(a) => (u128::from(a), 128, false),
    }
}

fn in_net(net: &IpNet, a: IpAddr) -> bool {
    let (nb, width, nv4) = bits(net.addr());
    let (ab, _, av4) = bits(a);
    if nv4 != av4 {
        return false;
    }
    let len = net.prefix_len() as u32;
    if len == 0 {
        return true;
    }
    let shift = width - len;
    (nb >> shift) == (ab >> shift)
}

/// The first failing condition of a rule, straight from the written semantics.
fn reference_fail(r: &Rule, c: &Connection) -> Option<Cond> {
    let proto_ok = match &r.cond.protos {
        Some(list) => list.contains(&c.proto),
        // `ports` without a protocol means tcp and udp.
        None => r.cond.ports.is_none() || matches!(c.proto, Proto::Tcp | Proto::Udp),
    };
    let port_ok = match (&r.cond.ports, c.port) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(list), Some(p)) => list.iter().any(|x| x.first <= p && p <= x.last),
    };
    let to_ok = r.cond.to.as_ref().is_none_or(|nets| nets.iter().any(|n| in_net(n, c.dst)));
    let user_ok = r.cond.users.as_ref().is_none_or(|u| u.iter().any(|p| p.id == c.uid));
    let group_ok = r.cond.groups.as_ref().is_none_or(|g| g.iter().any(|p| p.id == c.gid));
    [(proto_ok, Cond::Proto), (port_ok, Cond::Port), (to_ok, Cond::To), (user_ok, Cond::User), (group_ok, Cond::Group)]
        .into_iter()
        .find(|(ok, _)| !ok)
        .map(|(_, c)| c)
}

fn reference(p: &Policy, c: &Connection) -> (Action, Decider, Vec<(usize, Cond)>) {
    let loopback = match c.dst {
        IpAddr::V4(a) => a.octets()[0] == 127,
        IpAddr::V6(a) => a.segments() == [0, 0, 0, 0, 0, 0, 0, 1],
    };
    if p.defaults.allow_loopback && loopback {
        return (Action::Allow, Decider::Loopback, vec![]);
    }
    let mut fails = vec![];
    for (i, r) in p.rules.iter().enumerate() {
        match reference_fail(r, c) {
            None => return (r.action, Decider::Rule(i), fails),
            Some(f) => fails.push((i, f)),
        }
    }
    (p.defaults.outbound, Decider::Default, fails)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn explain_agrees_with_the_reference(p in arb_policy(), c in arb_conn()) {
        let e = explain(&p, &c);
        let (verdict, decider, fails) = reference(&p, &c);
        prop_assert_eq!(e.verdict, verdict);
        prop_assert_eq!(e.decider, decider);
        let kinds: Vec<(usize, Cond)> = e.misses.iter().map(|(i, m)| (*i, miss_kind(m))).collect();
        prop_assert_eq!(kinds, fails);
        // Every miss prints as one non-empty line.
        for (_, m) in &e.misses {
            let s = m.to_string();
            prop_assert!(!s.is_empty() && !s.contains('\n'));
        }
    }
}
