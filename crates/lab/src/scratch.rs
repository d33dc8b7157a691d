//! The lab itself: a client and a peer network namespace joined by a veth pair, with echo servers
//! on the peer for every destination and port, and optionally workload namespaces routed through
//! the client (see the crate documentation).

use crate::error::{LabError, MAX_LISTENERS};
use crate::probe::{self, Case, Outcome};
use crate::{cgroup, fork, identity};
use crate::echo::{EchoServer, Listener};
use kernel::netns::NetNs;
use kernel::rtnl::{Family, Rtnl};
use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

/// Interface names, each inside its own namespace (so they can never clash with anything).
const CLIENT_IF: &str = "lab0";
const PEER_IF: &str = "lab1";
/// Interface indexes, distinct on purpose (see `Rtnl::create_veth_with_indexes`).
const CLIENT_IFINDEX: u32 = 10;
const PEER_IFINDEX: u32 = 20;
/// How long the veth ends may take to become operationally up, and addresses usable (normally
/// well under 10 ms; see `Rtnl::wait_oper_up` and `Rtnl::wait_local` for why there is a wait).
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(3);

/// The workload end of each workload veth pair, inside its workload namespace.
const WORKLOAD_IF: &str = "wl0";
/// Interface indexes of the workload pairs: client end `WORKLOAD_IFINDEX + 2k`, workload end
/// one more (distinct, as for the main pair).
const WORKLOAD_IFINDEX: u32 = 30;

/// A client and a peer namespace joined by a veth pair; see the module docs.
#[derive(Debug)]
pub struct Lab {
    // Declared first so that it is dropped (stopped and joined) before the namespaces.
    server: Option<EchoServer>,
    client: NetNs,
    peer: NetNs,
    client_v4: Ipv4Addr,
    client_v6: Ipv6Addr,
    destinations: Vec<IpAddr>,
    workloads: Vec<Workload>,
}

/// A workload namespace (standing in for a container or VM) routed through the client: its
/// traffic enters the client on `iif` and is forwarded to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The client's end of the veth pair: the interface the workload's packets enter on, as
    /// `iifname` sees it (`docker0`, `br-0`).
    pub iif: String,
    /// The workload's own addresses (its connections come from one of them).
    pub sources: Vec<IpAddr>,
}

#[derive(Debug)]
struct Workload {
    ns: NetNs,
    spec: WorkloadSpec,
}

impl Lab {
    /// Builds a lab whose peer owns every address of `destinations` and echoes on every TCP
    /// port of `tcp_ports` and UDP port of `udp_ports` (on every destination). Needs root.
    pub fn new(destinations: &[IpAddr], tcp_ports: &[u16], udp_ports: &[u16]) -> Result<Lab, LabError> {
        Lab::with_workloads(destinations, tcp_ports, udp_ports, &[])
    }

