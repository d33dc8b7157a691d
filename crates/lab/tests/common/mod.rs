//! Helpers shared by the lab's kernel tests: the root check and loading hand-written nft rules.
#![allow(dead_code)] // each test binary uses a different subset

use kernel::netns::NetNs;
use std::io::Write;
use std::process::{Command, Stdio};

/// Kernel tests need root. Outside CI they are skipped with a reason; in CI (`CI` set) a missing
/// privilege is a failure, so a misconfigured runner cannot pass by skipping everything.
pub fn need_root() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "kernel tests need root, and CI is set: failing instead of skipping");
    eprintln!("skipped: kernel tests need root (run as root, or set CI to make this a failure)");
    false
}

/// Loads `rules` with `nft -f -` inside `ns` (test-only oracle; the product never runs nft).
/// `nsenter --net=` rather than `ip netns exec`, which would hide /sys/fs/cgroup.
pub fn nft(ns: &NetNs, rules: &str) {
    let out = run_in(ns, &["nft", "-f", "-"], Some(rules));
    assert!(out.status.success(), "nft -f failed: {}\n{rules}", String::from_utf8_lossy(&out.stderr));
}

/// `nft list ruleset` inside `ns`, for failure messages.
pub fn ruleset(ns: &NetNs) -> String {
    let out = run_in(ns, &["nft", "list", "ruleset"], None);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_in(ns: &NetNs, argv: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nsenter");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}
