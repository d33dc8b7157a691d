//! `leash dns`: the forwarder for the applied policy's domain rules, the glue between the `dns`
//! crate, which knows no netlink, and the `kernel` crate: it becomes the forwarder's own user,
//! follows every re-apply of the table, and binds every insert to the table it was decided for.

use crate::active::{self, Active};
use crate::exit::EXIT_POLICY;
use crate::load;
use crate::privileges;
use crate::system::own_addresses;
use anyhow::{Context, Result, bail};
use kernel::nft::{SetWriter, TimedElement};
use kernel::{Firewall, TableInfo};
use policy::Policy;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `leash dns`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy whose `[dns] listen` and `user` the forwarder starts with; names are decided
    /// by the policy the applied table's comment names, followed across re-applies.
    pub policy: PathBuf,
    /// Also serve the forwarder's counters (queries, cache hits, upstream failures, set
    /// inserts, ...) as Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// The forwarder's [`dns::SetSink`]: one netlink batch per call into the table with the given
/// handle only (see `kernel::nft::SetWriter::add_timed_to`), acked before it returns.
struct KernelSink(SetWriter);

impl dns::SetSink for KernelSink {
    fn add(&mut self, table: u64, batch: &[dns::Insert]) -> Result<(), dns::SinkError> {
        let elems: Vec<TimedElement> =
            batch.iter().map(|i| TimedElement { set: &i.set, addr: i.addr, timeout_ms: i.timeout_ms, name: i.name.as_deref() }).collect();
        match self.0.add_timed_to(ruleset::TABLE_NAME, table, &elems) {
            Ok(()) => Ok(()),
            Err(kernel::Error::TableReplaced { .. }) => Err(dns::SinkError::TableReplaced),
            Err(e) if e.errno() == Some(libc::ENFILE) => Err(dns::SinkError::SetFull),
            Err(e) => Err(dns::SinkError::Other(std::io::Error::other(e))),
        }
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

/// What the forwarder was started with and cannot change without a restart: where it listens
/// and who it is.
#[derive(Debug, Clone)]
struct Fixed {
    listen: Vec<std::net::SocketAddr>,
    uid: u32,
}

/// The policy of the applied table, if the forwarder may decide names by it: the file its
/// comment names, unchanged since the apply, listening where the forwarder listens, as its
/// user. Otherwise why not (the forwarder then answers SERVFAIL).
fn applied_policy(info: &TableInfo, fixed: &Fixed) -> Result<Policy, String> {
    let a = match active::from_table(info) {
        Active::Policy(a) => a,
        Active::NoPolicyFile => return Err("the table's comment names no policy file".into()),
        Active::Unreadable { path, error } => return Err(format!("cannot read {path}: {error:#}")),
        Active::HasErrors { path } => return Err(format!("{path} has errors now")),
        Active::NoTable | Active::TableUnreadable(_) => return Err("the table cannot be read".into()),
    };
    if a.changed_since_apply() {
        return Err(format!("{} changed since it was applied (apply it again)", a.path));
    }
    let p = a.policy;
    if p.dns.listen != fixed.listen {
        return Err(format!("{} listens elsewhere ([dns] listen): restart leash dns with it", a.path));
    }
    if p.dns.user.uid != Some(fixed.uid) {
        return Err(format!("{} names another forwarder user ([dns] user = {}): restart leash dns with it", a.path, p.dns.user.written));
    }
    Ok(p)
}

/// Runs the forwarder until SIGINT or SIGTERM; with `metrics`, its counters are served there.
pub fn run(a: &Args, fw: &dyn Firewall) -> Result<u8> {
    let (path, metrics) = (&a.policy, a.metrics);
    let Some((l, p)) = load::load_valid(path)? else { return Ok(EXIT_POLICY) };
    let Some(uid) = p.dns.user.uid else {
        bail!(
            "the forwarder's user `{}` does not exist: create it (systemd-sysusers with contrib/sysusers.d/leash.conf) \
             or set `[dns] user` to a uid no other process uses; the table lets DNS out only from that user's sockets",
            p.dns.user.written
        );
    };
    let start = privileges::check_start(uid)?;
    if !p.has_domain_rules() {
        eprintln!(
            "leash dns: warning: {} has no domain rules; the forwarder will only forward",
            l.display_name()
        );
    }
    let fixed = Fixed { listen: p.dns.listen.clone(), uid };
    // The sets live in the applied table, and names are decided by its policy: without one
    // there is nothing to serve.
    let info = fw.table_info().context("cannot read the leash table")?.ok_or_else(|| {
        anyhow::anyhow!("no leash table is active: apply the policy first (leash apply {})", path.display())
    })?;
    // Checked as root first, so that a policy that is not applied is reported as such.
    applied_policy(&info, &fixed).map_err(|why| anyhow::anyhow!("cannot follow the applied table: {why}"))?;
    let mut writer = SetWriter::open().context("cannot open a netlink socket for set updates")?;
    if writer.refresh() == kernel::Refresh::DeleteAndAdd {
        // Kernels before 6.10 keep a re-added element's old timeout (found by a probe).
        eprintln!("leash dns: this kernel does not refresh element timeouts in place; refreshing by delete and add in one transaction");
    }
    if !writer.probe_generation_check().context("cannot probe the kernel's nf_tables generation check")? {
        bail!(
            "this kernel does not check the ruleset generation of a batch (NFNL_BATCH_GENID): an insert could land \
             in a table that replaced the one it was decided for; leash dns does not run on it"
        );
    }
    // Bound before the privileges go (port 53) and before the forwarder starts, so a taken
    // port fails the command at once.
    let metrics = match metrics {
        Some(a) => Some(std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a} for metrics"))?),
        None => None,
    };
    let listeners = dns::Listeners::bind(&fixed.listen)?;
    // One thread so far: from here on the process is the forwarder's user with CAP_NET_ADMIN
    // and CAP_NET_BIND_SERVICE only, and every thread started later inherits that.
    privileges::become_forwarder(start, uid, privileges::primary_gid(uid))?;
    // As that user, the applied policy must still load (its file must be readable by it, and so
    // on every re-apply).
    let applied = match applied_policy(&info, &fixed) {
        Ok(p) => p,
        Err(why) => bail!("as the forwarder's user (uid {uid}): {why}"),
    };
    drop(p);
    let policy = Arc::new(applied);
    let cfg = dns::ForwarderConfig { policy: policy.clone(), sets: rule_sets(&policy), table: info.handle, own_addresses: own_addresses() };
    let rt = dns::runtime().context("cannot start the runtime")?;
    rt.block_on(async move {
        let fwd = dns::Forwarder::with_listeners(cfg, listeners, Box::new(KernelSink(writer)))?;
        let listen: Vec<String> = fwd.local_addrs().iter().map(|a| a.to_string()).collect();
        let upstreams: Vec<String> = policy.dns.upstreams.iter().map(|a| a.to_string()).collect();
        eprintln!(
            "leash dns: listening on {} (udp, tcp) as uid {uid}; upstreams {}; {} domain rule(s); bypass {}",
            listen.join(", "),
            upstreams.join(", "),
            policy.rules.iter().filter(|r| !r.cond.domains.is_empty()).count(),
            policy.dns.bypass.as_str()
        );
        let handle = fwd.handle();
        if let Some(l) = metrics {
            crate::serve::dns_metrics(l, handle.clone())?;
        }
        tokio::spawn(watch_table(handle.clone(), info, fixed));
        fwd.serve(shutdown_signal()).await?;
        let s = handle.stats();
        eprintln!("leash dns: stopped; {s:?}");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(crate::exit::EXIT_OK)
}

/// How often the forwarder looks whether the table was re-applied (and, sooner, whenever an
/// insert found its table replaced).
const TABLE_POLL: Duration = Duration::from_millis(250);
/// How often a forwarder that could not load the applied policy tries again.
const RETRY_LOAD: Duration = Duration::from_secs(5);

/// Follows the applied table (and the host's addresses, for the rebinding guard). When the
/// table is replaced (a new handle) or its comment changes, the forwarder loads the policy the
/// comment names and decides by it from then on, feeding the new table's sets only; when it
/// cannot (no table, file gone, changed since the apply, errors, other listen addresses or
/// user), it answers SERVFAIL until it can. Inserts are bound to the handle of the table their
/// policy came from, so none lands in a table applied later (see `kernel::nft::SetWriter`).
async fn watch_table(handle: dns::Handle, mut last: TableInfo, fixed: Fixed) {
    let mut own = own_addresses();
    let mut suspended_at: Option<Instant> = None;
    // Said once per spell of failures, not every poll.
    let mut read_failed = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TABLE_POLL) => {}
            _ = handle.table_replaced() => {}
        }
        // The host's addresses change (DHCP, VPN): the rebinding guard follows them.
        let now_own = own_addresses();
        if now_own != own {
            handle.set_own_addresses(now_own.clone());
            own = now_own;
        }
        let info = match kernel::table_comment(ruleset::TABLE_NAME) {
            Ok(Some(i)) => i,
            Ok(None) => {
                if handle.is_following() {
                    eprintln!("leash dns: the leash table is gone; answering SERVFAIL until a policy is applied");
                    handle.suspend();
                }
                suspended_at = Some(Instant::now());
                last = TableInfo { handle: 0, comment: None };
                continue;
            }
            Err(e) => {
                if !read_failed {
                    eprintln!("leash dns: warning: cannot read the leash table: {e}");
                }
                read_failed = true;
                continue;
            }
        };
        read_failed = false;
        let changed = info != last;
        let retry = suspended_at.is_some_and(|t| t.elapsed() >= RETRY_LOAD);
        if !changed && !retry {
            continue;
        }
        last = info.clone();
        // Loading a policy reads files (sets, a country database): off the runtime thread.
        let (i, f) = (info.clone(), fixed.clone());
        let loaded = tokio::task::spawn_blocking(move || applied_policy(&i, &f)).await.unwrap_or_else(|e| Err(e.to_string()));
        match loaded {
            Ok(p) => {
                let p = Arc::new(p);
                match handle.follow(dns::Applied { sets: rule_sets(&p), policy: p, table: info.handle }) {
                    Ok(()) => {
                        suspended_at = None;
                        eprintln!(
                            "leash dns: the leash table was re-applied ({}); following its policy",
                            info.comment.as_deref().unwrap_or("no comment")
                        );
                    }
                    Err(e) => {
                        handle.suspend();
                        suspended_at = Some(Instant::now());
                        eprintln!("leash dns: warning: cannot follow the applied policy: {e}; answering SERVFAIL");
                    }
                }
            }
            Err(why) => {
                if handle.is_following() || changed {
                    eprintln!("leash dns: warning: cannot follow the applied table: {why}; answering SERVFAIL until it can");
                }
                handle.suspend();
                suspended_at = Some(Instant::now());
            }
        }
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
