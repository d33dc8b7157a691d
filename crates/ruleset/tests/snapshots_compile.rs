//! Snapshot tests of compiled output: the shipped examples and small policies, as nft text and JSON.

use ruleset::compile::CompileOptions;

fn compile_src(src: &str) -> ruleset::Table {
    let (p, diags) = policy::load(src, &policy::StaticResolver::debian_base());
    let p = p.unwrap_or_else(|| panic!("policy has errors: {diags:#?}"));
    ruleset::compile(&p, &CompileOptions { comment: Some("leash sha256:test /etc/leash/policy.toml".into()), ..Default::default() })
}

fn example(name: &str) -> String {
    let path = format!("{}/../../examples/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn web_server_nft() {
    insta::assert_snapshot!(ruleset::render::nft_text(&compile_src(&example("web-server"))));
}

#[test]
fn database_server_nft() {
    insta::assert_snapshot!(ruleset::render::nft_text(&compile_src(&example("database-server"))));
}

#[test]
fn developer_workstation_nft() {
    insta::assert_snapshot!(ruleset::render::nft_text(&compile_src(&example("developer-workstation"))));
}

#[test]
fn app_server_domains_nft() {
    insta::assert_snapshot!(ruleset::render::nft_text(&compile_src(&example("app-server-domains"))));
}

#[test]
fn app_server_domains_json() {
    let json =
        serde_json::to_string_pretty(&ruleset::render::nft_json(&compile_src(&example("app-server-domains")))).unwrap();
    insta::assert_snapshot!(json);
}

#[test]
fn web_server_json() {
    let json = serde_json::to_string_pretty(&ruleset::render::nft_json(&compile_src(&example("web-server")))).unwrap();
    insta::assert_snapshot!(json);
}

#[test]
fn default_allow_with_drop_and_no_loopback() {
    let t = compile_src(
        r#"version = 1
[defaults]
outbound = "allow"
deny_with = "drop"
allow_loopback = false
allow_established = false

[[rule]]
name = "no-smtp"
action = "deny"
ports = [25, 465, "587"]
log = true
"#,
    );
    insta::assert_snapshot!(ruleset::render::nft_text(&t));
}

#[test]
fn deny_any_protocol_rejects_tcp_with_reset_and_others_with_icmp() {
    let t = compile_src(
        r#"version = 1
[[rule]]
name = "bad"
action = "deny"
to = ["203.0.113.0/24", "203.0.113.7", "198.51.100.1", "2001:db8::1"]
"#,
    );
    let text = ruleset::render::nft_text(&t);
    // Overlapping networks merge; a single v6 host needs no set.
    assert!(text.contains("elements = { 198.51.100.1, 203.0.113.0/24 }"), "{text}");
    assert!(text.contains("ip6 daddr 2001:db8::1 meta l4proto tcp counter reject with tcp reset comment \"bad\""), "{text}");
    assert!(text.contains("ip6 daddr 2001:db8::1 counter reject with icmpx admin-prohibited comment \"bad\""), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn icmp_never_pairs_with_ipv6_destinations() {
    let t = compile_src(
        r#"version = 1
[[rule]]
name = "ping"
action = "allow"
proto = ["icmp", "icmpv6"]
to = ["192.0.2.0/24", "2001:db8::/64"]
"#,
    );
    let rules: Vec<String> = t.chains[0].rules.iter().map(ruleset::render::rule_text).filter(|r| r.ends_with("\"ping\"")).collect();
    assert_eq!(
        rules,
        vec![
            "ip daddr @r_ping_v4 meta l4proto icmp counter accept comment \"ping\"",
            "ip6 daddr @r_ping_v6 meta l4proto ipv6-icmp counter accept comment \"ping\"",
        ]
    );
}

/// The example with every rule dimension beyond address and port, compiled as of a fixed
/// instant (time windows depend on the daylight-saving periods from then on), with the feed file
/// and the nginx cgroup supplied the way the binary's resolver would.
#[test]
fn branch_office_nft() {
    let dir = format!("{}/../../examples", env!("CARGO_MANIFEST_DIR"));
    let feed = std::fs::read(format!("{dir}/feeds/threat-feed.txt")).unwrap();
    let resolver = policy::StaticResolver::debian_base()
        .file("feeds/threat-feed.txt", feed)
        .cgroup2("unified")
        .cgroup("system.slice/nginx.service", 4242);
    let (p, diags) = policy::load(&example("branch-office"), &resolver);
    let p = p.unwrap_or_else(|| panic!("policy has errors: {diags:#?}"));
    let opts = CompileOptions {
        comment: Some("leash sha256:test /etc/leash/policy.toml".into()),
        now: Some("2026-11-25T12:00:00Z".parse().unwrap()),
        imitate: None,
        kernel_minutes_west: 0,
    };
    insta::assert_snapshot!(ruleset::render::nft_text(&ruleset::compile(&p, &opts)));
}
