//! `leash trace` on a policy applied with `leash apply` in a lab's client namespace: real
//! connections are traced to the rule that decided them, packets outside the filter are not, and
//! the tracing chain is gone when the command ends (by signal, by --count, by --seconds).

use crate::harness::*;
use kernel::netns::NetNs;
use lab::{Case, Lab, Outcome};
use policy::Proto;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Traced: matches --to.
const TRACED: &str = "203.0.113.9";
/// Allowed like TRACED, outside the filter.
const OTHER: &str = "203.0.113.10";

const POLICY: &str = r#"version = 1
[defaults]
outbound = "deny"
deny_with = "reject"
log_denied = false

[[rule]]
name = "dns"
action = "allow"
proto = "udp"
ports = [53]
to = ["198.51.100.53"]

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["203.0.113.0/24"]
"#;

/// The lab with POLICY applied in its client namespace.
struct Setup {
    lab: Lab,
    dir: TempDir,
}

fn setup() -> Setup {
    let lab = Lab::new(&[TRACED.parse().unwrap(), OTHER.parse().unwrap()], &[443, 80], &[]).expect("lab");
    let dir = TempDir::new("trace");
    let path = dir.file("p.toml", POLICY);
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    Setup { lab, dir }
}

fn case(dst: &str, port: u16, uid: u32) -> Case {
    Case { proto: Proto::Tcp, dst: dst.parse().unwrap(), port: Some(port), uid, gid: uid, name: None, cgroup: None }
}

/// `leash trace ARGS` running in a namespace, stdout and stderr into files; ended by its pid on
/// drop if still running.
struct Tracing {
    child: Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
    cmdline: String,
}

impl Tracing {
    fn start(ns: &NetNs, args: &[&str], dir: &TempDir) -> Tracing {
        let stdout = dir.0.join("trace.stdout");
        let stderr = dir.0.join("trace.stderr");
        // nsenter enters the namespace and execs leash: the child's pid is leash's.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(leash_bin())
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start leash trace");
        let t = Tracing { child, stdout, stderr, cmdline: format!("leash trace {}", args.join(" ")) };
        // Ready once it says so: the chain is in the table then (and the event socket was
        // joined before). Not "once the chain is there": a stale chain may be there before.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&t.stderr).unwrap_or_default().contains("leash: tracing `") {
            assert!(Instant::now() < deadline, "leash trace did not start{}", t.output());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(has_trace_chain(ns), "{}", t.output());
        t
    }

    fn signal(&self, sig: i32) {
        // Only our own child, by its pid.
        // SAFETY: plain syscall.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, sig) }, 0);
    }

    /// Waits (bounded) for the command to end; its exit code.
    fn wait(&mut self, max: Duration) -> Option<i32> {
        let deadline = Instant::now() + max;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "leash trace did not end within {max:?}{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "\n===== command: {}\n===== stdout:\n{}\n===== stderr:\n{}",
            self.cmdline,
            self.stdout(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_trace_chain(ns: &NetNs) -> bool {
    nft_raw(ns, &["list", "chain", "inet", "leash", "trace"], None).0
}

fn syn_to<'a>(lines: &'a [serde_json::Value], dst: &str, port: u16) -> Option<&'a serde_json::Value> {
    lines.iter().find(|l| l["dst"] == dst && l["dport"] == port && l["tcp_flags"] == "syn")
}

/// The path of the deciding chain as (rule, action) pairs.
fn path(line: &serde_json::Value) -> Vec<(String, Option<String>)> {
    let chain = line["path"].as_array().unwrap().iter().find(|c| c["chain"] == line["chain"]).unwrap();
    chain["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rule"].as_str().unwrap().to_string(), r["action"].as_str().map(String::from)))
        .collect()
}

fn no(rule: &str) -> (String, Option<String>) {
    (rule.to_string(), None)
}

