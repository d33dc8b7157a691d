//! Prometheus metrics of the live firewall (`leash metrics`, `leash dns --metrics`): per-rule
//! packet and byte counters, blocked attempts by rule, set sizes, the active policy, the alert
//! counters of the detectors and the DNS forwarder's counters. The HTTP server that serves them
//! is the binary's (`serve.rs`).
//!
//! Every scrape is a fresh snapshot: the kernel's counters are read then, so the exposition is
//! built from plain values ([`Input`]) by a collector that writes every family in a fixed order
//! (the `prometheus-client` families keep series in a hash map, whose order changes from scrape
//! to scrape). Both text formats are offered: Prometheus 0.0.4 (what `promtool check metrics`
//! reads, the default) and OpenMetrics 1.0 (when the scraper asks for it in `Accept`).
//!
//! Counters of the kernel restart at zero when a policy is applied again (the table is replaced);
//! Prometheus treats a counter that goes down as a reset, so `rate()` stays right.

use crate::detect::AlertKind;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

/// Everything one exposition shows; `None` leaves a group of metrics out.
#[derive(Debug, Default, Clone)]
pub struct Input<'a> {
    /// Table `inet leash` as `kernel::status` read it; `None` with `table_read` when there is
    /// no table.
    pub table: Option<&'a kernel::TableStatus>,
    /// Whether the table was looked for at all (a `leash dns` endpoint shows only DNS counters).
    pub table_read: bool,
    /// Denied packets NFLOG reported since the listener started, by policy rule; `None` without
    /// a listener.
    pub blocked: Option<&'a BTreeMap<String, u64>>,
    /// Packets the kernel could not hand to the NFLOG listener (its queue overflowed).
    pub nflog_lost: Option<u64>,
    /// Alerts raised by the detectors since they started, by kind.
    pub alerts: Option<&'a BTreeMap<AlertKind, u64>>,
    /// The DNS forwarder's counters (`dns::StatsSnapshot::fields`).
    pub dns: Option<&'a [(&'static str, u64)]>,
}

/// The two text formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text (ends with `# EOF`).
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format a scraper asks for in its `Accept` header: OpenMetrics only when it names it.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.to_ascii_lowercase().contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }
}

/// Splits leash's table comment (`leash sha256:HEX PATH`) into hash and path.
pub fn parse_table_comment(c: &str) -> Option<(&str, &str)> {
    let rest = c.strip_prefix("leash sha256:")?;
    let (hash, path) = rest.split_once(' ').unwrap_or((rest, ""));
    (!hash.is_empty()).then_some((hash, path))
}

/// Packets and bytes per policy rule: the kernel rules sharing a comment (one per address
/// family and protocol, see ARCHITECTURE) summed, in chain order. Rules without a comment are
/// named by their handle.
pub fn rule_counters(st: &kernel::TableStatus) -> Vec<(String, kernel::Counter)> {
    let mut out: Vec<(String, kernel::Counter)> = Vec::new();
    for rule in st.chains.iter().flat_map(|c| &c.rules) {
        let Some(c) = rule.counter else { continue };
        let name = rule.comment.clone().unwrap_or_else(|| format!("handle {}", rule.handle));
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, sum)) => {
                sum.packets += c.packets;
                sum.bytes += c.bytes;
            }
            None => out.push((name, c)),
        }
    }
    out
}

type Labels = Vec<(String, String)>;
const NO_LABELS: Labels = Vec::new();

/// One metric family with its series, in the order they are written.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: String,
    kind: MetricType,
    series: Vec<(Labels, u64)>,
}

impl Family {
    fn new(name: &'static str, help: impl Into<String>, kind: MetricType) -> Family {
        Family { name, help: help.into(), kind, series: Vec::new() }
    }
    fn with(mut self, labels: &[(&str, &str)], v: u64) -> Family {
        self.series.push((labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), v));
        self
    }
}

/// Writes prepared families in order.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut m = encoder.encode_descriptor(f.name, &f.help, None, f.kind)?;
            for (labels, v) in &f.series {
                let v = *v;
                match f.kind {
                    MetricType::Info => Info::new(labels.clone()).encode(m.encode_family(&NO_LABELS)?)?,
                    MetricType::Counter => ConstCounter::new(v).encode(m.encode_family(labels)?)?,
                    // Gauges: set sizes and flags, far below i64::MAX.
                    _ => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(m.encode_family(labels)?)?,
                }
            }
        }
        Ok(())
    }
}

