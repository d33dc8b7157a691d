//! NFLOG subscriber: receives the packets that `log group N` rules hand to one netlink group.
//!
//! nftables' `log group N` statement does not write to the kernel log; it passes a copy of the
//! packet to `nfnetlink_log`, which queues it for the one netlink socket bound to group N in the
//! packet's network namespace. Nothing is kept: a packet logged while no socket is bound is gone,
//! so NFLOG has no history. This module binds a group (`NFULNL_CFG_CMD_BIND`), asks for the packet
//! bytes (`NFULNL_COPY_PACKET`, cut at a snap length) and sequence numbers, and parses what
//! arrives. Attribute numbers and structures follow `linux/netfilter/nfnetlink_log.h`.
//!
//! What the kernel does, and why the knobs in [`Config`] exist (from `nfnetlink_log.c`):
//! - Packets are batched: the kernel appends each packet message to one skb of up to
//!   `nlbufsiz` bytes and sends it when `qthreshold` messages are in it, when the next packet
//!   does not fit, or when `flushtimeout` (hundredths of a second, default 1 s) expires. A long
//!   timeout delays a lone blocked attempt by a second; a threshold of 1 costs one datagram per
//!   packet. The defaults here (10 ms, 64 packets, 64 KiB) keep both small.
//! - A batch that does not fit into the socket's receive buffer is dropped whole; the socket is
//!   flagged congested and the next `recv` fails with `ENOBUFS`. While it is congested, netlink
//!   drops *every* further batch for it until the reader has emptied its queue, so one overflow
//!   under a flood loses a long run of packets, and the receive buffer (which only costs memory
//!   while a backlog exists) should hold the largest burst expected. `ENOBUFS` says "something was
//!   lost", not how much: the per-instance sequence number (`NFULNL_CFG_F_SEQ`, counted when each
//!   message is built, before delivery) does. A gap between consecutive sequence numbers is the
//!   exact count of packets lost in between. Loss after the last packet received shows only as
//!   `ENOBUFS` and in the socket's drop counter ([`Stats::dropped_batches`], `SO_MEMINFO`),
//!   which counts batches, not packets. A failed skb allocation in the kernel (memory pressure)
//!   loses a packet without consuming a sequence number and is not detectable at all.
//! - uid and gid (`NFULA_UID`/`NFULA_GID`) are always sent when the packet has a full socket with
//!   a file (locally generated packets): the credentials (fsuid/fsgid) of whoever created the
//!   socket, mapped into the reader's user namespace. There is no flag to ask for them (libnfnetlink
//!   has none either); forwarded packets, TCP resets and SYN-ACKs of request sockets have none.
//! - A kernel timestamp (`NFULA_TIMESTAMP`) is only sent for the prerouting, input and forward
//!   hooks. leash logs in the output hook, so [`Packet::timestamp`] is `None` there and callers
//!   use [`Packet::received`], the time this process read the datagram.
//! - One socket per group per network namespace: a second bind fails (`EPERM` from another
//!   socket, which [`Subscriber::open`] reports as [`Error::GroupBusy`]). Closing the socket
//!   unbinds (the kernel destroys a port id's instances when its socket is released), so there is
//!   no explicit unbind and nothing is left behind if the process dies.
//! - `NFULNL_CFG_CMD_PF_BIND`/`PF_UNBIND` (what old examples send first) are not sent: they pick the
//!   namespace-wide *default* logger of an address family, which `log group N` does not use (it
//!   names its logger type itself), and changing it would affect other users of the namespace.
//!
//! The socket belongs to the network namespace of the thread that calls [`Subscriber::open`];
//! open it on a thread inside the namespace to read (see `netns::NetNs::run`).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::nl::{self, Attrs, Message, Messages, MsgBuf, NlError, Socket};

/// nfnetlink subsystem of NFLOG (`NFNL_SUBSYS_ULOG`).
pub const NFNL_SUBSYS_ULOG: u16 = 4;
/// Message types (`enum nfulnl_msg_types`), combined with the subsystem in `nlmsg_type`.
pub const NFULNL_MSG_PACKET: u16 = 0;
pub const NFULNL_MSG_CONFIG: u16 = 1;

