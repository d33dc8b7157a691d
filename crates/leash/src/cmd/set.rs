//! `leash set update NAME FILE`: replaces the addresses of a `[[set]]` of the applied policy in one
//! transaction, and records the new sizes (see `state`) so that `leash status` and `leash
//! metrics` report large sets without reading a million elements back from the kernel.

use crate::args::FaultArgs;
use crate::exit::{EXIT_OK, EXIT_POLICY, UsageError, require_root};
use crate::state::State;
use anyhow::{Context, Result, anyhow};
use kernel::Firewall;
use ruleset::{Family, SetElements};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  sudo leash set update threat-feed feeds/threat-feed.txt
  curl -fsS https://feeds.example/drop.txt -o /tmp/drop.txt && sudo leash set update threat-feed /tmp/drop.txt --json";

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(subcommand)]
    pub command: SetCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SetCommand {
    /// Replace the addresses of a [[set]] of the applied policy with those in FILE, atomically.
    ///
    /// NAME is the set's name in the policy (`[[set]] name = "threat-feed"`, used by rules as
    /// "set:threat-feed"). FILE has one entry a line: an address (192.0.2.7), a network
    /// (198.51.100.0/24, 2001:db8::/32) or a range (192.0.2.10-192.0.2.20); `#` and `;` start
    /// comments. Entries are merged (overlapping and adjacent ones become one range).
    ///
    /// Both kernel sets of NAME (s_NAME_v4 and s_NAME_v6) are flushed and refilled in ONE netlink
    /// transaction: connections never see the set empty or half filled, and no rule, chain or
    /// other set changes (rule counters keep counting). If FILE has any bad line, every bad line
    /// is reported as FILE:LINE:COL and nothing is changed (exit 1); if the kernel refuses
    /// anything, it discards the whole transaction and the old addresses stay.
    ///
    /// The policy file is not read or changed: a later `leash apply` loads the set from the file
    /// the policy names again. The sizes of large sets are recorded in /run/leash (or
    /// $LEASH_STATE_DIR), so that `leash status` reports them without reading a million elements
    /// back. Needs root. Exit codes: 0 done, 1 FILE has errors, 2 the applied policy has no such
    /// set, 3 no leash table is active or the kernel refused the update.
    #[command(after_help = EXAMPLES)]
    Update {
        /// The set's name in the policy, e.g. threat-feed.
        name: String,
        /// The new list: one address, network or range a line.
        file: PathBuf,
        #[command(flatten)]
        fault: FaultArgs,
    },
}

