//! `leash check`: every error with FILE:LINE:COL, the offending line and a caret; warnings; JSON.

use crate::harness::*;

#[test]
fn examples_check_clean_with_deny_warnings() {
    for name in EXAMPLES {
        let r = leash(&["check", "--json", "--today", "2026-11-25", example(name).to_str().unwrap()]);
        assert!(r.ok(), "{r}");
        // The warnings an example may get depend on the host, not the policy: a service
        // (branch-office's nginx) that does not run here, and the DNS forwarder's user
        // (app-server-domains' leash-dns) where leash's sysusers file was not installed.
        let j = r.json();
        assert_eq!(j["ok"], true, "{r}");
        let diags = j["diagnostics"].as_array().cloned().unwrap_or_default();
        let host = ["missing-cgroup", "no-cgroup2", "dns-user"];
        let other: Vec<_> = diags.iter().filter(|d| !host.iter().any(|c| d["code"] == *c)).collect();
        assert!(other.is_empty(), "{r}");
    }
}

#[test]
fn every_error_is_reported_with_its_position() {
    let dir = TempDir::new("check");
    let path = dir.file(
        "bad.toml",
        r#"version = 1

[defaults]
outbound = "maybe"

[[rule]]
name = "Bad Name"
action = "allow"
prot = "udp"
ports = [70000]
to = ["192.0.2.300"]
"#,
    );
    let r = leash(&["check", &path]);
    assert_eq!(r.code, Some(1), "{r}");
    for (line_col, fragment) in [(":4:12: error:", "maybe"), (":7:8: error:", "name"), (":9:1: error:", "prot"), (":10:10: error:", "70000"), (":11:7: error:", "192.0.2.300")] {
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with(&path) && l.contains(line_col))
            .unwrap_or_else(|| panic!("no diagnostic at {line_col}:{r}"));
        assert!(line.contains(fragment) || r.stderr.contains(fragment), "{line}\n{r}");
    }
    // The offending line and a caret under it follow each header.
    assert!(r.stderr.contains("9 | prot = \"udp\"\n  | ^^^^"), "{r}");
}

/// Issue 12 item 14: invalid UTF-8 in a policy is a policy error at its line and column (exit 1),
/// not a byte index with exit 3.
#[test]
fn invalid_utf8_in_a_policy_is_an_error_at_its_position() {
    let dir = TempDir::new("utf8");
    // Line 4, after `name = "écaf` (12 characters, the `é` counting as one): column 13.
    let path = dir.file_bytes(
        "p.toml",
        b"version = 1\n\n[[rule]]\nname = \"\xc3\xa9caf\xe9\"\naction = \"allow\"\nto = [\"192.0.2.1\"]\n# \xff\xfe\n",
    );
    let r = leash(&["check", &path]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains(&format!("{path}:4:13: error: invalid UTF-8 (byte 0xe9)")), "{r}");
    assert!(r.stderr.contains(&format!("{path}:7:3: error: invalid UTF-8 (byte 0xff)")), "{r}");
    // The line is shown (with a replacement character) and the caret under the bad byte.
    assert!(r.stderr.contains("4 | name = \"\u{e9}caf\u{fffd}\"\n  |             ^\n"), "{r}");
    let r = leash(&["check", "--json", &path]);
    assert_eq!(r.code, Some(1), "{r}");
    let d = &r.json()["diagnostics"][0];
    assert_eq!((d["line"].as_u64(), d["column"].as_u64(), d["code"].as_str()), (Some(4), Some(13), Some("not-utf8")), "{r}");
    // A command that needs a valid policy stops there, as for any policy error.
    let r = leash(&["compile", &path]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains(&format!("{path}:4:13: error:")), "{r}");
}

