//! The validated policy: what a policy file means, with the source position of everything a diagnostic may point at.
//!
//! It uses no other module of the crate but `ranges`: parsing, `explain`, the lints, the
//! forwarder's decisions and the time arithmetic all build on it, never the other way round.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;

/// A byte range into the policy text; diagnostics turn it into line and column.
pub type Span = Range<usize>;

/// A whole validated policy (version 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub version: u32,
    pub defaults: Defaults,
    pub rules: Vec<Rule>,
    pub expects: Vec<Expect>,
    /// The `[dns]` section: the forwarder that fills the sets of domain rules.
    pub dns: DnsConfig,
    /// The `[[set]]` tables: named address lists read from files, used as `to = ["set:NAME"]`.
    pub sets: Vec<NamedSet>,
    /// The `[countries]` section: the country database `to_country` rules read.
    pub countries: Option<CountryDbRef>,
    /// The `[forward]` section: which forwarded traffic (containers, VMs, namespaces routed
    /// through the host) the policy governs.
    pub forward: ForwardConfig,
}

/// One `[[set]]`: a named address list loaded from a file (one address, network or range a
/// line), merged. Its contents can be replaced in the kernel later without touching the rules
/// (`leash set update`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedSet {
    pub name: String,
    pub name_span: Span,
    /// The file as written in the policy (relative to the policy's directory).
    pub file: String,
    pub file_span: Span,
    /// The merged contents, shared with every rule that uses the set.
    pub ranges: std::sync::Arc<crate::ranges::AddrRanges>,
    /// Entries (lines with an address) the file held before merging.
    pub entries: usize,
}

/// The `[countries]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct CountryDbRef {
    /// The database file as written (mmdb, or a DB-IP / GeoLite2 CSV file).
    pub database: String,
    pub span: Span,
    /// The GeoLite2 locations CSV, when `database` is a GeoLite2 blocks CSV.
    pub locations: Option<String>,
}

impl Policy {
    /// Whether the policy governs forwarded traffic at all (`[forward] mode = "govern"`).
    pub fn governs_forwarded(&self) -> bool {
        self.forward.mode == ForwardMode::Govern
    }

    /// The input interfaces whose new forwarded connections the policy judges: `[forward]
    /// interfaces` and the interfaces of every rule's `from` (a rule about a workload makes it
    /// one), without duplicates, in that order. Empty when forwarded traffic is ignored.
    pub fn workload_interfaces(&self) -> Vec<IfacePattern> {
        if !self.governs_forwarded() {
            return Vec::new();
        }
        let mut out: Vec<IfacePattern> = Vec::new();
        let rules = self.rules.iter().filter_map(|r| r.cond.from.as_ref()).flat_map(|f| f.interfaces.iter());
        for p in self.forward.interfaces.iter().chain(rules) {
            if !out.iter().any(|q| q.name == p.name && q.wildcard == p.wildcard) {
                out.push(p.clone());
            }
        }
        out
    }

    /// The source networks whose new forwarded connections the policy judges: `[forward]
    /// sources` and the networks of every rule's `from`. Empty when forwarded traffic is ignored.
    pub fn workload_sources(&self) -> Vec<IpNet> {
        if !self.governs_forwarded() {
            return Vec::new();
        }
        let mut out: Vec<IpNet> = self.forward.sources.clone();
        out.extend(self.rules.iter().filter_map(|r| r.cond.from.as_ref()).flat_map(|f| f.nets.iter().copied()));
        out.sort();
        out.dedup();
        out
    }

    /// Whether a forwarded packet entering on `iif` (when known) from `src` is one the policy
    /// judges: it comes from a workload interface or a workload source network.
    pub fn is_workload(&self, src: IpAddr, iif: Option<&str>) -> bool {
        iif.is_some_and(|i| self.workload_interfaces().iter().any(|p| p.matches(i)))
            || self.workload_sources().iter().any(|n| n.contains(&src))
    }

