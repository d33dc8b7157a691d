//! Packet and raw sockets made visible (issue 12, item 4): this test process opens an
//! `AF_PACKET` socket and a raw ICMP socket inside a fresh namespace; `leash conns` and `leash
//! status` (text and JSON) must warn about both, naming this process (pid and command name),
//! and say that what a packet socket sends bypasses the firewall. A namespace without such
//! sockets gets no warning. (That a packet socket really sends past a drop-everything output
//! chain is shown in crates/kernel/tests/rawsock.rs.)

use crate::harness::*;
use kernel::netns::NetNs;
use std::os::fd::{FromRawFd, OwnedFd};

fn socket(domain: i32, ty: i32, proto: i32) -> OwnedFd {
    // SAFETY: plain system call; the fd is owned below.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn conns_and_status_warn_about_processes_holding_packet_and_raw_sockets() {
    if !need_root("conns_and_status_warn_about_processes_holding_packet_and_raw_sockets") {
        return;
    }
    let ns = NetNs::new().unwrap();
    // Nothing to warn about yet.
    for args in [&["conns"][..], &["status"][..]] {
        let r = leash_in(&ns, args);
        assert!(r.ok(), "{r}");
        assert!(!r.stderr.contains("packet socket") && !r.stderr.contains("raw IP socket"), "{r}");
    }
    let (_packet, _raw) = ns.run(|| {
        (
            socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(0x0003u16.to_be())),
            socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        )
    });
    let me = std::process::id();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_string();
    let holder = format!("{me}/{comm} (user root)");

    let path = TempDir::new("packet");
    let policy = path.file("p.toml", "version = 1\n");
    let r = leash_in(&ns, &["apply", &policy]);
    assert!(r.ok(), "{r}");
    for args in [&["conns"][..], &["status"][..]] {
        let r = leash_in(&ns, args);
        assert!(r.ok(), "{r}");
        assert!(r.stderr.contains("leash: warning: 1 packet socket(s) (AF_PACKET): what they send bypasses netfilter"), "{r}");
        assert!(r.stderr.contains(&format!("{holder}: packet SOCK_RAW ETH_P_ALL")), "{r}");
        assert!(r.stderr.contains("leash: warning: 1 raw IP socket(s) (SOCK_RAW)"), "{r}");
        assert!(r.stderr.contains(&format!("{holder}: raw ipv4 icmp")), "{r}");

        let mut json_args = args.to_vec();
        json_args.push("--json");
        let r = leash_in(&ns, &json_args);
        assert!(r.ok(), "{r}");
        let j = r.json();
        let raw = &j["raw_sockets"];
        let p = &raw["packet"].as_array().unwrap_or_else(|| panic!("raw_sockets.packet{r}"))[0];
        assert_eq!((p["pid"].as_u64(), p["comm"].as_str(), p["uid"].as_u64()), (Some(u64::from(me)), Some(comm.as_str()), Some(0)), "{r}");
        assert_eq!(p["socket"], "packet SOCK_RAW ETH_P_ALL", "{r}");
        let x = &raw["raw"][0];
        assert_eq!((x["pid"].as_u64(), x["socket"].as_str()), (Some(u64::from(me)), Some("raw ipv4 icmp")), "{r}");
        if args[0] == "conns" {
            let w: Vec<&str> = j["warnings"].as_array().unwrap().iter().filter_map(|w| w.as_str()).collect();
            assert!(w.iter().any(|w| w.contains("bypasses netfilter")), "{r}");
        }
    }
}