// Packet attributes (`enum nfulnl_attr_type`).
pub const NFULA_PACKET_HDR: u16 = 1;
pub const NFULA_MARK: u16 = 2;
pub const NFULA_TIMESTAMP: u16 = 3;
pub const NFULA_IFINDEX_INDEV: u16 = 4;
pub const NFULA_IFINDEX_OUTDEV: u16 = 5;
pub const NFULA_IFINDEX_PHYSINDEV: u16 = 6;
pub const NFULA_IFINDEX_PHYSOUTDEV: u16 = 7;
pub const NFULA_HWADDR: u16 = 8;
pub const NFULA_PAYLOAD: u16 = 9;
pub const NFULA_PREFIX: u16 = 10;
pub const NFULA_UID: u16 = 11;
pub const NFULA_SEQ: u16 = 12;
pub const NFULA_SEQ_GLOBAL: u16 = 13;
pub const NFULA_GID: u16 = 14;
pub const NFULA_HWTYPE: u16 = 15;
pub const NFULA_HWHEADER: u16 = 16;
pub const NFULA_HWLEN: u16 = 17;
pub const NFULA_CT: u16 = 18;
pub const NFULA_CT_INFO: u16 = 19;
pub const NFULA_VLAN: u16 = 20;
pub const NFULA_L2HDR: u16 = 21;
const NFULA_MAX: usize = 22;

// Config commands (`enum nfulnl_msg_config_cmds`).
pub const NFULNL_CFG_CMD_NONE: u8 = 0;
pub const NFULNL_CFG_CMD_BIND: u8 = 1;
pub const NFULNL_CFG_CMD_UNBIND: u8 = 2;
pub const NFULNL_CFG_CMD_PF_BIND: u8 = 3;
pub const NFULNL_CFG_CMD_PF_UNBIND: u8 = 4;

// Config attributes (`enum nfulnl_attr_config`).
pub const NFULA_CFG_CMD: u16 = 1;
pub const NFULA_CFG_MODE: u16 = 2;
pub const NFULA_CFG_NLBUFSIZ: u16 = 3;
pub const NFULA_CFG_TIMEOUT: u16 = 4;
pub const NFULA_CFG_QTHRESH: u16 = 5;
pub const NFULA_CFG_FLAGS: u16 = 6;

// Copy modes.
pub const NFULNL_COPY_NONE: u8 = 0;
pub const NFULNL_COPY_META: u8 = 1;
pub const NFULNL_COPY_PACKET: u8 = 2;

// Config flags.
pub const NFULNL_CFG_F_SEQ: u16 = 0x0001;
pub const NFULNL_CFG_F_SEQ_GLOBAL: u16 = 0x0002;
pub const NFULNL_CFG_F_CONNTRACK: u16 = 0x0004;

/// `nfgen_family` values of packet messages (the packet's protocol family).
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// Netfilter hooks (`enum nf_inet_hooks`), as in [`Packet::hook`].
pub const NF_INET_PRE_ROUTING: u8 = 0;
pub const NF_INET_LOCAL_IN: u8 = 1;
pub const NF_INET_FORWARD: u8 = 2;
pub const NF_INET_LOCAL_OUT: u8 = 3;
pub const NF_INET_POST_ROUTING: u8 = 4;

/// Largest snap length the kernel accepts (a netlink attribute's u16 length minus its header).
pub const MAX_SNAPLEN: u32 = 0xffff - nl::NLA_HDRLEN as u32;
/// Range the kernel accepts for `nlbufsiz` (`NLMSG_GOODSIZE` is at most a page; 128 KiB is the
/// kernel's upper limit).
const MIN_KERNEL_BUFFER: u32 = 4096;
const MAX_KERNEL_BUFFER: u32 = 131_072;

/// Name of a netfilter hook number (`output` for [`NF_INET_LOCAL_OUT`]).
pub fn hook_name(hook: u8) -> &'static str {
    match hook {
        NF_INET_PRE_ROUTING => "prerouting",
        NF_INET_LOCAL_IN => "input",
        NF_INET_FORWARD => "forward",
        NF_INET_LOCAL_OUT => "output",
        NF_INET_POST_ROUTING => "postrouting",
        _ => "unknown",
    }
}

