//! `leash check`: parse and validate a policy, print every error and warning as FILE:LINE:COL.

use crate::exit::{EXIT_OK, EXIT_POLICY, usage};
use crate::load;
use crate::output;
use anyhow::Result;
use std::path::PathBuf;

/// Arguments of `leash check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file (TOML).
    pub policy: PathBuf,
    /// Treat warnings as errors (exit 1 when there are any).
    #[arg(long)]
    pub deny_warnings: bool,
    /// Date used for the review-overdue lint (YYYY-MM-DD; default: today).
    #[arg(long, value_name = "DATE")]
    pub today: Option<String>,
}

fn parse_date(s: &str) -> Result<policy::Date> {
    let Ok(d) = s.parse::<jiff::civil::Date>() else { usage!("invalid date {s:?} (expected YYYY-MM-DD)") };
    Ok(d.into())
}

pub fn run(a: &Args, json: bool) -> Result<u8> {
    crate::exit::end_quietly_on_closed_pipe();
    let today = match &a.today {
        Some(s) => parse_date(s)?,
        None => crate::system::today(),
    };
    let l = load::load(&a.policy, today)?;
    let failed = l.errors() > 0 || (a.deny_warnings && l.warnings() > 0);
    if json {
        output::print_json(&serde_json::json!({
            "file": l.display_name(),
            "ok": !failed,
            "errors": l.errors(),
            "warnings": l.warnings(),
            "rules": l.policy.as_ref().map(|p| p.rules.len()),
            "expectations": l.policy.as_ref().map(|p| p.expects.len()),
            "sha256": l.sha256,
            "forwarded": l.policy.as_ref().map(policy::forward::summary),
            "diagnostics": load::json_diagnostics(&l),
        }));
    } else {
        load::print_diagnostics(&l);
        // Not a warning: what the policy does with containers' and VMs' traffic, said every time.
        if let Some(p) = &l.policy {
            println!("{}: note: {}", l.display_name(), policy::forward::summary(p));
        }
        match &l.policy {
            Some(p) => println!(
                "{}: {} ({} rules, {} expectations; {} error(s), {} warning(s))",
                l.display_name(),
                if failed { "failed" } else { "ok" },
                p.rules.len(),
                p.expects.len(),
                l.errors(),
                l.warnings()
            ),
            None => println!("{}: failed ({} error(s))", l.display_name(), l.errors()),
        }
    }
    Ok(if failed { EXIT_POLICY } else { EXIT_OK })
}
