//! Helpers for kernel tests (feature `testutil`): root checks, and `nft` as an oracle inside
//! throwaway network namespaces.
//!
//! `nft` is only ever run here, in tests, and always inside a namespace made by [`NetNs`]
//! (entered with `nsenter --net=/proc/PID/fd/FD`, never `ip netns exec`, which hides
//! `/sys/fs/cgroup`). Nothing here touches the machine's own namespace except
//! [`root_has_no_leash_table`], which only lists tables.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::netns::NetNs;

/// True when the tests may touch the kernel. Kernel tests need root: outside CI they are skipped
/// with a reason on stderr; with `CI` set, not being root is a failure.
pub fn need_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: kernel tests need root, and CI is set: failing instead of skipping"
    );
    eprintln!("skipped {test}: kernel tests need root (and nft for the oracle)");
    false
}

/// Runs `nft ARGS` inside `ns`, feeding `stdin`; returns (success, stdout, stderr).
pub fn nft_raw(ns: &NetNs, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let net = format!("--net={}", ns.path().display());
    let mut child = Command::new("nsenter")
        .arg(net)
        .arg("nft")
        .args(args)
        // nft reads and prints `meta hour` and `meta time` literals in its own time zone, while
        // leash's model (and its rendered scripts) are UTC.
        .env("TZ", "UTC")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nsenter nft (are util-linux and nftables installed?)");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `nft -f -` of `text` inside `ns`; panics with nft's message if it fails.
pub fn nft_load(ns: &NetNs, text: &str) {
    let (ok, _, err) = nft_raw(ns, &["-f", "-"], Some(text));
    assert!(ok, "nft -f failed: {err}\n--- text ---\n{text}");
}

/// `nft list table inet leash` inside `ns`, or `None` when there is no such table.
pub fn list_leash(ns: &NetNs) -> Option<String> {
    let (ok, out, err) = nft_raw(ns, &["list", "table", "inet", ruleset::TABLE_NAME], None);
    if ok {
        Some(strip_handles(&out))
    } else {
        assert!(
            err.contains("No such file or directory"),
            "nft list failed: {err}"
        );
        None
    }
}

/// Removes `# handle N` annotations (present with `nft -a`) so listings from two namespaces
/// compare equal.
pub fn strip_handles(listing: &str) -> String {
    listing
        .lines()
        .map(|l| match l.find(" # handle ") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads `text` with nft into one fresh namespace and applies `table` with [`crate::apply`] into
/// another, and returns both listings (nft's first).
pub fn listings(table: &ruleset::Table, text: &str) -> (String, String) {
    let oracle = NetNs::new().expect("new netns");
    nft_load(&oracle, text);
    let want = list_leash(&oracle).expect("nft created the table");
    let ours = NetNs::new().expect("new netns");
    ours.run(|| crate::apply(table, &crate::ApplyOptions::default()))
        .expect("apply");
    let got = list_leash(&ours).expect("apply created the table");
    (want, got)
}

/// Asserts that the machine's own namespace has no leash table (tests never create one there).
pub fn root_has_no_leash_table() {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("run nft");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text
            .lines()
            .any(|l| l.trim() == format!("table inet {}", ruleset::TABLE_NAME)),
        "the root network namespace has a leash table: {text}"
    );
}

/// The messages nft sends for `text` (`nft --debug=mnl -f -` inside `ns`), reassembled from
/// libmnl's debug dump: (message type, bytes after the nlmsghdr). Flags and sequence numbers are
/// dropped (the dump shows flags only partly, and nft numbers differently). Includes nft's cache
/// requests before the batch; filter by type.
pub fn nft_messages(ns: &NetNs, text: &str) -> Vec<(u16, Vec<u8>)> {
    let (ok, out, err) = nft_raw(ns, &["--debug=mnl", "-f", "-"], Some(text));
    assert!(ok, "nft -f failed: {err}");
    // libmnl prints to stdout or stderr depending on the version; parse both.
    parse_mnl_debug(&format!("{out}\n{err}"))
}

/// Parses libmnl's `mnl_nlmsg_fprintf` output (see [`nft_messages`]).
pub fn parse_mnl_debug(dump: &str) -> Vec<(u16, Vec<u8>)> {
    let mut msgs: Vec<(u16, usize, Vec<u8>)> = Vec::new();
    let mut expect_type = false;
    for raw in dump.lines() {
        let line = strip_ansi(raw);
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "|  0000000052  |	| message length |"
        if line.contains("| message length |") {
            let len: usize = cells[1].parse().unwrap();
            msgs.push((0, len, Vec::new()));
            expect_type = true;
        } else if expect_type && line.contains("|  type | flags  |") {
            msgs.last_mut().unwrap().0 = cells[1].parse().unwrap();
            expect_type = false;
        } else if line.contains("|len |flags| type|") {
            // "|00010|--|00001|	|len |flags| type|": attribute header.
            let len: u16 = cells[1].parse().unwrap();
            let mut ty: u16 = cells[3].parse().unwrap();
            if cells[2].contains('N') {
                ty |= crate::nl::NLA_F_NESTED;
            }
            if cells[2].contains('B') {
                ty |= crate::nl::NLA_F_NET_BYTEORDER;
            }
            let body = &mut msgs.last_mut().unwrap().2;
            body.extend_from_slice(&len.to_ne_bytes());
            body.extend_from_slice(&ty.to_ne_bytes());
        } else if line.contains("|      data      |") || line.contains("|  extra header  |") {
            // "| 6c 65 61 73  |	|      data      |	 l e a s"
            let body = &mut msgs.last_mut().unwrap().2;
            for hex in cells[1].split_whitespace() {
                body.push(u8::from_str_radix(hex, 16).unwrap());
            }
        }
    }
    msgs.into_iter()
        .map(|(ty, len, mut body)| {
            body.truncate(len - crate::nl::NLMSG_HDRLEN);
            (ty, body)
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The messages of a batch we encoded: (type, bytes after the nlmsghdr).
pub fn batch_messages(batch: &[u8]) -> Vec<(u16, Vec<u8>)> {
    crate::nl::Messages::new(batch)
        .map(|m| m.unwrap())
        .map(|m| (m.header.ty, m.payload.to_vec()))
        .collect()
}

/// A readable tree of a message's attributes (after the 4-byte nfgenmsg), for diffs in failures.
pub fn attr_tree(payload: &[u8]) -> String {
    fn walk(b: &[u8], depth: usize, out: &mut String) {
        for a in crate::nl::Attrs::new(b) {
            let Ok(a) = a else {
                out.push_str(&format!("{:w$}<malformed>\n", "", w = depth * 2));
                return;
            };
            if a.nested_flag {
                out.push_str(&format!("{:w$}{} {{\n", "", a.ty, w = depth * 2));
                walk(a.data, depth + 1, out);
                out.push_str(&format!("{:w$}}}\n", "", w = depth * 2));
            } else {
                let hex: String = a.data.iter().map(|b| format!("{b:02x}")).collect();
                let text = match a.data.split_last() {
                    Some((0, s)) if !s.is_empty() && s.iter().all(|c| (0x20..0x7f).contains(c)) => {
                        format!(" \"{}\"", String::from_utf8_lossy(s))
                    }
                    _ => String::new(),
                };
                out.push_str(&format!("{:w$}{} {hex}{text}\n", "", a.ty, w = depth * 2));
            }
        }
    }
    let mut out = format!("nfgenmsg {:02x?}\n", &payload[..payload.len().min(4)]);
    walk(payload.get(4..).unwrap_or(&[]), 1, &mut out);
    out
}

// --- table models shared by the kernel tests of several crates ------------------------------------

/// An output filter chain with the given policy and rules.
pub fn chain(policy: ruleset::ChainPolicy, rules: Vec<ruleset::Rule>) -> ruleset::Chain {
    ruleset::Chain {
        name: "output".into(),
        kind: ruleset::ChainType::Filter,
        hook: ruleset::Hook::Output,
        priority: ruleset::OUTPUT_PRIORITY_FILTER,
        policy,
        rules,
    }
}

/// A rule of statements, with a comment.
pub fn rule(stmts: Vec<ruleset::Stmt>, comment: Option<&str>) -> ruleset::Rule {
    ruleset::Rule { stmts, comment: comment.map(String::from) }
}

/// A table shaped like a compiled policy, for tracing tests: loopback, established, a rule that
/// does not match (`dns`), an allow rule of two kernel rules (`web`: TCP 443 to `traced` and to
/// `other`), and the default reject.
pub fn policy_shaped_table(traced: std::net::Ipv4Addr, other: std::net::Ipv4Addr) -> ruleset::Table {
    use ruleset::{ChainPolicy, L4, Stmt::*, Value};
    let tcp = |p| Dport { l4: L4::Tcp, value: Value::Eq(p) };
    ruleset::Table {
        name: ruleset::TABLE_NAME.into(),
        comment: Some("trace test".into()),
        sets: vec![],
        chains: vec![chain(
            ChainPolicy::Drop,
            vec![
                rule(vec![OifLoopback, Counter, Accept], Some("@loopback")),
                rule(vec![CtStateEstablishedRelated, Counter, Accept], Some("@established")),
                rule(
                    vec![
                        Daddr4(Value::Eq(std::net::Ipv4Addr::new(198, 51, 100, 53))),
                        Dport { l4: L4::Udp, value: Value::Eq(53) },
                        Counter,
                        Accept,
                    ],
                    Some("dns"),
                ),
                rule(vec![Daddr4(Value::Eq(traced)), tcp(443), Counter, Accept], Some("web")),
                rule(vec![Daddr4(Value::Eq(other)), tcp(443), Counter, Accept], Some("web")),
                rule(vec![L4proto(L4::Tcp), Counter, RejectTcpReset], Some("@default")),
                rule(vec![Counter, RejectAdminProhibited], Some("@default")),
            ],
        )],
    }
}