/// How to bind and configure one NFLOG group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The NFLOG group (`log group N`).
    pub group: u16,
    /// Bytes of each packet copied, from its network header (0 means the kernel's maximum,
    /// [`MAX_SNAPLEN`]). Headers fit in 128; more costs buffer space per packet.
    pub snaplen: u32,
    /// Socket receive buffer in bytes (`SO_RCVBUFFORCE` as root, else `SO_RCVBUF` capped by
    /// `net.core.rmem_max`). This is what absorbs a burst while the reader is busy.
    pub recv_buffer: usize,
    /// Packets the kernel collects before it sends a batch (`NFULA_CFG_QTHRESH`).
    pub queue_threshold: u32,
    /// Longest time a packet waits in an unfilled batch, in hundredths of a second
    /// (`NFULA_CFG_TIMEOUT`).
    pub flush_timeout_cs: u32,
    /// Size of the kernel's batch buffer in bytes (`NFULA_CFG_NLBUFSIZ`, 4096 to 131072).
    pub kernel_buffer: u32,
}

impl Config {
    /// Defaults for an interactive reader: 256-byte snap length (every IPv4/IPv6 header chain
    /// leash parses, with room to spare), a 64 MiB receive buffer (about 250,000 small packets
    /// of backlog; it costs memory only while a backlog exists), batches of up to 64 packets in
    /// 64 KiB, flushed after at most 10 ms.
    pub fn new(group: u16) -> Config {
        Config {
            group,
            snaplen: 256,
            recv_buffer: 64 << 20,
            queue_threshold: 64,
            flush_timeout_cs: 1,
            kernel_buffer: 65_536,
        }
    }
}

/// One logged packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The group it was logged to.
    pub group: u16,
    /// [`NFPROTO_IPV4`] or [`NFPROTO_IPV6`] (the `nfgen_family` of the message).
    pub family: u8,
    /// The link-layer protocol of the skb (`0x0800` IPv4, `0x86dd` IPv6).
    pub hw_protocol: u16,
    /// The netfilter hook the rule ran in ([`NF_INET_LOCAL_OUT`] for leash).
    pub hook: u8,
    /// The rule's log prefix, without the trailing NUL.
    pub prefix: Option<String>,
    /// Owner of the packet's socket (locally generated packets only).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The packet mark (`meta mark`); the kernel leaves 0 out.
    pub mark: u32,
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    /// The kernel's timestamp; only the prerouting, input and forward hooks give one.
    pub timestamp: Option<SystemTime>,
    /// When this process read the datagram that carried the packet.
    pub received: SystemTime,
    /// Per-group sequence number (counts from 0 after the bind).
    pub seq: Option<u32>,
    /// Namespace-wide sequence number over all groups (counts from 1).
    pub seq_global: Option<u32>,
    /// The packet from its network (IP) header, at most `snaplen` bytes.
    pub payload: Vec<u8>,
}

impl Packet {
    /// The kernel's timestamp when there is one, else the time it was read.
    pub fn time(&self) -> SystemTime {
        self.timestamp.unwrap_or(self.received)
    }
}

/// Counters of one subscriber since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packet messages received.
    pub packets: u64,
    /// Datagrams (kernel batches) received.
    pub datagrams: u64,
    /// Receives that failed with `ENOBUFS`: each means at least one batch was dropped because
    /// the receive buffer was full.
    pub enobufs: u64,
    /// Packets missing between consecutive sequence numbers: exactly the packets lost before the
    /// last one received.
    pub seq_lost: u64,
    /// Packet messages that did not parse (skipped).
    pub malformed: u64,
    /// Batches the kernel dropped because the receive buffer was full (the socket's drop
    /// counter, `SK_MEMINFO_DROPS`): includes those after the last packet received, which no
    /// sequence gap shows. Each held up to [`Config::queue_threshold`] packets.
    pub dropped_batches: u64,
}

impl Stats {
    /// Whether the kernel reported any loss.
    pub fn lost_any(&self) -> bool {
        self.enobufs > 0 || self.seq_lost > 0 || self.dropped_batches > 0
    }
}

/// `SO_MEMINFO` (`asm-generic/socket.h`) and the index of the drop counter in its array.
const SO_MEMINFO: i32 = 55;
const SK_MEMINFO_DROPS: usize = 8;
const SK_MEMINFO_VARS: usize = 10;

