//! A small, protocol-neutral netlink layer: raw sockets, a message builder and an attribute parser.
//!
//! Why hand-written: leash must put one whole nftables table into ONE atomic nfnetlink batch and
//! control every byte of it. The netlink-packet-netfilter crate models only a few nf_tables
//! expressions (no `ct`, `counter`, `log`, `reject`, `range`, no set-element timeouts) and builds
//! messages one at a time, so we could not reproduce nft's bytecode or its batch exactly. The
//! protocol itself is simple (a 16-byte header, 4-byte aligned TLV attributes), so a few hundred
//! lines over `libc` give us exact control with no dependency beyond libc. The same layer serves
//! rtnetlink (links, addresses and routes in test namespaces) because nothing here knows about any
//! particular netlink family: family headers and attribute numbers belong to the callers.
//!
//! Layout reminders (see `netlink(7)`):
//! - a message is `nlmsghdr` (len, type, flags, seq, pid), then a family header (e.g. `nfgenmsg`,
//!   `ifinfomsg`), then attributes, all padded to 4 bytes;
//! - an attribute is `nlattr` (u16 len incl. the 4-byte header, u16 type), then its payload padded
//!   to 4 bytes; a nested attribute carries `NLA_F_NESTED` in its type and holds attributes;
//! - the kernel answers a request flagged `NLM_F_ACK` with an `NLMSG_ERROR` message whose error
//!   code is 0 (an ack) or a negative errno, optionally followed by extended-ack attributes.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Netlink protocol numbers for [`Socket::open`].
pub const NETLINK_ROUTE: i32 = libc::NETLINK_ROUTE;
pub const NETLINK_NETFILTER: i32 = libc::NETLINK_NETFILTER;

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Length of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;
/// Everything in a netlink message is aligned to this many bytes.
pub const NLMSG_ALIGNTO: usize = 4;
/// Largest payload an attribute can hold (its u16 length includes the 4-byte header).
pub const NLA_MAX_PAYLOAD: usize = u16::MAX as usize - NLA_HDRLEN;

// Control message types (`linux/netlink.h`).
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;
/// Types below this are reserved for control messages.
pub const NLMSG_MIN_TYPE: u16 = 0x10;

// Flags of every request.
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_ECHO: u16 = 0x08;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
// Flags of GET requests.
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
// Flags of NEW requests.
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
// Flags of NLMSG_ERROR replies.
/// The error message holds only the header of the failed request, not its payload.
pub const NLM_F_CAPPED: u16 = 0x100;
/// Extended-ack attributes follow the (possibly capped) failed request.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

// Attribute type flags.
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// Socket options at level SOL_NETLINK.
pub const SOL_NETLINK: i32 = 270;
/// Error messages carry only the header of the failed request (no echo of a 40 MB batch).
pub const NETLINK_CAP_ACK: i32 = 10;
/// Error messages carry extended-ack attributes (a text message and the offending offset).
pub const NETLINK_EXT_ACK: i32 = 11;
/// The kernel checks dump requests strictly (rtnetlink filters dumps by the header fields).
pub const NETLINK_GET_STRICT_CHK: i32 = 12;

// Extended-ack attributes (`enum nlmsgerr_attrs`).
pub const NLMSGERR_ATTR_MSG: u16 = 1;
pub const NLMSGERR_ATTR_OFFS: u16 = 2;
pub const NLMSGERR_ATTR_COOKIE: u16 = 3;
pub const NLMSGERR_ATTR_POLICY: u16 = 4;
pub const NLMSGERR_ATTR_MISS_TYPE: u16 = 5;
pub const NLMSGERR_ATTR_MISS_NEST: u16 = 6;

/// Rounds `len` up to the netlink alignment.
pub const fn align(len: usize) -> usize {
    (len + NLMSG_ALIGNTO - 1) & !(NLMSG_ALIGNTO - 1)
}

/// Errors of this layer.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    /// A system call failed.
    #[error("{context}: {}", errno_text(.source.raw_os_error().unwrap_or(0)))]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel answered a request with an error.
    #[error("{0}")]
    Kernel(KernelError),
    /// A reply did not parse.
    #[error("malformed netlink reply: {0}")]
    Malformed(String),
    /// An attribute (usually a nested one) grew beyond 65535 bytes.
    #[error("netlink attribute type {ty} is {len} bytes, more than an attribute can hold (65535)")]
    AttrTooLong { ty: u16, len: usize },
}

