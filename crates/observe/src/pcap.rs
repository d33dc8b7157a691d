//! Packets as a classic pcap file (the libpcap format `tcpdump -r` and Wireshark open).
//!
//! NFLOG hands over the packet from its network header on, with no link-layer header, so the file
//! uses `LINKTYPE_RAW` (101): every record starts with an IPv4 or IPv6 header and readers tell the
//! two apart by the version nibble. (`LINKTYPE_IPV4`/`LINKTYPE_IPV6` would need one file per
//! family.) The format is the original one, not pcapng: a 24-byte file header, then per packet a
//! 16-byte record header (seconds, microseconds, captured length, original length) and the
//! bytes. Fields are written in the machine's byte order; the magic number tells readers which
//! that is.
//!
//! The original length of a record comes from the IP header's length field when the snap length
//! cut the packet, so readers show `[|tcp]`-style truncation instead of a short packet. Outgoing
//! packets logged before the NIC computed checksums carry partial checksums; Wireshark flags
//! them as incorrect, which is expected for locally generated traffic.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Link type of raw IPv4/IPv6 packets in a pcap file header.
pub const LINKTYPE_RAW: u32 = 101;
/// Magic number of a microsecond-resolution pcap file.
pub const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Largest snap length written to the header (what tcpdump uses for "everything").
pub const MAX_SNAPLEN: u32 = 262_144;

/// Writes a pcap stream to `W`. Call [`PcapWriter::flush`] to push buffered records out (for a
/// reader following the file while it grows).
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    snaplen: u32,
    packets: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header. `snaplen` is the most bytes any record holds (records longer than
    /// it are cut to it).
    pub fn new(mut out: W, snaplen: u32) -> io::Result<PcapWriter<W>> {
        let snaplen = snaplen.clamp(1, MAX_SNAPLEN);
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC_MICROS.to_ne_bytes());
        h.extend_from_slice(&2u16.to_ne_bytes()); // version 2.4
        h.extend_from_slice(&4u16.to_ne_bytes());
        h.extend_from_slice(&0i32.to_ne_bytes()); // thiszone: UTC
        h.extend_from_slice(&0u32.to_ne_bytes()); // sigfigs
        h.extend_from_slice(&snaplen.to_ne_bytes());
        h.extend_from_slice(&LINKTYPE_RAW.to_ne_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter {
            out,
            snaplen,
            packets: 0,
        })
    }

    /// Appends one IP packet captured at `time`. `orig_len` is its length on the wire (`None`:
    /// taken from its IP header, or the captured length when that is shorter or unreadable).
    pub fn write_packet(
        &mut self,
        time: SystemTime,
        data: &[u8],
        orig_len: Option<u32>,
    ) -> io::Result<()> {
        let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let cap = &data[..data.len().min(self.snaplen as usize)];
        let cap_len = cap.len() as u32;
        let orig = orig_len
            .or_else(|| ip_length(data))
            .unwrap_or(0)
            .max(data.len() as u32)
            .max(cap_len);
        let mut h = [0u8; 16];
        // The format's seconds field is 32 bits (unsigned by convention): good until 2106.
        h[0..4].copy_from_slice(&(d.as_secs() as u32).to_ne_bytes());
        h[4..8].copy_from_slice(&d.subsec_micros().to_ne_bytes());
        h[8..12].copy_from_slice(&cap_len.to_ne_bytes());
        h[12..16].copy_from_slice(&orig.to_ne_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(cap)?;
        self.packets += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer (after a flush).
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The total length an IPv4 or IPv6 header states.
fn ip_length(p: &[u8]) -> Option<u32> {
    match p.first()? >> 4 {
        4 if p.len() >= 4 => Some(u32::from(u16::from_be_bytes([p[2], p[3]]))),
        6 if p.len() >= 6 => match u16::from_be_bytes([p[4], p[5]]) {
            0 => None,
            n => Some(40 + u32::from(n)),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes(b[i..i + 4].try_into().unwrap())
    }

    #[test]
    fn header_and_records_follow_the_format() {
        let mut w = PcapWriter::new(Vec::new(), 64).unwrap();
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123);
        // An IPv4 header claiming 100 bytes, cut to 70 by the capture and to 64 by the file.
        let mut pkt = vec![0u8; 70];
        pkt[0] = 0x45;
        pkt[2..4].copy_from_slice(&100u16.to_be_bytes());
        w.write_packet(t, &pkt, None).unwrap();
        w.write_packet(t, &[0x60, 0, 0, 0, 0, 8, 17, 64], Some(48))
            .unwrap();
        assert_eq!(w.packets(), 2);
        let b = w.into_inner().unwrap();
        assert_eq!(u32_at(&b, 0), MAGIC_MICROS);
        assert_eq!(
            &b[4..8],
            &[2u16.to_ne_bytes(), 4u16.to_ne_bytes()].concat()[..]
        );
        assert_eq!(u32_at(&b, 16), 64);
        assert_eq!(u32_at(&b, 20), LINKTYPE_RAW);
        // First record: ts, caplen 64, origlen 100.
        assert_eq!(u32_at(&b, 24), 1_700_000_000);
        assert_eq!(u32_at(&b, 28), 123);
        assert_eq!((u32_at(&b, 32), u32_at(&b, 36)), (64, 100));
        assert_eq!(b[40], 0x45);
        // Second record right after the 64 captured bytes.
        let r2 = 40 + 64;
        assert_eq!((u32_at(&b, r2 + 8), u32_at(&b, r2 + 12)), (8, 48));
        assert_eq!(b.len(), r2 + 16 + 8);
    }

    #[test]
    fn original_length_is_never_below_the_captured_one() {
        let mut w = PcapWriter::new(Vec::new(), 65535).unwrap();
        // A header claiming 20 bytes in front of 30 captured ones (a lie): 30 it is.
        let mut pkt = vec![0u8; 30];
        pkt[0] = 0x45;
        pkt[3] = 20;
        w.write_packet(UNIX_EPOCH, &pkt, None).unwrap();
        w.write_packet(UNIX_EPOCH, &[], None).unwrap();
        let b = w.into_inner().unwrap();
        assert_eq!((u32_at(&b, 32), u32_at(&b, 36)), (30, 30));
        assert_eq!(
            (u32_at(&b, 24 + 16 + 30 + 8), u32_at(&b, 24 + 16 + 30 + 12)),
            (0, 0)
        );
    }
}
