//! DNS message logic without sockets: validating client queries, building upstream queries,
//! matching responses to queries, walking the CNAME chain, capping TTLs, and the answers the
//! forwarder writes itself (SERVFAIL, NXDOMAIN, truncated).
//!
//! Stored answers are kept in wire form together with the offsets of their TTLs, so that a cache
//! hit is a copy plus a few patched bytes instead of a decode and an encode.

use crate::wire::{self, CLASS_IN, HEADER_LEN, Header, Name, Rr, Section, rcode, rtype};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The EDNS UDP payload size the forwarder advertises upstream and to clients: the DNS flag day
/// 2020 value, which avoids IP fragmentation on every common path.
pub const EDNS_UDP_SIZE: u16 = 1232;
/// The largest UDP answer sent to a client that advertised a bigger buffer.
pub const MAX_CLIENT_UDP: usize = 4096;
/// Opcode QUERY.
const OPCODE_QUERY: u8 = 0;

/// Why a client packet is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than a DNS header")]
    Short,
    #[error("QR set: a response, not a query")]
    Response,
    #[error("opcode is not QUERY")]
    Opcode,
    #[error("not exactly one question")]
    QuestionCount,
    #[error("answer or authority records in a query")]
    Records,
    #[error("bad question name")]
    Name,
    #[error("bad additional records")]
    Additional,
}

/// Why an upstream response is not accepted as the answer to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("unparsable header")]
    Header,
    #[error("not a response to a standard query")]
    NotResponse,
    #[error("question differs from the query")]
    Question,
    #[error("unparsable records")]
    Records,
}

/// EDNS as a client asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientEdns {
    pub udp_size: u16,
    pub dnssec_ok: bool,
}

/// A validated client query. Borrows the packet: the question name is echoed back as the client
/// wrote it (clients that randomise the case of names check it).
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub raw: &'a [u8],
    pub id: u16,
    pub flags: u16,
    /// Lowercased question name.
    pub qname: Name,
    pub qtype: u16,
    pub qclass: u16,
    /// Offset just past the question.
    pub question_end: usize,
    pub edns: Option<ClientEdns>,
}

/// The question a query asked, kept with an outstanding upstream query to check responses
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

/// Cache key: lowercased name, type, class and the two bits that change what upstream answers
/// (DNSSEC OK, checking disabled). Fixed size, so that a lookup never allocates.
#[derive(Clone)]
pub struct Key {
    buf: [u8; wire::MAX_NAME + 5],
    len: usize,
}

impl Key {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", self.as_bytes())
    }
}

impl Query<'_> {
    pub fn rd(&self) -> bool {
        self.flags & wire::RD != 0
    }

    pub fn cd(&self) -> bool {
        self.flags & wire::CD != 0
    }

    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }

    /// The question as the client wrote it (name, type, class).
    pub fn question_bytes(&self) -> &[u8] {
        &self.raw[HEADER_LEN..self.question_end]
    }

    /// The largest UDP answer this client accepts.
    pub fn max_udp(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.udp_size).clamp(512, MAX_CLIENT_UDP),
            None => 512,
        }
    }

    pub fn asked(&self) -> Asked {
        Asked { name: self.qname.clone(), qtype: self.qtype, qclass: self.qclass }
    }

    pub fn key(&self) -> Key {
        let mut k = Key { buf: [0; wire::MAX_NAME + 5], len: 0 };
        let n = self.qname.wire();
        k.buf[..n.len()].copy_from_slice(n);
        let mut p = n.len();
        k.buf[p..p + 2].copy_from_slice(&self.qtype.to_be_bytes());
        k.buf[p + 2..p + 4].copy_from_slice(&self.qclass.to_be_bytes());
        k.buf[p + 4] = u8::from(self.dnssec_ok()) | (u8::from(self.cd()) << 1);
        p += 5;
        k.len = p;
        k
    }
}

