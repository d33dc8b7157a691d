//! `leash test`: run a policy's [[expect]] cases against the real kernel in throwaway network
//! namespaces, or with `--measure` what the policy costs new TCP connections.

use crate::exit::{EXIT_OK, EXIT_POLICY, require_root, usage};
use crate::load::{self, Loaded};
use crate::output;
use anyhow::{Context, Result, bail};
use policy::Policy;
use ruleset::compile::CompileOptions;
use std::path::{Path, PathBuf};

/// Arguments of `leash test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    pub policy: PathBuf,
    /// How long to wait for each connection before calling it timed out, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub measure: MeasureArgs,
}

/// `leash test --measure`: the performance impact assessment.
#[derive(Debug, Clone, clap::Args)]
pub struct MeasureArgs {
    /// Instead of checking the expectations, measure what the policy costs new TCP connections:
    /// connect latency (p50, p99) and connects per second to the destinations of the allowed TCP
    /// expectations, with the policy applied versus with no table, in interleaved rounds in
    /// scratch namespaces. Reported as ratios (policy / no table).
    #[arg(long)]
    pub measure: bool,
    /// Rounds of --measure (each measures both sides once).
    #[arg(long, default_value_t = 5, value_name = "N", requires = "measure")]
    pub rounds: usize,
    /// Sequential connects per side and round of --measure.
    #[arg(long, default_value_t = 2000, value_name = "N", requires = "measure")]
    pub connects: usize,
    /// Stop --measure after the round that passes this many seconds.
    #[arg(long, default_value_t = 120, value_name = "S", requires = "measure")]
    pub max_seconds: u64,
}

pub fn run(a: &Args, json: bool) -> Result<u8> {
    if a.measure.measure { measure(&a.policy, &a.measure, json) } else { test(&a.policy, a.timeout_ms, json) }
}

fn test(path: &Path, timeout_ms: u64, json: bool) -> Result<u8> {
    let Some((l, p)) = load::load_valid(path)? else { return Ok(EXIT_POLICY) };
    require_root("test")?;
    if p.expects.is_empty() {
        bail!("{} has no [[expect]] cases to test", l.display_name());
    }
    // The lab compiles the policy itself: once for now, and again for each `at` of the
    // expectations, with the policy's cgroups pointed at scratch cgroups.
    let opts = lab::RunOptions {
        timeout: std::time::Duration::from_millis(timeout_ms),
        compile: CompileOptions { now: None, ..l.compile_options() },
        ..Default::default()
    };
    if !json {
        eprintln!("leash: testing {} expectation(s) of {} in scratch namespaces...", p.expects.len(), l.display_name());
    }
    let report = lab::run_expectations(&p, &opts).context("could not run the expectations")?;
    let failed = report.rows.iter().filter(|r| !r.pass).count();
    if json {
        output::print_json(&serde_json::json!({
            "file": l.display_name(),
            "passed": report.rows.len() - failed,
            "failed": failed,
            "report": report,
        }));
    } else {
        print_report(&l, &p, &report);
        println!("{} passed, {} failed", report.rows.len() - failed, failed);
    }
    Ok(if failed == 0 { EXIT_OK } else { EXIT_POLICY })
}

