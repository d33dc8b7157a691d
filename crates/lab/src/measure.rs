//! `leash test --measure`: what a policy costs new TCP connections, in the lab's namespaces.
//!
//! The destinations are those of the policy's allowed TCP expectations. In interleaved rounds
//! (policy applied, then no table, then the other way round, so that drift of the machine hits
//! both sides alike) a forked process per identity (uid, gid, cgroup of the expectations) makes
//! sequential TCP connects, each closed with an RST (`SO_LINGER` 0) so that no TIME_WAIT state
//! piles up and ports never run out. The peer accepts and closes on one thread with a deep
//! backlog. Only ratios are meaningful (see KERNEL-NOTES: the absolute numbers depend on the
//! machine); "no table" also means no connection tracking, which is part of what the policy costs.

use crate::cgroup;
use crate::fork;
use crate::run::{Prepared, prepare};
use crate::error::LabError;
use crate::scratch::Lab;
use policy::{Action, Policy, Proto};
use ruleset::compile::CompileOptions;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What [`measure`] does.
#[derive(Debug, Clone)]
pub struct MeasureOptions {
    /// Rounds; each measures both sides once.
    pub rounds: usize,
    /// Connects per side per round (spread over the destinations).
    pub connects: usize,
    /// The whole measurement stops after the round that crosses this (at least one round runs).
    pub time_limit: Duration,
    /// A connect that takes longer counts as failed.
    pub connect_timeout: Duration,
    /// How the policy is compiled (`now` None: the current time).
    pub compile: CompileOptions,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            rounds: 5,
            connects: 2000,
            time_limit: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(1),
            compile: CompileOptions::default(),
        }
    }
}

/// One destination measured.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Index into `policy.expects`.
    pub expect: usize,
    pub addr: SocketAddr,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One side (policy applied, or no table) over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// Median connect latency (the `connect` call), in microseconds.
    pub p50_us: f64,
    /// 99th percentile connect latency, in microseconds.
    pub p99_us: f64,
    /// Median over the rounds of connects per second (wall time of the connect loop).
    pub connects_per_s: f64,
    /// Connects per second of each round.
    pub rounds_connects_per_s: Vec<f64>,
    /// Connects made (successful or not).
    pub connects: usize,
    /// Connects that failed or timed out.
    pub failures: usize,
}

/// Policy side divided by the no-table side.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Above 1: connects take longer with the policy.
    pub p50: f64,
    pub p99: f64,
    /// Below 1: fewer connects per second with the policy.
    pub connects_per_s: f64,
}

/// The result of [`measure`].
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub targets: Vec<Target>,
    /// Allowed TCP expectations left out, with the reason.
    pub skipped: Vec<String>,
    /// Rounds completed.
    pub rounds: usize,
    pub connects_per_round: usize,
    /// Whether the time limit ended the measurement before all rounds ran.
    pub stopped_early: bool,
    /// Kernel rules of the applied table (all chains).
    pub kernel_rules: usize,
    pub with_policy: Side,
    pub without_policy: Side,
    pub ratio: Ratios,
    #[serde(rename = "elapsed_ms", serialize_with = "crate::ser::millis")]
    pub elapsed: Duration,
}

