//! Packet (`AF_PACKET`) and raw IP (`SOCK_RAW`) sockets of the calling thread's network
//! namespace: the sockets the firewall cannot govern, or governs only in part.
//!
//! - An `AF_PACKET` socket hands whole link-layer frames to the device driver: what it sends never
//!   passes the netfilter hooks of the IP stack, so table inet leash (an `output` hook) never
//!   sees it, whatever the policy says. Opening one needs CAP_NET_RAW. DHCP clients (dhclient,
//!   systemd-networkd, NetworkManager), capture tools (tcpdump, wireshark) and LLDP or ARP tools
//!   use them legitimately; anything else holding one can talk past the firewall.
//! - A raw IP socket (`AF_INET`/`AF_INET6`, `SOCK_RAW`, also CAP_NET_RAW) sends IP packets whose
//!   payload, and with `IP_HDRINCL` whose header, the program writes itself. These do pass the
//!   output hook and leash decides them by destination, protocol and owner like any other
//!   packet, but they can forge the source address and use any protocol, and they receive every
//!   packet of their protocol. ping on older systems, traceroute and routing daemons use them.
//!
//! Sources: sock_diag's `packet_diag` (`CONFIG_PACKET_DIAG`: `packet_diag_req`, one
//! `packet_diag_msg` per socket with `PACKET_DIAG_INFO` and `PACKET_DIAG_UID`) and `raw_diag`
//! (`CONFIG_INET_RAW_DIAG`: an inet_diag handler for `IPPROTO_RAW`, replying `inet_diag_msg` with
//! the protocol in the local port). Kernels built without them answer the dump with `ENOENT`
//! (raw_diag in the `NLMSG_DONE`, where it reads as an empty listing unless checked), and the
//! listing falls back to `/proc/thread-self/net/packet`, `raw` and `raw6`, which hold the same
//! fields. `thread-self`, not `self`: `/proc/self/net` shows the namespace of the process's
//! main thread, not of the calling thread.
//!
//! ```text
//! packet_diag_req (20)  family u8 | protocol u8 | pad u16 | ino u32 | show u32 | cookie [2]u32
//! packet_diag_msg (16)  family u8 | type u8 | num u16 (protocol, host order) | ino u32 | cookie [2]u32
//! packet_diag_info (24) index u32 (ifindex) | version u32 | reserve u32 | copy_thresh u32 | tstamp u32 | flags u32
//! ```

use crate::nl::{self, Message, NLM_F_DUMP, NLM_F_REQUEST, NlError};
use crate::sockdiag::{self, Family, States};

const PACKET_DIAG_INFO: u16 = 0;
const PACKET_DIAG_UID: u16 = 5;
const PACKET_SHOW_INFO: u32 = 0x1;
const PACKET_MSG_LEN: usize = 16;
const IPPROTO_RAW: u8 = libc::IPPROTO_RAW as u8;
const RECV_BUF: usize = 64 * 1024;

/// Which kind of socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `AF_PACKET`: link-layer frames, past netfilter.
    Packet,
    /// `AF_INET`/`AF_INET6` `SOCK_RAW`: IP packets with a header of the program's making.
    Raw,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Packet => "packet",
            Kind::Raw => "raw",
        }
    }
}

/// One packet or raw socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSocket {
    pub kind: Kind,
    /// The IP family of a raw socket; `None` for packet sockets.
    pub family: Option<Family>,
    /// `SOCK_RAW` (3) or `SOCK_DGRAM` (2): a packet socket of type `SOCK_DGRAM` has the
    /// link-layer header written by the kernel, one of type `SOCK_RAW` writes it itself.
    pub sock_type: u8,
    /// For a packet socket the EtherType it receives (host order; 0x0003 `ETH_P_ALL`, 0 none:
    /// such a socket receives nothing but can still send), for a raw socket the IP protocol.
    pub protocol: u16,
    /// The interface it is bound to, 0 for all.
    pub ifindex: u32,
    /// The socket's owner.
    pub uid: u32,
    /// `socket:[INODE]` in `/proc/PID/fd`.
    pub inode: u64,
}

/// Where a listing came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// sock_diag (`packet_diag`, `raw_diag`).
    Diag,
    /// `/proc/thread-self/net/...`, because this kernel has no diag handler for them.
    Proc,
}