/// Issue 12 item 14: a `[[set]]` file with invalid UTF-8 is reported at its line and column, nested
/// in the policy's error at the `file` value, like the set file's other bad lines.
#[test]
fn invalid_utf8_in_a_set_file_is_an_error_at_its_position() {
    let dir = TempDir::new("utf8set");
    dir.file_bytes("feed.txt", b"192.0.2.1\n198.51.100.0/24 ; caf\xe9\n\xff\n");
    let path = dir.file(
        "p.toml",
        "version = 1\n\n[[set]]\nname = \"feed\"\nfile = \"feed.txt\"\n\n[[rule]]\nname = \"x\"\naction = \"deny\"\nto = [\"set:feed\"]\n",
    );
    let r = leash(&["check", &path]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains(&format!("{path}:5:8: error: feed.txt:2:22: invalid UTF-8 (byte 0xe9)")), "{r}");
    assert!(r.stderr.contains(&format!("{path}:5:8: error: feed.txt:3:1: invalid UTF-8 (byte 0xff)")), "{r}");
}

#[test]
fn check_json_lists_diagnostics() {
    let dir = TempDir::new("json");
    let path = dir.file("p.toml", "version = 1\n[defaults]\nallow_established = false\n");
    let r = leash(&["check", "--json", "--today", "2026-11-25", &path]);
    assert!(r.ok(), "warnings alone must not fail check: {r}");
    let j = r.json();
    assert_eq!(j["errors"], 0, "{r}");
    let codes: Vec<&str> = j["diagnostics"].as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert!(codes.contains(&"established-off"), "{r}");
    assert!(codes.contains(&"no-dns"), "{r}");
    let d = j["diagnostics"].as_array().unwrap().iter().find(|d| d["code"] == "established-off").unwrap();
    assert_eq!((d["line"].as_u64(), d["column"].as_u64()), (Some(3), Some(21)), "points at the value: {r}");

    let r = leash(&["check", "--deny-warnings", "--today", "2026-11-25", &path]);
    assert_eq!(r.code, Some(1), "--deny-warnings must fail on warnings: {r}");
}

#[test]
fn unknown_user_is_an_error_at_the_name() {
    let dir = TempDir::new("user");
    let path = dir.file("p.toml", "version = 1\n[[rule]]\nname = \"x\"\naction = \"allow\"\nuser = [\"no-such-user-leash\"]\n");
    let r = leash(&["check", &path]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains(":5:9: error:") && r.stderr.contains("no-such-user-leash"), "{r}");
}

#[test]
fn compile_prints_nft_and_json() {
    let p = example("web-server");
    let r = leash(&["compile", p.to_str().unwrap()]);
    assert!(r.ok(), "{r}");
    assert!(r.stdout.contains("table inet leash {"), "{r}");
    assert!(r.stdout.contains("tcp dport 587 counter accept comment \"smtp-submission\""), "{r}");
    let r = leash(&["compile", "--format", "json", p.to_str().unwrap()]);
    assert!(r.ok(), "{r}");
    assert!(r.json()["nftables"].as_array().unwrap().len() > 5, "{r}");
}

#[test]
fn check_reports_set_file_lines_and_changes_nothing() {
    let dir = TempDir::new("check-set");
    dir.file("feed.txt", "192.0.2.1\n198.51.100.0/24\n  203.0.113.300\n");
    let policy = dir.file(
        "p.toml",
        "version = 1\n[[set]]\nname = \"feed\"\nfile = \"feed.txt\"\n[[rule]]\nname = \"block\"\naction = \"deny\"\nto = [\"set:feed\"]\n",
    );
    let r = leash(&["check", &policy]);
    assert_eq!(r.code, Some(1), "{r}");
    // The policy position, then the feed's own FILE:LINE:COL.
    assert!(r.stderr.contains("p.toml:4:8: error: feed.txt:3:3: `203.0.113.300` is not an IP address"), "{r}");
    // A missing file is named with the path it was looked for at (next to the policy).
    let policy = dir.file("q.toml", "version = 1\n[[set]]\nname = \"feed\"\nfile = \"nope.txt\"\n");
    let r = leash(&["check", &policy]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains("cannot read set file:") && r.stderr.contains("nope.txt"), "{r}");
}
