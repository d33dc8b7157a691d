//! `leash watch`: polls the namespace's sockets and prints one line per alert (connection count
//! over a threshold, in total or per process; connections to unusual ports; many half-open
//! connections), as text or JSON lines. The detectors are `observe::detect`.

use crate::args::{DetectArgs, interval};
use crate::exit::EXIT_OK;
use anyhow::{Context, Result};
use kernel::Firewall;
use observe::detect::{Alert, Detector, Source};
use std::io::Write;
use std::time::{Duration, Instant};

/// Arguments of `leash watch`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Only egress is watched: connections this host opened to other hosts. Listening sockets,
connections a local listener accepted, loopback peers and finished (TIME_WAIT) connections are
left out. Each condition is reported once when it starts: a count alert again only after the
count was back at or under its threshold, an unusual port once per connection.

Text lines start with the time (UTC) and the alert's kind; with --json every line is one JSON
object with \"time\", \"kind\", the kind's fields and \"message\".

Examples:
  leash watch                                  # defaults, every 2 s, until interrupted
  leash watch --json --ports 22,53,443,5432    # JSON lines; PostgreSQL is usual here
  leash watch --count 1 --syn-sent 5           # one look, e.g. from cron")]
pub struct Args {
    /// Seconds between two looks at the sockets.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub interval: f64,
    /// Stop after N looks (default: run until interrupted).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub detect: DetectArgs,
}

pub fn run(a: &Args, json: bool, fw: &dyn Firewall) -> Result<u8> {
    let every = interval(a.interval, "--interval")?;
    let thresholds = a.detect.thresholds()?;
    // The active policy judges the connections; without one (or with errors in it now) alerts
    // carry no verdict, which is no reason to stop watching.
    let mut source = observe::detect::LiveSource::open(None, crate::active::find(fw).policy());
    if !json {
        eprintln!(
            "leash watch: every {}s; alerts over {} connections, over {} per process, at {} half-open{}, ports other than {}",
            a.interval,
            thresholds.max_conns,
            thresholds.max_conns_per_process,
            thresholds.syn_sent,
            if thresholds.syn_sent == 0 { " (off)" } else { "" },
            a.detect.ports
        );
    }
    watch(&mut source, Detector::new(thresholds), every, a.count, json, &mut std::io::stdout())?;
    Ok(EXIT_OK)
}

/// The loop, over any source (tests give a fixed one).
pub fn watch(
    source: &mut dyn Source,
    mut detector: Detector,
    every: Duration,
    count: Option<u64>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let mut looks = 0u64;
    loop {
        let started = Instant::now();
        let socks = source.sockets().context("cannot read the sockets")?;
        let time = now_text();
        for alert in detector.check(&socks) {
            writeln!(out, "{}", line(&alert, &time, json))?;
        }
        // Each line goes out at once: watch is read by people and by log shippers as it runs.
        out.flush()?;
        looks += 1;
        if count.is_some_and(|n| looks >= n) {
            return Ok(());
        }
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
}

fn now_text() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One output line for an alert seen at `time`.
pub fn line(alert: &Alert, time: &str, json: bool) -> String {
    if !json {
        return format!("{time} {alert}");
    }
    // Spliced by hand so that the keys keep a readable order (time, kind, the kind's fields,
    // message): serde_json's map sorts keys unless its preserve_order feature is on.
    let fields = serde_json::to_string(alert).expect("alerts serialise");
    let inner = fields.strip_prefix('{').and_then(|f| f.strip_suffix('}')).unwrap_or("");
    format!(
        "{{\"time\":{},{inner},\"message\":{}}}",
        serde_json::Value::from(time),
        serde_json::Value::from(alert.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use observe::detect::{Proto, Replay, Sock, State, Thresholds};

    fn sock(state: State, local: &str, remote: &str) -> Sock {
        Sock {
            proto: Proto::Tcp,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: 0,
            pid: Some(42),
            comm: Some("curl".into()),
            bytes_sent: None,
            bytes_received: None,
            verdict: Some("deny".into()),
            rule: Some("(default)".into()),
            host: None,
        }
    }

    #[test]
    fn watch_prints_each_alert_once() {
        let flood: Vec<Sock> =
            (0..30).map(|i| sock(State::SynSent, &format!("192.0.2.1:{}", 40000 + i), "198.51.100.66:443")).collect();
        let mut later = flood.clone();
        later.push(sock(State::Established, "192.0.2.1:39999", "198.51.100.7:6667"));
        let mut src = Replay::new(vec![vec![], flood, later], vec![]);
        let mut out = Vec::new();
        watch(&mut src, Detector::new(Thresholds::default()), Duration::ZERO, Some(3), false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let kinds: Vec<&str> = text.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
        assert_eq!(kinds, ["half-open:", "unusual-port:"], "{text}");
    }

    #[test]
    fn json_lines_carry_time_kind_fields_and_message() {
        let a = Alert::ConnCount { count: 3, threshold: 2 };
        assert_eq!(
            line(&a, "2026-01-02T03:04:05Z", true),
            r#"{"time":"2026-01-02T03:04:05Z","kind":"conn-count","count":3,"threshold":2,"message":"conn-count: 3 egress connections (more than 2)"}"#
        );
        assert_eq!(line(&a, "T", false), "T conn-count: 3 egress connections (more than 2)");
    }

    #[test]
    fn intervals_are_checked() {
        assert!(interval(0.0, "--interval").is_err());
        assert!(interval(f64::NAN, "--interval").is_err());
        assert_eq!(interval(0.5, "--interval").unwrap(), Duration::from_millis(500));
    }
}
