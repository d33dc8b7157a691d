//! `leash apply`: compile a policy and replace table inet leash with it in one atomic transaction;
//! carry the forwarder's answers over from the table it replaces, and warm the domain sets up;
//! then report the live connections the new policy denies, and end them with `--cut` (see
//! `crate::flows`).

use crate::args::FaultArgs;
use crate::exit::{EXIT_OK, EXIT_POLICY, EXIT_SYSTEM, require_root};
use crate::load;
use crate::output;
use crate::state::State;
use anyhow::{Context, Result};
use kernel::{Firewall, TimedElement};
use policy::{OnApply, Policy};
use ruleset::SetElements;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Live connections: a policy decides new connections; one that is up already keeps running through
the established rule, however the policy changed. After the commit, apply lists the live
connections the new policy denies (outgoing sockets, unconnected UDP flows seen in conntrack,
flows forwarded from containers and VMs, judged with the interfaces routing says they pass).
With --cut, or [defaults] on_apply = \"cut\", it then ends them: their sockets are destroyed (the
program's next call fails with ECONNABORTED, a TCP peer gets a reset) and their conntrack entries
deleted, so their next packet meets the new rules (a forwarded flow has no socket here: its
entry is deleted, and the workload's next packet meets the forward chain). The default is to report only: an apply often
runs over a connection the new policy may not admit, and a cut is not undone by applying the old
policy again. A kernel without CONFIG_INET_DIAG_DESTROY cannot destroy sockets: then only the
entries are deleted, which stops a flow at this host's next packet but not when its peer sends
first (apply says so).

Examples:
  sudo leash apply policy.toml            # apply, verify, list what the new policy would cut
  sudo leash apply --cut policy.toml      # ... and end those connections";

/// Arguments of `leash apply`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    pub policy: PathBuf,
    /// End the live connections the new policy denies once it is committed and verified
    /// (destroy their sockets, delete their conntrack entries), whatever `on_apply` says.
    #[arg(long, conflicts_with = "no_cut")]
    pub cut: bool,
    /// Only list the live connections the new policy denies, whatever `on_apply` says.
    #[arg(long)]
    pub no_cut: bool,
    /// Testing aid: cut without destroying sockets, as on a kernel built without
    /// CONFIG_INET_DIAG_DESTROY.
    #[arg(long, hide = true)]
    pub fault_no_sock_destroy: bool,
    #[command(flatten)]
    pub fault: FaultArgs,
}

