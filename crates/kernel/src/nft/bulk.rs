//! Large sets: the elements of a set encoded straight from the model's ranges into NEWSETELEM
//! messages (for apply), and the batch that replaces the contents of existing sets in one
//! transaction (`leash set update`; `apply::replace_set_elements` sends it).
//!
//! A blocklist of a million ranges is two million kernel elements (a start and an end each) and
//! about 40 MB of netlink. Two things keep that fast:
//!
//! - **No allocation per element.** Each model element (a range or a value) is expanded on the
//!   stack into at most three kernel elements ([`Group`]) and written into the batch with one copy.
//!   The encoding is byte for byte what [`super::codec::put_element_list`] writes for the same
//!   elements (a test checks it), so `nft list` shows the same thing.
//! - **One `sendmsg`.** nfnetlink runs a batch (BEGIN ... END) from one skb: a batch split over
//!   several `sendmsg` calls would be several transactions, the first ending without END and
//!   therefore aborted. So the whole batch goes in one send, with the send buffer forced to its size
//!   (`SO_SNDBUFFORCE`, root), each NEWSETELEM under the 64 KiB limit of its ELEMENTS attribute,
//!   every message acked, and any error aborting all of it.
//!
//! Where the time goes (1,000,000 IPv4 ranges, kernel 6.18, measured with `perf`): about 85% in
//! the kernel, most of it inserting into the rbtree (two descents of a 2M-node tree per element)
//! and at commit building the set's lookup array; encoding takes some 50 ms. Element order
//! matters to the kernel: ascending keys keep the insertion path on the tree's hot left spine.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use ruleset::{KeyType, SetElements};

use super::batch::{Batch, Encoder};
use super::codec::KernelElem;
use super::consts::*;
use super::error::Error;
use super::validate::check_name;
use crate::nl::{MsgBuf, NLA_F_NESTED, NLM_F_CREATE, NLM_F_EXCL};

const MAX_ELEMENTS_NEST: usize = u16::MAX as usize - 4;

/// One kernel element, on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elem<'a> {
    key: [u8; 16],
    len: u8,
    /// Closes an interval (`NFT_SET_ELEM_INTERVAL_END`).
    end: bool,
    /// Runs to the key type's maximum (nft's INTERVAL_OPEN user data; no end element follows).
    open: bool,
    timeout_ms: Option<u64>,
    /// The element's comment (a domain set's answer carries the name looked up), as nft writes
    /// `comment "..."`: libnftnl's comment TLV in `NFTA_SET_ELEM_USERDATA`.
    comment: Option<&'a str>,
}

/// Room for one element as [`Elem::write`] writes it: flags, timeout, a 16-byte key, and user
/// data of at most 256 bytes (the kernel's limit), with headers.
pub(crate) const ELEM_BUF: usize = 4 + 8 + 12 + 8 + 16 + 4 + 256 + 4;

/// Bytes of nft's INTERVAL_OPEN user data attribute: header, libnftnl TLV (type, length, u32), pad.
const OPEN_UDATA_LEN: usize = 12;

