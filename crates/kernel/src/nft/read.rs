//! Reads table `inet leash` back from the kernel over netlink dumps: table, chains, rules with
//! their counters, sets and element counts. Used by `status` and to verify an apply. Also the two
//! cheap reads around a re-apply: the table's handle and comment (one GETTABLE), and the timed
//! elements of one set with the time they have left (one GETSETELEM dump).
//!
//! Elements are counted from a GETSETELEM dump, never listed through nft: `nft list set` on a
//! million-element interval set takes minutes (nft rebuilds intervals in userspace), while the
//! raw dump is a stream of small messages.

use std::net::IpAddr;

use ruleset::{ChainPolicy, Hook};

use super::consts::*;
use super::encode::{KernelElem, key_type_from_id, put_element_list};
use super::{
    ChainStatus, Counter, ElementCount, Error, RuleStatus, SetStatus, TableInfo, TableStatus,
};
use crate::nl::{Attr, Message, MsgBuf, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NlError, Socket};

/// Sends one dump request of nf_tables message `msg` for family inet and returns what `each`
/// extracts from every reply, in order.
fn dump<T>(
    sock: &mut Socket,
    seq: &mut u32,
    msg: u16,
    attrs: impl FnOnce(&mut MsgBuf),
    mut each: impl FnMut(&Message<'_>) -> Result<Option<T>, NlError>,
) -> Result<Vec<T>, NlError> {
    *seq += 1;
    let mut b = MsgBuf::new();
    let m = b.begin(nft_type(msg), NLM_F_REQUEST | NLM_F_DUMP, *seq);
    b.put_header(&[NFPROTO_INET, NFNETLINK_V0, 0, 0]);
    attrs(&mut b);
    b.end(m)?;
    let mut out = Vec::new();
    sock.dump(b.as_bytes(), |m| {
        if let Some(v) = each(m)? {
            out.push(v);
        }
        Ok(())
    })?;
    Ok(out)
}

/// The comment in libnftnl's user-data TLVs (`type 0`), if there is one.
pub(crate) fn udata_comment(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if ty == 0 {
            let v = value.split(|&b| b == 0).next().unwrap_or(&[]);
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

fn str_of(a: &Option<Attr<'_>>) -> String {
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
) -> Result<Option<(u64, TableStatus)>, Error> {
    let ctx = |what: &str| {
        let what = what.to_string();
        move |source| Error::Netlink {
            context: format!("reading table inet {name}: {what}"),
            source,
        }
    };
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
                t[NFTA_TABLE_USERDATA as usize].and_then(|a| udata_comment(a.data)),
            )))
        },
    )
    .map_err(ctx("tables"))?;
    let Some((handle, comment)) = tables.into_iter().next() else {
        return Ok(None);
    };

    let mut chains = dump(
        sock,
        &mut seq,
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
            Ok(Some(ChainStatus {
                name: str_of(&t[NFTA_CHAIN_NAME as usize]),
                handle: t[NFTA_CHAIN_HANDLE as usize]
                    .map(|a| a.be64())
                    .transpose()?
                    .unwrap_or(0),
                hook_num: hook,
                hook: match hook {
                    Some(NF_INET_LOCAL_OUT) => Some(Hook::Output),
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
            }))
        },
    )
    .map_err(ctx("chains"))?;

    let rules = dump(
        sock,
        &mut seq,
        NFT_MSG_GETRULE,
        |b| b.attr_str(NFTA_RULE_TABLE, name),
        |m| {
            let t = m.attrs(NFGENMSG_LEN).table::<8>()?;
            if str_of(&t[NFTA_RULE_TABLE as usize]) != name {
                return Ok(None);
            }
            let mut counter = None;
            if let Some(x) = t[NFTA_RULE_EXPRESSIONS as usize] {
                for e in x.nested() {
                    let e = e?.nested().table::<3>()?;
                    if str_of(&e[NFTA_EXPR_NAME as usize]) != "counter" {
                        continue;
                    }
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
            }
            let rule = RuleStatus {
                handle: t[NFTA_RULE_HANDLE as usize]
                    .map(|a| a.be64())
                    .transpose()?
                    .unwrap_or(0),
                comment: t[NFTA_RULE_USERDATA as usize].and_then(|a| udata_comment(a.data)),
                counter,
            };
            Ok(Some((str_of(&t[NFTA_RULE_CHAIN as usize]), rule)))
        },
    )
    .map_err(ctx("rules"))?;
    // The dump lists rules chain by chain, each in rule order.
    for (chain, rule) in rules {
        if let Some(c) = chains.iter_mut().find(|c| c.name == chain) {
            c.rules.push(rule);
        }
    }

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
            let flags = t[NFTA_SET_FLAGS as usize]
                .map(|a| a.be32())
                .transpose()?
                .unwrap_or(0);
            let key_type = t[NFTA_SET_KEY_TYPE as usize]
                .map(|a| a.be32())
                .transpose()?
                .unwrap_or(0);
            Ok(Some(SetStatus {
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
            }))
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
    Ok(Some((
        handle,
        TableStatus {
            comment,
            chains,
            sets,
        },
    )))
}

