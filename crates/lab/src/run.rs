//! `leash test`: every `[[expect]]` of a policy against the real kernel, next to `explain`.
//!
//! Two dimensions need more than one table and one namespace:
//! - **Time.** The kernel matches `when` windows against its real clock. Expectations without `at`
//!   run against the table compiled for now (and `explain` judges them at the local time of the
//!   probe); each distinct `at` gets the table compiled again with `CompileOptions::imitate`,
//!   which shifts the windows so that the kernel, right now, behaves as the policy would at
//!   that local time, and re-applied before its probes.
//! - **Processes.** `service`/`cgroup` rules match the cgroup of the socket's creator. The lab
//!   never uses the host's real cgroups: it mirrors every path the policy names inside a scratch
//!   subtree (`leash-lab-<pid>-<n>/system.slice/nginx.service`), points a copy of the policy at
//!   those directories (path, nft path, id) and probes from processes it moves there.

use crate::cgroup::{self, Scratch};
use crate::error::LabError;
use crate::probe::{Case, Outcome};
use crate::scratch::{Lab, WorkloadSpec};
use policy::{Action, Decider, DenyWith, Policy, Proto};
use ruleset::compile::CompileOptions;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How [`run_expectations`] probes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long one probe may wait for its echo; a dropped TCP connect takes this long.
    pub timeout: Duration,
    /// Probes running at once (at least 1), so that dropped cases wait in parallel.
    pub parallel: usize,
    /// How the lab compiles the policy: `comment` is kept, `now` is the instant the table is
    /// compiled for (`None`: the current time); `imitate` is the lab's own business (it is set
    /// per `at` of the expectations) and ignored here.
    pub compile: CompileOptions,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { timeout: Duration::from_secs(1), parallel: 8, compile: CompileOptions::default() }
    }
}

/// One expectation, probed.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Index into `policy.expects`.
    pub index: usize,
    /// The connection, with the cgroup as the policy names it (the probe ran in its scratch
    /// mirror).
    pub case: Case,
    /// The expectation's `at` (local time in the policy's time zone), when it has one.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::ser::opt_civil")]
    pub at: Option<jiff::civil::DateTime>,
    /// The local time `explain` judged the row at: `at`, or for a policy with time windows the
    /// time of the probe.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::ser::opt_civil")]
    pub local_time: Option<jiff::civil::DateTime>,
    /// For a forwarded expectation: `SOURCE via IIF`, the workload it was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The verdict the `[[expect]]` asks for.
    #[serde(serialize_with = "crate::ser::action")]
    pub expected: Action,
    /// The verdict `policy::explain` gives.
    #[serde(serialize_with = "crate::ser::action")]
    pub explain: Action,
    /// What decided it, e.g. `rule "web"` or `default (deny)`.
    pub decider: String,
    /// What the real connection did.
    pub outcome: Outcome,
    /// `outcome.verdict()`.
    #[serde(serialize_with = "crate::ser::action")]
    pub kernel: Action,
    /// kernel == expected == explain, and a denial looked like `deny_with` says.
    pub pass: bool,
    /// Why the row failed, one sentence each (empty when it passed).
    pub problems: Vec<String>,
    #[serde(rename = "elapsed_ms", serialize_with = "crate::ser::millis")]
    pub elapsed: Duration,
}

/// The result of [`run_expectations`], in the order of the policy's expectations.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The policy's `deny_with`, which denials were checked against.
    #[serde(serialize_with = "crate::ser::deny_with")]
    pub deny_with: DenyWith,
    #[serde(rename = "timeout_ms", serialize_with = "crate::ser::millis")]
    pub timeout: Duration,
    pub rows: Vec<Row>,
    /// Every table the lab applied, in order (one for now, one per distinct `at`), with the `at`
    /// it imitated; for failure messages.
    #[serde(skip)]
    pub tables: Vec<(Option<jiff::civil::DateTime>, ruleset::Table)>,
}

impl Report {
    /// Whether every row passed.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.pass)
    }

    /// Number of failed rows.
    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| !r.pass).count()
    }
}