    /// Whether any rule names a domain, which is what makes the DNS forwarder (and the DNS bypass
    /// control) part of the policy.
    pub fn has_domain_rules(&self) -> bool {
        self.rules.iter().any(|r| !r.cond.domains.is_empty())
    }
}

/// Verdict of a rule or of the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// How denied packets are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyWith {
    /// TCP reset for TCP, ICMP(v6) administratively prohibited otherwise: callers fail fast.
    Reject,
    /// Silently discard: callers time out.
    Drop,
}

/// What `leash apply` does with live connections the new policy denies (`[defaults] on_apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnApply {
    /// List them and leave them running (until they close; their next connect is denied).
    /// The default: an apply is often run over a connection the new policy may not admit
    /// (the administrator's SSH session), and ending connections is not undone by applying
    /// the old policy again; `leash apply --cut` does it on purpose.
    #[default]
    Report,
    /// End them once the new table is committed and verified: destroy their local sockets
    /// and delete their conntrack entries, so their next packet meets the new rules.
    Cut,
}

/// The `[defaults]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Verdict when no rule matches.
    pub outbound: Action,
    pub outbound_span: Option<Span>,
    pub deny_with: DenyWith,
    /// Log denied packets to NFLOG group `log_group`.
    pub log_denied: bool,
    pub log_group: u16,
    pub allow_loopback: bool,
    pub allow_established: bool,
    pub allow_established_span: Option<Span>,
    /// The time zone `when` windows are written in (IANA name); `None` means UTC.
    pub timezone: Option<String>,
    pub timezone_span: Option<Span>,
    /// What `leash apply` does with live connections this policy denies.
    pub on_apply: OnApply,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            outbound: Action::Deny,
            outbound_span: None,
            deny_with: DenyWith::Reject,
            log_denied: true,
            log_group: 0,
            allow_loopback: true,
            allow_established: true,
            allow_established_span: None,
            timezone: None,
            timezone_span: None,
            on_apply: OnApply::Report,
        }
    }
}

/// A transport protocol a rule or a connection names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Proto {
    pub const ALL: [Proto; 4] = [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Icmpv6];

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
        }
    }

    /// Whether the protocol has ports (only these may be combined with `ports`).
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }

    pub fn parse(s: &str) -> Option<Proto> {
        Some(match s {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "icmpv6" => Proto::Icmpv6,
            _ => return None,
        })
    }
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange { first: port, last: port }
    }
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A user or group as written in the policy, with the numeric id it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The name as written, or `None` when the policy gave a number.
    pub name: Option<String>,
    pub id: u32,
    pub span: Span,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n}({})", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// How risky a rule is judged to be, as documented by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Risk {
    Low,
    Medium,
    High,
}

/// A calendar date (the `review` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date {
    pub year: i16,
    pub month: i8,
    pub day: i8,
}

