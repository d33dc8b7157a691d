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

/// A large address list (a blocklist file, a country): merged inclusive ranges per family, kept
/// sorted so that membership is a binary search. Shared behind an `Arc` by the rules that use it,
/// because a feed can hold a million entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrRanges {
    /// Sorted, disjoint, non-adjacent inclusive IPv4 ranges.
    pub v4: Vec<(u32, u32)>,
    /// Sorted, disjoint, non-adjacent inclusive IPv6 ranges.
    pub v6: Vec<(u128, u128)>,
}

impl AddrRanges {
    /// Merges unsorted, possibly overlapping or adjacent ranges of both families.
    pub fn from_ranges(v4: Vec<(u32, u32)>, v6: Vec<(u128, u128)>) -> Self {
        let mut v4 = v4;
        v4.sort_unstable();
        let mut m4: Vec<(u32, u32)> = Vec::with_capacity(v4.len());
        for (a, b) in v4 {
            match m4.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => m4.push((a, b)),
            }
        }
        AddrRanges { v4: m4, v6: merge(v6) }
    }

    /// Merges a list of networks.
    pub fn from_nets(nets: &[IpNet]) -> Self {
        let (v4, v6) = net_ranges(nets);
        AddrRanges::from_ranges(v4.into_iter().map(|(a, b)| (a as u32, b as u32)).collect(), v6)
    }

    /// Whether `addr` lies in one of the ranges.
    pub fn contains(&self, addr: std::net::IpAddr) -> bool {
        fn find<T: Ord + Copy>(r: &[(T, T)], x: T) -> bool {
            // The last range starting at or before x is the only one that can hold it.
            let i = r.partition_point(|&(a, _)| a <= x);
            i > 0 && r[i - 1].1 >= x
        }
        match addr {
            std::net::IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            std::net::IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    /// Number of merged ranges (what an interval set holds), both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Union of several range lists.
    pub fn union<'a>(parts: impl IntoIterator<Item = &'a AddrRanges>) -> AddrRanges {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for p in parts {
            v4.extend_from_slice(&p.v4);
            v6.extend_from_slice(&p.v6);
        }
        AddrRanges::from_ranges(v4, v6)
    }
}

#[cfg(test)]
mod addr_ranges_tests {
    use super::*;

    #[test]
    fn merges_and_finds() {
        let nets: Vec<IpNet> =
            ["192.0.2.0/25", "192.0.2.128/25", "198.51.100.7/32", "2001:db8::/64"].iter().map(|s| s.parse().unwrap()).collect();
        let r = AddrRanges::from_nets(&nets);
        assert_eq!(r.v4.len(), 2, "adjacent /25s merge into one range");
        assert_eq!(r.len(), 3);
        for (a, want) in [
            ("192.0.2.0", true),
            ("192.0.2.255", true),
            ("192.0.3.0", false),
            ("198.51.100.7", true),
            ("198.51.100.8", false),
            ("2001:db8::1", true),
            ("2001:db8:1::1", false),
            ("0.0.0.0", false),
        ] {
            assert_eq!(r.contains(a.parse().unwrap()), want, "{a}");
        }
    }
}