pub fn run(a: &Args, json: bool, fw: &dyn Firewall, state: &State) -> Result<u8> {
    match &a.command {
        SetCommand::Update { name, file, fault } => update(name, file, fault.fault_inject, json, fw, state),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn update(name: &str, file: &Path, fault_inject: bool, json: bool, fw: &dyn Firewall, state: &State) -> Result<u8> {
    let t0 = Instant::now();
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}; nothing was changed", file.display()))?;
    let shown = file.display().to_string();
    let f = match policy::setfile::parse_set_file_bytes(&bytes) {
        Ok(f) => f,
        Err(errors) => {
            if json {
                crate::output::print_json(&serde_json::json!({
                    "ok": false,
                    "set": name,
                    "file": shown,
                    "errors": errors.iter().map(|e| serde_json::json!({
                        "file": shown, "line": e.line, "column": e.col, "message": e.message,
                    })).collect::<Vec<_>>(),
                }));
            } else {
                for e in &errors {
                    eprintln!("{shown}:{}:{}: error: {}", e.line, e.col, e.message);
                }
                let more = if errors.len() >= policy::setfile::MAX_ERRORS { " (stopped counting)" } else { "" };
                eprintln!("leash: {shown} has {} bad line(s){more}; nothing was changed", errors.len());
            }
            return Ok(EXIT_POLICY);
        }
    };
    let parse = t0.elapsed();
    require_root("set update")?;
    let (v4name, v6name) =
        (ruleset::compile::named_set_name(name, Family::Ipv4), ruleset::compile::named_set_name(name, Family::Ipv6));
    let v4 = SetElements::v4_of(&f.ranges);
    let v6 = SetElements::v6_of(&f.ranges);
    let (n4, n6) = (v4.len(), v6.len());
    // The kernel call checks this too; asking first gives the error before the progress line.
    match fw.status_with(&|_, _| Some(0)) {
        Ok(None) => return Err(no_table(name)),
        Ok(Some(st)) if !st.sets.iter().any(|s| s.name == v4name) => return Err(no_set(name, fw)),
        _ => {}
    }
    if !json && n4 + n6 >= 50_000 {
        // Large sets take a few seconds; say what is happening.
        eprintln!("leash: replacing set {name} with {} ranges in one transaction...", n4 + n6);
    }
    let contents =
        [kernel::SetContents { name: &v4name, elements: &v4 }, kernel::SetContents { name: &v6name, elements: &v6 }];
    let report = match fw.replace_set_elements(&contents, &kernel::ReplaceOptions { fault_inject }) {
        Ok(r) => r,
        Err(kernel::Error::NoSuchTable(_)) => return Err(no_table(name)),
        Err(kernel::Error::NoSuchSet { .. }) => return Err(no_set(name, fw)),
        Err(e @ (kernel::Error::Verify(_) | kernel::Error::Committed(_))) => {
            return Err(
                anyhow::Error::new(e).context(format!("set {name} was replaced, but checking it afterwards failed"))
            );
        }
        Err(e @ kernel::Error::Uncertain(_)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "replacing the addresses of set {name}: whether the kernel committed it is not known"
            )));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "replacing the addresses of set {name} failed; the kernel discarded the whole transaction, nothing changed"
            )));
        }
    };
    if let Err(e) = state.record_update(report.table_handle, &[(v4name.as_str(), n4), (v6name.as_str(), n6)]) {
        eprintln!("leash: warning: {e:#}; leash status will count large sets only up to {}", kernel::nft::COUNT_LIMIT);
    }
    let total = t0.elapsed();
    if json {
        crate::output::print_json(&serde_json::json!({
            "ok": true,
            "set": name,
            "file": shown,
            "entries": f.entries,
            "ranges": { "ipv4": n4, "ipv6": n6 },
            "kernel_sets": [v4name, v6name],
            "transaction": { "messages": report.messages, "bytes": report.bytes },
            "timing_ms": {
                "parse": ms(parse),
                "encode": ms(report.encode),
                "kernel": ms(report.send_and_ack),
                "verify": ms(report.verify),
                "total": ms(total),
            },
        }));
    } else {
        println!(
            "updated set {name} from {shown}: {} entries -> {n4} IPv4 and {n6} IPv6 ranges, replaced in one transaction ({} messages, {:.1} MB); parse {:.1} ms, kernel {:.1} ms, verify {:.1} ms, total {:.1} ms",
            f.entries,
            report.messages,
            report.bytes as f64 / 1e6,
            ms(parse),
            ms(report.send_and_ack),
            ms(report.verify),
            ms(total),
        );
    }
    Ok(EXIT_OK)
}

fn no_table(name: &str) -> anyhow::Error {
    anyhow!(
        "no leash table is active in this network namespace: apply a policy with a [[set]] named `{name}` first (leash apply POLICY); nothing was changed"
    )
}

/// A usage error (exit 2): the name typed is not a set of the applied policy.
fn no_set(name: &str, fw: &dyn Firewall) -> anyhow::Error {
    let have = policy_sets(fw);
    let have = if have.is_empty() { "it has none".to_string() } else { format!("it has: {}", have.join(", ")) };
    anyhow::Error::new(UsageError(format!(
        "the applied policy has no [[set]] named `{name}` ({have}); nothing was changed"
    )))
}

/// The `[[set]]` names of the applied table (from its `s_NAME_v4` sets), for error messages.
fn policy_sets(fw: &dyn Firewall) -> Vec<String> {
    // Every count "recorded" as 0: only the names are wanted, nothing is counted.
    let Ok(Some(st)) = fw.status_with(&|_, _| Some(0)) else { return Vec::new() };
    st.sets
        .iter()
        .filter_map(|s| s.name.strip_prefix("s_").and_then(|n| n.strip_suffix("_v4")).map(String::from))
        .collect()
}