/// Measures the cost of `policy` on new TCP connections; see the module docs. `progress` gets a
/// line for each step (for stderr). Needs root.
pub fn measure(policy: &Policy, opts: &MeasureOptions, progress: &dyn Fn(&str)) -> Result<Measurement, LabError> {
    let started = Instant::now();
    let candidates: Vec<usize> = policy
        .expects
        .iter()
        .enumerate()
        .filter(|(_, e)| e.proto == Proto::Tcp && e.verdict == Action::Allow && e.port.is_some())
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        return Err(LabError::NothingToMeasure(
            "the policy has no allowed TCP expectation to measure: add an [[expect]] with proto = \"tcp\", a port and verdict = \"allow\"".into(),
        ));
    }
    let Prepared { policy: p, scratch, cgroup_problem } = prepare(policy);
    let windows = p.rules.iter().any(|r| r.cond.when.is_some());
    let now = jiff::Timestamp::now();
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for i in candidates {
        let e = &p.expects[i];
        let orig = &policy.expects[i];
        let shown = format!("expectation #{} ({}:{})", i + 1, orig.to, orig.port.unwrap_or(0));
        if let (Some(_), Some(why)) = (&e.cgroup, &cgroup_problem) {
            skipped.push(format!("{shown}: {why}"));
            continue;
        }
        // The measurement connects from the client namespace: a forwarded expectation's
        // connection would be the host's, which the policy may decide otherwise.
        if let Some(src) = e.from {
            skipped.push(format!("{shown}: it is forwarded (from {src}); --measure times the host's own connections"));
            continue;
        }
        let mut conn = e.connection();
        conn.at = windows.then(|| p.local_time(now));
        let ex = policy::explain(&p, &conn);
        if ex.verdict != Action::Allow {
            skipped.push(format!(
                "{shown}: the policy does not allow it now ({})",
                crate::run::describe_decider(&p, ex.decider)
            ));
            continue;
        }
        targets.push(Target {
            expect: i,
            addr: SocketAddr::new(e.to, e.port.unwrap_or(0)),
            uid: e.uid,
            gid: e.gid,
            cgroup: e.cgroup.clone(),
            name: e.name.clone(),
        });
    }
    if targets.is_empty() {
        return Err(LabError::NothingToMeasure(format!(
            "none of the policy's allowed TCP expectations can be measured now: {}",
            skipped.join("; ")
        )));
    }

    let dsts: Vec<IpAddr> = targets.iter().map(|t| t.addr.ip()).collect();
    let lab = Lab::new(&dsts, &[], &[])?;
    let acceptor = Acceptor::start(&lab, &targets)?;
    let copts = CompileOptions { comment: opts.compile.comment.clone(), now: Some(opts.compile.now.unwrap_or(now)), imitate: None, kernel_minutes_west: opts.compile.kernel_minutes_west };
    let table = ruleset::compile(&p, &copts);
    let kernel_rules = table.chains.iter().map(|c| c.rules.len()).sum();
    let named: Vec<crate::probe::Case> = targets
        .iter()
        .filter(|t| t.name.is_some())
        .map(|t| crate::probe::Case {
            proto: Proto::Tcp,
            dst: t.addr.ip(),
            port: Some(t.addr.port()),
            uid: t.uid,
            gid: t.gid,
            name: t.name.clone(),
            cgroup: None,
        })
        .collect();

    // Identities: one forked process per (uid, gid, cgroup), each cycling over its targets.
    let mut identities: BTreeMap<(u32, u32, Option<String>), Vec<SocketAddr>> = BTreeMap::new();
    for t in &targets {
        identities.entry((t.uid, t.gid, t.cgroup.clone())).or_default().push(t.addr);
    }
    let total_targets = targets.len();
    let mount = cgroup::mount_point();

    let mut sides: [SideData; 2] = [SideData::default(), SideData::default()];
    let rounds = opts.rounds.max(1);
    let connects = opts.connects.max(1);
    let deadline = started + opts.time_limit;
    let mut done = 0;
    // Round 0 is a warm-up, not counted: the first connects after an apply are slower (the
    // connection tracking table, caches), which would otherwise count against the policy.
    for round in 0..=rounds {
        if round > 1 && Instant::now() >= deadline {
            break;
        }
        let warm_up = round == 0;
        let connects = if warm_up { connects.min(500) } else { connects };
        // Interleaved and alternating: policy first in odd rounds, no table first in even ones.
        let order = if round % 2 == 1 { [true, false] } else { [false, true] };
        for with_policy in order {
            if with_policy {
                lab.client()
                    .run(|| kernel::apply(&table, &Default::default()))
                    .map_err(|e| LabError::Apply(e.to_string()))?;
                if !named.is_empty() {
                    lab.client()
                        .run(|| crate::run::play_forwarder(&p, &named))
                        .map_err(|e| LabError::Apply(format!("cannot fill the domain sets: {e}")))?;
                }
            } else {
                lab.client().run(kernel::disable).map_err(|e| LabError::Apply(e.to_string()))?;
            }
            let side_text = if with_policy { "with the policy applied" } else { "with no table" };
            if warm_up {
                progress(&format!("warm-up: {connects} connects {side_text}"));
            } else {
                progress(&format!("round {round}/{rounds}: {connects} connects {side_text}"));
            }
            let mut lat = Vec::with_capacity(connects);
            let mut failures = 0;
            let mut wall = Duration::ZERO;
            for (k, ((uid, gid, cg), addrs)) in identities.iter().enumerate() {
                // This identity's share of the connects, in proportion to its targets.
                let share = share_of(connects, total_targets, addrs.len(), k == identities.len() - 1, &identities);
                if share == 0 {
                    continue;
                }
                let procs = match cg {
                    Some(cg) => {
                        let Some(m) = &mount else {
                            return Err(LabError::Measure("cgroup v2 is not mounted here".into()));
                        };
                        Some(cstring(&m.join(cg).join("cgroup.procs"))?)
                    }
                    None => None,
                };
                let who = fork::Identity { cgroup_procs: procs.as_deref(), uid: *uid, gid: *gid };
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
                let limit = left + Duration::from_secs(5);
                let timeout = opts.connect_timeout;
                let child_deadline = Instant::now() + left;
                let res = lab
                    .client()
                    .try_run(|| fork::run(who, limit, |pipe| connect_loop(addrs, share, timeout, child_deadline, pipe)))
                    .map_err(|e| LabError::Measure(format!("cannot enter the client namespace: {e}")))?;
                let (end, data) = res.map_err(|e| LabError::Measure(format!("cannot fork the measuring process: {e}")))?;
                let Some((l, f, w)) = parse_loop(&data) else {
                    let detail = String::from_utf8_lossy(&data);
                    return Err(LabError::Measure(format!("the measuring process failed ({end:?}): {detail}")));
                };
                lat.extend(l);
                failures += f;
                wall += w;
            }
            if warm_up {
                continue;
            }
            let side = &mut sides[usize::from(!with_policy)];
            let n = lat.len() + failures;
            side.rates.push(if wall.is_zero() { 0.0 } else { n as f64 / wall.as_secs_f64() });
            side.connects += n;
            side.failures += failures;
            side.latencies.extend(lat);
        }
        if !warm_up {
            done += 1;
        }
    }
    drop(acceptor);
    drop(lab);
    drop(scratch);
    let [with, without] = sides.map(SideData::finish);
    let ratio = Ratios {
        p50: safe_div(with.p50_us, without.p50_us),
        p99: safe_div(with.p99_us, without.p99_us),
        connects_per_s: safe_div(with.connects_per_s, without.connects_per_s),
    };
    Ok(Measurement {
        targets: targets
            .into_iter()
            .map(|t| Target { cgroup: policy.expects[t.expect].cgroup.clone(), ..t })
            .collect(),
        skipped,
        rounds: done,
        connects_per_round: connects,
        stopped_early: done < rounds,
        kernel_rules,
        with_policy: with,
        without_policy: without,
        ratio,
        elapsed: started.elapsed(),
    })
}

