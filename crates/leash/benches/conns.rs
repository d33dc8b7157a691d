//! Benchmark: listing 20,000 established TCP sockets held by 5 processes, with their processes:
//! `leash conns` (with and without `--json`; it also judges every connection by the active
//! policy) against `ss -tanp`, `ss -tan`, `netstat -tanp` and `lsof -i -n -P`, in the same run.
//!
//! ```sh
//! sudo cargo bench -p leash --bench conns                  # 5 rounds after 1 warm-up
//! sudo cargo bench -p leash --bench conns -- --rounds 9 --sockets 20000 --procs 5
//! ```
//!
//! Options (after `--`): `--rounds N` (default 5, or `LEASH_BENCH_ROUNDS`), `--sockets N`
//! (default 20,000), `--procs N` (holder processes, default 5; one process cannot hold 20,000
//! sockets here, the descriptor limit is 20,000), `--pause SECS` (after the setup and check, wait
//! with the client namespace's path printed, e.g. to run `perf` in it). `LEASH_BIN` overrides
//! the leash binary.
//! Needs `ss` (iproute2), `netstat` (net-tools), `lsof` and `nsenter` (util-linux); a missing tool
//! is reported and left out.
//!
//! Setup, all in two anonymous network namespaces of this process (nothing in the machine's own):
//! a client namespace (198.18.0.1) and a peer namespace (198.18.0.2) joined by a veth pair. The
//! peer listens on 4 ports with a backlog of 65,535 (`net.core.somaxconn` raised in the peer
//! only) and never accepts: the kernel completes the handshakes and keeps the connections in the
//! accept queues, so the peer needs no descriptors and the client namespace holds exactly the
//! 20,000 client sockets. The client gets a policy with `leash apply` (default deny; the bench
//! ports allowed), so `leash conns` shows a verdict and rule for every connection. The holders
//! are copies of this bench binary (`--hold`), started in the client namespace with nsenter;
//! each connects its share and waits for its stdin to close. They are killed by pid when the
//! bench ends, also on failure.
//!
//! Each round runs every tool once inside the client namespace (`nsenter --net=NS TOOL`, output to
//! /dev/null), in an order that rotates between rounds; wall time from spawn to reap, CPU time
//! from the children's rusage. Before the rounds, untimed: every holder's socket must appear in
//! `leash conns --json` with its pid and the verdict `allow`, and in `ss -tanp` with its pid.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::{Args, Scratch, have, median, ms, nsenter, tv};
use kernel::netns::NetNs;
use kernel::rtnl::{Family, Rtnl};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORTS: [u16; 4] = [8000, 8001, 8002, 8003];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--hold") {
        return hold(&args[1..]);
    }
    let mut rounds = common::args::rounds(5)?;
    let mut sockets = 20_000usize;
    let mut procs = 5usize;
    let mut pause = 0u64;
    let mut args = Args::from(args, "--rounds N, --sockets N, --procs N, --pause SECS");
    while let Some(a) = args.flag() {
        match a.as_str() {
            "--rounds" => rounds = args.value::<usize>("--rounds")?.max(1),
            "--sockets" => sockets = args.value("--sockets")?,
            "--procs" => procs = args.value::<usize>("--procs")?.max(1),
            "--pause" => pause = args.value("--pause")?,
            other => return Err(args.unknown(other)),
        }
    }
    if !common::is_root() {
        bail!("the conns bench needs root (namespaces, veth, nftables)");
    }
    run(rounds, sockets, procs, pause)
}

