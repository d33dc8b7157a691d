//! The rule dimensions against the real kernel, through `leash apply` in a lab's client
//! namespace and real connections: time windows (around the current time, in a time zone with a
//! half-hour offset, and `leash test` with `at`), rate and connection limits (which `explain`
//! does not model, so the agreement test cannot check them), cgroups (real processes moved into
//! scratch cgroups), and countries from a tiny database.

use crate::harness::*;
use lab::{Case, Lab, Outcome};
use policy::Proto;
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

const DST: &str = "192.0.2.10";
const DST2: &str = "192.0.2.20";
const DST6: &str = "2001:db8::10";
const PROBE: Duration = Duration::from_millis(500);

fn tcp(dst: &str, port: u16) -> Case {
    Case { proto: Proto::Tcp, dst: dst.parse().unwrap(), port: Some(port), uid: 0, gid: 0, name: None, cgroup: None }
}

/// A lab echoing on `ports` of DST, DST2 and DST6, with `policy` applied by `leash apply`.
fn applied(dir: &TempDir, name: &str, policy: &str, ports: &[u16]) -> Lab {
    let dsts: Vec<IpAddr> = [DST, DST2, DST6].iter().map(|d| d.parse().unwrap()).collect();
    let lab = Lab::new(&dsts, ports, &[]).expect("lab");
    let path = dir.file(name, policy);
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    lab
}

/// `HH:MM` of a zoned time moved by `minutes`.
fn hm(now: &jiff::Zoned, minutes: i64) -> String {
    let t = now.checked_add(jiff::SignedDuration::from_mins(minutes)).unwrap();
    format!("{:02}:{:02}", t.hour(), t.minute())
}

#[test]
fn a_window_around_now_allows_and_one_that_closed_denies() {
    if !need_root("a_window_around_now_allows_and_one_that_closed_denies") {
        return;
    }
    // Kolkata is UTC+5:30: a window compiled with a whole-hour error would be off by 30 minutes
    // and miss one that is open for only ten minutes either side of now.
    let now = jiff::Timestamp::now().to_zoned(policy::time::zone("Asia/Kolkata").unwrap());
    let policy = format!(
        r#"version = 1
[defaults]
outbound = "deny"
timezone = "Asia/Kolkata"

[[rule]]
name = "open-now"
action = "allow"
proto = "tcp"
ports = [443]
to = ["{DST}", "{DST6}"]
when = "{}-{}"

[[rule]]
name = "closed-an-hour-ago"
action = "allow"
proto = "tcp"
ports = [8443]
to = ["{DST}"]
when = ["{}-{}"]
"#,
        hm(&now, -10),
        hm(&now, 10),
        hm(&now, -70),
        hm(&now, -60),
    );
    let dir = TempDir::new("when");
    let lab = applied(&dir, "when.toml", &policy, &[443, 8443]);
    let ruleset = || nft_raw(lab.client(), &["list", "ruleset"], None).1;
    assert_eq!(lab.probe(&tcp(DST, 443), PROBE), Outcome::Connected, "{policy}\n{}", ruleset());
    assert_eq!(lab.probe(&tcp(DST6, 443), PROBE), Outcome::Connected, "{policy}\n{}", ruleset());
    assert_eq!(lab.probe(&tcp(DST, 8443), PROBE), Outcome::Refused, "{policy}\n{}", ruleset());
    // explain agrees, at the same moment.
    let path = dir.0.join("when.toml");
    let r = leash(&["explain", "--json", path.to_str().unwrap(), "--to", &format!("{DST}:443"), "--proto", "tcp"]);
    assert!(r.ok(), "{r}");
    assert_eq!(r.json()["verdict"], "allow", "{r}");
}

