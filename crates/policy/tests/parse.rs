//! `load`: every kind of error at its exact line and column, several errors at once, and a full
//! valid policy parsed to the expected `Policy`.

mod common;

use common::{errors, load, load_ok, one_error, span_of};
use ipnet::IpNet;
use policy::*;

/// A minimal valid head to which the tests append what they check.
const HEAD: &str = "version = 1\n";

fn with_rule(body: &str) -> String {
    format!("{HEAD}[[rule]]\nname = \"r\"\naction = \"allow\"\n{body}")
}

fn with_expect(body: &str) -> String {
    format!("{HEAD}[[expect]]\nverdict = \"allow\"\n{body}")
}

// ---------------------------------------------------------------- syntax and the top level

#[test]
fn syntax_error_is_one_error_at_its_position() {
    one_error("version = 1\nrule = [\n", 2, 9, "syntax", "TOML syntax");
    one_error("version = 1\nversion = 2\n", 2, 1, "syntax", "duplicate key");
    one_error("version = 1\n[[rule]]\nname = \"a\" action = \"allow\"\n", 3, 12, "syntax", "");
    // An invalid date is a syntax error too, caught by the TOML parser.
    one_error(&with_rule("review = 2027-02-30\n"), 5, 10, "syntax", "invalid date");
}

#[test]
fn empty_text_misses_the_version() {
    one_error("", 1, 1, "missing-key", "missing `version = 1`");
    one_error("# only a comment\n", 1, 1, "missing-key", "version");
}

#[test]
fn version_must_be_the_integer_one() {
    one_error("version = 2\n", 1, 11, "bad-version", "unsupported version 2");
    one_error("version = \"1\"\n", 1, 11, "wrong-type", "expected the integer 1, found a string");
    one_error("version = 1.0\n", 1, 11, "wrong-type", "found a float");
    one_error("[version]\n", 1, 1, "wrong-type", "found a table");
}

#[test]
fn unknown_key_at_top_level() {
    // The misspelt key is reported once, not again as a missing `version`.
    one_error("versoin = 1\n", 1, 1, "unknown-key", "unknown key `versoin` in the top level; did you mean `version`?");
    // Sorted by position: both start at offset 0; the shorter span (the missing version) first.
    let e = errors("zzz = 1\n");
    let got: Vec<(usize, usize, &str)> = e.iter().map(|(l, c, k, _)| (*l, *c, *k)).collect();
    assert_eq!(got, vec![(1, 1, "missing-key"), (1, 1, "unknown-key")]);

    one_error("version = 1\n[rules]\n", 2, 2, "unknown-key", "did you mean `rule`?");
    one_error("version = 1\nzzz = 3\n", 2, 1, "unknown-key", "expected `version`, `defaults`, `dns`, `forward`, `set`, `countries`, `rule` or `expect`");
}

#[test]
fn unknown_key_in_defaults() {
    one_error("version = 1\n[defaults]\noutbond = \"deny\"\n", 3, 1, "unknown-key", "`outbound`");
    // Inline tables are checked the same way.
    one_error(
        "version = 1\ndefaults = { outbound = \"deny\", x = 1 }\n",
        2,
        33,
        "unknown-key",
        "unknown key `x` in [defaults]",
    );
}

#[test]
fn unknown_key_in_rule() {
    one_error(
        &with_rule("prot = \"udp\"\n"),
        5,
        1,
        "unknown-key",
        "unknown key `prot` in [[rule]]; did you mean `proto`?",
    );
    // A sub-table of a rule is an unknown key too, reported at its name.
    one_error(&with_rule("[rule.extra]\na = 1\n"), 5, 7, "unknown-key", "unknown key `extra`");
}

#[test]
fn unknown_key_in_expect() {
    one_error(
        &with_expect("to = \"192.0.2.1:53\"\nport = 53\n"),
        5,
        1,
        "unknown-key",
        "unknown key `port` in [[expect]]",
    );
}

#[test]
fn sections_of_the_wrong_shape() {
    one_error("version = 1\ndefaults = 1\n", 2, 12, "wrong-type", "expected a table ([defaults]), found an integer");
    one_error(
        "version = 1\n[rule]\nname = \"a\"\n",
        2,
        1,
        "wrong-type",
        "`rule` must be an array of tables, written [[rule]]; found a table",
    );
    one_error("version = 1\nexpect = \"x\"\n", 2, 10, "wrong-type", "written [[expect]]");
    one_error("version = 1\nrule = [1]\n", 2, 9, "wrong-type", "expected a table like [[rule]], found an integer");
}

