//! The identity a probe connects with: the calling thread (only) becomes a user and group.

use std::io;

/// Gives the calling thread (only) the identity `uid`/`gid` with no supplementary groups.
///
/// The raw system calls change only the calling thread's credentials; glibc's wrappers would
/// change every thread of the process (they signal all threads to keep POSIX semantics). A socket
/// created afterwards is owned by this user, which is what nftables' `meta skuid`/`skgid` see.
/// There is no way back to root for the thread, so call it on a throwaway thread.
pub(crate) fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: raw syscalls with plain integer arguments and a null group list of length 0.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
            return Err(ctx(io::Error::last_os_error(), "setgroups"));
        }
        if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
            return Err(ctx(io::Error::last_os_error(), "setresgid"));
        }
        if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
            return Err(ctx(io::Error::last_os_error(), "setresuid"));
        }
    }
    Ok(())
}

fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
