//! Fuzzes the policy front end: `load`, then everything a caller does with its result (render
//! each diagnostic, lint, explain each expectation), checking the invariants callers rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::{Date, Resolver, Severity, diag, explain, lint, load};

/// A small fixed user database, so that names in inputs can resolve (and fail to).
struct Users;

impl Resolver for Users {
    fn user(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "alice" => Some(1000),
            "nobody" => Some(65534),
            _ => None,
        }
    }
    fn group(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "wheel" => Some(10),
            "users" => Some(100),
            _ => None,
        }
    }
    fn primary_group(&self, uid: u32) -> Option<u32> {
        match uid {
            0 => Some(0),
            1000 => Some(100),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Policies are text; invalid UTF-8 is rejected before `load` by the binary.
    let Ok(src) = std::str::from_utf8(data) else { return };
    let (policy, diags) = load(src, &Users);
    for d in &diags {
        assert!(d.span.start <= d.span.end && d.span.end <= src.len(), "span {:?} outside the text", d.span);
        let _ = diag::render("fuzz.toml", src, d);
    }
    let has_errors = diags.iter().any(|d| d.severity == Severity::Error);
    assert_eq!(policy.is_some(), !has_errors, "a policy must come back exactly when there is no error");
    if let Some(p) = policy {
        for d in lint::lint(&p, Date { year: 2026, month: 6, day: 1 }) {
            assert!(d.span.start <= d.span.end && d.span.end <= src.len());
            let _ = diag::render("fuzz.toml", src, &d);
        }
        for x in &p.expects {
            let e = explain(&p, &x.connection());
            for (_, m) in &e.misses {
                let _ = m.to_string();
            }
        }
    }
});
