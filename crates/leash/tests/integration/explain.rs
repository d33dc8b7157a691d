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
