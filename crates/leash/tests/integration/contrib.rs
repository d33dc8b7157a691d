//! The files leash ships besides the binary (`contrib/`): the systemd unit.

use crate::harness::*;
use std::path::{Path, PathBuf};

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/systemd/leash-dns.service")
}

/// The `[Service]` settings of a unit file as (key, value) pairs, in order.
fn service_settings(text: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Issue 12 item 13: under `ProtectSystem=strict` the file system is read-only but for what the
/// unit names; `leash apply` (ExecStartPre) writes its record to /run/leash, so the unit must own
/// it as its runtime directory: root's (the state directory must be only root's to write, see
/// `state.rs`), 0755, and kept when the unit stops (the table outlives the forwarder, and so
/// must the record that describes it).
#[test]
fn the_unit_owns_the_state_directory() {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    let s = service_settings(&text);
    let get = |k: &str| s.iter().filter(|(key, _)| key == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(get("ProtectSystem"), ["strict"], "the premise of this test");
    assert_eq!(get("RuntimeDirectory"), ["leash"], "{text}");
    assert_eq!(get("RuntimeDirectoryMode"), ["0755"], "{text}");
    assert_eq!(get("RuntimeDirectoryPreserve"), ["yes"], "{text}");
    // systemd gives the runtime directory to the unit's User=, and `leash apply` (as root) then
    // refuses it: a unit with another user needs the directory made otherwise (tmpfiles.d).
    for u in get("User") {
        assert!(u == "root", "User={u} would own /run/leash: {text}");
    }
}

/// The unit as systemd reads it (with the binary path pointing at the one under test, which
/// `systemd-analyze verify` checks is executable). It needs no running systemd.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let have = std::process::Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have {
        assert!(std::env::var_os("CI").is_none(), "systemd-analyze is missing and CI is set (test.sh installs systemd)");
        eprintln!("the_unit_passes_systemd_analyze_verify: skipped, no systemd-analyze");
        return;
    }
    let dir = TempDir::new("unit");
    let text = std::fs::read_to_string(unit_path()).unwrap().replace("/usr/local/bin/leash", leash_bin());
    let unit = dir.file("leash-dns.service", &text);
    let r = run_cmd(None, "systemd-analyze", &["verify", &unit], None);
    assert!(r.ok() && r.stderr.trim().is_empty() && r.stdout.trim().is_empty(), "{r}");
}
