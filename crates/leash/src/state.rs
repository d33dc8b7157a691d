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

use anyhow::{Context, Result};
use kernel::Firewall;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

    fn record_path(&self) -> Option<PathBuf> {
        netns_id().map(|id| self.dir.join(format!("sets-{id}.json")))
    }

    fn read_record(&self) -> Option<Record> {
        let text = std::fs::read(self.record_path()?).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the record (atomically: a temporary file renamed over it), or removes it when it
    /// holds nothing.
    fn write_record(&self, r: &Record) -> Result<()> {
        let path = self.record_path().context("cannot identify the network namespace to record set sizes")?;
        // Nothing worth remembering: no record at all (most policies have neither large sets nor
        // cgroup rules).
        if r.sets.is_empty() && r.cgroups.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot remove {}", path.display()))
                }
                _ => Ok(()),
            };
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        prune(&self.dir, &path);
        let tmp = path.with_extension(format!("json.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(r)?).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
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
        if let Some(p) = self.record_path() {
            let _ = std::fs::remove_file(p);
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
    for proc_entry in dir_entries(Path::new("/proc")) {
        if !proc_entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let pdir = proc_entry.path();
        for task in dir_entries(&pdir.join("task")) {
            live.extend(netns_inode(&task.path().join("ns/net")));
        }
        for fd in dir_entries(&pdir.join("fd")) {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(ino) =
                    t.strip_prefix("net:[").and_then(|r| r.strip_suffix(']')).and_then(|n| n.parse().ok())
                {
                    live.insert(ino);
                }
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
/// is written; scanning /proc takes a few milliseconds.
fn prune(dir: &Path, keep: &Path) {
    let records: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != keep && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sets-")))
        .collect();
    if records.is_empty() {
        return;
    }
    let live = live_netns_inodes();
    for p in records {
        let inode =
            std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok()).map_or(0, |r| r.netns_inode);
        if !live.contains(&inode) {
            let _ = std::fs::remove_file(&p);
        }
    }
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
        prune(&dir, &dir.join("sets-cookie-4.json"));
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
