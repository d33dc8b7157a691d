//! TCP and UDP echo servers for the lab's peer: one thread, one `poll` loop, stopped on drop.
//!
//! The sockets are created by the caller inside whatever namespace they belong to (a socket keeps
//! the namespace it was created in), so this thread itself can live anywhere. One thread with
//! `poll` instead of a thread per socket because a lab may listen on hundreds of address/port
//! pairs; every wait is bounded and a wake-up pipe ends the loop at once on drop.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Open connections kept at once; beyond that new ones are closed right after accept (a probe
/// then sees its echo missing, which is reported, rather than the lab growing without bound).
const MAX_CONNECTIONS: usize = 1024;
/// A connection that sent nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(10);
/// Longest single `poll` wait; also bounds how late idle connections are noticed.
const POLL_MS: i32 = 1000;

/// A listening socket to serve.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// The running echo thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct EchoServer {
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub(crate) fn start(listeners: Vec<Listener>) -> io::Result<EchoServer> {
        for l in &listeners {
            match l {
                Listener::Tcp(t) => t.set_nonblocking(true)?,
                Listener::Udp(u) => u.set_nonblocking(true)?,
            }
        }
        let (wake, wake_rx) = UnixStream::pair()?;
        let thread = std::thread::Builder::new().name("lab-echo".into()).spawn(move || serve(listeners, wake_rx))?;
        Ok(EchoServer { wake, thread: Some(thread) })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Either the byte or the closed socket (if the write fails) wakes the poll loop.
        let _ = self.wake.write_all(b"x");
        let _ = self.wake.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Conn {
    stream: TcpStream,
    last: Instant,
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

fn serve(listeners: Vec<Listener>, wake: UnixStream) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds = Vec::with_capacity(1 + listeners.len() + conns.len());
        fds.push(pollfd(wake.as_raw_fd()));
        fds.extend(listeners.iter().map(|l| match l {
            Listener::Tcp(t) => pollfd(t.as_raw_fd()),
            Listener::Udp(u) => pollfd(u.as_raw_fd()),
        }));
        fds.extend(conns.iter().map(|c| pollfd(c.stream.as_raw_fd())));
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        let now = Instant::now();
        for (l, p) in listeners.iter().zip(&fds[1..]) {
            if p.revents == 0 {
                continue;
            }
            match l {
                Listener::Tcp(t) => {
                    // Bounded: at most MAX_CONNECTIONS accepts per wake-up.
                    for _ in 0..MAX_CONNECTIONS {
                        let Ok((stream, _)) = t.accept() else { break };
                        if conns.len() < MAX_CONNECTIONS && stream.set_nonblocking(true).is_ok() {
                            conns.push(Conn { stream, last: now });
                        }
                    }
                }
                Listener::Udp(u) => {
                    for _ in 0..MAX_CONNECTIONS {
                        let Ok((len, from)) = u.recv_from(&mut buf) else { break };
                        let _ = u.send_to(&buf[..len], from);
                    }
                }
            }
        }
        let conn_fds = &fds[1 + listeners.len()..];
        let mut keep = vec![true; conns.len()];
        for ((c, p), keep) in conns.iter_mut().zip(conn_fds).zip(keep.iter_mut()) {
            if p.revents == 0 {
                *keep = now.duration_since(c.last) < IDLE;
                continue;
            }
            match c.stream.read(&mut buf) {
                Ok(0) => *keep = false,
                // Probes send a few bytes; a short or blocked write just ends the connection.
                Ok(len) => {
                    c.last = now;
                    *keep = c.stream.write_all(&buf[..len]).is_ok();
                }
                Err(e) => *keep = e.kind() == io::ErrorKind::WouldBlock,
            }
        }
        let mut k = keep.into_iter();
        conns.retain(|_| k.next().unwrap_or(false));
    }
}
