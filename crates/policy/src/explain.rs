//! Which verdict a policy gives a new connection, and why: the deciding rule and, for every rule
//! before it, the first condition that did not match.
//!
//! This is the reference semantics; the nftables compiler must produce a chain that decides the
//! same way (loopback, then the rules in file order with first match winning, then the default).

use crate::model::*;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// A new connection (its first packet): the host's own (`from` is `None`), or forwarded from a
/// workload routed through the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Connection {
    pub proto: Proto,
    pub dst: IpAddr,
    /// Destination port; `None` for protocols without ports (ICMP).
    pub port: Option<u16>,
    /// User id of the socket owner.
    pub uid: u32,
    /// Group id of the socket owner.
    pub gid: u32,
    /// The name the DNS forwarder answered with `dst`, when the connection follows a lookup
    /// through it. Domain rules match only such connections.
    pub name: Option<String>,
    /// The cgroup v2 path of the socket's process, relative to the cgroup v2 root
    /// (`system.slice/nginx.service`); `None` is the root cgroup.
    pub cgroup: Option<String>,
    /// The local wall-clock time of the connection in the policy's time zone
    /// ([`Policy::local_time`] turns an instant into it). Rules with `when` windows
    /// match only when it is given and inside one of them.
    pub at: Option<jiff::civil::DateTime>,
    /// A forwarded connection: where it comes from. `uid`, `gid` and `cgroup` mean nothing for
    /// it (a forwarded packet has no local socket).
    pub from: Option<Forwarded>,
}

/// How a forwarded connection passes the host: its source address and interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Forwarded {
    pub src: IpAddr,
    /// The interface it enters on (`None`: unknown; then only source networks make it a
    /// workload's, and no interface of a rule's `from` matches it).
    pub iif: Option<String>,
    /// The interface it leaves on (`None`: unknown; then only the destination address tells a
    /// connection to another workload).
    pub oif: Option<String>,
}

// Here rather than in the model: an expectation is data, a connection is what `explain` decides.
impl Expect {
    /// The connection this expectation describes, ready for [`explain()`].
    pub fn connection(&self) -> Connection {
        Connection {
            proto: self.proto,
            dst: self.to,
            port: self.port,
            uid: self.uid,
            gid: self.gid,
            name: self.name.clone(),
            cgroup: self.cgroup.clone(),
            at: self.at,
            from: self.from.map(|src| Forwarded { src, iif: self.iif.clone(), oif: None }),
        }
    }
}

/// What decided a connection's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decider {
    /// `allow_loopback` and a destination in 127.0.0.0/8 or ::1.
    Loopback,
    /// The rule at this index of [`Policy::rules`] (the first that matched).
    Rule(usize),
    /// DNS (port 53 or 853) to a resolver other than the forwarder, denied by the bypass control.
    DnsBypass,
    /// DNS to port 53 elsewhere, redirected to the forwarder on loopback by the bypass control
    /// (the packet goes to the forwarder, not to the address it was sent to).
    DnsRedirect,
    /// The connection never happens: the forwarder answers NXDOMAIN for its name because this
    /// rule (a deny rule with no other condition) is the first domain rule naming it.
    NameRefused(usize),
    /// No rule matched; `defaults.outbound` applied.
    Default,
    /// A forwarded connection the policy does not judge: `[forward] mode = "ignore"`, or it does
    /// not come from a workload interface or source. leash's forward chain accepts it; other
    /// tables (Docker's, the administrator's) still decide.
    NotGoverned,
    /// A forwarded connection from one workload to another (it leaves on a workload interface or
    /// goes to a workload source): left to the other tables, like [`Decider::NotGoverned`].
    BetweenWorkloads,
}

/// The verdict for a connection, with the reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: Action,
    pub decider: Decider,
    /// For every rule before the deciding one (all rules when the default decided; none when
    /// loopback decided), in order: the rule's index and the first condition it failed.
    pub misses: Vec<(usize, Miss)>,
}

