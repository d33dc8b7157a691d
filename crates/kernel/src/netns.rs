//! Anonymous network namespaces kept alive by an open file descriptor, and running code inside them.
//!
//! A [`NetNs`] is made by a short-lived thread that calls `unshare(CLONE_NEWNET)` (the network
//! namespace is a property of the thread, not of the process) and opens `/proc/thread-self/ns/net`.
//! The open descriptor is the only thing that keeps the namespace alive: nothing is bind-mounted
//! under `/run/netns`, so when the `NetNs` is dropped, or the process dies however it dies, the kernel
//! destroys the namespace together with every interface, address, route and nftables table in it.
//! The root namespace of the machine is never touched by anything in this module.
//!
//! Code runs inside a namespace on a scoped thread that `setns()`es into it first ([`NetNs::run`]);
//! the calling thread stays where it was. Sockets remember the namespace they were created in, so a
//! socket made inside `run` can be used from any thread afterwards.
//!
//! For debugging and as a test oracle, [`NetNs::path`] names the descriptor as `/proc/PID/fd/FD`,
//! which `nsenter --net=PATH nft list ruleset` can enter while this process is alive. (Do not use
//! `ip netns exec`: it mounts a fresh sysfs and hides `/sys/fs/cgroup`.)

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;

/// An anonymous network namespace, alive as long as this value (and any thread inside it) is.
#[derive(Debug)]
pub struct NetNs {
    fd: File,
}

impl NetNs {
    /// Creates a new network namespace with its loopback interface up.
    ///
    /// Needs `CAP_SYS_ADMIN` (root).
    pub fn new() -> io::Result<NetNs> {
        // A fresh thread, so that the caller's thread never leaves its namespace; the thread ends
        // right away and only the descriptor keeps the namespace alive.
        let fd = join_thread(std::thread::spawn(|| -> io::Result<File> {
            // SAFETY: plain syscall; it changes only this (throwaway) thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(with_context(io::Error::last_os_error(), "unshare(CLONE_NEWNET)"));
            }
            let fd =
                File::open("/proc/thread-self/ns/net").map_err(|e| with_context(e, "open /proc/thread-self/ns/net"))?;
            set_loopback_up().map_err(|e| with_context(e, "bring lo up"))?;
            Ok(fd)
        }))?;
        Ok(NetNs { fd })
    }

    /// Runs `f` on a new scoped thread that has entered this namespace, and returns its result.
    ///
    /// The calling thread's namespace does not change. Panics in `f` are propagated; failing to
    /// enter the namespace (which needs `CAP_SYS_ADMIN`) panics too, see [`NetNs::try_run`].
    pub fn run<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> R {
        match self.try_run(f) {
            Ok(r) => r,
            Err(e) => panic!("cannot enter network namespace {}: {e}", self.path().display()),
        }
    }

    /// Like [`NetNs::run`], but returns an error instead of panicking when `setns()` fails.
    pub fn try_run<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> io::Result<R> {
        std::thread::scope(|s| {
            let handle = s.spawn(|| -> io::Result<R> {
                self.enter_current_thread()?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Moves the calling thread into this namespace for the rest of its life.
    ///
    /// Only for threads the caller owns (a thread of its own, not a pool's): the thread does not
    /// come back by itself.
    pub fn enter_current_thread(&self) -> io::Result<()> {
        // SAFETY: `fd` is a valid open nsfs descriptor owned by `self`.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(with_context(io::Error::last_os_error(), "setns(CLONE_NEWNET)"));
        }
        Ok(())
    }

    /// `/proc/PID/fd/FD`: a path that enters this namespace while this process lives, for
    /// `nsenter --net=PATH` (debugging, test oracles).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()))
    }

    /// The namespace's inode number (what `/proc/PID/ns/net` shows as `net:[INODE]`); it identifies
    /// the namespace while it lives.
    pub fn inode(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.fd.metadata()?.ino())
    }

    /// Sets a per-namespace sysctl such as `net.ipv4.ping_group_range` inside this namespace.
    ///
    /// Only `net.*` keys are accepted: they are the ones that belong to a network namespace, and
    /// writing any other key would change the whole machine.
    pub fn set_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = sysctl_path(key)?;
        // `/proc/sys/net` shows the namespace of the thread that opens it, so the write must come
        // from a thread inside.
        self.try_run(|| std::fs::write(&path, value))?
            .map_err(|e| with_context(e, &format!("write {}", path.display())))
    }

    /// Reads a per-namespace sysctl (`net.*` only) as seen inside this namespace, trimmed.
    pub fn sysctl(&self, key: &str) -> io::Result<String> {
        let path = sysctl_path(key)?;
        self.try_run(|| std::fs::read_to_string(&path))?
            .map(|s| s.trim().to_string())
            .map_err(|e| with_context(e, &format!("read {}", path.display())))
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn sysctl_path(key: &str) -> io::Result<PathBuf> {
    let valid = key.starts_with("net.")
        && key.split('.').all(|part| {
            !part.is_empty() && part != ".." && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a per-namespace sysctl key: {key:?} (only net.* keys are allowed)"),
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

/// Brings `lo` up in the calling thread's namespace. A plain `SIOCSIFFLAGS` ioctl rather than
/// rtnetlink, so that making a namespace needs nothing but libc.
fn set_loopback_up() -> io::Result<()> {
    // SAFETY: plain syscall; the descriptor is owned right below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the kernel fills ifru_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn join_thread<T>(handle: std::thread::JoinHandle<io::Result<T>>) -> io::Result<T> {
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// Kernel tests need root: skipped with a reason outside CI, failed inside CI.
    fn need_root() -> bool {
        if is_root() {
            return true;
        }
        assert!(std::env::var_os("CI").is_none(), "kernel tests need root, and CI is set");
        eprintln!("skipped: kernel tests need root");
        false
    }

    fn current_ns_inode() -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    #[test]
    fn sysctl_keys_are_limited_to_net() {
        assert!(sysctl_path("net.ipv4.ping_group_range").is_ok());
        assert_eq!(
            sysctl_path("net.ipv4.conf.veth-a.forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/veth-a/forwarding")
        );
        assert!(sysctl_path("kernel.hostname").is_err());
        assert!(sysctl_path("net..x").is_err());
        assert!(sysctl_path("net.ipv4/../../kernel").is_err());
    }

    #[test]
    fn run_enters_the_namespace_and_leaves_the_caller_alone() {
        if !need_root() {
            return;
        }
        let before = current_ns_inode();
        let ns = NetNs::new().unwrap();
        let inside = ns.run(current_ns_inode);
        assert_eq!(inside, ns.inode().unwrap());
        assert_ne!(inside, before);
        assert_eq!(current_ns_inode(), before);
        // The path enters the same namespace (what nsenter --net= uses).
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(ns.path()).unwrap().ino(), inside);
        // Loopback is up and usable.
        let ok = ns.run(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            std::net::TcpStream::connect(l.local_addr().unwrap()).is_ok()
        });
        assert!(ok);
    }

    #[test]
    fn sysctl_is_per_namespace() {
        if !need_root() {
            return;
        }
        let root_value = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap();
        let ns = NetNs::new().unwrap();
        ns.set_sysctl("net.ipv4.ping_group_range", "0 2147483647").unwrap();
        assert_eq!(ns.sysctl("net.ipv4.ping_group_range").unwrap(), "0\t2147483647");
        let after = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap();
        assert_eq!(root_value, after, "the root namespace's sysctl must not change");
    }
}
