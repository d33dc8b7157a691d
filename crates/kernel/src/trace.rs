//! `leash trace`: nftables tracing of matching packets inside table `inet leash`, and the trace
//! events read back, grouped per packet and explained rule by rule.
//!
//! A [`Tracer`] does three things, all in the network namespace of the thread that starts it:
//!
//! 1. It adds one base chain to table `inet leash` ([`TRACE_CHAIN`], `type filter hook output
//!    priority` [`TRACE_PRIORITY`], policy accept) with one rule, `[ip daddr NET] [meta skuid UID]
//!    [th dport PORT] meta nftrace set 1` (see [`TraceFilter`]), in one nfnetlink batch. The rule
//!    has no verdict and the chain's policy is accept, so it changes no decision; it only sets the
//!    trace flag of matching packets, which makes nf_tables report each rule they match and each
//!    chain policy they meet. The chain runs before every chain leash compiles (the DNS redirect
//!    chain at -100, the filter chain at 0), so those see the flag set. Only packets of this
//!    namespace that match the filter are traced: the flag costs the rest nothing.
//! 2. It listens on the `NFNLGRP_NFTRACE` multicast group (subscribed before the chain is added,
//!    so no event is missed) and parses `NFT_MSG_TRACE` messages, keeping those of table
//!    `inet leash` ([`TraceEvent`]). An [`Assembler`] groups them per packet (the trace id) into a
//!    [`PacketTrace`]; [`explain`] maps the rule handles to the rules' comments (the policy rule
//!    names, `@loopback`, `@default`, ...) read from the table, so a packet reads as "`@loopback`
//!    no, `@established` no, `web` -> accept".
//! 3. It removes the chain again ([`Tracer::stop`], or on drop): one DELCHAIN, which deletes the
//!    chain with its rule. A chain left behind by a process that died hard is harmless (no
//!    verdicts), the next `leash apply` replaces the whole table anyway, and the next tracer
//!    replaces it (unless the process named in its comment still runs: see [`Error::Busy`]).
//!
//! What the kernel reports (measured on 6.18, see `tests/trace.rs`): an event per rule that
//! *matched* (with its verdict, `continue` for a rule without one), one per chain policy applied,
//! none for rules that did not match; so the rules before the deciding one in its chain are the
//! ones that did not match. The packet's headers (up to 40 bytes of network header, 20 of transport
//! header) come with the first event of each base chain. Events of two packets interleave (a
//! `reject` sends its reset while the rejected packet is still being evaluated), hence the
//! grouping by id. The events carry the output interface and the mark but not the socket's owner:
//! the uid of a packet is known only when the filter names one.
//!
//! Every message this module sends names family inet and table leash, and its requests go through
//! sockets opened when the tracer starts, so they reach the namespace the tracer was started in
//! whichever thread uses it later.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::nft::Error as NftError;
use crate::nl::{
    self, Attr, Message, Messages, MsgBuf, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NlError, Socket,
};

// The nf_tables numbers the `nft` module uses.
use crate::nft::consts::*;

/// Name of the tracing chain in table `inet leash`. leash's compiler never names a chain so.
pub const TRACE_CHAIN: &str = "trace";

/// Priority of the tracing chain: before the DNS redirect chain (dstnat, -100) and the filter
/// chain (0) of leash's table, and before other tables at the usual priorities (raw, -300, and
/// up), so the trace flag is set before any of them sees the packet.
pub const TRACE_PRIORITY: i32 = -350;

/// The comment of the tracing rule: it names the process that added it, so that a second
/// `leash trace` does not take over the chain of one still running.
pub fn trace_comment(pid: u32) -> String {
    format!("@trace pid {pid}")
}

/// The pid in a comment made by [`trace_comment`].
fn comment_pid(comment: &str) -> Option<u32> {
    comment.strip_prefix("@trace pid ")?.parse().ok()
}

/// Which packets to trace: those to `daddr` (a network; both families when `None`), from sockets
/// of `uid`, to transport port `dport` (any protocol with ports; `None`: any). Every condition
/// given must hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceFilter {
    pub daddr: Option<IpNet>,
    pub uid: Option<u32>,
    pub dport: Option<u16>,
}

impl TraceFilter {
    /// The filter with the network's host bits cleared (as the kernel compares it).
    pub fn new(daddr: Option<IpNet>, uid: Option<u32>, dport: Option<u16>) -> TraceFilter {
        TraceFilter {
            daddr: daddr.map(|n| n.trunc()),
            uid,
            dport,
        }
    }

    /// The tracing rule as nft text, e.g. `ip daddr 192.0.2.0/24 meta skuid 1000 th dport 443
    /// meta nftrace set 1` (what `nft list` shows, and what the oracle test loads with nft).
    pub fn nft_rule(&self) -> String {
        let mut parts = Vec::new();
        if let Some(net) = self.daddr {
            let net = net.trunc();
            let kw = if net.addr().is_ipv4() { "ip" } else { "ip6" };
            if net.prefix_len() == net.max_prefix_len() {
                parts.push(format!("{kw} daddr {}", net.addr()));
            } else {
                parts.push(format!("{kw} daddr {net}"));
            }
        }
        if let Some(u) = self.uid {
            parts.push(format!("meta skuid {u}"));
        }
        if let Some(p) = self.dport {
            parts.push(format!("th dport {p}"));
        }
        parts.push("meta nftrace set 1".into());
        parts.join(" ")
    }
}

/// The batch a tracer sends to add its chain (for the oracle test and benchmarks): see
/// `TraceFilter::install_batch` in `nft/encode.rs` for its messages.
pub fn encode_install_batch(
    filter: &TraceFilter,
    pid: u32,
    remove_stale: bool,
) -> Result<Vec<u8>, NftError> {
    Ok(filter
        .install_batch(&trace_comment(pid), remove_stale)?
        .bytes)
}

/// The batch a tracer sends to remove its chain.
pub fn encode_remove_batch() -> Result<Vec<u8>, NftError> {
    Ok(TraceFilter::remove_batch()?.bytes)
}

/// Errors of a trace session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no table `inet leash` to trace in.
    #[error(
        "no leash table is active in this network namespace (table inet leash does not exist); apply a policy first"
    )]
    NoTable,
    /// The table has a tracing chain whose comment names a process that still runs.
    #[error(
        "another `leash trace` (pid {pid}) is tracing in this network namespace; stop it first (its chain `{TRACE_CHAIN}` is in table inet leash)"
    )]
    Busy { pid: u32 },
    /// The table was deleted (`leash disable`) while tracing.
    #[error("table inet leash was removed while tracing")]
    TableGone,
    /// Netlink or the kernel failed.
    #[error(transparent)]
    Nft(#[from] NftError),
}

