//! Rule statements to nf_tables expressions, byte for byte what nft 1.0.6 generates in an inet table.
//!
//! Every load goes to register 1 and every comparison reads it, as nft does for rules of this
//! shape. Protocol dependencies follow nft's: a statement that reads a protocol header (`tcp dport`,
//! `ip daddr`, `icmpv6 type`, `reject with tcp reset`) first checks the protocol (`meta nfproto` /
//! `meta l4proto`) unless an earlier statement of the same rule already established it. nft tracks
//! that "protocol context" while it linearizes a rule; [`ProtoCtx`] reproduces exactly the cases
//! leash's statements can produce (checked against `nft --debug=netlink` by the oracle tests).
//!
//! `cmp` and `range` compare register bytes, so nft compares a host-order value (`meta hour`,
//! `meta time`) for order only after a `byteorder` expression has made it big-endian; equality
//! needs no conversion. A window that wraps around (Saturday to Monday, 22:00 to 06:00) becomes
//! `!=` the gap between its ends ([`cyclic_match`], shared with the text renderer).

use ipnet::IpNet;
use ruleset::render::{CyclicMatch, DAY_MAX, HOUR_MAX, cyclic_match};
use ruleset::{Family, L4, MeterKey, MeterLimit, RateLimit, Stmt, Value};

use super::consts::*;
use crate::nl::MsgBuf;

/// Where a set named in a rule lives in the batch: nft references sets by name and by the
/// batch-local set id, and so do we.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SetRef<'a> {
    pub name: &'a str,
    pub id: u32,
}

/// The protocol facts established so far in one rule.
#[derive(Debug, Default, Clone, Copy)]
struct ProtoCtx {
    net: Option<Family>,
    l4: Option<L4>,
}

