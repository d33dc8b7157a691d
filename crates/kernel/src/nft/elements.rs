//! Fast element updates for the DNS forwarder: addresses with timeouts (and the name each was
//! looked up by, in the element's comment) added to or refreshed in timeout sets of table
//! `inet leash`, one nfnetlink batch per call, on a socket kept open.
//!
//! The forwarder calls [`SetWriter::add_timed`] before it sends each answer (a connect that follows
//! the answer must already find the address in the set), so this sits on the answer path. Hence:
//! one `sendmsg` per call, buffers kept between calls, no allocation per element, and the batch is
//! written straight into a byte buffer instead of going through `MsgBuf` (which cannot be reset).
//!
//! What the kernel does with an element that is already in the set depends on its version, so
//! [`SetWriter::open`] finds out with a probe on a scratch table ([`super::probe`]):
//! - from Linux 6.10 on ([`Refresh::InPlace`], measured on 6.18 by `tests/nft_elements.rs`), a
//!   NEWSETELEM without `NLM_F_EXCL` updates the element: `NFTA_SET_ELEM_TIMEOUT` alone restarts
//!   the countdown only when the timeout differs from the element's current one, while
//!   `NFTA_SET_ELEM_EXPIRATION` restarts it at that value, whatever it was. So every element is
//!   sent with both, equal;
//! - before 6.10 ([`Refresh::DeleteAndAdd`], Debian 12's 6.1 in the kernel-matrix job), the
//!   re-add is accepted and changes nothing: the element keeps its old expiry. So each element is
//!   added (a no-op if it is there, so that the delete cannot fail with ENOENT), deleted and added
//!   again with its timeout, all in the same batch: one transaction, so the packet path sees the
//!   old element until the commit and the new one from then on.
//!
//! Either way the element then expires `timeout_ms` after this call, whether it was new, about to
//! expire, or had more time left. The kernel sets, it does not take the maximum: a shorter timeout
//! shortens an element's life. A caller that only wants to extend must not send a timeout shorter
//! than what the element has left (the forwarder knows what it sent last). An element that is
//! refreshed in place keeps the comment it was first added with.
//!
//! **Which table.** Elements are addressed by table and set *name*, and every `leash apply`
//! replaces the table with a new one of the same name whose sets may have the same names but
//! belong to another policy. [`SetWriter::add_timed_to`] therefore takes the handle of the table
//! the caller decided for, and makes the kernel refuse the batch unless that table is the one in
//! place at commit: the batch carries the ruleset generation (`NFNL_BATCH_GENID`) at which the
//! writer saw that handle, and the kernel refuses a batch whose generation is not the current
//! one (`ERESTART`) before it looks at any message. Every commit bumps the generation, this
//! writer's own included (by exactly one, so after a commit of its own the writer knows the next
//! one without asking), so a commit by anyone else in between makes the writer look again: the
//! same handle, and the batch is sent again with the new generation; another handle, and it
//! fails with [`Error::TableReplaced`]. Nothing of the batch lands in the new table.

use std::net::IpAddr;

use super::batch::{SEND_BUF_SLACK, open_socket, scan_acks};
use super::consts::*;
use super::error::{Error, netlink};
use super::probe::{Refresh, probe_refresh};
use super::read::table_info;
use super::validate::{MAX_TIMEOUT_MS, check_element_name, check_name};
use crate::nl::{self, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_HDRLEN, NlError, Socket};

/// One address to add to (or refresh in) a timeout set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedElement<'a> {
    /// Name of the set in the table (a set with `flags timeout` and key `ipv4_addr` or
    /// `ipv6_addr` matching the address).
    pub set: &'a str,
    pub addr: IpAddr,
    /// Milliseconds from now until the kernel removes the element (1 to about 584 years).
    pub timeout_ms: u64,
    /// The name whose answer holds the address, kept in the element's comment (at most
    /// [`ruleset::MAX_ELEMENT_NAME`] bytes).
    pub name: Option<&'a str>,
}

