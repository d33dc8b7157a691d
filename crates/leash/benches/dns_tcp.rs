//! Benchmark: DNS over TCP while one user holds 300 idle connections open to the forwarder. What
//! share of another user's queries is answered, and how fast: `leash dns` against dnsmasq with
//! the same connection limit (`--max-tcp-connections=256`), each with and without the 300 held
//! connections, in the same run.
//!
//! ```sh
//! sudo cargo bench -p leash --bench dns_tcp                 # 3 rounds, about 2 minutes
//! sudo cargo bench -p leash --bench dns_tcp -- --rounds 1 --queries 20 --held 300
//! ```
//!
//! Options (after `--`): `--rounds N` (default 3, or `LEASH_BENCH_ROUNDS`), `--queries N` (the
//! other user's queries per pass, default 50), `--held N` (connections the first user holds,
//! default 300), `--timeout-ms N` (how long a query may take to count as answered, default 1000),
//! `--keep` (keep the scratch directory). `LEASH_BIN` overrides the leash binary. Needs root,
//! `nsenter` and `dnsmasq`. The report goes to stdout and to `target/bench-dns_tcp/report.md`.
//!
//! # Set-up
//!
//! Anonymous network namespaces held by this process (nothing touches the machine's own): an
//! upstream dnsmasq at 203.0.113.53 authoritative for `q.bench.test` (198.18.0.1), and per run a
//! fresh client namespace joined to it by a veth pair, with the bench policy applied by `leash
//! apply` (`*.bench.test` a domain rule, DNS to the upstream allowed, `bypass = "off"` so that
//! dnsmasq reaches the upstream through the same ruleset). In it the forwarder under test
//! listens on 127.0.0.1:5300:
//! - `leash dns POLICY` (as its user, uid 64653; at most 256 TCP connections, each closed after
//!   10 s without a query, and a new one closes the one idle longest when all are taken);
//! - `dnsmasq --server=203.0.113.53 --max-tcp-connections=256` (dnsmasq forks a child per TCP
//!   connection and stops accepting while it has that many).
//!
//! # Passes
//!
//! - **none held**: the other user (sockets owned by uid 64000) asks `q.bench.test` `--queries`
//!   times over TCP, one query per new connection, one after the other, each given
//!   `--timeout-ms` for its answer.
//! - **held**: first the holding user (sockets owned by uid 65534) opens `--held` connections and
//!   sends nothing on them; a thread of it reopens every connection the forwarder closes (checked
//!   every 50 ms, each connect given 2 s), so the number held stays as high as it can for the
//!   whole pass, as an attacker would keep it. Once it holds `--held` or its number has not
//!   grown for 5 s (dnsmasq accepts a couple of dozen connections a second, a child process
//!   each, and its listen backlog then fills; at most 60 s), the other user asks as above.
//!
//! A query counts as answered when a NOERROR answer with the address arrives within the timeout.
//! The report gives, per forwarder, the answered share of each pass and their ratio (held /
//! none held; 1.00 means the held connections cost the other user nothing), and the median and
//! p99 time of the answered queries. The order of the forwarders alternates between rounds.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::{Args, Scratch, is_root, kernel_line, leash_bin, median_f, nsenter, percentile_f, ratio, settle, sorted, tool_version, write_report};
use kernel::netns::NetNs;
use kernel::rtnl::{Family, Rtnl};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const UPSTREAM: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
const LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 5300);
const NAME: &str = "q.bench.test";
const ANSWER: [u8; 4] = [198, 18, 0, 1];
/// The forwarder's user in the bench policy, the holding user and the asking user: uids no
/// account has.
const FORWARDER_UID: u32 = 64653;
const HOLDER_UID: u32 = 65534;
const ASKER_UID: u32 = 64000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Leash,
    Dnsmasq,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Leash => "leash dns",
            Tool::Dnsmasq => "dnsmasq --max-tcp-connections=256",
        }
    }
}

