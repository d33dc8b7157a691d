//! The UDP listen sockets and the OS threads that read them: per listen address one socket per
//! CPU (up to [`MAX_CPU_SOCKETS`]) in one `SO_REUSEPORT` group, each read by one blocking thread.
//! The threads answer cache hits themselves; `server` starts everything that must wait and hands
//! it to the tokio runtime.
//!
//! Why threads and not the runtime: a cache hit needs no waiting (the cache and the kernel-state
//! check are synchronous and allocate nothing), so a blocking receive and a send are the whole
//! job. On the runtime, with one query at a time, a hit cost five syscalls (`epoll_wait` twice,
//! `recvfrom` twice, one of them `EAGAIN`, and `sendto`); here it costs two (`recvmmsg`,
//! `sendmmsg`). Under load a receive takes whatever is queued ([`Batch`]), so a whole batch costs
//! those two.
//!
//! Why one socket per CPU: on a small VM most of a cached answer's round trip is waking idle
//! vCPUs (an IPI and a VM exit each), not the forwarder's work. Measured on the 2-vCPU bench
//! machine with one query at a time: 22 µs p50 with the client and the forwarder on one CPU,
//! 74 µs on two. With `SO_INCOMING_CPU` set on every socket of the group, the kernel (since 6.1)
//! delivers a datagram to the socket of the CPU that processed it, which for loopback is the
//! sender's CPU; that socket's thread sleeps pinned to that CPU, so waking it is a local context
//! switch, and so is waking the client with the answer. Under load the threads stop being pinned
//! ([`Affinity`]). On older kernels, or when no socket matches the CPU, the group picks sockets
//! by flow hash: still correct, only without the locality.
//!
//! The sockets stay in blocking mode for the threads; the runtime sends on them with
//! `MSG_DONTWAIT` ([`send_nonblocking`]) and never registers them with its reactor. The threads
//! are stopped by `shutdown(2)` on their sockets ([`Threads`]).

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io;
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most sockets (and threads) per listen address. CPUs beyond these still get answers, from a
/// socket the kernel picks by hash; a DNS forwarder has no use for dozens of threads.
pub(crate) const MAX_CPU_SOCKETS: usize = 16;
/// Receive buffer asked for on every listen socket, so bursts of queries are not dropped while a
/// thread is busy (the kernel caps it at net.core.rmem_max).
const LISTEN_RCVBUF: usize = 4 << 20;
/// Stack of a listener thread: it keeps its buffers on the heap and calls nothing deep.
const THREAD_STACK: usize = 256 << 10;
/// How long [`Threads::stop`] waits for the threads to notice; `shutdown(2)` wakes a blocked
/// receive at once, so this only bounds a thread stuck somewhere unexpected.
const JOIN_WAIT: Duration = Duration::from_secs(2);

/// One listen socket and the CPU its thread runs on (`None`: not pinned).
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) sock: Arc<UdpSocket>,
    pub(crate) cpu: Option<usize>,
}

/// The CPUs this process may run on, lowest first, at most [`MAX_CPU_SOCKETS`]; empty when they
/// cannot be read (then one socket, unpinned).
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, which outlives the call.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET only reads `set` (for indexes below CPU_SETSIZE).
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).take(MAX_CPU_SOCKETS).collect()
}

fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: pid 0 is the calling thread; the pointer and size describe `set`.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `SO_INCOMING_CPU` (-1: none).
fn set_incoming_cpu(sock: &UdpSocket, cpu: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the pointer and size describe `cpu`, an int as the option expects.
    let r = unsafe { libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_INCOMING_CPU, (&raw const cpu).cast(), std::mem::size_of::<i32>() as libc::socklen_t) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Batches in a row with a queue behind them after which a listener thread switches to the
/// loaded mode.
const UNPIN_AFTER: u32 = 8;
/// Single-datagram batches in a row after which a listener thread in the loaded mode returns to
/// the pinned one.
const REPIN_AFTER: u32 = 256;
/// Receive timeout of a listener thread in the loaded mode: this long without a datagram and it
/// returns to the pinned mode at once, rather than after [`REPIN_AFTER`] slow round trips of the
/// next client. The pinned mode blocks without a timeout, so an idle forwarder never wakes up.
const LOADED_IDLE: Duration = Duration::from_millis(50);

/// How a listener thread and its socket are placed, in one of two modes.
///
/// Pinned (while queries come one at a time): the thread runs only on its socket's CPU, whose
/// datagrams the socket takes (`SO_INCOMING_CPU`, in both modes), which makes the wake-ups local
/// (see the module doc).
///
/// Loaded (once its receives keep finding a queue behind the first datagram): the wake-ups that
/// locality saves are rare then, and pinning hurts. A busy client keeps its CPU's socket full,
/// and the pinned thread can only share that CPU with the client while the other CPUs idle: on
/// the 2-vCPU bench machine, threads pinned for good answered about 7% fewer queries per second
/// at saturation (a third fewer before receives were batched). So the thread lets the scheduler
/// place it like any thread. Its socket keeps claiming its CPU's datagrams: clients on other
/// CPUs still go to their own sockets and threads.
///
/// (Also giving up the claim, so that the kernel spreads a busy CPU's datagrams over the group
/// by flow hash, was tried: in the bench it gave no more throughput, 114,000 against 118,000
/// answers/s, for 6 instead of 5 µs of CPU per answer, from smaller batches and more wake-ups.)
///
/// A change of mode costs two syscalls, at most once per [`UNPIN_AFTER`] / [`REPIN_AFTER`]
/// batches or [`LOADED_IDLE`].
#[derive(Debug)]
pub(crate) struct Affinity {
    sock: Arc<UdpSocket>,
    cpu: Option<usize>,
    /// The CPUs the process may use, for the loaded mode.
    all: Option<libc::cpu_set_t>,
    pinned: bool,
    queued: u32,
    single: u32,
}

impl Affinity {
    /// Pins the calling thread to `cpu` (if any). Failure (a seccomp filter, a cpuset that
    /// changed) is not fatal: see [`Affinity::give_up`].
    fn start(sock: Arc<UdpSocket>, cpu: Option<usize>) -> Affinity {
        let mut a = Affinity { sock, cpu, all: None, pinned: false, queued: 0, single: 0 };
        if cpu.is_none() {
            return a;
        }
        // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
        let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the pointer and size describe `all`, which outlives the call.
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut all) } != 0 {
            a.give_up(&io::Error::last_os_error());
            return a;
        }
        a.all = Some(all);
        if let Err(e) = a.pin() {
            a.give_up(&e);
        }
        a
    }

    /// Serves unpinned from now on, wherever the scheduler runs the thread: the socket no longer
    /// claims the CPU (its datagrams would wait for a thread elsewhere anyway) and the receive
    /// blocks without a timeout.
    fn give_up(&mut self, e: &io::Error) {
        if let Some(c) = self.cpu.take() {
            eprintln!("leash dns: cannot pin a UDP listener thread to CPU {c} (it serves unpinned): {e}");
        }
        let _ = set_incoming_cpu(&self.sock, -1);
        let _ = self.sock.set_read_timeout(None);
        self.pinned = false;
    }

    fn pin(&mut self) -> io::Result<()> {
        let Some(c) = self.cpu else { return Ok(()) };
        // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET writes inside `set` (c < CPU_SETSIZE: it came from allowed_cpus).
        unsafe { libc::CPU_SET(c, &mut set) };
        set_affinity(&set)?;
        let _ = self.sock.set_read_timeout(None);
        self.pinned = true;
        Ok(())
    }

    fn unpin(&mut self) {
        let Some(all) = &self.all else { return };
        if set_affinity(all).is_ok() {
            let _ = self.sock.set_read_timeout(Some(LOADED_IDLE));
            self.pinned = false;
        }
    }

    /// Called after every receive with the number of datagrams it returned (0: the loaded
    /// mode's receive timeout expired).
    pub(crate) fn after_batch(&mut self, n: usize) {
        if self.cpu.is_none() {
            return;
        }
        if n == 0 {
            if !self.pinned
                && let Err(e) = self.pin()
            {
                self.give_up(&e);
            }
            (self.queued, self.single) = (0, 0);
        } else if n > 1 {
            self.single = 0;
            self.queued += 1;
            if self.pinned && self.queued >= UNPIN_AFTER {
                self.unpin();
                self.queued = 0;
            }
        } else {
            self.queued = 0;
            self.single += 1;
            if !self.pinned && self.single >= REPIN_AFTER {
                if let Err(e) = self.pin() {
                    self.give_up(&e);
                }
                self.single = 0;
            }
        }
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(LISTEN_RCVBUF);
    Ok(s)
}