impl NlError {
    fn io(context: &'static str) -> NlError {
        NlError::Io {
            context,
            source: io::Error::last_os_error(),
        }
    }
}

/// An error the kernel returned in an `NLMSG_ERROR` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// Positive errno (the message carries it negated).
    pub errno: i32,
    /// Header of the request the error belongs to (its `seq` identifies it).
    pub request: NlMsgHdr,
    /// Extended-ack text (`NLMSGERR_ATTR_MSG`), when the kernel gave one.
    pub message: Option<String>,
    /// Extended-ack offset of the offending attribute within the request (`NLMSGERR_ATTR_OFFS`).
    pub offset: Option<u32>,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&errno_text(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for KernelError {}

/// Symbolic name of an errno value (`EPERM`), or `E<number>` for rare ones.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENOBUFS => "ENOBUFS",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

/// `EPERM: Operation not permitted (run as root)`: name, libc's text and a hint for the usual
/// cause. Used for every errno this crate reports.
pub fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    // io::Error's Display appends " (os error N)"; the name already identifies it.
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let hint = match errno {
        libc::EPERM => " (run as root: CAP_NET_ADMIN is needed)",
        libc::ENOBUFS => " (a netlink buffer overflowed: replies were lost)",
        _ => "",
    };
    format!("{}: {text}{hint}", errno_name(errno))
}

/// `struct nlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NlMsgHdr {
    pub len: u32,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