fn families(input: &Input<'_>) -> Vec<Family> {
    let mut fams = Vec::new();
    if input.table_read {
        fams.push(
            Family::new("table_active", "1 when table inet leash exists in this network namespace", MetricType::Gauge)
                .with(&[], input.table.is_some() as u64),
        );
    }
    if let Some(st) = input.table {
        if let Some((hash, path)) = st.comment.as_deref().and_then(parse_table_comment) {
            fams.push(
                Family::new("policy", "The active policy: SHA-256 of the policy file and its path", MetricType::Info)
                    .with(&[("sha256", hash), ("path", path)], 1),
            );
        }
        let rules = rule_counters(st);
        let mut packets = Family::new(
            "rule_packets",
            "Packets counted by the kernel rules of each policy rule (reset when the policy is applied again)",
            MetricType::Counter,
        );
        let mut bytes = Family::new(
            "rule_bytes",
            "Bytes counted by the kernel rules of each policy rule (reset when the policy is applied again)",
            MetricType::Counter,
        );
        for (name, c) in &rules {
            packets = packets.with(&[("rule", name)], c.packets);
            bytes = bytes.with(&[("rule", name)], c.bytes);
        }
        fams.push(packets);
        fams.push(bytes);
        let mut sets = Family::new(
            "set_elements",
            "Elements of each set of the table (ranges in interval sets; above 16384, the count leash loaded, or a lower bound if it has none)",
            MetricType::Gauge,
        );
        for s in &st.sets {
            sets = sets.with(&[("set", &s.name)], s.elements.value() as u64);
        }
        fams.push(sets);
    }
    if let Some(b) = input.blocked {
        let mut f = Family::new(
            "blocked_packets",
            "Denied packets reported over NFLOG since leash metrics started, by policy rule (a dropped TCP connect retransmits its SYN, each logged)",
            MetricType::Counter,
        );
        for (rule, n) in b {
            f = f.with(&[("rule", rule)], *n);
        }
        fams.push(f);
    }
    if let Some(lost) = input.nflog_lost {
        fams.push(
            Family::new("nflog_lost", "NFLOG messages the kernel could not deliver to leash metrics", MetricType::Counter)
                .with(&[], lost),
        );
    }
    if let Some(a) = input.alerts {
        let mut f = Family::new("alerts", "Alerts raised by the detectors since leash metrics started, by kind", MetricType::Counter);
        for k in AlertKind::ALL {
            f = f.with(&[("kind", k.as_str())], a.get(&k).copied().unwrap_or(0));
        }
        fams.push(f);
    }
    if let Some(d) = input.dns {
        for (name, v) in d {
            fams.push(Family::new(dns_metric_name(name), dns_help(name), MetricType::Counter).with(&[], *v));
        }
    }
    fams
}

/// `dns_<field>` for a forwarder counter. The names are the `dns::Stats` field names, which are
/// valid metric names already; the leaked strings are a dozen, made once per name.
fn dns_metric_name(field: &str) -> &'static str {
    use std::sync::Mutex;
    static NAMES: Mutex<BTreeMap<String, &'static str>> = Mutex::new(BTreeMap::new());
    let mut m = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(field.to_string()).or_insert_with(|| Box::leak(format!("dns_{field}").into_boxed_str()))
}

fn dns_help(field: &str) -> String {
    let h = match field {
        "queries" => "Valid client queries (UDP and TCP)",
        "cache_hits" => "Queries answered from the cache",
        "upstream_queries" => "Queries sent to upstreams (every try)",
        "upstream_failures" => "SERVFAIL answers sent because no upstream gave a usable answer",
        "malformed_dropped" => "Client packets dropped as malformed",
        "mismatched_responses" => "Upstream packets discarded (unknown id, wrong question, unparsable)",
        "refused_names" => "Queries answered NXDOMAIN because a deny rule refuses the name",
        "rebinding_blocked" => "Addresses removed from answers by the rebinding guard",
        "inserted_elements" => "Set elements the kernel acknowledged",
        "insert_batches" => "Set element batches sent to the kernel",
        "insert_errors" => "Set element batches that failed",
        "overload_dropped" => "Queries dropped because too many were waiting",
        other => return format!("DNS forwarder counter {other}"),
    };
    h.to_string()
}

