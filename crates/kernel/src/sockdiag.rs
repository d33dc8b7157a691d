//! TCP and UDP sockets of the calling thread's network namespace, from sock_diag netlink.
//!
//! This is where `ss` gets its data: `NETLINK_SOCK_DIAG`, message `SOCK_DIAG_BY_FAMILY`, one
//! `inet_diag_req_v2` per (address family, protocol) asking for every socket whose state is in a
//! bitmask. The kernel answers with one `inet_diag_msg` per socket (addresses, state, owner uid,
//! inode), followed by attributes of which only `INET_DIAG_INFO` (`struct tcp_info`: RTT, bytes
//! sent and received, retransmissions) is read. Reading `/proc/net/tcp` instead costs a text
//! parse per socket and has no byte counters.
//!
//! Why it is fast: replies are parsed in place in one receive buffer (no copy per datagram, no
//! allocation per socket except the push of the result), and the kernel filters by state itself.
//! The kernel caps a dump datagram at about 32 KiB, so 20,000 sockets take a few hundred
//! `recv` calls whatever the buffer size.
//!
//! Layouts (`linux/inet_diag.h`, `linux/tcp.h`; checked against the C headers with `offsetof`):
//!
//! ```text
//! inet_diag_sockid (48)   sport be16 | dport be16 | src [4]be32 | dst [4]be32 | if u32 | cookie [2]u32
//! inet_diag_req_v2 (56)   family u8 | protocol u8 | ext u8 | pad u8 | states u32 | sockid
//! inet_diag_msg    (72)   family u8 | state u8 | timer u8 | retrans u8 | sockid
//!                         | expires u32 | rqueue u32 | wqueue u32 | uid u32 | inode u32
//! ```
//!
//! IPv4 sockets put their address in the first word of `src`/`dst`. An IPv6 socket talking to an
//! IPv4 peer (dual stack) is reported by the IPv6 dump with IPv4-mapped addresses
//! (`::ffff:192.0.2.1`); they are kept as the kernel gives them, [`DiagSocket::remote`]`.ip()
//! .to_canonical()` is the address a firewall rule sees.
//!
//! Mini sockets (TIME_WAIT, and SYN_RECV requests) have no owner: the kernel reports uid 0 and
//! inode 0 for them, and no `tcp_info`.
//!
//! [`SockDiag::destroy`] ends a socket from outside (message `SOCK_DESTROY`, what `ss -K` sends):
//! the kernel aborts it as if the network had failed, so its owner's next call fails with
//! `ECONNABORTED`, and a TCP socket sends its peer a reset. This needs CAP_NET_ADMIN and a kernel
//! built with `CONFIG_INET_DIAG_DESTROY`; [`SockDiag::destroy_supported`] asks the kernel which
//! (a probe, not a version check).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use crate::nl::{
    self, Message, Messages, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NlError,
};

/// `NETLINK_SOCK_DIAG` (formerly `NETLINK_INET_DIAG`).
pub const NETLINK_SOCK_DIAG: i32 = libc::NETLINK_SOCK_DIAG;
/// The request and reply message type (`linux/sock_diag.h`).
pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Ends the socket a request names (`linux/sock_diag.h`).
const SOCK_DESTROY: u16 = 21;
/// `INET_DIAG_INFO`: the protocol's info struct (`tcp_info` for TCP).
const INET_DIAG_INFO: u16 = 2;
/// `INET_DIAG_MARK`: the socket's `SO_MARK`, sent only to CAP_NET_ADMIN.
const INET_DIAG_MARK: u16 = 15;
/// `INET_DIAG_NOCOOKIE`: a lookup that does not check the socket cookie.
const INET_DIAG_NOCOOKIE: u32 = !0;
const REQ_LEN: usize = 56;
pub(crate) const MSG_LEN: usize = 72;
/// Receive buffer for dump replies. The kernel sizes a dump datagram by the largest `recv`
/// buffer it has seen but caps it at 32 KiB, so this always holds a whole datagram; a larger one
/// would be reported as an error (`MSG_TRUNC`), never parsed half.
const RECV_BUF: usize = 256 * 1024;
/// Socket receive buffer (`SO_RCVBUF`). The kernel fills the next dump datagram as soon as the
/// queue is less than half full, so a generous buffer keeps it from waiting on us.
const SOCKET_RCVBUF: usize = 4 << 20;

/// Transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
    fn ipproto(self) -> u8 {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP as u8,
            Proto::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

/// Address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
    pub(crate) fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// Socket state (`include/net/tcp_states.h`). UDP uses two of them: `Established` for a
/// connected socket, `Close` for an unconnected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum State {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    /// A request socket (half-open incoming connection); the kernel reports these as `SynRecv`.
    NewSynRecv = 12,
    /// Bound but neither listening nor connected (kernel 6.5+; dumped only for CAP_NET_ADMIN).
    BoundInactive = 13,
}

impl State {
    /// Every state, in kernel order.
    pub const ALL: [State; 13] = [
        State::Established,
        State::SynSent,
        State::SynRecv,
        State::FinWait1,
        State::FinWait2,
        State::TimeWait,
        State::Close,
        State::CloseWait,
        State::LastAck,
        State::Listen,
        State::Closing,
        State::NewSynRecv,
        State::BoundInactive,
    ];

    /// Parses the names [`State::as_str`] prints (and `ss`'s short `ESTAB`, `UNCONN`),
    /// case-insensitively, with `-` or `_`.
    pub fn parse(s: &str) -> Option<State> {
        let up = s.to_ascii_uppercase().replace('-', "_");
        match up.as_str() {
            "ESTAB" => Some(State::Established),
            "UNCONN" => Some(State::Close),
            "FIN_WAIT_1" => Some(State::FinWait1),
            "FIN_WAIT_2" => Some(State::FinWait2),
            _ => State::ALL.iter().copied().find(|st| st.as_str() == up),
        }
    }

    pub fn from_u8(v: u8) -> Option<State> {
        State::ALL.get(usize::from(v).checked_sub(1)?).copied()
    }

    /// The name netstat and the TCP RFC use (`ESTABLISHED`, `SYN_SENT`, `TIME_WAIT`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Established => "ESTABLISHED",
            State::SynSent => "SYN_SENT",
            State::SynRecv => "SYN_RECV",
            State::FinWait1 => "FIN_WAIT1",
            State::FinWait2 => "FIN_WAIT2",
            State::TimeWait => "TIME_WAIT",
            State::Close => "CLOSE",
            State::CloseWait => "CLOSE_WAIT",
            State::LastAck => "LAST_ACK",
            State::Listen => "LISTEN",
            State::Closing => "CLOSING",
            State::NewSynRecv => "NEW_SYN_RECV",
            State::BoundInactive => "BOUND",
        }
    }

    /// The state's bit in a [`States`] mask (`1 << state`, as the kernel's `idiag_states`).
    pub const fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

/// A set of states, as the kernel's `idiag_states` bitmask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct States(pub u32);

impl States {
    /// Every state (the kernel ignores bits it does not know).
    pub const ALL: States = States(!0);
    pub const NONE: States = States(0);

    pub fn of(states: &[State]) -> States {
        States(states.iter().fold(0, |m, s| m | s.bit()))
    }
    pub fn contains(self, s: State) -> bool {
        self.0 & s.bit() != 0
    }
    pub fn with(self, s: State) -> States {
        States(self.0 | s.bit())
    }
}

