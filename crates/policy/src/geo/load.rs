//! The public ways to load a country database: by its format, or with the format detected from
//! the bytes. The readers themselves are `mmdb` and `csv`.

use super::csv::{self, csv_text};
use super::db::{CountryDb, CsvFile, GeoError};
use super::mmdb;

/// The on-disk layouts a country database can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CountryDbFormat {
    /// MaxMind DB binary format (GeoLite2-Country.mmdb, dbip-country-lite.mmdb, ...).
    Mmdb,
    /// DB-IP CSV: `start,end,CC` per line, IPv4 and IPv6 mixed.
    DbIpCsv,
    /// GeoLite2 CSV: a blocks file (`network,geoname_id,...`) plus a locations file.
    GeoLiteCsv,
}

impl CountryDb {
    /// MaxMind DB format (GeoLite2-Country.mmdb, DB-IP dbip-country-lite.mmdb): country code from
    /// the record's `country.iso_code` (fall back to `registered_country.iso_code`).
    ///
    /// IPv4 networks of an IPv6 tree (the `::/96` subtree) are reported as IPv4 only, and the
    /// subtrees that alias it (`::ffff:0:0/96`, `2002::/16`) are skipped.
    pub fn from_mmdb(bytes: &[u8]) -> Result<CountryDb, GeoError> {
        mmdb::read(bytes)
    }

    /// CSV: DB-IP layout (`start,end,CC` per line, IPv4 and IPv6 mixed, optional quotes) or GeoLite2
    /// layout (blocks file `network,geoname_id,registered_country_geoname_id,...` with a header, plus
    /// the locations file `geoname_id,locale_code,continent_code,continent_name,country_iso_code,...`).
    /// `locations` is required for GeoLite.
    ///
    /// Malformed lines are errors with their position; rows whose country is empty are skipped.
    pub fn from_csv(blocks: &str, locations: Option<&str>) -> Result<CountryDb, GeoError> {
        if csv::is_geolite_blocks(blocks) {
            let locations = locations.ok_or(GeoError::MissingLocations)?;
            csv::read_geolite(&[blocks], locations)
        } else {
            csv::read_dbip(blocks)
        }
    }

    /// GeoLite2 CSV with several blocks files (MaxMind ships IPv4 and IPv6 in separate files) and
    /// one locations file. Errors name the file by its index in `blocks` ([`CsvFile::Blocks`]).
    pub fn from_geolite_csv(blocks: &[&str], locations: &str) -> Result<CountryDb, GeoError> {
        csv::read_geolite(blocks, locations)
    }

    /// Detects the format and loads: the MaxMind DB reader for [`CountryDbFormat::Mmdb`], otherwise
    /// the bytes must be UTF-8 text for [`CountryDb::from_csv`].
    pub fn load(bytes: &[u8], locations: Option<&str>) -> Result<CountryDb, GeoError> {
        match CountryDb::detect(bytes) {
            CountryDbFormat::Mmdb => CountryDb::from_mmdb(bytes),
            CountryDbFormat::DbIpCsv | CountryDbFormat::GeoLiteCsv => {
                CountryDb::from_csv(csv_text(bytes, CsvFile::Blocks(0))?, locations)
            }
        }
    }

    /// Detects the format from the bytes (mmdb metadata marker "\xAB\xCD\xEFMaxMind.com" near the
    /// end; otherwise CSV, GeoLite if the header starts with `network,geoname_id`).
    pub fn detect(bytes: &[u8]) -> CountryDbFormat {
        if mmdb::find_metadata(bytes).is_some() {
            return CountryDbFormat::Mmdb;
        }
        // The header is the first line; a few KiB are plenty and keep this cheap on big files.
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
        if csv::is_geolite_blocks(&head) { CountryDbFormat::GeoLiteCsv } else { CountryDbFormat::DbIpCsv }
    }
}
