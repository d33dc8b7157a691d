//! The operations that change table `inet leash`: apply (one atomic batch that replaces the
//! table, then read back and verified), disable, and replacing the elements of existing sets in
//! one transaction (`leash set update`).

use std::time::{Duration, Instant};

use ruleset::{ChainType, SetElements, Table};

use super::batch::open_socket;
use super::bulk::{ReplaceOptions, SetContents, encode_replace, expected_key, sample};
use super::codec::{KernelElem, key_type_id, set_flags};
use super::consts::*;
use super::compare::same_expressions;
use super::encode::{ApplyOptions, encode_apply, encode_delete, rule_expressions};
use super::error::Error;
use super::read::{
    Counting, SetDecl, TableRead, check_elements_present, get_set, read_table, table_info,
};
use super::status::{COUNT_LIMIT, ElementCount, SetStatus};
use crate::nl::Socket;

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
    /// The handle of the new table (see [`crate::nft::TableInfo::handle`]): callers that record
    /// what they applied (element counts of large sets) key the record by it.
    pub table_handle: u64,
}

/// Elements of a large set looked up when verifying an apply (evenly spread, first and last
/// included).
const VERIFY_SAMPLE: usize = 64;

/// The nfnetlink batch [`apply`] sends for `table`, for benchmarks and tests. It can only fail
/// for a table that violates the model's invariants ([`Error::Invalid`]).
pub fn encode_apply_batch(table: &Table, opts: &ApplyOptions) -> Result<Vec<u8>, Error> {
    Ok(encode_apply(table, opts)?.bytes)
}

