//! One real connection attempt as a given user, and how it ended.

use policy::{Action, Proto};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long a datagram probe whose send failed with EPERM waits for the ICMP error of a
/// `reject` (it arrives over loopback within microseconds; a `drop` sends none).
const REJECT_GRACE: Duration = Duration::from_millis(100);

/// Bytes every probe sends; the echo must return exactly these.
const PAYLOAD: &[u8] = b"leash-lab-probe";

/// One connection to try: protocol, destination, port (TCP and UDP) and the socket owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Case {
    #[serde(serialize_with = "crate::ser::proto")]
    pub proto: Proto,
    pub dst: IpAddr,
    pub port: Option<u16>,
    pub uid: u32,
    pub gid: u32,
    /// The name the address was looked up as (domain expectations): the lab puts the address
    /// into the sets the forwarder would, before it probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The cgroup v2 directory (relative to the cgroup v2 root) whose process makes the
    /// connection: the probe runs in a forked child that joins it first, because `socket
    /// cgroupv2` matches the cgroup of the socket's creator. `None`: the lab's own cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ", self.proto.as_str())?;
        if let Some(n) = &self.name {
            write!(f, "{n} = ")?;
        }
        match (self.port, self.dst) {
            (Some(p), IpAddr::V6(a)) => write!(f, "[{a}]:{p}")?,
            (Some(p), a) => write!(f, "{a}:{p}")?,
            (None, a) => write!(f, "{a}")?,
        }
        write!(f, " as uid {} gid {}", self.uid, self.gid)?;
        if let Some(c) = &self.cgroup {
            write!(f, " in cgroup /{}", c.trim_matches('/'))?;
        }
        Ok(())
    }
}

/// How a probe ended, as the calling program saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// The connection was made and the echo came back.
    Connected,
    /// `ECONNREFUSED`: a TCP reset (or, for UDP, ICMP port unreachable).
    Refused,
    /// An ICMP error other than port unreachable: `EHOSTUNREACH` (IPv4 admin-prohibited),
    /// `EACCES` (IPv6 admin-prohibited), `ENETUNREACH`; holds the errno name.
    Unreachable(String),
    /// `EPERM`: the local output hook dropped the packet and told the sender.
    NotPermitted,
    /// Nothing came back in time.
    TimedOut,
    /// No connection was tried: the forwarder answers NXDOMAIN for the case's name.
    NameRefused,
    /// The probe itself failed (could not create the socket, wrong echo, ...).
    Error(String),
}

impl Outcome {
    /// The verdict the kernel gave: only a completed echo counts as allowed.
    pub fn verdict(&self) -> Action {
        match self {
            Outcome::Connected => Action::Allow,
            _ => Action::Deny,
        }
    }

    /// A short human description (`refused (ECONNREFUSED)`, `timed out`).
    pub fn describe(&self) -> String {
        match self {
            Outcome::Connected => "connected (echo received)".into(),
            Outcome::Refused => "refused (ECONNREFUSED)".into(),
            Outcome::Unreachable(errno) => format!("unreachable ({errno})"),
            Outcome::NotPermitted => "not permitted (EPERM)".into(),
            Outcome::TimedOut => "timed out".into(),
            Outcome::NameRefused => "NXDOMAIN (name refused)".into(),
            Outcome::Error(e) => format!("probe error: {e}"),
        }
    }

    /// Classifies the error of a connect, send or receive (not of socket creation, whose
    /// `EACCES` would mean something else).
    fn from_io(e: &io::Error) -> Outcome {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Outcome::Refused,
            Some(libc::EPERM) => Outcome::NotPermitted,
            Some(errno @ (libc::EHOSTUNREACH | libc::EACCES | libc::ENETUNREACH | libc::EHOSTDOWN)) => {
                Outcome::Unreachable(errno_name(errno))
            }
            Some(libc::ETIMEDOUT | libc::EAGAIN | libc::EINPROGRESS) => Outcome::TimedOut,
            _ => match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::TimedOut,
                _ => Outcome::Error(e.to_string()),
            },
        }
    }
}