    /// [`Lab::new`] with workload namespaces behind the client, one per spec: each owns its
    /// sources and routes everything through the client, which forwards to the peer (IPv4 and
    /// IPv6 forwarding are turned on inside the client namespace only). The peer routes the
    /// sources back through the client.
    pub fn with_workloads(
        destinations: &[IpAddr],
        tcp_ports: &[u16],
        udp_ports: &[u16],
        workloads: &[WorkloadSpec],
    ) -> Result<Lab, LabError> {
        let dsts: Vec<IpAddr> = destinations.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        check_workloads(&dsts, workloads)?;
        for &d in &dsts {
            check_destination(d)?;
        }
        let tcp_ports: BTreeSet<u16> = tcp_ports.iter().copied().filter(|&p| p != 0).collect();
        let udp_ports: BTreeSet<u16> = udp_ports.iter().copied().filter(|&p| p != 0).collect();
        let listeners = dsts.len() * (tcp_ports.len() + udp_ports.len());
        if listeners > MAX_LISTENERS {
            return Err(LabError::TooLarge(listeners));
        }
        // The client's addresses (and the workload gateways') avoid the destinations and the
        // workloads' sources.
        let mut taken: Vec<IpAddr> = dsts.clone();
        taken.extend(workloads.iter().flat_map(|w| w.sources.iter().copied()));
        let client_v4 = pick_v4(&taken).ok_or(LabError::NoSourceAddress)?;
        let client_v6 = pick_v6(&taken).ok_or(LabError::NoSourceAddress)?;
        taken.extend([IpAddr::V4(client_v4), IpAddr::V6(client_v6)]);

        let client = NetNs::new().map_err(LabError::Namespace)?;
        let peer = NetNs::new().map_err(LabError::Namespace)?;
        // Any user may ping from the client (probes run as the case's user), and the ICMP errors
        // of a `reject` are never rate-limited there: past the kernel's burst (50, then 1000 a
        // second), a rejected datagram would fail with EPERM alone, which is what a drop looks
        // like (see the table in the crate docs). All are sysctls of the scratch namespace only;
        // a kernel without a rate mask (IPv6's came in 4.20) is left as it is.
        for (key, value, required) in [
            ("net.ipv4.ping_group_range", "0 2147483647", true),
            ("net.ipv4.icmp_ratemask", "0", false),
            ("net.ipv6.icmp.ratemask", "", false),
        ] {
            match client.set_sysctl(key, value) {
                Err(e) if required || e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(LabError::Sysctl { key, source: e });
                }
                _ => {}
            }
        }
        if !workloads.is_empty() {
            // A router solicits a forwarded packet's next hop from its link-local address (the
            // packet's source is not its own), and the kernel sends no solicitation while that
            // address is tentative: without DAD the client forwards at once instead of after a
            // second or two. Set before any interface exists, so every one gets it.
            for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
                client.set_sysctl(key, "0").map_err(|source| LabError::Sysctl { key, source })?;
            }
        }

        let client_if = client.run(|| -> Result<u32, LabError> {
            let mut r = Rtnl::open()?;
            // Distinct interface indexes: see Rtnl::create_veth_with_indexes (else the link may
            // drop everything for up to a second after it comes up).
            r.create_veth_with_indexes(CLIENT_IF, CLIENT_IFINDEX, PEER_IF, PEER_IFINDEX, peer.as_fd())?;
            let i = r.link_index(CLIENT_IF)?;
            r.add_address(i, client_v4.into(), 32)?;
            r.add_address(i, client_v6.into(), 128)?;
            r.set_link_up(i)?;
            r.add_default_route(i, Family::V4)?;
            r.add_default_route(i, Family::V6)?;
            Ok(i)
        })?;
        let (local, remote): (Vec<IpAddr>, Vec<IpAddr>) = dsts.iter().partition(|d| d.is_loopback());
        let mut sockets = peer.run(|| -> Result<Vec<Listener>, LabError> {
            let mut r = Rtnl::open()?;
            let i = r.link_index(PEER_IF)?;
            for &d in &remote {
                r.add_address(i, d, if d.is_ipv4() { 32 } else { 128 })?;
            }
            r.set_link_up(i)?;
            r.add_default_route(i, Family::V4)?;
            r.add_default_route(i, Family::V6)?;
            r.wait_oper_up(i, LINK_UP_TIMEOUT)?;
            for &d in &remote {
                r.wait_local(d, LINK_UP_TIMEOUT)?;
            }
            listen(&remote, &tcp_ports, &udp_ports)
        })?;
        sockets.extend(client.run(|| -> Result<Vec<Listener>, LabError> {
            // Only now is the peer end up, so only now can the client end carry packets.
            let mut r = Rtnl::open()?;
            r.wait_oper_up(client_if, LINK_UP_TIMEOUT)?;
            r.wait_local(client_v6.into(), LINK_UP_TIMEOUT)?;
            listen(&local, &tcp_ports, &udp_ports)
        })?);
        let mut built = Vec::new();
        for (k, spec) in workloads.iter().enumerate() {
            let gw4 = pick_v4(&taken).ok_or(LabError::NoSourceAddress)?;
            let gw6 = pick_v6(&taken).ok_or(LabError::NoSourceAddress)?;
            taken.extend([IpAddr::V4(gw4), IpAddr::V6(gw6)]);
            built.push(add_workload(&client, &peer, (client_v4, client_v6), (gw4, gw6), k as u32, spec)?);
        }
        let server = EchoServer::start(sockets).map_err(LabError::Echo)?;
        Ok(Lab { server: Some(server), client, peer, client_v4, client_v6, destinations: dsts, workloads: built })
    }

    /// The client namespace: apply the policy here (`lab.client().run(|| kernel::apply(..))`).
    pub fn client(&self) -> &NetNs {
        &self.client
    }

    /// The peer namespace that owns the destinations (for debugging).
    pub fn peer(&self) -> &NetNs {
        &self.peer
    }

    /// The client's source addresses (inside 192.0.2.0/24 and 2001:db8::/32 when free).
    pub fn client_addrs(&self) -> (Ipv4Addr, Ipv6Addr) {
        (self.client_v4, self.client_v6)
    }

    /// The destinations the peer (or, for loopback, the client's `lo`) answers on.
    pub fn destinations(&self) -> &[IpAddr] {
        &self.destinations
    }

    /// Makes the connection of `case` from the client namespace as the case's uid and gid (and,
    /// with `case.cgroup`, from a process in that cgroup), and reports how it ended, waiting at
    /// most about `timeout`.
    pub fn probe(&self, case: &Case, timeout: Duration) -> Outcome {
        if let Some(cg) = &case.cgroup {
            return self.probe_in_cgroup(case, cg, timeout);
        }
        let res = self.client.try_run(|| {
            identity::become_user(case.uid, case.gid)?;
            Ok::<_, io::Error>(probe::probe_here(case, timeout))
        });
        match res {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => Outcome::Error(format!("cannot become uid {} gid {}: {e}", case.uid, case.gid)),
            Err(e) => Outcome::Error(format!("cannot enter the client namespace: {e}")),
        }
    }
}