// ---------------------------------------------------------------- defaults

#[test]
fn defaults_values() {
    let t = |body: &str| format!("{HEAD}[defaults]\n{body}");
    one_error(&t("outbound = \"maybe\"\n"), 3, 12, "bad-value", "invalid outbound `maybe`; expected `allow` or `deny`");
    one_error(&t("outbound = true\n"), 3, 12, "wrong-type", "expected a string, found a boolean");
    one_error(&t("deny_with = \"ignore\"\n"), 3, 13, "bad-value", "expected `reject` or `drop`");
    one_error(&t("log_denied = \"yes\"\n"), 3, 14, "wrong-type", "expected a boolean (true or false), found a string");
    one_error(&t("log_group = 65536\n"), 3, 13, "bad-value", "log_group 65536 is out of range");
    one_error(&t("log_group = -1\n"), 3, 13, "bad-value", "out of range");
    one_error(&t("log_group = \"0\"\n"), 3, 13, "wrong-type", "expected an integer");
    one_error(&t("allow_loopback = 1\n"), 3, 18, "wrong-type", "found an integer");
    one_error(&t("allow_established = [true]\n"), 3, 21, "wrong-type", "found an array");
    one_error(&t("on_apply = \"kill\"\n"), 3, 12, "bad-value", "invalid on_apply `kill`; expected `report` or `cut`");
    one_error(&t("on_apply = true\n"), 3, 12, "wrong-type", "expected a string, found a boolean");
    assert_eq!(load_ok(&t("on_apply = \"cut\"\n")).defaults.on_apply, OnApply::Cut);
    assert_eq!(load_ok(&t("on_apply = \"report\"\n")).defaults.on_apply, OnApply::Report);
    assert_eq!(load_ok(HEAD).defaults.on_apply, OnApply::Report, "report unless the policy says cut");
}

#[test]
fn defaults_apply_when_absent() {
    let p = load_ok(HEAD);
    assert_eq!(p.defaults, Defaults::default());
    assert!(p.rules.is_empty() && p.expects.is_empty());

    let src = "version = 1\ndefaults = { outbound = \"allow\", log_group = 65535, allow_established = false }\n";
    let p = load_ok(src);
    assert_eq!(p.defaults.outbound, Action::Allow);
    assert_eq!(p.defaults.outbound_span, Some(span_of(src, "\"allow\"")));
    assert_eq!(p.defaults.log_group, 65535);
    assert!(!p.defaults.allow_established);
    assert_eq!(p.defaults.allow_established_span, Some(span_of(src, "false")));
}

// ---------------------------------------------------------------- rules

#[test]
fn rule_requires_name_and_action_reported_at_header() {
    let src = "version = 1\n\n[[rule]]\nproto = \"tcp\"\n";
    let e = errors(src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e.iter().all(|(l, c, k, _)| (*l, *c, *k) == (3, 1, "missing-key")));
    assert!(e.iter().any(|x| x.3 == "rule has no `name`"));
    assert!(e.iter().any(|x| x.3.contains("rule has no `action`")));
}

#[test]
fn rule_names() {
    let t = |name: &str| format!("{HEAD}[[rule]]\naction = \"deny\"\nname = {name}\n");
    one_error(&t("\"DNS\""), 4, 8, "bad-value", "invalid rule name `DNS`");
    one_error(&t("\"\""), 4, 8, "bad-value", "1 to 32 characters");
    one_error(&t(&format!("\"{}\"", "a".repeat(33))), 4, 8, "bad-value", "1 to 32 characters");
    one_error(&t("\"a b\""), 4, 8, "bad-value", "a-z, 0-9");
    one_error(&t("\"@loopback\""), 4, 8, "bad-value", "invalid rule name");
    one_error(&t("7"), 4, 8, "wrong-type", "expected a string, found an integer");
    load_ok(&t(&format!("\"{}\"", "a-_9".repeat(8))));
}

#[test]
fn duplicate_rule_name_points_at_the_second() {
    let src = "version = 1\n[[rule]]\nname = \"a\"\naction = \"allow\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\n";
    one_error(src, 6, 8, "duplicate-name", "duplicate rule name `a` (first used on line 3)");
}

