//! Which process owns a socket: socket inode -> pid, command name, executable, uid and gid, by
//! scanning `/proc/*/fd`. The kernel's socket listing (sock_diag) has the inode but no pid;
//! every tool that shows processes (`ss -p`, `netstat -p`, `lsof`) reads the links in
//! `/proc/PID/fd` the same way, since nothing else maps a socket to its process.
//!
//! The scan is most of the cost of such a listing (`ss -tanp` takes 230 ms for 20,000 sockets,
//! `ss -tan` 42 ms), so it is built for speed:
//! - one `openat` of each process's `fd` directory relative to an open `/proc` descriptor, one
//!   `getdents64` per few hundred entries into a stack buffer, and one `readlinkat` per
//!   descriptor relative to the directory descriptor (no path is built or walked per fd, nothing
//!   is allocated per fd);
//! - only links that read `socket:[N]` with N among the inodes asked for are kept; `status`,
//!   `comm` and `exe` are read only for processes that own one of them;
//! - processes are spread over a few threads pulling from a shared counter, since the work is
//!   system calls into procfs that run in parallel.
//!
//! Only thread-group leaders (`/proc/PID`) are read: threads share their process's descriptor
//! table. Kernel threads have an empty `fd` directory, so they cost one `openat` and one
//! `getdents64` and are never looked at further.
//!
//! Races are expected: a process may exit, or close and reuse a descriptor, while it is read.
//! Any error on one process (ENOENT, ESRCH, EACCES) skips that process or that descriptor; the
//! scan itself fails only when `/proc` cannot be opened.
//!
//! Every file is read as bytes and parsed by `procfs` (a name need not be UTF-8, and a process
//! must not disappear from attribution because of its name); names are shown escaped.
//!
//! A socket held by several processes (a listener inherited by pre-forked workers, a descriptor
//! passed over a UNIX socket, or a child between fork and exec that still has its parent's
//! descriptors) is attributed to the oldest process holding it (earliest start time), usually
//! the parent. Not the lowest pid: pids wrap around, and a child then has a lower pid than its
//! parent.

use crate::procfs;
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A process that owns sockets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Process {
    pub pid: u32,
    /// `/proc/PID/comm`: the command name (at most 15 bytes, as the kernel keeps it), escaped
    /// by [`procfs::escape_name`] (bytes that are not UTF-8 as `\xNN`).
    pub comm: String,
    /// The executable (`/proc/PID/exe`), when readable, escaped the same way; ends in
    /// ` (deleted)` when the file was replaced since the process started.
    pub exe: Option<String>,
    /// Real and effective user and group ids (`Uid:` and `Gid:` in `/proc/PID/status`). The
    /// effective gid is the group a socket the process creates gets (`meta skgid`).
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
}

/// What a scan looked at, for diagnostics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub processes: usize,
    pub descriptors: usize,
    pub elapsed: Duration,
}

/// Socket inode -> owning process, from one scan of `/proc`.
#[derive(Debug, Default, Clone)]
pub struct SocketOwners {
    procs: Vec<Process>,
    by_inode: HashMap<u64, usize>,
    pub stats: ScanStats,
}

impl SocketOwners {
    /// Finds the owners of `inodes` among all processes. An empty set scans nothing.
    pub fn scan(inodes: &HashSet<u64>) -> io::Result<SocketOwners> {
        Self::scan_pids(inodes, None)
    }