impl Lab {
    /// Makes the connection of `case` from the workload namespace that owns `src`, from that
    /// address, as a container behind the host would (the case's uid and gid do not matter to
    /// the client's firewall: a forwarded packet has no socket there).
    pub fn probe_from(&self, case: &Case, src: IpAddr, timeout: Duration) -> Outcome {
        let Some(w) = self.workloads.iter().find(|w| w.spec.sources.contains(&src)) else {
            return Outcome::Error(format!("no workload of the lab owns {src}"));
        };
        let res = w.ns.try_run(|| {
            identity::become_user(case.uid, case.gid)?;
            Ok::<_, io::Error>(probe::probe_here_from(case, Some(src), timeout))
        });
        match res {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => Outcome::Error(format!("cannot become uid {} gid {}: {e}", case.uid, case.gid)),
            Err(e) => Outcome::Error(format!("cannot enter the workload namespace: {e}")),
        }
    }

    /// The workload namespaces, with the interface each enters the client on.
    pub fn workloads(&self) -> impl Iterator<Item = (&NetNs, &WorkloadSpec)> {
        self.workloads.iter().map(|w| (&w.ns, &w.spec))
    }

    /// The client's uplink to the peer: the interface forwarded connections leave on.
    pub fn uplink() -> &'static str {
        CLIENT_IF
    }

    /// A probe from a process in cgroup `cg` (relative to the cgroup v2 root): a child forked
    /// by a thread inside the client namespace joins the cgroup, drops to the user and probes.
    fn probe_in_cgroup(&self, case: &Case, cg: &str, timeout: Duration) -> Outcome {
        use std::os::unix::ffi::OsStrExt;
        let cg = cg.trim_matches('/');
        let Some(mount) = cgroup::mount_point() else {
            return Outcome::Error(format!("cannot probe from cgroup /{cg}: cgroup v2 is not mounted here"));
        };
        let dir = mount.join(cg);
        if !dir.is_dir() {
            return Outcome::Error(format!("cannot probe from cgroup /{cg}: {} does not exist", dir.display()));
        }
        let Ok(procs) = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()) else {
            return Outcome::Error(format!("cannot probe from cgroup /{cg}: the path holds a NUL byte"));
        };
        let who = fork::Identity { cgroup_procs: Some(&procs), uid: case.uid, gid: case.gid };
        // The child gives up at `timeout` by itself; the margin covers fork and exit.
        let limit = timeout + Duration::from_secs(2);
        let res = self.client.try_run(|| {
            fork::run(who, limit, |pipe| {
                let o = probe::probe_here(case, timeout);
                let (code, detail) = o.to_exit();
                pipe.write_all(detail);
                code
            })
        });
        match res {
            Ok(Ok((end, detail))) => Outcome::from_child(&end, &detail),
            Ok(Err(e)) => Outcome::Error(format!("cannot fork the probe process: {e}")),
            Err(e) => Outcome::Error(format!("cannot enter the client namespace: {e}")),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Stop the echo thread first; the namespaces (and the veth pair, addresses, routes and
        // nftables table inside them) go when their descriptors close right after.
        self.server.take();
    }
}

