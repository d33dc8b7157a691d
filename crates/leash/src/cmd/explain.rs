//! `leash explain`: evaluate one connection against a policy offline: the verdict, the deciding
//! rule, and why each earlier rule did not match.

use crate::exit::{EXIT_OK, EXIT_POLICY, usage};
use crate::load::{self, Loaded};
use crate::output::print_json;
use anyhow::Result;
use clap::ValueEnum;
use policy::{Connection, Decider, Explanation, Policy};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Arguments of `leash explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    pub policy: PathBuf,
    /// Destination: ADDR, ADDR:PORT or [IPV6]:PORT.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub to: String,
    /// The name the destination was looked up as through leash's DNS forwarder (domain rules
    /// match only such connections), e.g. --name api.example.com --to 192.0.2.10:443.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Protocol of the connection.
    #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
    pub proto: ProtoArg,
    /// User making the connection (name or uid; default: root).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Group of the socket (name or gid; default: the user's primary group).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// When the connection happens (default: now): an instant (RFC 3339, e.g.
    /// 2027-01-04T09:30:00Z), or a wall-clock time in the policy's time zone
    /// ("2027-01-04 09:30", "Mon 09:30"). Only rules with `when` windows depend on it.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// The systemd service making the connection (its cgroup is system.slice/SERVICE).
    #[arg(long, value_name = "UNIT", conflicts_with = "cgroup")]
    pub service: Option<String>,
    /// The cgroup v2 path of the process making the connection, e.g. /system.slice/nginx.service.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// A forwarded connection from a workload (container, VM, namespace routed through the host)
    /// with this source address, instead of one of the host's own. User, group, service and
    /// cgroup do not apply to it (a forwarded packet has no local socket).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["user", "group", "service", "cgroup"])]
    pub from: Option<IpAddr>,
    /// The interface the forwarded connection enters on (default: an example name of the
    /// policy's first [forward] interface pattern, e.g. docker0 or br-0).
    #[arg(long, value_name = "IFACE", requires = "from")]
    pub iif: Option<String>,
    /// The interface the forwarded connection leaves on (default: not a workload interface).
    #[arg(long, value_name = "IFACE", requires = "from")]
    pub oif: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProtoArg {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl From<ProtoArg> for policy::Proto {
    fn from(p: ProtoArg) -> Self {
        match p {
            ProtoArg::Tcp => policy::Proto::Tcp,
            ProtoArg::Udp => policy::Proto::Udp,
            ProtoArg::Icmp => policy::Proto::Icmp,
            ProtoArg::Icmpv6 => policy::Proto::Icmpv6,
        }
    }
}

/// Parses `ADDR`, `ADDR:PORT`, `[IPV6]:PORT` or a bare IPv6 address.
fn parse_endpoint(s: &str) -> Result<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    usage!("invalid destination {s:?}: expected ADDR, ADDR:PORT or [IPV6]:PORT")
}

pub fn run(a: &Args, json: bool) -> Result<u8> {
    use policy::Resolver;
    crate::exit::end_quietly_on_closed_pipe();
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
    let uid = match &a.user {
        Some(u) => match crate::system::user_id(u) {
            Some(id) => id,
            None => usage!("unknown user {u:?}"),
        },
        None => 0,
    };
    let gid = match &a.group {
        Some(g) => match crate::system::group_id(g) {
            Some(id) => id,
            None => usage!("unknown group {g:?}"),
        },
        None => crate::system::SystemResolver::default().primary_group(uid).unwrap_or(if uid == 0 { 0 } else { uid }),
    };
    let name = match &a.name {
        Some(n) => match policy::dns::parse_domain(n) {
            Ok((n, false)) => Some(n),
            Ok((_, true)) => usage!("--name {n:?}: give the name that was looked up, not a wildcard"),
            Err(m) => usage!("--name: {m}"),
        },
        None => None,
    };
    let iface = |flag: &str, v: &Option<String>| -> Result<Option<String>> {
        match v.as_deref().map(policy::IfacePattern::parse) {
            None => Ok(None),
            Some(Ok(p)) if !p.wildcard => Ok(Some(p.name)),
            Some(Ok(_)) => usage!("--{flag}: give one interface name, not a pattern"),
            Some(Err(m)) => usage!("--{flag}: {m}"),
        }
    };
    let from = match a.from {
        Some(src) => {
            if src.is_ipv4() != dst.is_ipv4() {
                usage!("--from {src} and --to {dst} are of different address families");
            }
            let iif = iface("iif", &a.iif)?.or_else(|| p.workload_interfaces().first().map(policy::IfacePattern::example));
            Some(policy::Forwarded { src, iif, oif: iface("oif", &a.oif)? })
        }
        None => None,
    };
    let conn = Connection { proto, dst, port, uid, gid, name, cgroup, at: Some(local), from };
    let e = policy::explain(&p, &conn);
    print_explanation(&l, &p, &conn, &e, at, json);
    Ok(EXIT_OK)
}

fn decider_text(p: &Policy, d: Decider) -> String {
    match d {
        Decider::Loopback => "allow_loopback (destination is a loopback address)".into(),
        Decider::Rule(i) => format!("rule `{}`", p.rules[i].name),
        Decider::Default => "the default (`outbound`, no rule matched)".into(),
        Decider::DnsBypass => "the DNS bypass control: only leash's forwarder may query other resolvers".into(),
        Decider::DnsRedirect => {
            "the DNS bypass control: the query is redirected to leash's forwarder on loopback".into()
        }
        Decider::NotGoverned => {
            "no rule: forwarded traffic that is not from a [forward] workload interface or source (or all of it, \
             with mode = \"ignore\") is not leash's to decide; leash lets it pass and the other tables decide"
                .into()
        }
        Decider::BetweenWorkloads => {
            "no rule: traffic between two workloads is left to the other tables (Docker's own isolation)".into()
        }
        Decider::NameRefused(i) => {
            format!("rule `{}`: the forwarder answers NXDOMAIN for the name, so no connection is made", p.rules[i].name)
        }
    }
}

fn rule_position(l: &Loaded, p: &Policy, i: usize) -> String {
    let (line, col) = policy::diag::line_col(&l.src, p.rules[i].span.start);
    format!("{}:{line}:{col}", l.display_name())
}

fn print_explanation(
    l: &Loaded,
    p: &Policy,
    c: &Connection,
    e: &Explanation,
    at: Option<jiff::civil::DateTime>,
    json: bool,
) {
    let who = match &c.from {
        Some(f) => format!(
            "forwarded from {}{}{}",
            f.src,
            f.iif.as_ref().map(|i| format!(" via {i}")).unwrap_or_default(),
            f.oif.as_ref().map(|o| format!(" out {o}")).unwrap_or_default()
        ),
        None => format!("as uid {} gid {}", c.uid, c.gid),
    };
    let conn_text = format!(
        "{} to {}{}{} {who}",
        c.proto.as_str(),
        c.name.as_ref().map(|n| format!("{n} = ")).unwrap_or_default(),
        c.dst,
        c.port.map(|p| format!(" port {p}")).unwrap_or_default(),
    );
    // The time shows when it was asked for or when windows decide; the cgroup when given.
    let shown_time = at.or(c.at.filter(|_| p.rules.iter().any(|r| r.cond.when.is_some())));
    let conn_text = format!(
        "{conn_text}{}{}",
        c.cgroup.as_ref().map(|g| format!(" in cgroup /{g}")).unwrap_or_default(),
        shown_time
            .map(|t| format!(
                " at {} {}",
                policy::WEEKDAYS[t.weekday().to_sunday_zero_offset() as usize],
                t.strftime("%Y-%m-%d %H:%M:%S")
            ))
            .unwrap_or_default()
    );
    let limits = match e.decider {
        Decider::Rule(i) => limits_text(p, &p.rules[i]),
        _ => None,
    };
    if json {
        print_json(&json!({
            "connection": {
                "proto": c.proto.as_str(), "to": c.dst.to_string(), "name": c.name, "port": c.port,
                "uid": c.uid, "gid": c.gid, "cgroup": c.cgroup, "at": c.at.map(|t| t.to_string()),
                "from": c.from.as_ref().map(|f| json!({"source": f.src.to_string(), "iif": f.iif, "oif": f.oif})),
                "time_zone": p.defaults.timezone.as_deref().unwrap_or("UTC"),
            },
            "limits": limits,
            "verdict": e.verdict.as_str(),
            "decided_by": match e.decider {
                Decider::Loopback => json!({"kind": "loopback"}),
                Decider::Rule(i) => json!({"kind": "rule", "rule": p.rules[i].name, "index": i, "position": rule_position(l, p, i)}),
                Decider::Default => json!({"kind": "default"}),
                Decider::DnsBypass => json!({"kind": "dns-bypass"}),
                Decider::DnsRedirect => json!({"kind": "dns-redirect"}),
                Decider::NotGoverned => json!({"kind": "not-governed"}),
                Decider::BetweenWorkloads => json!({"kind": "between-workloads"}),
                Decider::NameRefused(i) => json!({"kind": "name-refused", "rule": p.rules[i].name, "index": i, "position": rule_position(l, p, i)}),
            },
            "not_matched": e.misses.iter().map(|(i, m)| json!({
                "rule": p.rules[*i].name, "index": i, "position": rule_position(l, p, *i), "reason": m.to_string(),
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("{}: {}", e.verdict.as_str().to_uppercase(), conn_text);
    println!("decided by {}", decider_text(p, e.decider));
    if let Decider::Rule(i) | Decider::NameRefused(i) = e.decider {
        println!("  at {}", rule_position(l, p, i));
    }
    if let Some(l) = &limits {
        println!("  {l}");
    }
    if !e.misses.is_empty() {
        println!("earlier rules that did not match:");
        for (i, m) in &e.misses {
            println!("  {:<24} {}", p.rules[*i].name, m);
        }
    }
}

/// What an allow rule's `rate` and `max_connections` let through, for explain: the verdict holds
/// only below them.
fn limits_text(p: &Policy, r: &policy::Rule) -> Option<String> {
    // Every limit, so that a new one does not compile until explain says what it lets through.
    let policy::Limits { rate, max_connections, per, span: _ } = &r.limits;
    let mut parts = Vec::new();
    if let Some(rate) = rate {
        parts.push(format!("at most {rate} new connections"));
    }
    if let Some(n) = max_connections {
        parts.push(format!("at most {n} connections at once"));
    }
    if parts.is_empty() {
        return None;
    }
    let per = match per {
        policy::LimitPer::Rule => "for the whole rule",
        policy::LimitPer::Destination => "per destination",
        policy::LimitPer::User => "per user",
    };
    let above = match p.defaults.deny_with {
        policy::DenyWith::Reject => "reject",
        policy::DenyWith::Drop => "drop",
    };
    Some(format!("limited: {} {per}; above that: deny ({above})", parts.join(" and ")))
}
