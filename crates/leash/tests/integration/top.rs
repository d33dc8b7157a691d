//! `leash top` for real: `--once --json` lists this test process with its connection and a
//! blocked attempt, and the terminal UI runs under tmux in a lab namespace, draws, quits on `q`
//! with status 0 and leaves the terminal as it found it (normal screen, cooked mode), also when
//! it panics.

use crate::harness::*;
use lab::{Case, Lab, Outcome};
use policy::Proto;
use std::net::{IpAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const DST: &str = "192.0.2.30";
const OPEN: u16 = 443;
const CLOSED: u16 = 25;

fn policy_text() -> String {
    format!(
        r#"version = 1
[defaults]
outbound = "deny"
deny_with = "drop"
log_denied = true

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [{OPEN}]
to = ["{DST}"]
"#
    )
}

fn setup(dir: &TempDir) -> Lab {
    let lab = Lab::new(&[DST.parse::<IpAddr>().unwrap()], &[OPEN, CLOSED], &[]).expect("lab");
    let path = dir.file("top.toml", &policy_text());
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    lab
}

#[test]
fn top_once_lists_processes_destinations_and_blocked_attempts() {
    if !need_root("top_once_lists_processes_destinations_and_blocked_attempts") {
        return;
    }
    let dir = TempDir::new("top-once");
    let lab = setup(&dir);
    let held = lab.client().run(|| TcpStream::connect((DST, OPEN)).unwrap());
    let me = std::process::id();

    // A dropped connect made while `leash top --once` listens (it looks twice, 2 s apart).
    let out = std::thread::scope(|s| {
        let top = s.spawn(|| leash_in(lab.client(), &["top", "--once", "--json", "--interval", "2"]));
        std::thread::sleep(Duration::from_millis(700));
        let case = Case { proto: Proto::Tcp, dst: DST.parse().unwrap(), port: Some(CLOSED), uid: 0, gid: 0, name: None, cgroup: None };
        assert_eq!(lab.probe(&case, Duration::from_millis(300)), Outcome::TimedOut);
        top.join().unwrap()
    });
    assert!(out.ok(), "{out}");
    let v = out.json();
    assert!(v["policy"].as_str().is_some_and(|p| p.contains("top.toml")), "{out}");
    assert!(v["blocked"].as_u64().unwrap() >= 1, "{out}");
    let procs = v["processes"].as_array().unwrap();
    let mine = procs.iter().find(|p| p["pid"] == me).unwrap_or_else(|| panic!("this process is not listed{out}"));
    assert_eq!(mine["conns"], 1, "{out}");
    assert_eq!(mine["user"], "root", "{out}");
    let d = &mine["destinations"][0];
    assert_eq!(d["remote"], format!("{DST}:{OPEN}"), "{out}");
    assert_eq!((d["state"].as_str(), d["verdict"].as_str(), d["rule"].as_str()), (Some("ESTABLISHED"), Some("allow"), Some("web")), "{out}");
    assert!(mine["tx_bytes_per_s"].is_number(), "two looks give rates{out}");
    drop(held);
}

/// Whether the screen shows the exit status line (not only the command that prints it).
fn exited(screen: &str) -> bool {
    screen.lines().any(|l| l.starts_with("top-exit="))
}

/// A tmux server of our own (its own socket name), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str) -> Tmux {
        let t = Tmux { socket: format!("leash-test-{}-{tag}", std::process::id()) };
        // A plain shell in a 120x30 window; TERM set for tmux's client side (CI has none).
        let out = t.cmd(&["new-session", "-d", "-s", "t", "-x", "120", "-y", "30", "sh"]);
        assert!(out.0, "tmux new-session failed: {}", out.1);
        // Type only once the shell shows its prompt: keys sent while it starts up can reach the
        // terminal before the shell has set it up, and the first command then goes astray.
        t.wait_for("the shell prompt", |s| {
            let s = s.trim_end();
            s.ends_with('#') || s.ends_with('$')
        });
        t
    }

    fn cmd(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux (apt-get install tmux)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "t"]).1
    }

    fn type_line(&self, line: &str) {
        assert!(self.cmd(&["send-keys", "-t", "t", "-l", line]).0);
        assert!(self.cmd(&["send-keys", "-t", "t", "Enter"]).0);
    }

    /// Waits (at most 15 s) until the screen satisfies `want`; returns it.
    fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.screen();
            if want(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "waited 15 s for {what}; the screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alternate_screen(&self) -> bool {
        self.cmd(&["display-message", "-p", "-t", "t", "#{alternate_on}"]).1.trim() == "1"
    }

    /// Whether the terminal is back in cooked mode: `stty` shows `icanon` and `echo` set.
    fn assert_cooked(&self, tag: &str) {
        self.type_line(&format!("stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; echo {tag}"));
        let s = self.wait_for("stty's answer", |s| s.lines().any(|l| l.trim_end().ends_with(tag) && !l.contains("stty")));
        let line = s.lines().find(|l| l.trim_end().ends_with(tag) && !l.contains("stty")).unwrap();
        assert_eq!(line.trim_end(), format!("icanon echo {tag}"), "terminal not restored:\n{s}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn top_under_tmux_draws_quits_on_q_and_restores_the_terminal() {
    if !need_root("top_under_tmux_draws_quits_on_q_and_restores_the_terminal") {
        return;
    }
    let dir = TempDir::new("top-tmux");
    let lab = setup(&dir);
    let _held = lab.client().run(|| TcpStream::connect((DST, OPEN)).unwrap());
    let tmux = Tmux::new("q");
    let net = format!("--net={}", lab.client().path().display());

    tmux.type_line(&format!("nsenter {net} {} top --interval 0.3; echo top-exit=$?", leash_bin()));
    // The key line is drawn last: once it is there, the whole frame is.
    let frame = tmux.wait_for("the first frame", |s| s.contains("leash top") && s.contains("q quit"));
    assert!(tmux.alternate_screen(), "the UI draws on the alternate screen:\n{frame}");
    assert!(frame.contains(&format!("{DST}:{OPEN}")), "the held connection is listed:\n{frame}");
    assert!(frame.contains("Processes ("), "{frame}");

    // Sort by bytes, then quit.
    tmux.cmd(&["send-keys", "-t", "t", "b"]);
    tmux.wait_for("sort by bytes", |s| s.contains("sort: bytes"));
    tmux.cmd(&["send-keys", "-t", "t", "q"]);
    let after = tmux.wait_for("leash top to exit", exited);
    assert!(after.contains("top-exit=0"), "{after}");
    assert!(!after.contains("Processes ("), "the UI is gone from the screen:\n{after}");
    assert!(!tmux.alternate_screen(), "back on the normal screen:\n{after}");
    tmux.assert_cooked("after-q");
}

#[test]
fn top_restores_the_terminal_when_it_panics() {
    if !need_root("top_restores_the_terminal_when_it_panics") {
        return;
    }
    let dir = TempDir::new("top-panic");
    let lab = setup(&dir);
    let tmux = Tmux::new("panic");
    let net = format!("--net={}", lab.client().path().display());
    tmux.type_line(&format!("nsenter {net} {} top --no-log --fault-panic; echo top-exit=$?", leash_bin()));
    let after = tmux.wait_for("leash top to exit", exited);
    assert!(after.contains("top-exit=101"), "a panic exits with 101:\n{after}");
    assert!(after.contains("--fault-panic after the first frame"), "the panic message is readable:\n{after}");
    assert!(!tmux.alternate_screen(), "back on the normal screen:\n{after}");
    tmux.assert_cooked("after-panic");
}

#[test]
fn top_exits_when_its_terminal_goes_away() {
    if !need_root("top_exits_when_its_terminal_goes_away") {
        return;
    }
    let dir = TempDir::new("top-hangup");
    let lab = setup(&dir);
    let pidfile = dir.0.join("top.pid");
    let tmux = Tmux::new("hangup");
    let net = format!("--net={}", lab.client().path().display());
    // `exec` so that the pid the shell writes is the pid of leash top itself.
    tmux.type_line(&format!("sh -c 'echo $$ > {}; exec nsenter {net} {} top --interval 0.3'", pidfile.display(), leash_bin()));
    tmux.wait_for("the first frame", |s| s.contains("leash top") && s.contains("q quit"));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // Close the window under it: the terminal is hung up. A UI that does not notice keeps
    // sampling (and crossterm's wait spins on the dead terminal) for no one.
    drop(tmux);
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ");
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = alive();
    if still {
        // Ours: started by this test; end it so nothing is left behind.
        // SAFETY: kill(2) on a pid this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(!still, "leash top (pid {pid}) kept running after its terminal went away");
}