/// The first condition of a rule a connection did not satisfy. Conditions are checked in the
/// order proto, port, to, user, group; later kinds of condition will add variants.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Miss {
    /// The connection's protocol is not among the rule's (effective) protocols.
    Proto {
        proto: Proto,
        allowed: Vec<Proto>,
        /// The rule names no protocol; TCP and UDP are implied by its `ports`.
        implied_by_ports: bool,
    },
    /// The rule has ports and the connection has none (ICMP).
    NoPort { ports: Vec<PortRange> },
    /// The connection's port is not in the rule's ports.
    Port { port: u16, ports: Vec<PortRange> },
    /// The destination is in none of the rule's networks, sets or countries, and was not answered
    /// for any of its domain names (or the rebinding guard keeps it out of the rule's sets).
    To {
        dst: IpAddr,
        networks: Vec<IpNet>,
        domains: Vec<DomainPattern>,
        /// Names of the rule's `set:NAME` destinations.
        sets: Vec<String>,
        countries: Vec<String>,
        name: Option<String>,
        guarded: bool,
    },
    /// The connection's uid is not among the rule's users.
    User { uid: u32, users: Vec<Principal> },
    /// The connection's gid is not among the rule's groups.
    Group { gid: u32, groups: Vec<Principal> },
    /// The connection's process is in none of the rule's cgroups (services).
    Cgroup { cgroup: Option<String>, cgroups: Vec<CgroupMatch> },
    /// The connection's time is outside every window of the rule (`at` is `None` when no
    /// time was given).
    Time { at: Option<jiff::civil::DateTime>, windows: Vec<Window> },
    /// The rule has `from` and the connection is the host's own (`from: None`) or comes from
    /// none of its sources and interfaces.
    From { from: Option<Forwarded>, sources: FromMatch },
    /// The connection is forwarded and the rule needs a local socket (`key` is `user`, `group`,
    /// `service`/`cgroup` or `limit_per = "user"`), which a forwarded packet does not have.
    NoSocket { key: &'static str },
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Proto { proto, allowed, implied_by_ports } => {
                write!(f, "proto {} not in [{}]", proto.as_str(), join(allowed.iter().map(|p| p.as_str())))?;
                if *implied_by_ports {
                    write!(f, " (implied by ports)")?;
                }
                Ok(())
            }
            Miss::NoPort { ports } => write!(f, "no port, but the rule needs port {}", list(ports.iter())),
            Miss::Port { port, ports } => write!(f, "port {port} not in {}", list(ports.iter())),
            Miss::To { dst, networks, domains, sets, countries, name, guarded } => {
                let all: Vec<String> = networks
                    .iter()
                    .map(|n| NetDisplay(n).to_string())
                    .chain(domains.iter().map(|d| d.to_string()))
                    .chain(sets.iter().map(|s| format!("set:{s}")))
                    .chain(countries.iter().map(|c| format!("country {c}")))
                    .collect();
                match name {
                    Some(n) if *guarded => {
                        write!(f, "{n} ({dst}) matches, but {dst} is private and the rule lacks allow_private")
                    }
                    Some(n) => write!(f, "{n} ({dst}) not in {}", list(all.iter())),
                    None => write!(f, "{dst} not in {}", list(all.iter())),
                }
            }
            Miss::User { uid, users } => write!(f, "uid {uid} not in {}", list(users.iter())),
            Miss::Group { gid, groups } => write!(f, "gid {gid} not in {}", list(groups.iter())),
            Miss::Cgroup { cgroup, cgroups } => {
                let shown: Vec<String> = cgroups
                    .iter()
                    .map(|c| if c.id.is_none() { format!("{} (missing at load)", c.written) } else { c.written.clone() })
                    .collect();
                write!(f, "cgroup /{} not in {}", cgroup.as_deref().unwrap_or("").trim_matches('/'), list(shown.iter()))
            }
            Miss::Time { at: Some(at), windows } => {
                write!(f, "{} {} is outside {}", WEEKDAYS[at.weekday().to_sunday_zero_offset() as usize], at.strftime("%Y-%m-%d %H:%M:%S"), list(windows.iter()))
            }
            Miss::Time { at: None, windows } => write!(f, "no time given for the windows {}", list(windows.iter())),
            Miss::From { from: None, .. } => {
                write!(f, "the host's own connection, and `from` matches forwarded connections only")
            }
            Miss::From { from: Some(c), sources } => {
                let all: Vec<String> = sources
                    .nets
                    .iter()
                    .map(|n| NetDisplay(n).to_string())
                    .chain(sources.interfaces.iter().map(|i| i.to_string()))
                    .collect();
                let via = c.iif.as_ref().map(|i| format!(" via {i}")).unwrap_or_default();
                write!(f, "forwarded from {}{via}, not from {}", c.src, list(all.iter()))
            }
            Miss::NoSocket { key } => {
                write!(f, "forwarded, so it has no local socket to match `{key}` (such rules never match forwarded traffic)")
            }
        }
    }
}

/// A network as an operator wrote it: a host network shows as the bare address.
struct NetDisplay<'a>(&'a IpNet);