/// A netlink socket kept open for fast element updates in the current network namespace (the
/// namespace of the thread that calls [`SetWriter::open`]; the socket stays there).
#[derive(Debug)]
pub struct SetWriter {
    sock: Socket,
    enc: BatchEncoder,
    /// Replies to the batch; cleared, not freed, by every call.
    replies: Vec<u8>,
    /// Send buffer size requested so far (a batch must fit in one `sendmsg`).
    sndbuf: usize,
    /// (table handle, ruleset generation) of the last check or own commit for
    /// [`SetWriter::add_timed_to`]: at that generation the table had that handle.
    known: Option<(u64, u32)>,
}

/// How often [`SetWriter::add_timed_to`] tries when other commits keep landing between its
/// check of the table and its batch (each try re-reads the table).
const GENID_TRIES: usize = 8;

/// What one checked batch came to.
enum Sent {
    Done,
    /// The ruleset generation moved on since the check (`ERESTART`): nothing was applied.
    Stale,
}

/// Process-wide result of the refresh probe: the kernel is the same for every namespace.
static REFRESH: std::sync::OnceLock<Refresh> = std::sync::OnceLock::new();

/// Builds the batch of one call; every buffer is cleared, not freed, by the next call.
#[derive(Debug, Default)]
struct BatchEncoder {
    /// The batch.
    buf: Vec<u8>,
    /// Per distinct set of the current call: the index of its first element.
    sets: Vec<usize>,
    /// Per element of the current call: its index in `sets`.
    group: Vec<u32>,
    /// Per element message of the current batch: (index in `sets`, elements in the message, the
    /// message type).
    msgs: Vec<(usize, usize, u16)>,
    /// How elements are refreshed (see the module documentation).
    refresh: Refresh,
    /// Per element of the current call: a later element has the same set and address (in
    /// `DeleteAndAdd` mode only the last is sent: a second delete of it would fail).
    superseded: Vec<bool>,
    /// Sequence number of the next message. It keeps counting across calls so that a reply can
    /// never be taken for one of a later batch.
    next_seq: u32,
}

/// Largest payload of the ELEMENTS nest (its u16 length includes its own 4-byte header).
const MAX_ELEMENTS_NEST: usize = u16::MAX as usize - 4;
/// Size of one element in the ELEMENTS nest: list entry header, TIMEOUT and EXPIRATION (4 + 8
/// each), KEY nest header, DATA_VALUE header and the key, and the comment's user data; a key
/// alone (a delete) is the list entry header and the key nest.
fn elem_size(e: &TimedElement<'_>, key_only: bool) -> usize {
    let key_len = if e.addr.is_ipv4() { 4 } else { 16 };
    if key_only {
        return 4 + 4 + 4 + key_len;
    }
    4 + 12 + 12 + 4 + 4 + key_len + e.name.map_or(0, |n| 4 + nl::align(n.len() + 3))
}
/// Receive buffer: room for a few hundred acks (each costs the kernel about 1 KiB of buffer),
/// more than a batch of a few thousand elements in a few sets produces.
const RECV_BUF: usize = 1 << 20;

impl SetWriter {
    /// Opens a netfilter netlink socket in the calling thread's network namespace. The first
    /// writer of the process probes how the kernel refreshes element timeouts
    /// ([`crate::nft::probe_refresh`], on a scratch table); later ones reuse the answer. If the
    /// probe fails, the writer uses [`Refresh::DeleteAndAdd`], which is right on every kernel.
    pub fn open() -> Result<SetWriter, Error> {
        let refresh = match REFRESH.get() {
            Some(&r) => r,
            None => match probe_refresh() {
                Ok(r) => *REFRESH.get_or_init(|| r),
                Err(_) => Refresh::DeleteAndAdd,
            },
        };
        Self::open_with(refresh)
    }

    /// Like [`SetWriter::open`], with the refresh mode given instead of probed (tests run the
    /// delete-and-add path on a kernel that would not need it).
    pub fn open_with(refresh: Refresh) -> Result<SetWriter, Error> {
        let sock = open_socket()?;
        sock.set_recv_buffer(RECV_BUF)
            .map_err(netlink("sizing the netlink receive buffer"))?;
        Ok(SetWriter {
            sock,
            enc: BatchEncoder {
                buf: Vec::with_capacity(4096),
                next_seq: 1,
                refresh,
                sets: Vec::new(),
                group: Vec::new(),
                msgs: Vec::new(),
                superseded: Vec::new(),
            },
            replies: Vec::with_capacity(4096),
            sndbuf: 0,
            known: None,
        })
    }