fn netlink(context: &str) -> impl FnOnce(NlError) -> NftError + '_ {
    move |source| NftError::Netlink {
        context: context.to_string(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// The table's rules
// ---------------------------------------------------------------------------------------------

/// The chains and rules of table `inet leash`, enough to name the rules a trace reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    /// The table's handle: a new one means the table was applied anew.
    pub handle: u64,
    /// Base chains in the order the kernel lists them (creation order), tracing chain excluded.
    pub chains: Vec<ChainRules>,
}

/// One chain of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRules {
    pub name: String,
    /// Hook number and priority (base chains have them).
    pub hook: Option<u32>,
    pub priority: Option<i32>,
    /// The chain policy (`NF_ACCEPT` or `NF_DROP`).
    pub policy: Option<u32>,
    pub rules: Vec<RuleInfo>,
}

/// One rule: its handle, comment and what kind of verdict it ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub handle: u64,
    pub comment: Option<String>,
    /// It rejects (its verdict is reported as drop: the `reject` expression drops the packet
    /// after sending the reset or ICMP error).
    pub reject: bool,
    /// It redirects (nat; reported as accept).
    pub redirect: bool,
}

impl RuleInfo {
    /// The comment, or `handle N` for a rule without one.
    pub fn label(&self) -> String {
        self.comment
            .clone()
            .unwrap_or_else(|| format!("handle {}", self.handle))
    }
}

impl TableRules {
    pub fn chain(&self, name: &str) -> Option<&ChainRules> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The chain whose verdict is the table's last word on a packet: the base chain with the
    /// highest priority (leash's filter chain `output`). An accept there ends the packet's way
    /// through the table; an accept in an earlier chain (the DNS redirect chain) does not.
    pub fn final_chain(&self) -> Option<&str> {
        self.chains
            .iter()
            .filter(|c| c.name != TRACE_CHAIN)
            .max_by_key(|c| c.priority.unwrap_or(i32::MIN))
            .map(|c| c.name.as_str())
    }
}

/// Reads handle, chains and rules of table `inet leash` over `sock`; `None` when there is none.
fn read_rules(sock: &mut Socket, seq: &mut u32) -> Result<Option<TableRules>, NftError> {
    let table = ruleset::TABLE_NAME;
    let Some(handle) = table_handle(sock, seq)? else {
        return Ok(None);
    };
    let ctx = "reading the chains and rules of table inet leash";
    let mut chains = Vec::new();
    *seq += 1;
    let req = request(NFT_MSG_GETCHAIN, NLM_F_DUMP, *seq, |b| {
        b.attr_str(NFTA_CHAIN_TABLE, table)
    })
    .map_err(netlink(ctx))?;
    sock.dump(&req, |m| {
        let t = m.attrs(NFGENMSG_LEN).table::<11>()?;
        if str_of(&t[NFTA_CHAIN_TABLE as usize]) != table {
            return Ok(());
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
        chains.push(ChainRules {
            name: str_of(&t[NFTA_CHAIN_NAME as usize]),
            hook,
            priority,
            policy: t[NFTA_CHAIN_POLICY as usize]
                .map(|a| a.be32())
                .transpose()?,
            rules: Vec::new(),
        });
        Ok(())
    })
    .map_err(netlink(ctx))?;
    *seq += 1;
    let req = request(NFT_MSG_GETRULE, NLM_F_DUMP, *seq, |b| {
        b.attr_str(NFTA_RULE_TABLE, table)
    })
    .map_err(netlink(ctx))?;
    let mut rules = Vec::new();
    sock.dump(&req, |m| {
        let t = m.attrs(NFGENMSG_LEN).table::<8>()?;
        if str_of(&t[NFTA_RULE_TABLE as usize]) != table {
            return Ok(());
        }
        let (mut reject, mut redirect) = (false, false);
        if let Some(x) = t[NFTA_RULE_EXPRESSIONS as usize] {
            for e in x.nested() {
                let e = e?.nested().table::<3>()?;
                match str_of(&e[NFTA_EXPR_NAME as usize]).as_str() {
                    "reject" => reject = true,
                    "redir" => redirect = true,
                    _ => {}
                }
            }
        }
        rules.push((
            str_of(&t[NFTA_RULE_CHAIN as usize]),
            RuleInfo {
                handle: t[NFTA_RULE_HANDLE as usize]
                    .map(|a| a.be64())
                    .transpose()?
                    .unwrap_or(0),
                comment: t[NFTA_RULE_USERDATA as usize].and_then(|a| udata_comment(a.data)),
                reject,
                redirect,
            },
        ));
        Ok(())
    })
    .map_err(netlink(ctx))?;
    // The dump lists rules chain by chain, each in rule order.
    for (chain, rule) in rules {
        if let Some(c) = chains.iter_mut().find(|c| c.name == chain) {
            c.rules.push(rule);
        }
    }
    Ok(Some(TableRules { handle, chains }))
}

/// The handle of table `inet leash` from one GETTABLE (not a dump); `None` when it does not exist.
fn table_handle(sock: &mut Socket, seq: &mut u32) -> Result<Option<u64>, NftError> {
    let ctx = "reading table inet leash";
    *seq += 1;
    let req = request(NFT_MSG_GETTABLE, NLM_F_ACK, *seq, |b| {
        b.attr_str(NFTA_TABLE_NAME, ruleset::TABLE_NAME)
    })
    .map_err(netlink(ctx))?;
    let mut handle = None;
    match sock.request(&req, |m| {
        let t = m.attrs(NFGENMSG_LEN).table::<8>()?;
        handle = t[NFTA_TABLE_HANDLE as usize]
            .map(|a| a.be64())
            .transpose()?;
        Ok(())
    }) {
        Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(netlink(ctx)(e)),
        Ok(()) => handle.map(Some).ok_or_else(|| {
            netlink(ctx)(NlError::Malformed(
                "GETTABLE answered without a table handle".into(),
            ))
        }),
    }
}

/// One nf_tables request of family inet.
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

fn str_of(a: &Option<Attr<'_>>) -> String {
    a.map(|a| a.str()).unwrap_or_default()
}

/// The comment in libnftnl's user-data TLVs (type 0), if there is one.
fn udata_comment(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            let v = value.split(|&b| b == 0).next().unwrap_or(&[]);
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Trace events
// ---------------------------------------------------------------------------------------------

/// Why an event was sent (`enum nft_trace_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceType {
    /// A rule matched (its expressions all ran); the verdict is the rule's.
    Rule,
    /// The end of a chain reached (or a `return`): back to the calling chain.
    Return,
    /// The end of a base chain reached: its policy decides.
    Policy,
    Other(u32),
}

/// A verdict as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Stolen,
    Queue,
    Repeat,
    /// A rule without a verdict matched; evaluation goes on with the next rule.
    Continue,
    Break,
    Jump(String),
    Goto(String),
    Return,
    Unknown(i32),
}