/// A policy made ready for the lab: its cgroups pointed at a scratch subtree.
#[derive(Debug)]
pub struct Prepared {
    /// The policy with every rule's and expectation's cgroup rewritten to its scratch mirror.
    pub policy: Policy,
    /// The scratch subtree; removed when this is dropped.
    pub scratch: Option<Scratch>,
    /// Why the policy's cgroups could not be mirrored (no cgroup v2, no permission): their rules
    /// then match nothing and cases from a cgroup fail with this reason.
    pub cgroup_problem: Option<String>,
}

/// Mirrors every cgroup path of `policy`'s rules and expectations in a scratch subtree and
/// rewrites a copy of the policy to use the mirrors. A policy without cgroups is returned as is.
pub fn prepare(policy: &Policy) -> Prepared {
    let mut p = policy.clone();
    let named = p.rules.iter().any(|r| r.cond.cgroups.is_some()) || p.expects.iter().any(|e| e.cgroup.is_some());
    if !named {
        return Prepared { policy: p, scratch: None, cgroup_problem: None };
    }
    let mirrored = cgroup::mount_point()
        .ok_or_else(|| "cgroup v2 is not mounted here, so no probe can come from a cgroup".to_string())
        .and_then(|mount| Scratch::new(&mount).map_err(|e| format!("cannot make a scratch cgroup: {e}")))
        .and_then(|mut scratch| {
            for r in &mut p.rules {
                for c in r.cond.cgroups.iter_mut().flatten() {
                    let m = scratch.mirror(&c.path).map_err(|e| e.to_string())?;
                    c.path = m.path;
                    c.nft_path = m.nft_path;
                    c.id = Some(m.id);
                }
            }
            for e in &mut p.expects {
                if let Some(c) = &mut e.cgroup {
                    *c = scratch.mirror(c).map_err(|e| e.to_string())?.path;
                }
            }
            Ok(scratch)
        });
    match mirrored {
        Ok(scratch) => Prepared { policy: p, scratch: Some(scratch), cgroup_problem: None },
        Err(why) => {
            // Never point the kernel at the host's real cgroups: the rules match nothing (as
            // `explain` sees it too, a cgroup without id matches no process).
            let mut p = policy.clone();
            for r in &mut p.rules {
                for c in r.cond.cgroups.iter_mut().flatten() {
                    c.id = None;
                }
            }
            Prepared { policy: p, scratch: None, cgroup_problem: Some(why) }
        }
    }
}

/// Whether any rule has time windows (only then does the time of a connection matter).
fn has_windows(policy: &Policy) -> bool {
    policy.rules.iter().any(|r| r.cond.when.is_some())
}

/// The case of an expectation.
fn case_of(e: &policy::Expect) -> Case {
    Case { proto: e.proto, dst: e.to, port: e.port, uid: e.uid, gid: e.gid, name: e.name.clone(), cgroup: e.cgroup.clone() }
}

/// Where a forwarded expectation comes from: its source and the interface it enters on.
type Source = Option<(IpAddr, String)>;

fn source_of(e: &policy::Expect) -> Source {
    e.from.map(|src| (src, e.iif.clone().unwrap_or_else(|| "wl0".into())))
}

