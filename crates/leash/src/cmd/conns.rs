//! `leash conns`: every TCP and UDP socket of this network namespace with its process, user,
//! byte counters and, for outgoing connections, the verdict and deciding rule of the active
//! policy (or of a candidate policy file: what it would cut).
//!
//! The data comes from `observe::conns::snapshot` (sock_diag netlink, a `/proc` scan for the
//! processes, `policy::explain` for the verdicts); what a candidate would cut is
//! `crate::flows::survey_of` (the same survey `leash apply` reports, conntrack included), and
//! processes holding packet or raw sockets are a warning (`crate::bypass`). The active policy is the file named in the
//! comment leash stores with its table (`leash sha256:HEX PATH`); it is read again from disk, so
//! a file edited since the apply is flagged (its hash no longer matches) and judged as it is now.

use crate::active::Active;
use crate::exit::{EXIT_OK, EXIT_POLICY, UsageError};
use crate::load;
use anyhow::{Context, Result};
use kernel::Firewall;
use kernel::sockdiag::{Query, States};
use observe::conns::{self, Conn, Direction, Options, Snapshot};
use policy::Policy;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Columns: PROTO, STATE (netstat's names; UNCONN for unconnected UDP), DIR (out: this host
connected; in: accepted by a local listener; listen; - for unconnected), LOCAL and REMOTE
address, USER (the socket's owner), PROCESS (pid/command; the executable is in --json), SENT
and RECV (TCP payload bytes), VERDICT and RULE (outgoing connections only).

The verdict is what the policy decides for a NEW connection like this one (protocol,
destination, port, the socket's user and the process's group). A connection can be up and
still show `deny`: it was opened before the policy was applied, and `allow_established` lets
it run until it closes; its next connect fails. With deny_with = \"drop\" a denied TCP connect
waits in SYN_SENT until it times out: that is how a blocked connection looks here.

Which policy: the active one (the file `leash apply` recorded in the kernel table; a warning
says when the file changed since), or --policy FILE to see what a candidate would do to the
connections that exist now: which of them it would deny (cut), and which the active policy
allows today. The list of what it would deny is the one `leash apply` reports: it also has
flows only conntrack knows (an unconnected UDP socket's, and flows forwarded from containers and
VMs, with the interfaces they pass; as root). Without either, no verdicts are shown.

Packet and raw sockets: processes holding an AF_PACKET socket, which sends past netfilter (no
leash rule applies to it), or a raw IP socket (its packets are decided, but it may forge
headers), are listed as a warning, on standard error (and under raw_sockets in --json). DHCP
clients and capture tools hold packet sockets legitimately.

Processes are found by scanning /proc/*/fd (as ss -p does, but faster); run as root to see
every process. --pid reads only that process.

Examples:
  leash conns                               # everything, with verdicts of the active policy
  leash conns --state syn-sent              # connects waiting for an answer (dropped ones)
  leash conns --state established --user www-data
  leash conns --pid 1234 --json             # one process, for scripts
  leash conns --policy new-policy.toml      # what would the new policy cut?";

/// Arguments of `leash conns`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Only sockets in these states: established, syn-sent, syn-recv, fin-wait-1, fin-wait-2,
    /// time-wait, close-wait, last-ack, closing, listen, unconn (unconnected UDP), close, bound,
    /// or the groups connected and all. Comma-separated or repeated.
    #[arg(long, value_name = "STATE")]
    pub state: Vec<String>,
    /// Only sockets owned by this user (name or uid).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only sockets held by this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Judge the connections by this policy file instead of the active policy, and list the
    /// connections it would deny.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Only TCP sockets.
    #[arg(long, conflicts_with = "udp")]
    pub tcp: bool,
    /// Only UDP sockets.
    #[arg(long)]
    pub udp: bool,
    /// Do not look for the processes (no /proc scan): faster, no PROCESS column, and groups
    /// fall back to the owner's primary group for verdicts.
    #[arg(long, conflicts_with = "pid")]
    pub no_processes: bool,
}

/// Where the policy that judges the connections came from.
#[derive(Debug, Serialize)]
struct PolicyInfo {
    /// `active` (recorded in the kernel table) or `file` (--policy).
    source: &'static str,
    path: String,
    sha256: String,
    /// For the active policy: the file's hash differs from the one applied.
    changed_since_apply: bool,
}

/// A policy ready to judge, with where it came from.
struct Judge {
    info: PolicyInfo,
    policy: Policy,
}

pub fn run(a: &Args, json: bool, fw: &dyn Firewall) -> Result<u8> {
    crate::exit::end_quietly_on_closed_pipe();
    let mut states = States::NONE;
    for s in &a.state {
        states.0 |= conns::parse_states(s).map_err(UsageError)?.0;
    }
    if a.state.is_empty() {
        states = States::ALL;
    }
    let uid = match &a.user {
        Some(u) => Some(resolve_user(u)?),
        None => None,
    };
    let mut warnings = Vec::new();
    // The candidate (--policy) judges; the active policy, when there is one, is what it is
    // compared with.
    let candidate = match &a.policy {
        Some(path) => {
            let Some((l, p)) = load::load_valid(path)? else { return Ok(EXIT_POLICY) };
            Some(Judge {
                info: PolicyInfo {
                    source: "file",
                    path: l.display_name(),
                    sha256: l.sha256.clone(),
                    changed_since_apply: false,
                },
                policy: p,
            })
        }
        None => None,
    };
    let active = active_policy(fw, &mut warnings);
    if candidate.is_none() && active.is_none() && json {
        // (The text output says so in its summary.)
        warnings.push("no verdicts: no leash policy is active here (give --policy FILE to judge by a file)".into());
    }
    if !json {
        for w in &warnings {
            eprintln!("leash: warning: {w}");
        }
    }
    let judge = candidate.as_ref().or(active.as_ref());
    // Sockets past the firewall: a warning whatever the policy.
    let raw = crate::bypass::holders();
    if json {
        warnings.extend(crate::bypass::warnings(&raw).into_iter().map(|l| l.trim().to_string()));
    }

    let opts = Options {
        query: Query { tcp: !a.udp, udp: !a.tcp, states, ..Query::default() },
        processes: !a.no_processes,
        uid,
        pid: a.pid,
    };
    let mut snap = conns::snapshot(&opts, judge.map(|j| &j.policy))
        .context("cannot list the connections of this network namespace")?;
    // Grouped by process, then by peer: who talks to whom reads top to bottom.
    snap.conns.sort_by(|x, y| {
        (x.pid.is_none(), x.pid, x.direction, x.proto, x.remote, x.local).cmp(&(
            y.pid.is_none(),
            y.pid,
            y.direction,
            y.proto,
            y.remote,
            y.local,
        ))
    });
    // With a candidate, what the active policy says today, for comparison.
    let now: Option<Vec<Option<conns::Verdict>>> = match (&candidate, &active) {
        (Some(_), Some(act)) => Some(conns::verdicts(&act.policy, &snap.conns)),
        _ => None,
    };
    // What the candidate would cut, as `leash apply` would report it.
    let live = candidate.as_ref().map(|c| crate::flows::survey_of(&snap.conns, &c.policy));
    let cut = live.as_ref().map(|l| Cut { live: l, now_allowed: now.as_deref().map(|n| now_allowed(l, &snap.conns, n)) });
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    if json {
        print_json(&mut out, &snap, judge, cut.as_ref(), active.as_ref(), now.as_deref(), &warnings, &raw)?;
    } else {
        print_text(&mut out, &snap, judge, cut.as_ref(), now.as_deref(), !a.no_processes)?;
    }
    out.flush()?;
    if !json {
        crate::bypass::eprint(&raw);
    }
    Ok(EXIT_OK)
}

/// What a candidate would cut, and how many of those the active policy allows today.
struct Cut<'a> {
    live: &'a crate::flows::Live,
    now_allowed: Option<usize>,
}

/// How many of the sockets the candidate would cut the active policy allows (`now` is its
/// verdict per connection of `snap`).
fn now_allowed(live: &crate::flows::Live, snap: &[Conn], now: &[Option<conns::Verdict>]) -> usize {
    live.survey
        .denied
        .iter()
        .filter_map(|f| f.socket.as_ref())
        .filter(|s| {
            snap.iter()
                .position(|c| c.socket.cookie == s.cookie && c.socket.inode == s.inode)
                .is_some_and(|i| now[i].as_ref().is_some_and(|v| v.allows()))
        })
        .count()
}

fn resolve_user(u: &str) -> Result<u32> {
    crate::system::user_id(u).ok_or_else(|| anyhow::Error::new(UsageError(format!("unknown user {u:?}"))))
}

/// The active policy: the file named in the table comment, loaded again. Problems are warnings
/// (the listing is still useful without verdicts).
fn active_policy(fw: &dyn Firewall, warnings: &mut Vec<String>) -> Option<Judge> {
    let a = match crate::active::find(fw) {
        Active::Policy(a) => a,
        Active::NoTable => return None,
        Active::TableUnreadable(e) => {
            warnings.push(format!("cannot read the active leash table ({e}); no verdicts of the active policy"));
            return None;
        }
        Active::NoPolicyFile => {
            warnings.push("the active leash table names no policy file (no `leash sha256:HASH PATH` comment); no verdicts".into());
            return None;
        }
        Active::Unreadable { path, error } => {
            warnings.push(format!("the active policy {path} cannot be read ({error:#}); no verdicts"));
            return None;
        }
        Active::HasErrors { path } => {
            warnings.push(format!("the active policy {path} has errors now (see `leash check {path}`); no verdicts"));
            return None;
        }
    };
    let changed = a.changed_since_apply();
    let path = &a.path;
    if changed {
        warnings.push(format!(
            "{path} changed since it was applied (sha256 {} applied, {} now): verdicts follow the file as it is now, \
             not the rules in the kernel; `leash apply {path}` to bring them together",
            short(&a.applied_hash),
            short(&a.loaded.sha256)
        ));
    }
    let a = *a;
    Some(Judge {
        info: PolicyInfo { source: "active", path: a.path, sha256: a.loaded.sha256, changed_since_apply: changed },
        policy: a.policy,
    })
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}

/// Counts for the summary line and JSON.
#[derive(Debug, Default, Serialize)]
struct Summary {
    sockets: usize,
    tcp: usize,
    udp: usize,
    outgoing: usize,
    incoming: usize,
    listening: usize,
    unconnected: usize,
    allowed: usize,
    denied: usize,
    with_process: usize,
    by_state: BTreeMap<&'static str, usize>,
}

fn summarise(conns: &[Conn]) -> Summary {
    let mut s = Summary { sockets: conns.len(), ..Summary::default() };
    for c in conns {
        match c.proto {
            "tcp" => s.tcp += 1,
            _ => s.udp += 1,
        }
        match c.direction {
            Direction::Out => s.outgoing += 1,
            Direction::In => s.incoming += 1,
            Direction::Listen => s.listening += 1,
            Direction::Unconnected => s.unconnected += 1,
        }
        match c.verdict {
            Some("allow") => s.allowed += 1,
            Some(_) => s.denied += 1,
            None => {}
        }
        s.with_process += usize::from(c.pid.is_some());
        *s.by_state.entry(c.state).or_default() += 1;
    }
    s
}

/// One connection in the JSON output: the connection, plus the active policy's verdict when a
/// candidate judged it.
#[derive(Serialize)]
struct JsonConn<'a> {
    #[serde(flatten)]
    conn: &'a Conn,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_verdict: Option<Option<&'static str>>,
}

#[allow(clippy::too_many_arguments)]
fn print_json(
    out: &mut impl Write,
    snap: &Snapshot,
    judge: Option<&Judge>,
    cut: Option<&Cut>,
    active: Option<&Judge>,
    now: Option<&[Option<conns::Verdict>]>,
    warnings: &[String],
    raw: &Result<observe::rawsocks::Holders, String>,
) -> Result<()> {
    let summary = summarise(&snap.conns);
    let is_candidate = cut.is_some();
    let doc = serde_json::json!({
        "policy": judge.map(|j| &j.info),
        "active_policy": if is_candidate { active.map(|j| &j.info) } else { None },
        "warnings": warnings,
        "raw_sockets": crate::bypass::json(raw),
        "summary": summary,
        "timings_ms": {
            "sockets": ms(snap.timings.dump),
            "processes": ms(snap.timings.processes),
            "verdicts": ms(snap.timings.verdicts),
        },
        "scan": { "processes": snap.scan.processes, "descriptors": snap.scan.descriptors },
        "would_deny": cut.map(|c| c.live.survey.denied.len()),
        "would_deny_now_allowed": cut.and_then(|c| c.now_allowed),
        "would_deny_flows": cut.map(|c| &c.live.survey.denied),
        "would_deny_conntrack_error": cut.and_then(|c| c.live.conntrack_error.as_deref()),
        "would_deny_routes_error": cut.and_then(|c| c.live.routes_error.as_deref()),
    });
    // The connections are written one by one (compact) rather than built as one JSON value:
    // 20,000 of them would otherwise be copied into a tree first.
    let mut head = serde_json::to_string(&doc)?;
    head.pop(); // the closing brace; the connections array goes before it
    write!(out, "{head},\"connections\":[")?;
    for (i, c) in snap.conns.iter().enumerate() {
        if i > 0 {
            out.write_all(b",\n")?;
        } else {
            out.write_all(b"\n")?;
        }
        match now {
            Some(n) => serde_json::to_writer(&mut *out, &JsonConn { conn: c, active_verdict: Some(n[i].as_ref().map(|v| v.verdict)) })?,
            None => serde_json::to_writer(&mut *out, c)?,
        }
    }
    writeln!(out, "\n]}}")?;
    Ok(())
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// 1234 -> "1.2K", as people read byte counts.
fn bytes(n: Option<u64>) -> String {
    let Some(n) = n else { return "-".into() };
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

fn addr(a: Option<std::net::SocketAddr>) -> String {
    match a {
        Some(a) => a.to_string(),
        None => "*".into(),
    }
}

fn print_text(
    out: &mut impl Write,
    snap: &Snapshot,
    judge: Option<&Judge>,
    cut: Option<&Cut>,
    now: Option<&[Option<conns::Verdict>]>,
    processes: bool,
) -> Result<()> {
    let is_candidate = cut.is_some();
    let conns = &snap.conns;
    let user = |c: &Conn| c.user.clone().or_else(|| c.uid.map(|u| u.to_string())).unwrap_or_else(|| "-".into());
    let process = |c: &Conn| match (c.pid, &c.comm) {
        (Some(p), Some(comm)) => format!("{p}/{comm}"),
        (Some(p), None) => p.to_string(),
        _ => "-".into(),
    };
    let dir = |c: &Conn| match c.direction {
        Direction::Unconnected => "-",
        d => d.as_str(),
    };
    // The variable cells, made once (tens of thousands of rows: formatting is a good part of the
    // time), then columns as wide as their widest cell (addresses take 9 to 47 characters).
    let cells: Vec<[String; 4]> = conns
        .iter()
        .map(|c| {
            // A destination the forwarder answered shows the domain rule's names next to it.
            let remote = match &c.host {
                Some(h) => format!("{} ({h})", addr(c.remote)),
                None => addr(c.remote),
            };
            [addr(Some(c.local)), remote, user(c), if processes { process(c) } else { String::new() }]
        })
        .collect();
    let width = |k: usize, title: &str| cells.iter().map(|r| r[k].len()).max().unwrap_or(0).max(title.len());
    let (lw, rw, uw, pw) = (width(0, "LOCAL"), width(1, "REMOTE"), width(2, "USER"), width(3, "PROCESS"));
    let sw = conns.iter().map(|c| c.state.len()).max().unwrap_or(0).max("STATE".len());
    let show_verdicts = judge.is_some();
    write!(out, "{:<5} {:<sw$} {:<6} {:<lw$} {:<rw$} {:<uw$} ", "PROTO", "STATE", "DIR", "LOCAL", "REMOTE", "USER")?;
    if processes {
        write!(out, "{:<pw$} ", "PROCESS")?;
    }
    write!(out, "{:>7} {:>7}", "SENT", "RECV")?;
    if show_verdicts {
        write!(out, " {:<7}", "VERDICT")?;
        if now.is_some() {
            write!(out, " {:<7}", "NOW")?;
        }
        write!(out, " RULE")?;
    }
    writeln!(out)?;
    for (i, (c, [local, remote, user, process])) in conns.iter().zip(&cells).enumerate() {
        write!(out, "{:<5} {:<sw$} {:<6} {local:<lw$} {remote:<rw$} {user:<uw$} ", c.proto, c.state, dir(c))?;
        if processes {
            write!(out, "{process:<pw$} ")?;
        }
        write!(out, "{:>7} {:>7}", bytes(c.bytes_sent), bytes(c.bytes_received))?;
        if show_verdicts {
            let v = c.verdict();
            write!(out, " {:<7}", v.as_ref().map_or("-", |v| v.verdict))?;
            if let Some(n) = now {
                write!(out, " {:<7}", n[i].as_ref().map_or("-", |v| v.verdict))?;
            }
            write!(out, " {}", v.map_or_else(|| "-".to_string(), |v| v.decider_text()))?;
        }
        writeln!(out)?;
    }

    let s = summarise(conns);
    writeln!(out)?;
    writeln!(
        out,
        "{} sockets ({} tcp, {} udp): {} outgoing, {} incoming, {} listening, {} unconnected",
        s.sockets, s.tcp, s.udp, s.outgoing, s.incoming, s.listening, s.unconnected
    )?;
    if processes {
        writeln!(out, "{} with a known process ({} processes, {} descriptors read)", s.with_process, snap.scan.processes, snap.scan.descriptors)?;
    }
    match judge {
        None => writeln!(out, "no verdicts: no active policy here, or it could not be read (give --policy FILE to judge by a file)")?,
        Some(j) => {
            let what = if is_candidate { "candidate policy" } else { "active policy" };
            writeln!(
                out,
                "{what} {} (sha256 {}{}): {} outgoing allowed, {} denied",
                j.info.path,
                short(&j.info.sha256),
                if j.info.changed_since_apply { ", changed since it was applied" } else { "" },
                s.allowed,
                s.denied
            )?;
        }
    }
    if let (Some(cut), Some(j)) = (cut, judge) {
        let n = cut.live.survey.denied.len();
        for e in cut.live.conntrack_error.iter().chain(&cut.live.routes_error) {
            writeln!(out, "({e})")?;
        }
        if n == 0 {
            writeln!(out, "{} would deny none of the live connections ({} outgoing sockets)", j.info.path, s.outgoing)?;
        } else {
            writeln!(
                out,
                "{} would deny {n} live connection(s){}:",
                j.info.path,
                cut.now_allowed.map(|k| format!(" ({k} of them allowed by the active policy)")).unwrap_or_default()
            )?;
            for line in crate::flows::flow_lines(cut.live) {
                writeln!(out, "{line}")?;
            }
            writeln!(
                out,
                "applied without --cut, {}; `leash apply --cut` ends them",
                crate::flows::left_running(&j.policy)
            )?;
        }
    }
    Ok(())
}
