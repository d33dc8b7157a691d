//! Encodes a `ruleset::Table` into one nfnetlink batch that atomically replaces table `inet leash`.
//!
//! The batch is:
//!
//! ```text
//! BATCH_BEGIN (res_id NFNL_SUBSYS_NFTABLES)
//! NEWTABLE  inet leash            create it if missing, so that the DELTABLE below cannot fail
//! DELTABLE  inet leash            drop the old table with everything in it
//! NEWTABLE  inet leash + comment
//! NEWSET    per set                (batch-local set ids 1, 2, ... as nft numbers them)
//! NEWSETELEM per chunk of elements (each ELEMENTS attribute < 64 KiB)
//! NEWCHAIN  per base chain
//! NEWRULE   per rule
//! [NEWRULE  deliberately invalid, with ApplyOptions::fault_inject]
//! BATCH_END
//! ```
//!
//! Every message names family inet and table leash; no message can touch anything else. Every
//! message except BEGIN/END carries `NLM_F_ACK`, and we keep a description per sequence number so
//! that an error can be reported as "NEWRULE for rule `dns` ...". NEWSET, NEWCHAIN and NEWSETELEM
//! also carry `NLM_F_EXCL` (nft's `add` does not): without it the kernel silently skips an element
//! that is already there, with it a duplicate fails the batch, so an ack for every NEWSETELEM
//! proves every element went in. The flags are in the nlmsghdr; the payload stays nft's.
//!
//! Sets, elements, chains and rules are encoded attribute for attribute as nft 1.0.6 encodes them
//! (including nft's user data: the table and rule comments, the set's key byte order, and the
//! interval-open flag), so `nft list` shows exactly what it shows for the same text. Timed elements
//! carry `NFTA_SET_ELEM_TIMEOUT` only, as nft sends `192.0.2.1 timeout 5m` (no expiration: a new
//! element expires after its timeout anyway). A meter's set (`Set::dynamic`) is sent as nft sends
//! `set m { type ipv4_addr; size N; flags dynamic,timeout; timeout T; }`: flags `NFT_SET_EVAL`
//! (plus `NFT_SET_TIMEOUT` with a timeout), `NFTA_SET_DESC { SIZE }` and `NFTA_SET_TIMEOUT`.

use ruleset::{
    Chain, ChainPolicy, ChainType, Hook, KeyType, L4, MeterLimit, RateLimit, Rule, Set,
    SetElements, Stmt, Table, Value,
};

use super::consts::*;
use super::expr::{self, SetRef};
use super::{ApplyOptions, Error};
use crate::nl::{MsgBuf, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, Socket};
use crate::trace::{TRACE_CHAIN, TRACE_PRIORITY, TraceFilter};

/// Name of the set the fault-injection rule looks up; sets are never named like this (the model's
/// names come from policy identifiers), and its id is one no set in the batch has.
const FAULT_SET_NAME: &str = "__leash_fault_inject__";
const FAULT_SET_ID: u32 = u32::MAX;

/// First sequence number of a batch. Every socket is new, so any number works; replies are
/// matched to messages by it.
const FIRST_SEQ: u32 = 1;

/// An encoded batch with what is needed to interpret the kernel's replies.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub bytes: Vec<u8>,
    /// Sequence number of BATCH_BEGIN; message `i` of the batch has `first_seq + i`.
    pub first_seq: u32,
    /// Description of each message, indexed by `seq - first_seq`.
    pub what: Vec<String>,
    /// Messages that carry `NLM_F_ACK` (all but BEGIN and END).
    pub acked: usize,
    /// Set elements as the model counts them (ranges or values).
    pub elements: usize,
}

impl Batch {
    /// The description of the message with sequence number `seq`.
    pub fn describe(&self, seq: u32) -> String {
        seq.checked_sub(self.first_seq)
            .and_then(|i| self.what.get(i as usize))
            .cloned()
            .unwrap_or_else(|| format!("message with unknown sequence number {seq}"))
    }
}

/// Builds messages with consecutive sequence numbers and remembers what each one is.
struct Encoder {
    b: MsgBuf,
    next_seq: u32,
    what: Vec<String>,
    acked: usize,
}

impl Encoder {
    fn new(capacity: usize) -> Encoder {
        Encoder {
            b: MsgBuf::with_capacity(capacity),
            next_seq: FIRST_SEQ,
            what: Vec::new(),
            acked: 0,
        }
    }

    /// One message: nlmsghdr + nfgenmsg(family, res_id) + attributes written by `body`.
    fn msg(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        what: String,
        body: impl FnOnce(&mut MsgBuf),
    ) -> Result<(), Error> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if flags & NLM_F_ACK != 0 {
            self.acked += 1;
        }
        let m = self.b.begin(ty, flags, seq);
        let [r0, r1] = res_id.to_be_bytes();
        self.b.put_header(&[family, NFNETLINK_V0, r0, r1]);
        body(&mut self.b);
        self.b
            .end(m)
            .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        self.what.push(what);
        Ok(())
    }

    /// An nf_tables message of family inet with `NLM_F_REQUEST | NLM_F_ACK | flags`.
    fn nft(
        &mut self,
        msg: u16,
        flags: u16,
        what: String,
        body: impl FnOnce(&mut MsgBuf),
    ) -> Result<(), Error> {
        let what = format!("{} for {what}", nft_msg_name(msg));
        self.msg(
            nft_type(msg),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_INET,
            0,
            what,
            body,
        )
    }

    fn begin_batch(&mut self) -> Result<(), Error> {
        self.msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            "the batch".into(),
            |_| {},
        )
    }

    fn end_batch(&mut self) -> Result<(), Error> {
        self.msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            "BATCH_END".into(),
            |_| {},
        )
    }

    fn finish(self, elements: usize) -> Batch {
        Batch {
            bytes: self.b.into_bytes(),
            first_seq: FIRST_SEQ,
            what: self.what,
            acked: self.acked,
            elements,
        }
    }
}

