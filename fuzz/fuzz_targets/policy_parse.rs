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
    /// Two set files (one good, one bad) and a tiny country database.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        match path {
            "feed.txt" => Ok(b"198.51.100.0/24\n203.0.113.7 ; x\n2001:db8:bad::/48\n".to_vec()),
            "bad.txt" => Ok(b"192.0.2.1\nnope\n".to_vec()),
            "geo.mmdb" => Ok(country_db().to_vec()),
            "geo.csv" => Ok(b"192.0.2.0,192.0.2.127,XA\n2001:db8:1::,2001:db8:1::ffff,XB\n".to_vec()),
            _ => Err(format!("{path}: no such file")),
        }
    }
    fn cgroup2_prefix(&self) -> Option<String> {
        Some("unified".into())
    }
    fn cgroup_id(&self, path: &str) -> Option<u64> {
        (path == "system.slice/nginx.service").then_some(4242)
    }
}

fn country_db() -> &'static [u8] {
    static DB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DB.get_or_init(|| {
        let nets: Vec<(ipnet::IpNet, &str)> =
            vec![("192.0.2.0/25".parse().unwrap(), "XA"), ("2001:db8:1::/48".parse().unwrap(), "XB")];
        policy::geo::testdb::write_mmdb(&nets, 6)
    })
}

fuzz_target!(|data: &[u8]| {
    // The binary reads a policy as bytes: invalid UTF-8 is a diagnostic at its position, in the
    // text with replacements that the diagnostics are rendered against.
    let src = match diag::decode(data) {
        Ok(src) => src,
        Err((lossy, diags)) => {
            assert!(!diags.is_empty() && diags.len() <= diag::MAX_UTF8_ERRORS);
            // The text up to the first bad byte is the file's.
            assert!(data.starts_with(&lossy.as_bytes()[..diags[0].span.start]));
            for d in &diags {
                assert_eq!(d.severity, Severity::Error);
                assert_eq!(&lossy[d.span.clone()], "\u{fffd}", "the span is the replacement");
                let _ = diag::render("fuzz.toml", &lossy, d);
            }
            return;
        }
    };
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
        // Every valid policy compiles, at any time and imitating any expectation's time.
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let t = ruleset::compile(&p, &ruleset::compile::CompileOptions { now: Some(now), ..Default::default() });
        let _ = ruleset::render::nft_text(&t);
        for x in p.expects.iter().filter_map(|x| x.at) {
            let opts = ruleset::compile::CompileOptions { imitate: Some((now, x)), ..Default::default() };
            let _ = ruleset::compile(&p, &opts);
        }
    }
});
