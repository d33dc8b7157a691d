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
//! - **forwarded**: a flow through this host (a container, a VM), which has no local socket.
//!   It is judged as the forward chain judges it (see [`forwarded_connection`]): its source, the
//!   destination after any DNAT, and the interfaces it enters and leaves on, which the caller
//!   finds (a conntrack entry records none; `kernel::rtnl::Paths` asks routing). Flows that are
//!   not from a workload, or go between workloads, are not the policy's and are never listed.
//!   Deleting its entry ends it: the workload's next packet is new and meets the rules. When the
//!   interface it entered on cannot be found, it is judged under every entry the policy
//!   distinguishes (no workload interface, then each workload interface) and listed when any of
//!   them denies it (fail closed: a wrongly cut flow that the rules allow is taken up again by
//!   its next packet, a wrongly spared one keeps going past the new policy).
//!
//! Entries of local UDP flows whose socket is gone are leftovers: nothing uses them, but a later
//! socket on the same port pair would ride them as established. They are listed apart (a cut
//! deletes them all: no connection depends on them). Incoming flows (accepted by a local
//! listener, or addressed to this host) are never listed: their packets in the output hook are
//! answers, which no egress rule decides.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use kernel::conntrack::{Entry, L4};
use kernel::rtnl::Path;
use kernel::sockdiag::{Proto, State};
use policy::{Connection, Forwarded, Policy};
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
    /// For a forwarded flow: the interfaces it enters and leaves on, as route lookups found them
    /// (`None`: unknown).
    pub iif: Option<String>,
    pub oif: Option<String>,
    /// For a forwarded flow whose input interface is unknown: the one it was judged as entering
    /// on (`None` with no `iif`: denied entering on no workload interface, e.g. by its source
    /// network).
    pub judged_iif: Option<String>,
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
/// flow, one neither from one of them nor (after DNAT) to one a forwarded flow, whose interfaces
/// `paths(source, destination)` finds.
pub fn survey(
    snap: &[Conn],
    entries: Option<&[Entry]>,
    policy: &Policy,
    own: &[IpAddr],
    paths: &mut dyn FnMut(IpAddr, IpAddr) -> Path,
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
                    iif: None,
                    oif: None,
                    judged_iif: None,
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
    // Interfaces matter only when the policy names some (a workload's by source network is one
    // whatever it passes): otherwise no route is looked up.
    let governs = policy.governs_forwarded();
    let by_interface = !policy.workload_interfaces().is_empty();
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
            iif: None,
            oif: None,
            judged_iif: None,
            socket: None,
            entries: vec![*e],
        };
        // Where the flow's packets really go: after a DNAT (a published port, a port forward)
        // its replies come from the new destination.
        let to = e.reply.src;
        match (is_own(e.orig.src), is_own(to)) {
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
                let Some(conn) = forwarded_connection(e).filter(|_| governs) else { continue };
                let path = if by_interface { paths(e.orig.src, to) } else { Path::default() };
                let Some((v, judged_iif)) = judge_forwarded(&mut judge, conn, &path) else { continue };
                if !v.allows() {
                    let (remote, port) = (to.to_canonical(), e.reply.sport().unwrap_or(dport));
                    out.denied.push(DeniedFlow {
                        remote: SocketAddr::new(remote, port),
                        iif: path.iif,
                        oif: path.oif,
                        judged_iif,
                        ..flow(Origin::Forwarded, None, None, v)
                    });
                }
            }
        }
    }
    out
}

/// The new connection the forward chain judged for a forwarded entry, without its interfaces:
/// the workload's source (the original tuple's: a source NAT such as Docker's masquerade comes
/// after the forward hook), the destination and port after any DNAT (which comes before it: the
/// reply tuple's source), no socket. `None` for what is not a live TCP or UDP flow (a TCP entry
/// in TIME_WAIT or CLOSE carries no more data).
pub fn forwarded_connection(e: &Entry) -> Option<Connection> {
    const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
    const TCP_CONNTRACK_CLOSE: u8 = 8;
    let proto = match i32::from(e.orig.proto) {
        libc::IPPROTO_TCP => policy::Proto::Tcp,
        libc::IPPROTO_UDP => policy::Proto::Udp,
        _ => return None,
    };
    if matches!(e.tcp_state, Some(TCP_CONNTRACK_TIME_WAIT | TCP_CONNTRACK_CLOSE)) {
        return None;
    }
    let port = e.reply.sport().or(e.orig.dport())?;
    Some(Connection {
        proto,
        dst: e.reply.src.to_canonical(),
        port: Some(port),
        uid: 0,
        gid: 0,
        name: None,
        cgroup: None,
        at: None,
        from: Some(Forwarded { src: e.orig.src.to_canonical(), iif: None, oif: None }),
    })
}

