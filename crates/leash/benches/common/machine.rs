//! The machine a bench runs on: root or not, which tools are installed, the leash binary under
//! test, waiting for idle CPUs, the scratch directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Whether this process runs as root (namespaces and nftables need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The leash binary under test: `LEASH_BIN`, else the one cargo built for the bench (in the
/// bench profile).
pub fn leash_bin() -> PathBuf {
    PathBuf::from(std::env::var_os("LEASH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_leash").into()))
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

/// Removes the scratch directory however `main` ends (unless kept, with `--keep`).
pub struct Scratch(pub PathBuf, pub bool);

impl Scratch {
    /// `BASE/leash-bench-NAME-PID`, created now.
    pub fn create(base: PathBuf, name: &str, keep: bool) -> std::io::Result<Scratch> {
        let s = Scratch(base.join(format!("leash-bench-{name}-{}", std::process::id())), keep);
        std::fs::create_dir_all(&s.0)?;
        Ok(s)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.1 {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