impl fmt::Display for NetDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// A comma-separated list, or "(nothing)" for an empty one (a rule that can never match).
fn list<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let s = join(items);
    if s.is_empty() { "(nothing)".to_string() } else { s }
}

/// Whether `allow_loopback` covers the destination.
pub fn is_loopback(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(a) => a.octets()[0] == 127,
        IpAddr::V6(a) => a.is_loopback(),
    }
}

/// Decides a new connection the way the compiled ruleset does, and says why.
pub fn explain(policy: &Policy, conn: &Connection) -> Explanation {
    explain_with(policy, conn, &|_, _| false)
}

/// [`explain`] for a connection seen on a live host, whose name is not known but whose
/// destination may already be in a domain rule's set: `in_domain_set(rule_index, addr)` says
/// whether the forwarder put `addr` into that rule's set (as `leash conns` reads from the
/// kernel). A domain rule matches when the connection's name matches it or its set holds the
/// address, which is what the kernel's lookup does.
pub fn explain_with(policy: &Policy, conn: &Connection, in_domain_set: &dyn Fn(usize, IpAddr) -> bool) -> Explanation {
    // A refused name never gets an address, so there is no connection for anything to decide.
    if let Some(name) = &conn.name
        && let Some(i) = crate::dns::decide_name(policy, name).refuse
    {
        return Explanation { verdict: Action::Deny, decider: Decider::NameRefused(i), misses: Vec::new() };
    }
    if let Some(f) = &conn.from {
        // The forward chain: only new connections from workloads meet the policy, and not those
        // between workloads. Loopback does not apply (no forwarded packet goes to loopback).
        let decider = if !policy.is_workload(f.src, f.iif.as_deref()) {
            Some(Decider::NotGoverned)
        } else if policy.workload_sources().iter().any(|n| n.contains(&conn.dst))
            || f.oif.as_deref().is_some_and(|o| policy.workload_interfaces().iter().any(|p| p.matches(o)))
        {
            Some(Decider::BetweenWorkloads)
        } else {
            None
        };
        if let Some(decider) = decider {
            return Explanation { verdict: Action::Allow, decider, misses: Vec::new() };
        }
    } else if policy.defaults.allow_loopback && is_loopback(conn.dst) {
        return Explanation { verdict: Action::Allow, decider: Decider::Loopback, misses: Vec::new() };
    }
    // Established traffic never reaches this point: it is not a new connection, so
    // `allow_established` has no say here.
    let mut misses = Vec::new();
    if let Some(decider) = dns_bypass(policy, conn) {
        let verdict = if decider == Decider::DnsRedirect { Action::Allow } else { Action::Deny };
        return Explanation { verdict, decider, misses: Vec::new() };
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        let in_set = !rule.cond.domains.is_empty() && in_domain_set(i, conn.dst);
        match first_miss_in(policy, rule, conn, in_set) {
            None => return Explanation { verdict: rule.action, decider: Decider::Rule(i), misses },
            Some(m) => misses.push((i, m)),
        }
    }
    Explanation { verdict: policy.defaults.outbound, decider: Decider::Default, misses }
}

/// What the DNS bypass control does with a connection, if it applies: with domain rules, DNS
/// that does not go to the forwarder is redirected to it (port 53, on a family the forwarder
/// listens on over loopback) or denied. The forwarder's own upstream queries (its mark, its user,
/// a configured upstream) are not connections `explain` is asked about.
pub fn dns_bypass(policy: &Policy, conn: &Connection) -> Option<Decider> {
    if !policy.has_domain_rules() || policy.dns.bypass == Bypass::Off || !conn.proto.has_ports() {
        return None;
    }
    let port = conn.port?;
    if port != DNS_PORT && port != DOT_PORT {
        return None;
    }
    // A forward hook cannot redirect to the host's loopback: forwarded DNS is denied.
    if policy.dns.bypass == Bypass::Redirect
        && conn.from.is_none()
        && port == DNS_PORT
        && policy.dns.redirect_port(conn.dst.is_ipv6()).is_some()
    {
        return Some(Decider::DnsRedirect);
    }
    Some(Decider::DnsBypass)
}

/// The first condition of `rule` that `conn` does not satisfy, or `None` when the rule matches.
/// `policy` is the rule's policy (for its named sets).
pub fn first_miss(policy: &Policy, rule: &Rule, conn: &Connection) -> Option<Miss> {
    first_miss_in(policy, rule, conn, false)
}

