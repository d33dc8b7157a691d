//! `leash test`: every `[[expect]]` of a policy against the real kernel, next to `explain`.

use crate::{Case, Lab, LabError, Outcome};
use policy::{Action, Decider, DenyWith, Policy, Proto};
use serde::Serialize;
use std::collections::BTreeSet;
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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { timeout: Duration::from_secs(1), parallel: 8 }
    }
}

/// One expectation, probed.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Index into `policy.expects`.
    pub index: usize,
    pub case: Case,
    /// The verdict the `[[expect]]` asks for.
    #[serde(serialize_with = "crate::ser::action")]
    pub expected: Action,
    /// The verdict `policy::explain` gives.
    #[serde(serialize_with = "crate::ser::action")]
    pub explain: Action,
    /// What decided it, e.g. `rule "dns"` or `default (deny)`.
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

/// Runs every `[[expect]]` of `policy` against the real kernel: builds a [`Lab`] for the
/// expectations' destinations and ports, applies `table` (the policy compiled) in its client
/// namespace, probes each case as its user, and compares kernel, expectation and
/// `policy::explain`. Needs root; touches nothing outside the lab's namespaces.
pub fn run_expectations(policy: &Policy, table: &ruleset::Table, opts: &RunOptions) -> Result<Report, LabError> {
    let cases: Vec<Case> = policy
        .expects
        .iter()
        .map(|e| Case { proto: e.proto, dst: e.to, port: e.port, uid: e.uid, gid: e.gid, name: e.name.clone() })
        .collect();
    let mut dsts: BTreeSet<IpAddr> = cases.iter().map(|c| c.dst).collect();
    let ports = |proto: Proto| -> BTreeSet<u16> {
        cases.iter().filter(|c| c.proto == proto).filter_map(|c| c.port).collect()
    };
    let (mut tcp, mut udp) = (ports(Proto::Tcp), ports(Proto::Udp));
    // DNS redirected to the forwarder lands on the client's loopback: echo there, so a probe
    // shows the redirect really happened.
    for (lo, v6) in [(IpAddr::from([127, 0, 0, 1]), false), (IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), true)] {
        if let Some(port) = redirect_port(policy, v6)
            && cases.iter().any(|c| c.port == Some(policy::dns::DNS_PORT) && c.dst.is_ipv6() == v6)
        {
            dsts.insert(lo);
            tcp.insert(port);
            udp.insert(port);
        }
    }
    let dsts: Vec<IpAddr> = dsts.into_iter().collect();
    let lab = Lab::new(&dsts, &tcp.into_iter().collect::<Vec<_>>(), &udp.into_iter().collect::<Vec<_>>())?;
    lab.client().run(|| kernel::apply(table, &Default::default())).map_err(|e| LabError::Apply(e.to_string()))?;
    let refused = lab
        .client()
        .run(|| play_forwarder(policy, &cases))
        .map_err(|e| LabError::Apply(format!("cannot fill the domain sets: {e}")))?;

    let mut outcomes = probe_all(&lab, &cases, opts);
    for (i, r) in refused.iter().enumerate() {
        if *r {
            outcomes[i] = (Outcome::NameRefused, Duration::ZERO);
        }
    }
    let deny_with = policy.defaults.deny_with;
    let rows = policy
        .expects
        .iter()
        .zip(cases)
        .zip(outcomes)
        .enumerate()
        .map(|(index, ((e, case), (outcome, elapsed)))| {
            let ex = policy::explain(policy, &e.connection());
            let decider = describe_decider(policy, ex.decider);
            let kernel = outcome.verdict();
            let problems = judge(e.verdict, ex.verdict, &decider, &outcome, deny_with);
            Row {
                index,
                case,
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
    Ok(Report { deny_with, timeout: opts.timeout, rows })
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
    let mut names: Vec<(String, IpAddr)> = Vec::new();
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
                names.push((ruleset::domain_set_name(&rule.name, family), c.dst));
            }
        }
    }
    if !names.is_empty() {
        let elems: Vec<kernel::nft::TimedElement> = names
            .iter()
            .map(|(set, addr)| kernel::nft::TimedElement { set, addr: *addr, timeout_ms: LAB_ELEMENT_TIMEOUT_MS })
            .collect();
        kernel::nft::SetWriter::open()?.add_timed(ruleset::TABLE_NAME, &elems)?;
    }
    Ok(refused)
}

/// Probes every case, `opts.parallel` at a time, keeping the input order.
fn probe_all(lab: &Lab, cases: &[Case], opts: &RunOptions) -> Vec<(Outcome, Duration)> {
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
                    let outcome = lab.probe(case, opts.timeout);
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