/// What the policy decides for a forwarded connection `conn` that passes `path`, and, when the
/// input interface is unknown, the one it was judged as entering on (see the module docs): the
/// first of no workload interface and each workload interface (an example name of each pattern)
/// under which the policy denies it, else the verdict without one.
pub fn judge_forwarded(judge: &mut Judge<'_>, conn: Connection, path: &Path) -> Option<(Verdict, Option<String>)> {
    let src = conn.from.as_ref()?.src;
    let with = |iif: Option<String>| Connection {
        from: Some(Forwarded { src, iif, oif: path.oif.clone() }),
        ..conn.clone()
    };
    if path.iif.is_some() {
        return judge.decide(with(path.iif.clone()), None, None).map(|v| (v, None));
    }
    let candidates: Vec<Option<String>> =
        std::iter::once(None).chain(judge.policy.workload_interfaces().iter().map(|p| Some(p.example()))).collect();
    let mut allowed = None;
    for iif in candidates {
        let v = judge.decide(with(iif.clone()), None, None)?;
        if !v.allows() {
            return Some((v, iif));
        }
        allowed.get_or_insert(v);
    }
    allowed.map(|v| (v, None))
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
        let mut paths = |src: IpAddr, _: IpAddr| Path { iif: Some(if src.to_string() == "10.0.0.2" { "docker0" } else { "eth1" }.into()), oif: Some("eth0".into()) };
        let s = survey(&snap, Some(&entries), &p, &own, &mut paths);
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
        assert_eq!(s.denied[2].decider_text(), "(default)");
        assert_eq!((s.denied[2].iif.as_deref(), s.denied[2].oif.as_deref()), (Some("docker0"), Some("eth0")));
        assert_eq!(s.leftovers.iter().map(|e| e.id).collect::<Vec<_>>(), vec![6]);
        assert_eq!(s.undecided, 0);

        // Without conntrack only the socket is found.
        let s = survey(&snap, None, &p, &own, &mut paths);
        assert_eq!(s.denied.len(), 1);
        assert!(s.denied[0].entries.is_empty());
    }

    /// Forwarded entries, judged as the forward chain judges them, through paths a fake finds.
    fn forwarded(p: &Policy, entries: &[Entry], paths: &mut dyn FnMut(IpAddr, IpAddr) -> Path) -> Vec<(String, Option<String>, u32)> {
        let own: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let s = survey(&[], Some(entries), p, &own, paths);
        assert_eq!(s.undecided, 0);
        assert!(s.denied.iter().all(|f| f.origin == Origin::Forwarded && f.uid.is_none() && f.socket.is_none()));
        s.denied.iter().map(|f| (format!("{} {} -> {}", f.proto, f.local, f.remote), f.judged_iif.clone(), f.entries[0].id)).collect()
    }

    /// Routes as in a Docker host: containers in 172.17.0.0/16 on docker0 and 172.18.0.0/16 on
    /// br-1, everything else out of eth0 (eth1 for the LAN 10.1.0.0/16).
    fn docker_host(src: IpAddr, dst: IpAddr) -> Path {
        let on = |a: IpAddr| -> String {
            let s = a.to_string();
            if s.starts_with("172.17.") || s.starts_with("2001:db8:17:") {
                "docker0".into()
            } else if s.starts_with("172.18.") {
                "br-1".into()
            } else if s.starts_with("10.1.") {
                "eth1".into()
            } else {
                "eth0".into()
            }
        };
        Path { iif: Some(on(src)), oif: Some(on(dst)) }
    }

    #[test]
    fn forwarded_flows_are_judged_by_source_interfaces_and_destination_after_nat() {
        let p = policy(POLICY);
        let mut e = vec![
            // A container's flows: one the rule allows, one the default denies (IPv4 and IPv6).
            entry(6, "172.17.0.2:40000", "203.0.113.5:443", 1),
            entry(6, "172.17.0.2:40001", "198.51.100.7:22", 2),
            entry(17, "[2001:db8:17::2]:5000", "[2001:db8:99::7]:9999", 3),
            // Between workloads (leaves on a workload bridge): not the policy's.
            entry(6, "172.17.0.2:40002", "172.18.0.3:5432", 4),
            // From the LAN (eth1, no workload): not governed.
            entry(6, "10.1.0.9:50000", "198.51.100.7:22", 5),
            // Inbound to this host: not an egress flow.
            entry(6, "198.51.100.9:50000", "192.0.2.1:22", 6),
        ];
        // Masqueraded: the reply goes to this host's address; the flow is still the container's.
        let mut masq = entry(6, "172.17.0.2:40003", "198.51.100.8:25", 7);
        masq.reply.dst = "192.0.2.1".parse().unwrap();
        masq.status |= kernel::conntrack::IPS_SRC_NAT;
        e.push(masq);
        // A port forward on this host's address (DNAT) to somewhere the policy denies, and one
        // to where it allows: judged by the address the packets really go to.
        let mut dnat = entry(6, "172.17.0.2:40004", "192.0.2.1:8080", 8);
        dnat.reply.src = "198.51.100.7".parse().unwrap();
        dnat.reply.l4 = L4::Ports { src: 22, dst: 40004 };
        e.push(dnat);
        let mut dnat_ok = entry(6, "172.17.0.2:40005", "192.0.2.1:8443", 9);
        dnat_ok.reply.src = "203.0.113.5".parse().unwrap();
        dnat_ok.reply.l4 = L4::Ports { src: 443, dst: 40005 };
        e.push(dnat_ok);
        // A redirect to this host itself: inbound.
        let mut redirect = entry(6, "172.17.0.2:40006", "198.51.100.7:80", 10);
        redirect.reply.src = "192.0.2.1".parse().unwrap();
        e.push(redirect);
        // A closed TCP flow carries nothing more; ICMP is not listed.
        let mut closed = entry(6, "172.17.0.2:40007", "198.51.100.7:23", 11);
        closed.tcp_state = Some(7);
        e.push(closed);
        let mut ping = entry(1, "172.17.0.2:0", "198.51.100.7:0", 12);
        (ping.orig.l4, ping.reply.l4) = (L4::Icmp { id: 7, ty: 8, code: 0 }, L4::Icmp { id: 7, ty: 0, code: 0 });
        e.push(ping);
        let mut asked = Vec::new();
        let got = forwarded(&p, &e, &mut |s, d| {
            asked.push((s, d));
            docker_host(s, d)
        });
        assert_eq!(
            got,
            vec![
                ("tcp 172.17.0.2:40001 -> 198.51.100.7:22".to_string(), None, 2),
                ("udp [2001:db8:17::2]:5000 -> [2001:db8:99::7]:9999".to_string(), None, 3),
                ("tcp 172.17.0.2:40003 -> 198.51.100.8:25".to_string(), None, 7),
                ("tcp 172.17.0.2:40004 -> 198.51.100.7:22".to_string(), None, 8),
            ]
        );
        // The route lookups are for the post-DNAT destination.
        assert!(asked.contains(&("172.17.0.2".parse().unwrap(), "198.51.100.7".parse().unwrap())), "{asked:?}");
        assert!(!asked.iter().any(|(_, d)| d.to_string() == "192.0.2.1"), "{asked:?}");

        // `[forward] mode = "ignore"`: nothing forwarded is the policy's, and no route is asked.
        let ignore = policy(&format!("{POLICY}[forward]\nmode = \"ignore\"\n"));
        let mut never = |_: IpAddr, _: IpAddr| -> Path { panic!("a route lookup for a policy that ignores forwarded traffic") };
        assert!(forwarded(&ignore, &e, &mut never).is_empty());
        // Workloads by source network only: interfaces do not matter, and are not looked up.
        let sources = policy("version = 1\n[forward]\ninterfaces = []\nsources = [\"172.17.0.0/16\"]\n");
        assert_eq!(forwarded(&sources, &e[..2], &mut never).len(), 2);
    }

    /// When the interface a flow entered on is unknown, it is listed if the policy denies it
    /// under any entry it distinguishes, and said which; a flow no entry denies is not listed.
    #[test]
    fn an_unknown_input_interface_is_judged_fail_closed() {
        // Containers on docker0 are denied port 25; nothing else is denied.
        let p = policy(
            "version = 1\n[defaults]\noutbound = \"allow\"\n[forward]\ninterfaces = [\"docker0\", \"br-*\"]\n\
             [[rule]]\nname = \"no-smtp\"\naction = \"deny\"\nports = [25]\nfrom = [\"br-*\"]\n",
        );
        let e = vec![entry(6, "172.17.0.2:40000", "198.51.100.8:25", 1), entry(6, "172.17.0.2:40001", "198.51.100.8:443", 2)];
        let mut unknown = |_: IpAddr, _: IpAddr| Path { iif: None, oif: Some("eth0".into()) };
        assert_eq!(forwarded(&p, &e, &mut unknown), vec![("tcp 172.17.0.2:40000 -> 198.51.100.8:25".to_string(), Some("br-0".into()), 1)]);
        // Known, the interface decides: docker0 is a workload `no-smtp` does not name.
        assert!(forwarded(&p, &e, &mut docker_host).is_empty());
        // A source network makes it a workload whatever the interface.
        let by_source = policy("version = 1\n[forward]\nsources = [\"172.17.0.0/16\"]\n");
        let got = forwarded(&by_source, &e, &mut unknown);
        assert_eq!(got.iter().map(|g| (g.1.clone(), g.2)).collect::<Vec<_>>(), vec![(None, 1), (None, 2)]);
        // Nothing to say about the output interface either: only the address tells a neighbour.
        let mut nothing = |_: IpAddr, _: IpAddr| Path::default();
        let between = vec![entry(6, "172.17.0.2:40002", "172.17.0.3:5432", 3)];
        assert!(forwarded(&by_source, &between, &mut nothing).is_empty(), "to a workload source");
        assert_eq!(forwarded(&policy("version = 1\n"), &between, &mut nothing).len(), 1, "unknown: as if on docker0");
    }

    /// A domain rule matches a forwarded flow to an address the forwarder put into its sets, as
    /// the kernel's set lookup does for the workload chain (the sets are shared with the host's).
    #[test]
    fn forwarded_flows_meet_the_domain_sets() {
        let p = policy(
            "version = 1\n[dns]\nupstreams = [\"192.0.2.53\"]\n\
             [[rule]]\nname = \"api\"\naction = \"allow\"\nports = [443]\nto = [\"api.example.com\"]\n",
        );
        let mut j = Judge::new(&p);
        let answered: IpAddr = "203.0.113.7".parse().unwrap();
        j.domains = crate::conns::DomainSets::from_elements([(0, vec![(answered, Some("api.example.com".into()))])]);
        let on_docker = Path { iif: Some("docker0".into()), oif: Some("eth0".into()) };
        let conn = |e: &Entry| forwarded_connection(e).unwrap();
        let (v, judged) = judge_forwarded(&mut j, conn(&entry(6, "172.17.0.2:1", "203.0.113.7:443", 1)), &on_docker).unwrap();
        assert_eq!((v.verdict, v.rule.as_deref(), judged), ("allow", Some("api"), None));
        let (v, _) = judge_forwarded(&mut j, conn(&entry(6, "172.17.0.2:1", "203.0.113.8:443", 2)), &on_docker).unwrap();
        assert_eq!((v.verdict, v.decided_by), ("deny", "default"));
    }

    /// The forward chain's DNS control and rules that need a socket: forwarded DNS is denied
    /// under the bypass control; a rule with a service never matches a forwarded flow, and its
    /// presence does not leave the flow undecided (there is no process to look for).
    #[test]
    fn forwarded_dns_and_socket_rules() {
        let p = policy(
            "version = 1\n[defaults]\noutbound = \"allow\"\n[dns]\nupstreams = [\"192.0.2.53\"]\n\
             [[rule]]\nname = \"api\"\naction = \"allow\"\nports = [443]\nto = [\"api.example.com\"]\n\
             [[rule]]\nname = \"web-only-nginx\"\naction = \"deny\"\nports = [80]\ncgroup = \"/system.slice/nginx.service\"\n",
        );
        let e = vec![entry(17, "172.17.0.2:5000", "198.51.100.53:53", 1), entry(6, "172.17.0.2:40000", "198.51.100.8:80", 2)];
        let own: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
        let s = survey(&[], Some(&e), &p, &own, &mut docker_host);
        assert_eq!(s.undecided, 0);
        assert_eq!(s.denied.iter().map(|f| (f.entries[0].id, f.decided_by)).collect::<Vec<_>>(), vec![(1, "dns-bypass")]);
    }
}