/// Runs every `[[expect]]` of `policy` against the real kernel: builds a [`Lab`] for the
/// expectations' destinations and ports, compiles and applies the policy in its client namespace
/// (again for each distinct `at`), probes each case as its user (from its scratch cgroup), and
/// compares kernel, expectation and `policy::explain`. Needs root; touches nothing outside the
/// lab's namespaces and its scratch cgroups, which are removed before it returns.
pub fn run_expectations(policy: &Policy, opts: &RunOptions) -> Result<Report, LabError> {
    let prepared = prepare(policy);
    let p = &prepared.policy;
    let probe_cases: Vec<Case> = p.expects.iter().map(case_of).collect();
    let sources: Vec<Source> = p.expects.iter().map(source_of).collect();
    let report_cases: Vec<Case> = policy.expects.iter().map(case_of).collect();
    let lab = lab_for(p, &probe_cases, &sources)?;

    let windows = has_windows(p);
    // Groups of expectations by `at`, the ones without first. Without windows the time changes
    // nothing, so one table does for all.
    let mut groups: BTreeMap<Option<jiff::civil::DateTime>, Vec<usize>> = BTreeMap::new();
    for (i, e) in p.expects.iter().enumerate() {
        groups.entry(if windows { e.at } else { None }).or_default().push(i);
    }
    let n = probe_cases.len();
    let mut outcomes: Vec<(Outcome, Duration)> = vec![(Outcome::Error("not probed".into()), Duration::ZERO); n];
    let mut local_times: Vec<Option<jiff::civil::DateTime>> = vec![None; n];
    let mut tables = Vec::new();
    for (at, members) in groups {
        let now = jiff::Timestamp::now();
        let copts = CompileOptions {
            comment: opts.compile.comment.clone(),
            now: Some(opts.compile.now.unwrap_or(now)),
            imitate: at.map(|a| (now, a)),
            kernel_minutes_west: opts.compile.kernel_minutes_west,
        };
        let table = ruleset::compile(p, &copts);
        lab.client().run(|| kernel::apply(&table, &Default::default())).map_err(|e| LabError::Apply(e.to_string()))?;
        let cases: Vec<Case> = members.iter().map(|&i| probe_cases[i].clone()).collect();
        let case_sources: Vec<Source> = members.iter().map(|&i| sources[i].clone()).collect();
        let refused = lab
            .client()
            .run(|| play_forwarder(p, &cases))
            .map_err(|e| LabError::Apply(format!("cannot fill the domain sets: {e}")))?;
        // The time explain judges the group at: the `at` the table imitates, or (with windows)
        // the local time right before the probes.
        let judged_at = at.or_else(|| windows.then(|| p.local_time(jiff::Timestamp::now())));
        let mut results = probe_all(&lab, &cases, &case_sources, opts, prepared.cgroup_problem.as_deref());
        for (k, r) in refused.iter().enumerate() {
            if *r {
                results[k] = (Outcome::NameRefused, Duration::ZERO);
            }
        }
        for (&i, r) in members.iter().zip(results) {
            outcomes[i] = r;
            local_times[i] = judged_at;
        }
        tables.push((at, table));
    }
    drop(lab);
    let deny_with = p.defaults.deny_with;
    let rows = p
        .expects
        .iter()
        .zip(report_cases)
        .zip(outcomes.into_iter().zip(local_times))
        .enumerate()
        .map(|(index, ((e, case), ((outcome, elapsed), local_time)))| {
            let mut conn = e.connection();
            conn.at = local_time;
            // A forwarded probe leaves the client on its uplink to the peer.
            if let Some(f) = &mut conn.from {
                f.oif = Some(Lab::uplink().to_string());
            }
            let from = conn.from.as_ref().map(|f| format!("{} via {}", f.src, f.iif.as_deref().unwrap_or("?")));
            let ex = policy::explain(p, &conn);
            let decider = describe_decider(p, ex.decider);
            let kernel = outcome.verdict();
            let mut problems = judge(e.verdict, ex.verdict, &decider, &outcome, deny_with);
            // explain has no state: a limited rule allows in explain, while the kernel's limiter
            // may already be spent by earlier probes of the same test.
            if let Decider::Rule(i) = ex.decider
                && let Some(r) = p.rules.get(i)
                && (r.limits.rate.is_some() || r.limits.max_connections.is_some())
                && ex.verdict == Action::Allow
                && kernel == Action::Deny
            {
                problems.push(format!(
                    "rule {:?} has rate or max_connections limits, which explain does not model; the lab's other probes through it count against them",
                    r.name
                ));
            }
            Row {
                index,
                case,
                at: e.at,
                local_time,
                from,
                expected: e.verdict,
                explain: ex.verdict,
                decider,
                kernel,
                pass: problems.is_empty(),
                problems,
                outcome,
                elapsed,
            }
        })
        .collect();
    // The scratch cgroups go only now: every probe process has been reaped.
    drop(prepared);
    Ok(Report { deny_with, timeout: opts.timeout, rows, tables })
}

