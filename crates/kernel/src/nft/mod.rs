//! leash's nftables table over nfnetlink: apply (one atomic batch, then read back and verify),
//! disable, status.
//!
//! Everything here acts on the network namespace of the calling thread (netlink sockets belong to
//! the namespace of the thread that opens them) and on table `inet leash` only: every message
//! names family inet and that table.

mod bulk;
pub(crate) mod consts;
mod elements;
mod encode;
mod expr;
mod read;

pub use bulk::{ReplaceOptions, ReplaceReport, SetContents, replace_set_elements};
pub use elements::{SetWriter, TimedElement};

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ruleset::{ChainPolicy, ChainType, Hook, KeyType, Table};

use crate::nl::{self, KernelError, Messages, NLMSG_ERROR, NlError, Socket};
use encode::Batch;

/// Errors of apply, disable and status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The table model cannot be encoded as it is (nothing was sent).
    #[error("invalid table: {0}")]
    Invalid(String),
    /// Talking to the kernel failed (opening the socket, sending, receiving, dumping).
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: NlError,
    },
    /// The kernel rejected a message of the batch; it then aborts the whole batch, so nothing
    /// changed. `what` names the message, e.g. "NEWRULE for rule `dns` (chain output, rule 3)".
    #[error("{what}: {error}")]
    Rejected { what: String, error: KernelError },
    /// The kernel answered fewer messages than it was sent.
    #[error("the kernel acknowledged {acked} of the {expected} messages of the batch")]
    MissingAcks { acked: usize, expected: usize },
    /// The table read back after an apply differs from the one applied.
    #[error("the table read back after apply differs: {0}")]
    Verify(String),
    /// There is no table `inet <name>` (to change the sets of).
    #[error("there is no table inet {0}")]
    NoSuchTable(String),
    /// Table `inet <table>` has no set `<set>`.
    #[error("table inet {table} has no set {set}")]
    NoSuchSet { table: String, set: String },
}

impl Error {
    /// The errno behind this error, if the kernel or a system call gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Rejected { error, .. } => Some(error.errno),
            Error::Netlink {
                source: NlError::Kernel(e),
                ..
            } => Some(e.errno),
            Error::Netlink {
                source: NlError::Io { source, .. },
                ..
            } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Options of [`apply`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyOptions {
    /// Append one deliberately invalid message (a rule using a set that does not exist) as the
    /// last message of the batch. The kernel then rejects the batch as a whole; tests use it to
    /// prove that a failed apply leaves the previous table untouched.
    pub fault_inject: bool,
}

/// What an [`apply`] did and how long it took.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// Messages in the batch, BATCH_BEGIN and BATCH_END included.
    pub messages: usize,
    /// Bytes of the batch (one `sendmsg`).
    pub bytes: usize,
    /// Set elements as the model counts them (ranges or values).
    pub elements: usize,
    /// From the send to the last ack read (the kernel processes the batch within the send).
    pub send_and_ack: Duration,
    /// Reading the table back and comparing it.
    pub verify: Duration,
    /// Sets too large to count back quickly ([`COUNT_LIMIT`]); their elements were checked by
    /// looking up a sample instead (and every NEWSETELEM was acked, with `NLM_F_EXCL`).
    pub sampled_sets: usize,
    /// The handle of the new table (see [`TableInfo::handle`]): callers that record what they
    /// applied (element counts of large sets) key the record by it.
    pub table_handle: u64,
}

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
/// caller knows the number from loading the set ([`status_with`]).
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

/// What [`table_comment`] reads of a table: enough to notice a change without dumping it.
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
/// Elements of a large set looked up when verifying an apply (evenly spread, first and last
/// included).
const VERIFY_SAMPLE: usize = 64;

/// Receive buffer for the acks of a batch: one small skb per message; the kernel accounts each at
/// well under this many bytes. Acks that do not fit are dropped, so be generous.
const RECV_BYTES_PER_ACK: usize = 2048;
/// Headroom on top of the batch size for the send buffer (the kernel subtracts a little).
const SEND_BUF_SLACK: usize = 64 * 1024;

fn netlink(context: &str) -> impl FnOnce(NlError) -> Error + '_ {
    move |source| Error::Netlink {
        context: context.to_string(),
        source,
    }
}

fn open_socket() -> Result<Socket, Error> {
    let s = Socket::open(nl::NETLINK_NETFILTER)
        .map_err(netlink("opening a netfilter netlink socket"))?;
    // Extended acks give the kernel's reason; capped acks keep error replies small.
    s.enable_ext_ack()
        .map_err(netlink("enabling extended netlink acks"))?;
    Ok(s)
}

