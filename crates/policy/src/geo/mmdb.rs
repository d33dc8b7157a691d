//! A reader for the MaxMind DB format (<https://maxmind.github.io/MaxMind-DB/>), limited to what a
//! country database needs: the metadata, a walk over every network of the search tree, and the
//! `country.iso_code` (or `registered_country.iso_code`) of each network's record.
//!
//! The file is untrusted input, so every read is bounds-checked, pointers are followed one level
//! only (the format forbids a pointer to a pointer), nesting is limited, and both the tree walk and
//! the data decoder run on a budget proportional to the file size. A hostile file therefore gets an
//! error in bounded time instead of a panic, a stack overflow or an endless loop.

use super::db::{Builder, CountryDb, GeoError, normalize_code};
use std::collections::HashMap;

/// Every MaxMind DB ends with this marker followed by the metadata map.
pub(super) const MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
/// The spec puts the metadata within the last 128 KiB of the file.
const METADATA_WINDOW: usize = 128 * 1024;
/// Bytes of zeros between the search tree and the data section.
const SEPARATOR: usize = 16;
/// Maps and arrays nest this deep at most; real records nest three or four levels.
const MAX_DEPTH: u32 = 32;

// Data section types (the control byte's top three bits, or 7 + the extended type byte).
const T_POINTER: u8 = 1;
const T_STRING: u8 = 2;
const T_DOUBLE: u8 = 3;
const T_BYTES: u8 = 4;
const T_U16: u8 = 5;
const T_U32: u8 = 6;
const T_MAP: u8 = 7;
const T_I32: u8 = 8;
const T_U64: u8 = 9;
const T_U128: u8 = 10;
const T_ARRAY: u8 = 11;
const T_BOOL: u8 = 14;
const T_FLOAT: u8 = 15;

/// Where the metadata marker starts: its last occurrence in the last 128 KiB, since a data section
/// may legitimately contain the same bytes earlier.
pub(super) fn find_metadata(bytes: &[u8]) -> Option<usize> {
    let from = bytes.len().saturating_sub(METADATA_WINDOW);
    bytes[from..].windows(MARKER.len()).rposition(|w| w == MARKER).map(|i| from + i)
}

/// The metadata fields the reader needs.
#[derive(Debug, Clone, Copy)]
struct Meta {
    node_count: u32,
    record_size: u16,
    ip_version: u16,
}

pub(super) fn read(bytes: &[u8]) -> Result<CountryDb, GeoError> {
    let marker = find_metadata(bytes).ok_or(GeoError::NoMetadata)?;
    let meta = read_metadata(&bytes[marker + MARKER.len()..])?;
    let node_bytes = usize::from(meta.record_size) / 4;
    let tree_len = (meta.node_count as usize)
        .checked_mul(node_bytes)
        .filter(|&n| n.saturating_add(SEPARATOR) <= marker)
        .ok_or_else(|| {
            GeoError::Metadata(format!(
                "node_count {} with {}-bit records needs a search tree larger than the file",
                meta.node_count, meta.record_size
            ))
        })?;
    let tree = &bytes[..tree_len];
    let data = &bytes[tree_len + SEPARATOR..marker];
    walk(tree, data, meta)
}

/// Decodes the metadata map that follows the marker. Pointers in it are relative to its start.
fn read_metadata(md: &[u8]) -> Result<Meta, GeoError> {
    let err = |e: DecodeError| GeoError::Metadata(format!("offset {}: {}", e.offset, e.msg));
    let mut d = Decoder::new(md);
    let h = d.follow(0).map_err(err)?;
    if h.ty != T_MAP {
        return Err(GeoError::Metadata("the metadata is not a map".into()));
    }
    let (mut nodes, mut record_size, mut ip_version, mut major) = (None, None, None, None);
    let mut p = h.body;
    for _ in 0..h.size {
        let key = d.string(p).map_err(err)?;
        let v = d.skip(p, 0).map_err(err)?;
        match key {
            b"node_count" => nodes = Some(d.uint(v).map_err(err)?),
            b"record_size" => record_size = Some(d.uint(v).map_err(err)?),
            b"ip_version" => ip_version = Some(d.uint(v).map_err(err)?),
            b"binary_format_major_version" => major = Some(d.uint(v).map_err(err)?),
            _ => {}
        }
        p = d.skip(v, 0).map_err(err)?;
    }
    let missing = |f: &str| GeoError::Metadata(format!("the `{f}` field is missing"));
    if let Some(m) = major.filter(|&m| m != 2) {
        return Err(GeoError::Metadata(format!("binary format version {m} is not supported (only 2)")));
    }
    let node_count = nodes.ok_or_else(|| missing("node_count"))?;
    let record_size = record_size.ok_or_else(|| missing("record_size"))?;
    let ip_version = ip_version.ok_or_else(|| missing("ip_version"))?;
    if ![24, 28, 32].contains(&record_size) {
        return Err(GeoError::Metadata(format!("record size {record_size} is not supported (24, 28 or 32)")));
    }
    if ![4, 6].contains(&ip_version) {
        return Err(GeoError::Metadata(format!("ip_version {ip_version} is neither 4 nor 6")));
    }
    let node_count = u32::try_from(node_count)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| GeoError::Metadata(format!("node_count {node_count} is out of range")))?;
    Ok(Meta { node_count, record_size: record_size as u16, ip_version: ip_version as u16 })
}

