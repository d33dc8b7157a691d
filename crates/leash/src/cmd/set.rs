//! `leash set update NAME FILE`: replaces the addresses of a `[[set]]` of the applied policy in one
//! transaction, and the record of large sets' sizes that lets `leash status` and `leash metrics`
//! report them without reading a million elements back from the kernel.
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

use crate::commands::{EXIT_OK, EXIT_POLICY, UsageError, require_root};
use anyhow::{Context, Result, anyhow};
use ruleset::{Family, SetElements};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  sudo leash set update threat-feed feeds/threat-feed.txt
  curl -fsS https://feeds.example/drop.txt -o /tmp/drop.txt && sudo leash set update threat-feed /tmp/drop.txt --json";

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(subcommand)]
    pub command: SetCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SetCommand {
    /// Replace the addresses of a [[set]] of the applied policy with those in FILE, atomically.
    ///
    /// NAME is the set's name in the policy (`[[set]] name = "threat-feed"`, used by rules as
    /// "set:threat-feed"). FILE has one entry a line: an address (192.0.2.7), a network
    /// (198.51.100.0/24, 2001:db8::/32) or a range (192.0.2.10-192.0.2.20); `#` and `;` start
    /// comments. Entries are merged (overlapping and adjacent ones become one range).
    ///
    /// Both kernel sets of NAME (s_NAME_v4 and s_NAME_v6) are flushed and refilled in ONE netlink
    /// transaction: connections never see the set empty or half filled, and no rule, chain or
    /// other set changes (rule counters keep counting). If FILE has any bad line, every bad line
    /// is reported as FILE:LINE:COL and nothing is changed (exit 1); if the kernel refuses
    /// anything, it discards the whole transaction and the old addresses stay.
    ///
    /// The policy file is not read or changed: a later `leash apply` loads the set from the file
    /// the policy names again. The sizes of large sets are recorded in /run/leash (or
    /// $LEASH_STATE_DIR), so that `leash status` reports them without reading a million elements
    /// back. Needs root. Exit codes: 0 done, 1 FILE has errors, 2 the applied policy has no such
    /// set, 3 no leash table is active or the kernel refused the update.
    #[command(after_help = EXAMPLES)]
    Update {
        /// The set's name in the policy, e.g. threat-feed.
        name: String,
        /// The new list: one address, network or range a line.
        file: PathBuf,
        #[command(flatten)]
        fault: crate::cli::FaultArgs,
    },
}