#[test]
fn rule_action() {
    let src = format!("{HEAD}[[rule]]\nname = \"r\"\naction = \"accept\"\n");
    one_error(&src, 4, 10, "bad-value", "invalid action `accept`; expected `allow` or `deny`");
}

#[test]
fn rule_proto() {
    one_error(
        &with_rule("proto = \"sctp\"\n"),
        5,
        9,
        "bad-value",
        "invalid proto `sctp`; expected `tcp`, `udp`, `icmp`, `icmpv6` or `any`",
    );
    one_error(&with_rule("proto = [\"tcp\", \"ip\"]\n"), 5, 17, "bad-value", "invalid proto `ip`");
    one_error(
        &with_rule("proto = [\"tcp\", 6]\n"),
        5,
        17,
        "wrong-type",
        "expected a protocol name (a string), found an integer",
    );
    one_error(&with_rule("proto = 6\n"), 5, 9, "wrong-type", "found an integer");
}

#[test]
fn rule_proto_forms() {
    let protos = |v: &str| load_ok(&with_rule(&format!("proto = {v}\n"))).rules[0].cond.protos.clone();
    assert_eq!(protos("\"udp\""), Some(vec![Proto::Udp]));
    assert_eq!(protos("[\"udp\", \"tcp\", \"udp\"]"), Some(vec![Proto::Udp, Proto::Tcp]));
    assert_eq!(protos("\"any\""), None);
    assert_eq!(protos("[\"icmp\", \"any\"]"), None);
    assert_eq!(protos("[]"), Some(vec![]));
    assert_eq!(load_ok(&with_rule("")).rules[0].cond.protos, None);
}

#[test]
fn ports_with_icmp_are_an_error_at_the_proto() {
    one_error(
        &with_rule("proto = [\"tcp\", \"icmp\"]\nports = [80]\n"),
        5,
        17,
        "ports-without-ports-proto",
        "proto icmp has no ports, but the rule has `ports` (on line 6)",
    );
    // Also when `any` is listed next to it: the author named icmp and ports together.
    one_error(
        &with_rule("ports = [80]\nproto = [\"any\", \"icmpv6\"]\n"),
        6,
        17,
        "ports-without-ports-proto",
        "icmpv6",
    );
}

#[test]
fn rule_ports() {
    one_error(&with_rule("ports = [0]\n"), 5, 10, "bad-port", "port 0 is out of range 1 to 65535");
    one_error(&with_rule("ports = [53, 65536]\n"), 5, 14, "bad-port", "port 65536 is out of range");
    one_error(
        &with_rule("ports = [\"9000-8000\"]\n"),
        5,
        10,
        "bad-port",
        "port range `9000-8000` is reversed; write 8000-9000",
    );
    one_error(&with_rule("ports = [\"http\"]\n"), 5, 10, "bad-port", "invalid port range `http`");
    one_error(&with_rule("ports = [\"1-70000\"]\n"), 5, 10, "bad-port", "port 70000 is out of range");
    one_error(
        &with_rule("ports = [true]\n"),
        5,
        10,
        "wrong-type",
        "expected a port number or a \"FROM-TO\" range, found a boolean",
    );
    one_error(&with_rule("ports = { a = 1 }\n"), 5, 9, "wrong-type", "found an inline table");

    let src = with_rule("ports = [53, \"8000-8080\", \"443\"]\n");
    let p = load_ok(&src);
    assert_eq!(
        p.rules[0].cond.ports,
        Some(vec![PortRange::single(53), PortRange { first: 8000, last: 8080 }, PortRange::single(443)])
    );
    assert_eq!(p.rules[0].cond.ports_span, Some(span_of(&src, "[53, \"8000-8080\", \"443\"]")));
    // A single port needs no list.
    assert_eq!(load_ok(&with_rule("ports = 22\n")).rules[0].cond.ports, Some(vec![PortRange::single(22)]));
}

