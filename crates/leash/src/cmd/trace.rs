//! `leash trace`: "why is my connection blocked?" on the live system. Traces the packets that
//! match --to, --port and --uid through table inet leash and prints, per packet, the rules it
//! passed, the rule that decided and the verdict (see `kernel::trace` and `observe::trace`).
//!
//! Output: one line per packet on stdout (JSON lines with --json); what is being traced, re-applies
//! noticed on the way and the closing summary go to stderr. The tracing chain is removed when
//! --seconds or --count is reached, on SIGINT or SIGTERM, when stdout closes, and on errors.

use crate::exit::{EXIT_OK, UsageError, require_root};
use anyhow::{Context, Result};
use ipnet::IpNet;
use kernel::trace::{Error as TraceError, Refresh, TRACE_CHAIN, TRACE_PRIORITY, TraceFilter, Tracer};
use observe::trace::{Assembler, ChainEnd, Explanation, PacketTrace};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Arguments of `leash trace`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trace only packets to this address or network (IPv4 or IPv6; default: any destination).
    #[arg(long, value_name = "ADDR[/LEN]")]
    pub to: Option<String>,
    /// Trace only packets to this destination port (the transport header's destination port:
    /// TCP, UDP and other protocols with ports).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Trace only packets of sockets owned by this user (name or numeric uid).
    #[arg(long, value_name = "USER")]
    pub uid: Option<String>,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: Option<u64>,
    /// Stop after this many packets.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// How long to wait for events between checks of the stop conditions.
const TICK: Duration = Duration::from_millis(200);
/// A packet without events for this long is printed as it is (incomplete): another table
/// dropped it before leash's chains saw it, or its events were lost.
const IDLE: Duration = Duration::from_millis(500);
/// How often to check whether the table was applied anew (which removes the tracing chain).
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Set by SIGINT and SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM end the session cleanly (the chain is removed). Without `SA_RESTART`, so
/// the wait for events returns at once.
fn catch_signals() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot install signal handlers");
        }
    }
    Ok(())
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// `ADDR` or `ADDR/LEN`, host bits cleared.
fn parse_to(s: &str) -> Result<IpNet> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(a.into());
    }
    s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
        usage(format!(
            "invalid --to {s:?}: expected ADDR or ADDR/LEN (e.g. 203.0.113.9, 198.51.100.0/24, 2001:db8::/32)"
        ))
    })
}

fn parse_uid(s: &str) -> Result<u32> {
    crate::system::user_id(s).ok_or_else(|| usage(format!("unknown user {s:?} for --uid")))
}

/// Why the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Signal,
    Time,
    Count,
    /// stdout was closed (e.g. `| head`).
    Closed,
}

pub fn run(a: &Args, json: bool) -> Result<u8> {
    let daddr = a.to.as_deref().map(parse_to).transpose()?;
    let uid = a.uid.as_deref().map(parse_uid).transpose()?;
    let filter = TraceFilter::new(daddr, uid, a.port);
    require_root("trace")?;
    catch_signals()?;
    let mut tracer = Tracer::start(filter).map_err(|e| match e {
        TraceError::NoTable => anyhow::anyhow!("{e}; nothing was changed"),
        e => anyhow::Error::new(e).context("cannot start tracing; nothing was changed"),
    })?;
    if daddr.is_none() && uid.is_none() && a.port.is_none() {
        eprintln!("leash: warning: no --to, --port or --uid: every packet this host sends is traced");
    }
    eprintln!(
        "leash: tracing `{}` in table inet leash (chain {TRACE_CHAIN}, priority {TRACE_PRIORITY}) {}",
        filter.nft_rule(),
        match (a.seconds, a.count) {
            (Some(s), Some(c)) => format!("for {s} s or {c} packet(s)"),
            (Some(s), None) => format!("for {s} s; Ctrl-C to stop sooner"),
            (None, Some(c)) => format!("until {c} packet(s); Ctrl-C to stop sooner"),
            (None, None) => "until Ctrl-C".into(),
        }
    );
    let started = Instant::now();
    let mut out = Printer { json, uid, limit: a.count, ifnames: HashMap::new(), printed: 0 };
    // On an error the tracer is dropped on the way out, which removes the chain too.
    let end = session(&mut tracer, a, &mut out)?;
    let lost = tracer.lost();
    let removed = tracer.stop().context("tracing ended, but removing the tracing chain failed")?;
    eprintln!(
        "leash: traced {} packet(s) in {:.1} s{}; {}",
        out.printed,
        started.elapsed().as_secs_f64(),
        match end {
            End::Signal => " (interrupted)",
            End::Closed => " (output closed)",
            End::Time | End::Count => "",
        },
        if removed {
            format!("removed chain {TRACE_CHAIN} from table inet leash")
        } else {
            format!("chain {TRACE_CHAIN} was already gone")
        }
    );
    if lost > 0 {
        eprintln!(
            "leash: warning: the kernel dropped trace events {lost} time(s) (receive buffer full): some packets are missing or incomplete"
        );
    }
    Ok(EXIT_OK)
}

