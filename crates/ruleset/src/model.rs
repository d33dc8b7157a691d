//! A model of the one nftables table leash owns: sets, chains and rules as nft statements.
//!
//! The model sits at the level of nft's own syntax (`ip daddr @set`, `tcp dport 53`, `counter`), not
//! at the level of kernel bytecode. The text renderer prints it as nft syntax; the kernel crate
//! translates each statement into exactly the bytecode `nft` generates for that syntax, which the
//! oracle test checks by loading both into namespaces and comparing the listings.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The table leash owns. It is the only table leash ever creates, changes or deletes.
pub const TABLE_NAME: &str = "leash";

/// Priority of leash's output chain: `filter` (0), the same slot iptables' filter table uses.
pub const OUTPUT_PRIORITY_FILTER: i32 = 0;

/// Priority of leash's DNS redirect chain: `dstnat` (-100), where nft's `redirect` must run so that
/// the filter chain (priority 0) already sees the rewritten loopback destination.
pub const OUTPUT_PRIORITY_DSTNAT: i32 = -100;

/// Longest comment nft accepts (NFTNL_UDATA_COMMENT_MAXLEN is 128 including the terminator).
pub const MAX_COMMENT_LEN: usize = 127;

/// One nftables table of family `inet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// Stored in the kernel with the table (user data); `leash status` reads the policy hash from it.
    pub comment: Option<String>,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

/// The type of a set's keys; each maps to an nft datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ipv4_addr`, 4 bytes network order.
    Ipv4Addr,
    /// `ipv6_addr`, 16 bytes network order.
    Ipv6Addr,
    /// `inet_service`, 2 bytes network order.
    InetService,
    /// `uid`, 4 bytes host order.
    Uid,
    /// `gid`, 4 bytes host order.
    Gid,
    /// `icmpv6_type`, 1 byte.
    Icmpv6Type,
}

impl KeyType {
    pub fn nft_name(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetService => "inet_service",
            KeyType::Uid => "uid",
            KeyType::Gid => "gid",
            KeyType::Icmpv6Type => "icmpv6_type",
        }
    }
    /// Length of one key in bytes.
    pub fn key_len(self) -> usize {
        match self {
            KeyType::Ipv4Addr => 4,
            KeyType::Ipv6Addr => 16,
            KeyType::InetService => 2,
            KeyType::Uid | KeyType::Gid => 4,
            KeyType::Icmpv6Type => 1,
        }
    }
}


/// The elements of a set, typed so that encoders need no parsing. Ranges are inclusive and
/// already merged: sorted, non-overlapping and non-adjacent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetElements {
    V4(Vec<(Ipv4Addr, Ipv4Addr)>),
    V6(Vec<(Ipv6Addr, Ipv6Addr)>),
    /// Ports, as inclusive ranges.
    Ports(Vec<(u16, u16)>),
    /// uids, gids or icmpv6 types: single values.
    Ids(Vec<u32>),
    /// Single IPv4 addresses, each with its own timeout and the name it was looked up by (sets
    /// with `flags timeout`: the DNS answers an apply carries over into a domain set).
    TimedV4(Vec<TimedAddr<Ipv4Addr>>),
    /// Single IPv6 addresses with timeouts and names.
    TimedV6(Vec<TimedAddr<Ipv6Addr>>),
}

/// One element of a domain set: an address, how long it stays, and the DNS name whose answer put
/// it there. The kernel keeps the name in the element's comment (nft's `comment "..."`), so that
/// the table itself holds (address, name, expiry): a re-apply carries an answer over only when
/// the new policy still admits its name, and `conns` shows the name that was looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedAddr<A> {
    pub addr: A,
    /// Milliseconds from the commit until the kernel removes the element.
    pub timeout_ms: u64,
    /// The name looked up; `None` for an element without one (added by hand, or by a leash
    /// that did not record names).
    pub name: Option<String>,
}

impl<A> TimedAddr<A> {
    pub fn new(addr: A, timeout_ms: u64, name: Option<String>) -> TimedAddr<A> {
        TimedAddr { addr, timeout_ms, name }
    }
}

/// The most bytes of a name an element's comment can hold: the kernel limits an element's user
/// data to 256 bytes (`NFT_USERDATA_MAXLEN`), and libnftnl's comment TLV takes 2 of them and a
/// NUL. Every DNS name fits (at most 253 characters).
pub const MAX_ELEMENT_NAME: usize = 253;

