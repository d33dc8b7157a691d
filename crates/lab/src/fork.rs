//! Work done in a forked child of the calling thread: inside a cgroup, as a given user.
//!
//! Why a process and not a thread: a cgroup holds processes (`cgroup.procs`), and moving a
//! thread's id there would move the whole lab process. A child forked from a probe thread that
//! already entered the client namespace inherits that thread's network namespace (the new
//! process copies the calling task's namespaces), so the child only has to join the cgroup, drop
//! to the user and run.
//!
//! Safety after `fork()` in a multi-threaded parent: only the calling thread exists in the child,
//! and any lock another thread held stays locked forever. The child therefore does its setup with
//! raw system calls on data prepared before the fork, never prints (stdout and stderr have locks),
//! and ends with `_exit` (no atexit handlers, no destructors of the parent's state). It does
//! allocate: glibc's malloc resets its arenas in the child (fork handlers), so that is safe in
//! practice. A panic in the child is caught and turned into an exit status; it must never unwind
//! into the parent's code running in a copy of its stack.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Exit status of a child whose setup (cgroup, user) failed; the reason is in its pipe.
pub(crate) const SETUP_FAILED: u8 = 120;
/// Exit status of a child that panicked.
pub(crate) const PANICKED: u8 = 121;
/// At most this many bytes are kept from a child's pipe.
const MAX_DATA: usize = 1 << 20;

/// Who the child becomes before it runs its work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity<'a> {
    /// `<dir>/cgroup.procs` of the cgroup to join, if any.
    pub cgroup_procs: Option<&'a CStr>,
    pub uid: u32,
    pub gid: u32,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// It exited with this status.
    Exited(u8),
    /// A signal ended it (not ours).
    Signaled(i32),
    /// It ran past its time limit and was killed.
    Killed,
}

/// The write end of the pipe back to the parent, for the child.
#[derive(Debug)]
pub(crate) struct ChildPipe(RawFd);

impl ChildPipe {
    /// Writes all of `b` (blocking while the pipe is full; the parent reads concurrently).
    pub(crate) fn write_all(&mut self, mut b: &[u8]) -> bool {
        // Bounded: every iteration writes at least one byte or returns.
        while !b.is_empty() {
            // SAFETY: writing from a valid slice to our own pipe descriptor.
            let n = unsafe { libc::write(self.0, b.as_ptr().cast(), b.len()) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return false;
            }
            if n == 0 {
                return false;
            }
            b = &b[n as usize..];
        }
        true
    }
}

/// Forks, and in the child joins the cgroup, becomes the user and runs `work`, whose return value
/// is the child's exit status; bytes it writes to its pipe are returned to the caller. The child
/// is killed when it runs longer than `limit`. Needs root for the cgroup and the user change.
pub(crate) fn run<F>(who: Identity<'_>, limit: Duration, work: F) -> io::Result<(End, Vec<u8>)>
where
    F: FnOnce(&mut ChildPipe) -> u8,
{
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (r, w) = (fds[0], fds[1]);
    // SAFETY: fork has no preconditions; the child only runs `child_main`, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: the read end is ours; the child never reads.
        unsafe { libc::close(r) };
        let mut pipe = ChildPipe(w);
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child_main(who, &mut pipe, work)))
            .unwrap_or(PANICKED);
        // SAFETY: ends the child at once, without running anything of the parent's.
        unsafe { libc::_exit(i32::from(code)) }
    }
    // SAFETY: the write end belongs to the child now.
    unsafe { libc::close(w) };
    let res = wait_child(pid, r, limit);
    // SAFETY: our read end, closed once.
    unsafe { libc::close(r) };
    res
}