/// Workload specs the lab can build: interface names that are valid and not the lab's own,
/// sources that are unicast, not destinations, and each in one workload only.
fn check_workloads(dsts: &[IpAddr], workloads: &[WorkloadSpec]) -> Result<(), LabError> {
    let mut seen: Vec<IpAddr> = Vec::new();
    for w in workloads {
        let bad = |reason: String| Err(LabError::BadWorkload { iif: w.iif.clone(), reason });
        if w.iif == CLIENT_IF || w.iif == "lo" || workloads.iter().filter(|x| x.iif == w.iif).count() > 1 {
            return bad(format!("the interface name is taken (the lab uses {CLIENT_IF} and lo, and each workload needs its own)"));
        }
        if w.sources.is_empty() {
            return bad("it has no source address".into());
        }
        for &s in &w.sources {
            if s.is_loopback() || s.is_unspecified() || s.is_multicast() || dsts.contains(&s) || seen.contains(&s) {
                return bad(format!(
                    "source {s} is loopback, unspecified, multicast, a destination or another workload's source"
                ));
            }
            check_destination(s).map_err(|_| LabError::BadWorkload { iif: w.iif.clone(), reason: format!("source {s} cannot be used") })?;
            seen.push(s);
        }
    }
    Ok(())
}

/// Builds one workload namespace behind the client (see [`Lab::with_workloads`]):
///
/// ```text
///   workload namespace          client namespace (forwarding on)          peer namespace
///   wl0: sources /32,/128 ----- IIF: gateways /32,/128           lab0 ---- lab1
///   default via gateway onlink  routes to the sources on IIF              routes to the sources
///                                                                          via the client onlink
/// ```
fn add_workload(
    client: &NetNs,
    peer: &NetNs,
    (client_v4, client_v6): (Ipv4Addr, Ipv6Addr),
    (gw4, gw6): (Ipv4Addr, Ipv6Addr),
    k: u32,
    spec: &WorkloadSpec,
) -> Result<Workload, LabError> {
    let ns = NetNs::new().map_err(LabError::Namespace)?;
    for (key, value) in [("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")] {
        client.set_sysctl(key, value).map_err(|source| LabError::Sysctl { key, source })?;
    }
    const PING: &str = "net.ipv4.ping_group_range";
    ns.set_sysctl(PING, "0 2147483647").map_err(|source| LabError::Sysctl { key: PING, source })?;
    let (ci, wi) = (WORKLOAD_IFINDEX + 2 * k, WORKLOAD_IFINDEX + 2 * k + 1);
    let iif = client.run(|| -> Result<u32, LabError> {
        let mut r = Rtnl::open()?;
        r.create_veth_with_indexes(&spec.iif, ci, WORKLOAD_IF, wi, ns.as_fd())?;
        let i = r.link_index(&spec.iif)?;
        r.add_address(i, gw4.into(), 32)?;
        r.add_address(i, gw6.into(), 128)?;
        r.set_link_up(i)?;
        for &s in &spec.sources {
            r.add_route(i, Some((s, if s.is_ipv4() { 32 } else { 128 })), None)?;
        }
        Ok(i)
    })?;
    ns.run(|| -> Result<(), LabError> {
        let mut r = Rtnl::open()?;
        let i = r.link_index(WORKLOAD_IF)?;
        for &s in &spec.sources {
            r.add_address(i, s, if s.is_ipv4() { 32 } else { 128 })?;
        }
        r.set_link_up(i)?;
        r.add_route(i, None, Some(gw4.into()))?;
        r.add_route(i, None, Some(gw6.into()))?;
        r.wait_oper_up(i, LINK_UP_TIMEOUT)?;
        for &s in &spec.sources {
            r.wait_local(s, LINK_UP_TIMEOUT)?;
        }
        Ok(())
    })?;
    client.run(|| -> Result<(), LabError> {
        let mut r = Rtnl::open()?;
        r.wait_oper_up(iif, LINK_UP_TIMEOUT)?;
        r.wait_local(gw6.into(), LINK_UP_TIMEOUT)?;
        Ok(())
    })?;
    peer.run(|| -> Result<(), LabError> {
        let mut r = Rtnl::open()?;
        let i = r.link_index(PEER_IF)?;
        // The gateways too: the client may pick one as the source of its own connections
        // (IPv6 source selection prefers the longest common prefix over the outgoing interface),
        // and IPv6 neighbour discovery on lab0 does not answer for an address of another link.
        for s in spec.sources.iter().copied().chain([IpAddr::V4(gw4), IpAddr::V6(gw6)]) {
            let via = if s.is_ipv4() { IpAddr::V4(client_v4) } else { IpAddr::V6(client_v6) };
            r.add_route(i, Some((s, if s.is_ipv4() { 32 } else { 128 })), Some(via))?;
        }
        Ok(())
    })?;
    Ok(Workload { ns, spec: spec.clone() })
}

