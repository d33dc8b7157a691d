//! `kernel::rawsock` against the real kernel: packet and raw IP sockets made in a throwaway
//! namespace are listed with their type, protocol, interface, owner and inode, from sock_diag
//! where this kernel has the handler and from `/proc/thread-self/net` where it does not, and
//! both sources agree where both exist. And the reason they are listed: a frame sent on an
//! `AF_PACKET` socket reaches the peer while an nftables output chain with policy drop (what a
//! deny-all leash table is) refuses the same datagram sent through a UDP socket or a raw IP
//! socket (whose packets, unlike a packet socket's, do pass the hook).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use common::{CLIENT4, PEER4, pair};
use kernel::netns::NetNs;
use kernel::rawsock::{self, Kind, RawSocket, Source};
use kernel::sockdiag::Family;
use kernel::testutil::{need_root, nft_load};

fn inode(fd: RawFd) -> u64 {
    // SAFETY: stat is plain old data; fstat fills it for a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the duration of the call, st is writable.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    st.st_ino
}

fn socket(domain: i32, ty: i32, proto: i32) -> OwnedFd {
    // SAFETY: plain system call; the fd is owned below.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    assert!(fd >= 0, "socket({domain}, {ty}, {proto}): {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Binds a packet socket to an interface (and a protocol).
fn bind_packet(fd: &OwnedFd, proto: u16, ifindex: i32) {
    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: sll is a valid sockaddr_ll of the given length.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32)
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
}

fn ifindex(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i > 0, "no interface {name}");
    i as i32
}

fn by_inode(all: &[RawSocket], fd: &OwnedFd) -> RawSocket {
    let ino = inode(fd.as_raw_fd());
    let hits: Vec<_> = all.iter().filter(|s| s.inode == ino).collect();
    assert_eq!(hits.len(), 1, "inode {ino} in {all:#?}");
    *hits[0]
}

fn sorted(mut v: Vec<RawSocket>) -> Vec<RawSocket> {
    v.sort_by_key(|s| s.inode);
    v
}

#[test]
fn packet_and_raw_sockets_are_listed_from_diag_or_proc() {
    if !need_root("packet_and_raw_sockets_are_listed_from_diag_or_proc") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| {
        let all_frames = socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(0x0003u16.to_be()));
        let ip_on_lo = socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0);
        bind_packet(&ip_on_lo, 0x0800, ifindex("lo"));
        let icmp = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        let icmp6 = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
        // Ordinary sockets are not listed.
        let _udp = UdpSocket::bind("127.0.0.1:0").unwrap();

        let l = rawsock::list().unwrap();
        assert_eq!(l.sockets.len(), 4, "{l:#?}");
        let s = by_inode(&l.sockets, &all_frames);
        assert_eq!((s.kind, s.family, s.sock_type, s.protocol, s.ifindex, s.uid), (Kind::Packet, None, 3, 3, 0, 0));
        let s = by_inode(&l.sockets, &ip_on_lo);
        assert_eq!((s.kind, s.sock_type, s.protocol, s.ifindex), (Kind::Packet, 2, 0x0800, 1));
        let s = by_inode(&l.sockets, &icmp);
        assert_eq!((s.kind, s.family, s.protocol, s.uid), (Kind::Raw, Some(Family::V4), 1, 0));
        let s = by_inode(&l.sockets, &icmp6);
        assert_eq!((s.kind, s.family, s.protocol), (Kind::Raw, Some(Family::V6), 58));

        // Which source each half came from is what the kernel answered, and the fallback
        // reads the same sockets.
        let proc_packet = sorted(rawsock::proc_packet().unwrap());
        match rawsock::packet_diag().unwrap() {
            Some(diag) => {
                assert_eq!(l.packet_source, Source::Diag);
                assert_eq!(sorted(diag), proc_packet, "packet_diag vs /proc/net/packet");
            }
            None => assert_eq!(l.packet_source, Source::Proc),
        }
        let proc_raw = sorted(rawsock::proc_raw().unwrap());
        assert_eq!(proc_raw.len(), 2, "{proc_raw:#?}");
        match rawsock::raw_diag().unwrap() {
            Some(diag) => {
                assert_eq!(l.raw_source, Source::Diag);
                // /proc/net/raw does not show the bound device; nothing here is bound.
                assert_eq!(sorted(diag), proc_raw, "raw_diag vs /proc/net/raw");
            }
            None => {
                eprintln!("this kernel has no raw_diag (CONFIG_INET_RAW_DIAG): raw sockets come from /proc");
                assert_eq!(l.raw_source, Source::Proc);
            }
        }
    });
}

/// An Ethernet broadcast frame carrying IPv4/UDP from `src` to `dst:port` with `payload`.
fn udp_frame(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let csum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    // UDP over IPv4 may go without a checksum.
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_packet_socket_sends_past_an_output_chain_that_drops_everything() {
    if !need_root("a_packet_socket_sends_past_an_output_chain_that_drops_everything") {
        return;
    }
    let p = pair();
    nft_load(&p.client, "table inet leash {\n chain output { type filter hook output priority 0; policy drop; }\n}\n");
    let server = p.peer.run(|| UdpSocket::bind((PEER4, 7006)).unwrap());
    server.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let to = SocketAddr::from((PEER4, 7006));
    p.client.run(|| {
        // Through the IP stack: the output chain drops it (EPERM).
        let u = UdpSocket::bind((CLIENT4, 0)).unwrap();
        let e = u.send_to(b"via udp", to).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");

        // A raw IP socket's packets pass the output hook too: dropped the same way.
        let raw = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP);
        let mut udp = 40001u16.to_be_bytes().to_vec();
        udp.extend_from_slice(&7006u16.to_be_bytes());
        udp.extend_from_slice(&(8u16 + 7).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(b"via raw");
        // SAFETY: sockaddr_in is plain old data.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from_ne_bytes(PEER4.octets());
        // SAFETY: udp and sin are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                raw.as_raw_fd(),
                udp.as_ptr() as *const libc::c_void,
                udp.len(),
                0,
                &sin as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!((n, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EPERM)), "a raw IP socket passes the output chain");

        // Past it: a frame on an AF_PACKET socket, as any CAP_NET_RAW holder may send.
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        let frame = udp_frame(CLIENT4, PEER4, 7006, b"via packet");
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex("pair0");
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: frame and sll are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(n, frame.len() as isize, "sendto AF_PACKET: {}", std::io::Error::last_os_error());
    });
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).expect("the frame sent on the packet socket arrives");
    assert_eq!(&buf[..n], b"via packet");
    assert_eq!(from, SocketAddr::from((CLIENT4, 40000)));
}
