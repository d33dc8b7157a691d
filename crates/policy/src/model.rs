//! The validated policy: what a policy file means, with the source position of everything a diagnostic may point at.

use ipnet::IpNet;
use std::net::IpAddr;
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
    pub dns: crate::dns::DnsConfig,
}

impl Policy {
    /// Whether any rule names a domain, which is what makes the DNS forwarder (and the DNS bypass
    /// control) part of the policy.
    pub fn has_domain_rules(&self) -> bool {
        self.rules.iter().any(|r| !r.domains.is_empty())
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
    /// Lets the binary pass today's date (`jiff::Zoned::now().date()`) to [`crate::lint::lint`];
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

/// One `[[rule]]`. A `None` condition means "any"; `Some(vec![])` can never match.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Span of the whole `[[rule]]` table header, for diagnostics about the rule as a whole.
    pub span: Span,
    pub name_span: Span,
    pub action: Action,
    /// `None` for `proto = "any"` or no `proto` key.
    pub protos: Option<Vec<Proto>>,
    pub ports: Option<Vec<PortRange>>,
    pub ports_span: Option<Span>,
    /// Networks of `to`. `None` (no `to`) means any destination; when `to` lists only domain
    /// names this is `Some(vec![])` and only [`Rule::domains`] can match.
    pub to: Option<Vec<IpNet>>,
    pub to_span: Option<Span>,
    /// Domain names of `to`: the rule matches the addresses the DNS forwarder answered for them.
    pub domains: Vec<DomainPattern>,
    /// Let answers pointing into private, loopback, link-local or the host's own addresses into
    /// this rule's sets (the rebinding guard keeps them out otherwise).
    pub allow_private: bool,
    pub users: Option<Vec<Principal>>,
    pub groups: Option<Vec<Principal>>,
    pub log: bool,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    pub risk: Option<Risk>,
    pub owner: Option<String>,
    pub review: Option<Date>,
    pub review_span: Option<Span>,
}

impl Rule {
    /// The protocols the rule really covers, `None` meaning every protocol: `ports` without a
    /// protocol (or with `any`) means TCP and UDP, because only they have ports.
    pub fn effective_protos(&self) -> Option<Vec<Proto>> {
        match (&self.protos, &self.ports) {
            (None, Some(_)) => Some(vec![Proto::Tcp, Proto::Udp]),
            (p, _) => p.clone(),
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
    pub verdict: Action,
}

impl Expect {
    /// The connection this expectation describes, ready for [`crate::explain()`].
    pub fn connection(&self) -> crate::explain::Connection {
        crate::explain::Connection {
            proto: self.proto,
            dst: self.to,
            port: self.port,
            uid: self.uid,
            gid: self.gid,
            name: self.name.clone(),
        }
    }
}