/// What `INET_DIAG_INFO` tells about a TCP socket (a subset of `struct tcp_info`). Fields the
/// running kernel's `tcp_info` is too short to hold read as 0 (bytes_sent needs 4.19+).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Consecutive retransmission timeouts of the segment at the head of the queue right now
    /// (`tcpi_retransmits`): a SYN_SENT socket that gets no answer counts up here.
    pub retransmits: u8,
    /// Retransmitted segments over the connection's life (`tcpi_total_retrans`).
    pub total_retrans: u32,
    /// Smoothed round-trip time and its variance, microseconds.
    pub rtt_us: u32,
    pub rttvar_us: u32,
    /// Smallest RTT seen, microseconds (0: none yet).
    pub min_rtt_us: u32,
    /// Retransmission timeout, microseconds.
    pub rto_us: u32,
    /// Segments sent and not yet acknowledged; segments considered lost.
    pub unacked: u32,
    pub lost: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Milliseconds since data was last sent and received.
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    /// Payload bytes the peer acknowledged (RFC 4898 HCThruOctetsAcked).
    pub bytes_acked: u64,
    /// Payload bytes received (RFC 4898 HCThruOctetsReceived).
    pub bytes_received: u64,
    /// Payload bytes sent, retransmissions included (RFC 4898 HCDataOctetsOut; 4.19+).
    pub bytes_sent: u64,
    /// Payload bytes retransmitted (4.19+).
    pub bytes_retrans: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    /// Recent delivery rate, bytes per second.
    pub delivery_rate: u64,
}

impl TcpInfo {
    /// Reads the fields of a `struct tcp_info` of any length (older kernels send shorter ones).
    pub fn parse(b: &[u8]) -> TcpInfo {
        let u8_at = |o: usize| b.get(o).copied().unwrap_or(0);
        let u32_at = |o: usize| {
            b.get(o..o + 4)
                .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        };
        let u64_at = |o: usize| {
            b.get(o..o + 8).map_or(0, |s| {
                u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
            })
        };
        // Offsets from offsetof(struct tcp_info, ...) on linux/tcp.h.
        TcpInfo {
            retransmits: u8_at(2),
            rto_us: u32_at(8),
            unacked: u32_at(24),
            lost: u32_at(32),
            last_data_sent_ms: u32_at(44),
            last_data_recv_ms: u32_at(52),
            rtt_us: u32_at(68),
            rttvar_us: u32_at(72),
            snd_cwnd: u32_at(80),
            total_retrans: u32_at(100),
            bytes_acked: u64_at(120),
            bytes_received: u64_at(128),
            segs_out: u32_at(136),
            segs_in: u32_at(140),
            min_rtt_us: u32_at(148),
            delivery_rate: u64_at(160),
            bytes_sent: u64_at(200),
            bytes_retrans: u64_at(208),
        }
    }
}

/// One socket as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    pub proto: Proto,
    pub family: Family,
    /// For TIME_WAIT sockets the kernel reports the TIME_WAIT sub-state (TIME_WAIT or
    /// FIN_WAIT2); request sockets come as `SynRecv`.
    pub state: State,
    pub local: SocketAddr,
    /// Port 0 and the unspecified address for a socket without a peer (listening, unconnected).
    pub remote: SocketAddr,
    /// The socket's owner (`sk_uid`: the creating process's fsuid, what `meta skuid` matches).
    /// 0 for mini sockets, which have no owner.
    pub uid: u32,
    /// Inode of the socket (`socket:[INODE]` in `/proc/PID/fd`); 0 for mini sockets.
    pub inode: u64,
    /// Interface the socket is bound to (`SO_BINDTODEVICE`), 0 for none.
    pub ifindex: u32,
    /// Bytes waiting in the receive and send queues; for a listener, the accept queue length
    /// and its limit.
    pub recv_queue: u32,
    pub send_queue: u32,
    /// The kernel's socket cookie (stable for the socket's life, unlike the port pair).
    pub cookie: u64,
    /// The socket's `SO_MARK`. The kernel tells it only to CAP_NET_ADMIN (`None` otherwise, and
    /// for mini sockets).
    pub mark: Option<u32>,
    /// TCP only, and only for full sockets of a query that asked for it.
    pub tcp: Option<TcpInfo>,
}