/// Record `side` (0 left, 1 right) of node `node`. The caller guarantees the node lies in `tree`.
fn record(tree: &[u8], record_size: u16, node: u32, side: usize) -> u32 {
    let be = |b: &[u8]| b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x));
    let n = node as usize * (usize::from(record_size) / 4);
    match record_size {
        24 => be(&tree[n + 3 * side..n + 3 * side + 3]),
        28 => {
            // Three bytes of the left record, a middle byte whose high nibble tops the left record
            // and whose low nibble tops the right one, then three bytes of the right record.
            let mid = u32::from(tree[n + 3]);
            if side == 0 {
                ((mid & 0xf0) << 20) | be(&tree[n..n + 3])
            } else {
                ((mid & 0x0f) << 24) | be(&tree[n + 4..n + 7])
            }
        }
        _ => be(&tree[n + 4 * side..n + 4 * side + 4]),
    }
}

/// Walks the whole search tree depth-first and collects every network with a country.
fn walk(tree: &[u8], data: &[u8], meta: Meta) -> Result<CountryDb, GeoError> {
    let Meta { node_count, record_size, ip_version } = meta;
    let bits: u32 = if ip_version == 4 { 32 } else { 128 };
    // In an IPv6 tree, IPv4 lives under ::/96, and MaxMind's writers point ::ffff:0:0/96 and
    // 2002::/16 at that same node. Walking those aliases would report every IPv4 network three more
    // times as garbage IPv6 ranges, so a record that reaches this node by another path is skipped.
    let ipv4_root = if bits == 128 {
        let mut n = 0u32;
        let mut ok = true;
        for _ in 0..96 {
            let r = record(tree, record_size, n, 0);
            if r >= node_count {
                ok = false;
                break;
            }
            n = r;
        }
        ok.then_some(n)
    } else {
        None
    };

    let mut b = Builder::default();
    let mut decoder = Decoder::new(data);
    let mut cache: HashMap<u32, Option<u32>> = HashMap::new();
    // A valid tree reaches each node once; the budget allows some sharing but stops a tree whose
    // records point back up (cycles), which would otherwise explode into 2^128 paths.
    let mut budget = u64::from(node_count) * 4 + 1024;
    // (node, address bits so far, left-aligned in a u128, depth of the node)
    let mut stack: Vec<(u32, u128, u32)> = vec![(0, 0, 0)];
    while let Some((node, prefix, depth)) = stack.pop() {
        if budget == 0 {
            return Err(GeoError::Tree(
                "the tree has cycles or shared subtrees (more nodes visited than it holds)".into(),
            ));
        }
        budget -= 1;
        // Right first, so that the lower half is popped first and ranges come out in address
        // order, which makes the final sort cheap.
        for side in [1usize, 0] {
            let rec = record(tree, record_size, node, side);
            let child = prefix | ((side as u128) << (127 - depth));
            let cdepth = depth + 1;
            if rec < node_count {
                if Some(rec) == ipv4_root && !(cdepth == 96 && child == 0) {
                    continue;
                }
                if cdepth >= bits {
                    return Err(GeoError::Tree(format!("a path is longer than the {bits} bits of an address")));
                }
                stack.push((rec, child, cdepth));
            } else if rec > node_count {
                let off = (rec - node_count) as usize;
                let off = off.checked_sub(SEPARATOR).filter(|&o| o < data.len()).ok_or_else(|| {
                    GeoError::Tree(format!("record {rec} points outside the data section ({} bytes)", data.len()))
                })?;
                let tag = match cache.get(&rec) {
                    Some(&t) => t,
                    None => {
                        let t = decoder
                            .country(off)
                            .map_err(|e| GeoError::Data { offset: e.offset, msg: e.msg })?
                            .and_then(normalize_code)
                            .map(|c| b.tag(&c));
                        cache.insert(rec, t);
                        t
                    }
                };
                if let Some(t) = tag {
                    add_network(&mut b, bits, child, cdepth, t);
                }
            }
            // rec == node_count: no data for this network.
        }
    }
    b.finish()
}