impl Verdict {
    fn from_code(code: i32, chain: Option<String>) -> Verdict {
        match code {
            NFT_CONTINUE => Verdict::Continue,
            NFT_BREAK => Verdict::Break,
            NFT_JUMP => Verdict::Jump(chain.unwrap_or_default()),
            NFT_GOTO => Verdict::Goto(chain.unwrap_or_default()),
            NFT_RETURN => Verdict::Return,
            c if c >= 0 => match c as u32 & NF_VERDICT_MASK {
                NF_ACCEPT => Verdict::Accept,
                NF_DROP => Verdict::Drop,
                NF_STOLEN => Verdict::Stolen,
                NF_QUEUE => Verdict::Queue,
                NF_REPEAT => Verdict::Repeat,
                _ => Verdict::Unknown(c),
            },
            c => Verdict::Unknown(c),
        }
    }

    /// nft's word for it (`accept`, `drop`, `continue`, `jump CHAIN`, ...).
    pub fn name(&self) -> String {
        match self {
            Verdict::Accept => "accept".into(),
            Verdict::Drop => "drop".into(),
            Verdict::Stolen => "stolen".into(),
            Verdict::Queue => "queue".into(),
            Verdict::Repeat => "repeat".into(),
            Verdict::Continue => "continue".into(),
            Verdict::Break => "break".into(),
            Verdict::Jump(c) => format!("jump {c}"),
            Verdict::Goto(c) => format!("goto {c}"),
            Verdict::Return => "return".into(),
            Verdict::Unknown(c) => format!("verdict {c}"),
        }
    }

    /// The packet leaves nf_tables with it (no further chain of any table sees the packet).
    fn ends_packet(&self) -> bool {
        matches!(self, Verdict::Drop | Verdict::Stolen | Verdict::Queue)
    }
}

/// One `NFT_MSG_TRACE` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// The same for every event of one packet (while the packet lives: ids are reused).
    pub id: u32,
    /// `nfgenmsg` family of the table (`NFPROTO_INET` for leash's).
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub kind: TraceType,
    /// The rule (rule events; absent for policy events and implicit returns).
    pub handle: Option<u64>,
    /// The rule's verdict, or for a policy event the chain's policy.
    pub verdict: Option<Verdict>,
    /// `NFPROTO_IPV4` or `NFPROTO_IPV6`.
    pub nfproto: Option<u8>,
    pub oif: Option<u32>,
    pub iif: Option<u32>,
    /// The packet mark, when not 0.
    pub mark: Option<u32>,
    /// Header bytes, in the first event of each base chain.
    pub network_header: Option<Vec<u8>>,
    pub transport_header: Option<Vec<u8>>,
}

impl TraceEvent {
    /// Parses a netlink message; `Ok(None)` for anything but an nf_tables trace event.
    pub fn parse(m: &Message<'_>) -> Result<Option<TraceEvent>, NlError> {
        if m.header.ty != nft_type(NFT_MSG_TRACE) {
            return Ok(None);
        }
        let family = m.payload.first().copied().unwrap_or(0);
        let t = m.attrs(NFGENMSG_LEN).table::<17>()?;
        let be32 = |ty: u16| t[ty as usize].map(|a| a.be32()).transpose();
        let kind = match be32(NFTA_TRACE_TYPE)?.unwrap_or(NFT_TRACETYPE_UNSPEC) {
            NFT_TRACETYPE_RULE => TraceType::Rule,
            NFT_TRACETYPE_RETURN => TraceType::Return,
            NFT_TRACETYPE_POLICY => TraceType::Policy,
            n => TraceType::Other(n),
        };
        let mut verdict = None;
        if let Some(v) = t[NFTA_TRACE_VERDICT as usize] {
            let (mut code, mut chain) = (None, None);
            for a in v.nested() {
                let a = a?;
                match a.ty {
                    NFTA_VERDICT_CODE => code = Some(a.be32()? as i32),
                    NFTA_VERDICT_CHAIN => chain = Some(a.str()),
                    _ => {}
                }
            }
            verdict = code.map(|c| Verdict::from_code(c, chain));
        }
        if kind == TraceType::Policy {
            verdict = be32(NFTA_TRACE_POLICY)?.map(|p| Verdict::from_code(p as i32, None));
        }
        let id = t[NFTA_TRACE_ID as usize]
            .ok_or_else(|| NlError::Malformed("trace event without an id".into()))?
            .u32()?;
        Ok(Some(TraceEvent {
            id,
            family,
            table: str_of(&t[NFTA_TRACE_TABLE as usize]),
            chain: str_of(&t[NFTA_TRACE_CHAIN as usize]),
            kind,
            handle: t[NFTA_TRACE_RULE_HANDLE as usize]
                .map(|a| a.be64())
                .transpose()?,
            verdict,
            nfproto: be32(NFTA_TRACE_NFPROTO)?.map(|p| p as u8),
            oif: be32(NFTA_TRACE_OIF)?,
            iif: be32(NFTA_TRACE_IIF)?,
            mark: be32(NFTA_TRACE_MARK)?,
            network_header: t[NFTA_TRACE_NETWORK_HEADER as usize].map(|a| a.data.to_vec()),
            transport_header: t[NFTA_TRACE_TRANSPORT_HEADER as usize].map(|a| a.data.to_vec()),
        }))
    }

    /// An event of leash's table (`inet leash`).
    pub fn is_leash(&self) -> bool {
        self.family == NFPROTO_INET && self.table == ruleset::TABLE_NAME
    }
}

/// What a trace shows of a packet's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol (IPv6: the first next-header value; an extension header shows as itself).
    pub proto: u8,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ...).
    pub tcp_flags: Option<u8>,
    /// ICMP or ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