fn session(tracer: &mut Tracer, a: &Args, out: &mut Printer) -> Result<End> {
    let deadline = a.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let final_chain = |t: &Tracer| t.rules().final_chain().unwrap_or(ruleset::compile::OUTPUT_CHAIN).to_string();
    let mut asm = Assembler::new(&final_chain(tracer), IDLE);
    let mut next_refresh = Instant::now() + REFRESH_EVERY;
    let end = loop {
        if STOP.load(Ordering::SeqCst) {
            break End::Signal;
        }
        let now = Instant::now();
        let wait = match deadline {
            Some(d) if now >= d => break End::Time,
            Some(d) => (d - now).min(TICK),
            None => TICK,
        };
        let mut done = Vec::new();
        for ev in tracer.wait(wait).context("reading trace events")? {
            done.extend(asm.push(ev, Instant::now()));
        }
        done.extend(asm.expire(Instant::now()));
        if !out.emit_all(done, tracer)? {
            break End::Closed;
        }
        if out.limit.is_some_and(|c| out.printed >= c) {
            break End::Count;
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + REFRESH_EVERY;
            if tracer.refresh().context("tracing stopped")? == Refresh::Reinstalled {
                asm.set_final_chain(&final_chain(tracer));
                eprintln!(
                    "leash: table inet leash was applied anew; tracing goes on in the new table (packets sent meanwhile were not traced)"
                );
            }
        }
    };
    if matches!(end, End::Signal | End::Time) {
        // Events already queued belong to packets sent before the end: show them, and what is
        // left open, as far as --count allows.
        let mut done = Vec::new();
        for ev in tracer.wait(Duration::ZERO).context("reading trace events")? {
            done.extend(asm.push(ev, Instant::now()));
        }
        done.extend(asm.finish());
        if !out.emit_all(done, tracer)? {
            return Ok(End::Closed);
        }
    }
    Ok(end)
}

/// Prints packets as lines of text or JSON.
struct Printer {
    json: bool,
    /// The uid the filter names: every traced packet's socket has it (the events do not say).
    uid: Option<u32>,
    /// --count: packets beyond it are not printed.
    limit: Option<u64>,
    ifnames: HashMap<u32, Option<String>>,
    printed: u64,
}