/// Adds the network `prefix/depth` (left-aligned bits of a `bits`-wide address).
fn add_network(b: &mut Builder, bits: u32, prefix: u128, depth: u32, tag: u32) {
    let host = if depth >= 128 { 0 } else { u128::MAX >> depth };
    let (start, end) = (prefix, prefix | host);
    if bits == 32 {
        b.v4.push(((start >> 96) as u32, (end >> 96) as u32, tag));
        return;
    }
    if start >> 32 != 0 {
        b.v6.push((start, end, tag));
        return;
    }
    // The network lies in or covers ::/96, where an IPv6 tree keeps IPv4: that part is IPv4.
    b.v4.push((start as u32, end.min(u128::from(u32::MAX)) as u32, tag));
    if end > u128::from(u32::MAX) {
        b.v6.push((1 << 32, end, tag));
    }
}

/// A data type's name, for error messages.
fn type_name(ty: u8) -> &'static str {
    match ty {
        T_POINTER => "a pointer",
        T_STRING => "a string",
        T_DOUBLE => "a double",
        T_BYTES => "a byte string",
        T_U16 => "a uint16",
        T_U32 => "a uint32",
        T_MAP => "a map",
        T_I32 => "an int32",
        T_U64 => "a uint64",
        T_U128 => "a uint128",
        T_ARRAY => "an array",
        12 => "a data cache container",
        13 => "an end marker",
        T_BOOL => "a boolean",
        T_FLOAT => "a float",
        _ => "an unknown type",
    }
}

/// A decoding error at an offset of the section being decoded.
#[derive(Debug)]
struct DecodeError {
    offset: usize,
    msg: String,
}

/// A decoded control byte: the type, the size (for a pointer: the target) and where the payload
/// (for a pointer: the next value) starts.
#[derive(Debug, Clone, Copy)]
struct Head {
    ty: u8,
    size: usize,
    body: usize,
}

/// Decodes values of one section (data or metadata).
struct Decoder<'a> {
    buf: &'a [u8],
    /// Control bytes left to decode; a multiple of the section size, so that honest files never
    /// reach it while a file crafted to make the decoder rescan the same bytes stops.
    budget: u64,
}

