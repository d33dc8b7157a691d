//! `leash dns` (the forwarder for a policy's domain rules) and the apply-time warm-up of domain
//! sets: the glue between the `dns` crate, which knows no netlink, and the `kernel` crate.

use crate::load;
use anyhow::{Context, Result, bail};
use kernel::nft::{SetWriter, TimedElement};
use policy::Policy;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The forwarder's [`dns::SetSink`]: one netlink batch per call, acked before it returns.
struct KernelSink(SetWriter);

impl dns::SetSink for KernelSink {
    fn add(&mut self, batch: &[dns::Insert]) -> io::Result<()> {
        let elems: Vec<TimedElement> =
            batch.iter().map(|i| TimedElement { set: &i.set, addr: i.addr, timeout_ms: i.timeout_ms }).collect();
        self.0.add_timed(ruleset::TABLE_NAME, &elems).map_err(io::Error::other)
    }
}

/// The two timeout sets of every domain rule, by rule index (`None` for rules without domains).
pub fn rule_sets(p: &Policy) -> Vec<Option<dns::RuleSets>> {
    p.rules
        .iter()
        .map(|r| {
            (!r.cond.domains.is_empty()).then(|| dns::RuleSets {
                v4: ruleset::domain_set_name(&r.name, ruleset::Family::Ipv4).into(),
                v6: ruleset::domain_set_name(&r.name, ruleset::Family::Ipv6).into(),
            })
        })
        .collect()
}

