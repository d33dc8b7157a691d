//! Writers of tiny, deterministic country databases for tests: a MaxMind DB (the same layout
//! MaxMind's writers produce, aliases included) and both CSV layouts.
//!
//! This is public, not `cfg(test)`, because the integration tests of other crates (the `leash`
//! binary's) write such a database into a temporary directory. It is not meant for production use:
//! it panics on input it cannot encode (a record size too small for the tree).

use ipnet::IpNet;
use std::collections::{BTreeSet, HashMap};

/// How [`write_mmdb_with`] lays the database out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmdbOptions {
    /// 4 (IPv6 networks are left out) or 6 (IPv4 networks go under `::/96`).
    pub ip_version: u8,
    /// Bits per record: 24, 28 or 32.
    pub record_size: u16,
    /// In an IPv6 tree, point `::ffff:0:0/96` and `2002::/16` at the IPv4 subtree, as MaxMind does.
    pub alias_ipv4: bool,
    /// Write only `registered_country`, not `country`, to exercise the reader's fallback.
    pub registered_only: bool,
    /// Bytes of unused data at the start of the data section, so that pointers need their longer
    /// encodings.
    pub data_padding: usize,
}

impl Default for MmdbOptions {
    fn default() -> Self {
        MmdbOptions { ip_version: 6, record_size: 28, alias_ipv4: true, registered_only: false, data_padding: 0 }
    }
}

/// A MaxMind DB with 28-bit records (like GeoLite2-Country) holding `networks`, each with a record
/// `{continent, country: {iso_code, names, ...}, registered_country}` for its code. Later networks
/// override earlier ones where they overlap.
pub fn write_mmdb(networks: &[(IpNet, &str)], ip_version: u8) -> Vec<u8> {
    write_mmdb_with(networks, &MmdbOptions { ip_version, ..MmdbOptions::default() })
}

/// A search-tree record while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// A binary trie over address bits; node 0 is the root.
#[derive(Debug)]
struct Trie {
    nodes: Vec<[Rec; 2]>,
    width: u32,
}

impl Trie {
    /// The node reached by the first `len` bits of `addr` (left-aligned), created as needed. A data
    /// record on the way is split into a node whose two records carry the same data.
    fn descend(&mut self, addr: u128, len: u32) -> usize {
        let mut n = 0;
        for i in 0..len {
            let bit = ((addr >> (127 - i)) & 1) as usize;
            n = match self.nodes[n][bit] {
                Rec::Node(c) => c,
                other => {
                    let c = self.nodes.len();
                    self.nodes.push([other, other]);
                    self.nodes[n][bit] = Rec::Node(c);
                    c
                }
            };
        }
        n
    }

    /// Sets the record of the network `addr/len` (left-aligned bits).
    fn set(&mut self, addr: u128, len: u32, rec: Rec) {
        if len == 0 {
            self.nodes[0] = [rec, rec];
            return;
        }
        let n = self.descend(addr, len - 1);
        self.nodes[n][((addr >> (128 - len)) & 1) as usize] = rec;
    }
}