impl<'a> Decoder<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, budget: (buf.len() as u64).saturating_mul(16).saturating_add(1 << 20) }
    }

    fn err<T>(offset: usize, msg: impl Into<String>) -> Result<T, DecodeError> {
        Err(DecodeError { offset, msg: msg.into() })
    }

    fn bytes(&self, pos: usize, n: usize) -> Result<&'a [u8], DecodeError> {
        match pos.checked_add(n).and_then(|end| self.buf.get(pos..end)) {
            Some(b) => Ok(b),
            None => Self::err(pos, format!("{n} bytes needed, the section ends at {}", self.buf.len())),
        }
    }

    fn be(b: &[u8]) -> usize {
        b.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x))
    }

    /// Reads the control byte (and extended type and size bytes) at `pos`.
    fn head(&mut self, pos: usize) -> Result<Head, DecodeError> {
        if self.budget == 0 {
            return Self::err(pos, "too much to decode (the data points back into itself over and over)");
        }
        self.budget -= 1;
        let c = self.bytes(pos, 1)?[0];
        let mut p = pos + 1;
        let mut ty = c >> 5;
        if ty == T_POINTER {
            // Size bits SS choose 1 to 4 more bytes; the low three bits VVV prefix the value
            // (except with four bytes), and each size adds the range the smaller ones cover.
            let ss = usize::from((c >> 3) & 3);
            let vvv = usize::from(c & 7);
            let b = Self::be(self.bytes(p, ss + 1)?);
            p += ss + 1;
            let target = match ss {
                0 => (vvv << 8) | b,
                1 => ((vvv << 16) | b) + 2048,
                2 => ((vvv << 24) | b) + 526_336,
                _ => b,
            };
            return Ok(Head { ty: T_POINTER, size: target, body: p });
        }
        if ty == 0 {
            let ext = self.bytes(p, 1)?[0];
            p += 1;
            if !(1..=8).contains(&ext) {
                return Self::err(pos, format!("unknown extended type {}", 7 + u16::from(ext)));
            }
            ty = 7 + ext;
        }
        let (size, extra) = match c & 0x1f {
            s @ 0..=28 => (usize::from(s), 0),
            29 => (29 + Self::be(self.bytes(p, 1)?), 1),
            30 => (285 + Self::be(self.bytes(p, 2)?), 2),
            _ => (65_821 + Self::be(self.bytes(p, 3)?), 3),
        };
        p += extra;
        Ok(Head { ty, size, body: p })
    }

    /// The value at `pos`, through one pointer if it is one.
    fn follow(&mut self, pos: usize) -> Result<Head, DecodeError> {
        let h = self.head(pos)?;
        if h.ty != T_POINTER {
            return Ok(h);
        }
        let t = self.head(h.size)?;
        if t.ty == T_POINTER {
            return Self::err(h.size, "a pointer points to another pointer");
        }
        Ok(t)
    }

    /// The position after the value at `pos` (a pointer counts as its own bytes, not its target).
    fn skip(&mut self, pos: usize, depth: u32) -> Result<usize, DecodeError> {
        let h = self.head(pos)?;
        let fixed = |want: &[usize]| {
            if want.contains(&h.size) {
                Ok(())
            } else {
                Self::err(pos, format!("{} of {} bytes", type_name(h.ty), h.size))
            }
        };
        match h.ty {
            T_POINTER => return Ok(h.body),
            T_MAP | T_ARRAY => {
                if depth >= MAX_DEPTH {
                    return Self::err(pos, format!("maps and arrays nest deeper than {MAX_DEPTH} levels"));
                }
                let per = if h.ty == T_MAP { 2 } else { 1 };
                let mut p = h.body;
                // Every value takes at least one byte and `head` fails at the end of the section,
                // so even a huge declared size ends quickly.
                for _ in 0..h.size {
                    for _ in 0..per {
                        p = self.skip(p, depth + 1)?;
                    }
                }
                return Ok(p);
            }
            // A boolean's size is its value; it has no payload.
            T_BOOL => return fixed(&[0, 1]).map(|()| h.body),
            T_STRING | T_BYTES => {}
            T_DOUBLE => fixed(&[8])?,
            T_FLOAT => fixed(&[4])?,
            T_U16 => fixed(&[0, 1, 2])?,
            T_U32 | T_I32 => fixed(&[0, 1, 2, 3, 4])?,
            T_U64 => fixed(&[0, 1, 2, 3, 4, 5, 6, 7, 8])?,
            T_U128 => {
                if h.size > 16 {
                    return Self::err(pos, format!("{} of {} bytes", type_name(h.ty), h.size));
                }
            }
            _ => return Self::err(pos, format!("{} has no place in a record", type_name(h.ty))),
        }
        self.bytes(h.body, h.size).map(|_| h.body + h.size)
    }

    /// The bytes of the string at `pos` (through a pointer).
    fn string(&mut self, pos: usize) -> Result<&'a [u8], DecodeError> {
        let h = self.follow(pos)?;
        if h.ty != T_STRING {
            return Self::err(pos, format!("expected a string, found {}", type_name(h.ty)));
        }
        self.bytes(h.body, h.size)
    }

    /// The unsigned integer at `pos` (through a pointer).
    fn uint(&mut self, pos: usize) -> Result<u128, DecodeError> {
        let h = self.follow(pos)?;
        if !matches!(h.ty, T_U16 | T_U32 | T_U64 | T_U128) || h.size > 16 {
            return Self::err(
                pos,
                format!("expected an unsigned integer, found {} of {} bytes", type_name(h.ty), h.size),
            );
        }
        Ok(self.bytes(h.body, h.size)?.iter().fold(0u128, |acc, &x| (acc << 8) | u128::from(x)))
    }

    /// `country.iso_code`, else `registered_country.iso_code`, of the record at `pos`. A record that
    /// is not a map, or lacks both, has no country.
    fn country(&mut self, pos: usize) -> Result<Option<&'a [u8]>, DecodeError> {
        let h = self.follow(pos)?;
        if h.ty != T_MAP {
            return Ok(None);
        }
        let (mut country, mut registered) = (None, None);
        let mut p = h.body;
        for _ in 0..h.size {
            let key = self.string(p)?;
            let v = self.skip(p, 0)?;
            match key {
                b"country" => country = self.iso_code(v)?,
                b"registered_country" => registered = self.iso_code(v)?,
                _ => {}
            }
            p = self.skip(v, 0)?;
        }
        // A code that is not two letters counts as missing, so the fallback still applies.
        Ok(country.filter(|c| normalize_code(c).is_some()).or(registered))
    }

    /// The `iso_code` string of the map at `pos`, if it is a map and has one.
    fn iso_code(&mut self, pos: usize) -> Result<Option<&'a [u8]>, DecodeError> {
        let h = self.follow(pos)?;
        if h.ty != T_MAP {
            return Ok(None);
        }
        let mut code = None;
        let mut p = h.body;
        for _ in 0..h.size {
            let key = self.string(p)?;
            let v = self.skip(p, 0)?;
            if key == b"iso_code" && self.follow(v)?.ty == T_STRING {
                code = Some(self.string(v)?);
            }
            p = self.skip(v, 0)?;
        }
        Ok(code)
    }
}
