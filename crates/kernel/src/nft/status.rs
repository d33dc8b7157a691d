//! What reading table `inet leash` back yields: the table as the kernel has it (chains, rules with
//! their counters, sets with their element counts), its handle and comment, and the elements of a
//! set. `read` fills these in; `status`, the verification of an apply and `leash trace` use them.

use std::net::IpAddr;

use ruleset::{ChainPolicy, Hook, KeyType};

/// A packet and byte counter of a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// One rule of a chain as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStatus {
    pub handle: u64,
    pub comment: Option<String>,
    /// The rule's `counter` statement, if it has one.
    pub counter: Option<Counter>,
}

/// One chain as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStatus {
    pub name: String,
    pub handle: u64,
    /// The hook, when it is one leash uses; `hook_num` has the raw number.
    pub hook: Option<Hook>,
    pub hook_num: Option<u32>,
    pub priority: Option<i32>,
    pub policy: Option<ChainPolicy>,
    /// `filter` or `nat`.
    pub chain_type: Option<String>,
    pub rules: Vec<RuleStatus>,
}

/// One set as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetStatus {
    pub name: String,
    /// The key type, when it is one leash uses; `key_type` has nft's raw datatype number.
    pub key: Option<KeyType>,
    pub key_type: u32,
    pub key_len: u32,
    /// `NFTA_SET_FLAGS`.
    pub flags: u32,
    pub interval: bool,
    /// `flags timeout`: elements expire, and the DNS forwarder adds more at any time.
    pub timeout: bool,
    /// Elements; in an interval set, ranges (start elements). Expired elements are not counted.
    pub elements: ElementCount,
}

/// How many elements a set has. Counting reads the elements back, which costs O(n^2) in the
/// kernel for interval sets, so large sets are counted only up to a limit, or not at all when the
/// caller knows the number from loading the set ([`crate::nft::status_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementCount {
    /// Counted in the kernel.
    Exact(usize),
    /// More than the counting limit; at least this many.
    AtLeast(usize),
    /// Not counted: the number the caller recorded when it loaded the set (every element of that
    /// batch was acked). Changes made since by other tools are not seen.
    Recorded(usize),
}

impl ElementCount {
    /// The number counted (exact, or a lower bound) or recorded.
    pub fn value(self) -> usize {
        match self {
            ElementCount::Exact(n) | ElementCount::AtLeast(n) | ElementCount::Recorded(n) => n,
        }
    }
}

impl std::fmt::Display for ElementCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElementCount::Exact(n) => write!(f, "{n}"),
            ElementCount::AtLeast(n) => write!(f, "at least {n}"),
            ElementCount::Recorded(n) => write!(f, "{n} (as loaded)"),
        }
    }
}

/// Table `inet leash` as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatus {
    pub comment: Option<String>,
    pub chains: Vec<ChainStatus>,
    pub sets: Vec<SetStatus>,
}

/// What [`crate::nft::table_comment`] reads of a table: enough to notice a change without dumping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The kernel's handle of the table. Every apply deletes the table and creates it anew, and
    /// the kernel numbers new tables from a counter that only goes up, so a different handle
    /// means the table was re-applied (or deleted and created by someone else) since.
    pub handle: u64,
    /// The table's comment (leash puts the policy's hash there), `None` without one.
    pub comment: Option<String>,
}

/// Sets with more elements than this are not counted to the end, neither by `status` nor when
/// verifying an apply: counting 16,384 ranges back takes some 30 ms, 100,000 about a second and
/// 1,000,000 minutes (the kernel restarts its walk of the set for every reply it fills).
pub const COUNT_LIMIT: usize = 16_384;

/// One element of a set as a GETSETELEM dump lists it (see [`crate::nft::set_elements`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElement {
    /// The key as the kernel stores it: addresses and ports in network byte order, uid and gid in
    /// host byte order, an ICMPv6 type as one byte.
    pub key: Vec<u8>,
    /// `NFT_SET_ELEM_INTERVAL_END`: in an interval set, the first key after a range (no member
    /// itself). An interval set of N ranges lists N start elements and, nft's way, up to N + 1
    /// end elements.
    pub interval_end: bool,
    /// `NFTA_SET_ELEM_TIMEOUT` in milliseconds (elements of timeout sets; the kernel leaves it out
    /// when it equals the set's default timeout).
    pub timeout_ms: Option<u64>,
    /// `NFTA_SET_ELEM_EXPIRATION`: milliseconds left before the kernel removes the element (sent
    /// for every element with a timeout, 0 once it is past).
    pub expires_ms: Option<u64>,
    /// The comment in the element's user data (nft's `comment "..."`; a domain set's element
    /// holds the name looked up).
    pub comment: Option<String>,
}

/// One answer in a timeout set as [`crate::nft::timed_elements`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedAnswer {
    pub addr: IpAddr,
    /// Milliseconds before the kernel removes the element.
    pub left_ms: u64,
    /// The element's comment: the DNS name whose answer put it there (see
    /// [`ruleset::TimedAddr`]); `None` for an element without one.
    pub name: Option<String>,
}
