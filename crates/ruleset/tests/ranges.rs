//! Property tests of range merging and prefix detection, the arithmetic under every interval set.

use proptest::prelude::*;
use policy::ranges::merge as merge_ranges;
use ruleset::render::range_prefix_len;

fn covered(ranges: &[(u128, u128)], x: u128) -> bool {
    ranges.iter().any(|&(a, b)| a <= x && x <= b)
}

proptest! {
    #[test]
    fn merge_keeps_exactly_the_same_points(raw in prop::collection::vec((0u128..200, 0u128..20), 0..20), probe in 0u128..230) {
        let input: Vec<(u128, u128)> = raw.iter().map(|&(a, len)| (a, a + len)).collect();
        let merged = merge_ranges(input.clone());
        prop_assert_eq!(covered(&input, probe), covered(&merged, probe));
        // Sorted, disjoint and not even adjacent: what nftables interval sets require.
        for w in merged.windows(2) {
            prop_assert!(w[0].1 + 1 < w[1].0, "{:?}", merged);
        }
    }

    #[test]
    fn prefix_len_matches_cidr_blocks(addr in any::<u32>(), len in 0u32..=32) {
        let mask: u32 = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let a = (addr & mask) as u128;
        let b = (addr | !mask) as u128;
        prop_assert_eq!(range_prefix_len(a, b, 32), if a == b { Some(32) } else { Some(len) });
    }
}

#[test]
fn ranges_that_are_not_blocks_have_no_prefix() {
    assert_eq!(range_prefix_len(1, 2, 32), None);
    assert_eq!(range_prefix_len(0, 2, 32), None);
    assert_eq!(range_prefix_len(0, u128::MAX, 128), Some(0));
    assert_eq!(range_prefix_len(0, u32::MAX as u128, 32), Some(0));
}
