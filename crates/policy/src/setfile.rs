//! Address list files (`[[set]] file = ...`): one address, network or range a line, merged.
//!
//! The format is what threat feeds publish: `192.0.2.7`, `198.51.100.0/24`, `2001:db8::/32`,
//! `192.0.2.10-192.0.2.20`, with `#` or `;` starting a comment (Spamhaus DROP writes
//! `198.51.100.0/24 ; SBL123`). A network written with host bits set (`192.0.2.5/24`) means its
//! network, as `ip route` reads it. Overlapping and adjacent entries are merged, because an
//! nftables interval set refuses overlaps and fewer ranges load faster.

use crate::ranges::AddrRanges;
use std::net::IpAddr;

/// At most this many errors are reported for one file; a file with more is surely not a list.
pub const MAX_ERRORS: usize = 20;

/// A parsed list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetFile {
    pub ranges: AddrRanges,
    /// Lines that held an entry.
    pub entries: usize,
}

/// A line that is not an address, network or range; `line` and `col` are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetFileError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parses a list. Every bad line is an error (up to [`MAX_ERRORS`]): a feed that half parses
/// must not load half its addresses.
pub fn parse_set_file(text: &str) -> Result<SetFile, Vec<SetFileError>> {
    parse_set_file_bytes(text.as_bytes())
}

/// Parses a list as read from disk. A line that is not UTF-8 is an error at its first bad byte
/// (a feed is ASCII; a binary file named by mistake gets a position, not half a load).
pub fn parse_set_file_bytes(bytes: &[u8]) -> Result<SetFile, Vec<SetFileError>> {
    let mut v4: Vec<(u32, u32)> = Vec::new();
    let mut v6: Vec<(u128, u128)> = Vec::new();
    let mut errors = Vec::new();
    let mut entries = 0;
    // Lines as `str::lines` splits them: at `\n`, without a trailing `\r`, no empty last line.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let lines = (!bytes.is_empty()).then(|| body.split(|&b| b == b'\n')).into_iter().flatten();
    for (i, raw) in lines.enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = match crate::diag::line_utf8(raw) {
            Ok(r) => r,
            Err((col, byte)) => {
                let message = format!("invalid UTF-8 (byte 0x{byte:02x}): a set file is text");
                errors.push(SetFileError { line: i + 1, col, message });
                if errors.len() >= MAX_ERRORS {
                    break;
                }
                continue;
            }
        };
        let content = match raw.find(['#', ';']) {
            Some(c) => &raw[..c],
            None => raw,
        };
        let entry = content.trim();
        if entry.is_empty() {
            continue;
        }
        // In characters, as every diagnostic counts columns (leading whitespace may be U+3000).
        let col = content[..content.len() - content.trim_start().len()].chars().count() + 1;
        match parse_entry(entry) {
            Ok(Range::V4(a, b)) => v4.push((a, b)),
            Ok(Range::V6(a, b)) => v6.push((a, b)),
            Err(message) => {
                errors.push(SetFileError { line: i + 1, col, message });
                if errors.len() >= MAX_ERRORS {
                    break;
                }
            }
        }
        entries += 1;
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SetFile { ranges: AddrRanges::from_ranges(v4, v6), entries })
}

enum Range {
    V4(u32, u32),
    V6(u128, u128),
}

fn parse_entry(s: &str) -> Result<Range, String> {
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (addr(a.trim())?, addr(b.trim())?);
        return match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => Ok(Range::V4(a.into(), b.into())),
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => Ok(Range::V6(a.into(), b.into())),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Err(format!("range `{s}` ends before it starts"))
            }
            _ => Err(format!("range `{s}` mixes IPv4 and IPv6")),
        };
    }
    if let Some((a, len)) = s.split_once('/') {
        let a = addr(a)?;
        let len: u8 = len.parse().map_err(|_| format!("bad prefix length `{len}` in `{s}`"))?;
        return match a {
            IpAddr::V4(a) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let net = u32::from(a) & mask;
                Ok(Range::V4(net, net | !mask))
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                let net = u128::from(a) & mask;
                Ok(Range::V6(net, net | !mask))
            }
            _ => Err(format!("prefix length {len} is too long in `{s}`")),
        };
    }
    Ok(match addr(s)? {
        IpAddr::V4(a) => Range::V4(a.into(), a.into()),
        IpAddr::V6(a) => Range::V6(a.into(), a.into()),
    })
}

fn addr(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("`{s}` is not an IP address, network (CIDR) or range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_feeds() {
        let text = "# a feed\n192.0.2.7\n198.51.100.0/25 ; SBL1\n198.51.100.128/25\n\n  2001:db8::/32 # doc\r\n192.0.2.10-192.0.2.20\n192.0.2.5/31\n203.0.113.9/24\n";
        let f = parse_set_file(text).unwrap();
        assert_eq!(f.entries, 7);
        // 192.0.2.4-5 and .7 are separate, .10-.20 another, the /25s merge, the /24 from .9.
        assert_eq!(f.ranges.v4.len(), 5, "{:?}", f.ranges.v4);
        assert_eq!(f.ranges.v6.len(), 1);
        for (a, want) in [("192.0.2.7", true), ("192.0.2.6", false), ("198.51.100.200", true), ("203.0.113.0", true), ("192.0.2.15", true)] {
            assert_eq!(f.ranges.contains(a.parse().unwrap()), want, "{a}");
        }
    }

    #[test]
    fn reports_positions() {
        let e = parse_set_file("192.0.2.1\n  nope\n192.0.2.9-192.0.2.1\n10.0.0.0/33\n2001:db8::1-192.0.2.1\n").unwrap_err();
        let at: Vec<(usize, usize)> = e.iter().map(|e| (e.line, e.col)).collect();
        assert_eq!(at, vec![(2, 3), (3, 1), (4, 1), (5, 1)]);
        assert!(e[0].message.contains("not an IP address"), "{}", e[0].message);
        assert!(e[1].message.contains("ends before"), "{}", e[1].message);
        assert!(e[3].message.contains("mixes"), "{}", e[3].message);
    }

    #[test]
    fn invalid_utf8_is_an_error_at_its_line_and_column() {
        let e = parse_set_file_bytes(b"192.0.2.1\r\n  \xc3\xa9t\xff\n192.0.2.2\n# caf\xe9\nnope\n").unwrap_err();
        let at: Vec<(usize, usize)> = e.iter().map(|e| (e.line, e.col)).collect();
        // Line 2: two spaces, one two-byte character and `t` before the bad byte: column 5.
        assert_eq!(at, vec![(2, 5), (4, 6), (5, 1)], "{e:?}");
        assert!(e[0].message.contains("invalid UTF-8 (byte 0xff)"), "{}", e[0].message);
        assert!(e[1].message.contains("0xe9"), "{}", e[1].message);
        // Text and bytes parse alike.
        let text = "192.0.2.1\r\n\n198.51.100.0/24 ; x\n2001:db8::/32";
        assert_eq!(parse_set_file(text), parse_set_file_bytes(text.as_bytes()));
        assert_eq!(parse_set_file_bytes(b"").unwrap().entries, 0);
    }

    #[test]
    fn stops_after_max_errors() {
        let text = "x\n".repeat(1000);
        assert_eq!(parse_set_file(&text).unwrap_err().len(), MAX_ERRORS);
    }
}