#[test]
fn trace_shows_the_deciding_rule_of_an_allowed_and_a_blocked_connection() {
    if !need_root("trace_shows_the_deciding_rule_of_an_allowed_and_a_blocked_connection") {
        return;
    }
    let s = setup();
    let ns = s.lab.client();
    let mut t = Tracing::start(ns, &["--json", "--to", TRACED, "--seconds", "60"], &s.dir);
    let timeout = Duration::from_secs(2);
    assert_eq!(s.lab.probe(&case(TRACED, 443, 0), timeout), Outcome::Connected);
    assert_eq!(s.lab.probe(&case(TRACED, 80, 0), timeout), Outcome::Refused);
    assert_eq!(s.lab.probe(&case(OTHER, 443, 0), timeout), Outcome::Connected);
    // Packets are printed as their verdict arrives: wait for both SYNs, then end with SIGINT.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<serde_json::Value> = t.stdout().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if syn_to(&lines, TRACED, 443).is_some() && syn_to(&lines, TRACED, 80).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "both SYNs were not traced{}", t.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    t.signal(libc::SIGINT);
    assert_eq!(t.wait(Duration::from_secs(10)), Some(0), "{}", t.output());
    let out = t.output();
    assert!(out.contains("(interrupted); removed chain trace from table inet leash"), "{out}");
    assert!(!has_trace_chain(ns), "the tracing chain is gone{out}");
    assert!(list_leash(ns).unwrap().contains("comment \"web\""), "the policy's table is intact{out}");

    let lines: Vec<serde_json::Value> = t
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}{out}")))
        .collect();
    for l in &lines {
        assert_eq!(l["dst"], TRACED, "only packets to --to are traced: {l}{out}");
        assert_eq!(l["complete"], true, "{l}{out}");
        assert_eq!(l["oif"], "lab0", "{l}");
    }
    let allowed = syn_to(&lines, TRACED, 443).unwrap();
    assert_eq!(
        (&allowed["verdict"], &allowed["rule"], &allowed["chain"]),
        (&"accept".into(), &"web".into(), &"output".into()),
        "{allowed}"
    );
    assert_eq!(
        path(allowed),
        vec![no("@loopback"), no("@established"), no("@icmpv6-nd"), no("dns"), ("web".into(), Some("accept".into()))],
        "{allowed}"
    );
    let blocked = syn_to(&lines, TRACED, 80).unwrap();
    assert_eq!((&blocked["verdict"], &blocked["rule"]), (&"reject".into(), &"@default".into()), "{blocked}");
    assert_eq!(
        path(blocked),
        vec![
            no("@loopback"),
            no("@established"),
            no("@icmpv6-nd"),
            no("dns"),
            no("web"),
            ("@default".into(), Some("reject".into()))
        ],
        "{blocked}"
    );
    // The rest of the allowed connection went out as established traffic.
    assert!(lines.iter().any(|l| l["rule"] == "@established" && l["verdict"] == "accept"), "{out}");
    root_has_no_leash_table();
}

#[test]
fn trace_filters_by_uid_and_port_and_stops_after_count() {
    if !need_root("trace_filters_by_uid_and_port_and_stops_after_count") {
        return;
    }
    let s = setup();
    let ns = s.lab.client();
    let mut t = Tracing::start(
        ns,
        &["--to", TRACED, "--port", "80", "--uid", "1000", "--count", "1", "--seconds", "60"],
        &s.dir,
    );
    let timeout = Duration::from_secs(2);
    // Not traced: another user, another port.
    assert_eq!(s.lab.probe(&case(TRACED, 80, 0), timeout), Outcome::Refused);
    assert_eq!(s.lab.probe(&case(TRACED, 443, 1000), timeout), Outcome::Connected);
    // Traced; the one packet --count waits for.
    assert_eq!(s.lab.probe(&case(TRACED, 80, 1000), timeout), Outcome::Refused);
    assert_eq!(t.wait(Duration::from_secs(10)), Some(0), "{}", t.output());
    let out = t.output();
    let stdout = t.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let (client, _) = s.lab.client_addrs();
    let line = lines[0];
    assert!(line.starts_with(&format!("tcp {client}:")), "{out}");
    assert!(
        line.ends_with(&format!(
            " -> {TRACED}:80 syn uid 1000 oif lab0: @loopback no, @established no, @icmpv6-nd no, dns no, web no, @default -> reject"
        )),
        "{out}"
    );
    assert!(out.contains("traced 1 packet(s)"), "{out}");
    assert!(!has_trace_chain(ns), "{out}");
}