/// The connects identity number `k` of `identities` makes: its targets' share of `connects`,
/// the last identity taking the remainder.
fn share_of(
    connects: usize,
    total_targets: usize,
    mine: usize,
    last: bool,
    identities: &BTreeMap<(u32, u32, Option<String>), Vec<SocketAddr>>,
) -> usize {
    if last {
        let others: usize = identities.values().rev().skip(1).map(|a| connects * a.len() / total_targets).sum();
        connects.saturating_sub(others)
    } else {
        connects * mine / total_targets
    }
}

fn safe_div(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn cstring(p: &std::path::Path) -> Result<std::ffi::CString, LabError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| LabError::Measure(format!("{} holds a NUL byte", p.display())))
}

#[derive(Debug, Default)]
struct SideData {
    latencies: Vec<u32>,
    rates: Vec<f64>,
    connects: usize,
    failures: usize,
}

impl SideData {
    fn finish(mut self) -> Side {
        self.latencies.sort_unstable();
        let pct = |q: f64| -> f64 {
            if self.latencies.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
            self.latencies[i] as f64 / 1000.0
        };
        let (p50_us, p99_us) = (pct(0.50), pct(0.99));
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        let connects_per_s = if r.is_empty() { 0.0 } else { r[r.len() / 2] };
        Side { p50_us, p99_us, connects_per_s, rounds_connects_per_s: self.rates, connects: self.connects, failures: self.failures }
    }
}

/// A connect that failed, in the child's record stream.
const FAILED: u32 = u32::MAX;

/// The child's loop: `n` sequential connects over `addrs`, each record the connect's duration in
/// nanoseconds (or [`FAILED`]) as 4 bytes little-endian, then the loop's wall time as 8 bytes.
fn connect_loop(addrs: &[SocketAddr], n: usize, timeout: Duration, deadline: Instant, pipe: &mut fork::ChildPipe) -> u8 {
    let mut out = Vec::with_capacity(n * 4 + 8);
    let start = Instant::now();
    for i in 0..n {
        if Instant::now() >= deadline {
            break;
        }
        let addr = addrs[i % addrs.len()];
        let t = Instant::now();
        let rec = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                let d = t.elapsed().as_nanos().min(u128::from(FAILED - 1)) as u32;
                reset_on_close(&s);
                drop(s);
                d
            }
            Err(_) => FAILED,
        };
        out.extend_from_slice(&rec.to_le_bytes());
    }
    out.extend_from_slice(&(start.elapsed().as_nanos() as u64).to_le_bytes());
    if pipe.write_all(&out) { 0 } else { 1 }
}