/// Appends the expressions of one rule (the contents of `NFTA_RULE_EXPRESSIONS`). `set` resolves
/// a set name used by `@name`; the caller has checked that every name resolves.
pub(crate) fn encode_stmts<'a>(
    b: &mut MsgBuf,
    stmts: &[Stmt],
    set: &dyn Fn(&str) -> Option<SetRef<'a>>,
) {
    let mut ctx = ProtoCtx::default();
    for s in stmts {
        match s {
            Stmt::MetaDay { first, last } => {
                // The weekday is one byte, so a bytewise comparison is a numeric one: no
                // byteorder, even for the ordered comparisons of a range.
                meta_load(b, NFT_META_TIME_DAY);
                match cyclic_match(u32::from(*first), u32::from(*last), DAY_MAX) {
                    CyclicMatch::Eq(d) => cmp(b, NFT_CMP_EQ, &[d as u8]),
                    CyclicMatch::Ne(d) => cmp(b, NFT_CMP_NEQ, &[d as u8]),
                    CyclicMatch::Range(lo, hi) => {
                        cmp(b, NFT_CMP_GTE, &[lo as u8]);
                        cmp(b, NFT_CMP_LTE, &[hi as u8]);
                    }
                    CyclicMatch::NotRange(lo, hi) => {
                        range(b, NFT_RANGE_NEQ, &[lo as u8], &[hi as u8]);
                    }
                }
            }
            Stmt::MetaHour { first, last } => {
                // The kernel stores the second of the day as a host-order u32. An equality is
                // compared as is; for an ordered comparison (cmp gte/lte, range) nft first turns
                // the register big-endian, since the kernel compares bytes.
                meta_load(b, NFT_META_TIME_HOUR);
                match cyclic_match(*first, *last, HOUR_MAX) {
                    CyclicMatch::Eq(t) => cmp(b, NFT_CMP_EQ, &t.to_ne_bytes()),
                    CyclicMatch::Ne(t) => cmp(b, NFT_CMP_NEQ, &t.to_ne_bytes()),
                    CyclicMatch::Range(lo, hi) => {
                        hton(b, 4);
                        cmp(b, NFT_CMP_GTE, &lo.to_be_bytes());
                        cmp(b, NFT_CMP_LTE, &hi.to_be_bytes());
                    }
                    CyclicMatch::NotRange(lo, hi) => {
                        hton(b, 4);
                        range(b, NFT_RANGE_NEQ, &lo.to_be_bytes(), &hi.to_be_bytes());
                    }
                }
            }
            // `meta time` is a host-order u64 of nanoseconds; `>=` and `<` are ordered, so
            // byteorder first, as for hours. Validation has made sure the instant is not negative.
            Stmt::MetaTimeFrom(ns) => {
                meta_load(b, NFT_META_TIME_NS);
                hton(b, 8);
                cmp(b, NFT_CMP_GTE, &(*ns as u64).to_be_bytes());
            }
            Stmt::MetaTimeUntil(ns) => {
                meta_load(b, NFT_META_TIME_NS);
                hton(b, 8);
                cmp(b, NFT_CMP_LT, &(*ns as u64).to_be_bytes());
            }
            Stmt::Limit(l) => expr(b, "limit", |b| limit_data(b, l)),
            Stmt::CtCount(n) => expr(b, "connlimit", |b| connlimit_data(b, *n)),
            Stmt::SocketCgroup { level, id, .. } => {
                // nft resolves the path to the directory's inode number, which is the cgroup
                // id the kernel compares (a host-order u64) with the socket's ancestor at `level`.
                expr(b, "socket", |b| {
                    b.attr_be32(NFTA_SOCKET_KEY, NFT_SOCKET_CGROUPV2);
                    b.attr_be32(NFTA_SOCKET_DREG, NFT_REG_1);
                    b.attr_be32(NFTA_SOCKET_LEVEL, *level);
                });
                cmp(b, NFT_CMP_EQ, &id.to_ne_bytes());
            }
            Stmt::Meter {
                set: name,
                key,
                limit,
            } => {
                // The key is loaded as the same match would load it (with its protocol
                // dependency), then the dynset adds or updates the element and runs the
                // element's own limiter or counter, which breaks the rule when exceeded.
                match key {
                    MeterKey::Daddr4 => {
                        if ctx.net != Some(Family::Ipv4) {
                            nfproto(b, Family::Ipv4);
                            ctx.net = Some(Family::Ipv4);
                        }
                        payload(b, NFT_PAYLOAD_NETWORK_HEADER, 16, 4);
                    }
                    MeterKey::Daddr6 => {
                        if ctx.net != Some(Family::Ipv6) {
                            nfproto(b, Family::Ipv6);
                            ctx.net = Some(Family::Ipv6);
                        }
                        payload(b, NFT_PAYLOAD_NETWORK_HEADER, 24, 16);
                    }
                    MeterKey::SkUid => meta_load(b, NFT_META_SKUID),
                }
                // nft writes `update` for a limiter (an active key keeps its element, and its
                // timeout restarts) and `add` for a counter (its set has no timeouts).
                let op = match limit {
                    MeterLimit::Rate(_) => NFT_DYNSET_OP_UPDATE,
                    MeterLimit::Count(_) => NFT_DYNSET_OP_ADD,
                };
                let (set_name, set_id) = set(name).map_or(("", 0), |s| (s.name, s.id));
                expr(b, "dynset", |b| {
                    b.attr_be32(NFTA_DYNSET_SREG_KEY, NFT_REG_1);
                    b.attr_be32(NFTA_DYNSET_OP, op);
                    b.attr_str(NFTA_DYNSET_SET_NAME, set_name);
                    b.attr_be32(NFTA_DYNSET_SET_ID, set_id);
                    // One statement: nft 1.0.6 sends NFTA_DYNSET_EXPR (name + data, no list).
                    let x = b.begin_nested(NFTA_DYNSET_EXPR);
                    match limit {
                        MeterLimit::Rate(l) => expr_body(b, "limit", |b| limit_data(b, l)),
                        MeterLimit::Count(n) => {
                            expr_body(b, "connlimit", |b| connlimit_data(b, *n))
                        }
                    }
                    b.end_nested(x);
                });
            }
            Stmt::OifLoopback => {
                meta_load(b, NFT_META_OIF);
                cmp(b, NFT_CMP_EQ, &LOOPBACK_IFINDEX.to_ne_bytes());
            }
            Stmt::OifNotLoopback => {
                meta_load(b, NFT_META_OIF);
                cmp(b, NFT_CMP_NEQ, &LOOPBACK_IFINDEX.to_ne_bytes());
            }
            // The mark is a host-order u32, like the ifindex.
            Stmt::MarkEq(m) => {
                meta_load(b, NFT_META_MARK);
                cmp(b, NFT_CMP_EQ, &m.to_ne_bytes());
            }
            Stmt::MarkNe(m) => {
                meta_load(b, NFT_META_MARK);
                cmp(b, NFT_CMP_NEQ, &m.to_ne_bytes());
            }
            Stmt::Redirect { port } => {
                // nft loads the port (network order) into register 1 and points the redir
                // expression at it; it sends no PROTO_MAX for a single port. The encoder's
                // validation has made sure a tcp/udp match precedes it, as nft demands.
                expr(b, "immediate", |b| {
                    b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
                    let d = b.begin_nested(NFTA_IMMEDIATE_DATA);
                    b.attr(NFTA_DATA_VALUE, &port.to_be_bytes());
                    b.end_nested(d);
                });
                expr(b, "redir", |b| {
                    b.attr_be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
                    b.attr_be32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
                });
            }
            Stmt::CtStateEstablishedRelated => {
                expr(b, "ct", |b| {
                    b.attr_be32(NFTA_CT_KEY, NFT_CT_STATE);
                    b.attr_be32(NFTA_CT_DREG, NFT_REG_1);
                });
                let mask = NF_CT_STATE_ESTABLISHED_BIT | NF_CT_STATE_RELATED_BIT;
                bitwise(b, &mask.to_ne_bytes(), &0u32.to_ne_bytes());
                cmp(b, NFT_CMP_NEQ, &0u32.to_ne_bytes());
            }
            Stmt::CtDirectionReply => {
                expr(b, "ct", |b| {
                    b.attr_be32(NFTA_CT_KEY, NFT_CT_DIRECTION);
                    b.attr_be32(NFTA_CT_DREG, NFT_REG_1);
                });
                cmp(b, NFT_CMP_EQ, &[IP_CT_DIR_REPLY]);
            }
            // `th dport`: the raw transport header, no protocol dependency (nft adds none).
            Stmt::ThDport(value) => {
                payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                match value {
                    Value::Eq(p) => cmp(b, NFT_CMP_EQ, &p.to_be_bytes()),
                    Value::InSet(n) => lookup(b, set(n)),
                }
            }
            Stmt::Nfproto(f) => {
                nfproto(b, *f);
                ctx.net = Some(*f);
            }
            Stmt::L4proto(p) => {
                l4proto(b, *p);
                ctx.l4 = Some(*p);
            }
            Stmt::Dport { l4, value } => {
                if ctx.l4 != Some(*l4) {
                    l4proto(b, *l4);
                    ctx.l4 = Some(*l4);
                }
                // Destination port: 2 bytes at offset 2 of the TCP and UDP headers.
                payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                match value {
                    Value::Eq(p) => cmp(b, NFT_CMP_EQ, &p.to_be_bytes()),
                    Value::InSet(n) => lookup(b, set(n)),
                }
            }
            Stmt::Daddr4(value) => {
                if ctx.net != Some(Family::Ipv4) {
                    nfproto(b, Family::Ipv4);
                    ctx.net = Some(Family::Ipv4);
                }
                // IPv4 destination address: 4 bytes at offset 16.
                payload(b, NFT_PAYLOAD_NETWORK_HEADER, 16, 4);
                match value {
                    Value::Eq(a) => cmp(b, NFT_CMP_EQ, &a.octets()),
                    Value::InSet(n) => lookup(b, set(n)),
                }
            }
            Stmt::Daddr6(value) => {
                if ctx.net != Some(Family::Ipv6) {
                    nfproto(b, Family::Ipv6);
                    ctx.net = Some(Family::Ipv6);
                }
                // IPv6 destination address: 16 bytes at offset 24.
                payload(b, NFT_PAYLOAD_NETWORK_HEADER, 24, 16);
                match value {
                    Value::Eq(a) => cmp(b, NFT_CMP_EQ, &a.octets()),
                    Value::InSet(n) => lookup(b, set(n)),
                }
            }
            Stmt::Saddr4(value) => {
                if ctx.net != Some(Family::Ipv4) {
                    nfproto(b, Family::Ipv4);
                    ctx.net = Some(Family::Ipv4);
                }
                // IPv4 source address: 4 bytes at offset 12.
                payload(b, NFT_PAYLOAD_NETWORK_HEADER, 12, 4);
                match value {
                    Value::Eq(a) => cmp(b, NFT_CMP_EQ, &a.octets()),
                    Value::InSet(n) => lookup(b, set(n)),
                }
            }
            Stmt::Saddr6(value) => {
                if ctx.net != Some(Family::Ipv6) {
                    nfproto(b, Family::Ipv6);
                    ctx.net = Some(Family::Ipv6);
                }
                // IPv6 source address: 16 bytes at offset 8.
                payload(b, NFT_PAYLOAD_NETWORK_HEADER, 8, 16);
                match value {
                    Value::Eq(a) => cmp(b, NFT_CMP_EQ, &a.octets()),
                    Value::InSet(n) => lookup(b, set(n)),
                }
            }
            Stmt::IifName { name, wildcard } => {
                meta_load(b, NFT_META_IIFNAME);
                cmp(b, NFT_CMP_EQ, &ifname_bytes(name, *wildcard));
            }
            Stmt::OifName { name, wildcard } => {
                meta_load(b, NFT_META_OIFNAME);
                cmp(b, NFT_CMP_EQ, &ifname_bytes(name, *wildcard));
            }
            Stmt::SkUid(value) => {
                meta_load(b, NFT_META_SKUID);
                match value {
                    Value::Eq(u) => cmp(b, NFT_CMP_EQ, &u.to_ne_bytes()),
                    Value::InSet(n) => lookup(b, set(n)),
                }
            }
            Stmt::SkGid(value) => {
                meta_load(b, NFT_META_SKGID);
                match value {
                    Value::Eq(g) => cmp(b, NFT_CMP_EQ, &g.to_ne_bytes()),
                    Value::InSet(n) => lookup(b, set(n)),
                }
            }
            Stmt::Icmpv6Type(value) => {
                // nft: `meta l4proto ipv6-icmp` already known -> nothing; otherwise check the
                // family (unless known) and then the protocol.
                if ctx.l4 != Some(L4::Icmpv6) {
                    if ctx.net != Some(Family::Ipv6) {
                        nfproto(b, Family::Ipv6);
                        ctx.net = Some(Family::Ipv6);
                    }
                    l4proto(b, L4::Icmpv6);
                    ctx.l4 = Some(L4::Icmpv6);
                }
                // ICMPv6 type: the first byte of the ICMPv6 header.
                payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1);
                match value {
                    Value::Eq(t) => cmp(b, NFT_CMP_EQ, &[*t]),
                    Value::InSet(n) => lookup(b, set(n)),
                }
            }
            Stmt::Counter => expr(b, "counter", |_| {}),
            Stmt::Log { prefix, group } => expr(b, "log", |b| {
                b.attr_str(NFTA_LOG_PREFIX, prefix);
                b.attr_be16(NFTA_LOG_GROUP, *group);
            }),
            Stmt::Jump(chain) => expr(b, "immediate", |b| {
                b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let d = b.begin_nested(NFTA_IMMEDIATE_DATA);
                let v = b.begin_nested(NFTA_DATA_VERDICT);
                b.attr_be32(NFTA_VERDICT_CODE, NFT_JUMP as u32);
                b.attr_str(NFTA_VERDICT_CHAIN, chain);
                b.end_nested(v);
                b.end_nested(d);
            }),
            Stmt::Return => expr(b, "immediate", |b| {
                b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let d = b.begin_nested(NFTA_IMMEDIATE_DATA);
                let v = b.begin_nested(NFTA_DATA_VERDICT);
                b.attr_be32(NFTA_VERDICT_CODE, NFT_RETURN as u32);
                b.end_nested(v);
                b.end_nested(d);
            }),
            Stmt::Accept => verdict(b, NF_ACCEPT),
            Stmt::Drop => verdict(b, NF_DROP),
            Stmt::RejectTcpReset => {
                if ctx.l4 != Some(L4::Tcp) {
                    l4proto(b, L4::Tcp);
                    ctx.l4 = Some(L4::Tcp);
                }
                reject(b, NFT_REJECT_TCP_RST, 0);
            }
            Stmt::RejectAdminProhibited => {
                reject(
                    b,
                    NFT_REJECT_ICMPX_UNREACH,
                    NFT_REJECT_ICMPX_ADMIN_PROHIBITED,
                );
            }
        }
    }
}

