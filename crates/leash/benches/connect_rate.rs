//! Benchmark: sequential TCP connects across a veth with a 1,000,000-entry blocklist loaded, against
//! no rules at all and against the same blocklist as linear iptables rules, in one run.
//!
//! ```sh
//! sudo cargo bench -p leash --bench connect_rate                  # 5 rounds, all variants
//! sudo cargo bench -p leash --bench connect_rate -- --rounds 9 --connects 20000 --no-nft
//! LEASH_BENCH_ROUNDS=3 cargo bench -p leash --bench connect_rate  # rounds from the environment
//! ```
//!
//! Options (after `--`): `--rounds N` (default 5, or `LEASH_BENCH_ROUNDS`), `--connects N`
//! (connects per round for the fast variants, default 20,000), `--slice N` (they take turns in
//! slices of N connects, default 1,000), `--round-secs S` (their cap per round, default 20),
//! `--slow-connects N` / `--slow-secs S` (the same for the linear iptables
//! variants, default 200 connects or 10 s), `--entries N` (blocklist size, default 1,000,000),
//! `--ipt-entries N` (iptables rules to try first, default `--entries`), `--load-cap S` (a load that
//! takes longer is stopped, default 120; an iptables load that fails or is stopped is retried with
//! 100,000 rules and the report says so), `--no-nft` (skip the two nft variants),
//! `--no-iptables`, `--keep` (keep the scratch directory with the blocklist, policy, script and
//! rules), `--nft-script FILE` (one more variant: a table of your own loaded with `nft -f`, e.g. an
//! edited copy of the kept `policy.nft`, to measure a change to the compiled table before making
//! it; it must block the probe like the others). `LEASH_BIN` overrides the leash binary
//! (default: the one cargo built for this bench).
//! Needs `nsenter` (util-linux); `nft` (nftables) and `iptables-nft-restore` /
//! `iptables-legacy-restore` (iptables) for their variants, which are left out if missing.
//!
//! Variants, each in a pair of anonymous network namespaces of its own (client 198.18.0.2, peer
//! 198.18.0.1, joined by a veth pair; held by descriptors of this process, so they vanish with it
//! however it ends; nothing runs in the machine's own namespace):
//! - **no rules**: nothing loaded in the client (so no connection tracking either).
//! - **leash**: `leash apply` of a policy with `[[set]] blocklist` (the 1,000,000 entries), a deny
//!   rule `to = ["set:blocklist"]` first, then an allow rule for TCP to 198.18.0.0/15, default
//!   deny. leash puts loopback and established connections first, so only the SYN of a
//!   connection is looked up in the set.
//! - **leash, allow_established = false**: the same policy without the established rule. The
//!   table then has no `ct` expression, so the kernel tracks no connections, but every packet of
//!   a connection (SYN, ACK, RST) walks the chain and is looked up in the set.
//! - **leash, 1-entry set**: the same policy with only the probe (below) in the set: what the
//!   policy costs without a big set (connection tracking, the chain), so that the difference to
//!   the leash variant is the cost of the 1,000,000 entries alone.
//! - **ct only** (with nft): a table whose one rule is `ct state established,related accept`:
//!   connection tracking alone, the floor under any policy that accepts established connections
//!   first.
//! - **nft -f**: the script `leash compile` prints for the same policy, loaded with `nft -f`: the
//!   same table, so it should cost the same per packet (a sanity check of the leash variant).
//! - **iptables-nft / iptables-legacy**: the same entries as linear rules
//!   (`-A OUTPUT -d X -j REJECT`, one per entry) loaded with `iptables-nft-restore` /
//!   `iptables-legacy-restore`. The chain mirrors the leash table: `-o lo` and `--ctstate
//!   ESTABLISHED,RELATED` accepted first (so, as with leash, only the SYN walks the list), then the
//!   entries, then TCP to 198.18.0.0/15 accepted, then REJECT.
//!
//! The blocklist: one line per entry, half /32 and half /24 (chosen by a fixed pseudo-random
//! sequence), spread evenly over 1.0.0.0-223.255.255.255 at least two /24s apart so that no two
//! entries touch and leash's range merging keeps all of them. It leaves out 127.0.0.0/8 and
//! 198.18.0.0/15, except for its last line, the probe 198.19.255.77/32: after each load a connect
//! to the probe must be refused at once, which proves the list is in force (the allow rule covers
//! the probe, so without the list the SYN would go to the peer, which drops it). For linear rules
//! the probe is the last rule, so its connect time is one walk of the whole list.
//!
//! Each round runs every variant once, after waiting for an idle machine (`common::settle`); one
//! untimed warm-up round comes first. The fast variants (all but linear iptables) take turns in
//! slices of 1,000 connects, in an order that rotates between rounds, so that a change in the
//! machine's load hits them alike; the linear iptables variants follow, one after the other.
//!
//! A client thread in the client namespace makes sequential connects to the peer
//! (`TcpStream::connect_timeout`, 2 s), each closed with an RST (`SO_LINGER` 0) so that no
//! TIME_WAIT piles up and ports never run out, the same as `leash test --measure`. The peer
//! accepts and closes on one thread. The client thread is pinned to CPU 0 and the accept threads
//! to CPU 1: left to the scheduler, whether the two share a CPU changes a connect's cost by more
//! than any firewall here does, and differently from slice to slice.
//!
//! Reported: connects/s as connects made over the wall time of the loop, median over the rounds,
//! and its ratio to no rules; the median of the per-round ratios; for the fast variants the
//! median of the paired per-slice ratios (each slice against the no-rules slice of the same turn,
//! a few hundred ms apart: the comparison least disturbed by other programs on the machine);
//! p50/p99 of the `connect` call's time over all connects of all rounds; each load's wall time,
//! CPU and peak RSS; leash's rule counters (only the SYN of a connection should reach the list).

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::{Args, Scratch, have, median_f, ms, nsenter, percentile, settle, tool_version, us};
use kernel::netns::NetNs;
use kernel::rtnl::{Family, Rtnl};
use std::fmt::Write as _;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 9000;
/// The blocklist's last line: inside the range the policy allows, so only the list rejects it.
const PROBE: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 77);
/// /24 blocks (address >> 8, start inclusive, end exclusive, ascending) no generated entry may
/// touch: loopback, and the benchmark range the connects go to.
const HOLES: [(u32, u32); 2] = [(127 << 16, 128 << 16), (0xC6_1200, 0xC6_1400)];
/// Rules an iptables variant falls back to when the full list cannot be loaded within the cap.
const FALLBACK_RULES: usize = 100_000;
/// The table of the ct-only variant.
const CT_ONLY: &str = "table inet bench_ct {
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\tct state established,related accept
\t}
}
";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The CPUs of the client thread and of the peers' accept threads. Without pinning, whether the
/// scheduler puts the two on one CPU or on two changes the cost of a connect by more than the
/// firewall does, and it changes from slice to slice.
const CLIENT_CPU: usize = 0;
const PEER_CPU: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Leash,
    LeashSmall,
    LeashNoCt,
    CtOnly,
    Nft,
    Candidate,
    IptNft,
    IptLegacy,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::None => "no rules",
            Kind::Leash => "leash (policy applied)",
            Kind::LeashSmall => "leash, same policy, 1-entry set",
            Kind::LeashNoCt => "leash, allow_established = false",
            Kind::CtOnly => "nft: only `ct state established accept`",
            Kind::Nft => "nft -f of `leash compile` (same table)",
            Kind::Candidate => "nft -f of the --nft-script table",
            Kind::IptNft => "iptables-nft, linear rules",
            Kind::IptLegacy => "iptables-legacy, linear rules",
        }
    }
    fn slow(self) -> bool {
        matches!(self, Kind::IptNft | Kind::IptLegacy)
    }
}