#[test]
fn rule_to() {
    one_error(
        &with_rule("to = [\"192.0.2.1/24\"]\n"),
        5,
        7,
        "host-bits-set",
        "`192.0.2.1/24` has host bits set; the network is 192.0.2.0/24",
    );
    one_error(&with_rule("to = [\"2001:db8::1/32\"]\n"), 5, 7, "host-bits-set", "2001:db8::/32");
    // A domain name is a destination too, but it needs the forwarder's upstreams.
    one_error(&with_rule("to = [\"example.com\"]\n"), 5, 7, "dns-no-upstream", "add `[dns]` with `upstreams");
    one_error(&with_rule("to = [\"a*.example.com\"]\n"), 5, 7, "bad-domain", "invalid domain name `a*.example.com`");
    one_error(&with_rule("to = [\"192.0.2.300\"]\n"), 5, 7, "bad-address", "invalid address `192.0.2.300`");
    one_error(&with_rule("to = [\"192.0.2.0/33\"]\n"), 5, 7, "bad-address", "invalid address");
    one_error(
        &with_rule("to = [\"192.0.2.1\", 5]\n"),
        5,
        20,
        "wrong-type",
        "expected an address, CIDR or domain name (a string), found an integer",
    );

    let p = load_ok(&with_rule("to = [\"192.0.2.53\", \"198.51.100.0/24\", \"::1\", \"0.0.0.0/0\"]\n"));
    let nets: Vec<IpNet> =
        ["192.0.2.53/32", "198.51.100.0/24", "::1/128", "0.0.0.0/0"].iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(p.rules[0].cond.to, Some(nets));
}

#[test]
fn rule_users_and_groups() {
    one_error(&with_rule("user = [\"root\", \"mallory\"]\n"), 5, 17, "unknown-user", "unknown user `mallory`");
    one_error(&with_rule("user = \"1000\"\n"), 5, 8, "unknown-user", "write numeric ids without quotes");
    one_error(&with_rule("user = -1\n"), 5, 8, "bad-value", "user id -1 is out of range 0 to 4294967295");
    one_error(&with_rule("user = 4294967296\n"), 5, 8, "bad-value", "out of range");
    one_error(&with_rule("user = 1.5\n"), 5, 8, "wrong-type", "expected a user name or numeric id, found a float");
    one_error(&with_rule("group = [\"staff\"]\n"), 5, 10, "unknown-group", "unknown group `staff`");
    one_error(&with_rule("[rule.group]\n"), 5, 1, "wrong-type", "expected a group or a list of groups, found a table");

    let src = with_rule("user = [\"root\", 1000]\ngroup = \"developers\"\n");
    let r = &load_ok(&src).rules[0];
    assert_eq!(
        r.cond.users,
        Some(vec![
            Principal { name: Some("root".into()), id: 0, span: span_of(&src, "\"root\"") },
            Principal { name: None, id: 1000, span: span_of(&src, "1000") },
        ])
    );
    assert_eq!(
        r.cond.groups,
        Some(vec![Principal { name: Some("developers".into()), id: 1001, span: span_of(&src, "\"developers\"") }])
    );
}

#[test]
fn rule_documentation_fields() {
    one_error(&with_rule("log = \"yes\"\n"), 5, 7, "wrong-type", "expected a boolean");
    one_error(&with_rule("purpose = 1\n"), 5, 11, "wrong-type", "expected a string, found an integer");
    one_error(&with_rule("justification = []\n"), 5, 17, "wrong-type", "found an array");
    one_error(&with_rule("owner = false\n"), 5, 9, "wrong-type", "found a boolean");
    one_error(
        &with_rule("risk = \"extreme\"\n"),
        5,
        8,
        "bad-value",
        "invalid risk `extreme`; expected `low`, `medium` or `high`",
    );
    one_error(&with_rule("review = \"2027-06-01\"\n"), 5, 10, "wrong-type", "write it without quotes");
    one_error(&with_rule("review = 2027-06-01T10:00:00\n"), 5, 10, "bad-value", "without a time");
    one_error(&with_rule("review = 2027-06-01T10:00:00Z\n"), 5, 10, "bad-value", "without a time");
    one_error(
        &with_rule("review = 20270601\n"),
        5,
        10,
        "wrong-type",
        "expected a date like 2027-06-01, found an integer",
    );
}

// ---------------------------------------------------------------- expectations

#[test]
fn expect_required_keys() {
    let src = "version = 1\n[[expect]]\nproto = \"udp\"\n";
    let e = errors(src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e.iter().all(|(l, c, k, _)| (*l, *c, *k) == (2, 1, "missing-key")));
    assert!(e.iter().any(|x| x.3.contains("no `to`")));
    assert!(e.iter().any(|x| x.3.contains("no `verdict`")));
}

