//! Benchmark: the connect rate of a container through the forward chain. A workload namespace
//! (standing in for a container on docker0) makes sequential TCP connects through a client
//! namespace that routes it to a peer, with a policy applied by `leash apply` against no rules at
//! all, in one run.
//!
//! ```sh
//! sudo cargo bench -p leash --bench forward                      # 5 rounds
//! sudo cargo bench -p leash --bench forward -- --rounds 9 --slices 20 --slice 500
//! ```
//!
//! Options (after `--`): `--rounds N` (default 5, or `LEASH_BENCH_ROUNDS`), `--slices N` (slices
//! per round and variant, default 10), `--slice N` (connects per slice, default 500), `--keep`
//! (keep the scratch directory with the policies). `LEASH_BENCH_QUICK=1`: 1 round of 2 slices.
//! `LEASH_BIN` overrides the leash binary.
//!
//! Variants, each in a lab of its own (`lab::Lab::with_workloads`: client, peer and a workload
//! namespace whose traffic enters the client on `docker0`; forwarding is on in the client
//! namespace only; all held by descriptors of this process, nothing in the machine's namespace):
//! - **no rules**: nothing loaded in the client (no connection tracking either).
//! - **ct only**: `leash apply` of a policy with `outbound = "allow"`: the forward chain holds only
//!   `ct state established,related accept` and the jumps for the default workload interfaces, and
//!   the workload chain only the default: connection tracking and the jump, the floor under any
//!   policy.
//! - **leash (policy)**: `leash apply` of a policy like a workstation's: a deny rule with a
//!   1,000-network blocklist first, DNS and NTP rules, two rules that need a local socket (user and
//!   group: left out of the forward chain), and an allow rule `from = ["docker0"]` for TCP to the
//!   peer; default deny. The SYN of each connect walks the workload chain to that rule.
//!
//! After each apply a connect to a port the policy denies must be refused at once (the forward
//! chain is in force); the counters of the `from` rule are read back after the run.
//!
//! Each round runs every variant's slices in turns (slice 1 of each, then slice 2, ...), in an
//! order that rotates, after waiting for an idle machine (`common::settle`); one untimed warm-up
//! round comes first. The client thread (in the workload namespace) is pinned to CPU 0 and the
//! peer's accept thread to CPU 1; each connect is closed with an RST (`SO_LINGER` 0) so no
//! TIME_WAIT piles up.
//!
//! Reported: connects/s (connects over the wall time of a variant's slices in a round), median
//! over the rounds, and its ratio to no rules; the median of the paired per-slice ratios (each
//! slice against the no-rules slice of the same turn); p50/p99 of the `connect` call's time.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::{Args, Scratch, leash_bin, median_f, percentile, settle, us};
use lab::{Lab, WorkloadSpec};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "--rounds N, --slices N, --slice N, --keep";
/// The peer's address and port the connects go to, and a port the policy denies.
const DST: &str = "192.0.2.10";
const PORT: u16 = 9000;
const DENIED: u16 = 9001;
/// The workload (a container on docker0).
const CONTAINER: &str = "198.18.0.2";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CLIENT_CPU: usize = 0;
const PEER_CPU: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    CtOnly,
    Policy,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::None => "no rules",
            Kind::CtOnly => "ct only (outbound = allow)",
            Kind::Policy => "leash (policy applied)",
        }
    }
}

/// One variant: its lab, the peer's accept thread, and what was measured.
struct Variant {
    kind: Kind,
    lab: Lab,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
    /// Per round: connects/s.
    rates: Vec<f64>,
    /// Per slice, every round: connects/s.
    slices: Vec<f64>,
    /// Every connect's `connect` call.
    connect_times: Vec<Duration>,
}

