//! Benchmark: the `leash metrics --listen` endpoint under 200 concurrent scrapers, with and without
//! one slowloris client, the server of this build against the hand-written one it replaced (built
//! from git, the commit before the change), in the same run.
//!
//! ```sh
//! sudo cargo bench -p leash --bench metrics                  # 3 rounds, 10 s per run
//! sudo cargo bench -p leash --bench metrics -- --rounds 5 --seconds 10 --scrapers 200
//! ```
//!
//! Options (after `--`): `--rounds N` (default 3, or `LEASH_BENCH_ROUNDS`), `--seconds S` (per
//! run, default 10), `--scrapers N` (default 200), `--timeout S` (an honest scrape that has no
//! answer after S seconds counts as failed, at S; default 10), `--trickle-ms MS` (the slowloris
//! client sends one byte every MS, default 1000: below the old server's 5 s read timeout),
//! `--baseline PATH` (the old leash binary; default: built once from git), `--baseline-rev REV`
//! (default: the parent of the commit that removed `observe::metrics::serve`). `LEASH_BIN`
//! overrides the binary under test.
//!
//! The baseline: `git archive REV` of this repository, unpacked under `target/bench-metrics/`
//! and built there (`cargo build --release --locked -p leash`, a few minutes, once; kept for the
//! next runs). Both binaries serve the same table through the same exposition code; only the
//! HTTP server differs.
//!
//! Each run: a fresh anonymous network namespace (loopback only), a policy applied in it (so a
//! scrape reads real counters from the kernel), one server started in it with nsenter
//! (`leash metrics --listen 127.0.0.1:9798 --no-log`), and once it answers: for the slowloris
//! scenario, one client that connects and sends a request head one byte per `--trickle-ms`,
//! reconnecting whenever the server closes it, started 300 ms before the scrapers; then
//! `--scrapers` threads in the namespace, each scraping in a closed loop (connect, `GET /metrics`,
//! read to the end, check the status line, again) for `--seconds`. A scrape's time runs from
//! before its connect to the end of the answer, so time spent in the listen backlog counts.
//! Runs alternate between the servers, the order rotating between rounds. The server is killed by
//! its pid after each run.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::{Args, Scratch, nsenter};
use kernel::netns::NetNs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LISTEN: &str = "127.0.0.1:9798";
const POLICY: &str = r#"version = 1
[defaults]
outbound = "deny"
deny_with = "reject"

[[rule]]
name = "dns"
action = "allow"
proto = "udp"
ports = [53]
to = ["192.0.2.53"]

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [80, 443]

[[rule]]
name = "ntp"
action = "allow"
proto = "udp"
ports = [123]
"#;

#[derive(Debug, Clone)]
struct Config {
    rounds: usize,
    seconds: u64,
    scrapers: usize,
    timeout: Duration,
    trickle: Duration,
}

fn main() -> Result<()> {
    let mut cfg = Config {
        rounds: common::args::rounds(3)?,
        seconds: 10,
        scrapers: 200,
        timeout: Duration::from_secs(10),
        trickle: Duration::from_millis(1000),
    };
    let mut baseline: Option<PathBuf> = None;
    let mut baseline_rev: Option<String> = None;
    let mut args = Args::new(
        "--rounds N, --seconds S, --scrapers N, --timeout S, --trickle-ms MS, --baseline PATH, --baseline-rev REV",
    );
    while let Some(a) = args.flag() {
        match a.as_str() {
            "--rounds" => cfg.rounds = args.value::<usize>("--rounds")?.max(1),
            "--seconds" => cfg.seconds = args.value::<u64>("--seconds")?.max(1),
            "--scrapers" => cfg.scrapers = args.value::<usize>("--scrapers")?.max(1),
            "--timeout" => cfg.timeout = Duration::from_secs(args.value::<u64>("--timeout")?.max(1)),
            "--trickle-ms" => cfg.trickle = Duration::from_millis(args.value::<u64>("--trickle-ms")?.max(1)),
            "--baseline" => baseline = Some(args.value("--baseline")?),
            "--baseline-rev" => baseline_rev = Some(args.value("--baseline-rev")?),
            other => return Err(args.unknown(other)),
        }
    }
    if !common::is_root() {
        bail!("the metrics bench needs root (namespaces, nftables)");
    }
    let (old, rev) = match baseline {
        Some(p) => (p, "given".to_string()),
        None => build_baseline(baseline_rev)?,
    };
    run(&cfg, &old, &rev)
}