pub fn run(a: &Args, json: bool, fw: &dyn Firewall, state: &State) -> Result<u8> {
    let Some((l, p)) = load::load_valid(&a.policy)? else { return Ok(EXIT_POLICY) };
    require_root("apply")?;
    let mut table = ruleset::compile(&p, &l.compile_options());
    let carried = carry_over_domain_sets(&p, &mut table, fw, &crate::system::own_addresses())?;
    let elements: usize = table.sets.iter().map(|s| s.elements.len()).sum();
    if elements >= 50_000 && !json {
        // Large sets take a few seconds; say what is happening.
        eprintln!("leash: applying {elements} set elements in one transaction...");
    }
    let report = match fw.apply(&table, &kernel::ApplyOptions { fault_inject: a.fault.fault_inject }) {
        Ok(r) => r,
        Err(e) => return Err(apply_failure(&l.display_name(), e)),
    };
    // Sizes of sets too large to count back, for `leash status` (see state).
    state.record_apply(&table, report.table_handle);
    let kernel_rules: usize = table.chains.iter().map(|c| c.rules.len()).sum();
    // Domain sets start empty: resolve the exact names once so the policy works before the
    // first lookup through the forwarder. A failure here is reported, not fatal: the table is
    // in place and the forwarder fills the sets as names are looked up.
    let warm = if p.has_domain_rules() {
        if !json {
            eprintln!("leash: resolving the policy's domain names to warm up its sets...");
        }
        Some(warm_up(&p, &carried_elements(&table), fw, report.table_handle).unwrap_or_else(|e| WarmUp {
            failures: vec![format!("{e:#}")],
            ..Default::default()
        }))
    } else {
        None
    };
    if !json && let Some(w) = &warm {
        for f in &w.failures {
            eprintln!("leash: warning: warm-up: {f}");
        }
    }
    // The live connections the new policy denies, listed now that it is committed, verified and
    // warmed up (its domain sets decide too): one opened before the commit is in the list, one
    // opened since met the new rules. Only now may they be cut.
    let mode = if a.cut {
        OnApply::Cut
    } else if a.no_cut {
        OnApply::Report
    } else {
        p.defaults.on_apply
    };
    let live = crate::flows::survey(&p);
    let cut = match (&live, mode) {
        (Ok(l), OnApply::Cut) => Some(crate::flows::cut(l, !a.fault_no_sock_destroy)),
        _ => None,
    };
    let cut_failed = mode == OnApply::Cut && (live.is_err() || cut.as_ref().is_some_and(|c| !c.errors.is_empty()));
    // Time windows are compiled per daylight-saving period of the coming 400 days; say how far
    // that reaches, since the last period's offset stays past it until the next apply.
    let windows = p.rules.iter().any(|r| r.cond.when.is_some()).then(|| {
        let now = jiff::Timestamp::now();
        let periods = policy::time::periods(&p.time_zone(), now);
        let exact_until = now + jiff::SignedDuration::from_hours(24 * policy::time::HORIZON_DAYS);
        (periods.len(), exact_until, p.defaults.timezone.clone().unwrap_or_else(|| "UTC".into()))
    });
    if json {
        output::print_json(&serde_json::json!({
            "applied": l.display_name(),
            "sha256": l.sha256,
            "time_windows": windows.as_ref().map(|(n, until, tz)| serde_json::json!({
                "time_zone": tz, "offset_periods": n, "exact_until": until.to_string(),
            })),
            "policy_rules": p.rules.len(),
            "kernel_rules": kernel_rules,
            "sets": table.sets.len(),
            "elements": elements,
            "report": report_json(&report),
            "warm_up": warm,
            "carried_over": carried.kept,
            "carry_over": {
                "kept": carried.kept,
                "not_admitted": carried.not_admitted,
                "unnamed": carried.unnamed,
                "capped": carried.capped,
            },
            "live_connections": match &live {
                Ok(l) => crate::flows::apply_json(l, mode, cut.as_ref()),
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            },
        }));
    } else {
        println!(
            "applied {} (sha256 {}): {} policy rules -> {} kernel rules, {} sets, {} elements; {}; verified",
            l.display_name(),
            &l.sha256[..16],
            p.rules.len(),
            kernel_rules,
            table.sets.len(),
            elements,
            report_text(&report),
        );
        if carried.kept > 0 {
            println!(
                "kept {} domain answers from the previous table, with their time left{}",
                carried.kept,
                if carried.capped > 0 { format!(" ({} cut to max_ttl + grace)", carried.capped) } else { String::new() }
            );
        }
        if carried.not_admitted + carried.unnamed > 0 {
            println!(
                "left behind {} domain answers the new policy does not admit{}",
                carried.not_admitted + carried.unnamed,
                if carried.unnamed > 0 { format!(" ({} without a recorded name)", carried.unnamed) } else { String::new() }
            );
        }
        if let Some((n, until, tz)) = &windows {
            println!(
                "time windows: {tz}, {n} offset period(s) compiled; exact until {} (apply again before then)",
                until.strftime("%Y-%m-%d")
            );
        }
        if let Some(w) = &warm {
            println!(
                "warm-up: {} of {} exact domain names resolved, {} set elements added{}",
                w.resolved,
                w.names,
                w.elements,
                if w.guarded > 0 { format!(", {} private answers kept out", w.guarded) } else { String::new() }
            );
        }
        match &live {
            Ok(l) => {
                for line in crate::flows::apply_text(l, cut.as_ref(), &p) {
                    match line.split_once(": ") {
                        Some(("warning" | "error", _)) => eprintln!("leash: {line}"),
                        _ => println!("{line}"),
                    }
                }
            }
            Err(e) => eprintln!("leash: warning: cannot list the live connections the new policy denies: {e:#}"),
        }
    }
    if cut_failed {
        eprintln!(
            "leash: error: {} is applied, but not every live connection it denies could be cut (see above)",
            l.display_name()
        );
        return Ok(EXIT_SYSTEM);
    }
    Ok(EXIT_OK)
}