#[derive(Debug, Clone)]
struct Opts {
    rounds: usize,
    connects: usize,
    round_secs: u64,
    slice: usize,
    slow_connects: usize,
    slow_secs: u64,
    entries: usize,
    ipt_entries: usize,
    load_cap: u64,
    nft: bool,
    iptables: bool,
    keep: bool,
    candidate: Option<PathBuf>,
}

fn main() -> Result<()> {
    let mut o = Opts {
        rounds: common::args::rounds(5)?,
        connects: 20_000,
        round_secs: 20,
        slice: 1_000,
        slow_connects: 200,
        slow_secs: 10,
        entries: 1_000_000,
        ipt_entries: 0,
        load_cap: 120,
        nft: true,
        iptables: true,
        keep: false,
        candidate: None,
    };
    let mut args = Args::new(
        "--rounds N, --connects N, --slice N, --round-secs S, --slow-connects N, --slow-secs S, --entries N, \
         --ipt-entries N, --load-cap S, --no-nft, --no-iptables, --keep, --nft-script FILE",
    );
    while let Some(a) = args.flag() {
        let mut num = |what: &str| -> Result<usize> { args.value(what) };
        match a.as_str() {
            "--rounds" => o.rounds = num("--rounds")?.max(1),
            "--connects" => o.connects = num("--connects")?.max(1),
            "--slice" => o.slice = num("--slice")?.max(1),
            "--round-secs" => o.round_secs = num("--round-secs")?.max(1) as u64,
            "--slow-connects" => o.slow_connects = num("--slow-connects")?.max(1),
            "--slow-secs" => o.slow_secs = num("--slow-secs")?.max(1) as u64,
            "--entries" => o.entries = num("--entries")?.max(2),
            "--ipt-entries" => o.ipt_entries = num("--ipt-entries")?.max(2),
            "--load-cap" => o.load_cap = num("--load-cap")?.max(1) as u64,
            "--no-nft" => o.nft = false,
            "--no-iptables" => o.iptables = false,
            "--keep" => o.keep = true,
            "--nft-script" => o.candidate = Some(args.word().context("--nft-script needs a file")?.into()),
            other => return Err(args.unknown(other)),
        }
    }
    if o.ipt_entries == 0 {
        o.ipt_entries = o.entries;
    }
    if !common::is_root() {
        bail!("the connect_rate bench needs root (namespaces, veth, nftables, iptables)");
    }
    let leash = common::leash_bin();
    let scratch = Scratch::create(std::env::temp_dir(), "connect-rate", o.keep)?;
    let t = Instant::now();
    let r = bench(&o, &leash, &scratch.0);
    eprintln!("bench ran {:.0} s", t.elapsed().as_secs_f64());
    r
}

