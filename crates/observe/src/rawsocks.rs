//! Processes holding packet (`AF_PACKET`) or raw IP sockets, which `leash conns` and `leash
//! status` print as a warning: what a packet socket sends never passes the firewall, and a raw
//! socket may forge its headers (see [`kernel::rawsock`] for what each can do).
//!
//! Some are expected on most hosts: DHCP clients (dhclient, dhcpcd, systemd-networkd,
//! NetworkManager) listen for their answers on packet sockets, capture tools (tcpdump,
//! wireshark's dumpcap) read them, lldpd and arping use them, ping and traceroute may hold raw
//! sockets. The listing names each holder so an administrator can tell these from a process
//! that has no business sending past the firewall.

use std::collections::HashSet;

use kernel::nl::NlError;
use kernel::rawsock::{self, Kind, Source};
use serde::Serialize;

use crate::procs::{self, SocketOwners};

/// One packet or raw socket and who holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    /// `packet` or `raw`.
    pub kind: &'static str,
    /// `packet SOCK_RAW ETH_P_ALL`, `raw ipv4 icmp`, ...
    pub socket: String,
    /// The interface it is bound to, 0 for all.
    pub ifindex: u32,
    /// The socket's owner.
    pub uid: u32,
    pub user: Option<String>,
    pub inode: u64,
    /// The process holding it (the oldest when several do); `None` when it is not visible
    /// (another user's process without root, or it exited).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
}

/// The sockets and where the kernel's listing came from.
#[derive(Debug, Clone, Default)]
pub struct Holders {
    pub holders: Vec<Holder>,
    /// The packet and raw listings came from sock_diag (`false`: `/proc/net`, because this
    /// kernel lacks the diag handler).
    pub packet_diag: bool,
    pub raw_diag: bool,
}

impl Holders {
    pub fn packet(&self) -> impl Iterator<Item = &Holder> {
        self.holders.iter().filter(|h| h.kind == "packet")
    }
    pub fn raw(&self) -> impl Iterator<Item = &Holder> {
        self.holders.iter().filter(|h| h.kind == "raw")
    }
}

/// Errors of [`holders`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list packet and raw sockets: {0}")]
    List(#[from] NlError),
    #[error("cannot scan /proc for their processes: {0}")]
    Proc(#[from] std::io::Error),
}

/// Every packet and raw socket of the calling thread's network namespace with its process,
/// packet sockets first, then by pid.
pub fn holders() -> Result<Holders, Error> {
    let l = rawsock::list()?;
    let inodes: HashSet<u64> = l.sockets.iter().map(|s| s.inode).filter(|&i| i != 0).collect();
    let owners = SocketOwners::scan(&inodes)?;
    let mut holders: Vec<Holder> = l
        .sockets
        .iter()
        .map(|s| {
            let p = owners.owner(s.inode);
            Holder {
                kind: s.kind.as_str(),
                socket: rawsock::describe(s),
                ifindex: s.ifindex,
                uid: s.uid,
                user: procs::user_name(s.uid),
                inode: s.inode,
                pid: p.map(|p| p.pid),
                comm: p.map(|p| p.comm.clone()),
                exe: p.and_then(|p| p.exe.clone()),
            }
        })
        .collect();
    holders.sort_by_key(|h| (h.kind != Kind::Packet.as_str(), h.pid.is_none(), h.pid, h.inode));
    Ok(Holders { holders, packet_diag: l.packet_source == Source::Diag, raw_diag: l.raw_source == Source::Diag })
}

/// The warning lines for people (empty when there is nothing to warn about): one line per kind,
/// then one per holding process.
pub fn warning_lines(h: &Holders) -> Vec<String> {
    let mut out = Vec::new();
    let who = |x: &Holder| {
        let proc = match (x.pid, &x.comm) {
            (Some(p), Some(c)) => format!("{p}/{c}"),
            (Some(p), None) => p.to_string(),
            _ => "(process not visible)".into(),
        };
        let user = x.user.clone().unwrap_or_else(|| x.uid.to_string());
        let dev = if x.ifindex == 0 { String::new() } else { format!(" on interface {}", x.ifindex) };
        format!("  {proc} (user {user}): {}{dev}", x.socket)
    };
    let packet: Vec<&Holder> = h.packet().collect();
    if !packet.is_empty() {
        out.push(format!(
            "{} packet socket(s) (AF_PACKET): what they send bypasses netfilter, so no leash rule applies to it. \
             Expected for DHCP clients (dhclient, systemd-networkd, NetworkManager) and capture tools (tcpdump); \
             anything else can send past the firewall:",
            packet.len()
        ));
        out.extend(packet.into_iter().map(who));
    }
    let raw: Vec<&Holder> = h.raw().collect();
    if !raw.is_empty() {
        out.push(format!(
            "{} raw IP socket(s) (SOCK_RAW): leash decides their packets, but they can forge headers and \
             read all traffic of their protocol. Expected for ping, traceroute and routing daemons:",
            raw.len()
        ));
        out.extend(raw.into_iter().map(who));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_names_each_holder_and_what_it_can_do() {
        assert!(warning_lines(&Holders::default()).is_empty());
        let h = |kind, socket: &str, pid, comm: Option<&str>| Holder {
            kind,
            socket: socket.into(),
            ifindex: if kind == "packet" { 2 } else { 0 },
            uid: 0,
            user: Some("root".into()),
            inode: 1,
            pid,
            comm: comm.map(String::from),
            exe: None,
        };
        let hs = Holders {
            holders: vec![
                h("packet", "packet SOCK_RAW ETH_P_ALL", Some(10), Some("dhclient")),
                h("packet", "packet SOCK_DGRAM IPv4", None, None),
                h("raw", "raw ipv4 icmp", Some(11), Some("ping")),
            ],
            packet_diag: true,
            raw_diag: false,
        };
        let w = warning_lines(&hs);
        assert_eq!(w.len(), 5, "{w:#?}");
        assert!(w[0].starts_with("2 packet socket(s) (AF_PACKET): what they send bypasses netfilter"), "{}", w[0]);
        assert_eq!(w[1], "  10/dhclient (user root): packet SOCK_RAW ETH_P_ALL on interface 2");
        assert_eq!(w[2], "  (process not visible) (user root): packet SOCK_DGRAM IPv4 on interface 2");
        assert!(w[3].starts_with("1 raw IP socket(s) (SOCK_RAW): leash decides their packets"), "{}", w[3]);
        assert_eq!(w[4], "  11/ping (user root): raw ipv4 icmp");
    }
}