/// Validates a client packet: a header, QR clear, opcode QUERY, exactly one question whose name
/// is uncompressed, no answer or authority records, and additional records that parse (at most
/// one OPT, owned by the root).
pub fn parse_query(b: &[u8]) -> Result<Query<'_>, Malformed> {
    let h = Header::parse(b).ok_or(Malformed::Short)?;
    if h.flags & wire::QR != 0 {
        return Err(Malformed::Response);
    }
    if h.opcode() != OPCODE_QUERY {
        return Err(Malformed::Opcode);
    }
    if h.qdcount != 1 {
        return Err(Malformed::QuestionCount);
    }
    if h.ancount != 0 || h.nscount != 0 {
        return Err(Malformed::Records);
    }
    let q = wire::read_question(b, HEADER_LEN).ok_or(Malformed::Name)?;
    // A pointer in a query's only name could only point into the header.
    if q.end != HEADER_LEN + q.name.wire().len() + 4 {
        return Err(Malformed::Name);
    }
    let mut edns = None;
    let mut off = q.end;
    for _ in 0..h.arcount {
        let rr = wire::read_rr(b, off, Section::Additional).ok_or(Malformed::Additional)?;
        if rr.rtype == rtype::OPT {
            if edns.is_some() || b[rr.start] != 0 {
                return Err(Malformed::Additional);
            }
            edns = Some(ClientEdns { udp_size: rr.class, dnssec_ok: rr.ttl & 0x8000 != 0 });
        }
        off = rr.end();
    }
    Ok(Query {
        raw: b,
        id: h.id,
        flags: h.flags,
        qname: q.name,
        qtype: q.qtype,
        qclass: q.qclass,
        question_end: q.end,
        edns,
    })
}

/// The query the forwarder sends upstream for `q`: its own id, recursion desired, the client's
/// CD bit, the question as the client wrote it, and an OPT record with our buffer size and the
/// client's DO bit. Client EDNS options are not forwarded.
pub fn upstream_query(q: &Query<'_>, id: u16, out: &mut Vec<u8>) {
    out.clear();
    let flags = wire::RD | (q.flags & wire::CD);
    out.extend_from_slice(&Header { id, flags, qdcount: 1, ancount: 0, nscount: 0, arcount: 1 }.to_bytes());
    out.extend_from_slice(q.question_bytes());
    push_opt(out, q.dnssec_ok());
}

