//! The live flows a policy denies: what `leash apply` reports (and ends with `--cut`) after it
//! committed a policy, and what `leash conns --policy` says a candidate would cut.
//!
//! A policy decides new connections; a flow that exists already keeps going through the table's
//! `ct state established` accept however the policy changed. Three kinds of flow can be live
//! and denied:
//! - **socket**: an outgoing TCP socket, or a connected UDP socket, of this host whose
//!   destination, port, owner and process the policy denies ([`crate::conns`] decides it). It is
//!   ended by destroying the socket and deleting its conntrack entries.
//! - **conntrack**: a flow in the conntrack table from this host's address whose socket is an
//!   unconnected UDP socket (a resolver, a game, anything that `sendto`s): the socket has no
//!   peer for sock_diag to show, only conntrack knows the flow. The socket's owner decides it;
//!   it is ended by deleting the entry (the socket, which may talk to allowed peers too, stays).
//! - **forwarded**: a flow through this host (a container, a VM), which has no local socket;
//!   the caller says what the policy decides for it, and deleting its entry ends it.
//!
//! Entries of local UDP flows whose socket is gone are leftovers: nothing uses them, but a later
//! socket on the same port pair would ride them as established. They are listed apart (a cut
//! deletes them all: no connection depends on them). Incoming flows (accepted by a local
//! listener, or addressed to this host) are never listed: their packets in the output hook are
//! answers, which no egress rule decides.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use kernel::conntrack::{Entry, L4};
use kernel::sockdiag::{Proto, State};
use policy::{Connection, Policy};
use serde::Serialize;

use crate::conns::{self, Conn, Direction, Judge, Verdict};

/// How a denied flow exists (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Socket,
    Conntrack,
    Forwarded,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Socket => "socket",
            Origin::Conntrack => "conntrack",
            Origin::Forwarded => "forwarded",
        }
    }
}

/// One live flow the policy denies.
#[derive(Debug, Clone, Serialize)]
pub struct DeniedFlow {
    pub origin: Origin,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// The sending end (this host's socket, or the workload of a forwarded flow) and the
    /// destination, as the policy sees them (IPv4-mapped addresses as IPv4).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's state (`ESTABLISHED`, `SYN_SENT`, ... or `UNCONN`); `None` when forwarded.
    pub state: Option<&'static str>,
    /// The socket's owner and its process, when known.
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The deciding rule (see [`Verdict`]).
    pub rule: Option<String>,
    pub decided_by: &'static str,
    /// The socket to destroy (origin `socket` only).
    #[serde(skip)]
    pub socket: Option<kernel::sockdiag::DiagSocket>,
    /// Its conntrack entries to delete.
    #[serde(skip)]
    pub entries: Vec<Entry>,
}

impl DeniedFlow {
    /// `rule NAME` or the kind of decider in parentheses.
    pub fn decider_text(&self) -> String {
        Verdict { verdict: "deny", rule: self.rule.clone(), decided_by: self.decided_by }.decider_text()
    }
}

/// What [`survey`] found.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    pub denied: Vec<DeniedFlow>,
    /// Local UDP entries without any socket (see the module docs).
    pub leftovers: Vec<Entry>,
    /// Outgoing connections whose verdict is unknown (the policy has service or cgroup rules and
    /// the process is not visible).
    pub undecided: usize,
}

