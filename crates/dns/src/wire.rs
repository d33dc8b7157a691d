//! DNS wire format primitives: bounds-checked readers for the header, names and resource records.
//!
//! The forwarder touches every packet, most of them on the cache-hit path where it only patches a
//! few bytes, so it reads the wire format itself instead of decoding whole messages. Everything
//! here takes untrusted bytes: every read is bounds-checked and returns `None` instead of
//! panicking, and compression pointers may only point backwards, so every walk terminates.

use std::ops::Range;

/// Size of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Longest name in wire form (RFC 1035 2.3.4), including the root label.
pub const MAX_NAME: usize = 255;

pub const QR: u16 = 0x8000;
pub const OPCODE_MASK: u16 = 0x7800;
pub const AA: u16 = 0x0400;
pub const TC: u16 = 0x0200;
pub const RD: u16 = 0x0100;
pub const RA: u16 = 0x0080;
pub const AD: u16 = 0x0020;
pub const CD: u16 = 0x0010;
pub const RCODE_MASK: u16 = 0x000f;

/// Record types the forwarder looks at.
pub mod rtype {
    pub const A: u16 = 1;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
}

/// Response codes the forwarder produces or reacts to.
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
}

/// Class IN.
pub const CLASS_IN: u16 = 1;

pub fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Writes `v` at `off` if it fits; offsets come from a walk over the same bytes, so a miss is a
/// bug, but it must not become a panic on a fuzzed input.
pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off.saturating_add(2)) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off.saturating_add(4)) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    pub fn parse(b: &[u8]) -> Option<Header> {
        Some(Header {
            id: u16_at(b, 0)?,
            flags: u16_at(b, 2)?,
            qdcount: u16_at(b, 4)?,
            ancount: u16_at(b, 6)?,
            nscount: u16_at(b, 8)?,
            arcount: u16_at(b, 10)?,
        })
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        for (i, v) in [self.id, self.flags, self.qdcount, self.ancount, self.nscount, self.arcount].into_iter().enumerate() {
            h[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
        }
        h
    }

    pub fn opcode(self) -> u8 {
        ((self.flags & OPCODE_MASK) >> 11) as u8
    }

    pub fn rcode(self) -> u8 {
        (self.flags & RCODE_MASK) as u8
    }

    /// Records after the question section.
    pub fn record_count(self) -> usize {
        usize::from(self.ancount) + usize::from(self.nscount) + usize::from(self.arcount)
    }
}

/// A domain name in uncompressed wire form, ASCII-lowercased: the form names are compared and
/// used as cache keys in. Fixed size so that reading one never allocates.
#[derive(Clone)]
pub struct Name {
    buf: [u8; MAX_NAME],
    len: u8,
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.wire() == other.wire()
    }
}
impl Eq for Name {}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Name({})", self.to_dotted())
    }
}

impl Name {
    /// The root name.
    pub fn root() -> Name {
        Name { buf: [0; MAX_NAME], len: 1 }
    }