impl<'a> Elem<'a> {
    fn new(key: &[u8]) -> Elem<'a> {
        let mut k = [0; 16];
        k[..key.len()].copy_from_slice(key);
        Elem {
            key: k,
            len: key.len() as u8,
            end: false,
            open: false,
            timeout_ms: None,
            comment: None,
        }
    }

    fn key(&self) -> &[u8] {
        &self.key[..self.len as usize]
    }

    /// Encoded size in the ELEMENTS list, its own list-entry header included.
    fn size(&self) -> usize {
        let key = 4 + 4 + crate::nl::align(self.len as usize);
        4 + key
            + if self.end { 8 } else { 0 }
            + if self.timeout_ms.is_some() { 12 } else { 0 }
            + if self.open { OPEN_UDATA_LEN } else { 0 }
            + self.comment.map_or(0, |c| 4 + crate::nl::align(c.len() + 3))
    }

    /// Writes the element as list entry number `index` (libnftnl numbers them 1, 2, ... within a
    /// message; the kernel ignores the number). Attribute order is libnftnl's: flags, timeout,
    /// key, user data. Returns the bytes written.
    fn write(&self, index: u16, out: &mut [u8; ELEM_BUF]) -> usize {
        fn hdr(out: &mut [u8; ELEM_BUF], at: usize, len: usize, ty: u16) {
            out[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
            out[at + 2..at + 4].copy_from_slice(&ty.to_ne_bytes());
        }
        let size = self.size();
        out[..size].fill(0);
        hdr(out, 0, size, index | NLA_F_NESTED);
        let mut at = 4;
        if self.end {
            hdr(out, at, 8, NFTA_SET_ELEM_FLAGS);
            out[at + 4..at + 8].copy_from_slice(&NFT_SET_ELEM_INTERVAL_END.to_be_bytes());
            at += 8;
        }
        if let Some(ms) = self.timeout_ms {
            hdr(out, at, 12, NFTA_SET_ELEM_TIMEOUT);
            out[at + 4..at + 12].copy_from_slice(&ms.to_be_bytes());
            at += 12;
        }
        let klen = self.len as usize;
        hdr(
            out,
            at,
            8 + crate::nl::align(klen),
            NFTA_SET_ELEM_KEY | NLA_F_NESTED,
        );
        hdr(out, at + 4, 4 + klen, NFTA_DATA_VALUE);
        out[at + 8..at + 8 + klen].copy_from_slice(self.key());
        at += 8 + crate::nl::align(klen);
        if self.open {
            // udata_u32(NFTNL_UDATA_SET_ELEM_FLAGS, INTERVAL_OPEN): 6 bytes of payload.
            hdr(out, at, 4 + 6, NFTA_SET_ELEM_USERDATA);
            out[at + 4] = NFTNL_UDATA_SET_ELEM_FLAGS;
            out[at + 5] = 4;
            out[at + 6..at + 10].copy_from_slice(&NFTNL_SET_ELEM_F_INTERVAL_OPEN.to_ne_bytes());
            at += OPEN_UDATA_LEN;
        }
        if let Some(c) = self.comment {
            // udata_comment(NFTNL_UDATA_SET_ELEM_COMMENT, c): type, length with the NUL, text, NUL.
            hdr(out, at, 4 + c.len() + 3, NFTA_SET_ELEM_USERDATA);
            out[at + 4] = NFTNL_UDATA_SET_ELEM_COMMENT;
            out[at + 5] = (c.len() + 1) as u8;
            out[at + 6..at + 6 + c.len()].copy_from_slice(c.as_bytes());
            at += 4 + crate::nl::align(c.len() + 3);
        }
        debug_assert_eq!(at, size);
        size
    }

    fn to_kernel(self) -> KernelElem {
        KernelElem {
            key: self.key().to_vec(),
            end: self.end,
            open: self.open,
            timeout_ms: self.timeout_ms,
            comment: self.comment.map(String::from),
        }
    }
}

/// The kernel elements of one model element: nft's interval encoding (nftables
/// `set_to_intervals`) turns range `lo-hi` into a start element `lo` and an end element `hi+1`
/// flagged INTERVAL_END; a range ending at the type's maximum has no end element but carries
/// INTERVAL_OPEN user data; and unless the first range starts at 0 a zero-key end element comes
/// first (in the first group). A single value is one element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group<'a> {
    elems: [Elem<'a>; 3],
    n: u8,
}

impl<'a> Group<'a> {
    fn elems(&self) -> &[Elem<'a>] {
        &self.elems[..self.n as usize]
    }

    /// The elements that can be looked up: all but nft's leading zero-key end element (the
    /// kernel answers ENOENT for it).
    fn lookupable(&self) -> &[Elem<'a>] {
        let e = self.elems();
        match e.first() {
            Some(f) if f.end => &e[1..],
            _ => e,
        }
    }

    fn size(&self) -> usize {
        self.elems().iter().map(Elem::size).sum()
    }

    fn range<T: Copy + PartialEq + Default>(
        first: bool,
        (lo, hi): (T, T),
        max: T,
        next: impl Fn(T) -> T,
        key: impl Fn(T, &mut [u8; 16]) -> usize,
    ) -> Group<'a> {
        let mut g = Group {
            elems: [Elem::new(&[]); 3],
            n: 0,
        };
        let mut buf = [0u8; 16];
        let mut push = |e: Elem<'a>| {
            g.elems[g.n as usize] = e;
            g.n += 1;
        };
        if first && lo != T::default() {
            let n = key(T::default(), &mut buf);
            push(Elem {
                end: true,
                ..Elem::new(&buf[..n])
            });
        }
        let n = key(lo, &mut buf);
        let open = hi == max;
        push(Elem {
            open,
            ..Elem::new(&buf[..n])
        });
        if !open {
            let n = key(next(hi), &mut buf);
            push(Elem {
                end: true,
                ..Elem::new(&buf[..n])
            });
        }
        g
    }

    fn one(e: Elem<'a>) -> Group<'a> {
        Group {
            elems: [e, Elem::new(&[]), Elem::new(&[])],
            n: 1,
        }
    }
}

