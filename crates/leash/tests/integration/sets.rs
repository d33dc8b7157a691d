//! `[[set]]` address lists end to end: `leash apply` of a policy whose blocklist file sits next to
//! it, real connections from a lab's client namespace to its peer (a listed address is refused, an
//! unlisted one connects), `leash set update` swapping the list without touching a rule, bad files
//! changing nothing, and `leash status` reporting a set too large to count from what leash loaded.

use crate::harness::*;
use kernel::netns::NetNs;
use lab::{Case, Outcome};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const POLICY: &str = r#"version = 1
[defaults]
outbound = "deny"
deny_with = "reject"
allow_loopback = true
allow_established = true

[[set]]
name = "threat-feed"
file = "feeds/blocklist.txt"

[[rule]]
name = "threats"
action = "deny"
to = ["set:threat-feed"]

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP connect to `dst`:443 as root from the lab's client.
fn connect(lab: &lab::Lab, dst: &str) -> Outcome {
    let case =
        Case { proto: policy::Proto::Tcp, dst: ip(dst), port: Some(443), uid: 0, gid: 0, name: None, cgroup: None };
    lab.probe(&case, Duration::from_secs(2))
}

/// Which of `dsts` connect (true) or are refused by the reject rule (false); anything else fails.
fn reachable(lab: &lab::Lab, dsts: &[&str]) -> Vec<bool> {
    dsts.iter()
        .map(|d| match connect(lab, d) {
            Outcome::Connected => true,
            Outcome::Refused => false,
            o => panic!("{d}: {}", o.describe()),
        })
        .collect()
}