impl Printer {
    /// Prints packets, none beyond --count; `Ok(false)` when stdout is closed.
    fn emit_all(&mut self, packets: Vec<PacketTrace>, tracer: &Tracer) -> Result<bool> {
        let mut stdout = std::io::stdout().lock();
        for p in packets {
            if self.limit.is_some_and(|l| self.printed >= l) {
                break;
            }
            let e = observe::trace::explain(&p, tracer.rules());
            let line = if self.json { self.json_line(&p, &e).to_string() } else { self.text_line(&p, &e) };
            match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
                Ok(()) => self.printed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(false),
                Err(err) => return Err(err).context("writing to standard output"),
            }
        }
        Ok(true)
    }

    fn ifname(&mut self, index: u32) -> Option<String> {
        self.ifnames.entry(index).or_insert_with(|| ifname(index)).clone()
    }

    fn text_line(&mut self, p: &PacketTrace, e: &Explanation) -> String {
        let mut s = packet_text(p);
        if let Some(u) = self.uid {
            s.push_str(&format!(" uid {u}"));
        }
        if let Some(i) = p.oif {
            match self.ifname(i) {
                Some(n) => s.push_str(&format!(" oif {n}")),
                None => s.push_str(&format!(" oif #{i}")),
            }
        }
        s.push_str(": ");
        s.push_str(&path_text(e));
        s
    }

    fn json_line(&mut self, p: &PacketTrace, e: &Explanation) -> serde_json::Value {
        let k = p.packet.as_ref();
        json!({
            "time": jiff::Timestamp::now().to_string(),
            "trace_id": format!("{:08x}", p.id),
            "family": match k.map(|k| k.src) {
                Some(IpAddr::V4(_)) => Some("ipv4"),
                Some(IpAddr::V6(_)) => Some("ipv6"),
                None => None,
            },
            "proto": k.map(|k| k.proto_name()),
            "src": k.map(|k| k.src.to_string()),
            "sport": k.and_then(|k| k.sport),
            "dst": k.map(|k| k.dst.to_string()),
            "dport": k.and_then(|k| k.dport),
            "tcp_flags": k.and_then(|k| k.tcp_flag_names()),
            "icmp_type": k.and_then(|k| k.icmp).map(|i| i.0),
            "icmp_code": k.and_then(|k| k.icmp).map(|i| i.1),
            "uid": self.uid,
            "oif": p.oif.and_then(|i| self.ifname(i)),
            "mark": p.mark,
            "complete": p.complete,
            "verdict": e.outcome.as_ref().map(|o| o.name()),
            "chain": e.chain,
            "rule": e.rule,
            "handle": e.handle,
            "path": e.chains.iter().map(|c| json!({
                "chain": c.chain,
                "rules": c.rules.iter().map(|r| json!({
                    "rule": r.rule,
                    "matched": !r.matched.is_empty(),
                    "action": r.action(),
                    "handles": r.matched.iter().map(|(h, _)| h).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "end": match &c.end {
                    ChainEnd::Rule => "rule".to_string(),
                    ChainEnd::Policy(v) => format!("policy {}", v.name()),
                    ChainEnd::Unknown => "unknown".to_string(),
                },
            })).collect::<Vec<_>>(),
        })
    }
}

/// `tcp 192.0.2.1:40000 -> 203.0.113.9:443 syn`, `icmp 192.0.2.1 -> 203.0.113.9 type 8 code 0`.
fn packet_text(p: &PacketTrace) -> String {
    let Some(k) = &p.packet else {
        return format!("packet {:08x}", p.id);
    };
    let end = |a: IpAddr, port: Option<u16>| match (a, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let mut s = format!("{} {} -> {}", k.proto_name(), end(k.src, k.sport), end(k.dst, k.dport));
    if let Some(f) = k.tcp_flag_names() {
        s.push(' ');
        s.push_str(&f);
    }
    if let Some((t, c)) = k.icmp {
        s.push_str(&format!(" type {t} code {c}"));
    }
    s
}

/// `@loopback no, @established no, web -> accept`; chains other than the deciding one are shown
/// (prefixed with their name) only when a rule in them matched.
fn path_text(e: &Explanation) -> String {
    let shown: Vec<_> = e
        .chains
        .iter()
        .filter(|c| e.chain.as_deref() == Some(c.chain.as_str()) || c.rules.iter().any(|r| !r.matched.is_empty()))
        .collect();
    let mut parts = Vec::new();
    for c in &shown {
        let mut items: Vec<String> = c
            .rules
            .iter()
            .map(|r| match r.action() {
                None => format!("{} no", r.rule),
                Some(a) if a == "continue" => format!("{} matched", r.rule),
                Some(a) => format!("{} -> {a}", r.rule),
            })
            .collect();
        if let ChainEnd::Policy(v) = &c.end {
            items.push(format!("policy {}", v.name()));
        }
        let body = items.join(", ");
        parts.push(if shown.len() > 1 { format!("{}: {body}", c.chain) } else { body });
    }
    let mut s = parts.join("; ");
    if e.outcome.is_none() {
        if !s.is_empty() {
            s.push_str("; ");
        }
        s.push_str("no verdict from table inet leash seen (dropped earlier by another table, or events lost)");
    }
    s
}

/// The name of an interface of this network namespace.
fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::trace::Verdict;
    use observe::trace::{ChainPath, Outcome, Packet, PathRule};

    fn rule(name: &str, hit: Option<Verdict>) -> PathRule {
        PathRule {
            rule: name.into(),
            matched: hit.into_iter().map(|v| (1, v)).collect(),
            reject: name == "@default",
            redirect: false,
        }
    }

    #[test]
    fn to_takes_addresses_and_networks() {
        assert_eq!(parse_to("203.0.113.9").unwrap().to_string(), "203.0.113.9/32");
        assert_eq!(parse_to("198.51.100.7/24").unwrap().to_string(), "198.51.100.0/24");
        assert_eq!(parse_to("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
        let e = parse_to("example.com").unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
        assert_eq!(parse_uid("1000").unwrap(), 1000);
        assert_eq!(parse_uid("root").unwrap(), 0);
        assert!(parse_uid("no-such-user-leash").is_err());
    }

    #[test]
    fn lines_name_the_rules_passed_and_the_decision() {
        let e = Explanation {
            outcome: Some(Outcome::Reject),
            chain: Some("output".into()),
            rule: Some("@default".into()),
            handle: Some(9),
            chains: vec![
                ChainPath {
                    chain: "dns-redirect".into(),
                    rules: vec![rule("@dns-redirect", None)],
                    end: ChainEnd::Policy(Verdict::Accept),
                },
                ChainPath {
                    chain: "output".into(),
                    rules: vec![rule("@loopback", None), rule("web", None), rule("@default", Some(Verdict::Drop))],
                    end: ChainEnd::Rule,
                },
            ],
        };
        assert_eq!(path_text(&e), "@loopback no, web no, @default -> reject");
        let p = PacketTrace {
            id: 1,
            packet: Some(Packet {
                src: "2001:db8::1".parse().unwrap(),
                dst: "2001:db8::2".parse().unwrap(),
                proto: 6,
                sport: Some(40000),
                dport: Some(443),
                tcp_flags: Some(0x12),
                icmp: None,
            }),
            nfproto: None,
            oif: None,
            mark: None,
            steps: vec![],
            complete: true,
        };
        assert_eq!(packet_text(&p), "tcp [2001:db8::1]:40000 -> [2001:db8::2]:443 syn,ack");
        let incomplete = Explanation { outcome: None, chain: None, rule: None, handle: None, chains: vec![] };
        assert!(path_text(&incomplete).starts_with("no verdict"));
    }
}
