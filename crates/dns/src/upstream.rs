//! Talking to upstream resolvers: a pool of connected UDP sockets per upstream, each on a
//! kernel-chosen random source port and carrying the forwarder's SO_MARK, random query ids, and a
//! TCP retry for truncated answers.
//!
//! Sockets are connected so that the kernel drops datagrams from any other source address or
//! port before they reach us (they cannot be counted, but they cannot be mistaken for answers
//! either), and so that an ICMP port unreachable comes back as `ECONNREFUSED` and fails the try
//! at once instead of after the timeout. Every socket is replaced after [`ROTATE_AFTER`]
//! queries so that its source port is not a fixed target for spoofed answers.

use crate::message::{self, Asked, Query};
use crate::stats::Stats;
use crate::wire::{self, Header};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// UDP sockets per upstream. Together with the 16-bit id an off-path spoofer has to guess one of
/// these ports (out of the whole ephemeral range, which the kernel picks from at random).
const POOL: usize = 8;
/// Queries after which a pool socket is replaced by one on a new random port.
const ROTATE_AFTER: u32 = 256;

/// The upstream did not answer usefully; the reason only matters for the counters.
#[derive(Debug)]
struct Refused;

struct Pending {
    asked: Asked,
    tx: oneshot::Sender<Result<Vec<u8>, Refused>>,
}

struct UpSock {
    sock: UdpSocket,
    pending: Mutex<HashMap<u16, Pending>>,
    sent: AtomicU32,
    /// Replaced in its pool slot: its receive task ends once nothing is outstanding.
    retired: AtomicBool,
}

struct Upstream {
    addr: SocketAddr,
    slots: Vec<Mutex<Arc<UpSock>>>,
}

pub(crate) struct Upstreams {
    list: Vec<Upstream>,
    timeout: Duration,
    mark: u32,
    stats: Arc<Stats>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").field("addrs", &self.list.iter().map(|u| u.addr).collect::<Vec<_>>()).finish()
    }
}

/// Error for setting SO_MARK, distinguishable by the caller.
#[derive(Debug)]
pub(crate) enum SocketError {
    Mark(io::Error),
    Other(io::Error),
}

/// A socket of `ty` for talking to `addr`, with `mark` set (0: leave the mark alone), owned by
/// `owner` (`None`: by whoever runs this; see [`owned_by`]).
pub(crate) fn marked_socket(addr: SocketAddr, ty: Type, proto: Protocol, mark: u32, owner: Option<u32>) -> Result<Socket, SocketError> {
    let new = || Socket::new(Domain::for_address(addr), ty, Some(proto));
    let s = match owner {
        Some(uid) => owned_by(uid, new).and_then(|r| r),
        None => new(),
    }
    .map_err(SocketError::Other)?;
    if mark != 0 {
        s.set_mark(mark).map_err(SocketError::Mark)?;
    }
    Ok(s)
}

/// Runs `f` with the calling thread's filesystem uid set to `uid`, and back.
///
/// Why: the ruleset lets DNS out to an upstream only from sockets of the forwarder's user
/// (`meta skuid`), and a socket's owner is the fsuid of the thread that created it. `leash
/// apply` runs as root and its warm-up asks the upstreams too: its sockets must be the
/// forwarder's. `setfsuid` changes only the calling thread (the raw system call; no other
/// thread of the process is touched, unlike `setuid`, which glibc applies to all of them) and
/// only what the filesystem uid governs: the thread keeps CAP_NET_ADMIN, so it can still set
/// SO_MARK on the socket afterwards. (A forked child that drops its privileges would do as
/// well, at the cost of a process per warm-up; the thread is back to its own fsuid before this
/// returns, also when `f` fails.)
pub fn owned_by<T>(uid: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    // SAFETY: setfsuid takes a uid and changes only the calling thread's credentials; -1 is
    // never a valid uid, so setfsuid(-1) changes nothing and returns the current fsuid.
    let previous = unsafe { libc::syscall(libc::SYS_setfsuid, uid) } as u32;
    let now = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } as u32;
    let restore = || {
        // SAFETY: as above, back to the fsuid the thread had.
        unsafe { libc::syscall(libc::SYS_setfsuid, previous) };
    };
    if now != uid {
        restore();
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("cannot create sockets as uid {uid} (setfsuid needs CAP_SETUID)")));
    }
    let r = f();
    restore();
    Ok(r)
}

