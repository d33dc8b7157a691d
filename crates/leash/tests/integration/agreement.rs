//! The strongest test: on random policies and random connections, the kernel's verdict (a real
//! connection through the applied ruleset in a namespace) is `explain`'s verdict.
//!
//! Each generated policy is written as TOML (so the parser is exercised too), loaded, and given one
//! `[[expect]]` per random connection whose verdict is what `explain` says. `lab::run_expectations`
//! then applies the compiled table in scratch namespaces, connects, and fails a row whenever the
//! kernel disagrees with the expectation (= explain).

use crate::harness::need_root;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// A fixed world so the generated policies resolve without the host's user database (they use
/// numeric ids, and `root`).
fn ids() -> policy::StaticResolver {
    policy::StaticResolver::new().user("root", 0, Some(0)).group("root", 0)
}

const NETS: [&str; 8] = [
    "192.0.2.0/25", "192.0.2.10", "198.51.100.0/24", "203.0.113.64/26", "203.0.113.7",
    "2001:db8::/64", "2001:db8:1::5", "2001:db8:2::/48",
];
const ADDRS: [&str; 8] = [
    "192.0.2.10", "192.0.2.200", "198.51.100.9", "203.0.113.70", "203.0.113.7",
    "2001:db8::9", "2001:db8:1::5", "2001:db8:2::1",
];
const PORTS: [u16; 5] = [22, 53, 443, 8080, 9999];
/// Domain patterns rules may name, and names connections may have been looked up as.
const DOMAINS: [&str; 4] = ["api.example.test", "*.cdn.example.test", "x.cdn.example.test", "*.example.test"];
const NAMES: [&str; 5] = ["api.example.test", "x.cdn.example.test", "y.z.cdn.example.test", "cdn.example.test", "other.test"];
const BYPASS: [&str; 3] = ["deny", "off", "redirect"];
const UIDS: [u32; 3] = [0, 4242, 65534];
const PROTOS: [&str; 4] = ["tcp", "udp", "icmp", "icmpv6"];

#[derive(Debug, Clone)]
struct GenRule {
    allow: bool,
    protos: Option<Vec<usize>>,
    ports: Option<Vec<(usize, bool)>>,
    to: Option<Vec<usize>>,
    users: Option<Vec<usize>>,
    groups: Option<Vec<usize>>,
    domains: Vec<usize>,
    allow_private: bool,
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    (
        any::<bool>(),
        prop::option::of(prop::collection::vec(0..PROTOS.len(), 1..3)),
        prop::option::of(prop::collection::vec((0..PORTS.len(), any::<bool>()), 1..3)),
        prop::option::of(prop::collection::vec(0..NETS.len(), 1..4)),
        prop::option::weighted(0.3, prop::collection::vec(0..UIDS.len(), 1..3)),
        prop::option::weighted(0.2, prop::collection::vec(0..UIDS.len(), 1..2)),
        prop::option::weighted(0.5, prop::collection::vec(0..DOMAINS.len(), 1..3)),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(allow, protos, ports, to, users, groups, domains, allow_private)| {
            // `ports` only goes with tcp/udp; drop icmp from the list (or the ports) to stay valid.
            let protos = match (&protos, &ports) {
                (Some(p), Some(_)) => {
                    let p: Vec<usize> = p.iter().copied().filter(|&i| i < 2).collect();
                    if p.is_empty() { None } else { Some(p) }
                }
                _ => protos,
            };
            GenRule { allow, protos, ports, to, users, groups, domains: domains.unwrap_or_default(), allow_private }
        })
}

#[derive(Debug, Clone)]
struct GenConn {
    proto: usize,
    addr: usize,
    port: usize,
    uid: usize,
    gid: usize,
    /// The name the address was looked up as, with the kind of address it resolved to.
    name: Option<(usize, usize)>,
}

fn gen_conn() -> impl Strategy<Value = GenConn> {
    (
        0..PROTOS.len(),
        0..ADDRS.len(),
        0..PORTS.len(),
        0..UIDS.len(),
        0..UIDS.len(),
        prop::option::weighted(0.5, (0..NAMES.len(), 0..6usize)),
    )
        .prop_map(|(proto, addr, port, uid, gid, name)| GenConn { proto, addr, port, uid, gid, name })
}

/// The address a looked-up connection goes to. Each such connection gets an address of its own
/// (derived from its index), because the forwarder puts an address into the sets of the name it
/// answered: two names sharing one address would share their rules, which `explain` (one
/// connection, one name) does not model. The kinds cover a documentation address no rule lists,
/// one inside a rule's network, IPv6 of both sorts, and private ones (the rebinding guard).
fn named_addr(kind: usize, i: usize) -> std::net::IpAddr {
    let i = i as u8;
    match kind {
        0 => std::net::Ipv4Addr::new(192, 0, 2, 160 + i).into(),
        1 => std::net::Ipv4Addr::new(198, 51, 100, 160 + i).into(),
        2 => std::net::Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1 + u16::from(i)).into(),
        3 => std::net::Ipv4Addr::new(10, 0, 0, 1 + i).into(),
        5 => std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1 + u16::from(i)).into(),
        _ => std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100 + u16::from(i)).into(),
    }
}

