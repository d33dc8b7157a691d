//! `leash metrics` in a lab: the exposition passes a Prometheus parser (Debian's
//! python3-prometheus-client: the text-format parser plus structural checks, and the strict
//! OpenMetrics parser), the per-rule counters grow with real connections, and the server counts
//! blocked attempts by rule (NFLOG) and detector alerts.

use crate::harness::*;
use lab::{Case, Lab, Outcome};
use policy::Proto;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DST: &str = "192.0.2.10";
/// Allowed by rule `web`.
const WEB: u16 = 443;
/// Allowed by rule `odd`: a port the detectors call unusual.
const ODD: u16 = 8443;
/// Not allowed: the default denies it.
const CLOSED: u16 = 8080;
/// Where the metrics server listens, inside the lab's client namespace.
const LISTEN: &str = "127.0.0.1:9798";

fn policy_text() -> String {
    format!(
        r#"version = 1
[defaults]
outbound = "deny"
deny_with = "reject"
log_denied = true
log_group = 3

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [{WEB}]
to = ["{DST}"]

[[rule]]
name = "odd"
action = "allow"
proto = "tcp"
ports = [{ODD}]
to = ["{DST}"]
"#
    )
}

fn setup(dir: &TempDir) -> Lab {
    let lab = Lab::new(&[DST.parse::<IpAddr>().unwrap()], &[WEB, ODD, CLOSED], &[]).expect("lab");
    let path = dir.file("metrics.toml", &policy_text());
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");
    lab
}

fn connect(lab: &Lab, port: u16) -> Outcome {
    let case = Case { proto: Proto::Tcp, dst: DST.parse().unwrap(), port: Some(port), uid: 0, gid: 0, name: None, cgroup: None };
    lab.probe(&case, Duration::from_millis(500))
}

/// Checks an exposition with python3-prometheus-client and returns its samples as
/// (name, labels as `k=v,...` sorted, value).
const CHECKER: &str = r##"
import json, re, sys
fmt = sys.argv[1]
text = sys.stdin.read()
if fmt == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
    # The text parser is lenient; check what promtool checks on top: every sample belongs to a
    # family declared once with HELP and TYPE before it, names are valid, no series repeats.
    name_re = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    typed, helped, seen = {}, set(), set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            n = line.split(" ")[2]
            assert n not in helped, "HELP twice: " + n
            helped.add(n)
        elif line.startswith("# TYPE "):
            _, _, n, t = line.split(" ")
            assert n not in typed, "TYPE twice: " + n
            assert t in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name_re.match(n), n
            typed[n] = t
        elif line.startswith("#") or not line:
            continue
        else:
            series = line.rsplit(" ", 1)[0]
            n = series.split("{")[0]
            assert n in typed and n in helped, "sample before its TYPE/HELP: " + line
            if typed[n] == "counter":
                assert n.endswith("_total"), "counter without _total: " + n
            assert series not in seen, "series twice: " + series
            seen.add(series)
    assert text.endswith("\n"), "no final newline"
out = []
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        out.append([s.name, ",".join("%s=%s" % kv for kv in sorted(s.labels.items())), s.value])
print(json.dumps(out))
"##;

type Samples = Vec<(String, String, f64)>;

fn check_exposition(text: &str, format: &str) -> Samples {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", CHECKER, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (apt-get install python3-prometheus-client)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {format} exposition does not parse:\n{}\n----- exposition:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, String, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn value(samples: &Samples, name: &str, labels: &str) -> Option<f64> {
    samples.iter().find(|(n, l, _)| n == name && l == labels).map(|s| s.2)
}

/// `leash metrics --once` in both formats, checked; the Prometheus samples are returned.
fn once(lab: &Lab) -> Samples {
    let r = leash_in(lab.client(), &["metrics", "--once"]);
    assert!(r.ok(), "{r}");
    let prom = check_exposition(&r.stdout, "prometheus");
    let r = leash_in(lab.client(), &["metrics", "--once", "--format", "openmetrics"]);
    assert!(r.ok(), "{r}");
    assert!(r.stdout.ends_with("# EOF\n"), "{r}");
    check_exposition(&r.stdout, "openmetrics");
    prom
}

