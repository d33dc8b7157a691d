//! The message builder: netlink messages and their attributes written back to back into one buffer
//! (a batch is just that), lengths patched when a message or nest is closed.

use super::error::NlError;
use super::wire::{NLA_F_NESTED, NLA_HDRLEN, NLA_MAX_PAYLOAD, NLA_TYPE_MASK, align};

/// Builds one or more netlink messages back to back in one buffer (a batch is just that).
///
/// Lengths are patched when a message or nest is closed. An attribute that would exceed 65535
/// bytes is remembered and reported by [`MsgBuf::end`], so callers need one `?` per message rather
/// than one per attribute.
#[derive(Debug, Default, Clone)]
pub struct MsgBuf {
    buf: Vec<u8>,
    /// First attribute that did not fit: (type, length).
    overflow: Option<(u16, usize)>,
}

/// Start of an open message; close it with [`MsgBuf::end`].
#[derive(Debug)]
#[must_use = "close the message with MsgBuf::end"]
pub struct MsgStart(usize);

/// Start of an open nested attribute; close it with [`MsgBuf::end_nested`].
#[derive(Debug)]
#[must_use = "close the nest with MsgBuf::end_nested"]
pub struct NestStart(usize);

impl MsgBuf {
    pub fn new() -> MsgBuf {
        MsgBuf::default()
    }

    pub fn with_capacity(bytes: usize) -> MsgBuf {
        MsgBuf {
            buf: Vec::with_capacity(bytes),
            overflow: None,
        }
    }

    /// Bytes written so far (all messages).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn pad(&mut self) {
        let n = align(self.buf.len());
        self.buf.resize(n, 0);
    }

    /// Opens a message: writes an `nlmsghdr` whose length is patched by [`MsgBuf::end`]. `pid`
    /// is 0 (the kernel fills in the sender's port id).
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32) -> MsgStart {
        self.pad();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        MsgStart(start)
    }

    /// Appends a fixed family header (e.g. `nfgenmsg`, `ifinfomsg`) right after the `nlmsghdr`,
    /// padded to 4 bytes.
    pub fn put_header(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    /// Closes a message: patches its length. Returns the message length, or the first
    /// attribute-overflow error seen since the buffer was created.
    pub fn end(&mut self, m: MsgStart) -> Result<usize, NlError> {
        self.pad();
        if let Some((ty, len)) = self.overflow.take() {
            return Err(NlError::AttrTooLong { ty, len });
        }
        let len = self.buf.len() - m.0;
        let len32 = u32::try_from(len)
            .map_err(|_| NlError::Malformed(format!("message of {len} bytes")))?;
        self.buf[m.0..m.0 + 4].copy_from_slice(&len32.to_ne_bytes());
        Ok(len)
    }

    /// Appends an attribute with a raw payload.
    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        self.pad();
        if data.len() > NLA_MAX_PAYLOAD {
            self.overflow.get_or_insert((ty, data.len() + NLA_HDRLEN));
            return;
        }
        let len = (NLA_HDRLEN + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// An attribute without payload (a flag).
    pub fn attr_flag(&mut self, ty: u16) {
        self.attr(ty, &[]);
    }

    pub fn attr_u8(&mut self, ty: u16, v: u8) {
        self.attr(ty, &[v]);
    }

    /// u16 in host byte order.
    pub fn attr_u16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// u32 in host byte order.
    pub fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// u64 in host byte order.
    pub fn attr_u64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// u16 in network byte order (nf_tables uses big-endian for nearly all its integers).
    pub fn attr_be16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// u32 in network byte order.
    pub fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// u64 in network byte order.
    pub fn attr_be64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A NUL-terminated string.
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        self.pad();
        if s.len() + 1 > NLA_MAX_PAYLOAD {
            self.overflow.get_or_insert((ty, s.len() + 1 + NLA_HDRLEN));
            return;
        }
        let len = (NLA_HDRLEN + s.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Opens a nested attribute (`NLA_F_NESTED` is set on its type).
    pub fn begin_nested(&mut self, ty: u16) -> NestStart {
        self.pad();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        NestStart(start)
    }

    /// Closes a nested attribute: patches its length. A nest longer than 65535 bytes cannot be
    /// encoded; that is recorded and reported by [`MsgBuf::end`].
    pub fn end_nested(&mut self, n: NestStart) {
        self.pad();
        let len = self.buf.len() - n.0;
        match u16::try_from(len) {
            Ok(l) => self.buf[n.0..n.0 + 2].copy_from_slice(&l.to_ne_bytes()),
            Err(_) => {
                let ty = u16::from_ne_bytes([self.buf[n.0 + 2], self.buf[n.0 + 3]]) & NLA_TYPE_MASK;
                self.overflow.get_or_insert((ty, len));
            }
        }
    }

    /// Current length of the open nest `n` (to decide when to start a new chunk).
    pub fn nested_len(&self, n: &NestStart) -> usize {
        self.buf.len() - n.0
    }

    /// Appends bytes that already are whole, 4-byte aligned attributes (a hot loop that encodes
    /// millions of set elements writes each one at once instead of attribute by attribute).
    pub fn put_raw(&mut self, bytes: &[u8]) {
        debug_assert!(
            bytes.len().is_multiple_of(4),
            "raw attributes must be aligned"
        );
        self.buf.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::wire::{NLM_F_ACK, NLM_F_REQUEST, NlMsgHdr};

    #[test]
    fn message_with_attrs_is_aligned_and_length_patched() {
        let mut b = MsgBuf::new();
        let m = b.begin(0x10, NLM_F_REQUEST | NLM_F_ACK, 7);
        b.put_header(&[2, 0, 0]); // 3-byte family header, padded to 4
        b.attr_str(1, "leash"); // 4 + 6 -> 12 with padding
        b.attr_be32(2, 0x0102_0304);
        let len = b.end(m).unwrap();
        let bytes = b.into_bytes();
        assert_eq!(len, 16 + 4 + 12 + 8);
        assert_eq!(bytes.len(), len);
        let h = NlMsgHdr::parse(&bytes).unwrap();
        assert_eq!(
            (h.len as usize, h.ty, h.flags, h.seq, h.pid),
            (len, 0x10, 5, 7, 0)
        );
        assert_eq!(&bytes[16..20], &[2, 0, 0, 0]);
        // string attribute: len 10 (header + "leash\0"), type 1, then 2 bytes of padding
        assert_eq!(&bytes[20..24], &[10, 0, 1, 0]);
        assert_eq!(&bytes[24..32], b"leash\0\0\0");
        assert_eq!(&bytes[32..40], &[8, 0, 2, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn oversized_nest_is_reported_at_end() {
        let mut b = MsgBuf::new();
        let m = b.begin(0x10, 0, 1);
        let n = b.begin_nested(5);
        for _ in 0..20_000 {
            b.attr_u32(1, 0);
        }
        b.end_nested(n);
        match b.end(m) {
            Err(NlError::AttrTooLong { ty: 5, len }) => assert!(len > 65535),
            other => panic!("expected AttrTooLong, got {other:?}"),
        }
    }

    #[test]
    fn oversized_attr_is_reported() {
        let mut b = MsgBuf::new();
        let m = b.begin(0x10, 0, 1);
        b.attr(9, &vec![0; 70_000]);
        assert!(matches!(b.end(m), Err(NlError::AttrTooLong { ty: 9, .. })));
    }
}