fn push_opt(out: &mut Vec<u8>, dnssec_ok: bool) {
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
    out.extend_from_slice(&(if dnssec_ok { 0x8000u32 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// Whether `resp` answers question `q`: QR set, opcode QUERY, exactly one question with
/// the same name (any case), type and class. The id is checked by whoever tracks outstanding
/// ids.
pub fn check_response(q: &Asked, resp: &[u8]) -> Result<Header, Mismatch> {
    let h = Header::parse(resp).ok_or(Mismatch::Header)?;
    if h.flags & wire::QR == 0 || h.opcode() != OPCODE_QUERY || h.qdcount != 1 {
        return Err(Mismatch::NotResponse);
    }
    let question = wire::read_question(resp, HEADER_LEN).ok_or(Mismatch::Question)?;
    // The question name must be written out, not compressed: answers are patched in place
    // with the client's spelling of it.
    if question.end != HEADER_LEN + question.name.wire().len() + 4 || question.name != q.name || question.qtype != q.qtype || question.qclass != q.qclass {
        return Err(Mismatch::Question);
    }
    Ok(h)
}

/// An address at the end of the CNAME chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalAddr {
    pub addr: IpAddr,
    /// Smallest TTL along the chain, this address record included.
    pub ttl: u32,
    /// Index into [`Analysis::records`].
    pub record: usize,
}

/// What a response holds, as far as the forwarder cares.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub header: Header,
    pub question_end: usize,
    pub records: Vec<Rr>,
    /// Index of the OPT record, if any.
    pub opt: Option<usize>,
    /// The A/AAAA records at the end of the CNAME chain that starts at the question name.
    pub addrs: Vec<FinalAddr>,
    /// The name at the end of that chain (the question name when there is no CNAME).
    pub chain_end: Name,
    /// Indexes into `records` of the A/AAAA records that are not in `addrs`: owned by a name off
    /// the chain, of another class, or outside the answer section. Clients must not see them
    /// (a caching resolver behind the forwarder could take them for answers, and no set holds
    /// their addresses), so the forwarder strips them.
    pub off_chain: Vec<usize>,
    /// Negative-caching TTL from the SOA in the authority section: min(SOA TTL, SOA minimum).
    pub negative_ttl: Option<u32>,
}

impl Analysis {
    /// The OPT record is absent or the last record, so it can be cut off for clients that did
    /// not ask for EDNS.
    pub fn opt_is_last(&self) -> bool {
        self.opt.is_none_or(|i| i + 1 == self.records.len())
    }
}

/// Walks a response that [`check_response`] accepted: all records, the OPT record, the CNAME
/// chain from `qname` to its addresses (bounded by the number of records, so a loop ends), and
/// the SOA minimum for negative answers.
pub fn analyze(resp: &[u8], qname: &Name) -> Result<Analysis, Mismatch> {
    let header = Header::parse(resp).ok_or(Mismatch::Header)?;
    if header.qdcount != 1 {
        return Err(Mismatch::NotResponse);
    }
    let question = wire::read_question(resp, HEADER_LEN).ok_or(Mismatch::Question)?;
    if question.end != HEADER_LEN + question.name.wire().len() + 4 || question.name != *qname {
        return Err(Mismatch::Question);
    }
    let question_end = question.end;
    let records = wire::read_records(resp, &header, question_end).ok_or(Mismatch::Records)?;
    let mut opt = None;
    for (i, rr) in records.iter().enumerate() {
        if rr.rtype == rtype::OPT {
            if opt.is_some() || rr.section != Section::Additional {
                return Err(Mismatch::Records);
            }
            opt = Some(i);
        }
    }

    // Bytes that are patched per client: the header (id, flags, counts), every TTL and the OPT
    // record (cut for clients without EDNS). A name read through them (a compression pointer
    // into a TTL, say) would mean something else after patching than what was checked here, so
    // such a response is rejected.
    let mut patched = vec![false; resp.len()];
    patched[..HEADER_LEN].fill(true);
    for rr in &records {
        patched[rr.ttl_off..rr.ttl_off + 4].fill(true);
        if rr.rtype == rtype::OPT {
            patched[rr.start..rr.end()].fill(true);
        }
    }
    let read_name = |off: usize| -> Result<(Name, usize), Mismatch> {
        let mut clean = true;
        let name = wire::read_name_visit(resp, off, |r| clean &= !patched[r].contains(&true));
        match name {
            Some(n) if clean => Ok(n),
            _ => Err(Mismatch::Records),
        }
    };

    // Owner names of the answer section, decoded once: the chain walk compares them repeatedly.
    let mut answer_names = Vec::new();
    for (i, rr) in records.iter().enumerate() {
        if rr.section == Section::Answer && rr.class == CLASS_IN && matches!(rr.rtype, rtype::CNAME | rtype::A | rtype::AAAA) {
            let (owner, _) = read_name(rr.start)?;
            answer_names.push((i, owner));
        }
    }
    let mut current = qname.clone();
    let mut chain_ttl = u32::MAX;
    for _ in 0..answer_names.len() {
        let next = answer_names.iter().find(|(i, owner)| records[*i].rtype == rtype::CNAME && *owner == current);
        let Some((i, _)) = next else { break };
        let rr = &records[*i];
        let (target, end) = read_name(rr.rdata.start)?;
        if end != rr.rdata.end {
            return Err(Mismatch::Records);
        }
        chain_ttl = chain_ttl.min(rr.ttl);
        current = target;
    }
    let mut addrs = Vec::new();
    for (i, owner) in &answer_names {
        let rr = &records[*i];
        if *owner != current {
            continue;
        }
        let data = &resp[rr.rdata.clone()];
        let addr = match (rr.rtype, data.len()) {
            (rtype::A, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            (rtype::AAAA, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            (rtype::A | rtype::AAAA, _) => return Err(Mismatch::Records),
            _ => continue,
        };
        addrs.push(FinalAddr { addr, ttl: chain_ttl.min(rr.ttl), record: *i });
    }
    let off_chain = records
        .iter()
        .enumerate()
        .filter(|(i, rr)| matches!(rr.rtype, rtype::A | rtype::AAAA) && !addrs.iter().any(|a| a.record == *i))
        .map(|(i, _)| i)
        .collect();

    let negative_ttl = records
        .iter()
        .find(|rr| rr.section == Section::Authority && rr.rtype == rtype::SOA && rr.rdata.len() >= 22)
        .and_then(|rr| Some(rr.ttl.min(wire::u32_at(resp, rr.rdata.end - 4)?)));
    Ok(Analysis { header, question_end, records, opt, addrs, chain_end: current, off_chain, negative_ttl })
}

/// An answer ready for clients: wire bytes with capped TTLs, where the TTLs are, and how long it
/// may be cached. Per client only the id, the RD bit, the question's case and the TTLs (minus the
/// age) are patched, and the OPT record is cut for clients without EDNS.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub bytes: Vec<u8>,
    /// (offset, TTL when stored) of every record but OPT.
    pub ttls: Vec<(u32, u32)>,
    /// Offset where the OPT record starts (it is the last record), if there is one.
    pub opt_at: Option<u32>,
    pub question_end: u32,
    /// The addresses at the end of the chain with their (capped) chain TTL.
    pub addrs: Vec<(IpAddr, u32)>,
    /// Seconds the answer may be cached; `None` for answers not to cache.
    pub lifetime: Option<u32>,
}

/// Caps the TTLs of an analysed response: every record at `max_ttl`, and the addresses at the
/// end of the chain also at the smallest TTL along the chain, which is what their set elements
/// are timed by, so that a client never keeps an address longer than the firewall admits it.
///
/// Caching: NOERROR answers with records for the smallest TTL among them, negative answers
/// (NXDOMAIN, or NOERROR without answer records) for min(SOA TTL, SOA minimum) when the upstream
/// sent an SOA and not at all otherwise; truncated answers and other rcodes never.
///
/// Needs `analysis.opt_is_last()` (see [`rebuild_without`] for the other case).
pub fn prepare(resp: &[u8], analysis: &Analysis, max_ttl: u32) -> Prepared {
    let mut bytes = resp.to_vec();
    let mut ttls = Vec::with_capacity(analysis.records.len());
    let mut min_ttl = u32::MAX;
    for (i, rr) in analysis.records.iter().enumerate() {
        if rr.rtype == rtype::OPT {
            continue;
        }
        let mut cap = max_ttl;
        if let Some(a) = analysis.addrs.iter().find(|a| a.record == i) {
            cap = cap.min(a.ttl);
        }
        let ttl = rr.ttl.min(cap);
        wire::put_u32(&mut bytes, rr.ttl_off, ttl);
        ttls.push((rr.ttl_off as u32, ttl));
        if rr.section != Section::Additional {
            min_ttl = min_ttl.min(ttl);
        }
    }
    let h = analysis.header;
    let lifetime = if h.flags & wire::TC != 0 {
        None
    } else if h.rcode() == rcode::NOERROR && h.ancount > 0 {
        Some(min_ttl)
    } else if h.rcode() == rcode::NXDOMAIN || h.rcode() == rcode::NOERROR {
        analysis.negative_ttl.map(|t| t.min(max_ttl))
    } else {
        None
    }
    .filter(|&t| t > 0 && min_ttl > 0);
    let addrs = analysis.addrs.iter().map(|a| (a.addr, a.ttl.min(max_ttl))).collect();
    let opt_at = analysis.opt.map(|i| analysis.records[i].start as u32);
    Prepared { bytes, ttls, opt_at, question_end: analysis.question_end as u32, addrs, lifetime }
}

/// Re-encodes a response with the OPT record last, keeping of the A/AAAA records only those in
/// the answer section, of class IN, owned by `chain_end` (the end of the question's CNAME
/// chain) and whose address is not in `strip`. Used only when the rebinding guard removes
/// addresses, the upstream sent address records off the chain, or it put OPT before other
/// records: all rare, so hickory's full decode and encode is fine here (it also re-points name
/// compression, which cutting bytes out of the message would break).
pub fn rebuild_without(resp: &[u8], strip: &[IpAddr], chain_end: &Name) -> Option<Vec<u8>> {
    use hickory_proto::rr::{DNSClass, RData, Record};
    use hickory_proto::serialize::binary::BinEncodable;
    let mut msg = hickory_proto::op::Message::from_vec(resp).ok()?;
    let on_chain = |r: &Record| r.dns_class == DNSClass::IN && r.name.to_lowercase().to_bytes().is_ok_and(|w| w == chain_end.wire());
    msg.answers.retain(|r| match r.data {
        RData::A(a) => on_chain(r) && !strip.contains(&IpAddr::V4(a.0)),
        RData::AAAA(a) => on_chain(r) && !strip.contains(&IpAddr::V6(a.0)),
        _ => true,
    });
    for section in [&mut msg.authorities, &mut msg.additionals] {
        section.retain(|r| !matches!(r.data, RData::A(_) | RData::AAAA(_)));
    }
    msg.to_vec().ok()
}

/// Writes the answer for client query `q` from a prepared answer `age` seconds old, into `out`,
/// truncated (TC set, question only) when longer than `max_len`.
pub fn write_answer(p: &Prepared, q: &Query<'_>, age: u32, max_len: usize, out: &mut Vec<u8>) {
    out.clear();
    let cut_opt = q.edns.is_none() && p.opt_at.is_some();
    let end = if cut_opt { p.opt_at.map_or(p.bytes.len(), |o| o as usize) } else { p.bytes.len() };
    let Some(body) = p.bytes.get(..end) else {
        return servfail(q, out);
    };
    out.extend_from_slice(body);
    wire::put_u16(out, 0, q.id);
    let flags = wire::u16_at(out, 2).unwrap_or(0);
    wire::put_u16(out, 2, (flags & !wire::RD) | (q.flags & wire::RD));
    if cut_opt {
        let ar = wire::u16_at(out, 10).unwrap_or(1);
        wire::put_u16(out, 10, ar.saturating_sub(1));
    }
    // Same name up to case, so the same length: echo the client's spelling.
    let qname = &q.raw[HEADER_LEN..HEADER_LEN + q.qname.wire().len()];
    if let Some(dst) = out.get_mut(HEADER_LEN..HEADER_LEN + qname.len()) {
        dst.copy_from_slice(qname);
    }
    for &(off, ttl) in &p.ttls {
        if (off as usize) < end {
            wire::put_u32(out, off as usize, ttl.saturating_sub(age));
        }
    }
    if out.len() > max_len {
        truncate(q, out);
    }
}

/// Keeps header and question, sets TC and clears the record counts (plus our OPT for EDNS
/// clients): the client retries over TCP.
fn truncate(q: &Query<'_>, out: &mut Vec<u8>) {
    let flags = wire::u16_at(out, 2).unwrap_or(0) | wire::TC;
    out.clear();
    out.extend_from_slice(&Header { id: q.id, flags, qdcount: 1, ancount: 0, nscount: 0, arcount: u16::from(q.edns.is_some()) }.to_bytes());
    out.extend_from_slice(q.question_bytes());
    if q.edns.is_some() {
        push_opt(out, q.dnssec_ok());
    }
}

/// An answer without records with the given rcode (SERVFAIL, NXDOMAIN, ...).
pub fn error_answer(q: &Query<'_>, code: u8, out: &mut Vec<u8>) {
    out.clear();
    let flags = wire::QR | (q.flags & (wire::RD | wire::CD)) | wire::RA | u16::from(code & 0x0f);
    out.extend_from_slice(&Header { id: q.id, flags, qdcount: 1, ancount: 0, nscount: 0, arcount: u16::from(q.edns.is_some()) }.to_bytes());
    out.extend_from_slice(q.question_bytes());
    if q.edns.is_some() {
        push_opt(out, q.dnssec_ok());
    }
}

pub fn servfail(q: &Query<'_>, out: &mut Vec<u8>) {
    error_answer(q, rcode::SERVFAIL, out);
}

/// NXDOMAIN without an SOA: nothing to cache negatively for long, and the name is refused by
/// policy, not absent from the DNS.
pub fn nxdomain(q: &Query<'_>, out: &mut Vec<u8>) {
    error_answer(q, rcode::NXDOMAIN, out);
}

/// Builds a plain query (for the stub resolver and tests): RD set, an OPT record advertising
/// [`EDNS_UDP_SIZE`].
pub fn build_query(id: u16, name: &Name, qtype: u16) -> Vec<u8> {
    let mut out = Header { id, flags: wire::RD, qdcount: 1, ancount: 0, nscount: 0, arcount: 1 }.to_bytes().to_vec();
    out.extend_from_slice(name.wire());
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    push_opt(&mut out, false);
    out
}

/// Whether an upstream rcode means "ask the next upstream": the server could or would not answer.
pub fn is_upstream_failure(h: &Header) -> bool {
    matches!(h.rcode(), rcode::SERVFAIL | rcode::REFUSED | rcode::NOTIMP | rcode::FORMERR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query as HQuery};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
    use hickory_proto::rr::{Name as HName, RData, Record, RecordType};

    fn hname(s: &str) -> HName {
        HName::from_ascii(s).unwrap()
    }

    fn query_bytes(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(HQuery::query(hname(name), t));
        m.to_vec().unwrap()
    }

    fn response(q: &[u8], answers: Vec<Record>) -> Vec<u8> {
        let req = Message::from_vec(q).unwrap();
        let mut m = Message::response(req.metadata.id, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.add_queries(req.queries.clone());
        m.add_answers(answers);
        m.to_vec().unwrap()
    }

    #[test]
    fn parses_a_plain_query_and_keys_it_case_insensitively() {
        let b = query_bytes("Api.Example.TEST.", RecordType::A);
        let q = parse_query(&b).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qname.to_dotted(), "api.example.test");
        assert_eq!(q.qtype, rtype::A);
        assert!(q.edns.is_none());
        assert_eq!(q.max_udp(), 512);
        let b2 = query_bytes("api.example.test.", RecordType::A);
        assert_eq!(parse_query(&b2).unwrap().key().as_bytes(), q.key().as_bytes());
        let b3 = query_bytes("api.example.test.", RecordType::AAAA);
        assert_ne!(parse_query(&b3).unwrap().key().as_bytes(), q.key().as_bytes());
    }

    #[test]
    fn rejects_malformed_queries() {
        let good = query_bytes("a.test.", RecordType::A);
        assert_eq!(parse_query(&good[..5]).unwrap_err(), Malformed::Short);
        let mut r = good.clone();
        r[2] |= 0x80;
        assert_eq!(parse_query(&r).unwrap_err(), Malformed::Response);
        let mut o = good.clone();
        o[2] |= 0x28; // opcode 5 (UPDATE)
        assert_eq!(parse_query(&o).unwrap_err(), Malformed::Opcode);
        let mut z = good.clone();
        z[5] = 0;
        assert_eq!(parse_query(&z).unwrap_err(), Malformed::QuestionCount);
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(parse_query(&two).unwrap_err(), Malformed::QuestionCount);
        let mut an = good.clone();
        an[7] = 1;
        assert_eq!(parse_query(&an).unwrap_err(), Malformed::Records);
        assert_eq!(parse_query(&good[..good.len() - 1]).unwrap_err(), Malformed::Name);
        let mut ar = good.clone();
        ar[11] = 1;
        assert_eq!(parse_query(&ar).unwrap_err(), Malformed::Additional);
        // A compression pointer as the question name.
        let mut p = good[..12].to_vec();
        p.extend_from_slice(b"\xc0\x00\x00\x01\x00\x01");
        assert_eq!(parse_query(&p).unwrap_err(), Malformed::Name);
    }

    #[test]
    fn reads_client_edns() {
        let mut m = Message::from_vec(&query_bytes("a.test.", RecordType::A)).unwrap();
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(4000);
        e.set_dnssec_ok(true);
        m.set_edns(e);
        let b = m.to_vec().unwrap();
        let q = parse_query(&b).unwrap();
        assert_eq!(q.edns, Some(ClientEdns { udp_size: 4000, dnssec_ok: true }));
        assert_eq!(q.max_udp(), 4000);
        let mut up = Vec::new();
        upstream_query(&q, 7, &mut up);
        let u = Message::from_vec(&up).unwrap();
        assert_eq!(u.metadata.id, 7);
        assert!(u.metadata.recursion_desired);
        assert_eq!(u.edns.as_ref().unwrap().max_payload(), EDNS_UDP_SIZE);
        assert!(u.edns.as_ref().unwrap().flags().dnssec_ok);
    }

    #[test]
    fn response_must_match_the_question() {
        let qb = query_bytes("api.example.test.", RecordType::A);
        let q = parse_query(&qb).unwrap();
        let ok = response(&qb, vec![]);
        assert!(check_response(&q.asked(), &ok).is_ok());
        // Case differences are fine (0x20).
        let mixed = response(&query_bytes("API.example.TEST.", RecordType::A), vec![]);
        assert!(check_response(&q.asked(), &mixed).is_ok());
        let other = response(&query_bytes("evil.example.test.", RecordType::A), vec![]);
        assert_eq!(check_response(&q.asked(), &other).unwrap_err(), Mismatch::Question);
        let other_type = response(&query_bytes("api.example.test.", RecordType::AAAA), vec![]);
        assert_eq!(check_response(&q.asked(), &other_type).unwrap_err(), Mismatch::Question);
        assert_eq!(check_response(&q.asked(), &qb).unwrap_err(), Mismatch::NotResponse);
        assert_eq!(check_response(&q.asked(), &ok[..3]).unwrap_err(), Mismatch::Header);
    }

    #[test]
    fn follows_the_cname_chain_and_caps_ttls() {
        let qb = query_bytes("www.example.test.", RecordType::A);
        let q = parse_query(&qb).unwrap();
        let resp = response(
            &qb,
            vec![
                Record::from_rdata(hname("www.example.test."), 300, RData::CNAME(CNAME(hname("edge.cdn.test.")))),
                Record::from_rdata(hname("EDGE.cdn.test."), 30, RData::CNAME(CNAME(hname("node.cdn.test.")))),
                Record::from_rdata(hname("node.cdn.test."), 7200, RData::A(A::new(192, 0, 2, 7))),
                Record::from_rdata(hname("node.cdn.test."), 7200, RData::A(A::new(192, 0, 2, 8))),
                // Not on the chain: ignored.
                Record::from_rdata(hname("other.test."), 10, RData::A(A::new(198, 51, 100, 1))),
            ],
        );
        let a = analyze(&resp, &q.qname).unwrap();
        let addrs: Vec<_> = a.addrs.iter().map(|f| (f.addr, f.ttl)).collect();
        assert_eq!(addrs, vec![("192.0.2.7".parse().unwrap(), 30), ("192.0.2.8".parse().unwrap(), 30)]);
        let p = prepare(&resp, &a, 3600);
        assert_eq!(p.lifetime, Some(10));
        let mut out = Vec::new();
        let qb2 = {
            let mut b = query_bytes("WWW.example.test.", RecordType::A);
            b[0] = 0xab;
            b[1] = 0xcd;
            b
        };
        let q2 = parse_query(&qb2).unwrap();
        write_answer(&p, &q2, 4, 512, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.queries[0].name().to_ascii(), "WWW.example.test.");
        let ttls: Vec<u32> = m.answers.iter().map(|r| r.ttl).collect();
        // CNAMEs keep their TTL (minus age), the chain's addresses get the chain's minimum.
        assert_eq!(ttls, vec![296, 26, 26, 26, 6]);
        // With a small max_ttl everything is capped.
        let p = prepare(&resp, &a, 20);
        write_answer(&p, &q2, 0, 512, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.answers.iter().all(|r| r.ttl <= 20));
    }

    #[test]
    fn names_read_through_patched_bytes_are_rejected() {
        let qb = query_bytes("a.test.", RecordType::A);
        let q = parse_query(&qb).unwrap();
        let mut resp = qb[..q.question_end].to_vec();
        resp[2] = 0x81;
        resp[7] = 1; // ancount
        // a.test A 192.0.2.1 with TTL 0: its last TTL byte reads as the root name.
        let ttl_last = resp.len() + 2 + 4 + 3;
        resp.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\xc0\x00\x02\x01");
        let ok = resp.clone();
        assert!(analyze(&ok[..], &q.qname).is_ok());
        // A second record whose owner points into that TTL: patching the TTL would rename it.
        resp[7] = 2;
        resp.extend_from_slice(&[0xc0, ttl_last as u8]);
        resp.extend_from_slice(b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01");
        assert_eq!(analyze(&resp, &q.qname).unwrap_err(), Mismatch::Records);
        // Into the header (the id differs per client).
        let n = resp.len();
        resp[n - 16] = 0xc0;
        resp[n - 15] = 0x00;
        assert_eq!(analyze(&resp, &q.qname).unwrap_err(), Mismatch::Records);
    }

    #[test]
    fn cname_loops_end() {
        let qb = query_bytes("a.test.", RecordType::A);
        let q = parse_query(&qb).unwrap();
        let resp = response(
            &qb,
            vec![
                Record::from_rdata(hname("a.test."), 60, RData::CNAME(CNAME(hname("b.test.")))),
                Record::from_rdata(hname("b.test."), 60, RData::CNAME(CNAME(hname("a.test.")))),
            ],
        );
        let a = analyze(&resp, &q.qname).unwrap();
        assert!(a.addrs.is_empty());
    }

    #[test]
    fn aaaa_and_negative_caching() {
        let qb = query_bytes("v6.example.test.", RecordType::AAAA);
        let q = parse_query(&qb).unwrap();
        let resp = response(&qb, vec![Record::from_rdata(hname("v6.example.test."), 100, RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)))]);
        let a = analyze(&resp, &q.qname).unwrap();
        assert_eq!(a.addrs[0].addr, "2001:db8::1".parse::<IpAddr>().unwrap());

        let req = Message::from_vec(&qb).unwrap();
        let mut m = Message::response(req.metadata.id, OpCode::Query);
        m.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
        m.add_queries(req.queries.clone());
        let soa = SOA::new(hname("ns.test."), hname("host.test."), 1, 2, 3, 4, 45);
        m.add_authority(Record::from_rdata(hname("test."), 900, RData::SOA(soa)));
        let neg = m.to_vec().unwrap();
        let a = analyze(&neg, &q.qname).unwrap();
        assert_eq!(a.negative_ttl, Some(45));
        assert_eq!(prepare(&neg, &a, 3600).lifetime, Some(45));
        // No SOA: not cached.
        m.authorities.clear();
        let neg = m.to_vec().unwrap();
        let a = analyze(&neg, &q.qname).unwrap();
        assert_eq!(prepare(&neg, &a, 3600).lifetime, None);
    }

    #[test]
    fn opt_is_cut_for_clients_without_edns_and_big_answers_truncate() {
        let qb = query_bytes("big.test.", RecordType::A);
        let q = parse_query(&qb).unwrap();
        let answers: Vec<Record> = (0..40).map(|i| Record::from_rdata(hname("big.test."), 60, RData::A(A::new(192, 0, 2, i)))).collect();
        let req = Message::from_vec(&qb).unwrap();
        let mut m = Message::response(req.metadata.id, OpCode::Query);
        m.add_queries(req.queries.clone());
        m.add_answers(answers);
        m.set_edns(hickory_proto::op::Edns::new());
        let resp = m.to_vec().unwrap();
        let a = analyze(&resp, &q.qname).unwrap();
        assert!(a.opt.is_some() && a.opt_is_last());
        let p = prepare(&resp, &a, 3600);
        let mut out = Vec::new();
        write_answer(&p, &q, 0, 4096, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.edns.is_none());
        assert_eq!(m.answers.len(), 40);
        write_answer(&p, &q, 0, 512, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
    }

    #[test]
    fn rebuild_strips_addresses() {
        let qb = query_bytes("r.test.", RecordType::A);
        let q = parse_query(&qb).unwrap();
        let resp = response(
            &qb,
            vec![
                Record::from_rdata(hname("r.test."), 60, RData::A(A::new(10, 0, 0, 1))),
                Record::from_rdata(hname("r.test."), 60, RData::A(A::new(192, 0, 2, 1))),
            ],
        );
        let rebuilt = rebuild_without(&resp, &["10.0.0.1".parse().unwrap()], &q.qname).unwrap();
        let a = analyze(&rebuilt, &q.qname).unwrap();
        assert_eq!(a.addrs.len(), 1);
        assert_eq!(a.addrs[0].addr, "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    /// Issue 12, item 15: address records off the question's CNAME chain are found and
    /// stripped (a caching resolver behind the forwarder could take them for answers).
    #[test]
    fn address_records_off_the_chain_are_found_and_stripped() {
        let qb = query_bytes("www.test.", RecordType::A);
        let q = parse_query(&qb).unwrap();
        let mut resp = Message::from_vec(&response(
            &qb,
            vec![
                Record::from_rdata(hname("www.test."), 60, RData::CNAME(CNAME(hname("Edge.Test.")))),
                Record::from_rdata(hname("edge.test."), 60, RData::A(A::new(192, 0, 2, 1))),
                // Off the chain: another name, in the answer section...
                Record::from_rdata(hname("bank.test."), 60, RData::A(A::new(192, 0, 2, 66))),
                Record::from_rdata(hname("bank.test."), 60, RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 66))),
            ],
        ))
        .unwrap();
        // ...and in the additional section, even for the chain's own end.
        resp.additionals.push(Record::from_rdata(hname("edge.test."), 60, RData::A(A::new(192, 0, 2, 67))));
        let resp = resp.to_vec().unwrap();
        let a = analyze(&resp, &q.qname).unwrap();
        assert_eq!(a.chain_end, Name::from_dotted("edge.test").unwrap());
        assert_eq!(a.addrs.len(), 1);
        assert_eq!(a.off_chain.len(), 3);
        let rebuilt = rebuild_without(&resp, &[], &a.chain_end).unwrap();
        let a2 = analyze(&rebuilt, &q.qname).unwrap();
        assert!(a2.off_chain.is_empty());
        let m = Message::from_vec(&rebuilt).unwrap();
        assert_eq!(m.answers.len(), 2, "the CNAME and the chain's address stay: {:?}", m.answers);
        assert!(m.additionals.is_empty());
        assert_eq!(a2.addrs[0].addr, "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn error_answers_echo_the_question() {
        let qb = query_bytes("x.test.", RecordType::A);
        let q = parse_query(&qb).unwrap();
        let mut out = Vec::new();
        servfail(&q, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, hickory_proto::op::ResponseCode::ServFail);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.queries.len(), 1);
        nxdomain(&q, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, hickory_proto::op::ResponseCode::NXDomain);
    }
}