#[test]
fn metrics_once_is_valid_and_rule_counters_grow_with_connections() {
    if !need_root("metrics_once_is_valid_and_rule_counters_grow_with_connections") {
        return;
    }
    let dir = TempDir::new("metrics-once");
    let lab = setup(&dir);
    let before = once(&lab);
    assert_eq!(value(&before, "leash_table_active", ""), Some(1.0), "{before:?}");
    let info = before.iter().find(|s| s.0 == "leash_policy_info").expect("policy info");
    assert!(info.1.contains("path=") && info.1.contains("metrics.toml") && info.1.contains("sha256="), "{info:?}");
    for rule in ["web", "odd", "@default", "@loopback", "@established"] {
        assert!(value(&before, "leash_rule_packets_total", &format!("rule={rule}")).is_some(), "{rule}: {before:?}");
        assert!(value(&before, "leash_rule_bytes_total", &format!("rule={rule}")).is_some(), "{rule}: {before:?}");
    }
    assert!(value(&before, "leash_alerts_total", "kind=half-open").is_some(), "{before:?}");

    const N: usize = 5;
    for _ in 0..N {
        assert_eq!(connect(&lab, WEB), Outcome::Connected);
        assert_eq!(connect(&lab, CLOSED), Outcome::Refused);
    }
    let after = once(&lab);
    let grew = |name: &str, rule: &str| {
        let l = format!("rule={rule}");
        value(&after, name, &l).unwrap() - value(&before, name, &l).unwrap()
    };
    // Each connect's SYN is decided by a rule (the rest of the connection by @established).
    assert!(grew("leash_rule_packets_total", "web") >= N as f64, "{before:?}\n{after:?}");
    assert!(grew("leash_rule_packets_total", "@default") >= N as f64, "{before:?}\n{after:?}");
    assert!(grew("leash_rule_bytes_total", "web") >= (N * 40) as f64, "{before:?}\n{after:?}");
    assert!(grew("leash_rule_packets_total", "@established") > 0.0, "{before:?}\n{after:?}");
    assert_eq!(grew("leash_rule_packets_total", "odd"), 0.0);

    // Without a table: only the flag.
    let bare = kernel::netns::NetNs::new().unwrap();
    let r = leash_in(&bare, &["metrics", "--once"]);
    assert!(r.ok(), "{r}");
    let s = check_exposition(&r.stdout, "prometheus");
    assert_eq!(value(&s, "leash_table_active", ""), Some(0.0), "{r}");
}

