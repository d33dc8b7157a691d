//! Fuzzes the `/proc` parsers (`observe::procfs`: `status`, `stat`, `comm`, descriptor link
//! targets `socket:[N]` and `net:[N]`, the `cgroup` file) and the escaping of names, on arbitrary
//! bytes: a process chooses its own name, so these files hold whatever bytes it likes. Checks that
//! nothing panics, that what parses is consistent with its input, and that an escaped name is
//! one line of printable text that gives back the exact bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observe::procfs;

/// The inverse of `procfs::escape_name`.
fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        match chars.next() {
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let h: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&h, 16).expect("two hex digits after \\x"));
            }
            Some('u') => {
                assert_eq!(chars.next(), Some('{'));
                let h: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap();
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            other => panic!("a lone backslash before {other:?} in {s:?}"),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // As a status file: ids and capabilities parse or not, the name is a part of the input.
    let _ = procfs::status_ids(data);
    let _ = procfs::status_caps(data, b"CapEff");
    if let Some(name) = procfs::status_name(data) {
        assert!(name.len() <= data.len());
        assert!(!name.contains(&b'\n'));
    }
    // As a stat file.
    if procfs::stat_start_time(data).is_some() {
        assert!(data.contains(&b')'));
    }
    // As link targets: what parses is exactly the number written in the brackets.
    if let Some(n) = procfs::socket_inode(data) {
        assert!(data.starts_with(b"socket:[") && data.ends_with(b"]"));
        assert_eq!(procfs::socket_inode(format!("socket:[{n}]").as_bytes()), Some(n));
    }
    if let Some(n) = procfs::netns_inode(data) {
        assert_eq!(procfs::netns_inode(format!("net:[{n}]").as_bytes()), Some(n));
    }
    let _ = procfs::decimal::<u32>(data);
    // As a cgroup file: a slice of one line, without the slashes around it.
    if let Some(p) = procfs::cgroup_v2_path(data) {
        assert!(!p.starts_with(b"/") && !p.ends_with(b"/") && !p.contains(&b'\n'));
        let _ = procfs::lossy(p);
    }
    // As a name: printable, one line, and it gives back the bytes.
    let shown = procfs::escape_name(procfs::comm(data));
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert_eq!(unescape(&shown), procfs::comm(data), "{shown:?}");
});