/// `SO_LINGER` 0: close sends an RST and leaves no TIME_WAIT socket behind.
fn reset_on_close(s: &TcpStream) {
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

/// Latencies (ns), failures and wall time of a child's record stream.
fn parse_loop(data: &[u8]) -> Option<(Vec<u32>, usize, Duration)> {
    if data.len() < 8 || !(data.len() - 8).is_multiple_of(4) {
        return None;
    }
    let (recs, wall) = data.split_at(data.len() - 8);
    let wall = Duration::from_nanos(u64::from_le_bytes(wall.try_into().ok()?));
    let mut lat = Vec::with_capacity(recs.len() / 4);
    let mut failures = 0;
    for c in recs.chunks_exact(4) {
        match u32::from_le_bytes(c.try_into().ok()?) {
            FAILED => failures += 1,
            d => lat.push(d),
        }
    }
    Some((lat, failures, wall))
}

/// Listeners on every target (in the peer namespace, or the client's for loopback) and one
/// thread that accepts and closes, until dropped.
#[derive(Debug)]
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Pending connections a listener queues; deep, so that the acceptor thread falling behind for
/// a moment never drops a SYN (which would show up as a one-second retransmit).
const BACKLOG: i32 = 4096;

impl Acceptor {
    fn start(lab: &Lab, targets: &[Target]) -> Result<Acceptor, LabError> {
        let mut addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
        addrs.sort();
        addrs.dedup();
        let bind = |addrs: Vec<SocketAddr>| -> Result<Vec<TcpListener>, LabError> {
            addrs
                .into_iter()
                .map(|addr| {
                    let l = TcpListener::bind(addr).map_err(|source| LabError::Listen { proto: "tcp", addr, source })?;
                    // Listening again only changes the backlog.
                    // SAFETY: listen on our own socket.
                    unsafe { libc::listen(l.as_raw_fd(), BACKLOG) };
                    l.set_nonblocking(true).map_err(|source| LabError::Listen { proto: "tcp", addr, source })?;
                    Ok(l)
                })
                .collect()
        };
        let (local, remote): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs.into_iter().partition(|a| a.ip().is_loopback());
        let mut listeners = lab.peer().run(|| bind(remote))?;
        listeners.extend(lab.client().run(|| bind(local))?);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lab-accept".into())
            .spawn(move || accept_loop(&listeners, &s))
            .map_err(LabError::Echo)?;
        Ok(Acceptor { stop, thread: Some(thread) })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listeners: &[TcpListener], stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> =
        listeners.iter().map(|l| libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    while !stop.load(Ordering::Relaxed) {
        // 50 ms: how late a stop is noticed.
        // SAFETY: a valid array of pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
        for (l, p) in listeners.iter().zip(&mut fds) {
            if p.revents == 0 {
                continue;
            }
            p.revents = 0;
            // Bounded per wake-up; each accepted connection is closed at once.
            for _ in 0..BACKLOG {
                if l.accept().is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_back() {
        let mut d = Vec::new();
        for r in [1500u32, FAILED, 2500] {
            d.extend_from_slice(&r.to_le_bytes());
        }
        d.extend_from_slice(&4_000_000u64.to_le_bytes());
        let (l, f, w) = parse_loop(&d).unwrap();
        assert_eq!((l, f, w), (vec![1500, 2500], 1, Duration::from_millis(4)));
        assert!(parse_loop(&d[..5]).is_none());
    }

    #[test]
    fn percentiles_and_median_rate() {
        let s = SideData { latencies: (1..=100).map(|i| i * 1000).collect(), rates: vec![3.0, 1.0, 2.0], connects: 100, failures: 0 }
            .finish();
        assert_eq!(s.p50_us, 51.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.connects_per_s, 2.0);
    }

    #[test]
    fn shares_add_up() {
        let mut ids = BTreeMap::new();
        ids.insert((0, 0, None), vec!["192.0.2.1:1".parse().unwrap()]);
        ids.insert((1, 1, None), vec!["192.0.2.1:1".parse().unwrap(), "192.0.2.2:1".parse().unwrap()]);
        let total: usize = ids.values().enumerate().map(|(k, a)| share_of(1000, 3, a.len(), k == 1, &ids)).sum();
        assert_eq!(total, 1000);
    }
}