/// Exit statuses of a forked probe (see [`Outcome::to_exit`]); the detail of `Unreachable` and
/// `Error` travels through the child's pipe.
const EXIT_CONNECTED: u8 = 0;
const EXIT_REFUSED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 2;
const EXIT_NOT_PERMITTED: u8 = 3;
const EXIT_TIMED_OUT: u8 = 4;
const EXIT_NAME_REFUSED: u8 = 5;
const EXIT_ERROR: u8 = 6;

impl Outcome {
    /// The outcome as a child's exit status, and the detail to send through its pipe.
    pub(crate) fn to_exit(&self) -> (u8, &[u8]) {
        match self {
            Outcome::Connected => (EXIT_CONNECTED, b""),
            Outcome::Refused => (EXIT_REFUSED, b""),
            Outcome::Unreachable(e) => (EXIT_UNREACHABLE, e.as_bytes()),
            Outcome::NotPermitted => (EXIT_NOT_PERMITTED, b""),
            Outcome::TimedOut => (EXIT_TIMED_OUT, b""),
            Outcome::NameRefused => (EXIT_NAME_REFUSED, b""),
            Outcome::Error(e) => (EXIT_ERROR, e.as_bytes()),
        }
    }

    /// The outcome a forked probe reported by its end and pipe.
    pub(crate) fn from_child(end: &crate::fork::End, detail: &[u8]) -> Outcome {
        use crate::fork::{End, PANICKED, SETUP_FAILED};
        let text = || String::from_utf8_lossy(detail).into_owned();
        match end {
            End::Exited(EXIT_CONNECTED) => Outcome::Connected,
            End::Exited(EXIT_REFUSED) => Outcome::Refused,
            End::Exited(EXIT_UNREACHABLE) => Outcome::Unreachable(text()),
            End::Exited(EXIT_NOT_PERMITTED) => Outcome::NotPermitted,
            End::Exited(EXIT_TIMED_OUT) => Outcome::TimedOut,
            End::Exited(EXIT_NAME_REFUSED) => Outcome::NameRefused,
            End::Exited(EXIT_ERROR) => Outcome::Error(text()),
            End::Exited(SETUP_FAILED) => Outcome::Error(text()),
            End::Exited(PANICKED) => Outcome::Error("the probe process panicked".into()),
            End::Exited(n) => Outcome::Error(format!("the probe process exited with status {n}")),
            End::Signaled(s) => Outcome::Error(format!("the probe process was killed by signal {s}")),
            End::Killed => Outcome::Error("the probe process hung and was killed".into()),
        }
    }
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EHOSTDOWN => "EHOSTDOWN".into(),
        n => format!("errno {n}"),
    }
}

/// Makes the connection of `case` from the calling thread's namespace with the calling thread's
/// credentials, waiting at most `timeout` in all.
pub(crate) fn probe_here(case: &Case, timeout: Duration) -> Outcome {
    probe_here_from(case, None, timeout)
}

/// [`probe_here`] from the local address `src` (the socket is bound to it first), as a workload
/// with several addresses sends from the one a forwarded expectation names.
pub(crate) fn probe_here_from(case: &Case, src: Option<IpAddr>, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    match case.proto {
        Proto::Tcp | Proto::Udp => {
            let Some(port) = case.port.filter(|&p| p != 0) else {
                return Outcome::Error(format!("{} needs a destination port (1-65535)", case.proto.as_str()));
            };
            let addr = SocketAddr::new(case.dst, port);
            if case.proto == Proto::Tcp { tcp(addr, src, deadline) } else { udp(addr, src, deadline) }
        }
        Proto::Icmp | Proto::Icmpv6 => {
            let v6 = case.proto == Proto::Icmpv6;
            if v6 != case.dst.is_ipv6() {
                return Outcome::Error(format!(
                    "{} cannot go to {} (icmp is for IPv4, icmpv6 for IPv6)",
                    case.proto.as_str(),
                    case.dst
                ));
            }
            ping(case.dst, src, deadline)
        }
    }
}

/// Time left until `deadline`, never zero (a zero socket timeout means "block forever" or is
/// rejected, depending on the call).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
}

/// A socket of `domain`/`ty`/`proto` bound to `src` (port 0), for a probe from that address.
fn bound_socket(src: IpAddr, ty: socket2::Type, proto: Option<socket2::Protocol>) -> io::Result<socket2::Socket> {
    let domain = if src.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
    let s = socket2::Socket::new(domain, ty.cloexec(), proto)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    Ok(s)
}