/// The live flows `policy` denies among the sockets of `snap` (a snapshot judged by that policy,
/// with processes) and the conntrack `entries` (`None` when they could not be read: then only
/// sockets are found). `own` holds this host's addresses; an entry from one of them is a local
/// flow, one neither from nor to them a forwarded flow, which `forwarded` decides (`None`: not
/// governed, not listed).
pub fn survey(
    snap: &[Conn],
    entries: Option<&[Entry]>,
    policy: &Policy,
    own: &[IpAddr],
    forwarded: &dyn Fn(&Entry) -> Option<Verdict>,
) -> Survey {
    let mut out = Survey::default();
    let entries = entries.unwrap_or_default();
    let key = |proto: u8, l: SocketAddr, r: SocketAddr| (proto, canonical(l), canonical(r));
    // Every conntrack entry by its original tuple.
    let mut by_tuple: HashMap<(u8, SocketAddr, SocketAddr), Vec<&Entry>> = HashMap::new();
    for e in entries {
        if let L4::Ports { src, dst } = e.orig.l4 {
            by_tuple.entry(key(e.orig.proto, SocketAddr::new(e.orig.src, src), SocketAddr::new(e.orig.dst, dst))).or_default().push(e);
        }
    }
    // Sockets with a peer own their tuple's entries, denied or not.
    let mut owned: HashMap<(u8, SocketAddr, SocketAddr), usize> = HashMap::new();
    for (i, c) in snap.iter().enumerate() {
        if let Some(r) = c.remote {
            owned.insert(key(ipproto(c.socket.proto), c.local, r), i);
        }
    }
    for c in snap {
        let Some(remote) = c.remote else { continue };
        if c.direction != Direction::Out || c.socket.state == State::TimeWait {
            continue;
        }
        match c.verdict() {
            None => {
                if conns::connection(c).is_some() {
                    out.undecided += 1;
                }
            }
            Some(v) if v.allows() => {}
            Some(v) => {
                let k = key(ipproto(c.socket.proto), c.local, remote);
                out.denied.push(DeniedFlow {
                    origin: Origin::Socket,
                    proto: c.proto,
                    local: k.1,
                    remote: k.2,
                    state: Some(c.state),
                    uid: c.uid,
                    user: c.user.clone(),
                    pid: c.pid,
                    comm: c.comm.clone(),
                    rule: v.rule,
                    decided_by: v.decided_by,
                    socket: Some(c.socket),
                    entries: by_tuple.get(&k).map(|v| v.iter().map(|e| **e).collect()).unwrap_or_default(),
                });
            }
        }
    }

    let is_own = |ip: IpAddr| {
        let ip = ip.to_canonical();
        ip.is_loopback() || own.iter().any(|o| o.to_canonical() == ip)
    };
    let mut judge = Judge::new(policy);
    for e in entries {
        let L4::Ports { src: sport, dst: dport } = e.orig.l4 else { continue };
        let proto = match i32::from(e.orig.proto) {
            libc::IPPROTO_TCP => "tcp",
            libc::IPPROTO_UDP => "udp",
            _ => continue,
        };
        let (local, remote) = (SocketAddr::new(e.orig.src, sport), SocketAddr::new(e.orig.dst, dport));
        let k = key(e.orig.proto, local, remote);
        if owned.contains_key(&k) {
            continue;
        }
        let flow = |origin, state, owner: Option<&Conn>, v: Verdict| DeniedFlow {
            origin,
            proto,
            local: k.1,
            remote: k.2,
            state,
            uid: owner.and_then(|c| c.uid),
            user: owner.and_then(|c| c.user.clone()),
            pid: owner.and_then(|c| c.pid),
            comm: owner.and_then(|c| c.comm.clone()),
            rule: v.rule,
            decided_by: v.decided_by,
            socket: None,
            entries: vec![*e],
        };
        match (is_own(e.orig.src), is_own(e.orig.dst)) {
            // Local, outgoing (to this host itself too: loopback decides those).
            (true, _) => {
                if proto != "udp" {
                    // A TCP flow without a socket is closed; its entry dies with it.
                    continue;
                }
                let Some(owner) = unconnected_owner(snap, k.1) else {
                    out.leftovers.push(*e);
                    continue;
                };
                let Some(uid) = owner.uid else { continue };
                let conn = Connection {
                    proto: policy::Proto::Udp,
                    dst: k.2.ip(),
                    port: Some(k.2.port()),
                    uid,
                    gid: owner.gid.unwrap_or(uid),
                    name: None,
                    cgroup: None,
                    at: None,
                    from: None,
                };
                match judge.decide(conn, owner.pid, owner.socket.mark) {
                    Some(v) if !v.allows() => out.denied.push(flow(Origin::Conntrack, Some(owner.state), Some(owner), v)),
                    Some(_) => {}
                    None => out.undecided += 1,
                }
            }
            // To this host: incoming, answered, not decided by egress rules.
            (false, true) => {}
            (false, false) => {
                if let Some(v) = forwarded(e)
                    && !v.allows()
                {
                    out.denied.push(flow(Origin::Forwarded, None, None, v));
                }
            }
        }
    }
    out
}

