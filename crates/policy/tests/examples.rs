//! The example policies shipped in /examples load without errors or warnings, and each of their
//! expectations gets the verdict it names from `explain`.

use policy::{Date, Resolver, diag, explain, lint, load};

/// The accounts the examples name, with Debian's ids.
#[derive(Debug)]
struct Debian;

impl Resolver for Debian {
    fn user(&self, name: &str) -> Option<u32> {
        Some(match name {
            "root" => 0,
            "www-data" => 33,
            "backup" => 34,
            "_apt" => 42,
            "nobody" => 65534,
            // The DNS forwarder's user, as contrib/sysusers.d/leash.conf creates it.
            "leash-dns" => 998,
            _ => return None,
        })
    }
    fn group(&self, name: &str) -> Option<u32> {
        Some(match name {
            "root" => 0,
            "www-data" => 33,
            "backup" => 34,
            "users" => 100,
            "nogroup" => 65534,
            _ => return None,
        })
    }
    fn primary_group(&self, uid: u32) -> Option<u32> {
        Some(match uid {
            0 => 0,
            33 => 33,
            34 => 34,
            42 | 65534 => 65534,
            _ => return None,
        })
    }
    /// The files next to the examples (feeds).
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        std::fs::read(format!("{dir}/{path}")).map_err(|e| format!("{path}: {e}"))
    }
    /// A hybrid host where the services the examples name run.
    fn cgroup2_prefix(&self) -> Option<String> {
        Some("unified".into())
    }
    fn cgroup_id(&self, path: &str) -> Option<u64> {
        (path == "system.slice/nginx.service").then_some(4242)
    }
}

#[test]
fn examples_load_cleanly_and_meet_their_expectations() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let Ok(entries) = std::fs::read_dir(dir) else {
        eprintln!("no examples directory; nothing to check");
        return;
    };
    let mut checked = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.display().to_string();
        let src = std::fs::read_to_string(&path).unwrap();
        let (p, d) = load(&src, &Debian);
        let rendered: String = d.iter().map(|d| diag::render(&name, &src, d)).collect();
        let p = p.unwrap_or_else(|| panic!("{rendered}"));
        assert!(d.is_empty(), "{rendered}");
        let warnings = lint::lint(&p, Date { year: 2026, month: 6, day: 1 });
        let rendered: String = warnings.iter().map(|d| diag::render(&name, &src, d)).collect();
        assert!(warnings.is_empty(), "{rendered}");
        for (i, x) in p.expects.iter().enumerate() {
            let e = explain(&p, &x.connection());
            assert_eq!(
                e.verdict,
                x.verdict,
                "{name}: expectation {i} ({:?}) decided by {:?}",
                x.connection(),
                e.decider
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "no example policies in {dir}");
}
