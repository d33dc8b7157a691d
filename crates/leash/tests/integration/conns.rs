//! `leash conns` against real sockets: a lab (client and peer namespaces, echo servers on the
//! peer), a drop policy applied in the client with `leash apply`, and `nc` processes started in
//! the client namespace as root and as nobody (65534). `leash conns --json` inside the client
//! must list each process's socket with its pid, user, state and the verdict and rule of the
//! active policy: allowed connections ESTABLISHED, the dropped connect waiting in SYN_SENT with
//! verdict deny. Also the filters, the text table, `--policy` with a candidate that would cut a
//! connection, a policy file edited after the apply, and usage errors.

use crate::harness::*;
use kernel::netns::NetNs;
use serde_json::Value;
use std::net::IpAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const POLICY: &str = r#"version = 1
[defaults]
outbound = "deny"
deny_with = "drop"

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [443]
to = ["192.0.2.10", "2001:db8::10"]

[[rule]]
name = "dns"
action = "allow"
proto = "udp"
ports = [53]
to = ["192.0.2.10"]
user = ["root"]
"#;

/// The same policy with `web` limited to root: it would cut nobody's HTTPS connection.
const CANDIDATE: &str = r#"version = 1
[defaults]
outbound = "deny"
deny_with = "drop"

[[rule]]
name = "web-root-only"
action = "allow"
proto = "tcp"
ports = [443]
to = ["192.0.2.10", "2001:db8::10"]
user = ["root"]

[[rule]]
name = "dns"
action = "allow"
proto = "udp"
ports = [53]
to = ["192.0.2.10"]
user = ["root"]
"#;

/// A process started in a namespace, killed (by its pid) and reaped when dropped, also when the
/// test fails.
struct Proc {
    child: Child,
    // Held open so `nc` keeps its connection and waits for input.
    _stdin: Option<ChildStdin>,
    what: String,
}