/// Errors of the subscriber.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink call failed.
    #[error("{context}: {source}")]
    Netlink {
        context: &'static str,
        #[source]
        source: NlError,
    },
    /// Another socket of this network namespace holds the group.
    #[error(
        "NFLOG group {group} is already bound by another netlink socket in this network namespace \
         (another `leash log`, ulogd, or `tcpdump -i nflog:{group}`); the kernel allows one reader \
         per group"
    )]
    GroupBusy { group: u16 },
    /// The caller lacks CAP_NET_ADMIN.
    #[error("binding NFLOG group {group} needs CAP_NET_ADMIN (run as root)")]
    Permission { group: u16 },
    /// A configuration value is out of the kernel's range.
    #[error("invalid NFLOG configuration: {0}")]
    Config(String),
}

fn netlink(context: &'static str) -> impl FnOnce(NlError) -> Error {
    move |source| Error::Netlink { context, source }
}

/// A socket bound to one NFLOG group; see the module docs.
#[derive(Debug)]
pub struct Subscriber {
    sock: Socket,
    config: Config,
    acct: Accounting,
    /// Packets that arrived while the bind was being acknowledged.
    pending: Vec<Packet>,
}

/// Counters and the sequence number expected next; apart from the socket so that packets can be
/// parsed straight out of its receive buffer while they are counted.
#[derive(Debug, Default)]
struct Accounting {
    stats: Stats,
    /// The sequence number the next packet should carry.
    next_seq: Option<u32>,
}

impl Accounting {
    /// Parses one message if it is an NFLOG packet, and accounts its sequence number.
    fn packet_of(&mut self, msg: &Message<'_>, received: SystemTime) -> Option<Packet> {
        if msg.header.ty != ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET) {
            // NLMSG_DONE ends a multi-message batch; nothing else is expected.
            return None;
        }
        let Some(p) = parse_packet(msg, received) else {
            self.stats.malformed += 1;
            return None;
        };
        self.stats.packets += 1;
        if let Some(seq) = p.seq {
            if let Some(want) = self.next_seq {
                let gap = seq.wrapping_sub(want);
                // A jump backwards (more than half the number space) is not a loss: the
                // numbering restarted.
                if gap < (1 << 31) {
                    self.stats.seq_lost += u64::from(gap);
                }
            }
            self.next_seq = Some(seq.wrapping_add(1));
        }
        Some(p)
    }
}

impl AsRawFd for Subscriber {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Sequence number of the one configuration request.
const CONFIG_SEQ: u32 = 1;

impl Subscriber {
    /// Binds `config.group` in the calling thread's network namespace and configures it. Needs
    /// CAP_NET_ADMIN.
    pub fn open(config: &Config) -> Result<Subscriber, Error> {
        if config.snaplen > MAX_SNAPLEN {
            return Err(Error::Config(format!(
                "snap length {} is larger than {MAX_SNAPLEN}",
                config.snaplen
            )));
        }
        if !(MIN_KERNEL_BUFFER..=MAX_KERNEL_BUFFER).contains(&config.kernel_buffer) {
            return Err(Error::Config(format!(
                "kernel batch buffer {} is outside {MIN_KERNEL_BUFFER}..={MAX_KERNEL_BUFFER} bytes",
                config.kernel_buffer
            )));
        }
        if config.queue_threshold == 0 {
            return Err(Error::Config(
                "queue threshold 0 (at least 1 packet)".into(),
            ));
        }
        let sock = Socket::open(nl::NETLINK_NETFILTER)
            .map_err(netlink("opening a netfilter netlink socket"))?;
        sock.set_recv_buffer(config.recv_buffer)
            .map_err(netlink("setting the NFLOG receive buffer"))?;
        sock.enable_ext_ack()
            .map_err(netlink("enabling extended netlink acks"))?;
        let mut s = Subscriber {
            sock,
            config: config.clone(),
            acct: Accounting::default(),
            pending: Vec::new(),
        };
        s.configure()?;
        Ok(s)
    }

