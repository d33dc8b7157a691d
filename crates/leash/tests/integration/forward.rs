//! Forwarded traffic (issue 12, item 1): a namespace routed through the client stands in for a
//! container or VM. With the host at default deny, its new connections must be denied too (IPv4
//! and IPv6), rules with `from` decide for some workloads, traffic that is not from a workload
//! (and flows established before the apply) is left alone, and `check`/`explain` say so.

use crate::harness::*;
use lab::{Case, Lab, Outcome, WorkloadSpec};
use policy::Proto;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

const DST: &str = "192.0.2.10";
const DST6: &str = "2001:db8::10";
/// A container on docker0 (one of the default workload interfaces).
const CONTAINER: &str = "198.18.0.2";
const CONTAINER6: &str = "2001:db8:c0::2";
/// A VM on an interface no pattern names, inside `[forward] sources`.
const VM: &str = "198.18.9.5";
/// A routed network that is no workload at all: neither its interface nor its source counts.
const OTHER: &str = "198.18.10.5";
const PROBE: Duration = Duration::from_millis(700);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn case(proto: Proto, dst: &str, port: Option<u16>) -> Case {
    Case { proto, dst: ip(dst), port, uid: 0, gid: 0, name: None, cgroup: None }
}

fn tcp(dst: &str, port: u16) -> Case {
    case(Proto::Tcp, dst, Some(port))
}

/// A lab with echo servers on DST and DST6 (TCP 443 and 80, UDP 53) and the given workloads
/// routed through its client.
fn lab(workloads: &[(&str, &[&str])]) -> Lab {
    let specs: Vec<WorkloadSpec> = workloads
        .iter()
        .map(|(iif, srcs)| WorkloadSpec { iif: iif.to_string(), sources: srcs.iter().map(|s| ip(s)).collect() })
        .collect();
    Lab::with_workloads(&[ip(DST), ip(DST6)], &[443, 80], &[53], &specs).expect("lab")
}

fn expect(lab: &Lab, c: &Case, src: Option<&str>, want: &Outcome, what: &str) {
    let got = match src {
        Some(s) => lab.probe_from(c, ip(s), PROBE),
        None => lab.probe(c, PROBE),
    };
    if &got != want {
        let r = run_cmd(Some(lab.client()), "nft", &["list", "ruleset"], None);
        panic!("{what}: {c} from {src:?}: want {want:?}, got {got:?}\n{}", r.stdout);
    }
}

/// The issue's reproduction: the host is default-deny, and a namespace routed through it (a
/// container on docker0) must be denied as well, over IPv4 and IPv6, TCP and UDP. Before the
/// forward chain it connected.
#[test]
fn a_namespace_routed_through_a_default_deny_host_is_denied() {
    if !need_root("a_namespace_routed_through_a_default_deny_host_is_denied") {
        return;
    }
    let dir = TempDir::new("fwd-deny");
    let policy = format!(
        r#"version = 1
[defaults]
outbound = "deny"

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["{DST}", "{DST6}"]
user = "root"
"#
    );
    let path = dir.file("p.toml", &policy);
    let lab = lab(&[("docker0", &[CONTAINER, CONTAINER6])]);
    // Without a table the workload reaches the peer: the denials below are the policy's.
    for (dst, src) in [(DST, CONTAINER), (DST6, CONTAINER6)] {
        expect(&lab, &tcp(dst, 443), Some(src), &Outcome::Connected, "no table yet");
        expect(&lab, &case(Proto::Udp, dst, Some(53)), Some(src), &Outcome::Connected, "no table yet");
    }
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    // The host itself: root may reach 443, nothing else.
    expect(&lab, &tcp(DST, 443), None, &Outcome::Connected, "host, allowed by `web`");
    expect(&lab, &tcp(DST, 80), None, &Outcome::Refused, "host, default deny");
    // The workload: `web` needs a local socket (user root), which a forwarded packet has not; the
    // default denies, and with `reject` the workload fails fast like a local program. Every
    // case is probed before the test fails, so a failure shows both families.
    let mut wrong = Vec::new();
    let mut check = |c: Case, src: &str, want: Outcome| {
        let got = lab.probe_from(&c, ip(src), PROBE);
        if got != want {
            wrong.push(format!("{c} from {src}: want {want:?}, got {got:?}"));
        }
    };
    for (dst, src, unreachable) in [(DST, CONTAINER, "EHOSTUNREACH"), (DST6, CONTAINER6, "EACCES")] {
        check(tcp(dst, 443), src, Outcome::Refused);
        check(tcp(dst, 80), src, Outcome::Refused);
        check(case(Proto::Udp, dst, Some(53)), src, Outcome::Unreachable(unreachable.into()));
    }
    check(case(Proto::Icmp, DST, None), CONTAINER, Outcome::Unreachable("EHOSTUNREACH".into()));
    check(case(Proto::Icmpv6, DST6, None), CONTAINER6, Outcome::Unreachable("EACCES".into()));
    if !wrong.is_empty() {
        let r = run_cmd(Some(lab.client()), "nft", &["list", "ruleset"], None);
        panic!("forwarded connections at default deny:\n{}\n{}", wrong.join("\n"), r.stdout);
    }
    // The counters say it was the forward hook's default that denied them.
    let s = leash_in(lab.client(), &["status", "--json"]);
    assert!(s.ok(), "{s}");
}

