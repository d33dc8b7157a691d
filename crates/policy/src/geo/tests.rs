//! Tests of the country database readers, on databases the test writers make from documentation
//! ranges only.

use super::testdb::{self, MmdbOptions};
use super::*;
use crate::ranges::AddrRanges;
use ipnet::IpNet;
use std::net::IpAddr;
use proptest::prelude::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The standard test networks: XA and XB in IPv4 and IPv6, XC adjacent to nothing.
fn sample() -> Vec<(IpNet, &'static str)> {
    vec![
        (net("192.0.2.0/25"), "XA"),
        (net("198.51.100.0/24"), "XB"),
        (net("203.0.113.64/26"), "XC"),
        (net("2001:db8:1::/48"), "XA"),
        (net("2001:db8:2::/48"), "XB"),
    ]
}

/// What `ranges(code)` must return: the merged networks of that code (IPv6 ones only if kept).
fn expected(nets: &[(IpNet, &str)], code: &str, with_v6: bool) -> AddrRanges {
    let n: Vec<IpNet> =
        nets.iter().filter(|(n, c)| *c == code && (with_v6 || matches!(n, IpNet::V4(_)))).map(|(n, _)| *n).collect();
    AddrRanges::from_nets(&n)
}

fn check_sample(db: &CountryDb, with_v6: bool) {
    let nets = sample();
    assert_eq!(db.codes(), ["XA", "XB", "XC"]);
    for code in ["XA", "XB", "XC"] {
        assert_eq!(db.ranges(&[code]), expected(&nets, code, with_v6), "{code}");
    }
    assert!(db.ranges(&["ZZ"]).is_empty());
    assert_eq!(db.ranges(&["xa"]), db.ranges(&["XA"]), "lowercase codes are accepted");
    let both = db.ranges(&["XA", "XB"]);
    assert_eq!(both, AddrRanges::union([&expected(&nets, "XA", with_v6), &expected(&nets, "XB", with_v6)]));
    for (a, want) in [
        ("192.0.2.0", Some("XA")),
        ("192.0.2.127", Some("XA")),
        ("192.0.2.128", None),
        ("198.51.100.255", Some("XB")),
        ("203.0.113.63", None),
        ("203.0.113.64", Some("XC")),
        ("::ffff:192.0.2.1", Some("XA")),
        ("2001:db8:1::1", with_v6.then_some("XA")),
        ("2001:db8:2:ffff::1", with_v6.then_some("XB")),
        ("2001:db8:3::1", None),
    ] {
        assert_eq!(db.country_of(ip(a)).as_deref(), want, "{a}");
    }
}

#[test]
fn mmdb_round_trip_all_layouts() {
    for ip_version in [4u8, 6] {
        for record_size in [24u16, 28, 32] {
            for alias_ipv4 in [false, true] {
                let opts = MmdbOptions { ip_version, record_size, alias_ipv4, ..MmdbOptions::default() };
                let bytes = testdb::write_mmdb_with(&sample(), &opts);
                assert_eq!(CountryDb::detect(&bytes), CountryDbFormat::Mmdb);
                let db = CountryDb::from_mmdb(&bytes).unwrap_or_else(|e| panic!("{opts:?}: {e}"));
                check_sample(&db, ip_version == 6);
                // IPv4 appears as IPv4 only: the ::/96 subtree and its aliases give no IPv6 range.
                let all = db.ranges(&["XA", "XB", "XC"]);
                assert!(all.v6.iter().all(|&(a, _)| a >> 96 == 0x2001_0db8), "{opts:?}: {:x?}", all.v6);
                assert_eq!(db.len(), if ip_version == 6 { 5 } else { 3 });
                assert_eq!(CountryDb::load(&bytes, None).unwrap(), db);
            }
        }
    }
}

#[test]
fn mmdb_default_writer() {
    let db = CountryDb::from_mmdb(&testdb::write_mmdb(&sample(), 6)).unwrap();
    check_sample(&db, true);
    let db = CountryDb::from_mmdb(&testdb::write_mmdb(&sample(), 4)).unwrap();
    check_sample(&db, false);
}

