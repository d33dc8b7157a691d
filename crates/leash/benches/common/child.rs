//! Child processes a bench times: spawned with their output in files, reaped with `wait4` for
//! their resource usage (CPU time and peak RSS, which std's `wait` does not report), killed by
//! their pid after a time limit if they have one.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How often a child with a time limit is polled: the slack its wall time can have.
const POLL: Duration = Duration::from_millis(2);

/// A `timeval` of rusage as a `Duration`.
pub fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Waits for our own child with `wait4`, for its exit status and resource usage. The `Child`
/// must not be waited on afterwards.
pub fn wait_with_rusage(child: &Child) -> std::io::Result<(libc::c_int, libc::rusage)> {
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

/// A child process run to its end (or killed at its time limit).
#[derive(Debug, Clone)]
pub struct Finished {
    /// The command as `Debug` prints it, for errors.
    pub what: String,
    /// The wait status.
    pub status: libc::c_int,
    /// From spawn to reap.
    pub wall: Duration,
    /// CPU time in user space and in the kernel (the kernel's work on a netlink batch is system
    /// time of the process that sends it), up to the kill for a run that timed out.
    pub user: Duration,
    pub sys: Duration,
    /// Peak RSS, KiB (`ru_maxrss`).
    pub maxrss_kib: u64,
    /// Killed (SIGKILL) at its time limit.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn exited_ok(&self) -> bool {
        !self.timed_out && libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    /// The run, unless it ended other than by exiting with 0 or by being killed at its time
    /// limit (a timeout is the caller's to report).
    pub fn checked(self) -> Result<Finished> {
        if !self.timed_out && !self.exited_ok() {
            bail!("{} failed (wait status {:#x}):\n{}{}", self.what, self.status, self.stdout, self.stderr);
        }
        Ok(self)
    }
}

/// Runs `cmd` (its stdin as the caller set it) with its standard output and error going to
/// `DIR/TAG.stdout` and `DIR/TAG.stderr`, and reaps it with its rusage. With a `limit`, polls
/// `wait4` (WNOHANG) and kills the child by its pid once the limit has passed, while it is
/// certainly still ours (not yet reaped); the time and rusage then run up to the kill.
pub fn run(cmd: &mut Command, dir: &Path, tag: &str, limit: Option<Duration>) -> Result<Finished> {
    let out_path = dir.join(format!("{tag}.stdout"));
    let err_path = dir.join(format!("{tag}.stderr"));
    cmd.stdout(std::fs::File::create(&out_path)?).stderr(std::fs::File::create(&err_path)?);
    let what = format!("{cmd:?}");
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    // `child` is never waited on through std afterwards (dropping a `Child` does not wait).
    let (status, ru, timed_out) = match limit {
        None => {
            let (status, ru) = wait_with_rusage(&child).context("wait4")?;
            (status, ru, false)
        }
        Some(limit) => wait_limited(&child, start, limit)?,
    };
    let wall = start.elapsed();
    drop(child);
    let read = |p: &Path| -> Result<String> { Ok(String::from_utf8_lossy(&std::fs::read(p)?).into_owned()) };
    Ok(Finished {
        what,
        status,
        wall,
        user: tv(ru.ru_utime),
        sys: tv(ru.ru_stime),
        maxrss_kib: ru.ru_maxrss as u64,
        timed_out,
        stdout: read(&out_path)?,
        stderr: read(&err_path)?,
    })
}

fn wait_limited(child: &Child, start: Instant, limit: Duration) -> Result<(libc::c_int, libc::rusage, bool)> {
    let pid = child.id() as libc::pid_t;
    let mut timed_out = false;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; all-zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: polls our own child; status and ru are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            return Ok((status, ru, timed_out));
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("wait4");
            }
        }
        if !timed_out && start.elapsed() > limit {
            timed_out = true;
            // SAFETY: signals our own child, which has not been reaped (so the pid is still ours).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(POLL);
    }
}
