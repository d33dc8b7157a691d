//! Scratch cgroup v2 directories for probes that must come from a given cgroup.
//!
//! `socket cgroupv2` matches the cgroup of the process that created the socket, so a probe "from
//! nginx.service" has to be made by a process inside such a cgroup. The lab never uses the host's
//! real cgroups (a probe must never land in a running service's cgroup, and the service may not
//! exist at all): [`Scratch`] makes a private subtree `leash-lab-<pid>-<n>/` under the cgroup v2
//! root, mirrors the paths a policy names inside it, and removes it again (deepest first) on drop.
//!
//! The mount point comes from `/proc/self/mountinfo` (`/sys/fs/cgroup/unified` on a hybrid host,
//! `/sys/fs/cgroup` on a cgroup2-only one). `ip netns exec` would hide it behind a fresh sysfs;
//! the lab enters namespaces with `setns()`, which leaves the mounts alone.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where nft looks for cgroup paths (`socket cgroupv2 level N "PATH"` is relative to it).
const NFT_CGROUP_BASE: &str = "/sys/fs/cgroup";

/// Prefix of every scratch subtree; `leash-lab-<pid>-<n>`.
pub const SCRATCH_PREFIX: &str = "leash-lab-";

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (the first `cgroup2` mount).
pub fn mount_point() -> Option<PathBuf> {
    // Bytes, lossily: a mount point elsewhere on the host need not be UTF-8, and must not hide
    // the cgroup2 mount.
    let bytes = std::fs::read("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&String::from_utf8_lossy(&bytes))
}

/// The first cgroup2 mount point in a mountinfo text. Each line is
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The prefix nft needs in front of a path relative to the cgroup v2 root: `unified` on a hybrid
/// host (mount at `/sys/fs/cgroup/unified`), empty on a cgroup2-only host.
pub fn nft_prefix(mount: &Path) -> String {
    mount.strip_prefix(NFT_CGROUP_BASE).map(|p| p.to_string_lossy().trim_matches('/').to_string()).unwrap_or_default()
}

/// A scratch cgroup subtree, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    mount: PathBuf,
    /// The subtree's name (one directory below the cgroup v2 root).
    name: String,
    /// Every directory made, in creation order (parents before children).
    made: Vec<PathBuf>,
}

/// A mirrored directory: where it is and what the kernel calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrored {
    /// Relative to the cgroup v2 root (`leash-lab-12-0/system.slice/nginx.service`).
    pub path: String,
    /// Relative to `/sys/fs/cgroup`, as nft writes it (`unified/leash-lab-12-0/...` on hybrid).
    pub nft_path: String,
    /// The directory's inode number, which is the kernel's cgroup id.
    pub id: u64,
}

impl Scratch {
    /// Makes `leash-lab-<pid>-<n>/` under the cgroup v2 root at `mount`. Needs root.
    pub fn new(mount: &Path) -> io::Result<Scratch> {
        static N: AtomicUsize = AtomicUsize::new(0);
        // Bounded: a stale directory of an earlier process with our pid is skipped, a few times.
        for _ in 0..64 {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let name = format!("{SCRATCH_PREFIX}{}-{n}", std::process::id());
            let dir = mount.join(&name);
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Scratch { mount: mount.to_path_buf(), name, made: vec![dir] }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create cgroup {}: {e}", dir.display()))),
            }
        }
        Err(io::Error::other("no free scratch cgroup name"))
    }

    /// The subtree's name, relative to the cgroup v2 root.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Absolute directory of a mirrored path (as returned in [`Mirrored::path`]).
    pub fn dir_of(&self, mirrored_path: &str) -> PathBuf {
        self.mount.join(mirrored_path)
    }

    /// Creates `path` (relative to the cgroup v2 root, e.g. `system.slice/nginx.service`) inside
    /// the scratch subtree, with its parents, and says where it is. Creating an existing one again
    /// is fine.
    pub fn mirror(&mut self, path: &str) -> io::Result<Mirrored> {
        let clean: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if clean.iter().any(|c| *c == "." || *c == ".." || c.starts_with("cgroup.")) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid cgroup path {path:?}")));
        }
        let mut rel = self.name.clone();
        let mut dir = self.mount.join(&self.name);
        for c in clean {
            rel.push('/');
            rel.push_str(c);
            dir.push(c);
            match std::fs::create_dir(&dir) {
                Ok(()) => self.made.push(dir.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create cgroup {}: {e}", dir.display()))),
            }
        }
        let id = std::fs::metadata(&dir)?.ino();
        let prefix = nft_prefix(&self.mount);
        let nft_path = if prefix.is_empty() { rel.clone() } else { format!("{prefix}/{rel}") };
        Ok(Mirrored { path: rel, nft_path, id })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Deepest first. A cgroup whose last process was just reaped may still report busy for
        // a moment, so each removal is retried briefly (bounded).
        for dir in self.made.iter().rev() {
            for attempt in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if attempt < 49 => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => eprintln!("leash: warning: cannot remove scratch cgroup {}: {e}", dir.display()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(hybrid).unwrap();
        assert_eq!(m, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(nft_prefix(&m), "unified");
        let pure = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = parse_mountinfo(pure).unwrap();
        assert_eq!(nft_prefix(&m), "");
        assert_eq!(parse_mountinfo("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"), None);
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
    }
}
