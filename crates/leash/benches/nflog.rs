//! Benchmark: how fast `leash log` takes blocked attempts off NFLOG under a flood, and what the
//! kernel drops, against tcpdump reading the same group of the same ruleset, in the same run.
//!
//! ```sh
//! sudo cargo bench -p leash --bench nflog                      # 3 rounds of 200,000 packets
//! sudo cargo bench -p leash --bench nflog -- --rounds 5 --packets 100000 --keep
//! ```
//!
//! Options (after `--`): `--rounds N` (default 3, or `LEASH_BENCH_ROUNDS`), `--packets N`
//! (default 200,000), `--cap-secs N` (longest burst, default 30), `--keep` (keep the scratch
//! directory with every reader's output). `LEASH_BIN` overrides the leash binary (default: the
//! one cargo built for this bench). The report goes to stdout.
//!
//! # Set-up
//!
//! One lab (`lab::Lab`: a client and a peer namespace joined by a veth pair, anonymous and held
//! by this process, so they vanish with it) for the whole run. The client gets a leash policy
//! with `outbound = "deny"`, `deny_with = "drop"`, `log_denied = true`, `log_group = 7`: every
//! packet that no rule allows is counted, logged to NFLOG group 7 and dropped. Nothing outside
//! the lab is touched; the only destination is 192.0.2.10 (documentation range).
//!
//! # One run
//!
//! 1. Wait (at most 5 s) for a 100 ms window in which the CPUs are idle.
//! 2. Start one reader of group 7 in the client namespace and wait until it is bound:
//!    - **library**: `kernel::nflog::Subscriber` with `Config::new(7)` on a thread of this
//!      process, counting packets (no decoding, no output): the ceiling for leash;
//!    - **leash log**: `leash log --json --group 7 --count N --seconds CAP`, standard output to a
//!      file (one JSON line per event, process attribution on);
//!    - **leash log --no-process**: the same without attribution;
//!    - **tcpdump -w FILE**: `tcpdump -i nflog:7 -c N -w FILE` (libpcap's NFLOG reader with its
//!      defaults: the kernel's batch of at most one page, flushed after 100 packets or 1 s, the
//!      default socket buffer);
//!    - **tcpdump -B 32768 -w FILE**: the same asking for a 32 MiB socket buffer, which
//!      `SO_RCVBUF` caps at `net.core.rmem_max`;
//!    - **tcpdump -w /dev/null**: the command as people type it; it reports only its own counts.
//!
//!    Output files live in `/dev/shm` (memory), so writing them costs what `/dev/null` would.
//! 3. The burst: one thread in the client namespace sends N 16-byte UDP datagrams to
//!    192.0.2.10:9 as fast as it can (each `send` fails with EPERM: dropped in the output hook
//!    after the log statement), stopping early at `--cap-secs`.
//! 4. The reader ends by itself when it has N packets (`--count`, `-c`), else it is sent SIGINT
//!    once its output has not grown for 1.5 s (more than tcpdump's 1 s flush timer).
//!
//! # What is reported
//!
//! - **logged**: the `@default` rule's packet counter, before and after (what the kernel logged).
//! - **read**: what the reader got. **lost** = logged - read.
//! - **kernel-reported**: what the reader learned about its losses from the kernel. leash: the
//!   sequence gaps (exact packet count) and `ENOBUFS` receives; tcpdump: its "dropped by kernel",
//!   which libpcap counts as the number of `ENOBUFS` receives (one per lost batch or more, not
//!   packets).
//! - **drain**: from the start of the burst to the moment the reader read its last packet (leash:
//!   the `time` of its last event, the read time; tcpdump: the time stamp of its last pcap record,
//!   which libpcap takes when it reads the packet; library: measured in-process).
//!   **events/s** = read / drain.
//! - **CPU**: user + system time of the reader process (`wait4`).
//! - **burst**: how long the sender took, and its rate.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::{Args, Scratch, median, nsenter, settle, tool_output, tv};
use kernel::nflog::{Config, Subscriber};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GROUP: u16 = 7;
const DST: &str = "192.0.2.10";
const PORT: u16 = 9;
/// How long a reader's output may stand still after the burst before it is stopped.
const IDLE_STOP: Duration = Duration::from_millis(1500);

