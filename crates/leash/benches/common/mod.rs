//! Helpers every benchmark shares: waiting for an idle machine, rusage times, the scratch
//! directory and tool versions for the report.
#![allow(dead_code)] // each bench uses a subset

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Waits (at most 5 s) until both CPUs were idle for a 100 ms window, so that deferred kernel
/// work of the previous run (freeing a replaced table, tearing down a namespace) or another
/// program's build does not land in the next measurement. Returns whether it found such a window.
pub fn settle() -> bool {
    fn busy_total() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let idle = v.get(3)? + v.get(4).unwrap_or(&0);
        let total: u64 = v.iter().take(8).sum();
        Some((total - idle, total))
    }
    for _ in 0..50 {
        let Some((b0, t0)) = busy_total() else {
            return false;
        };
        std::thread::sleep(Duration::from_millis(100));
        let Some((b1, t1)) = busy_total() else {
            return false;
        };
        if t1 > t0 && ((b1 - b0) as f64) < 0.05 * (t1 - t0) as f64 {
            return true;
        }
    }
    false
}

/// Waits for our own child with `wait4`, for its exit status and resource usage (CPU time and
/// peak RSS, which std's `wait` does not report). The `Child` must not be waited on afterwards.
pub fn wait_with_rusage(child: &std::process::Child) -> std::io::Result<(libc::c_int, libc::rusage)> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child; status and ru are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Removes the scratch directory however `main` ends (unless kept, with `--keep`).
pub struct Scratch(pub PathBuf, pub bool);

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.1 {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The first line a tool prints for its version (`nft --version`), for the report.
pub fn tool_version(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