/// Replaces table `inet leash` with `table` in one atomic batch, then reads it back and checks
/// it: chains, every rule's comment and expressions (compared with what was sent, see
/// `compare`), sets and their elements.
///
/// What an error means for the table ([`Error::changed_nothing`]): the kernel refused the batch
/// ([`Error::Rejected`]) or it was never sent, and the previous table (if any) is intact; or the
/// kernel committed it, and reading or checking it afterwards failed ([`Error::Committed`],
/// [`Error::Verify`]); or its acks were lost and the kernel could not be asked
/// ([`Error::Uncertain`]). When the acks cannot be read, the table's handle tells: every apply
/// makes a new table, and handles only grow.
///
/// Verification never reads a large set back: sets of more than [`COUNT_LIMIT`] elements (and
/// the forwarder's timeout sets, whose contents change on their own) are not counted; every
/// NEWSETELEM of the batch was acked with `NLM_F_EXCL`, which proves each element went in, and a
/// sample of [`VERIFY_SAMPLE`] ranges is looked up to check that they went into the right set.
/// Dumps interrupted by concurrent commits (a DNS forwarder inserting) are read again.
pub fn apply(table: &Table, opts: &ApplyOptions) -> Result<ApplyReport, Error> {
    let batch = encode_apply(table, opts)?;
    let mut sock = open_socket()?;
    let before = table_info(&mut sock, &table.name)?.map(|i| i.handle);
    let t0 = Instant::now();
    if let Err(e) = batch.send(&mut sock) {
        return Err(outcome_of_failed_send(table, before, e));
    }
    let send_and_ack = t0.elapsed();
    let t1 = Instant::now();
    let committed = |e: Error| match e {
        Error::Verify(_) => e,
        e => Error::Committed(Box::new(e)),
    };
    let (table_handle, sampled_sets) = read_and_verify(&mut sock, table).map_err(committed)?;
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

/// Reads table `inet <table.name>` back and compares it with `table` as [`apply`] does after its
/// commit: chains, rules (comments and expressions), sets and element counts. Returns the number
/// of sets checked by sample; [`Error::Verify`] says what differs.
pub fn verify(table: &Table) -> Result<usize, Error> {
    let mut sock = open_socket()?;
    read_and_verify(&mut sock, table).map(|(_, sampled)| sampled)
}

/// The table's handle and the number of sets checked by sample.
fn read_and_verify(sock: &mut Socket, table: &Table) -> Result<(u64, usize), Error> {
    let counting = |_: u64, s: &SetStatus| match table.sets.iter().find(|w| w.name == s.name) {
        Some(w) if w.timeout || w.dynamic.is_some() || w.elements.len() > COUNT_LIMIT => {
            Counting::Known(ElementCount::Recorded(w.elements.len()))
        }
        _ => Counting::Dump(COUNT_LIMIT),
    };
    let got = read_table(sock, &table.name, &counting)?;
    let handle = got.as_ref().map_or(0, |t| t.handle);
    Ok((handle, verify_read(sock, table, got.as_ref())?))
}

/// What a failed send of an apply batch means. A refusal is final (the kernel aborted the
/// batch); anything else (acks lost or unreadable) is settled by asking the kernel whether
/// `table` replaced the table whose handle was `before`.
fn outcome_of_failed_send(table: &Table, before: Option<u64>, e: Error) -> Error {
    if matches!(e, Error::Rejected { .. } | Error::Invalid(_)) {
        return e;
    }
    // A fresh socket: the old one may hold unread replies.
    let now = open_socket().and_then(|mut s| table_info(&mut s, &table.name));
    match now {
        Ok(Some(i)) if Some(i.handle) != before && i.comment == table.comment => Error::Committed(Box::new(e)),
        Ok(_) => e,
        Err(_) => Error::Uncertain(Box::new(e)),
    }
}

/// Deletes table `inet leash` in one batch. `Ok(false)` if there was none.
pub fn disable() -> Result<bool, Error> {
    let batch = encode_delete(ruleset::TABLE_NAME)?;
    let mut sock = open_socket()?;
    match batch.send(&mut sock) {
        Ok(()) => Ok(true),
        Err(Error::Rejected { error, .. }) if error.errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// What a [`replace_set_elements`] did and how long it took.
#[derive(Debug, Clone, Default)]
pub struct ReplaceReport {
    /// The handle of the table the sets are in (see [`crate::nft::TableInfo::handle`]).
    pub table_handle: u64,
    /// Messages in the batch, BATCH_BEGIN and BATCH_END included.
    pub messages: usize,
    /// Bytes of the batch (one `sendmsg`).
    pub bytes: usize,
    /// Ranges (or values) now in the sets, all together.
    pub elements: usize,
    /// Encoding the batch.
    pub encode: Duration,
    /// From the send to the last ack read (the kernel processes the batch within the send).
    pub send_and_ack: Duration,
    /// Checking afterwards that the sets exist and that a sample of the new elements is in them.
    pub verify: Duration,
}

/// Replaces the elements of sets of table `inet <table>` in ONE transaction: per set a flush
/// (`DELSETELEM` without elements) and then the new elements (`NEWSETELEM` with `NLM_F_EXCL`,
/// in as many messages as needed), all between one BATCH_BEGIN and BATCH_END, sent in one
/// `sendmsg`. No rule, chain or other set is touched.
///
/// Packets never see a set half filled or empty: the kernel looks interval sets up in an array it
/// rebuilds only when the transaction commits, and a flushed element stays active for the packet
/// path until then. On any error (a refused element, a set deleted meanwhile) the kernel aborts the
/// whole batch and the sets keep their old elements.
///
/// Before sending, each set is looked up by name: a missing table is [`Error::NoSuchTable`], a
/// missing set [`Error::NoSuchSet`], and a set whose key type or interval flag does not fit the
/// elements is [`Error::Invalid`]. Afterwards the sets are looked up again and a sample of the new
/// elements is looked up in them ([`Error::Verify`] if that fails); the old elements are not read
/// back (listing a large interval set costs minutes).
pub fn replace_set_elements(
    table: &str,
    sets: &[SetContents<'_>],
    opts: &ReplaceOptions,
) -> Result<ReplaceReport, Error> {
    let mut sock = open_socket()?;
    let Some(info) = table_info(&mut sock, table)? else {
        return Err(Error::NoSuchTable(table.to_string()));
    };
    for s in sets {
        let Some(decl) = get_set(&mut sock, table, s.name)? else {
            return Err(Error::NoSuchSet {
                table: table.to_string(),
                set: s.name.to_string(),
            });
        };
        check_fits(s, &decl)?;
    }
    let t0 = Instant::now();
    let batch = encode_replace(table, sets, opts)?;
    let encode = t0.elapsed();
    let t1 = Instant::now();
    match batch.send(&mut sock) {
        Ok(()) => {}
        Err(e @ (Error::Rejected { .. } | Error::Invalid(_))) => return Err(e),
        // Sent, but its acks could not be read: the sets may hold the old or the new elements.
        Err(e) => return Err(Error::Uncertain(Box::new(e))),
    }
    let send_and_ack = t1.elapsed();
    let t2 = Instant::now();
    // From here on the kernel has committed the new elements.
    let committed = |e: Error| match e {
        Error::Verify(_) => e,
        e => Error::Committed(Box::new(e)),
    };
    let table_handle = table_info(&mut sock, table)
        .map_err(committed)?
        .map_or(info.handle, |i| i.handle);
    for s in sets {
        let key = expected_key(s.elements);
        if get_set(&mut sock, table, s.name).map_err(committed)?.is_none() {
            return Err(Error::Verify(format!(
                "set {} is gone after its elements were replaced",
                s.name
            )));
        }
        let picked = sample(key, s.elements, VERIFY_SAMPLE);
        if !picked.is_empty() {
            let refs: Vec<&KernelElem> = picked.iter().collect();
            check_elements_present(&mut sock, table, s.name, &refs).map_err(committed)?;
        }
    }
    Ok(ReplaceReport {
        table_handle,
        messages: batch.what.len(),
        bytes: batch.bytes.len(),
        elements: batch.elements,
        encode,
        send_and_ack,
        verify: t2.elapsed(),
    })
}

fn check_fits(s: &SetContents<'_>, decl: &SetDecl) -> Result<(), Error> {
    let want = match s.elements {
        SetElements::V4(_) | SetElements::V6(_) => expected_key(s.elements),
        _ => {
            return Err(Error::Invalid(format!(
                "set {}: only address ranges (IPv4 or IPv6) can be replaced",
                s.name
            )));
        }
    };
    // What the kernel would refuse (overlaps) or store differently (adjacent ranges).
    fn sorted_disjoint(r: impl Iterator<Item = (u128, u128)>, max: u128) -> bool {
        let mut prev: Option<u128> = None;
        for (a, b) in r {
            if a > b || prev.is_some_and(|p| p == max || p + 1 >= a) {
                return false;
            }
            prev = Some(b);
        }
        true
    }
    let ok = match s.elements {
        SetElements::V4(r) => sorted_disjoint(
            r.iter()
                .map(|&(a, b)| (u32::from(a).into(), u32::from(b).into())),
            u32::MAX.into(),
        ),
        SetElements::V6(r) => {
            sorted_disjoint(r.iter().map(|&(a, b)| (a.into(), b.into())), u128::MAX)
        }
        _ => false,
    };
    if !ok {
        return Err(Error::Invalid(format!(
            "set {}: ranges must be sorted, non-overlapping and non-adjacent",
            s.name
        )));
    }
    if decl.key != Some(want)
        || decl.flags & NFT_SET_INTERVAL == 0
        || decl.flags & NFT_SET_TIMEOUT != 0
    {
        return Err(Error::Invalid(format!(
            "set {} has key type {} and flags {:#x}; only an {} interval set without timeouts can \
             take these elements",
            s.name,
            decl.key
                .map_or_else(|| decl.key_type.to_string(), |k| k.nft_name().to_string()),
            decl.flags,
            want.nft_name()
        )));
    }
    debug_assert_eq!(key_type_id(want), decl.key_type);
    Ok(())
}

/// Compares the table read back with the model (talpid-core style: trust, then verify). Returns
/// the number of sets whose elements were checked by sample rather than counted.
fn verify_read(sock: &mut Socket, want: &Table, read: Option<&TableRead>) -> Result<usize, Error> {
    let fail = |m: String| -> Result<usize, Error> { Err(Error::Verify(m)) };
    let Some(read) = read else {
        return fail(format!("table inet {} does not exist", want.name));
    };
    let got = &read.status;
    let sent = rule_expressions(want);
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
                return fail(format!(
                    "chain {}: has a hook or type, want a regular chain",
                    w.name
                ));
            }
        } else if g.hook != Some(w.hook)
            || g.priority != Some(w.priority)
            || g.policy != Some(w.policy)
        {
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
        // The chains read back may be listed in another order: find this one's expressions.
        let gi = got.chains.iter().position(|c| c.name == w.name).unwrap_or(0);
        let wi = want.chains.iter().position(|c| c.name == w.name).unwrap_or(0);
        for (i, (gr, wr)) in g.rules.iter().zip(&w.rules).enumerate() {
            let (s, k) = (&sent[wi][i], read.exprs.get(gi).and_then(|c| c.get(i)));
            if let Err(e) = same_expressions(s, k.map_or(&[][..], |k| k.as_slice())) {
                return fail(format!("chain {} rule {} ({}): {e}", w.name, i + 1, wr.comment.as_deref().unwrap_or("no comment")));
            }
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
            || g.flags & (NFT_SET_INTERVAL | NFT_SET_TIMEOUT) != set_flags(w)
        {
            return fail(format!(
                "set {}: key type {} len {} flags {:#x}, want {} len {} flags {:#x}",
                w.name,
                g.key_type,
                g.key_len,
                g.flags,
                key_type_id(w.key),
                w.key.key_len(),
                set_flags(w)
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
            let picked = sample(w.key, &w.elements, VERIFY_SAMPLE);
            let refs: Vec<&KernelElem> = picked.iter().collect();
            check_elements_present(sock, &want.name, &w.name, &refs)?;
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
