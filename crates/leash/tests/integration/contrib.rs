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
/// unit names, and `leash apply` writes its record to /run/leash (read by `status` and
/// `metrics`). The unit's apply runs with `+` (full privileges, none of the sandbox), as root,
/// so it can make and write /run/leash, root's (the state directory must be only root's to
/// write, see `state.rs`). A `RuntimeDirectory=` would not do: systemd gives it to the unit's
/// `User=`, the forwarder's user, and `leash apply` then refuses it.
#[test]
fn the_units_apply_can_write_the_state_directory() {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    let s = service_settings(&text);
    let get = |k: &str| s.iter().filter(|(key, _)| key == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(get("ProtectSystem"), ["strict"], "the premise of this test");
    let applies: Vec<&str> = get("ExecStartPre").into_iter().filter(|c| c.contains(" apply ")).collect();
    assert!(!applies.is_empty(), "the unit applies the policy before the forwarder starts: {text}");
    for c in applies {
        assert!(c.starts_with('+'), "the apply must run with full privileges (`+`), outside the sandbox: {c}");
    }
    let user = get("User");
    let runs_as_root = user.is_empty() || user == ["root"];
    assert!(runs_as_root || get("RuntimeDirectory").is_empty(), "RuntimeDirectory= would be owned by User={user:?}: {text}");
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