fn udp_socket(addr: SocketAddr, mark: u32) -> Result<UdpSocket, SocketError> {
    let s = marked_socket(addr, Type::DGRAM, Protocol::UDP, mark, None)?;
    let any: SocketAddr = if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let setup = || -> io::Result<UdpSocket> {
        s.set_nonblocking(true)?;
        s.bind(&any.into())?;
        s.connect(&addr.into())?;
        UdpSocket::from_std(s.into())
    };
    setup().map_err(SocketError::Other)
}

impl Upstreams {
    /// Opens the pools. Must run inside the runtime (it spawns the receive tasks).
    pub(crate) fn new(addrs: &[SocketAddr], timeout: Duration, mark: u32, stats: Arc<Stats>) -> Result<Upstreams, (SocketAddr, SocketError)> {
        let mut ups = Upstreams { list: Vec::new(), timeout, mark, stats, tasks: Mutex::new(Vec::new()) };
        for &addr in addrs {
            let mut slots = Vec::with_capacity(POOL);
            for _ in 0..POOL {
                slots.push(Mutex::new(ups.open(addr).map_err(|e| (addr, e))?));
            }
            ups.list.push(Upstream { addr, slots });
        }
        Ok(ups)
    }

    fn open(&self, addr: SocketAddr) -> Result<Arc<UpSock>, SocketError> {
        let sock = udp_socket(addr, self.mark)?;
        let us = Arc::new(UpSock { sock, pending: Mutex::new(HashMap::new()), sent: AtomicU32::new(0), retired: AtomicBool::new(false) });
        let task = tokio::spawn(receive(us.clone(), self.stats.clone()));
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
        Ok(us)
    }

    /// Asks the upstreams in order, each for at most the timeout (a TCP retry after a truncated
    /// answer gets its own). The first usable answer wins; `None` when every upstream failed,
    /// timed out, was unreachable or answered SERVFAIL/REFUSED/NOTIMP/FORMERR.
    pub(crate) async fn exchange(&self, q: &Query<'_>) -> Option<Vec<u8>> {
        for up in &self.list {
            if let Some(resp) = self.try_upstream(up, q).await {
                return Some(resp);
            }
        }
        None
    }

    async fn try_upstream(&self, up: &Upstream, q: &Query<'_>) -> Option<Vec<u8>> {
        let mut resp = self.try_udp(up, q).await?;
        if Header::parse(&resp)?.flags & wire::TC != 0 {
            resp = self.try_tcp(up.addr, q).await?;
        }
        if message::is_upstream_failure(&Header::parse(&resp)?) {
            return None;
        }
        Some(resp)
    }

    fn pick(&self, up: &Upstream) -> Arc<UpSock> {
        let slot = &up.slots[rand::random_range(0..up.slots.len())];
        let mut current = slot.lock().unwrap();
        if current.sent.fetch_add(1, Ordering::Relaxed) >= ROTATE_AFTER {
            match self.open(up.addr) {
                Ok(fresh) => {
                    current.retired.store(true, Ordering::Relaxed);
                    *current = fresh;
                }
                // Keep the old port rather than fail the query.
                Err(SocketError::Mark(e) | SocketError::Other(e)) => eprintln!("leash dns: new upstream socket for {}: {e}", up.addr),
            }
        }
        current.clone()
    }

    async fn try_udp(&self, up: &Upstream, q: &Query<'_>) -> Option<Vec<u8>> {
        let us = self.pick(up);
        let (id, rx) = {
            let mut pending = us.pending.lock().unwrap();
            let id = (0..16).map(|_| rand::random::<u16>()).find(|id| !pending.contains_key(id))?;
            let (tx, rx) = oneshot::channel();
            pending.insert(id, Pending { asked: q.asked(), tx });
            (id, rx)
        };
        let mut buf = Vec::with_capacity(q.raw.len() + 11);
        message::upstream_query(q, id, &mut buf);
        Stats::inc(&self.stats.upstream_queries);
        // A send error (ECONNREFUSED from an earlier ICMP, no route) fails over at once.
        let got = match us.sock.send(&buf).await {
            Ok(_) => tokio::time::timeout(self.timeout, rx).await,
            Err(_) => Ok(Ok(Err(Refused))),
        };
        match got {
            Ok(Ok(Ok(resp))) => Some(resp),
            _ => {
                us.pending.lock().unwrap().remove(&id);
                None
            }
        }
    }

