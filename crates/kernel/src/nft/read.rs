//! The only code that reads nftables objects back from the kernel: table `inet leash` with its
//! chains, rules and counters, sets and element counts (for `status` and to verify an apply), the
//! chains and rules `leash trace` names, the table's handle and comment (one GETTABLE), a set's
//! declaration (one GETSET), and a set's elements: counted, looked up, listed, or listed with the
//! time each has left (GETSETELEM).
//!
//! Elements are counted from a GETSETELEM dump, never listed through nft: `nft list set` on a
//! million-element interval set takes minutes (nft rebuilds intervals in userspace), while the
//! raw dump is a stream of small messages.

use std::net::IpAddr;

use ruleset::{ChainPolicy, Hook, KeyType};

use super::batch::open_socket;
use super::codec::{KernelElem, key_type_from_id, put_element_list, udata_comment_of};
use super::consts::*;
use super::error::Error;
use super::status::{
    COUNT_LIMIT, ChainStatus, Counter, ElementCount, RuleStatus, SetElement, SetStatus, TableInfo,
    TableStatus, TimedAnswer,
};
use crate::nl::{
    self, Attr, Message, MsgBuf, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NlError, Socket,
};

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
        Some(n) => Counting::Known(ElementCount::Recorded(n)),
        None => Counting::Dump(COUNT_LIMIT),
    };
    Ok(read_table(&mut sock, ruleset::TABLE_NAME, &counting)?.map(|t| t.status))
}