struct Opts {
    rounds: usize,
    queries: usize,
    held: usize,
    timeout: Duration,
    keep: bool,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts { rounds: common::args::rounds(3)?, queries: 50, held: 300, timeout: Duration::from_millis(1000), keep: false };
    let mut a = Args::new("--rounds N, --queries N, --held N, --timeout-ms N, --keep");
    while let Some(f) = a.flag() {
        match f.as_str() {
            "--rounds" => o.rounds = a.value(&f)?,
            "--queries" => o.queries = a.value(&f)?,
            "--held" => o.held = a.value(&f)?,
            "--timeout-ms" => o.timeout = Duration::from_millis(a.value(&f)?),
            "--keep" => o.keep = true,
            _ => return Err(a.unknown(&f)),
        }
    }
    ensure!(o.rounds > 0 && o.queries > 0, "--rounds and --queries must be positive");
    Ok(o)
}

/// A process we started, ended by its pid on drop (`nsenter` execs it, so the pid is its own).
struct Daemon {
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Daemon> {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&stderr)?).spawn().with_context(|| format!("starting {name}"))?;
        Ok(Daemon { child, stderr })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn dnsmasq_base() -> Vec<String> {
    ["--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--bind-interfaces", "--user=root", "--pid-file=", "--log-facility=-"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A query for `NAME`, type A, recursion desired.
fn query(id: u16) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in NAME.split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// A TCP connection to `to` from a socket owned by `uid` (the thread's fsuid when it is made).
fn connect_as(uid: u32, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = dns::owned_by(uid, || socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP)))??;
    s.connect_timeout(&to.into(), timeout)?;
    Ok(s.into())
}

/// One query over a new TCP connection as `uid`; its time when answered in time with the
/// address.
fn ask_tcp(uid: u32, id: u16, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut s = connect_as(uid, LISTEN, timeout).ok()?;
    let left = timeout.checked_sub(start.elapsed())?;
    s.set_read_timeout(Some(left)).ok()?;
    s.set_write_timeout(Some(left)).ok()?;
    let q = query(id);
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    s.write_all(&frame).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut resp).ok()?;
    let took = start.elapsed();
    let ok = resp.len() > 12 && resp[..2] == id.to_be_bytes() && resp[3] & 0x0f == 0 && resp.windows(4).any(|w| w == ANSWER);
    (ok && took <= timeout).then_some(took)
}

/// What one pass of the asking user got.
#[derive(Debug, Clone, Default)]
struct Pass {
    answered: usize,
    asked: usize,
    times_ms: Vec<f64>,
    /// Connections the holder held when the pass started and when it ended.
    held_at_start: usize,
    held: usize,
}

fn ask_all(opts: &Opts) -> Pass {
    let mut p = Pass { asked: opts.queries, ..Pass::default() };
    for i in 0..opts.queries {
        if let Some(t) = ask_tcp(ASKER_UID, i as u16 + 1, opts.timeout) {
            p.answered += 1;
            p.times_ms.push(t.as_secs_f64() * 1000.0);
        }
    }
    p
}

