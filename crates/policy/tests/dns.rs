//! Domain rules and the `[dns]` section: parsing, errors, the name decisions the forwarder makes,
//! and `explain` on connections that follow a lookup.

mod common;

use common::{errors, found, load, load_ok, one_error};
use policy::dns::{admits, decide_name};
use policy::*;

const POLICY: &str = r#"version = 1
[dns]
listen = ["127.0.0.1:5353", "[::1]:5353"]
upstreams = ["203.0.113.53", "[2001:db8::53]:5300"]
min_ttl = 30
max_ttl = 600
grace = 10
bypass = "deny"

[[rule]]
name = "api"
action = "allow"
proto = "tcp"
ports = [443]
to = ["api.example.test", "198.51.100.0/24"]

[[rule]]
name = "no-ads"
action = "deny"
to = ["*.ads.example.test"]

[[rule]]
name = "cdn"
action = "allow"
proto = "tcp"
ports = [80, 443]
to = ["*.example.test"]

[[rule]]
name = "intranet"
action = "allow"
to = ["wiki.corp.example.test"]
allow_private = true

[[expect]]
to = "api.example.test:443"
verdict = "allow"

[[expect]]
to = "x.ads.example.test:443"
verdict = "deny"

[[expect]]
to = "img.example.test:443"
address = "10.1.2.3"
verdict = "deny"
"#;

fn conn(dst: &str, port: u16, name: Option<&str>) -> Connection {
    Connection { proto: Proto::Tcp, dst: dst.parse().unwrap(), port: Some(port), uid: 0, gid: 0, name: name.map(Into::into), cgroup: None, at: None, from: None }
}

#[test]
fn dns_section_and_domain_rules_parse() {
    let p = load_ok(POLICY);
    assert_eq!(p.dns.listen, vec!["127.0.0.1:5353".parse().unwrap(), "[::1]:5353".parse().unwrap()]);
    assert_eq!(p.dns.upstreams, vec!["203.0.113.53:53".parse().unwrap(), "[2001:db8::53]:5300".parse().unwrap()]);
    assert_eq!((p.dns.min_ttl, p.dns.max_ttl, p.dns.grace), (30, 600, 10));
    assert_eq!(p.dns.bypass, Bypass::Deny);
    assert_eq!(p.dns.redirect_port(false), Some(5353));
    let api = &p.rules[0];
    assert_eq!(api.cond.to, Some(vec!["198.51.100.0/24".parse().unwrap()]));
    assert_eq!(api.cond.domains.len(), 1);
    assert_eq!(api.cond.domains[0].to_string(), "api.example.test");
    assert!(!api.cond.domains[0].wildcard);
    assert_eq!(p.rules[1].cond.domains[0].to_string(), "*.ads.example.test");
    // A rule naming only domains has no networks: only forwarder answers can match it.
    assert_eq!(p.rules[1].cond.to, Some(vec![]));
    assert!(p.rules[3].cond.allow_private);
    assert!(p.has_domain_rules());
    // The forwarder's user defaults to leash-dns, resolved when the policy loads.
    assert_eq!((p.dns.user.written.as_str(), p.dns.user.uid), ("leash-dns", Some(998)));
    assert_eq!(p.dns.set_size, policy::DEFAULT_SET_SIZE);
    assert!(!p.dns.allow_remote_clients);
}

#[test]
fn the_forwarder_user_is_a_uid_or_a_name_and_a_missing_one_is_a_warning() {
    let with = |user: &str| POLICY.replace("[dns]\n", &format!("[dns]\nuser = {user}\n"));
    let p = load_ok(&with("64999"));
    assert_eq!((p.dns.user.written.as_str(), p.dns.user.uid), ("64999", Some(64999)));
    let p = load_ok(&with("\"nobody\""));
    assert_eq!(p.dns.user.uid, Some(65534));
    // Unknown: the policy loads (the table then lets no forwarder query out), with a warning.
    let src = with("\"no-such-user\"");
    let (p, d) = load(&src);
    let p = p.expect("a missing forwarder user is not an error");
    assert_eq!(p.dns.user.uid, None);
    let f = found(&src, &d);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].2, "dns-user");
    assert!(f[0].3.contains("`no-such-user` does not exist") && f[0].3.contains("fails closed"), "{}", f[0].3);
    // Without domain rules there is no forwarder to warn about.
    let (_, d) = load("version = 1\n[dns]\nuser = \"no-such-user\"\nupstreams = [\"192.0.2.53\"]\n");
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn domain_expectations_get_an_address_no_rule_lists() {
    let p = load_ok(POLICY);
    let x = &p.expects[0];
    assert_eq!(x.name.as_deref(), Some("api.example.test"));
    assert_eq!(x.port, Some(443));
    // 198.51.100.0/24 is listed by `api`, so the synthetic address avoids it.
    assert!(!p.rules.iter().filter_map(|r| r.cond.to.as_ref()).flatten().any(|n| n.contains(&x.to)), "{}", x.to);
    assert_eq!(p.expects[2].to, "10.1.2.3".parse::<std::net::IpAddr>().unwrap());
    for x in &p.expects {
        assert_eq!(explain(&p, &x.connection()).verdict, x.verdict, "{x:?}");
    }
}