#[test]
fn expect_destination() {
    one_error(&with_expect("to = \"exa mple.com:80\"\n"), 4, 6, "bad-domain", "invalid domain name `exa mple.com`");
    one_error(&with_expect("to = \"example.com:http\"\n"), 4, 6, "bad-domain", "expected NAME[:PORT]");
    one_error(&with_expect("to = \"192.0.2.1:0\"\n"), 4, 6, "bad-address", "port 0 is out of range");
    one_error(&with_expect("to = \"192.0.2.0/24:80\"\n"), 4, 6, "bad-address", "ADDR[:PORT]");
    one_error(&with_expect("to = 5\n"), 4, 6, "wrong-type", "expected a string");
    one_error(&with_expect("to = \"192.0.2.1\"\n"), 4, 6, "expect-port", "a tcp expectation needs a port");
    one_error(
        &with_expect("proto = \"udp\"\nto = \"[2001:db8::1]\"\n"),
        5,
        6,
        "expect-port",
        "a udp expectation needs a port",
    );
    one_error(&with_expect("proto = \"icmp\"\nto = \"192.0.2.1:7\"\n"), 5, 6, "expect-port", "icmp has no ports");
    one_error(
        &with_expect("proto = \"icmp\"\nto = \"2001:db8::1\"\n"),
        5,
        6,
        "expect-family",
        "icmp needs an IPv4 address",
    );
    one_error(
        &with_expect("proto = \"icmpv6\"\nto = \"192.0.2.1\"\n"),
        5,
        6,
        "expect-family",
        "icmpv6 needs an IPv6 address",
    );
    one_error(
        &with_expect("proto = \"any\"\nto = \"192.0.2.1:1\"\n"),
        4,
        9,
        "bad-value",
        "an expectation is one connection",
    );
}

#[test]
fn expect_principals() {
    one_error(
        &with_expect("to = \"192.0.2.1:1\"\nuser = \"mallory\"\n"),
        5,
        8,
        "unknown-user",
        "unknown user `mallory`",
    );
    one_error(
        &with_expect("to = \"192.0.2.1:1\"\ngroup = \"staff\"\n"),
        5,
        9,
        "unknown-group",
        "unknown group `staff`",
    );
    one_error(
        &with_expect("to = \"192.0.2.1:1\"\nuser = [\"root\"]\n"),
        5,
        8,
        "wrong-type",
        "expected a user name or numeric id, found an array",
    );
    // bob has no known primary group, so the group must be given.
    one_error(
        &with_expect("to = \"192.0.2.1:1\"\nuser = \"bob\"\n"),
        5,
        8,
        "no-primary-group",
        "cannot tell the primary group of uid 1001; add `group`",
    );
    let p = load_ok(&with_expect("to = \"192.0.2.1:1\"\nuser = \"bob\"\ngroup = 7\n"));
    assert_eq!((p.expects[0].uid, p.expects[0].gid), (1001, 7));
}

#[test]
fn expect_defaults() {
    let p = load_ok(&with_expect("to = \"192.0.2.1:443\"\n"));
    let x = &p.expects[0];
    assert_eq!((x.proto, x.uid, x.gid, x.user.clone(), x.group.clone()), (Proto::Tcp, 0, 0, None, None));
    let p = load_ok(&with_expect("to = \"192.0.2.1:443\"\nuser = \"alice\"\n"));
    assert_eq!((p.expects[0].uid, p.expects[0].gid), (1000, 1000));
    let p = load_ok(&with_expect("to = \"192.0.2.1:443\"\nuser = 12345\n").replace("12345", "0"));
    assert_eq!((p.expects[0].uid, p.expects[0].gid), (0, 0));
    // Numeric id without a known primary group.
    one_error(&with_expect("to = \"192.0.2.1:443\"\nuser = 12345\n"), 5, 8, "no-primary-group", "uid 12345");
}

// ---------------------------------------------------------------- many errors at once