/// Counts the elements of a set from a GETSETELEM dump, reading at most about `limit` of them.
/// In an interval set only start elements count (one per range), so the count equals the model's
/// number of ranges.
///
/// The kernel restarts its walk of an interval set from the first element for every 32 KiB reply
/// it fills, so a full dump costs O(n^2): 100,000 ranges take about a second, 1,000,000 minutes.
/// Hence the limit. The dump runs on a socket of its own, which is dropped when we stop early.
pub(crate) fn count_elements(
    table: &str,
    set: &str,
    interval: bool,
    limit: usize,
) -> Result<ElementCount, NlError> {
    let mut sock = Socket::open(crate::nl::NETLINK_NETFILTER)?;
    let mut b = MsgBuf::new();
    let m = b.begin(nft_type(NFT_MSG_GETSETELEM), NLM_F_REQUEST | NLM_F_DUMP, 1);
    b.put_header(&[NFPROTO_INET, NFNETLINK_V0, 0, 0]);
    b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
    b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    b.end(m)?;
    let mut n = 0usize;
    let complete = sock.dump_while(b.as_bytes(), |m| {
        for a in m.attrs(NFGENMSG_LEN) {
            let a = a?;
            if a.ty != NFTA_SET_ELEM_LIST_ELEMENTS {
                continue;
            }
            for el in a.nested() {
                if !(interval && elem_flags(&el?)? & NFT_SET_ELEM_INTERVAL_END != 0) {
                    n += 1;
                }
            }
        }
        Ok(n <= limit)
    })?;
    Ok(if complete {
        ElementCount::Exact(n)
    } else {
        ElementCount::AtLeast(n)
    })
}