fn check_destination(d: IpAddr) -> Result<(), LabError> {
    let bad = |reason| Err(LabError::BadDestination { addr: d, reason });
    if d.is_unspecified() {
        return bad("the unspecified address");
    }
    if d.is_multicast() {
        return bad("a multicast address");
    }
    match d {
        IpAddr::V4(a) if a.is_broadcast() => bad("the broadcast address"),
        IpAddr::V6(a) if a.is_unicast_link_local() => bad("a link-local address needs an interface scope"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => bad("an IPv4-mapped address (write the IPv4 address)"),
        _ => Ok(()),
    }
}

/// The client's IPv4 source: the first free address of the documentation ranges.
fn pick_v4(dsts: &[IpAddr]) -> Option<Ipv4Addr> {
    [[192, 0, 2], [198, 51, 100], [203, 0, 113]]
        .iter()
        .flat_map(|p| (1..=254).map(move |h| Ipv4Addr::new(p[0], p[1], p[2], h)))
        .find(|a| !dsts.contains(&IpAddr::V4(*a)))
}

/// The client's IPv6 source: the first free `2001:db8::N`.
fn pick_v6(dsts: &[IpAddr]) -> Option<Ipv6Addr> {
    (1..=u16::MAX).map(|h| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, h)).find(|a| !dsts.contains(&IpAddr::V6(*a)))
}

/// Listening sockets for every address and port, created in the calling thread's namespace.
/// One socket per address (not a wildcard) so that UDP replies leave from the address the probe
/// sent to; a connected UDP socket ignores replies from any other source.
fn listen(addrs: &[IpAddr], tcp: &BTreeSet<u16>, udp: &BTreeSet<u16>) -> Result<Vec<Listener>, LabError> {
    let mut out = Vec::new();
    for &a in addrs {
        for &p in tcp {
            let addr = SocketAddr::new(a, p);
            let l = TcpListener::bind(addr).map_err(|source| LabError::Listen { proto: "tcp", addr, source })?;
            out.push(Listener::Tcp(l));
        }
        for &p in udp {
            let addr = SocketAddr::new(a, p);
            let s = UdpSocket::bind(addr).map_err(|source| LabError::Listen { proto: "udp", addr, source })?;
            out.push(Listener::Udp(s));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_source_avoids_destinations() {
        let d: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        assert_eq!(pick_v4(&d), Some(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(pick_v6(&d), "2001:db8::2".parse::<Ipv6Addr>().ok());
        assert_eq!(pick_v4(&[]), Some(Ipv4Addr::new(192, 0, 2, 1)));
        let all: Vec<IpAddr> = [[192, 0, 2], [198, 51, 100], [203, 0, 113]]
            .iter()
            .flat_map(|p| (1..=254).map(move |h| IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], h))))
            .collect();
        assert_eq!(pick_v4(&all), None);
    }

    #[test]
    fn odd_destinations_are_refused() {
        for bad in ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "fe80::1", "::ffff:192.0.2.1"] {
            assert!(check_destination(bad.parse().unwrap()).is_err(), "{bad}");
        }
        for good in ["192.0.2.7", "127.0.0.1", "::1", "2001:db8::9", "1.1.1.1"] {
            assert!(check_destination(good.parse().unwrap()).is_ok(), "{good}");
        }
    }
}