fn tcp(addr: SocketAddr, src: Option<IpAddr>, deadline: Instant) -> Outcome {
    let connected = match src {
        None => TcpStream::connect_timeout(&addr, left(deadline)),
        Some(src) => match bound_socket(src, socket2::Type::STREAM, None) {
            Ok(s) => s.connect_timeout(&addr.into(), left(deadline)).map(|()| TcpStream::from(s)),
            Err(e) => return Outcome::Error(format!("tcp socket bound to {src}: {e}")),
        },
    };
    let mut s = match connected {
        Ok(s) => s,
        Err(e) => return Outcome::from_io(&e),
    };
    if let Err(e) = s.set_write_timeout(Some(left(deadline))).and_then(|()| s.write_all(PAYLOAD)) {
        return Outcome::from_io(&e);
    }
    let mut got = Vec::with_capacity(PAYLOAD.len());
    let mut buf = [0u8; 64];
    // Bounded: each read waits at most until the deadline, and a read that returns data makes
    // progress towards PAYLOAD.len().
    while got.len() < PAYLOAD.len() {
        if Instant::now() >= deadline {
            return Outcome::TimedOut;
        }
        if let Err(e) = s.set_read_timeout(Some(left(deadline))) {
            return Outcome::Error(e.to_string());
        }
        match s.read(&mut buf) {
            Ok(0) => return Outcome::Error("connection closed before the echo came back".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Outcome::from_io(&e),
        }
    }
    check_echo(&got, PAYLOAD)
}

fn check_echo(got: &[u8], want: &[u8]) -> Outcome {
    if got == want {
        Outcome::Connected
    } else {
        Outcome::Error(format!("wrong echo: {:?}", String::from_utf8_lossy(got)))
    }
}

fn udp(addr: SocketAddr, src: Option<IpAddr>, deadline: Instant) -> Outcome {
    let any: SocketAddr = match (src, addr) {
        (Some(src), _) => (src, 0).into(),
        (None, SocketAddr::V4(_)) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        (None, SocketAddr::V6(_)) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = match UdpSocket::bind(any) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(format!("udp socket: {e}")),
    };
    // Connected, so that ICMP errors for this destination are reported to the socket.
    if let Err(e) = s.connect(addr) {
        return Outcome::from_io(&e);
    }
    datagram_exchange(&s, PAYLOAD, deadline, |reply| check_echo(reply, PAYLOAD))
}

/// Sends `msg` on a connected datagram socket and waits for one reply accepted by `judge`
/// (anything else is ignored until the deadline).
fn datagram_exchange(s: &UdpSocket, msg: &[u8], deadline: Instant, judge: impl Fn(&[u8]) -> Outcome) -> Outcome {
    let mut buf = [0u8; 2048];
    if let Err(e) = s.send(msg) {
        let outcome = Outcome::from_io(&e);
        if outcome != Outcome::NotPermitted {
            return outcome;
        }
        // A `reject` in the output hook also drops the packet (the send fails with EPERM), but
        // first it sends the ICMP error back to this socket, where it is pending as the socket
        // error a moment later. Look for it, to tell a reject from a silent drop.
        if s.set_read_timeout(Some(left(deadline).min(REJECT_GRACE))).is_ok()
            && let Err(e) = s.recv(&mut buf)
            && let o @ (Outcome::Unreachable(_) | Outcome::Refused) = Outcome::from_io(&e)
        {
            return o;
        }
        return Outcome::NotPermitted;
    }
    loop {
        if Instant::now() >= deadline {
            return Outcome::TimedOut;
        }
        if let Err(e) = s.set_read_timeout(Some(left(deadline))) {
            return Outcome::Error(e.to_string());
        }
        match s.recv(&mut buf) {
            Ok(n) => match judge(&buf[..n]) {
                Outcome::Error(_) => continue,
                o => return o,
            },
            Err(e) => return Outcome::from_io(&e),
        }
    }
}

/// ICMP echo over an unprivileged ICMP datagram socket ("ping socket"): the kernel fills in the
/// identifier and the checksum, and the socket needs the caller's group in
/// `net.ipv4.ping_group_range` (for both IPv4 and IPv6), not root.
fn ping(dst: IpAddr, src: Option<IpAddr>, deadline: Instant) -> Outcome {
    let (domain, proto, request, reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    // SAFETY: plain syscall; the descriptor is owned right below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Outcome::Error(format!("ping socket: {e} (is the gid in net.ipv4.ping_group_range?)"));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns. A ping socket is a datagram socket, and
    // UdpSocket's methods are plain connect/send/recv/setsockopt calls, which all work on it.
    let s = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Some(src) = src {
        let s2 = socket2::SockRef::from(&s);
        if let Err(e) = s2.bind(&SocketAddr::new(src, 0).into()) {
            return Outcome::Error(format!("ping socket bound to {src}: {e}"));
        }
    }
    if let Err(e) = s.connect(SocketAddr::new(dst, 0)) {
        return Outcome::from_io(&e);
    }
    // type, code, checksum (kernel), identifier (kernel), sequence, payload.
    let mut msg = vec![request, 0, 0, 0, 0, 0, 0, 1];
    msg.extend_from_slice(PAYLOAD);
    datagram_exchange(&s, &msg, deadline, |r| {
        if r.len() >= 8 && r[0] == reply && r[6..8] == [0, 1] {
            check_echo(&r[8..], PAYLOAD)
        } else {
            Outcome::Error("not our echo reply".into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(Outcome::from_io(&e(libc::ECONNREFUSED)), Outcome::Refused);
        assert_eq!(Outcome::from_io(&e(libc::EPERM)), Outcome::NotPermitted);
        assert_eq!(Outcome::from_io(&e(libc::EHOSTUNREACH)), Outcome::Unreachable("EHOSTUNREACH".into()));
        assert_eq!(Outcome::from_io(&e(libc::EACCES)), Outcome::Unreachable("EACCES".into()));
        assert_eq!(Outcome::from_io(&e(libc::EAGAIN)), Outcome::TimedOut);
        assert_eq!(Outcome::from_io(&io::Error::from(io::ErrorKind::TimedOut)), Outcome::TimedOut);
        assert!(matches!(Outcome::from_io(&e(libc::EBADF)), Outcome::Error(_)));
    }

    #[test]
    fn only_connected_is_allow() {
        assert_eq!(Outcome::Connected.verdict(), Action::Allow);
        for o in [Outcome::Refused, Outcome::TimedOut, Outcome::NotPermitted, Outcome::Error("x".into())] {
            assert_eq!(o.verdict(), Action::Deny);
        }
    }

    #[test]
    fn cases_display_like_addresses() {
        let c = Case { proto: Proto::Tcp, dst: "2001:db8::5".parse().unwrap(), port: Some(443), uid: 0, gid: 0, name: None, cgroup: None };
        assert_eq!(c.to_string(), "tcp [2001:db8::5]:443 as uid 0 gid 0");
        let c = Case { proto: Proto::Icmp, dst: "192.0.2.5".parse().unwrap(), port: None, uid: 1, gid: 2, name: None, cgroup: Some("a/b".into()) };
        assert_eq!(c.to_string(), "icmp 192.0.2.5 as uid 1 gid 2 in cgroup /a/b");
    }

    #[test]
    fn outcomes_survive_the_exit_status() {
        use crate::fork::End;
        for o in [
            Outcome::Connected,
            Outcome::Refused,
            Outcome::Unreachable("EACCES".into()),
            Outcome::NotPermitted,
            Outcome::TimedOut,
            Outcome::NameRefused,
            Outcome::Error("boom".into()),
        ] {
            let (code, detail) = o.to_exit();
            assert_eq!(Outcome::from_child(&End::Exited(code), detail), o);
        }
        assert!(matches!(Outcome::from_child(&End::Killed, b""), Outcome::Error(_)));
    }

    #[test]
    fn outcomes_serialize_with_a_kind() {
        let j = serde_json_like(&Outcome::Unreachable("EACCES".into()));
        assert_eq!(j, r#"{"kind":"unreachable","detail":"EACCES"}"#);
    }

    fn serde_json_like(o: &Outcome) -> String {
        serde_json::to_string(o).unwrap()
    }
}