#[test]
fn leash_test_checks_expectations_at_their_time() {
    if !need_root("leash_test_checks_expectations_at_their_time") {
        return;
    }
    let dir = TempDir::new("at");
    let path = dir.file(
        "at.toml",
        r#"version = 1
[defaults]
outbound = "deny"
timezone = "America/New_York"

[[rule]]
name = "office"
action = "allow"
proto = "tcp"
ports = [443]
to = ["203.0.113.0/24"]
when = "Mon-Fri 09:00-17:00"

[[expect]]
to = "203.0.113.5:443"
at = "Mon 10:00"
verdict = "allow"

[[expect]]
to = "203.0.113.5:443"
at = "Sat 10:00"
verdict = "deny"

[[expect]]
to = "203.0.113.5:443"
at = "2026-11-23 08:45"
verdict = "deny"

[[expect]]
to = "203.0.113.5:443"
at = "2026-07-08 16:45"
verdict = "allow"
"#,
    );
    let r = leash(&["test", "--json", "--timeout-ms", "500", &path]);
    assert!(r.ok(), "{r}");
    let j = r.json();
    assert_eq!(j["failed"], 0, "{r}");
    assert_eq!(j["passed"], 4, "{r}");
    assert_eq!(j["report"]["rows"][0]["at"], "2026-01-05T10:00:00", "{r}");
    // A wrong one fails, and the text report shows its time.
    let wrong = dir.file("wrong.toml", &format!("{}\n[[expect]]\nto = \"203.0.113.5:443\"\nat = \"Sun 12:00\"\nverdict = \"allow\"\n", std::fs::read_to_string(&path).unwrap()));
    let r = leash(&["test", "--timeout-ms", "500", &wrong]);
    assert_eq!(r.code, Some(1), "{r}");
    let fail = r.stdout.lines().find(|l| l.contains("FAIL")).unwrap_or_else(|| panic!("no FAIL row{r}"));
    assert!(fail.contains("at Sun 2026-01-04 12:00"), "{r}");
}

/// Connects `n` times as fast as it can; how many connected and how many were refused.
fn burst(lab: &Lab, dsts: &[&str], port: u16, n: usize) -> (Vec<usize>, usize) {
    let mut ok = vec![0; dsts.len()];
    let mut refused = 0;
    for i in 0..n {
        match lab.probe(&tcp(dsts[i % dsts.len()], port), PROBE) {
            Outcome::Connected => ok[i % dsts.len()] += 1,
            Outcome::Refused => refused += 1,
            o => panic!("unexpected {o:?}"),
        }
    }
    (ok, refused)
}

#[test]
fn a_rate_limit_lets_a_burst_through_and_refuses_the_rest() {
    if !need_root("a_rate_limit_lets_a_burst_through_and_refuses_the_rest") {
        return;
    }
    let policy = format!(
        r#"version = 1
[defaults]
outbound = "deny"
deny_with = "reject"

[[rule]]
name = "limited"
action = "allow"
proto = "tcp"
ports = [443]
to = ["{DST}", "{DST2}"]
rate = "5/second"
burst = 5

[[rule]]
name = "per-destination"
action = "allow"
proto = "tcp"
ports = [8443]
to = ["{DST}", "{DST2}"]
rate = "5/second"
burst = 5
limit_per = "destination"

[[rule]]
name = "per-user"
action = "allow"
proto = "tcp"
ports = [9443]
to = ["{DST}", "{DST6}"]
rate = "5/second"
burst = 5
limit_per = "user"
"#
    );
    let dir = TempDir::new("rate");
    let lab = applied(&dir, "rate.toml", &policy, &[443, 8443, 9443]);
    let start = Instant::now();
    let (ok, refused) = burst(&lab, &[DST, DST2], 443, 30);
    let took = start.elapsed();
    let through: usize = ok.iter().sum();
    eprintln!("rate 5/second burst 5: {through} of 30 connected, {refused} refused, in {took:?}");
    // The bucket holds the burst; the rate refills one token per 200 ms while the loop runs.
    let refill = (took.as_millis() / 200) as usize;
    assert!((5..=5 + refill + 1).contains(&through), "{through} got through in {took:?}");
    assert_eq!(through + refused, 30);

    // Per destination: each gets its own bucket.
    let start = Instant::now();
    let (ok, refused) = burst(&lab, &[DST, DST2], 8443, 30);
    let took = start.elapsed();
    eprintln!("per destination: {ok:?} connected, {refused} refused, in {took:?}");
    let refill = (took.as_millis() / 200) as usize;
    for o in &ok {
        assert!((5..=5 + refill + 1).contains(o), "{ok:?} in {took:?}");
    }

    // Per user: root and nobody each get their own bucket, shared across both families (the
    // meter is keyed by uid alone).
    let start = Instant::now();
    let mut ok = [0usize; 2];
    let mut refused = 0;
    for i in 0..40 {
        let mut case = tcp(if i % 4 < 2 { DST } else { DST6 }, 9443);
        (case.uid, case.gid) = if i % 2 == 0 { (0, 0) } else { (65534, 65534) };
        match lab.probe(&case, PROBE) {
            Outcome::Connected => ok[i % 2] += 1,
            Outcome::Refused => refused += 1,
            o => panic!("unexpected {o:?}"),
        }
    }
    let took = start.elapsed();
    eprintln!("per user: {ok:?} connected (root, nobody), {refused} refused, in {took:?}");
    let refill = (took.as_millis() / 200) as usize;
    for o in &ok {
        assert!((5..=5 + refill + 1).contains(o), "{ok:?} in {took:?}");
    }
}

