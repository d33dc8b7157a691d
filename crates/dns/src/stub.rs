//! A one-shot stub resolver (blocking, no runtime): `leash apply` uses it to warm up the sets of
//! exact names so that a freshly applied policy works before the first lookup.

use crate::message::{self, Query};
use crate::upstream::{SocketError, marked_socket};
use crate::wire::{self, Header, Name, rcode, rtype};
use socket2::{Protocol, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Resolves `name` to its A and AAAA addresses (following CNAMEs inside each answer) with the
/// smallest TTL along the chain, asking `upstreams` in order, each for at most `timeout` per
/// try, from sockets carrying `mark` (0: no mark) and owned by `owner` (the forwarder's user:
/// the ruleset lets only its sockets reach the upstreams; `None`: the caller's). NXDOMAIN and
/// empty answers give an empty list. Fails only when neither the A nor the AAAA question got an
/// answer from any upstream; if one family was answered, its addresses are returned.
pub fn resolve_once(upstreams: &[SocketAddr], mark: u32, owner: Option<u32>, name: &str, timeout: Duration) -> io::Result<Vec<(IpAddr, u32)>> {
    let qname = Name::from_dotted(name).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("invalid domain name `{name}`")))?;
    if upstreams.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no upstream resolvers"));
    }
    let mut out = Vec::new();
    let mut error = None;
    let mut answered = false;
    for qtype in [rtype::A, rtype::AAAA] {
        match ask_all(upstreams, mark, owner, &qname, qtype, timeout) {
            Ok(addrs) => {
                answered = true;
                out.extend(addrs);
            }
            Err(e) => error = Some(e),
        }
    }
    match error {
        Some(e) if !answered => Err(e),
        _ => Ok(out),
    }
}

fn ask_all(upstreams: &[SocketAddr], mark: u32, owner: Option<u32>, qname: &Name, qtype: u16, timeout: Duration) -> io::Result<Vec<(IpAddr, u32)>> {
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "no upstream answered");
    for &up in upstreams {
        match ask(up, mark, owner, qname, qtype, timeout) {
            Ok(a) => return Ok(a),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(e),
            Err(e) => last = io::Error::new(e.kind(), format!("{up}: {e}")),
        }
    }
    Err(last)
}

fn socket_error(e: SocketError) -> io::Error {
    match e {
        SocketError::Mark(e) => io::Error::new(e.kind(), format!("setting SO_MARK on the resolver socket needs CAP_NET_ADMIN: {e}")),
        SocketError::Other(e) => e,
    }
}

fn ask(up: SocketAddr, mark: u32, owner: Option<u32>, qname: &Name, qtype: u16, timeout: Duration) -> io::Result<Vec<(IpAddr, u32)>> {
    let id = rand::random::<u16>();
    let query = message::build_query(id, qname, qtype);
    let q = message::parse_query(&query).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let s = marked_socket(up, Type::DGRAM, Protocol::UDP, mark, owner).map_err(socket_error)?;
    let any: SocketAddr = if up.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    s.bind(&any.into())?;
    s.connect(&up.into())?;
    let sock: UdpSocket = s.into();
    sock.send(&query)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65535];
    let resp = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
            }
            Err(e) => return Err(e),
        };
        let b = &buf[..n];
        if wire::u16_at(b, 0) == Some(id) && message::check_response(&q.asked(), b).is_ok() {
            break b.to_vec();
        }
    };
    let resp = if Header::parse(&resp).is_some_and(|h| h.flags & wire::TC != 0) { ask_tcp(up, mark, owner, &q, timeout)? } else { resp };
    addresses(&q, &resp)
}

fn ask_tcp(up: SocketAddr, mark: u32, owner: Option<u32>, q: &Query<'_>, timeout: Duration) -> io::Result<Vec<u8>> {
    let s = marked_socket(up, Type::STREAM, Protocol::TCP, mark, owner).map_err(socket_error)?;
    s.connect_timeout(&up.into(), timeout)?;
    let mut stream: TcpStream = s.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut frame = (q.raw.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(q.raw);
    stream.write_all(&frame)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut resp)?;
    if wire::u16_at(&resp, 0) != Some(q.id) || message::check_response(&q.asked(), &resp).is_err() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "answer over TCP does not match the query"));
    }
    Ok(resp)
}

fn addresses(q: &Query<'_>, resp: &[u8]) -> io::Result<Vec<(IpAddr, u32)>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let h = Header::parse(resp).ok_or_else(|| bad("short answer"))?;
    match h.rcode() {
        rcode::NOERROR | rcode::NXDOMAIN => {}
        code => return Err(io::Error::other(format!("upstream answered rcode {code}"))),
    }
    let a = message::analyze(resp, &q.qname).map_err(|e| bad(&e.to_string()))?;
    Ok(a.addrs.iter().map(|f| (f.addr, f.ttl)).collect())
}
