//! The netlink wire format: protocol numbers, message and attribute constants, alignment and the
//! message header (`linux/netlink.h`).

/// Netlink protocol numbers for [`crate::nl::Socket::open`].
pub const NETLINK_ROUTE: i32 = libc::NETLINK_ROUTE;
pub const NETLINK_NETFILTER: i32 = libc::NETLINK_NETFILTER;

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Length of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;
/// Everything in a netlink message is aligned to this many bytes.
pub const NLMSG_ALIGNTO: usize = 4;
/// Largest payload an attribute can hold (its u16 length includes the 4-byte header).
pub const NLA_MAX_PAYLOAD: usize = u16::MAX as usize - NLA_HDRLEN;

// Control message types (`linux/netlink.h`).
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;
/// Types below this are reserved for control messages.
pub const NLMSG_MIN_TYPE: u16 = 0x10;

// Flags of every request.
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_ECHO: u16 = 0x08;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
// Flags of GET requests.
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
// Flags of NEW requests.
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
// Flags of NLMSG_ERROR replies.
/// The error message holds only the header of the failed request, not its payload.
pub const NLM_F_CAPPED: u16 = 0x100;
/// Extended-ack attributes follow the (possibly capped) failed request.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

// Attribute type flags.
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// Socket options at level SOL_NETLINK.
pub const SOL_NETLINK: i32 = 270;
/// Error messages carry only the header of the failed request (no echo of a 40 MB batch).
pub const NETLINK_CAP_ACK: i32 = 10;
/// Error messages carry extended-ack attributes (a text message and the offending offset).
pub const NETLINK_EXT_ACK: i32 = 11;
/// The kernel checks dump requests strictly (rtnetlink filters dumps by the header fields).
pub const NETLINK_GET_STRICT_CHK: i32 = 12;

// Extended-ack attributes (`enum nlmsgerr_attrs`).
pub const NLMSGERR_ATTR_MSG: u16 = 1;
pub const NLMSGERR_ATTR_OFFS: u16 = 2;
pub const NLMSGERR_ATTR_COOKIE: u16 = 3;
pub const NLMSGERR_ATTR_POLICY: u16 = 4;
pub const NLMSGERR_ATTR_MISS_TYPE: u16 = 5;
pub const NLMSGERR_ATTR_MISS_NEST: u16 = 6;

/// Rounds `len` up to the netlink alignment.
pub const fn align(len: usize) -> usize {
    (len + NLMSG_ALIGNTO - 1) & !(NLMSG_ALIGNTO - 1)
}

/// `struct nlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NlMsgHdr {
    pub len: u32,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

impl NlMsgHdr {
    /// Parses the first 16 bytes of `b` (which must hold them).
    pub fn parse(b: &[u8]) -> Option<NlMsgHdr> {
        if b.len() < NLMSG_HDRLEN {
            return None;
        }
        Some(NlMsgHdr {
            len: ne_u32(&b[0..4]),
            ty: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: ne_u32(&b[8..12]),
            pid: ne_u32(&b[12..16]),
        })
    }
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_rounds_up_to_four() {
        assert_eq!(align(0), 0);
        assert_eq!(align(1), 4);
        assert_eq!(align(4), 4);
        assert_eq!(align(5), 8);
    }
}
