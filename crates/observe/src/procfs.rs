//! The `/proc` file formats leash reads, parsed from bytes (pure; fuzzed by `fuzz/proc_files`).
//!
//! Nothing in `/proc` is promised to be UTF-8: a process names itself (`prctl(PR_SET_NAME)`,
//! `comm`, the `Name:` line of `status`, the command in `stat`) with any bytes but NUL, and
//! cgroup and file names are bytes too. Reading such a file as a Rust `String` fails, and a
//! process whose status did not read would count as gone: an unprivileged user could hide a
//! connection from attribution with one `prctl`. So every file is read as bytes, the numbers are
//! parsed from bytes, and names are shown escaped ([`escape_name`]), never dropped.

use std::fmt::Write;

/// Real and effective user and group ids of a process (`Uid:` and `Gid:` in `/proc/PID/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
}

/// The lines of a `/proc` file (split at `\n`), whatever bytes they hold.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n')
}

/// The value of `Key:` in a `key:\tvalue` file (`status`), spaces around it trimmed.
pub fn field<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    lines(text).find_map(|l| l.strip_prefix(key)?.strip_prefix(b":")).map(|v| v.trim_ascii())
}

/// The ids in `/proc/PID/status`; `None` when a line is missing or malformed.
pub fn status_ids(status: &[u8]) -> Option<Ids> {
    let pair = |key: &[u8]| -> Option<(u32, u32)> {
        let mut it = field(status, key)?.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
        Some((decimal(it.next()?)?, decimal(it.next()?)?))
    };
    let (uid, euid) = pair(b"Uid")?;
    let (gid, egid) = pair(b"Gid")?;
    Some(Ids { uid, euid, gid, egid })
}

/// The `Name:` line of `/proc/PID/status` as the kernel wrote it (it escapes `\n` and `\\` there,
/// nothing else).
pub fn status_name(status: &[u8]) -> Option<&[u8]> {
    lines(status).find_map(|l| l.strip_prefix(b"Name:")).map(|n| n.trim_ascii())
}

/// A capability set of `/proc/PID/status` (`CapEff`, `CapPrm`, ...), as its bit mask.
pub fn status_caps(status: &[u8], key: &[u8]) -> Option<u64> {
    let v = field(status, key)?;
    (!v.is_empty() && v.len() <= 16).then_some(())?;
    v.iter().try_fold(0u64, |acc, &c| Some(acc << 4 | u64::from((c as char).to_digit(16)?)))
}

/// `/proc/PID/comm`: the name without its newline.
pub fn comm(file: &[u8]) -> &[u8] {
    file.strip_suffix(b"\n").unwrap_or(file)
}

/// When a process started, in clock ticks since boot: field 22 of `/proc/PID/stat`. The command
/// (field 2) is in parentheses and may hold spaces, parentheses and any other byte, so the fields
/// are counted from the last `)`.
pub fn stat_start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let after = &stat[close + 1..];
    let field = after.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).nth(19)?;
    decimal(field)
}

/// The inode of a descriptor link `socket:[12345]`.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    bracketed(link, b"socket:[")
}

/// The inode of a network namespace link `net:[4026531840]` (`/proc/PID/fd/N`, `ns/net`).
pub fn netns_inode(link: &[u8]) -> Option<u64> {
    bracketed(link, b"net:[")
}

fn bracketed(link: &[u8], prefix: &[u8]) -> Option<u64> {
    decimal(link.strip_prefix(prefix)?.strip_suffix(b"]")?)
}

/// The cgroup v2 path in `/proc/PID/cgroup` (its `0::/PATH` line), without the slashes around
/// it, relative to the cgroup v2 root.
pub fn cgroup_v2_path(file: &[u8]) -> Option<&[u8]> {
    lines(file).find_map(|l| l.strip_prefix(b"0::")).map(trim_slashes)
}

fn trim_slashes(mut p: &[u8]) -> &[u8] {
    while let [b'/', rest @ ..] = p {
        p = rest;
    }
    while let [rest @ .., b'/'] = p {
        p = rest;
    }
    p
}