fn child_main<F: FnOnce(&mut ChildPipe) -> u8>(who: Identity<'_>, pipe: &mut ChildPipe, work: F) -> u8 {
    if let Some(procs) = who.cgroup_procs
        && let Err(e) = join_cgroup(procs)
    {
        pipe.write_all(format!("cannot join cgroup ({}): {e}", procs.to_string_lossy()).as_bytes());
        return SETUP_FAILED;
    }
    if let Err(e) = crate::identity::become_user(who.uid, who.gid) {
        pipe.write_all(format!("cannot become uid {} gid {}: {e}", who.uid, who.gid).as_bytes());
        return SETUP_FAILED;
    }
    work(pipe)
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs` ("0" = myself).
fn join_cgroup(procs: &CStr) -> io::Result<()> {
    // SAFETY: a valid C string path; the descriptor is closed below.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: writing one byte from a static buffer.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let e = io::Error::last_os_error();
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    if n != 1 {
        return Err(e);
    }
    Ok(())
}

/// Collects the child's pipe and waits for its end, killing it after `limit`.
fn wait_child(pid: libc::pid_t, r: RawFd, limit: Duration) -> io::Result<(End, Vec<u8>)> {
    let deadline = Instant::now() + limit;
    // Non-blocking reads: other children forked at the same time by other probe threads hold
    // copies of this pipe's write end, so EOF may come later than our child's exit.
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(r, libc::F_SETFL, libc::fcntl(r, libc::F_GETFL) | libc::O_NONBLOCK) };
    // A pidfd becomes readable when the process exits: exact, and per process. Without one
    // (kernels before 5.3) the loop falls back to short polls and `waitpid(WNOHANG)`.
    // SAFETY: plain syscall with integer arguments.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    // SAFETY: a fresh descriptor (when not negative) that nothing else owns.
    let owned = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) });
    let pidfd = owned.as_ref().map_or(-1, |f| f.as_raw_fd());
    let mut data = Vec::new();
    let mut pipe_open = true;
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // SAFETY: our own child, not yet reaped, so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid)?;
            break End::Killed;
        }
        let mut pfds = [
            libc::pollfd { fd: if pipe_open { r } else { -1 }, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 },
        ];
        let wait_ms = if pidfd >= 0 { left.as_millis().min(1000) as i32 + 1 } else { 5 };
        // SAFETY: a valid array of two pollfds (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, wait_ms) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            let e = io::Error::last_os_error();
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid)?;
            return Err(e);
        }
        if pipe_open && pfds[0].revents != 0 {
            pipe_open = drain(r, &mut data);
        }
        let ended = if pidfd >= 0 {
            if pfds[1].revents != 0 { Some(reap(pid)?) } else { None }
        } else {
            try_reap(pid)?
        };
        if let Some(end) = ended {
            // Whatever the child wrote before it exited is in the pipe now.
            drain(r, &mut data);
            break end;
        }
    };
    Ok((end, data))
}

/// Reads what is in the pipe now; false at EOF (or on an error that will not go away).
fn drain(r: RawFd, data: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 8192];
    // Bounded by MAX_DATA (or EOF, or an empty pipe).
    loop {
        // SAFETY: reading into a valid buffer from our descriptor.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return true,
                _ => return false,
            }
        }
        // Beyond the cap the rest is read and dropped, so the child never blocks on a full pipe.
        if data.len() < MAX_DATA {
            data.extend_from_slice(&buf[..n as usize]);
        }
    }
}

fn decode(status: i32) -> End {
    if libc::WIFEXITED(status) {
        End::Exited(libc::WEXITSTATUS(status) as u8)
    } else if libc::WIFSIGNALED(status) {
        End::Signaled(libc::WTERMSIG(status))
    } else {
        End::Signaled(0)
    }
}

/// Waits for the child (blocking) and decodes its status.
fn reap(pid: libc::pid_t) -> io::Result<End> {
    let mut status = 0;
    // Bounded: retried only on EINTR.
    for _ in 0..1000 {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(decode(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Err(io::Error::other("waitpid interrupted too often"))
}

/// `waitpid(WNOHANG)`: the child's end, once it has ended.
fn try_reap(pid: libc::pid_t) -> io::Result<Option<End>> {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r == pid).then(|| decode(status)))
}
