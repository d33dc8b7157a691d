//! `leash apply`, `status` and `disable` against the real kernel, each test in its own namespaces.

use crate::harness::*;
use kernel::netns::NetNs;
use sha2::Digest;

/// The oracle: `nft -f` of `leash compile` in one namespace, `leash apply` in another, same listing.
/// Also nft JSON (`nft -j -f` of `leash compile --format json`) in a third.
#[test]
fn apply_matches_nft_loading_the_compiled_script() {
    if !need_root("apply_matches_nft_loading_the_compiled_script") {
        return;
    }
    for name in EXAMPLES {
        let path = example(name);
        let path = path.to_str().unwrap();
        let text = leash(&["compile", path]);
        assert!(text.ok(), "{text}");
        let by_nft = NetNs::new().unwrap();
        nft_load(&by_nft, &text.stdout);

        let by_leash = NetNs::new().unwrap();
        let r = leash_in(&by_leash, &["apply", path]);
        assert!(r.ok(), "{r}");
        let want = list_leash(&by_nft).expect("nft made the table");
        let got = list_leash(&by_leash).expect("leash made the table");
        assert_eq!(want, got, "{name}: listings differ{r}");

        let json = leash(&["compile", "--format", "json", path]);
        assert!(json.ok(), "{json}");
        let by_json = NetNs::new().unwrap();
        let (ok, _, err) = nft_raw(&by_json, &["-j", "-f", "-"], Some(&json.stdout));
        assert!(ok, "nft -j -f rejected the JSON: {err}\n{}", json.stdout);
        // nft 1.0.6's JSON parser ignores a table's "comment" (later versions read it), so the
        // comparison leaves the table comment out.
        let no_table_comment = |s: &str| s.lines().filter(|l| !l.starts_with("\tcomment ")).collect::<Vec<_>>().join("\n");
        assert_eq!(
            no_table_comment(&want),
            no_table_comment(&list_leash(&by_json).expect("nft -j made the table")),
            "{name}: JSON listing differs"
        );
    }
    root_has_no_leash_table();
}

#[test]
fn failed_apply_keeps_the_old_table() {
    if !need_root("failed_apply_keeps_the_old_table") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let web = example("web-server");
    let r = leash_in(&ns, &["apply", web.to_str().unwrap()]);
    assert!(r.ok(), "{r}");
    let before = list_leash(&ns).unwrap();

    // The kernel rejects the transaction (an invalid last message): exit 3, nothing changes.
    let db = example("database-server");
    let r = leash_in(&ns, &["apply", "--fault-inject", db.to_str().unwrap()]);
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stderr.contains("nothing changed"), "{r}");
    assert_eq!(list_leash(&ns).unwrap(), before, "{r}");

    // Bad input never reaches the kernel: a malformed policy and an unknown user.
    let dir = TempDir::new("bad");
    for (file, text) in [
        ("syntax.toml", "version = 1\n[[rule]\nname = \"x\"\n"),
        ("user.toml", "version = 1\n[[rule]]\nname = \"x\"\naction = \"allow\"\nuser = \"no-such-user-leash\"\n"),
    ] {
        let p = dir.file(file, text);
        let r = leash_in(&ns, &["apply", &p]);
        assert_eq!(r.code, Some(1), "{r}");
        assert!(r.stderr.contains("nothing was changed"), "{r}");
        assert_eq!(list_leash(&ns).unwrap(), before, "{r}");
    }
}

#[test]
fn other_tables_are_never_touched() {
    if !need_root("other_tables_are_never_touched") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let mine = "table inet mine {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\ttcp dport 22 counter accept\n\t}\n}\ntable ip filter {\n\tchain OUTPUT {\n\t\ttype filter hook output priority 0; policy accept;\n\t}\n}\n";
    nft_load(&ns, mine);
    let others = |ns: &NetNs| {
        let (_, a, _) = nft_raw(ns, &["list", "table", "inet", "mine"], None);
        let (_, b, _) = nft_raw(ns, &["list", "table", "ip", "filter"], None);
        format!("{a}{b}")
    };
    let before = others(&ns);
    assert!(before.contains("tcp dport 22"), "{before}");
    for name in EXAMPLES {
        let r = leash_in(&ns, &["apply", example(name).to_str().unwrap()]);
        assert!(r.ok(), "{r}");
        assert_eq!(others(&ns), before, "{r}");
    }
    let r = leash_in(&ns, &["disable"]);
    assert!(r.ok(), "{r}");
    assert!(list_leash(&ns).is_none(), "{r}");
    assert_eq!(others(&ns), before, "{r}");
    // Disabling again is not an error.
    let r = leash_in(&ns, &["disable", "--json"]);
    assert!(r.ok(), "{r}");
    assert_eq!(r.json()["removed"], false, "{r}");
}