impl From<jiff::civil::Date> for Date {
    /// Lets the binary pass today's date (`jiff::Zoned::now().date()`) to `lint::lint`;
    /// this crate never reads the clock itself.
    fn from(d: jiff::civil::Date) -> Self {
        Date { year: d.year(), month: d.month(), day: d.day() }
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// One `[[rule]]`: which connections it matches ([`Conditions`]), how many of them it lets
/// through ([`Limits`]), its verdict, and what its owner documented about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Span of the whole `[[rule]]` table header, for diagnostics about the rule as a whole.
    pub span: Span,
    pub name_span: Span,
    pub action: Action,
    pub cond: Conditions,
    pub limits: Limits,
    pub log: bool,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    pub risk: Option<Risk>,
    pub owner: Option<String>,
    pub review: Option<Date>,
    pub review_span: Option<Span>,
}

/// Everything a new connection must satisfy for a rule to decide it. A `None` condition means
/// "any"; `Some(vec![])` can never match. The span of each condition (where it was written)
/// stands beside it. The default is the rule without conditions, which matches every connection.
///
/// Every place that goes through a rule's conditions (`explain`, the forwarder's refusal of
/// names, the lints, [`Rule::matches_nothing`], the compiler, the agreement test) destructures
/// this struct without `..`, so that a new kind of condition does not compile until each of them
/// says what it does with it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conditions {
    /// `None` for `proto = "any"` or no `proto` key.
    pub protos: Option<Vec<Proto>>,
    pub ports: Option<Vec<PortRange>>,
    pub ports_span: Option<Span>,
    /// Networks of `to`. `None` (no `to`) means any destination; when `to` lists only domain
    /// names this is `Some(vec![])` and only [`Conditions::domains`] can match.
    pub to: Option<Vec<IpNet>>,
    pub to_span: Option<Span>,
    /// Domain names of `to`: the rule matches the addresses the DNS forwarder answered for them.
    pub domains: Vec<DomainPattern>,
    /// Let answers pointing into private, loopback, link-local or the host's own addresses into
    /// this rule's sets (the rebinding guard keeps them out otherwise).
    pub allow_private: bool,
    /// Named sets of `to` (`set:NAME`), as indexes into [`Policy::sets`].
    pub sets: Vec<SetRef>,
    /// Countries of `to_country`; their networks are in [`Conditions::country_ranges`].
    pub countries: Vec<(String, Span)>,
    /// The merged networks of every country in [`Conditions::countries`].
    pub country_ranges: std::sync::Arc<crate::ranges::AddrRanges>,
    pub users: Option<Vec<Principal>>,
    pub groups: Option<Vec<Principal>>,
    /// cgroup v2 directories of `service` and `cgroup`: the socket's process must be in one of
    /// them or below. `None` means any process.
    pub cgroups: Option<Vec<CgroupMatch>>,
    pub cgroups_span: Option<Span>,
    /// Time windows of `when`; the rule applies only inside one of them. `None` means always.
    pub when: Option<Vec<Window>>,
    pub when_span: Option<Span>,
    /// `from`: the rule matches only forwarded connections (from containers, VMs or namespaces
    /// routed through the host) whose source is in one of these networks or that entered on one
    /// of these interfaces. `None` means any source: the host's own connections and forwarded
    /// ones alike. The parser refuses `from` next to `user`, `group`, `service`, `cgroup` or
    /// `limit_per = "user"` (a forwarded packet has no local socket to match them against).
    pub from: Option<FromMatch>,
    pub from_span: Option<Span>,
}

/// The sources of a rule's `from`: networks and input interfaces (patterns).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FromMatch {
    pub nets: Vec<IpNet>,
    pub interfaces: Vec<IfacePattern>,
}

impl FromMatch {
    /// Whether the list is empty (`from = []`: the rule matches nothing).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.interfaces.is_empty()
    }

    /// Whether a forwarded connection from `src`, entering on `iif` (when known), is covered.
    pub fn matches(&self, src: IpAddr, iif: Option<&str>) -> bool {
        self.nets.iter().any(|n| n.contains(&src)) || iif.is_some_and(|i| self.interfaces.iter().any(|p| p.matches(i)))
    }
}

/// An interface name as nftables' `iifname` matches it: exact (`docker0`), or a prefix with a
/// trailing `*` (`br-*`, any name starting with `br-`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IfacePattern {
    /// The name, or for a wildcard the part before the `*`.
    pub name: String,
    pub wildcard: bool,
}

impl IfacePattern {
    /// Parses `docker0` or `br-*`: 1 to 15 characters (IFNAMSIZ less the NUL) of letters,
    /// digits, `_`, `-` and `.`, with at most one `*`, at the end and not alone.
    pub fn parse(s: &str) -> Result<IfacePattern, String> {
        let (name, wildcard) = match s.strip_suffix('*') {
            Some(p) => (p, true),
            None => (s, false),
        };
        let valid = !name.is_empty()
            && s.len() <= 15
            && name != "."
            && name != ".."
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !valid {
            return Err(format!(
                "invalid interface `{s}`; expected an interface name of 1 to 15 letters, digits, `_`, `-` or `.`, \
                 optionally ending in `*` (e.g. \"docker0\", \"br-*\")"
            ));
        }
        Ok(IfacePattern { name: name.to_string(), wildcard })
    }