/// `leash metrics --listen` in the background, ended by its pid.
struct Server {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `leash ARGS` in the lab's client namespace, stderr to `stderr`.
    fn start(lab: &Lab, args: &[&str], stderr: std::path::PathBuf) -> Server {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", lab.client().path().display()))
            .arg(leash_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Server { child, stderr }
    }

    fn log(&self) -> String {
        format!("\n===== leash metrics stderr:\n{}", std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }
}

/// One HTTP request to the metrics server from inside the lab's client namespace.
fn http(lab: &Lab, request: &str) -> std::io::Result<String> {
    http_to(lab, LISTEN, request)
}

/// One HTTP request to `addr` from inside the lab's client namespace; the whole response.
fn http_to(lab: &Lab, addr: &str, request: &str) -> std::io::Result<String> {
    let request = request.to_string();
    lab.client().run(move || {
        let mut c = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(request.as_bytes())?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    })
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn metrics_server_counts_blocked_attempts_and_alerts() {
    if !need_root("metrics_server_counts_blocked_attempts_and_alerts") {
        return;
    }
    let dir = TempDir::new("metrics-server");
    let lab = setup(&dir);
    let stderr = dir.0.join("metrics.stderr");
    let server = Server::start(&lab, &["metrics", "--listen", LISTEN, "--interval", "0.2"], stderr);

    // Serving means the NFLOG group is bound too (it is bound before the listener accepts).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("serving") {
        assert!(Instant::now() < deadline, "leash metrics did not start{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.log().contains("NFLOG group 3"), "the active policy's log_group is used{}", server.log());

    // A connection to an unusual port, held open while the detectors look.
    let held = lab.client().run(|| TcpStream::connect((DST, ODD)).unwrap());
    const N: usize = 4;
    for _ in 0..N {
        assert_eq!(connect(&lab, CLOSED), Outcome::Refused);
    }

    let get = "GET /metrics HTTP/1.1\r\nHost: leash\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let r = http(&lab, get).unwrap_or_else(|e| panic!("scrape failed: {e}{}", server.log()));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        let s = check_exposition(body(&r), "prometheus");
        let blocked = value(&s, "leash_blocked_packets_total", "rule=@default").unwrap_or(0.0);
        let unusual = value(&s, "leash_alerts_total", "kind=unusual-port").unwrap_or(0.0);
        if blocked >= N as f64 && unusual >= 1.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "no blocked counts or alert after 10 s:\n{r}{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(value(&samples, "leash_nflog_lost_total", ""), Some(0.0), "{samples:?}");
    assert!(value(&samples, "leash_rule_packets_total", "rule=odd").unwrap() >= 1.0, "{samples:?}");
    drop(held);

    // OpenMetrics on request, strict parser.
    let r = http(&lab, "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n").unwrap();
    assert!(r.contains("Content-Type: application/openmetrics-text"), "{r}");
    let om = check_exposition(body(&r), "openmetrics");
    assert!(value(&om, "leash_blocked_packets_total", "rule=@default").unwrap() >= N as f64, "{om:?}");
    assert!(http(&lab, "GET /nope HTTP/1.1\r\n\r\n").unwrap().starts_with("HTTP/1.1 404 "));
}

/// Where the forwarder asks: an address of the peer with nothing on port 53, so every query
/// fails fast (ICMP port unreachable) and is answered SERVFAIL.
const DEAD_UPSTREAM: &str = "203.0.113.54";
const DNS_LISTEN: &str = "127.0.0.1:5353";
const DNS_METRICS: &str = "127.0.0.1:9799";

/// A DNS query for `name` (type A), id 0x4c53.
fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0x4c, 0x53, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A lab whose client runs `leash dns --metrics DNS_METRICS` for a policy whose upstream is dead.
fn start_dns(dir: &TempDir) -> (Lab, Server, String) {
    let lab = Lab::new(&[DEAD_UPSTREAM.parse::<IpAddr>().unwrap()], &[], &[]).expect("lab");
    let policy = dir.file(
        "dns.toml",
        &format!(
            r#"version = 1
[dns]
listen = ["{DNS_LISTEN}"]
upstreams = ["{DEAD_UPSTREAM}"]
timeout_ms = 300
bypass = "off"
user = 64653

[[rule]]
name = "api"
action = "allow"
proto = "tcp"
ports = [443]
to = ["api.example.test"]
"#
        ),
    );
    let r = leash_in(lab.client(), &["apply", &policy]);
    assert!(r.ok(), "{r}");
    let server = Server::start(&lab, &["dns", &policy, "--metrics", DNS_METRICS], dir.0.join("dns.stderr"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(server.log().contains("serving metrics") && server.log().contains("listening on")) {
        assert!(Instant::now() < deadline, "leash dns did not start{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    (lab, server, policy)
}

#[test]
fn dns_forwarder_serves_its_counters() {
    if !need_root("dns_forwarder_serves_its_counters") {
        return;
    }
    let dir = TempDir::new("metrics-dns");
    let (lab, server, _) = start_dns(&dir);

    // One query; the upstream is dead, so the answer is SERVFAIL (rcode 2).
    let answer = lab.client().run(|| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&query("api.example.test"), DNS_LISTEN).unwrap();
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    });
    assert_eq!(&answer[..2], &[0x4c, 0x53], "{answer:?}");
    assert_eq!(answer[3] & 0x0f, 2, "SERVFAIL: {answer:?}{}", server.log());

    let r = http_to(&lab, DNS_METRICS, "GET /metrics HTTP/1.1\r\n\r\n").unwrap_or_else(|e| panic!("{e}{}", server.log()));
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    let s = check_exposition(body(&r), "prometheus");
    assert_eq!(value(&s, "leash_dns_queries_total", ""), Some(1.0), "{r}");
    assert_eq!(value(&s, "leash_dns_upstream_failures_total", ""), Some(1.0), "{r}");
    assert!(value(&s, "leash_dns_cache_hits_total", "").is_some(), "{r}");
    assert!(value(&s, "leash_table_active", "").is_none(), "only the forwarder's counters: {r}");
    let r = http_to(&lab, DNS_METRICS, "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n").unwrap();
    check_exposition(body(&r), "openmetrics");
}

/// Sends a request head one byte every `every` from inside the lab's client namespace, as a
/// slowloris client does, until the server closes the connection or `limit` passes. Returns how
/// long the server kept it.
fn trickle(lab: &Lab, addr: &str, every: Duration, limit: Duration) -> std::thread::JoinHandle<Option<Duration>> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut c = lab.client().run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2))).unwrap();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        c.set_read_timeout(Some(every)).unwrap();
        let head = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
        // Bounded by `limit`.
        for i in 0.. {
            if t0.elapsed() > limit {
                return None;
            }
            let byte = head.get(i).copied().unwrap_or(b'a');
            if c.write_all(&[byte]).is_err() {
                return Some(t0.elapsed());
            }
            // Waits `every` for the server to close (or answer, which ends the trickle too).
            match c.read(&mut [0u8; 512]) {
                Ok(_) => return Some(t0.elapsed()),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return Some(t0.elapsed()),
            }
        }
        None
    })
}