/// The addresses of this network namespace's interfaces (the rebinding guard keeps them out of
/// allow sets).
pub fn own_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Runs the forwarder until SIGINT or SIGTERM; with `metrics`, its counters are served there.
pub fn run(path: &Path, metrics: Option<std::net::SocketAddr>) -> Result<u8> {
    let Some((l, p)) = load::load_valid(path)? else { return Ok(crate::commands::EXIT_POLICY) };
    crate::commands::require_root("dns")?;
    if !p.has_domain_rules() {
        eprintln!(
            "leash dns: warning: {} has no domain rules; the forwarder will only forward",
            l.display_name()
        );
    }
    // The sets live in the applied table: without it every insert would fail, and every
    // answer for a listed name would be SERVFAIL.
    match kernel::status().context("cannot read the leash table")? {
        None => bail!("no leash table is active: apply the policy first (leash apply {})", path.display()),
        Some(st) if st.comment.as_deref() != Some(l.table_comment().as_str()) => eprintln!(
            "leash dns: warning: the active table is not from {} as it is now ({}); apply it so the sets match",
            l.display_name(),
            st.comment.as_deref().unwrap_or("no comment")
        ),
        Some(_) => {}
    }
    // Bound before the forwarder starts, so a taken port fails the command at once.
    let metrics = match metrics {
        Some(a) => Some(std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a} for metrics"))?),
        None => None,
    };
    let writer = SetWriter::open().context("cannot open a netlink socket for set updates")?;
    let table_comment = l.table_comment();
    let policy = Arc::new(p);
    let cfg = dns::ForwarderConfig { policy: policy.clone(), sets: rule_sets(&policy), own_addresses: own_addresses() };
    let rt = dns::runtime().context("cannot start the runtime")?;
    rt.block_on(async move {
        let fwd = dns::Forwarder::bind(cfg, Box::new(KernelSink(writer))).await?;
        let listen: Vec<String> = fwd.local_addrs().iter().map(|a| a.to_string()).collect();
        let upstreams: Vec<String> = policy.dns.upstreams.iter().map(|a| a.to_string()).collect();
        eprintln!(
            "leash dns: listening on {} (udp, tcp); upstreams {}; {} domain rule(s); bypass {}",
            listen.join(", "),
            upstreams.join(", "),
            policy.rules.iter().filter(|r| !r.cond.domains.is_empty()).count(),
            policy.dns.bypass.as_str()
        );
        let handle = fwd.handle();
        if let Some(l) = metrics {
            crate::cmd::metrics::serve_dns(l, handle.clone())?;
        }
        tokio::spawn(watch_table(handle.clone(), table_comment));
        fwd.serve(shutdown_signal()).await?;
        let s = handle.stats();
        eprintln!("leash dns: stopped; {s:?}");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(crate::commands::EXIT_OK)
}

/// How often the forwarder looks whether the table was re-applied.
const TABLE_POLL: Duration = Duration::from_secs(1);

/// Watches the host's addresses (for the rebinding guard) and the applied table: when it is replaced (a new handle), the forwarder forgets which
/// elements it believes the kernel holds, so the next answer or cache hit for each name inserts
/// again (apply carries answers over, but one that arrives between its read and its commit would
/// be lost). When the table comes from another policy, it says so once: the forwarder keeps
/// deciding names by the policy it was started with.
async fn watch_table(handle: dns::Handle, expected_comment: String) {
    let mut last: Option<u64> = None;
    let mut warned = false;
    let mut own = own_addresses();
    let mut tick = tokio::time::interval(TABLE_POLL);
    loop {
        tick.tick().await;
        // The host's addresses change (DHCP, VPN): the rebinding guard follows them.
        let now_own = own_addresses();
        if now_own != own {
            handle.set_own_addresses(now_own.clone());
            own = now_own;
        }
        let info = match kernel::table_comment(ruleset::TABLE_NAME) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("leash dns: warning: cannot read the leash table: {e}");
                continue;
            }
        };
        let handle_now = info.as_ref().map(|i| i.handle);
        if last.is_some() && handle_now != last {
            handle.forget_kernel_state();
            match &info {
                Some(_) => eprintln!("leash dns: the leash table was re-applied; answers will be re-inserted"),
                None => eprintln!("leash dns: warning: the leash table is gone; answers cannot be inserted (SERVFAIL)"),
            }
        }
        last = handle_now;
        let same_policy = info.as_ref().and_then(|i| i.comment.as_deref()) == Some(expected_comment.as_str());
        if info.is_some() && !same_policy && !warned {
            eprintln!(
                "leash dns: warning: the active table is from another policy; restart leash dns with it to follow its domain rules"
            );
        }
        warned = info.is_some() && !same_policy;
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        // Without signal handlers the process still ends on the default action of the signal.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
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
/// when the new table (with its forwarder rule letting marked queries out) is in place.
///
/// `carried` holds the answers apply carried over from the previous table (set, address → ms
/// left): the kernel takes a re-added element's timeout as is, so the warm-up never sends one
/// shorter than that, nor two for one element.
pub fn warm_up(p: &Policy, carried: &std::collections::HashMap<(String, IpAddr), u64>) -> Result<WarmUp> {
    let mut w = WarmUp::default();
    let mut names: Vec<&str> = p.rules.iter().flat_map(|r| &r.cond.domains).filter(|d| !d.wildcard).map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    w.names = names.len();
    if names.is_empty() {
        return Ok(w);
    }
    let own = own_addresses();
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
                        .map(|&n| (n, dns::resolve_once(&p.dns.upstreams, p.dns.mark, n, timeout)))
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
                if !policy::dns::admits(rule, addr, own.contains(&addr)) {
                    w.guarded += 1;
                    continue;
                }
                let family = if addr.is_ipv6() { ruleset::Family::Ipv6 } else { ruleset::Family::Ipv4 };
                elems.push((ruleset::domain_set_name(&rule.name, family), addr, p.dns.element_timeout_ms(ttl)));
            }
        }
    }
    // One element per (set, address), with the longest of its timeouts and of what was carried.
    let mut longest: std::collections::HashMap<(String, IpAddr), u64> = std::collections::HashMap::new();
    for (set, addr, t) in elems {
        let carried = carried.get(&(set.clone(), addr)).copied().unwrap_or(0);
        let e = longest.entry((set, addr)).or_insert(0);
        *e = (*e).max(t).max(carried);
    }
    if !longest.is_empty() {
        let batch: Vec<TimedElement> =
            longest.iter().map(|((set, addr), t)| TimedElement { set, addr: *addr, timeout_ms: *t }).collect();
        SetWriter::open()
            .and_then(|mut w| w.add_timed(ruleset::TABLE_NAME, &batch))
            .context("cannot put the warm-up answers into the domain sets")?;
        w.elements = batch.len();
    }
    Ok(w)
}