/// `from` rules decide for the workloads they name; a workload a `from` rule does not name meets
/// the later rules and the default; forwarded traffic from elsewhere, and a flow established
/// before the apply, are left alone; `deny_with = "drop"` drops forwarded packets too.
#[test]
fn from_rules_decide_for_their_workloads_and_the_rest_is_left_alone() {
    if !need_root("from_rules_decide_for_their_workloads_and_the_rest_is_left_alone") {
        return;
    }
    let dir = TempDir::new("fwd-from");
    let lab = lab(&[("docker0", &[CONTAINER, CONTAINER6]), ("vm1", &[VM]), ("eth7", &[OTHER])]);
    let (_, docker) = lab.workloads().next().unwrap();
    assert_eq!(docker.iif, "docker0");
    let ns = lab.workloads().next().unwrap().0;
    // A flow opened under an earlier, open policy (so connection tracking already follows it,
    // as it does on any host with Docker): the container's long-lived connection. The
    // container's only IPv4 address is CONTAINER, so that is the source.
    let open = dir.file("open.toml", "version = 1\n[defaults]\noutbound = \"allow\"\n");
    let r = leash_in(lab.client(), &["apply", &open]);
    assert!(r.ok(), "{r}");
    let mut before =
        ns.run(|| TcpStream::connect_timeout(&SocketAddr::new(ip(DST), 80), PROBE)).expect("connect before the apply");
    let policy = format!(
        r#"version = 1
[defaults]
outbound = "deny"
deny_with = "drop"

[forward]
interfaces = ["docker0"]
sources = ["198.18.9.0/24"]

[[rule]]
name = "containers-web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["{DST}", "{DST6}"]
from = ["docker0"]

[[rule]]
name = "vm-dns"
action = "allow"
proto = "udp"
ports = [53]
to = ["{DST}"]
from = ["198.18.9.5"]
"#
    );
    let path = dir.file("p.toml", &policy);
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    for (dst, src) in [(DST, CONTAINER), (DST6, CONTAINER6)] {
        expect(&lab, &tcp(dst, 443), Some(src), &Outcome::Connected, "containers-web");
        expect(&lab, &tcp(dst, 80), Some(src), &Outcome::TimedOut, "container, default (drop)");
    }
    expect(&lab, &case(Proto::Udp, DST, Some(53)), Some(VM), &Outcome::Connected, "vm-dns");
    expect(&lab, &tcp(DST, 443), Some(VM), &Outcome::TimedOut, "vm: containers-web is for docker0 only");
    // Neither a workload interface nor a workload source: leash's forward chain lets it pass.
    expect(&lab, &tcp(DST, 80), Some(OTHER), &Outcome::Connected, "not a workload");
    // The host's own connections: the `from` rules are not for them.
    expect(&lab, &tcp(DST, 443), None, &Outcome::TimedOut, "host, default (drop)");
    // The flow from before the apply still carries data (established is accepted first).
    before.set_read_timeout(Some(PROBE)).unwrap();
    before.write_all(b"still-here").unwrap();
    let mut buf = [0u8; 10];
    before.read_exact(&mut buf).expect("the established flow keeps working");
    assert_eq!(&buf, b"still-here");
    // `mode = "ignore"`: no forward chain at all.
    let ignore = dir.file("i.toml", &format!("version = 1\n[defaults]\noutbound = \"deny\"\n[forward]\nmode = \"ignore\"\n[[rule]]\nname = \"web\"\naction = \"allow\"\nports = [443]\nto = [\"{DST}\"]\nuser = 0\n"));
    let r = leash_in(lab.client(), &["apply", &ignore]);
    assert!(r.ok(), "{r}");
    expect(&lab, &tcp(DST, 80), Some(CONTAINER), &Outcome::Connected, "mode = ignore");
    let listing = run_cmd(Some(lab.client()), "nft", &["list", "table", "inet", "leash"], None);
    assert!(!listing.stdout.contains("hook forward"), "{}", listing.stdout);
}

