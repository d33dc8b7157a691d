//! Benchmark: `leash dns` against dnsmasq with `--nftset` as DNS forwarders that put every answered
//! address into an nftables set before the answer goes out, in the same run, against the same
//! upstream, with the same load generator (dnsperf).
//!
//! ```sh
//! sudo cargo bench -p leash --bench dns                  # 5 rounds, both cases, about 3 minutes
//! LEASH_BENCH_QUICK=1 cargo bench -p leash --bench dns   # 2 rounds, shorter passes
//! sudo cargo bench -p leash --bench dns -- --rounds 3 --case uncached --no-interval --keep
//! ```
//!
//! Options (after `--`): `--rounds N` (default 5, or `LEASH_BENCH_ROUNDS`; 2 with
//! `LEASH_BENCH_QUICK=1`), `--case uncached|cached|all`, `--no-interval` (skip dnsmasq with an
//! interval set), `--interval-secs N` (cap of each of its two passes, default 10, 4 when quick),
//! `--no-forward-only` (skip the forwarding-only diagnostic runs), `--cached-secs N` (length of the
//! cached throughput pass, default 3, 2 when quick), `--keep` (keep the scratch directory: hosts
//! file, query files, policy, every tool's stderr). `LEASH_BIN` overrides the leash binary
//! (default: the one cargo built for this bench, in the bench profile). The report goes to
//! stdout and to `target/bench-dns/report.md`.
//!
//! # Set-up
//!
//! Everything runs in anonymous network namespaces held by file descriptors of this process (they
//! vanish with it, however it ends); nothing touches the machine's own namespace. Only benchmark
//! and documentation addresses are used.
//!
//! - **Upstream namespace**, for the whole run: dnsmasq at 203.0.113.53 (on `lo`), authoritative
//!   for the bench names from a hosts file (`--addn-hosts`, `--local-ttl=3600`):
//!   `u<j>.bench.test` → 198.18.0.0 + 100,000 + j (j < 31,072, the rest of 198.18.0.0/15),
//!   `c<i>.bench.test` → 198.18.0.0 + i (i < 1,000), `f<i>.plain.test` → 198.18.0.0 + i
//!   (i < 31,072; no rule matches them) and `probe.test` (readiness checks).
//! - **Client namespace**, a fresh one for every run of every tool: a veth pair to the upstream
//!   namespace (its own /30 of 198.51.100.0/24), the bench policy applied with `leash apply`
//!   (default deny, DNS to the upstream allowed, rule `bench` allowing TCP 443 to `*.bench.test`,
//!   whose IPv4 set `r_bench_d4` is a hash set with `flags timeout`; `bypass = "off"`, so that
//!   dnsmasq and the direct baseline, which set no packet mark, reach the upstream through the
//!   same ruleset), then one forwarder listening on 127.0.0.1:5300:
//!   - `leash dns POLICY` (filling `r_bench_d4` over netlink);
//!   - `dnsmasq --server=203.0.113.53 --cache-size=10000
//!     --nftset=/bench.test/4#inet#leash#r_bench_d4` (the same set; dnsmasq adds elements through
//!     libnftables);
//!   - dnsmasq with `--nftset=/bench.test/4#inet#bench#ivl` into a table of the bench's own whose
//!     set `ivl` is declared `flags interval` (how nft sets are usually declared; leash never uses
//!     interval sets for domains). Uncached case only, each pass capped (`--interval-secs`).
//!   - no forwarder: the **direct** baseline queries the upstream itself, the same names; a
//!     forwarder's *added* latency is its latency minus the direct one of the same round.
//!
//! # Cases
//!
//! - **uncached**: the set first gets 100,000 elements (198.18.0.0 + i, i < 100,000, timeout 10 h;
//!   `kernel::nft::SetWriter` for the hash set, `nft -f` for the interval set). Then every query
//!   asks a name never asked before in this namespace, so no cache helps and every answer inserts
//!   a new element: the latency pass asks u0..u4999, the throughput pass u5000..u31071.
//! - **cached**: 1,000 names (`c<i>`), asked once (warm-up, untimed), then asked over and over.
//! - **forwarding only** (diagnostic, one run per forwarder after the rounds): uncached names that
//!   no rule matches (`f<i>.plain.test`), so nothing is inserted: what each forwarder does
//!   without its set work. Its added latency is against the uncached direct baseline.
//!
//! # Passes (inside the client namespace)
//!
//! - *latency*: a small client in this bench asks one query at a time (the next leaves when the
//!   answer to the previous one is in) and records each round trip: p50/p99 of an unloaded
//!   forwarder. (dnsperf with `-q 1` paces itself at about 35 queries/s here, so it is not used
//!   for this.) 5,000 queries: the uncached names once each, or the cached names 5 times.
//! - *forwarding only* (uncached forwarder runs): the same client asks 2,000 names under
//!   `plain.test`, which no rule matches, so nothing is inserted: what the forwarding alone adds.
//! - *throughput*: dnsperf 2.10 with `-q 100 -c 4` (100 outstanding, below dnsmasq's
//!   `--dns-forward-max` of 150), each name once (`-n 1`) for uncached, for `--cached-secs`
//!   (`-l`) looping over the 1,000 names for cached:
//!   queries/s at saturation. The CPU time of the forwarder (per thread for leash: its runtime
//!   thread and its set-inserter thread), of the upstream and of dnsperf is read from /proc and
//!   `wait4` around this pass.
//!
//! Before each pass the bench waits (at most 5 s) for a 100 ms window in which the CPUs are idle;
//! the report says how many passes started without one. The order of the tools alternates between
//! rounds.
//!
//! # Checks
//!
//! After each forwarder run the set is read back with a netlink GETSETELEM dump in the namespace:
//! every address of a name answered NOERROR in the latency pass must be in it; the number of new
//! elements must be at least the number of NOERROR answers of both passes (and at most the queries
//! sent), and the 100,000 pre-filled ones must still be there. Cached runs must hold all 1,000
//! addresses. Failures in the report are queries that got no answer in time, answers other than
//! NOERROR and addresses missing from the set.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::{Args, Finished, Scratch, median_f, nsenter, percentile_f, ratio, settle, sorted, tool_output, tool_version};
use kernel::netns::NetNs;
use kernel::nft::{SetWriter, TimedElement};
use kernel::rtnl::{Family, Rtnl};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The upstream resolver's address (documentation range, outside every element range).
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
/// Where the forwarder under test listens in the client namespace.
const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5300);
/// 198.18.0.0, start of the benchmark range 198.18.0.0/15 (131,072 addresses).
const BASE: u32 = 0xC612_0000;
const RANGE: u32 = 131_072;
/// Elements in the set before an uncached run.
const PREFILL: u32 = 100_000;
/// Uncached names: one per address of 198.18.0.0/15 not pre-filled.
const FRESH: u32 = RANGE - PREFILL;
/// Uncached names of the latency pass (the rest go to the throughput pass).
const LAT_UNCACHED: u32 = 5_000;
/// Names of the cached case, and how often the latency pass asks each.
const CACHED_NAMES: u32 = 1_000;
const CACHED_LAT_REPEAT: u32 = 5;
/// Names under `plain.test`, which no rule matches: uncached answers that insert nothing, to
/// tell the forwarding from the set insertion. The first ones go to the forwarding-only latency
/// pass of every uncached run, the rest (up to [`FRESH`]) to the once-per-bench forwarding-only
/// throughput run.
const FORWARD_ONLY: u32 = 2_000;
/// Name of the policy's domain rule.
const RULE: &str = "bench";
/// dnsperf settings of the throughput pass.
const TP_OUTSTANDING: u32 = 100;
const TP_CLIENTS: u32 = 4;
/// Element timeout of the pre-filled elements.
const PREFILL_TIMEOUT_MS: u64 = 10 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Leash,
    Dnsmasq,
    DnsmasqInterval,
    Direct,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Leash => "`leash dns` (hash set, timeouts)",
            Tool::Dnsmasq => "dnsmasq --nftset (hash set, timeouts)",
            Tool::DnsmasqInterval => "dnsmasq --nftset (interval set)",
            Tool::Direct => "direct to upstream (baseline)",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Tool::Leash => "leash",
            Tool::Dnsmasq => "dnsmasq",
            Tool::DnsmasqInterval => "dnsmasq-interval",
            Tool::Direct => "direct",
        }
    }
    fn is_forwarder(self) -> bool {
        self != Tool::Direct
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    Uncached,
    Cached,
    /// Diagnostic, once per bench: uncached names that no rule matches.
    Plain,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Uncached => "(a) uncached, set holds 100,000",
            Case::Cached => "(b) cached, 1,000 names",
            Case::Plain => {
                "Diagnostic: forwarding only (uncached names no rule matches, nothing inserted)"
            }
        }
    }
    fn short(self) -> &'static str {
        match self {
            Case::Uncached => "uncached",
            Case::Cached => "cached",
            Case::Plain => "fwd-only",
        }
    }
}