/// Child mode: `--hold N ADDR PORT...`: connect N sockets round-robin over the ports, say
/// `ready N`, wait for stdin to close.
fn hold(args: &[String]) -> Result<()> {
    let n: usize = args.first().context("--hold N")?.parse()?;
    let ip: Ipv4Addr = args.get(1).context("--hold N ADDR")?.parse()?;
    let ports: Vec<u16> = args[2..].iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
    ensure!(!ports.is_empty(), "--hold needs ports");
    // The soft descriptor limit is often 1024; the hard one (20,000 here) is what we may use.
    // SAFETY: rlimit is plain old data and the calls only read/write it.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let to = SocketAddr::from((ip, ports[i % ports.len()]));
        held.push(TcpStream::connect_timeout(&to, Duration::from_secs(5)).with_context(|| format!("connect #{i} to {to}"))?);
    }
    println!("ready {}", held.len());
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// A holder process, killed (by its pid) and reaped on drop.
struct Holder {
    child: Child,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One timed run: wall time and the child's CPU time (from RUSAGE_CHILDREN deltas).
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn children_cpu() -> Duration {
    // SAFETY: rusage is plain old data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn time_in(ns: &NetNs, argv: &[String]) -> Result<Sample> {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let st = nsenter(ns)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {argv:?}"))?;
    let wall = t.elapsed();
    ensure!(st.success(), "{argv:?} failed: {st}");
    Ok(Sample { wall, cpu: children_cpu().saturating_sub(cpu0) })
}

fn output_in(ns: &NetNs, argv: &[String]) -> Result<String> {
    let out = nsenter(ns).args(argv).stdin(Stdio::null()).output().with_context(|| format!("running {argv:?}"))?;
    ensure!(out.status.success(), "{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

fn run(rounds: usize, sockets: usize, procs: usize, pause: u64) -> Result<()> {
    let leash = common::leash_bin();
    let scratch = Scratch::create(std::env::temp_dir(), "conns", false)?;
    bench(&leash, &scratch.0, rounds, sockets, procs, pause)
}

fn setup_net(client: &NetNs, peer: &NetNs) -> Result<()> {
    client.run(|| -> Result<()> {
        let mut r = Rtnl::open()?;
        r.create_veth_with_indexes("bc0", 10, "bc1", 20, peer.as_fd())?;
        let i = r.link_index("bc0")?;
        r.add_address(i, CLIENT.into(), 32)?;
        r.set_link_up(i)?;
        r.add_default_route(i, Family::V4)?;
        Ok(())
    })?;
    peer.run(|| -> Result<()> {
        let mut r = Rtnl::open()?;
        let i = r.link_index("bc1")?;
        r.add_address(i, PEER.into(), 32)?;
        r.set_link_up(i)?;
        r.add_default_route(i, Family::V4)?;
        r.wait_oper_up(i, Duration::from_secs(3))?;
        r.wait_local(PEER.into(), Duration::from_secs(3))?;
        Ok(())
    })?;
    client.run(|| -> Result<()> {
        let mut r = Rtnl::open()?;
        let i = r.link_index("bc0")?;
        r.wait_oper_up(i, Duration::from_secs(3))?;
        Ok(())
    })
}

fn bench(leash: &Path, scratch: &Path, rounds: usize, sockets: usize, procs: usize, pause: u64) -> Result<()> {
    let client = NetNs::new()?;
    let peer = NetNs::new()?;
    setup_net(&client, &peer)?;
    // The accept queues hold every connection: raise the cap of listen()'s backlog in the peer.
    peer.set_sysctl("net.core.somaxconn", "65535")?;
    let listeners: Vec<TcpListener> = peer.run(|| -> Result<Vec<TcpListener>> {
        PORTS
            .iter()
            .map(|&p| {
                let l = TcpListener::bind((PEER, p))?;
                // listen() again on a listening socket sets its backlog (std's is small).
                // SAFETY: plain syscall on a socket we own.
                ensure!(unsafe { libc::listen(l.as_raw_fd(), 65535) } == 0, "listen: {}", std::io::Error::last_os_error());
                Ok(l)
            })
            .collect()
    })?;

    let policy = scratch.join("bench.toml");
    std::fs::write(
        &policy,
        format!(
            r#"# Generated by crates/leash/benches/conns.rs. Benchmark range only.
version = 1
[defaults]
outbound = "deny"
deny_with = "reject"

[[rule]]
name = "dns"
action = "allow"
proto = "udp"
ports = [53]
to = ["198.18.255.53"]

[[rule]]
name = "admin-ssh"
action = "allow"
proto = "tcp"
ports = [22]
to = ["198.18.0.0/15"]
user = ["root"]

[[rule]]
name = "bench"
action = "allow"
proto = "tcp"
ports = ["{}-{}"]
to = ["{PEER}"]
"#,
            PORTS[0],
            PORTS[PORTS.len() - 1]
        ),
    )?;
    let out = nsenter(&client).arg(leash).args(["apply", "--json"]).arg(&policy).output()?;
    ensure!(out.status.success(), "leash apply failed: {}", String::from_utf8_lossy(&out.stderr));

    // The holders: this binary in --hold mode, in the client namespace.
    let exe = std::env::current_exe()?;
    let mut holders = Vec::with_capacity(procs);
    let t = Instant::now();
    for k in 0..procs {
        let n = sockets / procs + usize::from(k < sockets % procs);
        let mut args = vec!["--hold".to_string(), n.to_string(), PEER.to_string()];
        args.extend(PORTS.iter().map(|p| p.to_string()));
        let child = nsenter(&client)
            .arg(&exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a holder")?;
        holders.push(Holder { child });
    }
    let mut pids = HashMap::new();
    for h in &mut holders {
        let mut line = String::new();
        // A holder that fails exits, which closes its stdout: this read always ends.
        BufReader::new(h.child.stdout.as_mut().unwrap()).read_line(&mut line)?;
        let n: usize = line.trim().strip_prefix("ready ").and_then(|n| n.parse().ok()).with_context(|| format!("holder said {line:?}"))?;
        pids.insert(u64::from(h.child.id()), n);
    }
    eprintln!("{sockets} connections from {procs} processes in {:.1} s", t.elapsed().as_secs_f64());

    // Correctness, untimed: leash lists every socket with its pid and verdict; so does ss.
    let leash_s = leash.display().to_string();
    let j: serde_json::Value = serde_json::from_str(&output_in(&client, &[leash_s.clone(), "conns".into(), "--json".into()])?)?;
    let conns = j["connections"].as_array().context("connections")?;
    let mut per_pid: HashMap<u64, usize> = HashMap::new();
    let mut allowed = 0;
    for c in conns {
        if c["state"] == "ESTABLISHED" && c["remote"].as_str().is_some_and(|r| r.starts_with(&format!("{PEER}:"))) {
            if let Some(p) = c["pid"].as_u64() {
                *per_pid.entry(p).or_default() += 1;
            }
            allowed += usize::from(c["verdict"] == "allow" && c["rule"] == "bench");
        }
    }
    ensure!(per_pid == pids, "leash conns: sockets per pid {per_pid:?}, want {pids:?}");
    ensure!(allowed == sockets, "leash conns: {allowed} of {sockets} with verdict allow by rule bench");
    ensure!(conns.len() == sockets, "leash conns listed {} sockets, want {sockets}", conns.len());
    let ss = output_in(&client, &["ss".into(), "-tanp".into()])?;
    let ss_with_pid = ss.lines().filter(|l| l.contains("pid=")).count();
    ensure!(ss_with_pid == sockets, "ss -tanp shows {ss_with_pid} sockets with a pid, want {sockets}");
    eprintln!("check: leash conns lists all {sockets} with pid and verdict allow; ss -tanp lists {ss_with_pid} with a pid");
    // Where leash's time goes, as it reports it (one untimed run).
    let phases = format!(
        "`leash conns --json` phases (one untimed run, ms): sock_diag dump {}, /proc scan {} ({} processes, {} descriptors), verdicts and users {}",
        j["timings_ms"]["sockets"], j["timings_ms"]["processes"], j["scan"]["processes"], j["scan"]["descriptors"], j["timings_ms"]["verdicts"]
    );
    eprintln!("{phases}");
    if pause > 0 {
        // Profiling aid: the setup stays up; enter it with `nsenter --net=PATH`.
        eprintln!("pausing {pause} s; client namespace: {}", client.path().display());
        std::thread::sleep(Duration::from_secs(pause));
    }

    let mut tools: Vec<(&str, Vec<String>)> = vec![
        ("leash conns", vec![leash_s.clone(), "conns".into()]),
        ("leash conns --json", vec![leash_s.clone(), "conns".into(), "--json".into()]),
        ("leash conns --no-processes", vec![leash_s.clone(), "conns".into(), "--no-processes".into()]),
        ("ss -tanp", vec!["ss".into(), "-tanp".into()]),
        ("ss -tan", vec!["ss".into(), "-tan".into()]),
    ];
    for (name, argv) in [("netstat -tanp", ["netstat", "-tanp"].as_slice()), ("lsof -i -n -P", ["lsof", "-i", "-n", "-P"].as_slice())] {
        if have(argv[0]) {
            tools.push((name, argv.iter().map(|s| s.to_string()).collect()));
        } else {
            eprintln!("{} is not installed: left out (apt-get install {})", argv[0], if argv[0] == "netstat" { "net-tools" } else { "lsof" });
        }
    }
    // One untimed warm-up round (page cache, dentries of /proc), then the timed ones.
    for (_, argv) in &tools {
        time_in(&client, argv)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
    for r in 0..rounds {
        for k in 0..tools.len() {
            let i = (k + r) % tools.len();
            std::thread::sleep(Duration::from_millis(100));
            samples[i].push(time_in(&client, &tools[i].1)?);
        }
        eprintln!("round {}/{rounds} done", r + 1);
    }
    drop(holders);
    drop(listeners);

    let base = median(&samples[0].iter().map(|s| s.wall).collect::<Vec<_>>()).context("no samples")?;
    let mut report = String::new();
    report.push_str(&format!(
        "{sockets} established TCP sockets held by {procs} processes, {rounds} rounds (median, min, max of wall time; CPU = user + sys)\n\n"
    ));
    report.push_str("| tool | median ms | min ms | max ms | CPU ms | time / `leash conns` |\n|---|---:|---:|---:|---:|---:|\n");
    for (i, (name, _)) in tools.iter().enumerate() {
        let w = common::sorted(&samples[i].iter().map(|s| s.wall).collect::<Vec<_>>());
        let c: Vec<Duration> = samples[i].iter().map(|s| s.cpu).collect();
        let med = median(&w).context("no samples")?;
        report.push_str(&format!(
            "| `{name}` | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
            ms(med),
            ms(w[0]),
            ms(w[w.len() - 1]),
            ms(median(&c).context("no samples")?),
            med.as_secs_f64() / base.as_secs_f64()
        ));
    }
    report.push_str(&format!("\n{phases}\n"));
    println!("{report}");
    common::write_report("conns", &report)?;
    Ok(())
}
