//! A loaded country database and what its readers share: the error type, the country code
//! syntax, and the builder that sorts and merges the ranges a reader collects, once.

use crate::ranges::AddrRanges;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// Which CSV file an error is in, so that the caller can print the right file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CsvFile {
    /// The blocks file (DB-IP: the only file). The number is the index into the list of blocks
    /// files given to [`CountryDb::from_geolite_csv`]; it is 0 for [`CountryDb::from_csv`].
    Blocks(usize),
    /// The GeoLite2 locations file.
    Locations,
}

impl fmt::Display for CsvFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsvFile::Blocks(0) => f.write_str("blocks file"),
            CsvFile::Blocks(i) => write!(f, "blocks file {}", i + 1),
            CsvFile::Locations => f.write_str("locations file"),
        }
    }
}

/// Why a country database could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeoError {
    /// The bytes lack the metadata marker every MaxMind DB ends with.
    #[error("not a MaxMind DB: the metadata marker \"\\xAB\\xCD\\xEFMaxMind.com\" is missing")]
    NoMetadata,
    /// The metadata map is missing a field or holds an unsupported value.
    #[error("MaxMind DB metadata: {0}")]
    Metadata(String),
    /// The binary search tree is malformed (a record beyond the data section, a path longer than
    /// the address, cycles).
    #[error("MaxMind DB search tree: {0}")]
    Tree(String),
    /// A value in the data section could not be decoded. The offset is relative to the start of
    /// the data section.
    #[error("MaxMind DB data section at offset {offset}: {msg}")]
    Data { offset: usize, msg: String },
    /// A malformed CSV line. `line` and `col` are 1-based; `col` counts characters.
    #[error("{file}, line {line}, column {col}: {msg}")]
    Csv { file: CsvFile, line: usize, col: usize, msg: String },
    /// A GeoLite2 blocks file was given without its locations file.
    #[error(
        "the file has the GeoLite2 blocks layout (network,geoname_id,...), which also needs the locations file (for example GeoLite2-Country-Locations-en.csv)"
    )]
    MissingLocations,
    /// The database parsed but holds no network with a country code.
    #[error("the database holds no network with a country code")]
    Empty,
}

/// A loaded country database: every network with a country, as sorted, disjoint inclusive ranges
/// per address family, each tagged with an index into `codes`.
#[derive(Clone, PartialEq, Eq)]
pub struct CountryDb {
    /// Sorted, deduplicated uppercase country codes; the tags below index into it.
    codes: Vec<String>,
    /// Sorted, disjoint IPv4 ranges. Adjacent ranges of the same country are merged.
    v4: Vec<(u32, u32, u32)>,
    /// Sorted, disjoint IPv6 ranges, merged the same way.
    v6: Vec<(u128, u128, u32)>,
}

// A database holds hundreds of thousands of ranges, so Debug prints only their numbers.
impl fmt::Debug for CountryDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountryDb")
            .field("codes", &self.codes.len())
            .field("v4_ranges", &self.v4.len())
            .field("v6_ranges", &self.v6.len())
            .finish()
    }
}

impl CountryDb {
    /// Merged ranges of every network whose country is one of `codes` (uppercase ISO 3166-1
    /// alpha-2; lowercase is accepted too). Unknown codes contribute nothing.
    pub fn ranges(&self, codes: &[&str]) -> AddrRanges {
        let mut wanted = vec![false; self.codes.len()];
        for c in codes {
            let c = c.trim().to_ascii_uppercase();
            if let Ok(i) = self.codes.binary_search(&c) {
                wanted[i] = true;
            }
        }
        let v4 = self.v4.iter().filter(|r| wanted[r.2 as usize]).map(|&(a, b, _)| (a, b)).collect();
        let v6 = self.v6.iter().filter(|r| wanted[r.2 as usize]).map(|&(a, b, _)| (a, b)).collect();
        AddrRanges::from_ranges(v4, v6)
    }

    /// Country codes present in the database (sorted, deduplicated), so the caller can warn about a
    /// code that has no networks.
    pub fn codes(&self) -> Vec<String> {
        self.codes.clone()
    }