/// Handle and comment of table `inet <table>`; `None` if there is no such table.
///
/// One GETTABLE request, answered with the table alone (no chains, sets or elements are read),
/// so it is cheap enough to poll every few seconds: the DNS forwarder does, to notice that the
/// table was re-applied (new handle) or that its policy changed (new comment).
pub fn table_comment(table: &str) -> Result<Option<TableInfo>, Error> {
    let mut sock = open_socket()?;
    table_info(&mut sock, table)
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
pub fn timed_elements(table: &str, set: &str) -> Result<Option<Vec<TimedAnswer>>, Error> {
    Ok(list_elements(table, set, timed_element)?.map(dedup_by_address))
}

/// Every element of set `<set>` of table `inet <table>` (any table, not only leash's), in the
/// order the kernel lists them; `None` if there is no such table or set. Interval end elements
/// are listed too ([`SetElement::interval_end`]).
///
/// One GETSETELEM dump on a socket of its own, with the costs [`timed_elements`] describes: the
/// kernel walks the set again for every reply it fills, so the cost grows with the square of the
/// set's size (a second or so for 100,000 elements; [`status`] counts large sets only up to
/// [`COUNT_LIMIT`] for that reason), and a set that changes meanwhile is not listed as a snapshot.
pub fn set_elements(table: &str, set: &str) -> Result<Option<Vec<SetElement>>, Error> {
    list_elements(table, set, |e| {
        Ok(Some(SetElement {
            key: e
                .key
                .ok_or_else(|| NlError::Malformed("element without a key".into()))?
                .to_vec(),
            interval_end: e.flags & NFT_SET_ELEM_INTERVAL_END != 0,
            timeout_ms: e.timeout,
            expires_ms: e.expiration,
            comment: e.udata.and_then(udata_comment_of),
        }))
    })
}

/// One nf_tables request of family inet, flagged `NLM_F_REQUEST | flags`.
fn request(
    msg: u16,
    flags: u16,
    seq: u32,
    attrs: impl FnOnce(&mut MsgBuf),
) -> Result<Vec<u8>, NlError> {
    let mut b = MsgBuf::new();
    let m = b.begin(nft_type(msg), NLM_F_REQUEST | flags, seq);
    b.put_header(&[NFPROTO_INET, NFNETLINK_V0, 0, 0]);
    attrs(&mut b);
    b.end(m)?;
    Ok(b.into_bytes())
}

/// Sends one dump request of nf_tables message `msg` for family inet and returns what `each`
/// extracts from every reply, in order. A dump that a concurrent commit interrupted is started
/// again from scratch (see [`nl::retry_interrupted`]).
fn dump<T>(
    sock: &mut Socket,
    seq: &mut u32,
    msg: u16,
    attrs: impl FnOnce(&mut MsgBuf),
    mut each: impl FnMut(&Message<'_>) -> Result<Option<T>, NlError>,
) -> Result<Vec<T>, NlError> {
    // The request's attributes, written once (the closure may only run once).
    let mut body = MsgBuf::new();
    attrs(&mut body);
    let body = body.into_bytes();
    nl::retry_interrupted(|| {
        *seq += 1;
        let req = request(msg, NLM_F_DUMP, *seq, |b| b.put_raw(&body))?;
        let mut out = Vec::new();
        sock.dump(&req, |m| {
            if let Some(v) = each(m)? {
                out.push(v);
            }
            Ok(())
        })?;
        Ok(out)
    })
}

pub(crate) fn str_of(a: &Option<Attr<'_>>) -> String {
    a.map(|a| a.str()).unwrap_or_default()
}

/// How [`read_table`] learns the size of a set.
pub(crate) enum Counting {
    /// Count the elements in a dump, reading at most about this many (see [`count_elements`]).
    Dump(usize),
    /// Do not read the set: the caller knows.
    Known(ElementCount),
}

/// Reads table `inet <name>` and its handle; `None` when it does not exist. `counting` decides
/// per set (given the table's handle and the set's declaration) whether its elements are counted.
pub(crate) fn read_table(
    sock: &mut Socket,
    name: &str,
    counting: &dyn Fn(u64, &SetStatus) -> Counting,
) -> Result<Option<TableRead>, Error> {
    let ctx = |what: &str| table_ctx(name, what);
    let mut seq = 0;
    let tables = dump(
        sock,
        &mut seq,
        NFT_MSG_GETTABLE,
        |_| {},
        |m| {
            let t = m.attrs(NFGENMSG_LEN).table::<8>()?;
            if str_of(&t[NFTA_TABLE_NAME as usize]) != name {
                return Ok(None);
            }
            let handle = t[NFTA_TABLE_HANDLE as usize]
                .map(|a| a.be64())
                .transpose()?
                .unwrap_or(0);
            Ok(Some((
                handle,
                t[NFTA_TABLE_USERDATA as usize].and_then(|a| udata_comment_of(a.data)),
            )))
        },
    )
    .map_err(ctx("tables"))?;
    let Some((handle, comment)) = tables.into_iter().next() else {
        return Ok(None);
    };

    let mut exprs = Vec::new();
    let chains = read_chains(sock, &mut seq, name)?
        .into_iter()
        .map(|c| {
            let (rules, x): (Vec<_>, Vec<_>) = c.rules.into_iter().map(|r| (r.status, r.exprs)).unzip();
            exprs.push(x);
            ChainStatus { rules, ..c.status }
        })
        .collect();

    let mut sets = dump(
        sock,
        &mut seq,
        NFT_MSG_GETSET,
        |b| b.attr_str(NFTA_SET_TABLE, name),
        |m| {
            let t = m.attrs(NFGENMSG_LEN).table::<16>()?;
            if str_of(&t[NFTA_SET_TABLE as usize]) != name {
                return Ok(None);
            }
            set_status(&t).map(Some)
        },
    )
    .map_err(ctx("sets"))?;
    for s in &mut sets {
        s.elements = match counting(handle, s) {
            Counting::Known(c) => c,
            Counting::Dump(limit) => count_elements(name, &s.name, s.interval, limit)
                .map_err(ctx(&format!("elements of set {}", s.name)))?,
        };
    }
    Ok(Some(TableRead {
        handle,
        status: TableStatus {
            comment,
            chains,
            sets,
        },
        exprs,
    }))
}

/// A table as [`read_table`] reads it.
pub(crate) struct TableRead {
    pub handle: u64,
    pub status: TableStatus,
    /// Per chain (in the order of `status.chains`), per rule: `NFTA_RULE_EXPRESSIONS` as listed.
    pub exprs: Vec<Vec<Vec<u8>>>,
}

/// Wraps a failure to read part `what` of table `inet <name>`.
fn table_ctx(name: &str, what: &str) -> impl FnOnce(NlError) -> Error + use<> {
    let context = format!("reading table inet {name}: {what}");
    move |source| Error::Netlink { context, source }
}

/// A chain as [`read_chains`] reads it.
pub(crate) struct ChainRead {
    /// What `status` reports of it (`rules` left empty: see `rules` here).
    pub status: ChainStatus,
    /// `NFTA_CHAIN_POLICY` as the kernel sends it (`status.policy` names only accept and drop).
    pub policy: Option<u32>,
    pub rules: Vec<RuleRead>,
}

/// A rule as [`read_chains`] reads it.
pub(crate) struct RuleRead {
    pub status: RuleStatus,
    /// It has a `reject` expression.
    pub reject: bool,
    /// It has a `redir` expression.
    pub redirect: bool,
    /// `NFTA_RULE_EXPRESSIONS` as the kernel lists it (what an apply compares with what it sent).
    pub exprs: Vec<u8>,
}

/// The chains of table `inet <name>` in the order the kernel lists them (creation order), each
/// with its rules in rule order: one GETCHAIN and one GETRULE dump.
pub(crate) fn read_chains(
    sock: &mut Socket,
    seq: &mut u32,
    name: &str,
) -> Result<Vec<ChainRead>, Error> {
    let mut chains = dump(
        sock,
        seq,
        NFT_MSG_GETCHAIN,
        |b| b.attr_str(NFTA_CHAIN_TABLE, name),
        |m| {
            let t = m.attrs(NFGENMSG_LEN).table::<16>()?;
            if str_of(&t[NFTA_CHAIN_TABLE as usize]) != name {
                return Ok(None);
            }
            let (mut hook, mut priority) = (None, None);
            if let Some(h) = t[NFTA_CHAIN_HOOK as usize] {
                for a in h.nested() {
                    let a = a?;
                    match a.ty {
                        NFTA_HOOK_HOOKNUM => hook = Some(a.be32()?),
                        NFTA_HOOK_PRIORITY => priority = Some(a.be32()? as i32),
                        _ => {}
                    }
                }
            }
            let policy = t[NFTA_CHAIN_POLICY as usize]
                .map(|a| a.be32())
                .transpose()?;
            Ok(Some(ChainRead {
                status: ChainStatus {
                    name: str_of(&t[NFTA_CHAIN_NAME as usize]),
                    handle: t[NFTA_CHAIN_HANDLE as usize]
                        .map(|a| a.be64())
                        .transpose()?
                        .unwrap_or(0),
                    hook_num: hook,
                    hook: match hook {
                        Some(NF_INET_LOCAL_OUT) => Some(Hook::Output),
                        Some(NF_INET_FORWARD) => Some(Hook::Forward),
                        _ => None,
                    },
                    priority,
                    policy: match policy {
                        Some(NF_ACCEPT) => Some(ChainPolicy::Accept),
                        Some(NF_DROP) => Some(ChainPolicy::Drop),
                        _ => None,
                    },
                    chain_type: t[NFTA_CHAIN_TYPE as usize].map(|a| a.str()),
                    rules: Vec::new(),
                },
                policy,
                rules: Vec::new(),
            }))
        },
    )
    .map_err(table_ctx(name, "chains"))?;

    let rules = dump(
        sock,
        seq,
        NFT_MSG_GETRULE,
        |b| b.attr_str(NFTA_RULE_TABLE, name),
        |m| {
            let t = m.attrs(NFGENMSG_LEN).table::<8>()?;
            if str_of(&t[NFTA_RULE_TABLE as usize]) != name {
                return Ok(None);
            }
            let mut counter = None;
            let (mut reject, mut redirect) = (false, false);
            let exprs = t[NFTA_RULE_EXPRESSIONS as usize].map(|x| x.data.to_vec()).unwrap_or_default();
            if let Some(x) = t[NFTA_RULE_EXPRESSIONS as usize] {
                for e in x.nested() {
                    let e = e?.nested().table::<3>()?;
                    match str_of(&e[NFTA_EXPR_NAME as usize]).as_str() {
                        "counter" => {
                            let mut c = Counter::default();
                            if let Some(d) = e[NFTA_EXPR_DATA as usize] {
                                for a in d.nested() {
                                    let a = a?;
                                    match a.ty {
                                        NFTA_COUNTER_PACKETS => c.packets = a.be64()?,
                                        NFTA_COUNTER_BYTES => c.bytes = a.be64()?,
                                        _ => {}
                                    }
                                }
                            }
                            // nft puts at most one counter in leash's rules; keep the first.
                            counter.get_or_insert(c);
                        }
                        "reject" => reject = true,
                        "redir" => redirect = true,
                        _ => {}
                    }
                }
            }
            let rule = RuleRead {
                status: RuleStatus {
                    handle: t[NFTA_RULE_HANDLE as usize]
                        .map(|a| a.be64())
                        .transpose()?
                        .unwrap_or(0),
                    comment: t[NFTA_RULE_USERDATA as usize].and_then(|a| udata_comment_of(a.data)),
                    counter,
                },
                reject,
                redirect,
                exprs,
            };
            Ok(Some((str_of(&t[NFTA_RULE_CHAIN as usize]), rule)))
        },
    )
    .map_err(table_ctx(name, "rules"))?;
    // The dump lists rules chain by chain, each in rule order.
    for (chain, rule) in rules {
        if let Some(c) = chains.iter_mut().find(|c| c.status.name == chain) {
            c.rules.push(rule);
        }
    }
    Ok(chains)
}

/// A set's declaration from a NEWSET message's attributes (elements not counted yet).
fn set_status(t: &[Option<Attr<'_>>; 16]) -> Result<SetStatus, NlError> {
    let flags = t[NFTA_SET_FLAGS as usize]
        .map(|a| a.be32())
        .transpose()?
        .unwrap_or(0);
    let key_type = t[NFTA_SET_KEY_TYPE as usize]
        .map(|a| a.be32())
        .transpose()?
        .unwrap_or(0);
    Ok(SetStatus {
        name: str_of(&t[NFTA_SET_NAME as usize]),
        key: key_type_from_id(key_type),
        key_type,
        key_len: t[NFTA_SET_KEY_LEN as usize]
            .map(|a| a.be32())
            .transpose()?
            .unwrap_or(0),
        flags,
        interval: flags & NFT_SET_INTERVAL != 0,
        timeout: flags & NFT_SET_TIMEOUT != 0,
        elements: ElementCount::Exact(0),
    })
}

/// A set's declaration as the kernel has it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SetDecl {
    pub key: Option<KeyType>,
    pub key_type: u32,
    pub flags: u32,
}

/// One GETSET request (not a dump): the set's declaration, `None` if table or set is missing.
pub(crate) fn get_set(sock: &mut Socket, table: &str, set: &str) -> Result<Option<SetDecl>, Error> {
    let ctx = |source| Error::Netlink {
        context: format!("looking up set {set} of table inet {table}"),
        source,
    };
    let req = request(NFT_MSG_GETSET, NLM_F_ACK, 1, |b| {
        b.attr_str(NFTA_SET_TABLE, table);
        b.attr_str(NFTA_SET_NAME, set);
    })
    .map_err(ctx)?;
    let mut decl = None;
    let res = sock.request(&req, |m| {
        let s = set_status(&m.attrs(NFGENMSG_LEN).table::<16>()?)?;
        decl = Some(SetDecl {
            key: s.key,
            key_type: s.key_type,
            flags: s.flags,
        });
        Ok(())
    });
    match res {
        Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(ctx(e)),
        Ok(()) => Ok(decl),
    }
}

/// Handle and comment of table `inet <name>` from one GETTABLE request (not a dump: the kernel
/// looks the table up by name and sends one NEWTABLE back). `None` when it does not exist.
pub(crate) fn table_info(sock: &mut Socket, name: &str) -> Result<Option<TableInfo>, Error> {
    let ctx = |source| Error::Netlink {
        context: format!("reading table inet {name}"),
        source,
    };
    let req = request(NFT_MSG_GETTABLE, NLM_F_ACK, 1, |b| {
        b.attr_str(NFTA_TABLE_NAME, name)
    })
    .map_err(ctx)?;
    let mut info = None;
    let res = sock.request(&req, |m| {
        let t = m.attrs(NFGENMSG_LEN).table::<8>()?;
        let handle = t[NFTA_TABLE_HANDLE as usize]
            .ok_or_else(|| NlError::Malformed("NEWTABLE reply without NFTA_TABLE_HANDLE".into()))?
            .be64()?;
        info = Some(TableInfo {
            handle,
            comment: t[NFTA_TABLE_USERDATA as usize].and_then(|a| udata_comment_of(a.data)),
        });
        Ok(())
    });
    match res {
        Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(ctx(e)),
        Ok(()) => match info {
            Some(i) => Ok(Some(i)),
            None => Err(ctx(NlError::Malformed(
                "GETTABLE acked without a NEWTABLE reply".into(),
            ))),
        },
    }
}

// --- elements -----------------------------------------------------------------------------------

/// One element of a GETSETELEM reply, borrowed from the message.
#[derive(Debug, Clone, Copy, Default)]
struct ElemRef<'a> {
    key: Option<&'a [u8]>,
    /// `NFTA_SET_ELEM_FLAGS` (0 without).
    flags: u32,
    timeout: Option<u64>,
    expiration: Option<u64>,
    /// `NFTA_SET_ELEM_USERDATA`.
    udata: Option<&'a [u8]>,
}

/// Calls `each` for every element in a GETSETELEM reply (a dump message or a lookup's answer).
fn for_each_element<'a>(
    m: &Message<'a>,
    mut each: impl FnMut(ElemRef<'a>) -> Result<(), NlError>,
) -> Result<(), NlError> {
    for a in m.attrs(NFGENMSG_LEN) {
        let a = a?;
        if a.ty != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for el in a.nested() {
            each(parse_element(&el?)?)?;
        }
    }
    Ok(())
}

fn parse_element<'a>(el: &Attr<'a>) -> Result<ElemRef<'a>, NlError> {
    let mut e = ElemRef::default();
    for f in el.nested() {
        let f = f?;
        match f.ty {
            NFTA_SET_ELEM_KEY => {
                for v in f.nested() {
                    let v = v?;
                    if v.ty == NFTA_DATA_VALUE {
                        e.key = Some(v.data);
                    }
                }
            }
            NFTA_SET_ELEM_FLAGS => e.flags = f.be32()?,
            NFTA_SET_ELEM_TIMEOUT => e.timeout = Some(f.be64()?),
            NFTA_SET_ELEM_EXPIRATION => e.expiration = Some(f.be64()?),
            NFTA_SET_ELEM_USERDATA => e.udata = Some(f.data),
            _ => {}
        }
    }
    Ok(e)
}