/// The unconnected UDP socket that sends from `local`: bound to that address or to the
/// wildcard of either family (a dual-stack socket sends IPv4 too), on that port.
fn unconnected_owner(snap: &[Conn], local: SocketAddr) -> Option<&Conn> {
    let candidates = || {
        snap.iter().filter(move |c| {
            c.socket.proto == Proto::Udp && c.direction == Direction::Unconnected && c.local.port() == local.port()
        })
    };
    candidates()
        .find(|c| c.local.ip().to_canonical() == local.ip())
        .or_else(|| candidates().find(|c| c.local.ip().is_unspecified()))
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn ipproto(p: Proto) -> u8 {
    match p {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::conntrack::Tuple;
    use kernel::sockdiag::{DiagSocket, Family};

    fn policy(text: &str) -> Policy {
        let (p, d) = policy::load(text, &policy::StaticResolver::default());
        p.unwrap_or_else(|| panic!("{d:?}"))
    }

    const POLICY: &str = r#"version = 1
[[rule]]
name = "web"
action = "allow"
ports = [443]
to = ["203.0.113.0/24"]
"#;

    fn conn(proto: Proto, local: &str, remote: Option<&str>, direction: Direction, verdict: Option<&'static str>) -> Conn {
        let local: SocketAddr = local.parse().unwrap();
        let remote: Option<SocketAddr> = remote.map(|r| r.parse().unwrap());
        let state = match (proto, remote) {
            (Proto::Udp, None) => State::Close,
            _ => State::Established,
        };
        Conn {
            proto: if proto == Proto::Tcp { "tcp" } else { "udp" },
            family: "ipv4",
            state: if state == State::Close { "UNCONN" } else { "ESTABLISHED" },
            direction,
            local,
            remote,
            uid: Some(1000),
            user: Some("alice".into()),
            inode: 7,
            pid: Some(42),
            comm: Some("app".into()),
            exe: None,
            gid: Some(1000),
            bytes_sent: None,
            bytes_acked: None,
            bytes_received: None,
            rtt_us: None,
            retransmits: None,
            verdict,
            rule: None,
            decided_by: verdict.map(|_| "default"),
            host: None,
            socket: DiagSocket {
                proto,
                family: Family::V4,
                state,
                local,
                remote: remote.unwrap_or_else(|| "0.0.0.0:0".parse().unwrap()),
                uid: 1000,
                inode: 7,
                ifindex: 0,
                recv_queue: 0,
                send_queue: 0,
                cookie: 1,
                mark: None,
                tcp: None,
            },
        }
    }

    fn entry(proto: u8, src: &str, dst: &str, id: u32) -> Entry {
        let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let t = |a: SocketAddr, b: SocketAddr| Tuple { src: a.ip(), dst: b.ip(), proto, l4: L4::Ports { src: a.port(), dst: b.port() } };
        Entry { orig: t(s, d), reply: t(d, s), id, zone: 0, mark: 0, status: 0, timeout: 30, tcp_state: None }
    }

    #[test]
    fn sockets_unconnected_flows_leftovers_and_forwarded_flows_are_told_apart() {
        let p = policy(POLICY);
        let own: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
        let snap = vec![
            // Denied TCP socket with its entry; an allowed one; an accepted one.
            conn(Proto::Tcp, "192.0.2.1:40000", Some("198.51.100.7:22"), Direction::Out, Some("deny")),
            conn(Proto::Tcp, "192.0.2.1:40001", Some("203.0.113.5:443"), Direction::Out, Some("allow")),
            conn(Proto::Tcp, "192.0.2.1:22", Some("198.51.100.9:50000"), Direction::In, None),
            // An unconnected UDP socket on port 5000.
            conn(Proto::Udp, "0.0.0.0:5000", None, Direction::Unconnected, None),
        ];
        let entries = vec![
            entry(6, "192.0.2.1:40000", "198.51.100.7:22", 1),
            entry(6, "192.0.2.1:40001", "203.0.113.5:443", 2),
            entry(6, "198.51.100.9:50000", "192.0.2.1:22", 3),
            // Unconnected socket's flows: one denied (not on 443), one allowed.
            entry(17, "192.0.2.1:5000", "198.51.100.53:53", 4),
            entry(17, "192.0.2.1:5000", "203.0.113.5:443", 5),
            // A UDP entry whose socket is gone, a TCP one (closed).
            entry(17, "192.0.2.1:6000", "198.51.100.7:123", 6),
            entry(6, "192.0.2.1:40002", "198.51.100.7:80", 7),
            // Forwarded: a workload behind this host.
            entry(17, "10.0.0.2:7000", "198.51.100.7:9999", 8),
        ];
        let fwd = |e: &Entry| {
            (e.orig.src.to_string() == "10.0.0.2").then(|| Verdict { verdict: "deny", rule: Some("no-games".into()), decided_by: "rule" })
        };
        let s = survey(&snap, Some(&entries), &p, &own, &fwd);
        let got: Vec<(Origin, String, Vec<u32>)> =
            s.denied.iter().map(|f| (f.origin, format!("{} {} -> {}", f.proto, f.local, f.remote), f.entries.iter().map(|e| e.id).collect())).collect();
        assert_eq!(
            got,
            vec![
                (Origin::Socket, "tcp 192.0.2.1:40000 -> 198.51.100.7:22".to_string(), vec![1]),
                (Origin::Conntrack, "udp 192.0.2.1:5000 -> 198.51.100.53:53".to_string(), vec![4]),
                (Origin::Forwarded, "udp 10.0.0.2:7000 -> 198.51.100.7:9999".to_string(), vec![8]),
            ]
        );
        assert!(s.denied[0].socket.is_some() && s.denied[1].socket.is_none());
        assert_eq!((s.denied[1].pid, s.denied[1].user.as_deref(), s.denied[1].decided_by), (Some(42), Some("alice"), "default"));
        assert_eq!(s.denied[2].decider_text(), "no-games");
        assert_eq!(s.leftovers.iter().map(|e| e.id).collect::<Vec<_>>(), vec![6]);
        assert_eq!(s.undecided, 0);

        // Without conntrack only the socket is found; without a forward verdict no forwarded flow.
        let s = survey(&snap, None, &p, &own, &|_| None);
        assert_eq!(s.denied.len(), 1);
        assert!(s.denied[0].entries.is_empty());
    }
}