    /// Whether the interface `ifname` is covered.
    pub fn matches(&self, ifname: &str) -> bool {
        if self.wildcard { ifname.starts_with(self.name.as_str()) } else { ifname == self.name }
    }

    /// A concrete interface name this pattern covers (the name itself; for `br-*`, `br-0`), which
    /// `leash test` names its workload interface and `explain --from` assumes without `--iif`.
    pub fn example(&self) -> String {
        if !self.wildcard {
            return self.name.clone();
        }
        let mut n = self.name.clone();
        if n.len() < 15 {
            n.push('0');
        }
        n
    }
}

impl std::fmt::Display for IfacePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.name, if self.wildcard { "*" } else { "" })
    }
}

/// Whether leash judges forwarded traffic at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardMode {
    /// New connections from local workloads (see [`ForwardConfig`]) meet the policy in a
    /// `forward` hook chain; everything else forwarded is left to the other tables.
    Govern,
    /// No forward chain: forwarded traffic is not leash's business (the other tables decide).
    Ignore,
}

impl ForwardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardMode::Govern => "govern",
            ForwardMode::Ignore => "ignore",
        }
    }
}

/// The input interfaces of the usual local container and VM networks: Docker's default and
/// user-defined bridges, Podman, libvirt, LXC and CNI (Kubernetes, Podman's CNI networks).
pub const DEFAULT_WORKLOAD_INTERFACES: [&str; 6] = ["docker0", "br-*", "podman*", "virbr*", "lxcbr*", "cni*"];

/// The `[forward]` section: which forwarded packets count as new connections of local workloads
/// (and so meet the policy): those entering on one of `interfaces` or coming from one of
/// `sources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    pub mode: ForwardMode,
    pub mode_span: Option<Span>,
    /// Input interface patterns; default [`DEFAULT_WORKLOAD_INTERFACES`].
    pub interfaces: Vec<IfacePattern>,
    /// Source networks; default none.
    pub sources: Vec<IpNet>,
    /// Span of the `[forward]` header, when the section is present.
    pub span: Option<Span>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            mode: ForwardMode::Govern,
            mode_span: None,
            interfaces: DEFAULT_WORKLOAD_INTERFACES
                .iter()
                .map(|p| IfacePattern::parse(p).expect("the default patterns are valid"))
                .collect(),
            sources: Vec::new(),
            span: None,
        }
    }
}

/// `rate`, `burst`, `max_connections` and `limit_per`: how many of the connections an allow rule
/// matches it lets through; the others are denied (as `deny_with` says).
///
/// Limits are not [`Conditions`]: a limited rule matches the same connections as without its
/// limits and decides every one of them (accepted under the limit, denied over it), so whether it
/// matches, shadows a later rule or can match nothing does not depend on them. They are a value of
/// their own, and everything that destructures a rule's conditions destructures its limits too,
/// also without `..`: a new kind of limit must be handled (or consciously ignored: `explain` keeps
/// no counters) everywhere.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    /// `rate` and `burst`: new connections above the rate are denied.
    pub rate: Option<Rate>,
    /// `max_connections`: connections beyond this many at once are denied.
    pub max_connections: Option<u32>,
    /// `limit_per`: what `rate` and `max_connections` count separately: the whole rule, each
    /// destination, or each user.
    pub per: LimitPer,
    /// Span of the first `rate` or `max_connections` key.
    pub span: Option<Span>,
}