/// [`first_miss`], where `in_domain_set` says the destination is already in the rule's domain
/// sets (see [`explain_with`]).
fn first_miss_in(policy: &Policy, rule: &Rule, conn: &Connection, in_domain_set: bool) -> Option<Miss> {
    let Conditions {
        protos,
        ports,
        ports_span: _,
        to,
        to_span: _,
        domains,
        allow_private: _, // through `dns::admits`
        sets,
        countries,
        country_ranges,
        users,
        groups,
        cgroups,
        cgroups_span: _,
        when,
        when_span: _,
        from,
        from_span: _,
    } = &rule.cond;
    // A limited rule decides every connection it matches (over the limit it denies); whether a
    // connection is over it depends on counters in the kernel, which explain does not see. A
    // per-user limit needs the socket's owner, which a forwarded packet does not have.
    let Limits { rate: _, max_connections: _, per, span: _ } = &rule.limits;
    let forwarded = conn.from.is_some();
    if let Some(allowed) = rule.effective_protos()
        && !allowed.contains(&conn.proto)
    {
        return Some(Miss::Proto { proto: conn.proto, allowed, implied_by_ports: protos.is_none() });
    }
    if let Some(ports) = ports {
        match conn.port {
            None => return Some(Miss::NoPort { ports: ports.clone() }),
            Some(port) if !ports.iter().any(|r| r.contains(port)) => {
                return Some(Miss::Port { port, ports: ports.clone() });
            }
            Some(_) => {}
        }
    }
    if let Some(networks) = to {
        // `IpNet::contains` is false across families: an IPv4 network never holds an IPv6 address.
        let by_network = networks.iter().any(|n| n.contains(&conn.dst));
        let name_matches = conn.name.as_deref().is_some_and(|n| {
            let n = crate::dns::normalize_name(n);
            domains.iter().any(|d| d.matches(&n))
        });
        // Explain cannot know the host's own addresses; the forwarder also keeps those out.
        let admitted = (name_matches && crate::dns::admits(rule, conn.dst, false)) || in_domain_set;
        let by_set = sets.iter().any(|r| policy.sets.get(r.index).is_some_and(|s| s.ranges.contains(conn.dst)));
        let by_country = country_ranges.contains(conn.dst);
        if !by_network && !admitted && !by_set && !by_country {
            return Some(Miss::To {
                dst: conn.dst,
                networks: networks.clone(),
                domains: domains.clone(),
                sets: sets.iter().filter_map(|r| policy.sets.get(r.index).map(|s| s.name.clone())).collect(),
                countries: countries.iter().map(|c| c.0.clone()).collect(),
                name: conn.name.clone(),
                guarded: name_matches,
            });
        }
    }
    if let Some(sources) = from
        && !conn.from.as_ref().is_some_and(|f| sources.matches(f.src, f.iif.as_deref()))
    {
        return Some(Miss::From { from: conn.from.clone(), sources: sources.clone() });
    }
    for (on, key) in [
        (users.is_some(), "user"),
        (groups.is_some(), "group"),
        (cgroups.is_some(), "service`/`cgroup"),
        (*per == LimitPer::User && (rule.limits.rate.is_some() || rule.limits.max_connections.is_some()), "limit_per = \"user\""),
    ] {
        if forwarded && on {
            return Some(Miss::NoSocket { key });
        }
    }
    if let Some(users) = users
        && !users.iter().any(|u| u.id == conn.uid)
    {
        return Some(Miss::User { uid: conn.uid, users: users.clone() });
    }
    if let Some(groups) = groups
        && !groups.iter().any(|g| g.id == conn.gid)
    {
        return Some(Miss::Group { gid: conn.gid, groups: groups.clone() });
    }
    if let Some(cgroups) = cgroups {
        // A cgroup that did not exist when the policy was loaded has no kernel rule.
        let inside = conn.cgroup.as_deref().unwrap_or("");
        if !cgroups.iter().any(|c| c.id.is_some() && c.covers(inside)) {
            return Some(Miss::Cgroup { cgroup: conn.cgroup.clone(), cgroups: cgroups.clone() });
        }
    }
    if let Some(windows) = when {
        let open = conn.at.is_some_and(|at| {
            let second = week_second(at);
            windows.iter().any(|w| w.contains(second))
        });
        if !open {
            return Some(Miss::Time { at: conn.at, windows: windows.clone() });
        }
    }
    None
}

/// Seconds since Sunday 00:00:00 of a local time's week.
pub fn week_second(at: jiff::civil::DateTime) -> u32 {
    at.weekday().to_sunday_zero_offset() as u32 * 86_400
        + at.hour() as u32 * 3600
        + at.minute() as u32 * 60
        + at.second() as u32
}
