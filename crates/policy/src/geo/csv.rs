//! Readers for the CSV exports of country databases: DB-IP (`start,end,CC`) and GeoLite2 (a blocks
//! file of networks with geoname ids, plus a locations file that maps the ids to country codes).
//!
//! Fields may be quoted (RFC 4180, `""` inside quotes is a quote); lines may end in CRLF; blank lines
//! and a leading byte-order mark are ignored. A malformed line is an error that carries its line and
//! column, so that the caller can point at it like at a policy error; a row without a country is
//! skipped, since both vendors use those for networks they could not place.

use super::db::{Builder, CountryDb, CsvFile, GeoError, normalize_code};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

/// One field of a line: its text (unquoted, trimmed) and the byte offset where it starts.
#[derive(Debug)]
struct Field<'a> {
    text: Cow<'a, str>,
    at: usize,
}

/// A line being read, to build positioned errors.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    file: CsvFile,
    no: usize,
    text: &'a str,
}

impl Line<'_> {
    /// An error at byte offset `at` of the line; the column counts characters, from 1.
    fn err(&self, at: usize, msg: impl Into<String>) -> GeoError {
        let at = at.min(self.text.len());
        let col = self.text.get(..at).map_or(at, |s| s.chars().count()) + 1;
        GeoError::Csv { file: self.file, line: self.no, col, msg: msg.into() }
    }

    /// An error about a missing field: the column just past the end of the line.
    fn missing(&self, want: &str, found: usize) -> GeoError {
        self.err(self.text.len(), format!("expected {want}, found {found} field{}", if found == 1 { "" } else { "s" }))
    }
}

/// The non-blank lines of a file with their 1-based numbers, without CR and byte-order mark.
fn lines(file: CsvFile, text: &str) -> impl Iterator<Item = Line<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .enumerate()
        .map(move |(i, l)| Line { file, no: i + 1, text: l.strip_suffix('\r').unwrap_or(l) })
        .filter(|l| !l.text.trim().is_empty())
}

/// Splits a line into fields. Spaces around fields (and around quotes) are dropped.
fn split<'a>(line: &Line<'a>) -> Result<Vec<Field<'a>>, GeoError> {
    let s = line.text;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(8);
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let at = i;
        if b.get(i) == Some(&b'"') {
            let mut text = Cow::Borrowed("");
            i += 1;
            let mut seg = i;
            loop {
                let Some(q) = s[i..].find('"').map(|q| i + q) else {
                    return Err(line.err(at, "a quoted field has no closing quote"));
                };
                if b.get(q + 1) == Some(&b'"') {
                    // A doubled quote is one quote character of the value.
                    text.to_mut().push_str(&s[seg..=q]);
                    i = q + 2;
                    seg = i;
                } else {
                    if let Cow::Owned(t) = &mut text {
                        t.push_str(&s[seg..q]);
                    } else {
                        text = Cow::Borrowed(&s[seg..q]);
                    }
                    i = q + 1;
                    break;
                }
            }
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            if i < b.len() && b[i] != b',' {
                return Err(line.err(i, "unexpected text after a closing quote"));
            }
            out.push(Field { text, at });
        } else {
            let end = s[i..].find(',').map_or(b.len(), |c| i + c);
            out.push(Field { text: Cow::Borrowed(s[i..end].trim_end()), at });
            i = end;
        }
        if i >= b.len() {
            return Ok(out);
        }
        i += 1; // the comma
    }
}