/// An unsigned decimal without sign or spaces, at most 20 digits; `None` on overflow.
pub fn decimal<T: TryFrom<u64>>(s: &[u8]) -> Option<T> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let n = s.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))).flatten()
    })?;
    T::try_from(n).ok()
}

/// A name from `/proc` (a command, an executable path, a cgroup) as text to show: UTF-8 as it
/// is, every byte that is not UTF-8 as `\xNN`, control characters (which could rewrite the
/// terminal of whoever reads `leash conns`) as `\xNN` or `\u{NN}`, and the backslash as `\\`,
/// so that the text tells every name apart and says which bytes it had.
pub fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A cgroup path as the policy compares it: UTF-8 with each byte that is not UTF-8 replaced by
/// U+FFFD. The policy's own paths are UTF-8 (it is TOML), so a replaced component never equals
/// one of them, and the components before it (the ancestors, which `socket cgroupv2` matches
/// too) stay exact.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_from_bytes_whatever_the_name() {
        let status = b"Name:\t\xff\xfeevil\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t101\t100\t100\nCapEff:\t0000000000001000\n";
        assert_eq!(status_ids(status), Some(Ids { uid: 1000, euid: 1001, gid: 100, egid: 101 }));
        assert_eq!(status_name(status), Some(&b"\xff\xfeevil"[..]));
        assert_eq!(status_caps(status, b"CapEff"), Some(1 << 12));
        assert_eq!(status_caps(status, b"CapPrm"), None);
        assert_eq!(status_ids(b"Uid:\t1\nGid:\t2\t3\n"), None, "a missing effective id");
        assert_eq!(status_ids(b"Uid:\t1\t99999999999\nGid:\t2\t3\n"), None, "above u32");
        assert_eq!(status_caps(b"CapEff:\t0000000000001000000\n", b"CapEff"), None, "too long");
    }

    #[test]
    fn stat_counts_fields_after_the_last_parenthesis() {
        let stat = b"42 (a) (b\xff c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 18446744073709551615";
        assert_eq!(stat_start_time(stat), Some(123456));
        assert_eq!(stat_start_time(b"42 (x) S 1"), None);
        assert_eq!(stat_start_time(b"no parenthesis"), None);
    }

    #[test]
    fn links_parse() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"pipe:[12]"), None);
        assert_eq!(socket_inode(b"socket:[99999999999999999999]"), None);
        assert_eq!(netns_inode(b"net:[4026531840]"), Some(4026531840));
        assert_eq!(netns_inode(b"socket:[4026531840]"), None);
        assert_eq!(decimal::<u32>(b"4294967296"), None);
        assert_eq!(decimal::<u32>(b"4294967295"), Some(u32::MAX));
    }

    #[test]
    fn cgroup_paths_are_bytes() {
        let f = b"12:cpu:/x\n0::/user.slice/user-1000.slice/\xff.scope\n";
        assert_eq!(cgroup_v2_path(f), Some(&b"user.slice/user-1000.slice/\xff.scope"[..]));
        assert_eq!(lossy(cgroup_v2_path(f).unwrap()), "user.slice/user-1000.slice/\u{fffd}.scope");
        assert_eq!(cgroup_v2_path(b"0::/\n"), Some(&b""[..]));
        assert_eq!(cgroup_v2_path(b"1:name=systemd:/\n"), None);
    }

    #[test]
    fn names_are_escaped_not_dropped() {
        assert_eq!(escape_name(b"nginx"), "nginx");
        assert_eq!(escape_name("café".as_bytes()), "café");
        assert_eq!(escape_name(b"\xff\xfeevil"), "\\xff\\xfeevil");
        assert_eq!(escape_name(b"a\\xff"), "a\\\\xff", "a literal backslash is told apart");
        assert_eq!(escape_name(b"\x1b[2J\n"), "\\x1b[2J\\x0a");
        assert_eq!(escape_name("\u{85}".as_bytes()), "\\u{85}");
        assert_eq!(comm(b"sleep\n"), b"sleep");
    }
}