#[test]
fn max_connections_refuses_a_third_concurrent_connection() {
    if !need_root("max_connections_refuses_a_third_concurrent_connection") {
        return;
    }
    let policy = format!(
        r#"version = 1
[defaults]
outbound = "deny"

[[rule]]
name = "two-at-once"
action = "allow"
proto = "tcp"
ports = [443]
to = ["{DST}"]
max_connections = 2
"#
    );
    let dir = TempDir::new("maxconn");
    let lab = applied(&dir, "max.toml", &policy, &[443]);
    let addr = std::net::SocketAddr::new(DST.parse().unwrap(), 443);
    let open = || lab.client().run(|| TcpStream::connect_timeout(&addr, PROBE));
    let first = open().expect("first");
    let second = open().expect("second");
    let third = open();
    assert_eq!(third.as_ref().map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionRefused), "{third:?}");
    assert_eq!(lab.probe(&tcp(DST, 443), PROBE), Outcome::Refused);
    // Closing one makes room (a closed connection no longer counts).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut again = lab.probe(&tcp(DST, 443), PROBE);
    // Bounded by the deadline: the close takes a moment to reach connection tracking.
    while again != Outcome::Connected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        again = lab.probe(&tcp(DST, 443), PROBE);
    }
    assert_eq!(again, Outcome::Connected);
    drop(second);
}

/// Runs `bash -c SCRIPT`, the script starting in the test process's cgroup.
fn bash(script: &str) -> Run {
    run_cmd(None, "bash", &["-c", script], None)
}

#[test]
fn a_cgroup_rule_lets_only_processes_in_that_cgroup_through() {
    if !need_root("a_cgroup_rule_lets_only_processes_in_that_cgroup_through") {
        return;
    }
    let Some(mount) = lab::cgroup::mount_point() else {
        assert!(std::env::var_os("CI").is_none(), "cgroup v2 is not mounted, and CI is set: failing instead of skipping");
        eprintln!("skipped: cgroup v2 is not mounted");
        return;
    };
    // Scratch cgroups of our own (removed on drop, also when an assertion fails).
    let mut scratch = lab::cgroup::Scratch::new(&mount).expect("scratch cgroup");
    let app = scratch.mirror("app").unwrap();
    let worker = scratch.mirror("app/worker").unwrap();
    let other = scratch.mirror("other").unwrap();
    let policy = format!(
        r#"version = 1
[defaults]
outbound = "deny"

[[rule]]
name = "app"
action = "allow"
proto = "tcp"
ports = [443]
to = ["{DST}"]
cgroup = "/{}"
"#,
        app.path
    );
    let dir = TempDir::new("cgroup");
    let lab = applied(&dir, "cgroup.toml", &policy, &[443]);
    let ns = lab.client().path();
    // A real process: moves itself into the cgroup, enters the namespace, connects.
    let connect_from = |cg: Option<&str>| {
        let join = cg.map(|c| format!("echo $$ > {}/cgroup.procs && ", mount.join(c).display())).unwrap_or_default();
        bash(&format!(
            "{join}exec nsenter --net={} timeout 5 bash -c 'exec 3<>/dev/tcp/{DST}/443'",
            ns.display()
        ))
    };
    let r = connect_from(Some(&app.path));
    assert!(r.ok(), "in the cgroup: {r}\n{policy}");
    let r = connect_from(Some(&worker.path));
    assert!(r.ok(), "below the cgroup: {r}\n{policy}");
    for cg in [Some(other.path.as_str()), None] {
        let r = connect_from(cg);
        assert_eq!(r.code, Some(1), "outside ({cg:?}): {r}\n{policy}");
        assert!(r.stderr.contains("refused"), "{r}");
    }
    // The lab's own forked probes see the same.
    let mut case = tcp(DST, 443);
    case.cgroup = Some(worker.path.clone());
    assert_eq!(lab.probe(&case, PROBE), Outcome::Connected);
    case.cgroup = Some(other.path.clone());
    assert_eq!(lab.probe(&case, PROBE), Outcome::Refused);
    drop(lab);
    let dir = mount.join(&app.path);
    drop(scratch);
    assert!(!dir.exists(), "{} is left", dir.display());
}