#[test]
fn name_decisions() {
    let p = load_ok(POLICY);
    // The first domain rule naming `api.example.test` is an allow rule; `*.example.test` also
    // names it, so both rules' sets receive its addresses.
    assert_eq!(decide_name(&p, "API.example.test."), NameDecision { refuse: None, rules: vec![0, 2] });
    // An unconditional deny first: NXDOMAIN.
    assert_eq!(decide_name(&p, "tracker.ads.example.test"), NameDecision { refuse: Some(1), rules: vec![] });
    assert_eq!(decide_name(&p, "www.example.test"), NameDecision { refuse: None, rules: vec![2] });
    // The apex of a wildcard is not covered.
    assert_eq!(decide_name(&p, "example.test"), NameDecision::default());
    assert_eq!(decide_name(&p, "example.com"), NameDecision::default());
}

#[test]
fn a_conditional_deny_does_not_refuse_the_name() {
    let src = r#"version = 1
[dns]
upstreams = ["203.0.113.53"]
[[rule]]
name = "no-plain-http"
action = "deny"
ports = [80]
to = ["*.example.test"]
[[rule]]
name = "web"
action = "allow"
ports = [80, 443]
to = ["*.example.test"]
"#;
    let p = load_ok(src);
    assert_eq!(decide_name(&p, "a.example.test"), NameDecision { refuse: None, rules: vec![0, 1] });
    let e = explain(&p, &conn("192.0.2.9", 80, Some("a.example.test")));
    assert_eq!((e.verdict, e.decider), (Action::Deny, Decider::Rule(0)));
    let e = explain(&p, &conn("192.0.2.9", 443, Some("a.example.test")));
    assert_eq!((e.verdict, e.decider), (Action::Allow, Decider::Rule(1)));
}

#[test]
fn explain_follows_names() {
    let p = load_ok(POLICY);
    let e = explain(&p, &conn("192.0.2.10", 443, Some("api.example.test")));
    assert_eq!((e.verdict, e.decider), (Action::Allow, Decider::Rule(0)));
    // The same address without the lookup matches no rule.
    let e = explain(&p, &conn("192.0.2.10", 443, None));
    assert_eq!((e.verdict, e.decider), (Action::Deny, Decider::Default));
    assert_eq!(e.misses[0].1.to_string(), "192.0.2.10 not in 198.51.100.0/24, api.example.test");
    // Refused names never connect.
    let e = explain(&p, &conn("192.0.2.10", 443, Some("x.ads.example.test")));
    assert_eq!((e.verdict, e.decider), (Action::Deny, Decider::NameRefused(1)));
    // The rebinding guard: a public name pointing into private space is kept out of allow sets...
    let e = explain(&p, &conn("10.0.0.5", 443, Some("img.example.test")));
    assert_eq!((e.verdict, e.decider), (Action::Deny, Decider::Default));
    assert!(e.misses[2].1.to_string().contains("lacks allow_private"), "{}", e.misses[2].1);
    // ...unless the rule allows private answers.
    let e = explain(&p, &conn("10.0.0.5", 22, Some("wiki.corp.example.test")));
    assert_eq!((e.verdict, e.decider), (Action::Allow, Decider::Rule(3)));
}

#[test]
fn guard_admits() {
    let p = load_ok(POLICY);
    let public = "192.0.2.7".parse().unwrap();
    let private = "192.168.1.1".parse().unwrap();
    assert!(admits(&p.rules[0], public, false));
    assert!(!admits(&p.rules[0], public, true), "the host's own address");
    assert!(!admits(&p.rules[0], private, false));
    assert!(admits(&p.rules[1], private, false), "deny rules take every address");
    assert!(admits(&p.rules[3], private, false));
}