struct Opts {
    rounds: usize,
    packets: u64,
    cap: Duration,
    keep: bool,
}

fn parse_args() -> Result<Opts> {
    let mut rounds = common::args::rounds(3)?;
    let mut packets = 200_000;
    let mut cap = 30;
    let mut keep = false;
    let mut args = Args::new("--rounds N, --packets N, --cap-secs N, --keep");
    while let Some(a) = args.flag() {
        match a.as_str() {
            "--rounds" => rounds = args.value("--rounds")?,
            "--packets" => packets = args.value("--packets")?,
            "--cap-secs" => cap = args.value("--cap-secs")?,
            "--keep" => keep = true,
            other => return Err(args.unknown(other)),
        }
    }
    ensure!((1..=50).contains(&rounds), "rounds must be 1..=50");
    ensure!(
        (1..=10_000_000).contains(&packets),
        "packets must be 1..=10,000,000"
    );
    ensure!((1..=600).contains(&cap), "cap-secs must be 1..=600");
    Ok(Opts {
        rounds,
        packets,
        cap: Duration::from_secs(cap),
        keep,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Library,
    LeashLog,
    LeashLogNoProcess,
    Tcpdump,
    TcpdumpBigBuffer,
    TcpdumpNull,
}

impl Reader {
    const ALL: [Reader; 6] = [
        Reader::Library,
        Reader::LeashLog,
        Reader::LeashLogNoProcess,
        Reader::Tcpdump,
        Reader::TcpdumpBigBuffer,
        Reader::TcpdumpNull,
    ];
    fn name(self) -> &'static str {
        match self {
            Reader::Library => "library (nflog::Subscriber)",
            Reader::LeashLog => "leash log --json",
            Reader::LeashLogNoProcess => "leash log --json --no-process",
            Reader::Tcpdump => "tcpdump -w FILE",
            Reader::TcpdumpBigBuffer => "tcpdump -B 32768 -w FILE",
            Reader::TcpdumpNull => "tcpdump -w /dev/null",
        }
    }
}

/// What one run measured.
#[derive(Debug, Default, Clone)]
struct RunResult {
    logged: u64,
    read: u64,
    /// leash: sequence gaps (packets); tcpdump: none.
    seq_lost: Option<u64>,
    /// ENOBUFS receives (leash, library) or tcpdump's "dropped by kernel".
    enobufs: Option<u64>,
    /// The socket's drop counter (leash, library): batches dropped.
    dropped_batches: Option<u64>,
    drain: Option<Duration>,
    cpu: Option<Duration>,
    burst: Duration,
    sent: u64,
}

impl RunResult {
    fn lost(&self) -> u64 {
        self.logged.saturating_sub(self.read)
    }
    fn rate(&self) -> Option<f64> {
        self.drain
            .filter(|d| !d.is_zero())
            .map(|d| self.read as f64 / d.as_secs_f64())
    }
}

fn policy_text() -> String {
    format!(
        "version = 1\n[defaults]\noutbound = \"deny\"\ndeny_with = \"drop\"\nlog_denied = true\nlog_group = {GROUP}\n"
    )
}

/// The `@default` rule's packet counter in the client namespace.
fn logged_counter(lab: &lab::Lab) -> Result<u64> {
    let st = lab
        .client()
        .run(kernel::status)?
        .context("no leash table in the lab")?;
    Ok(st
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .filter(|r| r.comment.as_deref() == Some(ruleset::compile::DEFAULT_COMMENT))
        .filter_map(|r| r.counter.map(|c| c.packets))
        .sum())
}

/// Sends `n` datagrams as fast as possible (each fails with EPERM), at most `cap`; returns how
/// many were sent and how long it took.
fn burst(lab: &lab::Lab, n: u64, cap: Duration) -> Result<(u64, Duration)> {
    lab.client().run(|| -> Result<(u64, Duration)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddr::new(DST.parse::<IpAddr>()?, PORT))?;
        let payload = [0x5au8; 16];
        let t0 = Instant::now();
        let mut sent = 0;
        // Bounded by n and by the time cap (checked every 1,024 sends).
        while sent < n {
            match s.send(&payload) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                Err(e) => bail!("send: {e}"),
            }
            sent += 1;
            if sent % 1024 == 0 && t0.elapsed() > cap {
                break;
            }
        }
        Ok((sent, t0.elapsed()))
    })
}