/// The first fields of the first non-blank line, unquoted, for layout detection.
fn header(text: &str) -> Vec<String> {
    lines(CsvFile::Blocks(0), text)
        .next()
        .and_then(|l| split(&l).ok())
        .map(|f| f.into_iter().take(2).map(|f| f.text.trim().to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

/// Whether a file starts with the header of a GeoLite2 blocks file.
pub(super) fn is_geolite_blocks(text: &str) -> bool {
    header(text) == ["network", "geoname_id"]
}

/// A country code field: `None` when empty (the row is skipped), an error when it is not two letters.
fn code(line: &Line<'_>, f: &Field<'_>) -> Result<Option<String>, GeoError> {
    if f.text.trim().is_empty() {
        return Ok(None);
    }
    normalize_code(f.text.as_bytes())
        .map(Some)
        .ok_or_else(|| line.err(f.at, format!("`{}` is not a two-letter country code", f.text)))
}

fn addr(line: &Line<'_>, f: &Field<'_>, what: &str) -> Result<IpAddr, GeoError> {
    f.text.parse().map_err(|_| line.err(f.at, format!("{what} `{}` is not an IP address", f.text)))
}

/// DB-IP: `start,end,CC` per line (more columns are ignored). A first line whose first two fields
/// are words (letters and underscores, like `ip_start,ip_end`) is taken for a header.
pub(super) fn read_dbip(text: &str) -> Result<CountryDb, GeoError> {
    let mut b = Builder::default();
    for (n, line) in lines(CsvFile::Blocks(0), text).enumerate() {
        let f = split(&line)?;
        if n == 0 {
            let first = f[0].text.to_ascii_lowercase();
            if first == "geoname_id" {
                return Err(
                    line.err(0, "this is a GeoLite2 locations file; name the blocks file (…-Blocks-IPv4.csv) instead")
                );
            }
            // A header names its columns in words; an address always has digits, dots or colons.
            let wordy = |f: &Field<'_>| {
                let t = f.text.trim();
                !t.is_empty() && t.bytes().all(|c| c.is_ascii_alphabetic() || c == b'_' || c == b' ')
            };
            if f.len() >= 2 && wordy(&f[0]) && wordy(&f[1]) {
                continue;
            }
        }
        if f.len() < 3 {
            return Err(line.missing("3 fields (start,end,country)", f.len()));
        }
        let start = addr(&line, &f[0], "start")?;
        let end = addr(&line, &f[1], "end")?;
        let Some(cc) = code(&line, &f[2])? else { continue };
        let t = b.tag(&cc);
        match (start, end) {
            (IpAddr::V4(s), IpAddr::V4(e)) if s <= e => b.v4.push((s.into(), e.into(), t)),
            (IpAddr::V6(s), IpAddr::V6(e)) if s <= e => b.v6.push((s.into(), e.into(), t)),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                return Err(line.err(f[0].at, format!("start {start} is after end {end}")));
            }
            _ => return Err(line.err(f[1].at, format!("start {start} and end {end} are not the same address family"))),
        }
    }
    b.finish()
}

/// The index of each wanted column in a header line; `None` for optional columns that are absent.
fn columns(line: &Line<'_>, what: &str, want: &[(&str, bool)]) -> Result<Vec<Option<usize>>, GeoError> {
    let f = split(line)?;
    want.iter()
        .map(|&(name, required)| match f.iter().position(|c| c.text.trim().eq_ignore_ascii_case(name)) {
            Some(i) => Ok(Some(i)),
            None if required => Err(line.err(0, format!("the {what} header has no `{name}` column"))),
            None => Ok(None),
        })
        .collect()
}

/// A geoname id field: `None` when empty.
fn geoname(line: &Line<'_>, f: Option<&Field<'_>>) -> Result<Option<u32>, GeoError> {
    let Some(f) = f.filter(|f| !f.text.trim().is_empty()) else { return Ok(None) };
    f.text.trim().parse().map(Some).map_err(|_| line.err(f.at, format!("geoname id `{}` is not a number", f.text)))
}

/// GeoLite2: the locations file first (geoname id → country code, which is empty for the ids of
/// continents), then every blocks file. A network takes the country of its `geoname_id`, else of
/// its `registered_country_geoname_id`; with neither it is skipped. An id that is not in the
/// locations file is an error, because it means the two files do not belong together.
pub(super) fn read_geolite(blocks: &[&str], locations: &str) -> Result<CountryDb, GeoError> {
    let mut b = Builder::default();
    let mut places: HashMap<u32, Option<u32>> = HashMap::new();
    let mut loc_lines = lines(CsvFile::Locations, locations);
    let Some(head) = loc_lines.next() else {
        return Err(GeoError::Csv {
            file: CsvFile::Locations,
            line: 1,
            col: 1,
            msg: "the locations file is empty".into(),
        });
    };
    let cols = columns(&head, "locations", &[("geoname_id", true), ("country_iso_code", true)])?;
    let (id_col, cc_col) = (cols[0].unwrap_or(0), cols[1].unwrap_or(0));
    let want = id_col.max(cc_col) + 1;
    for line in loc_lines {
        let f = split(&line)?;
        if f.len() < want {
            return Err(line.missing(&format!("at least {want} fields"), f.len()));
        }
        let id = geoname(&line, Some(&f[id_col]))?.ok_or_else(|| line.err(f[id_col].at, "the geoname id is empty"))?;
        let cc = code(&line, &f[cc_col])?.map(|c| b.tag(&c));
        places.insert(id, cc);
    }

    for (k, text) in blocks.iter().enumerate() {
        let file = CsvFile::Blocks(k);
        let mut it = lines(file, text);
        let Some(head) = it.next() else { continue };
        let want = [("network", true), ("geoname_id", true), ("registered_country_geoname_id", false)];
        let cols = columns(&head, "blocks", &want)?;
        let (net_col, id_col, reg_col) = (cols[0].unwrap_or(0), cols[1].unwrap_or(0), cols[2]);
        let need = net_col.max(id_col) + 1;
        for line in it {
            let f = split(&line)?;
            // Concatenated files repeat the header; skip it wherever it appears.
            if f[0].text.trim().eq_ignore_ascii_case("network") {
                continue;
            }
            if f.len() < need {
                return Err(line.missing(&format!("at least {need} fields"), f.len()));
            }
            let nf = &f[net_col];
            let net: ipnet::IpNet = nf
                .text
                .trim()
                .parse()
                .map_err(|_| line.err(nf.at, format!("`{}` is not a network (address/prefix length)", nf.text)))?;
            let net = net.trunc();
            let id = geoname(&line, Some(&f[id_col]))?;
            let reg_field = reg_col.and_then(|c| f.get(c));
            let reg = geoname(&line, reg_field)?;
            let lookup = |id: Option<u32>, at: usize| -> Result<Option<u32>, GeoError> {
                match id {
                    None => Ok(None),
                    Some(id) => places
                        .get(&id)
                        .copied()
                        .ok_or_else(|| line.err(at, format!("geoname id {id} is not in the locations file"))),
                }
            };
            let tag = match lookup(id, f[id_col].at)? {
                Some(t) => Some(t),
                None => lookup(reg, reg_field.map_or(0, |f| f.at))?,
            };
            let Some(t) = tag else { continue };
            let (start, end) = crate::ranges::net_range(&net);
            match net {
                ipnet::IpNet::V4(_) => b.v4.push((start as u32, end as u32, t)),
                ipnet::IpNet::V6(_) => b.v6.push((start, end, t)),
            }
        }
    }
    b.finish()
}

/// The bytes of a CSV file as text, or an error with the line and column of the first byte that is
/// not UTF-8 (so that a binary file named by mistake gets a precise message).
pub fn csv_text(bytes: &[u8], file: CsvFile) -> Result<&str, GeoError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // `good` is valid UTF-8, so counting characters on it is safe.
        let col = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        GeoError::Csv {
            file,
            line,
            col,
            msg: "the file is not UTF-8 text (is it a binary database with a .csv name?)".into(),
        }
    })
}

