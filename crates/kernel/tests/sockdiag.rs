//! `kernel::sockdiag` against the real kernel: real TCP and UDP sockets (IPv4, IPv6, dual stack)
//! made inside a throwaway network namespace must be listed with the right addresses, state,
//! owner, inode and byte counters, and found by an exact lookup. Needs root; every test works in
//! its own network namespace (see `kernel::netns`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use kernel::netns::NetNs;
use kernel::sockdiag::{self, DiagSocket, Family, Proto, Query, State, States};
use kernel::testutil::{need_root, nft_load};

fn inode(fd: RawFd) -> u64 {
    // SAFETY: stat is plain old data; fstat fills it for a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the duration of the call, st is writable.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    st.st_ino
}

fn find(all: &[DiagSocket], inode: u64) -> DiagSocket {
    let hits: Vec<_> = all.iter().filter(|s| s.inode == inode).collect();
    assert_eq!(hits.len(), 1, "inode {inode} listed {} times in {all:#?}", hits.len());
    *hits[0]
}

#[test]
fn dump_lists_tcp_and_udp_of_both_families_with_owner_and_inode() {
    if !need_root("dump_lists_tcp_and_udp_of_both_families_with_owner_and_inode") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| {
        let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l6 = TcpListener::bind("[::1]:0").unwrap();
        let c4 = TcpStream::connect(l4.local_addr().unwrap()).unwrap();
        let c6 = TcpStream::connect(l6.local_addr().unwrap()).unwrap();
        let (a4, _) = l4.accept().unwrap();
        let (a6, _) = l6.accept().unwrap();
        let u4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let u6 = UdpSocket::bind("[::1]:0").unwrap();
        u6.connect(u4.local_addr().unwrap().to_string().replace("127.0.0.1", "[::1]"))
            .unwrap();

        let all = sockdiag::dump(&Query::default()).unwrap();
        // Only this namespace's sockets: the 6 TCP and 2 UDP made here.
        assert_eq!(all.len(), 8, "{all:#?}");

        let s = find(&all, inode(l4.as_raw_fd()));
        assert_eq!((s.proto, s.family, s.state), (Proto::Tcp, Family::V4, State::Listen));
        assert_eq!(s.local, l4.local_addr().unwrap());
        assert!(!s.has_remote());
        assert_eq!(s.uid, 0);

        let s = find(&all, inode(c4.as_raw_fd()));
        assert_eq!((s.proto, s.family, s.state), (Proto::Tcp, Family::V4, State::Established));
        assert_eq!((s.local, s.remote), (c4.local_addr().unwrap(), c4.peer_addr().unwrap()));
        assert!(s.tcp.is_some(), "tcp_info for a full TCP socket");

        let s = find(&all, inode(a6.as_raw_fd()));
        assert_eq!((s.proto, s.family, s.state), (Proto::Tcp, Family::V6, State::Established));
        assert_eq!((s.local, s.remote), (a6.local_addr().unwrap(), a6.peer_addr().unwrap()));
        assert_eq!(s.remote, c6.local_addr().unwrap());

        let s = find(&all, inode(u4.as_raw_fd()));
        assert_eq!((s.proto, s.family, s.state), (Proto::Udp, Family::V4, State::Close));
        assert!(!s.has_remote());
        assert!(s.tcp.is_none());

        let s = find(&all, inode(u6.as_raw_fd()));
        assert_eq!((s.proto, s.family, s.state), (Proto::Udp, Family::V6, State::Established));
        assert_eq!((s.local, s.remote), (u6.local_addr().unwrap(), u6.peer_addr().unwrap()));
        find(&all, inode(a4.as_raw_fd()));

        // Protocol and family filters.
        let q = Query { udp: false, ipv6: false, ..Query::default() };
        let v4tcp = sockdiag::dump(&q).unwrap();
        assert_eq!(v4tcp.len(), 3, "{v4tcp:#?}");
        assert!(v4tcp.iter().all(|s| s.proto == Proto::Tcp && s.family == Family::V4));
    });
}

#[test]
fn state_filter_and_socket_owner() {
    if !need_root("state_filter_and_socket_owner") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // A socket made by a thread that dropped to uid/gid 65534 is owned by 65534: setresuid as
        // a raw syscall changes only the calling thread (glibc's wrapper would change them all).
        let (stream, ino) = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: raw syscalls on this thread only; it ends right after.
                unsafe {
                    assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
                    assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
                }
                let c = TcpStream::connect(addr).unwrap();
                let ino = inode(c.as_raw_fd());
                (c, ino)
            })
            .join()
            .unwrap()
        });
        let (_accepted, _) = l.accept().unwrap();

        let listeners = sockdiag::dump(&Query { states: States::of(&[State::Listen]), ..Query::default() }).unwrap();
        assert_eq!(listeners.len(), 1, "{listeners:#?}");
        assert_eq!(listeners[0].state, State::Listen);

        let est = sockdiag::dump(&Query { states: States::of(&[State::Established]), ..Query::default() }).unwrap();
        assert_eq!(est.len(), 2, "{est:#?}");
        let s = find(&est, ino);
        assert_eq!(s.uid, 65534);
        assert_eq!(s.local, stream.local_addr().unwrap());
        assert!(sockdiag::dump(&Query { states: States::NONE, ..Query::default() }).unwrap().is_empty());
    });
}