impl DiagSocket {
    /// Whether the socket has a peer (a remote port other than 0).
    pub fn has_remote(&self) -> bool {
        self.remote.port() != 0 || !self.remote.ip().is_unspecified()
    }
}

/// What [`SockDiag::dump_into`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub tcp: bool,
    pub udp: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Only sockets in these states (the kernel filters).
    pub states: States,
    /// Ask for `tcp_info` (about 240 bytes more per TCP socket on the wire).
    pub tcp_info: bool,
}

impl Default for Query {
    /// TCP and UDP, IPv4 and IPv6, every state, with `tcp_info`.
    fn default() -> Query {
        Query {
            tcp: true,
            udp: true,
            ipv4: true,
            ipv6: true,
            states: States::ALL,
            tcp_info: true,
        }
    }
}

/// A sock_diag netlink socket, kept open for repeated dumps (e.g. a live view). It lives in the
/// network namespace of the thread that opened it.
#[derive(Debug)]
pub struct SockDiag {
    sock: nl::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl SockDiag {
    /// Opens the socket in the calling thread's network namespace. No privilege is needed to
    /// list sockets; `BoundInactive` sockets and a few attributes are reserved to CAP_NET_ADMIN.
    pub fn open() -> Result<SockDiag, NlError> {
        let sock = nl::Socket::open(NETLINK_SOCK_DIAG)?;
        // Best effort: without the privilege the kernel caps the buffer at rmem_max, which is
        // still enough (it only makes the kernel wait for our next recv).
        let _ = sock.set_recv_buffer(SOCKET_RCVBUF);
        Ok(SockDiag {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Appends every socket `q` selects to `out`: TCP before UDP, IPv4 before IPv6, in the
    /// kernel's hash order within each. Four dumps at most (one per family and protocol).
    pub fn dump_into(&mut self, q: &Query, out: &mut Vec<DiagSocket>) -> Result<(), NlError> {
        for (want_proto, proto) in [(q.tcp, Proto::Tcp), (q.udp, Proto::Udp)] {
            for (want_family, family) in [(q.ipv4, Family::V4), (q.ipv6, Family::V6)] {
                if want_proto && want_family && q.states != States::NONE {
                    let info = q.tcp_info && proto == Proto::Tcp;
                    self.dump_one(family, proto, q.states, info, out)?;
                }
            }
        }
        Ok(())
    }

    /// The socket of `proto` whose local and remote address are `local` and `remote`, as the
    /// kernel would find it for a packet from `remote` to `local`: the connected socket if there
    /// is one, else a listening (TCP) or bound unconnected (UDP) socket on `local` that would
    /// take it. IPv4-mapped IPv6 addresses are looked up as IPv4; a dual-stack IPv6 socket that
    /// owns the connection is found either way (and reported as IPv6). `None` when no socket
    /// matches, or the two addresses are of different families.
    pub fn lookup(
        &mut self,
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Option<DiagSocket>, NlError> {
        let (l, r) = (local.ip().to_canonical(), remote.ip().to_canonical());
        let family = match (l, r) {
            (IpAddr::V4(_), IpAddr::V4(_)) => Family::V4,
            (IpAddr::V6(_), IpAddr::V6(_)) => Family::V6,
            _ => return Ok(None),
        };
        let (mut src, mut dst) = (
            SocketAddr::new(l, local.port()),
            SocketAddr::new(r, remote.port()),
        );
        if proto == Proto::Udp {
            // udp_dump_one() hands idiag_src/sport to the lookup as the packet's source, i.e.
            // the remote end ("src and dst are swapped for historical reasons" in udp_diag.c),
            // while TCP's inet_diag_find_one_icsk() reads idiag_src as the local end.
            std::mem::swap(&mut src, &mut dst);
        }
        self.seq = self.seq.wrapping_add(1);
        let req = request(
            NLM_F_REQUEST | NLM_F_ACK,
            self.seq,
            family,
            proto,
            proto == Proto::Tcp,
            States::ALL,
            Some((src, dst)),
        );
        let mut found = None;
        let res = self.sock.request(&req, |m| {
            if m.header.ty == SOCK_DIAG_BY_FAMILY {
                found = parse_socket(m.payload, proto)?;
            }
            Ok(())
        });
        match res {
            Ok(()) => Ok(found),
            Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn dump_one(
        &mut self,
        family: Family,
        proto: Proto,
        states: States,
        info: bool,
        out: &mut Vec<DiagSocket>,
    ) -> Result<(), NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = request(
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            proto,
            info,
            states,
            None,
        );
        self.sock.send(&req)?;
        let res = self.read_dump(seq, proto, out);
        if res.is_err() {
            // A dump that ended early is still running in the kernel and would answer the next
            // request on this socket with EBUSY; start over with a fresh socket.
            if let Ok(fresh) = nl::Socket::open(NETLINK_SOCK_DIAG) {
                let _ = fresh.set_recv_buffer(SOCKET_RCVBUF);
                self.sock = fresh;
            }
        }
        res
    }

    fn read_dump(
        &mut self,
        seq: u32,
        proto: Proto,
        out: &mut Vec<DiagSocket>,
    ) -> Result<(), NlError> {
        read_dump_with(&self.sock, &mut self.buf, seq, |payload| {
            if let Some(s) = parse_socket(payload, proto)? {
                out.push(s);
            }
            Ok(())
        })
    }

    /// Whether this kernel can destroy TCP and UDP sockets (`CONFIG_INET_DIAG_DESTROY`). Asks it
    /// to destroy a socket that does not exist: a kernel with the handler looks it up and
    /// answers `ENOENT`, one without answers `EOPNOTSUPP` before looking. Nothing is touched
    /// either way.
    pub fn destroy_supported(&mut self) -> Result<bool, NlError> {
        let none = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        for proto in [Proto::Tcp, Proto::Udp] {
            self.seq = self.seq.wrapping_add(1);
            let req = request(NLM_F_REQUEST | NLM_F_ACK, self.seq, Family::V4, proto, false, States::ALL, Some((none, none)));
            match self.sock.request_ack(&req) {
                Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => {}
                Err(NlError::Kernel(e)) if e.errno == libc::EOPNOTSUPP => return Ok(false),
                // An ack would mean the kernel destroyed a socket with no address and port:
                // there is none, so it is the same answer as ENOENT.
                Ok(()) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Destroys the socket `s` names (as a dump or lookup reported it: family, addresses, bound
    /// interface and cookie), as `ss -K` does. Its owner's next call fails with `ECONNABORTED`;
    /// a TCP socket sends its peer a reset. `Ok(false)` when the socket is gone already, or is
    /// not the same socket any more (the cookie differs: the port pair was reused). Needs
    /// CAP_NET_ADMIN (`EPERM`) and `CONFIG_INET_DIAG_DESTROY` (`EOPNOTSUPP`; see
    /// [`SockDiag::destroy_supported`]).
    pub fn destroy(&mut self, s: &DiagSocket) -> Result<bool, NlError> {
        self.seq = self.seq.wrapping_add(1);
        // Unlike the exact lookup of a UDP socket (see `lookup`), both protocols' destroy
        // handlers read idiag_src as the local end.
        let req = exact_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, self.seq, s);
        match self.sock.request_ack(&req) {
            Ok(()) => Ok(true),
            Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Reads the replies of the dump with sequence number `seq` on `sock` into `buf`, one datagram at
/// a time, and hands each `SOCK_DIAG_BY_FAMILY` payload to `each`, until `NLMSG_DONE`. A DONE
/// carrying an error (a protocol the kernel has no diag handler for) is that error.
pub(crate) fn read_dump_with(
    sock: &nl::Socket,
    buf: &mut [u8],
    seq: u32,
    mut each: impl FnMut(&[u8]) -> Result<(), NlError>,
) -> Result<(), NlError> {
    let port = sock.port_id();
    // Bounded: a dump ends with NLMSG_DONE or an error; every recv consumes one datagram.
    loop {
        let n = recv_whole(sock.as_raw_fd(), buf)?;
        for m in Messages::new(&buf[..n]) {
            let m = m?;
            // Replies carry our sequence number and port id; anything else is stale.
            if m.header.seq != seq || (m.header.pid != port && m.header.pid != 0) {
                continue;
            }
            match m.header.ty {
                // inet_diag dumps never set NLM_F_DUMP_INTR: the walk is not a snapshot and
                // sockets that come and go during it may be missed or listed twice, like
                // with `ss`. That is fine for a listing.
                NLMSG_DONE => return nl::done_result(&m),
                NLMSG_ERROR => nl::ack_result(&m)?,
                SOCK_DIAG_BY_FAMILY => each(m.payload)?,
                _ => {}
            }
        }
    }
}

/// Every socket `q` selects, in the calling thread's network namespace.
pub fn dump(q: &Query) -> Result<Vec<DiagSocket>, NlError> {
    let mut out = Vec::new();
    SockDiag::open()?.dump_into(q, &mut out)?;
    Ok(out)
}

/// [`SockDiag::lookup`] on a socket of its own: the socket with this 5-tuple, in the calling
/// thread's network namespace.
pub fn lookup(
    proto: Proto,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<Option<DiagSocket>, NlError> {
    SockDiag::open()?.lookup(proto, local, remote)
}

/// Receives one datagram into `buf`; a datagram larger than `buf` is an error, never cut.
pub(crate) fn recv_whole(fd: i32, buf: &mut [u8]) -> Result<usize, NlError> {
    loop {
        // SAFETY: buf is writable for its length. MSG_TRUNC makes the kernel return the real
        // length of the datagram, so a cut one is detected.
        let rc = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if rc >= 0 {
            let n = rc as usize;
            if n > buf.len() {
                return Err(NlError::Malformed(format!(
                    "sock_diag datagram of {n} bytes does not fit the {} byte buffer",
                    buf.len()
                )));
            }
            return Ok(n);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return Err(NlError::Io {
            context: "recv(sock_diag)",
            source: err,
        });
    }
}

/// A `SOCK_DIAG_BY_FAMILY` request: a dump (`id` None) or an exact lookup (`id` = the addresses
/// to put into `idiag_src`/`idiag_dst`).
fn request(
    flags: u16,
    seq: u32,
    family: Family,
    proto: Proto,
    info: bool,
    states: States,
    id: Option<(SocketAddr, SocketAddr)>,
) -> Vec<u8> {
    // idiag_ext: bit (INET_DIAG_INFO - 1) asks for the INFO attribute.
    let ext = if info { 1 << (INET_DIAG_INFO - 1) } else { 0 };
    let mut r = req_v2(family.af(), proto.ipproto(), ext, states);
    // The socket id: zero for a dump (ignored), the 5-tuple for a lookup.
    let id_at = 8;
    if let Some((src, dst)) = id {
        r[id_at..id_at + 2].copy_from_slice(&src.port().to_be_bytes());
        r[id_at + 2..id_at + 4].copy_from_slice(&dst.port().to_be_bytes());
        put_addr(&mut r[id_at + 4..id_at + 20], src.ip());
        put_addr(&mut r[id_at + 20..id_at + 36], dst.ip());
    }
    r[id_at + 40..id_at + 44].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    r[id_at + 44..id_at + 48].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    message(SOCK_DIAG_BY_FAMILY, flags, seq, &r)
}

/// A request naming exactly the socket `s`: its family, protocol, addresses as the kernel gave
/// them (an IPv4-mapped peer stays mapped), bound interface and cookie, so that only that
/// socket matches, not a later one on the same port pair.
fn exact_request(ty: u16, flags: u16, seq: u32, s: &DiagSocket) -> Vec<u8> {
    let mut r = req_v2(s.family.af(), s.proto.ipproto(), 0, States::ALL);
    let id_at = 8;
    r[id_at..id_at + 2].copy_from_slice(&s.local.port().to_be_bytes());
    r[id_at + 2..id_at + 4].copy_from_slice(&s.remote.port().to_be_bytes());
    put_addr(&mut r[id_at + 4..id_at + 20], s.local.ip());
    put_addr(&mut r[id_at + 20..id_at + 36], s.remote.ip());
    r[id_at + 36..id_at + 40].copy_from_slice(&s.ifindex.to_ne_bytes());
    r[id_at + 40..id_at + 44].copy_from_slice(&(s.cookie as u32).to_ne_bytes());
    r[id_at + 44..id_at + 48].copy_from_slice(&((s.cookie >> 32) as u32).to_ne_bytes());
    message(ty, flags, seq, &r)
}

/// The fixed part of an `inet_diag_req_v2`, socket id zero. For raw sockets
/// (`inet_diag_req_raw`) the pad byte is `sdiag_raw_protocol`, which a dump ignores.
pub(crate) fn req_v2(af: u8, ipproto: u8, ext: u8, states: States) -> [u8; REQ_LEN] {
    let mut r = [0u8; REQ_LEN];
    r[0] = af;
    r[1] = ipproto;
    r[2] = ext;
    r[4..8].copy_from_slice(&states.0.to_ne_bytes());
    r
}

/// One sock_diag message of type `ty` with a fixed request struct and no attributes.
pub(crate) fn message(ty: u16, flags: u16, seq: u32, req: &[u8]) -> Vec<u8> {
    let mut b = nl::MsgBuf::with_capacity(nl::NLMSG_HDRLEN + req.len());
    let m = b.begin(ty, flags, seq);
    b.put_header(req);
    b.end(m).expect("a fixed-size request without attributes");
    b.into_bytes()
}

fn put_addr(dst: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => dst[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => dst[..16].copy_from_slice(&a.octets()),
    }
}

pub(crate) fn get_addr(family: Family, b: &[u8], port: [u8; 2]) -> SocketAddr {
    let port = u16::from_be_bytes(port);
    let ip = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        Family::V6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    SocketAddr::new(ip, port)
}

/// Parses one `inet_diag_msg` and its attributes. `None` for a family or state this module does
/// not know (newer kernels may add some).
fn parse_socket(p: &[u8], proto: Proto) -> Result<Option<DiagSocket>, NlError> {
    if p.len() < MSG_LEN {
        return Err(NlError::Malformed(format!(
            "inet_diag_msg of {} bytes, want {MSG_LEN}",
            p.len()
        )));
    }
    let family = match i32::from(p[0]) {
        libc::AF_INET => Family::V4,
        libc::AF_INET6 => Family::V6,
        _ => return Ok(None),
    };
    let Some(state) = State::from_u8(p[1]) else {
        return Ok(None);
    };
    let u32_at = |o: usize| u32::from_ne_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
    let id = 4;
    let local = get_addr(family, &p[id + 4..id + 20], [p[id], p[id + 1]]);
    let remote = get_addr(family, &p[id + 20..id + 36], [p[id + 2], p[id + 3]]);
    let cookie = u64::from(u32_at(id + 40)) | (u64::from(u32_at(id + 44)) << 32);
    let mut s = DiagSocket {
        proto,
        family,
        state,
        local,
        remote,
        uid: u32_at(64),
        inode: u64::from(u32_at(68)),
        ifindex: u32_at(id + 36),
        recv_queue: u32_at(56),
        send_queue: u32_at(60),
        cookie,
        mark: None,
        tcp: None,
    };
    let m = Message {
        header: Default::default(),
        payload: p,
    };
    for a in m.attrs(MSG_LEN) {
        let a = a?;
        match a.ty {
            INET_DIAG_INFO if proto == Proto::Tcp => s.tcp = Some(TcpInfo::parse(a.data)),
            INET_DIAG_MARK => s.mark = a.u32().ok(),
            _ => {}
        }
    }
    Ok(Some(s))
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_inet_diag_req_v2() {
        let local: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let remote: SocketAddr = "198.51.100.7:443".parse().unwrap();
        let b = request(
            NLM_F_REQUEST | NLM_F_ACK,
            9,
            Family::V4,
            Proto::Tcp,
            true,
            States::of(&[State::Established, State::Listen]),
            Some((local, remote)),
        );
        assert_eq!(b.len(), 16 + 56);
        let h = nl::NlMsgHdr::parse(&b).unwrap();
        assert_eq!((h.len, h.ty, h.flags, h.seq), (72, 20, 5, 9));
        let r = &b[16..];
        assert_eq!(&r[..4], &[libc::AF_INET as u8, 6, 2, 0]);
        assert_eq!(u32::from_ne_bytes(r[4..8].try_into().unwrap()), (1 << 1) | (1 << 10));
        assert_eq!(&r[8..10], &40000u16.to_be_bytes());
        assert_eq!(&r[10..12], &443u16.to_be_bytes());
        assert_eq!(&r[12..16], &[192, 0, 2, 1]);
        assert_eq!(&r[28..32], &[198, 51, 100, 7]);
        assert_eq!(&r[48..56], &[0xff; 8]);
    }

    #[test]
    fn reply_parses_addresses_owner_and_tcp_info() {
        let mut p = vec![0u8; MSG_LEN];
        p[0] = libc::AF_INET6 as u8;
        p[1] = 2; // SYN_SENT
        p[4..6].copy_from_slice(&51000u16.to_be_bytes());
        p[6..8].copy_from_slice(&80u16.to_be_bytes());
        let l: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let r: Ipv6Addr = "2001:db8::2".parse().unwrap();
        p[8..24].copy_from_slice(&l.octets());
        p[24..40].copy_from_slice(&r.octets());
        p[64..68].copy_from_slice(&65534u32.to_ne_bytes());
        p[68..72].copy_from_slice(&123456u32.to_ne_bytes());
        // INET_DIAG_INFO with a tcp_info of 232 bytes.
        let mut ti = vec![0u8; 232];
        ti[2] = 3;
        ti[68..72].copy_from_slice(&1500u32.to_ne_bytes());
        ti[128..136].copy_from_slice(&777u64.to_ne_bytes());
        ti[200..208].copy_from_slice(&999u64.to_ne_bytes());
        p.extend_from_slice(&((4 + ti.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        p.extend_from_slice(&ti);
        let s = parse_socket(&p, Proto::Tcp).unwrap().unwrap();
        assert_eq!(s.family, Family::V6);
        assert_eq!(s.state, State::SynSent);
        assert_eq!(s.local, "[2001:db8::1]:51000".parse().unwrap());
        assert_eq!(s.remote, "[2001:db8::2]:80".parse().unwrap());
        assert_eq!((s.uid, s.inode), (65534, 123456));
        let t = s.tcp.unwrap();
        assert_eq!((t.retransmits, t.rtt_us, t.bytes_received, t.bytes_sent), (3, 1500, 777, 999));
        // A short tcp_info (old kernel) leaves the missing fields at 0.
        assert_eq!(TcpInfo::parse(&ti[..160]).bytes_sent, 0);
        assert_eq!(TcpInfo::parse(&ti[..160]).bytes_received, 777);
        // Too short a message is an error, not a panic.
        assert!(parse_socket(&p[..40], Proto::Tcp).is_err());
    }

    #[test]
    fn state_bits_and_names() {
        assert_eq!(State::from_u8(10), Some(State::Listen));
        assert_eq!(State::from_u8(0), None);
        assert_eq!(State::from_u8(14), None);
        assert_eq!(State::TimeWait.bit(), 1 << 6);
        assert!(States::of(&[State::SynSent]).contains(State::SynSent));
        assert!(!States::of(&[State::SynSent]).contains(State::Listen));
        assert_eq!(State::SynSent.as_str(), "SYN_SENT");
    }
}