/// The nfnetlink batch [`apply`] sends for `table`, for benchmarks and tests. It can only fail
/// for a table that violates the model's invariants ([`Error::Invalid`]).
pub fn encode_apply_batch(table: &Table, opts: &ApplyOptions) -> Result<Vec<u8>, Error> {
    Ok(encode::encode_apply(table, opts)?.bytes)
}

/// Replaces table `inet leash` with `table` in one atomic batch, then reads it back and checks
/// it. On any error the kernel has applied nothing and the previous table (if any) is intact,
/// except for [`Error::Verify`], which means the batch was committed but reads back differently.
///
/// Verification never reads a large set back: sets of more than [`COUNT_LIMIT`] elements (and
/// the forwarder's timeout sets, whose contents change on their own) are not counted; every
/// NEWSETELEM of the batch was acked with `NLM_F_EXCL`, which proves each element went in, and a
/// sample of [`VERIFY_SAMPLE`] ranges is looked up to check that they went into the right set.
pub fn apply(table: &Table, opts: &ApplyOptions) -> Result<ApplyReport, Error> {
    let batch = encode::encode_apply(table, opts)?;
    let mut sock = open_socket()?;
    let t0 = Instant::now();
    send_batch(&mut sock, &batch)?;
    let send_and_ack = t0.elapsed();
    let t1 = Instant::now();
    let counting = |_: u64, s: &SetStatus| match table.sets.iter().find(|w| w.name == s.name) {
        Some(w) if w.timeout || w.dynamic.is_some() || w.elements.len() > COUNT_LIMIT => {
            read::Counting::Known(ElementCount::Recorded(w.elements.len()))
        }
        _ => read::Counting::Dump(COUNT_LIMIT),
    };
    let got = read::read_table(&mut sock, &table.name, &counting)?;
    let table_handle = got.as_ref().map_or(0, |(h, _)| *h);
    let sampled_sets = verify(&mut sock, table, got.as_ref().map(|(_, t)| t))?;
    Ok(ApplyReport {
        messages: batch.what.len(),
        bytes: batch.bytes.len(),
        elements: batch.elements,
        send_and_ack,
        verify: t1.elapsed(),
        sampled_sets,
        table_handle,
    })
}