/// Model element `i` of a set with key `key` as kernel elements.
pub(crate) fn group(key: KeyType, elements: &SetElements, i: usize) -> Group<'_> {
    fn put(b: &[u8], out: &mut [u8; 16]) -> usize {
        out[..b.len()].copy_from_slice(b);
        b.len()
    }
    match elements {
        SetElements::V4(r) => Group::range(
            i == 0,
            (u32::from(r[i].0), u32::from(r[i].1)),
            u32::MAX,
            |v| v + 1,
            |v, o| put(&v.to_be_bytes(), o),
        ),
        SetElements::V6(r) => Group::range(
            i == 0,
            (u128::from(r[i].0), u128::from(r[i].1)),
            u128::MAX,
            |v| v + 1,
            |v, o| put(&v.to_be_bytes(), o),
        ),
        SetElements::Ports(r) => Group::range(
            i == 0,
            r[i],
            u16::MAX,
            |v| v + 1,
            |v, o| put(&v.to_be_bytes(), o),
        ),
        SetElements::Ids(ids) => Group::one(match key {
            // Validated to fit a byte.
            KeyType::Icmpv6Type => Elem::new(&[ids[i] as u8]),
            // uid and gid: host byte order, as nft stores them.
            _ => Elem::new(&ids[i].to_ne_bytes()),
        }),
        SetElements::TimedV4(v) => Group::one(Elem {
            timeout_ms: Some(v[i].timeout_ms),
            comment: v[i].name.as_deref(),
            ..Elem::new(&v[i].addr.octets())
        }),
        SetElements::TimedV6(v) => Group::one(Elem {
            timeout_ms: Some(v[i].timeout_ms),
            comment: v[i].name.as_deref(),
            ..Elem::new(&v[i].addr.octets())
        }),
    }
}

/// Splits the model elements of a set into the runs that fill one NEWSETELEM each: whole groups
/// (a range's start and end never straddle two messages), each ELEMENTS attribute under 64 KiB.
pub(crate) fn chunks(key: KeyType, elements: &SetElements) -> Vec<Range<usize>> {
    let n = elements.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let first = i;
        let mut size = 0;
        while i < n {
            let add = group(key, elements, i).size();
            if i > first && size + add > MAX_ELEMENTS_NEST {
                break;
            }
            size += add;
            i += 1;
        }
        out.push(first..i);
    }
    out
}

/// Writes `NFTA_SET_ELEM_LIST_ELEMENTS` holding the kernel elements of model elements `range`.
pub(crate) fn put_elements(
    b: &mut MsgBuf,
    key: KeyType,
    elements: &SetElements,
    range: Range<usize>,
) {
    let list = b.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
    let mut index: u16 = 1;
    let mut tmp = [0u8; ELEM_BUF];
    for i in range {
        for e in group(key, elements, i).elems() {
            let n = e.write(index, &mut tmp);
            b.put_raw(&tmp[..n]);
            index = index.wrapping_add(1);
        }
    }
    b.end_nested(list);
}

/// Up to `count` model elements evenly spread over the set (first and last included), as the
/// kernel elements a lookup can find: what verification asks the kernel for instead of reading
/// the set back.
pub(crate) fn sample(key: KeyType, elements: &SetElements, count: usize) -> Vec<KernelElem> {
    let n = elements.len();
    let count = count.min(n);
    let mut out = Vec::new();
    let mut last = None;
    for j in 0..count {
        let i = if count == 1 {
            0
        } else {
            j * (n - 1) / (count - 1)
        };
        if last == Some(i) {
            continue;
        }
        last = Some(i);
        out.extend(
            group(key, elements, i)
                .lookupable()
                .iter()
                .map(|e| e.to_kernel()),
        );
    }
    out
}

// --- replacing the contents of sets -------------------------------------------------------------