/// A reader process, ended by its pid.
struct Proc {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    cpu: Option<Duration>,
}

impl Proc {
    fn spawn(ns: &kernel::netns::NetNs, argv: &[String], dir: &Path, tag: &str) -> Result<Proc> {
        let stdout = dir.join(format!("{tag}.stdout"));
        let stderr = dir.join(format!("{tag}.stderr"));
        let child = nsenter(ns)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {argv:?}"))?;
        Ok(Proc {
            child: Some(child),
            stdout,
            stderr,
            cpu: None,
        })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_for_stderr(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.stderr().contains(needle) {
                return Ok(());
            }
            ensure!(
                self.try_reap()?.is_none(),
                "reader exited early: {}",
                self.stderr()
            );
            ensure!(
                Instant::now() < deadline,
                "reader not ready in 10 s: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reaps the child if it has exited, recording its CPU time.
    fn try_reap(&mut self) -> Result<Option<i32>> {
        let Some(c) = &self.child else {
            return Ok(Some(0));
        };
        let mut status = 0;
        // SAFETY: rusage is plain old data; wait4 fills it for our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child's pid.
        let rc = unsafe { libc::wait4(c.id() as libc::pid_t, &mut status, libc::WNOHANG, &mut ru) };
        if rc == 0 {
            return Ok(None);
        }
        ensure!(rc > 0, "wait4: {}", std::io::Error::last_os_error());
        self.cpu = Some(tv(ru.ru_utime) + tv(ru.ru_stime));
        self.child = None;
        Ok(Some(status))
    }

    /// Waits until the child exits, or until `watched` (a file) and stderr stopped growing for
    /// [`IDLE_STOP`], then sends SIGINT and waits (at most 10 s more).
    fn finish(&mut self, watched: Option<&Path>) -> Result<()> {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut last = (watched.map(size), size(&self.stderr));
        let mut still = Instant::now();
        let hard = Instant::now() + Duration::from_secs(120);
        // Bounded by the hard deadline.
        while self.try_reap()?.is_none() {
            let now = (watched.map(size), size(&self.stderr));
            if now != last {
                last = now;
                still = Instant::now();
            }
            if still.elapsed() > IDLE_STOP || Instant::now() > hard {
                let pid = self.child.as_ref().expect("not reaped").id() as libc::pid_t;
                // SAFETY: plain syscall on our own, not yet reaped child.
                unsafe { libc::kill(pid, libc::SIGINT) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while self.try_reap()?.is_none() {
                    if Instant::now() > deadline {
                        if let Some(mut c) = self.child.take() {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                        bail!("reader did not stop after SIGINT: {}", self.stderr());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The time stamp of the last record of a pcap file (the format's microsecond variant, in this
/// machine's byte order, as libpcap writes it).
fn last_pcap_time(path: &Path) -> Result<Option<SystemTime>> {
    let b = std::fs::read(path)?;
    if b.len() < 24 {
        return Ok(None);
    }
    let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
    ensure!(
        u32_at(0) == 0xa1b2_c3d4,
        "not a microsecond pcap file in native byte order"
    );
    let mut i = 24;
    let mut last = None;
    // Bounded: every record advances i by at least 16 bytes.
    while i + 16 <= b.len() {
        let (sec, usec, caplen) = (u32_at(i), u32_at(i + 4), u32_at(i + 8) as usize);
        last =
            Some(UNIX_EPOCH + Duration::from_secs(sec.into()) + Duration::from_micros(usec.into()));
        i += 16 + caplen;
    }
    Ok(last)
}

fn field(text: &str, suffix: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_suffix(suffix)?.trim().parse().ok())
}

/// CPU time of the calling thread (the library reader's, which includes its `recv` system calls
/// and any CPU time spent in the thread that entered the namespace first is not counted).
fn thread_cpu() -> Duration {
    // SAFETY: timespec is plain old data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall writing into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The library reader: a `Subscriber` on a thread of this process, counting packets. In backlog
/// mode it starts reading only when the burst is over.
fn library_run(lab: &lab::Lab, backlog: bool, opts: &Opts, r: &mut RunResult) -> Result<()> {
    struct Got {
        packets: u64,
        stats: kernel::nflog::Stats,
        last: Option<Instant>,
        cpu: Duration,
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let (start_tx, start_rx) = mpsc::channel::<()>();
    let packets = opts.packets;
    std::thread::scope(|s| -> Result<()> {
        let reader = s.spawn(move || -> Result<Got> {
            let mut sub = lab.client().run(|| Subscriber::open(&Config::new(GROUP)))?;
            ready_tx.send(()).ok();
            start_rx.recv().ok();
            let mut got = Got {
                packets: 0,
                stats: sub.stats(),
                last: None,
                cpu: Duration::ZERO,
            };
            let mut idle = Instant::now();
            // Bounded: ends when all packets are in or nothing came for IDLE_STOP.
            while got.packets < packets && idle.elapsed() < IDLE_STOP {
                let p = sub.recv(Some(Duration::from_millis(50)))?;
                if !p.is_empty() {
                    got.packets += p.len() as u64;
                    got.last = Some(Instant::now());
                    idle = Instant::now();
                }
            }
            got.stats = sub.stats();
            got.cpu = thread_cpu();
            Ok(got)
        });
        ready_rx.recv().context("library reader did not start")?;
        let mut start = Instant::now();
        if !backlog {
            start_tx.send(()).ok();
        }
        (r.sent, r.burst) = burst(lab, packets, opts.cap)?;
        if backlog {
            start = Instant::now();
            start_tx.send(()).ok();
        }
        let got = reader.join().expect("reader thread")?;
        r.read = got.packets;
        r.seq_lost = Some(got.stats.seq_lost);
        r.enobufs = Some(got.stats.enobufs);
        r.dropped_batches = Some(got.stats.dropped_batches);
        r.drain = got.last.map(|l| l.duration_since(start));
        r.cpu = Some(got.cpu);
        Ok(())
    })
}

/// Stops (`SIGSTOP`) or resumes (`SIGCONT`) a reader process of ours.
fn pause(p: &Proc, sig: i32) -> Result<()> {
    let pid = p.child.as_ref().context("reader already exited")?.id() as libc::pid_t;
    // SAFETY: plain syscall on our own, not yet reaped child.
    ensure!(
        unsafe { libc::kill(pid, sig) } == 0,
        "kill: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The burst, with the reader stopped during it in backlog mode; returns (sent, burst time, the
/// time from which the drain is counted).
fn burst_around(
    p: &Proc,
    backlog: bool,
    lab: &lab::Lab,
    opts: &Opts,
) -> Result<(u64, Duration, SystemTime)> {
    if backlog {
        pause(p, libc::SIGSTOP)?;
    }
    let t0 = SystemTime::now();
    let (sent, took) = burst(lab, opts.packets, opts.cap)?;
    if backlog {
        let resumed = SystemTime::now();
        pause(p, libc::SIGCONT)?;
        return Ok((sent, took, resumed));
    }
    Ok((sent, took, t0))
}

fn run_once(
    reader: Reader,
    backlog: bool,
    lab: &lab::Lab,
    leash: &Path,
    opts: &Opts,
    dir: &Path,
    tag: &str,
) -> Result<RunResult> {
    let before = logged_counter(lab)?;
    let n = opts.packets.to_string();
    let cap = (opts.cap.as_secs() + 60).to_string();
    let file = dir.join(format!("{tag}.pcap"));
    let nflog = format!("nflog:{GROUP}");
    let mut r = RunResult::default();
    match reader {
        Reader::Library => library_run(lab, backlog, opts, &mut r)?,
        Reader::LeashLog | Reader::LeashLogNoProcess => {
            let mut argv: Vec<String> =
                vec![leash.display().to_string(), "log".into(), "--json".into()];
            argv.extend([
                "--group".into(),
                GROUP.to_string(),
                "--count".into(),
                n.clone(),
                "--seconds".into(),
                cap,
            ]);
            if reader == Reader::LeashLogNoProcess {
                argv.push("--no-process".into());
            }
            let mut p = Proc::spawn(lab.client(), &argv, dir, tag)?;
            p.wait_for_stderr("listening")?;
            let t0;
            (r.sent, r.burst, t0) = burst_around(&p, backlog, lab, opts)?;
            let out = p.stdout.clone();
            p.finish(Some(&out))?;
            r.cpu = p.cpu;
            let text = std::fs::read_to_string(&out)?;
            r.read = text.lines().count() as u64;
            if let Some(last) = text.lines().last() {
                let v: serde_json::Value = serde_json::from_str(last)?;
                let t: jiff::Timestamp = v["time"].as_str().unwrap_or_default().parse()?;
                r.drain = SystemTime::from(t).duration_since(t0).ok();
            }
            let summary = p
                .stderr()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["type"] == "summary")
                .context("no summary from leash log")?;
            r.seq_lost = summary["seq_lost"].as_u64();
            r.dropped_batches = summary["dropped_batches"].as_u64();
            r.enobufs = summary["enobufs"].as_u64();
        }
        Reader::Tcpdump | Reader::TcpdumpBigBuffer | Reader::TcpdumpNull => {
            let target = if reader == Reader::TcpdumpNull {
                "/dev/null".to_string()
            } else {
                file.display().to_string()
            };
            let mut argv: Vec<String> =
                vec!["tcpdump".into(), "-i".into(), nflog, "-c".into(), n.clone()];
            if reader == Reader::TcpdumpBigBuffer {
                argv.extend(["-B".into(), "32768".into()]);
            }
            argv.extend(["-w".into(), target]);
            let mut p = Proc::spawn(lab.client(), &argv, dir, tag)?;
            p.wait_for_stderr("listening on")?;
            let t0;
            (r.sent, r.burst, t0) = burst_around(&p, backlog, lab, opts)?;
            let watched = (reader != Reader::TcpdumpNull).then_some(file.as_path());
            p.finish(watched)?;
            r.cpu = p.cpu;
            let err = p.stderr();
            r.read = field(&err, "packets captured").context("tcpdump printed no count")?;
            r.enobufs = field(&err, "packets dropped by kernel");
            if reader != Reader::TcpdumpNull {
                r.drain = last_pcap_time(&file)?.and_then(|t| t.duration_since(t0).ok());
            }
        }
    }
    r.logged = logged_counter(lab)? - before;
    Ok(r)
}

fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    if !common::is_root() {
        eprintln!("bench nflog: needs root (network namespaces, nftables, NFLOG); skipped");
        return Ok(());
    }
    let leash = common::leash_bin();
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let scratch = Scratch::create(base, "nflog", opts.keep)?;
    let dir = scratch.0.clone();

    println!("leash binary: {}", leash.display());
    println!(
        "{}",
        tool_output(&["tcpdump", "--version"])
            .lines()
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{}, net.core.rmem_max {}",
        common::kernel_line(),
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{} rounds of a {}-packet burst (cap {} s)\n",
        opts.rounds,
        opts.packets,
        opts.cap.as_secs()
    );

    let lab = lab::Lab::new(&[DST.parse()?], &[], &[]).context("lab")?;
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text())?;
    let out = nsenter(lab.client())
        .arg(&leash)
        .arg("apply")
        .arg(&policy)
        .output()?;
    ensure!(
        out.status.success(),
        "leash apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut results: Vec<(Reader, bool, RunResult)> = Vec::new();
    let mut unsettled = 0;
    for round in 0..opts.rounds {
        let mut order: Vec<(Reader, bool)> = [false, true]
            .iter()
            .flat_map(|&b| Reader::ALL.iter().map(move |&r| (r, b)))
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (reader, backlog) in order {
            if !settle() {
                unsettled += 1;
            }
            let mode = if backlog { "backlog" } else { "live" };
            let tag = format!("r{round}-{mode}-{:?}", reader).to_lowercase();
            let r = run_once(reader, backlog, &lab, &leash, &opts, &dir, &tag)
                .with_context(|| format!("{} ({mode}) in round {round}", reader.name()))?;
            println!(
                "round {round} {mode:<7} {:<30} logged {:>7} read {:>7} lost {:>7} (kernel: seq gaps {}, ENOBUFS {}, dropped batches {}) drain {} ms, {} events/s, cpu {} ms; burst {} ms ({:.0} pkt/s)",
                reader.name(),
                r.logged,
                r.read,
                r.lost(),
                fmt_opt(r.seq_lost),
                fmt_opt(r.enobufs),
                fmt_opt(r.dropped_batches),
                fmt_opt(r.drain.map(|d| d.as_millis())),
                fmt_opt(r.rate().map(|x| x.round() as u64)),
                fmt_opt(r.cpu.map(|d| d.as_millis())),
                r.burst.as_millis(),
                r.sent as f64 / r.burst.as_secs_f64()
            );
            results.push((reader, backlog, r));
        }
    }

    let mut report = String::new();
    for backlog in [false, true] {
        writeln!(
            report,
            "\n{}",
            if backlog {
                "backlog: the reader is stopped (SIGSTOP) during the burst and resumed after it; drain counts from the resume"
            } else {
                "live: the reader runs during the burst; drain counts from the start of the burst"
            }
        )?;
        writeln!(
            report,
            "\n| reader | read / logged | lost (max) | kernel-reported: seq gaps / ENOBUFS / dropped batches | drain ms | events/s | reader CPU ms | CPU µs/event | burst pkt/s |"
        )?;
        writeln!(report, "|---|---|---|---|---|---|---|---|---|")?;
        for reader in Reader::ALL {
            let rs: Vec<&RunResult> = results
                .iter()
                .filter(|(r, b, _)| *r == reader && *b == backlog)
                .map(|(_, _, r)| r)
                .collect();
            let med = |f: &dyn Fn(&RunResult) -> Option<f64>| {
                median(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let m = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.0}", v));
            writeln!(
                report,
                "| {} | {} / {} | {} ({}) | {} / {} / {} | {} | {} | {} | {} | {} |",
                reader.name(),
                m(med(&|r| Some(r.read as f64))),
                m(med(&|r| Some(r.logged as f64))),
                m(med(&|r| Some(r.lost() as f64))),
                rs.iter().map(|r| r.lost()).max().unwrap_or(0),
                m(med(&|r| r.seq_lost.map(|x| x as f64))),
                m(med(&|r| r.enobufs.map(|x| x as f64))),
                m(med(&|r| r.dropped_batches.map(|x| x as f64))),
                m(med(&|r| r.drain.map(|d| d.as_secs_f64() * 1000.0))),
                m(med(&|r| r.rate())),
                m(med(&|r| r.cpu.map(|d| d.as_secs_f64() * 1000.0))),
                med(&|r| r
                    .cpu
                    .filter(|_| r.read > 0)
                    .map(|c| c.as_secs_f64() * 1e6 / r.read as f64))
                .map_or("-".into(), |v| format!("{v:.2}")),
                m(med(&|r| Some(r.sent as f64 / r.burst.as_secs_f64()))),
            )?;
        }
    }
    writeln!(
        report,
        "\n{unsettled} of {} runs started without an idle window.",
        results.len()
    )?;
    print!("{report}");
    Ok(())
}