/// Every packet and raw socket of the namespace, and where each half of the listing came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub sockets: Vec<RawSocket>,
    pub packet_source: Source,
    pub raw_source: Source,
}

/// Lists the packet and raw sockets of the calling thread's network namespace, from sock_diag
/// where the kernel has the handlers, else from `/proc/thread-self/net` (see the module docs).
/// Needs no privilege.
pub fn list() -> Result<Listing, NlError> {
    let mut sockets = Vec::new();
    let packet_source = match packet_diag()? {
        Some(v) => {
            sockets.extend(v);
            Source::Diag
        }
        None => {
            sockets.extend(proc_packet()?);
            Source::Proc
        }
    };
    let raw_source = match raw_diag()? {
        Some(v) => {
            sockets.extend(v);
            Source::Diag
        }
        None => {
            sockets.extend(proc_raw()?);
            Source::Proc
        }
    };
    Ok(Listing { sockets, packet_source, raw_source })
}

/// The packet sockets, from `packet_diag`; `None` when the kernel has no such handler.
pub fn packet_diag() -> Result<Option<Vec<RawSocket>>, NlError> {
    let mut r = [0u8; 20];
    r[0] = libc::AF_PACKET as u8;
    r[8..12].copy_from_slice(&PACKET_SHOW_INFO.to_ne_bytes());
    // pdiag_cookie: a dump ignores it.
    let req = sockdiag::message(sockdiag::SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, &r);
    let mut out = Vec::new();
    let found = dump(&req, |p| {
        if let Some(s) = parse_packet(p)? {
            out.push(s);
        }
        Ok(())
    })?;
    Ok(found.then_some(out))
}

