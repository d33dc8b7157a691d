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