/// The batch that replaces table `inet leash` with `table`.
pub(crate) fn encode_apply(table: &Table, opts: &ApplyOptions) -> Result<Batch, Error> {
    validate(table)?;
    let elements: usize = table.sets.iter().map(|s| s.elements.len()).sum();
    let estimate = 4096
        + table
            .sets
            .iter()
            .map(|s| s.elements.len() * (2 * s.key.key_len() + 44))
            .sum::<usize>();
    let mut e = Encoder::new(estimate);
    let name = table.name.as_str();
    e.begin_batch()?;
    let t = format!("table inet {name}");
    e.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, t.clone(), |b| {
        b.attr_str(NFTA_TABLE_NAME, name);
        b.attr_be32(NFTA_TABLE_FLAGS, 0);
    })?;
    e.nft(NFT_MSG_DELTABLE, 0, t.clone(), |b| {
        b.attr_str(NFTA_TABLE_NAME, name)
    })?;
    e.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, t, |b| {
        b.attr_str(NFTA_TABLE_NAME, name);
        b.attr_be32(NFTA_TABLE_FLAGS, 0);
        if let Some(c) = &table.comment {
            b.attr(
                NFTA_TABLE_USERDATA,
                &udata_comment(NFTNL_UDATA_TABLE_COMMENT, c),
            );
        }
    })?;
    for (i, set) in table.sets.iter().enumerate() {
        encode_set(&mut e, name, set, set_id(i))?;
    }
    for chain in &table.chains {
        encode_chain(&mut e, name, chain)?;
    }
    let sets = |n: &str| -> Option<SetRef<'_>> {
        table.sets.iter().position(|s| s.name == n).map(|i| SetRef {
            name: &table.sets[i].name,
            id: set_id(i),
        })
    };
    for chain in &table.chains {
        for (i, rule) in chain.rules.iter().enumerate() {
            encode_rule(&mut e, name, chain, i, rule, &sets)?;
        }
    }
    if opts.fault_inject {
        let chain = table.chains.first().map_or("output", |c| c.name.as_str());
        e.nft(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            "the injected fault (a rule using a missing set)".into(),
            |b| {
                b.attr_str(NFTA_RULE_TABLE, name);
                b.attr_str(NFTA_RULE_CHAIN, chain);
                let x = b.begin_nested(NFTA_RULE_EXPRESSIONS);
                expr::lookup(
                    b,
                    Some(SetRef {
                        name: FAULT_SET_NAME,
                        id: FAULT_SET_ID,
                    }),
                );
                b.end_nested(x);
            },
        )?;
    }
    e.end_batch()?;
    Ok(e.finish(elements))
}

/// The batch that deletes table `inet <name>` (and nothing else).
pub(crate) fn encode_delete(name: &str) -> Result<Batch, Error> {
    let mut e = Encoder::new(256);
    e.begin_batch()?;
    e.nft(NFT_MSG_DELTABLE, 0, format!("table inet {name}"), |b| {
        b.attr_str(NFTA_TABLE_NAME, name)
    })?;
    e.end_batch()?;
    Ok(e.finish(0))
}

/// nft numbers the sets of a batch from 1 in the order it adds them.
fn set_id(index: usize) -> u32 {
    index as u32 + 1
}

/// libnftnl's user-data TLV holding a comment: type, length (with the NUL), text, NUL.
pub(crate) fn udata_comment(ty: u8, comment: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(comment.len() + 3);
    v.push(ty);
    v.push((comment.len() + 1) as u8);
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    v
}

/// libnftnl's user-data TLV holding a u32 in host byte order.
fn udata_u32(ty: u8, value: u32) -> Vec<u8> {
    let mut v = vec![ty, 4];
    v.extend_from_slice(&value.to_ne_bytes());
    v
}

/// nft's datatype number for a key type (stored as NFTA_SET_KEY_TYPE; nft lists it back by it).
pub(crate) fn key_type_id(k: KeyType) -> u32 {
    match k {
        KeyType::Ipv4Addr => TYPE_IPADDR,
        KeyType::Ipv6Addr => TYPE_IP6ADDR,
        KeyType::InetService => TYPE_INET_SERVICE,
        KeyType::Uid => TYPE_UID,
        KeyType::Gid => TYPE_GID,
        KeyType::Icmpv6Type => TYPE_ICMPV6_TYPE,
    }
}

/// The inverse of [`key_type_id`].
pub(crate) fn key_type_from_id(id: u32) -> Option<KeyType> {
    [
        KeyType::Ipv4Addr,
        KeyType::Ipv6Addr,
        KeyType::InetService,
        KeyType::Uid,
        KeyType::Gid,
        KeyType::Icmpv6Type,
    ]
    .into_iter()
    .find(|k| key_type_id(*k) == id)
}

/// nft's byte order of the key: uid and gid are host-order integers, the rest network order.
fn key_byteorder(k: KeyType) -> u32 {
    match k {
        KeyType::Uid | KeyType::Gid => BYTEORDER_HOST_ENDIAN,
        _ => BYTEORDER_BIG_ENDIAN,
    }
}

/// The interval and timeout bits of a set's `NFTA_SET_FLAGS` (what verification compares). A
/// dynamic set with a default timeout has the timeout flag too, as nft gives it for `timeout T`.
pub(crate) fn set_flags(set: &Set) -> u32 {
    let mut flags = 0;
    if set.interval {
        flags |= NFT_SET_INTERVAL;
    }
    if set.timeout || set.dynamic.is_some_and(|d| d.timeout_ms.is_some()) {
        flags |= NFT_SET_TIMEOUT;
    }
    flags
}

/// `NFTA_SET_FLAGS` as sent: [`set_flags`] and, for a meter's set, `flags dynamic`.
pub(crate) fn set_flags_sent(set: &Set) -> u32 {
    let eval = if set.dynamic.is_some() {
        NFT_SET_EVAL
    } else {
        0
    };
    set_flags(set) | eval
}

fn encode_set(e: &mut Encoder, table: &str, set: &Set, id: u32) -> Result<(), Error> {
    let flags = set_flags_sent(set);
    e.nft(
        NFT_MSG_NEWSET,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("set `{}`", set.name),
        |b| {
            b.attr_str(NFTA_SET_TABLE, table);
            b.attr_str(NFTA_SET_NAME, &set.name);
            b.attr_be32(NFTA_SET_FLAGS, flags);
            b.attr_be32(NFTA_SET_KEY_TYPE, key_type_id(set.key));
            b.attr_be32(NFTA_SET_KEY_LEN, set.key.key_len() as u32);
            b.attr_be32(NFTA_SET_ID, id);
            // `size N` and `timeout T` of a dynamic set, where libnftnl puts them.
            if let Some(d) = &set.dynamic {
                let desc = b.begin_nested(NFTA_SET_DESC);
                b.attr_be32(NFTA_SET_DESC_SIZE, d.size);
                b.end_nested(desc);
                if let Some(ms) = d.timeout_ms {
                    b.attr_be64(NFTA_SET_TIMEOUT, ms);
                }
            }
            b.attr(
                NFTA_SET_USERDATA,
                &udata_u32(NFTNL_UDATA_SET_KEYBYTEORDER, key_byteorder(set.key)),
            );
        },
    )?;

    // Straight from the model's ranges, no allocation per element (see `bulk`): a blocklist
    // set can hold a million ranges.
    let n = set.elements.len();
    for r in super::bulk::chunks(set.key, &set.elements) {
        let what = format!("set `{}` (elements {}..{} of {n})", set.name, r.start + 1, r.end);
        e.nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL, what, |b| {
            b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
            b.attr_str(NFTA_SET_ELEM_LIST_SET, &set.name);
            b.attr_be32(NFTA_SET_ELEM_LIST_SET_ID, id);
            super::bulk::put_elements(b, set.key, &set.elements, r);
        })?;
    }
    Ok(())
}