impl Packet {
    /// Parses the network and transport header bytes of a trace event; `None` when the network
    /// header is too short to hold the addresses.
    pub fn parse(network: &[u8], transport: Option<&[u8]>) -> Option<Packet> {
        let (src, dst, proto) = match network.first()? >> 4 {
            4 if network.len() >= 20 => (
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&network[12..16]).ok()?)),
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&network[16..20]).ok()?)),
                network[9],
            ),
            6 if network.len() >= 40 => (
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&network[8..24]).ok()?)),
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&network[24..40]).ok()?)),
                network[6],
            ),
            _ => return None,
        };
        let mut p = Packet {
            src,
            dst,
            proto,
            sport: None,
            dport: None,
            tcp_flags: None,
            icmp: None,
        };
        let th = transport.unwrap_or(&[]);
        let ports = matches!(proto, IPPROTO_TCP | IPPROTO_UDP | 33 | 132 | 136);
        if ports && th.len() >= 4 {
            p.sport = Some(u16::from_be_bytes([th[0], th[1]]));
            p.dport = Some(u16::from_be_bytes([th[2], th[3]]));
        }
        if proto == IPPROTO_TCP && th.len() >= 14 {
            p.tcp_flags = Some(th[13]);
        }
        if matches!(proto, IPPROTO_ICMP | IPPROTO_ICMPV6) && th.len() >= 2 {
            p.icmp = Some((th[0], th[1]));
        }
        Some(p)
    }

    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the protocol number.
    pub fn proto_name(&self) -> String {
        match self.proto {
            IPPROTO_TCP => "tcp".into(),
            IPPROTO_UDP => "udp".into(),
            IPPROTO_ICMP => "icmp".into(),
            IPPROTO_ICMPV6 => "icmpv6".into(),
            33 => "dccp".into(),
            132 => "sctp".into(),
            136 => "udplite".into(),
            n => format!("proto {n}"),
        }
    }

    /// TCP flags as nft names them, comma-separated (`syn`, `syn,ack`, `rst,ack`).
    pub fn tcp_flag_names(&self) -> Option<String> {
        let f = self.tcp_flags?;
        const NAMES: [&str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr"];
        let v: Vec<&str> = (0..8)
            .filter(|i| f & (1 << i) != 0)
            .map(|i| NAMES[i])
            .collect();
        Some(if v.is_empty() {
            "none".into()
        } else {
            v.join(",")
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Grouping per packet
// ---------------------------------------------------------------------------------------------

/// One event of a packet in a chain of leash's table (the tracing chain's own are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub chain: String,
    pub kind: TraceType,
    pub handle: Option<u64>,
    pub verdict: Option<Verdict>,
}

/// Everything traced of one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketTrace {
    pub id: u32,
    /// From the first event that carried the headers.
    pub packet: Option<Packet>,
    pub nfproto: Option<u8>,
    pub oif: Option<u32>,
    pub mark: Option<u32>,
    pub steps: Vec<Step>,
    /// The table's last word was seen (a drop anywhere, or an accept or the policy of the final
    /// chain). An incomplete trace ended otherwise: another table at an earlier hook priority
    /// dropped the packet, or events were lost, or the session ended first.
    pub complete: bool,
}

/// Groups trace events into packets (see the module documentation), and hands them out in the
/// order they were first seen: a packet that ends while one seen before it is still open (the
/// reset a `reject` sends ends before the packet it answers) waits for it.
#[derive(Debug)]
pub struct Assembler {
    final_chain: String,
    idle: Duration,
    /// Packets waiting for events: id -> (time of the last event, order of first sight, trace).
    open: HashMap<u32, (Instant, u64, PacketTrace)>,
    /// Packets that ended, by order of first sight, held until no earlier packet is open.
    done: BTreeMap<u64, PacketTrace>,
    next: u64,
}

/// The base chain a packet's `chain` was reached from: follows the jumps and gotos among the
/// steps so far back to a chain no step jumped to.
fn base_chain<'a>(steps: &'a [Step], chain: &'a str) -> &'a str {
    let mut c = chain;
    // A chain cannot be entered more often than there are steps; the bound stops a loop.
    for _ in 0..=steps.len() {
        let caller = steps.iter().rev().find(|s| {
            matches!(&s.verdict, Some(Verdict::Jump(t) | Verdict::Goto(t)) if t == c)
        });
        match caller {
            Some(s) => c = &s.chain,
            None => break,
        }
    }
    c
}

impl Assembler {
    /// `final_chain`: see [`TableRules::final_chain`]. A packet that has seen no event for
    /// `idle` is given up as incomplete by [`Assembler::expire`].
    pub fn new(final_chain: &str, idle: Duration) -> Assembler {
        Assembler {
            final_chain: final_chain.to_string(),
            idle,
            open: HashMap::new(),
            done: BTreeMap::new(),
            next: 0,
        }
    }

    /// After the table was re-applied.
    pub fn set_final_chain(&mut self, chain: &str) {
        self.final_chain = chain.to_string();
    }

    /// Packets not handed out yet.
    pub fn pending(&self) -> usize {
        self.open.len() + self.done.len()
    }

    /// Adds an event (of leash's table); returns the packets this event lets out.
    pub fn push(&mut self, ev: TraceEvent, now: Instant) -> Vec<PacketTrace> {
        let next = &mut self.next;
        let (seen, _, p) = self.open.entry(ev.id).or_insert_with(|| {
            *next += 1;
            (
                now,
                *next,
                PacketTrace {
                    id: ev.id,
                    packet: None,
                    nfproto: None,
                    oif: None,
                    mark: None,
                    steps: Vec::new(),
                    complete: false,
                },
            )
        });
        *seen = now;
        if p.packet.is_none()
            && let Some(net) = &ev.network_header
        {
            p.packet = Packet::parse(net, ev.transport_header.as_deref());
        }
        p.nfproto = p.nfproto.or(ev.nfproto);
        p.oif = p.oif.or(ev.oif);
        if ev.mark.is_some() {
            p.mark = ev.mark;
        }
        if ev.chain == TRACE_CHAIN {
            return Vec::new();
        }
        let ended = match (&ev.kind, &ev.verdict) {
            (_, Some(v)) if v.ends_packet() => true,
            // An accept ends the base chain the packet is in, also from a regular chain it
            // jumped to (a limited rule's `limit_<rule>`, a blocklist's `deny_<rule>`).
            (TraceType::Rule | TraceType::Policy, Some(Verdict::Accept)) => {
                base_chain(&p.steps, &ev.chain) == self.final_chain
            }
            _ => false,
        };
        p.steps.push(Step {
            chain: ev.chain,
            kind: ev.kind,
            handle: ev.handle,
            verdict: ev.verdict,
        });
        if ended && let Some((_, n, mut p)) = self.open.remove(&ev.id) {
            p.complete = true;
            self.done.insert(n, p);
        }
        self.release()
    }

    /// Gives up packets that saw no event for the idle time (as incomplete); returns the packets
    /// this lets out.
    pub fn expire(&mut self, now: Instant) -> Vec<PacketTrace> {
        let idle = self.idle;
        let old: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, (seen, _, _))| now.duration_since(*seen) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            if let Some((_, n, p)) = self.open.remove(&id) {
                self.done.insert(n, p);
            }
        }
        self.release()
    }

    /// Every packet not handed out yet (at the end of a session), the open ones incomplete.
    pub fn finish(&mut self) -> Vec<PacketTrace> {
        for (_, (_, n, p)) in self.open.drain() {
            self.done.insert(n, p);
        }
        self.release()
    }

    /// The ended packets first seen before every open one.
    fn release(&mut self) -> Vec<PacketTrace> {
        let oldest_open = self.open.values().map(|(_, n, _)| *n).min();
        let mut out = Vec::new();
        while let Some(e) = self.done.first_entry() {
            if oldest_open.is_some_and(|o| o < *e.key()) {
                break;
            }
            out.push(e.remove());
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Explaining a packet
// ---------------------------------------------------------------------------------------------

/// The table's verdict on a packet, as an administrator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Drop,
    /// Dropped by a rule that sent a TCP reset or an ICMP error first.
    Reject,
    /// Another verdict (stolen, queue, ...).
    Other(Verdict),
}

impl Outcome {
    pub fn name(&self) -> String {
        match self {
            Outcome::Accept => "accept".into(),
            Outcome::Drop => "drop".into(),
            Outcome::Reject => "reject".into(),
            Outcome::Other(v) => v.name(),
        }
    }
}

/// One policy rule (consecutive kernel rules with one comment) on a packet's way through a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    /// The comment (policy rule name, `@loopback`, ...), or `handle N`.
    pub rule: String,
    /// Kernel rules of this group that matched, with their verdicts.
    pub matched: Vec<(u64, Verdict)>,
    /// Some rule of the group rejects or redirects (to name a drop or accept by it).
    pub reject: bool,
    pub redirect: bool,
}

impl PathRule {
    /// What the group did to the packet, named for people: `accept`, `reject`, `redirect`,
    /// `continue`, ...; `None` when it did not match.
    pub fn action(&self) -> Option<String> {
        let (_, v) = self.matched.last()?;
        Some(match v {
            Verdict::Drop if self.reject => "reject".into(),
            Verdict::Accept if self.redirect => "redirect".into(),
            v => v.name(),
        })
    }
}

/// How a chain ended for the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEnd {
    /// A rule's verdict (the last entry of `rules`).
    Rule,
    /// The chain's policy.
    Policy(Verdict),
    /// No verdict seen (an incomplete trace).
    Unknown,
}