pub fn run(a: &Args, json: bool) -> Result<u8> {
    match &a.command {
        SetCommand::Update { name, file, fault } => update(name, file, fault.fault_inject, json),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn update(name: &str, file: &Path, fault_inject: bool, json: bool) -> Result<u8> {
    let t0 = Instant::now();
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}; nothing was changed", file.display()))?;
    let shown = file.display().to_string();
    let parsed = match String::from_utf8(bytes) {
        Ok(text) => policy::setfile::parse_set_file(&text),
        Err(e) => Err(vec![policy::setfile::SetFileError {
            line: 1,
            col: 1,
            message: format!("not a text file (invalid UTF-8 at byte {})", e.utf8_error().valid_up_to()),
        }]),
    };
    let f = match parsed {
        Ok(f) => f,
        Err(errors) => {
            if json {
                crate::output::print_json(&serde_json::json!({
                    "ok": false,
                    "set": name,
                    "file": shown,
                    "errors": errors.iter().map(|e| serde_json::json!({
                        "file": shown, "line": e.line, "column": e.col, "message": e.message,
                    })).collect::<Vec<_>>(),
                }));
            } else {
                for e in &errors {
                    eprintln!("{shown}:{}:{}: error: {}", e.line, e.col, e.message);
                }
                let more = if errors.len() >= policy::setfile::MAX_ERRORS { " (stopped counting)" } else { "" };
                eprintln!("leash: {shown} has {} bad line(s){more}; nothing was changed", errors.len());
            }
            return Ok(EXIT_POLICY);
        }
    };
    let parse = t0.elapsed();
    require_root("set update")?;
    let (v4name, v6name) =
        (ruleset::compile::named_set_name(name, Family::Ipv4), ruleset::compile::named_set_name(name, Family::Ipv6));
    let v4 = SetElements::v4_of(&f.ranges);
    let v6 = SetElements::v6_of(&f.ranges);
    let (n4, n6) = (v4.len(), v6.len());
    // The kernel call checks this too; asking first gives the error before the progress line.
    match kernel::status_with(|_, _| Some(0)) {
        Ok(None) => return Err(no_table(name)),
        Ok(Some(st)) if !st.sets.iter().any(|s| s.name == v4name) => return Err(no_set(name)),
        _ => {}
    }
    if !json && n4 + n6 >= 50_000 {
        // Large sets take a few seconds; say what is happening.
        eprintln!("leash: replacing set {name} with {} ranges in one transaction...", n4 + n6);
    }
    let contents =
        [kernel::SetContents { name: &v4name, elements: &v4 }, kernel::SetContents { name: &v6name, elements: &v6 }];
    let report = match kernel::replace_set_elements(
        ruleset::TABLE_NAME,
        &contents,
        &kernel::ReplaceOptions { fault_inject },
    ) {
        Ok(r) => r,
        Err(kernel::Error::NoSuchTable(_)) => return Err(no_table(name)),
        Err(kernel::Error::NoSuchSet { .. }) => return Err(no_set(name)),
        Err(e @ kernel::Error::Verify(_)) => {
            return Err(
                anyhow::Error::new(e).context(format!("set {name} was replaced, but checking it afterwards failed"))
            );
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "replacing the addresses of set {name} failed; the kernel discarded the whole transaction, nothing changed"
            )));
        }
    };
    if let Err(e) = record_update(report.table_handle, &[(v4name.as_str(), n4), (v6name.as_str(), n6)]) {
        eprintln!("leash: warning: {e:#}; leash status will count large sets only up to {}", kernel::nft::COUNT_LIMIT);
    }
    let total = t0.elapsed();
    if json {
        crate::output::print_json(&serde_json::json!({
            "ok": true,
            "set": name,
            "file": shown,
            "entries": f.entries,
            "ranges": { "ipv4": n4, "ipv6": n6 },
            "kernel_sets": [v4name, v6name],
            "transaction": { "messages": report.messages, "bytes": report.bytes },
            "timing_ms": {
                "parse": ms(parse),
                "encode": ms(report.encode),
                "kernel": ms(report.send_and_ack),
                "verify": ms(report.verify),
                "total": ms(total),
            },
        }));
    } else {
        println!(
            "updated set {name} from {shown}: {} entries -> {n4} IPv4 and {n6} IPv6 ranges, replaced in one transaction ({} messages, {:.1} MB); parse {:.1} ms, kernel {:.1} ms, verify {:.1} ms, total {:.1} ms",
            f.entries,
            report.messages,
            report.bytes as f64 / 1e6,
            ms(parse),
            ms(report.send_and_ack),
            ms(report.verify),
            ms(total),
        );
    }
    Ok(EXIT_OK)
}

fn no_table(name: &str) -> anyhow::Error {
    anyhow!(
        "no leash table is active in this network namespace: apply a policy with a [[set]] named `{name}` first (leash apply POLICY); nothing was changed"
    )
}

/// A usage error (exit 2): the name typed is not a set of the applied policy.
fn no_set(name: &str) -> anyhow::Error {
    let have = policy_sets();
    let have = if have.is_empty() { "it has none".to_string() } else { format!("it has: {}", have.join(", ")) };
    anyhow::Error::new(UsageError(format!(
        "the applied policy has no [[set]] named `{name}` ({have}); nothing was changed"
    )))
}

