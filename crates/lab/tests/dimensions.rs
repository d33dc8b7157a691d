//! `run_expectations` on the rule dimensions that need more than one namespace and one table:
//! cgroups (probes from processes in scratch cgroups) and time (`at`, imitated by shifted windows).

mod common;

use lab::{Outcome, RunOptions, run_expectations};
use policy::Action;
use std::time::Duration;

fn load(text: &str) -> policy::Policy {
    // A hybrid host's prefix; the ids do not matter, the lab points the rules at its mirrors.
    let r = policy::StaticResolver::new().user("root", 0, Some(0)).user("nobody", 65534, Some(65534)).cgroup2("unified");
    let (p, diags) = policy::load(text, &r);
    p.unwrap_or_else(|| panic!("policy does not load: {diags:?}\n{text}"))
}

fn show(r: &lab::Report) -> String {
    let rows: String = r
        .rows
        .iter()
        .map(|r| format!("#{} {} at {:?}: {} -> {} {:?}\n", r.index, r.case, r.local_time, r.decider, r.outcome.describe(), r.problems))
        .collect();
    let tables: String = r.tables.iter().map(|(at, t)| format!("--- table for {at:?}\n{}", ruleset::render::nft_text(t))).collect();
    format!("{rows}{tables}")
}

/// The scratch cgroups this process made and left behind.
fn leftover_cgroups() -> Vec<String> {
    let Some(mount) = lab::cgroup::mount_point() else { return Vec::new() };
    let mine = format!("{}{}-", lab::cgroup::SCRATCH_PREFIX, std::process::id());
    std::fs::read_dir(mount)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&mine)).collect())
        .unwrap_or_default()
}

/// Without cgroup v2 the cgroup tests cannot run: skipped outside CI, a failure in CI.
fn need_cgroup2() -> bool {
    if lab::cgroup::mount_point().is_some() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "cgroup v2 is not mounted, and CI is set: failing instead of skipping");
    eprintln!("skipped: cgroup v2 is not mounted");
    false
}

#[test]
fn probes_come_from_their_cgroup() {
    if !common::need_root() || !need_cgroup2() {
        return;
    }
    let p = load(
        r#"version = 1
[defaults]
outbound = "deny"
log_denied = false

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["192.0.2.0/24", "2001:db8::/64"]
cgroup = "/app/web"

[[rule]]
name = "nginx"
action = "allow"
proto = "udp"
ports = [53]
service = "nginx"
user = "nobody"

[[expect]]
to = "192.0.2.7:443"
cgroup = "/app/web"
verdict = "allow"

[[expect]]
to = "[2001:db8::7]:443"
cgroup = "app/web/worker"
user = "nobody"
verdict = "allow"

[[expect]]
to = "192.0.2.7:443"
cgroup = "/app"
verdict = "deny"

[[expect]]
to = "192.0.2.7:443"
cgroup = "/app/webby"
verdict = "deny"

[[expect]]
to = "192.0.2.7:443"
verdict = "deny"

[[expect]]
to = "198.51.100.53:53"
proto = "udp"
service = "nginx.service"
user = "nobody"
verdict = "allow"

[[expect]]
to = "198.51.100.53:53"
proto = "udp"
service = "nginx.service"
verdict = "deny"

[[expect]]
to = "198.51.100.53:53"
proto = "udp"
user = "nobody"
verdict = "deny"
"#,
    );
    let r = run_expectations(&p, &RunOptions { timeout: Duration::from_millis(500), ..Default::default() }).expect("lab");
    eprintln!("{}", show(&r));
    assert!(r.passed(), "{}", show(&r));
    assert_eq!(r.rows[0].case.cgroup.as_deref(), Some("app/web"), "the report shows the policy's path");
    assert_eq!(r.rows[5].case.cgroup.as_deref(), Some("system.slice/nginx.service"));
    assert!(leftover_cgroups().is_empty(), "{:?}", leftover_cgroups());
}

#[test]
fn expectations_at_a_time_see_the_windows_of_that_time() {
    if !common::need_root() {
        return;
    }
    // Berlin: UTC+1 in winter, UTC+2 in summer; 2026-11-23 is a Monday, 2026-07-06 too.
    let p = load(
        r#"version = 1
[defaults]
outbound = "deny"
log_denied = false
timezone = "Europe/Berlin"

[[rule]]
name = "office"
action = "allow"
proto = "tcp"
ports = [443]
to = ["203.0.113.0/24"]
when = ["Mon-Fri 09:00-17:00"]

[[rule]]
name = "night"
action = "allow"
proto = "tcp"
ports = [22]
to = ["203.0.113.0/24"]
when = "Sat 22:00-02:00"

[[expect]]
to = "203.0.113.5:443"
at = "2026-11-23 10:00"
verdict = "allow"

[[expect]]
to = "203.0.113.5:443"
at = "2026-11-23 08:50"
verdict = "deny"

[[expect]]
to = "203.0.113.5:443"
at = "2026-07-06 16:50"
verdict = "allow"

[[expect]]
to = "203.0.113.5:443"
at = "Sat 10:00"
verdict = "deny"

[[expect]]
to = "203.0.113.5:22"
at = "Sun 01:30"
verdict = "allow"

[[expect]]
to = "203.0.113.5:22"
at = "Sun 02:10"
verdict = "deny"

[[expect]]
to = "203.0.113.5:22"
at = "Sat 23:00"
verdict = "allow"
"#,
    );
    let r = run_expectations(&p, &RunOptions { timeout: Duration::from_millis(500), ..Default::default() }).expect("lab");
    eprintln!("{}", show(&r));
    assert!(r.passed(), "{}", show(&r));
    // One table per distinct `at`.
    assert_eq!(r.tables.len(), 7);
    for row in &r.rows {
        assert_eq!(row.local_time, row.at);
        if row.expected == Action::Deny {
            assert_eq!(row.outcome, Outcome::Refused);
        }
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["rows"][0]["at"], "2026-11-23T10:00:00");
}

#[test]
fn without_at_the_current_time_decides() {
    if !common::need_root() {
        return;
    }
    // A window open all week but for one minute far away from now, and one closed all week but
    // for that minute: whatever the time, the first allows and the second denies.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let away = now.checked_add(jiff::SignedDuration::from_hours(12)).unwrap();
    let (h, m) = (away.hour(), away.minute());
    let next = (h as u32 * 60 + m as u32 + 1) % 1440;
    let text = format!(
        r#"version = 1
[defaults]
outbound = "deny"
log_denied = false

[[rule]]
name = "closed-now"
action = "allow"
proto = "tcp"
ports = [80]
to = ["192.0.2.0/24"]
when = "{h:02}:{m:02}-{:02}:{:02}"

[[rule]]
name = "open-now"
action = "allow"
proto = "tcp"
ports = [443]
to = ["192.0.2.0/24"]
when = "{:02}:{:02}-{h:02}:{m:02}"

[[expect]]
to = "192.0.2.9:443"
verdict = "allow"

[[expect]]
to = "192.0.2.9:80"
verdict = "deny"
"#,
        next / 60,
        next % 60,
        next / 60,
        next % 60,
    );
    let p = load(&text);
    let r = run_expectations(&p, &RunOptions { timeout: Duration::from_millis(500), ..Default::default() }).expect("lab");
    assert!(r.passed(), "{}\n{text}", show(&r));
    assert_eq!(r.tables.len(), 1);
    assert!(r.rows.iter().all(|r| r.local_time.is_some() && r.at.is_none()), "{}", show(&r));
}