    async fn try_tcp(&self, addr: SocketAddr, q: &Query<'_>) -> Option<Vec<u8>> {
        Stats::inc(&self.stats.upstream_queries);
        let id = rand::random::<u16>();
        let resp = tokio::time::timeout(self.timeout, tcp_exchange(addr, self.mark, q, id)).await.ok()?.ok()?;
        if wire::u16_at(&resp, 0) != Some(id) || message::check_response(&q.asked(), &resp).is_err() {
            Stats::inc(&self.stats.mismatched_responses);
            return None;
        }
        Some(resp)
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn tcp_exchange(addr: SocketAddr, mark: u32, q: &Query<'_>, id: u16) -> io::Result<Vec<u8>> {
    let s = marked_socket(addr, Type::STREAM, Protocol::TCP, mark, None).map_err(|(SocketError::Mark(e) | SocketError::Other(e))| e)?;
    s.set_nonblocking(true)?;
    let mut stream = TcpSocket::from_std_stream(s.into()).connect(addr).await?;
    let mut buf = vec![0, 0];
    let mut query = Vec::new();
    message::upstream_query(q, id, &mut query);
    buf[..2].copy_from_slice(&(query.len() as u16).to_be_bytes());
    buf.extend_from_slice(&query);
    stream.write_all(&buf).await?;
    read_framed(&mut stream).await
}

/// Reads one length-prefixed DNS message from a stream.
pub(crate) async fn read_framed<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}

/// Receives on one pool socket and hands each answer to the query that waits for it. Datagrams
/// with an unknown id or a question that is not the one asked are counted and dropped; the
/// query keeps waiting for the real answer.
async fn receive(us: Arc<UpSock>, stats: Arc<Stats>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let got = if us.retired.load(Ordering::Relaxed) {
            tokio::time::timeout(Duration::from_millis(250), us.sock.recv(&mut buf)).await.ok()
        } else {
            Some(us.sock.recv(&mut buf).await)
        };
        match got {
            Some(Ok(n)) => deliver(&us, &buf[..n], &stats),
            Some(Err(e)) => {
                // On a connected UDP socket errors are ICMP reports (port or host unreachable):
                // everything outstanding on it went to the same unreachable upstream, so it
                // fails over now rather than after the timeout.
                let failed: Vec<Pending> = us.pending.lock().unwrap().drain().map(|(_, p)| p).collect();
                for p in failed {
                    let _ = p.tx.send(Err(Refused));
                }
                if !matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable) {
                    // Anything else may repeat at once: do not spin on it.
                    eprintln!("leash dns: receiving from upstream: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            None => {}
        }
        if us.retired.load(Ordering::Relaxed) && us.pending.lock().unwrap().is_empty() {
            return;
        }
    }
}

fn deliver(us: &UpSock, b: &[u8], stats: &Stats) {
    let mut pending = us.pending.lock().unwrap();
    let matched = wire::u16_at(b, 0).filter(|id| pending.get(id).is_some_and(|p| message::check_response(&p.asked, b).is_ok()));
    match matched.and_then(|id| pending.remove(&id)) {
        Some(p) => {
            drop(pending);
            let _ = p.tx.send(Ok(b.to_vec()));
        }
        None => Stats::inc(&stats.mismatched_responses),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn upstream_sockets_carry_the_mark_and_fail_clearly_without_the_capability() {
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        match udp_socket(addr, 0x6c6e) {
            Ok(s) => assert_eq!(socket2::SockRef::from(&s).mark().unwrap(), 0x6c6e),
            Err(SocketError::Mark(e)) => assert!(!is_root(), "root could not set SO_MARK: {e}"),
            Err(SocketError::Other(e)) => panic!("{e}"),
        }
        // Mark 0 leaves the socket alone (and needs no capability).
        let s = udp_socket(addr, 0).map_err(|_| ()).unwrap();
        assert_eq!(socket2::SockRef::from(&s).mark().unwrap(), 0);
    }

    /// The owner of a socket made under `owned_by`, as sock_diag and `meta skuid` see it: the
    /// uid of its inode in /proc/self/fd.
    #[test]
    fn sockets_made_for_another_user_are_owned_by_it_and_the_thread_is_itself_again() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let fsuid = || unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } as u32;
        let me = fsuid();
        match marked_socket(addr, Type::DGRAM, Protocol::UDP, 0, Some(64999)) {
            Ok(s) => {
                let owner = std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap().uid();
                assert_eq!(owner, 64999);
                assert!(is_root());
            }
            Err(SocketError::Other(e)) => assert!(!is_root() && e.kind() == io::ErrorKind::PermissionDenied, "{e}"),
            Err(SocketError::Mark(e)) => panic!("{e}"),
        }
        assert_eq!(fsuid(), me, "the thread's fsuid is restored");
    }
}