    /// How this writer refreshes elements that are already in a set.
    pub fn refresh(&self) -> Refresh {
        self.enc.refresh
    }

    /// Like [`SetWriter::add_timed`], but the kernel commits the batch only while the table
    /// `inet <table>` in place is the one with handle `handle` (see the module documentation):
    /// elements decided for one policy's table never land in a table that replaced it.
    /// [`Error::TableReplaced`] when the table has another handle or is gone; then nothing
    /// was added.
    pub fn add_timed_to(&mut self, table: &str, handle: u64, elems: &[TimedElement<'_>]) -> Result<(), Error> {
        if elems.is_empty() {
            return Ok(());
        }
        check_name("table", table)?;
        self.enc.group_by_set(elems)?;
        for _ in 0..GENID_TRIES {
            let genid = match self.known {
                Some((h, g)) if h == handle => g,
                _ => self.check_table(table, handle)?,
            };
            self.enc.encode_with(table, elems, Some(genid));
            match self.send_and_check(table, elems) {
                Ok(Sent::Done) => {
                    // Our commit bumped the generation by one (0 is skipped: it means "no check").
                    let next = match genid.wrapping_add(1) {
                        0 => 1,
                        g => g,
                    };
                    self.known = Some((handle, next));
                    return Ok(());
                }
                Ok(Sent::Stale) => self.known = None,
                Err(e) => {
                    // The batch was aborted; look again next time rather than trust the guess.
                    self.known = None;
                    return Err(e);
                }
            }
        }
        Err(Error::Netlink {
            context: format!("adding set elements to table inet {table}"),
            source: NlError::Malformed(format!(
                "the ruleset changed under every one of {GENID_TRIES} tries (other writers commit continuously)"
            )),
        })
    }

    /// The current generation, when at it the table has handle `handle`: the generation is read
    /// before and after the table, and only a pair that agrees counts (a commit in between could
    /// have replaced the table after the first read).
    fn check_table(&mut self, table: &str, handle: u64) -> Result<u32, Error> {
        for _ in 0..GENID_TRIES {
            let before = self.generation()?;
            let found = table_info(&mut self.sock, table)?.map(|i| i.handle);
            let after = self.generation()?;
            if before != after {
                continue;
            }
            if found != Some(handle) {
                return Err(Error::TableReplaced { table: table.to_string(), expected: handle, found });
            }
            self.known = Some((handle, before));
            return Ok(before);
        }
        Err(Error::Netlink {
            context: format!("reading table inet {table}"),
            source: NlError::Malformed(format!("the ruleset changed during each of {GENID_TRIES} reads")),
        })
    }

    /// Whether the kernel refuses a batch whose generation is not the current one: a batch
    /// with nothing in it but a generation that cannot be current. A kernel that ignores
    /// `NFNL_BATCH_GENID` acks nothing and reports nothing (an empty batch commits nothing).
    /// Without it [`SetWriter::add_timed_to`] could not keep a replaced table's elements out.
    pub fn probe_generation_check(&mut self) -> Result<bool, Error> {
        let current = self.generation()?;
        let wrong = match current.wrapping_add(1 << 31) {
            0 => 1,
            g => g,
        };
        let seq = self.enc.next_seq;
        self.enc.next_seq = seq.wrapping_add(2);
        let mut buf = Vec::new();
        let m = begin_msg(&mut buf, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES);
        attr(&mut buf, NFNL_BATCH_GENID, &wrong.to_be_bytes());
        end_msg(&mut buf, m);
        let m = begin_msg(&mut buf, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq.wrapping_add(1), NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES);
        end_msg(&mut buf, m);
        self.sock.send(&buf).map_err(netlink("sending the generation probe"))?;
        self.replies.clear();
        self.sock.drain_queued(&mut self.replies).map_err(netlink("reading the reply to the generation probe"))?;
        let (_, error) = scan_acks(&self.replies, "parsing the reply to the generation probe", |s| (s == seq).then_some(0))?;
        match error {
            Some((_, e)) if e.errno == libc::ERESTART => Ok(true),
            None => Ok(false),
            Some((_, e)) => Err(Error::Rejected { what: "the generation probe".into(), error: e }),
        }
    }

    /// Adds every element (or refreshes its timeout when it is already present) in ONE nfnetlink
    /// batch to table `inet <table>`, and returns only after the kernel acked every message. An
    /// error names the set and errno; the kernel then applied nothing of the batch.
    ///
    /// Elements are grouped by set: one NEWSETELEM message per set (a set with more than about
    /// 1,600 IPv4 or 1,200 IPv6 elements in one call takes several, an ELEMENTS attribute being
    /// limited to 64 KiB; still one batch, one commit), or, with [`Refresh::DeleteAndAdd`], an
    /// add, a delete and an add per set.
    /// Each element carries its timeout and an expiration equal to it, which restarts its
    /// countdown if it is already there (see the module documentation). An address listed twice
    /// for one set: the later timeout wins.
    pub fn add_timed(&mut self, table: &str, elems: &[TimedElement<'_>]) -> Result<(), Error> {
        if elems.is_empty() {
            return Ok(());
        }
        check_name("table", table)?;
        self.enc.group_by_set(elems)?;
        self.enc.encode(table, elems);
        match self.send_and_check(table, elems)? {
            Sent::Done => Ok(()),
            // Only a batch with a generation can be stale.
            Sent::Stale => Err(Error::Invalid("unchecked batch refused as stale".into())),
        }
    }

    /// The nf_tables ruleset generation: a counter the kernel bumps on every committed batch in
    /// this namespace (leash's applies, other tools' changes and this writer's own additions).
    pub fn generation(&mut self) -> Result<u32, Error> {
        let mut b = nl::MsgBuf::new();
        let seq = self.enc.next_seq;
        self.enc.next_seq = seq.wrapping_add(1);
        let m = b.begin(nft_type(NFT_MSG_GETGEN), NLM_F_REQUEST | NLM_F_ACK, seq);
        b.put_header(&[NFPROTO_UNSPEC, NFNETLINK_V0, 0, 0]);
        b.end(m).map_err(netlink("encoding GETGEN"))?;
        let mut gen_id = None;
        self.sock
            .request(b.as_bytes(), |m| {
                for a in m.attrs(NFGENMSG_LEN) {
                    let a = a?;
                    if a.ty == NFTA_GEN_ID {
                        gen_id = Some(a.be32()?);
                    }
                }
                Ok(())
            })
            .map_err(netlink("reading the nf_tables generation"))?;
        gen_id.ok_or_else(|| Error::Netlink {
            context: "reading the nf_tables generation".into(),
            source: NlError::Malformed("NEWGEN reply without NFTA_GEN_ID".into()),
        })
    }

    fn send_and_check(&mut self, table: &str, elems: &[TimedElement<'_>]) -> Result<Sent, Error> {
        let enc = &self.enc;
        let need = enc.buf.len() + SEND_BUF_SLACK;
        if need > self.sndbuf {
            // Grow in powers of two so that slowly growing batches do not set it every call.
            let size = need.next_power_of_two();
            self.sock
                .set_send_buffer(size)
                .map_err(netlink("sizing the netlink send buffer"))?;
            self.sndbuf = size;
        }
        // The seq of BATCH_BEGIN; NEWSETELEM k has begin + 1 + k.
        let begin = enc.next_seq.wrapping_sub(enc.msgs.len() as u32 + 2);
        self.sock
            .send(&enc.buf)
            .map_err(netlink("sending the set element batch"))?;
        // The kernel processed the batch inside the send: every reply is queued now.
        self.replies.clear();
        self.sock
            .drain_queued(&mut self.replies)
            .map_err(netlink("reading the acks of the set element batch"))?;
        // Offset of the acked message in the batch; replies to anything else are stale.
        let n = enc.msgs.len();
        // BATCH_BEGIN (k = 0) is acked only with an error: ERESTART for a stale generation.
        let (acked, first_error) = scan_acks(
            &self.replies,
            "parsing the acks of the set element batch",
            |seq| {
                let k = seq.wrapping_sub(begin);
                (k as usize <= n + 1).then_some(k)
            },
        )?;
        if let Some((0, error)) = &first_error
            && error.errno == libc::ERESTART
        {
            return Ok(Sent::Stale);
        }
        if let Some((k, error)) = first_error {
            let what = match k.checked_sub(1).and_then(|i| enc.msgs.get(i as usize)) {
                Some(&(g, n, ty)) => format!(
                    "{} for set `{}` of table inet {table} ({n} element{})",
                    nft_msg_name(ty),
                    elems[enc.sets[g]].set,
                    if n == 1 { "" } else { "s" }
                ),
                None if k == 0 => "BATCH_BEGIN of the set element batch".into(),
                None => "BATCH_END of the set element batch".into(),
            };
            return Err(Error::Rejected { what, error });
        }
        if acked != enc.msgs.len() {
            return Err(Error::MissingAcks {
                acked,
                expected: enc.msgs.len(),
            });
        }
        Ok(Sent::Done)
    }
}

impl BatchEncoder {
    /// Fills `sets` and `group`, checking names and timeouts on the way. Sets are few (one or
    /// two per domain rule), so a linear search per element beats hashing.
    fn group_by_set(&mut self, elems: &[TimedElement<'_>]) -> Result<(), Error> {
        self.sets.clear();
        self.group.clear();
        self.superseded.clear();
        self.superseded.resize(elems.len(), false);
        for (i, e) in elems.iter().enumerate() {
            if !(1..=MAX_TIMEOUT_MS).contains(&e.timeout_ms) {
                return Err(Error::Invalid(format!(
                    "set `{}`: timeout of {} is {} ms; it must be 1 to {} ms",
                    e.set, e.addr, e.timeout_ms, MAX_TIMEOUT_MS
                )));
            }
            if let Some(n) = e.name {
                check_element_name(n).map_err(|m| Error::Invalid(format!("set `{}`: {m}", e.set)))?;
            }
            let g = match self.sets.iter().position(|&f| elems[f].set == e.set) {
                Some(g) => g,
                None => {
                    check_name("set", e.set)?;
                    self.sets.push(i);
                    self.sets.len() - 1
                }
            };
            self.group.push(g as u32);
        }
        if self.refresh == Refresh::DeleteAndAdd {
            // The forwarder merges duplicates before it calls; this keeps a caller that does not
            // from failing its batch. Quadratic only among the elements of one set and address.
            let mut seen = std::collections::HashSet::with_capacity(elems.len());
            for i in (0..elems.len()).rev() {
                if !seen.insert((self.group[i], elems[i].addr)) {
                    self.superseded[i] = true;
                }
            }
        }
        Ok(())
    }

    /// Writes BATCH_BEGIN, the NEWSETELEM messages and BATCH_END into `buf`.
    fn encode(&mut self, table: &str, elems: &[TimedElement<'_>]) {
        self.encode_with(table, elems, None);
    }

    /// [`BatchEncoder::encode`], with `NFNL_BATCH_GENID` in BATCH_BEGIN when `genid` is given.
    fn encode_with(&mut self, table: &str, elems: &[TimedElement<'_>], genid: Option<u32>) {
        self.buf.clear();
        self.msgs.clear();
        let first_seq = self.next_seq;
        let mut seq = first_seq;
        let batch = |buf: &mut Vec<u8>, ty: u16, seq: u32| {
            let m = begin_msg(
                buf,
                ty,
                NLM_F_REQUEST,
                seq,
                NFPROTO_UNSPEC,
                NFNL_SUBSYS_NFTABLES,
            );
            end_msg(buf, m);
        };
        let m = begin_msg(&mut self.buf, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES);
        if let Some(g) = genid {
            attr(&mut self.buf, NFNL_BATCH_GENID, &g.to_be_bytes());
        }
        end_msg(&mut self.buf, m);
        // In place: one add. Delete and add: add (a no-op for an element that is there), delete,
        // add with the new timeout, per run of elements.
        let steps: &[(u16, bool)] = match self.refresh {
            Refresh::InPlace => &[(NFT_MSG_NEWSETELEM, false)],
            Refresh::DeleteAndAdd => &[
                (NFT_MSG_NEWSETELEM, false),
                (NFT_MSG_DELSETELEM, true),
                (NFT_MSG_NEWSETELEM, false),
            ],
        };
        for (g, &first) in self.sets.iter().enumerate() {
            let set = elems[first].set;
            let mut i = first;
            // One run per set, unless its elements overflow one ELEMENTS attribute (sized for
            // the larger encoding, so that every step of a run takes the same elements).
            while i < elems.len() {
                let start = i;
                let mut size = 0;
                let mut count = 0;
                while i < elems.len() {
                    if self.group[i] as usize != g || self.superseded[i] {
                        i += 1;
                        continue;
                    }
                    let add = elem_size(&elems[i], false);
                    if count > 0 && size + add > MAX_ELEMENTS_NEST {
                        break;
                    }
                    size += add;
                    count += 1;
                    i += 1;
                }
                let end = i;
                if count == 0 {
                    break;
                }
                for &(ty, key_only) in steps {
                    seq = seq.wrapping_add(1);
                    let flags = if ty == NFT_MSG_NEWSETELEM {
                        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
                    } else {
                        NLM_F_REQUEST | NLM_F_ACK
                    };
                    let m = begin_msg(&mut self.buf, nft_type(ty), flags, seq, NFPROTO_INET, 0);
                    attr_str(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, table);
                    attr_str(&mut self.buf, NFTA_SET_ELEM_LIST_SET, set);
                    let list = begin_nest(&mut self.buf, NFTA_SET_ELEM_LIST_ELEMENTS);
                    for (j, e) in elems.iter().enumerate().take(end).skip(start) {
                        if self.group[j] as usize == g && !self.superseded[j] {
                            put_elem(&mut self.buf, e, key_only);
                        }
                    }
                    end_nest(&mut self.buf, list);
                    end_msg(&mut self.buf, m);
                    self.msgs.push((g, count, ty));
                }
                // Skip to this set's next element, if any is left.
                while i < elems.len() && self.group[i] as usize != g {
                    i += 1;
                }
            }
        }
        seq = seq.wrapping_add(1);
        batch(&mut self.buf, NFNL_MSG_BATCH_END, seq);
        self.next_seq = seq.wrapping_add(1);
        debug_assert_eq!(
            self.next_seq.wrapping_sub(first_seq) as usize,
            self.msgs.len() + 2
        );
    }
}

/// One element: timeout, expiration (both the same), key, and the name as nft writes an
/// element's `comment` (libnftnl's order); with `key_only`, the key alone (a delete).
fn put_elem(buf: &mut Vec<u8>, e: &TimedElement<'_>, key_only: bool) {
    let el = begin_nest(buf, NFTA_LIST_ELEM);
    if !key_only {
        let ms = e.timeout_ms.to_be_bytes();
        attr(buf, NFTA_SET_ELEM_TIMEOUT, &ms);
        attr(buf, NFTA_SET_ELEM_EXPIRATION, &ms);
    }
    let k = begin_nest(buf, NFTA_SET_ELEM_KEY);
    match e.addr {
        IpAddr::V4(a) => attr(buf, NFTA_DATA_VALUE, &a.octets()),
        IpAddr::V6(a) => attr(buf, NFTA_DATA_VALUE, &a.octets()),
    }
    end_nest(buf, k);
    if let (Some(n), false) = (e.name, key_only) {
        // udata_comment(NFTNL_UDATA_SET_ELEM_COMMENT, n): type, length with the NUL, text, NUL.
        let len = (nl::NLA_HDRLEN + n.len() + 3) as u16;
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&NFTA_SET_ELEM_USERDATA.to_ne_bytes());
        buf.push(NFTNL_UDATA_SET_ELEM_COMMENT);
        buf.push((n.len() + 1) as u8);
        buf.extend_from_slice(n.as_bytes());
        buf.push(0);
        pad(buf);
    }
    end_nest(buf, el);
}

// --- the few netlink writers needed here, on a plain byte buffer -------------------------------

fn pad(buf: &mut Vec<u8>) {
    buf.resize(nl::align(buf.len()), 0);
}

/// `nlmsghdr` (length patched by [`end_msg`]) and `nfgenmsg`; returns the message start.
fn begin_msg(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    let [r0, r1] = res_id.to_be_bytes();
    buf.extend_from_slice(&[family, NFNETLINK_V0, r0, r1]);
    start
}

fn end_msg(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    debug_assert!(len as usize >= NLMSG_HDRLEN);
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// An attribute; payloads here are at most a 16-byte key or a set name (checked to fit).
fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = (nl::NLA_HDRLEN + data.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
}

fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let len = (nl::NLA_HDRLEN + s.len() + 1) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    pad(buf);
}

fn begin_nest(buf: &mut Vec<u8>, ty: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | nl::NLA_F_NESTED).to_ne_bytes());
    start
}

/// Patches a nest's length; callers keep every nest under 64 KiB.
fn end_nest(buf: &mut [u8], start: usize) {
    let len = buf.len() - start;
    debug_assert!(len <= u16::MAX as usize);
    buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::{Attrs, Messages};

    fn encode_with(refresh: Refresh, elems: &[TimedElement<'_>]) -> (Vec<u8>, Vec<(usize, usize, u16)>) {
        let mut w = BatchEncoder {
            next_seq: 7,
            refresh,
            ..BatchEncoder::default()
        };
        w.group_by_set(elems).unwrap();
        w.encode("leash", elems);
        assert_eq!(w.next_seq, 7 + w.msgs.len() as u32 + 2);
        (w.buf, w.msgs)
    }

    fn encode(elems: &[TimedElement<'_>]) -> (Vec<u8>, Vec<(usize, usize)>) {
        let (b, m) = encode_with(Refresh::InPlace, elems);
        assert!(m.iter().all(|m| m.2 == NFT_MSG_NEWSETELEM));
        (b, m.into_iter().map(|(g, n, _)| (g, n)).collect())
    }

    fn el<'a>(set: &'a str, addr: &str, timeout_ms: u64) -> TimedElement<'a> {
        TimedElement {
            set,
            addr: addr.parse().unwrap(),
            timeout_ms,
            name: None,
        }
    }

    #[test]
    fn names_go_into_the_comment_and_delete_and_add_sends_three_messages_per_set() {
        let elems = [
            TimedElement { name: Some("api.example.com"), ..el("b", "192.0.2.1", 1000) },
            el("a", "2001:db8::1", 2000),
            // Superseded by the later one for the same address: sent once.
            el("b", "192.0.2.1", 5000),
        ];
        let (bytes, msgs) = encode_with(Refresh::DeleteAndAdd, &elems);
        let (n, d) = (NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM);
        assert_eq!(msgs, vec![(0, 1, n), (0, 1, d), (0, 1, n), (1, 1, n), (1, 1, d), (1, 1, n)]);
        let all: Vec<_> = Messages::new(&bytes).collect::<Result<_, _>>().unwrap();
        let elements = |m: usize| -> Vec<Vec<(u16, Vec<u8>)>> {
            let a: Vec<_> = all[m].attrs(4).collect::<Result<_, _>>().unwrap();
            a[2].nested()
                .map(|e| Attrs::new(e.unwrap().data).map(|f| f.unwrap()).map(|f| (f.ty, f.data.to_vec())).collect())
                .collect()
        };
        // The delete carries the key alone; both adds the later timeout (the comment went with
        // the superseded element).
        let del = elements(2);
        assert_eq!(del.len(), 1);
        assert_eq!(del[0].iter().map(|f| f.0).collect::<Vec<_>>(), vec![NFTA_SET_ELEM_KEY]);
        for m in [1, 3] {
            let add = elements(m);
            assert_eq!(add[0][0], (NFTA_SET_ELEM_TIMEOUT, 5000u64.to_be_bytes().to_vec()));
        }
        // In place, a name is libnftnl's comment TLV after the key, as nft sends it.
        let (bytes, _) = encode(&elems[..1]);
        let all: Vec<_> = Messages::new(&bytes).collect::<Result<_, _>>().unwrap();
        let a: Vec<_> = all[1].attrs(4).collect::<Result<_, _>>().unwrap();
        let e = a[2].nested().next().unwrap().unwrap();
        let f: Vec<_> = Attrs::new(e.data).collect::<Result<_, _>>().unwrap();
        assert_eq!(f[3].ty, NFTA_SET_ELEM_USERDATA);
        assert_eq!(f[3].data, b"\x00\x10api.example.com\x00");
        assert_eq!(e.data.len() + 4, elem_size(&elems[0], false));
    }

    #[test]
    fn one_message_per_set_in_order_of_first_appearance() {
        let elems = [
            el("b", "192.0.2.1", 1000),
            el("a", "2001:db8::1", 2000),
            el("b", "192.0.2.2", 3000),
        ];
        let (bytes, msgs) = encode(&elems);
        assert_eq!(msgs, vec![(0, 2), (1, 1)]);
        let all: Vec<_> = Messages::new(&bytes).collect::<Result<_, _>>().unwrap();
        let types: Vec<u16> = all.iter().map(|m| m.header.ty).collect();
        let t = nft_type(NFT_MSG_NEWSETELEM);
        assert_eq!(types, vec![NFNL_MSG_BATCH_BEGIN, t, t, NFNL_MSG_BATCH_END]);
        let seqs: Vec<u32> = all.iter().map(|m| m.header.seq).collect();
        assert_eq!(seqs, vec![7, 8, 9, 10]);
        assert_eq!(all[0].payload, &[0, 0, 0, 10]);
        // Set b: table, set, two elements with timeout, expiration and key.
        let a: Vec<_> = all[1].attrs(4).collect::<Result<_, _>>().unwrap();
        assert_eq!(a[0].str(), "leash");
        assert_eq!(a[1].str(), "b");
        assert_eq!(a[2].ty, NFTA_SET_ELEM_LIST_ELEMENTS);
        let els: Vec<_> = a[2].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(els.len(), 2);
        let f: Vec<_> = Attrs::new(els[1].data).collect::<Result<_, _>>().unwrap();
        assert_eq!(f[0].ty, NFTA_SET_ELEM_TIMEOUT);
        assert_eq!(f[0].be64().unwrap(), 3000);
        assert_eq!(f[1].ty, NFTA_SET_ELEM_EXPIRATION);
        assert_eq!(f[1].be64().unwrap(), 3000);
        let key = f[2].nested().next().unwrap().unwrap();
        assert_eq!(key.data, &[192, 0, 2, 2]);
        assert_eq!(els[0].data.len() + 4, elem_size(&elems[0], false));
    }

    #[test]
    fn a_large_set_is_split_below_64k() {
        let addrs: Vec<String> = (0..3000u32)
            .map(|i| std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i)).to_string())
            .collect();
        let elems: Vec<_> = addrs.iter().map(|a| el("big", a, 60_000)).collect();
        let (bytes, msgs) = encode(&elems);
        assert!(msgs.len() >= 3, "{msgs:?}");
        assert_eq!(msgs.iter().map(|m| m.1).sum::<usize>(), 3000);
        for m in Messages::new(&bytes) {
            let m = m.unwrap();
            for a in m.attrs(4) {
                assert!(a.unwrap().data.len() + 4 <= u16::MAX as usize);
            }
        }
    }

    #[test]
    fn bad_timeouts_and_names_are_refused() {
        let mut w = BatchEncoder::default();
        let e = w.group_by_set(&[el("s", "192.0.2.1", 0)]).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert!(e.to_string().contains("192.0.2.1"), "{e}");
        let e = w.group_by_set(&[el("", "192.0.2.1", 1)]).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert!(check_name("table", "").is_err());
        assert!(check_name("table", "leash").is_ok());
    }
}