/// `leash test` runs `[[expect]] from` cases from workload namespaces, IPv4 and IPv6, with domain
/// rules: forwarded DNS is denied under `bypass = "redirect"` (a forward hook cannot redirect to
/// the host's loopback forwarder) while the host's is redirected, and a container reaches an
/// address the forwarder answered for an allowed name (the domain sets are shared).
#[test]
fn leash_test_runs_forwarded_expectations() {
    if !need_root("leash_test_runs_forwarded_expectations") {
        return;
    }
    let dir = TempDir::new("fwd-test");
    let policy = r#"version = 1
[defaults]
outbound = "deny"

[dns]
listen = ["127.0.0.1:5353"]
upstreams = ["192.0.2.53"]
bypass = "redirect"

[forward]
interfaces = ["br-*"]

[[rule]]
name = "api"
action = "allow"
proto = "tcp"
ports = [443]
to = ["api.example.test"]

[[expect]]
to = "api.example.test:443"
address = "192.0.2.80"
from = "198.18.0.2"
verdict = "allow"

[[expect]]
to = "api.example.test:443"
address = "2001:db8::80"
from = "2001:db8:c0::2"
iif = "br-apps"
verdict = "allow"

[[expect]]
to = "192.0.2.81:443"
from = "198.18.0.2"
verdict = "deny"

[[expect]]
to = "192.0.2.53:53"
proto = "udp"
from = "198.18.0.2"
verdict = "deny"

[[expect]]
to = "[2001:db8::53]:53"
proto = "tcp"
from = "2001:db8:c0::2"
iif = "br-apps"
verdict = "deny"

[[expect]]
to = "192.0.2.53:53"
proto = "udp"
verdict = "allow"

[[expect]]
# Not on a workload interface: not leash's to decide.
to = "192.0.2.81:443"
from = "198.18.7.7"
iif = "eth1"
verdict = "allow"
"#;
    let path = dir.file("p.toml", policy);
    let r = leash(&["test", &path, "--json"]);
    assert!(r.ok(), "{r}");
    let j = r.json();
    let rows = j["report"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7, "{r}");
    let froms: Vec<Option<&str>> = rows.iter().map(|r| r["from"].as_str()).collect();
    assert_eq!(froms[0], Some("198.18.0.2 via br-0"), "{r}");
    assert_eq!(froms[1], Some("2001:db8:c0::2 via br-apps"), "{r}");
    assert_eq!(froms[5], None, "{r}");
    let deciders: Vec<&str> = rows.iter().map(|r| r["decider"].as_str().unwrap()).collect();
    assert!(deciders[3].contains("DNS bypass"), "{r}");
    assert!(deciders[5].contains("redirect"), "{r}");
    assert!(deciders[6].contains("not governed"), "{r}");
}