/// A lab whose peer owns every destination of `cases` and echoes on their ports (and on the
/// forwarder's loopback port when DNS is redirected), with one workload namespace per interface
/// the forwarded cases (`sources`, parallel to `cases`) enter on, owning their source addresses.
fn lab_for(policy: &Policy, cases: &[Case], sources: &[Source]) -> Result<Lab, LabError> {
    let mut workloads: Vec<WorkloadSpec> = Vec::new();
    for (src, iif) in sources.iter().flatten() {
        match workloads.iter_mut().find(|w| &w.iif == iif) {
            Some(w) if !w.sources.contains(src) => w.sources.push(*src),
            Some(_) => {}
            None => workloads.push(WorkloadSpec { iif: iif.clone(), sources: vec![*src] }),
        }
    }
    let mut dsts: BTreeSet<IpAddr> = cases.iter().map(|c| c.dst).collect();
    let ports = |proto: Proto| -> BTreeSet<u16> {
        cases.iter().filter(|c| c.proto == proto).filter_map(|c| c.port).collect()
    };
    let (mut tcp, mut udp) = (ports(Proto::Tcp), ports(Proto::Udp));
    // DNS redirected to the forwarder lands on the client's loopback: echo there, so a probe
    // shows the redirect really happened.
    for (lo, v6) in [(IpAddr::from([127, 0, 0, 1]), false), (IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), true)] {
        if let Some(port) = redirect_port(policy, v6)
            && cases.iter().any(|c| c.port == Some(policy::DNS_PORT) && c.dst.is_ipv6() == v6)
        {
            dsts.insert(lo);
            tcp.insert(port);
            udp.insert(port);
        }
    }
    let dsts: Vec<IpAddr> = dsts.into_iter().collect();
    Lab::with_workloads(&dsts, &tcp.into_iter().collect::<Vec<_>>(), &udp.into_iter().collect::<Vec<_>>(), &workloads)
}

/// The loopback port DNS is redirected to for a family, when the policy redirects it.
fn redirect_port(policy: &Policy, v6: bool) -> Option<u16> {
    (policy.has_domain_rules() && policy.dns.bypass == policy::Bypass::Redirect)
        .then(|| policy.dns.redirect_port(v6))
        .flatten()
}

/// How long the lab's stand-in answers live in the domain sets: longer than any probe run.
const LAB_ELEMENT_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// Does what the forwarder would do for each named case: puts its address into the sets of the
/// domain rules its name feeds (as `policy::dns` decides, rebinding guard included). Returns,
/// per case, whether the forwarder would refuse the name (then the case is not probed).
/// Runs in the client namespace.
pub fn play_forwarder(policy: &Policy, cases: &[Case]) -> Result<Vec<bool>, kernel::nft::Error> {
    let mut refused = vec![false; cases.len()];
    let mut names: Vec<(String, IpAddr, &str)> = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let Some(name) = &c.name else { continue };
        let d = policy::dns::decide_name(policy, name);
        if d.refuse.is_some() {
            refused[i] = true;
            continue;
        }
        for r in d.rules {
            let rule = &policy.rules[r];
            if policy::dns::admits(rule, c.dst, false) {
                let family = if c.dst.is_ipv6() { ruleset::Family::Ipv6 } else { ruleset::Family::Ipv4 };
                names.push((ruleset::domain_set_name(&rule.name, family), c.dst, name.as_str()));
            }
        }
    }
    if !names.is_empty() {
        let elems: Vec<kernel::nft::TimedElement> = names
            .iter()
            .map(|(set, addr, name)| kernel::nft::TimedElement {
                set,
                addr: *addr,
                timeout_ms: LAB_ELEMENT_TIMEOUT_MS,
                name: Some(name),
            })
            .collect();
        kernel::nft::SetWriter::open()?.add_timed(ruleset::TABLE_NAME, &elems)?;
    }
    Ok(refused)
}

/// Probes every case, `opts.parallel` at a time, keeping the input order. Cases from a cgroup
/// fail with `cgroup_problem` when the policy's cgroups could not be mirrored.
fn probe_all(
    lab: &Lab,
    cases: &[Case],
    sources: &[Source],
    opts: &RunOptions,
    cgroup_problem: Option<&str>,
) -> Vec<(Outcome, Duration)> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<(Outcome, Duration)>>> = Mutex::new(vec![None; cases.len()]);
    let workers = opts.parallel.clamp(1, cases.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let start = Instant::now();
                    let outcome = match (&case.cgroup, cgroup_problem, sources.get(i).cloned().flatten()) {
                        (_, _, Some((src, _))) => lab.probe_from(case, src, opts.timeout),
                        (Some(cg), Some(why), None) => Outcome::Error(format!("cannot probe from cgroup /{cg}: {why}")),
                        _ => lab.probe(case, opts.timeout),
                    };
                    let r = (outcome, start.elapsed());
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or((Outcome::Error("not probed".into()), Duration::ZERO)))
        .collect()
}

