//! Fuzzes the `[[set]]` file parser (`policy::setfile::parse_set_file_bytes`, what `leash apply`
//! and `leash set update` read blocklists with, bytes as on disk) and checks what the kernel encoder relies on: merged
//! ranges sorted, non-overlapping and non-adjacent (an nftables interval set refuses overlaps),
//! errors with positions inside the text, and a parse of the result giving the result again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::ranges::AddrRanges;
use policy::setfile::{MAX_ERRORS, parse_set_file, parse_set_file_bytes};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Sorted, disjoint, non-adjacent, each range well formed.
fn merged<T: Copy + Ord + std::fmt::Debug>(r: &[(T, T)], next: impl Fn(T) -> Option<T>) {
    for &(a, b) in r {
        assert!(a <= b, "{r:?}");
    }
    for w in r.windows(2) {
        // The next range starts after the end of this one plus one (else the two would merge).
        let after = next(w[0].1).expect("a range ending at the maximum is last");
        assert!(after < w[1].0, "{r:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    // Lines as the parser splits them, each shown lossily (a bad byte is one character).
    let text = String::from_utf8_lossy(data);
    match parse_set_file_bytes(data) {
        Ok(f) => {
            merged(&f.ranges.v4, |x: u32| x.checked_add(1));
            merged(&f.ranges.v6, |x: u128| x.checked_add(1));
            let lines = text.lines().count();
            assert!(f.entries <= lines, "{} entries in {lines} lines", f.entries);
            assert!(f.ranges.len() <= f.entries, "merging never adds ranges");
            // Merging again changes nothing.
            assert_eq!(AddrRanges::from_ranges(f.ranges.v4.clone(), f.ranges.v6.clone()), f.ranges);
            // The result written back as ranges parses to itself.
            let mut back = String::new();
            for &(a, b) in &f.ranges.v4 {
                back.push_str(&format!("{}-{}\n", Ipv4Addr::from(a), Ipv4Addr::from(b)));
            }
            for &(a, b) in &f.ranges.v6 {
                back.push_str(&format!("{} - {} ; again\n", Ipv6Addr::from(a), Ipv6Addr::from(b)));
            }
            let again = parse_set_file(&back).expect("its own output parses");
            assert_eq!(again.ranges, f.ranges);
            // Membership agrees with the ranges at their edges.
            for &(a, b) in f.ranges.v4.iter().take(16) {
                assert!(f.ranges.contains(Ipv4Addr::from(a).into()) && f.ranges.contains(Ipv4Addr::from(b).into()));
                if let Some(p) = a.checked_sub(1) {
                    assert!(!f.ranges.contains(Ipv4Addr::from(p).into()));
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty() && errors.len() <= MAX_ERRORS, "{} errors", errors.len());
            let lines: Vec<&str> = text.lines().collect();
            let mut last = 0;
            for e in &errors {
                assert!(e.line > last, "errors in line order, one per line: {errors:?}");
                last = e.line;
                let line = lines.get(e.line - 1).expect("the error's line exists");
                assert!(e.col >= 1 && e.col <= line.chars().count() + 1, "column {} in {line:?}", e.col);
                assert!(!e.message.is_empty());
            }
        }
    }
});