/// The repository this bench is in.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git").arg("-C").arg(repo()).args(args).output().context("running git")?;
    ensure!(out.status.success(), "git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The old leash (the hand-written server), built from git once; (binary, revision).
fn build_baseline(rev: Option<String>) -> Result<(PathBuf, String)> {
    let rev = match rev {
        Some(r) => git(&["rev-parse", &r])?,
        None => {
            // The last commit whose diff touches the old server's signature is the one that
            // removed it; its parent is the last with it.
            let removed = git(&[
                "log",
                "-1",
                "--format=%H",
                "-G",
                r"pub fn serve\(listener: &TcpListener",
                "--",
                "crates/observe/src/metrics.rs",
            ])?;
            ensure!(!removed.is_empty(), "no commit removed observe::metrics::serve; give --baseline-rev");
            git(&["rev-parse", &format!("{removed}^")])?
        }
    };
    let old_src = git(&["show", &format!("{rev}:crates/observe/src/metrics.rs")])?;
    ensure!(
        old_src.contains("pub fn serve(listener: &TcpListener"),
        "{rev} does not have the hand-written server; give --baseline-rev"
    );
    let short = &rev[..12];
    let dir = common::report::report_dir("metrics").join(format!("baseline-{short}"));
    let bin = dir.join("target/release/leash");
    if bin.exists() {
        return Ok((bin, short.to_string()));
    }
    let src = dir.join("src");
    std::fs::create_dir_all(&src)?;
    eprintln!("building the baseline leash from {short} (once, a few minutes) in {}", dir.display());
    let archive = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["archive", "--format=tar", &rev])
        .stdout(Stdio::piped())
        .spawn()
        .context("git archive")?;
    let st = Command::new("tar").arg("-x").arg("-C").arg(&src).stdin(archive.stdout.context("git archive stdout")?).status()?;
    ensure!(st.success(), "unpacking the baseline failed");
    let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .args(["build", "--release", "--locked", "-p", "leash", "--bin", "leash"])
        .status()
        .context("cargo build of the baseline")?;
    ensure!(st.success() && bin.exists(), "building the baseline failed");
    Ok((bin, short.to_string()))
}