impl Proc {
    /// `nsenter --net=NS [-S uid -G gid] nc ARGS`: nsenter execs nc in place, so the pid is nc's.
    fn nc(ns: &NetNs, uid: Option<u32>, args: &[&str]) -> Proc {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", ns.path().display()));
        if let Some(u) = uid {
            c.args(["-S", &u.to_string(), "-G", &u.to_string()]);
        }
        c.arg("nc").args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().expect("run nsenter nc (util-linux and netcat-openbsd)");
        let stdin = child.stdin.take();
        Proc { child, _stdin: stdin, what: format!("uid {uid:?} nc {}", args.join(" ")) }
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn conns_of(j: &Value, pid: u64) -> Vec<&Value> {
    j["connections"].as_array().unwrap().iter().filter(|c| c["pid"].as_u64() == Some(pid)).collect()
}

/// Runs `leash conns --json ARGS` in `ns` until `ready` holds for its output (at most ~5 s: the
/// processes need a moment to connect).
fn conns_until(ns: &NetNs, args: &[&str], ready: impl Fn(&Value) -> bool) -> (Run, Value) {
    let mut full = vec!["conns", "--json"];
    full.extend_from_slice(args);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = leash_in(ns, &full);
        assert!(r.ok(), "{r}");
        let j = r.json();
        if ready(&j) || Instant::now() > deadline {
            return (r, j);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn conns_shows_processes_users_states_and_verdicts() {
    if !need_root("conns_shows_processes_users_states_and_verdicts") {
        return;
    }
    let web4: IpAddr = "192.0.2.10".parse().unwrap();
    let web6: IpAddr = "2001:db8::10".parse().unwrap();
    let lab = lab::Lab::new(&[web4, web6], &[443, 80], &[53]).expect("lab");
    let ns = lab.client();
    let dir = TempDir::new("conns");
    let path = dir.file("policy.toml", POLICY);
    let r = leash_in(ns, &["apply", &path]);
    assert!(r.ok(), "{r}");

    let nobody = Some(65534);
    let web_root = Proc::nc(ns, None, &["192.0.2.10", "443"]);
    let web_nobody6 = Proc::nc(ns, nobody, &["2001:db8::10", "443"]);
    let dropped = Proc::nc(ns, nobody, &["192.0.2.10", "80"]);
    let dns_root = Proc::nc(ns, None, &["-u", "192.0.2.10", "53"]);
    let dns_nobody = Proc::nc(ns, nobody, &["-u", "192.0.2.10", "53"]);
    let listener = Proc::nc(ns, nobody, &["-l", "127.0.0.1", "8080"]);
    let procs = [&web_root, &web_nobody6, &dropped, &dns_root, &dns_nobody, &listener];

    let (r, j) = conns_until(ns, &[], |j| procs.iter().all(|p| conns_of(j, p.pid()).len() == 1));
    for p in procs {
        assert_eq!(conns_of(&j, p.pid()).len(), 1, "{}: one socket expected{r}", p.what);
    }
    assert_eq!(j["policy"]["source"], "active", "{r}");
    assert_eq!(j["policy"]["path"].as_str().unwrap(), std::fs::canonicalize(&path).unwrap().to_str().unwrap(), "{r}");
    assert_eq!(j["policy"]["changed_since_apply"], false, "{r}");

    // (process, proto, state, direction, user, remote, verdict, rule, decided_by)
    let want = [
        (&web_root, "tcp", "ESTABLISHED", "out", "root", "192.0.2.10:443", "allow", Some("web"), "rule"),
        (&web_nobody6, "tcp", "ESTABLISHED", "out", "nobody", "[2001:db8::10]:443", "allow", Some("web"), "rule"),
        (&dropped, "tcp", "SYN_SENT", "out", "nobody", "192.0.2.10:80", "deny", None, "default"),
        (&dns_root, "udp", "ESTABLISHED", "out", "root", "192.0.2.10:53", "allow", Some("dns"), "rule"),
        (&dns_nobody, "udp", "ESTABLISHED", "out", "nobody", "192.0.2.10:53", "deny", None, "default"),
    ];
    for (p, proto, state, direction, user, remote, verdict, rule, decided_by) in want {
        let c = conns_of(&j, p.pid())[0];
        let ctx = format!("{}: {c:#}{r}", p.what);
        assert_eq!(c["proto"], proto, "{ctx}");
        assert_eq!(c["state"], state, "{ctx}");
        assert_eq!(c["direction"], direction, "{ctx}");
        assert_eq!(c["user"], user, "{ctx}");
        assert_eq!(c["uid"], if user == "root" { 0 } else { 65534 }, "{ctx}");
        assert_eq!(c["gid"], if user == "root" { 0 } else { 65534 }, "{ctx}");
        assert_eq!(c["remote"], remote, "{ctx}");
        assert_eq!(c["verdict"], verdict, "{ctx}");
        assert_eq!(c["rule"].as_str(), rule, "{ctx}");
        assert_eq!(c["decided_by"], decided_by, "{ctx}");
        assert_eq!(c["comm"], "nc", "{ctx}");
        assert!(c["exe"].as_str().unwrap().contains("nc"), "{ctx}");
    }
    let l = conns_of(&j, listener.pid())[0];
    assert_eq!((l["state"].as_str(), l["direction"].as_str(), l["verdict"].as_str()), (Some("LISTEN"), Some("listen"), None), "{r}");
    assert_eq!(l["local"], "127.0.0.1:8080", "{r}");
    let s = &j["summary"];
    assert!(s["allowed"].as_u64().unwrap() >= 3 && s["denied"].as_u64().unwrap() >= 2, "{r}");

    // Filters.
    let (r, f) = conns_until(ns, &["--pid", &dropped.pid().to_string()], |_| true);
    let all = f["connections"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{r}");
    assert_eq!(all[0]["state"], "SYN_SENT", "{r}");
    let (r, f) = conns_until(ns, &["--state", "syn-sent"], |_| true);
    assert!(f["connections"].as_array().unwrap().iter().all(|c| c["state"] == "SYN_SENT"), "{r}");
    assert_eq!(conns_of(&f, dropped.pid()).len(), 1, "{r}");
    let (r, f) = conns_until(ns, &["--user", "nobody", "--udp"], |_| true);
    let all = f["connections"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{r}");
    assert_eq!(all[0]["pid"].as_u64(), Some(dns_nobody.pid()), "{r}");

    // The table for people: header, verdicts and the deciding rule.
    let t = leash_in(ns, &["conns", "--state", "established,syn-sent"]);
    assert!(t.ok(), "{t}");
    assert!(t.stdout.starts_with("PROTO"), "{t}");
    assert!(t.stdout.contains("VERDICT"), "{t}");
    let line = |pid: u64| t.stdout.lines().find(|l| l.contains(&format!(" {pid}/nc"))).unwrap_or_else(|| panic!("pid {pid} in{t}"));
    assert!(line(dropped.pid()).contains("SYN_SENT") && line(dropped.pid()).contains("deny"), "{t}");
    assert!(line(web_root.pid()).contains("allow") && line(web_root.pid()).contains("web"), "{t}");
    assert!(t.stdout.contains("active policy"), "{t}");

    // A candidate policy: nobody's HTTPS connection would be cut (the active policy allows it).
    let cand = dir.file("candidate.toml", CANDIDATE);
    let (r, c) = conns_until(ns, &["--policy", &cand], |_| true);
    assert_eq!(c["policy"]["source"], "file", "{r}");
    assert_eq!(c["active_policy"]["source"], "active", "{r}");
    let n6 = conns_of(&c, web_nobody6.pid())[0];
    assert_eq!((n6["verdict"].as_str(), n6["active_verdict"].as_str()), (Some("deny"), Some("allow")), "{r}");
    let r4 = conns_of(&c, web_root.pid())[0];
    assert_eq!((r4["verdict"].as_str(), r4["rule"].as_str()), (Some("allow"), Some("web-root-only")), "{r}");
    assert_eq!(c["would_deny_now_allowed"], 1, "{r}");
    assert!(c["would_deny"].as_u64().unwrap() >= 3, "{r}");
    let t = leash_in(ns, &["conns", "--policy", &cand]);
    assert!(t.ok(), "{t}");
    assert!(t.stdout.contains("would deny") && t.stdout.contains("(1 of them allowed by the active policy)"), "{t}");
    assert!(t.stdout.contains("[2001:db8::10]:443"), "{t}");

    // The applied file changes: verdicts follow the file, with a warning.
    std::fs::write(&path, format!("{POLICY}\n# edited after the apply\n")).unwrap();
    let (r, e) = conns_until(ns, &[], |_| true);
    assert_eq!(e["policy"]["changed_since_apply"], true, "{r}");
    assert!(e["warnings"][0].as_str().unwrap().contains("changed since it was applied"), "{r}");

    // Usage errors exit 2; a candidate with errors exits 1.
    assert_eq!(leash_in(ns, &["conns", "--state", "sleepy"]).code, Some(2));
    assert_eq!(leash_in(ns, &["conns", "--user", "no-such-user-leash"]).code, Some(2));
    let bad = dir.file("bad.toml", "version = 1\n[[rule]]\nname = \"x\"\naction = \"maybe\"\n");
    assert_eq!(leash_in(ns, &["conns", "--policy", &bad]).code, Some(1));
    root_has_no_leash_table();
}

#[test]
fn conns_without_a_policy_lists_sockets_without_verdicts() {
    if !need_root("conns_without_a_policy_lists_sockets_without_verdicts") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let l = Proc::nc(&ns, None, &["-l", "127.0.0.1", "9999"]);
    let (r, j) = conns_until(&ns, &[], |j| conns_of(j, l.pid()).len() == 1);
    assert_eq!(conns_of(&j, l.pid()).len(), 1, "{r}");
    assert!(j["policy"].is_null(), "{r}");
    assert!(j["connections"].as_array().unwrap().iter().all(|c| c["verdict"].is_null()), "{r}");
    let t = leash_in(&ns, &["conns"]);
    assert!(t.ok() && t.stdout.contains("no verdicts"), "{t}");
    // --no-processes: no /proc scan, no pids.
    let t = leash_in(&ns, &["conns", "--json", "--no-processes"]);
    assert!(t.ok(), "{t}");
    assert!(t.json()["connections"].as_array().unwrap().iter().all(|c| c["pid"].is_null()), "{t}");
}

/// Issue 12 item 11: a process that names itself with bytes that are not UTF-8 (and a terminal
/// escape) through `prctl(PR_SET_NAME)` is still attributed its sockets, its name shown escaped
/// (`\xff`, `\x1b`), in the JSON and in the table. It used to count as exited (its
/// `/proc/PID/status` did not read as UTF-8) and its sockets showed without a process.
#[test]
fn a_process_with_a_name_that_is_not_utf8_is_attributed() {
    use std::io::BufRead;
    if !need_root("a_process_with_a_name_that_is_not_utf8_is_attributed") {
        return;
    }
    let ns = NetNs::new().unwrap();
    // PR_SET_NAME is 15; the name is 11 bytes (the kernel keeps 15). The process ends when its
    // stdin closes (the test dropping it), or after 60 s at the latest.
    let script = r#"
import ctypes, signal, socket, sys
signal.alarm(60)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(15, b"\xff\xfe evil\x1b[0m", 0, 0, 0) == 0
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname())
a, _ = l.accept()
print(l.getsockname()[1], flush=True)
sys.stdin.read()
"#;
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["python3", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nsenter python3");
    let stdin = child.stdin.take();
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let p = Proc { child, _stdin: stdin, what: "python3 renamed".into() };
    assert!(!port.trim().is_empty(), "the helper did not start");
    let comm = std::fs::read(format!("/proc/{}/comm", p.pid())).unwrap();
    assert_eq!(comm, b"\xff\xfe evil\x1b[0m\n", "the premise: the kernel keeps the bytes");

    let (r, j) = conns_until(&ns, &[], |j| conns_of(j, p.pid()).len() == 3);
    let mine = conns_of(&j, p.pid());
    assert_eq!(mine.len(), 3, "the listener and both ends of the connection are its: {r}");
    for c in &mine {
        assert_eq!(c["comm"], "\\xff\\xfe evil\\x1b[0m", "{c:#}{r}");
        assert_eq!(c["uid"], 0, "{c:#}{r}");
        assert!(c["exe"].as_str().unwrap().contains("python3"), "{c:#}{r}");
    }
    let t = leash_in(&ns, &["conns"]);
    assert!(t.ok(), "{t}");
    assert!(t.stdout.contains(&format!("{}/\\xff\\xfe evil\\x1b[0m", p.pid())), "{t}");
    assert!(!t.stdout.contains('\u{1b}'), "no raw escape reaches the terminal: {t}");
}