#[test]
fn mmdb_registered_country_fallback() {
    let opts = MmdbOptions { registered_only: true, ..MmdbOptions::default() };
    let db = CountryDb::from_mmdb(&testdb::write_mmdb_with(&sample(), &opts)).unwrap();
    check_sample(&db, true);
}

#[test]
fn mmdb_long_pointers() {
    // Padding pushes the records past the 2- and 3-byte pointer ranges, and the padding value
    // itself needs the longest size encoding.
    for pad in [3000usize, 600_000] {
        let opts = MmdbOptions { data_padding: pad, record_size: 32, ..MmdbOptions::default() };
        let db = CountryDb::from_mmdb(&testdb::write_mmdb_with(&sample(), &opts)).unwrap();
        check_sample(&db, true);
    }
}

#[test]
fn mmdb_four_byte_pointer() {
    // The writer needs four-byte pointers only past 128 MiB, so this record uses one by hand: the
    // country map at 0, then {"country": pointer(0)} in the 32-bit form.
    let mut data = vec![0xe1, 0x48];
    data.extend_from_slice(b"iso_code");
    data.extend_from_slice(&[0x42, b'X', b'A', 0xe1, 0x47]);
    data.extend_from_slice(b"country");
    data.extend_from_slice(&[0x38, 0, 0, 0, 0]);
    // 0.0.0.0/1 -> the record at offset 13; 128.0.0.0/1 -> nothing.
    let db = CountryDb::from_mmdb(&raw_db(&[0, 0, 1 + 16 + 13, 0, 0, 1], &data, 1, 24, 4)).unwrap();
    assert_eq!(db.ranges(&["XA"]).v4, [(0, 0x7fff_ffff)]);
}

#[test]
fn mmdb_merges_adjacent_networks() {
    let nets = [
        (net("192.0.2.0/25"), "XA"),
        (net("192.0.2.128/26"), "XA"),
        (net("192.0.2.192/26"), "XA"),
        (net("198.51.100.0/24"), "XB"),
        (net("2001:db8::/33"), "XA"),
        (net("2001:db8:8000::/33"), "XA"),
    ];
    let db = CountryDb::from_mmdb(&testdb::write_mmdb(&nets, 6)).unwrap();
    let xa = db.ranges(&["XA"]);
    assert_eq!(xa.v4, [(0xc000_0200, 0xc000_02ff)]);
    assert_eq!(xa.v6.len(), 1);
    assert_eq!(db.len(), 3, "adjacent networks of one country are stored as one range");
    // Two countries, two ranges.
    assert_eq!(db.ranges(&["XA", "XB"]).v4.len(), 2);
}

#[test]
fn mmdb_network_covering_ipv4_space() {
    // A network that covers ::/96 (here ::/64) is the IPv4 space plus the rest as IPv6. With the
    // aliases, ::ffff:0:0/96 points at the IPv4 subtree and is left out of the IPv6 ranges.
    let nets = [(net("::/64"), "XA")];
    let plain = MmdbOptions { alias_ipv4: false, ..MmdbOptions::default() };
    let db = CountryDb::from_mmdb(&testdb::write_mmdb_with(&nets, &plain)).unwrap();
    let r = db.ranges(&["XA"]);
    assert_eq!(r.v4, [(0, u32::MAX)]);
    assert_eq!(r.v6, [(1 << 32, (1 << 64) - 1)]);
    assert_eq!(db.country_of(ip("192.0.2.1")).as_deref(), Some("XA"));
    let db = CountryDb::from_mmdb(&testdb::write_mmdb(&nets, 6)).unwrap();
    let r = db.ranges(&["XA"]);
    assert_eq!(r.v4, [(0, u32::MAX)]);
    assert_eq!(r.v6, [(1 << 32, (0xffff << 32) - 1), (0x1_0000 << 32, (1 << 64) - 1)]);
}