    /// Like [`SocketOwners::scan`], but reads only the processes in `pids` (e.g. `--pid P`).
    pub fn scan_pids(inodes: &HashSet<u64>, pids: Option<&[u32]>) -> io::Result<SocketOwners> {
        let t0 = Instant::now();
        if inodes.is_empty() {
            return Ok(SocketOwners::default());
        }
        let proc_dir = open_dir(None, c"/proc")?;
        let pids: Vec<u32> = match pids {
            Some(p) => p.to_vec(),
            None => list_pids(proc_dir.as_raw_fd())?,
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4)
            .min(pids.len().div_ceil(16).max(1));
        let next = AtomicUsize::new(0);
        let dirfd = proc_dir.as_raw_fd();
        // Each worker returns (inode, pid) pairs it found and the number of descriptors it read.
        let results: Vec<(Vec<(u64, u32)>, usize)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| scan_worker(dirfd, &pids, &next, inodes)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let mut owner: HashMap<u64, u32> = HashMap::with_capacity(inodes.len());
        let mut descriptors = 0;
        // Start times, read only for processes that share a socket with another (rare).
        let mut started: HashMap<u32, u64> = HashMap::new();
        let mut start_of = |pid: u32| *started.entry(pid).or_insert_with(|| start_time(dirfd, pid).unwrap_or(u64::MAX));
        for (found, n) in results {
            descriptors += n;
            for (ino, pid) in found {
                match owner.get_mut(&ino) {
                    None => {
                        owner.insert(ino, pid);
                    }
                    Some(p) if *p != pid => {
                        if (start_of(pid), pid) < (start_of(*p), *p) {
                            *p = pid;
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        // Details only for the processes that own something.
        let mut owning: Vec<u32> = owner.values().copied().collect();
        owning.sort_unstable();
        owning.dedup();
        let mut procs = Vec::with_capacity(owning.len());
        let mut index_of = HashMap::with_capacity(owning.len());
        for pid in owning {
            // A process that exited since its fds were read is left out; its sockets show
            // without an owner, as they would a moment later anyway.
            if let Some(p) = read_process(dirfd, pid) {
                index_of.insert(pid, procs.len());
                procs.push(p);
            }
        }
        let by_inode = owner
            .into_iter()
            .filter_map(|(ino, pid)| index_of.get(&pid).map(|&i| (ino, i)))
            .collect();
        Ok(SocketOwners {
            procs,
            by_inode,
            stats: ScanStats {
                processes: pids.len(),
                descriptors,
                elapsed: t0.elapsed(),
            },
        })
    }

    /// The process owning the socket with this inode.
    pub fn owner(&self, inode: u64) -> Option<&Process> {
        self.by_inode.get(&inode).map(|&i| &self.procs[i])
    }

    /// Every process that owns at least one of the sockets asked for.
    pub fn processes(&self) -> &[Process] {
        &self.procs
    }

    /// Number of sockets with a known owner.
    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }
}

fn scan_worker(
    proc_fd: RawFd,
    pids: &[u32],
    next: &AtomicUsize,
    inodes: &HashSet<u64>,
) -> (Vec<(u64, u32)>, usize) {
    let mut found = Vec::new();
    let mut descriptors = 0;
    // getdents64 buffer: 16 KiB holds some 600 entries of an fd directory.
    let mut dents = [0u8; 16 * 1024];
    let mut link = [0u8; 64];
    let mut path = [0u8; 24];
    // Bounded by the pid list: every iteration takes the next index.
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(&pid) = pids.get(i) else { break };
        let Some(fd_dir) = open_dir(Some(proc_fd), fd_dir_path(&mut path, pid)).ok() else {
            continue; // exited, or not ours to read
        };
        let dfd = fd_dir.as_raw_fd();
        loop {
            // SAFETY: dents is writable for its length; dfd is an open directory.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    dfd,
                    dents.as_mut_ptr(),
                    dents.len(),
                )
            };
            if n <= 0 {
                break; // end of directory, or the process went away
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 19 < n {
                // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name (NUL-ended).
                let reclen = u16::from_ne_bytes([dents[off + 16], dents[off + 17]]) as usize;
                if reclen == 0 || off + reclen > n {
                    break;
                }
                let name = &dents[off + 19..off + reclen];
                off += reclen;
                if name[0] == b'.' {
                    continue;
                }
                descriptors += 1;
                // SAFETY: name lies within dents and is NUL-terminated by the kernel; link is
                // writable for its length.
                let len = unsafe {
                    libc::readlinkat(
                        dfd,
                        name.as_ptr() as *const libc::c_char,
                        link.as_mut_ptr() as *mut libc::c_char,
                        link.len(),
                    )
                };
                if len <= 0 {
                    continue;
                }
                if let Some(ino) = socket_inode(&link[..len as usize])
                    && inodes.contains(&ino)
                {
                    found.push((ino, pid));
                }
            }
        }
    }
    (found, descriptors)
}

/// `PID/fd` as a C string in `buf`.
fn fd_dir_path(buf: &mut [u8; 24], pid: u32) -> &CStr {
    let mut digits = [0u8; 10];
    let mut n = pid;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let d = &digits[i..];
    buf[..d.len()].copy_from_slice(d);
    buf[d.len()..d.len() + 4].copy_from_slice(b"/fd\0");
    CStr::from_bytes_until_nul(&buf[..]).expect("NUL-terminated above")
}

/// The inode of a `socket:[12345]` link target.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    procfs::socket_inode(link)
}

fn open_dir(at: Option<RawFd>, path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: path is a valid C string; the fd returned is owned below.
    let fd = unsafe {
        libc::openat(
            at.unwrap_or(libc::AT_FDCWD),
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The numeric entries of `/proc` (thread-group leaders; threads live under `/proc/PID/task`).
fn list_pids(proc_fd: RawFd) -> io::Result<Vec<u32>> {
    // A second descriptor: getdents moves the directory offset, and the workers use proc_fd.
    let dir = open_dir(Some(proc_fd), c".")?;
    let mut pids = Vec::with_capacity(512);
    let mut buf = [0u8; 32 * 1024];
    // Bounded: /proc lists a finite number of entries and getdents returns 0 at the end.
    loop {
        // SAFETY: buf is writable for its length; dir is an open directory.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        let mut off = 0;
        while off + 19 < n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 || off + reclen > n {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            off += reclen;
            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
            if let Some(pid) = parse_u32(name) {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    procfs::decimal(s)
}

/// The bytes of `/proc/PID/NAME`, relative to the open `/proc`; `None` when it cannot be read
/// (the process exited, or is not ours to read).
fn read_proc_file(proc_fd: RawFd, pid: u32, name: &str) -> Option<Vec<u8>> {
    let path = std::ffi::CString::new(format!("{pid}/{name}")).ok()?;
    // SAFETY: path is a valid C string; the fd is owned right below.
    let fd = unsafe { libc::openat(proc_fd, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut f, &mut bytes).ok()?;
    Some(bytes)
}

/// Reads comm, exe and ids of one process; `None` when it has exited. Names are bytes (a
/// process may give itself any name): they are kept, escaped, never a reason to skip it.
pub fn read_process(proc_fd: RawFd, pid: u32) -> Option<Process> {
    let status = read_proc_file(proc_fd, pid, "status")?;
    let procfs::Ids { uid, euid, gid, egid } = procfs::status_ids(&status)?;
    let comm = read_proc_file(proc_fd, pid, "comm")
        .map(|c| procfs::escape_name(procfs::comm(&c)))
        .or_else(|| procfs::status_name(&status).map(procfs::escape_name))
        .unwrap_or_default();
    let exe = {
        use std::os::unix::ffi::OsStrExt;
        std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| procfs::escape_name(p.as_os_str().as_bytes()))
    };
    Some(Process {
        pid,
        comm,
        exe,
        uid,
        euid,
        gid,
        egid,
    })
}

/// When a process started, in clock ticks since boot (field 22 of `/proc/PID/stat`); `None`
/// when it is gone.
fn start_time(proc_dir: RawFd, pid: u32) -> Option<u64> {
    procfs::stat_start_time(&read_proc_file(proc_dir, pid, "stat")?)
}

/// The name of a user id from the system's user database (NSS: /etc/passwd, LDAP, ...).
pub fn user_name(uid: u32) -> Option<String> {
    passwd_entry(uid).map(|(name, _)| name)
}

/// The primary group of a user id, for sockets whose process is unknown.
pub fn primary_group(uid: u32) -> Option<u32> {
    passwd_entry(uid).map(|(_, gid)| gid)
}

/// The user database's name and primary group of a uid (getpwuid_r, thread-safe).
fn passwd_entry(uid: u32) -> Option<(String, u32)> {
    let mut buf = vec![0u8; 1024];
    // Bounded: the buffer doubles up to 1 MiB.
    loop {
        // SAFETY: passwd is plain old data; getpwuid_r fills it with pointers into buf.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the sizes given.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr() as *mut libc::c_char, buf.len(), &mut out) };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || out.is_null() || pw.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside buf.
        let name = unsafe { CStr::from_ptr(pw.pw_name) };
        return Some((name.to_string_lossy().into_owned(), pw.pw_gid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_starts_after_its_parent() {
        // The tie-break for a socket two processes hold: the oldest wins, whatever the pids.
        let proc_dir = open_dir(None, c"/proc").unwrap();
        let mut child = std::process::Command::new("sleep").arg("1").spawn().unwrap();
        let me = start_time(proc_dir.as_raw_fd(), std::process::id()).unwrap();
        let kid = start_time(proc_dir.as_raw_fd(), child.id()).unwrap();
        // Ours: started by this test.
        let _ = child.kill();
        let _ = child.wait();
        assert!(me <= kid, "parent started at {me}, child at {kid}");
        assert_eq!(start_time(proc_dir.as_raw_fd(), u32::MAX), None);
    }
    use std::net::{TcpListener, UdpSocket};
    use std::os::fd::AsRawFd;

    fn inode_of(fd: RawFd) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino()
    }

    #[test]
    fn socket_links_parse() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"pipe:[12]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[99999999999999999999]"), None);
        let mut b = [0u8; 24];
        assert_eq!(fd_dir_path(&mut b, 0).to_bytes(), b"0/fd");
        assert_eq!(fd_dir_path(&mut b, 4_194_304).to_bytes(), b"4194304/fd");
        assert_eq!(parse_u32(b"123"), Some(123));
        assert_eq!(parse_u32(b"self"), None);
        assert_eq!(parse_u32(b""), None);
    }

    // Reads only /proc of the test's own processes: needs no root and no namespace.
    #[test]
    fn finds_this_process_as_the_owner_of_its_sockets() {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (ti, ui) = (inode_of(t.as_raw_fd()), inode_of(u.as_raw_fd()));
        let wanted: HashSet<u64> = [ti, ui, 1].into_iter().collect();
        let owners = SocketOwners::scan(&wanted).unwrap();
        let me = std::process::id();
        for ino in [ti, ui] {
            let p = owners.owner(ino).expect("our socket has an owner");
            assert_eq!(p.pid, me);
            assert_eq!(p.exe.as_deref(), std::env::current_exe().ok().map(|e| e.display().to_string()).as_deref());
            // SAFETY: plain getters.
            let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
            assert_eq!((p.euid, p.egid), (euid, egid));
            assert!(!p.comm.is_empty());
        }
        assert!(owners.owner(1).is_none());
        assert_eq!(owners.len(), 2);
        assert!(owners.stats.processes >= 1 && owners.stats.descriptors >= 2);
        // Limited to one pid: same answer, one process read.
        let only = SocketOwners::scan_pids(&wanted, Some(&[me])).unwrap();
        assert_eq!(only.owner(ti).map(|p| p.pid), Some(me));
        assert_eq!(only.stats.processes, 1);
        // A pid that does not exist is skipped, not an error.
        let gone = SocketOwners::scan_pids(&wanted, Some(&[u32::MAX])).unwrap();
        assert!(gone.is_empty());
        // Nothing asked, nothing scanned.
        assert_eq!(SocketOwners::scan(&HashSet::new()).unwrap().stats.processes, 0);
    }

    #[test]
    fn user_names_come_from_the_user_database() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(primary_group(0), Some(0));
        assert_eq!(user_name(4_000_000_000), None);
    }
}