impl NlMsgHdr {
    /// Parses the first 16 bytes of `b` (which must hold them).
    pub fn parse(b: &[u8]) -> Option<NlMsgHdr> {
        if b.len() < NLMSG_HDRLEN {
            return None;
        }
        Some(NlMsgHdr {
            len: ne_u32(&b[0..4]),
            ty: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: ne_u32(&b[8..12]),
            pid: ne_u32(&b[12..16]),
        })
    }
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

// ---------------------------------------------------------------------------------------------
// Socket
// ---------------------------------------------------------------------------------------------

/// A bound `AF_NETLINK` raw socket. It lives in the network namespace of the thread that opened
/// it, whatever that thread does later.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    port_id: u32,
    /// Receive buffer, kept between calls; grown to fit the largest datagram seen.
    rbuf: Vec<u8>,
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Size of the receive buffer a socket starts with; it grows when a datagram is larger.
const INITIAL_RECV_BUF: usize = 64 * 1024;

impl Socket {
    /// Opens a netlink socket of `protocol` (e.g. [`NETLINK_NETFILTER`], [`NETLINK_ROUTE`]) and
    /// binds it to a kernel-assigned port id.
    pub fn open(protocol: i32) -> Result<Socket, NlError> {
        // SAFETY: plain system call; the returned fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(NlError::io("socket(AF_NETLINK)"));
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr = sockaddr_nl(0);
        let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: addr is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                len,
            )
        };
        if rc < 0 {
            return Err(NlError::io("bind(AF_NETLINK)"));
        }
        let mut alen = len;
        // SAFETY: addr is writable and alen holds its size.
        let rc = unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                &mut addr as *mut _ as *mut libc::sockaddr,
                &mut alen,
            )
        };
        if rc < 0 {
            return Err(NlError::io("getsockname(AF_NETLINK)"));
        }
        Ok(Socket {
            fd,
            port_id: addr.nl_pid,
            rbuf: vec![0; INITIAL_RECV_BUF],
        })
    }

    /// The port id the kernel assigned; replies carry it in `nlmsg_pid`.
    pub fn port_id(&self) -> u32 {
        self.port_id
    }

    fn setsockopt_int(
        &self,
        level: i32,
        opt: i32,
        val: i32,
        what: &'static str,
    ) -> Result<(), NlError> {
        // SAFETY: val is a valid c_int for the given length.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                &val as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(NlError::io(what))
        } else {
            Ok(())
        }
    }

    /// Sets a boolean `SOL_NETLINK` option such as [`NETLINK_EXT_ACK`] or [`NETLINK_CAP_ACK`].
    pub fn set_netlink_option(&self, opt: i32, on: bool) -> Result<(), NlError> {
        self.setsockopt_int(SOL_NETLINK, opt, i32::from(on), "setsockopt(SOL_NETLINK)")
    }

    /// Asks for extended acks (error text and offset) and capped error messages (only the header
    /// of a failed request is echoed back, which matters for multi-megabyte batches).
    pub fn enable_ext_ack(&self) -> Result<(), NlError> {
        self.set_netlink_option(NETLINK_EXT_ACK, true)?;
        self.set_netlink_option(NETLINK_CAP_ACK, true)
    }

    /// Sets the send buffer to at least `bytes`. A netlink `sendmsg` is one skb, so the buffer
    /// must hold the largest message or batch we send in one call. `SO_SNDBUFFORCE` (root) ignores
    /// `net.core.wmem_max`; without the privilege we fall back to `SO_SNDBUF`.
    pub fn set_send_buffer(&self, bytes: usize) -> Result<(), NlError> {
        let v = clamp_buf(bytes);
        self.setsockopt_int(
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            v,
            "setsockopt(SO_SNDBUFFORCE)",
        )
        .or_else(|_| {
            self.setsockopt_int(
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                v,
                "setsockopt(SO_SNDBUF)",
            )
        })
    }

    /// Sets the receive buffer to at least `bytes` (`SO_RCVBUFFORCE`, falling back to
    /// `SO_RCVBUF`). Acks the kernel cannot queue are dropped and the next receive fails with
    /// `ENOBUFS`, so size it for every reply a batch produces.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<(), NlError> {
        let v = clamp_buf(bytes);
        self.setsockopt_int(
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            v,
            "setsockopt(SO_RCVBUFFORCE)",
        )
        .or_else(|_| {
            self.setsockopt_int(
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                v,
                "setsockopt(SO_RCVBUF)",
            )
        })
    }

    /// Sends `buf` (one or more complete messages) to the kernel in one `sendto`, which the kernel
    /// processes synchronously: when this returns, all replies that are not dump output are queued.
    pub fn send(&self, buf: &[u8]) -> Result<(), NlError> {
        let addr = sockaddr_nl(0);
        loop {
            // SAFETY: buf and addr are valid for the lengths given.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr() as *const libc::c_void,
                    buf.len(),
                    0,
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(NlError::io("sendto(netlink)"));
            }
            if rc as usize != buf.len() {
                return Err(NlError::Malformed(format!(
                    "short netlink send: {rc} of {} bytes",
                    buf.len()
                )));
            }
            return Ok(());
        }
    }

    /// Receives one datagram (one or more messages). With `block == false` returns `Ok(None)`
    /// when nothing is queued. The buffer grows to fit a datagram of any size (it is peeked with
    /// `MSG_TRUNC` first), so nothing is ever cut off.
    pub fn recv(&mut self, block: bool) -> Result<Option<&[u8]>, NlError> {
        let base = if block { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // Peek the datagram length without consuming it.
            let n = self.recv_raw(base | libc::MSG_PEEK | libc::MSG_TRUNC)?;
            let Some(n) = n else { return Ok(None) };
            if n > self.rbuf.len() {
                self.rbuf.resize(n.next_power_of_two(), 0);
            }
            match self.recv_raw(base)? {
                Some(m) => return Ok(Some(&self.rbuf[..m])),
                None => continue,
            }
        }
    }

    fn recv_raw(&mut self, flags: i32) -> Result<Option<usize>, NlError> {
        loop {
            // SAFETY: rbuf is writable for its length.
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.rbuf.as_mut_ptr() as *mut libc::c_void,
                    self.rbuf.len(),
                    flags,
                )
            };
            if rc >= 0 {
                return Ok(Some(rc as usize));
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if flags & libc::MSG_DONTWAIT != 0 => return Ok(None),
                _ => return Err(NlError::io("recv(netlink)")),
            }
        }
    }

    /// Receives every datagram already queued, without blocking, and appends the messages to
    /// `out` (datagrams hold whole aligned messages, so the concatenation parses as one stream).
    /// Returns the number of datagrams read.
    pub fn drain_queued(&mut self, out: &mut Vec<u8>) -> Result<usize, NlError> {
        let mut count = 0;
        while let Some(d) = self.recv(false)? {
            out.extend_from_slice(d);
            count += 1;
        }
        Ok(count)
    }

    /// Sends one request (which should carry `NLM_F_ACK`) and waits for its ack; returns the
    /// kernel's error if there is one. Replies to other sequence numbers are skipped.
    pub fn request_ack(&mut self, msg: &[u8]) -> Result<(), NlError> {
        let hdr = NlMsgHdr::parse(msg)
            .ok_or_else(|| NlError::Malformed("request shorter than a header".into()))?;
        self.send(msg)?;
        loop {
            let d = self.recv(true)?.expect("blocking recv returns data");
            for m in Messages::new(d) {
                let m = m?;
                if m.header.seq != hdr.seq || m.header.ty != NLMSG_ERROR {
                    continue;
                }
                let e = parse_error(&m)?;
                return if e.errno == 0 {
                    Ok(())
                } else {
                    Err(NlError::Kernel(e))
                };
            }
        }
    }

    /// Sends a dump request (flags should include `NLM_F_REQUEST | NLM_F_DUMP`) and calls `each`
    /// for every reply message of that sequence number until `NLMSG_DONE`. A dump whose
    /// `NLM_F_DUMP_INTR` flag is set changed while it ran; this returns `EINTR` (retry it).
    pub fn dump(
        &mut self,
        msg: &[u8],
        mut each: impl FnMut(&Message<'_>) -> Result<(), NlError>,
    ) -> Result<(), NlError> {
        self.dump_while(msg, |m| each(m).map(|()| true)).map(|_| ())
    }

    /// Like [`Socket::dump`], but stops reading as soon as `each` returns `false`, and returns
    /// whether the dump ran to its end. A dump stopped early is still open in the kernel: do not
    /// start another dump on this socket, drop it (this is how to bound the cost of a dump that
    /// may be huge, such as the elements of a million-element set).
    pub fn dump_while(
        &mut self,
        msg: &[u8],
        mut each: impl FnMut(&Message<'_>) -> Result<bool, NlError>,
    ) -> Result<bool, NlError> {
        let hdr = NlMsgHdr::parse(msg)
            .ok_or_else(|| NlError::Malformed("request shorter than a header".into()))?;
        self.send(msg)?;
        let mut interrupted = false;
        loop {
            let d = self.recv(true)?.expect("blocking recv returns data");
            // Copy out so `each` may not alias the receive buffer (it is small: one datagram).
            let d = d.to_vec();
            for m in Messages::new(&d) {
                let m = m?;
                if m.header.seq != hdr.seq {
                    continue;
                }
                interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
                match m.header.ty {
                    NLMSG_DONE => {
                        if interrupted {
                            return Err(NlError::Io {
                                context: "netlink dump interrupted by a concurrent change",
                                source: io::Error::from_raw_os_error(libc::EINTR),
                            });
                        }
                        return Ok(true);
                    }
                    NLMSG_ERROR => {
                        let e = parse_error(&m)?;
                        if e.errno != 0 {
                            return Err(NlError::Kernel(e));
                        }
                    }
                    NLMSG_NOOP => {}
                    _ => {
                        if !each(&m)? {
                            return Ok(false);
                        }
                    }
                }
            }
        }
    }

    /// Sends one request and calls `each` for every reply of its sequence number until the
    /// request's ack (it should carry `NLM_F_ACK`) or error. For GET requests that are not dumps,
    /// which the kernel answers with one or more messages and then the ack.
    pub fn request(
        &mut self,
        msg: &[u8],
        mut each: impl FnMut(&Message<'_>) -> Result<(), NlError>,
    ) -> Result<(), NlError> {
        let hdr = NlMsgHdr::parse(msg)
            .ok_or_else(|| NlError::Malformed("request shorter than a header".into()))?;
        self.send(msg)?;
        loop {
            let d = self
                .recv(true)?
                .expect("blocking recv returns data")
                .to_vec();
            for m in Messages::new(&d) {
                let m = m?;
                if m.header.seq != hdr.seq {
                    continue;
                }
                if m.header.ty == NLMSG_ERROR {
                    let e = parse_error(&m)?;
                    return if e.errno == 0 {
                        Ok(())
                    } else {
                        Err(NlError::Kernel(e))
                    };
                }
                each(&m)?;
            }
        }
    }
}

fn clamp_buf(bytes: usize) -> i32 {
    // The kernel doubles the value it is given (bookkeeping overhead) and caps at INT_MAX.
    i32::try_from(bytes.div_ceil(2))
        .unwrap_or(i32::MAX / 2)
        .max(4096)
}

fn sockaddr_nl(pid: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; all-zero is valid.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a.nl_pid = pid;
    a
}

// ---------------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------------

/// Builds one or more netlink messages back to back in one buffer (a batch is just that).
///
/// Lengths are patched when a message or nest is closed. An attribute that would exceed 65535
/// bytes is remembered and reported by [`MsgBuf::end`], so callers need one `?` per message rather
/// than one per attribute.
#[derive(Debug, Default, Clone)]
pub struct MsgBuf {
    buf: Vec<u8>,
    /// First attribute that did not fit: (type, length).
    overflow: Option<(u16, usize)>,
}

/// Start of an open message; close it with [`MsgBuf::end`].
#[derive(Debug)]
#[must_use = "close the message with MsgBuf::end"]
pub struct MsgStart(usize);

/// Start of an open nested attribute; close it with [`MsgBuf::end_nested`].
#[derive(Debug)]
#[must_use = "close the nest with MsgBuf::end_nested"]
pub struct NestStart(usize);

impl MsgBuf {
    pub fn new() -> MsgBuf {
        MsgBuf::default()
    }

    pub fn with_capacity(bytes: usize) -> MsgBuf {
        MsgBuf {
            buf: Vec::with_capacity(bytes),
            overflow: None,
        }
    }

    /// Bytes written so far (all messages).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn pad(&mut self) {
        let n = align(self.buf.len());
        self.buf.resize(n, 0);
    }

    /// Opens a message: writes an `nlmsghdr` whose length is patched by [`MsgBuf::end`]. `pid`
    /// is 0 (the kernel fills in the sender's port id).
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32) -> MsgStart {
        self.pad();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        MsgStart(start)
    }

    /// Appends a fixed family header (e.g. `nfgenmsg`, `ifinfomsg`) right after the `nlmsghdr`,
    /// padded to 4 bytes.
    pub fn put_header(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    /// Closes a message: patches its length. Returns the message length, or the first
    /// attribute-overflow error seen since the buffer was created.
    pub fn end(&mut self, m: MsgStart) -> Result<usize, NlError> {
        self.pad();
        if let Some((ty, len)) = self.overflow.take() {
            return Err(NlError::AttrTooLong { ty, len });
        }
        let len = self.buf.len() - m.0;
        let len32 = u32::try_from(len)
            .map_err(|_| NlError::Malformed(format!("message of {len} bytes")))?;
        self.buf[m.0..m.0 + 4].copy_from_slice(&len32.to_ne_bytes());
        Ok(len)
    }

    /// Appends an attribute with a raw payload.
    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        self.pad();
        if data.len() > NLA_MAX_PAYLOAD {
            self.overflow.get_or_insert((ty, data.len() + NLA_HDRLEN));
            return;
        }
        let len = (NLA_HDRLEN + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// An attribute without payload (a flag).
    pub fn attr_flag(&mut self, ty: u16) {
        self.attr(ty, &[]);
    }

    pub fn attr_u8(&mut self, ty: u16, v: u8) {
        self.attr(ty, &[v]);
    }

    /// u16 in host byte order.
    pub fn attr_u16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// u32 in host byte order.
    pub fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// u64 in host byte order.
    pub fn attr_u64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// u16 in network byte order (nf_tables uses big-endian for nearly all its integers).
    pub fn attr_be16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// u32 in network byte order.
    pub fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// u64 in network byte order.
    pub fn attr_be64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A NUL-terminated string.
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        self.pad();
        if s.len() + 1 > NLA_MAX_PAYLOAD {
            self.overflow.get_or_insert((ty, s.len() + 1 + NLA_HDRLEN));
            return;
        }
        let len = (NLA_HDRLEN + s.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Opens a nested attribute (`NLA_F_NESTED` is set on its type).
    pub fn begin_nested(&mut self, ty: u16) -> NestStart {
        self.pad();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        NestStart(start)
    }

    /// Closes a nested attribute: patches its length. A nest longer than 65535 bytes cannot be
    /// encoded; that is recorded and reported by [`MsgBuf::end`].
    pub fn end_nested(&mut self, n: NestStart) {
        self.pad();
        let len = self.buf.len() - n.0;
        match u16::try_from(len) {
            Ok(l) => self.buf[n.0..n.0 + 2].copy_from_slice(&l.to_ne_bytes()),
            Err(_) => {
                let ty = u16::from_ne_bytes([self.buf[n.0 + 2], self.buf[n.0 + 3]]) & NLA_TYPE_MASK;
                self.overflow.get_or_insert((ty, len));
            }
        }
    }

    /// Current length of the open nest `n` (to decide when to start a new chunk).
    pub fn nested_len(&self, n: &NestStart) -> usize {
        self.buf.len() - n.0
    }

    /// Appends bytes that already are whole, 4-byte aligned attributes (a hot loop that encodes
    /// millions of set elements writes each one at once instead of attribute by attribute).
    pub fn put_raw(&mut self, bytes: &[u8]) {
        debug_assert!(
            bytes.len().is_multiple_of(4),
            "raw attributes must be aligned"
        );
        self.buf.extend_from_slice(bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// One message of a received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub header: NlMsgHdr,
    /// Everything after the `nlmsghdr`: the family header, then attributes.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Attributes after a family header of `family_header_len` bytes.
    pub fn attrs(&self, family_header_len: usize) -> Attrs<'a> {
        Attrs::new(self.payload.get(align(family_header_len)..).unwrap_or(&[]))
    }
}

/// Iterator over the messages in a buffer.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    pub fn new(buf: &'a [u8]) -> Messages<'a> {
        Messages { rest: buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, NlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(h) = NlMsgHdr::parse(self.rest) else {
            self.rest = &[];
            return Some(Err(NlError::Malformed("truncated message header".into())));
        };
        let len = h.len as usize;
        if len < NLMSG_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(NlError::Malformed(format!("bad message length {len}"))));
        }
        let m = Message {
            header: h,
            payload: &self.rest[NLMSG_HDRLEN..len],
        };
        self.rest = self.rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok(m))
    }
}

