//! Helpers shared by the integration tests: a fixed user database and diagnostic shorthands.
#![allow(dead_code)] // each test binary uses a different subset

pub mod strategies;

use policy::{Diagnostic, Policy, StaticResolver, diag::line_col};

/// A fixed user database: users root(0), alice(1000), bob(1001, no known primary group),
/// nobody(65534), leash-dns(998, the DNS forwarder's default user); groups root(0), wheel(10),
/// alice(1000), developers(1001).
pub fn users() -> StaticResolver {
    StaticResolver::new()
        .user("root", 0, Some(0))
        .user("alice", 1000, Some(1000))
        .user("bob", 1001, None)
        .user("nobody", 65534, Some(65534))
        .user("leash-dns", 998, Some(998))
        .group("root", 0)
        .group("wheel", 10)
        .group("alice", 1000)
        .group("developers", 1001)
}

pub fn load(src: &str) -> (Option<Policy>, Vec<Diagnostic>) {
    policy::load(src, &users())
}

/// Loads a text that must be valid and have no diagnostics at all.
pub fn load_ok(src: &str) -> Policy {
    let (p, d) = load(src);
    assert!(d.is_empty(), "unexpected diagnostics: {d:#?}");
    p.expect("policy")
}

/// One diagnostic as (line, col, code, message).
pub type Found = (usize, usize, &'static str, String);

pub fn found(src: &str, diags: &[Diagnostic]) -> Vec<Found> {
    diags
        .iter()
        .map(|d| {
            let (l, c) = line_col(src, d.span.start);
            (l, c, d.code, d.message.clone())
        })
        .collect()
}

/// The diagnostics of a text that must not load.
pub fn errors(src: &str) -> Vec<Found> {
    let (p, d) = load(src);
    assert!(p.is_none(), "policy loaded despite errors: {d:#?}");
    found(src, &d)
}

/// Asserts that a text has exactly one diagnostic, at `line:col`, with `code`, whose message
/// contains `fragment`.
#[track_caller]
pub fn one_error(src: &str, line: usize, col: usize, code: &str, fragment: &str) {
    let e = errors(src);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    let (l, c, k, m) = &e[0];
    assert_eq!((*l, *c, *k), (line, col, code), "{m}");
    assert!(m.contains(fragment), "message {m:?} lacks {fragment:?}");
}

/// The byte span of the only occurrence of `needle` in `src`.
#[track_caller]
pub fn span_of(src: &str, needle: &str) -> std::ops::Range<usize> {
    let start = src.find(needle).unwrap_or_else(|| panic!("{needle:?} not found"));
    assert!(src[start + 1..].find(needle).is_none(), "{needle:?} occurs more than once");
    start..start + needle.len()
}