/// Deletes table `inet leash` in one batch. `Ok(false)` if there was none.
pub fn disable() -> Result<bool, Error> {
    let batch = encode::encode_delete(ruleset::TABLE_NAME)?;
    let mut sock = open_socket()?;
    match send_batch(&mut sock, &batch) {
        Ok(()) => Ok(true),
        Err(Error::Rejected { error, .. }) if error.errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Table `inet leash` with rule counters and set sizes; `None` if there is no such table. Sets
/// are counted up to [`COUNT_LIMIT`] elements.
pub fn status() -> Result<Option<TableStatus>, Error> {
    status_with(|_, _| None)
}

/// Like [`status`], but a set for which `recorded(table_handle, set)` gives a number is not
/// counted in the kernel at all: its count is reported as [`ElementCount::Recorded`]. Callers
/// pass the counts they recorded when they loaded the sets, for the table with that handle, so
/// that a million-element set costs nothing to report (counting it would take minutes, and even
/// the bounded count reads [`COUNT_LIMIT`] elements).
pub fn status_with(
    recorded: impl Fn(u64, &SetStatus) -> Option<usize>,
) -> Result<Option<TableStatus>, Error> {
    let mut sock = open_socket()?;
    let counting = |handle: u64, s: &SetStatus| match recorded(handle, s) {
        Some(n) => read::Counting::Known(ElementCount::Recorded(n)),
        None => read::Counting::Dump(COUNT_LIMIT),
    };
    Ok(read::read_table(&mut sock, ruleset::TABLE_NAME, &counting)?.map(|(_, t)| t))
}

/// Handle and comment of table `inet <table>`; `None` if there is no such table.
///
/// One GETTABLE request, answered with the table alone (no chains, sets or elements are read),
/// so it is cheap enough to poll every few seconds: the DNS forwarder does, to notice that the
/// table was re-applied (new handle) or that its policy changed (new comment).
pub fn table_comment(table: &str) -> Result<Option<TableInfo>, Error> {
    let mut sock = open_socket()?;
    read::table_info(&mut sock, table)
}

/// The addresses in set `<set>` of table `inet <table>`, each with the milliseconds it has left
/// before the kernel removes it; `None` if there is no such table or set.
///
/// Meant for the timeout sets the DNS forwarder fills (`flags timeout`, key `ipv4_addr` or
/// `ipv6_addr`): `leash apply` reads them before it replaces the table and re-adds the elements
/// with the time they have left in the same batch, so a re-apply does not cut off applications
/// that still use a cached DNS answer.
///
/// The time left is the element's `NFTA_SET_ELEM_EXPIRATION`, which the kernel reports for every
/// element that has a timeout. Its `NFTA_SET_ELEM_TIMEOUT` is only the fallback, should a kernel
/// send a timeout without an expiration: the kernel leaves the timeout out when it equals the
/// set's default. An element with neither never expires (possible only in a set without
/// `flags timeout`, or added by hand without a timeout to a set without a default one) and is
/// left out, as is an element whose time is up but that the kernel has not yet removed (0 ms
/// left): neither can be re-added with a timeout that means the same. The time left is counted in
/// the kernel's clock ticks and rounded down (to 4 ms at HZ=250), so it never exceeds the timeout
/// the element was added with.
///
/// One GETSETELEM dump on a socket of its own; the result is sorted by address, one entry per
/// address. The kernel walks the set from its first element again for every reply it fills (about
/// 30 KiB: some 740 IPv4 or 590 IPv6 elements), so the cost grows with the square of the set's
/// size: measured (release build, busy 2-CPU machine) 10-45 ms for 20,000 elements, 0.25-0.7 s
/// for 100,000, 4-5 s for 240,000; a debug build adds about as much again for parsing. The dump
/// is not a snapshot: an element added or removed while it runs can make another one come twice
/// (listed once here) or be missed, and the kernel does not flag such a dump.
///
/// A set with a key other than an IPv4 or IPv6 address is an error.
pub fn timed_elements(table: &str, set: &str) -> Result<Option<Vec<(IpAddr, u64)>>, Error> {
    read::timed_elements(table, set)
}

/// Sends the batch in one `sendmsg` and reads every reply. The kernel processes the whole batch
/// inside the send and queues one ack per `NLM_F_ACK` message (and the errors, all after the
/// batch was committed or aborted), so everything is there to read without blocking.
/// Reads the acks of a batch: how many messages the kernel acked, and the error that caused the
/// others. `key` maps an acked request's sequence number to its place in the batch (`None`:
/// not this batch's, skip); later errors are often consequences of the first (a rule in a
/// chain that failed), so the error with the lowest place is the cause.
pub(super) fn scan_acks(
    replies: &[u8],
    context: &'static str,
    key: impl Fn(u32) -> Option<u32>,
) -> Result<(usize, Option<(u32, KernelError)>), Error> {
    let mut acked = 0;
    let mut first_error: Option<(u32, KernelError)> = None;
    for m in Messages::new(replies) {
        let m = m.map_err(netlink(context))?;
        if m.header.ty != NLMSG_ERROR {
            continue;
        }
        let e = nl::parse_error(&m).map_err(netlink(context))?;
        let Some(k) = key(e.request.seq) else { continue };
        if e.errno == 0 {
            acked += 1;
        } else if first_error.as_ref().is_none_or(|(f, _)| k < *f) {
            first_error = Some((k, e));
        }
    }
    Ok((acked, first_error))
}

fn send_batch(sock: &mut Socket, batch: &Batch) -> Result<(), Error> {
    sock.set_send_buffer(batch.bytes.len() + SEND_BUF_SLACK)
        .map_err(netlink("sizing the netlink send buffer"))?;
    let recv = (batch.what.len() * RECV_BYTES_PER_ACK).max(1 << 20);
    sock.set_recv_buffer(recv)
        .map_err(netlink("sizing the netlink receive buffer"))?;
    sock.send(&batch.bytes)
        .map_err(netlink("sending the nftables batch"))?;
    let mut replies = Vec::new();
    sock.drain_queued(&mut replies)
        .map_err(netlink("reading the replies to the nftables batch"))?;
    let (acked, first_error) = scan_acks(&replies, "parsing the replies to the nftables batch", Some)?;
    if let Some((_, error)) = first_error {
        return Err(Error::Rejected {
            what: batch.describe(error.request.seq),
            error,
        });
    }
    if acked != batch.acked {
        return Err(Error::MissingAcks {
            acked,
            expected: batch.acked,
        });
    }
    Ok(())
}

/// Compares the table read back with the model (talpid-core style: trust, then verify). Returns
/// the number of sets whose elements were checked by sample rather than counted.
fn verify(sock: &mut Socket, want: &Table, got: Option<&TableStatus>) -> Result<usize, Error> {
    let fail = |m: String| -> Result<usize, Error> { Err(Error::Verify(m)) };
    let Some(got) = got else {
        return fail(format!("table inet {} does not exist", want.name));
    };
    if got.comment != want.comment {
        return fail(format!(
            "table comment is {:?}, want {:?}",
            got.comment, want.comment
        ));
    }
    let names = |v: Vec<&str>| v.join(", ");
    if got.chains.len() != want.chains.len() {
        return fail(format!(
            "chains are [{}], want [{}]",
            names(got.chains.iter().map(|c| c.name.as_str()).collect()),
            names(want.chains.iter().map(|c| c.name.as_str()).collect())
        ));
    }
    for w in &want.chains {
        let Some(g) = got.chains.iter().find(|c| c.name == w.name) else {
            return fail(format!("chain {} is missing", w.name));
        };
        // A regular chain has no hook, priority, policy or type.
        if w.kind == ChainType::Regular {
            if g.hook_num.is_some() || g.chain_type.is_some() {
                return fail(format!("chain {}: has a hook or type, want a regular chain", w.name));
            }
        } else if g.hook != Some(w.hook) || g.priority != Some(w.priority) || g.policy != Some(w.policy) {
            return fail(format!(
                "chain {}: hook {:?} priority {:?} policy {:?}, want {:?} {} {:?}",
                w.name, g.hook_num, g.priority, g.policy, w.hook, w.priority, w.policy
            ));
        }
        if w.kind != ChainType::Regular && g.chain_type.as_deref() != Some(w.kind.nft_name()) {
            return fail(format!(
                "chain {}: type {:?}, want {}",
                w.name,
                g.chain_type,
                w.kind.nft_name()
            ));
        }
        if g.rules.len() != w.rules.len() {
            return fail(format!(
                "chain {}: {} rules, want {}",
                w.name,
                g.rules.len(),
                w.rules.len()
            ));
        }
        for (i, (gr, wr)) in g.rules.iter().zip(&w.rules).enumerate() {
            if gr.comment != wr.comment {
                return fail(format!(
                    "chain {} rule {}: comment {:?}, want {:?}",
                    w.name,
                    i + 1,
                    gr.comment,
                    wr.comment
                ));
            }
        }
    }
    let mut sampled = 0;
    if got.sets.len() != want.sets.len() {
        return fail(format!(
            "sets are [{}], want [{}]",
            names(got.sets.iter().map(|s| s.name.as_str()).collect()),
            names(want.sets.iter().map(|s| s.name.as_str()).collect())
        ));
    }
    for w in &want.sets {
        let Some(g) = got.sets.iter().find(|s| s.name == w.name) else {
            return fail(format!("set {} is missing", w.name));
        };
        if g.key != Some(w.key)
            || g.key_len as usize != w.key.key_len()
            || g.flags & (consts::NFT_SET_INTERVAL | consts::NFT_SET_TIMEOUT)
                != encode::set_flags(w)
        {
            return fail(format!(
                "set {}: key type {} len {} flags {:#x}, want {} len {} flags {:#x}",
                w.name,
                g.key_type,
                g.key_len,
                g.flags,
                encode::key_type_id(w.key),
                w.key.key_len(),
                encode::set_flags(w)
            ));
        }
        let n = w.elements.len();
        // Meters (dynamic sets) fill from the packet path, also between commit and this read.
        if w.timeout || w.dynamic.is_some() {
            // Elements of a timeout set expire on their own and the DNS forwarder adds more at
            // any time (even between our commit and this read), so no count is "right". Every
            // NEWSETELEM of the batch was acked with NLM_F_EXCL, which proves they went in.
            continue;
        }
        if n > COUNT_LIMIT {
            // Not counted (see `apply`): look up a sample of ranges, each start and end element
            // (nft's leading zero-key end element cannot be looked up: the kernel answers ENOENT).
            let picked = bulk::sample(w.key, &w.elements, VERIFY_SAMPLE);
            let refs: Vec<&encode::KernelElem> = picked.iter().collect();
            read::check_elements_present(sock, &want.name, &w.name, &refs)?;
            sampled += 1;
            continue;
        }
        match g.elements {
            ElementCount::Exact(c) if c == n => {}
            c => return fail(format!("set {}: {c} elements, want {n}", w.name)),
        }
    }
    Ok(sampled)
}