/// The exposition of `input` in `format`.
pub fn render(input: &Input<'_>, format: Format) -> String {
    let mut reg = Registry::with_prefix("leash");
    reg.register_collector(Box::new(Families(families(input))));
    let mut out = String::new();
    // Writing into a String cannot fail, and every name and label here is valid.
    let res = match format {
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, &reg),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &reg),
    };
    res.expect("encoding metrics into a string");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::{ChainStatus, Counter, ElementCount, RuleStatus, SetStatus, TableStatus};

    fn table() -> TableStatus {
        let rule = |handle, comment: &str, packets, bytes| RuleStatus {
            handle,
            comment: Some(comment.into()),
            counter: Some(Counter { packets, bytes }),
        };
        TableStatus {
            comment: Some("leash sha256:00ff /etc/leash/policy.toml".into()),
            chains: vec![ChainStatus {
                name: "output".into(),
                handle: 1,
                hook: None,
                hook_num: Some(3),
                priority: Some(0),
                policy: None,
                chain_type: Some("filter".into()),
                rules: vec![
                    rule(2, "loopback", 10, 1000),
                    rule(3, "web", 3, 180),
                    rule(4, "web", 4, 240),
                    RuleStatus { handle: 5, comment: Some("odd \"name\"".into()), counter: None },
                    rule(6, "default", 7, 420),
                ],
            }],
            sets: vec![SetStatus {
                name: "r_web_d4".into(),
                key: None,
                key_type: 7,
                key_len: 4,
                flags: 0,
                interval: false,
                timeout: true,
                elements: ElementCount::Exact(2),
            }],
        }
    }

    #[test]
    fn rule_counters_sum_kernel_rules_per_policy_rule() {
        let got = rule_counters(&table());
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["loopback", "web", "default"]);
        assert_eq!(got[1].1, Counter { packets: 7, bytes: 420 });
    }

    #[test]
    fn prometheus_text_is_complete_and_ordered() {
        let st = table();
        let blocked: BTreeMap<String, u64> = [("default".to_string(), 5)].into();
        let alerts: BTreeMap<AlertKind, u64> = [(AlertKind::HalfOpen, 1)].into();
        let input = Input {
            table: Some(&st),
            table_read: true,
            blocked: Some(&blocked),
            nflog_lost: Some(0),
            alerts: Some(&alerts),
            dns: None,
        };
        let text = render(&input, Format::Prometheus);
        let want = "\
# HELP leash_table_active 1 when table inet leash exists in this network namespace
# TYPE leash_table_active gauge
leash_table_active 1
# HELP leash_policy_info The active policy: SHA-256 of the policy file and its path
# TYPE leash_policy_info gauge
leash_policy_info{sha256=\"00ff\",path=\"/etc/leash/policy.toml\"} 1
# HELP leash_rule_packets_total Packets counted by the kernel rules of each policy rule (reset when the policy is applied again)
# TYPE leash_rule_packets_total counter
leash_rule_packets_total{rule=\"loopback\"} 10
leash_rule_packets_total{rule=\"web\"} 7
leash_rule_packets_total{rule=\"default\"} 7
";
        assert!(text.starts_with(want), "got:\n{text}");
        for line in [
            "leash_rule_bytes_total{rule=\"web\"} 420",
            "leash_set_elements{set=\"r_web_d4\"} 2",
            "leash_blocked_packets_total{rule=\"default\"} 5",
            "leash_nflog_lost_total 0",
            "leash_alerts_total{kind=\"half-open\"} 1",
            "leash_alerts_total{kind=\"unusual-port\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in:\n{text}");
        }
        assert_eq!(text, render(&input, Format::Prometheus), "deterministic");
    }

    #[test]
    fn openmetrics_ends_with_eof_and_names_counters_by_family() {
        let st = table();
        let fields = [("queries", 12u64), ("cache_hits", 3)];
        let input = Input { table: Some(&st), table_read: true, dns: Some(&fields), ..Input::default() };
        let text = render(&input, Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE leash_rule_packets counter\nleash_rule_packets_total{rule=\"loopback\"} 10\n"), "{text}");
        assert!(text.contains("# TYPE leash_policy info\nleash_policy_info{sha256=\"00ff\",path=\"/etc/leash/policy.toml\"} 1\n"), "{text}");
        assert!(text.contains("# HELP leash_dns_queries Valid client queries (UDP and TCP)\n# TYPE leash_dns_queries counter\nleash_dns_queries_total 12\n"), "{text}");
    }

    #[test]
    fn no_table_shows_only_the_flag() {
        let input = Input { table_read: true, ..Input::default() };
        assert_eq!(
            render(&input, Format::Prometheus),
            "# HELP leash_table_active 1 when table inet leash exists in this network namespace\n# TYPE leash_table_active gauge\nleash_table_active 0\n"
        );
    }

    #[test]
    fn table_comment_parses() {
        assert_eq!(parse_table_comment("leash sha256:abc /p q.toml"), Some(("abc", "/p q.toml")));
        assert_eq!(parse_table_comment("leash sha256:abc"), Some(("abc", "")));
        assert_eq!(parse_table_comment("someone else's"), None);
    }

    #[test]
    fn accept_header_picks_the_format() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.2")), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")),
            Format::OpenMetrics
        );
    }
}
