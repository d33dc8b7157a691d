//! The workspace's structural rules, checked on the sources: no two modules of a crate import
//! each other (directly or through others), no command module imports another, and the pure
//! crates (`policy`, `ruleset`) reach no file, socket or clock.
//!
//! The module graph is read from the text: an edge goes from a module file to the module file
//! that a `crate::`, `super::` or `self::` path in it names (the longest prefix of the path that
//! is a module of the crate). `mod` declarations are not edges; `pub use` re-exports are. Unit
//! test modules (`#[cfg(test)] mod tests { ... }` at the end of a file) are left out: they may
//! use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A crate's modules: module path (`["nft", "read"]`) -> file.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|l| l == "mod") || parts == ["lib"] || parts == ["main"] {
                parts.pop();
            }
            // Unit tests kept in a file of their own (`#[cfg(test)] mod tests;`) may use anything.
            if parts.last().is_some_and(|l| l == "tests") {
                continue;
            }
            out.insert(parts, p);
        }
    }
    out
}

/// The text of a file without its unit-test modules (`#[cfg(test)]` followed by a `mod NAME {`
/// line) and without comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut cut = text.len();
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let next = text[at..].lines().skip(1).find(|l| !l.trim_start().starts_with("#["));
        if next.is_some_and(|l| l.contains("mod ") && l.trim_end().ends_with('{')) {
            cut = at;
            break;
        }
        from = at + 1;
    }
    let text = &text[..cut];
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path of two or more segments in `code` (`crate::a::b`, `super::x`, `child::f`), `use`
/// groups expanded one level (`use crate::a::{b, c::d}` gives `crate::a::b` and
/// `crate::a::c::d`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        let boundary = i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':');
        let word = rest.bytes().take_while(|&c| ident(c)).count();
        if !(boundary && word > 0 && rest[word..].starts_with("::")) {
            i += if word > 0 { word } else { rest.chars().next().map_or(1, char::len_utf8) };
            continue;
        }
        let mut end = 0;
        while end < rest.len() {
            let c = rest.as_bytes()[end];
            if c.is_ascii_alphanumeric() || c == b'_' || c == b':' {
                end += 1;
            } else {
                break;
            }
        }
        let head: Vec<String> =
            rest[..end].split("::").filter(|s| !s.is_empty()).map(String::from).collect();
        if rest[end..].starts_with('{') {
            let close = rest[end..].find('}').map_or(rest.len(), |c| end + c);
            for item in rest[end + 1..close].split(',') {
                let item: Vec<String> = item
                    .trim()
                    .split(" as ")
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .map(|s| s.trim().trim_start_matches('{').to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                out.push(head.iter().cloned().chain(item).collect());
            }
            i += close;
        } else {
            out.push(head);
            i += end;
        }
    }
    out
}

/// The module a path names, from the module `from` it is written in: its longest prefix that is
/// a module of the crate. A path that starts with neither `crate`, `self`, `super` nor a child
/// module of `from` names something outside the crate (another crate, a type's item).
fn target(from: &[String], path: &[String], mods: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    let mut base: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("self") => {
            base = from.to_vec();
            rest = &path[1..];
        }
        Some("super") => {
            base = from.to_vec();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) => {
            let mut child = from.to_vec();
            child.push(first.to_string());
            if !mods.contains_key(&child) {
                return None;
            }
            base = from.to_vec();
        }
        None => return None,
    }
    let mut best = base.clone();
    let mut cur = base;
    for seg in rest {
        cur.push(seg.clone());
        if mods.contains_key(&cur) {
            best = cur.clone();
        } else {
            break;
        }
    }
    Some(best)
}

/// Module -> the modules it imports, for one crate.
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mods = modules(src);
    let mut g = BTreeMap::new();
    for (m, file) in &mods {
        let deps: BTreeSet<Vec<String>> = paths(&code(file))
            .iter()
            .filter_map(|p| target(m, p, &mods))
            .filter(|t| t != m)
            .collect();
        g.insert(m.clone(), deps);
    }
    g
}