#[test]
fn tcp_info_counts_bytes_both_ways() {
    if !need_root("tcp_info_counts_bytes_both_ways") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        c.write_all(&[7u8; 10_000]).unwrap();
        let mut got = vec![0u8; 10_000];
        a.read_exact(&mut got).unwrap();
        a.write_all(&[1u8; 300]).unwrap();
        let mut back = [0u8; 300];
        c.read_exact(&mut back).unwrap();
        // bytes_acked counts the SYN of the side that connected (RFC 4898 starts it at the ISN),
        // hence 10,001 for the client. The ACK for the last bytes may still be in flight: wait
        // for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(2);
        let (ci, ai) = (inode(c.as_raw_fd()), inode(a.as_raw_fd()));
        loop {
            let all = sockdiag::dump(&Query { udp: false, ..Query::default() }).unwrap();
            let (ct, at) = (find(&all, ci).tcp.unwrap(), find(&all, ai).tcp.unwrap());
            let done = ct.bytes_acked == 10_001 && at.bytes_acked >= 300;
            if done || Instant::now() > deadline {
                assert_eq!((ct.bytes_acked, ct.bytes_sent, ct.bytes_received), (10_001, 10_000, 300), "{ct:#?}");
                assert!(at.bytes_acked == 300 || at.bytes_acked == 301, "{at:#?}");
                assert_eq!((at.bytes_sent, at.bytes_received), (300, 10_000), "{at:#?}");
                assert!(ct.rtt_us > 0 && ct.segs_out > 0);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn dropped_connect_is_listed_as_syn_sent() {
    if !need_root("dropped_connect_is_listed_as_syn_sent") {
        return;
    }
    let ns = NetNs::new().unwrap();
    nft_load(
        &ns,
        "table inet sockdiag_test {\n chain o {\n type filter hook output priority 0;\n tcp dport 9 drop\n }\n}\n",
    );
    ns.run(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let e = s.connect(&dst.into()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINPROGRESS));
        let all = sockdiag::dump(&Query::default()).unwrap();
        let d = find(&all, inode(s.as_raw_fd()));
        assert_eq!(d.state, State::SynSent);
        assert_eq!(d.remote, dst);
        let only = sockdiag::dump(&Query { states: States::of(&[State::SynSent]), ..Query::default() }).unwrap();
        assert_eq!(only.len(), 1);
        // The exact lookup finds it too (what NFLOG attribution does with a dropped SYN).
        let local = s.local_addr().unwrap().as_socket().unwrap();
        let hit = sockdiag::lookup(Proto::Tcp, local, dst).unwrap().expect("found");
        assert_eq!((hit.inode, hit.state), (d.inode, State::SynSent));
    });
}

#[test]
fn lookup_finds_one_socket_by_its_five_tuple() {
    if !need_root("lookup_finds_one_socket_by_its_five_tuple") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| {
        // TCP, both ends and both families.
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let l = TcpListener::bind(bind).unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (a, _) = l.accept().unwrap();
            let (cl, cr) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
            let hit = sockdiag::lookup(Proto::Tcp, cl, cr).unwrap().expect("client end");
            assert_eq!(hit.inode, inode(c.as_raw_fd()));
            assert_eq!((hit.local, hit.remote, hit.state), (cl, cr, State::Established));
            assert!(hit.tcp.is_some());
            let hit = sockdiag::lookup(Proto::Tcp, cr, cl).unwrap().expect("server end");
            assert_eq!(hit.inode, inode(a.as_raw_fd()));
            // A port pair nobody uses.
            let mut other = cl;
            other.set_port(1);
            assert_eq!(sockdiag::lookup(Proto::Tcp, other, cr).unwrap(), None);
        }

        // UDP: the connected socket, and a bound unconnected one for any remote.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let (cl, sl) = (client.local_addr().unwrap(), server.local_addr().unwrap());
        let hit = sockdiag::lookup(Proto::Udp, cl, sl).unwrap().expect("connected UDP");
        assert_eq!((hit.inode, hit.state), (inode(client.as_raw_fd()), State::Established));
        let anyone: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let hit = sockdiag::lookup(Proto::Udp, sl, anyone).unwrap().expect("bound UDP");
        assert_eq!((hit.inode, hit.state), (inode(server.as_raw_fd()), State::Close));
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(sockdiag::lookup(Proto::Udp, nobody, anyone).unwrap(), None);

        // Dual stack: an IPv6 listener on [::] accepts an IPv4 connection; the accepted socket is
        // IPv6 with mapped addresses and is found by its IPv4 addresses as well.
        let l = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        l.set_only_v6(false).unwrap();
        l.bind(&"[::]:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        l.listen(8).unwrap();
        let port = l.local_addr().unwrap().as_socket().unwrap().port();
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (a, _) = l.accept().unwrap();
        let (cl, cr) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let hit = sockdiag::lookup(Proto::Tcp, cr, cl).unwrap().expect("mapped server end");
        assert_eq!(hit.inode, inode(a.as_raw_fd()));
        assert_eq!(hit.family, Family::V6);
        assert_eq!(hit.remote.ip().to_canonical(), cl.ip());
        // Mixed families never match.
        assert_eq!(sockdiag::lookup(Proto::Tcp, "[::1]:80".parse().unwrap(), cl).unwrap(), None);
    });
}

