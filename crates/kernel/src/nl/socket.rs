//! A bound `AF_NETLINK` raw socket: options, send, receive, and the request, ack and dump
//! exchanges built on them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::error::NlError;
use super::parse::{Message, Messages, ack_result};
use super::wire::{
    NETLINK_CAP_ACK, NETLINK_EXT_ACK, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NlMsgHdr, SOL_NETLINK,
};

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
    /// Opens a netlink socket of `protocol` (e.g. [`crate::nl::NETLINK_NETFILTER`], [`crate::nl::NETLINK_ROUTE`]) and
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
                return ack_result(&m);
            }
        }
    }

    /// Sends a dump request (flags should include `NLM_F_REQUEST | NLM_F_DUMP`) and calls `each`
    /// for every reply message of that sequence number until `NLMSG_DONE`. A dump whose
    /// `NLM_F_DUMP_INTR` flag is set changed while it ran; this returns
    /// [`NlError::DumpInterrupted`] after reading it to its end (the socket can dump again at
    /// once). Callers that want the objects wrap the whole dump, with their collecting state, in
    /// [`retry_interrupted`].
    ///
    /// The replies are read to the end first and only then handed to `each`: the kernel fills
    /// the next reply inside our next `recv`, and a commit that lands between two of them
    /// interrupts the dump, so the less time passes between the receives, the fewer dumps a busy
    /// writer (the DNS forwarder) interrupts.
    pub fn dump(
        &mut self,
        msg: &[u8],
        mut each: impl FnMut(&Message<'_>) -> Result<(), NlError>,
    ) -> Result<(), NlError> {
        let hdr = NlMsgHdr::parse(msg)
            .ok_or_else(|| NlError::Malformed("request shorter than a header".into()))?;
        self.send(msg)?;
        let mut all = Vec::new();
        'recv: loop {
            let d = self.recv(true)?.expect("blocking recv returns data");
            let start = all.len();
            all.extend_from_slice(d);
            // Only the headers: is this the end (or an error) of our dump?
            let mut at = start;
            while let Some(h) = NlMsgHdr::parse(&all[at..]) {
                if h.seq == hdr.seq && (h.ty == NLMSG_DONE || h.ty == NLMSG_ERROR) {
                    break 'recv;
                }
                if (h.len as usize) < std::mem::size_of::<libc::nlmsghdr>() {
                    break;
                }
                at += super::wire::align(h.len as usize);
                if at >= all.len() {
                    break;
                }
            }
        }
        let mut interrupted = false;
        for m in Messages::new(&all) {
            let m = m?;
            if m.header.seq != hdr.seq {
                continue;
            }
            interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
            match m.header.ty {
                NLMSG_DONE => break,
                NLMSG_ERROR => ack_result(&m)?,
                NLMSG_NOOP => {}
                _ => each(&m)?,
            }
        }
        if interrupted {
            return Err(NlError::DumpInterrupted { attempts: 1 });
        }
        Ok(())
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
                            return Err(NlError::DumpInterrupted { attempts: 1 });
                        }
                        return Ok(true);
                    }
                    NLMSG_ERROR => ack_result(&m)?,
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
                    return ack_result(&m);
                }
                each(&m)?;
            }
        }
    }
}

/// How many times [`retry_interrupted`] starts a dump at most before it gives up.
pub const DUMP_ATTEMPTS: usize = 60;
/// How long [`retry_interrupted`] keeps starting a dump again at most.
const DUMP_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `attempt` (one whole dump, which must start its collecting state afresh each time) until
/// it does not end in [`NlError::DumpInterrupted`], at most [`DUMP_ATTEMPTS`] times and for at
/// most about [`DUMP_RETRY_FOR`].
///
/// nf_tables flags a dump interrupted whenever any commit lands in the namespace while it runs,
/// and a DNS forwarder under load commits a set insert every few milliseconds: `leash status` and
/// the read-back of an apply would otherwise fail most of the time on a busy host. Between
/// attempts it sleeps a little longer each time (0, 1, 2, 4, ... up to 100 ms), so that a dump
/// finds a gap between two bursts of commits; what an interrupted attempt read is never returned.
pub fn retry_interrupted<T>(
    mut attempt: impl FnMut() -> Result<T, NlError>,
) -> Result<T, NlError> {
    let t0 = std::time::Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        match attempt() {
            Err(NlError::DumpInterrupted { .. })
                if n < DUMP_ATTEMPTS && t0.elapsed() < DUMP_RETRY_FOR =>
            {
                let ms = if n == 1 { 0 } else { (1u64 << (n - 2).min(7)).min(100) };
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            Err(NlError::DumpInterrupted { .. }) => {
                return Err(NlError::DumpInterrupted { attempts: n });
            }
            other => return other,
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
