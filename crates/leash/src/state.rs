//! What leash records on disk about the table it applied: the sizes of large sets and the
//! cgroup ids its rules match, under `/run/leash` (or `$LEASH_STATE_DIR`). The one owner of
//! every state file.
//!
//! Why a record: the kernel does not report how many elements a set holds, and counting them means
//! dumping the set, which for an interval set costs O(n^2) in the kernel (about a second for
//! 100,000 ranges, minutes for 1,000,000). But every element leash loads is acked one by one, so
//! leash knows the count when it loads a set. `leash apply` and `leash set update` write the
//! counts of sets above `kernel::nft::COUNT_LIMIT` elements to a small JSON file, keyed by the
//! network namespace (its cookie, which the kernel never reuses while it runs) and by the table's
//! handle (a new one for every apply). `leash status` uses a count only while both still match;
//! smaller sets are always counted in the kernel. A set changed since by another tool (`nft add
//! element`) is not noticed: the count is shown as "as loaded".
//!
//! The same record keeps the cgroup ids the applied `socket cgroupv2` rules match, so that
//! `leash status` can warn when a cgroup is gone or was made again (a restarted service).
//!
//! The directory is trusted only when no one but its owner can change it, which must be root when
//! leash runs as root (see [`open_dir`]): a record is what `status` believes about the kernel, and
//! a directory others can write would let them plant a symbolic link that root then writes
//! through. Every file operation is relative to the directory once opened and checked (`openat`
//! with `O_NOFOLLOW`, a new temporary file with `O_EXCL`, fsync, `renameat`), so a path swapped
//! after the check changes nothing.

use anyhow::{Context, Result};
use kernel::Firewall;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// What `leash apply` and `leash set update` loaded into the sets that are too large to count.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    /// The table the counts belong to.
    table_handle: u64,
    /// Set name in the kernel (e.g. `s_threat-feed_v4`) -> ranges loaded.
    sets: BTreeMap<String, usize>,
    /// Inode of the network namespace (`/proc/thread-self/ns/net`), to remove the records of
    /// namespaces that are gone (see [`prune`]); 0 when unknown.
    #[serde(default)]
    netns_inode: u64,
    /// cgroup path (as nft writes it, below /sys/fs/cgroup) -> the id (inode) the applied rules
    /// match. A service restarted since gets a new directory with a new id, which no rule matches
    /// (see [`State::stale_cgroups`]).
    #[serde(default)]
    cgroups: BTreeMap<String, u64>,
}

/// A cgroup the applied rules match that is gone or was made again since the apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleCgroup {
    /// Below /sys/fs/cgroup, as nft writes it.
    pub path: String,
    /// The id the rules match.
    pub then: u64,
    /// The id of the directory now, if it exists.
    pub now: Option<u64>,
}

/// The state directory and the cgroup hierarchy the record's cgroup paths are relative to.
#[derive(Debug, Clone)]
pub struct State {
    dir: PathBuf,
    cgroup_root: PathBuf,
}

impl State {
    /// `$LEASH_STATE_DIR`, else `/run/leash` (a tmpfs, empty after boot, like the kernel's
    /// tables); cgroup paths below `/sys/fs/cgroup`, where nft resolves them.
    pub fn from_env() -> State {
        let dir = std::env::var_os("LEASH_STATE_DIR").map_or_else(|| PathBuf::from("/run/leash"), PathBuf::from);
        State { dir, cgroup_root: PathBuf::from("/sys/fs/cgroup") }
    }

    /// A state directory and cgroup root of the caller's choosing (tests).
    #[cfg(test)]
    fn at(dir: &Path, cgroup_root: &Path) -> State {
        State { dir: dir.to_path_buf(), cgroup_root: cgroup_root.to_path_buf() }
    }

    /// The record's file name in the directory.
    fn record_name() -> Option<String> {
        netns_id().map(|id| format!("sets-{id}.json"))
    }