#[test]
fn thousands_of_sockets_are_all_listed() {
    if !need_root("thousands_of_sockets_are_all_listed") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // 1,500 pairs: both ends listed, several dump datagrams' worth.
        let mut keep = Vec::new();
        for _ in 0..1500 {
            keep.push(TcpStream::connect(addr).unwrap());
            keep.push(l.accept().unwrap().0);
        }
        let mut diag = sockdiag::SockDiag::open().unwrap();
        let mut out = Vec::new();
        diag.dump_into(&Query::default(), &mut out).unwrap();
        assert_eq!(out.len(), 3001);
        let mut inodes: Vec<u64> = out.iter().map(|s| s.inode).collect();
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(inodes.len(), 3001, "every socket once");
        // The socket is reusable for the next dump.
        out.clear();
        diag.dump_into(&Query { states: States::of(&[State::Listen]), ..Query::default() }, &mut out).unwrap();
        assert_eq!(out.len(), 1);
    });
}

/// SOCK_DESTROY, as `ss -K` sends it: the probe answers, and where the kernel can destroy
/// sockets an established TCP socket and a connected UDP socket of each family are aborted
/// (their owner's next call fails with ECONNABORTED, the TCP peer gets a reset), a socket named
/// with another cookie is left alone, and one destroyed already is reported gone. Where it
/// cannot, destroy fails with EOPNOTSUPP and the socket keeps working.
#[test]
fn destroy_aborts_tcp_and_connected_udp_sockets_of_both_families() {
    if !need_root("destroy_aborts_tcp_and_connected_udp_sockets_of_both_families") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| {
        let mut diag = sockdiag::SockDiag::open().unwrap();
        let supported = diag.destroy_supported().unwrap();
        for host in ["127.0.0.1", "[::1]"] {
            let l = TcpListener::bind(format!("{host}:0")).unwrap();
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut a, _) = l.accept().unwrap();
            let srv = UdpSocket::bind(format!("{host}:0")).unwrap();
            let u = UdpSocket::bind(format!("{host}:0")).unwrap();
            u.connect(srv.local_addr().unwrap()).unwrap();
            let all = sockdiag::dump(&Query::default()).unwrap();
            let (tcp, udp) = (find(&all, inode(c.as_raw_fd())), find(&all, inode(u.as_raw_fd())));
            assert_eq!(tcp.mark, Some(0), "root sees the mark: {tcp:?}");

            if !supported {
                let e = diag.destroy(&tcp).unwrap_err();
                assert!(matches!(&e, kernel::nl::NlError::Kernel(k) if k.errno == libc::EOPNOTSUPP), "{e}");
                c.write_all(b"still").unwrap();
                continue;
            }
            // Another cookie is another socket: nothing happens.
            let other = DiagSocket { cookie: tcp.cookie ^ 1, ..tcp };
            assert!(!diag.destroy(&other).unwrap());
            c.write_all(b"x").unwrap();
            a.read_exact(&mut [0u8; 1]).unwrap();

            assert!(diag.destroy(&tcp).unwrap(), "{host} tcp");
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let r = c.read(&mut [0u8; 1]);
            assert_eq!(r.as_ref().map_err(|e| e.raw_os_error()), Err(Some(libc::ECONNABORTED)), "{host} tcp: {r:?}");
            // The peer was reset.
            a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let r = a.read(&mut [0u8; 1]);
            assert!(matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "{host} peer: {r:?}");
            assert!(!diag.destroy(&tcp).unwrap(), "gone already");

            assert!(diag.destroy(&udp).unwrap(), "{host} udp");
            u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let r = u.recv(&mut [0u8; 1]);
            assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(libc::ECONNABORTED)), "{host} udp");
        }
    });
}

#[test]
fn the_socket_mark_is_reported() {
    if !need_root("the_socket_mark_is_reported") {
        return;
    }
    let ns = NetNs::new().unwrap();
    ns.run(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_mark(0x6c6e).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        s.connect(&"127.0.0.1:53".parse::<SocketAddr>().unwrap().into()).unwrap();
        let all = sockdiag::dump(&Query::default()).unwrap();
        assert_eq!(find(&all, inode(s.as_raw_fd())).mark, Some(0x6c6e));
    });
}