/// Writes `NFTA_SET_ELEM_LIST_ELEMENTS`: each element's interval-end flag and key and, when
/// `adding` (not looking up), its timeout and nft's "interval open" user data. The attribute order
/// is libnftnl's: flags, timeout, key, user data.
pub(crate) fn put_element_list<'a>(
    b: &mut MsgBuf,
    elems: impl IntoIterator<Item = &'a KernelElem>,
    adding: bool,
) {
    let list = b.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
    for (i, e) in elems.into_iter().enumerate() {
        // libnftnl numbers the list entries 1, 2, ... (the kernel ignores the type).
        let el = b.begin_nested(i as u16 + 1);
        if e.end {
            b.attr_be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
        if let (Some(ms), true) = (e.timeout_ms, adding) {
            b.attr_be64(NFTA_SET_ELEM_TIMEOUT, ms);
        }
        let k = b.begin_nested(NFTA_SET_ELEM_KEY);
        b.attr(NFTA_DATA_VALUE, &e.key);
        b.end_nested(k);
        if e.open && adding {
            b.attr(
                NFTA_SET_ELEM_USERDATA,
                &udata_u32(NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_SET_ELEM_F_INTERVAL_OPEN),
            );
        }
        b.end_nested(el);
    }
    b.end_nested(list);
}

/// One element as the kernel stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelElem {
    pub key: Vec<u8>,
    /// Closes an interval (`NFT_SET_ELEM_INTERVAL_END`).
    pub end: bool,
    /// An interval running to the key type's maximum (nft's INTERVAL_OPEN user data).
    pub open: bool,
    /// `NFTA_SET_ELEM_TIMEOUT` (elements of timeout sets).
    pub timeout_ms: Option<u64>,
}

// The reference encoding of elements below is kept for tests: `bulk` encodes them without
// allocating and is checked against it byte for byte.
#[cfg(test)]
impl KernelElem {
    fn key(key: Vec<u8>) -> KernelElem {
        KernelElem {
            key,
            end: false,
            open: false,
            timeout_ms: None,
        }
    }
}

/// The kernel elements of a set, and the index in `elems` where each model element (range or
/// value) starts.
#[cfg(test)]
pub(crate) struct KernelElements {
    pub elems: Vec<KernelElem>,
    pub starts: Vec<usize>,
}

#[cfg(test)]
pub(crate) fn kernel_elements(set: &Set) -> KernelElements {
    let mut elems = Vec::with_capacity(set.elements.len() * 2 + 1);
    let mut starts = Vec::with_capacity(set.elements.len());
    match &set.elements {
        SetElements::V4(r) => interval_elems(
            r.iter().map(|(a, b)| (u32::from(*a), u32::from(*b))),
            u32::MAX,
            |v| v.to_be_bytes().to_vec(),
            &mut elems,
            &mut starts,
        ),
        SetElements::V6(r) => interval_elems(
            r.iter().map(|(a, b)| (u128::from(*a), u128::from(*b))),
            u128::MAX,
            |v| v.to_be_bytes().to_vec(),
            &mut elems,
            &mut starts,
        ),
        SetElements::Ports(r) => interval_elems(
            r.iter().copied(),
            u16::MAX,
            |v| v.to_be_bytes().to_vec(),
            &mut elems,
            &mut starts,
        ),
        SetElements::Ids(ids) => {
            for &v in ids {
                starts.push(elems.len());
                let key = match set.key {
                    // Validated to fit a byte.
                    KeyType::Icmpv6Type => vec![v as u8],
                    // uid and gid: host byte order, as nft stores them.
                    _ => v.to_ne_bytes().to_vec(),
                };
                elems.push(KernelElem::key(key));
            }
        }
        SetElements::TimedV4(v) => {
            for &(a, ms) in v {
                starts.push(elems.len());
                elems.push(KernelElem {
                    timeout_ms: Some(ms),
                    ..KernelElem::key(a.octets().to_vec())
                });
            }
        }
        SetElements::TimedV6(v) => {
            for &(a, ms) in v {
                starts.push(elems.len());
                elems.push(KernelElem {
                    timeout_ms: Some(ms),
                    ..KernelElem::key(a.octets().to_vec())
                });
            }
        }
    }
    KernelElements { elems, starts }
}

/// nft's interval encoding (nftables `src/intervals.c`, `set_to_intervals`): each range
/// `lo-hi` becomes a start element `lo` and an end element `hi+1` flagged INTERVAL_END. A range
/// ending at the type's maximum has no end element; its start carries nft's INTERVAL_OPEN user
/// data instead. Unless the first range starts at 0, a zero-key INTERVAL_END element comes first.
#[cfg(test)]
fn interval_elems<T: Copy + PartialEq + Default + num::Inc>(
    ranges: impl Iterator<Item = (T, T)>,
    max: T,
    key: impl Fn(T) -> Vec<u8>,
    out: &mut Vec<KernelElem>,
    starts: &mut Vec<usize>,
) {
    let end = |k| KernelElem {
        end: true,
        ..KernelElem::key(k)
    };
    let mut first = true;
    for (lo, hi) in ranges {
        if first && lo != T::default() {
            out.push(end(key(T::default())));
        }
        first = false;
        starts.push(out.len());
        let open = hi == max;
        out.push(KernelElem {
            open,
            ..KernelElem::key(key(lo))
        });
        if !open {
            out.push(end(key(hi.inc())));
        }
    }
}

mod num {
    /// `x + 1` for the unsigned key types (never called on the maximum).
    pub trait Inc {
        fn inc(self) -> Self;
    }
    impl Inc for u16 {
        fn inc(self) -> Self {
            self + 1
        }
    }
    impl Inc for u32 {
        fn inc(self) -> Self {
            self + 1
        }
    }
    impl Inc for u128 {
        fn inc(self) -> Self {
            self + 1
        }
    }
}

fn encode_chain(e: &mut Encoder, table: &str, chain: &Chain) -> Result<(), Error> {
    let hook = match chain.hook {
        Hook::Output => NF_INET_LOCAL_OUT,
    };
    let policy = match chain.policy {
        ChainPolicy::Accept => NF_ACCEPT,
        ChainPolicy::Drop => NF_DROP,
    };
    e.nft(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("chain `{}`", chain.name),
        |b| {
            b.attr_str(NFTA_CHAIN_TABLE, table);
            b.attr_str(NFTA_CHAIN_NAME, &chain.name);
            // A regular chain has no type, hook or policy: nft sends only its name.
            if chain.kind == ChainType::Regular {
                return;
            }
            b.attr_str(NFTA_CHAIN_TYPE, chain.kind.nft_name());
            b.attr_be32(NFTA_CHAIN_POLICY, policy);
            let h = b.begin_nested(NFTA_CHAIN_HOOK);
            b.attr_be32(NFTA_HOOK_HOOKNUM, hook);
            b.attr_be32(NFTA_HOOK_PRIORITY, chain.priority as u32);
            b.end_nested(h);
        },
    )
}