// ---------------------------------------------------------------------------------------------
// The blocklist

/// `n` lines: `n - 1` generated entries and the probe last. Deterministic: the same `n` always gives
/// the same file.
fn blocklist(n: usize) -> Result<String> {
    let first = 1u64 << 16; // 1.0.0.0 as a /24 block
    let end = 224u64 << 16; // up to 223.255.255.0/24: unicast only
    let span = end - first - HOLES.iter().map(|&(a, b)| u64::from(b - a)).sum::<u64>();
    let g = (n - 1) as u64;
    // At least one free /24 between two entries, or leash would merge neighbours into one range.
    ensure!(g * 2 <= span, "{n} entries do not fit apart in the IPv4 unicast space");
    let mut out = String::with_capacity(n * 16);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..g {
        let mut block = (first + i * span / g) as u32;
        for &(a, b) in &HOLES {
            if block >= a {
                block += b - a;
            }
        }
        // A 64-bit LCG (Knuth's MMIX constants): its high bits pick /24 or /32 and the host.
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let base = Ipv4Addr::from(block << 8);
        if (x >> 33) & 1 == 1 {
            writeln!(out, "{base}/24")?;
        } else {
            let host = 1 + ((x >> 40) % 254) as u32;
            writeln!(out, "{}", Ipv4Addr::from((block << 8) | host))?;
        }
    }
    writeln!(out, "{PROBE}")?;
    Ok(out)
}

fn policy_text(entries: usize, established: bool) -> String {
    format!(
        r#"# Generated by crates/leash/benches/connect_rate.rs: {entries} blocklist entries, then the
# benchmark range allowed.
version = 1

[defaults]
outbound = "deny"
deny_with = "reject"
allow_established = {established}

[[set]]
name = "blocklist"
file = "blocklist.txt"

[[rule]]
name = "blocklist"
action = "deny"
to = ["set:blocklist"]

[[rule]]
name = "bench"
action = "allow"
proto = "tcp"
to = ["198.18.0.0/15"]
"#
    )
}

/// The same list as linear iptables rules, in the order of the leash table (loopback,
/// established, the list, the allow, reject the rest).
fn iptables_rules(list: &str) -> String {
    let mut s = String::with_capacity(list.len() * 3);
    s.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    s.push_str("-A OUTPUT -o lo -j ACCEPT\n");
    s.push_str("-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for l in list.lines() {
        let _ = writeln!(s, "-A OUTPUT -d {l} -j REJECT");
    }
    s.push_str("-A OUTPUT -p tcp -d 198.18.0.0/15 -j ACCEPT\n-A OUTPUT -j REJECT\nCOMMIT\n");
    s
}

// ---------------------------------------------------------------------------------------------
// Namespaces, peer