/// The bytes `iifname`/`oifname` compare: an exact name is the whole IFNAMSIZ (16) bytes, NUL
/// padded; a wildcard (`br-*`) only the bytes before the `*`, so any rest matches (nft does the
/// same).
pub(crate) fn ifname_bytes(name: &str, wildcard: bool) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    if !wildcard {
        v.resize(IFNAMSIZ, 0);
    }
    v
}

/// Bytes of an interface name in the kernel, with the terminating NUL.
pub(crate) const IFNAMSIZ: usize = 16;

/// The loopback device's ifindex: 1 in every network namespace (it is created first).
pub(crate) const LOOPBACK_IFINDEX: u32 = 1;

/// One `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }`.
pub(crate) fn expr(b: &mut MsgBuf, name: &str, data: impl FnOnce(&mut MsgBuf)) {
    let elem = b.begin_nested(NFTA_LIST_ELEM);
    expr_body(b, name, data);
    b.end_nested(elem);
}

/// `NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... }`: an expression without the list element around it
/// (inside a rule's list, or alone in `NFTA_DYNSET_EXPR`).
fn expr_body(b: &mut MsgBuf, name: &str, data: impl FnOnce(&mut MsgBuf)) {
    b.attr_str(NFTA_EXPR_NAME, name);
    let d = b.begin_nested(NFTA_EXPR_DATA);
    data(b);
    b.end_nested(d);
}