    /// One message binds the group and sets mode, flags, batch size, threshold and timeout: the
    /// kernel applies the command first, then the parameters, and answers with one ack. Packets
    /// can arrive before the ack (another CPU logs as soon as the instance exists); they are kept.
    fn configure(&mut self) -> Result<(), Error> {
        let c = &self.config;
        let mut b = MsgBuf::new();
        let m = b.begin(
            (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            CONFIG_SEQ,
        );
        b.put_header(&nfgenmsg(libc::AF_UNSPEC as u8, c.group));
        b.attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        // struct nfulnl_msg_config_mode: __be32 copy_range, __u8 copy_mode, __u8 pad (packed).
        let mut mode = [0u8; 6];
        mode[..4].copy_from_slice(&c.snaplen.to_be_bytes());
        mode[4] = NFULNL_COPY_PACKET;
        b.attr(NFULA_CFG_MODE, &mode);
        b.attr_be32(NFULA_CFG_NLBUFSIZ, c.kernel_buffer);
        b.attr_be32(NFULA_CFG_TIMEOUT, c.flush_timeout_cs);
        b.attr_be32(NFULA_CFG_QTHRESH, c.queue_threshold);
        b.attr_be16(NFULA_CFG_FLAGS, NFULNL_CFG_F_SEQ | NFULNL_CFG_F_SEQ_GLOBAL);
        b.end(m)
            .map_err(netlink("encoding the NFLOG bind request"))?;
        self.sock
            .send(b.as_bytes())
            .map_err(netlink("sending the NFLOG bind request"))?;
        let group = c.group;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_readable(Some(left))? {
                return Err(Error::Netlink {
                    context: "waiting for the NFLOG bind ack",
                    source: NlError::Malformed("no answer within 5 s".into()),
                });
            }
            let received = SystemTime::now();
            let d = match self.sock.recv(false) {
                Ok(Some(d)) => d.to_vec(),
                Ok(None) => continue,
                Err(e) if errno_of(&e) == Some(libc::ENOBUFS) => {
                    self.acct.stats.enobufs += 1;
                    continue;
                }
                Err(e) => return Err(netlink("reading the NFLOG bind ack")(e)),
            };
            let mut acked = None;
            for msg in Messages::new(&d) {
                let msg = msg.map_err(netlink("parsing the NFLOG bind ack"))?;
                if msg.header.ty == nl::NLMSG_ERROR && msg.header.seq == CONFIG_SEQ {
                    acked = Some(match nl::ack_result(&msg) {
                        Ok(()) => Ok(()),
                        Err(NlError::Kernel(e)) => Err(e),
                        Err(e) => return Err(netlink("parsing the NFLOG bind ack")(e)),
                    });
                } else if let Some(p) = self.acct.packet_of(&msg, received) {
                    self.pending.push(p);
                }
            }
            match acked {
                None => {}
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) if e.errno == libc::EPERM && has_cap_net_admin() => {
                    return Err(Error::GroupBusy { group });
                }
                Some(Err(e)) if e.errno == libc::EPERM => return Err(Error::Permission { group }),
                Some(Err(e)) if e.errno == libc::EBUSY => return Err(Error::GroupBusy { group }),
                Some(Err(e)) => {
                    return Err(Error::Netlink {
                        context: "binding the NFLOG group",
                        source: NlError::Kernel(e),
                    });
                }
            }
        }
    }

    /// The group this subscriber reads.
    pub fn group(&self) -> u16 {
        self.config.group
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters so far (one `getsockopt` for the socket's drop counter).
    pub fn stats(&self) -> Stats {
        let mut st = self.acct.stats;
        st.dropped_batches = self.socket_drops().unwrap_or(0);
        st
    }

    /// The socket's drop counter from `SO_MEMINFO`.
    fn socket_drops(&self) -> Option<u64> {
        let mut info = [0u32; SK_MEMINFO_VARS];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: `info` is writable for `len` bytes; the kernel writes at most that much.
        let rc = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let words = len as usize / 4;
        (rc == 0 && words > SK_MEMINFO_DROPS).then(|| u64::from(info[SK_MEMINFO_DROPS]))
    }

    /// Waits at most `timeout` (`None`: without limit) for the next batch and returns its
    /// packets. Returns an empty list when the time is up, when a signal interrupted the wait
    /// (so a caller can check its flags), or when the receive reported `ENOBUFS` (counted in
    /// [`Stats::enobufs`]; the packets after the gap follow on the next call).
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Vec<Packet>, Error> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        if !self.wait_readable(timeout)? {
            return Ok(Vec::new());
        }
        let received = SystemTime::now();
        let acct = &mut self.acct;
        let d = match self.sock.recv(false) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(Vec::new()),
            Err(e) if errno_of(&e) == Some(libc::ENOBUFS) => {
                acct.stats.enobufs += 1;
                return Ok(Vec::new());
            }
            Err(e) => return Err(netlink("reading NFLOG packets")(e)),
        };
        acct.stats.datagrams += 1;
        let mut out = Vec::new();
        for msg in Messages::new(d) {
            match msg {
                Ok(msg) => out.extend(acct.packet_of(&msg, received)),
                Err(_) => {
                    acct.stats.malformed += 1;
                    break;
                }
            }
        }
        Ok(out)
    }