/// The GETSETELEM dump of set `<set>` of table `inet <table>`.
fn elements_dump(table: &str, set: &str) -> Result<Vec<u8>, NlError> {
    request(NFT_MSG_GETSETELEM, NLM_F_DUMP, 1, |b| {
        b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    })
}

/// Dumps every element of set `<set>` of table `inet <table>` on a socket of its own and returns
/// what `each` makes of them, in the kernel's order; `None` when the table or the set does not
/// exist. A dump that a concurrent commit interrupted is read again from the start.
fn list_elements<T>(
    table: &str,
    set: &str,
    mut each: impl FnMut(ElemRef<'_>) -> Result<Option<T>, NlError>,
) -> Result<Option<Vec<T>>, Error> {
    let ctx = |source| Error::Netlink {
        context: format!("reading the elements of set {set} of table inet {table}"),
        source,
    };
    let mut sock = Socket::open(nl::NETLINK_NETFILTER).map_err(ctx)?;
    let req = elements_dump(table, set).map_err(ctx)?;
    let res = nl::retry_interrupted(|| {
        let mut out = Vec::new();
        sock.dump(&req, |m| {
            for_each_element(m, |e| {
                out.extend(each(e)?);
                Ok(())
            })
        })?;
        Ok(out)
    });
    match res {
        // The kernel looks the table and the set up before it starts the dump, and answers the
        // request with ENOENT when either is missing.
        Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(ctx(e)),
        Ok(v) => Ok(Some(v)),
    }
}

/// Counts the elements of a set from a GETSETELEM dump, reading at most about `limit` of them.
/// In an interval set only start elements count (one per range), so the count equals the model's
/// number of ranges.
///
/// The kernel restarts its walk of an interval set from the first element for every 32 KiB reply
/// it fills, so a full dump costs O(n^2): 100,000 ranges take about a second, 1,000,000 minutes.
/// Hence the limit. The dump runs on a socket of its own, which is dropped when we stop early.
fn count_elements(
    table: &str,
    set: &str,
    interval: bool,
    limit: usize,
) -> Result<ElementCount, NlError> {
    let req = elements_dump(table, set)?;
    let mut n = 0usize;
    let complete = nl::retry_interrupted(|| {
        // A fresh socket each time: a dump stopped early stays open on its socket.
        let mut sock = Socket::open(nl::NETLINK_NETFILTER)?;
        n = 0;
        sock.dump_while(&req, |m| {
            for_each_element(m, |e| {
                if !(interval && e.flags & NFT_SET_ELEM_INTERVAL_END != 0) {
                    n += 1;
                }
                Ok(())
            })?;
            Ok(n <= limit)
        })
    })?;
    Ok(if complete {
        ElementCount::Exact(n)
    } else {
        ElementCount::AtLeast(n)
    })
}

/// The name recorded with address `addr` in timeout set `<set>` of table `inet <table>` (the
/// element's comment: the DNS name whose answer put it there). `Ok(None)` when the table, the set
/// or the element does not exist, or the element has no comment.
///
/// One GETSETELEM that is not a dump: the kernel looks the one key up in the set's hash, so this
/// costs the same for a set of ten elements or a million (`leash log` asks per event).
pub fn element_name(table: &str, set: &str, addr: IpAddr) -> Result<Option<String>, Error> {
    let ctx = |source| Error::Netlink {
        context: format!("looking up {addr} in set {set} of table inet {table}"),
        source,
    };
    let key = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let elem = KernelElem {
        key,
        end: false,
        open: false,
        timeout_ms: None,
        comment: None,
    };
    let req = request(NFT_MSG_GETSETELEM, NLM_F_ACK, 1, |b| {
        b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
        put_element_list(b, [&elem], false);
    })
    .map_err(ctx)?;
    let mut sock = Socket::open(nl::NETLINK_NETFILTER).map_err(ctx)?;
    let mut name = None;
    let res = sock.request(&req, |m| {
        for_each_element(m, |e| {
            name = name.take().or_else(|| e.udata.and_then(udata_comment_of));
            Ok(())
        })
    });
    match res {
        Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(ctx(e)),
        Ok(()) => Ok(name),
    }
}

/// Asks the kernel for specific elements (a GETSETELEM that is not a dump: one lookup per key)
/// and checks that each comes back with the same key and interval-end flag. A missing element
/// makes the kernel answer ENOENT.
pub(crate) fn check_elements_present(
    sock: &mut Socket,
    table: &str,
    set: &str,
    elems: &[&KernelElem],
) -> Result<(), Error> {
    let what = || format!("looking up sampled elements of set {set}");
    let req = request(NFT_MSG_GETSETELEM, NLM_F_ACK, 1, |b| {
        b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
        put_element_list(b, elems.iter().copied(), false);
    })
    .map_err(|source| Error::Netlink {
        context: what(),
        source,
    })?;
    let mut got: Vec<(Vec<u8>, bool)> = Vec::new();
    sock.request(&req, |m| {
        for_each_element(m, |e| {
            got.push((
                e.key.unwrap_or_default().to_vec(),
                e.flags & NFT_SET_ELEM_INTERVAL_END != 0,
            ));
            Ok(())
        })
    })
    .map_err(|e| match e {
        NlError::Kernel(k) if k.errno == libc::ENOENT => {
            Error::Verify(format!("set {set}: a sampled element is missing ({})", k))
        }
        source => Error::Netlink {
            context: what(),
            source,
        },
    })?;
    let want: Vec<(Vec<u8>, bool)> = elems.iter().map(|e| (e.key.clone(), e.end)).collect();
    if got != want {
        return Err(Error::Verify(format!(
            "set {set}: sampled elements read back as {got:02x?}, want {want:02x?}"
        )));
    }
    Ok(())
}

/// Sorts by address and keeps one entry per address, the one read last.
///
/// The kernel fills each reply of the dump by walking the set from its start and skipping the
/// elements it sent before; an element added or removed meanwhile shifts the walk, so an element
/// can come twice (measured: dozens of duplicates in a 20,000-element dump while elements were
/// being added) or, symmetrically, not at all, and the kernel does not flag such a dump as
/// interrupted. Duplicates would fail the apply that re-adds these elements (with `NLM_F_EXCL`);
/// the later read of an element is the more recent one.
fn dedup_by_address(mut v: Vec<TimedAnswer>) -> Vec<TimedAnswer> {
    // Stable: elements with the same address stay in the order they were read.
    v.sort_by_key(|e| e.addr);
    let mut out: Vec<TimedAnswer> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(last) if last.addr == e.addr => *last = e,
            _ => out.push(e),
        }
    }
    out
}