impl Rule {
    /// Why the rule can match no connection at all, if it cannot: a condition that is an empty
    /// list (`to = []`, `to_country = []`, `when = []`, ...) or cgroups none of which existed
    /// when the policy was loaded. The compiler emits no kernel rule (and no set) for such a rule,
    /// the forwarder feeds it no answers, and the linter says so.
    pub fn matches_nothing(&self) -> Option<String> {
        let Conditions {
            protos,
            ports,
            ports_span: _,
            to,
            to_span,
            domains,
            // It only lets more answers into the rule's sets.
            allow_private: _,
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
        } = &self.cond;
        // A limit lets at least one connection through (`rate` and `max_connections` are at least 1).
        let Limits { rate: _, max_connections: _, per: _, span: _ } = &self.limits;
        let empty = |o: bool, key: &str| o.then(|| format!("`{key}` is an empty list"));
        empty(protos.as_ref().is_some_and(Vec::is_empty), "proto")
            .or_else(|| empty(ports.as_ref().is_some_and(Vec::is_empty), "ports"))
            .or_else(|| {
                let no_destination = to.as_ref().is_some_and(Vec::is_empty)
                    && domains.is_empty()
                    && sets.is_empty()
                    && country_ranges.is_empty();
                match (no_destination, countries.is_empty(), to_span.is_some()) {
                    (false, _, _) => None,
                    (true, false, _) => Some("its countries have no networks in the country database".to_string()),
                    (true, true, true) => empty(true, "to"),
                    (true, true, false) => empty(true, "to_country"),
                }
            })
            .or_else(|| empty(users.as_ref().is_some_and(Vec::is_empty), "user"))
            .or_else(|| empty(groups.as_ref().is_some_and(Vec::is_empty), "group"))
            .or_else(|| empty(when.as_ref().is_some_and(Vec::is_empty), "when"))
            .or_else(|| empty(from.as_ref().is_some_and(FromMatch::is_empty), "from"))
            .or_else(|| match cgroups {
                Some(c) if c.is_empty() => Some("`service`/`cgroup` is an empty list".to_string()),
                Some(c) if c.iter().all(|c| c.id.is_none()) => {
                    Some("none of its services or cgroups existed when the policy was loaded".to_string())
                }
                _ => None,
            })
    }

    /// Whether the rule needs the socket of a local process (`user`, `group`, `service`/`cgroup`,
    /// or `limit_per = "user"` with a limit): such a rule never matches a forwarded connection,
    /// which has no local socket, and is left out of the forward chain.
    pub fn needs_socket(&self) -> bool {
        let c = &self.cond;
        c.users.is_some()
            || c.groups.is_some()
            || c.cgroups.is_some()
            || (self.limits.per == LimitPer::User && (self.limits.rate.is_some() || self.limits.max_connections.is_some()))
    }

    /// The protocols the rule really covers, `None` meaning every protocol: `ports` without a
    /// protocol (or with `any`) means TCP and UDP, because only they have ports.
    pub fn effective_protos(&self) -> Option<Vec<Proto>> {
        match (&self.cond.protos, &self.cond.ports) {
            (None, Some(_)) => Some(vec![Proto::Tcp, Proto::Udp]),
            (p, _) => p.clone(),
        }
    }
}

/// A `set:NAME` destination of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRef {
    /// Index into [`Policy::sets`].
    pub index: usize,
    pub span: Span,
}

/// A cgroup v2 directory a rule matches, from `service = "nginx.service"` (which is
/// `system.slice/nginx.service`) or `cgroup = "PATH"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMatch {
    /// As written: the service name or the path.
    pub written: String,
    pub service: bool,
    /// The directory relative to the cgroup v2 root, without leading or trailing `/`
    /// (`system.slice/nginx.service`).
    pub path: String,
    /// The directory's inode number (the kernel's cgroup id) when it existed at load time. A rule
    /// whose cgroups all are missing matches no process (a warning says so).
    pub id: Option<u64>,
    /// The path nft writes: relative to `/sys/fs/cgroup`, with the prefix of a hybrid host's
    /// cgroup2 mount (`unified/system.slice/nginx.service`).
    pub nft_path: String,
    pub span: Span,
}

