//! The parser: the messages of a received datagram, their attributes, and the `NLMSG_ERROR`
//! replies that carry acks and errors.

use super::error::{KernelError, NlError};
use super::wire::{
    NLA_F_NESTED, NLA_HDRLEN, NLA_TYPE_MASK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSG_HDRLEN,
    NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS, NlMsgHdr, align,
};

/// One message of a received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub header: NlMsgHdr,
    /// Everything after the `nlmsghdr`: the family header, then attributes.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Attributes after a family header of `family_header_len` bytes.
    pub fn attrs(&self, family_header_len: usize) -> Attrs<'a> {
        Attrs::new(self.payload.get(align(family_header_len)..).unwrap_or(&[]))
    }
}

/// Iterator over the messages in a buffer.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    pub fn new(buf: &'a [u8]) -> Messages<'a> {
        Messages { rest: buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, NlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(h) = NlMsgHdr::parse(self.rest) else {
            self.rest = &[];
            return Some(Err(NlError::Malformed("truncated message header".into())));
        };
        let len = h.len as usize;
        if len < NLMSG_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(NlError::Malformed(format!("bad message length {len}"))));
        }
        let m = Message {
            header: h,
            payload: &self.rest[NLMSG_HDRLEN..len],
        };
        self.rest = self.rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok(m))
    }
}

/// One attribute.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    /// Type without the `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` flags.
    pub ty: u16,
    /// The raw type field's `NLA_F_NESTED` flag.
    pub nested_flag: bool,
    pub data: &'a [u8],
}

impl<'a> Attr<'a> {
    fn fixed<const N: usize>(&self) -> Result<[u8; N], NlError> {
        self.data
            .get(..N)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                NlError::Malformed(format!(
                    "attribute {} has {} bytes, want {N}",
                    self.ty,
                    self.data.len()
                ))
            })
    }
    pub fn u8(&self) -> Result<u8, NlError> {
        Ok(self.fixed::<1>()?[0])
    }
    pub fn u16(&self) -> Result<u16, NlError> {
        Ok(u16::from_ne_bytes(self.fixed()?))
    }
    pub fn u32(&self) -> Result<u32, NlError> {
        Ok(u32::from_ne_bytes(self.fixed()?))
    }
    pub fn u64(&self) -> Result<u64, NlError> {
        Ok(u64::from_ne_bytes(self.fixed()?))
    }
    pub fn be16(&self) -> Result<u16, NlError> {
        Ok(u16::from_be_bytes(self.fixed()?))
    }
    pub fn be32(&self) -> Result<u32, NlError> {
        Ok(u32::from_be_bytes(self.fixed()?))
    }
    pub fn be64(&self) -> Result<u64, NlError> {
        Ok(u64::from_be_bytes(self.fixed()?))
    }
    /// A string, with the trailing NUL (if any) removed; invalid UTF-8 is replaced.
    pub fn str(&self) -> String {
        let d = self.data.split(|&b| b == 0).next().unwrap_or(&[]);
        String::from_utf8_lossy(d).into_owned()
    }
    /// The attributes nested inside this one.
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::new(self.data)
    }
}

/// Iterator over a run of attributes. Malformed trailing bytes end the iteration with an error.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Attrs<'a> {
        Attrs { rest: buf }
    }

    /// Collects attributes into a table indexed by type (types >= N are ignored; a repeated type
    /// keeps the last). Handy for flat attribute sets like a dump reply.
    pub fn table<const N: usize>(self) -> Result<[Option<Attr<'a>>; N], NlError> {
        let mut t = [None; N];
        for a in self {
            let a = a?;
            if let Some(slot) = t.get_mut(a.ty as usize) {
                *slot = Some(a);
            }
        }
        Ok(t)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, NlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < NLA_HDRLEN {
            // Up to 3 bytes of trailing padding are fine.
            self.rest = &[];
            return None;
        }
        let len = u16::from_ne_bytes([self.rest[0], self.rest[1]]) as usize;
        let raw_ty = u16::from_ne_bytes([self.rest[2], self.rest[3]]);
        if len < NLA_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(NlError::Malformed(format!(
                "bad attribute length {len} (type {raw_ty:#x})"
            ))));
        }
        let a = Attr {
            ty: raw_ty & NLA_TYPE_MASK,
            nested_flag: raw_ty & NLA_F_NESTED != 0,
            data: &self.rest[NLA_HDRLEN..len],
        };
        self.rest = self.rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok(a))
    }
}

/// Parses an `NLMSG_ERROR` message: errno 0 is an ack. Extended-ack attributes are read when
/// the kernel flagged them (`NLM_F_ACK_TLVS`); with `NLM_F_CAPPED` the echoed request is only its
/// header, otherwise the whole request precedes them.
pub fn parse_error(m: &Message<'_>) -> Result<KernelError, NlError> {
    let p = m.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(NlError::Malformed(format!(
            "NLMSG_ERROR of {} bytes",
            p.len()
        )));
    }
    let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    let request = NlMsgHdr::parse(&p[4..]).unwrap_or_default();
    let mut e = KernelError {
        errno: -code,
        request,
        message: None,
        offset: None,
    };
    if m.header.flags & NLM_F_ACK_TLVS != 0 {
        let echoed = if m.header.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            request.len as usize
        };
        if let Some(tlvs) = p.get(4 + align(echoed)..) {
            for a in Attrs::new(tlvs).flatten() {
                match a.ty {
                    NLMSGERR_ATTR_MSG => e.message = Some(a.str()),
                    NLMSGERR_ATTR_OFFS => e.offset = a.u32().ok(),
                    _ => {}
                }
            }
        }
    }
    Ok(e)
}