#[test]
fn status_shows_policy_hash_and_counters() {
    if !need_root("status_shows_policy_hash_and_counters") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let r = leash_in(&ns, &["status", "--json"]);
    assert!(r.ok(), "{r}");
    assert_eq!(r.json()["active"], false, "{r}");

    let web = example("web-server");
    let r = leash_in(&ns, &["apply", "--json", web.to_str().unwrap()]);
    assert!(r.ok(), "{r}");
    let sha = r.json()["sha256"].as_str().unwrap().to_string();
    let digest: String = sha2::Sha256::digest(std::fs::read(&web).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sha, digest, "{r}");

    // Traffic over loopback inside the namespace: the @loopback rule counts it.
    ns.run(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        for _ in 0..3 {
            let _c = std::net::TcpStream::connect(a).unwrap();
            let _s = l.accept().unwrap();
        }
    });
    let r = leash_in(&ns, &["status", "--json"]);
    assert!(r.ok(), "{r}");
    let j = r.json();
    assert_eq!(j["active"], true, "{r}");
    assert_eq!(j["sha256"].as_str(), Some(sha.as_str()), "{r}");
    assert!(j["policy"].as_str().unwrap().ends_with("examples/web-server.toml"), "{r}");
    let rules = j["rules"].as_array().unwrap();
    let lo = rules.iter().find(|x| x["rule"] == "@loopback").expect("loopback counter");
    assert!(lo["packets"].as_u64().unwrap() >= 6, "{r}");
    let names: Vec<&str> = rules.iter().map(|x| x["rule"].as_str().unwrap()).collect();
    for want in ["dns", "ntp", "package-mirrors", "smtp-submission", "database", "@default"] {
        assert!(names.contains(&want), "{want} missing: {r}");
    }
    let sets = j["sets"].as_array().unwrap();
    let mirrors = sets.iter().find(|s| s["name"] == "r_package-mirrors_v4").expect("mirror set");
    assert_eq!(mirrors["elements"], 1, "{r}");

    let r = leash_in(&ns, &["status"]);
    assert!(r.ok() && r.stdout.contains("leash: active") && r.stdout.contains("smtp-submission"), "{r}");
}

#[test]
fn apply_without_root_fails_cleanly() {
    // As root, run the command as `nobody`; otherwise as ourselves. Either way it must refuse.
    let mut cmd = std::process::Command::new(leash_bin());
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.args(["apply", example("web-server").to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("needs root") && stderr.contains("nothing was changed"), "{stderr}");
}

/// Issue 12, items 8 and 14: `leash apply` and `leash status` while a forwarder-like writer commits
/// set inserts in the same namespace all succeed, and an apply never reports "nothing changed"
/// for a table the kernel committed.
#[test]
fn apply_and_status_succeed_under_forwarder_load() {
    if !need_root("apply_and_status_succeed_under_forwarder_load") {
        return;
    }
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = TempDir::new("apply-load");
    let mut policy = String::from(
        "version = 1\n[dns]\nupstreams = [\"203.0.113.53\"]\n[[rule]]\nname = \"cdn\"\naction = \"allow\"\nports = [443]\nto = [\"*.cdn.example.test\"]\n",
    );
    // Enough rules that listing them takes several replies (a commit can land between two).
    for i in 0..150 {
        policy.push_str(&format!("[[rule]]\nname = \"r{i}\"\naction = \"allow\"\nproto = \"tcp\"\nports = [{}]\nto = [\"198.18.{}.{}\"]\n", 1000 + i, i / 200, i % 200 + 1));
    }
    let path = dir.file("load.toml", &policy);
    let ns = Arc::new(NetNs::new().unwrap());
    let r = leash_in(&ns, &["apply", &path]);
    assert!(r.ok(), "{r}");
    let stop = Arc::new(AtomicBool::new(false));
    let inserts = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (ns, stop, inserts) = (ns.clone(), stop.clone(), inserts.clone());
        std::thread::spawn(move || {
            let mut w = ns.run(kernel::SetWriter::open).unwrap();
            let t0 = std::time::Instant::now();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < std::time::Duration::from_secs(120) {
                i = i.wrapping_add(1);
                let addr = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xc613_0000 + i % 500));
                let e = kernel::TimedElement { set: "r_cdn_d4", addr, timeout_ms: 60_000, name: Some("a.cdn.example.test") };
                if w.add_timed(ruleset::TABLE_NAME, &[e]).is_ok() {
                    inserts.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let mut failed = Vec::new();
    for _ in 0..8 {
        let r = leash_in(&ns, &["apply", &path]);
        if !r.ok() {
            failed.push(r.to_string());
        }
        let r = leash_in(&ns, &["status"]);
        if !r.ok() {
            failed.push(r.to_string());
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let n = inserts.load(Ordering::Relaxed);
    assert!(n > 50, "only {n} concurrent inserts");
    assert!(failed.is_empty(), "{} of 16 commands failed under {n} concurrent inserts:{}", failed.len(), failed.join("\n"));
}