/// `nft -a list chain inet leash output` without the counters: the rules with their handles.
fn rules_of(ns: &NetNs) -> String {
    let (ok, out, err) = nft_raw(ns, &["-a", "list", "chain", "inet", "leash", "output"], None);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| match l.find("counter packets") {
            Some(i) => {
                let rest = &l[i..];
                let end = rest.find(" bytes ").map(|j| j + 7).unwrap_or(rest.len());
                let tail = rest[end..].trim_start_matches(|c: char| c.is_ascii_digit());
                format!("{}counter{tail}", &l[..i])
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn set_elements(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no set {name}: {status}"))
        .clone()
}

#[test]
fn a_blocklist_set_blocks_and_set_update_swaps_it_without_touching_rules() {
    if !need_root("a_blocklist_set_blocks_and_set_update_swaps_it_without_touching_rules") {
        return;
    }
    let dsts = ["203.0.113.7", "203.0.113.8", "198.51.100.20", "2001:db8::7", "2001:db8::8"];
    let lab = lab::Lab::new(&dsts.map(ip), &[443], &[]).expect("lab");
    let ns = lab.client();
    let dir = TempDir::new("sets");
    std::fs::create_dir_all(dir.0.join("feeds")).unwrap();
    dir.file("feeds/blocklist.txt", "# a feed\n203.0.113.7\n198.51.100.0/24 ; SBL1\n2001:db8::7\n");
    let policy = dir.file("policy.toml", POLICY);

    let r = leash_in(ns, &["apply", &policy]);
    assert!(r.ok(), "{r}");
    assert_eq!(reachable(&lab, &dsts), [false, true, false, false, true], "{r}");
    let st = leash_in(ns, &["status", "--json"]);
    assert!(st.ok(), "{st}");
    assert_eq!(set_elements(&st.json(), "s_threat-feed_v4")["elements"], 2, "{st}");
    assert_eq!(set_elements(&st.json(), "s_threat-feed_v6")["elements"], 1, "{st}");
    let rules = rules_of(ns);

    // The new list blocks .8 and 2001:db8::8 instead.
    let new = dir.file("new.txt", "203.0.113.8\n2001:db8::8 # moved\n");
    let r = leash_in(ns, &["set", "update", "threat-feed", &new, "--json"]);
    assert!(r.ok(), "{r}");
    let j = r.json();
    assert_eq!(j["ok"], true, "{r}");
    assert_eq!(
        (j["entries"].as_u64(), j["ranges"]["ipv4"].as_u64(), j["ranges"]["ipv6"].as_u64()),
        (Some(2), Some(1), Some(1)),
        "{r}"
    );
    assert!(j["timing_ms"]["kernel"].as_f64().is_some(), "{r}");
    assert_eq!(reachable(&lab, &dsts), [true, false, true, true, false], "{r}");
    assert_eq!(rules_of(ns), rules, "the rules were not touched{r}");

    // A bad file: every bad line as FILE:LINE:COL, exit 1, nothing changed.
    let bad = dir.file("bad.txt", "203.0.113.7\n  not-an-address\n198.51.100.0/33\n");
    let r = leash_in(ns, &["set", "update", "threat-feed", &bad]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains(&format!("{bad}:2:3: error:")), "{r}");
    assert!(r.stderr.contains(&format!("{bad}:3:1: error:")), "{r}");
    assert!(r.stderr.contains("nothing was changed"), "{r}");
    assert_eq!(reachable(&lab, &dsts), [true, false, true, true, false], "{r}");
    let r = leash_in(ns, &["set", "update", "threat-feed", &bad, "--json"]);
    assert_eq!(r.code, Some(1), "{r}");
    assert_eq!(r.json()["errors"][0]["line"], 2, "{r}");

    // No such set (exit 2, the sets that exist named), a missing file (exit 3).
    let r = leash_in(ns, &["set", "update", "threat-feeds", &new]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("no [[set]] named `threat-feeds`") && r.stderr.contains("it has: threat-feed"), "{r}");
    let r = leash_in(ns, &["set", "update", "threat-feed", &dir.0.join("missing.txt").display().to_string()]);
    assert_eq!(r.code, Some(3), "{r}");

    // The kernel refuses the last message of the transaction: the old list stays.
    let other = dir.file("other.txt", "203.0.113.7\n");
    let r = leash_in(ns, &["set", "update", "--fault-inject", "threat-feed", &other]);
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stderr.contains("nothing changed"), "{r}");
    assert_eq!(reachable(&lab, &dsts), [true, false, true, true, false], "{r}");

    // A bad line in the file the policy names fails the apply the same way.
    dir.file("feeds/blocklist.txt", "203.0.113.7\n203.0.113.300\n");
    let r = leash_in(ns, &["apply", &policy]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains("feeds/blocklist.txt:2:1:"), "{r}");
    assert_eq!(reachable(&lab, &dsts), [true, false, true, true, false], "{r}");

    let r = leash_in(ns, &["disable"]);
    assert!(r.ok(), "{r}");
    let r = leash_in(ns, &["set", "update", "threat-feed", &new]);
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stderr.contains("no leash table is active"), "{r}");
    root_has_no_leash_table();
}

#[test]
fn set_update_needs_root() {
    let dir = TempDir::new("sets-root");
    let list = dir.file("list.txt", "192.0.2.1\n");
    let mut cmd = std::process::Command::new(leash_bin());
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.args(["set", "update", "threat-feed", &list]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("needs root") && stderr.contains("nothing was changed"), "{stderr}");
}

/// Issue 12 item 14: `leash set update` reports invalid UTF-8 at its line and column (exit 1,
/// before it needs root or a table), with every other bad line, instead of `not a text file` at 1:1.
#[test]
fn set_update_reports_invalid_utf8_at_its_position() {
    let dir = TempDir::new("sets-utf8");
    let list = dir.file_bytes("list.txt", b"192.0.2.1\n  198.51.100.\xff/24\nnope\n");
    let r = leash(&["set", "update", "threat-feed", &list]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains(&format!("{list}:2:14: error: invalid UTF-8 (byte 0xff)")), "{r}");
    assert!(r.stderr.contains(&format!("{list}:3:1: error:")), "{r}");
    assert!(r.stderr.contains("2 bad line(s); nothing was changed"), "{r}");
    let r = leash(&["set", "update", "threat-feed", &list, "--json"]);
    assert_eq!(r.code, Some(1), "{r}");
    let e = &r.json()["errors"][0];
    assert_eq!((e["line"].as_u64(), e["column"].as_u64()), (Some(2), Some(14)), "{r}");
}

/// `leash` inside `ns` with its record of set sizes in `state`, without listing the ruleset
/// afterwards (nft takes seconds to list a set this large).
fn leash_state(ns: &NetNs, state: &std::path::Path, args: &[&str]) -> Run {
    let mut argv = vec![
        format!("--net={}", ns.path().display()),
        "env".into(),
        format!("LEASH_STATE_DIR={}", state.display()),
        leash_bin().into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    run_cmd(None, "nsenter", &argv.iter().map(String::as_str).collect::<Vec<_>>(), None)
}

/// `n` addresses, none adjacent to another (so that they stay `n` ranges), one a line.
fn big_list(n: u32, shift: u32) -> String {
    (0..n).map(|i| format!("{}\n", std::net::Ipv4Addr::from(0x0a00_0000 + i * 4 + shift))).collect()
}

#[test]
fn status_reports_a_large_set_from_what_leash_loaded() {
    if !need_root("status_reports_a_large_set_from_what_leash_loaded") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let dir = TempDir::new("sets-big");
    let state = dir.0.join("state");
    std::fs::create_dir_all(dir.0.join("feeds")).unwrap();
    dir.file("feeds/blocklist.txt", &big_list(100_000, 1));
    let policy = dir.file("policy.toml", POLICY);
    let r = leash_state(&ns, &state, &["apply", &policy]);
    assert!(r.ok(), "{r}");

    let status = |state: &std::path::Path| {
        let t0 = Instant::now();
        let r = leash_state(&ns, state, &["status", "--json"]);
        assert!(r.ok(), "{r}");
        eprintln!("leash status took {:?}", t0.elapsed());
        set_elements(&r.json(), "s_threat-feed_v4")
    };
    // Reported exactly, and marked as recorded: it was not counted (a count stops at 16,384).
    let s = status(&state);
    assert_eq!((s["elements"].as_u64(), s["elements_recorded"].as_bool()), (Some(100_000), Some(true)), "{s}");
    let r = leash_state(&ns, &state, &["status"]);
    assert!(r.stdout.contains("100000 (as loaded)"), "{r}");

    let bigger = dir.file("bigger.txt", &big_list(120_000, 2));
    let r = leash_state(&ns, &state, &["set", "update", "threat-feed", &bigger]);
    assert!(r.ok(), "{r}");
    let s = status(&state);
    assert_eq!((s["elements"].as_u64(), s["elements_recorded"].as_bool()), (Some(120_000), Some(true)), "{s}");

    // Without the record, status counts up to its limit and says so.
    let s = status(&dir.0.join("no-record-here"));
    assert_eq!((s["elements_exact"].as_bool(), s["elements_recorded"].as_bool()), (Some(false), Some(false)), "{s}");
    assert!(s["elements"].as_u64().unwrap() > kernel::nft::COUNT_LIMIT as u64, "{s}");

    // A small set is counted again (and dropped from the record).
    let small = dir.file("small.txt", "192.0.2.1\n192.0.2.3\n192.0.2.5\n");
    let r = leash_state(&ns, &state, &["set", "update", "threat-feed", &small]);
    assert!(r.ok(), "{r}");
    let s = status(&state);
    assert_eq!((s["elements"].as_u64(), s["elements_exact"].as_bool()), (Some(3), Some(true)), "{s}");
    assert_eq!(std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0), 0, "no large set, no record");

    let r = leash_state(&ns, &state, &["apply", &policy]);
    assert!(r.ok(), "{r}");
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1, "one record for the namespace");
    let r = leash_state(&ns, &state, &["disable"]);
    assert!(r.ok(), "{r}");
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "disable removes the record");
    root_has_no_leash_table();
}