/// The data of a `limit` expression: packets per unit (the unit in seconds), not inverted.
fn limit_data(b: &mut MsgBuf, l: &RateLimit) {
    b.attr_be64(NFTA_LIMIT_RATE, l.rate);
    b.attr_be64(NFTA_LIMIT_UNIT, l.unit.seconds());
    b.attr_be32(NFTA_LIMIT_BURST, l.burst);
    b.attr_be32(NFTA_LIMIT_TYPE, NFT_LIMIT_PKTS);
    b.attr_be32(NFTA_LIMIT_FLAGS, 0);
}

/// The data of a `connlimit` expression (`ct count N`, not inverted).
fn connlimit_data(b: &mut MsgBuf, count: u32) {
    b.attr_be32(NFTA_CONNLIMIT_COUNT, count);
    b.attr_be32(NFTA_CONNLIMIT_FLAGS, 0);
}

/// `range` on register 1: matches when the register is (op EQ) or is not (op NEQ) within
/// `from..=to`, compared bytewise.
fn range(b: &mut MsgBuf, op: u32, from: &[u8], to: &[u8]) {
    expr(b, "range", |b| {
        b.attr_be32(NFTA_RANGE_SREG, NFT_REG_1);
        b.attr_be32(NFTA_RANGE_OP, op);
        let f = b.begin_nested(NFTA_RANGE_FROM_DATA);
        b.attr(NFTA_DATA_VALUE, from);
        b.end_nested(f);
        let t = b.begin_nested(NFTA_RANGE_TO_DATA);
        b.attr(NFTA_DATA_VALUE, to);
        b.end_nested(t);
    });
}

