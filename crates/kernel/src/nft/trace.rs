//! `leash trace`, the kernel side: nftables tracing of matching packets inside table `inet leash`,
//! and the trace events read back. Grouping the events per packet and explaining a packet rule by
//! rule is pure logic and lives in `observe::trace`.
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
//!    `inet leash` ([`TraceEvent`], the packet's headers as raw bytes). `observe::trace` groups
//!    them per packet (the trace id) and maps the rule handles to the rules' comments (the policy
//!    rule names, `@loopback`, `@default`, ...) of the table as the tracer read it
//!    ([`Tracer::rules`]), so a packet reads as "`@loopback` no, `@established` no, `web` ->
//!    accept".
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

use std::os::fd::AsRawFd;
use std::time::Duration;

use ipnet::IpNet;
use ruleset::{Chain, ChainPolicy, ChainType, Hook};

use super::batch::{Batch, Encoder, open_socket};
use super::codec::udata_comment;
use super::consts::*;
use super::encode::encode_chain;
use super::error::{Error as NftError, netlink};
use super::expr;
use super::read::{read_chains, str_of, table_info};
use super::validate::check_comment;
use crate::nl::{self, Message, Messages, NLM_F_APPEND, NLM_F_CREATE, NlError, Socket};

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
    pub(crate) fn install_batch(
        &self,
        comment: &str,
        remove_stale: bool,
    ) -> Result<Batch, NftError> {
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
    pub(crate) fn remove_batch() -> Result<Batch, NftError> {
        let mut e = Encoder::new(256);
        e.begin_batch()?;
        trace_delchain(&mut e)?;
        e.end_batch()?;
        Ok(e.finish(0))
    }
}

fn trace_delchain(e: &mut Encoder) -> Result<(), NftError> {
    e.nft(NFT_MSG_DELCHAIN, 0, format!("chain `{TRACE_CHAIN}`"), |b| {
        b.attr_str(NFTA_CHAIN_TABLE, ruleset::TABLE_NAME);
        b.attr_str(NFTA_CHAIN_NAME, TRACE_CHAIN);
    })
}

/// The batch a tracer sends to add its chain (for the oracle test and benchmarks): see
/// [`TraceFilter::install_batch`] for its messages.
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

    /// The chain whose verdict is the table's last word on a packet: the base chain on the
    /// output hook (the one `leash trace` traces) with the highest priority (leash's filter
    /// chain `output`). An accept there ends the packet's way through the table; an accept in an
    /// earlier chain (the DNS redirect chain) does not. The forward hook's chains never see the
    /// traced packets.
    pub fn final_chain(&self) -> Option<&str> {
        self.chains
            .iter()
            .filter(|c| c.name != TRACE_CHAIN && c.hook == Some(NF_INET_LOCAL_OUT))
            .max_by_key(|c| c.priority.unwrap_or(i32::MIN))
            .map(|c| c.name.as_str())
    }
}

/// Reads handle, chains and rules of table `inet leash` over `sock`; `None` when there is none.
fn read_rules(sock: &mut Socket, seq: &mut u32) -> Result<Option<TableRules>, NftError> {
    let table = ruleset::TABLE_NAME;
    let Some(info) = table_info(sock, table)? else {
        return Ok(None);
    };
    let chains = read_chains(sock, seq, table)?
        .into_iter()
        .map(|c| ChainRules {
            name: c.status.name,
            hook: c.status.hook_num,
            priority: c.status.priority,
            policy: c.policy,
            rules: c
                .rules
                .into_iter()
                .map(|r| RuleInfo {
                    handle: r.status.handle,
                    comment: r.status.comment,
                    reject: r.reject,
                    redirect: r.redirect,
                })
                .collect(),
        })
        .collect();
    Ok(Some(TableRules {
        handle: info.handle,
        chains,
    }))
}

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
        let cmd = open_socket()?;
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
        match table_info(&mut self.cmd, ruleset::TABLE_NAME)?.map(|i| i.handle) {
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
    // Bytes: a command name need not be UTF-8.
    let comm = |p: &str| std::fs::read(format!("/proc/{p}/comm")).ok();
    match (comm(&pid.to_string()), comm("self")) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::{Messages, MsgBuf};

    #[test]
    fn the_final_chain_is_the_output_hooks_not_the_forward_hooks() {
        let chain = |name: &str, hook: Option<u32>, priority: Option<i32>| ChainRules {
            name: name.into(),
            hook,
            priority,
            policy: None,
            rules: vec![],
        };
        let t = TableRules {
            handle: 1,
            chains: vec![
                chain("output", Some(NF_INET_LOCAL_OUT), Some(0)),
                chain("dns-redirect", Some(NF_INET_LOCAL_OUT), Some(-100)),
                chain("forward", Some(NF_INET_FORWARD), Some(0)),
                chain("workload", None, None),
                chain(TRACE_CHAIN, Some(NF_INET_LOCAL_OUT), Some(-350)),
            ],
        };
        assert_eq!(t.final_chain(), Some("output"));
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
        // The headers come as the kernel sent them; `observe::trace` parses them.
        assert_eq!(e.network_header.as_ref().map(Vec::len), Some(20));
        assert_eq!(e.transport_header.as_ref().map(Vec::len), Some(20));
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