/// The name of the GeoLite2 (or GeoIP2) locations file that belongs to a blocks file name, for
/// example `GeoLite2-Country-Blocks-IPv4.csv` → `GeoLite2-Country-Locations-en.csv`. The caller
/// looks for it in the same directory when the policy does not name one.
pub fn geolite_locations_name(blocks_file_name: &str) -> Option<String> {
    ["-Blocks-IPv4", "-Blocks-IPv6"]
        .iter()
        .find_map(|tag| blocks_file_name.find(tag).map(|i| (i, tag.len())))
        .map(|(i, n)| format!("{}-Locations-en{}", &blocks_file_name[..i], &blocks_file_name[i + n..]))
}

/// The other family's blocks file of a GeoLite2 blocks file name (`...-Blocks-IPv4.csv` ↔
/// `...-Blocks-IPv6.csv`), since MaxMind ships the two families in separate files.
pub fn geolite_sibling_blocks_name(blocks_file_name: &str) -> Option<String> {
    if let Some(i) = blocks_file_name.find("-Blocks-IPv4") {
        Some(format!("{}-Blocks-IPv6{}", &blocks_file_name[..i], &blocks_file_name[i + 12..]))
    } else {
        blocks_file_name
            .find("-Blocks-IPv6")
            .map(|i| format!("{}-Blocks-IPv4{}", &blocks_file_name[..i], &blocks_file_name[i + 12..]))
    }
}