fn v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(BASE + i)
}

fn uncached_name(j: u32) -> String {
    format!("u{j}.bench.test")
}

fn cached_name(i: u32) -> String {
    format!("c{i}.bench.test")
}

fn plain_name(i: u32) -> String {
    format!("f{i}.plain.test")
}

/// The address the upstream answers for a bench name (offset from 198.18.0.0).
fn offset_of(name: &str) -> Option<u32> {
    let label = name
        .strip_suffix('.')
        .unwrap_or(name)
        .strip_suffix(".bench.test")?;
    if let Some(j) = label.strip_prefix('u') {
        j.parse::<u32>()
            .ok()
            .filter(|&j| j < FRESH)
            .map(|j| PREFILL + j)
    } else {
        label
            .strip_prefix('c')?
            .parse::<u32>()
            .ok()
            .filter(|&i| i < CACHED_NAMES)
    }
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Opts {
    rounds: usize,
    cases: Vec<Case>,
    interval: bool,
    forward_only: bool,
    interval_secs: u32,
    cached_secs: u32,
    keep: bool,
    quick: bool,
}

fn parse_args() -> Result<Opts> {
    let quick = common::args::quick();
    let mut o = Opts {
        rounds: common::args::rounds(if quick { 2 } else { 5 })?,
        cases: vec![Case::Uncached, Case::Cached],
        interval: true,
        forward_only: true,
        interval_secs: if quick { 4 } else { 10 },
        cached_secs: if quick { 2 } else { 3 },
        keep: false,
        quick,
    };
    let mut args = Args::new(
        "--rounds N, --case uncached|cached|all, --no-interval, --no-forward-only, --interval-secs N, --cached-secs N, --keep",
    );
    while let Some(a) = args.flag() {
        match a.as_str() {
            "--rounds" => o.rounds = args.value("--rounds")?,
            "--case" => {
                o.cases = match args.word().as_deref() {
                    Some("uncached") | Some("a") => vec![Case::Uncached],
                    Some("cached") | Some("b") => vec![Case::Cached],
                    Some("all") => vec![Case::Uncached, Case::Cached],
                    other => bail!("--case uncached|cached|all, not {other:?}"),
                }
            }
            "--no-interval" => o.interval = false,
            "--no-forward-only" => o.forward_only = false,
            "--interval-secs" => o.interval_secs = args.value("--interval-secs")?,
            "--cached-secs" => o.cached_secs = args.value("--cached-secs")?,
            "--keep" => o.keep = true,
            other => return Err(args.unknown(other)),
        }
    }
    ensure!((1..=51).contains(&o.rounds), "rounds must be 1..=51");
    ensure!(
        (1..=120).contains(&o.interval_secs),
        "--interval-secs must be 1..=120"
    );
    ensure!(
        (1..=60).contains(&o.cached_secs),
        "--cached-secs must be 1..=60"
    );
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Scratch files
// ---------------------------------------------------------------------------------------------


struct Files {
    dir: PathBuf,
    hosts: PathBuf,
    policy: PathBuf,
    interval_nft: PathBuf,
    tp_uncached: PathBuf,
    tp_plain: PathBuf,
    cached_once: PathBuf,
}

fn write_files(dir: &Path) -> Result<Files> {
    let f = Files {
        dir: dir.to_path_buf(),
        hosts: dir.join("upstream.hosts"),
        policy: dir.join("bench.toml"),
        interval_nft: dir.join("interval.nft"),
        tp_uncached: dir.join("uncached-throughput.txt"),
        tp_plain: dir.join("plain-throughput.txt"),
        cached_once: dir.join("cached.txt"),
    };
    let mut hosts = String::with_capacity(40 * (FRESH + CACHED_NAMES) as usize);
    writeln!(hosts, "192.0.2.99 probe.test")?;
    for j in 0..FRESH {
        writeln!(hosts, "{} {}", v4(PREFILL + j), uncached_name(j))?;
    }
    for i in 0..CACHED_NAMES {
        writeln!(hosts, "{} {}", v4(i), cached_name(i))?;
    }
    for i in 0..FRESH {
        writeln!(hosts, "{} {}", v4(i), plain_name(i))?;
    }
    std::fs::write(&f.hosts, hosts)?;
    let lines = |r: std::ops::Range<u32>, name: fn(u32) -> String| -> String {
        r.map(|i| format!("{} A\n", name(i))).collect()
    };
    std::fs::write(&f.tp_uncached, lines(LAT_UNCACHED..FRESH, uncached_name))?;
    std::fs::write(&f.tp_plain, lines(FORWARD_ONLY..FRESH, plain_name))?;
    let once = lines(0..CACHED_NAMES, cached_name);
    std::fs::write(&f.cached_once, &once)?;
    std::fs::write(
        &f.policy,
        format!(
            r#"# Generated by crates/leash/benches/dns.rs. Benchmark and documentation ranges only.
version = 1

[defaults]
outbound = "deny"
deny_with = "reject"

[dns]
listen = ["{LISTEN}"]
upstreams = ["{UPSTREAM}"]
min_ttl = 60
max_ttl = 3600
grace = 120
timeout_ms = 1000
cache_size = 10000
# dnsmasq and the direct baseline set no packet mark: they reach the upstream through the rule
# below, as the forwarder does.
bypass = "off"
# The forwarder's own user: a uid no account has, so the bench needs none created.
user = 64653

[[rule]]
name = "upstream"
action = "allow"
ports = [53]
to = ["{UPSTREAM}"]
purpose = "The bench's upstream resolver"

[[rule]]
name = "{RULE}"
action = "allow"
proto = "tcp"
ports = [443]
to = ["*.bench.test"]
purpose = "Benchmark: every answered address goes into this rule's timeout sets"
"#
        ),
    )?;
    let mut nft = String::with_capacity(16 * PREFILL as usize);
    nft.push_str(
        "# Generated by crates/leash/benches/dns.rs: an interval set, as nft sets are usually declared.\n\
         table inet bench {\n\tset ivl {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { ",
    );
    for i in 0..PREFILL {
        if i > 0 {
            nft.push_str(", ");
        }
        write!(nft, "{}", v4(i))?;
    }
    nft.push_str(" }\n\t}\n}\n");
    std::fs::write(&f.interval_nft, nft)?;
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// Namespaces and processes
// ---------------------------------------------------------------------------------------------

/// Gives the upstream namespace its resolver address on `lo`.
fn setup_upstream(ns: &NetNs) -> Result<()> {
    ns.run(|| -> Result<()> {
        let mut r = Rtnl::open()?;
        let lo = r.link_index("lo")?;
        r.add_address(lo, UPSTREAM.into(), 32)?;
        r.wait_local(UPSTREAM.into(), Duration::from_secs(3))?;
        Ok(())
    })
}

/// Joins a fresh client namespace to the upstream namespace: veth pair, the /30 number `slot` of
/// 198.51.100.0/24 (.1 client, .2 upstream side), an on-link default route in the client. The
/// upstream side's name and index are unique in the run (`serial`), because the ends of earlier
/// clients may still be going away.
fn wire(client: &NetNs, upstream: &NetNs, serial: u32) -> Result<()> {
    let slot = serial % 64;
    let c_addr = Ipv4Addr::new(198, 51, 100, (4 * slot + 1) as u8);
    let u_addr = Ipv4Addr::new(198, 51, 100, (4 * slot + 2) as u8);
    let u_name = format!("bu{serial}");
    let c_if = client.run(|| -> Result<u32> {
        let mut r = Rtnl::open()?;
        r.create_veth_with_indexes("bc", 10, &u_name, 1000 + serial, upstream.as_fd())?;
        let i = r.link_index("bc")?;
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
    client.run(|| -> Result<()> {
        let mut r = Rtnl::open()?;
        r.wait_oper_up(c_if, Duration::from_secs(3))?;
        r.wait_local(c_addr.into(), Duration::from_secs(3))?;
        Ok(())
    })
}

/// A process we started (`nsenter` execs the program, so the pid is the program's), ended by its
/// pid: SIGTERM by [`Daemon::stop`], SIGKILL on drop if it still runs.
struct Daemon {
    name: String,
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Daemon> {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Daemon {
            name: name.into(),
            child,
            stderr,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on the pid of our own child, which has not been reaped yet
        // (reaping happens only in `stop` and `drop`, after which no signal is sent).
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGTERM, then waits (at most 5 s, then SIGKILL); returns its stderr.
    fn stop(mut self) -> Result<String> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "   {} did not stop within 5 s of SIGTERM; killed",
                    self.name
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(self.log())
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
    [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        "--log-facility=-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_upstream(ns: &NetNs, files: &Files) -> Result<Daemon> {
    let mut args = dnsmasq_base();
    args.push(format!("--listen-address={UPSTREAM}"));
    args.push(format!("--addn-hosts={}", files.hosts.display()));
    args.push("--local-ttl=3600".into());
    let mut cmd = nsenter(ns);
    cmd.arg("dnsmasq").args(&args);
    let d = Daemon::spawn("upstream-dnsmasq", cmd, &files.dir)?;
    wait_ready(ns, SocketAddr::new(UPSTREAM.into(), 53), &d)?;
    Ok(d)
}

/// Starts the forwarder `tool` in `ns` and waits until it answers.
fn start_forwarder(
    tool: Tool,
    ns: &NetNs,
    leash: &Path,
    files: &Files,
    tag: &str,
) -> Result<Daemon> {
    let cmd = match tool {
        Tool::Leash => {
            let mut c = nsenter(ns);
            c.arg(leash).arg("dns").arg(&files.policy);
            c
        }
        Tool::Dnsmasq | Tool::DnsmasqInterval => {
            let mut args = dnsmasq_base();
            args.push(format!("--listen-address={}", LISTEN.ip()));
            args.push(format!("--port={}", LISTEN.port()));
            args.push(format!("--server={UPSTREAM}"));
            args.push("--cache-size=10000".into());
            args.push(if tool == Tool::Dnsmasq {
                format!(
                    "--nftset=/bench.test/4#inet#{}#{}",
                    ruleset::TABLE_NAME,
                    set_name()
                )
            } else {
                "--nftset=/bench.test/4#inet#bench#ivl".into()
            });
            let mut c = nsenter(ns);
            c.arg("dnsmasq").args(&args);
            c
        }
        Tool::Direct => bail!("the direct baseline has no forwarder"),
    };
    let d = Daemon::spawn(&format!("{tag}-{}", tool.short()), cmd, &files.dir)?;
    wait_ready(ns, LISTEN, &d)?;
    Ok(d)
}

fn set_name() -> String {
    ruleset::domain_set_name(RULE, ruleset::Family::Ipv4)
}

/// A DNS query for `name` type A, recursion desired.
fn query_packet(id: u16, name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + name.len() + 6);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// Waits (at most 10 s) until `server` answers a query for `probe.test` from inside `ns`.
fn wait_ready(ns: &NetNs, server: SocketAddr, d: &Daemon) -> Result<()> {
    let ok = ns.run(|| -> Result<bool> {
        let bind: SocketAddr = if server.ip().is_loopback() {
            "127.0.0.1:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let sock = UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        for id in 1u16.. {
            if Instant::now() > deadline {
                return Ok(false);
            }
            let _ = sock.send_to(&query_packet(id, "probe.test"), server);
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && n >= 12
                && buf[..2] == id.to_be_bytes()
                && buf[2] & 0x80 != 0
            {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(false)
    })?;
    ensure!(
        ok,
        "{} did not answer on {server} within 10 s:\n{}",
        d.name,
        d.log()
    );
    Ok(())
}

/// Runs `cmd` to its end, stdin from /dev/null, reaping it with its rusage; an error unless it
/// exits with 0.
fn run_to_end(cmd: &mut Command, dir: &Path) -> Result<Finished> {
    common::child::run(cmd.stdin(Stdio::null()), dir, "child", None)?.checked()
}

/// CPU seconds (user + system) of each thread of `pid`, by thread name.
fn thread_cpu(pid: i32) -> BTreeMap<String, f64> {
    // SAFETY: sysconf cannot fail for this name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(comm).or_insert(0.0) += ticks / hz;
    }
    out
}

fn cpu_diff(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// dnsperf
// ---------------------------------------------------------------------------------------------

/// One dnsperf pass.
#[derive(Debug, Default, Clone)]
struct Pass {
    sent: u64,
    completed: u64,
    lost: u64,
    /// Response codes other than NOERROR, with counts.
    bad_rcodes: Vec<(String, u64)>,
    noerror: u64,
    qps: f64,
    /// Per-query round trip times in seconds (latency pass only).
    rtts: Vec<f64>,
    /// Names answered NOERROR (latency pass only).
    answered: Vec<String>,
    /// dnsperf's own CPU time.
    cpu: Duration,
}

impl Pass {
    fn failures(&self) -> u64 {
        self.lost + self.bad_rcodes.iter().map(|(_, n)| n).sum::<u64>()
    }
}

struct Perf<'a> {
    server: SocketAddr,
    file: &'a Path,
    /// `-n`: runs through the file (0: unlimited, with `limit`).
    runs: u32,
    /// `-l` seconds.
    limit: u32,
    outstanding: u32,
    clients: u32,
    /// `-t` seconds.
    timeout: u32,
}

fn dnsperf(ns: &NetNs, p: &Perf<'_>, dir: &Path) -> Result<Pass> {
    let mut cmd = nsenter(ns);
    cmd.arg("dnsperf")
        .arg("-s")
        .arg(p.server.ip().to_string())
        .arg("-p")
        .arg(p.server.port().to_string())
        .arg("-d")
        .arg(p.file)
        .arg("-c")
        .arg(p.clients.to_string())
        .arg("-T")
        .arg("1")
        .arg("-q")
        .arg(p.outstanding.to_string())
        .arg("-t")
        .arg(p.timeout.to_string())
        .arg("-l")
        .arg(p.limit.to_string());
    if p.runs > 0 {
        cmd.arg("-n").arg(p.runs.to_string());
    }
    let r = run_to_end(&mut cmd, dir)?;
    let mut pass = parse_dnsperf(&r.stdout)
        .with_context(|| format!("dnsperf output:\n{}{}", r.stdout, r.stderr))?;
    pass.cpu = r.user + r.sys;
    Ok(pass)
}

fn parse_dnsperf(out: &str) -> Result<Pass> {
    let mut p = Pass::default();
    let first_num = |s: &str| -> Result<f64> {
        s.split_whitespace()
            .next()
            .context("number")?
            .parse::<f64>()
            .context("number")
    };
    let mut seen = 0;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Queries sent:") {
            p.sent = first_num(v)? as u64;
            seen += 1;
        } else if let Some(v) = t.strip_prefix("Queries completed:") {
            p.completed = first_num(v)? as u64;
            seen += 1;
        } else if let Some(v) = t.strip_prefix("Queries lost:") {
            p.lost = first_num(v)? as u64;
        } else if let Some(v) = t.strip_prefix("Queries per second:") {
            p.qps = first_num(v)?;
            seen += 1;
        } else if let Some(v) = t.strip_prefix("Response codes:") {
            // `NOERROR 31072 (100.00%), SERVFAIL 3 (0.01%)`
            for part in v.split(',') {
                let f: Vec<&str> = part.split_whitespace().collect();
                if f.len() >= 2 {
                    let n: u64 = f[1].parse().context("response code count")?;
                    if f[0] == "NOERROR" {
                        p.noerror = n;
                    } else {
                        p.bad_rcodes.push((f[0].to_string(), n));
                    }
                }
            }
        }
    }
    ensure!(seen == 3, "no statistics in dnsperf's output");
    Ok(p)
}

/// The latency pass: asks `names` one at a time (the next query leaves when the previous answer
/// arrived or timed out) from inside `ns`, and records each round trip. Stops early after `cap`.
fn sequential(
    ns: &NetNs,
    server: SocketAddr,
    names: &[String],
    timeout: Duration,
    cap: Duration,
) -> Result<Pass> {
    ns.run(|| -> Result<Pass> {
        let bind: SocketAddr = if server.ip().is_loopback() {
            "127.0.0.1:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let sock = UdpSocket::bind(bind)?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(timeout))?;
        let mut p = Pass {
            rtts: Vec::with_capacity(names.len()),
            ..Pass::default()
        };
        let mut rcodes: BTreeMap<u8, u64> = BTreeMap::new();
        let mut buf = [0u8; 1500];
        let start = Instant::now();
        for (i, name) in names.iter().enumerate() {
            if start.elapsed() > cap {
                break;
            }
            let id = i as u16;
            let q = query_packet(id, name);
            let t0 = Instant::now();
            p.sent += 1;
            if sock.send(&q).is_err() {
                p.lost += 1;
                continue;
            }
            loop {
                match sock.recv(&mut buf) {
                    // An answer to this query (stale answers to earlier, timed-out ones are skipped).
                    Ok(n) if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 => {
                        p.rtts.push(t0.elapsed().as_secs_f64());
                        p.completed += 1;
                        let rcode = buf[3] & 0x0f;
                        if rcode == 0 {
                            p.noerror += 1;
                            p.answered.push(name.clone());
                        } else {
                            *rcodes.entry(rcode).or_default() += 1;
                        }
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        // Timed out (or refused): lost.
                        p.lost += 1;
                        break;
                    }
                }
            }
        }
        p.qps = p.completed as f64 / start.elapsed().as_secs_f64();
        p.bad_rcodes = rcodes
            .into_iter()
            .map(|(c, n)| {
                let name = match c {
                    2 => "SERVFAIL".to_string(),
                    3 => "NXDOMAIN".to_string(),
                    5 => "REFUSED".to_string(),
                    c => format!("rcode {c}"),
                };
                (name, n)
            })
            .collect();
        Ok(p)
    })
}

// ---------------------------------------------------------------------------------------------
// Set read-back
// ---------------------------------------------------------------------------------------------

/// Keys (IPv4, as u32) of set `set` of table `inet table` in `ns`, timed or not: the kernel
/// crate's element listing (one GETSETELEM dump); interval ends are left out. dnsmasq adds its
/// elements without a timeout, and the interval set of the third tool has no timeouts at all, so
/// every element counts here.
fn set_keys(ns: &NetNs, table: &str, set: &str) -> Result<Vec<u32>> {
    let elems = ns
        .run(|| kernel::set_elements(table, set))?
        .with_context(|| format!("there is no set inet {table} {set}"))?;
    Ok(elems
        .into_iter()
        .filter(|e| !e.interval_end)
        .filter_map(|e| <[u8; 4]>::try_from(e.key.as_slice()).ok())
        .map(u32::from_be_bytes)
        .collect())
}

/// What the read-back found.
#[derive(Debug, Default, Clone)]
struct Check {
    /// Pre-filled elements still there (uncached) / cached addresses present (cached).
    base_present: u64,
    /// Elements of fresh (uncached) addresses.
    fresh: u64,
    /// Addresses answered NOERROR in the latency pass but not in the set.
    missing: u64,
    /// NOERROR answers of both passes that need an element each (uncached).
    needed: u64,
    ok: bool,
    note: String,
    took: Duration,
}

fn check_set(ns: &NetNs, tool: Tool, case: Case, lat: &Pass, tp: &Pass) -> Result<Check> {
    let t = Instant::now();
    let (table, set) = match tool {
        Tool::DnsmasqInterval => ("bench".to_string(), "ivl".to_string()),
        _ => (ruleset::TABLE_NAME.to_string(), set_name()),
    };
    let keys: HashSet<u32> = set_keys(ns, &table, &set)?.into_iter().collect();
    let mut c = Check::default();
    let in_range = |lo: u32, hi: u32| {
        keys.iter()
            .filter(|&&k| k >= BASE + lo && k < BASE + hi)
            .count() as u64
    };
    let missing: u64 = lat
        .answered
        .iter()
        .filter_map(|n| offset_of(n))
        .filter(|&o| !keys.contains(&(BASE + o)))
        .count() as u64;
    c.missing = missing;
    match case {
        Case::Uncached => {
            c.base_present = in_range(0, PREFILL);
            c.fresh = in_range(PREFILL, RANGE);
            c.needed = lat.noerror + tp.noerror;
            let sent = lat.sent + tp.sent;
            c.ok = c.missing == 0
                && c.base_present == u64::from(PREFILL)
                && c.fresh >= c.needed
                && c.fresh <= sent;
            c.note = format!(
                "{} pre-filled + {} new elements; {} NOERROR answers of {} queries; {} answered addresses missing",
                c.base_present, c.fresh, c.needed, sent, c.missing
            );
        }
        Case::Plain => {
            c.base_present = keys.len() as u64;
            c.ok = keys.is_empty();
            c.note = format!("{} elements (no name matched a rule)", keys.len());
        }
        Case::Cached => {
            c.base_present = in_range(0, CACHED_NAMES);
            c.ok = c.missing == 0 && c.base_present == u64::from(CACHED_NAMES);
            c.note = format!(
                "{} of {CACHED_NAMES} cached names' addresses in the set; {} answered addresses missing",
                c.base_present, c.missing
            );
        }
    }
    c.took = t.elapsed();
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// One run: one tool, one case, in a fresh client namespace
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct RunResult {
    lat: Pass,
    tp: Pass,
    /// Uncached forwarder runs: the latency pass over names no rule matches (nothing inserted).
    plain: Option<Pass>,
    /// CPU seconds during the throughput pass, by thread name, of the forwarder.
    fwd_cpu: BTreeMap<String, f64>,
    upstream_cpu: f64,
    check: Option<Check>,
    /// leash's counters at exit, or dnsmasq's `queries forwarded/answered locally` line.
    stats: String,
    /// Passes that started while the machine was busy.
    unsettled: usize,
}

impl RunResult {
    fn failures(&self) -> u64 {
        self.lat.failures()
            + self.tp.failures()
            + self.plain.as_ref().map_or(0, Pass::failures)
            + self.check.as_ref().map_or(0, |c| c.missing)
    }
    fn fwd_cpu_total(&self) -> f64 {
        self.fwd_cpu.values().sum()
    }
}

struct Ctx<'a> {
    opts: &'a Opts,
    files: &'a Files,
    leash: &'a Path,
    upstream_ns: &'a NetNs,
    upstream: &'a Daemon,
    serial: u32,
}

fn run_one(ctx: &mut Ctx<'_>, tool: Tool, case: Case, round: usize) -> Result<RunResult> {
    let dir = &ctx.files.dir;
    ctx.serial += 1;
    let ns = NetNs::new().context("new namespace")?;
    wire(&ns, ctx.upstream_ns, ctx.serial)?;
    run_to_end(nsenter(&ns).arg(ctx.leash).arg("apply").arg(&ctx.files.policy), dir).context("leash apply")?;
    if case == Case::Uncached {
        match tool {
            Tool::Leash | Tool::Dnsmasq => prefill_hash(&ns)?,
            Tool::DnsmasqInterval => {
                run_to_end(nsenter(&ns).arg("nft").arg("-f").arg(&ctx.files.interval_nft), dir)
                    .context("loading the interval set")?;
            }
            Tool::Direct => {}
        }
    }
    let tag = format!("r{round}-{}", case.short());
    let fwd = if tool.is_forwarder() {
        Some(start_forwarder(tool, &ns, ctx.leash, ctx.files, &tag)?)
    } else {
        None
    };
    let server = if tool.is_forwarder() {
        LISTEN
    } else {
        SocketAddr::new(UPSTREAM.into(), 53)
    };
    let capped = tool == Tool::DnsmasqInterval;
    let mut res = RunResult::default();
    if case == Case::Cached {
        // Warm-up: every name once (fills the cache), untimed.
        dnsperf(
            &ns,
            &Perf {
                server,
                file: &ctx.files.cached_once,
                runs: 1,
                limit: 30,
                outstanding: 10,
                clients: 1,
                timeout: 2,
            },
            dir,
        )?;
    }
    // Latency pass: one query at a time.
    res.unsettled += usize::from(!settle());
    let names: Vec<String> = match case {
        Case::Uncached => (0..LAT_UNCACHED).map(uncached_name).collect(),
        Case::Plain => (0..FORWARD_ONLY).map(plain_name).collect(),
        Case::Cached => (0..CACHED_LAT_REPEAT * CACHED_NAMES)
            .map(|i| cached_name(i % CACHED_NAMES))
            .collect(),
    };
    res.lat = sequential(
        &ns,
        server,
        &names,
        Duration::from_secs(if capped { 5 } else { 2 }),
        Duration::from_secs(if capped {
            u64::from(ctx.opts.interval_secs)
        } else {
            60
        }),
    )?;
    if case == Case::Uncached && tool.is_forwarder() && !capped {
        res.unsettled += usize::from(!settle());
        let names: Vec<String> = (0..FORWARD_ONLY).map(plain_name).collect();
        res.plain = Some(sequential(
            &ns,
            server,
            &names,
            Duration::from_secs(2),
            Duration::from_secs(60),
        )?);
    }
    // Throughput pass.
    res.unsettled += usize::from(!settle());
    let fwd_before = fwd
        .as_ref()
        .map(|d| thread_cpu(d.pid()))
        .unwrap_or_default();
    let up_before: f64 = thread_cpu(ctx.upstream.pid()).values().sum();
    res.tp = dnsperf(
        &ns,
        &Perf {
            server,
            file: match case {
                Case::Uncached => &ctx.files.tp_uncached,
                Case::Plain => &ctx.files.tp_plain,
                Case::Cached => &ctx.files.cached_once,
            },
            runs: if case == Case::Cached { 0 } else { 1 },
            limit: match (case, capped) {
                (_, true) => ctx.opts.interval_secs,
                (Case::Uncached | Case::Plain, false) => 60,
                (Case::Cached, false) => ctx.opts.cached_secs,
            },
            outstanding: TP_OUTSTANDING,
            clients: TP_CLIENTS,
            timeout: if capped { 5 } else { 2 },
        },
        dir,
    )?;
    if let Some(d) = &fwd {
        res.fwd_cpu = cpu_diff(&fwd_before, &thread_cpu(d.pid()));
    }
    res.upstream_cpu = thread_cpu(ctx.upstream.pid()).values().sum::<f64>() - up_before;
    if let Some(d) = fwd {
        if tool != Tool::Leash {
            // dnsmasq logs its counters on SIGUSR1.
            d.signal(libc::SIGUSR1);
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = d.stop()?;
        res.stats = match tool {
            Tool::Leash => log
                .lines()
                .find_map(|l| l.split("stopped; ").nth(1))
                .unwrap_or("no stats line")
                .to_string(),
            _ => log
                .lines()
                .filter(|l| l.contains("queries forwarded") || l.contains("cache size"))
                .map(|l| l.split(": ").skip(1).collect::<Vec<_>>().join(": "))
                .collect::<Vec<_>>()
                .join("; "),
        };
        res.check = Some(check_set(&ns, tool, case, &res.lat, &res.tp)?);
    }
    Ok(res)
}

/// 100,000 elements with a long timeout into the rule's hash set, from inside `ns`.
fn prefill_hash(ns: &NetNs) -> Result<()> {
    let set = set_name();
    ns.run(|| -> Result<()> {
        let mut w = SetWriter::open()?;
        let all: Vec<TimedElement<'_>> = (0..PREFILL)
            .map(|i| TimedElement {
                set: &set,
                addr: IpAddr::V4(v4(i)),
                timeout_ms: PREFILL_TIMEOUT_MS,
                name: None,
            })
            .collect();
        for chunk in all.chunks(5_000) {
            w.add_timed(ruleset::TABLE_NAME, chunk)?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report
// ---------------------------------------------------------------------------------------------

/// Per tool and case: medians over rounds.
#[derive(Debug, Default)]
struct Summary {
    rounds: usize,
    qps: f64,
    qps_all: Vec<f64>,
    p50_us: f64,
    p99_us: f64,
    /// The same for names no rule matches (uncached forwarder runs).
    plain_p50_us: f64,
    plain_p99_us: f64,
    failures: u64,
    queries: u64,
    /// Forwarder CPU per query of the throughput pass, in µs, and the share of it in threads
    /// named `leash-dns-sets`.
    cpu_us_per_q: f64,
    sets_thread_us_per_q: f64,
    upstream_us_per_q: f64,
    dnsperf_us_per_q: f64,
    checks_ok: usize,
    checks: usize,
    unsettled: usize,
    passes: usize,
}

fn summarize(runs: &[RunResult]) -> Summary {
    let per_q = |f: &dyn Fn(&RunResult) -> f64| -> f64 {
        median_f(
            &runs
                .iter()
                .filter(|r| r.tp.completed > 0)
                .map(|r| f(r) * 1e6 / r.tp.completed as f64)
                .collect::<Vec<_>>(),
        )
    };
    let p = |q: f64| {
        median_f(
            &runs
                .iter()
                .map(|r| percentile_f(&sorted(&r.lat.rtts), q) * 1e6)
                .collect::<Vec<_>>(),
        )
    };
    let plain = |q: f64| {
        median_f(
            &runs
                .iter()
                .filter_map(|r| r.plain.as_ref())
                .map(|p| percentile_f(&sorted(&p.rtts), q) * 1e6)
                .collect::<Vec<_>>(),
        )
    };
    Summary {
        rounds: runs.len(),
        qps: median_f(&runs.iter().map(|r| r.tp.qps).collect::<Vec<_>>()),
        qps_all: runs.iter().map(|r| r.tp.qps).collect(),
        p50_us: p(50.0),
        p99_us: p(99.0),
        plain_p50_us: plain(50.0),
        plain_p99_us: plain(99.0),
        failures: runs.iter().map(RunResult::failures).sum(),
        queries: runs
            .iter()
            .map(|r| r.lat.sent + r.tp.sent + r.plain.as_ref().map_or(0, |p| p.sent))
            .sum(),
        cpu_us_per_q: per_q(&|r| r.fwd_cpu_total()),
        sets_thread_us_per_q: per_q(&|r| {
            r.fwd_cpu
                .iter()
                .filter(|(k, _)| k.as_str() == "leash-dns-sets")
                .map(|(_, v)| v)
                .sum()
        }),
        upstream_us_per_q: per_q(&|r| r.upstream_cpu),
        dnsperf_us_per_q: per_q(&|r| r.tp.cpu.as_secs_f64()),
        checks_ok: runs
            .iter()
            .filter(|r| r.check.as_ref().is_some_and(|c| c.ok))
            .count(),
        checks: runs.iter().filter(|r| r.check.is_some()).count(),
        unsettled: runs.iter().map(|r| r.unsettled).sum(),
        passes: runs
            .iter()
            .map(|r| 2 + usize::from(r.plain.is_some()))
            .sum(),
    }
}

fn fmt_qps(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn fmt_us(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.abs() >= 10_000.0 {
        format!("{:.0} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn render(opts: &Opts, results: &BTreeMap<(Case, Tool), Vec<RunResult>>, header: &str) -> String {
    let mut s = String::new();
    writeln!(s, "{header}").unwrap();
    for case in [Case::Uncached, Case::Cached, Case::Plain] {
        let tools: Vec<Tool> = [
            Tool::Leash,
            Tool::Dnsmasq,
            Tool::DnsmasqInterval,
            Tool::Direct,
        ]
        .into_iter()
        .filter(|t| results.contains_key(&(case, *t)))
        .collect();
        if tools.is_empty() {
            continue;
        }
        let sum: BTreeMap<Tool, Summary> = tools
            .iter()
            .map(|t| (*t, summarize(&results[&(case, *t)])))
            .collect();
        // The forwarding-only run has no baseline of its own: the upstream answers those names
        // as it answers the uncached ones.
        let uncached_direct = results
            .get(&(Case::Uncached, Tool::Direct))
            .map(|r| summarize(r));
        let direct = sum.get(&Tool::Direct).or(uncached_direct.as_ref());
        let added = |t: Tool, which: fn(&Summary) -> f64| -> f64 {
            match (sum.get(&t), direct) {
                (Some(x), Some(d)) if t != Tool::Direct => which(x) - which(d),
                _ => f64::NAN,
            }
        };
        writeln!(s, "\n### {}\n", case.label()).unwrap();
        writeln!(
            s,
            "| tool | case | queries/s | p50 added | p99 added | failures | p50 | p99 | forwarder CPU/query | set check |"
        )
        .unwrap();
        writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|").unwrap();
        for &t in &tools {
            let x = &sum[&t];
            let cpu = if t.is_forwarder() {
                if t == Tool::Leash {
                    format!(
                        "{} ({} in the set thread)",
                        fmt_us(x.cpu_us_per_q),
                        fmt_us(x.sets_thread_us_per_q)
                    )
                } else {
                    fmt_us(x.cpu_us_per_q)
                }
            } else {
                "–".into()
            };
            let check = if x.checks == 0 {
                "–".into()
            } else {
                format!("{}/{} ok", x.checks_ok, x.checks)
            };
            let rounds = if x.rounds != opts.rounds {
                format!(
                    " ({} run{})",
                    x.rounds,
                    if x.rounds == 1 { "" } else { "s" }
                )
            } else {
                String::new()
            };
            writeln!(
                s,
                "| {}{rounds} | {} | {} | {} | {} | {} of {} | {} | {} | {cpu} | {check} |",
                t.label(),
                case.short(),
                fmt_qps(x.qps),
                if t.is_forwarder() {
                    fmt_us(added(t, |x| x.p50_us))
                } else {
                    "(0)".into()
                },
                if t.is_forwarder() {
                    fmt_us(added(t, |x| x.p99_us))
                } else {
                    "(0)".into()
                },
                x.failures,
                x.queries,
                fmt_us(x.p50_us),
                fmt_us(x.p99_us),
            )
            .unwrap();
        }
        if let (Some(l), Some(d)) = (sum.get(&Tool::Leash), sum.get(&Tool::Dnsmasq)) {
            writeln!(
                s,
                "\nRatios (same run, medians over rounds): leash/dnsmasq queries/s {}; dnsmasq/leash added latency p50 {}, p99 {}; dnsmasq/leash forwarder CPU per query {}.",
                ratio(l.qps, d.qps),
                ratio(added(Tool::Dnsmasq, |x| x.p50_us), added(Tool::Leash, |x| x.p50_us)),
                ratio(added(Tool::Dnsmasq, |x| x.p99_us), added(Tool::Leash, |x| x.p99_us)),
                ratio(d.cpu_us_per_q, l.cpu_us_per_q),
            )
            .unwrap();
        }
        if let (Some(l), Some(d)) = (sum.get(&Tool::Leash), sum.get(&Tool::Dnsmasq)) {
            if case == Case::Cached {
                writeln!(
                    s,
                    "Cached answers never leave the client namespace, the direct queries cross the veth: the added latency can be negative. Absolute latency dnsmasq/leash: p50 {}, p99 {}.",
                    ratio(d.p50_us, l.p50_us),
                    ratio(d.p99_us, l.p99_us),
                )
                .unwrap();
            } else if !l.plain_p50_us.is_nan() {
                writeln!(
                    s,
                    "\nForwarding alone (one query at a time, uncached names no rule matches, so nothing is inserted): leash p50 {} p99 {}, dnsmasq p50 {} p99 {}. The set insertion before the answer therefore costs leash {} (p50) and dnsmasq {} (p50) of each uncached answer.",
                    fmt_us(l.plain_p50_us),
                    fmt_us(l.plain_p99_us),
                    fmt_us(d.plain_p50_us),
                    fmt_us(d.plain_p99_us),
                    fmt_us(l.p50_us - l.plain_p50_us),
                    fmt_us(d.p50_us - d.plain_p50_us),
                )
                .unwrap();
            }
        }
        if let (Some(l), Some(i)) = (sum.get(&Tool::Leash), sum.get(&Tool::DnsmasqInterval)) {
            writeln!(
                s,
                "leash/dnsmasq-with-interval-set queries/s {}.",
                ratio(l.qps, i.qps)
            )
            .unwrap();
        }
        writeln!(s, "\nPer round queries/s and CPU per throughput-pass query (µs: forwarder / upstream dnsmasq / dnsperf):\n").unwrap();
        for &t in &tools {
            let x = &sum[&t];
            writeln!(
                s,
                "- {}: {} — CPU {} / {} / {}",
                t.short(),
                x.qps_all
                    .iter()
                    .map(|q| fmt_qps(*q))
                    .collect::<Vec<_>>()
                    .join(", "),
                if t.is_forwarder() {
                    fmt_us(x.cpu_us_per_q)
                } else {
                    "–".into()
                },
                fmt_us(x.upstream_us_per_q),
                fmt_us(x.dnsperf_us_per_q),
            )
            .unwrap();
        }
        let unsettled: usize = sum.values().map(|x| x.unsettled).sum();
        let passes: usize = sum.values().map(|x| x.passes).sum();
        writeln!(
            s,
            "\n{unsettled} of {passes} timed passes started while other load kept the machine busy."
        )
        .unwrap();
    }
    s
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    if !common::is_root() {
        eprintln!("bench dns: needs root (network namespaces and nftables); skipped");
        return Ok(());
    }
    for tool in ["dnsperf", "dnsmasq", "nft", "nsenter"] {
        if !common::have(tool) {
            eprintln!(
                "bench dns: `{tool}` is not installed (apt-get install dnsperf dnsmasq-base nftables util-linux); skipped"
            );
            return Ok(());
        }
    }
    let leash = common::leash_bin();
    let scratch = Scratch::create(std::env::temp_dir(), "dns", opts.keep)?;
    let files = write_files(&scratch.0)?;
    let started = Instant::now();

    let header = format!(
        "leash binary: {}\n{}; {}; {}\n{}; {} rounds{}",
        leash.display(),
        tool_version(&["dnsmasq", "--version"]),
        tool_version_dnsperf(),
        tool_version(&["nft", "--version"]),
        common::kernel_line(),
        opts.rounds,
        if opts.quick {
            " (LEASH_BENCH_QUICK)"
        } else {
            ""
        },
    );
    println!("{header}\n");

    let upstream_ns = NetNs::new().context("upstream namespace")?;
    setup_upstream(&upstream_ns)?;
    let upstream = start_upstream(&upstream_ns, &files)?;
    let mut ctx = Ctx {
        opts: &opts,
        files: &files,
        leash: &leash,
        upstream_ns: &upstream_ns,
        upstream: &upstream,
        serial: 0,
    };
    let mut results: BTreeMap<(Case, Tool), Vec<RunResult>> = BTreeMap::new();
    for round in 0..opts.rounds {
        for &case in &opts.cases {
            let mut order = vec![Tool::Leash, Tool::Dnsmasq, Tool::Direct];
            if round % 2 == 1 {
                order.reverse();
            }
            for tool in order {
                let t = Instant::now();
                let r = run_one(&mut ctx, tool, case, round + 1).with_context(|| {
                    format!("round {}, {}, {}", round + 1, case.short(), tool.short())
                })?;
                print_run(round + 1, case, tool, &r, t.elapsed());
                results.entry((case, tool)).or_default().push(r);
            }
        }
    }
    if opts.forward_only && opts.cases.contains(&Case::Uncached) {
        for tool in [Tool::Leash, Tool::Dnsmasq] {
            let t = Instant::now();
            let r = run_one(&mut ctx, tool, Case::Plain, 0)
                .with_context(|| format!("forwarding only, {}", tool.short()))?;
            print_run(0, Case::Plain, tool, &r, t.elapsed());
            results.entry((Case::Plain, tool)).or_default().push(r);
        }
    }
    if opts.interval && opts.cases.contains(&Case::Uncached) {
        let t = Instant::now();
        let r = run_one(&mut ctx, Tool::DnsmasqInterval, Case::Uncached, 0)
            .context("dnsmasq with an interval set")?;
        print_run(0, Case::Uncached, Tool::DnsmasqInterval, &r, t.elapsed());
        results
            .entry((Case::Uncached, Tool::DnsmasqInterval))
            .or_default()
            .push(r);
    }
    drop(upstream);
    drop(upstream_ns);

    let report = render(&opts, &results, &header);
    let report = format!(
        "{report}\n(bench took {:.0} s; `p50`/`p99`: one query outstanding, medians over rounds of each run's percentile; added = forwarder minus direct; failures: lost + non-NOERROR + answered addresses missing from the set, summed over rounds)\n",
        started.elapsed().as_secs_f64()
    );
    println!("\n{report}");
    let path = common::write_report("dns", &report)?;
    println!("written to {}", path.display());
    Ok(())
}

/// dnsperf has no `--version`; its help names the version.
fn tool_version_dnsperf() -> String {
    tool_output(&["dnsperf", "-h"])
        .lines()
        .find(|l| l.starts_with("Version"))
        .map(|l| format!("dnsperf {}", l.trim_start_matches("Version ")))
        .unwrap_or_else(|| "dnsperf (version unknown)".into())
}

fn print_run(round: usize, case: Case, tool: Tool, r: &RunResult, took: Duration) {
    let lat = sorted(&r.lat.rtts);
    println!(
        "   {} {:8} {:16} {:>8} q/s ({} of {} answered) | seq p50 {} p99 {} ({} answered) | failures {} | fwd CPU {:.2} s {:?} | {:.1} s",
        if round == 0 {
            "once   ".to_string()
        } else {
            format!("round {round}")
        },
        case.short(),
        tool.short(),
        fmt_qps(r.tp.qps),
        r.tp.noerror,
        r.tp.sent,
        fmt_us(percentile_f(&lat, 50.0) * 1e6),
        fmt_us(percentile_f(&lat, 99.0) * 1e6),
        r.lat.noerror,
        r.failures(),
        r.fwd_cpu_total(),
        r.fwd_cpu
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>(),
        took.as_secs_f64(),
    );
    if let Some(p) = &r.plain {
        let l = sorted(&p.rtts);
        println!(
            "      forwarding only (no rule matches): p50 {} p99 {} ({} of {} answered)",
            fmt_us(percentile_f(&l, 50.0) * 1e6),
            fmt_us(percentile_f(&l, 99.0) * 1e6),
            p.noerror,
            p.sent
        );
    }
    if let Some(c) = &r.check {
        println!(
            "      set: {} ({}; read back in {:.0} ms)",
            if c.ok { "ok" } else { "NOT OK" },
            c.note,
            c.took.as_secs_f64() * 1000.0
        );
    }
    if !r.stats.is_empty() {
        println!("      stats: {}", r.stats);
    }
}