/// `check` says which forwarded traffic the policy governs, and warns (without a `[forward]`
/// section) that rules matching by user, group or service never apply to it; `explain --from`
/// decides a forwarded connection the way the forward chain does.
#[test]
fn check_and_explain_speak_of_forwarded_traffic() {
    let dir = TempDir::new("fwd-check");
    let base = format!(
        "version = 1\n[defaults]\noutbound = \"deny\"\n\
         [[rule]]\nname = \"web\"\naction = \"allow\"\nproto = \"tcp\"\nports = [443]\nto = [\"{DST}\"]\nuser = \"root\"\n\
         [[rule]]\nname = \"dns\"\naction = \"allow\"\nproto = \"udp\"\nports = [53]\nto = [\"{DST}\"]\n"
    );
    let path = dir.file("p.toml", &base);
    let r = leash(&["check", &path]);
    assert!(r.ok(), "{r}");
    assert!(r.stdout.contains("note: forwarded traffic: new connections entering on docker0, br-*, podman*, virbr*, lxcbr*, cni*"), "{r}");
    assert!(r.stdout.contains("except `web`, which needs a local socket"), "{r}");
    assert!(r.stderr.contains("warning: rule `web` matches by user"), "{r}");
    assert!(r.stderr.contains("no local socket"), "{r}");
    let j = leash(&["check", &path, "--json"]).json();
    assert!(j["forwarded"].as_str().unwrap().contains("entering on docker0"), "{j}");
    // Explain: the host's root is allowed by `web`; a container is not (no socket), but gets DNS.
    let host = leash(&["explain", &path, "--to", &format!("{DST}:443")]);
    assert!(host.stdout.starts_with("ALLOW"), "{host}");
    let fwd = leash(&["explain", &path, "--to", &format!("{DST}:443"), "--from", CONTAINER]);
    assert!(fwd.stdout.starts_with("DENY: tcp to 192.0.2.10 port 443 forwarded from 198.18.0.2 via docker0"), "{fwd}");
    assert!(fwd.stdout.contains("no local socket to match `user`"), "{fwd}");
    let dns = leash(&["explain", &path, "--to", &format!("{DST}:53"), "--proto", "udp", "--from", CONTAINER, "--json"]);
    assert_eq!(dns.json()["verdict"], "allow", "{dns}");
    let other = leash(&["explain", &path, "--to", &format!("{DST}:80"), "--from", CONTAINER, "--iif", "eth0", "--json"]);
    assert_eq!(other.json()["decided_by"]["kind"], "not-governed", "{other}");
    let between = leash(&["explain", &path, "--to", &format!("{DST}:80"), "--from", CONTAINER, "--oif", "br-x", "--json"]);
    assert_eq!(between.json()["decided_by"]["kind"], "between-workloads", "{between}");
    // A forwarded connection has no user.
    let bad = leash(&["explain", &path, "--to", &format!("{DST}:443"), "--from", CONTAINER, "--user", "root"]);
    assert_eq!(bad.code, Some(2), "{bad}");
    // With [forward] the warning goes; mode = "ignore" is said plainly.
    let path = dir.file("q.toml", &format!("{base}[forward]\nmode = \"ignore\"\n"));
    let r = leash(&["check", &path]);
    assert!(r.ok() && !r.stderr.contains("warning"), "{r}");
    assert!(r.stdout.contains("note: forwarded traffic (containers, VMs, routed namespaces) is not governed"), "{r}");
}

/// A limited rule's host and workload connections share one budget: both hooks jump to the same
/// `limit_<rule>` chain, whose `ct count` counts them together.
#[test]
fn host_and_workloads_share_a_limited_rules_budget() {
    if !need_root("host_and_workloads_share_a_limited_rules_budget") {
        return;
    }
    let dir = TempDir::new("fwd-limit");
    let policy = format!(
        "version = 1\n[defaults]\noutbound = \"deny\"\n\
         [[rule]]\nname = \"web\"\naction = \"allow\"\nproto = \"tcp\"\nports = [443]\nto = [\"{DST}\"]\nmax_connections = 1\n"
    );
    let path = dir.file("p.toml", &policy);
    let lab = lab(&[("docker0", &[CONTAINER])]);
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    // The host holds the one connection the rule allows...
    let held = lab
        .client()
        .run(|| TcpStream::connect_timeout(&SocketAddr::new(ip(DST), 443), PROBE))
        .expect("the host's first connection is allowed");
    // ...so the container's is over the limit (and denied as deny_with says).
    expect(&lab, &tcp(DST, 443), Some(CONTAINER), &Outcome::Refused, "over the shared max_connections");
    drop(held);
}