impl SetElements {
    /// The IPv4 ranges of a merged address list (a `[[set]]` file, countries) as set elements.
    pub fn v4_of(r: &policy::ranges::AddrRanges) -> SetElements {
        SetElements::V4(r.v4.iter().map(|&(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b))).collect())
    }

    /// The IPv6 ranges of a merged address list as set elements.
    pub fn v6_of(r: &policy::ranges::AddrRanges) -> SetElements {
        SetElements::V6(r.v6.iter().map(|&(a, b)| (Ipv6Addr::from(a), Ipv6Addr::from(b))).collect())
    }

    pub fn len(&self) -> usize {
        match self {
            SetElements::V4(v) => v.len(),
            SetElements::V6(v) => v.len(),
            SetElements::Ports(v) => v.len(),
            SetElements::Ids(v) => v.len(),
            SetElements::TimedV4(v) => v.len(),
            SetElements::TimedV6(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: KeyType,
    /// `flags interval`: elements are ranges (V4, V6 and Ports sets are always interval sets).
    pub interval: bool,
    /// `flags timeout`: elements may carry a timeout after which the kernel removes them. The DNS
    /// forwarder fills such sets (hash sets, never interval sets) with the addresses it answers.
    pub timeout: bool,
    /// `flags dynamic` (a meter): the packet path adds elements itself through `add @set { ... }`
    /// statements ([`Stmt::Meter`]), each element carrying its own limiter or connection counter.
    pub dynamic: Option<Dynamic>,
    /// `size N` of a set that is not dynamic: the kernel refuses elements beyond N (ENFILE).
    /// Domain sets have one, so that a flood of names cannot grow kernel memory without bound.
    /// (A dynamic set's size is in [`Dynamic`].)
    pub size: Option<u32>,
    pub elements: SetElements,
}

/// How a dynamic set (a meter) is bounded: at most `size` elements, each removed `timeout_ms`
/// after it was last updated (`None`: elements stay until the kernel's own garbage collection
/// removes them, which connection counters need).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dynamic {
    pub size: u32,
    pub timeout_ms: Option<u64>,
}

/// Netfilter hooks leash attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Output,
    /// Packets routed through the host (containers, VMs, namespaces behind it).
    Forward,
}

/// Verdict of a base chain when no rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainPolicy {
    Accept,
    Drop,
}

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    /// `type filter`: verdicts.
    Filter,
    /// `type nat`: address rewriting (`redirect`); sees only the first packet of a connection.
    Nat,
    /// A regular chain, reached only by `jump` from a base chain; its `hook`, `priority` and
    /// `policy` are not used (a packet no rule decides returns to the rule after the jump).
    Regular,
}

impl ChainType {
    pub fn nft_name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Regular => "regular",
        }
    }
}

/// A base chain (`type filter hook output priority filter`, or `type nat ... priority dstnat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
    pub policy: ChainPolicy,
    pub rules: Vec<Rule>,
}

/// One nftables rule: statements evaluated left to right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub stmts: Vec<Stmt>,
    /// The policy rule this kernel rule belongs to (`comment "NAME"`); several kernel rules may share
    /// one comment (one per address family and protocol).
    pub comment: Option<String>,
}

/// Layer-4 protocols as `meta l4proto` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl L4 {
    pub fn number(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
            L4::Icmp => 1,
            L4::Icmpv6 => 58,
        }
    }
    /// The name nft prints.
    pub fn nft_name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
            L4::Icmp => "icmp",
            L4::Icmpv6 => "ipv6-icmp",
        }
    }
}

/// A value compared for equality, or looked up in a named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<T> {
    Eq(T),
    InSet(String),
}

/// A packet rate: `rate` packets per `unit`, with a bucket of `burst` packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub rate: u64,
    pub unit: RateUnit,
    pub burst: u32,
}

/// The time unit of a rate (nft's `second`, `minute`, `hour`, `day`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl RateUnit {
    pub fn seconds(self) -> u64 {
        match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
            RateUnit::Day => 86_400,
        }
    }
    pub fn nft_name(self) -> &'static str {
        match self {
            RateUnit::Second => "second",
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
            RateUnit::Day => "day",
        }
    }
}

/// The key of a meter: what gets its own limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterKey {
    /// `ip daddr`
    Daddr4,
    /// `ip6 daddr`
    Daddr6,
    /// `meta skuid`
    SkUid,
}

impl MeterKey {
    pub fn key_type(self) -> KeyType {
        match self {
            MeterKey::Daddr4 => KeyType::Ipv4Addr,
            MeterKey::Daddr6 => KeyType::Ipv6Addr,
            MeterKey::SkUid => KeyType::Uid,
        }
    }
}

/// What each element of a meter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterLimit {
    /// A limiter: the statement matches while the key's packets stay under the rate.
    Rate(RateLimit),
    /// A connection counter: the statement matches while the key has at most N connections.
    Count(u32),
}