impl CgroupMatch {
    /// Depth below the cgroup v2 root (`system.slice/nginx.service` is 2): nft's `level`.
    pub fn level(&self) -> u32 {
        self.path.split('/').filter(|c| !c.is_empty()).count() as u32
    }

    /// Whether a process in cgroup `path` (relative to the cgroup v2 root, leading `/` allowed)
    /// is in this directory or below it.
    pub fn covers(&self, path: &str) -> bool {
        let p = path.trim_matches('/');
        p == self.path || (p.len() > self.path.len() && p.starts_with(&self.path) && p.as_bytes()[self.path.len()] == b'/')
    }
}

/// The cgroup of a systemd service, relative to the cgroup v2 root: `system.slice/UNIT`, with
/// `.service` added to a bare name (`nginx` is `nginx.service`).
pub fn service_cgroup(name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.chars().any(char::is_control) {
        return Err(format!("invalid service `{name}`; expected a unit name such as `nginx.service`"));
    }
    let unit = if name.contains('.') { name.to_string() } else { format!("{name}.service") };
    Ok(format!("system.slice/{unit}"))
}

/// A cgroup path as written (`/system.slice/x` or `system.slice/x`), relative to the cgroup v2
/// root without leading or trailing `/`; `..`, `.` and empty components are refused.
pub fn cgroup_path(path: &str) -> Result<String, String> {
    let p = path.trim_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") || p.chars().any(char::is_control) {
        return Err(format!(
            "invalid cgroup `{path}`; expected a path below the cgroup v2 root, e.g. `/system.slice/nginx.service`"
        ));
    }
    Ok(p.to_string())
}

/// One time window of `when`, in the policy's time zone: it opens at `start` on each of `days`
/// and closes at `end`, on the next day when `end <= start` (`22:00-06:00`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit `d` is set for weekday `d`, 0 = Sunday ... 6 = Saturday.
    pub days: u8,
    /// Minutes since midnight, 0..1440.
    pub start: u16,
    /// Minutes since midnight, 1..=1440.
    pub end: u16,
    pub span: Span,
}

pub const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

impl Window {
    /// The intervals the window covers within one week, as seconds since Sunday 00:00 (local),
    /// `[start, end)`, not wrapping past the end of the week (a Saturday-night window gives two).
    pub fn week_intervals(&self) -> Vec<(u32, u32)> {
        const DAY: u32 = 86_400;
        const WEEK: u32 = 7 * DAY;
        let mut out = Vec::new();
        for d in 0..7u32 {
            if self.days & (1 << d) == 0 {
                continue;
            }
            let s = d * DAY + self.start as u32 * 60;
            let e = if self.end > self.start { d * DAY + self.end as u32 * 60 } else { (d + 1) * DAY + self.end as u32 * 60 };
            if e <= WEEK {
                out.push((s, e));
            } else {
                out.push((s, WEEK));
                out.push((0, e - WEEK));
            }
        }
        out
    }

    /// Whether the window is open at `second` of the local week (0 = Sunday 00:00:00).
    pub fn contains(&self, second: u32) -> bool {
        self.week_intervals().iter().any(|&(a, b)| a <= second && second < b)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.days != 0x7f {
            let days: Vec<&str> = (0..7).filter(|d| self.days & (1 << d) != 0).map(|d| WEEKDAYS[d]).collect();
            write!(f, "{} ", days.join(","))?;
        }
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

/// A rate of `count` per `per_seconds`, with a bucket of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    /// 1, 60, 3600 or 86400.
    pub per_seconds: u32,
    pub burst: u32,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per_seconds {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{unit} (burst {})", self.count, self.burst)
    }
}

/// What a rate or connection limit counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitPer {
    /// All connections the rule matches together.
    #[default]
    Rule,
    /// Each destination address on its own.
    Destination,
    /// Each user (socket owner) on its own.
    User,
}

