//! One function per subcommand; each returns the process exit code.

use crate::cli::{Cli, Command, ExplainArgs, Format};
use crate::load::{self, Loaded};
use crate::output;
use crate::system;
use anyhow::{Context, Result, bail};
use ruleset::compile::CompileOptions;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

pub const EXIT_OK: u8 = 0;
/// The policy has errors, or a test found a mismatch.
pub const EXIT_POLICY: u8 = 1;
/// The command line was wrong (clap uses 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// Something outside the policy failed: permissions, the kernel, the file system.
pub const EXIT_SYSTEM: u8 = 3;

/// An error in what the user typed (exit 2), as opposed to one of the system (exit 3).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

macro_rules! usage {
    ($($arg:tt)*) => { return Err(anyhow::Error::new(UsageError(format!($($arg)*)))) };
}

/// The exit code for an error that ended a command.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<UsageError>().is_some() { EXIT_USAGE } else { EXIT_SYSTEM }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.json;
    let code = match cli.command {
        Command::Check { policy, deny_warnings, today } => check(&policy, deny_warnings, today.as_deref(), json)?,
        Command::Compile { policy, format } => compile(&policy, format)?,
        Command::Apply { policy, fault } => apply(&policy, fault.fault_inject, json)?,
        Command::Status => status(json)?,
        Command::Disable => disable(json)?,
        Command::Set(a) => crate::cmd::set::run(&a, json)?,
        Command::Explain(args) => explain(&args, json)?,
        Command::Test { policy, measure, .. } if measure.measure => test_measure(&policy, &measure, json)?,
        Command::Test { policy, timeout_ms, .. } => test(&policy, timeout_ms, json)?,
        Command::Dns { policy, metrics } => crate::cmd::dns::run(&policy, metrics)?,
        Command::Conns(a) => crate::cmd::conns::run(&a, json)?,
        Command::Log(a) => crate::cmd::log::run(&a, json)?,
        Command::Top(a) => crate::cmd::top::run(&a, json)?,
        Command::Metrics(a) => crate::cmd::metrics::run(&a, json)?,
        Command::Trace(a) => crate::cmd::trace::run(&a, json)?,
        Command::Watch(a) => crate::cmd::watch::run(&a, json)?,
    };
    Ok(ExitCode::from(code))
}

fn parse_date(s: &str) -> Result<policy::Date> {
    let Ok(d) = s.parse::<jiff::civil::Date>() else { usage!("invalid date {s:?} (expected YYYY-MM-DD)") };
    Ok(d.into())
}

fn check(path: &std::path::Path, deny_warnings: bool, today: Option<&str>, json: bool) -> Result<u8> {
    let today = match today {
        Some(s) => parse_date(s)?,
        None => system::today(),
    };
    let l = load::load(path, today)?;
    let failed = l.errors() > 0 || (deny_warnings && l.warnings() > 0);
    if json {
        output::print_json(&serde_json::json!({
            "file": l.display_name(),
            "ok": !failed,
            "errors": l.errors(),
            "warnings": l.warnings(),
            "rules": l.policy.as_ref().map(|p| p.rules.len()),
            "expectations": l.policy.as_ref().map(|p| p.expects.len()),
            "sha256": l.sha256,
            "diagnostics": load::json_diagnostics(&l),
        }));
    } else {
        load::print_diagnostics(&l);
        match &l.policy {
            Some(p) => println!(
                "{}: {} ({} rules, {} expectations; {} error(s), {} warning(s))",
                l.display_name(),
                if failed { "failed" } else { "ok" },
                p.rules.len(),
                p.expects.len(),
                l.errors(),
                l.warnings()
            ),
            None => println!("{}: failed ({} error(s))", l.display_name(), l.errors()),
        }
    }
    Ok(if failed { EXIT_POLICY } else { EXIT_OK })
}

/// How this host compiles: now, with the kernel's time zone (see `CompileOptions`).
fn compile_options(l: &Loaded) -> CompileOptions {
    CompileOptions {
        comment: Some(l.table_comment()),
        now: Some(jiff::Timestamp::now()),
        imitate: None,
        kernel_minutes_west: system::kernel_minutes_west(),
    }
}