/// `rule "web"`, `loopback (allow_loopback)` or `default (deny)`.
pub(crate) fn describe_decider(policy: &Policy, d: Decider) -> String {
    match d {
        Decider::Loopback => "loopback (allow_loopback)".into(),
        Decider::Rule(i) => match policy.rules.get(i) {
            Some(r) => format!("rule {:?}", r.name),
            None => format!("rule #{i}"),
        },
        Decider::Default => format!("default ({})", policy.defaults.outbound.as_str()),
        Decider::DnsBypass => "DNS bypass control (only the forwarder may query resolvers)".into(),
        Decider::DnsRedirect => "DNS redirect to the forwarder".into(),
        Decider::NotGoverned => "not governed (forwarded, not from a workload: left to the other tables)".into(),
        Decider::BetweenWorkloads => "between workloads (left to the other tables)".into(),
        Decider::NameRefused(i) => match policy.rules.get(i) {
            Some(r) => format!("name refused by rule {:?} (NXDOMAIN)", r.name),
            None => format!("name refused by rule #{i}"),
        },
    }
}

/// Why a row fails (empty: it passes).
fn judge(expected: Action, explain: Action, decider: &str, outcome: &Outcome, deny_with: DenyWith) -> Vec<String> {
    let mut problems = Vec::new();
    if let Outcome::Error(e) = outcome {
        problems.push(format!("the probe failed: {e}"));
    }
    if explain != expected {
        problems.push(format!("expected {}, but explain says {} ({decider})", expected.as_str(), explain.as_str()));
    }
    let kernel = outcome.verdict();
    if kernel != expected && !matches!(outcome, Outcome::Error(_)) {
        problems.push(format!("expected {}, but the kernel's answer was {}", expected.as_str(), outcome.describe()));
    }
    if kernel == Action::Deny && !denial_matches(outcome, deny_with) && !matches!(outcome, Outcome::Error(_)) {
        let want = match deny_with {
            DenyWith::Reject => "deny_with = \"reject\" should fail fast (refused or unreachable)",
            DenyWith::Drop => "deny_with = \"drop\" should time out or fail with EPERM",
        };
        problems.push(format!("denied, but {}: {want}", outcome.describe()));
    }
    problems
}

/// Whether a denial looks like the configured `deny_with`.
pub(crate) fn denial_matches(outcome: &Outcome, deny_with: DenyWith) -> bool {
    match deny_with {
        DenyWith::Reject => matches!(outcome, Outcome::Refused | Outcome::Unreachable(_) | Outcome::NameRefused),
        DenyWith::Drop => matches!(outcome, Outcome::TimedOut | Outcome::NotPermitted | Outcome::NameRefused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_passes_only_when_all_three_agree_and_the_denial_fits() {
        use Action::*;
        assert!(judge(Allow, Allow, "d", &Outcome::Connected, DenyWith::Reject).is_empty());
        assert!(judge(Deny, Deny, "d", &Outcome::Refused, DenyWith::Reject).is_empty());
        assert!(judge(Deny, Deny, "d", &Outcome::NotPermitted, DenyWith::Drop).is_empty());
        // Denied, but the wrong way.
        let p = judge(Deny, Deny, "d", &Outcome::TimedOut, DenyWith::Reject);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("fail fast"));
        // The kernel disagrees.
        let p = judge(Allow, Allow, "d", &Outcome::Refused, DenyWith::Reject);
        assert_eq!(p, vec!["expected allow, but the kernel's answer was refused (ECONNREFUSED)".to_string()]);
        // explain disagrees.
        let p = judge(Allow, Deny, "default (deny)", &Outcome::Connected, DenyWith::Reject);
        assert_eq!(p, vec!["expected allow, but explain says deny (default (deny))".to_string()]);
        // A probe error is never a pass, and is reported once.
        let p = judge(Deny, Deny, "d", &Outcome::Error("boom".into()), DenyWith::Reject);
        assert_eq!(p, vec!["the probe failed: boom".to_string()]);
    }
}
