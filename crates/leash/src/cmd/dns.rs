//! `leash dns`: the forwarder for a policy's domain rules, the glue between the `dns` crate,
//! which knows no netlink, and the `kernel` crate.

use crate::exit::{EXIT_OK, EXIT_POLICY, require_root};
use crate::load;
use crate::system::own_addresses;
use anyhow::{Context, Result, bail};
use kernel::Firewall;
use kernel::nft::{SetWriter, TimedElement};
use policy::Policy;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `leash dns`.
#[derive(Debug, clap::Args)]
pub struct Args {
    pub policy: PathBuf,
    /// Also serve the forwarder's counters (queries, cache hits, upstream failures, set
    /// inserts, ...) as Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// The forwarder's [`dns::SetSink`]: one netlink batch per call, acked before it returns.
struct KernelSink(SetWriter);

impl dns::SetSink for KernelSink {
    fn add(&mut self, batch: &[dns::Insert]) -> io::Result<()> {
        let elems: Vec<TimedElement> =
            batch.iter().map(|i| TimedElement { set: &i.set, addr: i.addr, timeout_ms: i.timeout_ms, name: i.name.as_deref() }).collect();
        self.0.add_timed(ruleset::TABLE_NAME, &elems).map_err(io::Error::other)
    }
}

/// The two timeout sets of every domain rule, by rule index (`None` for rules without domains).
fn rule_sets(p: &Policy) -> Vec<Option<dns::RuleSets>> {
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

/// Runs the forwarder until SIGINT or SIGTERM; with `metrics`, its counters are served there.
pub fn run(a: &Args, fw: &dyn Firewall) -> Result<u8> {
    let (path, metrics) = (&a.policy, a.metrics);
    let Some((l, p)) = load::load_valid(path)? else { return Ok(EXIT_POLICY) };
    require_root("dns")?;
    if !p.has_domain_rules() {
        eprintln!(
            "leash dns: warning: {} has no domain rules; the forwarder will only forward",
            l.display_name()
        );
    }
    // The sets live in the applied table: without it every insert would fail, and every
    // answer for a listed name would be SERVFAIL.
    match fw.status().context("cannot read the leash table")? {
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
    if writer.refresh() == kernel::Refresh::DeleteAndAdd {
        // Kernels before 6.10 keep a re-added element's old timeout (found by a probe).
        eprintln!("leash dns: this kernel does not refresh element timeouts in place; refreshing by delete and add in one transaction");
    }
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
            crate::serve::dns_metrics(l, handle.clone())?;
        }
        tokio::spawn(watch_table(handle.clone(), table_comment));
        fwd.serve(shutdown_signal()).await?;
        let s = handle.stats();
        eprintln!("leash dns: stopped; {s:?}");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(EXIT_OK)
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
