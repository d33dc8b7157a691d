//! `leash test`: the examples' expectations hold against the real kernel; a wrong one is caught.

use crate::harness::*;

#[test]
fn every_example_passes_leash_test() {
    if !need_root("every_example_passes_leash_test") {
        return;
    }
    for name in EXAMPLES {
        let r = leash(&["test", "--json", "--timeout-ms", "500", example(name).to_str().unwrap()]);
        assert!(r.ok(), "{r}");
        let j = r.json();
        assert_eq!(j["failed"], 0, "{r}");
        assert!(j["passed"].as_u64().unwrap() >= 10, "{r}");
    }
    root_has_no_leash_table();
}

#[test]
fn a_wrong_expectation_fails_with_its_position() {
    if !need_root("a_wrong_expectation_fails_with_its_position") {
        return;
    }
    let dir = TempDir::new("wrong");
    let path = dir.file(
        "p.toml",
        r#"version = 1
[defaults]
deny_with = "reject"

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["203.0.113.0/24"]
user = "nobody"

[[expect]]
to = "203.0.113.9:443"
user = "nobody"
verdict = "allow"

[[expect]]
to = "203.0.113.9:443"
user = "root"
verdict = "allow"
"#,
    );
    let r = leash(&["test", "--timeout-ms", "500", &path]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stdout.contains("1 passed, 1 failed"), "{r}");
    let fail = r.stdout.lines().find(|l| l.contains("FAIL")).unwrap_or_else(|| panic!("no FAIL row{r}"));
    assert!(fail.contains("refused"), "root is refused by the default reject: {r}");
    // The failing row points at its [[expect]].
    assert!(r.stdout.contains("p.toml:18:1:"), "{r}");
}

#[test]
fn measure_reports_latency_and_rate_ratios() {
    if !need_root("measure_reports_latency_and_rate_ratios") {
        return;
    }
    let r = leash(&[
        "test", "--json", "--measure", "--rounds", "2", "--connects", "200", "--max-seconds", "60",
        example("web-server").to_str().unwrap(),
    ]);
    assert!(r.ok(), "{r}");
    let m = &r.json()["measurement"];
    assert_eq!(m["rounds"], 2, "{r}");
    assert_eq!(m["connects_per_round"], 200, "{r}");
    assert!(!m["targets"].as_array().unwrap().is_empty(), "{r}");
    for side in ["with_policy", "without_policy"] {
        let s = &m[side];
        assert_eq!(s["connects"], 400, "{side}: {r}");
        assert_eq!(s["failures"], 0, "{side}: every allowed connect connects: {r}");
        let (p50, p99) = (s["p50_us"].as_f64().unwrap(), s["p99_us"].as_f64().unwrap());
        assert!(p50 > 0.0 && p99 >= p50 && p99 < 1e6, "{side}: {r}");
        assert!(s["connects_per_s"].as_f64().unwrap() > 0.0, "{side}: {r}");
        assert_eq!(s["rounds_connects_per_s"].as_array().unwrap().len(), 2, "{side}: {r}");
    }
    for k in ["p50", "p99", "connects_per_s"] {
        let v = m["ratio"][k].as_f64().unwrap();
        assert!(v > 0.0 && v < 100.0, "ratio {k} = {v}: {r}");
    }
    // Progress goes to stderr.
    assert!(r.stderr.contains("round 2/2"), "{r}");
    root_has_no_leash_table();

    // Nothing to measure: a clear error, exit 1.
    let dir = TempDir::new("measure");
    let path = dir.file(
        "udp.toml",
        "version = 1\n[[rule]]\nname = \"dns\"\naction = \"allow\"\nproto = \"udp\"\nports = [53]\n\n[[expect]]\nto = \"192.0.2.53:53\"\nproto = \"udp\"\nverdict = \"allow\"\n",
    );
    let r = leash(&["test", "--measure", &path]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains("no allowed TCP expectation"), "{r}");
}