#[test]
fn a_missing_service_is_a_warning_and_leash_test_mirrors_it() {
    if !need_root("a_missing_service_is_a_warning_and_leash_test_mirrors_it") {
        return;
    }
    let dir = TempDir::new("service");
    let path = dir.file(
        "svc.toml",
        &format!(
            r#"version = 1
[defaults]
outbound = "deny"

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["{DST}"]
service = "leash-no-such-unit"

[[expect]]
to = "{DST}:443"
service = "leash-no-such-unit"
verdict = "allow"

[[expect]]
to = "{DST}:443"
cgroup = "/system.slice/leash-no-such-unit.service/worker"
verdict = "allow"

[[expect]]
to = "{DST}:443"
verdict = "deny"

[[expect]]
to = "{DST}:443"
service = "other"
verdict = "deny"
"#
        ),
    );
    let r = leash(&["check", &path]);
    assert!(r.ok(), "a missing service is no error: {r}");
    assert!(r.stderr.contains("warning") && r.stderr.contains("leash-no-such-unit"), "{r}");
    let ns = kernel::netns::NetNs::new().unwrap();
    let r = leash_in(&ns, &["apply", &path]);
    assert!(r.ok(), "{r}");
    // `leash test` mirrors the service's cgroup in a scratch subtree, so the rule is tested as it
    // will behave once the service runs.
    let r = leash(&["test", "--json", "--timeout-ms", "500", &path]);
    assert!(r.ok(), "{r}");
    assert_eq!(r.json()["failed"], 0, "{r}");
    assert!(stale_scratch_cgroups().is_empty(), "{:?}", stale_scratch_cgroups());
}

/// Scratch cgroups (`leash-lab-<pid>-<n>`) whose process is gone: what a run left behind.
fn stale_scratch_cgroups() -> Vec<String> {
    let Some(mount) = lab::cgroup::mount_point() else { return Vec::new() };
    let Ok(dir) = std::fs::read_dir(&mount) else { return Vec::new() };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            let pid = n.strip_prefix(lab::cgroup::SCRATCH_PREFIX).and_then(|r| r.split('-').next());
            pid.is_some_and(|p| !std::path::Path::new("/proc").join(p).exists())
        })
        .collect()
}

#[test]
fn countries_come_from_the_database() {
    if !need_root("countries_come_from_the_database") {
        return;
    }
    let dir = TempDir::new("geo");
    let nets: Vec<(ipnet::IpNet, &str)> = vec![
        ("192.0.2.0/28".parse().unwrap(), "XA"),
        ("2001:db8::/64".parse().unwrap(), "XA"),
        ("192.0.2.16/28".parse().unwrap(), "XB"),
    ];
    std::fs::write(dir.0.join("c.mmdb"), policy::geo::testdb::write_mmdb(&nets, 6)).unwrap();
    let policy = r#"version = 1
[defaults]
outbound = "deny"

[countries]
database = "c.mmdb"

[[rule]]
name = "not-xa"
action = "deny"
to_country = ["XA"]

[[rule]]
name = "xb"
action = "allow"
proto = "tcp"
to_country = ["XB"]
"#;
    let lab = applied(&dir, "geo.toml", policy, &[443]);
    // DST (192.0.2.10) is in XA, DST2 (192.0.2.20) in XB, DST6 in XA.
    assert_eq!(lab.probe(&tcp(DST, 443), PROBE), Outcome::Refused);
    assert_eq!(lab.probe(&tcp(DST2, 443), PROBE), Outcome::Connected);
    assert_eq!(lab.probe(&tcp(DST6, 443), PROBE), Outcome::Refused);
    let r = leash(&["explain", "--json", dir.0.join("geo.toml").to_str().unwrap(), "--to", &format!("{DST2}:443"), "--proto", "tcp"]);
    assert!(r.ok(), "{r}");
    assert_eq!(r.json()["verdict"], "allow", "{r}");
}