/// A MaxMind DB with the given layout; see [`write_mmdb`].
pub fn write_mmdb_with(networks: &[(IpNet, &str)], opts: &MmdbOptions) -> Vec<u8> {
    assert!(matches!(opts.ip_version, 4 | 6), "ip_version must be 4 or 6");
    assert!(matches!(opts.record_size, 24 | 28 | 32), "record size must be 24, 28 or 32");
    let codes: Vec<&str> = networks.iter().map(|n| n.1).collect::<BTreeSet<_>>().into_iter().collect();
    let width = if opts.ip_version == 4 { 32 } else { 128 };
    let mut trie = Trie { nodes: vec![[Rec::Empty; 2]], width };
    for (net, code) in networks {
        let d = Rec::Data(codes.binary_search(code).unwrap_or(0));
        match (net, width) {
            (IpNet::V4(n), 32) => trie.set(u128::from(u32::from(n.network())) << 96, u32::from(n.prefix_len()), d),
            (IpNet::V4(n), _) => trie.set(u128::from(u32::from(n.network())), 96 + u32::from(n.prefix_len()), d),
            (IpNet::V6(n), 128) => trie.set(u128::from(n.network()), u32::from(n.prefix_len()), d),
            (IpNet::V6(_), _) => {}
        }
    }
    if width == 128 && opts.alias_ipv4 {
        let v4_root = trie.descend(0, 96);
        trie.set(0xffffu128 << 32, 96, Rec::Node(v4_root));
        trie.set(0x2002u128 << 112, 16, Rec::Node(v4_root));
    }
    debug_assert_eq!(trie.width, width);

    // Number the reachable nodes breadth-first (orphans of overwritten subtrees drop out).
    let mut order = vec![0usize];
    let mut number: HashMap<usize, usize> = HashMap::from([(0, 0)]);
    let mut i = 0;
    while i < order.len() {
        for rec in trie.nodes[order[i]] {
            if let Rec::Node(c) = rec
                && let std::collections::hash_map::Entry::Vacant(e) = number.entry(c)
            {
                e.insert(order.len());
                order.push(c);
            }
        }
        i += 1;
    }
    let node_count = order.len();

    let (data, offsets) = data_section(&codes, opts);
    let max = 1u64 << opts.record_size;
    let value = |r: Rec| -> u32 {
        let v = match r {
            Rec::Empty => node_count,
            Rec::Node(c) => number[&c],
            Rec::Data(d) => node_count + 16 + offsets[d],
        };
        assert!((v as u64) < max, "{}-bit records cannot hold {v}", opts.record_size);
        v as u32
    };
    let mut out = Vec::new();
    for &n in &order {
        let [l, r] = trie.nodes[n].map(value);
        match opts.record_size {
            24 => {
                out.extend_from_slice(&l.to_be_bytes()[1..]);
                out.extend_from_slice(&r.to_be_bytes()[1..]);
            }
            28 => {
                out.extend_from_slice(&l.to_be_bytes()[1..]);
                out.push((((l >> 24) & 0x0f) << 4) as u8 | ((r >> 24) & 0x0f) as u8);
                out.extend_from_slice(&r.to_be_bytes()[1..]);
            }
            _ => {
                out.extend_from_slice(&l.to_be_bytes());
                out.extend_from_slice(&r.to_be_bytes());
            }
        }
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(super::mmdb::MARKER);

    let mut md = Enc::default();
    md.map(9);
    md.key("binary_format_major_version");
    md.uint(5, 2);
    md.key("binary_format_minor_version");
    md.uint(5, 0);
    md.key("build_epoch");
    md.uint(9, 1_700_000_000);
    md.key("database_type");
    md.string("Leash-Test-Country");
    md.key("description");
    md.map(1);
    md.key("en");
    md.string("leash test database (documentation ranges only)");
    md.key("ip_version");
    md.uint(5, u128::from(opts.ip_version));
    md.key("languages");
    md.ctrl(11, 1);
    md.string("en");
    md.key("node_count");
    md.uint(6, node_count as u128);
    md.key("record_size");
    md.uint(5, u128::from(opts.record_size));
    out.extend_from_slice(&md.out);
    out
}

/// The data section: optional padding, then per code a country map and a record that refers to
/// it by pointers. Returns the section and each code's record offset.
fn data_section(codes: &[&str], opts: &MmdbOptions) -> (Vec<u8>, Vec<usize>) {
    let mut e = Enc::default();
    if opts.data_padding > 0 {
        e.ctrl(4, opts.data_padding);
        e.out.resize(e.out.len() + opts.data_padding, 0xAB);
    }
    let mut offsets = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let country = e.out.len();
        e.map(4);
        e.key("geoname_id");
        e.uint(6, 1000 + i as u128);
        e.key("is_in_european_union");
        e.ctrl(14, 1);
        e.key("iso_code");
        e.string(code);
        e.key("names");
        e.map(2);
        e.key("en");
        e.string(&format!("Country {code}"));
        e.key("de");
        e.string(&format!("Land {code}"));

        offsets.push(e.out.len());
        e.map(if opts.registered_only { 3 } else { 4 });
        // Fields a reader must skip: every type the format has.
        e.key("continent");
        e.map(2);
        e.key("code");
        e.string("XX");
        e.key("geoname_id");
        e.uint(6, 6_255_148);
        e.key("traits");
        e.map(8);
        e.key("double");
        e.ctrl(3, 8);
        e.out.extend_from_slice(&1.5f64.to_be_bytes());
        e.key("float");
        e.ctrl(15, 4);
        e.out.extend_from_slice(&2.5f32.to_be_bytes());
        e.key("int32");
        e.ctrl(8, 4);
        e.out.extend_from_slice(&(-7i32).to_be_bytes());
        e.key("uint64");
        e.uint(9, 1 << 40);
        e.key("uint128");
        e.uint(10, 1 << 100);
        e.key("bytes");
        e.ctrl(4, 3);
        e.out.extend_from_slice(&[1, 2, 3]);
        e.key("list");
        e.ctrl(11, 2);
        e.uint(5, 443);
        e.string(&"long ".repeat(70)); // a string of more than 285 bytes
        e.key("empty");
        e.ctrl(14, 0);
        if !opts.registered_only {
            e.key("country");
            e.pointer(country);
        }
        e.key("registered_country");
        e.pointer(country);
    }
    (e.out, offsets)
}