/// A packet's way through one chain: the rules up to the one that ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPath {
    pub chain: String,
    pub rules: Vec<PathRule>,
    pub end: ChainEnd,
}

/// Which rule decided a packet, and which rules before it did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// `None` for an incomplete trace.
    pub outcome: Option<Outcome>,
    /// The chain and rule (comment) that decided; `rule` is `None` when the chain policy did.
    pub chain: Option<String>,
    pub rule: Option<String>,
    pub handle: Option<u64>,
    /// Every chain of leash's table the packet went through, in order.
    pub chains: Vec<ChainPath>,
}

/// Explains a traced packet with the table's rules: per chain, each policy rule before the one
/// that ended the chain (which did not match) and that one; and the table's verdict.
pub fn explain(t: &PacketTrace, rules: &TableRules) -> Explanation {
    // Steps grouped by chain, in the order the packet met the chains.
    let mut by_chain: Vec<(&str, Vec<&Step>)> = Vec::new();
    for s in &t.steps {
        match by_chain.iter_mut().find(|(c, _)| *c == s.chain) {
            Some((_, v)) => v.push(s),
            None => by_chain.push((&s.chain, vec![s])),
        }
    }
    let mut chains = Vec::new();
    for (name, steps) in &by_chain {
        chains.push(chain_path(name, steps, rules.chain(name)));
    }
    let mut e = Explanation {
        outcome: None,
        chain: None,
        rule: None,
        handle: None,
        chains,
    };
    if !t.complete {
        return e;
    }
    let Some(last) = t.steps.last() else {
        return e;
    };
    e.chain = Some(last.chain.clone());
    let verdict = last.verdict.clone().unwrap_or(Verdict::Unknown(0));
    let info = last.handle.and_then(|h| {
        rules
            .chain(&last.chain)?
            .rules
            .iter()
            .find(|r| r.handle == h)
    });
    if last.kind == TraceType::Rule {
        e.handle = last.handle;
        e.rule = Some(match (info, last.handle) {
            (Some(r), _) => r.label(),
            (None, Some(h)) => format!("handle {h}"),
            (None, None) => "?".into(),
        });
    }
    e.outcome = Some(match verdict {
        Verdict::Accept => Outcome::Accept,
        Verdict::Drop if info.is_some_and(|r| r.reject) => Outcome::Reject,
        Verdict::Drop => Outcome::Drop,
        v => Outcome::Other(v),
    });
    e
}

fn chain_path(name: &str, steps: &[&Step], chain: Option<&ChainRules>) -> ChainPath {
    let matched: HashMap<u64, &Verdict> = steps
        .iter()
        .filter(|s| s.kind == TraceType::Rule)
        .filter_map(|s| Some((s.handle?, s.verdict.as_ref()?)))
        .collect();
    let last = steps.last();
    let end = match last {
        Some(s) if s.kind == TraceType::Policy => {
            ChainEnd::Policy(s.verdict.clone().unwrap_or(Verdict::Unknown(0)))
        }
        Some(s) if s.kind == TraceType::Rule && !matches!(s.verdict, Some(Verdict::Continue)) => {
            ChainEnd::Rule
        }
        _ => ChainEnd::Unknown,
    };
    // Walk the chain's rules up to the last rule event (all of them when the policy decided).
    let stop = match (&end, last) {
        (ChainEnd::Policy(_), _) => None,
        (_, Some(s)) => s.handle,
        _ => None,
    };
    let mut rules: Vec<PathRule> = Vec::new();
    let known = chain.map(|c| c.rules.as_slice()).unwrap_or(&[]);
    let mut seen_stop = false;
    for r in known {
        let label = r.label();
        let hit = matched.get(&r.handle).map(|v| (r.handle, (*v).clone()));
        match rules.last_mut() {
            Some(g) if r.comment.is_some() && g.rule == label => {
                g.matched.extend(hit);
                g.reject |= r.reject;
                g.redirect |= r.redirect;
            }
            _ => rules.push(PathRule {
                rule: label,
                matched: hit.into_iter().collect(),
                reject: r.reject,
                redirect: r.redirect,
            }),
        }
        if stop == Some(r.handle) {
            seen_stop = true;
            break;
        }
    }
    // Rules the table read does not know (it changed since): list the matched ones as they came.
    if stop.is_some() && !seen_stop {
        for s in steps.iter().filter(|s| s.kind == TraceType::Rule) {
            let Some(h) = s.handle else { continue };
            if known.iter().any(|r| r.handle == h) {
                continue;
            }
            rules.push(PathRule {
                rule: format!("handle {h}"),
                matched: vec![(h, s.verdict.clone().unwrap_or(Verdict::Unknown(0)))],
                reject: false,
                redirect: false,
            });
        }
    }
    ChainPath {
        chain: name.to_string(),
        rules,
        end,
    }
}

// ---------------------------------------------------------------------------------------------
// The session
// ---------------------------------------------------------------------------------------------

/// Receive buffer of the event socket. Each event takes about 1 KiB of it; a burst bigger than
/// this is lost (and counted, see [`Tracer::lost`]).
const MONITOR_RCVBUF: usize = 8 << 20;
/// Most datagrams read per [`Tracer::wait`], so a flood cannot keep the caller from its checks.
const MAX_DATAGRAMS_PER_WAIT: usize = 4096;