/// A server process, killed by its pid and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One scrape: `GET /metrics`, the whole answer; `Err` on anything but a 200 (or a timeout).
fn scrape(addr: SocketAddr, timeout: Duration) -> std::io::Result<usize> {
    let mut c = TcpStream::connect_timeout(&addr, timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: leash\r\n\r\n")?;
    let mut out = Vec::with_capacity(8192);
    c.read_to_end(&mut out)?;
    if !out.starts_with(b"HTTP/1.1 200 ") {
        return Err(std::io::Error::other(format!("answer {:?}", String::from_utf8_lossy(&out[..out.len().min(40)]))));
    }
    Ok(out.len())
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    /// Completed scrapes' times.
    done: Vec<Duration>,
    /// Scrapes that failed (no answer within the timeout, or an error).
    failed: usize,
    wall: Duration,
    /// Slowloris connections the server closed, and the longest it kept one.
    slow_cut: u64,
    slow_longest: Duration,
}

impl Outcome {
    /// The p-th percentile of every scrape tried, a failure counting as the timeout (so it is a
    /// lower bound when there are failures).
    fn percentile(&self, p: f64, timeout: Duration) -> (Duration, bool) {
        let mut all = self.done.clone();
        all.extend(std::iter::repeat_n(timeout, self.failed));
        let s = common::sorted(&all);
        let v = common::percentile(&s, p).unwrap_or(timeout);
        (v, self.failed > 0 && v >= timeout)
    }
}

fn one_run(bin: &Path, cfg: &Config, slowloris: bool, scratch: &Path, tag: &str) -> Result<Outcome> {
    let ns = NetNs::new()?;
    // Many short connections from one namespace: room for them.
    ns.set_sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    let policy = scratch.join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let applied = nsenter(&ns).arg(common::leash_bin()).arg("apply").arg(&policy).output()?;
    ensure!(applied.status.success(), "leash apply: {}", String::from_utf8_lossy(&applied.stderr));
    let log = scratch.join(format!("{tag}.stderr"));
    let child = nsenter(&ns)
        .arg(bin)
        .args(["metrics", "--listen", LISTEN, "--no-log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let _server = Server(child);
    let addr: SocketAddr = LISTEN.parse()?;
    // Up: it answers a scrape (at most 10 s).
    let up = ns.run(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if scrape(addr, Duration::from_secs(2)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    ensure!(up, "{} did not start: {}", bin.display(), std::fs::read_to_string(&log).unwrap_or_default());

    let stop = AtomicBool::new(false);
    let (slow_cut, slow_longest) = (AtomicU64::new(0), AtomicU64::new(0));
    let t0 = Instant::now();
    let end = t0 + Duration::from_millis(300) + Duration::from_secs(cfg.seconds);
    let (results, wall) = std::thread::scope(|s| {
        let (ns, stop, slow_cut, slow_longest) = (&ns, &stop, &slow_cut, &slow_longest);
        if slowloris {
            s.spawn(move || {
                ns.enter_current_thread().expect("enter the namespace");
                trickle(addr, cfg.trickle, stop, slow_cut, slow_longest)
            });
        }
        // The slow client first, so that it holds the old server from the start, as an attack
        // would.
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..cfg.scrapers)
            .map(|_| {
                let timeout = cfg.timeout;
                s.spawn(move || {
                    ns.enter_current_thread().expect("enter the namespace");
                    let (mut done, mut failed) = (Vec::new(), 0);
                    // Bounded by the run's end (and each scrape by the timeout).
                    while Instant::now() < end {
                        let t = Instant::now();
                        match scrape(addr, timeout) {
                            Ok(_) => done.push(t.elapsed()),
                            Err(_) => failed += 1,
                        }
                    }
                    (done, failed)
                })
            })
            .collect();
        let results: Vec<(Vec<Duration>, usize)> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
        stop.store(true, Ordering::Relaxed);
        (results, t0.elapsed())
    });
    let mut o = Outcome { wall, ..Outcome::default() };
    for (d, f) in results {
        o.done.extend(d);
        o.failed += f;
    }
    o.slow_cut = slow_cut.load(Ordering::Relaxed);
    o.slow_longest = Duration::from_millis(slow_longest.load(Ordering::Relaxed));
    Ok(o)
}

/// The slowloris client: a request head one byte per `every`, again whenever the server closes
/// the connection, until `stop`. Counts the connections the server cut and the longest it kept.
fn trickle(addr: SocketAddr, every: Duration, stop: &AtomicBool, cut: &AtomicU64, longest: &AtomicU64) {
    let head = b"GET /metrics HTTP/1.1\r\nHost: leash\r\nX-Slow: ";
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            std::thread::sleep(every);
            continue;
        };
        let _ = c.set_read_timeout(Some(every));
        let opened = Instant::now();
        let mut i = 0;
        // Bounded by `stop` (set when the run ends).
        let closed = loop {
            if stop.load(Ordering::Relaxed) {
                break false;
            }
            let byte = head.get(i).copied().unwrap_or(b'a');
            i += 1;
            if c.write_all(&[byte]).is_err() {
                break true;
            }
            match c.read(&mut [0u8; 512]) {
                Ok(_) => break true,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break true,
            }
        };
        let kept = opened.elapsed().as_millis() as u64;
        longest.fetch_max(kept, Ordering::Relaxed);
        if closed {
            cut.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run(cfg: &Config, old: &Path, rev: &str) -> Result<()> {
    let scratch = Scratch::create(std::env::temp_dir(), "metrics", false)?;
    let new = common::leash_bin();
    let servers = [("hyper (this build)", new.as_path()), ("hand-written (old)", old)];
    // (scenario, server) -> outcomes per round.
    let mut outcomes: Vec<Vec<Vec<Outcome>>> = vec![vec![Vec::new(); 2]; 2];
    for round in 0..cfg.rounds {
        for (si, slowloris) in [false, true].into_iter().enumerate() {
            for k in 0..2 {
                let which = (k + round + si) % 2;
                let (name, bin) = servers[which];
                let idle = common::settle();
                let o = one_run(bin, cfg, slowloris, &scratch.0, &format!("r{round}-s{si}-{which}"))?;
                eprintln!(
                    "round {round} {} {name}: {} done, {} failed, p99 {:?}{}",
                    if slowloris { "slowloris" } else { "scrapers " },
                    o.done.len(),
                    o.failed,
                    o.percentile(99.0, cfg.timeout).0,
                    if idle { "" } else { " (machine not idle at start)" }
                );
                outcomes[si][which].push(o);
            }
        }
    }
    let report = render(cfg, rev, &outcomes);
    println!("{report}");
    let path = common::write_report("metrics", &report)?;
    eprintln!("report: {}", path.display());
    Ok(())
}

/// All rounds of one (scenario, server) pooled.
fn pooled(rounds: &[Outcome]) -> Outcome {
    let mut o = Outcome::default();
    for r in rounds {
        o.done.extend(&r.done);
        o.failed += r.failed;
        o.wall += r.wall;
        o.slow_cut += r.slow_cut;
        o.slow_longest = o.slow_longest.max(r.slow_longest);
    }
    o
}

fn render(cfg: &Config, rev: &str, outcomes: &[Vec<Vec<Outcome>>]) -> String {
    let mut r = String::new();
    r.push_str(&format!(
        "metrics endpoint: {} concurrent scrapers for {} s per run, {} rounds; an honest scrape without an answer after {} s fails (counted at {} s); slowloris: one byte every {} ms; baseline {rev}; {}\n\n",
        cfg.scrapers,
        cfg.seconds,
        cfg.rounds,
        cfg.timeout.as_secs(),
        cfg.timeout.as_secs(),
        cfg.trickle.as_millis(),
        common::kernel_line()
    ));
    r.push_str("| scenario | server | scrapes answered | failed | answered/s | p50 ms | p99 ms | p99 old/new | slowloris cut (longest kept) |\n");
    r.push_str("|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (si, scenario) in ["200 scrapers", "200 scrapers + 1 slowloris"].iter().enumerate() {
        let new = pooled(&outcomes[si][0]);
        let old = pooled(&outcomes[si][1]);
        let (new99, _) = new.percentile(99.0, cfg.timeout);
        for (name, o) in [("hyper (this build)", &new), ("hand-written (old)", &old)] {
            let (p50, p50_bound) = o.percentile(50.0, cfg.timeout);
            let (p99, p99_bound) = o.percentile(99.0, cfg.timeout);
            let bound = |b: bool| if b { "≥ " } else { "" };
            let ratio = if std::ptr::eq(o, &old) {
                format!("{}{}", bound(p99_bound), common::ratio(common::ms(p99), common::ms(new99)))
            } else {
                String::new()
            };
            let slow = if si == 1 {
                format!("{} ({:.1} s)", o.slow_cut, o.slow_longest.as_secs_f64())
            } else {
                "-".into()
            };
            r.push_str(&format!(
                "| {scenario} | {name} | {} | {} | {:.0} | {}{:.1} | {}{:.1} | {ratio} | {slow} |\n",
                o.done.len(),
                o.failed,
                o.done.len() as f64 / o.wall.as_secs_f64().max(1e-9),
                bound(p50_bound),
                common::ms(p50),
                bound(p99_bound),
                common::ms(p99),
            ));
        }
    }
    r
}