#[test]
fn mmdb_garbage_is_an_error() {
    let good = testdb::write_mmdb(&sample(), 6);
    // Every truncation: the marker is gone (no metadata) or the tree no longer fits.
    for n in 0..good.len() {
        assert!(CountryDb::from_mmdb(&good[..n]).is_err(), "prefix of {n} bytes");
    }
    // Every single-byte corruption: an error or a database, never a panic.
    for i in 0..good.len() {
        for x in [0x00, 0xff, 0x20, 0x5f, 0x80] {
            let mut b = good.clone();
            b[i] ^= x;
            let _ = CountryDb::from_mmdb(&b).map(|db| (db.ranges(&["XA"]), db.country_of(ip("192.0.2.1"))));
        }
    }
    assert_eq!(CountryDb::from_mmdb(b"").unwrap_err(), GeoError::NoMetadata);
    assert_eq!(CountryDb::from_mmdb(b"hello").unwrap_err(), GeoError::NoMetadata);
    let mut only_marker = mmdb::MARKER.to_vec();
    assert!(matches!(CountryDb::from_mmdb(&only_marker), Err(GeoError::Metadata(_))));
    only_marker.push(0xe0); // an empty map
    let e = CountryDb::from_mmdb(&only_marker).unwrap_err();
    assert_eq!(e.to_string(), "MaxMind DB metadata: the `node_count` field is missing");
}

/// A database from raw tree bytes and a metadata map, for shapes the writer never makes.
fn raw_db(tree: &[u8], data: &[u8], node_count: u32, record_size: u16, ip_version: u16) -> Vec<u8> {
    let mut b = tree.to_vec();
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(data);
    b.extend_from_slice(mmdb::MARKER);
    b.push(0xe3); // map of 3
    for (k, t, v) in [
        ("node_count", 0xc4u8, node_count),
        ("record_size", 0xa2, record_size.into()),
        ("ip_version", 0xa2, ip_version.into()),
    ] {
        b.push(0x40 | k.len() as u8);
        b.extend_from_slice(k.as_bytes());
        let bytes = v.to_be_bytes();
        let n = (t & 0x1f) as usize;
        b.push(t);
        b.extend_from_slice(&bytes[4 - n..]);
    }
    b
}

#[test]
fn mmdb_hostile_trees_end() {
    // The root's records point back at the root: 2^128 paths unless the walk is bounded.
    // In an IPv4 tree the walk's budget stops it; in an IPv6 tree the root is also the node at
    // ::/96, so every record pointing at it counts as an alias and is skipped.
    let t = std::time::Instant::now();
    let cyclic = raw_db(&[0, 0, 0, 0, 0, 0], &[], 1, 24, 4);
    assert!(matches!(CountryDb::from_mmdb(&cyclic), Err(GeoError::Tree(_))), "{:?}", CountryDb::from_mmdb(&cyclic));
    assert!(CountryDb::from_mmdb(&raw_db(&[0, 0, 0, 0, 0, 0], &[], 1, 24, 6)).is_err());
    // A cycle that avoids the ::/96 node: 0 -> 1 -> (1, 2), 2 -> (1, 1).
    let tree = [0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 1];
    assert!(CountryDb::from_mmdb(&raw_db(&tree, &[], 3, 24, 6)).is_err());
    assert!(t.elapsed().as_secs() < 5);
    // A record beyond the data section.
    let out = raw_db(&[0, 0, 0x40, 0, 0, 1], &[], 1, 24, 4);
    assert!(matches!(CountryDb::from_mmdb(&out), Err(GeoError::Tree(_))));
    // A node count far larger than the file.
    let big = raw_db(&[0; 6], &[], 1_000_000, 24, 6);
    assert!(matches!(CountryDb::from_mmdb(&big), Err(GeoError::Metadata(_))));
    // Unsupported record size and ip version.
    assert!(matches!(CountryDb::from_mmdb(&raw_db(&[0; 6], &[], 1, 20, 6)), Err(GeoError::Metadata(_))));
    assert!(matches!(CountryDb::from_mmdb(&raw_db(&[0; 6], &[], 1, 24, 5)), Err(GeoError::Metadata(_))));
    // A record whose data is a pointer to itself, and one that nests maps without end.
    let self_ptr = raw_db(&[0, 0, 1, 0, 0, 17], &[0x20, 0x00], 1, 24, 4);
    assert_eq!(
        CountryDb::from_mmdb(&self_ptr).unwrap_err().to_string(),
        "MaxMind DB data section at offset 0: a pointer points to another pointer"
    );
    let nested = raw_db(&[0, 0, 17, 0, 0, 17], &[0xe1, 0x41, b'a'].repeat(100), 1, 24, 4);
    assert!(matches!(CountryDb::from_mmdb(&nested), Err(GeoError::Data { .. })));
    // Empty tree: no networks.
    assert_eq!(CountryDb::from_mmdb(&raw_db(&[0, 0, 1, 0, 0, 1], &[], 1, 24, 4)).unwrap_err(), GeoError::Empty);
}