/// The holding user: keeps `n` idle connections open until `stop`, reopening every one the
/// forwarder closed (checked every 50 ms); `held` says how many are open.
fn hold(n: usize, stop: &AtomicBool, held: &AtomicUsize) {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for i in 0..conns.len() {
            let c = &mut conns[i];
            let closed = match c {
                None => true,
                Some(s) => {
                    let _ = s.set_nonblocking(true);
                    let mut b = [0u8; 1];
                    // 0 bytes: the forwarder closed it; an error other than "would block": too.
                    !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                }
            };
            if closed {
                *c = connect_as(HOLDER_UID, LISTEN, Duration::from_secs(2)).ok();
                held.store(conns_open(&conns), Ordering::Relaxed);
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        held.store(conns_open(&conns), Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn conns_open(c: &[Option<TcpStream>]) -> usize {
    c.iter().filter(|c| c.is_some()).count()
}

/// Waits until the holder holds `target` connections, or its count has not grown for 5 s (a
/// full listen backlog makes its connects wait), at most 60 s: dnsmasq accepts a couple of dozen
/// connections a second (a child process each), leash at once.
fn wait_held(held: &AtomicUsize, target: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (0, Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let n = held.load(Ordering::Relaxed);
        if n >= target {
            return n;
        }
        if n != last {
            (last, since) = (n, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(5) {
            break;
        }
    }
    last
}

fn policy_text() -> String {
    format!(
        r#"# Generated by crates/leash/benches/dns_tcp.rs. Benchmark and documentation ranges only.
version = 1

[defaults]
outbound = "deny"

[dns]
listen = ["{LISTEN}"]
upstreams = ["{UPSTREAM}"]
bypass = "off"
user = {FORWARDER_UID}

[[rule]]
name = "upstream"
action = "allow"
ports = [53]
to = ["{UPSTREAM}"]

[[rule]]
name = "bench"
action = "allow"
proto = "tcp"
ports = [443]
to = ["*.bench.test"]
"#
    )
}

/// A client namespace wired to the upstream namespace (veth, 198.51.100.0/30 slot `serial`),
/// with the policy applied.
fn client(upstream: &NetNs, serial: u32, policy: &Path, leash: &Path, dir: &Path) -> Result<NetNs> {
    let ns = NetNs::new()?;
    let slot = serial % 64;
    let c_addr = Ipv4Addr::new(198, 51, 100, (4 * slot + 1) as u8);
    let u_addr = Ipv4Addr::new(198, 51, 100, (4 * slot + 2) as u8);
    let u_name = format!("tu{serial}");
    let c_if = ns.run(|| -> Result<u32> {
        let mut r = Rtnl::open()?;
        r.create_veth_with_indexes("tc", 10, &u_name, 2000 + serial, upstream.as_fd())?;
        let i = r.link_index("tc")?;
        r.add_address(i, c_addr.into(), 30)?;
        r.set_link_up(i)?;
        r.add_default_route(i, Family::V4)?;
        Ok(i)
    })?;
    upstream.run(|| -> Result<()> {
        let mut r = Rtnl::open()?;
        let i = r.link_index(&u_name)?;
        r.add_address(i, u_addr.into(), 30)?;
        r.set_link_up(i)?;
        r.wait_oper_up(i, Duration::from_secs(3))?;
        Ok(())
    })?;
    ns.run(|| -> Result<()> {
        let mut r = Rtnl::open()?;
        r.wait_oper_up(c_if, Duration::from_secs(3))?;
        r.wait_local(c_addr.into(), Duration::from_secs(3))?;
        Ok(())
    })?;
    let out = nsenter(&ns).arg(leash).arg("apply").arg(policy).stdin(Stdio::null()).output()?;
    ensure!(out.status.success(), "leash apply failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let _ = dir;
    Ok(ns)
}

fn start_forwarder(tool: Tool, ns: &NetNs, leash: &Path, policy: &Path, dir: &Path, tag: &str) -> Result<Daemon> {
    let mut c = nsenter(ns);
    match tool {
        Tool::Leash => {
            c.arg(leash).arg("dns").arg(policy);
        }
        Tool::Dnsmasq => {
            c.arg("dnsmasq").args(dnsmasq_base()).args([
                format!("--listen-address={}", LISTEN.ip()),
                format!("--port={}", LISTEN.port()),
                format!("--server={UPSTREAM}"),
                "--max-tcp-connections=256".into(),
            ]);
        }
    }
    let d = Daemon::spawn(tag, c, dir)?;
    // Ready: a query over TCP is answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns.run(|| ask_tcp(ASKER_UID, 1, Duration::from_millis(300))).is_none() {
        ensure!(Instant::now() < deadline, "{} did not answer over TCP within 10 s:\n{}", tool.name(), d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(d)
}

/// One forwarder: a pass with nothing held, then one with `--held` connections held.
fn run_one(tool: Tool, opts: &Opts, upstream: &NetNs, serial: u32, files: (&Path, &Path, &Path)) -> Result<(Pass, Pass)> {
    let (leash, policy, dir) = files;
    let ns = client(upstream, serial, policy, leash, dir)?;
    let d = start_forwarder(tool, &ns, leash, policy, dir, &format!("{serial}-{}", if tool == Tool::Leash { "leash" } else { "dnsmasq" }))?;
    settle();
    let none = ns.run(|| ask_all(opts));
    let stop = AtomicBool::new(false);
    let held = AtomicUsize::new(0);
    let with = std::thread::scope(|s| {
        s.spawn(|| ns.run(|| hold(opts.held, &stop, &held)));
        let at_start = wait_held(&held, opts.held);
        let mut p = ns.run(|| ask_all(opts));
        p.held_at_start = at_start;
        p.held = held.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        p
    });
    if none.answered == 0 {
        bail!("{} answered nothing even with no connection held:\n{}", tool.name(), d.log());
    }
    Ok((none, with))
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    if !is_root() {
        eprintln!("dns_tcp: needs root (network namespaces, nftables); skipped");
        return Ok(());
    }
    let scratch = Scratch::create(std::env::temp_dir(), "dns-tcp", opts.keep)?;
    let dir = scratch.0.clone();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text())?;
    let leash = leash_bin();
    let upstream = NetNs::new()?;
    upstream.run(|| -> Result<()> {
        let mut r = Rtnl::open()?;
        let lo = r.link_index("lo")?;
        r.add_address(lo, UPSTREAM.into(), 32)?;
        r.wait_local(UPSTREAM.into(), Duration::from_secs(3))?;
        Ok(())
    })?;
    let mut up = nsenter(&upstream);
    up.arg("dnsmasq").args(dnsmasq_base()).args([format!("--listen-address={UPSTREAM}"), format!("--host-record={NAME},198.18.0.1,3600")]);
    let _upstream_d = Daemon::spawn("upstream", up, &dir)?;
    std::thread::sleep(Duration::from_millis(300));

    let mut results: Vec<(Tool, Pass, Pass)> = Vec::new();
    let mut serial = 0;
    for round in 0..opts.rounds {
        let order = if round % 2 == 0 { [Tool::Leash, Tool::Dnsmasq] } else { [Tool::Dnsmasq, Tool::Leash] };
        for tool in order {
            serial += 1;
            let (none, with) = run_one(tool, &opts, &upstream, serial, (&leash, &policy, &dir))?;
            eprintln!(
                "round {round}: {:<34} none held {:>3}/{} answered; {}..{} held {:>3}/{} answered",
                tool.name(),
                none.answered,
                none.asked,
                with.held_at_start,
                with.held,
                with.answered,
                with.asked
            );
            results.push((tool, none, with));
        }
    }

    let mut report = String::new();
    let _ = writeln!(report, "# DNS over TCP with {} idle connections held by one user\n", opts.held);
    let _ = writeln!(
        report,
        "{}; {}; {}. {} rounds, {} queries of the other user per pass, each answered within {} ms to count.\n",
        kernel_line(),
        tool_version(&[leash.to_str().unwrap_or("leash"), "--version"]),
        tool_version(&["dnsmasq", "--version"]),
        opts.rounds,
        opts.queries,
        opts.timeout.as_millis()
    );
    let _ = writeln!(report, "| forwarder | answered, none held | answered, {} held | held / none | p50 none held | p50 held | p99 held |", opts.held);
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    for tool in [Tool::Leash, Tool::Dnsmasq] {
        let runs: Vec<&(Tool, Pass, Pass)> = results.iter().filter(|r| r.0 == tool).collect();
        let sum = |f: &dyn Fn(&(Tool, Pass, Pass)) -> &Pass| -> (usize, usize, Vec<f64>) {
            let mut times = Vec::new();
            let (mut a, mut n) = (0, 0);
            for r in &runs {
                let p = f(r);
                a += p.answered;
                n += p.asked;
                times.extend(&p.times_ms);
            }
            (a, n, sorted(&times))
        };
        let (a0, n0, t0) = sum(&|r| &r.1);
        let (a1, n1, t1) = sum(&|r| &r.2);
        let share = |a: usize, n: usize| a as f64 / n.max(1) as f64;
        let ms = |v: &[f64], p: f64| if v.is_empty() { "n/a".to_string() } else { format!("{:.2} ms", if p == 50.0 { median_f(v) } else { percentile_f(v, p) }) };
        let _ = writeln!(
            report,
            "| {} | {a0}/{n0} ({:.0}%) | {a1}/{n1} ({:.0}%) | {} | {} | {} | {} |",
            tool.name(),
            100.0 * share(a0, n0),
            100.0 * share(a1, n1),
            if a1 == 0 { "**0.00**".to_string() } else { ratio(share(a1, n1), share(a0, n0)) },
            ms(&t0, 50.0),
            ms(&t1, 50.0),
            ms(&t1, 99.0)
        );
    }
    let _ = writeln!(
        report,
        "\nConnections the holding user had open at the start and the end of each held pass (open: connected, accepted or in the listen backlog): {}",
        results.iter().map(|r| format!("{} {}..{}", if r.0 == Tool::Leash { "leash" } else { "dnsmasq" }, r.2.held_at_start, r.2.held)).collect::<Vec<_>>().join(", ")
    );
    print!("{report}");
    let path = write_report("dns_tcp", &report)?;
    eprintln!("report: {}", path.display());
    Ok(())
}