impl LimitPer {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitPer::Rule => "rule",
            LimitPer::Destination => "destination",
            LimitPer::User => "user",
        }
    }
}

/// A domain name of a rule's `to`: exact (`mirror.example.com`) or a wildcard (`*.cdn.example.com`,
/// any depth below the name, not the name itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    /// Lowercase, without a trailing dot and without the `*.` of a wildcard.
    pub name: String,
    pub wildcard: bool,
    pub span: Span,
}

impl DomainPattern {
    /// Whether `qname` (already normalised: lowercase, no trailing dot) is covered.
    pub fn matches(&self, qname: &str) -> bool {
        if self.wildcard {
            qname.len() > self.name.len() + 1
                && qname.ends_with(self.name.as_str())
                && qname.as_bytes()[qname.len() - self.name.len() - 1] == b'.'
        } else {
            qname == self.name
        }
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard { write!(f, "*.{}", self.name) } else { f.write_str(&self.name) }
    }
}

/// One `[[expect]]`: a connection and the verdict the policy must give it.
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    pub span: Span,
    /// The destination address: the one written, or for a domain expectation its `address` (or,
    /// without one, an address no rule lists by network, so only domain rules can match it).
    pub to: IpAddr,
    /// For `to = "NAME:PORT"`: the name the forwarder answered with `to`.
    pub name: Option<String>,
    pub port: Option<u16>,
    pub proto: Proto,
    /// The user as written; `None` means root.
    pub user: Option<Principal>,
    /// The group as written; `None` means the user's primary group.
    pub group: Option<Principal>,
    /// The user id the connection is made as, with the default (root) applied.
    pub uid: u32,
    /// The group id the connection is made as, with the default (the user's primary group,
    /// resolved when the policy was loaded) applied.
    pub gid: u32,
    /// The cgroup v2 path the connection is made from (`cgroup = ...` or `service = ...` of the
    /// expectation), relative to the cgroup v2 root.
    pub cgroup: Option<String>,
    /// The local time of the connection (`at`), in the policy's time zone.
    pub at: Option<jiff::civil::DateTime>,
    /// `from`: the connection is forwarded, made by a workload (a container, VM or namespace
    /// routed through the host) with this source address, entering on [`Expect::iif`].
    pub from: Option<IpAddr>,
    /// The interface a forwarded connection enters on: `iif` as written, or (without one) an
    /// example name of the policy's first workload interface pattern (`docker0`, `br-0`), or
    /// `wl0` when it has none.
    pub iif: Option<String>,
    pub verdict: Action,
}

/// The port DNS uses over UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// DNS over TLS; it cannot be redirected (the forwarder speaks no TLS), so it is always denied
/// to everyone but the forwarder when the bypass control is on.
pub const DOT_PORT: u16 = 853;

/// What happens to DNS that does not go through the forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bypass {
    /// Queries to port 53 anywhere are redirected to the forwarder (IPv4 and IPv6 each only when
    /// the forwarder listens on that family's loopback); the rest of port 53/853 is denied.
    Redirect,
    /// Port 53/853 is denied to everyone but the forwarder.
    Deny,
    /// No control: applications may ask any resolver the rules allow, and addresses they learn
    /// that way are not in the domain sets.
    Off,
}

impl Bypass {
    pub fn as_str(self) -> &'static str {
        match self {
            Bypass::Redirect => "redirect",
            Bypass::Deny => "deny",
            Bypass::Off => "off",
        }
    }
}