/// What [`Tracer::refresh`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    Unchanged,
    /// The table was applied anew, which removed the tracing chain with the old table. The chain
    /// goes back at the next refresh, not at once: `leash apply` reads the new table back and
    /// compares its chains with the policy's right after committing it, and an extra chain
    /// appearing in that moment would fail its check.
    Replaced,
    /// The table applied anew was seen at the previous refresh too: its rules were read again and
    /// the chain put back.
    Reinstalled,
}

/// A trace session: the tracing chain in table `inet leash` and a socket receiving the events.
/// Dropping it removes the chain (errors ignored); [`Tracer::stop`] reports them.
#[derive(Debug)]
pub struct Tracer {
    /// Requests (batches, dumps), in the namespace the tracer started in.
    cmd: Socket,
    /// Member of `NFNLGRP_NFTRACE`.
    mon: Socket,
    seq: u32,
    filter: TraceFilter,
    comment: String,
    rules: TableRules,
    installed: bool,
    /// The handle of a new table seen by the last refresh, not traced yet.
    replaced_by: Option<u64>,
    lost: u64,
}

impl Tracer {
    /// Starts tracing packets that match `filter` in table `inet leash` of the calling thread's
    /// network namespace. Fails with [`Error::NoTable`] when there is no such table (nothing is
    /// changed then), with [`Error::Busy`] when another live tracer's chain is there. A tracing
    /// chain left by a process that is gone is replaced in the same batch.
    pub fn start(filter: TraceFilter) -> Result<Tracer, Error> {
        // Listen first: events of packets traced right after the chain goes in are not missed.
        let mon = Socket::open(nl::NETLINK_NETFILTER).map_err(netlink(
            "opening a netfilter netlink socket for trace events",
        ))?;
        let group = NFNLGRP_NFTRACE as libc::c_int;
        // SAFETY: `group` is a valid c_int for the length given; the fd is open.
        let rc = unsafe {
            libc::setsockopt(
                mon.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                &group as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(
                netlink("joining the nf_tables trace group (NFNLGRP_NFTRACE)")(NlError::Io {
                    context: "setsockopt(NETLINK_ADD_MEMBERSHIP)",
                    source: std::io::Error::last_os_error(),
                })
                .into(),
            );
        }
        mon.set_recv_buffer(MONITOR_RCVBUF)
            .map_err(netlink("sizing the trace event socket's buffer"))?;
        let cmd = Socket::open(nl::NETLINK_NETFILTER)
            .map_err(netlink("opening a netfilter netlink socket"))?;
        cmd.enable_ext_ack()
            .map_err(netlink("enabling extended netlink acks"))?;
        let mut t = Tracer {
            cmd,
            mon,
            seq: 0,
            filter: TraceFilter::new(filter.daddr, filter.uid, filter.dport),
            comment: trace_comment(std::process::id()),
            rules: TableRules::default(),
            installed: false,
            replaced_by: None,
            lost: 0,
        };
        t.install()?;
        Ok(t)
    }

    /// Reads the table and adds the chain (replacing a stale one in the same batch).
    fn install(&mut self) -> Result<(), Error> {
        let mut rules = read_rules(&mut self.cmd, &mut self.seq)?.ok_or(Error::NoTable)?;
        let stale = rules.chains.iter().position(|c| c.name == TRACE_CHAIN);
        if let Some(i) = stale {
            let old = rules.chains.remove(i);
            if let Some(pid) = old
                .rules
                .iter()
                .find_map(|r| r.comment.as_deref().and_then(comment_pid))
                && tracer_alive(pid)
            {
                return Err(Error::Busy { pid });
            }
        }
        let batch = self.filter.install_batch(&self.comment, stale.is_some())?;
        match batch.send(&mut self.cmd) {
            Ok(()) => {}
            // The table went away between the read and the batch.
            Err(NftError::Rejected { error, .. }) if error.errno == libc::ENOENT => {
                return Err(Error::NoTable);
            }
            Err(e) => return Err(e.into()),
        }
        self.installed = true;
        self.rules = rules;
        Ok(())
    }

    /// The filter the tracing rule applies.
    pub fn filter(&self) -> &TraceFilter {
        &self.filter
    }

    /// The table's chains and rules as read when tracing started (or last re-installed).
    pub fn rules(&self) -> &TableRules {
        &self.rules
    }

    /// How many times the kernel reported lost events (`ENOBUFS`: the socket's buffer was full).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Waits up to `timeout` for trace events and returns those of table `inet leash` (possibly
    /// none: on timeout, or when a signal interrupted the wait).
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<TraceEvent>, Error> {
        let mut pfd = libc::pollfd {
            fd: self.mon.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(Vec::new());
            }
            return Err(netlink("waiting for trace events")(NlError::Io {
                context: "poll(netlink)",
                source: e,
            })
            .into());
        }
        let mut out = Vec::new();
        if rc == 0 {
            return Ok(out);
        }
        for _ in 0..MAX_DATAGRAMS_PER_WAIT {
            match self.mon.recv(false) {
                Ok(Some(d)) => {
                    for m in Messages::new(d) {
                        let m = m.map_err(netlink("parsing trace events"))?;
                        if let Some(ev) =
                            TraceEvent::parse(&m).map_err(netlink("parsing a trace event"))?
                            && ev.is_leash()
                        {
                            out.push(ev);
                        }
                    }
                }
                Ok(None) => break,
                Err(NlError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.lost += 1;
                }
                Err(e) => return Err(netlink("reading trace events")(e).into()),
            }
        }
        Ok(out)
    }

    /// Checks whether the table is still the one traced; call it every second or so. When it was
    /// applied anew (the apply replaced the whole table, tracing chain included), the next call
    /// reads its rules again and puts the chain back (see [`Refresh::Replaced`] for why not at
    /// once). [`Error::TableGone`] when the table was removed.
    pub fn refresh(&mut self) -> Result<Refresh, Error> {
        match table_handle(&mut self.cmd, &mut self.seq)? {
            Some(h) if h == self.rules.handle => Ok(Refresh::Unchanged),
            Some(h) if self.replaced_by != Some(h) => {
                self.installed = false;
                self.replaced_by = Some(h);
                Ok(Refresh::Replaced)
            }
            Some(_) => {
                self.install()?;
                self.replaced_by = None;
                Ok(Refresh::Reinstalled)
            }
            None => {
                self.installed = false;
                Err(Error::TableGone)
            }
        }
    }

    /// Removes the tracing chain. `Ok(false)` when it was no longer there (the table was applied
    /// anew or removed meanwhile).
    pub fn stop(mut self) -> Result<bool, Error> {
        self.remove()
    }