/// Issue 12 item 13: a state directory others can write, or one reached through a symbolic link
/// planted in such a directory, is refused with a clear message: the firewall is applied, nothing
/// is written there (nor where the link points), and the large set is counted in the kernel.
#[test]
fn apply_refuses_a_state_directory_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    if !need_root("apply_refuses_a_state_directory_others_can_write") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let dir = TempDir::new("sets-state-dir");
    std::fs::create_dir_all(dir.0.join("feeds")).unwrap();
    dir.file("feeds/blocklist.txt", &big_list(kernel::nft::COUNT_LIMIT as u32 + 100, 1));
    let policy = dir.file("policy.toml", POLICY);

    let open = dir.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = leash_state(&ns, &open, &["apply", &policy]);
    assert!(r.ok(), "the firewall is applied all the same: {r}");
    assert!(
        r.stderr.contains(&format!("warning: refusing state directory {}: {} is writable by anyone (mode 0777)", open.display(), open.display())),
        "{r}"
    );
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0, "nothing written: {r}");
    let r = leash_state(&ns, &open, &["status", "--json"]);
    assert!(r.ok(), "{r}");
    let s = set_elements(&r.json(), "s_threat-feed_v4");
    assert_eq!(s["elements_recorded"].as_bool(), Some(false), "{s}");

    // /tmp-like (sticky, anyone can write) with a link planted in it to a private directory.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let target = dir.0.join("private");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, open.join("leash")).unwrap();
    let r = leash_state(&ns, &open.join("leash"), &["apply", &policy]);
    assert!(r.ok(), "{r}");
    assert!(r.stderr.contains("is a symbolic link in a directory others can write"), "{r}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "nothing written through the link: {r}");
    let r = leash_state(&ns, &open.join("leash"), &["set", "update", "threat-feed", &dir.0.join("feeds/blocklist.txt").display().to_string()]);
    assert!(r.ok(), "{r}");
    assert!(r.stderr.contains("refusing state directory"), "{r}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "{r}");

    // A private directory made on first use: 0755, the record in it.
    let fresh = open.join("fresh");
    let r = leash_state(&ns, &fresh, &["apply", &policy]);
    assert!(r.ok() && !r.stderr.contains("warning"), "{r}");
    assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 1, "{r}");
    root_has_no_leash_table();
}