fn compiled(l: &Loaded, p: &policy::Policy) -> ruleset::Table {
    ruleset::compile(p, &compile_options(l))
}

fn compile(path: &std::path::Path, format: Format) -> Result<u8> {
    let Some((l, p)) = load::load_valid(path)? else { return Ok(EXIT_POLICY) };
    let table = compiled(&l, &p);
    match format {
        Format::Nft => print!("{}", ruleset::render::nft_text(&table)),
        Format::Json => output::print_json(&ruleset::render::nft_json(&table)),
    }
    Ok(EXIT_OK)
}

pub(crate) fn require_root(what: &str) -> Result<()> {
    if !system::is_root() {
        bail!("{what} needs root (CAP_NET_ADMIN); nothing was changed");
    }
    Ok(())
}

fn apply(path: &std::path::Path, fault_inject: bool, json: bool) -> Result<u8> {
    let Some((l, p)) = load::load_valid(path)? else { return Ok(EXIT_POLICY) };
    require_root("apply")?;
    let mut table = compiled(&l, &p);
    let carried = carry_over_domain_sets(&p, &mut table)?;
    let elements: usize = table.sets.iter().map(|s| s.elements.len()).sum();
    if elements >= 50_000 && !json {
        // Large sets take a few seconds; say what is happening.
        eprintln!("leash: applying {elements} set elements in one transaction...");
    }
    let report = kernel::apply(&table, &kernel::ApplyOptions { fault_inject })
        .with_context(|| format!("applying {} failed; the kernel discarded the whole transaction, nothing changed", l.display_name()))?;
    // Sizes of sets too large to count back, for `leash status` (see set_cmd).
    crate::cmd::set::record_apply(&table, report.table_handle);
    let kernel_rules: usize = table.chains.iter().map(|c| c.rules.len()).sum();
    // Domain sets start empty: resolve the exact names once so the policy works before the
    // first lookup through the forwarder. A failure here is reported, not fatal: the table is
    // in place and the forwarder fills the sets as names are looked up.
    let warm = if p.has_domain_rules() {
        if !json {
            eprintln!("leash: resolving the policy's domain names to warm up its sets...");
        }
        Some(crate::cmd::dns::warm_up(&p, &carried_elements(&table)).unwrap_or_else(|e| crate::cmd::dns::WarmUp {
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
            "report": output::apply_report_json(&report),
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
            output::apply_report_text(&report),
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

/// The elements carried into `table`'s timeout sets, with their time left in milliseconds.
fn carried_elements(table: &ruleset::Table) -> std::collections::HashMap<(String, IpAddr), u64> {
    use ruleset::SetElements;
    let mut out = std::collections::HashMap::new();
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
/// Returns the number of elements carried over.
fn carry_over_domain_sets(p: &policy::Policy, table: &mut ruleset::Table) -> Result<usize> {
    use ruleset::SetElements;
    let mut carried = 0;
    let own = crate::cmd::dns::own_addresses();
    for set in table.sets.iter_mut().filter(|s| s.timeout && s.dynamic.is_none()) {
        // The rule the set belongs to in the new policy: an answer it would no longer admit
        // (allow_private removed, or an own address) stays behind.
        let rule = p.rules.iter().find(|r| {
            [ruleset::Family::Ipv4, ruleset::Family::Ipv6].iter().any(|&f| ruleset::domain_set_name(&r.name, f) == set.name)
        });
        let Some(old) = kernel::timed_elements(ruleset::TABLE_NAME, &set.name)
            .with_context(|| format!("cannot read the answers in set {} of the active table", set.name))?
        else {
            continue;
        };
        let admitted = |addr: IpAddr| rule.is_none_or(|r| policy::dns::admits(r, addr, own.contains(&addr)));
        for (addr, left) in old.into_iter().filter(|&(a, left)| left >= CARRY_OVER_MIN_MS && admitted(a)) {
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

fn status(json: bool) -> Result<u8> {
    // Large sets are reported from what leash loaded, not counted (see set_cmd).
    let st = crate::cmd::set::status().context("cannot read the leash table")?;
    output::print_status(st.as_ref(), json);
    // Rules for a cgroup match its id at apply time; a service restarted since has a new one.
    if st.is_some()
        && let Ok(Some(info)) = kernel::table_comment(ruleset::TABLE_NAME)
    {
        for (path, then, now) in crate::cmd::set::stale_cgroups(info.handle) {
            let what = match now {
                Some(_) => "was made again (a restarted service?)",
                None => "is gone",
            };
            eprintln!(
                "leash: warning: cgroup /sys/fs/cgroup/{path} {what} since the apply (the rules match id {then}): \
                 they match no process until `leash apply` runs again"
            );
        }
    }
    Ok(EXIT_OK)
}

fn disable(json: bool) -> Result<u8> {
    require_root("disable")?;
    let existed = kernel::disable().context("removing table inet leash failed; nothing changed")?;
    crate::cmd::set::forget();
    if json {
        output::print_json(&serde_json::json!({ "removed": existed }));
    } else if existed {
        println!("removed table inet leash; the host's other rules decide again");
    } else {
        println!("no leash table was active");
    }
    Ok(EXIT_OK)
}

/// Parses `ADDR`, `ADDR:PORT`, `[IPV6]:PORT` or a bare IPv6 address.
pub fn parse_endpoint(s: &str) -> Result<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    usage!("invalid destination {s:?}: expected ADDR, ADDR:PORT or [IPV6]:PORT")
}

fn resolve_principal(s: &str, by_name: impl Fn(&str) -> Option<u32>, what: &str) -> Result<u32> {
    if let Ok(id) = s.parse::<u32>() {
        return Ok(id);
    }
    match by_name(s) {
        Some(id) => Ok(id),
        None => usage!("unknown {what} {s:?}"),
    }
}

fn explain(a: &ExplainArgs, json: bool) -> Result<u8> {
    use policy::Resolver;
    let Some((l, p)) = load::load_valid(&a.policy)? else { return Ok(EXIT_POLICY) };
    let (dst, port) = parse_endpoint(&a.to)?;
    let proto: policy::Proto = a.proto.into();
    if proto.has_ports() && port.is_none() {
        usage!("--proto {} needs a port: --to {}", proto.as_str(), if dst.is_ipv6() { format!("[{dst}]:PORT") } else { format!("{dst}:PORT") });
    }
    if !proto.has_ports() && port.is_some() {
        usage!("--proto {} has no ports; give --to without :PORT", proto.as_str());
    }
    let local = match &a.at {
        Some(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => p.local_time(t),
            Err(_) => match policy::time::parse_at(s) {
                Ok(t) => t,
                Err(m) => usage!("--at: {m}, or an RFC 3339 instant such as 2027-01-04T09:30:00Z"),
            },
        },
        None => p.local_time(jiff::Timestamp::now()),
    };
    let at = a.at.is_some().then_some(local);
    let cgroup = match (&a.service, &a.cgroup) {
        (Some(s), _) => Some(policy::service_cgroup(s)),
        (None, Some(c)) => Some(policy::cgroup_path(c)),
        (None, None) => None,
    };
    let cgroup = match cgroup.transpose() {
        Ok(c) => c,
        Err(m) => usage!("{m}"),
    };
    let r = system::SystemResolver::default();
    let uid = match &a.user {
        Some(u) => resolve_principal(u, |n| r.user(n), "user")?,
        None => 0,
    };
    let gid = match &a.group {
        Some(g) => resolve_principal(g, |n| r.group(n), "group")?,
        None => r.primary_group(uid).unwrap_or(if uid == 0 { 0 } else { uid }),
    };
    let name = match &a.name {
        Some(n) => match policy::dns::parse_domain(n) {
            Ok((n, false)) => Some(n),
            Ok((_, true)) => usage!("--name {n:?}: give the name that was looked up, not a wildcard"),
            Err(m) => usage!("--name: {m}"),
        },
        None => None,
    };
    let conn = policy::Connection { proto, dst, port, uid, gid, name, cgroup, at: Some(local) };
    let e = policy::explain(&p, &conn);
    output::print_explanation(&l, &p, &conn, &e, at, json);
    Ok(EXIT_OK)
}

fn test(path: &std::path::Path, timeout_ms: u64, json: bool) -> Result<u8> {
    let Some((l, p)) = load::load_valid(path)? else { return Ok(EXIT_POLICY) };
    require_root("test")?;
    if p.expects.is_empty() {
        bail!("{} has no [[expect]] cases to test", l.display_name());
    }
    // The lab compiles the policy itself: once for now, and again for each `at` of the
    // expectations, with the policy's cgroups pointed at scratch cgroups.
    let opts = lab::RunOptions {
        timeout: std::time::Duration::from_millis(timeout_ms),
        compile: CompileOptions { now: None, ..compile_options(&l) },
        ..Default::default()
    };
    if !json {
        eprintln!("leash: testing {} expectation(s) of {} in scratch namespaces...", p.expects.len(), l.display_name());
    }
    let report = lab::run_expectations(&p, &opts).context("could not run the expectations")?;
    let failed = report.rows.iter().filter(|r| !r.pass).count();
    if json {
        output::print_json(&serde_json::json!({
            "file": l.display_name(),
            "passed": report.rows.len() - failed,
            "failed": failed,
            "report": report,
        }));
    } else {
        output::print_test_report(&l, &p, &report);
        println!("{} passed, {} failed", report.rows.len() - failed, failed);
    }
    Ok(if failed == 0 { EXIT_OK } else { EXIT_POLICY })
}

/// `leash test --measure`: connect latency and rate with the policy versus no table.
fn test_measure(path: &std::path::Path, a: &crate::cli::MeasureArgs, json: bool) -> Result<u8> {
    let Some((l, p)) = load::load_valid(path)? else { return Ok(EXIT_POLICY) };
    require_root("test --measure")?;
    if a.rounds == 0 || a.connects == 0 {
        usage!("--rounds and --connects must be at least 1");
    }
    let opts = lab::MeasureOptions {
        rounds: a.rounds,
        connects: a.connects,
        time_limit: std::time::Duration::from_secs(a.max_seconds),
        compile: CompileOptions { now: None, ..compile_options(&l) },
        ..Default::default()
    };
    eprintln!(
        "leash: measuring {} in scratch namespaces: {} round(s) x {} connects, with the policy and with no table...",
        l.display_name(),
        a.rounds,
        a.connects
    );
    let progress = |line: &str| eprintln!("leash: {line}");
    let m = match lab::measure(&p, &opts, &progress) {
        Ok(m) => m,
        // Nothing to measure is the policy's business (exit 1), not a system failure.
        Err(e @ lab::LabError::NothingToMeasure(_)) => {
            eprintln!("leash: {}: {e}", l.display_name());
            return Ok(EXIT_POLICY);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("could not measure")),
    };
    if json {
        output::print_json(&serde_json::json!({ "file": l.display_name(), "measurement": m }));
    } else {
        print_measurement(&l, &m);
    }
    Ok(EXIT_OK)
}

fn print_measurement(l: &Loaded, m: &lab::Measurement) {
    println!(
        "performance impact of {} on new TCP connections ({} destination(s), {} kernel rules; {} interleaved round(s) x {} connects per side{})",
        l.display_name(),
        m.targets.len(),
        m.kernel_rules,
        m.rounds,
        m.connects_per_round,
        if m.stopped_early { ", stopped early by the time limit" } else { "" }
    );
    println!("{:<16} {:>12} {:>12} {:>12} {:>9}", "", "p50 connect", "p99 connect", "connects/s", "failed");
    for (name, s) in [("no table", &m.without_policy), ("policy applied", &m.with_policy)] {
        println!(
            "{:<16} {:>9.1} us {:>9.1} us {:>12.0} {:>9}",
            name, s.p50_us, s.p99_us, s.connects_per_s, s.failures
        );
    }
    println!("{:<16} {:>11.2}x {:>11.2}x {:>11.2}x", "ratio", m.ratio.p50, m.ratio.p99, m.ratio.connects_per_s);
    for s in &m.skipped {
        println!("skipped: {s}");
    }
    if m.with_policy.failures > 0 {
        println!(
            "note: {} connect(s) failed with the policy applied although their expectations allow them (rate or connection limits?)",
            m.with_policy.failures
        );
    }
}