/// Issue 12 item 9: while one client trickles its request (a byte per second, so that no single
/// read waits long), honest scrapes are answered at once, and the slow client is cut at the
/// header timeout. The hand-written server served one connection at a time and waited up to 5 s
/// per read: the trickle held it for hours, and every scrape timed out.
fn slow_client_holds_up_no_scrape(lab: &Lab, addr: &str, log: &dyn Fn() -> String) {
    let slow = trickle(lab, addr, Duration::from_secs(1), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let get = "GET /metrics HTTP/1.1\r\nHost: leash\r\n\r\n";
    for i in 0..5 {
        let t0 = Instant::now();
        let r = http_to(lab, addr, get).unwrap_or_else(|e| panic!("scrape {i} failed while a slow client trickled: {e}{}", log()));
        let took = t0.elapsed();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        check_exposition(body(&r), "prometheus");
        // The bound: far below the 5 s one read of the old server could take, above any
        // scheduling hiccup of a loaded machine.
        assert!(took < Duration::from_secs(2), "scrape {i} took {took:?} while a slow client trickled{}", log());
        std::thread::sleep(Duration::from_millis(400));
    }
    let kept = slow.join().unwrap();
    let kept = kept.unwrap_or_else(|| panic!("the slow client was still connected after 20 s{}", log()));
    assert!(kept < Duration::from_secs(9), "the slow client was cut after {kept:?} (header timeout 5 s){}", log());
    // And the server still serves.
    assert!(http_to(lab, addr, get).unwrap().starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn metrics_server_is_not_held_up_by_a_slow_client() {
    if !need_root("metrics_server_is_not_held_up_by_a_slow_client") {
        return;
    }
    let dir = TempDir::new("metrics-slow");
    let lab = setup(&dir);
    let server = Server::start(&lab, &["metrics", "--listen", LISTEN, "--no-log"], dir.0.join("metrics.stderr"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("serving") {
        assert!(Instant::now() < deadline, "leash metrics did not start{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    slow_client_holds_up_no_scrape(&lab, LISTEN, &|| server.log());
    // The rest of the protocol: a head too large, a method other than GET.
    let big = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    let r = http(&lab, &big).unwrap_or_default();
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431 "), "{r}");
    assert!(http(&lab, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap().starts_with("HTTP/1.1 405 "));
    assert!(http(&lab, "GET /other HTTP/1.1\r\n\r\n").unwrap().starts_with("HTTP/1.1 404 "));
}

#[test]
fn dns_metrics_are_not_held_up_by_a_slow_client() {
    if !need_root("dns_metrics_are_not_held_up_by_a_slow_client") {
        return;
    }
    let dir = TempDir::new("metrics-dns-slow");
    let (lab, server, _) = start_dns(&dir);
    slow_client_holds_up_no_scrape(&lab, DNS_METRICS, &|| server.log());
}