/// The `meta time` bounds of daylight-saving periods against the real clock: a rule bounded to
/// an hour around now matches, one whose period ended a minute ago or starts in an hour does not.
/// (Which bounds a time zone gets is checked against the windows, without a kernel, by
/// ruleset's `time_windows` property test; this checks the kernel reads the bounds the same way.)
#[test]
fn daylight_saving_period_bounds_follow_the_real_clock() {
    if !need_root("daylight_saving_period_bounds_follow_the_real_clock") {
        return;
    }
    const NS: i64 = 1_000_000_000;
    let (p, d) = policy::load(
        &format!("version = 1\n[defaults]\ndeny_with = \"reject\"\n[[rule]]\nname = \"bounded\"\naction = \"allow\"\nproto = \"tcp\"\nports = [443]\nto = [\"{DST}\"]\n"),
        &policy::StaticResolver::debian_base(),
    );
    let p = p.unwrap_or_else(|| panic!("{d:#?}"));
    let now = jiff::Timestamp::now().as_second();
    let lab = Lab::new(&[DST.parse().unwrap()], &[443], &[]).expect("lab");
    for (from, until, open) in [
        (Some(now - 3600), Some(now + 3600), true),
        (None, Some(now + 3600), true),
        (Some(now - 3600), None, true),
        (None, Some(now - 60), false),
        (Some(now + 3600), None, false),
        (Some(now - 7200), Some(now - 3600), false),
    ] {
        let mut table = ruleset::compile(&p, &Default::default());
        let rule = table.chains[0]
            .rules
            .iter_mut()
            .find(|r| r.comment.as_deref() == Some("bounded"))
            .expect("the rule");
        let at = rule.stmts.len() - 2;
        if let Some(u) = until {
            rule.stmts.insert(at, ruleset::model::Stmt::MetaTimeUntil(u * NS));
        }
        if let Some(f) = from {
            rule.stmts.insert(at, ruleset::model::Stmt::MetaTimeFrom(f * NS));
        }
        lab.client().run(|| kernel::apply(&table, &Default::default())).expect("apply");
        let got = lab.probe(&tcp(DST, 443), PROBE);
        let want = if open { Outcome::Connected } else { Outcome::Refused };
        assert_eq!(got, want, "from {from:?} until {until:?} (now {now})");
    }
}