/// The `[dns]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where the forwarder listens (UDP and TCP).
    pub listen: Vec<SocketAddr>,
    /// Resolvers the forwarder asks, in order.
    pub upstreams: Vec<SocketAddr>,
    /// Shortest life of a set element, in seconds, whatever the answer's TTL.
    pub min_ttl: u32,
    /// Longest TTL handed to clients (and so the longest life of an element, plus grace).
    pub max_ttl: u32,
    /// Seconds an element outlives the TTL the client was given, for clients that use an
    /// address a little after its TTL ran out.
    pub grace: u32,
    /// How long one upstream is given to answer, in milliseconds.
    pub timeout_ms: u32,
    pub bypass: Bypass,
    /// SO_MARK of the forwarder's upstream sockets. The ruleset lets a DNS packet out to an
    /// upstream only when it carries this mark AND comes from a socket of [`DnsConfig::user`]
    /// AND goes to that upstream's address and port. The mark alone proves nothing: since Linux
    /// 5.17 CAP_NET_RAW is enough to set it (a `--network host` container has that).
    pub mark: u32,
    /// The forwarder's own user (`[dns] user`, a name or a uid; default `leash-dns`): only its
    /// sockets may reach the upstreams. A uid no other process has; never root.
    pub user: ForwarderUser,
    /// `[dns] allow_remote_clients`: `listen` may name addresses other hosts reach.
    pub allow_remote_clients: bool,
    /// Most elements one domain set holds (`size` of the kernel set). When a set is full the
    /// kernel refuses new elements and the forwarder answers SERVFAIL for the names that need
    /// them (an answer whose addresses the firewall would block is never sent).
    pub set_size: u32,
    /// Answers kept in the forwarder's cache; 0 turns the cache off.
    pub cache_size: usize,
    /// Span of the `[dns]` header, when the section is present.
    pub span: Option<Span>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, DNS_PORT))],
            upstreams: Vec::new(),
            min_ttl: 60,
            max_ttl: 3600,
            grace: 120,
            timeout_ms: 1000,
            bypass: Bypass::Redirect,
            mark: 0x6c6e,
            user: ForwarderUser::default(),
            allow_remote_clients: false,
            set_size: DEFAULT_SET_SIZE,
            cache_size: 10_000,
            span: None,
        }
    }
}

/// Name of the forwarder's user when `[dns] user` is not given (contrib/sysusers.d creates it).
pub const DEFAULT_FORWARDER_USER: &str = "leash-dns";
/// Default `[dns] set_size`: the kernel sizes a timeout hash set for 65,536 elements anyway
/// (`NFT_RHASH_ELEMENT_HINT`), so this bound costs no memory up front.
pub const DEFAULT_SET_SIZE: u32 = 65_536;

/// `[dns] user`: who the forwarder runs as, as written and as resolved when the policy loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwarderUser {
    /// The name or the number as written (the default name when `user` is not given).
    pub written: String,
    /// The uid; `None` when the name is unknown on this host (the ruleset then lets no query of
    /// any forwarder out: fail closed).
    pub uid: Option<u32>,
    pub span: Option<Span>,
}

impl Default for ForwarderUser {
    fn default() -> Self {
        ForwarderUser { written: DEFAULT_FORWARDER_USER.into(), uid: None, span: None }
    }
}

impl DnsConfig {
    /// The TTL a client is given for a record whose upstream TTL is `ttl`.
    pub fn client_ttl(&self, ttl: u32) -> u32 {
        ttl.min(self.max_ttl)
    }

    /// The timeout of the set element for an address answered with `ttl`: never shorter than
    /// what the client was told, plus the grace period.
    pub fn element_timeout_ms(&self, ttl: u32) -> u64 {
        let life = self.client_ttl(ttl).max(self.min_ttl);
        // At least a second: a TTL of 0 with min_ttl = grace = 0 must still let the client
        // connect right after the answer (and the kernel refuses a zero timeout).
        ((u64::from(life) + u64::from(self.grace)) * 1000).max(1000)
    }

    /// The loopback port queries are redirected to, per family (`None`: the forwarder does not
    /// listen on that family's loopback, so that family's DNS is denied instead).
    pub fn redirect_port(&self, v6: bool) -> Option<u16> {
        self.listen.iter().find(|a| a.is_ipv6() == v6 && a.ip().is_loopback()).map(|a| a.port())
    }
}