/// The error an apply failure is reported as. "Nothing changed" only when the kernel refused the
/// batch (or it was never sent): once the kernel committed, the new table is in place, and saying
/// otherwise would send an administrator after the wrong problem (issue 12, item 8).
fn apply_failure(name: &str, e: kernel::Error) -> anyhow::Error {
    if e.changed_nothing() {
        anyhow::Error::new(e)
            .context(format!("applying {name} failed; the kernel discarded the whole transaction, nothing changed"))
    } else if matches!(e, kernel::Error::Uncertain(_)) {
        anyhow::Error::new(e).context(format!(
            "applying {name}: the batch was sent but whether the kernel committed it is not known; \
             run `leash status` to see which policy is active"
        ))
    } else {
        anyhow::Error::new(e).context(format!(
            "{name} was applied (the kernel committed the new table and it is active), but checking it afterwards \
             failed; run `leash status`, or apply again"
        ))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report_text(r: &kernel::ApplyReport) -> String {
    format!(
        "{} messages, {} bytes in one transaction, kernel {:.1} ms, read-back {:.1} ms",
        r.messages,
        r.bytes,
        ms(r.send_and_ack),
        ms(r.verify)
    )
}

fn report_json(r: &kernel::ApplyReport) -> serde_json::Value {
    serde_json::json!({
        "messages": r.messages,
        "bytes": r.bytes,
        "elements": r.elements,
        "kernel_ms": ms(r.send_and_ack),
        "verify_ms": ms(r.verify),
    })
}

/// The elements carried into `table`'s timeout sets, with their time left in milliseconds.
fn carried_elements(table: &ruleset::Table) -> HashMap<(String, IpAddr), u64> {
    let mut out = HashMap::new();
    for set in table.sets.iter().filter(|s| s.timeout) {
        let elems: Vec<(IpAddr, u64)> = match &set.elements {
            SetElements::TimedV4(v) => v.iter().map(|e| (IpAddr::V4(e.addr), e.timeout_ms)).collect(),
            SetElements::TimedV6(v) => v.iter().map(|e| (IpAddr::V6(e.addr), e.timeout_ms)).collect(),
            _ => continue,
        };
        for (a, t) in elems {
            out.insert((set.name.clone(), a), t);
        }
    }
    out
}

/// Shortest time left for which an answer is carried into the new table; anything shorter would
/// expire before anyone could use it.
const CARRY_OVER_MIN_MS: u64 = 1000;

/// What carrying the forwarder's answers over into the new table did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Carried {
    /// Answers put into the new table.
    kept: usize,
    /// Answers whose name the new policy no longer feeds into that set (a removed or narrowed
    /// domain, a name now refused), or whose address its rebinding guard refuses.
    not_admitted: usize,
    /// Answers without a name (put there by hand, or by a leash that did not record names):
    /// nothing says the new policy admits them, so they stay behind (fail closed).
    unnamed: usize,
    /// Kept answers whose time left was cut to the new policy's `max_ttl + grace`.
    capped: usize,
}

/// Copies the forwarder's answers from the domain sets of the active table into the same-named
/// timeout sets of `table`, so that re-applying a policy does not cut off applications that
/// cached a DNS answer: the replaced table's sets would start empty.
///
/// An answer is carried only as far as the NEW policy would have put it there itself: its name
/// (the element's comment) must still feed this set's rule (`policy::dns::decide_name`), the
/// rebinding guard must admit its address (`own` holds the host's addresses), and its time left
/// is cut to what the new policy would give a fresh answer at most (`max_ttl + grace`). Anything
/// else stays behind, and answers without a name stay behind too: the table replaced may have
/// held a wildcard the new policy removed, and its answers must not outlive it.
fn carry_over_domain_sets(p: &Policy, table: &mut ruleset::Table, fw: &dyn Firewall, own: &[IpAddr]) -> Result<Carried> {
    let mut carried = Carried::default();
    // The longest a fresh answer lives in the new policy's sets.
    let cap_ms = p.dns.element_timeout_ms(p.dns.max_ttl);
    for set in table.sets.iter_mut().filter(|s| s.timeout && s.dynamic.is_none()) {
        // The rule the set belongs to in the new policy.
        let Some(rule) = p.rules.iter().position(|r| {
            [ruleset::Family::Ipv4, ruleset::Family::Ipv6].iter().any(|&f| ruleset::domain_set_name(&r.name, f) == set.name)
        }) else {
            continue;
        };
        let Some(old) = fw
            .timed_elements(&set.name)
            .with_context(|| format!("cannot read the answers in set {} of the active table", set.name))?
        else {
            continue;
        };
        let mut kept: Vec<(IpAddr, u64, String)> = Vec::new();
        for e in old.into_iter().filter(|e| e.left_ms >= CARRY_OVER_MIN_MS) {
            let Some(name) = e.name.as_deref() else {
                carried.unnamed += 1;
                continue;
            };
            let feeds = policy::dns::decide_name(p, name).rules.contains(&rule);
            if !feeds || !policy::dns::admits(&p.rules[rule], e.addr, policy::dns::is_own_address(e.addr, own)) {
                carried.not_admitted += 1;
                continue;
            }
            let left = e.left_ms.min(cap_ms);
            carried.capped += usize::from(left < e.left_ms);
            kept.push((e.addr, left, name.to_string()));
        }
        // The new set may be smaller ([dns] set_size): keep the answers with the most time left.
        if let Some(size) = set.size.map(|n| n as usize)
            && kept.len() > size
        {
            kept.sort_by_key(|&(_, left, _)| std::cmp::Reverse(left));
            kept.truncate(size);
        }
        for (addr, left, name) in kept {
            match (&mut set.elements, addr) {
                (SetElements::TimedV4(v), IpAddr::V4(a)) => v.push(ruleset::TimedAddr::new(a, left, Some(name))),
                (SetElements::TimedV6(v), IpAddr::V6(a)) => v.push(ruleset::TimedAddr::new(a, left, Some(name))),
                _ => continue,
            }
            carried.kept += 1;
        }
    }
    Ok(carried)
}

/// What one name resolved to: addresses with their TTLs.
type Answers = io::Result<Vec<(IpAddr, u32)>>;

/// What the apply-time warm-up did.
#[derive(Debug, Default, serde::Serialize)]
pub struct WarmUp {
    /// Exact names asked.
    pub names: usize,
    /// Names that resolved.
    pub resolved: usize,
    /// Elements put into sets.
    pub elements: usize,
    /// Addresses the rebinding guard kept out.
    pub guarded: usize,
    /// Names that failed, with why.
    pub failures: Vec<String>,
}

/// Resolves every exact domain name of the policy once through its upstreams and puts the
/// answers into the rules' sets, so that a freshly applied policy works before the first
/// lookup through the forwarder. Wildcards cannot be resolved in advance. Runs after the apply,
/// when the new table (with its rule letting the forwarder's queries out) is in place.
///
/// `carried` holds the answers apply carried over from the previous table (set, address → ms
/// left): the kernel takes a re-added element's timeout as is, so the warm-up never sends one
/// shorter than that, nor two for one element.
///
/// The queries go out as the forwarder's: its mark, and sockets owned by its user (the ruleset
/// lets DNS out to the upstreams from nothing else). The answers go into the table this apply
/// made (`table_handle`) only: when another apply replaced it in the meantime, nothing is added.
fn warm_up(p: &Policy, carried: &HashMap<(String, IpAddr), u64>, fw: &dyn Firewall, table_handle: u64) -> Result<WarmUp> {
    let mut w = WarmUp::default();
    let Some(owner) = p.dns.user.uid else {
        anyhow::bail!(
            "the forwarder's user `{}` does not exist, so the table lets no forwarder query out: nothing to warm up",
            p.dns.user.written
        );
    };
    let mut names: Vec<&str> = p.rules.iter().flat_map(|r| &r.cond.domains).filter(|d| !d.wildcard).map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    w.names = names.len();
    if names.is_empty() {
        return Ok(w);
    }
    let own = crate::system::own_addresses();
    let timeout = Duration::from_millis(u64::from(p.dns.timeout_ms));
    // All names at once, spread over a few threads, so a dead upstream costs a few timeouts
    // (per name and record type within a thread), not one per name of the whole policy.
    const THREADS: usize = 16;
    let chunk = names.len().div_ceil(THREADS);
    let answers: Vec<(&str, Answers)> = std::thread::scope(|s| {
        let workers: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&n| (n, dns::resolve_once(&p.dns.upstreams, p.dns.mark, Some(owner), n, timeout)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    let mut elems: Vec<(String, IpAddr, u64, &str)> = Vec::new();
    for (name, result) in answers {
        let answers = match result {
            Ok(a) => a,
            Err(e) => {
                w.failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        if !answers.is_empty() {
            w.resolved += 1;
        }
        let d = policy::dns::decide_name(p, name);
        for &(addr, ttl) in &answers {
            for &r in &d.rules {
                let rule = &p.rules[r];
                if !policy::dns::admits(rule, addr, policy::dns::is_own_address(addr, &own)) {
                    w.guarded += 1;
                    continue;
                }
                let family = if addr.is_ipv6() { ruleset::Family::Ipv6 } else { ruleset::Family::Ipv4 };
                elems.push((ruleset::domain_set_name(&rule.name, family), addr, p.dns.element_timeout_ms(ttl), name));
            }
        }
    }
    // One element per (set, address), with the longest of its timeouts and of what was carried.
    let mut longest: HashMap<(String, IpAddr), (u64, &str)> = HashMap::new();
    for (set, addr, t, name) in elems {
        let carried = carried.get(&(set.clone(), addr)).copied().unwrap_or(0);
        let e = longest.entry((set, addr)).or_insert((0, name));
        e.0 = e.0.max(t).max(carried);
    }
    if !longest.is_empty() {
        let batch: Vec<TimedElement> = longest
            .iter()
            .map(|((set, addr), (t, name))| TimedElement { set, addr: *addr, timeout_ms: *t, name: Some(name) })
            .collect();
        fw.add_timed(table_handle, &batch).context("cannot put the warm-up answers into the domain sets")?;
        w.elements = batch.len();
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Call, FakeFirewall};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn policy(text: &str) -> Policy {
        let (p, diags) = policy::load(text, &policy::StaticResolver::default());
        p.unwrap_or_else(|| panic!("{diags:?}"))
    }

    fn compiled(p: &Policy) -> ruleset::Table {
        ruleset::compile(p, &ruleset::compile::CompileOptions::default())
    }

    const DOMAINS: &str = r#"
version = 1
[dns]
upstreams = ["192.0.2.53"]
[[rule]]
name = "api"
action = "allow"
ports = [443]
to = ["api.example.com"]
[[rule]]
name = "lan"
action = "allow"
ports = [443]
to = ["*.corp.example.com"]
allow_private = true
"#;

    type Named<'a, A> = (A, u64, Option<&'a str>);

    fn timed(table: &mut ruleset::Table, set: &str, v4: &[Named<Ipv4Addr>], v6: &[Named<Ipv6Addr>]) {
        let s = table.sets.iter_mut().find(|s| s.name == set).unwrap_or_else(|| panic!("no set {set}"));
        fn el<A: Copy>(&(a, ms, n): &Named<A>) -> ruleset::TimedAddr<A> {
            ruleset::TimedAddr::new(a, ms, n.map(String::from))
        }
        s.elements = if v4.is_empty() && !v6.is_empty() {
            SetElements::TimedV6(v6.iter().map(el).collect())
        } else {
            SetElements::TimedV4(v4.iter().map(el).collect())
        };
    }

    #[test]
    fn answers_carry_over_with_their_time_left_unless_the_guard_or_the_clock_says_no() {
        let p = policy(DOMAINS);
        let mut old = compiled(&p);
        let (public, private, own, soon) = (
            Ipv4Addr::new(203, 0, 113, 10),
            Ipv4Addr::new(10, 0, 0, 7),
            Ipv4Addr::new(198, 51, 100, 1),
            Ipv4Addr::new(203, 0, 113, 11),
        );
        let api = Some("api.example.com");
        timed(&mut old, "r_api_d4", &[(public, 90_000, api), (private, 90_000, api), (own, 90_000, api), (soon, 999, api)], &[]);
        timed(&mut old, "r_lan_d4", &[(private, 50_000, Some("db.corp.example.com"))], &[]);
        let v6 = "2001:db8::10".parse::<Ipv6Addr>().unwrap();
        timed(&mut old, "r_api_d6", &[], &[(v6, 70_000, api)]);
        let fw = FakeFirewall::with_table(&old, 5);

        let mut new = compiled(&p);
        let carried = carry_over_domain_sets(&p, &mut new, &fw, &[IpAddr::V4(own)]).unwrap();
        let elems = carried_elements(&new);
        // The public answers keep their time; a private answer only where the rule allows it;
        // never the host's own address; nothing about to expire.
        let want: HashMap<(String, IpAddr), u64> = [
            (("r_api_d4".to_string(), IpAddr::V4(public)), 90_000),
            (("r_api_d6".to_string(), IpAddr::V6(v6)), 70_000),
            (("r_lan_d4".to_string(), IpAddr::V4(private)), 50_000),
        ]
        .into();
        assert_eq!(elems, want);
        assert_eq!(carried, Carried { kept: 3, not_admitted: 2, unnamed: 0, capped: 0 });
        // Every domain set of the new table was read from the kernel, nothing was written.
        let calls = fw.calls();
        assert!(calls.iter().all(|c| matches!(c, Call::TimedElements(_))), "{calls:?}");
        assert_eq!(calls.len(), 4, "two families of two domain rules: {calls:?}");
    }

    /// Issue 12, item 3: the new policy decides what is carried. A wildcard removed from the rule
    /// takes its answers with it, an answer without a recorded name stays behind, and no answer
    /// keeps more time than the new policy would give it (`max_ttl + grace`).
    #[test]
    fn carry_over_keeps_only_answers_the_new_policy_admits_capped_at_its_max_ttl() {
        let old_policy = policy(
            r#"
version = 1
[dns]
upstreams = ["192.0.2.53"]
[[rule]]
name = "api"
action = "allow"
ports = [443]
to = ["api.example.com", "*.example.com"]
"#,
        );
        let new_policy = policy(
            r#"
version = 1
[dns]
upstreams = ["192.0.2.53"]
max_ttl = 300
grace = 60
[[rule]]
name = "api"
action = "allow"
ports = [443]
to = ["api.example.com"]
"#,
        );
        let mut old = compiled(&old_policy);
        let a = |d| Ipv4Addr::new(203, 0, 113, d);
        timed(
            &mut old,
            "r_api_d4",
            &[
                (a(10), 90_000, Some("api.example.com")),
                // Only the removed wildcard put it there.
                (a(11), 90_000, Some("evil.example.com")),
                // No name: nothing says the new policy admits it.
                (a(12), 90_000, None),
                // The old policy's long TTL; the new one allows at most 300 + 60 s.
                (a(13), 3_000_000, Some("api.example.com")),
            ],
            &[],
        );
        let fw = FakeFirewall::with_table(&old, 5);
        let mut new = compiled(&new_policy);
        let carried = carry_over_domain_sets(&new_policy, &mut new, &fw, &[]).unwrap();
        let want: HashMap<(String, IpAddr), u64> = [
            (("r_api_d4".to_string(), IpAddr::V4(a(10))), 90_000),
            (("r_api_d4".to_string(), IpAddr::V4(a(13))), 360_000),
        ]
        .into();
        assert_eq!(carried_elements(&new), want);
        assert_eq!(carried, Carried { kept: 2, not_admitted: 1, unnamed: 1, capped: 1 });
        // The names go along, so the next apply can decide again.
        let s = new.sets.iter().find(|s| s.name == "r_api_d4").unwrap();
        let SetElements::TimedV4(v) = &s.elements else { panic!("{s:?}") };
        assert!(v.iter().all(|e| e.name.as_deref() == Some("api.example.com")), "{v:?}");
    }

    /// Issue 12, item 8: "nothing changed" only when the kernel refused the batch.
    #[test]
    fn an_apply_the_kernel_committed_is_never_reported_as_nothing_changed() {
        let p = policy(DOMAINS);
        let table = compiled(&p);
        let fw = FakeFirewall::empty();
        fw.fail_next_apply(true, || {
            kernel::Error::Committed(Box::new(kernel::Error::Verify("chain output: 3 rules, want 4".into())))
        });
        let e = fw.apply(&table, &kernel::ApplyOptions::default()).unwrap_err();
        let msg = format!("{:#}", apply_failure("p.toml", e));
        assert!(msg.contains("p.toml was applied") && msg.contains("3 rules, want 4"), "{msg}");
        assert!(!msg.contains("nothing changed"), "{msg}");
        assert!(fw.table_info().unwrap().is_some(), "the fake committed it");

        let rejected = kernel::Error::Rejected {
            what: "NEWRULE for rule `api`".into(),
            error: kernel::nl::KernelError { errno: libc::EINVAL, request: Default::default(), message: None, offset: None },
        };
        let msg = format!("{:#}", apply_failure("p.toml", rejected));
        assert!(msg.contains("nothing changed") && msg.contains("EINVAL"), "{msg}");
        let uncertain = kernel::Error::Uncertain(Box::new(kernel::Error::MissingAcks { acked: 3, expected: 9 }));
        let msg = format!("{:#}", apply_failure("p.toml", uncertain));
        assert!(msg.contains("not known") && !msg.contains("nothing changed"), "{msg}");
    }

    #[test]
    fn nothing_is_carried_without_a_table() {
        let p = policy(DOMAINS);
        let mut new = compiled(&p);
        let fw = FakeFirewall::empty();
        assert_eq!(carry_over_domain_sets(&p, &mut new, &fw, &[]).unwrap(), Carried::default());
        assert!(carried_elements(&new).is_empty());
    }
}
