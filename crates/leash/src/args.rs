//! Command-line arguments that more than one command takes: the fault-injection flag of the
//! commands that change the kernel, and the detector thresholds and intervals of the commands
//! that watch the host.

use crate::exit::UsageError;
use anyhow::Result;
use observe::detect::{self, Thresholds};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct FaultArgs {
    /// Testing aid: append an invalid message to the transaction so the kernel rejects it, to
    /// prove that a failed apply changes nothing.
    #[arg(long, hide = true)]
    pub fault_inject: bool,
}

/// Detector thresholds, shared by `leash watch` and `leash metrics`.
#[derive(Debug, Clone, clap::Args)]
pub struct DetectArgs {
    /// Alert when there are more than N egress connections in total.
    #[arg(long, value_name = "N", default_value_t = Thresholds::default().max_conns)]
    pub max_conns: usize,
    /// Alert when one process holds more than N egress connections.
    #[arg(long, value_name = "N", default_value_t = Thresholds::default().max_conns_per_process)]
    pub max_conns_per_process: usize,
    /// Alert when N or more egress connections are half-open (SYN_SENT: a scan, a flood, or
    /// connects that a drop rule leaves hanging); 0 turns this alert off.
    #[arg(long, value_name = "N", default_value_t = Thresholds::default().syn_sent)]
    pub syn_sent: usize,
    /// Remote ports that are usual on this host, as numbers and FROM-TO ranges separated by
    /// commas; a connection to any other port is an unusual-port alert. An empty list makes every
    /// port unusual.
    #[arg(long, value_name = "LIST", default_value = "22,53,80,123,443,587,853,993")]
    pub ports: String,
}

impl DetectArgs {
    pub fn thresholds(&self) -> Result<Thresholds> {
        let usual_ports = detect::parse_ports(&self.ports).map_err(|e| UsageError(format!("--ports: {e}")))?;
        Ok(Thresholds {
            max_conns: self.max_conns,
            max_conns_per_process: self.max_conns_per_process,
            syn_sent: self.syn_sent,
            usual_ports,
        })
    }
}

/// Parses an interval in seconds: positive and at most an hour.
pub fn interval(s: f64, flag: &str) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
        return Err(UsageError(format!("{flag} must be between 0 and 3600 seconds, not {s}")).into());
    }
    Ok(Duration::from_secs_f64(s))
}
