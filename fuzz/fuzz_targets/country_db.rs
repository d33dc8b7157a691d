//! Fuzzes the country database readers (`policy::geo`): arbitrary bytes as a MaxMind DB, and the
//! same bytes (lossily as UTF-8) as DB-IP CSV and as a GeoLite2 blocks file plus locations file
//! (split at the first NUL byte). Nothing may panic or hang, and whatever loads must answer
//! `ranges` and `country_of` consistently.
//!
//! Random bytes rarely end in valid metadata, so the input is also tried as a search tree and data
//! section behind metadata made from its first two bytes (record size, IP version, node count):
//! that takes the fuzzer straight to the tree walk and the data decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::geo::{CountryDb, CountryDbFormat};
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let mmdb = CountryDb::from_mmdb(data);
    if CountryDb::detect(data) != CountryDbFormat::Mmdb {
        assert!(mmdb.is_err(), "a database loaded without the metadata marker");
    }
    if let Ok(db) = mmdb {
        check(&db);
    }
    if let [sel, nodes, body @ ..] = data {
        if let Ok(db) = CountryDb::from_mmdb(&with_metadata(*sel, *nodes, body)) {
            check(&db);
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(db) = CountryDb::from_csv(&text, None) {
        check(&db);
    }
    let (blocks, locations) = match text.split_once('\0') {
        Some((b, l)) => (b, l),
        None => (&*text, &*text),
    };
    if let Ok(db) = CountryDb::from_csv(blocks, Some(locations)) {
        check(&db);
    }
    if let Ok(db) = CountryDb::from_geolite_csv(&[blocks, locations], locations) {
        check(&db);
    }
});

/// `body` (tree, separator, data) followed by the metadata marker and a metadata map.
fn with_metadata(sel: u8, nodes: u8, body: &[u8]) -> Vec<u8> {
    let record_size: u8 = [24, 28, 32, 24][usize::from(sel & 3)];
    let ip_version: u8 = if sel & 4 == 0 { 4 } else { 6 };
    let mut b = body.to_vec();
    b.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    b.push(0xe3); // a map of three pairs
    for (key, value) in [("node_count", nodes.max(1)), ("record_size", record_size), ("ip_version", ip_version)] {
        b.push(0x40 | key.len() as u8); // a string
        b.extend_from_slice(key.as_bytes());
        b.extend_from_slice(&[0xa1, value]); // a one-byte uint16
    }
    b
}

/// Every code owns ranges; every range's ends belong to its code and to no other.
fn check(db: &CountryDb) {
    let codes = db.codes();
    assert!(!codes.is_empty() && !db.is_empty());
    assert!(codes.windows(2).all(|w| w[0] < w[1]), "codes sorted and deduplicated");
    let refs: Vec<&str> = codes.iter().map(String::as_str).collect();
    let all = db.ranges(&refs);
    let mut total = 0;
    for code in &codes {
        let r = db.ranges(&[code.as_str()]);
        assert!(!r.is_empty(), "{code} has no ranges");
        total += r.len();
        let ends = r
            .v4
            .iter()
            .take(8)
            .flat_map(|&(a, b)| [IpAddr::from(a.to_be_bytes()), IpAddr::from(b.to_be_bytes())])
            .chain(
                r.v6.iter().take(8).flat_map(|&(a, b)| [IpAddr::from(a.to_be_bytes()), IpAddr::from(b.to_be_bytes())]),
            );
        for a in ends {
            assert_eq!(db.country_of(a).as_deref(), Some(code.as_str()), "{a}");
            assert!(all.contains(a));
        }
    }
    assert!(all.len() <= total);
    for a in ["192.0.2.1", "::", "255.255.255.255", "2001:db8::1", "::ffff:192.0.2.1"] {
        let a: IpAddr = a.parse().unwrap();
        assert_eq!(db.country_of(a).is_some(), all.contains(a) || is_mapped_in(&all, a), "{a}");
    }
}

/// Whether an IPv4-mapped IPv6 address's IPv4 address is in the ranges (`country_of` falls back
/// to it).
fn is_mapped_in(all: &policy::ranges::AddrRanges, a: IpAddr) -> bool {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| all.contains(IpAddr::V4(v4))),
        IpAddr::V4(_) => false,
    }
}
