//! `leash dns` against a real upstream (dnsmasq, serving reserved test names) in scratch
//! namespaces: addresses are in the kernel's sets before the answer arrives, and only then.

use crate::harness::*;
use kernel::netns::NetNs;
use lab::{Case, Lab, Outcome};
use policy::Proto;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the upstream dnsmasq answers (in the lab's peer namespace).
const UPSTREAM: &str = "203.0.113.53";
/// A peer address with nothing listening on port 53: ICMP port unreachable.
const DEAD_UPSTREAM: &str = "203.0.113.54";
/// Where the forwarder listens in the client namespace.
const LISTEN_PORT: u16 = 5353;
/// The forwarder's user (`[dns] user`): a uid no account on the host has, so the tests need no
/// user created.
pub const FORWARDER_UID: u32 = 64653;

/// Records dnsmasq serves: name, addresses, TTL.
const HOSTS: &[(&str, &[&str], u32)] = &[
    ("api.example.test", &["192.0.2.10", "2001:db8::10"], 300),
    ("other.example.test", &["198.51.100.20"], 300),
    ("backend.example.test", &["192.0.2.40"], 300),
    ("a.cdn.example.test", &["192.0.2.30"], 300),
    ("cdn.example.test", &["192.0.2.31"], 300),
    ("rebind.cdn.example.test", &["10.0.0.1"], 300),
    ("short.example.test", &["192.0.2.11"], 1),
    ("ads.example.test", &["192.0.2.66"], 300),
];
/// CNAMEs dnsmasq serves: alias -> target.
const CNAMES: &[(&str, &str)] = &[("pay.example.test", "backend.example.test")];

fn policy_text(bypass: &str, upstream: &str) -> String {
    format!(
        r#"version = 1
[defaults]
outbound = "deny"
deny_with = "reject"

[dns]
listen = ["127.0.0.1:{LISTEN_PORT}", "[::1]:{LISTEN_PORT}"]
upstreams = ["{upstream}"]
min_ttl = 1
max_ttl = 3600
grace = 1
timeout_ms = 700
bypass = "{bypass}"
user = {FORWARDER_UID}

[[rule]]
name = "ads"
action = "deny"
to = ["ads.example.test"]

[[rule]]
name = "api"
action = "allow"
proto = "tcp"
ports = [443]
to = ["api.example.test", "pay.example.test", "short.example.test"]

[[rule]]
name = "cdn"
action = "allow"
proto = "tcp"
ports = [443]
to = ["*.cdn.example.test"]
"#
    )
}

/// A process we started, ended by its pid on drop; its stderr is kept for failure messages.
struct Daemon {
    name: &'static str,
    child: Child,
    stderr: std::path::PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, ns: &NetNs, program: &str, args: &[&str], dir: &TempDir) -> Daemon {
        let stderr = dir.0.join(format!("{name}.stderr"));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Daemon { name, child, stderr }
    }

    fn log(&self) -> String {
        format!("\n===== {} stderr:\n{}", self.name, std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq as the upstream resolver, authoritative for the test names, in `ns` on `addr`.
fn start_dnsmasq(ns: &NetNs, addr: &str, dir: &TempDir, hosts_file: Option<&str>) -> Daemon {
    start_dnsmasq_on(ns, addr, 53, dir, hosts_file)
}

/// [`start_dnsmasq`] on another port.
fn start_dnsmasq_on(ns: &NetNs, addr: &str, port: u16, dir: &TempDir, hosts_file: Option<&str>) -> Daemon {
    let mut args: Vec<String> = [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        "--log-facility=-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--listen-address={addr}"));
    args.push(format!("--port={port}"));
    for (name, addrs, ttl) in HOSTS {
        args.push(format!("--host-record={name},{},{ttl}", addrs.join(",")));
    }
    for (alias, target) in CNAMES {
        args.push(format!("--cname={alias},{target},300"));
    }
    if let Some(f) = hosts_file {
        args.push(format!("--addn-hosts={f}"));
        args.push("--local-ttl=300".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::spawn("dnsmasq", ns, "dnsmasq", &args, dir);
    wait_for_dns(ns, addr, port, &d);
    d
}

/// Starts `leash dns` on the policy in the client namespace and waits until it answers.
fn start_forwarder(ns: &NetNs, policy: &str, dir: &TempDir) -> Daemon {
    let d = Daemon::spawn("leash dns", ns, leash_bin(), &["dns", policy], dir);
    wait_for_dns(ns, "127.0.0.1", LISTEN_PORT, &d);
    d
}

fn wait_for_dns(ns: &NetNs, server: &str, port: u16, d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if dig(ns, server, port, "api.example.test", "A").status.is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} did not answer on {server}:{port} within 10 s{}", d.name, d.log());
}

struct Dig {
    /// NOERROR, NXDOMAIN, SERVFAIL...; `None` when no answer came.
    status: Option<String>,
    /// Addresses of the A/AAAA records of the answer.
    addrs: Vec<IpAddr>,
    run: Run,
}

fn dig(ns: &NetNs, server: &str, port: u16, name: &str, qtype: &str) -> Dig {
    let run = run_cmd(
        Some(ns),
        "dig",
        &["+tries=1", "+time=3", "+noall", "+answer", "+comments", "-p", &port.to_string(), &format!("@{server}"), name, qtype],
        None,
    );
    let status = run
        .stdout
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string());
    let addrs = run
        .stdout
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && (f[3] == "A" || f[3] == "AAAA")).then(|| f[4].parse().ok()).flatten()
        })
        .collect();
    Dig { status, addrs, run }
}

fn tcp443(dst: &str) -> Case {
    Case { proto: Proto::Tcp, dst: dst.parse().unwrap(), port: Some(443), uid: 0, gid: 0, name: None, cgroup: None }
}