    /// Wire form including the terminating root label.
    pub fn wire(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Encodes a dotted name (`api.example.test`, trailing dot optional), lowercased. `None` for
    /// empty labels, labels over 63 bytes or names over 255 bytes.
    pub fn from_dotted(s: &str) -> Option<Name> {
        let s = s.strip_suffix('.').unwrap_or(s);
        let mut n = Name { buf: [0; MAX_NAME], len: 0 };
        let mut pos = 0usize;
        if !s.is_empty() {
            for label in s.split('.') {
                let l = label.len();
                if l == 0 || l > 63 || pos + 1 + l + 1 > MAX_NAME {
                    return None;
                }
                n.buf[pos] = l as u8;
                for (d, c) in n.buf[pos + 1..pos + 1 + l].iter_mut().zip(label.bytes()) {
                    *d = c.to_ascii_lowercase();
                }
                pos += 1 + l;
            }
        }
        n.buf[pos] = 0;
        n.len = (pos + 1) as u8;
        Some(n)
    }

    /// Dotted form without the trailing dot (`""` for the root), for the policy's name matching
    /// and for logs. Bytes that are not letters, digits, `-`, `_` or `*` are escaped as `\DDD`,
    /// and so is a `.` inside a label: a label `b.example` must never read as two labels and
    /// match a rule for `*.example`.
    pub fn to_dotted(&self) -> String {
        let mut s = String::with_capacity(usize::from(self.len));
        let mut pos = 0usize;
        let w = self.wire();
        while pos < w.len() && w[pos] != 0 {
            let l = usize::from(w[pos]);
            if pos > 0 {
                s.push('.');
            }
            for &c in w.get(pos + 1..pos + 1 + l).unwrap_or(&[]) {
                if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'*' {
                    s.push(char::from(c));
                } else {
                    s.push_str(&format!("\\{c:03}"));
                }
            }
            pos += 1 + l;
        }
        s
    }
}

/// Reads the name at `off`, following compression pointers, into lowercased uncompressed form.
/// Returns the name and the offset just past it where it started (after the first pointer, if
/// any). `None` on truncation, reserved label types, names over 255 bytes and pointers that do
/// not point strictly before the start of the labels they continue (which rules out loops).
pub fn read_name(b: &[u8], off: usize) -> Option<(Name, usize)> {
    read_name_visit(b, off, |_| {})
}

/// [`read_name`], also reporting every byte range the name was read from (each run of labels
/// up to and including its terminating root label or pointer), so callers can check that a
/// name does not pass through bytes they will later patch.
pub fn read_name_visit(b: &[u8], off: usize, mut visit: impl FnMut(Range<usize>)) -> Option<(Name, usize)> {
    let mut n = Name { buf: [0; MAX_NAME], len: 0 };
    let mut out = 0usize;
    let mut pos = off;
    // Start of the current run of labels: a pointer must go strictly before it, so the runs
    // start at strictly decreasing offsets and the walk ends.
    let mut run_start = off;
    let mut end = None;
    loop {
        let l = *b.get(pos)?;
        match l & 0xc0 {
            0x00 => {
                if l == 0 {
                    if out + 1 > MAX_NAME {
                        return None;
                    }
                    n.buf[out] = 0;
                    n.len = (out + 1) as u8;
                    visit(run_start..pos + 1);
                    return Some((n, end.unwrap_or(pos + 1)));
                }
                let l = usize::from(l);
                // Room for the label and the root label that must still follow.
                if out + 1 + l + 1 > MAX_NAME {
                    return None;
                }
                let label = b.get(pos + 1..pos + 1 + l)?;
                n.buf[out] = l as u8;
                for (d, c) in n.buf[out + 1..out + 1 + l].iter_mut().zip(label) {
                    *d = c.to_ascii_lowercase();
                }
                out += 1 + l;
                pos += 1 + l;
            }
            0xc0 => {
                let target = usize::from(u16_at(b, pos)? & 0x3fff);
                if target >= run_start {
                    return None;
                }
                visit(run_start..pos + 2);
                end.get_or_insert(pos + 2);
                pos = target;
                run_start = target;
            }
            _ => return None,
        }
    }
}

/// The offset just past the name at `off`, without decoding it (a pointer ends the name).
pub fn skip_name(b: &[u8], off: usize) -> Option<usize> {
    let mut pos = off;
    loop {
        let l = *b.get(pos)?;
        match l & 0xc0 {
            0x00 if l == 0 => return Some(pos + 1),
            0x00 => {
                pos += 1 + usize::from(l);
                if pos - off > MAX_NAME {
                    return None;
                }
            }
            0xc0 => {
                b.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

/// Which section a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Answer,
    Authority,
    Additional,
}

/// One resource record, as offsets into the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub section: Section,
    /// Offset of the owner name.
    pub start: usize,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    /// Offset of the 4 TTL bytes.
    pub ttl_off: usize,
    pub rdata: Range<usize>,
}

impl Rr {
    /// Offset just past the record.
    pub fn end(&self) -> usize {
        self.rdata.end
    }
}

/// Reads the record at `off`.
pub fn read_rr(b: &[u8], off: usize, section: Section) -> Option<Rr> {
    let p = skip_name(b, off)?;
    let rtype = u16_at(b, p)?;
    let class = u16_at(b, p + 2)?;
    let ttl = u32_at(b, p + 4)?;
    let rdlen = usize::from(u16_at(b, p + 8)?);
    let rdata = p + 10..p + 10 + rdlen;
    if rdata.end > b.len() {
        return None;
    }
    Some(Rr { section, start: off, rtype, class, ttl, ttl_off: p + 4, rdata })
}

/// The single question: its name, type, class and the offset just past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
    pub end: usize,
}

pub fn read_question(b: &[u8], off: usize) -> Option<Question> {
    let (name, p) = read_name(b, off)?;
    Some(Question { name, qtype: u16_at(b, p)?, qclass: u16_at(b, p + 2)?, end: p + 4 })
}

/// Walks all records after the question section (answer, authority, additional, in order).
/// `None` if any record is truncated or malformed.
pub fn read_records(b: &[u8], h: &Header, mut off: usize) -> Option<Vec<Rr>> {
    // Every record needs at least 11 bytes, so a count the packet cannot hold is rejected before
    // allocating for it.
    if h.record_count().checked_mul(11)? > b.len().saturating_sub(off) {
        return None;
    }
    let mut out = Vec::with_capacity(h.record_count());
    for (section, count) in [(Section::Answer, h.ancount), (Section::Authority, h.nscount), (Section::Additional, h.arcount)] {
        for _ in 0..count {
            let rr = read_rr(b, off, section)?;
            off = rr.end();
            out.push(rr);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_lowercase() {
        let n = Name::from_dotted("Api.Example.TEST.").unwrap();
        assert_eq!(n.wire(), b"\x03api\x07example\x04test\x00");
        assert_eq!(n.to_dotted(), "api.example.test");
        assert_eq!(Name::from_dotted("").unwrap().wire(), b"\x00");
        assert!(Name::from_dotted("a..b").is_none());
        assert!(Name::from_dotted(&"a".repeat(64)).is_none());
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(Name::from_dotted(&long).is_none(), "26*10 bytes is over 255");
    }

    #[test]
    fn dotted_form_escapes_dots_inside_labels() {
        let mut b = Vec::new();
        b.extend_from_slice(b"\x09b.example\x03com\x00");
        let (n, end) = read_name(&b, 0).unwrap();
        assert_eq!(end, b.len());
        assert_eq!(n.to_dotted(), "b\\046example.com");
    }

    #[test]
    fn compression_pointers_backwards_only() {
        // "example.test" at 0, "api" + pointer to 0 at 14.
        let mut b = b"\x07example\x04test\x00".to_vec();
        b.extend_from_slice(b"\x03API\xc0\x00");
        let (n, end) = read_name(&b, 14).unwrap();
        assert_eq!(n.to_dotted(), "api.example.test");
        assert_eq!(end, b.len());
        assert_eq!(skip_name(&b, 14), Some(b.len()));
        // A pointer to itself, and a pair of pointers pointing at each other, are rejected.
        assert!(read_name(b"\xc0\x00", 0).is_none());
        let looped = b"\x01a\xc0\x04\x01b\xc0\x00";
        assert!(read_name(looped, 4).is_none());
        // Reserved label types.
        assert!(read_name(b"\x40", 0).is_none());
        assert!(read_name(b"\x80\x00", 0).is_none());
        // Truncated.
        assert!(read_name(b"\x03ab", 0).is_none());
        assert!(skip_name(b"\x03ab", 0).is_none());
        assert!(skip_name(b"\xc0", 0).is_none());
    }

    #[test]
    fn names_longer_than_255_bytes_are_rejected_even_through_pointers() {
        // 4 labels of 63 at 0 (256 bytes with root) are too long.
        let mut b = Vec::new();
        for _ in 0..4 {
            b.push(63);
            b.extend_from_slice(&[b'a'; 63]);
        }
        b.push(0);
        assert!(read_name(&b, 0).is_none());
    }

    #[test]
    fn records_and_counts() {
        let mut b = Header { id: 1, flags: QR, qdcount: 0, ancount: 1, nscount: 0, arcount: 0 }.to_bytes().to_vec();
        b.extend_from_slice(b"\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01");
        let h = Header::parse(&b).unwrap();
        let rrs = read_records(&b, &h, HEADER_LEN).unwrap();
        assert_eq!(rrs.len(), 1);
        assert_eq!(rrs[0].ttl, 60);
        assert_eq!(rrs[0].rdata, 23..27);
        // A count the packet cannot hold.
        let mut h2 = h;
        h2.ancount = 65535;
        assert!(read_records(&b, &h2, HEADER_LEN).is_none());
        // Truncated rdata.
        assert!(read_records(&b[..b.len() - 1], &h, HEADER_LEN).is_none());
    }
}