fn elem_flags(el: &Attr<'_>) -> Result<u32, NlError> {
    for f in el.nested() {
        let f = f?;
        if f.ty == NFTA_SET_ELEM_FLAGS {
            return f.be32();
        }
    }
    Ok(0)
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
    let mut b = MsgBuf::new();
    let m = b.begin(nft_type(NFT_MSG_GETSETELEM), NLM_F_REQUEST | NLM_F_ACK, 1);
    b.put_header(&[NFPROTO_INET, NFNETLINK_V0, 0, 0]);
    b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
    b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    put_element_list(&mut b, elems.iter().copied(), false);
    b.end(m).map_err(|source| Error::Netlink {
        context: what(),
        source,
    })?;
    let mut got: Vec<(Vec<u8>, bool)> = Vec::new();
    sock.request(b.as_bytes(), |m| {
        for a in m.attrs(NFGENMSG_LEN) {
            let a = a?;
            if a.ty != NFTA_SET_ELEM_LIST_ELEMENTS {
                continue;
            }
            for el in a.nested() {
                let el = el?;
                let mut key = Vec::new();
                for f in el.nested() {
                    let f = f?;
                    if f.ty == NFTA_SET_ELEM_KEY {
                        for v in f.nested() {
                            let v = v?;
                            if v.ty == NFTA_DATA_VALUE {
                                key = v.data.to_vec();
                            }
                        }
                    }
                }
                got.push((key, elem_flags(&el)? & NFT_SET_ELEM_INTERVAL_END != 0));
            }
        }
        Ok(())
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

/// Handle and comment of table `inet <name>` from one GETTABLE request (not a dump: the kernel
/// looks the table up by name and sends one NEWTABLE back). `None` when it does not exist.
pub(crate) fn table_info(sock: &mut Socket, name: &str) -> Result<Option<TableInfo>, Error> {
    let ctx = |source| Error::Netlink {
        context: format!("reading table inet {name}"),
        source,
    };
    let mut b = MsgBuf::new();
    let m = b.begin(nft_type(NFT_MSG_GETTABLE), NLM_F_REQUEST | NLM_F_ACK, 1);
    b.put_header(&[NFPROTO_INET, NFNETLINK_V0, 0, 0]);
    b.attr_str(NFTA_TABLE_NAME, name);
    b.end(m).map_err(ctx)?;
    let mut info = None;
    let res = sock.request(b.as_bytes(), |m| {
        let t = m.attrs(NFGENMSG_LEN).table::<8>()?;
        let handle = t[NFTA_TABLE_HANDLE as usize]
            .ok_or_else(|| NlError::Malformed("NEWTABLE reply without NFTA_TABLE_HANDLE".into()))?
            .be64()?;
        info = Some(TableInfo {
            handle,
            comment: t[NFTA_TABLE_USERDATA as usize].and_then(|a| udata_comment(a.data)),
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

/// The addresses in set `<set>` of table `inet <table>` with the milliseconds each has left, from
/// one GETSETELEM dump on a socket of its own. `None` when the table or the set does not exist.
/// See [`super::timed_elements`] for which elements are listed and with what time.
pub(crate) fn timed_elements(table: &str, set: &str) -> Result<Option<Vec<(IpAddr, u64)>>, Error> {
    let ctx = |source| Error::Netlink {
        context: format!("reading the elements of set {set} of table inet {table}"),
        source,
    };
    let mut sock = Socket::open(crate::nl::NETLINK_NETFILTER).map_err(ctx)?;
    let mut b = MsgBuf::new();
    let m = b.begin(nft_type(NFT_MSG_GETSETELEM), NLM_F_REQUEST | NLM_F_DUMP, 1);
    b.put_header(&[NFPROTO_INET, NFNETLINK_V0, 0, 0]);
    b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
    b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    b.end(m).map_err(ctx)?;
    let mut out = Vec::new();
    let res = sock.dump(b.as_bytes(), |m| {
        for a in m.attrs(NFGENMSG_LEN) {
            let a = a?;
            if a.ty != NFTA_SET_ELEM_LIST_ELEMENTS {
                continue;
            }
            for el in a.nested() {
                if let Some(e) = timed_element(&el?)? {
                    out.push(e);
                }
            }
        }
        Ok(())
    });
    match res {
        // The kernel looks the table and the set up before it starts the dump, and answers the
        // request with ENOENT when either is missing.
        Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(ctx(e)),
        Ok(()) => Ok(Some(dedup_by_address(out))),
    }
}

/// Sorts by address and keeps one entry per address, the one read last.
///
/// The kernel fills each reply of the dump by walking the set from its start and skipping the
/// elements it sent before; an element added or removed meanwhile shifts the walk, so an element
/// can come twice (measured: dozens of duplicates in a 20,000-element dump while elements were
/// being added) or, symmetrically, not at all, and the kernel does not flag such a dump as
/// interrupted. Duplicates would fail the apply that re-adds these elements (with `NLM_F_EXCL`);
/// the later read of an element is the more recent one.
fn dedup_by_address(mut v: Vec<(IpAddr, u64)>) -> Vec<(IpAddr, u64)> {
    // Stable: elements with the same address stay in the order they were read.
    v.sort_by_key(|e| e.0);
    v.dedup_by(|later, earlier| {
        if later.0 == earlier.0 {
            earlier.1 = later.1;
            true
        } else {
            false
        }
    });
    v
}

/// One element of a GETSETELEM dump as (address, ms left); `None` for an element that has no
/// time left to carry over (see [`super::timed_elements`]).
fn timed_element(el: &Attr<'_>) -> Result<Option<(IpAddr, u64)>, NlError> {
    let (mut key, mut flags, mut timeout, mut expiration) = (None, 0, None, None);
    for f in el.nested() {
        let f = f?;
        match f.ty {
            NFTA_SET_ELEM_KEY => {
                for v in f.nested() {
                    let v = v?;
                    if v.ty == NFTA_DATA_VALUE {
                        key = Some(v.data);
                    }
                }
            }
            NFTA_SET_ELEM_FLAGS => flags = f.be32()?,
            NFTA_SET_ELEM_TIMEOUT => timeout = Some(f.be64()?),
            NFTA_SET_ELEM_EXPIRATION => expiration = Some(f.be64()?),
            _ => {}
        }
    }
    if flags & NFT_SET_ELEM_INTERVAL_END != 0 {
        // Only in interval sets, which the forwarder does not fill: the end of a range is no
        // address of its own.
        return Ok(None);
    }
    let addr = match key {
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
    Ok(match expiration.or(timeout) {
        Some(ms) if ms > 0 => Some((addr, ms)),
        _ => None,
    })
}