fn encode_rule<'a>(
    e: &mut Encoder,
    table: &str,
    chain: &Chain,
    index: usize,
    rule: &Rule,
    sets: &dyn Fn(&str) -> Option<SetRef<'a>>,
) -> Result<(), Error> {
    let what = match &rule.comment {
        Some(c) => format!("rule `{c}` (chain {}, rule {})", chain.name, index + 1),
        None => format!("rule {} of chain {}", index + 1, chain.name),
    };
    e.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, what, |b| {
        b.attr_str(NFTA_RULE_TABLE, table);
        b.attr_str(NFTA_RULE_CHAIN, &chain.name);
        let x = b.begin_nested(NFTA_RULE_EXPRESSIONS);
        expr::encode_stmts(b, &rule.stmts, sets);
        b.end_nested(x);
        if let Some(c) = &rule.comment {
            b.attr(
                NFTA_RULE_USERDATA,
                &udata_comment(NFTNL_UDATA_RULE_COMMENT, c),
            );
        }
    })
}

/// Checks what the kernel would reject (or accept with a different meaning) before anything is
/// sent, so the error names the model's item rather than a netlink attribute.
pub(crate) fn validate(table: &Table) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Invalid(m));
    if table.name != ruleset::TABLE_NAME {
        return bad(format!(
            "table is named `{}`; leash only ever manages table inet {}",
            table.name,
            ruleset::TABLE_NAME
        ));
    }
    if let Some(c) = &table.comment {
        check_comment("table comment", c)?;
    }
    let mut set_names = std::collections::HashSet::new();
    for s in &table.sets {
        check_name("set", &s.name)?;
        if s.name == FAULT_SET_NAME {
            return bad(format!("set name `{}` is reserved", s.name));
        }
        if !set_names.insert(s.name.as_str()) {
            return bad(format!("two sets are named `{}`", s.name));
        }
        check_set(s)?;
    }
    let mut chain_names = std::collections::HashSet::new();
    for c in &table.chains {
        check_name("chain", &c.name)?;
        if !chain_names.insert(c.name.as_str()) {
            return bad(format!("two chains are named `{}`", c.name));
        }
        for (i, r) in c.rules.iter().enumerate() {
            let at = || format!("chain {}, rule {}", c.name, i + 1);
            if let Some(cm) = &r.comment {
                check_comment(&format!("comment of {}", at()), cm)?;
            }
            // The layer-4 protocol the rule has matched so far (for `redirect`).
            let mut l4 = None;
            for s in &r.stmts {
                match s {
                    Stmt::L4proto(p) | Stmt::Dport { l4: p, .. } => l4 = Some(*p),
                    Stmt::Icmpv6Type(_) => l4 = Some(L4::Icmpv6),
                    Stmt::Redirect { .. } if c.kind != ChainType::Nat => {
                        // The kernel answers EOPNOTSUPP, which would not say why.
                        return bad(format!(
                            "{}: redirect is only valid in a nat chain, and chain {} is type {}",
                            at(),
                            c.name,
                            c.kind.nft_name()
                        ));
                    }
                    Stmt::Redirect { .. } if !matches!(l4, Some(L4::Tcp | L4::Udp)) => {
                        // nft refuses it too ("transport protocol mapping is only valid after
                        // transport protocol match"), so the rendered text could not load.
                        return bad(format!(
                            "{}: redirect needs a tcp or udp match earlier in the rule",
                            at()
                        ));
                    }
                    _ => {}
                }
                if let Stmt::Dport {
                    l4: l4 @ (L4::Icmp | L4::Icmpv6),
                    ..
                } = s
                {
                    return bad(format!("{}: {} has no ports", at(), l4.nft_name()));
                }
                check_stmt(table, s).map_err(|m| Error::Invalid(format!("{}: {m}", at())))?;
                let (name, want) = match s {
                    Stmt::Dport {
                        value: Value::InSet(n),
                        ..
                    } => (n, KeyType::InetService),
                    Stmt::Daddr4(Value::InSet(n)) => (n, KeyType::Ipv4Addr),
                    Stmt::Daddr6(Value::InSet(n)) => (n, KeyType::Ipv6Addr),
                    Stmt::SkUid(Value::InSet(n)) => (n, KeyType::Uid),
                    Stmt::SkGid(Value::InSet(n)) => (n, KeyType::Gid),
                    Stmt::Icmpv6Type(Value::InSet(n)) => (n, KeyType::Icmpv6Type),
                    Stmt::Log { prefix, .. } => {
                        if prefix.len() >= NF_LOG_PREFIXLEN || prefix.contains('\0') {
                            return bad(format!(
                                "{}: log prefix longer than {} bytes",
                                at(),
                                NF_LOG_PREFIXLEN - 1
                            ));
                        }
                        continue;
                    }
                    _ => continue,
                };
                match table.sets.iter().find(|s| &s.name == name) {
                    None => {
                        return bad(format!(
                            "{}: uses set @{name}, which the table does not define",
                            at()
                        ));
                    }
                    Some(s) if s.key != want => {
                        return bad(format!(
                            "{}: set @{name} holds {}, but the statement needs {}",
                            at(),
                            s.key.nft_name(),
                            want.nft_name()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

/// Checks a time, rate, connection-count, cgroup or meter statement against what nft can write
/// and the kernel accepts; the message says what is wrong (the caller adds where).
fn check_stmt(table: &Table, s: &Stmt) -> Result<(), String> {
    match s {
        Stmt::MetaDay { first, last } if u32::from(*first.max(last)) > ruleset::render::DAY_MAX => {
            return Err(format!(
                "meta day {first}-{last}: weekdays are 0 (Sunday) to 6 (Saturday)"
            ));
        }
        Stmt::MetaHour { first, last } if *first.max(last) > ruleset::render::HOUR_MAX => {
            return Err(format!(
                "meta hour {first}-{last}: a second of the day is 0 to {}",
                ruleset::render::HOUR_MAX
            ));
        }
        // The kernel compares an unsigned u64, so an instant before 1970 would wrap to the far
        // future; nft writes whole seconds only, so the text could not say more.
        Stmt::MetaTimeFrom(ns) | Stmt::MetaTimeUntil(ns) if *ns < 0 || *ns % 1_000_000_000 != 0 => {
            return Err(format!(
                "meta time {ns} ns: must be a whole second at or after 1970-01-01 00:00:00 UTC"
            ));
        }
        Stmt::Limit(l) => check_rate(l)?,
        Stmt::CtCount(_) => {}
        Stmt::SocketCgroup { level, path, id } => {
            if *level > NFT_SOCKET_MAX_LEVEL {
                return Err(format!(
                    "socket cgroupv2 level {level}: the kernel supports levels up to {NFT_SOCKET_MAX_LEVEL}"
                ));
            }
            // The path is only text (the kernel compares `id`), but it must survive nft's
            // quoting for the rendered script to load.
            if path.is_empty() || path.contains(['"', '\0', '\n']) {
                return Err(format!(
                    "socket cgroupv2 path {path:?}: must be non-empty, without quotes or line breaks"
                ));
            }
            if *id == 0 {
                return Err(format!(
                    "socket cgroupv2 \"{path}\": cgroup id 0 names no cgroup"
                ));
            }
        }
        Stmt::Meter { set, key, limit } => {
            let Some(m) = table.sets.iter().find(|x| &x.name == set) else {
                return Err(format!("uses set @{set}, which the table does not define"));
            };
            if m.dynamic.is_none() {
                // nft would make the set dynamic on its own, and the table would then list
                // differently from the model.
                return Err(format!(
                    "a meter needs a dynamic set, and set @{set} is not (Set::dynamic is None)"
                ));
            }
            if m.key != key.key_type() {
                return Err(format!(
                    "set @{set} holds {}, but the meter's key is {}",
                    m.key.nft_name(),
                    key.key_type().nft_name()
                ));
            }
            match limit {
                MeterLimit::Rate(l) => check_rate(l)?,
                MeterLimit::Count(_) => {
                    if set_flags(m) & NFT_SET_TIMEOUT != 0 {
                        // The kernel answers EOPNOTSUPP: a connection counter is removed by
                        // the kernel's own garbage collection once its connections are gone,
                        // never by a timeout.
                        return Err(format!(
                            "ct count in set @{set}: a set of connection counters cannot have a timeout"
                        ));
                    }
                }
            }
            // One set holds one kind of element: a limiter or a counter, not both.
            let other_kind = table
                .chains
                .iter()
                .flat_map(|c| &c.rules)
                .flat_map(|r| &r.stmts)
                .any(|o| match o {
                    Stmt::Meter {
                        set: s2, limit: l2, ..
                    } => {
                        s2 == set
                            && matches!(l2, MeterLimit::Rate(_))
                                != matches!(limit, MeterLimit::Rate(_))
                    }
                    _ => false,
                });
            if other_kind {
                return Err(format!(
                    "set @{set} is used both for rate limits and for ct count; give each its own set"
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// What the kernel's `nft_limit_init` accepts (it answers EINVAL or EOVERFLOW otherwise), plus
/// nft's "packet limit burst must be > 0" (the kernel would silently turn 0 into 5).
fn check_rate(l: &RateLimit) -> Result<(), String> {
    let what = || {
        format!(
            "limit rate {}/{} burst {}",
            l.rate,
            l.unit.nft_name(),
            l.burst
        )
    };
    if l.rate == 0 || l.burst == 0 {
        return Err(format!("{}: rate and burst must be at least 1", what()));
    }
    let nsecs = l.unit.seconds() * 1_000_000_000;
    let fits = l.rate.checked_add(u64::from(l.burst)).is_some()
        && (nsecs / l.rate).checked_mul(u64::from(l.burst)).is_some();
    if !fits {
        return Err(format!(
            "{}: the bucket overflows the kernel's 64-bit token count (lower the burst)",
            what()
        ));
    }
    Ok(())
}

fn check_name(kind: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > NFT_NAME_MAXLEN || name.contains('\0') {
        return Err(Error::Invalid(format!(
            "{kind} name `{name}` must be 1 to {NFT_NAME_MAXLEN} bytes without NUL"
        )));
    }
    Ok(())
}

fn check_comment(what: &str, c: &str) -> Result<(), Error> {
    if c.len() >= NFTNL_UDATA_COMMENT_MAXLEN || c.contains('\0') {
        return Err(Error::Invalid(format!(
            "{what} is longer than {} bytes",
            NFTNL_UDATA_COMMENT_MAXLEN - 1
        )));
    }
    Ok(())
}

/// Largest element timeout the kernel accepts: it converts milliseconds to nanoseconds in a u64
/// (`nf_msecs_to_jiffies64` answers ERANGE from `u64::MAX / 1_000_000` on).
pub(crate) const MAX_TIMEOUT_MS: u64 = u64::MAX / 1_000_000 - 1;

fn check_set(s: &Set) -> Result<(), Error> {
    let bad = |m: &str| Err(Error::Invalid(format!("set `{}`: {m}", s.name)));
    let timed = matches!(
        s.elements,
        SetElements::TimedV4(_) | SetElements::TimedV6(_)
    );
    let kind_ok = matches!(
        (&s.elements, s.key),
        (
            SetElements::V4(_) | SetElements::TimedV4(_),
            KeyType::Ipv4Addr
        ) | (
            SetElements::V6(_) | SetElements::TimedV6(_),
            KeyType::Ipv6Addr
        ) | (SetElements::Ports(_), KeyType::InetService)
            | (
                SetElements::Ids(_),
                KeyType::Uid | KeyType::Gid | KeyType::Icmpv6Type
            )
    );
    // An empty set may be written with any variant of its key type (a timeout set the DNS
    // forwarder fills later has no elements at apply time).
    if !kind_ok {
        return bad(&format!(
            "elements do not match key type {}",
            s.key.nft_name()
        ));
    }
    if let Some(d) = &s.dynamic {
        // A meter's set: the packet path fills it, each element with its own limiter or counter.
        if s.interval {
            // The kernel answers EOPNOTSUPP: interval sets cannot be updated from the packet path.
            return bad("a dynamic set cannot have flags interval");
        }
        if s.timeout && d.timeout_ms.is_none() {
            // `flags timeout` without a default timeout: elements a rule adds would never expire
            // (and a set of connection counters cannot have the flag at all). On a dynamic set,
            // `Set::timeout` may only restate that `Dynamic::timeout_ms` is set.
            return bad("flags timeout on a dynamic set needs Dynamic::timeout_ms");
        }
        if !s.elements.is_empty() {
            return bad("a dynamic set starts empty (its elements come from the packet path)");
        }
        if d.size == 0 {
            return bad("a dynamic set needs a size of at least 1");
        }
        if let Some(ms) = d.timeout_ms
            && !(1..=MAX_TIMEOUT_MS).contains(&ms)
        {
            return bad(&format!("timeout must be 1 to {MAX_TIMEOUT_MS} ms"));
        }
        return Ok(());
    }
    if s.timeout && s.interval {
        // nft allows it, but leash's interval encoding carries no timeouts.
        return bad("a set cannot have both flags interval and flags timeout");
    }
    if timed && !s.timeout {
        return bad("elements with a timeout need flags timeout");
    }
    let is_range = matches!(
        s.elements,
        SetElements::V4(_) | SetElements::V6(_) | SetElements::Ports(_)
    );
    if s.timeout {
        if is_range && !s.elements.is_empty() {
            return bad("a timeout set holds single addresses with timeouts, not ranges");
        }
    } else if is_range != s.interval {
        return bad(if is_range {
            "address and port sets must have flags interval"
        } else {
            "uid, gid, icmpv6 type and timed address sets cannot have flags interval"
        });
    }
    fn ranges_ok<T: PartialOrd + Copy + num::Inc>(r: &[(T, T)], max: T) -> bool {
        r.iter().all(|(a, b)| a <= b)
            && r.windows(2).all(|w| w[0].1 != max && w[0].1.inc() < w[1].0)
    }
    fn unique<T: std::hash::Hash + Eq>(v: impl ExactSizeIterator<Item = T>) -> bool {
        let mut seen = std::collections::HashSet::with_capacity(v.len());
        v.into_iter().all(|x| seen.insert(x))
    }
    fn timeouts_ok<T>(v: &[(T, u64)]) -> bool {
        v.iter().all(|&(_, ms)| (1..=MAX_TIMEOUT_MS).contains(&ms))
    }
    let ok = match &s.elements {
        SetElements::V4(r) => ranges_ok(
            &r.iter()
                .map(|(a, b)| (u32::from(*a), u32::from(*b)))
                .collect::<Vec<_>>(),
            u32::MAX,
        ),
        SetElements::V6(r) => ranges_ok(
            &r.iter()
                .map(|(a, b)| (u128::from(*a), u128::from(*b)))
                .collect::<Vec<_>>(),
            u128::MAX,
        ),
        SetElements::Ports(r) => ranges_ok(r, u16::MAX),
        SetElements::Ids(ids) => {
            if s.key == KeyType::Icmpv6Type && ids.iter().any(|&v| v > u32::from(u8::MAX)) {
                return bad("icmpv6 types must be at most 255");
            }
            unique(ids.iter())
        }
        SetElements::TimedV4(v) => {
            if !timeouts_ok(v) {
                return bad(&format!("timeouts must be 1 to {MAX_TIMEOUT_MS} ms"));
            }
            unique(v.iter().map(|e| e.0))
        }
        SetElements::TimedV6(v) => {
            if !timeouts_ok(v) {
                return bad(&format!("timeouts must be 1 to {MAX_TIMEOUT_MS} ms"));
            }
            unique(v.iter().map(|e| e.0))
        }
    };
    if !ok {
        return bad(if is_range {
            "ranges must be sorted, non-overlapping and non-adjacent"
        } else {
            "values must be unique"
        });
    }
    Ok(())
}

// --- leash trace ---------------------------------------------------------------------------------
//
// `crate::trace` reaches this code through the methods below: the encoder, the expressions and
// the batch sender are private to the `nft` module, and methods of a type are callable wherever
// the type is.

impl TraceFilter {
    /// The batch that adds the trace chain to table `inet leash`:
    ///
    /// ```text
    /// BATCH_BEGIN
    /// [DELCHAIN inet leash trace]   when `remove_stale`: a chain left by an earlier session
    /// NEWCHAIN  inet leash trace    type filter hook output priority TRACE_PRIORITY; policy accept
    /// NEWRULE   inet leash trace    <this filter> meta nftrace set 1 comment "<comment>"
    /// BATCH_END
    /// ```
    ///
    /// No NEWTABLE: the chain can only go into a table that exists, so a missing table fails the
    /// batch (ENOENT) instead of creating an empty table that would allow everything.
    pub(crate) fn install_batch(&self, comment: &str, remove_stale: bool) -> Result<Batch, Error> {
        check_comment("trace rule comment", comment)?;
        let table = ruleset::TABLE_NAME;
        let mut e = Encoder::new(1024);
        e.begin_batch()?;
        if remove_stale {
            trace_delchain(&mut e)?;
        }
        let chain = Chain {
            name: TRACE_CHAIN.into(),
            kind: ChainType::Filter,
            hook: Hook::Output,
            priority: TRACE_PRIORITY,
            policy: ChainPolicy::Accept,
            rules: Vec::new(),
        };
        encode_chain(&mut e, table, &chain)?;
        e.nft(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            format!("rule `{comment}` (chain {TRACE_CHAIN})"),
            |b| {
                b.attr_str(NFTA_RULE_TABLE, table);
                b.attr_str(NFTA_RULE_CHAIN, TRACE_CHAIN);
                let x = b.begin_nested(NFTA_RULE_EXPRESSIONS);
                expr::encode_trace_stmts(b, self.daddr, self.uid, self.dport);
                b.end_nested(x);
                b.attr(
                    NFTA_RULE_USERDATA,
                    &udata_comment(NFTNL_UDATA_RULE_COMMENT, comment),
                );
            },
        )?;
        e.end_batch()?;
        Ok(e.finish(0))
    }

    /// The batch that deletes the trace chain with its rule (a DELCHAIN without `NLM_F_NONREC`
    /// deletes the chain's rules with it; nothing jumps to the chain, so nothing else holds it).
    pub(crate) fn remove_batch() -> Result<Batch, Error> {
        let mut e = Encoder::new(256);
        e.begin_batch()?;
        trace_delchain(&mut e)?;
        e.end_batch()?;
        Ok(e.finish(0))
    }
}

fn trace_delchain(e: &mut Encoder) -> Result<(), Error> {
    e.nft(NFT_MSG_DELCHAIN, 0, format!("chain `{TRACE_CHAIN}`"), |b| {
        b.attr_str(NFTA_CHAIN_TABLE, ruleset::TABLE_NAME);
        b.attr_str(NFTA_CHAIN_NAME, TRACE_CHAIN);
    })
}

impl Batch {
    /// Sends the batch in one `sendmsg` and checks every ack (see `super::send_batch`).
    pub(crate) fn send(&self, sock: &mut Socket) -> Result<(), Error> {
        super::send_batch(sock, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::{Attrs, Messages};
    use ruleset::{Chain, Rule};
    use std::net::Ipv4Addr;

    fn table(sets: Vec<Set>, rules: Vec<Rule>) -> Table {
        Table {
            name: "leash".into(),
            comment: Some("c".into()),
            sets,
            chains: vec![Chain {
                name: "output".into(),
                kind: ChainType::Filter,
                hook: Hook::Output,
                priority: 0,
                policy: ChainPolicy::Drop,
                rules,
            }],
        }
    }

    fn v4set(name: &str, n: u32) -> Set {
        let r = (0..n)
            .map(|i| {
                (
                    Ipv4Addr::from(0x0100_0000 + i * 4),
                    Ipv4Addr::from(0x0100_0000 + i * 4 + 1),
                )
            })
            .collect();
        Set {
            name: name.into(),
            key: KeyType::Ipv4Addr,
            interval: true,
            timeout: false,
            dynamic: None,
            elements: SetElements::V4(r),
        }
    }

    #[test]
    fn batch_is_framed_and_numbered() {
        let b = encode_apply(
            &table(
                vec![v4set("a", 3)],
                vec![Rule {
                    stmts: vec![Stmt::Accept],
                    comment: Some("x".into()),
                }],
            ),
            &ApplyOptions::default(),
        )
        .unwrap();
        let msgs: Vec<_> = Messages::new(&b.bytes).collect::<Result<_, _>>().unwrap();
        let types: Vec<u16> = msgs.iter().map(|m| m.header.ty).collect();
        let t = nft_type;
        assert_eq!(
            types,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_DELTABLE),
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_NEWSET),
                t(NFT_MSG_NEWSETELEM),
                t(NFT_MSG_NEWCHAIN),
                t(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(
            msgs[0].payload,
            &[0, 0, 0, 10],
            "BEGIN: AF_UNSPEC, v0, res_id NFNL_SUBSYS_NFTABLES"
        );
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.header.seq, FIRST_SEQ + i as u32);
            if (1..msgs.len() - 1).contains(&i) {
                assert_eq!(m.payload[0], NFPROTO_INET);
                assert_ne!(m.header.flags & NLM_F_ACK, 0);
                // Every message names table leash first.
                let first = m.attrs(4).next().unwrap().unwrap();
                assert_eq!((first.ty, first.str().as_str()), (1, "leash"));
            }
        }
        assert_eq!(b.acked, msgs.len() - 2);
        assert_eq!(
            b.describe(FIRST_SEQ + 7),
            "NEWRULE for rule `x` (chain output, rule 1)"
        );
    }

    #[test]
    fn big_sets_are_chunked_below_64k_without_splitting_ranges() {
        let b = encode_apply(
            &table(vec![v4set("big", 10_000)], vec![]),
            &ApplyOptions::default(),
        )
        .unwrap();
        let mut starts = 0;
        let mut ends = 0;
        let mut chunks = 0;
        for m in Messages::new(&b.bytes) {
            let m = m.unwrap();
            if m.header.ty != nft_type(NFT_MSG_NEWSETELEM) {
                continue;
            }
            chunks += 1;
            let list = m
                .attrs(4)
                .find(|a| a.as_ref().unwrap().ty == NFTA_SET_ELEM_LIST_ELEMENTS)
                .unwrap()
                .unwrap();
            assert!(list.data.len() + 4 <= 65535);
            let mut last_was_start = false;
            for el in list.nested() {
                let el = el.unwrap();
                let end = Attrs::new(el.data).any(|a| a.unwrap().ty == NFTA_SET_ELEM_FLAGS);
                if end {
                    ends += 1
                } else {
                    starts += 1
                }
                last_was_start = !end;
            }
            assert!(!last_was_start, "a chunk ends inside a range");
        }
        assert!(chunks > 1);
        assert_eq!(starts, 10_000);
        assert_eq!(
            ends, 10_001,
            "one end per range plus nft's leading zero end element"
        );
    }

    #[test]
    fn interval_encoding_matches_nft_special_cases() {
        let key = |v: u16| v.to_be_bytes().to_vec();
        let el = |v: u16, end: bool, open: bool| KernelElem {
            key: key(v),
            end,
            open,
            timeout_ms: None,
        };
        let mut out = Vec::new();
        let mut starts = Vec::new();
        interval_elems(
            [(0u16, 0u16), (80, 443), (60000, 65535)].into_iter(),
            u16::MAX,
            key,
            &mut out,
            &mut starts,
        );
        assert_eq!(
            out,
            vec![
                el(0, false, false),
                el(1, true, false),
                el(80, false, false),
                el(444, true, false),
                el(60000, false, true),
            ]
        );
        assert_eq!(starts, vec![0, 2, 4]);
        out.clear();
        starts.clear();
        interval_elems(
            [(53u16, 53u16)].into_iter(),
            u16::MAX,
            key,
            &mut out,
            &mut starts,
        );
        assert_eq!(
            out,
            vec![
                el(0, true, false),
                el(53, false, false),
                el(54, true, false)
            ]
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let mut t = table(
            vec![],
            vec![Rule {
                stmts: vec![Stmt::Daddr4(Value::InSet("nope".into()))],
                comment: None,
            }],
        );
        let e = encode_apply(&t, &ApplyOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("@nope"), "{e}");
        let icmp_port = Stmt::Dport {
            l4: L4::Icmp,
            value: Value::Eq(1),
        };
        let e = encode_apply(
            &table(
                vec![],
                vec![Rule {
                    stmts: vec![icmp_port],
                    comment: None,
                }],
            ),
            &ApplyOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("icmp has no ports"), "{e}");
        t.name = "filter".into();
        assert!(
            encode_apply(&t, &ApplyOptions::default())
                .unwrap_err()
                .to_string()
                .contains("only ever manages")
        );
        let overlapping = Set {
            name: "o".into(),
            key: KeyType::InetService,
            interval: true,
            timeout: false,
            dynamic: None,
            elements: SetElements::Ports(vec![(1, 10), (10, 20)]),
        };
        let e = encode_apply(&table(vec![overlapping], vec![]), &ApplyOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-overlapping"), "{e}");
    }

    #[test]
    fn redirect_and_timeout_sets_are_validated() {
        let err = |t: &Table| {
            encode_apply(t, &ApplyOptions::default())
                .unwrap_err()
                .to_string()
        };
        let redirect = |stmts: Vec<Stmt>| Rule {
            stmts,
            comment: None,
        };
        let udp53 = Stmt::Dport {
            l4: L4::Udp,
            value: Value::Eq(53),
        };
        let to = Stmt::Redirect { port: 5353 };
        let mut t = table(vec![], vec![redirect(vec![udp53.clone(), to.clone()])]);
        assert!(err(&t).contains("only valid in a nat chain"), "{}", err(&t));
        t.chains[0].kind = ChainType::Nat;
        assert!(encode_apply(&t, &ApplyOptions::default()).is_ok());
        t.chains[0].rules = vec![redirect(vec![Stmt::L4proto(L4::Icmp), to.clone()])];
        assert!(err(&t).contains("needs a tcp or udp match"), "{}", err(&t));
        t.chains[0].rules = vec![redirect(vec![to, udp53])];
        assert!(err(&t).contains("needs a tcp or udp match"), "{}", err(&t));

        let timed = |timeout, interval, elements| Set {
            name: "d".into(),
            key: KeyType::Ipv4Addr,
            interval,
            timeout,
            dynamic: None,
            elements,
        };
        let one = |ms| SetElements::TimedV4(vec![(Ipv4Addr::new(192, 0, 2, 1), ms)]);
        let e = err(&table(vec![timed(false, false, one(1000))], vec![]));
        assert!(e.contains("need flags timeout"), "{e}");
        let e = err(&table(vec![timed(true, false, one(0))], vec![]));
        assert!(e.contains("timeouts must be 1 to"), "{e}");
        let e = err(&table(vec![timed(true, true, one(1000))], vec![]));
        assert!(e.contains("both flags interval and flags timeout"), "{e}");
        let ranges = SetElements::V4(vec![(
            Ipv4Addr::new(192, 0, 2, 0),
            Ipv4Addr::new(192, 0, 2, 9),
        )]);
        let e = err(&table(vec![timed(true, false, ranges)], vec![]));
        assert!(e.contains("not ranges"), "{e}");
        let twice = SetElements::TimedV4(vec![
            (Ipv4Addr::new(192, 0, 2, 1), 1),
            (Ipv4Addr::new(192, 0, 2, 1), 2),
        ]);
        let e = err(&table(vec![timed(true, false, twice)], vec![]));
        assert!(e.contains("unique"), "{e}");
        for ok in [
            one(1000),
            SetElements::TimedV4(vec![]),
            SetElements::V4(vec![]),
        ] {
            encode_apply(
                &table(vec![timed(true, false, ok)], vec![]),
                &ApplyOptions::default(),
            )
            .unwrap();
        }
    }

    #[test]
    fn time_rate_cgroup_and_meter_statements_are_validated() {
        use ruleset::{Dynamic, MeterKey, RateUnit};
        let err = |sets: Vec<Set>, stmts: Vec<Stmt>| {
            encode_apply(
                &table(
                    sets,
                    vec![Rule {
                        stmts,
                        comment: None,
                    }],
                ),
                &ApplyOptions::default(),
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        let dynamic = |name: &str, key, timeout_ms| Set {
            name: name.into(),
            key,
            interval: false,
            timeout: false,
            dynamic: Some(Dynamic {
                size: 10,
                timeout_ms,
            }),
            elements: SetElements::Ids(vec![]),
        };
        let rate = |rate, unit, burst| RateLimit { rate, unit, burst };
        let ok_rate = MeterLimit::Rate(rate(5, RateUnit::Second, 5));
        let meter = |set: &str, key, limit| Stmt::Meter {
            set: set.into(),
            key,
            limit,
        };
        let uid = KeyType::Uid;
        for (sets, stmts, want) in [
            (
                vec![],
                vec![Stmt::MetaDay { first: 0, last: 7 }],
                "weekdays are 0",
            ),
            (
                vec![],
                vec![Stmt::MetaHour {
                    first: 86_400,
                    last: 0,
                }],
                "second of the day",
            ),
            (
                vec![],
                vec![Stmt::MetaTimeFrom(-1_000_000_000)],
                "whole second",
            ),
            (
                vec![],
                vec![Stmt::MetaTimeUntil(1_500_000_000)],
                "whole second",
            ),
            (
                vec![],
                vec![Stmt::Limit(rate(0, RateUnit::Second, 1))],
                "at least 1",
            ),
            (
                vec![],
                vec![Stmt::Limit(rate(1, RateUnit::Second, 0))],
                "at least 1",
            ),
            (
                vec![],
                vec![Stmt::Limit(rate(u64::MAX, RateUnit::Second, 1))],
                "overflows",
            ),
            (
                vec![],
                vec![Stmt::Limit(rate(1, RateUnit::Day, u32::MAX))],
                "overflows",
            ),
            (
                vec![],
                vec![Stmt::SocketCgroup {
                    level: 256,
                    path: "a/b".into(),
                    id: 7,
                }],
                "levels up to 255",
            ),
            (
                vec![],
                vec![Stmt::SocketCgroup {
                    level: 1,
                    path: "a\"b".into(),
                    id: 7,
                }],
                "without quotes",
            ),
            (
                vec![],
                vec![meter("m", MeterKey::SkUid, ok_rate)],
                "does not define",
            ),
            (
                vec![Set {
                    dynamic: None,
                    ..dynamic("m", uid, None)
                }],
                vec![meter("m", MeterKey::SkUid, ok_rate)],
                "needs a dynamic set",
            ),
            (
                vec![dynamic("m", uid, None)],
                vec![meter("m", MeterKey::Daddr4, ok_rate)],
                "holds uid, but the meter's key is ipv4_addr",
            ),
            (
                vec![dynamic("m", uid, Some(1000))],
                vec![meter("m", MeterKey::SkUid, MeterLimit::Count(3))],
                "cannot have a timeout",
            ),
            (
                vec![dynamic("m", uid, None)],
                vec![
                    meter("m", MeterKey::SkUid, MeterLimit::Count(3)),
                    meter("m", MeterKey::SkUid, ok_rate),
                ],
                "both for rate limits and for ct count",
            ),
            (
                vec![Set {
                    interval: true,
                    ..dynamic("m", uid, None)
                }],
                vec![],
                "cannot have flags interval",
            ),
            (
                vec![Set {
                    timeout: true,
                    ..dynamic("m", uid, None)
                }],
                vec![],
                "needs Dynamic::timeout_ms",
            ),
            (
                vec![Set {
                    elements: SetElements::Ids(vec![1]),
                    ..dynamic("m", uid, None)
                }],
                vec![],
                "starts empty",
            ),
            (
                vec![Set {
                    dynamic: Some(Dynamic {
                        size: 0,
                        timeout_ms: None,
                    }),
                    ..dynamic("m", uid, None)
                }],
                vec![],
                "size of at least 1",
            ),
        ] {
            let e = err(sets, stmts);
            assert!(e.contains(want), "want {want:?} in {e:?}");
        }
        // And what is valid encodes (`Set::timeout` may restate a dynamic set's timeout).
        let restated = Set {
            timeout: true,
            ..dynamic("m", uid, Some(1000))
        };
        assert_eq!(
            err(
                vec![restated, dynamic("c", uid, None)],
                vec![
                    Stmt::MetaDay { first: 6, last: 0 },
                    Stmt::MetaHour {
                        first: 0,
                        last: 86_399
                    },
                    Stmt::MetaTimeFrom(0),
                    Stmt::Limit(rate(1, RateUnit::Day, 1000)),
                    Stmt::CtCount(0),
                    meter("m", MeterKey::SkUid, ok_rate),
                    meter("c", MeterKey::SkUid, MeterLimit::Count(3)),
                ],
            ),
            ""
        );
    }

    #[test]
    fn udata_comment_is_libnftnl_tlv() {
        assert_eq!(udata_comment(0, "dns"), b"\x00\x04dns\x00");
    }
}