/// A lab whose peer owns every test address (echo on TCP 443) and the upstream's address.
fn dns_lab() -> Lab {
    let mut dsts: Vec<IpAddr> = HOSTS.iter().flat_map(|(_, a, _)| a.iter()).map(|a| a.parse().unwrap()).collect();
    dsts.push(UPSTREAM.parse().unwrap());
    dsts.push(DEAD_UPSTREAM.parse().unwrap());
    // 853 answered too: a DNS-over-TLS connection that got through would connect.
    Lab::new(&dsts, &[443, 853], &[]).expect("lab")
}

/// Fields drop in declaration order: the daemons are killed before their namespaces go.
struct Setup {
    forwarder: Option<Daemon>,
    upstream: Daemon,
    lab: Lab,
    dir: TempDir,
}

impl Setup {
    fn new(bypass: &str, upstream: &str) -> Setup {
        Setup::with_policy(&policy_text(bypass, upstream), upstream)
    }

    /// Like [`Setup::new`], with the policy's text given.
    fn with_policy(text: &str, upstream: &str) -> Setup {
        let lab = dns_lab();
        let dir = TempDir::new("dns");
        let upstream_d = start_dnsmasq(lab.peer(), UPSTREAM, &dir, None);
        let path = dir.file("p.toml", text);
        let r = leash_in(lab.client(), &["apply", &path]);
        assert!(r.ok(), "{r}");
        if upstream == UPSTREAM {
            // The exact names resolve once at apply time.
            assert!(r.stdout.contains("warm-up: 4 of 4 exact domain names resolved"), "{r}");
        } else {
            assert!(r.stderr.contains("warning: warm-up"), "a dead upstream is reported, not fatal{r}");
        }
        let forwarder = Some(start_forwarder(lab.client(), &path, &dir));
        Setup { forwarder, upstream: upstream_d, lab, dir }
    }

    fn logs(&self) -> String {
        format!("{}{}", self.forwarder.as_ref().map(|f| f.log()).unwrap_or_default(), self.upstream.log())
    }

    fn q(&self, name: &str, qtype: &str) -> Dig {
        dig(self.lab.client(), "127.0.0.1", LISTEN_PORT, name, qtype)
    }

    fn connect(&self, dst: &str) -> Outcome {
        self.lab.probe(&tcp443(dst), Duration::from_secs(1))
    }
}