/// A client and a peer namespace joined by a veth pair, and the peer's accept thread.
struct Pair {
    client: NetNs,
    // Kept for its lifetime: the peer namespace lives as long as this descriptor.
    _peer: NetNs,
    acceptor: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

impl Pair {
    fn new() -> Result<Pair> {
        let client = NetNs::new()?;
        let peer = NetNs::new()?;
        client.run(|| -> Result<()> {
            let mut r = Rtnl::open()?;
            r.create_veth_with_indexes("cr0", 10, "cr1", 20, peer.as_fd())?;
            let i = r.link_index("cr0")?;
            r.add_address(i, CLIENT.into(), 32)?;
            r.set_link_up(i)?;
            r.add_default_route(i, Family::V4)?;
            Ok(())
        })?;
        let listener = peer.run(|| -> Result<TcpListener> {
            let mut r = Rtnl::open()?;
            let i = r.link_index("cr1")?;
            r.add_address(i, PEER.into(), 32)?;
            r.set_link_up(i)?;
            r.add_default_route(i, Family::V4)?;
            r.wait_oper_up(i, Duration::from_secs(3))?;
            r.wait_local(PEER.into(), Duration::from_secs(3))?;
            let l = TcpListener::bind((PEER, PORT))?;
            // A deep queue, so that the accept thread falling behind for a moment never drops a
            // SYN (which would cost a 1 s retransmit); listen() again sets the backlog.
            // SAFETY: plain syscall on a socket we own.
            ensure!(unsafe { libc::listen(l.as_raw_fd(), 4096) } == 0, "listen: {}", std::io::Error::last_os_error());
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        client.run(|| -> Result<()> {
            let mut r = Rtnl::open()?;
            let i = r.link_index("cr0")?;
            r.wait_oper_up(i, Duration::from_secs(3))?;
            Ok(())
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let acceptor =
            std::thread::Builder::new().name("peer-accept".into()).spawn(move || accept_loop(&listener, &s))?;
        Ok(Pair { client, _peer: peer, acceptor: Some(acceptor), stop })
    }
}

/// Accepts and closes until `stop`; polls with a short timeout so that it notices `stop`.
fn accept_loop(l: &TcpListener, stop: &AtomicBool) {
    pin(PEER_CPU);
    let mut pfd = libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        // Nonblocking: take everything queued, then poll again. Each connection is closed at once.
        while let Ok((s, _)) = l.accept() {
            drop(s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

#[derive(Debug, Clone, Default)]
struct Load {
    /// Entries (set lines or rules) that were loaded.
    entries: usize,
    wall: Duration,
    user: Duration,
    sys: Duration,
    max_rss_mib: f64,
    /// Extra facts for the report (leash's own phase times, an earlier attempt that failed).
    note: String,
}

enum Capped {
    Done(Load),
    Failed(String),
    Stopped,
}

/// Runs `cmd` (stdout and stderr to files in `dir`) and waits at most `cap` (see
/// `common::child::run`); returns its stdout too.
fn run_capped(mut cmd: Command, dir: &Path, tag: &str, cap: Duration) -> Result<(Capped, String)> {
    let r = common::child::run(&mut cmd, dir, tag, Some(cap))?;
    if r.timed_out {
        return Ok((Capped::Stopped, String::new()));
    }
    if !r.exited_ok() {
        let err: String = r.stderr.chars().take(2000).collect();
        return Ok((Capped::Failed(format!("status {:#x}: {}", r.status, err.trim())), r.stdout));
    }
    let load = Load { wall: r.wall, user: r.user, sys: r.sys, max_rss_mib: common::mib(r.maxrss_kib), ..Load::default() };
    Ok((Capped::Done(load), r.stdout))
}

/// A connect to the probe must be refused at once: the list is in force. Returns the connect's
/// time (for linear rules: one walk of the whole list).
fn probe_refused(client: &NetNs) -> Result<Duration> {
    client.run(|| {
        let t = Instant::now();
        match TcpStream::connect_timeout(&SocketAddr::from((PROBE, PORT)), CONNECT_TIMEOUT) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(t.elapsed()),
            Err(e) => {
                bail!("connect to the probe {PROBE}: {e}, want connection refused (the blocklist is not in force)")
            }
            Ok(_) => bail!("connect to the probe {PROBE} succeeded (the blocklist is not in force)"),
        }
    })
}

fn leash_note(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(j) => format!(
            "leash: {} elements in {} messages, kernel {:.0} ms, verify {:.0} ms",
            j["elements"],
            j["report"]["messages"],
            j["report"]["kernel_ms"].as_f64().unwrap_or(f64::NAN),
            j["report"]["verify_ms"].as_f64().unwrap_or(f64::NAN)
        ),
        Err(e) => format!("leash apply --json: unreadable output ({e})"),
    }
}

// ---------------------------------------------------------------------------------------------
// Connect loop

#[derive(Debug, Default)]
struct Round {
    latencies: Vec<Duration>,
    failures: usize,
    wall: Duration,
    /// Connects/s of each slice (of each `connect_round` call) in the order they ran.
    slices: Vec<f64>,
}

impl Round {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
    fn add(&mut self, other: Round) {
        self.latencies.extend(other.latencies);
        self.failures += other.failures;
        self.wall += other.wall;
        self.slices.extend(other.slices);
    }
}

/// Up to `n` sequential connects from the client namespace, stopping once `cap` has passed.
fn connect_round(client: &NetNs, n: usize, cap: Duration) -> Round {
    client.run(|| {
        pin(CLIENT_CPU);
        let to = SocketAddr::from((PEER, PORT));
        let mut r = Round { latencies: Vec::with_capacity(n), ..Round::default() };
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            if t - start >= cap {
                break;
            }
            match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
                Ok(s) => {
                    r.latencies.push(t.elapsed());
                    rst_close(s);
                }
                Err(_) => r.failures += 1,
            }
        }
        r.wall = start.elapsed();
        r.slices.push(r.rate());
        r
    })
}

/// Pins the calling thread to `cpu` (if the machine has it; else leaves it alone).
fn pin(cpu: usize) {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) <= cpu {
        return;
    }
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes inside it; sched_setaffinity(0, ...)
    // changes only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Closes with an RST (SO_LINGER 0): no TIME_WAIT is left behind, so ports never run out.
fn rst_close(s: TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a valid linger struct on our own socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct Variant {
    kind: Kind,
    pair: Pair,
    load: Option<Load>,
    probe: Option<Duration>,
    rounds: Vec<Round>,
}

fn bench(o: &Opts, leash: &Path, dir: &Path) -> Result<()> {
    let t = Instant::now();
    let list = blocklist(o.entries)?;
    std::fs::write(dir.join("blocklist.txt"), &list)?;
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text(o.entries, true))?;
    // The fixed cost of the policy (connection tracking, the chain) without the big set: the same
    // policy whose set holds only the probe.
    let small = dir.join("small");
    std::fs::create_dir_all(&small)?;
    std::fs::write(small.join("blocklist.txt"), format!("{PROBE}\n"))?;
    let small_policy = small.join("policy.toml");
    std::fs::write(&small_policy, policy_text(1, true))?;
    // Without `allow_established` the table has no `ct` expression, so the kernel tracks no
    // connections, but every packet of a connection walks the chain and meets the set.
    let noct_policy = dir.join("policy-noct.toml");
    std::fs::write(&noct_policy, policy_text(o.entries, false))?;
    let halves = list.lines().filter(|l| l.ends_with("/24")).count();
    eprintln!(
        "blocklist: {} entries ({halves} /24, {} /32) in {:.1} s",
        o.entries,
        o.entries - halves,
        t.elapsed().as_secs_f64()
    );
    let cap = Duration::from_secs(o.load_cap);

    let mut kinds = vec![Kind::None, Kind::Leash, Kind::LeashNoCt, Kind::LeashSmall];
    if o.nft {
        if have("nft") {
            kinds.extend([Kind::CtOnly, Kind::Nft]);
            if o.candidate.is_some() {
                kinds.push(Kind::Candidate);
            }
        } else {
            eprintln!("nft is not installed: the nft variants are left out (apt-get install nftables)");
        }
    }
    if o.iptables {
        for (k, tool) in [(Kind::IptNft, "iptables-nft-restore"), (Kind::IptLegacy, "iptables-legacy-restore")] {
            if have(tool) {
                kinds.push(k);
            } else {
                eprintln!("{tool} is not installed: left out (apt-get install iptables)");
            }
        }
    }

    let mut variants = Vec::new();
    for kind in kinds {
        let pair = Pair::new().with_context(|| format!("namespaces for {}", kind.label()))?;
        let mut v = Variant { kind, pair, load: None, probe: None, rounds: Vec::new() };
        match kind {
            Kind::None => {}
            Kind::Leash | Kind::LeashSmall | Kind::LeashNoCt => {
                let p = match kind {
                    Kind::Leash => &policy,
                    Kind::LeashNoCt => &noct_policy,
                    _ => &small_policy,
                };
                let mut c = nsenter(&v.pair.client);
                // Keep leash's record of large sets in the scratch directory, not in /run/leash.
                c.arg(leash).args(["apply", "--json"]).arg(p).stdin(Stdio::null()).env("LEASH_STATE_DIR", dir);
                let (res, out) = run_capped(c, dir, "leash-apply", cap)?;
                let mut load = match res {
                    Capped::Done(l) => l,
                    Capped::Failed(e) => bail!("leash apply failed: {e}"),
                    Capped::Stopped => bail!("leash apply took longer than {} s", o.load_cap),
                };
                load.entries = if kind == Kind::LeashSmall { 1 } else { o.entries };
                load.note = leash_note(&out);
                v.load = Some(load);
            }
            Kind::CtOnly => {
                // Connection tracking and nothing else: the floor under any policy that accepts
                // established connections first.
                let script = dir.join("ct-only.nft");
                std::fs::write(&script, CT_ONLY)?;
                let mut c = nsenter(&v.pair.client);
                c.args(["nft", "-f"]).arg(&script).stdin(Stdio::null());
                match run_capped(c, dir, "nft-ct", cap)?.0 {
                    Capped::Done(l) => v.load = Some(l),
                    Capped::Failed(e) => bail!("nft -f {} failed: {e}", script.display()),
                    Capped::Stopped => bail!("nft -f {} took longer than {} s", script.display(), o.load_cap),
                }
            }
            Kind::Nft | Kind::Candidate => {
                let script = if let (Kind::Candidate, Some(f)) = (kind, &o.candidate) {
                    f.clone()
                } else {
                    let out = Command::new(leash).arg("compile").arg(&policy).output().context("leash compile")?;
                    ensure!(out.status.success(), "leash compile failed: {}", String::from_utf8_lossy(&out.stderr));
                    let script = dir.join("policy.nft");
                    std::fs::write(&script, &out.stdout)?;
                    script
                };
                let mut c = nsenter(&v.pair.client);
                c.args(["nft", "-f"]).arg(&script).stdin(Stdio::null());
                match run_capped(c, dir, "nft", cap)?.0 {
                    Capped::Done(mut l) => {
                        l.entries = o.entries;
                        v.load = Some(l);
                    }
                    Capped::Failed(e) => bail!("nft -f {} failed: {e}", script.display()),
                    Capped::Stopped => {
                        eprintln!("nft -f took longer than {} s: the nft variant is left out", o.load_cap);
                        continue;
                    }
                }
            }
            Kind::IptNft | Kind::IptLegacy => {
                let tool = if kind == Kind::IptNft { "iptables-nft-restore" } else { "iptables-legacy-restore" };
                let mut note = String::new();
                let mut sizes = vec![o.ipt_entries];
                if o.ipt_entries > FALLBACK_RULES {
                    sizes.push(FALLBACK_RULES);
                }
                for n in sizes {
                    let rules_path = dir.join(format!("iptables-{n}.rules"));
                    if !rules_path.exists() {
                        let l = if n == o.entries { list.clone() } else { blocklist(n)? };
                        std::fs::write(&rules_path, iptables_rules(&l))?;
                    }
                    let mut c = nsenter(&v.pair.client);
                    c.arg(tool).stdin(File::open(&rules_path)?);
                    eprintln!("{tool}: loading {n} rules");
                    match run_capped(c, dir, tool, cap)?.0 {
                        Capped::Done(mut l) => {
                            l.entries = n;
                            l.note = note.clone();
                            v.load = Some(l);
                            break;
                        }
                        Capped::Failed(e) => {
                            let _ = write!(note, "{n} rules failed to load ({e}); ");
                        }
                        Capped::Stopped => {
                            let _ = write!(note, "{n} rules did not load within {} s; ", o.load_cap);
                        }
                    }
                    eprintln!("{tool}: {note}");
                }
                if v.load.is_none() {
                    eprintln!("{tool}: {note}the variant is left out");
                    continue;
                }
            }
        }
        if !matches!(kind, Kind::None | Kind::CtOnly) {
            v.probe = Some(probe_refused(&v.pair.client).with_context(|| kind.label().to_string())?);
        }
        if let Some(l) = &v.load {
            eprintln!(
                "{}: loaded {} entries in {:.2} s{}{}{}",
                kind.label(),
                l.entries,
                l.wall.as_secs_f64(),
                if l.note.is_empty() { "" } else { " — " },
                l.note,
                v.probe.map(|p| format!("; probe refused after {:.3} ms", ms(p))).unwrap_or_default()
            );
        }
        variants.push(v);
    }

    // Warm-up (untimed): caches, the peer's accept path, conntrack's tables.
    for v in &variants {
        let (n, secs) = if v.kind.slow() { (o.slow_connects / 10 + 1, 2) } else { (o.connects / 10, 5) };
        let r = connect_round(&v.pair.client, n, Duration::from_secs(secs));
        ensure!(
            !r.latencies.is_empty(),
            "{}: no connect succeeded in the warm-up ({} failed)",
            v.kind.label(),
            r.failures
        );
    }
    // Timed blocks (the fast variants' turns of a round, then each slow variant) and how many of
    // them started without an idle window.
    let (mut unsettled, mut blocks) = (0, 0);
    let fast: Vec<usize> = (0..variants.len()).filter(|&i| !variants[i].kind.slow()).collect();
    let slow: Vec<usize> = (0..variants.len()).filter(|&i| variants[i].kind.slow()).collect();
    for round in 0..o.rounds {
        // The fast variants take turns in slices of `o.slice` connects (in an order that rotates
        // between rounds), so that a change in the machine's load during a round (other programs
        // on the same 2 vCPUs) hits all of them alike.
        unsettled += usize::from(!settle());
        blocks += 1;
        let order: Vec<usize> = (0..fast.len()).map(|k| fast[(k + round) % fast.len()]).collect();
        let mut acc: Vec<Round> = order.iter().map(|_| Round::default()).collect();
        let cap = Duration::from_secs(o.round_secs);
        let mut done = 0;
        while done < o.connects {
            let n = o.slice.min(o.connects - done);
            for (k, &i) in order.iter().enumerate() {
                let left = cap.saturating_sub(acc[k].wall);
                if !left.is_zero() {
                    acc[k].add(connect_round(&variants[i].pair.client, n, left));
                }
            }
            done += n;
        }
        for (k, r) in acc.into_iter().enumerate() {
            let v = &mut variants[order[k]];
            eprintln!(
                "round {}/{}: {:<40} {:>6} connects, {:>9.0}/s, {} failed",
                round + 1,
                o.rounds,
                v.kind.label(),
                r.latencies.len(),
                r.rate(),
                r.failures
            );
            v.rounds.push(r);
        }
        for k in 0..slow.len() {
            let v = &mut variants[slow[(k + round) % slow.len()]];
            unsettled += usize::from(!settle());
            blocks += 1;
            let r = connect_round(&v.pair.client, o.slow_connects, Duration::from_secs(o.slow_secs));
            eprintln!(
                "round {}/{}: {:<40} {:>6} connects, {:>9.1}/s, {} failed",
                round + 1,
                o.rounds,
                v.kind.label(),
                r.latencies.len(),
                r.rate(),
                r.failures
            );
            v.rounds.push(r);
        }
    }

    // Which rules the packets met: with `allow_established` only a connection's SYN should reach
    // the blocklist; anything counted by `@default` went through the whole chain.
    let mut counters = String::new();
    for v in variants.iter().filter(|v| matches!(v.kind, Kind::Leash | Kind::LeashSmall | Kind::LeashNoCt)) {
        let out = nsenter(&v.pair.client).arg(leash).args(["status", "--json"]).stdin(Stdio::null()).output()?;
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let rules: Vec<String> = j["rules"]
            .as_array()
            .map(|a| a.iter().map(|r| format!("{} {}", r["rule"].as_str().unwrap_or("?"), r["packets"])).collect())
            .unwrap_or_default();
        let connects: usize = v.rounds.iter().map(|r| r.latencies.len() + r.failures).sum();
        let _ = writeln!(
            counters,
            "- {} rule counters (packets) after the rounds, warm-up and probe ({} timed connects): {}",
            v.kind.label(),
            thousands(connects as f64),
            rules.join(", ")
        );
    }
    let report = report(o, &variants, unsettled, blocks)? + &counters;
    drop(variants);
    println!("{report}");
    common::write_report("connect-rate", &report)?;
    Ok(())
}

/// Connects/s: whole numbers with separators, one decimal below 100.
fn rate_text(x: f64) -> String {
    if x < 100.0 { format!("{x:.1}") } else { thousands(x) }
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn report(o: &Opts, variants: &[Variant], unsettled: usize, blocks: usize) -> Result<String> {
    let mut s = String::new();
    let uname = tool_version(&["uname", "-r"]);
    writeln!(
        s,
        "Sequential TCP connects across a veth, {} rounds (interleaved), blocklist of {} entries; kernel {uname}",
        o.rounds,
        thousands(o.entries as f64)
    )?;
    writeln!(
        s,
        "{} (fast variants: {} connects or {} s per round; linear iptables: {} connects or {} s per round)\n",
        tool_version(&["nft", "--version"]),
        thousands(o.connects as f64),
        o.round_secs,
        o.slow_connects,
        o.slow_secs
    )?;
    let rates: Vec<f64> = variants
        .iter()
        .map(|v| {
            let r: Vec<f64> = v.rounds.iter().map(Round::rate).collect();
            median_f(&r)
        })
        .collect();
    let none = variants.iter().position(|v| v.kind == Kind::None);
    let base = none.map(|i| rates[i]).unwrap_or(f64::NAN);
    // The ratio within each round (the runs of a round are close in time), then the median: less
    // sensitive to the machine's load changing between rounds than the ratio of the medians.
    let round_ratios: Vec<f64> = variants
        .iter()
        .map(|v| {
            let Some(n) = none else { return f64::NAN };
            let r: Vec<f64> = v.rounds.iter().zip(&variants[n].rounds).map(|(a, b)| a.rate() / b.rate()).collect();
            median_f(&r)
        })
        .collect();
    // Fast variants only: the ratio of each slice to the no-rules slice of the same turn (at most a
    // few hundred ms apart), median over all slices of all rounds: the paired comparison.
    let paired = |a: &Variant, b: &Variant| -> f64 {
        if a.kind.slow() || b.kind.slow() {
            return f64::NAN;
        }
        let r: Vec<f64> = a
            .rounds
            .iter()
            .zip(&b.rounds)
            .flat_map(|(x, y)| x.slices.iter().zip(&y.slices).map(|(p, q)| p / q))
            .collect();
        median_f(&r)
    };
    writeln!(
        s,
        "| variant | entries | connects/s (median) | vs no rules | vs no rules, per round (median) \
         | vs no rules, paired slices (median) | p50 µs | p99 µs | connects | failed | load s \
         | loader user+sys s | loader peak RSS MiB |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for ((v, &rate), &rr) in variants.iter().zip(&rates).zip(&round_ratios) {
        let pr = none.map(|n| paired(v, &variants[n])).unwrap_or(f64::NAN);
        let pr = if pr.is_nan() { "-".to_string() } else { format!("{pr:.3}") };
        let mut lat: Vec<Duration> = v.rounds.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        lat.sort_unstable();
        let failed: usize = v.rounds.iter().map(|r| r.failures).sum();
        let (entries, load, cpu, rss) = match &v.load {
            Some(l) => (
                thousands(l.entries as f64),
                format!("{:.2}", l.wall.as_secs_f64()),
                format!("{:.2}", (l.user + l.sys).as_secs_f64()),
                format!("{:.0}", l.max_rss_mib),
            ),
            None => ("0".into(), "-".into(), "-".into(), "-".into()),
        };
        writeln!(
            s,
            "| {} | {entries} | {} | {:.3} | {rr:.3} | {pr} | {:.0} | {:.0} | {} | {failed} | {load} | {cpu} | {rss} |",
            v.kind.label(),
            rate_text(rate),
            rate / base,
            us(percentile(&lat, 50.0).unwrap_or_default()),
            us(percentile(&lat, 99.0).unwrap_or_default()),
            thousands(lat.len() as f64),
        )?;
    }
    writeln!(s)?;
    for v in variants {
        let r: Vec<String> = v.rounds.iter().map(|r| rate_text(r.rate())).collect();
        write!(s, "- {}: per round {} connects/s", v.kind.label(), r.join(", "))?;
        if let Some(p) = v.probe {
            write!(s, "; probe (last entry) refused after {:.3} ms", ms(p))?;
        }
        if let Some(l) = v.load.as_ref().filter(|l| !l.note.is_empty()) {
            write!(s, "; {}", l.note.trim_end_matches("; "))?;
        }
        writeln!(s)?;
    }
    if let Some(i) = variants.iter().position(|v| v.kind == Kind::Leash) {
        // The goal is judged on the paired slices: the estimate least moved by other load.
        let p = none.map(|n| paired(&variants[i], &variants[n])).unwrap_or(f64::NAN);
        writeln!(
            s,
            "\nleash / no rules: {:.3} (medians), {:.3} (per round), {p:.3} (paired slices); goal at least 0.9 \
             (paired): {}",
            rates[i] / base,
            round_ratios[i],
            if p >= 0.9 { "met" } else { "NOT met" }
        )?;
        for (j, v) in variants.iter().enumerate().filter(|(_, v)| {
            v.kind.slow()
                || matches!(v.kind, Kind::LeashSmall | Kind::LeashNoCt | Kind::CtOnly | Kind::Nft | Kind::Candidate)
        }) {
            write!(s, "leash / {}: {:.3}", v.kind.label(), rates[i] / rates[j])?;
            let p = paired(&variants[i], v);
            if p.is_nan() {
                writeln!(s)?;
            } else {
                writeln!(s, " (paired slices: {p:.3})")?;
            }
        }
    }
    writeln!(
        s,
        "\n{unsettled} of {blocks} timed blocks (the fast variants' turns of a round; each linear iptables run) \
         started while the machine was busy (no idle 100 ms window in 5 s)."
    )?;
    Ok(s)
}