    /// The country of one address (for `leash explain` output), if any. An IPv4-mapped IPv6
    /// address (`::ffff:a.b.c.d`) that the IPv6 table does not hold is looked up as IPv4.
    pub fn country_of(&self, addr: IpAddr) -> Option<String> {
        fn find<T: Ord + Copy>(r: &[(T, T, u32)], x: T) -> Option<u32> {
            // The last range starting at or before x is the only one that can hold it.
            let i = r.partition_point(|e| e.0 <= x);
            (i > 0 && r[i - 1].1 >= x).then(|| r[i - 1].2)
        }
        let tag = match addr {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)).or_else(|| find(&self.v4, u32::from(a.to_ipv4_mapped()?))),
        }?;
        Some(self.codes[tag as usize].clone())
    }

    /// Number of stored ranges (after merging adjacent ranges of the same country), both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Always false for a loaded database (an empty one is [`GeoError::Empty`]).
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// A country code as stored: two ASCII letters, uppercased. Anything else is not a country code.
pub(super) fn normalize_code(s: &[u8]) -> Option<String> {
    let s = s.trim_ascii();
    (s.len() == 2 && s.iter().all(u8::is_ascii_alphabetic))
        .then(|| s.iter().map(|b| char::from(b.to_ascii_uppercase())).collect())
}

/// Collects tagged ranges from a reader, then sorts and merges them once into a [`CountryDb`].
#[derive(Debug, Default)]
pub(super) struct Builder {
    index: HashMap<String, u32>,
    codes: Vec<String>,
    pub(super) v4: Vec<(u32, u32, u32)>,
    pub(super) v6: Vec<(u128, u128, u32)>,
}

impl Builder {
    /// The tag of a (normalized) code, interned so that every range carries a small integer.
    pub(super) fn tag(&mut self, code: &str) -> u32 {
        if let Some(&t) = self.index.get(code) {
            return t;
        }
        let t = self.codes.len() as u32;
        self.codes.push(code.to_owned());
        self.index.insert(code.to_owned(), t);
        t
    }

    pub(super) fn finish(self) -> Result<CountryDb, GeoError> {
        let v4 = disjoint(self.v4);
        let v6 = disjoint(self.v6);
        // Keep only the codes that still own a range, renumbered in sorted order, so that `codes()`
        // never lists a country without networks and `ranges` can binary-search.
        let mut used = vec![false; self.codes.len()];
        for t in v4.iter().map(|r| r.2).chain(v6.iter().map(|r| r.2)) {
            used[t as usize] = true;
        }
        let mut order: Vec<u32> = (0..self.codes.len() as u32).filter(|&t| used[t as usize]).collect();
        if order.is_empty() {
            return Err(GeoError::Empty);
        }
        order.sort_by(|&a, &b| self.codes[a as usize].cmp(&self.codes[b as usize]));
        let mut renum = vec![0u32; self.codes.len()];
        for (new, &old) in order.iter().enumerate() {
            renum[old as usize] = new as u32;
        }
        let codes = order.iter().map(|&t| self.codes[t as usize].clone()).collect();
        let v4 = v4.into_iter().map(|(a, b, t)| (a, b, renum[t as usize])).collect();
        let v6 = v6.into_iter().map(|(a, b, t)| (a, b, renum[t as usize])).collect();
        Ok(CountryDb { codes, v4, v6 })
    }
}

/// An address integer type, for the one sort-and-merge routine both families share.
trait Addr: Copy + Ord {
    fn succ(self) -> Option<Self>;
}
impl Addr for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}
impl Addr for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Sorts tagged ranges and makes them disjoint, merging adjacent ranges of the same country.
///
/// Real databases never overlap, but a CSV file can; an address belongs to one country only, so
/// where ranges overlap the one that starts first (then the shorter one) keeps the overlap.
fn disjoint<T: Addr>(mut r: Vec<(T, T, u32)>) -> Vec<(T, T, u32)> {
    r.sort_unstable();
    let mut out: Vec<(T, T, u32)> = Vec::with_capacity(r.len());
    for (mut a, b, t) in r {
        if let Some(last) = out.last_mut() {
            if a <= last.1 {
                // Overlap: keep only the part after the previous range, if any.
                match last.1.succ() {
                    Some(next) if next <= b => a = next,
                    _ => continue,
                }
            }
            if last.2 == t && last.1.succ() == Some(a) {
                last.1 = b;
                continue;
            }
        }
        out.push((a, b, t));
    }
    out
}