/// Register 1 from host to network order in place, as one value of `size` bytes.
fn hton(b: &mut MsgBuf, size: u32) {
    expr(b, "byteorder", |b| {
        b.attr_be32(NFTA_BYTEORDER_SREG, NFT_REG_1);
        b.attr_be32(NFTA_BYTEORDER_DREG, NFT_REG_1);
        b.attr_be32(NFTA_BYTEORDER_OP, NFT_BYTEORDER_HTON);
        b.attr_be32(NFTA_BYTEORDER_LEN, size);
        b.attr_be32(NFTA_BYTEORDER_SIZE, size);
    });
}

fn meta_load(b: &mut MsgBuf, key: u32) {
    expr(b, "meta", |b| {
        b.attr_be32(NFTA_META_KEY, key);
        b.attr_be32(NFTA_META_DREG, NFT_REG_1);
    });
}

fn cmp(b: &mut MsgBuf, op: u32, value: &[u8]) {
    expr(b, "cmp", |b| {
        b.attr_be32(NFTA_CMP_SREG, NFT_REG_1);
        b.attr_be32(NFTA_CMP_OP, op);
        let d = b.begin_nested(NFTA_CMP_DATA);
        b.attr(NFTA_DATA_VALUE, value);
        b.end_nested(d);
    });
}