#[test]
fn mmdb_huge_declared_sizes_end_quickly() {
    // A record that is a map declaring 16 million pairs of one-byte values ends at the end of the
    // section instead of looping.
    let data = [0xff, 0xff, 0xff, 0xff, 0x41, b'a', 0x41, b'b'];
    let db = raw_db(&[0, 0, 17, 0, 0, 17], &data, 1, 24, 4);
    assert!(matches!(CountryDb::from_mmdb(&db), Err(GeoError::Data { .. })));
}

const DBIP: &str = "\u{feff}\"192.0.2.0\",\"192.0.2.127\",\"XA\"\r\n\
    \r\n\
    198.51.100.0,198.51.100.255,XB\r\n\
    203.0.113.64, 203.0.113.127 , xc\r\n\
    \"2001:db8:1::\",\"2001:db8:1:ffff:ffff:ffff:ffff:ffff\",\"XA\"\n\
    2001:db8:2::,2001:db8:2:ffff:ffff:ffff:ffff:ffff,XB,extra,columns\n\
    203.0.113.200,203.0.113.210,\n\
    \n";

#[test]
fn dbip_csv() {
    assert_eq!(CountryDb::detect(DBIP.as_bytes()), CountryDbFormat::DbIpCsv);
    let db = CountryDb::from_csv(DBIP, None).unwrap();
    check_sample(&db, true);
    assert_eq!(db.country_of(ip("203.0.113.205")), None, "a row without a country is skipped");
    // A header line is skipped; ranges need not be networks.
    let db = CountryDb::from_csv("ip_start,ip_end,country\n192.0.2.3,192.0.2.77,XA\n", None).unwrap();
    assert_eq!(db.ranges(&["XA"]).v4, [(0xc000_0203, 0xc000_024d)]);
    // The writer's output reads back.
    let db = CountryDb::from_csv(&testdb::write_dbip_csv(&sample()), None).unwrap();
    check_sample(&db, true);
    assert_eq!(CountryDb::load(testdb::write_dbip_csv(&sample()).as_bytes(), None).unwrap(), db);
}

#[test]
fn csv_merges_adjacent_ranges() {
    let text = "192.0.2.0,192.0.2.9,XA\n192.0.2.10,192.0.2.255,XA\n198.51.100.0,198.51.100.0,XA\n\
        2001:db8::,2001:db8::ff,XB\n2001:db8::100,2001:db8::1ff,XB\n";
    let db = CountryDb::from_csv(text, None).unwrap();
    assert_eq!(db.ranges(&["XA"]).v4, [(0xc000_0200, 0xc000_02ff), (0xc633_6400, 0xc633_6400)]);
    assert_eq!(db.ranges(&["XB"]).v6.len(), 1);
    assert_eq!(db.len(), 3);
}

#[test]
fn csv_overlaps_become_disjoint() {
    let db = CountryDb::from_csv("192.0.2.0,192.0.2.100,XA\n192.0.2.50,192.0.2.200,XB\n", None).unwrap();
    assert_eq!(db.country_of(ip("192.0.2.60")).as_deref(), Some("XA"));
    assert_eq!(db.country_of(ip("192.0.2.150")).as_deref(), Some("XB"));
    assert_eq!(db.ranges(&["XB"]).v4, [(0xc000_0265, 0xc000_02c8)]);
}

