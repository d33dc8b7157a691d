//! `run_expectations` end to end: policy text -> compiled table -> applied in a lab -> every
//! expectation probed as its user and compared with the expectation and with `explain`.

mod common;

use lab::{Outcome, RunOptions, run_expectations};
use policy::Action;
use std::time::Duration;

/// A fixed user database: root(0), app(1000, group 1000), nobody(65534, group 65534).
fn users() -> policy::StaticResolver {
    policy::StaticResolver::new()
        .user("root", 0, Some(0))
        .user("app", 1000, Some(1000))
        .user("nobody", 65534, Some(65534))
        .group("root", 0)
        .group("app", 1000)
        .group("nogroup", 65534)
}

const RULES: &str = r#"
[[rule]]
name = "dns"
action = "allow"
proto = ["udp", "tcp"]
ports = [53]
to = ["192.0.2.53", "2001:db8::53"]

[[rule]]
name = "web-for-app"
action = "allow"
proto = "tcp"
ports = [443]
to = ["203.0.113.0/24", "2001:db8:100::/48"]
user = "app"

[[rule]]
name = "ping-resolvers"
action = "allow"
proto = ["icmp", "icmpv6"]
to = ["192.0.2.53", "2001:db8::53"]

[[expect]]
to = "192.0.2.53:53"
proto = "udp"
verdict = "allow"

[[expect]]
to = "[2001:db8::53]:53"
proto = "tcp"
user = "app"
verdict = "allow"

[[expect]]
to = "203.0.113.5:443"
proto = "tcp"
user = "app"
verdict = "allow"

[[expect]]
to = "[2001:db8:100::5]:443"
proto = "tcp"
user = "app"
verdict = "allow"

[[expect]]
to = "203.0.113.5:443"
proto = "tcp"
user = "nobody"
verdict = "deny"

[[expect]]
to = "[2001:db8:100::5]:443"
proto = "tcp"
verdict = "deny"

[[expect]]
to = "192.0.2.99:53"
proto = "udp"
user = "app"
verdict = "deny"

[[expect]]
to = "[2001:db8::99]:53"
proto = "udp"
verdict = "deny"

[[expect]]
to = "192.0.2.53"
proto = "icmp"
user = "nobody"
verdict = "allow"

[[expect]]
to = "2001:db8::53"
proto = "icmpv6"
user = "nobody"
verdict = "allow"

[[expect]]
to = "192.0.2.99"
proto = "icmp"
user = "nobody"
verdict = "deny"

[[expect]]
to = "2001:db8::99"
proto = "icmpv6"
verdict = "deny"

[[expect]]
to = "127.0.0.1:8080"
proto = "tcp"
user = "nobody"
verdict = "allow"
"#;

fn policy(deny_with: &str, extra: &str) -> policy::Policy {
    let text = format!(
        "version = 1\n[defaults]\noutbound = \"deny\"\ndeny_with = \"{deny_with}\"\nlog_denied = false\n\
         allow_loopback = true\nallow_established = true\n{RULES}{extra}"
    );
    let (p, diags) = policy::load(&text, &users());
    p.unwrap_or_else(|| panic!("policy does not load: {diags:?}"))
}

fn run(p: &policy::Policy) -> lab::Report {
    let opts = RunOptions { timeout: Duration::from_millis(700), parallel: 8, ..Default::default() };
    let r = run_expectations(p, &opts).expect("run expectations");
    eprintln!("{}", show(&r));
    r
}

fn show(r: &lab::Report) -> String {
    r.rows
        .iter()
        .map(|r| format!("#{} {}: {} -> {} {:?}\n", r.index, r.case, r.decider, r.outcome.describe(), r.problems))
        .collect()
}

#[test]
fn every_expectation_holds_with_reject() {
    if !common::need_root() {
        return;
    }
    let p = policy("reject", "");
    let r = run(&p);
    assert!(r.passed(), "{}", show(&r));
    assert_eq!(r.rows.len(), p.expects.len());
    for row in &r.rows {
        assert_eq!(row.kernel, row.expected);
        if row.expected == Action::Deny {
            assert!(matches!(row.outcome, Outcome::Refused | Outcome::Unreachable(_)), "{}", show(&r));
            // Rejected probes fail fast.
            assert!(row.elapsed < Duration::from_millis(300), "{}", show(&r));
        }
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["deny_with"], "reject");
    assert_eq!(json["rows"][0]["case"]["proto"], "udp");
    assert_eq!(json["rows"][0]["expected"], "allow");
    assert_eq!(json["rows"][0]["outcome"]["kind"], "connected");
    assert_eq!(json["rows"][4]["decider"], "default (deny)");
}

#[test]
fn every_expectation_holds_with_drop() {
    if !common::need_root() {
        return;
    }
    let p = policy("drop", "");
    let r = run(&p);
    assert!(r.passed(), "{}", show(&r));
    for row in r.rows.iter().filter(|r| r.expected == Action::Deny) {
        assert!(matches!(row.outcome, Outcome::TimedOut | Outcome::NotPermitted), "{}", show(&r));
    }
}

#[test]
fn a_wrong_expectation_fails_with_reasons() {
    if !common::need_root() {
        return;
    }
    // Claims nobody may use the web, which both explain and the kernel deny.
    let wrong = "\n[[expect]]\nto = \"203.0.113.9:443\"\nproto = \"tcp\"\nuser = \"nobody\"\nverdict = \"allow\"\n";
    let p = policy("reject", wrong);
    let r = run(&p);
    assert_eq!(r.failures(), 1, "{}", show(&r));
    let bad = r.rows.last().unwrap();
    assert!(!bad.pass);
    assert_eq!((bad.explain, bad.kernel), (Action::Deny, Action::Deny));
    assert_eq!(bad.outcome, Outcome::Refused);
    assert_eq!(bad.problems.len(), 2, "{:?}", bad.problems);
}