#[test]
fn trace_replaces_a_stale_chain_and_ends_after_seconds() {
    if !need_root("trace_replaces_a_stale_chain_and_ends_after_seconds") {
        return;
    }
    let s = setup();
    let ns = s.lab.client();
    // Left behind by a `leash trace` that died hard (no process has this pid).
    nft_load(
        ns,
        "table inet leash {\n  chain trace {\n    type filter hook output priority -350; policy accept;\n    meta skuid 7 meta nftrace set 1 comment \"@trace pid 999999999\"\n  }\n}\n",
    );
    let mut t = Tracing::start(ns, &["--to", "198.51.100.0/24", "--seconds", "1"], &s.dir);
    let (_, chain, _) = nft_raw(ns, &["list", "chain", "inet", "leash", "trace"], None);
    assert!(chain.contains("ip daddr 198.51.100.0/24 meta nftrace set 1"), "{chain}{}", t.output());
    assert!(!chain.contains("skuid 7"), "{chain}");
    assert_eq!(t.wait(Duration::from_secs(10)), Some(0), "{}", t.output());
    assert!(t.output().contains("traced 0 packet(s)"), "{}", t.output());
    assert!(!has_trace_chain(ns), "{}", t.output());
}

#[test]
fn trace_without_a_table_fails_clearly() {
    if !need_root("trace_without_a_table_fails_clearly") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let r = leash_in(&ns, &["trace", "--seconds", "1"]);
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stderr.contains("no leash table is active"), "{r}");
    assert!(r.stderr.contains("nothing was changed"), "{r}");
    assert_eq!(r.ruleset.as_deref().map(str::trim), Some(""), "{r}");
    // Usage errors come first and exit 2.
    for args in
        [&["trace", "--to", "example.com"][..], &["trace", "--port", "0"], &["trace", "--uid", "no-such-user-leash"]]
    {
        let r = leash_in(&ns, args);
        assert_eq!(r.code, Some(2), "{r}");
    }
}

/// Rules that jump (a limited rule to `limit_<rule>`, a rejecting blocklist rule to
/// `deny_<rule>`) are traced to the rule in that chain that decided.
#[test]
fn trace_follows_jumps_into_limit_and_deny_chains() {
    if !need_root("trace_follows_jumps_into_limit_and_deny_chains") {
        return;
    }
    let lab = Lab::new(&[TRACED.parse().unwrap(), OTHER.parse().unwrap()], &[443], &[]).expect("lab");
    let dir = TempDir::new("trace-jumps");
    dir.file("bad.txt", &format!("{OTHER}\n198.51.100.0/24\n"));
    let policy = dir.file(
        "p.toml",
        r#"version = 1
[defaults]
outbound = "deny"
deny_with = "reject"
log_denied = false

[[set]]
name = "bad"
file = "bad.txt"

[[rule]]
name = "blocklist"
action = "deny"
to = ["set:bad"]

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["203.0.113.0/24"]
rate = "1000/second"
"#,
    );
    let r = leash_in(lab.client(), &["apply", &policy]);
    assert!(r.ok(), "{r}");
    let ns = lab.client();
    let mut t = Tracing::start(ns, &["--json", "--to", "203.0.113.0/24", "--port", "443", "--seconds", "60"], &dir);
    let timeout = Duration::from_secs(2);
    assert_eq!(lab.probe(&case(TRACED, 443, 0), timeout), Outcome::Connected);
    assert_eq!(lab.probe(&case(OTHER, 443, 0), timeout), Outcome::Refused);
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<serde_json::Value> = t.stdout().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if syn_to(&lines, TRACED, 443).is_some() && syn_to(&lines, OTHER, 443).is_some() {
            break lines;
        }
        assert!(Instant::now() < deadline, "both SYNs were not traced{}", t.output());
        std::thread::sleep(Duration::from_millis(50));
    };
    t.signal(libc::SIGINT);
    assert_eq!(t.wait(Duration::from_secs(10)), Some(0), "{}", t.output());
    let allowed = syn_to(&lines, TRACED, 443).unwrap();
    assert_eq!(
        (&allowed["verdict"], &allowed["rule"], &allowed["chain"]),
        (&"accept".into(), &"web".into(), &"limit_web".into()),
        "{allowed}"
    );
    let blocked = syn_to(&lines, OTHER, 443).unwrap();
    assert_eq!(
        (&blocked["verdict"], &blocked["rule"], &blocked["chain"]),
        (&"reject".into(), &"blocklist".into(), &"deny_blocklist".into()),
        "{blocked}"
    );
    root_has_no_leash_table();
}
