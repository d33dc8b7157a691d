//! Country databases for `to_country` rules: pure readers that turn the bytes of a MaxMind DB
//! (`.mmdb`) or of a CSV export (DB-IP or GeoLite2 layout) into merged address ranges per country.
//!
//! The caller reads the files and hands the bytes in, so this module stays free of I/O like the rest
//! of the crate. A database is loaded once into two sorted, disjoint range tables (IPv4 and IPv6),
//! each range tagged with its country; [`CountryDb::ranges`] then filters and merges them into the
//! [`AddrRanges`](crate::ranges::AddrRanges) that the compiler turns into an interval set, and
//! [`CountryDb::country_of`] is a binary search for `explain`.
//!
//! `db` holds the loaded database and what both readers share; `mmdb` and `csv` are the readers,
//! `load` the public ways in (by format, or detected from the bytes).

mod csv;
mod db;
mod load;
mod mmdb;
#[doc(hidden)]
pub mod testdb;
#[cfg(test)]
mod tests;

pub use csv::{csv_text, geolite_locations_name, geolite_sibling_blocks_name};
pub use db::{CountryDb, CsvFile, GeoError};
pub use load::CountryDbFormat;