    /// The record, if the directory is trusted and holds one (a symbolic link is not read).
    fn read_record(&self) -> Option<Record> {
        let dir = open_dir(&self.dir, false).ok()??;
        let fd = nix::fcntl::openat(&dir.fd, Self::record_name()?.as_str(), read_flags(), Mode::empty()).ok()?;
        let mut text = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut text).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the record (atomically: a new temporary file renamed over it), or removes it when it
    /// holds nothing. Refuses a directory others could change (nothing is written then).
    fn write_record(&self, r: &Record) -> Result<()> {
        let name = Self::record_name().context("cannot identify the network namespace to record set sizes")?;
        // Nothing worth remembering: no record at all (most policies have neither large sets nor
        // cgroup rules). A directory that is missing or not trusted holds no record leash reads.
        if r.sets.is_empty() && r.cgroups.is_empty() {
            let Ok(Some(dir)) = open_dir(&self.dir, false) else { return Ok(()) };
            return match nix::unistd::unlinkat(&dir.fd, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.path.join(&name).display())),
            };
        }
        let dir = open_dir(&self.dir, true)?.context("state directory vanished")?;
        prune(&dir, &name);
        write_file(&dir, &name, &serde_json::to_vec(r)?)
    }

    /// After a successful `leash apply`: records the sizes of the table's large sets (only sets
    /// leash fills itself: not the forwarder's timeout sets, not meters) and the cgroup ids its
    /// rules match. Failing to record is a warning: the firewall is in place, only `leash status`
    /// will count less far.
    pub fn record_apply(&self, table: &ruleset::Table, table_handle: u64) {
        let sets = table
            .sets
            .iter()
            .filter(|s| !s.timeout && s.dynamic.is_none() && large(s.elements.len()))
            .map(|s| (s.name.clone(), s.elements.len()))
            .collect();
        let netns_inode = netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap_or(0);
        let cgroups = table
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .flat_map(|r| &r.stmts)
            .filter_map(|s| match s {
                ruleset::model::Stmt::SocketCgroup { path, id, .. } => Some((path.clone(), *id)),
                _ => None,
            })
            .collect();
        if let Err(e) = self.write_record(&Record { table_handle, sets, netns_inode, cgroups }) {
            eprintln!(
                "leash: warning: {e:#}; leash status will count large sets only up to {}",
                kernel::nft::COUNT_LIMIT
            );
        }
    }

    /// After a `leash set update`: the new sizes of the replaced sets, in the record of that table.
    pub fn record_update(&self, table_handle: u64, sets: &[(&str, usize)]) -> Result<()> {
        let netns_inode = netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap_or(0);
        let mut r = self.read_record().filter(|r| r.table_handle == table_handle).unwrap_or_default();
        (r.table_handle, r.netns_inode) = (table_handle, netns_inode);
        for &(name, n) in sets {
            if large(n) {
                r.sets.insert(name.to_string(), n);
            } else {
                r.sets.remove(name);
            }
        }
        self.write_record(&r)
    }

    /// After `leash disable`: the record describes no table any more.
    pub fn forget(&self) {
        if let (Ok(Some(dir)), Some(name)) = (open_dir(&self.dir, false), Self::record_name()) {
            let _ = nix::unistd::unlinkat(&dir.fd, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }

    /// The cgroups the applied rules match that are gone or were made again since the apply (a
    /// restarted service).
    pub fn stale_cgroups(&self, table_handle: u64) -> Vec<StaleCgroup> {
        use std::os::unix::fs::MetadataExt;
        let Some(rec) = self.read_record().filter(|r| r.table_handle == table_handle) else { return Vec::new() };
        rec.cgroups
            .into_iter()
            .filter_map(|(path, then)| {
                let now = std::fs::metadata(self.cgroup_root.join(&path)).ok().map(|m| m.ino());
                (now != Some(then)).then_some(StaleCgroup { path, then, now })
            })
            .collect()
    }

    /// The table's status, with the recorded sizes of large sets instead of counting them (see
    /// the module documentation). What `leash status` and `leash metrics` show.
    pub fn status(&self, fw: &dyn Firewall) -> Result<Option<kernel::TableStatus>, kernel::Error> {
        let rec = self.read_record();
        fw.status_with(&|handle, s| {
            let r = rec.as_ref().filter(|r| r.table_handle == handle)?;
            r.sets.get(&s.name).copied().filter(|_| !s.timeout)
        })
    }
}

/// Whether a set is worth recording: one `leash status` would not count to the end.
fn large(n: usize) -> bool {
    n > kernel::nft::COUNT_LIMIT
}

/// `SO_NETNS_COOKIE` (asm-generic value, x86 and arm alike): a 64-bit id of the socket's network
/// namespace that the kernel never gives to another namespace until it reboots.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// An id of the current network namespace: its cookie, else (kernels before 5.14) the inode of
/// `/proc/thread-self/ns/net` (which a later namespace may reuse; the table handle must match too).
fn netns_id() -> Option<String> {
    use std::os::fd::AsRawFd;
    if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: cookie and len are valid out-pointers of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                &mut cookie as *mut u64 as *mut libc::c_void,
                &mut len,
            )
        };
        if rc == 0 && len as usize == std::mem::size_of::<u64>() {
            return Some(format!("cookie-{cookie}"));
        }
    }
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").ok().map(|m| format!("inode-{}", m.ino()))
}

fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Inodes of the network namespaces that are alive as far as /proc shows: those of every
/// process and thread, those held open by a descriptor (`net:[INODE]`, how test harnesses keep
/// anonymous namespaces), and those bind-mounted under /run/netns. A namespace kept alive only by
/// a socket or a mount elsewhere is missed; its record is then removed, which costs nothing but
/// `leash status` counting its large sets only up to the limit.
fn live_netns_inodes() -> std::collections::HashSet<u64> {
    let mut live = std::collections::HashSet::new();
    let dir_entries = |p: &Path| std::fs::read_dir(p).into_iter().flatten().flatten();
    use std::os::unix::ffi::OsStrExt;
    for proc_entry in dir_entries(Path::new("/proc")) {
        if !proc_entry.file_name().as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let pdir = proc_entry.path();
        for task in dir_entries(&pdir.join("task")) {
            live.extend(netns_inode(&task.path().join("ns/net")));
        }
        for fd in dir_entries(&pdir.join("fd")) {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                live.extend(observe::procfs::netns_inode(target.as_os_str().as_bytes()));
            }
        }
    }
    for m in dir_entries(Path::new("/run/netns")) {
        live.extend(netns_inode(&m.path()));
    }
    live
}

/// Removes the records of network namespaces that no longer exist (a namespace's tables vanish
/// with it, its record would stay: test suites and benchmarks make many). Runs whenever a record
/// is written; scanning /proc takes a few milliseconds. Only names leash writes
/// (`sets-*.json`) are looked at.
fn prune(dir: &Dir, keep: &str) {
    // The directory as opened (not its path again): its entries through the descriptor.
    let records: Vec<String> = std::fs::read_dir(format!("/proc/self/fd/{}", dir.fd.as_raw_fd()))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != keep && n.starts_with("sets-") && n.ends_with(".json"))
        .collect();
    if records.is_empty() {
        return;
    }
    let live = live_netns_inodes();
    for name in records {
        let inode = nix::fcntl::openat(&dir.fd, name.as_str(), read_flags(), Mode::empty())
            .ok()
            .and_then(|fd| {
                let mut b = Vec::new();
                std::fs::File::from(fd).read_to_end(&mut b).ok()?;
                serde_json::from_slice::<Record>(&b).ok()
            })
            .map_or(0, |r| r.netns_inode);
        if !live.contains(&inode) {
            let _ = nix::unistd::unlinkat(&dir.fd, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// A state directory opened and checked ([`open_dir`]).
#[derive(Debug)]
struct Dir {
    fd: OwnedFd,
    /// As opened (canonical), for messages.
    path: PathBuf,
}

/// Opening a file in the state directory: never through a symbolic link.
fn read_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens the state directory `path` (creating it and any missing parent 0755 when `create`), one
/// component at a time from `/` with `O_NOFOLLOW`, and checks each directory on the way: owned by
/// root or by this user (root only, when leash runs as root), and writable by no one else. A
/// parent that others may write is accepted only with the sticky bit (as `/tmp`), where they cannot
/// rename or remove what is not theirs; the state directory itself never. A symbolic link on the
/// way is followed only when it is as trusted as a directory: in a directory no one else can write,
/// owned by root or this user (`/var/run` → `/run`); one in `/tmp` is refused. `Ok(None)`: the
/// directory does not exist (and `create` is false).
fn open_dir(path: &Path, create: bool) -> Result<Option<Dir>> {
    use std::collections::VecDeque;
    let refuse = |why: String| -> anyhow::Error {
        anyhow::anyhow!(
            "refusing state directory {}: {why}; it must be a directory only {} can change (set LEASH_STATE_DIR to one, e.g. /run/leash)",
            path.display(),
            if euid() == 0 { "root" } else { "its owner" }
        )
    };
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    let mut pending: VecDeque<std::ffi::OsString> = parts(&abs).collect();
    // The directories walked so far (checked), and the descriptor of the last one.
    let mut walked: Vec<std::ffi::OsString> = Vec::new();
    let mut fd = walk(&walked)?;
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            walked.pop();
            fd = walk(&walked)?;
            continue;
        }
        let at: PathBuf = std::iter::once(OsStr::new("/")).chain(walked.iter().map(|n| n.as_os_str())).chain([name.as_os_str()]).collect();
        let st = match nix::sys::stat::fstatat(&fd, name.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) if create => None,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot look at {}", at.display())),
        };
        if let Some(st) = st.filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK) {
            // A link is as trustworthy as the directory that holds it.
            let here = nix::sys::stat::fstat(&fd).with_context(|| format!("cannot look at {}", at.display()))?;
            if (here.st_uid != 0 && here.st_uid != euid()) || here.st_mode & 0o022 != 0 {
                return Err(refuse(format!("{} is a symbolic link in a directory others can write", at.display())));
            }
            if st.st_uid != 0 && st.st_uid != euid() {
                return Err(refuse(format!("{} is a symbolic link owned by uid {}", at.display(), st.st_uid)));
            }
            links += 1;
            if links > 40 {
                return Err(refuse(format!("{} has too many levels of symbolic links", at.display())));
            }
            let target = nix::fcntl::readlinkat(&fd, name.as_os_str())
                .with_context(|| format!("cannot read the link {}", at.display()))?;
            let target = Path::new(&target);
            if target.is_absolute() {
                walked.clear();
                fd = walk(&walked)?;
            }
            for (i, p) in parts(target).enumerate() {
                pending.insert(i, p);
            }
            continue;
        }
        if st.is_none() {
            match nix::sys::stat::mkdirat(&fd, name.as_os_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", at.display())),
            }
        }
        // O_NOFOLLOW: a link put there since the look is refused, not followed.
        let next = match nix::fcntl::openat(&fd, name.as_os_str(), dir_flags(), Mode::empty()) {
            Ok(f) => f,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(refuse(format!("{} is not a directory", at.display())));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", at.display())),
        };
        let st = nix::sys::stat::fstat(&next).with_context(|| format!("cannot look at {}", at.display()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(refuse(format!("{} is not a directory", at.display())));
        }
        if let Some(why) = untrusted(st.st_uid, st.st_mode, pending.is_empty()) {
            return Err(refuse(format!("{} {why}", at.display())));
        }
        walked.push(name);
        fd = next;
    }
    let at: PathBuf = std::iter::once(OsStr::new("/")).chain(walked.iter().map(|n| n.as_os_str())).collect();
    // Reopened for reading (prune lists it, fsync needs a real descriptor); the path descriptor
    // pins the checked directory.
    let fd = nix::fcntl::openat(&fd, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("cannot open {}", at.display()))?;
    Ok(Some(Dir { fd, path: at }))
}

