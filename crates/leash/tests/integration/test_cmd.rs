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