/// The raw IP sockets of both families, from `raw_diag`; `None` when the kernel has no such
/// handler.
pub fn raw_diag() -> Result<Option<Vec<RawSocket>>, NlError> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let r = sockdiag::req_v2(family.af(), IPPROTO_RAW, 0, States::ALL);
        let req = sockdiag::message(sockdiag::SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, &r);
        let found = dump(&req, |p| {
            if let Some(s) = parse_raw(p)? {
                out.push(s);
            }
            Ok(())
        })?;
        if !found {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

/// Sends a dump request on a fresh socket and feeds each reply payload to `each`. `Ok(false)`
/// when the kernel has no handler for it (`ENOENT` in the error or the `NLMSG_DONE`).
fn dump(req: &[u8], each: impl FnMut(&[u8]) -> Result<(), NlError>) -> Result<bool, NlError> {
    let sock = nl::Socket::open(sockdiag::NETLINK_SOCK_DIAG)?;
    let _ = sock.set_recv_buffer(1 << 20);
    sock.send(req)?;
    let mut buf = vec![0u8; RECV_BUF];
    match sockdiag::read_dump_with(&sock, &mut buf, 1, each) {
        Ok(()) => Ok(true),
        Err(NlError::Kernel(e)) if e.errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

fn parse_packet(p: &[u8]) -> Result<Option<RawSocket>, NlError> {
    if p.len() < PACKET_MSG_LEN {
        return Err(NlError::Malformed(format!("packet_diag_msg of {} bytes, want {PACKET_MSG_LEN}", p.len())));
    }
    if i32::from(p[0]) != libc::AF_PACKET {
        return Ok(None);
    }
    let mut s = RawSocket {
        kind: Kind::Packet,
        family: None,
        sock_type: p[1],
        protocol: u16::from_ne_bytes([p[2], p[3]]),
        ifindex: 0,
        uid: 0,
        inode: u64::from(u32::from_ne_bytes([p[4], p[5], p[6], p[7]])),
    };
    let m = Message { header: Default::default(), payload: p };
    for a in m.attrs(PACKET_MSG_LEN) {
        let a = a?;
        match a.ty {
            PACKET_DIAG_INFO => s.ifindex = a.u32()?,
            PACKET_DIAG_UID => s.uid = a.u32()?,
            _ => {}
        }
    }
    Ok(Some(s))
}

fn parse_raw(p: &[u8]) -> Result<Option<RawSocket>, NlError> {
    if p.len() < sockdiag::MSG_LEN {
        return Err(NlError::Malformed(format!("inet_diag_msg of {} bytes, want {}", p.len(), sockdiag::MSG_LEN)));
    }
    let family = match i32::from(p[0]) {
        libc::AF_INET => Family::V4,
        libc::AF_INET6 => Family::V6,
        _ => return Ok(None),
    };
    let u32_at = |o: usize| u32::from_ne_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
    Ok(Some(RawSocket {
        kind: Kind::Raw,
        family: Some(family),
        sock_type: libc::SOCK_RAW as u8,
        // A raw socket's "port" is its protocol (inet_num), as /proc/net/raw shows it too.
        protocol: u16::from_be_bytes([p[4], p[5]]),
        ifindex: u32_at(4 + 36),
        uid: u32_at(64),
        inode: u64::from(u32_at(68)),
    }))
}

/// The packet sockets, from `/proc/thread-self/net/packet`.
pub fn proc_packet() -> Result<Vec<RawSocket>, NlError> {
    parse_proc_packet(&read_proc("/proc/thread-self/net/packet")?)
}

/// The raw sockets of both families, from `/proc/thread-self/net/raw` and `raw6`.
pub fn proc_raw() -> Result<Vec<RawSocket>, NlError> {
    let mut out = parse_proc_raw(&read_proc("/proc/thread-self/net/raw")?, Family::V4)?;
    // An IPv4-only kernel has no raw6.
    match std::fs::read("/proc/thread-self/net/raw6") {
        Ok(b) => out.extend(parse_proc_raw(&String::from_utf8_lossy(&b), Family::V6)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(NlError::Io { context: "read /proc/thread-self/net/raw6", source }),
    }
    Ok(out)
}

fn read_proc(path: &'static str) -> Result<String, NlError> {
    // Bytes, not UTF-8: a listing must not fail on what it does not need to read.
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|source| NlError::Io { context: path, source })
}

fn bad(what: &str, line: &str) -> NlError {
    NlError::Malformed(format!("{what} line {line:?}"))
}

/// `sk RefCnt Type Proto Iface R Rmem User Inode` (Proto in hex, the rest decimal).
pub fn parse_proc_packet(text: &str) -> Result<Vec<RawSocket>, NlError> {
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let field = |i: usize| f.get(i).copied().ok_or_else(|| bad("/proc/net/packet", line));
        let dec = |i: usize| field(i)?.parse::<u64>().map_err(|_| bad("/proc/net/packet", line));
        out.push(RawSocket {
            kind: Kind::Packet,
            family: None,
            sock_type: u8::try_from(dec(2)?).map_err(|_| bad("/proc/net/packet", line))?,
            protocol: u16::from_str_radix(field(3)?, 16).map_err(|_| bad("/proc/net/packet", line))?,
            ifindex: u32::try_from(dec(4)?).map_err(|_| bad("/proc/net/packet", line))?,
            uid: u32::try_from(dec(7)?).map_err(|_| bad("/proc/net/packet", line))?,
            inode: dec(8)?,
        });
    }
    Ok(out)
}

/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`,
/// the local address as `HEX:PROTO` (the protocol in hex where a port would be).
pub fn parse_proc_raw(text: &str, family: Family) -> Result<Vec<RawSocket>, NlError> {
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let field = |i: usize| f.get(i).copied().ok_or_else(|| bad("/proc/net/raw", line));
        let proto = field(1)?.rsplit_once(':').map(|(_, p)| p).ok_or_else(|| bad("/proc/net/raw", line))?;
        out.push(RawSocket {
            kind: Kind::Raw,
            family: Some(family),
            sock_type: libc::SOCK_RAW as u8,
            protocol: u16::from_str_radix(proto, 16).map_err(|_| bad("/proc/net/raw", line))?,
            // Not in the file; a bound device shows only in raw_diag.
            ifindex: 0,
            uid: field(7)?.parse().map_err(|_| bad("/proc/net/raw", line))?,
            inode: field(9)?.parse().map_err(|_| bad("/proc/net/raw", line))?,
        });
    }
    Ok(out)
}

/// A short description for people: `packet SOCK_RAW ETH_P_ALL on all interfaces`,
/// `raw ipv4 icmp`.
pub fn describe(s: &RawSocket) -> String {
    match s.kind {
        Kind::Packet => {
            let ty = match i32::from(s.sock_type) {
                libc::SOCK_RAW => "SOCK_RAW",
                libc::SOCK_DGRAM => "SOCK_DGRAM",
                _ => "other",
            };
            let proto = match s.protocol {
                0x0003 => "ETH_P_ALL".to_string(),
                0x0800 => "IPv4".to_string(),
                0x0806 => "ARP".to_string(),
                0x86dd => "IPv6".to_string(),
                0 => "no protocol".to_string(),
                p => format!("EtherType {p:#06x}"),
            };
            format!("packet {ty} {proto}")
        }
        Kind::Raw => {
            let family = s.family.map_or("ip", Family::as_str);
            let proto = match i32::from(s.protocol as u8) {
                _ if s.protocol > 255 => format!("protocol {}", s.protocol),
                libc::IPPROTO_ICMP => "icmp".into(),
                libc::IPPROTO_ICMPV6 => "icmpv6".into(),
                libc::IPPROTO_TCP => "tcp".into(),
                libc::IPPROTO_UDP => "udp".into(),
                libc::IPPROTO_RAW => "any protocol (IPPROTO_RAW)".into(),
                p => format!("protocol {p}"),
            };
            format!("raw {family} {proto}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let packet = "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n\
                      0000000015409de2 3      3    0003   2     1 0      101    940997\n\
                      0000000015409de3 3      2    0800   0     1 0      0      12\n";
        let v = parse_proc_packet(packet).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].sock_type, v[0].protocol, v[0].ifindex, v[0].uid, v[0].inode), (3, 3, 2, 101, 940997));
        assert_eq!((v[1].sock_type, v[1].protocol), (2, 0x0800));
        assert_eq!(describe(&v[0]), "packet SOCK_RAW ETH_P_ALL");

        let raw = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n \
                   116: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 940995 2 000000005659e9e5 0\n";
        let v = parse_proc_raw(raw, Family::V4).unwrap();
        assert_eq!(v, vec![RawSocket { kind: Kind::Raw, family: Some(Family::V4), sock_type: 3, protocol: 1, ifindex: 0, uid: 0, inode: 940995 }]);
        assert_eq!(describe(&v[0]), "raw ipv4 icmp");
        let raw6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  \
                    58: 00000000000000000000000000000000:003A 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 5555 2 0000000000000000 0\n";
        let v = parse_proc_raw(raw6, Family::V6).unwrap();
        assert_eq!((v[0].protocol, v[0].uid, v[0].inode), (58, 1000, 5555));
        assert!(parse_proc_raw("head\nnonsense\n", Family::V4).is_err());
        assert!(parse_proc_packet("head\n1 2 x\n").is_err());
    }

    #[test]
    fn diag_replies_parse() {
        let mut p = vec![0u8; 16];
        p[0] = libc::AF_PACKET as u8;
        p[1] = 3;
        p[2..4].copy_from_slice(&0x0003u16.to_ne_bytes());
        p[4..8].copy_from_slice(&4242u32.to_ne_bytes());
        let mut info = vec![0u8; 24];
        info[..4].copy_from_slice(&7u32.to_ne_bytes());
        p.extend_from_slice(&28u16.to_ne_bytes());
        p.extend_from_slice(&PACKET_DIAG_INFO.to_ne_bytes());
        p.extend_from_slice(&info);
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&PACKET_DIAG_UID.to_ne_bytes());
        p.extend_from_slice(&65534u32.to_ne_bytes());
        let s = parse_packet(&p).unwrap().unwrap();
        assert_eq!((s.kind, s.sock_type, s.protocol, s.inode, s.ifindex, s.uid), (Kind::Packet, 3, 3, 4242, 7, 65534));
        assert!(parse_packet(&p[..10]).is_err());

        let mut r = vec![0u8; sockdiag::MSG_LEN];
        r[0] = libc::AF_INET6 as u8;
        r[1] = 7;
        r[4..6].copy_from_slice(&58u16.to_be_bytes());
        r[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        r[68..72].copy_from_slice(&99u32.to_ne_bytes());
        let s = parse_raw(&r).unwrap().unwrap();
        assert_eq!((s.kind, s.family, s.protocol, s.uid, s.inode), (Kind::Raw, Some(Family::V6), 58, 1000, 99));
        assert_eq!(describe(&s), "raw ipv6 icmpv6");
    }
}