#[test]
fn every_error_is_reported_sorted_by_position() {
    let src = r#"version = 1
colour = "blue"

[defaults]
outbound = "maybe"
log_group = 70000

[[rule]]
name = "Bad Name"
action = "allow"
proto = "sctp"
ports = [0, "5-1"]
to = ["10.0.0.1/8"]
user = "mallory"

[[rule]]
action = "deny"

[[expect]]
to = "192.0.2.1"
verdict = "perhaps"
"#;
    let e = errors(src);
    let got: Vec<(usize, usize, &str)> = e.iter().map(|(l, c, k, _)| (*l, *c, *k)).collect();
    assert_eq!(
        got,
        vec![
            (2, 1, "unknown-key"),
            (5, 12, "bad-value"),
            (6, 13, "bad-value"),
            (9, 8, "bad-value"),
            (11, 9, "bad-value"),
            (12, 10, "bad-port"),
            (12, 13, "bad-port"),
            (13, 7, "host-bits-set"),
            (14, 8, "unknown-user"),
            (16, 1, "missing-key"),
            (20, 6, "expect-port"),
            (21, 11, "bad-value"),
        ],
        "{e:#?}"
    );
}

#[test]
fn warnings_do_not_prevent_loading() {
    // load itself only produces errors; lints are separate. A clean policy has no diagnostics.
    let (p, d) = load(HEAD);
    assert!(p.is_some() && d.is_empty());
}

// ---------------------------------------------------------------- a full valid policy

const FULL: &str = r#"version = 1

[defaults]
outbound = "deny"
deny_with = "reject"
log_denied = true
log_group = 3
allow_loopback = true
allow_established = true

[[rule]]
name = "dns"
action = "allow"
proto = "udp"
ports = [53, "8000-8080"]
to = ["192.0.2.53", "198.51.100.0/24", "2001:db8::/32"]
user = ["root", 1000]
group = ["developers"]
log = false
purpose = "Name resolution"
justification = "Every service needs DNS"
risk = "low"
owner = "Platform team"
review = 2027-06-01

[[rule]]
name = "no-smtp"
action = "deny"
ports = 25
log = true

[[expect]]
to = "192.0.2.53:53"
proto = "udp"
user = "root"
group = "wheel"
verdict = "allow"

[[expect]]
to = "[2001:db8::1]:443"
user = "alice"
verdict = "deny"

[[expect]]
to = "2001:db8::2"
proto = "icmpv6"
verdict = "deny"
"#;