#[test]
fn geolite_csv() {
    let (blocks, locations) = testdb::write_geolite_csv(&sample());
    assert_eq!(CountryDb::detect(blocks.as_bytes()), CountryDbFormat::GeoLiteCsv);
    let db = CountryDb::from_csv(&blocks, Some(&locations)).unwrap();
    check_sample(&db, true);
    assert_eq!(CountryDb::load(blocks.as_bytes(), Some(&locations)).unwrap(), db);
    assert_eq!(CountryDb::from_csv(&blocks, None).unwrap_err(), GeoError::MissingLocations);

    // Two blocks files (IPv4 and IPv6, as MaxMind ships them), quoted fields, CRLF, a continent
    // location, fallback to the registered country, and a row with no country at all.
    let locations = "geoname_id,locale_code,continent_code,continent_name,country_iso_code,country_name,is_in_european_union\r\n\
        6255148,en,EU,Europe,,,0\r\n\
        1000,en,EU,Europe,XA,\"Country \"\"A\"\", test\",0\r\n\
        \"1001\",en,EU,Europe,\"XB\",\"Country B\",1\r\n";
    let v4 = "network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,is_anonymous_proxy,is_satellite_provider\r\n\
        192.0.2.0/25,1000,1000,,0,0\r\n\
        \"198.51.100.0/24\",,1001,,0,0\r\n\
        203.0.113.0/24,6255148,,,0,0\r\n\
        \r\n\
        203.0.113.64/26,,,,1,0\r\n";
    let v6 =
        "network,geoname_id,registered_country_geoname_id\n2001:db8:1::/48,6255148,1000\n2001:db8:2::/48,1001,1000\n";
    let db = CountryDb::from_geolite_csv(&[v4, v6], locations).unwrap();
    assert_eq!(db.codes(), ["XA", "XB"]);
    assert_eq!(db.country_of(ip("198.51.100.1")).as_deref(), Some("XB"));
    assert_eq!(db.country_of(ip("203.0.113.1")), None);
    assert_eq!(db.country_of(ip("2001:db8:1::1")).as_deref(), Some("XA"));
    assert_eq!(db.country_of(ip("2001:db8:2::1")).as_deref(), Some("XB"));
    // Concatenated files (the header repeated) read the same.
    let joined = format!("{v4}{v6}");
    assert_eq!(CountryDb::from_csv(&joined, Some(locations)).unwrap(), db);
}

/// The position and message of a CSV error.
fn csv_err(r: Result<CountryDb, GeoError>) -> (CsvFile, usize, usize, String) {
    match r {
        Err(GeoError::Csv { file, line, col, msg }) => (file, line, col, msg),
        other => panic!("expected a CSV error, got {other:?}"),
    }
}

