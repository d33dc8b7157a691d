//! IPv4 and IPv6 headers: the one parser behind `log` (whole packets, as NFLOG copies them) and
//! `trace` (the network and transport headers an nf_tables trace event carries apart).
//!
//! IPv6 extension headers (hop-by-hop, routing, fragment, destination options, and the rarer
//! mobility, HIP, shim6 and authentication headers) are walked to the upper-layer protocol, which
//! is what `meta l4proto` and `th dport` match and what the ports belong to. A packet whose
//! upper-layer header cannot be reached (a later fragment, ESP, no next header, or bytes cut off
//! in the middle of the extension headers) keeps the last protocol number seen and has no ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The headers of an IP packet that an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpSummary {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub icmp: Option<(u8, u8)>,
    pub tcp_flags: Option<u8>,
    /// Length of the whole packet per its header (it may have been cut by the snap length).
    pub len: u32,
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;
pub const IPPROTO_DCCP: u8 = 33;

/// Name of an IP protocol number as leash's policies spell it.
pub fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmpv6".into(),
        IPPROTO_SCTP => "sctp".into(),
        IPPROTO_UDPLITE => "udplite".into(),
        IPPROTO_DCCP => "dccp".into(),
        n => n.to_string(),
    }
}

/// TCP flags as lower-case names joined by commas (`syn`, `rst,ack`).
pub fn tcp_flags_text(f: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (0x02, "syn"),
        (0x01, "fin"),
        (0x04, "rst"),
        (0x08, "psh"),
        (0x10, "ack"),
        (0x20, "urg"),
        (0x40, "ece"),
        (0x80, "cwr"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

/// Parses an IPv4 or IPv6 packet (from its network header). Ports and ICMP type need the first
/// bytes of the transport header; a non-first fragment, ESP, or a cut packet has none.
pub fn parse_ip(p: &[u8]) -> Option<IpSummary> {
    let n = network(p)?;
    let l4 = n.l4.and_then(|at| p.get(at..));
    Some(summary(&n, l4))
}

/// Parses a network header and the transport header that follows it, given apart, as an
/// nf_tables trace event carries them: `network` from the start of the IP header up to the
/// transport header (the kernel cuts it at 40 bytes, so an IPv6 packet's extension headers are
/// not in it), `transport` from the upper-layer header on. The transport bytes are used only when
/// the network header shows where the upper-layer header is and that it is one: not for a later
/// fragment (its "transport header" is payload), nor when IPv6 extension headers were cut off
/// (the upper-layer protocol is unknown then).
pub fn parse_headers(network_header: &[u8], transport: Option<&[u8]>) -> Option<IpSummary> {
    let n = network(network_header)?;
    let l4 = n.l4.and(transport);
    Some(summary(&n, l4))
}

/// The network layer of a packet.
struct Network {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    len: u32,
    /// Where the upper-layer header starts, counted from the start of the IP header (possibly
    /// beyond the bytes given); `None` when it cannot be reached.
    l4: Option<usize>,
}

fn network(p: &[u8]) -> Option<Network> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < 20 {
                return None;
            }
            let src: [u8; 4] = p[12..16].try_into().ok()?;
            let dst: [u8; 4] = p[16..20].try_into().ok()?;
            let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            Some(Network {
                src: Ipv4Addr::from(src).into(),
                dst: Ipv4Addr::from(dst).into(),
                proto: p[9],
                len: u32::from(u16::from_be_bytes([p[2], p[3]])),
                l4: (frag_offset == 0).then_some(ihl),
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            let payload_len = u32::from(u16::from_be_bytes([p[4], p[5]]));
            // Payload length 0 is a jumbogram (hop-by-hop option); report what was captured.
            let len = if payload_len == 0 {
                p.len() as u32
            } else {
                40 + payload_len
            };
            let (proto, l4) = skip_ipv6_extensions(p[6], &p[40..]);
            Some(Network {
                src: Ipv6Addr::from(src).into(),
                dst: Ipv6Addr::from(dst).into(),
                proto,
                len,
                l4: l4.map(|at| 40 + at),
            })
        }
        _ => None,
    }
}

/// The summary of a packet whose upper-layer header (if reachable and captured) is `l4`.
fn summary(n: &Network, l4: Option<&[u8]>) -> IpSummary {
    let mut s = IpSummary {
        src: n.src,
        dst: n.dst,
        proto: n.proto,
        src_port: None,
        dst_port: None,
        icmp: None,
        tcp_flags: None,
        len: n.len,
    };
    if let Some(h) = l4 {
        match n.proto {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP | IPPROTO_DCCP
                if h.len() >= 4 =>
            {
                s.src_port = Some(u16::from_be_bytes([h[0], h[1]]));
                s.dst_port = Some(u16::from_be_bytes([h[2], h[3]]));
                if n.proto == IPPROTO_TCP && h.len() >= 14 {
                    s.tcp_flags = Some(h[13]);
                }
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 if h.len() >= 2 => s.icmp = Some((h[0], h[1])),
            _ => {}
        }
    }
    s
}

/// Walks IPv6 extension headers, `next` being the fixed header's next-header field and `rest`
/// the bytes after the fixed header. Returns the upper-layer protocol and where its header starts
/// in `rest` (`None` when it is not reachable: a non-first fragment, ESP, no next header, or cut
/// off; the protocol is then the last next-header value read).
fn skip_ipv6_extensions(mut next: u8, rest: &[u8]) -> (u8, Option<usize>) {
    let mut at = 0;
    // Bounded: at most 16 extension headers (real packets carry a few).
    for _ in 0..16 {
        let cur = &rest[at..];
        let hdr_len = match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: (len + 1) * 8.
            0 | 43 | 60 | 135 | 139 | 140 => match cur.get(1) {
                Some(&l) => (usize::from(l) + 1) * 8,
                None => return (next, None),
            },
            // Fragment: 8 bytes; only the first fragment carries the upper-layer header.
            44 => {
                let Some(f) = cur.get(..8) else {
                    return (next, None);
                };
                let offset = u16::from_be_bytes([f[2], f[3]]) >> 3;
                if offset != 0 {
                    return (f[0], None);
                }
                8
            }
            // Authentication header: (len + 2) * 4.
            51 => match cur.get(1) {
                Some(&l) => (usize::from(l) + 2) * 4,
                None => return (next, None),
            },
            // ESP (encrypted from here), no next header, or an upper-layer protocol.
            _ => {
                return (
                    next,
                    if next == 50 || next == 59 {
                        None
                    } else {
                        Some(at)
                    },
                );
            }
        };
        let Some(&n) = cur.first() else {
            return (next, None);
        };
        if hdr_len > cur.len() {
            return (n, None);
        }
        next = n;
        at += hdr_len;
    }
    (next, None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// IPv4 192.0.2.1 -> 198.51.100.7, TCP 40000 -> 443 SYN with 20 bytes of options.
    pub(crate) fn ipv4_tcp_syn() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0,
            0, // ver/ihl, tos, len 60, id, DF, ttl, proto 6
            192, 0, 2, 1, // src
            198, 51, 100, 7, // dst
        ];
        // TCP: sport 40000, dport 443, seq, ack, data offset 10 words, flags SYN.
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&443u16.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&[0xa0, 0x02]);
        p.extend_from_slice(&[0; 26]);
        p
    }

    /// IPv6 2001:db8::1 -> 2001:db8::2 with next header `next`, then `ext` and `l4`.
    fn ipv6(next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        p.push(next);
        p.push(64);
        p.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(ext);
        p.extend_from_slice(l4);
        p
    }

    const UDP_40000_TO_53: [u8; 8] = [0x9c, 0x40, 0, 53, 0, 8, 0, 0];

    #[test]
    fn ipv4_tcp_header_parses() {
        let s = parse_ip(&ipv4_tcp_syn()).unwrap();
        assert_eq!(s.src, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.dst, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            (s.proto, s.src_port, s.dst_port),
            (6, Some(40000), Some(443))
        );
        assert_eq!(s.tcp_flags.map(tcp_flags_text).as_deref(), Some("syn"));
        assert_eq!(s.len, 60);
    }

    #[test]
    fn ipv4_later_fragment_has_no_ports() {
        let mut p = ipv4_tcp_syn();
        p[6] = 0x00;
        p[7] = 0x10; // offset 16 * 8 bytes
        let s = parse_ip(&p).unwrap();
        assert_eq!((s.proto, s.src_port, s.tcp_flags), (6, None, None));
    }

    #[test]
    fn ipv4_options_are_skipped() {
        // IHL 6: four bytes of options (a NOP and an end-of-list, padded) before the UDP header.
        let mut p = vec![0x46, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7]);
        p.extend_from_slice(&[1, 0, 0, 0]);
        p.extend_from_slice(&UDP_40000_TO_53);
        let s = parse_ip(&p).unwrap();
        assert_eq!(
            (s.proto, s.src_port, s.dst_port, s.len),
            (17, Some(40000), Some(53), 32)
        );
    }

    #[test]
    fn ipv6_without_extension_headers_parses() {
        let s = parse_ip(&ipv6(17, &[], &UDP_40000_TO_53)).unwrap();
        assert_eq!(s.src, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.dst, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (s.proto, s.src_port, s.dst_port, s.len),
            (17, Some(40000), Some(53), 48)
        );
        let s = parse_ip(&ipv6(58, &[], &[128, 0, 0, 0])).unwrap();
        assert_eq!((s.proto, s.icmp, s.src_port), (58, Some((128, 0)), None));
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let udp = [0x9c, 0x40, 0, 53, 0, 8, 0, 0];
        // Hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP.
        let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[17, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let s = parse_ip(&ipv6(0, &ext, &udp)).unwrap();
        assert_eq!(
            (s.proto, s.src_port, s.dst_port),
            (17, Some(40000), Some(53))
        );
        assert_eq!(s.len, 40 + 24 + 8);
        // A first fragment carries the header, a later one does not.
        let frag0 = [58, 0, 0, 0, 0, 0, 0, 1];
        let s = parse_ip(&ipv6(44, &frag0, &[128, 0, 0, 0])).unwrap();
        assert_eq!((s.proto, s.icmp), (58, Some((128, 0))));
        let frag1 = [58, 0, 0x01, 0x00, 0, 0, 0, 1];
        let s = parse_ip(&ipv6(44, &frag1, &[128, 0, 0, 0])).unwrap();
        assert_eq!((s.proto, s.icmp), (58, None));
        // ESP: nothing readable after it.
        let s = parse_ip(&ipv6(50, &[], &[1, 2, 3, 4, 5, 6, 7, 8])).unwrap();
        assert_eq!((s.proto, s.src_port), (50, None));
    }

    #[test]
    fn ipv6_hop_by_hop_routing_fragment_and_destination_options_in_one_chain() {
        // Hop-by-hop (8) -> routing (24: type 0 with one address) -> fragment (8, first) ->
        // destination options (8) -> TCP.
        let mut ext = vec![43, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[44, 2, 0, 1]);
        ext.extend_from_slice(&[0; 20]);
        ext.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 7]);
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        let mut tcp = vec![0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x12];
        tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        let p = ipv6(0, &ext, &tcp);
        let s = parse_ip(&p).unwrap();
        assert_eq!(
            (s.proto, s.src_port, s.dst_port, s.tcp_flags),
            (6, Some(40000), Some(443), Some(0x12))
        );
        assert_eq!(s.len as usize, p.len());
        // Cut inside the routing header: the protocol is the routing header's next header, no
        // ports.
        let s = parse_ip(&p[..40 + 8 + 10]).unwrap();
        assert_eq!((s.proto, s.src_port), (44, None));
        // Cut right after the extension headers: TCP, but no ports.
        let s = parse_ip(&p[..40 + ext.len() + 2]).unwrap();
        assert_eq!((s.proto, s.src_port), (6, None));
    }

    #[test]
    fn truncated_headers_are_none_or_have_no_ports() {
        let v4 = ipv4_tcp_syn();
        assert!(
            parse_ip(&v4[..19]).is_none(),
            "shorter than the IPv4 header"
        );
        let s = parse_ip(&v4[..22]).unwrap();
        assert_eq!((s.proto, s.src_port), (6, None), "ports cut off");
        let mut bad_ihl = v4.clone();
        bad_ihl[0] = 0x44;
        assert!(parse_ip(&bad_ihl).is_none(), "IHL below 5");
        let v6 = ipv6(17, &[], &UDP_40000_TO_53);
        assert!(
            parse_ip(&v6[..39]).is_none(),
            "shorter than the IPv6 header"
        );
        assert!(parse_ip(&[]).is_none());
        // Hop-by-hop announced, not there.
        let s = parse_ip(&ipv6(0, &[], &[])).unwrap();
        assert_eq!((s.proto, s.src_port), (0, None));
    }

    #[test]
    fn cut_and_garbage_packets_do_not_panic() {
        let full = ipv4_tcp_syn();
        for n in 0..full.len() {
            let _ = parse_ip(&full[..n]);
        }
        let v6 = ipv6(0, &[6, 200, 0, 0, 0, 0, 0, 0], &[]);
        for n in 0..v6.len() {
            let _ = parse_ip(&v6[..n]);
        }
        assert!(parse_ip(&[0x45; 19]).is_none());
        assert!(parse_ip(&[0x12, 0, 0]).is_none());
    }

    #[test]
    fn split_headers_parse_like_the_whole_packet() {
        // As a trace event carries them: the IP header, then the transport header apart.
        let p = ipv4_tcp_syn();
        let s = parse_headers(&p[..20], Some(&p[20..40])).unwrap();
        assert_eq!(s, parse_ip(&p).unwrap());
        assert_eq!(parse_headers(&p[..20], None).unwrap().src_port, None);
        let p = ipv6(17, &[], &UDP_40000_TO_53);
        let s = parse_headers(&p[..40], Some(&p[40..])).unwrap();
        assert_eq!(s, parse_ip(&p).unwrap());
    }

    #[test]
    fn split_headers_take_no_ports_from_a_later_fragment_or_behind_cut_extensions() {
        // A later IPv4 fragment's "transport header" is payload.
        let mut p = ipv4_tcp_syn();
        p[7] = 0x10;
        let s = parse_headers(&p[..20], Some(&p[20..40])).unwrap();
        assert_eq!((s.proto, s.src_port, s.tcp_flags), (6, None, None));
        // IPv6 with a hop-by-hop header: the kernel's 40 bytes end before it, so the upper-layer
        // protocol is unknown and the transport bytes cannot be read as ports.
        let p = ipv6(0, &[17, 0, 1, 4, 0, 0, 0, 0], &UDP_40000_TO_53);
        let s = parse_headers(&p[..40], Some(&p[48..])).unwrap();
        assert_eq!((s.proto, s.src_port), (0, None));
        // IPv4 options longer than the 40 bytes the kernel copies: the transport header is
        // where the IHL says.
        let mut v4 = vec![0x4f, 0, 0, 68, 0, 0, 0, 0, 64, 17, 0, 0];
        v4.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7]);
        v4.extend_from_slice(&[1; 40]);
        v4.extend_from_slice(&UDP_40000_TO_53);
        let s = parse_headers(&v4[..40], Some(&v4[60..])).unwrap();
        assert_eq!(
            (s.proto, s.src_port, s.dst_port),
            (17, Some(40000), Some(53))
        );
    }
}
