//! `leash apply`: compile a policy and replace table inet leash with it in one atomic transaction;
//! carry the forwarder's answers over from the table it replaces, and warm the domain sets up.

use crate::args::FaultArgs;
use crate::exit::{EXIT_OK, EXIT_POLICY, require_root};
use crate::load;
use crate::output;
use crate::state::State;
use anyhow::{Context, Result};
use kernel::{Firewall, TimedElement};
use policy::Policy;
use ruleset::SetElements;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `leash apply`.
#[derive(Debug, clap::Args)]
pub struct Args {
    pub policy: PathBuf,
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
    let report = fw
        .apply(&table, &kernel::ApplyOptions { fault_inject: a.fault.fault_inject })
        .with_context(|| format!("applying {} failed; the kernel discarded the whole transaction, nothing changed", l.display_name()))?;
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
            "carried_over": carried,
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
        if carried > 0 {
            println!("kept {carried} domain answers from the previous table, with their time left");
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
    }
    Ok(EXIT_OK)
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
            SetElements::TimedV4(v) => v.iter().map(|&(a, t)| (IpAddr::V4(a), t)).collect(),
            SetElements::TimedV6(v) => v.iter().map(|&(a, t)| (IpAddr::V6(a), t)).collect(),
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

/// Copies the forwarder's answers from the domain sets of the active table into the same-named
/// timeout sets of `table`, with the time they have left, so that re-applying a policy does not
/// cut off applications that cached a DNS answer: the replaced table's sets would start empty.
/// `own` holds the host's addresses (the rebinding guard keeps them out). Returns the number of
/// elements carried over.
fn carry_over_domain_sets(p: &Policy, table: &mut ruleset::Table, fw: &dyn Firewall, own: &[IpAddr]) -> Result<usize> {
    let mut carried = 0;
    for set in table.sets.iter_mut().filter(|s| s.timeout && s.dynamic.is_none()) {
        // The rule the set belongs to in the new policy: an answer it would no longer admit
        // (allow_private removed, or an own address) stays behind.
        let rule = p.rules.iter().find(|r| {
            [ruleset::Family::Ipv4, ruleset::Family::Ipv6].iter().any(|&f| ruleset::domain_set_name(&r.name, f) == set.name)
        });
        let Some(old) = fw
            .timed_elements(&set.name)
            .with_context(|| format!("cannot read the answers in set {} of the active table", set.name))?
        else {
            continue;
        };
        let admitted = |addr: IpAddr| rule.is_none_or(|r| policy::dns::admits(r, addr, policy::dns::is_own_address(addr, own)));
        let mut old: Vec<(IpAddr, u64)> = old.into_iter().filter(|&(a, left)| left >= CARRY_OVER_MIN_MS && admitted(a)).collect();
        // The new set may be smaller ([dns] set_size): keep the answers with the most time left.
        if let Some(size) = set.size.map(|n| n as usize)
            && old.len() > size
        {
            old.sort_by_key(|&(_, left)| std::cmp::Reverse(left));
            old.truncate(size);
        }
        for (addr, left) in old {
            match (&mut set.elements, addr) {
                (SetElements::TimedV4(v), IpAddr::V4(a)) => v.push((a, left)),
                (SetElements::TimedV6(v), IpAddr::V6(a)) => v.push((a, left)),
                _ => continue,
            }
            carried += 1;
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
    let mut elems: Vec<(String, IpAddr, u64)> = Vec::new();
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
                elems.push((ruleset::domain_set_name(&rule.name, family), addr, p.dns.element_timeout_ms(ttl)));
            }
        }
    }
    // One element per (set, address), with the longest of its timeouts and of what was carried.
    let mut longest: HashMap<(String, IpAddr), u64> = HashMap::new();
    for (set, addr, t) in elems {
        let carried = carried.get(&(set.clone(), addr)).copied().unwrap_or(0);
        let e = longest.entry((set, addr)).or_insert(0);
        *e = (*e).max(t).max(carried);
    }
    if !longest.is_empty() {
        let batch: Vec<TimedElement> =
            longest.iter().map(|((set, addr), t)| TimedElement { set, addr: *addr, timeout_ms: *t }).collect();
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

    fn timed(table: &mut ruleset::Table, set: &str, v4: &[(Ipv4Addr, u64)], v6: &[(Ipv6Addr, u64)]) {
        let s = table.sets.iter_mut().find(|s| s.name == set).unwrap_or_else(|| panic!("no set {set}"));
        s.elements = if v4.is_empty() && !v6.is_empty() {
            SetElements::TimedV6(v6.to_vec())
        } else {
            SetElements::TimedV4(v4.to_vec())
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
        timed(&mut old, "r_api_d4", &[(public, 90_000), (private, 90_000), (own, 90_000), (soon, 999)], &[]);
        timed(&mut old, "r_lan_d4", &[(private, 50_000)], &[]);
        let v6 = "2001:db8::10".parse::<Ipv6Addr>().unwrap();
        timed(&mut old, "r_api_d6", &[], &[(v6, 70_000)]);
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
        assert_eq!(carried, 3);
        // Every domain set of the new table was read from the kernel, nothing was written.
        let calls = fw.calls();
        assert!(calls.iter().all(|c| matches!(c, Call::TimedElements(_))), "{calls:?}");
        assert_eq!(calls.len(), 4, "two families of two domain rules: {calls:?}");
    }

    #[test]
    fn nothing_is_carried_without_a_table() {
        let p = policy(DOMAINS);
        let mut new = compiled(&p);
        let fw = FakeFirewall::empty();
        assert_eq!(carry_over_domain_sets(&p, &mut new, &fw, &[]).unwrap(), 0);
        assert!(carried_elements(&new).is_empty());
    }
}