#[test]
fn csv_errors_have_positions() {
    let b = CsvFile::Blocks(0);
    let cases: &[(&str, usize, usize, &str)] = &[
        ("192.0.2.0,192.0.2.9,XA\n192.0.2.300,192.0.2.400,XA\n", 2, 1, "start `192.0.2.300` is not an IP address"),
        ("192.0.2.0,192.0.2.9,XA\r\n\r\n192.0.2.0,  nope,XA\r\n", 3, 13, "end `nope` is not an IP address"),
        ("192.0.2.9,192.0.2.0,XA\n", 1, 1, "start 192.0.2.9 is after end 192.0.2.0"),
        ("192.0.2.0,2001:db8::,XA\n", 1, 11, "start 192.0.2.0 and end 2001:db8:: are not the same address family"),
        ("192.0.2.0,192.0.2.9\n", 1, 20, "expected 3 fields (start,end,country), found 2 fields"),
        ("192.0.2.0,192.0.2.9,XAB\n", 1, 21, "`XAB` is not a two-letter country code"),
        ("\"192.0.2.0,192.0.2.9,XA\n", 1, 1, "a quoted field has no closing quote"),
        ("\"192.0.2.0\"x,192.0.2.9,XA\n", 1, 12, "unexpected text after a closing quote"),
        ("é,192.0.2.9,XA\n", 1, 1, "start `é` is not an IP address"),
    ];
    for &(text, line, col, msg) in cases {
        assert_eq!(csv_err(CountryDb::from_csv(text, None)), (b, line, col, msg.to_string()), "{text:?}");
    }
    let e = CountryDb::from_csv("192.0.2.9,192.0.2.0,XA\n", None).unwrap_err();
    assert_eq!(e.to_string(), "blocks file, line 1, column 1: start 192.0.2.9 is after end 192.0.2.0");

    let loc = "geoname_id,locale_code,continent_code,continent_name,country_iso_code\n1000,en,EU,Europe,XA\n";
    let head = "network,geoname_id,registered_country_geoname_id\n";
    let geo: &[(&str, &str, CsvFile, usize, usize, &str)] = &[
        (head, "192.0.2.0/25,1001,\n", b, 2, 14, "geoname id 1001 is not in the locations file"),
        (head, "192.0.2.0/25,,999\n", b, 2, 15, "geoname id 999 is not in the locations file"),
        (head, "192.0.2.0/33,1000,\n", b, 2, 1, "`192.0.2.0/33` is not a network (address/prefix length)"),
        (head, "192.0.2.0/25,x1,\n", b, 2, 14, "geoname id `x1` is not a number"),
        (head, "192.0.2.0/25\n", b, 2, 13, "expected at least 2 fields, found 1 field"),
        ("network,registered_country_geoname_id\n", "", b, 1, 1, "the blocks header has no `geoname_id` column"),
    ];
    for &(h, rows, file, line, col, msg) in geo {
        let blocks = format!("{h}{rows}");
        assert_eq!(
            csv_err(CountryDb::from_geolite_csv(&[&blocks], loc)),
            (file, line, col, msg.to_string()),
            "{rows:?}"
        );
    }
    let l = CsvFile::Locations;
    let blocks = format!("{head}192.0.2.0/25,1000,\n");
    for (loc, line, col, msg) in [
        ("geoname_id,country_name\n", 1, 1, "the locations header has no `country_iso_code` column"),
        ("geoname_id,country_iso_code\nabc,XA\n", 2, 1, "geoname id `abc` is not a number"),
        ("geoname_id,country_iso_code\n1000,X1\n", 2, 6, "`X1` is not a two-letter country code"),
        ("geoname_id,country_iso_code\n1000\n", 2, 5, "expected at least 2 fields, found 1 field"),
        // Columns count characters, not bytes.
        (
            "geoname_id,country_name,country_iso_code\n1000,\"Zürich\",X1\n",
            2,
            15,
            "`X1` is not a two-letter country code",
        ),
        ("", 1, 1, "the locations file is empty"),
    ] {
        assert_eq!(csv_err(CountryDb::from_csv(&blocks, Some(loc))), (l, line, col, msg.to_string()), "{loc:?}");
    }
    // The second of two blocks files is named as such.
    let e = CountryDb::from_geolite_csv(&[&blocks, &format!("{head}bad,1000,\n")], loc).unwrap_err();
    assert!(e.to_string().starts_with("blocks file 2, line 2, column 1: "), "{e}");
    // A locations file given as the blocks file.
    let (f, line, col, msg) = csv_err(CountryDb::from_csv(loc, None));
    assert_eq!((f, line, col), (b, 1, 1));
    assert!(msg.contains("locations file"), "{msg}");
    // Not UTF-8.
    let (f, line, col, _) = csv_err(CountryDb::load(b"192.0.2.0,192.0.2.9,XA\n19\xff", None));
    assert_eq!((f, line, col), (b, 2, 3));
    // Nothing with a country.
    assert_eq!(CountryDb::from_csv("", None).unwrap_err(), GeoError::Empty);
    assert_eq!(CountryDb::from_csv("192.0.2.0,192.0.2.9,\n", None).unwrap_err(), GeoError::Empty);
}