/// One attribute.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    /// Type without the `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` flags.
    pub ty: u16,
    /// The raw type field's `NLA_F_NESTED` flag.
    pub nested_flag: bool,
    pub data: &'a [u8],
}

impl<'a> Attr<'a> {
    fn fixed<const N: usize>(&self) -> Result<[u8; N], NlError> {
        self.data
            .get(..N)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                NlError::Malformed(format!(
                    "attribute {} has {} bytes, want {N}",
                    self.ty,
                    self.data.len()
                ))
            })
    }
    pub fn u8(&self) -> Result<u8, NlError> {
        Ok(self.fixed::<1>()?[0])
    }
    pub fn u16(&self) -> Result<u16, NlError> {
        Ok(u16::from_ne_bytes(self.fixed()?))
    }
    pub fn u32(&self) -> Result<u32, NlError> {
        Ok(u32::from_ne_bytes(self.fixed()?))
    }
    pub fn u64(&self) -> Result<u64, NlError> {
        Ok(u64::from_ne_bytes(self.fixed()?))
    }
    pub fn be16(&self) -> Result<u16, NlError> {
        Ok(u16::from_be_bytes(self.fixed()?))
    }
    pub fn be32(&self) -> Result<u32, NlError> {
        Ok(u32::from_be_bytes(self.fixed()?))
    }
    pub fn be64(&self) -> Result<u64, NlError> {
        Ok(u64::from_be_bytes(self.fixed()?))
    }
    /// A string, with the trailing NUL (if any) removed; invalid UTF-8 is replaced.
    pub fn str(&self) -> String {
        let d = self.data.split(|&b| b == 0).next().unwrap_or(&[]);
        String::from_utf8_lossy(d).into_owned()
    }
    /// The attributes nested inside this one.
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::new(self.data)
    }
}

