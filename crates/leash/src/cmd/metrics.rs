//! `leash metrics`: Prometheus metrics of the live firewall, served over HTTP (`--listen`) or
//! printed once (`--once`). The exposition is `observe::metrics`; this file runs the parts that
//! feed it: the kernel's counters read at each scrape, an NFLOG reader counting blocked
//! attempts by rule, and the `leash watch` detectors counting alerts.

use crate::args::{DetectArgs, interval};
use crate::exit::{EXIT_OK, UsageError};
use crate::state::State;
use anyhow::{Context, Result};
use kernel::Firewall;
use observe::detect::{AlertKind, Detector, LiveSource, Source};
use observe::metrics::{self, Format, Input};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum, PartialEq, Eq)]
pub enum FormatArg {
    /// Prometheus text format 0.0.4 (what `promtool check metrics` reads).
    #[default]
    Prometheus,
    /// OpenMetrics 1.0 text.
    Openmetrics,
}

/// Arguments of `leash metrics`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Metrics (all prefixed leash_):
  table_active                   1 when table inet leash exists
  policy_info{sha256,path}       the active policy
  rule_packets_total{rule}       kernel counters per policy rule (reset by every apply)
  rule_bytes_total{rule}
  set_elements{set}              elements per set (domain sets grow and shrink with DNS answers)
  blocked_packets_total{rule}    denied packets logged over NFLOG since leash metrics started
  nflog_lost_total               NFLOG messages the kernel could not deliver
  alerts_total{kind}             alerts of the `leash watch` detectors (conn-count,
                                 process-conn-count, unusual-port, half-open)
The DNS forwarder's counters are served by `leash dns --metrics ADDR`.

The server answers GET /metrics in the Prometheus text format, or OpenMetrics when the scraper's
Accept header asks for it. Every connection is served on its own: its request head must arrive
within 5 s (16 KiB, 64 headers at most), it serves one request and lives at most 30 s; of at most
256 connections, a new one replaces the one that has waited longest for its request. It reads the
namespace it runs in; bind it to loopback unless the network in between is trusted: the metrics
name rules, sets and the policy path.

Examples:
  leash metrics --listen 127.0.0.1:9798
  leash metrics --once > /var/lib/node_exporter/leash.prom    # for the textfile collector")]
pub struct Args {
    /// Address to serve http://ADDR/metrics on.
    #[arg(long, value_name = "ADDR", required_unless_present = "once", conflicts_with = "once")]
    pub listen: Option<SocketAddr>,
    /// Print the exposition once and exit (without NFLOG counts: there is no time to count).
    #[arg(long)]
    pub once: bool,
    /// Format of --once.
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
    /// The NFLOG group blocked attempts are logged to (default: the active policy's
    /// `log_group`, else 0).
    #[arg(long, value_name = "N")]
    pub log_group: Option<u16>,
    /// Do not read NFLOG (the kernel allows one reader per group: `leash log --follow` and
    /// `leash top` cannot read a group this process holds).
    #[arg(long)]
    pub no_log: bool,
    /// Seconds between two runs of the detectors.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub interval: f64,
    #[command(flatten)]
    pub detect: DetectArgs,
}

/// What the background thread has counted.
#[derive(Debug, Default)]
struct Counts {
    blocked: BTreeMap<String, u64>,
    alerts: BTreeMap<AlertKind, u64>,
    lost: Option<u64>,
}

pub fn run(a: &Args, _json: bool, fw: &dyn Firewall, state: &State) -> Result<u8> {
    let every = interval(a.interval, "--interval")?;
    let thresholds = a.detect.thresholds()?;
    if a.once {
        let mut source = LiveSource::open(None, None);
        let mut detector = Detector::new(thresholds);
        detector.check(&source.sockets().context("cannot read the sockets")?);
        let st = state.status(fw).context("cannot read the leash table")?;
        let input = Input { table: st.as_ref(), table_read: true, alerts: Some(detector.counts()), ..Input::default() };
        let format = if a.format == FormatArg::Openmetrics { Format::OpenMetrics } else { Format::Prometheus };
        print!("{}", metrics::render(&input, format));
        return Ok(EXIT_OK);
    }
    let Some(addr) = a.listen else { return Err(UsageError("give --listen ADDR or --once".into()).into()) };
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let group = a.log_group.or_else(|| crate::active::find(fw).policy().map(|p| p.defaults.log_group)).unwrap_or(0);
    let source = LiveSource::open((!a.no_log).then_some(group), None);
    if let Some(e) = source.log_error() {
        eprintln!("leash metrics: warning: no blocked-attempt counts: {e}");
    }
    let counts = Arc::new(Mutex::new(Counts { lost: source.log_lost(), ..Counts::default() }));
    let logging = source.logging();
    {
        let counts = counts.clone();
        std::thread::Builder::new()
            .name("detect".into())
            .spawn(move || count_loop(source, Detector::new(thresholds), every, &counts))?;
    }
    eprintln!(
        "leash metrics: serving http://{}/metrics{}",
        listener.local_addr()?,
        if logging { format!(" (blocked attempts from NFLOG group {group})") } else { String::new() }
    );
    // The scrapes are served from other threads: they read the table through netlink of their
    // own, in this process's network namespace.
    let state = state.clone();
    let exporter = move |format: Format| -> Result<String, String> {
        let st = state.status(&kernel::Netlink).map_err(|e| format!("cannot read the leash table: {e}"))?;
        let c = counts.lock().unwrap_or_else(|e| e.into_inner());
        let input = Input {
            table: st.as_ref(),
            table_read: true,
            blocked: logging.then_some(&c.blocked),
            nflog_lost: c.lost,
            alerts: Some(&c.alerts),
            dns: None,
        };
        Ok(metrics::render(&input, format))
    };
    crate::serve::metrics_forever(listener, exporter).context("serving metrics")?;
    Ok(EXIT_OK)
}

/// How often NFLOG events are tallied (the detectors run every `every`).
const TALLY: Duration = Duration::from_millis(500);

/// Counts blocked attempts and alerts, for the lifetime of the process.
fn count_loop(mut source: LiveSource, mut detector: Detector, every: Duration, counts: &Mutex<Counts>) {
    let mut last_check: Option<Instant> = None;
    loop {
        let blocked = source.blocked();
        let alerts = if last_check.is_none_or(|t| t.elapsed() >= every) {
            last_check = Some(Instant::now());
            // A failed look is skipped; the next one tries again.
            source.sockets().ok().map(|socks| {
                detector.check(&socks);
                detector.counts().clone()
            })
        } else {
            None
        };
        {
            let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
            for b in blocked.iter().filter(|b| b.action == "deny") {
                *c.blocked.entry(b.rule.clone()).or_default() += 1;
            }
            if let Some(a) = alerts {
                c.alerts = a;
            }
            c.lost = source.log_lost();
        }
        std::thread::sleep(TALLY);
    }
}