#[test]
fn answered_addresses_are_allowed_at_once_and_others_stay_blocked() {
    if !need_root("answered_addresses_are_allowed_at_once_and_others_stay_blocked") {
        return;
    }
    let s = Setup::new("deny", UPSTREAM);
    let logs = || s.logs();
    // Before any lookup a wildcard's address is blocked like any other (exact names were
    // warmed up by the apply; see the warm-up test).
    assert_eq!(s.connect("192.0.2.30"), Outcome::Refused, "{}", logs());

    let d = s.q("api.example.test", "A");
    assert_eq!(d.status.as_deref(), Some("NOERROR"), "{}{}", d.run, logs());
    assert_eq!(d.addrs, vec!["192.0.2.10".parse::<IpAddr>().unwrap()], "{}", d.run);
    assert_eq!(s.connect("192.0.2.10"), Outcome::Connected, "{}", logs());

    // AAAA: the IPv6 set.
    let d = s.q("api.example.test", "AAAA");
    assert_eq!(d.addrs, vec!["2001:db8::10".parse::<IpAddr>().unwrap()], "{}", d.run);
    assert_eq!(s.connect("2001:db8::10"), Outcome::Connected, "{}", logs());

    // A name no rule lists resolves, but its address stays blocked.
    let d = s.q("other.example.test", "A");
    assert_eq!(d.addrs, vec!["198.51.100.20".parse::<IpAddr>().unwrap()], "{}", d.run);
    assert_eq!(s.connect("198.51.100.20"), Outcome::Refused, "{}", logs());

    // A CNAME chain: the rule names the alias; the address at the end of the chain is allowed.
    let d = s.q("pay.example.test", "A");
    assert!(d.addrs.contains(&"192.0.2.40".parse().unwrap()), "{}", d.run);
    assert_eq!(s.connect("192.0.2.40"), Outcome::Connected, "{}", logs());

    // Wildcards cover subdomains (looked up, the address is allowed at once), not the apex.
    assert_eq!(s.q("a.cdn.example.test", "A").addrs, vec!["192.0.2.30".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.connect("192.0.2.30"), Outcome::Connected, "{}", logs());
    assert_eq!(s.q("cdn.example.test", "A").addrs, vec!["192.0.2.31".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.connect("192.0.2.31"), Outcome::Refused, "{}", logs());

    // An unconditional deny rule on a name: NXDOMAIN.
    let d = s.q("ads.example.test", "A");
    assert_eq!(d.status.as_deref(), Some("NXDOMAIN"), "{}{}", d.run, logs());
    assert_eq!(s.connect("192.0.2.66"), Outcome::Refused);

    // The kernel holds exactly the answered addresses, with timeouts.
    let (_, sets, _) = nft_raw(s.lab.client(), &["list", "set", "inet", "leash", "r_api_d4"], None);
    assert!(sets.contains("192.0.2.10") && sets.contains("192.0.2.40"), "{sets}");
    assert!(sets.contains("timeout"), "{sets}");
    assert!(!sets.contains("198.51.100.20"), "{sets}");
    root_has_no_leash_table();
}

#[test]
fn apply_warms_up_exact_names_so_they_work_before_any_lookup() {
    if !need_root("apply_warms_up_exact_names_so_they_work_before_any_lookup") {
        return;
    }
    let lab = dns_lab();
    let dir = TempDir::new("warm");
    let _upstream = start_dnsmasq(lab.peer(), UPSTREAM, &dir, None);
    let path = dir.file("p.toml", &policy_text("deny", UPSTREAM));
    let r = leash_in(lab.client(), &["apply", "--json", &path]);
    assert!(r.ok(), "{r}");
    let w = &r.json()["warm_up"];
    assert_eq!((w["names"].as_u64(), w["resolved"].as_u64()), (Some(4), Some(4)), "{r}");
    // api (v4 + v6), pay (its CNAME target's address) and short: 4 elements. `ads` is refused
    // outright (NXDOMAIN), so its addresses go nowhere.
    assert_eq!(w["elements"].as_u64(), Some(4), "{r}");
    // No forwarder runs, yet the exact names' addresses are allowed...
    assert_eq!(lab.probe(&tcp443("192.0.2.10"), Duration::from_secs(1)), Outcome::Connected);
    assert_eq!(lab.probe(&tcp443("2001:db8::10"), Duration::from_secs(1)), Outcome::Connected);
    assert_eq!(lab.probe(&tcp443("192.0.2.40"), Duration::from_secs(1)), Outcome::Connected);
    // ...and nothing else is.
    assert_eq!(lab.probe(&tcp443("192.0.2.30"), Duration::from_secs(1)), Outcome::Refused);
    assert_eq!(lab.probe(&tcp443("198.51.100.20"), Duration::from_secs(1)), Outcome::Refused);
}

#[test]
fn re_applying_keeps_the_answers_and_the_forwarder_re_inserts() {
    if !need_root("re_applying_keeps_the_answers_and_the_forwarder_re_inserts") {
        return;
    }
    let s = Setup::new("deny", UPSTREAM);
    // A wildcard name: not warmed up by apply, only the forwarder's answer allows it.
    assert_eq!(s.q("a.cdn.example.test", "A").addrs, vec!["192.0.2.30".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.connect("192.0.2.30"), Outcome::Connected, "{}", s.logs());
    // Re-applying replaces the table in one transaction; the answer is carried into it.
    let path = s.dir.0.join("p.toml");
    let r = leash_in(s.lab.client(), &["apply", "--json", path.to_str().unwrap()]);
    assert!(r.ok(), "{r}");
    assert!(r.json()["carried_over"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(s.connect("192.0.2.30"), Outcome::Connected, "the re-apply cut off a cached answer{}", s.logs());
    let (_, set, _) = nft_raw(s.lab.client(), &["list", "set", "inet", "leash", "r_cdn_d4"], None);
    assert!(set.contains("192.0.2.30"), "{set}");
    // The forwarder notices the new table and says it will re-insert.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.logs().contains("re-applied") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.logs().contains("re-applied"), "{}", s.logs());
}

/// Issue 12, item 3: an answer is carried into the new table only when the new policy still puts
/// its name into that set. The kernel's element holds the name looked up (its comment), so the
/// apply can tell; here the wildcard that admitted `a.cdn.example.test` is gone.
#[test]
fn a_re_apply_without_the_wildcard_leaves_its_answers_behind() {
    if !need_root("a_re_apply_without_the_wildcard_leaves_its_answers_behind") {
        return;
    }
    let mut s = Setup::new("deny", UPSTREAM);
    assert_eq!(s.q("a.cdn.example.test", "A").addrs, vec!["192.0.2.30".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.connect("192.0.2.30"), Outcome::Connected, "{}", s.logs());
    let (_, set, _) = nft_raw(s.lab.client(), &["list", "set", "inet", "leash", "r_cdn_d4"], None);
    assert!(set.contains("192.0.2.30") && set.contains("comment \"a.cdn.example.test\""), "{set}");
    // Only the table decides from here on: no forwarder to put anything back.
    drop(s.forwarder.take());
    let narrowed = policy_text("deny", UPSTREAM).replace(r#"to = ["*.cdn.example.test"]"#, r#"to = ["cdn.example.test"]"#);
    let path = s.dir.file("p2.toml", &narrowed);
    let r = leash_in(s.lab.client(), &["apply", "--json", &path]);
    assert!(r.ok(), "{r}");
    let c = &r.json()["carry_over"];
    assert!(c["not_admitted"].as_u64() >= Some(1), "{r}");
    // The api rule's warmed-up answers are still admitted and kept.
    assert!(c["kept"].as_u64() >= Some(1), "{r}");
    let (_, set, _) = nft_raw(s.lab.client(), &["list", "set", "inet", "leash", "r_cdn_d4"], None);
    assert!(!set.contains("192.0.2.30"), "the removed wildcard's answer was carried over: {set}");
    assert_eq!(s.connect("192.0.2.30"), Outcome::Refused);
    let e = leash_in(s.lab.client(), &["explain", &path, "--to", "192.0.2.30:443", "--proto", "tcp", "--name", "a.cdn.example.test"]);
    assert!(e.stdout.contains("DENY"), "{e}");
}

#[test]
fn conns_sees_connections_a_domain_rule_allows() {
    if !need_root("conns_sees_connections_a_domain_rule_allows") {
        return;
    }
    let s = Setup::new("deny", UPSTREAM);
    assert_eq!(s.q("a.cdn.example.test", "A").addrs, vec!["192.0.2.30".parse::<IpAddr>().unwrap()]);
    // Hold a connection open while conns looks.
    let held = s.lab.client().run(|| std::net::TcpStream::connect_timeout(&"192.0.2.30:443".parse().unwrap(), Duration::from_secs(2)));
    let held = held.unwrap_or_else(|e| panic!("connect: {e}{}", s.logs()));
    let r = leash_in(s.lab.client(), &["conns", "--json", "--tcp", "--state", "connected"]);
    assert!(r.ok(), "{r}");
    let j = r.json();
    let c = j["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["remote"] == "192.0.2.30:443")
        .unwrap_or_else(|| panic!("no connection to 192.0.2.30:443{r}"));
    // The kernel's set holds the answer, so conns shows the domain rule, not the default.
    assert_eq!((c["verdict"].as_str(), c["rule"].as_str()), (Some("allow"), Some("cdn")), "{r}");
    // The name that was looked up, as the kernel's element records it, not the rule's pattern.
    assert_eq!(c["host"], "a.cdn.example.test", "{r}");
    drop(held);
}

#[test]
fn rebinding_answers_are_stripped_and_not_allowed() {
    if !need_root("rebinding_answers_are_stripped_and_not_allowed") {
        return;
    }
    let s = Setup::new("deny", UPSTREAM);
    let d = s.q("rebind.cdn.example.test", "A");
    assert_eq!(d.status.as_deref(), Some("NOERROR"), "{}{}", d.run, s.logs());
    assert!(d.addrs.is_empty(), "a private answer for a public name must not reach the client{}", d.run);
    let (_, set, _) = nft_raw(s.lab.client(), &["list", "set", "inet", "leash", "r_cdn_d4"], None);
    assert!(!set.contains("10.0.0.1"), "{set}");
    assert!(s.logs().contains("rebind"), "the guard logs what it kept out{}", s.logs());
}

#[test]
fn elements_expire_with_the_ttl_and_a_new_answer_refreshes_them() {
    if !need_root("elements_expire_with_the_ttl_and_a_new_answer_refreshes_them") {
        return;
    }
    let s = Setup::new("deny", UPSTREAM);
    // TTL 1 s, min_ttl 1 s, grace 1 s: the element lives 2 s.
    assert_eq!(s.q("short.example.test", "A").addrs, vec!["192.0.2.11".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.connect("192.0.2.11"), Outcome::Connected, "{}", s.logs());
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(s.connect("192.0.2.11"), Outcome::Refused, "the element outlived its timeout{}", s.logs());
    // Looking the name up again (its cached answer has run out too) brings it back.
    assert_eq!(s.q("short.example.test", "A").addrs, vec!["192.0.2.11".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.connect("192.0.2.11"), Outcome::Connected, "{}", s.logs());
}

/// Issue 12, item 7: a new answer for an address the set still holds must extend its life in the
/// kernel, on every kernel. Before 6.10 a plain re-add keeps the old expiry while the forwarder
/// records the new one, so the address drops out early and the connect fails; the writer finds
/// that out with its probe and deletes and adds instead. (The kernel-matrix job runs this on 6.1.)
#[test]
fn a_new_answer_extends_an_element_the_kernel_still_holds() {
    if !need_root("a_new_answer_extends_an_element_the_kernel_still_holds") {
        return;
    }
    // TTL 1 s, min_ttl 1 s, grace 4 s: each answer gives the element 5 s from then. The apply's
    // warm-up already put the address in (5 s from then); the forwarder's answer, 2 s later,
    // must extend it. Seconds, so that this holds in the kernel-matrix VM too, where every
    // command takes a few hundred milliseconds.
    let s = Setup::with_policy(&policy_text("deny", UPSTREAM).replace("grace = 1", "grace = 4"), UPSTREAM);
    std::thread::sleep(Duration::from_secs(2));
    let before = Instant::now();
    assert_eq!(s.q("short.example.test", "A").addrs, vec!["192.0.2.11".parse::<IpAddr>().unwrap()]);
    // The warm-up's element has ended by now (at most 3 s after `before`); the answer's has a
    // second left.
    std::thread::sleep(Duration::from_millis(4000).saturating_sub(before.elapsed()));
    assert!(before.elapsed() < Duration::from_millis(4600), "too slow to tell: {:?}", before.elapsed());
    assert_eq!(
        s.connect("192.0.2.11"),
        Outcome::Connected,
        "{:?} after the answer, its address is no longer in the set{}",
        before.elapsed(),
        s.logs()
    );
}

#[test]
fn direct_queries_to_other_resolvers_are_denied_or_redirected() {
    if !need_root("direct_queries_to_other_resolvers_are_denied_or_redirected") {
        return;
    }
    // deny: asking the upstream directly fails; the forwarder itself still gets through.
    let s = Setup::new("deny", UPSTREAM);
    let d = dig(s.lab.client(), UPSTREAM, 53, "api.example.test", "A");
    assert_eq!(d.status, None, "a direct query must not be answered{}", d.run);
    assert_eq!(s.q("api.example.test", "A").status.as_deref(), Some("NOERROR"), "{}", s.logs());
    drop(s);

    // redirect: the direct query is answered by the forwarder, which fills the set.
    let s = Setup::new("redirect", UPSTREAM);
    assert_eq!(s.connect("192.0.2.30"), Outcome::Refused);
    let d = dig(s.lab.client(), "198.51.100.20", 53, "a.cdn.example.test", "A");
    assert_eq!(d.status.as_deref(), Some("NOERROR"), "{}{}", d.run, s.logs());
    assert_eq!(s.connect("192.0.2.30"), Outcome::Connected, "{}", s.logs());
    // DNS over TLS cannot be redirected: denied.
    let dot = Case { port: Some(853), ..tcp443(UPSTREAM) };
    assert_eq!(s.lab.probe(&dot, Duration::from_secs(1)), Outcome::Refused);
}

#[test]
fn a_dead_upstream_gives_servfail_quickly() {
    if !need_root("a_dead_upstream_gives_servfail_quickly") {
        return;
    }
    let s = Setup::new("deny", DEAD_UPSTREAM);
    let start = Instant::now();
    let d = s.q("api.example.test", "A");
    assert_eq!(d.status.as_deref(), Some("SERVFAIL"), "{}{}", d.run, s.logs());
    // ICMP port unreachable fails over at once; at worst the 700 ms try timeout.
    assert!(start.elapsed() < Duration::from_millis(2500), "took {:?}", start.elapsed());
    // Garbage on the forwarder's port changes nothing: it still answers.
    s.lab.client().run(|| {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for junk in [&b""[..], b"\x00", &[0xffu8; 12][..], &[0u8; 600][..]] {
            sock.send_to(junk, SocketAddr::from(([127, 0, 0, 1], LISTEN_PORT))).unwrap();
        }
    });
    assert_eq!(s.q("api.example.test", "A").status.as_deref(), Some("SERVFAIL"), "{}", s.logs());
}

/// Number of resolve-then-connect rounds of the race test.
const RACE_ROUNDS: usize = 10_000;

#[test]
fn ten_thousand_resolve_then_connect_rounds_never_lose_the_race() {
    if !need_root("ten_thousand_resolve_then_connect_rounds_never_lose_the_race") {
        return;
    }
    let lab = dns_lab();
    let dir = TempDir::new("race");
    // Every round resolves a new name to a new address, so every connect needs a fresh element.
    let mut hosts = String::new();
    for i in 0..RACE_ROUNDS {
        hosts.push_str(&format!("2001:db8:1::{:x} n{i}.race.example.test\n", i + 1));
    }
    let hosts_path = dir.file("race.hosts", &hosts);
    let upstream = start_dnsmasq(lab.peer(), UPSTREAM, &dir, Some(&hosts_path));
    // The peer accepts any address of 2001:db8:1::/112 (a local route), reached through one
    // gateway so that the client needs no neighbour entry per address.
    let ip = |ns: &NetNs, args: &[&str]| {
        let r = run_cmd(Some(ns), "ip", args, None);
        assert!(r.ok(), "{r}");
    };
    ip(lab.peer(), &["-6", "route", "add", "local", "2001:db8:1::/112", "dev", "lo"]);
    ip(lab.client(), &["-6", "route", "add", "2001:db8:1::/112", "via", "2001:db8::10"]);
    let listener = lab.peer().run(|| std::net::TcpListener::bind("[::]:8443").unwrap());
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let acceptor = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((c, _)) => drop(c),
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });

    let policy = format!(
        "{}\n[[rule]]\nname = \"race\"\naction = \"allow\"\nproto = \"tcp\"\nports = [8443]\nto = [\"*.race.example.test\"]\n",
        policy_text("deny", UPSTREAM)
    );
    let path = dir.file("p.toml", &policy);
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    let forwarder = start_forwarder(lab.client(), &path, &dir);

    let (failures, elapsed) = lab.client().run(|| race_rounds(RACE_ROUNDS));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    acceptor.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {RACE_ROUNDS} connects failed right after the answer (first: {:?}) in {elapsed:?}{}{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        forwarder.log(),
        upstream.log()
    );
    eprintln!("race: {RACE_ROUNDS} resolve-then-connect rounds in {elapsed:?}, 0 failed");
}

/// Resolves `n<i>.race.example.test` (AAAA) through the forwarder and connects to the answer at
/// once, for every round; returns the failed rounds. Runs in the client namespace.
fn race_rounds(rounds: usize) -> (Vec<String>, Duration) {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::str::FromStr;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(("127.0.0.1", LISTEN_PORT)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut failures = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    for i in 0..rounds {
        let name = format!("n{i}.race.example.test.");
        let mut m = Message::new(i as u16, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(&name).unwrap(), RecordType::AAAA));
        sock.send(&m.to_vec().unwrap()).unwrap();
        let addr = match sock.recv(&mut buf) {
            Ok(n) => Message::from_vec(&buf[..n]).ok().and_then(|r| {
                r.answers.iter().find_map(|rr| match &rr.data {
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
            }),
            Err(e) => {
                failures.push(format!("{name}: no answer: {e}"));
                continue;
            }
        };
        let Some(addr) = addr else {
            failures.push(format!("{name}: no AAAA in the answer"));
            continue;
        };
        if let Err(e) = std::net::TcpStream::connect_timeout(&SocketAddr::new(addr, 8443), Duration::from_secs(2)) {
            failures.push(format!("{name} -> {addr}: {e}"));
        }
    }
    (failures, start.elapsed())
}

/// A socket made in the client namespace by a thread whose filesystem uid is `uid` (so the
/// socket is owned by `uid`, which is what `meta skuid` sees), with SO_MARK `mark` (0: none;
/// setting it as root stands for an attacker with CAP_NET_RAW, enough since Linux 5.17).
fn socket_as(uid: u32, mark: u32, ty: socket2::Type) -> socket2::Socket {
    let proto = if ty == socket2::Type::STREAM { socket2::Protocol::TCP } else { socket2::Protocol::UDP };
    let s = dns::owned_by(uid, || socket2::Socket::new(socket2::Domain::IPV4, ty, Some(proto)).unwrap()).unwrap();
    if mark != 0 {
        s.set_mark(mark).unwrap();
    }
    s
}

/// One A query for `name` to `server` from `sock` (bound already, or bound here to any port):
/// the answer's addresses, or `None` when nothing came back within a second.
fn udp_query(sock: &socket2::Socket, server: SocketAddr, name: &str) -> Option<Vec<IpAddr>> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::str::FromStr;
    if sock.local_addr().ok().and_then(|a| a.as_socket()).is_none_or(|a| a.port() == 0) {
        sock.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into()).unwrap();
    }
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(&format!("{name}.")).unwrap(), RecordType::A));
    let udp: std::net::UdpSocket = sock.try_clone().unwrap().into();
    udp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    // A send the firewall rejects fails here (EPERM/ECONNREFUSED): no answer either.
    udp.send_to(&m.to_vec().unwrap(), server).ok()?;
    let mut buf = [0u8; 1500];
    let n = udp.recv(&mut buf).ok()?;
    let r = Message::from_vec(&buf[..n]).ok()?;
    Some(r.answers.iter().filter_map(|rr| if let RData::A(a) = &rr.data { Some(IpAddr::V4(a.0)) } else { None }).collect())
}

/// Whether a TCP connect from `sock` to `to` succeeds within a second.
fn tcp_connects(sock: socket2::Socket, to: SocketAddr) -> bool {
    sock.connect_timeout(&to.into(), Duration::from_secs(1)).is_ok()
}

/// Issue 12, item 4: the forwarder's exemption is the forwarder's only. A socket with the mark
/// but another owner (uid 65534 with CAP_NET_RAW, in the issue) reached a denied address on 853;
/// the forwarder's own user reached any address on 53/853. Now only the forwarder's user, with
/// the mark, to a configured upstream's address and port gets out.
#[test]
fn the_mark_alone_or_the_user_alone_lets_no_dns_out() {
    if !need_root("the_mark_alone_or_the_user_alone_lets_no_dns_out") {
        return;
    }
    let s = Setup::new("deny", UPSTREAM);
    let up53: SocketAddr = format!("{UPSTREAM}:53").parse().unwrap();
    let dot: SocketAddr = format!("{UPSTREAM}:853").parse().unwrap();
    let other_dot: SocketAddr = "198.51.100.20:853".parse().unwrap();
    let mark = policy::DnsConfig::default().mark;
    let c = s.lab.client();
    // The mark with another owner: nothing.
    assert!(!c.run(|| tcp_connects(socket_as(65534, mark, socket2::Type::STREAM), dot)), "a marked socket of uid 65534 reached {dot}");
    assert_eq!(c.run(|| udp_query(&socket_as(65534, mark, socket2::Type::DGRAM), up53, "api.example.test")), None, "a marked socket of uid 65534 got an answer from {up53}");
    // Root with the mark is no forwarder either (a --network host container is uid 0).
    assert!(!c.run(|| tcp_connects(socket_as(0, mark, socket2::Type::STREAM), dot)), "a marked socket of root reached {dot}");
    // The forwarder's user and mark, to an address that is not an upstream: nothing.
    assert!(!c.run(|| tcp_connects(socket_as(FORWARDER_UID, mark, socket2::Type::STREAM), other_dot)), "the forwarder's identity reached {other_dot}, no upstream");
    // The forwarder's user without the mark: nothing.
    assert_eq!(c.run(|| udp_query(&socket_as(FORWARDER_UID, 0, socket2::Type::DGRAM), up53, "api.example.test")), None);
    // The forwarder's user and mark to its upstream: answered (and so the forwarder works).
    let got = c.run(|| udp_query(&socket_as(FORWARDER_UID, mark, socket2::Type::DGRAM), up53, "api.example.test"));
    assert_eq!(got, Some(vec!["192.0.2.10".parse::<IpAddr>().unwrap()]), "{}", s.logs());
    assert_eq!(s.q("a.cdn.example.test", "A").status.as_deref(), Some("NOERROR"), "{}", s.logs());
}

/// Issue 12, item 5: the flows the forwarder's own queries leave in conntrack (30 to 120 s)
/// are no way around the DNS control: an unmarked query from another user on the same source
/// port rode the entry as `established` straight to the upstream.
#[test]
fn a_reused_source_port_cannot_ride_the_forwarders_conntrack_entry() {
    if !need_root("a_reused_source_port_cannot_ride_the_forwarders_conntrack_entry") {
        return;
    }
    for bypass in ["deny", "redirect"] {
        let s = Setup::new(bypass, UPSTREAM);
        let up53: SocketAddr = format!("{UPSTREAM}:53").parse().unwrap();
        let mark = policy::DnsConfig::default().mark;
        let (first, port) = s.lab.client().run(|| {
            let sock = socket_as(FORWARDER_UID, mark, socket2::Type::DGRAM);
            let got = udp_query(&sock, up53, "api.example.test");
            (got, sock.local_addr().unwrap().as_socket().unwrap().port())
        });
        assert_eq!(first, Some(vec!["192.0.2.10".parse::<IpAddr>().unwrap()]), "the forwarder's own query ({bypass}){}", s.logs());
        // Its socket is closed; its conntrack entry is not. Another user takes the port.
        let reused = s.lab.client().run(|| {
            let sock = socket_as(65534, 0, socket2::Type::DGRAM);
            sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into()).unwrap();
            udp_query(&sock, up53, "api.example.test")
        });
        match bypass {
            // Denied, established or not.
            "deny" => assert_eq!(reused, None, "a query from reused port {port} reached the upstream"),
            // Neither redirected nor let through: the flow is not new, so nat does not see it.
            _ => assert_eq!(reused, None, "a query from reused port {port} reached the upstream ({bypass})"),
        }
        let (_, rules, _) = nft_raw(s.lab.client(), &["list", "chain", "inet", "leash", "dns"], None);
        assert!(rules.contains("@dns-bypass"), "{rules}");
    }
}

/// Issue 12, item 5: an upstream on a port other than 53/853 gets the forwarder's queries (they
/// were all denied: the exemption covered 53 and 853 only).
#[test]
fn an_upstream_on_another_port_gets_the_forwarders_queries() {
    if !need_root("an_upstream_on_another_port_gets_the_forwarders_queries") {
        return;
    }
    let lab = dns_lab();
    let dir = TempDir::new("port");
    let _upstream = start_dnsmasq_on(lab.peer(), UPSTREAM, 5300, &dir, None);
    let path = dir.file("p.toml", &policy_text("deny", &format!("{UPSTREAM}:5300")));
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    assert!(r.stdout.contains("warm-up: 4 of 4 exact domain names resolved"), "the warm-up's queries got through{r}");
    let fwd = start_forwarder(lab.client(), &path, &dir);
    let d = dig(lab.client(), "127.0.0.1", LISTEN_PORT, "a.cdn.example.test", "A");
    assert_eq!(d.addrs, vec!["192.0.2.30".parse::<IpAddr>().unwrap()], "{}{}", d.run, fwd.log());
    assert_eq!(lab.probe(&tcp443("192.0.2.30"), Duration::from_secs(1)), Outcome::Connected);
    // Anyone else asking that upstream directly is up to the policy's rules (here: denied).
    let other = lab.client().run(|| udp_query(&socket_as(65534, 0, socket2::Type::DGRAM), format!("{UPSTREAM}:5300").parse().unwrap(), "api.example.test"));
    assert_eq!(other, None);
}

/// Issue 12, item 15: the forwarder runs as its own user with CAP_NET_ADMIN and
/// CAP_NET_BIND_SERVICE only (it ran as root with every capability).
#[test]
fn the_forwarder_runs_as_its_user_with_two_capabilities() {
    if !need_root("the_forwarder_runs_as_its_user_with_two_capabilities") {
        return;
    }
    let s = Setup::new("deny", UPSTREAM);
    let pid = s.forwarder.as_ref().unwrap().child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap_or_default()
    };
    let u = FORWARDER_UID.to_string();
    assert_eq!(field("Uid"), [u.as_str(); 4].join(" "), "{status}");
    assert_eq!(field("Gid"), [u.as_str(); 4].join(" "), "{status}");
    assert_eq!(field("Groups"), "", "{status}");
    // CAP_NET_BIND_SERVICE (10) and CAP_NET_ADMIN (12).
    for f in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(field(f), "0000000000001400", "{f}\n{status}");
    }
    assert_eq!(field("CapInh"), "0000000000000000");
    assert_eq!(field("CapAmb"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    // Every thread, started after the drop, is the same.
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let st = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        assert!(st.contains(&format!("Uid:\t{u}\t{u}\t{u}\t{u}")) && st.contains("CapEff:\t0000000000001400"), "{st}");
    }
    // And it still does its job: answers, inserts (netlink), follows the table.
    assert_eq!(s.q("a.cdn.example.test", "A").addrs, vec!["192.0.2.30".parse::<IpAddr>().unwrap()], "{}", s.logs());
    assert_eq!(s.connect("192.0.2.30"), Outcome::Connected, "{}", s.logs());
}

/// A missing forwarder user: `check` warns (the table fails closed), `dns` refuses to start.
#[test]
fn a_missing_forwarder_user_is_a_warning_for_check_and_dns_refuses_to_start() {
    if !need_root("a_missing_forwarder_user_is_a_warning_for_check_and_dns_refuses_to_start") {
        return;
    }
    let lab = dns_lab();
    let dir = TempDir::new("nouser");
    let text = policy_text("deny", UPSTREAM).replace(&format!("user = {FORWARDER_UID}"), "user = \"no-such-leash-user\"");
    let path = dir.file("p.toml", &text);
    let r = leash(&["check", &path]);
    assert!(r.ok(), "a warning, not an error{r}");
    assert!(r.stderr.contains("warning") && r.stderr.contains("`no-such-leash-user` does not exist"), "{r}");
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    assert!(r.stderr.contains("warm-up") && r.stderr.contains("does not exist"), "{r}");
    let (_, rules, _) = nft_raw(lab.client(), &["list", "chain", "inet", "leash", "dns"], None);
    assert!(!rules.contains("@dns-forwarder"), "no exemption without a forwarder user: {rules}");
    let r = leash_in(lab.client(), &["dns", &path]);
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stderr.contains("the forwarder's user `no-such-leash-user` does not exist"), "{r}");
}

/// The same policy as `policy_text`, with the `cdn` rule naming one exact name instead of the
/// wildcard: what `apply p2` put in place in the issue.
fn without_wildcard(bypass: &str) -> String {
    policy_text(bypass, UPSTREAM).replace("to = [\"*.cdn.example.test\"]", "to = [\"b.cdn.example.test\"]")
}

/// Waits until the forwarder's log contains `what` (10 s at most).
fn wait_log(s: &Setup, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.logs().contains(what) {
        assert!(Instant::now() < deadline, "the forwarder never said {what:?}{}", s.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 12, item 2: `leash dns p1` kept feeding `r_cdn_d4` after `apply p2` removed the
/// wildcard, and the removed name's address connected while `explain p2` said DENY. Now the
/// forwarder loads the applied policy on every re-apply and feeds only its sets; when it cannot
/// load it, it answers SERVFAIL.
#[test]
fn after_apply_of_another_policy_the_forwarder_feeds_only_its_sets() {
    if !need_root("after_apply_of_another_policy_the_forwarder_feeds_only_its_sets") {
        return;
    }
    let s = Setup::new("deny", UPSTREAM);
    let p2 = s.dir.file("p2.toml", &without_wildcard("deny"));
    let r = leash_in(s.lab.client(), &["apply", &p2]);
    assert!(r.ok(), "{r}");
    wait_log(&s, "following its policy");
    // Looked up after the re-apply: the wildcard is gone, so nothing may allow the address.
    let d = s.q("a.cdn.example.test", "A");
    assert_eq!(d.status.as_deref(), Some("NOERROR"), "{}{}", d.run, s.logs());
    assert_eq!(s.connect("192.0.2.30"), Outcome::Refused, "the removed wildcard's address connected{}", s.logs());
    let (_, set, _) = nft_raw(s.lab.client(), &["list", "set", "inet", "leash", "r_cdn_d4"], None);
    assert!(!set.contains("192.0.2.30"), "{set}");
    let e = leash(&["explain", &p2, "--to", "192.0.2.30:443", "--proto", "tcp", "--name", "a.cdn.example.test"]);
    assert!(e.stdout.contains("DENY") || e.stdout.contains("deny"), "{e}");
    // The exact names of the new policy still work.
    assert_eq!(s.q("api.example.test", "A").status.as_deref(), Some("NOERROR"));
    assert_eq!(s.connect("192.0.2.10"), Outcome::Connected, "{}", s.logs());

    // A policy the forwarder's user cannot read: it cannot know its rules, so SERVFAIL for
    // every name, and nothing is fed.
    let p3 = s.dir.file("p3.toml", &policy_text("deny", UPSTREAM).replace("a.cdn", "z.cdn"));
    std::fs::set_permissions(&p3, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let r = leash_in(s.lab.client(), &["apply", &p3]);
    assert!(r.ok(), "{r}");
    wait_log(&s, "answering SERVFAIL until it can");
    for name in ["a.cdn.example.test", "api.example.test", "other.example.test"] {
        let d = s.q(name, "A");
        assert_eq!(d.status.as_deref(), Some("SERVFAIL"), "{name}: {}{}", d.run, s.logs());
    }
    assert_eq!(s.connect("192.0.2.30"), Outcome::Refused);
    // Readable again and re-applied: followed again.
    std::fs::set_permissions(&p3, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let r = leash_in(s.lab.client(), &["apply", &p3]);
    assert!(r.ok(), "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.q("a.cdn.example.test", "A").status.as_deref() != Some("NOERROR") {
        assert!(Instant::now() < deadline, "not followed again{}", s.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.connect("192.0.2.30"), Outcome::Connected, "{}", s.logs());
}

/// The shipped unit and sysusers file run the forwarder as the default `[dns] user` with the two
/// capabilities `leash dns` keeps, and only the apply as root.
#[test]
fn the_shipped_unit_runs_the_forwarder_as_its_user_with_two_capabilities() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let unit = std::fs::read_to_string(root.join("contrib/systemd/leash-dns.service")).unwrap();
    let key = |k: &str| unit.lines().filter_map(|l| l.strip_prefix(&format!("{k}="))).collect::<Vec<_>>();
    let user = policy::DEFAULT_FORWARDER_USER;
    assert_eq!(key("User"), vec![user]);
    for k in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let mut caps: Vec<&str> = key(k).iter().flat_map(|v| v.split_whitespace()).collect();
        caps.sort_unstable();
        assert_eq!(caps, vec!["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"], "{k}");
    }
    assert_eq!(key("NoNewPrivileges"), vec!["yes"]);
    assert!(key("ExecStartPre").iter().all(|c| c.starts_with('+') && c.contains("leash apply")), "only the apply runs as root");
    assert!(key("ExecStart").iter().all(|c| !c.starts_with('+') && c.contains("leash dns")));
    let sysusers = std::fs::read_to_string(root.join("contrib/sysusers.d/leash.conf")).unwrap();
    assert!(sysusers.lines().any(|l| l.split_whitespace().take(2).eq(["u", user])), "{sysusers}");
}

/// Started the way the shipped unit starts it (as the forwarder's user with CAP_NET_ADMIN and
/// CAP_NET_BIND_SERVICE as ambient capabilities; `setpriv` plays systemd), `leash dns` keeps those
/// two, binds its port and works; started as any other user it refuses, saying why.
#[test]
fn the_forwarder_starts_as_its_user_with_ambient_capabilities_as_the_unit_does() {
    if !need_root("the_forwarder_starts_as_its_user_with_ambient_capabilities_as_the_unit_does") {
        return;
    }
    let lab = dns_lab();
    let dir = TempDir::new("ambient");
    let _upstream = start_dnsmasq(lab.peer(), UPSTREAM, &dir, None);
    let path = dir.file("p.toml", &policy_text("deny", UPSTREAM));
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    let uid = FORWARDER_UID.to_string();
    let caps = "+net_admin,+net_bind_service";
    let setpriv = |uid: &str| -> Vec<String> {
        ["--reuid", uid, "--regid", uid, "--clear-groups", "--inh-caps", caps, "--ambient-caps", caps, "--", leash_bin(), "dns", &path]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let args = setpriv(&uid);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::spawn("leash dns (setpriv)", lab.client(), "setpriv", &args, &dir);
    wait_for_dns(lab.client(), "127.0.0.1", LISTEN_PORT, &d);
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    assert!(status.contains(&format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}")), "{status}");
    assert!(status.contains("CapEff:\t0000000000001400") && status.contains("CapPrm:\t0000000000001400"), "{status}");
    assert!(status.contains("CapAmb:\t0000000000000000"), "{status}");
    let q = dig(lab.client(), "127.0.0.1", LISTEN_PORT, "a.cdn.example.test", "A");
    assert_eq!(q.addrs, vec!["192.0.2.30".parse::<IpAddr>().unwrap()], "{}{}", q.run, d.log());
    assert_eq!(lab.probe(&tcp443("192.0.2.30"), Duration::from_secs(1)), Outcome::Connected, "{}", d.log());
    drop(d);
    // Another user, even with the capabilities: its queries would be denied, so it does not start.
    let args = setpriv("64000");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_cmd(Some(lab.client()), "setpriv", &args, None);
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stderr.contains("runs as uid 64000") && r.stderr.contains(&format!("(uid {uid})")), "{r}");
}