/// Iterator over a run of attributes. Malformed trailing bytes end the iteration with an error.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Attrs<'a> {
        Attrs { rest: buf }
    }

    /// Collects attributes into a table indexed by type (types >= N are ignored; a repeated type
    /// keeps the last). Handy for flat attribute sets like a dump reply.
    pub fn table<const N: usize>(self) -> Result<[Option<Attr<'a>>; N], NlError> {
        let mut t = [None; N];
        for a in self {
            let a = a?;
            if let Some(slot) = t.get_mut(a.ty as usize) {
                *slot = Some(a);
            }
        }
        Ok(t)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, NlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < NLA_HDRLEN {
            // Up to 3 bytes of trailing padding are fine.
            self.rest = &[];
            return None;
        }
        let len = u16::from_ne_bytes([self.rest[0], self.rest[1]]) as usize;
        let raw_ty = u16::from_ne_bytes([self.rest[2], self.rest[3]]);
        if len < NLA_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(NlError::Malformed(format!(
                "bad attribute length {len} (type {raw_ty:#x})"
            ))));
        }
        let a = Attr {
            ty: raw_ty & NLA_TYPE_MASK,
            nested_flag: raw_ty & NLA_F_NESTED != 0,
            data: &self.rest[NLA_HDRLEN..len],
        };
        self.rest = self.rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok(a))
    }
}