/// The outcome of the request an `NLMSG_ERROR` message answers: `Ok` for an ack (errno 0), the
/// kernel's error otherwise. Every request/ack exchange in this crate turns replies into results
/// through here.
pub fn ack_result(m: &Message<'_>) -> Result<(), NlError> {
    let e = parse_error(m)?;
    if e.errno == 0 {
        Ok(())
    } else {
        Err(NlError::Kernel(e))
    }
}

/// The outcome of a dump an `NLMSG_DONE` message ends: its payload, when there is one, is the
/// dump's final status as an `int`. Some dumps fail only there: sock_diag answers a dump of a
/// protocol it has no handler for (raw sockets on a kernel without `CONFIG_INET_RAW_DIAG`) with
/// a DONE carrying `-ENOENT`, which reads as an empty listing unless it is checked.
pub fn done_result(m: &Message<'_>) -> Result<(), NlError> {
    let code = match m.payload.get(..4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    };
    if code >= 0 {
        return Ok(());
    }
    Err(NlError::Kernel(KernelError { errno: -code, request: m.header, message: None, offset: None }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::build::MsgBuf;
    use crate::nl::wire::{NLM_F_REQUEST, NLMSG_ERROR};

    #[test]
    fn nested_attributes_round_trip() {
        let mut b = MsgBuf::new();
        let m = b.begin(0x10, NLM_F_REQUEST, 1);
        b.put_header(&[0; 4]);
        let outer = b.begin_nested(3);
        b.attr_u8(1, 9);
        let inner = b.begin_nested(2);
        b.attr_u32(1, 42);
        b.end_nested(inner);
        b.end_nested(outer);
        b.attr_flag(4);
        b.end(m).unwrap();
        let bytes = b.into_bytes();

        let msgs: Vec<_> = Messages::new(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let attrs: Vec<_> = msgs[0].attrs(4).collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].ty, 3);
        assert!(attrs[0].nested_flag);
        assert_eq!(attrs[0].data.len(), 8 + 4 + 8);
        let inner: Vec<_> = attrs[0].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(inner[0].u8().unwrap(), 9);
        assert_eq!(inner[1].ty, 2);
        let deepest = inner[1].nested().next().unwrap().unwrap();
        assert_eq!(deepest.u32().unwrap(), 42);
        assert_eq!(attrs[1].ty, 4);
        assert!(attrs[1].data.is_empty());
        let t = msgs[0].attrs(4).table::<5>().unwrap();
        assert!(t[3].is_some() && t[4].is_some() && t[1].is_none());
    }

    #[test]
    fn several_messages_parse_as_a_stream() {
        let mut b = MsgBuf::new();
        for seq in 0..3 {
            let m = b.begin(0x20, NLM_F_REQUEST, seq);
            b.put_header(&[1]);
            b.attr_u16(1, 0xabcd);
            b.end(m).unwrap();
        }
        let seqs: Vec<u32> = Messages::new(b.as_bytes())
            .map(|m| m.unwrap().header.seq)
            .collect();
        assert_eq!(seqs, vec![0, 1, 2]);
    }

    #[test]
    fn error_message_with_ext_ack_parses() {
        // An NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK + NETLINK_EXT_ACK.
        let mut b = MsgBuf::new();
        let m = b.begin(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 42);
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        // echoed request header: len 100, type 0xa06, flags 5, seq 42, pid 0
        hdr.extend_from_slice(&100u32.to_ne_bytes());
        hdr.extend_from_slice(&0x0a06u16.to_ne_bytes());
        hdr.extend_from_slice(&5u16.to_ne_bytes());
        hdr.extend_from_slice(&42u32.to_ne_bytes());
        hdr.extend_from_slice(&0u32.to_ne_bytes());
        b.put_header(&hdr);
        b.attr_str(NLMSGERR_ATTR_MSG, "no such set");
        b.attr_u32(NLMSGERR_ATTR_OFFS, 36);
        b.end(m).unwrap();
        let bytes = b.into_bytes();
        let msg = Messages::new(&bytes).next().unwrap().unwrap();
        let e = parse_error(&msg).unwrap();
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.request.ty, 0x0a06);
        assert_eq!(e.request.seq, 42);
        assert_eq!(e.message.as_deref(), Some("no such set"));
        assert_eq!(e.offset, Some(36));
        assert_eq!(
            e.to_string(),
            "ENOENT: No such file or directory (no such set)"
        );
    }

    #[test]
    fn done_carries_the_dump_status() {
        let done = |payload: &[u8]| {
            let mut b = MsgBuf::new();
            let m = b.begin(crate::nl::wire::NLMSG_DONE, 2, 7);
            b.put_header(payload);
            b.end(m).unwrap();
            b.into_bytes()
        };
        for ok in [done(&[]), done(&0i32.to_ne_bytes()), done(&1234i32.to_ne_bytes())] {
            assert!(done_result(&Messages::new(&ok).next().unwrap().unwrap()).is_ok());
        }
        let bytes = done(&(-libc::ENOENT).to_ne_bytes());
        match done_result(&Messages::new(&bytes).next().unwrap().unwrap()) {
            Err(NlError::Kernel(e)) => assert_eq!((e.errno, e.request.seq), (libc::ENOENT, 7)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        assert!(Messages::new(&[1, 2, 3]).next().unwrap().is_err());
        let bad = [200u8, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(Messages::new(&bad).next().unwrap().is_err());
        assert!(Attrs::new(&[50, 0, 1, 0, 0, 0]).next().unwrap().is_err());
    }
}