#[test]
fn full_example_parses_to_the_expected_policy() {
    let src = FULL;
    let p = load_ok(src);
    let header = |n: usize| {
        let start = src.match_indices("[[rule]]").nth(n).unwrap().0;
        start..start + "[[rule]]".len()
    };
    let expect_header = |n: usize| {
        let start = src.match_indices("[[expect]]").nth(n).unwrap().0;
        start..start + "[[expect]]".len()
    };
    let expected = Policy {
        version: 1,
        defaults: Defaults {
            outbound: Action::Deny,
            outbound_span: Some(
                span_of(src, "\"deny\"\ndeny_with").start..span_of(src, "\"deny\"\ndeny_with").start + 6,
            ),
            deny_with: DenyWith::Reject,
            log_denied: true,
            log_group: 3,
            allow_loopback: true,
            allow_established: true,
            allow_established_span: Some({
                let s = span_of(src, "allow_established = true").end - 4;
                s..s + 4
            }),
            timezone: None,
            timezone_span: None,
            on_apply: OnApply::Report,
        },
        rules: vec![
            Rule {
                name: "dns".into(),
                span: header(0),
                name_span: span_of(src, "\"dns\""),
                action: Action::Allow,
                cond: Conditions {
                    protos: Some(vec![Proto::Udp]),
                    ports: Some(vec![PortRange::single(53), PortRange { first: 8000, last: 8080 }]),
                    ports_span: Some(span_of(src, "[53, \"8000-8080\"]")),
                    to: Some(vec![
                        "192.0.2.53/32".parse().unwrap(),
                        "198.51.100.0/24".parse().unwrap(),
                        "2001:db8::/32".parse().unwrap(),
                    ]),
                    to_span: Some(span_of(src, "[\"192.0.2.53\", \"198.51.100.0/24\", \"2001:db8::/32\"]")),
                    domains: vec![],
                    allow_private: false,
                    sets: vec![],
                    countries: vec![],
                    country_ranges: Default::default(),
                    users: Some(vec![
                        Principal {
                            name: Some("root".into()),
                            id: 0,
                            span: span_of(src, "[\"root\", 1000]").start + 1..span_of(src, "[\"root\", 1000]").start + 7,
                        },
                        Principal { name: None, id: 1000, span: span_of(src, "1000") },
                    ]),
                    groups: Some(vec![Principal {
                        name: Some("developers".into()),
                        id: 1001,
                        span: span_of(src, "\"developers\""),
                    }]),
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
                purpose: Some("Name resolution".into()),
                justification: Some("Every service needs DNS".into()),
                risk: Some(Risk::Low),
                owner: Some("Platform team".into()),
                review: Some(Date { year: 2027, month: 6, day: 1 }),
                review_span: Some(span_of(src, "2027-06-01")),
            },
            Rule {
                name: "no-smtp".into(),
                span: header(1),
                name_span: span_of(src, "\"no-smtp\""),
                action: Action::Deny,
                cond: Conditions {
                    protos: None,
                    ports: Some(vec![PortRange::single(25)]),
                    ports_span: Some(span_of(src, "25\n").start..span_of(src, "25\n").start + 2),
                    to: None,
                    to_span: None,
                    domains: vec![],
                    allow_private: false,
                    sets: vec![],
                    countries: vec![],
                    country_ranges: Default::default(),
                    users: None,
                    groups: None,
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
                log: true,
                purpose: None,
                justification: None,
                risk: None,
                owner: None,
                review: None,
                review_span: None,
            },
        ],
        expects: vec![
            Expect {
                span: expect_header(0),
                to: "192.0.2.53".parse().unwrap(),
                name: None,
                port: Some(53),
                proto: Proto::Udp,
                user: Some(Principal {
                    name: Some("root".into()),
                    id: 0,
                    span: span_of(src, "user = \"root\"").start + 7..span_of(src, "user = \"root\"").end,
                }),
                group: Some(Principal { name: Some("wheel".into()), id: 10, span: span_of(src, "\"wheel\"") }),
                uid: 0,
                gid: 10,
                cgroup: None,
                at: None,
                from: None,
                iif: None,
                verdict: Action::Allow,
            },
            Expect {
                span: expect_header(1),
                to: "2001:db8::1".parse().unwrap(),
                name: None,
                port: Some(443),
                proto: Proto::Tcp,
                user: Some(Principal { name: Some("alice".into()), id: 1000, span: span_of(src, "\"alice\"") }),
                group: None,
                uid: 1000,
                gid: 1000,
                cgroup: None,
                at: None,
                from: None,
                iif: None,
                verdict: Action::Deny,
            },
            Expect {
                span: expect_header(2),
                to: "2001:db8::2".parse().unwrap(),
                name: None,
                port: None,
                proto: Proto::Icmpv6,
                user: None,
                group: None,
                uid: 0,
                gid: 0,
                cgroup: None,
                at: None,
                from: None,
                iif: None,
                verdict: Action::Deny,
            },
        ],
        dns: Default::default(),
        sets: vec![],
        countries: None,
        forward: Default::default(),
    };
    assert_eq!(p, expected);
    assert_eq!(p.rules[1].effective_protos(), Some(vec![Proto::Tcp, Proto::Udp]));
    assert_eq!(
        p.expects[1].connection(),
        Connection { proto: Proto::Tcp, dst: "2001:db8::1".parse().unwrap(), port: Some(443), uid: 1000, gid: 1000, name: None, cgroup: None, at: None, from: None }
    );
}

#[test]
fn rules_as_inline_tables() {
    let src = "version = 1\nrule = [{ name = \"a\", action = \"allow\", ports = [443] }, { name = \"b\", action = \"deny\" }]\n";
    let p = load_ok(src);
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].name_span, span_of(src, "\"a\""));
    assert_eq!(p.rules[1].action, Action::Deny);
    one_error(
        "version = 1\nrule = [{ name = \"a\", acton = \"allow\" }]\n",
        2,
        23,
        "unknown-key",
        "did you mean `action`?",
    );
    // Missing keys of an inline table are reported at the whole table.
    one_error("version = 1\nrule = [{ name = \"a\" }]\n", 2, 9, "missing-key", "rule has no `action`");
}

#[test]
fn crlf_line_endings() {
    let src = "version = 1\r\n[[rule]]\r\nname = \"a\"\r\naction = \"allow\"\r\nprot = 1\r\n";
    one_error(src, 5, 1, "unknown-key", "prot");
}