/// Address family of a packet (`meta nfproto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// A statement of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `oif "lo"` (the loopback device is ifindex 1 in every namespace).
    OifLoopback,
    /// `oif != "lo"`.
    OifNotLoopback,
    /// `meta mark M`: the packet's socket carries SO_MARK M (the DNS forwarder's upstream sockets).
    MarkEq(u32),
    /// `meta mark != M`.
    MarkNe(u32),
    /// `redirect to :PORT` (only in a nat chain): rewrites the destination to the local address
    /// (127.0.0.1 or ::1 for locally generated packets) and PORT.
    Redirect { port: u16 },
    /// `ct state established,related`.
    CtStateEstablishedRelated,
    /// `ct direction reply`: the packet goes the way the connection's replies go (its
    /// connection was opened from outside). Untracked packets match neither direction.
    CtDirectionReply,
    /// `meta nfproto ipv4|ipv6`.
    Nfproto(Family),
    /// `meta l4proto X`.
    L4proto(L4),
    /// `tcp dport V` or `udp dport V`. Like nft, it carries its own `meta l4proto` check, so the
    /// compiler never puts an `L4proto` before it.
    Dport { l4: L4, value: Value<u16> },
    /// `th dport V`: the destination port field of any transport header (bytes 2-3), with no
    /// protocol check, so one rule covers TCP and UDP. (For ICMP those bytes are the checksum;
    /// what such a match leads to must check the protocol itself.)
    ThDport(Value<u16>),
    /// `ip daddr V` (implies `meta nfproto ipv4`).
    Daddr4(Value<Ipv4Addr>),
    /// `ip6 daddr V` (implies `meta nfproto ipv6`).
    Daddr6(Value<Ipv6Addr>),
    /// `ip saddr V` (implies `meta nfproto ipv4`).
    Saddr4(Value<Ipv4Addr>),
    /// `ip6 saddr V` (implies `meta nfproto ipv6`).
    Saddr6(Value<Ipv6Addr>),
    /// `iifname "NAME"`, or with `wildcard` `iifname "NAME*"` (any name starting with NAME).
    IifName { name: String, wildcard: bool },
    /// `oifname "NAME"` / `oifname "NAME*"`.
    OifName { name: String, wildcard: bool },
    /// `meta skuid V`.
    SkUid(Value<u32>),
    /// `meta skgid V`.
    SkGid(Value<u32>),
    /// `icmpv6 type V` (implies nfproto ipv6 and l4proto ipv6-icmp).
    Icmpv6Type(Value<u8>),
    /// `meta day D` or `meta day A-B`: the weekday in UTC (0 = Sunday), inclusive.
    MetaDay { first: u8, last: u8 },
    /// `meta hour "H:M:S"-"H:M:S"`: seconds since midnight UTC, inclusive (nft prints and
    /// parses hours in its own local time zone; the model and the kernel use UTC).
    MetaHour { first: u32, last: u32 },
    /// `meta time >= T`: the packet's wall-clock time (nanoseconds since the epoch) is at or
    /// after T. Bounds the rules of one daylight-saving period of a time zone.
    MetaTimeFrom(i64),
    /// `meta time < T`.
    MetaTimeUntil(i64),
    /// `limit rate N/UNIT burst B packets`: matches while the rule's packets stay under the rate
    /// (each match takes a token).
    Limit(RateLimit),
    /// `ct count N`: matches while the connections counted by this statement (this one included)
    /// are at most N.
    CtCount(u32),
    /// `socket cgroupv2 level LEVEL "PATH"`: the socket was created by a process in the cgroup v2
    /// directory PATH (relative to `/sys/fs/cgroup`, as nft writes it) or below it. `id` is the
    /// directory's inode number, which is what the kernel compares; it is looked up when the
    /// policy is loaded, so a cgroup made again later (a restarted service) needs a new apply.
    SocketCgroup { level: u32, path: String, id: u64 },
    /// `update @SET { KEY limit rate ... }` or `add @SET { KEY ct count N }`: a limiter or
    /// connection counter per key (destination or user), kept in the dynamic set SET.
    Meter { set: String, key: MeterKey, limit: MeterLimit },
    /// `counter`.
    Counter,
    /// `log prefix "P" group G` (NFLOG).
    Log { prefix: String, group: u16 },
    /// `jump CHAIN`: continue in the regular chain CHAIN.
    Jump(String),
    /// `return`: back to the rule after the jump (from a base chain: its policy decides).
    Return,
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `reject with tcp reset` (only after `meta l4proto tcp`).
    RejectTcpReset,
    /// `reject with icmpx admin-prohibited`.
    RejectAdminProhibited,
}
