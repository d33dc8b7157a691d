//! Integer-range arithmetic shared by the linter and the compiler: networks and ports as inclusive
//! ranges, merged the way nftables interval sets need them.

use ipnet::IpNet;

/// Inclusive integer ranges (addresses or ports).
pub type Ranges = Vec<(u128, u128)>;

/// Inclusive address range of a network, as integers.
pub fn net_range(n: &IpNet) -> (u128, u128) {
    match n {
        IpNet::V4(n) => (u32::from(n.network()) as u128, u32::from(n.broadcast()) as u128),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// The IPv4 and the IPv6 ranges of a list of networks (not merged).
pub fn net_ranges(nets: &[IpNet]) -> (Ranges, Ranges) {
    let (v4, v6): (Vec<&IpNet>, Vec<&IpNet>) = nets.iter().partition(|n| matches!(n, IpNet::V4(_)));
    (v4.into_iter().map(net_range).collect(), v6.into_iter().map(net_range).collect())
}

/// Sorted, disjoint, non-adjacent inclusive ranges covering the same values.
pub fn merge(mut r: Ranges) -> Ranges {
    r.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}