/// A cgroup directory of our own under the cgroup2 mount, removed on drop.
struct OwnCgroup(std::path::PathBuf);

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `leash status` warns when a cgroup the applied rules match was made again (a restarted
/// service gets a new directory, with a new id, that no rule matches) or is gone.
#[test]
fn status_warns_about_a_cgroup_made_again_since_the_apply() {
    if !need_root("status_warns_about_a_cgroup_made_again_since_the_apply") {
        return;
    }
    let Some(mount) = lab::cgroup::mount_point() else {
        assert!(std::env::var_os("CI").is_none(), "cgroup v2 is not mounted; CI needs it");
        eprintln!("skipped: cgroup v2 is not mounted here");
        return;
    };
    let name = format!("leash-it-stale-{}", std::process::id());
    let cg = OwnCgroup(mount.join(&name));
    std::fs::create_dir(&cg.0).unwrap();
    let dir = TempDir::new("stale-cgroup");
    let state = dir.0.join("state");
    let policy = dir.file(
        "p.toml",
        &format!("version = 1\n[[rule]]\nname = \"app\"\naction = \"allow\"\nproto = \"tcp\"\nports = [443]\ncgroup = \"/{name}\"\n"),
    );
    let ns = kernel::netns::NetNs::new().expect("namespace");
    let with_state = |args: &[&str]| {
        let mut argv = vec![format!("--net={}", ns.path().display()), "env".into(), format!("LEASH_STATE_DIR={}", state.display()), leash_bin().into()];
        argv.extend(args.iter().map(|a| a.to_string()));
        run_cmd(None, "nsenter", &argv.iter().map(String::as_str).collect::<Vec<_>>(), None)
    };
    let r = with_state(&["apply", &policy]);
    assert!(r.ok(), "{r}");
    let r = with_state(&["status"]);
    assert!(r.ok() && !r.stderr.contains("warning"), "{r}");

    // The service restarts: its directory goes and comes back with a new inode.
    std::fs::remove_dir(&cg.0).unwrap();
    let r = with_state(&["status"]);
    assert!(r.stderr.contains(&format!("{name} is gone since the apply")), "{r}");
    std::fs::create_dir(&cg.0).unwrap();
    let r = with_state(&["status"]);
    assert!(r.stderr.contains(&format!("{name} was made again")), "{r}");
    // A new apply takes the new id.
    assert!(with_state(&["apply", &policy]).ok());
    let r = with_state(&["status"]);
    assert!(!r.stderr.contains("warning"), "{r}");
}

/// `leash apply` says how far the compiled daylight-saving periods reach.
#[test]
fn apply_reports_how_long_time_windows_stay_exact() {
    if !need_root("apply_reports_how_long_time_windows_stay_exact") {
        return;
    }
    let ns = kernel::netns::NetNs::new().expect("namespace");
    let r = leash_in(&ns, &["apply", "--json", example("branch-office").to_str().unwrap()]);
    assert!(r.ok(), "{r}");
    let j = r.json();
    let w = &j["time_windows"];
    assert_eq!(w["time_zone"], "Europe/Berlin", "{r}");
    // Berlin changes its offset twice a year: at least two transitions in 400 days.
    assert!(w["offset_periods"].as_u64().unwrap() >= 3, "{r}");
    let until: jiff::Timestamp = w["exact_until"].as_str().unwrap().parse().unwrap();
    let days = (until.as_second() - jiff::Timestamp::now().as_second()) / 86_400;
    assert!((399..=400).contains(&days), "{r}");
    // A policy without windows says nothing about them.
    let r = leash_in(&ns, &["apply", "--json", example("web-server").to_str().unwrap()]);
    assert!(r.ok() && r.json()["time_windows"].is_null(), "{r}");
}

/// `max_connections` per user: each user has its own count. nobody holds two connections and is
/// refused a third, while root still gets through.
#[test]
fn max_connections_per_user_counts_each_user_apart() {
    if !need_root("max_connections_per_user_counts_each_user_apart") {
        return;
    }
    let policy = format!(
        "version = 1\n[defaults]\noutbound = \"deny\"\n[[rule]]\nname = \"two-each\"\naction = \"allow\"\nproto = \"tcp\"\nports = [443]\nto = [\"{DST}\"]\nmax_connections = 2\nlimit_per = \"user\"\n"
    );
    let dir = TempDir::new("maxconn-user");
    let lab = applied(&dir, "max.toml", &policy, &[443]);
    let net = format!("--net={}", lab.client().path().display());
    // Two connections held by nobody for a few seconds (bash's /dev/tcp keeps them open while it
    // sleeps); their pids are ours to end.
    let holders: Vec<std::process::Child> = (0..2)
        .map(|_| {
            std::process::Command::new("nsenter")
                .args([net.as_str(), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{DST}/443 && sleep 5"))
                .spawn()
                .expect("nsenter setpriv bash")
        })
        .collect();
    // Wait (bounded) until both are established.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = run_cmd(None, "nsenter", &[&net, "ss", "-Htn", "state", "established", "dst", DST], None);
        if r.stdout.lines().count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the two held connections did not come up: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let as_nobody = Case { uid: 65534, gid: 65534, ..tcp(DST, 443) };
    assert_eq!(lab.probe(&as_nobody, PROBE), Outcome::Refused, "a third connection for nobody");
    assert_eq!(lab.probe(&tcp(DST, 443), PROBE), Outcome::Connected, "root has a count of its own");
    for mut h in holders {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped yet.
        unsafe {
            libc::kill(h.id() as i32, libc::SIGKILL);
        }
        let _ = h.wait();
    }
}