/// A cycle of the graph, if it has one.
fn cycle(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    fn visit(
        n: &Vec<String>,
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d).copied().unwrap_or(0) {
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                1 => {
                    let at = stack.iter().position(|x| x == d).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, g, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn crates() -> Vec<(String, PathBuf)> {
    let dir = workspace().join("crates");
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p.join("src")))
        .collect();
    out.sort();
    out
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let crates = crates();
    assert!(crates.len() >= 7, "expected the workspace's crates under crates/: {crates:?}");
    let mut problems = Vec::new();
    for (name, src) in &crates {
        let g = graph(src);
        if std::env::var_os("LEASH_STRUCTURE_DEBUG").is_some() {
            for (m, deps) in &g {
                eprintln!("{name}: {m:?} -> {deps:?}");
            }
        }
        assert!(g.len() > 1 || name == "ruleset", "{name}: no modules found in {}", src.display());
        if let Some(c) = cycle(&g) {
            let names: Vec<String> =
                c.iter().map(|m| if m.is_empty() { "(root)".into() } else { m.join("::") }).collect();
            problems.push(format!("{name}: {}", names.join(" -> ")));
        }
    }
    assert!(problems.is_empty(), "module cycles:\n{}", problems.join("\n"));
}

#[test]
fn no_command_imports_another() {
    let src = workspace().join("crates/leash/src");
    let g = graph(&src);
    let commands: BTreeSet<&Vec<String>> = g.keys().filter(|m| m.first().is_some_and(|s| s == "cmd") && m.len() == 2).collect();
    assert!(commands.len() >= 10, "commands under crates/leash/src/cmd: {commands:?}");
    let mut problems = Vec::new();
    for (m, deps) in &g {
        if m.first().is_none_or(|s| s != "cmd") || m.len() < 2 {
            continue;
        }
        for d in deps {
            // A command's own submodules (cmd/top/{model,ui}) are its own business.
            if d.len() >= 2 && d[0] == "cmd" && d[1] != m[1] {
                problems.push(format!("{} imports {}", m.join("::"), d.join("::")));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_pure_crates_reach_no_file_socket_or_clock() {
    // What would be I/O or a clock: the pure crates get text, a resolver and "now" as parameters.
    const FORBIDDEN: &[&str] = &[
        "std::fs",
        "std::net::TcpStream",
        "std::net::UdpSocket",
        "std::net::TcpListener",
        "std::os::unix::net",
        "std::process",
        "std::env::var",
        "SystemTime::now",
        "Instant::now",
        "Timestamp::now",
        "Zoned::now",
        "libc::",
        "nix::",
    ];
    let mut problems = Vec::new();
    for name in ["policy", "ruleset"] {
        let src = workspace().join("crates").join(name).join("src");
        for file in modules(&src).values() {
            let text = code(file);
            for f in FORBIDDEN {
                if text.contains(f) {
                    problems.push(format!("{}: {f}", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "the pure crates must not do I/O or read the clock:\n{}", problems.join("\n"));
}

#[test]
fn the_checks_see_cycles_and_cross_command_imports() {
    // The reader itself, on a made-up crate: a cycle through a parent's re-export is one.
    let dir = std::env::temp_dir().join(format!("leash-structure-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nft")).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod nft;\npub use nft::Error;\n").unwrap();
    std::fs::write(dir.join("nft/mod.rs"), "mod read;\nmod error;\npub use error::Error;\n").unwrap();
    std::fs::write(dir.join("nft/error.rs"), "pub struct Error;\n").unwrap();
    std::fs::write(dir.join("nft/read.rs"), "use super::Error;\nuse crate::nft::error::{self, Error as E};\n").unwrap();
    let g = graph(&dir);
    assert_eq!(
        g[&vec!["nft".to_string(), "read".to_string()]],
        [vec!["nft".to_string()], vec!["nft".to_string(), "error".to_string()]].into()
    );
    assert!(cycle(&g).is_none(), "mod.rs does not use read: {g:?}");
    std::fs::write(dir.join("nft/mod.rs"), "mod read;\nmod error;\npub use error::Error;\nuse read::x;\n").unwrap();
    let c = cycle(&graph(&dir)).expect("nft -> nft::read -> nft is a cycle");
    assert!(c.contains(&vec!["nft".to_string()]), "{c:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
