//! `leash explain`: verdict, deciding rule and why each earlier rule did not match (offline).

use crate::harness::*;

#[test]
fn explain_names_the_deciding_rule_and_the_misses() {
    let p = example("web-server");
    let r = leash(&["explain", p.to_str().unwrap(), "--to", "198.51.100.70:5432", "--user", "www-data"]);
    assert!(r.ok(), "{r}");
    assert!(r.stdout.starts_with("ALLOW: tcp to 198.51.100.70 port 5432 as uid 33 gid 33"), "{r}");
    assert!(r.stdout.contains("decided by rule `database`"), "{r}");
    assert!(r.stdout.contains("web-server.toml:"), "{r}");
    // Every earlier rule appears with the first condition it failed.
    for name in ["dns", "ntp", "package-mirrors", "smtp-submission"] {
        assert!(r.stdout.lines().any(|l| l.trim_start().starts_with(name)), "{name}: {r}");
    }
}

#[test]
fn explain_json_for_default_deny() {
    let p = example("web-server");
    let r = leash(&["explain", "--json", p.to_str().unwrap(), "--to", "[2001:db8::99]:443", "--user", "nobody"]);
    assert!(r.ok(), "{r}");
    let j = r.json();
    assert_eq!(j["verdict"], "deny", "{r}");
    assert_eq!(j["decided_by"]["kind"], "default", "{r}");
    assert_eq!(j["connection"]["uid"], 65534, "{r}");
    assert_eq!(j["not_matched"].as_array().unwrap().len(), 5, "{r}");
    let first = &j["not_matched"][0];
    assert_eq!(first["rule"], "dns");
    assert!(first["reason"].as_str().unwrap().contains("443"), "{r}");
}

#[test]
fn explain_rejects_bad_arguments() {
    let p = example("web-server");
    let p = p.to_str().unwrap();
    for args in [
        vec!["explain", p, "--to", "192.0.2.1"],                      // tcp without a port
        vec!["explain", p, "--to", "192.0.2.1:80", "--proto", "icmp"], // icmp with a port
        vec!["explain", p, "--to", "not-an-address:80"],
        vec!["explain", p, "--to", "192.0.2.1:80", "--user", "no-such-user-leash"],
        vec!["explain", p, "--to", "192.0.2.1:80", "--at", "yesterday"],
    ] {
        let r = leash(&args);
        assert_eq!(r.code, Some(2), "a bad argument is a usage error: {r}");
        assert!(r.stderr.starts_with("leash: error:"), "{r}");
    }
}

#[test]
fn explain_at_a_time_from_a_service() {
    let p = example("branch-office");
    let p = p.to_str().unwrap();
    // The office-hours rule opens on a Monday morning in Berlin, in local time or as an instant
    // (08:30 UTC on a winter Monday is 09:30 in Berlin).
    for at in ["Mon 09:30", "2026-11-23 09:30", "2026-11-23T08:30:00Z"] {
        let r = leash(&["explain", p, "--to", "203.0.113.10:443", "--at", at]);
        assert!(r.ok(), "{r}");
        assert!(r.stdout.starts_with("ALLOW:"), "{at}: {r}");
        assert!(r.stdout.contains("decided by rule `saas-office-hours`"), "{at}: {r}");
    }
    let r = leash(&["explain", p, "--to", "203.0.113.10:443", "--at", "Sun 09:30"]);
    assert!(r.stdout.starts_with("DENY:") && r.stdout.contains("is outside Mon,Tue,Wed,Thu,Fri 08:00-18:00"), "{r}");

    // The payment provider only for nginx; the test resolver of this host has no such service,
    // so the rule matches nothing and says why.
    let r = leash(&["explain", "--json", p, "--to", "192.0.2.200:443", "--service", "nginx"]);
    assert!(r.ok(), "{r}");
    let j = r.json();
    assert_eq!(j["connection"]["cgroup"], "system.slice/nginx.service", "{r}");
    assert_eq!(j["connection"]["time_zone"], "Europe/Berlin", "{r}");

    // A limited rule says what it lets through.
    let r = leash(&["explain", p, "--to", "192.0.2.25:587"]);
    assert!(r.stdout.contains("limited: at most 30/minute (burst 10) new connections and at most 4 connections at once"), "{r}");
    // The threat feed decides before anything else.
    let r = leash(&["explain", p, "--to", "198.51.100.99:443"]);
    assert!(r.stdout.starts_with("DENY:") && r.stdout.contains("decided by rule `threats`"), "{r}");
}
