//! How fast a country database of 500,000 networks loads: `cargo bench -p policy --bench
//! country_db`. A real GeoLite2 country database has about that many; the networks here lie in
//! the documentation ranges (IPv4 /32s and IPv6 /52 to /63 in 2001:db8::/32), one per other /52
//! so that they neither overlap nor merge, as real allocations do not.

use ipnet::IpNet;
use policy::geo::{CountryDb, testdb};
use std::time::Instant;

fn networks() -> Vec<(IpNet, &'static str)> {
    const CODES: [&str; 8] = ["XA", "XB", "XC", "XD", "XE", "XF", "XG", "XH"];
    let mut nets: Vec<(IpNet, &str)> = Vec::with_capacity(500_000);
    for (i, base) in [[192u8, 0, 2], [198, 51, 100], [203, 0, 113]].iter().enumerate() {
        for h in 0..=255u8 {
            let n = ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(base[0], base[1], base[2], h), 32).unwrap();
            nets.push((IpNet::V4(n), CODES[(i * 7 + usize::from(h)) % 3]));
        }
    }
    let mut x = 0x1234_5678_9abc_def0u64;
    while nets.len() < 500_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = (nets.len() as u128) * 2;
        let addr = (0x2001_0db8u128 << 96) | (slot << 76) | (u128::from(x & 0xfff) << 64);
        let len = 52 + (x >> 32) as u8 % 12;
        let n = ipnet::Ipv6Net::new(addr.into(), len).unwrap().trunc();
        nets.push((IpNet::V6(n), CODES[(x >> 20) as usize % CODES.len()]));
    }
    nets.sort_by_key(|(n, _)| (n.network(), n.prefix_len()));
    nets.dedup_by(|b, a| a.0.contains(&b.0));
    nets
}

fn main() {
    let nets = networks();
    let bytes = testdb::write_mmdb(&nets, 6);
    let csv = testdb::write_dbip_csv(&nets);
    let rounds = 5;
    let (mut mmdb, mut from_csv, mut ranges) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let db = CountryDb::from_mmdb(&bytes).unwrap();
        mmdb.push(t.elapsed());
        let t = Instant::now();
        let db2 = CountryDb::from_csv(&csv, None).unwrap();
        from_csv.push(t.elapsed());
        // The two layouts of the same data must load to the same database.
        assert_eq!(db, db2);
        let t = Instant::now();
        let r = db.ranges(&["XA", "XB"]);
        ranges.push(t.elapsed());
        assert!(!r.is_empty());
    }
    let median = |v: &mut Vec<std::time::Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "{} networks; mmdb {} bytes: from_mmdb {:?}; DB-IP CSV {} bytes: from_csv {:?}; ranges(2 codes) {:?} (medians of {rounds})",
        nets.len(),
        bytes.len(),
        median(&mut mmdb),
        csv.len(),
        median(&mut from_csv),
        median(&mut ranges),
    );
}