    fn remove(&mut self) -> Result<bool, Error> {
        if !self.installed {
            return Ok(false);
        }
        self.installed = false;
        match TraceFilter::remove_batch()?.send(&mut self.cmd) {
            Ok(()) => Ok(true),
            Err(NftError::Rejected { error, .. }) if error.errno == libc::ENOENT => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Best effort: a chain left behind only marks packets (and the next tracer or apply
        // replaces it).
        let _ = self.remove();
    }
}

/// Whether `pid` is a running process with the same command name as this one (a `leash trace`,
/// not an unrelated process that got the pid of one that died).
fn tracer_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid_t, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok();
    match (comm(&pid.to_string()), comm("self")) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accept_in_a_jumped_to_chain_ends_the_base_chain() {
        let step = |chain: &str, verdict: Option<Verdict>| Step { chain: chain.into(), kind: TraceType::Rule, handle: None, verdict };
        let steps = vec![
            step("output", Some(Verdict::Continue)),
            step("output", Some(Verdict::Jump("limit_web".into()))),
            step("limit_web", Some(Verdict::Goto("deny_web".into()))),
        ];
        assert_eq!(base_chain(&steps, "limit_web"), "output");
        assert_eq!(base_chain(&steps, "deny_web"), "output");
        assert_eq!(base_chain(&steps, "output"), "output");
        assert_eq!(base_chain(&steps, "dns-redirect"), "dns-redirect");
        // A jump loop (which nft refuses) still ends.
        let looped = vec![step("a", Some(Verdict::Jump("b".into()))), step("b", Some(Verdict::Jump("a".into())))];
        let _ = base_chain(&looped, "a");
    }

    fn ev(id: u32, chain: &str, kind: TraceType, handle: Option<u64>, v: Verdict) -> TraceEvent {
        TraceEvent {
            id,
            family: NFPROTO_INET,
            table: "leash".into(),
            chain: chain.into(),
            kind,
            handle,
            verdict: Some(v),
            nfproto: Some(NFPROTO_IPV4),
            oif: None,
            iif: None,
            mark: None,
            network_header: None,
            transport_header: None,
        }
    }

    fn rule(handle: u64, comment: &str, reject: bool) -> RuleInfo {
        RuleInfo {
            handle,
            comment: Some(comment.into()),
            reject,
            redirect: false,
        }
    }

    fn table() -> TableRules {
        TableRules {
            handle: 1,
            chains: vec![ChainRules {
                name: "output".into(),
                hook: Some(3),
                priority: Some(0),
                policy: Some(NF_DROP),
                rules: vec![
                    rule(3, "@loopback", false),
                    rule(4, "@established", false),
                    rule(5, "web", false),
                    rule(6, "web", false),
                    rule(7, "@default", true),
                    rule(8, "@default", true),
                ],
            }],
        }
    }

    /// A trace event as the kernel encodes it (attribute order of `nft_trace_notify`).
    fn encoded_event() -> Vec<u8> {
        let mut b = MsgBuf::new();
        let m = b.begin(nft_type(NFT_MSG_TRACE), 0, 0);
        b.put_header(&[NFPROTO_INET, 0, 0, 0]);
        b.attr_be32(NFTA_TRACE_NFPROTO, u32::from(NFPROTO_IPV4));
        b.attr_be32(NFTA_TRACE_TYPE, NFT_TRACETYPE_RULE);
        b.attr_u32(NFTA_TRACE_ID, 0xc3f5_6abd);
        b.attr_str(NFTA_TRACE_CHAIN, "output");
        b.attr_str(NFTA_TRACE_TABLE, "leash");
        b.attr_be64(NFTA_TRACE_RULE_HANDLE, 5);
        let v = b.begin_nested(NFTA_TRACE_VERDICT);
        b.attr_be32(NFTA_VERDICT_CODE, NF_ACCEPT);
        b.end_nested(v);
        b.attr_be32(NFTA_TRACE_OIF, 10);
        b.attr_be16(NFTA_TRACE_OIFTYPE, 1);
        // IPv4 192.0.2.1 -> 203.0.113.9, TCP 40000 -> 443, SYN.
        let mut ip = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&[192, 0, 2, 1, 203, 0, 113, 9]);
        b.attr(NFTA_TRACE_NETWORK_HEADER, &ip);
        let mut tcp = vec![0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02];
        tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        b.attr(NFTA_TRACE_TRANSPORT_HEADER, &tcp);
        b.end(m).unwrap();
        b.into_bytes()
    }

    #[test]
    fn parses_a_trace_event() {
        let bytes = encoded_event();
        let m = Messages::new(&bytes).next().unwrap().unwrap();
        let e = TraceEvent::parse(&m).unwrap().unwrap();
        assert!(e.is_leash());
        assert_eq!(
            (e.id, e.chain.as_str(), e.kind, e.handle, e.verdict.clone()),
            (
                0xc3f5_6abd,
                "output",
                TraceType::Rule,
                Some(5),
                Some(Verdict::Accept)
            )
        );
        assert_eq!(
            (e.nfproto, e.oif, e.mark),
            (Some(NFPROTO_IPV4), Some(10), None)
        );
        let p = Packet::parse(
            e.network_header.as_deref().unwrap(),
            e.transport_header.as_deref(),
        )
        .unwrap();
        assert_eq!(p.src, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            (p.proto_name().as_str(), p.sport, p.dport),
            ("tcp", Some(40000), Some(443))
        );
        assert_eq!(p.tcp_flag_names().as_deref(), Some("syn"));
    }

    #[test]
    fn other_messages_and_malformed_events_are_told_apart() {
        let mut b = MsgBuf::new();
        let m = b.begin(nft_type(NFT_MSG_NEWRULE), 0, 0);
        b.put_header(&[NFPROTO_INET, 0, 0, 0]);
        b.end(m).unwrap();
        let bytes = b.into_bytes();
        let m = Messages::new(&bytes).next().unwrap().unwrap();
        assert_eq!(TraceEvent::parse(&m).unwrap(), None);
        let mut b = MsgBuf::new();
        let m = b.begin(nft_type(NFT_MSG_TRACE), 0, 0);
        b.put_header(&[NFPROTO_INET, 0, 0, 0]);
        b.attr_str(NFTA_TRACE_TABLE, "leash");
        b.end(m).unwrap();
        let bytes = b.into_bytes();
        let m = Messages::new(&bytes).next().unwrap().unwrap();
        assert!(TraceEvent::parse(&m).is_err(), "an event without an id");
    }

    #[test]
    fn verdict_codes() {
        assert_eq!(Verdict::from_code(-1, None), Verdict::Continue);
        assert_eq!(Verdict::from_code(1, None), Verdict::Accept);
        assert_eq!(Verdict::from_code(0, None), Verdict::Drop);
        // NF_QUEUE with a queue number in the upper bits.
        assert_eq!(Verdict::from_code((5 << 16) | 3, None), Verdict::Queue);
        assert_eq!(
            Verdict::from_code(-3, Some("x".into())),
            Verdict::Jump("x".into())
        );
        assert_eq!(Verdict::from_code(-9, None).name(), "verdict -9");
    }