    /// `poll` for readability; `Ok(false)` on timeout or EINTR.
    fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        let ms = match timeout {
            None => -1,
            Some(t) => i32::try_from(t.as_millis()).unwrap_or(i32::MAX),
        };
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(false);
            }
            return Err(Error::Netlink {
                context: "poll(NFLOG socket)",
                source: NlError::Io {
                    context: "poll",
                    source: e,
                },
            });
        }
        // POLLERR is how a pending ENOBUFS shows; the receive reports it.
        Ok(rc > 0)
    }
}

fn nfgenmsg(family: u8, group: u16) -> [u8; 4] {
    let g = group.to_be_bytes();
    // nfgen_family, version NFNETLINK_V0, res_id (big-endian).
    [family, 0, g[0], g[1]]
}

fn errno_of(e: &NlError) -> Option<i32> {
    match e {
        NlError::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// Whether the calling thread has CAP_NET_ADMIN (bit 12 of CapEff), to tell "the group is taken"
/// from "not allowed": the kernel answers both with EPERM.
fn has_cap_net_admin() -> bool {
    // Bytes: the `Name:` line holds the command name, which need not be UTF-8.
    let Ok(status) = std::fs::read("/proc/thread-self/status") else {
        return false;
    };
    status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"CapEff:"))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Parses an `NFULNL_MSG_PACKET` message; `None` if it is malformed (no packet header).
pub fn parse_packet(msg: &Message<'_>, received: SystemTime) -> Option<Packet> {
    let h = msg.payload.get(..4)?;
    let family = h[0];
    let group = u16::from_be_bytes([h[2], h[3]]);
    let t = Attrs::new(&msg.payload[4..]).table::<NFULA_MAX>().ok()?;
    let be32 = |ty: u16| t[ty as usize].and_then(|a| a.be32().ok());
    let hdr = t[NFULA_PACKET_HDR as usize]?.data;
    if hdr.len() < 3 {
        return None;
    }
    let timestamp = t[NFULA_TIMESTAMP as usize].and_then(|a| {
        let d = a.data;
        if d.len() < 16 {
            return None;
        }
        let sec = u64::from_be_bytes(d[0..8].try_into().ok()?);
        let usec = u64::from_be_bytes(d[8..16].try_into().ok()?);
        UNIX_EPOCH.checked_add(Duration::from_secs(sec) + Duration::from_micros(usec))
    });
    Some(Packet {
        group,
        family,
        hw_protocol: u16::from_be_bytes([hdr[0], hdr[1]]),
        hook: hdr[2],
        prefix: t[NFULA_PREFIX as usize].map(|a| a.str()),
        uid: be32(NFULA_UID),
        gid: be32(NFULA_GID),
        mark: be32(NFULA_MARK).unwrap_or(0),
        indev: be32(NFULA_IFINDEX_INDEV),
        outdev: be32(NFULA_IFINDEX_OUTDEV),
        timestamp,
        received,
        seq: be32(NFULA_SEQ),
        seq_global: be32(NFULA_SEQ_GLOBAL),
        payload: t[NFULA_PAYLOAD as usize]
            .map(|a| a.data.to_vec())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel builds it (attribute order of `__build_packet_message`).
    fn kernel_message(seq: u32, uid: Option<u32>) -> Vec<u8> {
        let mut b = MsgBuf::new();
        let m = b.begin((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET, 0, 0);
        b.put_header(&nfgenmsg(NFPROTO_IPV4, 7));
        b.attr(NFULA_PACKET_HDR, &[0x08, 0x00, NF_INET_LOCAL_OUT, 0]);
        b.attr(NFULA_PREFIX, b"leash deny web: \0");
        b.attr_be32(NFULA_IFINDEX_OUTDEV, 10);
        b.attr_be32(NFULA_MARK, 0x6c6e);
        if let Some(u) = uid {
            b.attr_be32(NFULA_UID, u);
            b.attr_be32(NFULA_GID, u + 1);
        }
        b.attr_be32(NFULA_SEQ, seq);
        b.attr_be32(NFULA_SEQ_GLOBAL, seq + 1);
        b.attr(NFULA_PAYLOAD, &[0x45, 0, 0, 20]);
        b.end(m).unwrap();
        b.into_bytes()
    }

    #[test]
    fn packet_message_parses() {
        let bytes = kernel_message(5, Some(65534));
        let msg = Messages::new(&bytes).next().unwrap().unwrap();
        let p = parse_packet(&msg, UNIX_EPOCH).unwrap();
        assert_eq!(p.group, 7);
        assert_eq!(p.family, NFPROTO_IPV4);
        assert_eq!(p.hw_protocol, 0x0800);
        assert_eq!(hook_name(p.hook), "output");
        assert_eq!(p.prefix.as_deref(), Some("leash deny web: "));
        assert_eq!((p.uid, p.gid), (Some(65534), Some(65535)));
        assert_eq!(p.mark, 0x6c6e);
        assert_eq!(p.outdev, Some(10));
        assert_eq!(p.indev, None);
        assert_eq!((p.seq, p.seq_global), (Some(5), Some(6)));
        assert_eq!(p.payload, vec![0x45, 0, 0, 20]);
        assert_eq!(p.timestamp, None);
        assert_eq!(p.time(), UNIX_EPOCH);
    }

    #[test]
    fn packet_without_owner_has_no_uid() {
        let bytes = kernel_message(0, None);
        let msg = Messages::new(&bytes).next().unwrap().unwrap();
        let p = parse_packet(&msg, UNIX_EPOCH).unwrap();
        assert_eq!((p.uid, p.gid), (None, None));
    }

    #[test]
    fn timestamp_is_seconds_and_microseconds() {
        let mut b = MsgBuf::new();
        let m = b.begin((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET, 0, 0);
        b.put_header(&nfgenmsg(NFPROTO_IPV6, 0));
        b.attr(NFULA_PACKET_HDR, &[0x86, 0xdd, NF_INET_LOCAL_IN, 0]);
        let mut ts = Vec::new();
        ts.extend_from_slice(&1_700_000_000u64.to_be_bytes());
        ts.extend_from_slice(&250_000u64.to_be_bytes());
        b.attr(NFULA_TIMESTAMP, &ts);
        b.end(m).unwrap();
        let bytes = b.into_bytes();
        let msg = Messages::new(&bytes).next().unwrap().unwrap();
        let p = parse_packet(&msg, UNIX_EPOCH).unwrap();
        assert_eq!(
            p.timestamp,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_250))
        );
        assert_eq!(p.hw_protocol, 0x86dd);
    }

    #[test]
    fn message_without_packet_header_is_malformed() {
        let mut b = MsgBuf::new();
        let m = b.begin((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET, 0, 0);
        b.put_header(&nfgenmsg(NFPROTO_IPV4, 0));
        b.attr(NFULA_PREFIX, b"x\0");
        b.end(m).unwrap();
        let bytes = b.into_bytes();
        let msg = Messages::new(&bytes).next().unwrap().unwrap();
        assert!(parse_packet(&msg, UNIX_EPOCH).is_none());
    }

    #[test]
    fn config_message_layout() {
        // The bind request as `configure` builds it, checked byte by byte against the uapi layout.
        let mut b = MsgBuf::new();
        let m = b.begin(0x0401, nl::NLM_F_REQUEST | nl::NLM_F_ACK, 1);
        b.put_header(&nfgenmsg(0, 0x0102));
        b.attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        b.end(m).unwrap();
        let bytes = b.into_bytes();
        assert_eq!(&bytes[16..20], &[0, 0, 0x01, 0x02]);
        // nlattr: len 5 (4 + 1 byte), type 1, the command, then 3 bytes of padding.
        assert_eq!(&bytes[20..28], &[5, 0, 1, 0, 1, 0, 0, 0]);
    }
}