/// Parses an `NLMSG_ERROR` message: errno 0 is an ack. Extended-ack attributes are read when
/// the kernel flagged them (`NLM_F_ACK_TLVS`); with `NLM_F_CAPPED` the echoed request is only its
/// header, otherwise the whole request precedes them.
pub fn parse_error(m: &Message<'_>) -> Result<KernelError, NlError> {
    let p = m.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(NlError::Malformed(format!(
            "NLMSG_ERROR of {} bytes",
            p.len()
        )));
    }
    let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    let request = NlMsgHdr::parse(&p[4..]).unwrap_or_default();
    let mut e = KernelError {
        errno: -code,
        request,
        message: None,
        offset: None,
    };
    if m.header.flags & NLM_F_ACK_TLVS != 0 {
        let echoed = if m.header.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            request.len as usize
        };
        if let Some(tlvs) = p.get(4 + align(echoed)..) {
            for a in Attrs::new(tlvs).flatten() {
                match a.ty {
                    NLMSGERR_ATTR_MSG => e.message = Some(a.str()),
                    NLMSGERR_ATTR_OFFS => e.offset = a.u32().ok(),
                    _ => {}
                }
            }
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_rounds_up_to_four() {
        assert_eq!(align(0), 0);
        assert_eq!(align(1), 4);
        assert_eq!(align(4), 4);
        assert_eq!(align(5), 8);
    }

    #[test]
    fn message_with_attrs_is_aligned_and_length_patched() {
        let mut b = MsgBuf::new();
        let m = b.begin(0x10, NLM_F_REQUEST | NLM_F_ACK, 7);
        b.put_header(&[2, 0, 0]); // 3-byte family header, padded to 4
        b.attr_str(1, "leash"); // 4 + 6 -> 12 with padding
        b.attr_be32(2, 0x0102_0304);
        let len = b.end(m).unwrap();
        let bytes = b.into_bytes();
        assert_eq!(len, 16 + 4 + 12 + 8);
        assert_eq!(bytes.len(), len);
        let h = NlMsgHdr::parse(&bytes).unwrap();
        assert_eq!(
            (h.len as usize, h.ty, h.flags, h.seq, h.pid),
            (len, 0x10, 5, 7, 0)
        );
        assert_eq!(&bytes[16..20], &[2, 0, 0, 0]);
        // string attribute: len 10 (header + "leash\0"), type 1, then 2 bytes of padding
        assert_eq!(&bytes[20..24], &[10, 0, 1, 0]);
        assert_eq!(&bytes[24..32], b"leash\0\0\0");
        assert_eq!(&bytes[32..40], &[8, 0, 2, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn nested_attributes_round_trip() {
        let mut b = MsgBuf::new();
        let m = b.begin(0x10, NLM_F_REQUEST, 1);
        b.put_header(&[0; 4]);
        let outer = b.begin_nested(3);
        b.attr_u8(1, 9);
        let inner = b.begin_nested(2);
        b.attr_u32(1, 42);
        b.end_nested(inner);
        b.end_nested(outer);
        b.attr_flag(4);
        b.end(m).unwrap();
        let bytes = b.into_bytes();

        let msgs: Vec<_> = Messages::new(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let attrs: Vec<_> = msgs[0].attrs(4).collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].ty, 3);
        assert!(attrs[0].nested_flag);
        assert_eq!(attrs[0].data.len(), 8 + 4 + 8);
        let inner: Vec<_> = attrs[0].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(inner[0].u8().unwrap(), 9);
        assert_eq!(inner[1].ty, 2);
        let deepest = inner[1].nested().next().unwrap().unwrap();
        assert_eq!(deepest.u32().unwrap(), 42);
        assert_eq!(attrs[1].ty, 4);
        assert!(attrs[1].data.is_empty());
        let t = msgs[0].attrs(4).table::<5>().unwrap();
        assert!(t[3].is_some() && t[4].is_some() && t[1].is_none());
    }

    #[test]
    fn several_messages_parse_as_a_stream() {
        let mut b = MsgBuf::new();
        for seq in 0..3 {
            let m = b.begin(0x20, NLM_F_REQUEST, seq);
            b.put_header(&[1]);
            b.attr_u16(1, 0xabcd);
            b.end(m).unwrap();
        }
        let seqs: Vec<u32> = Messages::new(b.as_bytes())
            .map(|m| m.unwrap().header.seq)
            .collect();
        assert_eq!(seqs, vec![0, 1, 2]);
    }

    #[test]
    fn oversized_nest_is_reported_at_end() {
        let mut b = MsgBuf::new();
        let m = b.begin(0x10, 0, 1);
        let n = b.begin_nested(5);
        for _ in 0..20_000 {
            b.attr_u32(1, 0);
        }
        b.end_nested(n);
        match b.end(m) {
            Err(NlError::AttrTooLong { ty: 5, len }) => assert!(len > 65535),
            other => panic!("expected AttrTooLong, got {other:?}"),
        }
    }

    #[test]
    fn oversized_attr_is_reported() {
        let mut b = MsgBuf::new();
        let m = b.begin(0x10, 0, 1);
        b.attr(9, &vec![0; 70_000]);
        assert!(matches!(b.end(m), Err(NlError::AttrTooLong { ty: 9, .. })));
    }

    #[test]
    fn error_message_with_ext_ack_parses() {
        // An NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK + NETLINK_EXT_ACK.
        let mut b = MsgBuf::new();
        let m = b.begin(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 42);
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        // echoed request header: len 100, type 0xa06, flags 5, seq 42, pid 0
        hdr.extend_from_slice(&100u32.to_ne_bytes());
        hdr.extend_from_slice(&0x0a06u16.to_ne_bytes());
        hdr.extend_from_slice(&5u16.to_ne_bytes());
        hdr.extend_from_slice(&42u32.to_ne_bytes());
        hdr.extend_from_slice(&0u32.to_ne_bytes());
        b.put_header(&hdr);
        b.attr_str(NLMSGERR_ATTR_MSG, "no such set");
        b.attr_u32(NLMSGERR_ATTR_OFFS, 36);
        b.end(m).unwrap();
        let bytes = b.into_bytes();
        let msg = Messages::new(&bytes).next().unwrap().unwrap();
        let e = parse_error(&msg).unwrap();
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.request.ty, 0x0a06);
        assert_eq!(e.request.seq, 42);
        assert_eq!(e.message.as_deref(), Some("no such set"));
        assert_eq!(e.offset, Some(36));
        assert_eq!(
            e.to_string(),
            "ENOENT: No such file or directory (no such set)"
        );
    }

    #[test]
    fn errno_text_names_and_hints() {
        assert_eq!(
            errno_text(libc::EPERM),
            "EPERM: Operation not permitted (run as root: CAP_NET_ADMIN is needed)"
        );
        assert!(errno_text(libc::EINVAL).starts_with("EINVAL: Invalid argument"));
        assert_eq!(errno_name(9999), "E9999");
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        assert!(Messages::new(&[1, 2, 3]).next().unwrap().is_err());
        let bad = [200u8, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(Messages::new(&bad).next().unwrap().is_err());
        assert!(Attrs::new(&[50, 0, 1, 0, 0, 0]).next().unwrap().is_err());
    }
}