    #[test]
    fn events_are_grouped_per_packet_even_when_interleaved() {
        let t0 = Instant::now();
        let mut a = Assembler::new("output", Duration::from_millis(500));
        let mut push = |e| a.push(e, t0);
        // Packet 1 passes the trace chain; then packet 2 (the reset packet 1's reject sends)
        // runs through completely, but waits for packet 1; then packet 1's verdict.
        assert!(
            push(ev(
                1,
                TRACE_CHAIN,
                TraceType::Rule,
                Some(9),
                Verdict::Continue
            ))
            .is_empty()
        );
        assert!(push(ev(1, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept)).is_empty());
        assert!(push(ev(2, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept)).is_empty());
        assert!(push(ev(2, "output", TraceType::Rule, Some(4), Verdict::Accept)).is_empty());
        let out = push(ev(1, "output", TraceType::Rule, Some(7), Verdict::Drop));
        let ids: Vec<(u32, usize, bool)> = out
            .iter()
            .map(|p| (p.id, p.steps.len(), p.complete))
            .collect();
        assert_eq!(
            ids,
            vec![(1, 1, true), (2, 1, true)],
            "in the order first seen"
        );
        assert_eq!(a.pending(), 0);

        let e = explain(&out[0], &table());
        assert_eq!(e.outcome, Some(Outcome::Reject));
        assert_eq!(
            (e.chain.as_deref(), e.rule.as_deref(), e.handle),
            (Some("output"), Some("@default"), Some(7))
        );
        let path = &e.chains[0];
        let names: Vec<(&str, Option<String>)> = path
            .rules
            .iter()
            .map(|r| (r.rule.as_str(), r.action()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("@loopback", None),
                ("@established", None),
                ("web", None),
                ("@default", Some("reject".into()))
            ]
        );
        assert_eq!(path.end, ChainEnd::Rule);
    }

    #[test]
    fn an_accept_before_the_final_chain_does_not_end_the_packet() {
        let t0 = Instant::now();
        let mut a = Assembler::new("output", Duration::from_millis(100));
        assert!(
            a.push(
                ev(1, "dns-redirect", TraceType::Policy, None, Verdict::Accept),
                t0
            )
            .is_empty()
        );
        let p = a
            .push(ev(1, "output", TraceType::Policy, None, Verdict::Drop), t0)
            .pop()
            .unwrap();
        let e = explain(&p, &table());
        assert_eq!(e.outcome, Some(Outcome::Drop));
        assert_eq!(e.rule, None, "the policy decided");
        assert_eq!(e.chains.len(), 2);
        assert_eq!(e.chains[1].end, ChainEnd::Policy(Verdict::Drop));
        assert_eq!(
            e.chains[1].rules.len(),
            4,
            "every policy rule of the chain missed"
        );
    }

    #[test]
    fn idle_packets_expire_incomplete_in_order() {
        let t0 = Instant::now();
        let mut a = Assembler::new("output", Duration::from_millis(100));
        a.push(
            ev(7, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept),
            t0,
        );
        let t1 = t0 + Duration::from_millis(1);
        a.push(
            ev(3, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept),
            t1,
        );
        a.push(
            ev(5, TRACE_CHAIN, TraceType::Policy, None, Verdict::Accept),
            t1,
        );
        // Packet 5 ends, but 7 and 3 were first seen before it.
        assert!(
            a.push(
                ev(5, "output", TraceType::Rule, Some(4), Verdict::Accept),
                t1
            )
            .is_empty()
        );
        assert!(a.expire(t0 + Duration::from_millis(50)).is_empty());
        let out = a.expire(t0 + Duration::from_millis(200));
        assert_eq!(
            out.iter().map(|p| (p.id, p.complete)).collect::<Vec<_>>(),
            vec![(7, false), (3, false), (5, true)]
        );
        let e = explain(&out[0], &table());
        assert_eq!((e.outcome, e.chains.len()), (None, 0));
    }

    #[test]
    fn matched_rules_without_verdict_and_unknown_handles_are_listed() {
        let t0 = Instant::now();
        let mut a = Assembler::new("output", Duration::from_millis(100));
        a.push(
            ev(1, "output", TraceType::Rule, Some(4), Verdict::Continue),
            t0,
        );
        let p = a
            .push(
                ev(1, "output", TraceType::Rule, Some(99), Verdict::Accept),
                t0,
            )
            .pop()
            .unwrap();
        let e = explain(&p, &table());
        assert_eq!(e.rule.as_deref(), Some("handle 99"));
        let r = &e.chains[0].rules;
        assert_eq!(r[1].action().as_deref(), Some("continue"));
        assert_eq!(r.last().unwrap().rule, "handle 99");
    }

    #[test]
    fn filter_text_is_nft_syntax() {
        let f = TraceFilter::new(
            Some("192.0.2.77/24".parse().unwrap()),
            Some(1000),
            Some(443),
        );
        assert_eq!(
            f.nft_rule(),
            "ip daddr 192.0.2.0/24 meta skuid 1000 th dport 443 meta nftrace set 1"
        );
        let f = TraceFilter::new(Some("2001:db8::1/128".parse().unwrap()), None, None);
        assert_eq!(f.nft_rule(), "ip6 daddr 2001:db8::1 meta nftrace set 1");
        assert_eq!(TraceFilter::default().nft_rule(), "meta nftrace set 1");
        assert_eq!(comment_pid(&trace_comment(4242)), Some(4242));
        assert_eq!(comment_pid("web"), None);
    }

    #[test]
    fn tracer_liveness_needs_the_same_command() {
        assert!(tracer_alive(std::process::id()));
        assert!(!tracer_alive(u32::MAX));
        // pid 1 runs, but it is not this program.
        assert!(!tracer_alive(1));
    }

    #[test]
    fn install_batch_is_framed_and_names_only_table_leash() {
        let bytes = encode_install_batch(&TraceFilter::default(), 1, true).unwrap();
        let msgs: Vec<_> = Messages::new(&bytes).collect::<Result<_, _>>().unwrap();
        let types: Vec<u16> = msgs.iter().map(|m| m.header.ty).collect();
        assert_eq!(
            types,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                nft_type(NFT_MSG_DELCHAIN),
                nft_type(NFT_MSG_NEWCHAIN),
                nft_type(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        for m in &msgs[1..msgs.len() - 1] {
            assert_eq!(m.payload[0], NFPROTO_INET);
            let first = m.attrs(NFGENMSG_LEN).next().unwrap().unwrap();
            assert_eq!((first.ty, first.str().as_str()), (1, "leash"));
        }
        let bytes = encode_remove_batch().unwrap();
        let n = Messages::new(&bytes).count();
        assert_eq!(n, 3);
    }
}