/// The `[[set]]` names of the applied table (from its `s_NAME_v4` sets), for error messages.
fn policy_sets() -> Vec<String> {
    // Every count "recorded" as 0: only the names are wanted, nothing is counted.
    let Ok(Some(st)) = kernel::status_with(|_, _| Some(0)) else { return Vec::new() };
    st.sets
        .iter()
        .filter_map(|s| s.name.strip_prefix("s_").and_then(|n| n.strip_suffix("_v4")).map(String::from))
        .collect()
}

// --- the record of large sets' sizes -----------------------------------------------------------

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
    /// (see [`stale_cgroups`]).
    #[serde(default)]
    cgroups: BTreeMap<String, u64>,
}

/// Directory of the records: `$LEASH_STATE_DIR`, else `/run/leash` (a tmpfs, empty after boot,
/// like the kernel's tables).
fn state_dir() -> PathBuf {
    std::env::var_os("LEASH_STATE_DIR").map_or_else(|| PathBuf::from("/run/leash"), PathBuf::from)
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

fn record_path() -> Option<PathBuf> {
    netns_id().map(|id| state_dir().join(format!("sets-{id}.json")))
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

fn read_record() -> Option<Record> {
    let text = std::fs::read(record_path()?).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes the record (atomically: a temporary file renamed over it), or removes it when it holds
/// no set.
fn write_record(r: &Record) -> Result<()> {
    let path = record_path().context("cannot identify the network namespace to record set sizes")?;
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
    let dir = state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    prune(&dir, &path);
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(r)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// Whether a set is worth recording: one `leash status` would not count to the end.
fn large(n: usize) -> bool {
    n > kernel::nft::COUNT_LIMIT
}

/// After a successful `leash apply`: records the sizes of the table's large sets (only sets
/// leash fills itself: not the forwarder's timeout sets, not meters). Failing to record is a
/// warning: the firewall is in place, only `leash status` will count less far.
pub fn record_apply(table: &ruleset::Table, table_handle: u64) {
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
    if let Err(e) = write_record(&Record { table_handle, sets, netns_inode, cgroups }) {
        eprintln!("leash: warning: {e:#}; leash status will count large sets only up to {}", kernel::nft::COUNT_LIMIT);
    }
}

/// After a `leash set update`: the new sizes of the replaced sets, in the record of that table.
fn record_update(table_handle: u64, sets: &[(&str, usize)]) -> Result<()> {
    let netns_inode = netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap_or(0);
    let mut r = read_record().filter(|r| r.table_handle == table_handle).unwrap_or_default();
    (r.table_handle, r.netns_inode) = (table_handle, netns_inode);
    for &(name, n) in sets {
        if large(n) {
            r.sets.insert(name.to_string(), n);
        } else {
            r.sets.remove(name);
        }
    }
    write_record(&r)
}

/// After `leash disable`: the record describes no table any more.
pub fn forget() {
    if let Some(p) = record_path() {
        let _ = std::fs::remove_file(p);
    }
}

/// The cgroups the applied rules match that are gone or were made again since the apply (a
/// restarted service): (path below /sys/fs/cgroup, id the rules match, id now if it exists).
pub fn stale_cgroups(table_handle: u64) -> Vec<(String, u64, Option<u64>)> {
    use std::os::unix::fs::MetadataExt;
    let Some(rec) = read_record().filter(|r| r.table_handle == table_handle) else { return Vec::new() };
    rec.cgroups
        .into_iter()
        .filter_map(|(path, id)| {
            let now = std::fs::metadata(Path::new("/sys/fs/cgroup").join(&path)).ok().map(|m| m.ino());
            (now != Some(id)).then_some((path, id, now))
        })
        .collect()
}

/// `kernel::status`, with the recorded sizes of large sets instead of counting them (see the
/// module documentation). What `leash status` and `leash metrics` show.
pub fn status() -> Result<Option<kernel::TableStatus>, kernel::Error> {
    let rec = read_record();
    kernel::status_with(|handle, s| {
        let r = rec.as_ref().filter(|r| r.table_handle == handle)?;
        r.sets.get(&s.name).copied().filter(|_| !s.timeout)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