/// An encoder for the MaxMind DB data format. Map keys that were written before are written as
/// pointers to the first copy, as MaxMind's writers do.
#[derive(Debug, Default)]
struct Enc {
    out: Vec<u8>,
    keys: HashMap<String, usize>,
}

impl Enc {
    fn ctrl(&mut self, ty: u8, size: usize) {
        let (t, ext) = if ty > 7 { (0, Some(ty - 7)) } else { (ty, None) };
        let (bits, extra): (u8, Vec<u8>) = if size < 29 {
            (size as u8, vec![])
        } else if size < 285 {
            (29, vec![(size - 29) as u8])
        } else if size < 65_821 {
            (30, ((size - 285) as u16).to_be_bytes().to_vec())
        } else {
            (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
        };
        self.out.push((t << 5) | bits);
        self.out.extend(ext);
        self.out.extend(extra);
    }

    fn pointer(&mut self, target: usize) {
        if target < 2048 {
            self.out.extend_from_slice(&[0x20 | (target >> 8) as u8, target as u8]);
        } else if target < 526_336 {
            let v = target - 2048;
            self.out.extend_from_slice(&[0x28 | (v >> 16) as u8, (v >> 8) as u8, v as u8]);
        } else if target < 526_336 + (1 << 27) {
            let v = target - 526_336;
            self.out.extend_from_slice(&[0x30 | (v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8, v as u8]);
        } else {
            self.out.push(0x38);
            self.out.extend_from_slice(&(target as u32).to_be_bytes());
        }
    }

    fn string(&mut self, s: &str) {
        self.ctrl(2, s.len());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn key(&mut self, k: &str) {
        match self.keys.get(k) {
            Some(&at) => self.pointer(at),
            None => {
                self.keys.insert(k.to_owned(), self.out.len());
                self.string(k);
            }
        }
    }

    fn map(&mut self, pairs: usize) {
        self.ctrl(7, pairs);
    }

    /// An unsigned integer of type `ty` in as few bytes as it needs.
    fn uint(&mut self, ty: u8, v: u128) {
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        self.ctrl(ty, 16 - skip);
        self.out.extend_from_slice(&bytes[skip..]);
    }
}

/// A DB-IP style CSV (`start,end,CC`, no header, no quotes) of `networks`.
pub fn write_dbip_csv(networks: &[(IpNet, &str)]) -> String {
    networks.iter().map(|(n, cc)| format!("{},{},{cc}\n", n.network(), n.broadcast())).collect()
}

/// GeoLite2 style CSV files of `networks`: (blocks, locations). Both families go into the one
/// blocks file; each code gets geoname id 1000 + its index in sorted order, and the locations file
/// also holds a continent (no country code), as the real one does.
pub fn write_geolite_csv(networks: &[(IpNet, &str)]) -> (String, String) {
    let codes: Vec<&str> = networks.iter().map(|n| n.1).collect::<BTreeSet<_>>().into_iter().collect();
    let mut loc = String::from(
        "geoname_id,locale_code,continent_code,continent_name,country_iso_code,country_name,is_in_european_union\n",
    );
    loc.push_str("6255148,en,EU,Europe,,,0\n");
    for (i, cc) in codes.iter().enumerate() {
        loc.push_str(&format!("{},en,EU,Europe,{cc},\"Country {cc}, test\",0\n", 1000 + i));
    }
    let mut blocks = String::from(
        "network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,is_anonymous_proxy,is_satellite_provider,is_anycast\n",
    );
    for (n, cc) in networks {
        let id = 1000 + codes.binary_search(cc).unwrap_or(0);
        blocks.push_str(&format!("{},{id},{id},,0,0,\n", n.trunc()));
    }
    (blocks, loc)
}