/// Binds the first socket of a group on `addr` (port 0: a free port), without `SO_REUSEPORT`, so
/// the bind fails if anyone else holds the port: a second `leash dns`, or any other process,
/// must not silently share it. [`bind_rest`] then opens the group.
pub(crate) fn bind_first(addr: SocketAddr) -> io::Result<Socket> {
    let s = new_socket(addr)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Completes the group started by `first` (bound, on `addr`'s IP and its actual port): one
/// socket per entry of `cpus`, each marked with `SO_INCOMING_CPU`. With fewer than two CPUs the
/// group is `first` alone, unpinned. A kernel that refuses the options gets a smaller group
/// (down to `first` alone): fewer threads, never a forwarder that does not start.
pub(crate) fn bind_rest(first: Socket, cpus: &[usize]) -> io::Result<Vec<Listener>> {
    let alone = |first: Socket| vec![Listener { sock: Arc::new(first.into()), cpu: None }];
    if cpus.len() < 2 {
        return Ok(alone(first));
    }
    let addr = first.local_addr()?.as_socket().ok_or_else(|| io::Error::other("listen socket has no IP address"))?;
    // Set after the exclusive bind: later sockets (of this process, or of another with the same
    // user, as SO_REUSEPORT always allows) may join the port from now on.
    if first.set_reuse_port(true).is_err() || first.set_cpu_affinity(cpus[0]).is_err() {
        return Ok(alone(first));
    }
    let mut out = vec![Listener { sock: Arc::new(first.into()), cpu: Some(cpus[0]) }];
    for &cpu in &cpus[1..] {
        let s = new_socket(addr)?;
        if s.set_reuse_port(true).and_then(|()| s.set_cpu_affinity(cpu)).and_then(|()| s.bind(&addr.into())).is_err() {
            break;
        }
        out.push(Listener { sock: Arc::new(s.into()), cpu: Some(cpu) });
    }
    if out.len() == 1 {
        // A group of one: pinning would only tie the thread to one CPU.
        out[0].cpu = None;
    }
    Ok(out)
}

/// Sends `out` to `peer` from the tokio side without blocking the runtime (the sockets are in
/// blocking mode for their threads). A datagram send only fails with `EAGAIN` when the socket's
/// send buffer is full: then it retries a few times, a millisecond apart, and gives up (the
/// client retries, as after any lost datagram). Readiness through the reactor is not used:
/// registering the socket with epoll would wake the runtime for every datagram the threads
/// receive and send.
pub(crate) async fn send_nonblocking(sock: &UdpSocket, out: &[u8], peer: SocketAddr) {
    if out.is_empty() {
        return;
    }
    let peer = peer.into();
    for _ in 0..20 {
        match SockRef::from(sock).send_to_with_flags(out, &peer, libc::MSG_DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => return,
        }
    }
}

/// The listener threads of a forwarder. Stopping (or dropping) sets the flag, shuts the sockets
/// down, which wakes a thread blocked in `recvmmsg` (it returns an empty datagram) or
/// `sendmmsg` (`EPIPE`), and joins them.
#[derive(Debug)]
pub(crate) struct Threads {
    stop: Arc<AtomicBool>,
    socks: Vec<Arc<UdpSocket>>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    /// Starts one thread per listener running `body(listener socket, stop flag, affinity)`,
    /// pinned to the listener's CPU (see [`Affinity`]). On an error the threads already started
    /// are stopped.
    pub(crate) fn start<F>(listeners: &[Listener], body: F) -> io::Result<Threads>
    where
        F: Fn(&Arc<UdpSocket>, &AtomicBool, &mut Affinity) + Send + Sync + 'static,
    {
        let body = Arc::new(body);
        let mut t = Threads { stop: Arc::new(AtomicBool::new(false)), socks: Vec::new(), handles: Vec::new() };
        for (i, l) in listeners.iter().enumerate() {
            let (sock, stop, body, cpu) = (l.sock.clone(), t.stop.clone(), body.clone(), l.cpu);
            let name = match cpu {
                Some(c) => format!("leash-dns-udp{c}"),
                None => format!("leash-dns-udp-{i}"),
            };
            t.socks.push(l.sock.clone());
            let h = std::thread::Builder::new().name(name).stack_size(THREAD_STACK).spawn(move || {
                let mut affinity = Affinity::start(sock.clone(), cpu);
                body(&sock, &stop, &mut affinity);
            })?;
            t.handles.push(h);
        }
        Ok(t)
    }

    /// Stops and joins the threads (idempotent). A thread that has not ended within
    /// [`JOIN_WAIT`] is left running, detached, with a message: waiting forever would hang the
    /// forwarder's shutdown.
    pub(crate) fn stop(&mut self) {
        if self.handles.is_empty() {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        for s in &self.socks {
            // ENOTCONN for an unconnected socket, but the shutdown flag is set and sleepers are
            // woken all the same (inet_shutdown).
            let _ = SockRef::from(&**s).shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + JOIN_WAIT;
        for h in self.handles.drain(..) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                eprintln!("leash dns: a UDP listener thread did not stop within {JOIN_WAIT:?}; leaving it");
            }
        }
        self.socks.clear();
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Largest datagram a listener reads: the largest answer it sends ([`crate::message::MAX_CLIENT_UDP`])
/// bounds what a sensible query carries too; longer ones are cut and then fail validation.
const DATAGRAM: usize = 4096;

/// Buffers for receiving up to `cap` datagrams with one `recvmmsg` and sending their answers with
/// one `sendmmsg`. Under load a listener thread then pays two syscalls per batch instead of two
/// per query; one query at a time it is still exactly one of each.
pub(crate) struct Batch {
    cap: usize,
    rbuf: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
    received: usize,
    out: Vec<Vec<u8>>,
    /// Indexes of the received datagrams whose answer `out[i]` is to be sent.
    answered: Vec<usize>,
    out_iov: Vec<libc::iovec>,
    out_hdr: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch({} of {})", self.received, self.cap)
    }
}

impl Batch {
    pub(crate) fn new(cap: usize) -> Batch {
        let cap = cap.max(1);
        // SAFETY (for the zeroed values below): sockaddr_storage, iovec and mmsghdr are plain C
        // structs for which all-zero bytes (null pointers, zero lengths) are valid.
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Batch {
            cap,
            rbuf: vec![0; cap * DATAGRAM],
            names: vec![zero_name; cap],
            iov: vec![zero_iov; cap],
            hdr: vec![zero_hdr; cap],
            received: 0,
            out: (0..cap).map(|_| Vec::with_capacity(DATAGRAM)).collect(),
            answered: Vec::with_capacity(cap),
            out_iov: vec![zero_iov; cap],
            out_hdr: vec![zero_hdr; cap],
        }
    }

    /// Blocks until at least one datagram arrived, then takes whatever else is queued, up to the
    /// capacity (`MSG_WAITFORONE`). Returns how many; clears the answers of the last batch.
    pub(crate) fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        self.received = 0;
        self.answered.clear();
        for i in 0..self.cap {
            self.iov[i] = libc::iovec { iov_base: self.rbuf[i * DATAGRAM..].as_mut_ptr().cast(), iov_len: DATAGRAM };
            let h = &mut self.hdr[i].msg_hdr;
            h.msg_name = (&raw mut self.names[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut self.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdr[i].msg_len = 0;
        }
        // SAFETY: every header points at buffers of this Batch that stay in place (the vectors
        // are never resized) and are not otherwise borrowed during the call.
        let n = unsafe { libc::recvmmsg(sock.as_raw_fd(), self.hdr.as_mut_ptr(), self.cap as libc::c_uint, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = n as usize;
        Ok(self.received)
    }

    /// Datagram `i` of the last [`Batch::recv`] (cut at [`DATAGRAM`] bytes), its sender, and the
    /// buffer for its answer (cleared).
    pub(crate) fn get(&mut self, i: usize) -> (&[u8], Peer<'_>, &mut Vec<u8>) {
        let len = (self.hdr[i].msg_len as usize).min(DATAGRAM);
        let out = &mut self.out[i];
        out.clear();
        let peer = Peer { name: &self.names[i], len: self.hdr[i].msg_hdr.msg_namelen as usize };
        (&self.rbuf[i * DATAGRAM..i * DATAGRAM + len], peer, out)
    }

    /// Marks the answer written into datagram `i`'s buffer for sending (if not empty).
    pub(crate) fn answer(&mut self, i: usize) {
        if !self.out[i].is_empty() {
            self.answered.push(i);
        }
    }

    /// Sends every marked answer to its datagram's sender, with as few `sendmmsg` calls as the
    /// kernel allows (it may stop early when the send buffer is full; blocking there is the
    /// backpressure this thread should feel). A datagram the kernel refuses is skipped, as a
    /// lost UDP answer would be.
    pub(crate) fn send(&mut self, sock: &UdpSocket) {
        use std::os::fd::AsRawFd;
        let k = self.answered.len();
        for (j, &i) in self.answered.iter().enumerate() {
            self.out_iov[j] = libc::iovec { iov_base: self.out[i].as_mut_ptr().cast(), iov_len: self.out[i].len() };
            let h = &mut self.out_hdr[j].msg_hdr;
            h.msg_name = (&raw mut self.names[i]).cast();
            h.msg_namelen = self.hdr[i].msg_hdr.msg_namelen;
            h.msg_iov = &raw mut self.out_iov[j];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut sent = 0;
        // Bounded: every round sends at least one datagram or skips one.
        while sent < k {
            // SAFETY: headers 0..k point at this Batch's buffers, unchanged during the call.
            let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), self.out_hdr[sent..].as_mut_ptr(), (k - sent) as libc::c_uint, 0) };
            if r > 0 {
                sent += r as usize;
            } else if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            } else {
                sent += 1;
            }
        }
        self.answered.clear();
    }
}

/// The sender of a received datagram, as the kernel wrote it; converted only when needed (a
/// query handed to the tokio side), since answering sends the raw address back.
#[derive(Debug)]
pub(crate) struct Peer<'a> {
    name: &'a libc::sockaddr_storage,
    len: usize,
}

impl Peer<'_> {
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        match i32::from(self.name.ss_family) {
            libc::AF_INET if self.len >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a sockaddr_in (family and length checked).
                let a: &libc::sockaddr_in = unsafe { &*(&raw const *self.name).cast() };
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 if self.len >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the kernel wrote a sockaddr_in6 (family and length checked).
                let a: &libc::sockaddr_in6 = unsafe { &*(&raw const *self.name).cast() };
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed_now() -> Vec<usize> {
        // SAFETY: as in allowed_cpus.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: as in allowed_cpus.
        assert_eq!(unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }, 0);
        // SAFETY: as in allowed_cpus.
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
    }

    #[test]
    fn a_batch_takes_every_queued_datagram_and_answers_each_sender() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let clients: Vec<UdpSocket> = (0..5).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(&[i as u8; 3], addr).unwrap();
        }
        let mut b = Batch::new(8);
        let mut got = 0;
        // Loopback delivers at once; a few receives at most even if the kernel splits them.
        for _ in 0..5 {
            let n = b.recv(&server).unwrap();
            for i in 0..n {
                let (raw, peer, out) = b.get(i);
                let k = raw[0];
                assert_eq!(raw, &[k; 3]);
                assert_eq!(peer.addr(), Some(clients[usize::from(k)].local_addr().unwrap()));
                // Every second datagram gets no answer.
                if k % 2 == 0 {
                    out.extend_from_slice(&[k, k]);
                }
                b.answer(i);
            }
            b.send(&server);
            got += n;
            if got == clients.len() {
                break;
            }
        }
        assert_eq!(got, clients.len());
        let mut buf = [0u8; 16];
        for (i, c) in clients.iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_millis(if i % 2 == 0 { 2000 } else { 50 }))).unwrap();
            match c.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(i % 2, 0, "client {i} got an answer it was not given");
                    assert_eq!((&buf[..n], from), (&[i as u8, i as u8][..], addr));
                }
                Err(e) => assert!(i % 2 == 1, "client {i}: {e}"),
            }
        }
    }

    #[test]
    fn batches_read_ipv6_senders() {
        let Ok(server) = UdpSocket::bind("[::1]:0") else { return };
        let client = UdpSocket::bind("[::1]:0").unwrap();
        client.send_to(b"q", server.local_addr().unwrap()).unwrap();
        let mut b = Batch::new(2);
        assert_eq!(b.recv(&server).unwrap(), 1);
        let (raw, peer, out) = b.get(0);
        assert_eq!(raw, b"q");
        assert_eq!(peer.addr(), Some(client.local_addr().unwrap()));
        out.extend_from_slice(b"a");
        b.answer(0);
        b.send(&server);
        let mut buf = [0u8; 4];
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(client.recv(&mut buf).unwrap(), 1);
    }

    #[test]
    fn a_listener_thread_is_pinned_while_idle_and_free_under_load() {
        let all = allowed_now();
        let cpu = all[0];
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        std::thread::spawn(move || {
            let mut a = Affinity::start(sock.clone(), Some(cpu));
            assert!(a.pinned);
            assert_eq!(allowed_now(), vec![cpu]);
            assert_eq!(sock.read_timeout().unwrap(), None);
            // Queues behind the first datagram, but not long enough.
            for _ in 0..UNPIN_AFTER - 1 {
                a.after_batch(3);
            }
            a.after_batch(1);
            for _ in 0..UNPIN_AFTER - 1 {
                a.after_batch(3);
            }
            assert!(a.pinned);
            a.after_batch(3);
            assert!(!a.pinned);
            assert_eq!(allowed_now(), all);
            // (The kernel rounds the timeout to its clock ticks.)
            assert!(sock.read_timeout().unwrap().is_some_and(|t| t >= LOADED_IDLE));
            // Back after enough single datagrams in a row...
            for _ in 0..REPIN_AFTER {
                a.after_batch(1);
            }
            assert!(a.pinned);
            assert_eq!(allowed_now(), vec![cpu]);
            // ... or at once after a receive timeout.
            for _ in 0..UNPIN_AFTER {
                a.after_batch(32);
            }
            assert!(!a.pinned);
            a.after_batch(0);
            assert!(a.pinned);
            assert_eq!(allowed_now(), vec![cpu]);
            assert_eq!(sock.read_timeout().unwrap(), None);
        })
        .join()
        .unwrap();
    }
}