fn policy_text(rules: &[GenRule], default_allow: bool, drop: bool, bypass: usize) -> String {
    let q = |v: &[String]| format!("[{}]", v.join(", "));
    let mut s = format!(
        "version = 1\n[defaults]\noutbound = \"{}\"\ndeny_with = \"{}\"\nlog_denied = false\n",
        if default_allow { "allow" } else { "deny" },
        if drop { "drop" } else { "reject" }
    );
    // The forwarder listens on IPv4 loopback only, so IPv6 DNS is denied even in redirect mode.
    s += &format!(
        "[dns]\nupstreams = [\"192.0.2.53\"]\nlisten = [\"127.0.0.1:5353\"]\nbypass = \"{}\"\n",
        BYPASS[bypass]
    );
    for (i, r) in rules.iter().enumerate() {
        s += &format!("\n[[rule]]\nname = \"r{i}\"\naction = \"{}\"\n", if r.allow { "allow" } else { "deny" });
        if let Some(p) = &r.protos {
            s += &format!("proto = {}\n", q(&p.iter().map(|&i| format!("\"{}\"", PROTOS[i])).collect::<Vec<_>>()));
        }
        if let Some(p) = &r.ports {
            let items: Vec<String> = p
                .iter()
                .map(|&(i, range)| if range { format!("\"{}-{}\"", PORTS[i], PORTS[i] + 100) } else { PORTS[i].to_string() })
                .collect();
            s += &format!("ports = {}\n", q(&items));
        }
        let mut to: Vec<String> = r.to.iter().flatten().map(|&i| format!("\"{}\"", NETS[i])).collect();
        to.extend(r.domains.iter().map(|&i| format!("\"{}\"", DOMAINS[i])));
        if r.to.is_some() || !r.domains.is_empty() {
            s += &format!("to = {}\n", q(&to));
        }
        if r.allow_private {
            s += "allow_private = true\n";
        }
        if let Some(u) = &r.users {
            s += &format!("user = {}\n", q(&u.iter().map(|&i| UIDS[i].to_string()).collect::<Vec<_>>()));
        }
        if let Some(g) = &r.groups {
            s += &format!("group = {}\n", q(&g.iter().map(|&i| UIDS[i].to_string()).collect::<Vec<_>>()));
        }
    }
    s
}

/// Appends one `[[expect]]` per connection with the verdict `explain` gives it.
fn with_expectations(text: &str, conns: &[GenConn]) -> String {
    let (p, diags) = policy::load(text, &ids());
    let p = p.unwrap_or_else(|| panic!("generated policy invalid: {diags:?}\n{text}"));
    let mut s = text.to_string();
    for (i, c) in conns.iter().enumerate() {
        let mut proto = PROTOS[c.proto];
        let dst: std::net::IpAddr = match c.name {
            Some((_, kind)) => named_addr(kind, i),
            None => ADDRS[c.addr].parse().unwrap(),
        };
        let name = c.name.map(|(n, _)| NAMES[n].to_string());
        // ICMP goes with IPv4 and ICMPv6 with IPv6.
        if proto == "icmp" && dst.is_ipv6() {
            proto = "icmpv6";
        } else if proto == "icmpv6" && dst.is_ipv4() {
            proto = "icmp";
        }
        let proto_v = policy::Proto::parse(proto).unwrap();
        let port = proto_v.has_ports().then_some(PORTS[c.port]);
        let conn = policy::Connection { proto: proto_v, dst, port, uid: UIDS[c.uid], gid: UIDS[c.gid], name: name.clone(), cgroup: None, at: None };
        let verdict = policy::explain(&p, &conn).verdict;
        let to = match (&name, dst, port) {
            (Some(n), _, Some(port)) => format!("{n}:{port}\"\naddress = \"{dst}"),
            (Some(n), _, None) => format!("{n}\"\naddress = \"{dst}"),
            (None, std::net::IpAddr::V6(a), Some(port)) => format!("[{a}]:{port}"),
            (None, a, Some(port)) => format!("{a}:{port}"),
            (None, a, None) => a.to_string(),
        };
        s += &format!(
            "\n[[expect]]\nto = \"{to}\"\nproto = \"{proto}\"\nuser = {}\ngroup = {}\nverdict = \"{}\"\n",
            conn.uid,
            conn.gid,
            verdict.as_str()
        );
    }
    s
}

#[test]
fn explain_agrees_with_the_kernel_on_random_policies() {
    if !need_root("explain_agrees_with_the_kernel_on_random_policies") {
        return;
    }
    let cases: u32 = std::env::var("LEASH_AGREEMENT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (
        prop::collection::vec(gen_rule(), 0..6),
        any::<bool>(),
        prop::bool::weighted(0.25),
        prop::collection::vec(gen_conn(), 1..12),
        0..BYPASS.len(),
    );
    let total = std::cell::Cell::new(0usize);
    runner
        .run(&strategy, |(rules, default_allow, drop, conns, bypass)| {
            let text = with_expectations(&policy_text(&rules, default_allow, drop, bypass), &conns);
            let (p, diags) = policy::load(&text, &ids());
            let p = p.unwrap_or_else(|| panic!("{diags:?}"));
            let table = ruleset::compile(&p, &Default::default());
            let opts = lab::RunOptions { timeout: std::time::Duration::from_millis(300), ..Default::default() };
            let report = lab::run_expectations(&p, &table, &opts).expect("lab");
            total.set(total.get() + report.rows.len());
            let bad: Vec<String> = report
                .rows
                .iter()
                .filter(|r| r.kernel != r.explain)
                .map(|r| format!("{}: explain {} ({}), kernel {} ({})", r.case, r.explain.as_str(), r.decider, r.kernel.as_str(), r.outcome.describe()))
                .collect();
            prop_assert!(
                bad.is_empty(),
                "kernel and explain disagree:\n{}\n--- policy ---\n{text}\n--- ruleset ---\n{}",
                bad.join("\n"),
                ruleset::render::nft_text(&table)
            );
            Ok(())
        })
        .unwrap();
    eprintln!("agreement: {cases} random policies, {} real connections, kernel == explain for all", total.get());
}