fn payload(b: &mut MsgBuf, base: u32, offset: u32, len: u32) {
    expr(b, "payload", |b| {
        b.attr_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        b.attr_be32(NFTA_PAYLOAD_BASE, base);
        b.attr_be32(NFTA_PAYLOAD_OFFSET, offset);
        b.attr_be32(NFTA_PAYLOAD_LEN, len);
    });
}

/// A set lookup. `None` (a set the caller failed to resolve) is never passed by the encoder,
/// which validates names first; it encodes an id of 0 so the kernel rejects it.
pub(crate) fn lookup(b: &mut MsgBuf, set: Option<SetRef<'_>>) {
    let (name, id) = set.map_or(("", 0), |s| (s.name, s.id));
    expr(b, "lookup", |b| {
        b.attr_be32(NFTA_LOOKUP_SREG, NFT_REG_1);
        b.attr_str(NFTA_LOOKUP_SET, name);
        b.attr_be32(NFTA_LOOKUP_SET_ID, id);
    });
}

fn bitwise(b: &mut MsgBuf, mask: &[u8], xor: &[u8]) {
    expr(b, "bitwise", |b| {
        b.attr_be32(NFTA_BITWISE_SREG, NFT_REG_1);
        b.attr_be32(NFTA_BITWISE_DREG, NFT_REG_1);
        b.attr_be32(NFTA_BITWISE_LEN, mask.len() as u32);
        let m = b.begin_nested(NFTA_BITWISE_MASK);
        b.attr(NFTA_DATA_VALUE, mask);
        b.end_nested(m);
        let x = b.begin_nested(NFTA_BITWISE_XOR);
        b.attr(NFTA_DATA_VALUE, xor);
        b.end_nested(x);
    });
}

fn nfproto(b: &mut MsgBuf, f: Family) {
    meta_load(b, NFT_META_NFPROTO);
    let v = match f {
        Family::Ipv4 => NFPROTO_IPV4,
        Family::Ipv6 => NFPROTO_IPV6,
    };
    cmp(b, NFT_CMP_EQ, &[v]);
}

fn l4proto(b: &mut MsgBuf, p: L4) {
    meta_load(b, NFT_META_L4PROTO);
    cmp(b, NFT_CMP_EQ, &[p.number()]);
}