impl Drop for Variant {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn main() -> Result<()> {
    let mut args = Args::new(USAGE);
    let quick = common::args::quick();
    let mut rounds = common::args::rounds(if quick { 1 } else { 5 })?;
    let mut slices = if quick { 2 } else { 10 };
    let mut slice = 500usize;
    let mut keep = false;
    while let Some(a) = args.flag() {
        match a.as_str() {
            "--rounds" => rounds = args.value(&a)?,
            "--slices" => slices = args.value(&a)?,
            "--slice" => slice = args.value(&a)?,
            "--keep" => keep = true,
            other => return Err(args.unknown(other)),
        }
    }
    ensure!(rounds > 0 && slices > 0 && slice > 0, "--rounds, --slices and --slice must be at least 1");
    if !common::is_root() {
        bail!("needs root (network namespaces and nftables)");
    }
    let scratch = Scratch::create(std::env::temp_dir(), "forward", keep)?;
    let policy = scratch.0.join("policy.toml");
    std::fs::write(&policy, policy_text())?;
    let open = scratch.0.join("open.toml");
    std::fs::write(&open, "version = 1\n[defaults]\noutbound = \"allow\"\n")?;

    let mut variants = Vec::new();
    for kind in [Kind::None, Kind::CtOnly, Kind::Policy] {
        let lab = Lab::with_workloads(
            &[ip(DST)],
            &[DENIED],
            &[],
            &[WorkloadSpec { iif: "docker0".into(), sources: vec![ip(CONTAINER)] }],
        )
        .context("lab")?;
        let file = match kind {
            Kind::None => None,
            Kind::CtOnly => Some(&open),
            Kind::Policy => Some(&policy),
        };
        if let Some(file) = file {
            let out = common::nsenter(lab.client()).arg(leash_bin()).arg("apply").arg(file).output()?;
            ensure!(out.status.success(), "leash apply {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
        }
        let listener = lab
            .peer()
            .run(|| -> Result<TcpListener> {
                let l = TcpListener::bind(SocketAddr::new(ip(DST), PORT))?;
                // A deep queue, so that the accept thread falling behind for a moment never
                // drops a SYN (which would cost a 1 s retransmit); listen() again sets it.
                // SAFETY: plain syscall on a socket we own.
                ensure!(unsafe { libc::listen(l.as_raw_fd(), 4096) } == 0, "listen: {}", std::io::Error::last_os_error());
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .context("peer listener")?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || accept_loop(&listener, &stop))
        };
        // The policy is in force: the denied port is refused at once (the lab's echo server
        // listens there, so without the forward chain it would connect).
        let denied = workload_connect(&lab, DENIED);
        match kind {
            Kind::Policy => ensure!(
                denied.as_ref().err().is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
                "the policy does not refuse the container's connect to port {DENIED}: {denied:?}"
            ),
            _ => ensure!(denied.is_ok(), "{}: the connect to port {DENIED} failed: {denied:?}", kind.label()),
        }
        variants.push(Variant {
            kind,
            lab,
            stop,
            acceptor: Some(acceptor),
            rates: Vec::new(),
            slices: Vec::new(),
            connect_times: Vec::new(),
        });
    }

    // One untimed warm-up round, then the measured ones.
    let mut idle_starts = 0;
    for round in 0..=rounds {
        let warm = round == 0;
        if settle() && !warm {
            idle_starts += 1;
        }
        let n = variants.len();
        let mut spent = vec![Duration::ZERO; n];
        let mut made = vec![0usize; n];
        for s in 0..slices {
            for k in 0..n {
                let i = (k + round + s) % n;
                let (d, times) = slice_of(&variants[i].lab, slice)?;
                spent[i] += d;
                made[i] += slice;
                if !warm {
                    variants[i].slices.push(slice as f64 / d.as_secs_f64());
                    variants[i].connect_times.extend(times);
                }
            }
        }
        if !warm {
            for i in 0..n {
                variants[i].rates.push(made[i] as f64 / spent[i].as_secs_f64());
            }
        }
    }

    let counters = common::nsenter(variants[2].lab.client())
        .args(["nft", "list", "chain", "inet", "leash", "workload"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("\"containers\"")).map(str::trim).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    let report = report(&variants, rounds, slices, slice, idle_starts, &counters);
    print!("{report}");
    let path = common::write_report("forward", &report)?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

/// The policy: what a workstation with containers might apply (see the module docs).
fn policy_text() -> String {
    let mut nets = String::new();
    // 1,000 /24 networks in 10.0.0.0/8, none touching the bench's addresses.
    for i in 0..1000u32 {
        let _ = write!(nets, "{}\"10.{}.{}.0/24\"", if i == 0 { "" } else { ", " }, i / 250, (i % 250) + 1);
    }
    format!(
        r#"version = 1
[defaults]
outbound = "deny"
log_denied = false

[forward]
interfaces = ["docker0", "br-*", "podman*"]

[[rule]]
name = "blocked"
action = "deny"
to = [{nets}]

[[rule]]
name = "dns"
action = "allow"
ports = [53]
to = ["192.0.2.53"]

[[rule]]
name = "ntp"
action = "allow"
proto = "udp"
ports = [123]
to = ["192.0.2.123"]

[[rule]]
name = "root-updates"
action = "allow"
proto = "tcp"
ports = [80, 443]
to = ["203.0.113.0/28"]
user = "root"

[[rule]]
name = "developers"
action = "allow"
proto = "tcp"
ports = ["1024-65535"]
group = 0

[[rule]]
name = "containers"
action = "allow"
proto = "tcp"
ports = [{PORT}]
to = ["{DST}"]
from = ["docker0"]
"#
    )
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

/// One connect from the workload namespace, closed with an RST.
fn workload_connect(lab: &Lab, port: u16) -> std::io::Result<()> {
    let (ns, _) = lab.workloads().next().expect("the lab has a workload");
    ns.run(|| TcpStream::connect_timeout(&SocketAddr::new(ip(DST), port), CONNECT_TIMEOUT)).map(rst_close)
}

/// `n` sequential connects from a thread in the workload namespace, pinned to the client CPU:
/// the wall time of the loop and each `connect` call's time.
fn slice_of(lab: &Lab, n: usize) -> Result<(Duration, Vec<Duration>)> {
    let (ns, _) = lab.workloads().next().expect("the lab has a workload");
    ns.run(|| {
        pin(CLIENT_CPU);
        let addr = SocketAddr::new(ip(DST), PORT);
        let mut times = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).context("connect through the forward chain")?;
            times.push(t.elapsed());
            rst_close(s);
        }
        Ok((start.elapsed(), times))
    })
}

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

fn report(variants: &[Variant], rounds: usize, slices: usize, slice: usize, idle_starts: usize, counters: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Connect rate through the forward chain (a container routed through the host)\n");
    let _ = writeln!(s, "{}", common::kernel_line());
    let leash = Command::new(leash_bin()).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let _ = writeln!(
        s,
        "{}; {rounds} rounds of {slices} slices of {slice} connects per variant; {idle_starts} of {rounds} rounds started on an idle machine\n",
        leash.unwrap_or_default()
    );
    let _ = writeln!(s, "| variant | connects/s (median of rounds) | ratio to no rules | median per-slice ratio | connect p50 | connect p99 |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let base = median_f(&variants[0].rates);
    for v in variants {
        let rate = median_f(&v.rates);
        let paired: Vec<f64> = v.slices.iter().zip(&variants[0].slices).map(|(a, b)| a / b).collect();
        let mut times = v.connect_times.clone();
        times.sort_unstable();
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {:.1} µs | {:.1} µs |",
            v.kind.label(),
            rate,
            common::ratio(rate, base),
            if v.kind == Kind::None { "1".to_string() } else { format!("{:.3}", median_f(&paired)) },
            percentile(&times, 50.0).map_or(f64::NAN, us),
            percentile(&times, 99.0).map_or(f64::NAN, us),
        );
    }
    let _ = writeln!(s, "\nThe `containers` rule's kernel rules after the run (only the SYN of each connect reaches it):\n");
    let _ = writeln!(s, "```\n{counters}\n```");
    s
}