/// A path descriptor of a directory, never through a link.
fn dir_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The names and `..`s of a path (`.` and `/` dropped).
fn parts(p: &Path) -> impl Iterator<Item = std::ffi::OsString> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    })
}

/// A descriptor of `/` followed by `names` (directories already checked), without links.
fn walk(names: &[std::ffi::OsString]) -> Result<OwnedFd> {
    let mut fd = nix::fcntl::open("/", dir_flags(), Mode::empty()).context("cannot open /")?;
    for n in names {
        fd = nix::fcntl::openat(&fd, n.as_os_str(), dir_flags(), Mode::empty())
            .with_context(|| format!("cannot open {}", n.to_string_lossy()))?;
    }
    Ok(fd)
}

/// Why a directory with this owner and mode may not be trusted (`None`: it may). `last`: the state
/// directory itself (a sticky bit does not make it private).
fn untrusted(uid: u32, mode: u32, last: bool) -> Option<String> {
    let me = euid();
    if uid != 0 && uid != me {
        return Some(format!("is owned by uid {uid}, not {}", if me == 0 { "root".to_string() } else { format!("root or uid {me}") }));
    }
    let others_write = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if others_write && (last || !sticky) {
        let who = if mode & 0o002 != 0 { "anyone" } else { "its group" };
        return Some(format!("is writable by {who} (mode {:04o})", mode & 0o7777));
    }
    None
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Writes `name` in `dir` atomically: a new temporary file (`O_EXCL|O_NOFOLLOW`, so nothing
/// planted under its name is followed or reused), fsynced, renamed over `name`, the directory
/// fsynced.
fn write_file(dir: &Dir, name: &str, bytes: &[u8]) -> Result<()> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(0o644);
    let (fd, tmp) = (0..16u32)
        .find_map(|attempt| {
            let tmp = format!(".{name}.{}.{attempt}.tmp", std::process::id());
            match nix::fcntl::openat(&dir.fd, tmp.as_str(), flags, mode) {
                Ok(fd) => Some(Ok((fd, tmp))),
                // Taken (a leftover, or planted): the next name.
                Err(Errno::EEXIST | Errno::ELOOP) => None,
                Err(e) => Some(Err(e)),
            }
        })
        .unwrap_or(Err(Errno::EEXIST))
        .with_context(|| format!("cannot create a temporary file in {}", dir.path.display()))?;
    let mut f = std::fs::File::from(fd);
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    let renamed = written.map_err(anyhow::Error::from).and_then(|()| {
        nix::fcntl::renameat(&dir.fd, tmp.as_str(), &dir.fd, name).map_err(anyhow::Error::from)
    });
    if let Err(e) = renamed {
        let _ = nix::unistd::unlinkat(&dir.fd, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(e.context(format!("cannot write {}", dir.path.join(name).display())));
    }
    // The rename itself, on disk (a tmpfs ignores it).
    let _ = nix::unistd::fsync(dir.fd.as_fd());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeFirewall;

    #[test]
    fn records_round_trip_and_only_large_sets_count() {
        let r = Record {
            table_handle: 7,
            sets: [("s_x_v4".to_string(), 1_000_000)].into(),
            netns_inode: 4026531840,
            cgroups: [("unified/system.slice/nginx.service".to_string(), 4242)].into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"table_handle":7,"sets":{"s_x_v4":1000000},"netns_inode":4026531840,"cgroups":{"unified/system.slice/nginx.service":4242}}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
        // A record written before cgroups were kept still reads.
        let old: Record = serde_json::from_str(r#"{"table_handle":7,"sets":{},"netns_inode":1}"#).unwrap();
        assert!(old.cgroups.is_empty());
        assert!(large(kernel::nft::COUNT_LIMIT + 1));
        assert!(!large(kernel::nft::COUNT_LIMIT));
    }

    #[test]
    fn our_own_namespace_is_alive_and_records_of_dead_ones_go() {
        let own = netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap();
        assert!(live_netns_inodes().contains(&own));
        let dir = std::env::temp_dir().join(format!("leash-prune-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, inode: u64| {
            let r = Record { table_handle: 1, sets: BTreeMap::new(), netns_inode: inode, cgroups: BTreeMap::new() };
            std::fs::write(dir.join(name), serde_json::to_vec(&r).unwrap()).unwrap();
        };
        write("sets-cookie-1.json", own);
        write("sets-cookie-2.json", 1); // no namespace has inode 1
        write("sets-cookie-3.json", 0);
        write("sets-cookie-4.json", 1); // the one being written: kept
        std::fs::write(dir.join("other.txt"), "not ours").unwrap();
        prune(&open_dir(&dir, false).unwrap().unwrap(), "sets-cookie-4.json");
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["other.txt", "sets-cookie-1.json", "sets-cookie-4.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_namespace_has_an_id() {
        let id = netns_id().unwrap();
        assert!(id.starts_with("cookie-") || id.starts_with("inode-"), "{id}");
        assert_eq!(netns_id().unwrap(), id, "stable within the namespace");
    }

    /// A scratch state directory and cgroup root, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("leash-state-test-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("cgroup")).unwrap();
            Scratch(dir)
        }
        fn state(&self) -> State {
            State::at(&self.0.join("state"), &self.0.join("cgroup"))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn large_table() -> ruleset::Table {
        let n = kernel::nft::COUNT_LIMIT + 5;
        // 198.18.0.0/15, every other address: ranges that do not merge.
        let ranges = (0..n as u32)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(0xc612_0000 + 2 * i);
                (a, a)
            })
            .collect();
        let mut t = FakeFirewall::table_with_sets(&["s_feed_v4", "s_small_v4"]);
        t.sets[0].elements = ruleset::SetElements::V4(ranges);
        t
    }

    #[test]
    fn status_reports_recorded_sizes_of_large_sets_for_the_recorded_table_only() {
        let s = Scratch::new("status");
        let state = s.state();
        let table = large_table();
        let fw = FakeFirewall::with_table(&table, 41);
        state.record_apply(&table, 41);
        let st = state.status(&fw).unwrap().unwrap();
        let feed = st.sets.iter().find(|x| x.name == "s_feed_v4").unwrap();
        assert_eq!(feed.elements, kernel::ElementCount::Recorded(kernel::nft::COUNT_LIMIT + 5));
        let small = st.sets.iter().find(|x| x.name == "s_small_v4").unwrap();
        assert!(matches!(small.elements, kernel::ElementCount::Exact(_)), "small sets are counted: {small:?}");

        // The table was applied again (a new handle) by something that did not record: the
        // record no longer describes it, so nothing is taken from it.
        let fw = FakeFirewall::with_table(&table, 42);
        let st = state.status(&fw).unwrap().unwrap();
        let feed = st.sets.iter().find(|x| x.name == "s_feed_v4").unwrap();
        assert!(!matches!(feed.elements, kernel::ElementCount::Recorded(_)), "{feed:?}");

        // `set update` records the new size in the record of that table; shrunk below the
        // limit, the set is counted again.
        state.record_update(41, &[("s_feed_v4", 10)]).unwrap();
        let fw = FakeFirewall::with_table(&table, 41);
        let st = state.status(&fw).unwrap().unwrap();
        let feed = st.sets.iter().find(|x| x.name == "s_feed_v4").unwrap();
        assert!(!matches!(feed.elements, kernel::ElementCount::Recorded(_)), "{feed:?}");
        assert!(state.read_record().is_none(), "a record with nothing in it is removed");
    }

    /// Issue 12 item 13: a symbolic link planted in the state directory (under the record's name,
    /// or a temporary name a writer would use) is neither followed nor read.
    #[test]
    fn symlinks_in_the_state_directory_are_not_followed() {
        use std::os::unix::fs::symlink;
        let s = Scratch::new("symlink");
        let state = s.state();
        let dir = s.0.join("state");
        std::fs::create_dir(&dir).unwrap();
        let name = State::record_name().unwrap();
        let forged = r#"{"table_handle":41,"sets":{"s_feed_v4":999999999},"netns_inode":0}"#;
        let victim = s.0.join("victim");
        std::fs::write(&victim, forged).unwrap();
        symlink(&victim, dir.join(&name)).unwrap();
        assert!(state.read_record().is_none(), "a record read through a link");
        // Every temporary name a writer could pick: the one before this change and the new ones.
        let pid = std::process::id();
        symlink(&victim, dir.join(format!("{name}.{pid}"))).unwrap();
        symlink(&victim, dir.join(format!(".{name}.{pid}.0.tmp"))).unwrap();
        let table = large_table();
        state.write_record(&Record { table_handle: 41, ..Record::default() }).unwrap();
        state.record_apply(&table, 41);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), forged, "written through a link");
        let meta = std::fs::symlink_metadata(dir.join(&name)).unwrap();
        assert!(meta.file_type().is_file(), "the record replaced the link: {meta:?}");
        assert_eq!(state.read_record().unwrap().sets["s_feed_v4"], kernel::nft::COUNT_LIMIT + 5);
    }

    /// Issue 12 item 13: a state directory others can write (or one reached through a symbolic
    /// link, or owned by someone else) is refused with a message naming why; nothing is written.
    #[test]
    fn a_state_directory_others_can_change_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let s = Scratch::new("refuse");
        let dir = s.0.join("state");
        std::fs::create_dir(&dir).unwrap();
        let record = Record { table_handle: 1, sets: [("s_x_v4".to_string(), 1_000_000)].into(), ..Record::default() };
        for (mode, why) in [(0o777, "is writable by anyone (mode 0777)"), (0o1777, "is writable by anyone (mode 1777)"), (0o775, "is writable by its group (mode 0775)")] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = s.state().write_record(&record).unwrap_err().to_string();
            assert!(e.contains(&format!("refusing state directory {}: {} {why}", dir.display(), dir.display())), "{e}");
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written for mode {mode:o}");
            assert!(s.state().read_record().is_none());
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A parent others can write, without the sticky bit: refused too, and nothing is made in it.
        let open = s.0.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = State::at(&open.join("leash"), &s.0).write_record(&record).unwrap_err().to_string();
        assert!(e.contains("is writable by anyone (mode 0777)"), "{e}");
        assert!(!open.join("leash").exists());
        // A link planted in a directory anyone can write (as /tmp): not followed, whatever it
        // points at; one in a private directory is (as /var/run -> /run).
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::symlink(&dir, open.join("link")).unwrap();
        let e = State::at(&open.join("link"), &s.0).write_record(&record).unwrap_err().to_string();
        assert!(e.contains(&format!("{} is a symbolic link in a directory others can write", open.join("link").display())), "{e}");
        let e = State::at(&open.join("link/sub"), &s.0).write_record(&record).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link in a directory others can write"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written through the link");
        std::os::unix::fs::symlink("state/../state", s.0.join("link")).unwrap();
        State::at(&s.0.join("link").join("sub"), &s.0).write_record(&record).unwrap();
        assert!(dir.join("sub").is_dir(), "a trusted relative link is followed");
        // /tmp itself (sticky, anyone can write) as a parent is fine; a new directory in it is
        // private.
        let mine = open.join("mine");
        State::at(&mine, &s.0).write_record(&record).unwrap();
        assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
        // Owned by someone else (only root can make such a directory here).
        if euid() == 0 {
            let theirs = s.0.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = State::at(&theirs, &s.0).write_record(&record).unwrap_err().to_string();
            assert!(e.contains("is owned by uid 65534, not root"), "{e}");
            assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_missing_state_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let s = Scratch::new("create");
        let state = State::at(&s.0.join("a/b/leash"), &s.0);
        assert!(state.read_record().is_none(), "reading makes nothing");
        assert!(!s.0.join("a").exists());
        state.record_apply(&large_table(), 5);
        for d in ["a", "a/b", "a/b/leash"] {
            let m = std::fs::metadata(s.0.join(d)).unwrap();
            assert_eq!(m.permissions().mode() & 0o022, 0, "{d}: {:o}", m.permissions().mode());
        }
        assert_eq!(state.read_record().unwrap().table_handle, 5);
        let names: Vec<_> = std::fs::read_dir(s.0.join("a/b/leash")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from(State::record_name().unwrap())], "no temporary file left");
    }

    #[test]
    fn untrusted_owners_and_modes() {
        assert_eq!(untrusted(0, 0o40755, true), None);
        assert_eq!(untrusted(0, 0o41777, false), None, "/tmp as a parent");
        assert!(untrusted(0, 0o41777, true).is_some(), "/tmp itself as the state directory");
        assert!(untrusted(0, 0o40770, false).is_some());
        assert!(untrusted(12345, 0o40755, true).unwrap().contains("owned by uid 12345"));
    }

    #[test]
    fn forget_removes_the_record() {
        let s = Scratch::new("forget");
        let state = s.state();
        let table = large_table();
        state.record_apply(&table, 7);
        assert!(state.read_record().is_some());
        state.forget();
        assert!(state.read_record().is_none());
    }

    #[test]
    fn cgroups_gone_or_made_again_are_stale() {
        use std::os::unix::fs::MetadataExt;
        let s = Scratch::new("cgroups");
        let state = s.state();
        let root = s.0.join("cgroup");
        for d in ["kept", "gone", "again"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        let id = |d: &str| std::fs::metadata(root.join(d)).unwrap().ino();
        // The rules match "again" by an id its directory does not have now: the id of the
        // directory before it was made again (file systems may reuse inodes, so the test does
        // not rely on a new directory getting a new one).
        let (gone_id, again_then) = (id("gone"), id("again") ^ 0x8000_0000);
        let mut table = FakeFirewall::table_with_sets(&[]);
        for (d, then) in [("kept", id("kept")), ("gone", gone_id), ("again", again_then)] {
            table.chains[0].rules.push(ruleset::model::Rule {
                stmts: vec![ruleset::model::Stmt::SocketCgroup { level: 1, path: d.into(), id: then }],
                comment: Some(d.into()),
            });
        }
        state.record_apply(&table, 3);
        std::fs::remove_dir(root.join("gone")).unwrap();
        let stale = state.stale_cgroups(3);
        assert_eq!(
            stale,
            [
                StaleCgroup { path: "again".into(), then: again_then, now: Some(id("again")) },
                StaleCgroup { path: "gone".into(), then: gone_id, now: None },
            ]
        );
        assert!(state.stale_cgroups(4).is_empty(), "a record of another table says nothing");
    }
}