#[test]
fn dns_errors() {
    one_error(
        "version = 1\n[[rule]]\nname = \"a\"\naction = \"allow\"\nto = [\"api.example.test\"]\n",
        5,
        7,
        "dns-no-upstream",
        "upstreams",
    );
    one_error("version = 1\n[dns]\nupstreams = [\"nope\"]\n", 3, 14, "bad-address", "invalid destination `nope`");
    one_error("version = 1\n[dns]\nlisten = [\"127.0.0.1\"]\n", 3, 11, "bad-address", "needs a port");
    one_error("version = 1\n[dns]\ngrace = -1\n", 3, 9, "bad-value", "grace -1 is out of range");
    one_error("version = 1\n[dns]\nbypass = \"maybe\"\n", 3, 10, "bad-value", "`redirect`, `deny` or `off`");
    one_error("version = 1\n[dns]\nmin_ttl = 700\nmax_ttl = 600\n", 2, 1, "bad-value", "greater than max_ttl");
    one_error(
        "version = 1\n[dns]\nlisten = [\"192.0.2.1:53\"]\nallow_remote_clients = true\n",
        2,
        1,
        "bad-value",
        "needs a `listen` address on loopback",
    );
    // Issue 12, item 15: a listen address other hosts reach is an error unless it is meant.
    one_error(
        "version = 1\n[dns]\nbypass = \"deny\"\nlisten = [\"127.0.0.1:53\", \"0.0.0.0:53\"]\n",
        4,
        27,
        "dns-remote-listen",
        "allow_remote_clients = true",
    );
    one_error("version = 1\n[dns]\nbypass = \"deny\"\nlisten = \"[2001:db8::1]:53\"\n", 4, 10, "dns-remote-listen", "is not loopback");
    assert!(load("version = 1\n[dns]\nbypass = \"deny\"\nlisten = [\"0.0.0.0:53\"]\nallow_remote_clients = true\n").0.is_some());
    // The forwarder's user: never root; a number or a name.
    one_error("version = 1\n[dns]\nuser = 0\n", 3, 8, "dns-user", "must not run as root");
    one_error("version = 1\n[dns]\nuser = \"root\"\n", 3, 8, "dns-user", "must not run as root");
    one_error("version = 1\n[dns]\nuser = true\n", 3, 8, "wrong-type", "a user name or a uid");
    one_error("version = 1\n[dns]\nset_size = 10\n", 3, 12, "bad-value", "out of range 1024");
    one_error("version = 1\n[dns]\nlistn = 1\n", 3, 1, "unknown-key", "did you mean `listen`?");
    let e = errors(
        "version = 1\n[[expect]]\nto = \"api.example.test:443\"\naddress = \"nope\"\nverdict = \"allow\"\n",
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!((e[0].0, e[0].2), (4, "bad-address"));
    one_error(
        "version = 1\n[[expect]]\nto = \"192.0.2.1:443\"\naddress = \"192.0.2.2\"\nverdict = \"allow\"\n",
        4,
        11,
        "bad-value",
        "only for expectations whose `to` is a domain name",
    );
}

#[test]
fn lints_know_domains() {
    // A rule naming only domains is not "never matches"; a later narrower domain is shadowed.
    let src = r#"version = 1
[dns]
upstreams = ["192.0.2.53:53"]
[[rule]]
name = "all"
action = "allow"
ports = [443]
to = ["*.example.test"]
purpose = "p"
owner = "o"
[[rule]]
name = "one"
action = "allow"
ports = [443]
to = ["api.example.test"]
purpose = "p"
owner = "o"
"#;
    let (p, _) = load(src);
    let warnings = lint::lint(&p.unwrap(), Date { year: 2026, month: 1, day: 1 });
    let codes: Vec<_> = warnings.iter().map(|d| d.code).collect();
    assert_eq!(codes, vec!["shadowed"], "{warnings:#?}");
    // The forwarder resolves, so no rule for port 53 is needed; a local upstream in redirect
    // mode is a loop.
    let src = "version = 1\n[dns]\nupstreams = [\"127.0.0.53\"]\n[[rule]]\nname = \"a\"\naction = \"allow\"\nto = [\"a.example.test\"]\npurpose = \"p\"\nowner = \"o\"\n";
    let (p, _) = load(src);
    let codes: Vec<_> = lint::lint(&p.unwrap(), Date { year: 2026, month: 1, day: 1 }).iter().map(|d| d.code).collect();
    assert_eq!(codes, vec!["dns-loop"]);
}