/// The new contents of one set for [`crate::nft::replace_set_elements`].
#[derive(Debug, Clone, Copy)]
pub struct SetContents<'a> {
    /// The set's name in the table, e.g. `s_threat-feed_v4`.
    pub name: &'a str,
    /// Merged ranges (`V4` for an `ipv4_addr` interval set, `V6` for `ipv6_addr`).
    pub elements: &'a SetElements,
}

/// Options of [`crate::nft::replace_set_elements`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplaceOptions {
    /// Testing aid: append, as the last message of the batch, a NEWSETELEM that adds an element
    /// of the batch a second time (with `NLM_F_EXCL`, so the kernel refuses it), to prove that a
    /// failing element leaves the sets as they were.
    pub fault_inject: bool,
}

/// The key type a set must have for `elements` (only address ranges can be replaced).
pub(crate) fn expected_key(elements: &SetElements) -> KeyType {
    match elements {
        SetElements::V6(_) => KeyType::Ipv6Addr,
        _ => KeyType::Ipv4Addr,
    }
}

/// The batch of [`crate::nft::replace_set_elements`]:
///
/// ```text
/// BATCH_BEGIN
/// DELSETELEM  inet <table> <set>       no ELEMENTS attribute: flush the set
/// NEWSETELEM  inet <table> <set> ...   the new elements, each ELEMENTS attribute < 64 KiB
/// (the same for the next set)
/// [NEWSETELEM with an element of the batch again, with ReplaceOptions::fault_inject]
/// BATCH_END
/// ```
pub(crate) fn encode_replace(
    table: &str,
    sets: &[SetContents<'_>],
    opts: &ReplaceOptions,
) -> Result<Batch, Error> {
    check_name("table", table)?;
    let estimate = 4096
        + sets
            .iter()
            .map(|s| {
                s.elements.len()
                    * if matches!(s.elements, SetElements::V6(_)) {
                        64
                    } else {
                        40
                    }
            })
            .sum::<usize>();
    let mut e = Encoder::new(estimate);
    e.begin_batch()?;
    for s in sets {
        check_name("set", s.name)?;
        let key = expected_key(s.elements);
        e.nft(
            NFT_MSG_DELSETELEM,
            0,
            format!("set `{}` (flush)", s.name),
            |b| {
                b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
                b.attr_str(NFTA_SET_ELEM_LIST_SET, s.name);
            },
        )?;
        let n = s.elements.len();
        for r in chunks(key, s.elements) {
            let what = format!(
                "set `{}` (elements {}..{} of {n})",
                s.name,
                r.start + 1,
                r.end
            );
            e.nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL, what, |b| {
                b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
                b.attr_str(NFTA_SET_ELEM_LIST_SET, s.name);
                put_elements(b, key, s.elements, r);
            })?;
        }
    }
    if opts.fault_inject {
        fault(&mut e, table, sets)?;
    }
    e.end_batch()?;
    Ok(e.finish(sets.iter().map(|s| s.elements.len()).sum()))
}