fn print_report(l: &Loaded, p: &Policy, r: &lab::Report) {
    let dst_text = |row: &lab::Row| {
        let c = &row.case;
        let dst = match (c.dst, c.port) {
            (std::net::IpAddr::V6(a), Some(port)) => format!("[{a}]:{port}"),
            (a, Some(port)) => format!("{a}:{port}"),
            (a, None) => a.to_string(),
        };
        let mut t = match &c.name {
            Some(n) => format!("{n} = {dst}"),
            None => dst,
        };
        // The process and the time, when the expectation names them.
        if let Some(cg) = &c.cgroup {
            t += &format!(" from /{cg}");
        }
        if let Some(at) = row.at {
            t += &format!(" at {}", at.strftime("%a %Y-%m-%d %H:%M"));
        }
        t
    };
    // Columns as wide as their widest cell, so names of domain cases do not break the table.
    let dw = r.rows.iter().map(|row| dst_text(row).len()).max().unwrap_or(0).max("DESTINATION".len());
    let ow = r.rows.iter().map(|row| row.outcome.describe().len()).max().unwrap_or(0).max("OUTCOME".len());
    // A forwarded case has no local user: the column shows the workload it came from.
    let who = |row: &lab::Row| match &row.from {
        Some(f) => format!("from {f}"),
        None => crate::system::user_name(row.case.uid).unwrap_or_else(|| row.case.uid.to_string()),
    };
    let uw = r.rows.iter().map(|row| who(row).len()).max().unwrap_or(0).max(8);
    println!(
        "{:<4} {:<6} {:<6} {:<dw$} {:<uw$} {:<8} {:<8} {:<ow$} DECIDED BY",
        "#", "RESULT", "PROTO", "DESTINATION", "USER", "EXPECT", "KERNEL", "OUTCOME"
    );
    for row in &r.rows {
        let c = &row.case;
        let dst = dst_text(row);
        let user = who(row);
        println!(
            "{:<4} {:<6} {:<6} {:<dw$} {:<uw$} {:<8} {:<8} {:<ow$} {}",
            row.index + 1,
            if row.pass { "ok" } else { "FAIL" },
            c.proto.as_str(),
            dst,
            user,
            row.expected.as_str(),
            row.kernel.as_str(),
            row.outcome.describe(),
            row.decider
        );
        for problem in &row.problems {
            let (line, col) = policy::diag::line_col(&l.src, p.expects[row.index].span.start);
            println!("     {}:{line}:{col}: {problem}", l.display_name());
        }
    }
}

/// `leash test --measure`: connect latency and rate with the policy versus no table.
fn measure(path: &Path, a: &MeasureArgs, json: bool) -> Result<u8> {
    let Some((l, p)) = load::load_valid(path)? else { return Ok(EXIT_POLICY) };
    require_root("test --measure")?;
    if a.rounds == 0 || a.connects == 0 {
        usage!("--rounds and --connects must be at least 1");
    }
    let opts = lab::MeasureOptions {
        rounds: a.rounds,
        connects: a.connects,
        time_limit: std::time::Duration::from_secs(a.max_seconds),
        compile: CompileOptions { now: None, ..l.compile_options() },
        ..Default::default()
    };
    eprintln!(
        "leash: measuring {} in scratch namespaces: {} round(s) x {} connects, with the policy and with no table...",
        l.display_name(),
        a.rounds,
        a.connects
    );
    let progress = |line: &str| eprintln!("leash: {line}");
    let m = match lab::measure(&p, &opts, &progress) {
        Ok(m) => m,
        // Nothing to measure is the policy's business (exit 1), not a system failure.
        Err(e @ lab::LabError::NothingToMeasure(_)) => {
            eprintln!("leash: {}: {e}", l.display_name());
            return Ok(EXIT_POLICY);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("could not measure")),
    };
    if json {
        output::print_json(&serde_json::json!({ "file": l.display_name(), "measurement": m }));
    } else {
        print_measurement(&l, &m);
    }
    Ok(EXIT_OK)
}

fn print_measurement(l: &Loaded, m: &lab::Measurement) {
    println!(
        "performance impact of {} on new TCP connections ({} destination(s), {} kernel rules; {} interleaved round(s) x {} connects per side{})",
        l.display_name(),
        m.targets.len(),
        m.kernel_rules,
        m.rounds,
        m.connects_per_round,
        if m.stopped_early { ", stopped early by the time limit" } else { "" }
    );
    println!("{:<16} {:>12} {:>12} {:>12} {:>9}", "", "p50 connect", "p99 connect", "connects/s", "failed");
    for (name, s) in [("no table", &m.without_policy), ("policy applied", &m.with_policy)] {
        println!(
            "{:<16} {:>9.1} us {:>9.1} us {:>12.0} {:>9}",
            name, s.p50_us, s.p99_us, s.connects_per_s, s.failures
        );
    }
    println!("{:<16} {:>11.2}x {:>11.2}x {:>11.2}x", "ratio", m.ratio.p50, m.ratio.p99, m.ratio.connects_per_s);
    for s in &m.skipped {
        println!("skipped: {s}");
    }
    if m.with_policy.failures > 0 {
        println!(
            "note: {} connect(s) failed with the policy applied although their expectations allow them (rate or connection limits?)",
            m.with_policy.failures
        );
    }
}