#[test]
fn geolite_file_names() {
    assert_eq!(
        geolite_locations_name("GeoLite2-Country-Blocks-IPv4.csv").as_deref(),
        Some("GeoLite2-Country-Locations-en.csv")
    );
    assert_eq!(
        geolite_locations_name("GeoIP2-Country-Blocks-IPv6.csv").as_deref(),
        Some("GeoIP2-Country-Locations-en.csv")
    );
    assert_eq!(geolite_locations_name("dbip-country-lite.csv"), None);
    assert_eq!(
        geolite_sibling_blocks_name("GeoLite2-Country-Blocks-IPv4.csv").as_deref(),
        Some("GeoLite2-Country-Blocks-IPv6.csv")
    );
    assert_eq!(
        geolite_sibling_blocks_name("GeoLite2-Country-Blocks-IPv6.csv").as_deref(),
        Some("GeoLite2-Country-Blocks-IPv4.csv")
    );
}

/// Non-overlapping random networks inside the documentation ranges, with codes XA..XD.
fn doc_networks(v6: bool) -> impl Strategy<Value = Vec<(IpNet, &'static str)>> {
    let v4 = (0usize..3, any::<u8>(), 24u8..=32).prop_map(|(base, host, len)| {
        let bases = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];
        let [a, b, c] = bases[base];
        IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(a, b, c, host), len).unwrap().trunc())
    });
    let v6net = (any::<u128>(), 32u8..=128).prop_map(|(low, len)| {
        let addr = (0x2001_0db8u128 << 96) | (low >> 32);
        IpNet::V6(ipnet::Ipv6Net::new(addr.into(), len).unwrap().trunc())
    });
    let one = if v6 { prop_oneof![v4.clone(), v6net].boxed() } else { v4.boxed() };
    proptest::collection::vec((one, prop::sample::select(vec!["XA", "XB", "XC", "XD"])), 1..40).prop_map(|cands| {
        let mut kept: Vec<(IpNet, &'static str)> = Vec::new();
        for (n, c) in cands {
            if !kept.iter().any(|(k, _)| k.contains(&n) || n.contains(k)) {
                kept.push((n, c));
            }
        }
        kept
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mmdb_round_trip_random(v6 in any::<bool>(), record_size in prop::sample::select(vec![24u16, 28, 32]), nets in doc_networks(true)) {
        let ip_version = if v6 { 6 } else { 4 };
        let opts = MmdbOptions { ip_version, record_size, ..MmdbOptions::default() };
        let db = CountryDb::from_mmdb(&testdb::write_mmdb_with(&nets, &opts));
        let kept: Vec<_> = nets.iter().filter(|(n, _)| v6 || matches!(n, IpNet::V4(_))).collect();
        if kept.is_empty() {
            prop_assert_eq!(db.unwrap_err(), GeoError::Empty);
            return Ok(());
        }
        let db = db.unwrap();
        for code in ["XA", "XB", "XC", "XD"] {
            prop_assert_eq!(db.ranges(&[code]), expected(&nets, code, v6), "{}", code);
        }
        for (n, c) in &kept {
            prop_assert_eq!(db.country_of(n.network()), Some(c.to_string()));
            prop_assert_eq!(db.country_of(n.broadcast()), Some(c.to_string()));
        }
    }

    #[test]
    fn csv_round_trip_random(nets in doc_networks(true)) {
        let dbip = CountryDb::from_csv(&testdb::write_dbip_csv(&nets), None).unwrap();
        let (blocks, locations) = testdb::write_geolite_csv(&nets);
        let geolite = CountryDb::from_csv(&blocks, Some(&locations)).unwrap();
        let mmdb = CountryDb::from_mmdb(&testdb::write_mmdb(&nets, 6)).unwrap();
        for code in ["XA", "XB", "XC", "XD"] {
            prop_assert_eq!(dbip.ranges(&[code]), expected(&nets, code, true));
        }
        prop_assert_eq!(&dbip, &geolite);
        prop_assert_eq!(&dbip, &mmdb);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), tail in any::<bool>()) {
        let mut bytes = bytes;
        if tail {
            bytes.extend_from_slice(mmdb::MARKER);
            bytes.extend_from_slice(&[0xe3, 0x4a]);
        }
        if let Ok(db) = CountryDb::from_mmdb(&bytes) {
            let _ = (db.ranges(&["XA"]), db.codes(), db.country_of(ip("192.0.2.1")));
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = CountryDb::from_csv(&text, None);
        let _ = CountryDb::from_csv(&text, Some(&text));
    }
}