fn verdict(b: &mut MsgBuf, code: u32) {
    expr(b, "immediate", |b| {
        b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        let d = b.begin_nested(NFTA_IMMEDIATE_DATA);
        let v = b.begin_nested(NFTA_DATA_VERDICT);
        b.attr_be32(NFTA_VERDICT_CODE, code);
        b.end_nested(v);
        b.end_nested(d);
    });
}

fn reject(b: &mut MsgBuf, ty: u32, code: u8) {
    expr(b, "reject", |b| {
        b.attr_be32(NFTA_REJECT_TYPE, ty);
        b.attr_u8(NFTA_REJECT_ICMP_CODE, code);
    });
}

/// The rule of `leash trace`'s chain: `[ip daddr NET | ip6 daddr NET] [meta skuid UID]
/// [th dport PORT] meta nftrace set 1`, as nft 1.0.6 encodes that text. It has no verdict, so it
/// changes no decision; it only sets the packet's trace flag.
///
/// nft's choices, reproduced (checked by `tests/trace.rs` against `nft --debug=mnl`):
/// - an address match checks `meta nfproto` first;
/// - a prefix on a byte boundary loads only the prefix's bytes and compares them (`/24`: 3 bytes);
///   any other prefix, `/0` included, loads the whole address, masks it with `bitwise` and compares
///   the masked network; a full-length prefix is a plain comparison;
/// - `th dport` is the 2 bytes at offset 2 of the transport header with no protocol check (it also
///   matches e.g. an ICMP header whose checksum happens to equal the port: harmless for tracing);
/// - `meta nftrace set 1` is a 1-byte immediate into register 1 and a meta set reading it.
pub(crate) fn encode_trace_stmts(
    b: &mut MsgBuf,
    daddr: Option<IpNet>,
    uid: Option<u32>,
    dport: Option<u16>,
) {
    if let Some(net) = daddr {
        let net = net.trunc();
        let (family, offset, addr, mask) = match net {
            IpNet::V4(n) => (
                Family::Ipv4,
                16,
                n.addr().octets().to_vec(),
                n.netmask().octets().to_vec(),
            ),
            IpNet::V6(n) => (
                Family::Ipv6,
                24,
                n.addr().octets().to_vec(),
                n.netmask().octets().to_vec(),
            ),
        };
        nfproto(b, family);
        let prefix = usize::from(net.prefix_len());
        let full = addr.len() * 8;
        if prefix == full {
            payload(b, NFT_PAYLOAD_NETWORK_HEADER, offset, addr.len() as u32);
            cmp(b, NFT_CMP_EQ, &addr);
        } else if prefix > 0 && prefix % 8 == 0 {
            let n = prefix / 8;
            payload(b, NFT_PAYLOAD_NETWORK_HEADER, offset, n as u32);
            cmp(b, NFT_CMP_EQ, &addr[..n]);
        } else {
            payload(b, NFT_PAYLOAD_NETWORK_HEADER, offset, addr.len() as u32);
            bitwise(b, &mask, &vec![0; mask.len()]);
            cmp(b, NFT_CMP_EQ, &addr);
        }
    }
    if let Some(u) = uid {
        meta_load(b, NFT_META_SKUID);
        cmp(b, NFT_CMP_EQ, &u.to_ne_bytes());
    }
    if let Some(p) = dport {
        payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
        cmp(b, NFT_CMP_EQ, &p.to_be_bytes());
    }
    nftrace_set(b);
}

/// `meta nftrace set 1`: nftrace is a 1-bit value, which nft sends as one byte.
fn nftrace_set(b: &mut MsgBuf) {
    expr(b, "immediate", |b| {
        b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
        let d = b.begin_nested(NFTA_IMMEDIATE_DATA);
        b.attr(NFTA_DATA_VALUE, &[1]);
        b.end_nested(d);
    });
    expr(b, "meta", |b| {
        b.attr_be32(NFTA_META_KEY, NFT_META_NFTRACE);
        b.attr_be32(NFTA_META_SREG, NFT_REG_1);
    });
}