/// The injected fault: the first range of the first non-empty set added again (the kernel
/// answers EEXIST under `NLM_F_EXCL`), or, when every set is empty, one range added twice.
fn fault(e: &mut Encoder, table: &str, sets: &[SetContents<'_>]) -> Result<(), Error> {
    // Only address ranges are replaced: no element here has a comment to borrow.
    let one_v4 = SetElements::V4(vec![(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST)]);
    let one_v6 = SetElements::V6(vec![(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST)]);
    let (name, elems): (&str, Vec<Elem>) = match sets.iter().find(|s| !s.elements.is_empty()) {
        Some(s) => (
            s.name,
            group(expected_key(s.elements), s.elements, 0)
                .lookupable()
                .to_vec(),
        ),
        None => {
            let Some(s) = sets.first() else { return Ok(()) };
            let one = match s.elements {
                SetElements::V6(_) => &one_v6,
                _ => &one_v4,
            };
            let g = group(expected_key(one), one, 0);
            (s.name, [g.lookupable(), g.lookupable()].concat())
        }
    };
    e.nft(
        NFT_MSG_NEWSETELEM,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("the injected fault (set `{name}`: an element of the batch again)"),
        |b| {
            b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
            b.attr_str(NFTA_SET_ELEM_LIST_SET, name);
            let list = b.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
            let mut tmp = [0u8; ELEM_BUF];
            for (i, el) in elems.iter().enumerate() {
                let n = el.write(i as u16 + 1, &mut tmp);
                b.put_raw(&tmp[..n]);
            }
            b.end_nested(list);
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::codec::{Inc, put_element_list};
    use ruleset::Set;

    // The reference encoding of elements: a `KernelElem` per kernel element, written with
    // `codec::put_element_list`. The streaming encoder above (no allocation per element) is
    // checked against it byte for byte.
    impl KernelElem {
        fn key(key: Vec<u8>) -> KernelElem {
            KernelElem {
                key,
                end: false,
                open: false,
                timeout_ms: None,
                comment: None,
            }
        }
    }

    /// The kernel elements of a set, and the index in `elems` where each model element (range or
    /// value) starts.
    struct KernelElements {
        pub elems: Vec<KernelElem>,
        pub starts: Vec<usize>,
    }

    fn kernel_elements(set: &Set) -> KernelElements {
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
                for e in v {
                    starts.push(elems.len());
                    elems.push(KernelElem {
                        timeout_ms: Some(e.timeout_ms),
                        comment: e.name.clone(),
                        ..KernelElem::key(e.addr.octets().to_vec())
                    });
                }
            }
            SetElements::TimedV6(v) => {
                for e in v {
                    starts.push(elems.len());
                    elems.push(KernelElem {
                        timeout_ms: Some(e.timeout_ms),
                        comment: e.name.clone(),
                        ..KernelElem::key(e.addr.octets().to_vec())
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
    fn interval_elems<T: Copy + PartialEq + Default + Inc>(
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

    #[test]
    fn interval_encoding_matches_nft_special_cases() {
        let key = |v: u16| v.to_be_bytes().to_vec();
        let el = |v: u16, end: bool, open: bool| KernelElem {
            key: key(v),
            end,
            open,
            timeout_ms: None,
            comment: None,
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

    fn set(key: KeyType, elements: SetElements) -> Set {
        Set {
            name: "s".into(),
            key,
            interval: matches!(
                elements,
                SetElements::V4(_) | SetElements::V6(_) | SetElements::Ports(_)
            ),
            timeout: matches!(elements, SetElements::TimedV4(_) | SetElements::TimedV6(_)),
            dynamic: None,
            size: None,
            elements,
        }
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn samples() -> Vec<Set> {
        vec![
            set(
                KeyType::Ipv4Addr,
                SetElements::V4(vec![
                    (v4("10.0.0.1"), v4("10.0.0.1")),
                    (v4("192.0.2.0"), v4("192.0.2.255")),
                    (v4("203.0.113.0"), v4("255.255.255.255")),
                ]),
            ),
            set(
                KeyType::Ipv4Addr,
                SetElements::V4(vec![
                    (v4("0.0.0.0"), v4("0.0.0.9")),
                    (v4("0.0.0.11"), v4("0.0.0.11")),
                ]),
            ),
            set(
                KeyType::Ipv6Addr,
                SetElements::V6(vec![
                    (
                        "2001:db8::".parse().unwrap(),
                        "2001:db8::ff".parse().unwrap(),
                    ),
                    ("2001:db8:1::".parse().unwrap(), Ipv6Addr::from(u128::MAX)),
                ]),
            ),
            set(
                KeyType::InetService,
                SetElements::Ports(vec![(0, 52), (80, 80), (1024, 65535)]),
            ),
            set(KeyType::Uid, SetElements::Ids(vec![0, 33, 65534])),
            set(KeyType::Icmpv6Type, SetElements::Ids(vec![133, 143])),
            set(
                KeyType::Ipv4Addr,
                SetElements::TimedV4(vec![
                    ruleset::TimedAddr::new(v4("192.0.2.1"), 5000, Some("a.example.com".into())),
                    ruleset::TimedAddr::new(v4("192.0.2.2"), 1, None),
                    ruleset::TimedAddr::new(v4("192.0.2.3"), 1, Some("x".repeat(253))),
                ]),
            ),
            set(
                KeyType::Ipv6Addr,
                SetElements::TimedV6(vec![ruleset::TimedAddr::new(
                    "2001:db8::1".parse().unwrap(),
                    60_000,
                    Some("b.test".into()),
                )]),
            ),
        ]
    }

    /// The streaming encoder writes exactly what the reference encoder writes.
    #[test]
    fn streamed_elements_are_byte_identical_to_the_reference() {
        for s in samples() {
            let k = kernel_elements(&s);
            let mut want = MsgBuf::new();
            put_element_list(&mut want, &k.elems, true);
            let mut got = MsgBuf::new();
            put_elements(&mut got, s.key, &s.elements, 0..s.elements.len());
            assert_eq!(got.as_bytes(), want.as_bytes(), "{:?}", s.elements);
            let sizes: usize = (0..s.elements.len())
                .map(|i| group(s.key, &s.elements, i).size())
                .sum();
            assert_eq!(sizes + 4, want.len(), "{:?}", s.elements);
            // Group i ends where model element i + 1 starts.
            for i in 0..s.elements.len() {
                let end = k.starts.get(i + 1).copied().unwrap_or(k.elems.len());
                let len: usize = (0..=i)
                    .map(|j| group(s.key, &s.elements, j).elems().len())
                    .sum();
                assert_eq!(len, end, "{:?} group {i}", s.elements);
            }
        }
    }

    #[test]
    fn chunks_hold_whole_ranges_under_64k_and_cover_everything() {
        let r: Vec<(Ipv4Addr, Ipv4Addr)> = (0..10_000u32)
            .map(|i| (Ipv4Addr::from(i * 4 + 1), Ipv4Addr::from(i * 4 + 2)))
            .collect();
        let elements = SetElements::V4(r);
        let c = chunks(KeyType::Ipv4Addr, &elements);
        assert!(c.len() > 5, "{}", c.len());
        assert_eq!(c.first().unwrap().start, 0);
        assert_eq!(c.last().unwrap().end, 10_000);
        for w in c.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in c {
            let mut b = MsgBuf::new();
            put_elements(&mut b, KeyType::Ipv4Addr, &elements, r);
            assert!(b.len() <= u16::MAX as usize, "{}", b.len());
            // Every chunk but the last is nearly full: (16 + 24) bytes a range.
            assert!(b.len() > u16::MAX as usize - 100 || b.len() < 65_000);
        }
    }

    #[test]
    fn samples_skip_the_leading_zero_element_and_spread() {
        let s = &samples()[0];
        let picked = sample(s.key, &s.elements, 64);
        // Three ranges: starts and ends, the last one open (no end element).
        let keys: Vec<(Vec<u8>, bool)> = picked.iter().map(|e| (e.key.clone(), e.end)).collect();
        assert_eq!(
            keys,
            vec![
                (vec![10, 0, 0, 1], false),
                (vec![10, 0, 0, 2], true),
                (vec![192, 0, 2, 0], false),
                (vec![192, 0, 3, 0], true),
                (vec![203, 0, 113, 0], false),
            ]
        );
        assert!(sample(s.key, &SetElements::V4(vec![]), 64).is_empty());
    }

    #[test]
    fn the_replace_batch_flushes_then_adds_and_can_carry_a_fault() {
        let v4s = SetElements::V4(vec![(v4("192.0.2.1"), v4("192.0.2.1"))]);
        let v6s = SetElements::V6(vec![]);
        let sets = [
            SetContents {
                name: "s_x_v4",
                elements: &v4s,
            },
            SetContents {
                name: "s_x_v6",
                elements: &v6s,
            },
        ];
        let b = encode_replace("leash", &sets, &ReplaceOptions::default()).unwrap();
        let types: Vec<u16> = crate::nl::Messages::new(&b.bytes)
            .map(|m| m.unwrap().header.ty)
            .collect();
        let (del, new) = (nft_type(NFT_MSG_DELSETELEM), nft_type(NFT_MSG_NEWSETELEM));
        assert_eq!(
            types,
            vec![NFNL_MSG_BATCH_BEGIN, del, new, del, NFNL_MSG_BATCH_END]
        );
        assert_eq!(b.acked, 3);
        assert_eq!(b.elements, 1);
        assert!(b.describe(2).contains("flush"), "{}", b.describe(2));
        let f = encode_replace("leash", &sets, &ReplaceOptions { fault_inject: true }).unwrap();
        assert_eq!(f.what.len(), b.what.len() + 1);
        assert!(
            f.describe(5).contains("injected fault"),
            "{}",
            f.describe(5)
        );
    }
}