/// One element of a GETSETELEM dump as an answer; `None` for an element that has no time left to
/// carry over (see [`timed_elements`]).
fn timed_element(e: ElemRef<'_>) -> Result<Option<TimedAnswer>, NlError> {
    if e.flags & NFT_SET_ELEM_INTERVAL_END != 0 {
        // Only in interval sets, which the forwarder does not fill: the end of a range is no
        // address of its own.
        return Ok(None);
    }
    let addr = match e.key {
        Some(k) => match <[u8; 4]>::try_from(k) {
            Ok(v4) => IpAddr::from(v4),
            Err(_) => match <[u8; 16]>::try_from(k) {
                Ok(v6) => IpAddr::from(v6),
                Err(_) => {
                    return Err(NlError::Malformed(format!(
                        "element key of {} bytes: not an IPv4 or IPv6 address",
                        k.len()
                    )));
                }
            },
        },
        None => return Err(NlError::Malformed("element without a key".into())),
    };
    // The kernel sends the expiration whenever the element has a timeout (0 once it is past),
    // so `timeout` alone is a fallback for kernels that might not.
    Ok(match e.expiration.or(e.timeout) {
        Some(ms) if ms > 0 => Some(TimedAnswer {
            addr,
            left_ms: ms,
            name: e.udata.and_then(udata_comment_of),
        }),
        _ => None,
    })
}
