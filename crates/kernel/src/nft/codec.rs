//! The encoding details that the writers (apply, set updates, tracing) and the reader share: nft's
//! datatype numbers and byte order of set keys, the set flags, libnftnl's user-data TLVs (comments,
//! the key byte order, the interval-open flag) and the element attributes of a lookup.

use ruleset::{KeyType, Set};

use super::consts::*;
use crate::nl::MsgBuf;

/// libnftnl's user-data TLV holding a comment: type, length (with the NUL), text, NUL.
pub(crate) fn udata_comment(ty: u8, comment: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(comment.len() + 3);
    v.push(ty);
    v.push((comment.len() + 1) as u8);
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    v
}

/// libnftnl's user-data TLV holding a u32 in host byte order.
pub(crate) fn udata_u32(ty: u8, value: u32) -> Vec<u8> {
    let mut v = vec![ty, 4];
    v.extend_from_slice(&value.to_ne_bytes());
    v
}

/// The comment in libnftnl's user-data TLVs (type 0, as tables and rules carry it), if there is
/// one.
pub(crate) fn udata_comment_of(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            let v = value.split(|&b| b == 0).next().unwrap_or(&[]);
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

/// nft's datatype number for a key type (stored as NFTA_SET_KEY_TYPE; nft lists it back by it).
pub(crate) fn key_type_id(k: KeyType) -> u32 {
    match k {
        KeyType::Ipv4Addr => TYPE_IPADDR,
        KeyType::Ipv6Addr => TYPE_IP6ADDR,
        KeyType::InetService => TYPE_INET_SERVICE,
        KeyType::Uid => TYPE_UID,
        KeyType::Gid => TYPE_GID,
        KeyType::Icmpv6Type => TYPE_ICMPV6_TYPE,
    }
}

/// The inverse of [`key_type_id`].
pub(crate) fn key_type_from_id(id: u32) -> Option<KeyType> {
    [
        KeyType::Ipv4Addr,
        KeyType::Ipv6Addr,
        KeyType::InetService,
        KeyType::Uid,
        KeyType::Gid,
        KeyType::Icmpv6Type,
    ]
    .into_iter()
    .find(|k| key_type_id(*k) == id)
}

/// nft's byte order of the key: uid and gid are host-order integers, the rest network order.
pub(crate) fn key_byteorder(k: KeyType) -> u32 {
    match k {
        KeyType::Uid | KeyType::Gid => BYTEORDER_HOST_ENDIAN,
        _ => BYTEORDER_BIG_ENDIAN,
    }
}

/// The interval and timeout bits of a set's `NFTA_SET_FLAGS` (what verification compares). A
/// dynamic set with a default timeout has the timeout flag too, as nft gives it for `timeout T`.
pub(crate) fn set_flags(set: &Set) -> u32 {
    let mut flags = 0;
    if set.interval {
        flags |= NFT_SET_INTERVAL;
    }
    if set.timeout || set.dynamic.is_some_and(|d| d.timeout_ms.is_some()) {
        flags |= NFT_SET_TIMEOUT;
    }
    flags
}

/// `NFTA_SET_FLAGS` as sent: [`set_flags`] and, for a meter's set, `flags dynamic`.
pub(crate) fn set_flags_sent(set: &Set) -> u32 {
    let eval = if set.dynamic.is_some() {
        NFT_SET_EVAL
    } else {
        0
    };
    set_flags(set) | eval
}

/// Writes `NFTA_SET_ELEM_LIST_ELEMENTS`: each element's interval-end flag and key and, when
/// `adding` (not looking up), its timeout and nft's "interval open" user data. The attribute order
/// is libnftnl's: flags, timeout, key, user data.
pub(crate) fn put_element_list<'a>(
    b: &mut MsgBuf,
    elems: impl IntoIterator<Item = &'a KernelElem>,
    adding: bool,
) {
    let list = b.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
    for (i, e) in elems.into_iter().enumerate() {
        // libnftnl numbers the list entries 1, 2, ... (the kernel ignores the type).
        let el = b.begin_nested(i as u16 + 1);
        if e.end {
            b.attr_be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
        if let (Some(ms), true) = (e.timeout_ms, adding) {
            b.attr_be64(NFTA_SET_ELEM_TIMEOUT, ms);
        }
        let k = b.begin_nested(NFTA_SET_ELEM_KEY);
        b.attr(NFTA_DATA_VALUE, &e.key);
        b.end_nested(k);
        if e.open && adding {
            b.attr(
                NFTA_SET_ELEM_USERDATA,
                &udata_u32(NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_SET_ELEM_F_INTERVAL_OPEN),
            );
        }
        if let (Some(c), true) = (&e.comment, adding) {
            b.attr(
                NFTA_SET_ELEM_USERDATA,
                &udata_comment(NFTNL_UDATA_SET_ELEM_COMMENT, c),
            );
        }
        b.end_nested(el);
    }
    b.end_nested(list);
}

/// One element as the kernel stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelElem {
    pub key: Vec<u8>,
    /// Closes an interval (`NFT_SET_ELEM_INTERVAL_END`).
    pub end: bool,
    /// An interval running to the key type's maximum (nft's INTERVAL_OPEN user data).
    pub open: bool,
    /// `NFTA_SET_ELEM_TIMEOUT` (elements of timeout sets).
    pub timeout_ms: Option<u64>,
    /// The element's comment (libnftnl's comment TLV in its user data).
    pub comment: Option<String>,
}

/// `x + 1` for the unsigned key types (never called on the maximum).
pub(crate) trait Inc {
    fn inc(self) -> Self;
}
impl Inc for u16 {
    fn inc(self) -> Self {
        self + 1
    }
}
impl Inc for u32 {
    fn inc(self) -> Self {
        self + 1
    }
}
impl Inc for u128 {
    fn inc(self) -> Self {
        self + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udata_comment_is_libnftnl_tlv() {
        assert_eq!(udata_comment(0, "dns"), b"\x00\x04dns\x00");
    }

    #[test]
    fn udata_comment_reads_back() {
        assert_eq!(
            udata_comment_of(&udata_comment(0, "dns")).as_deref(),
            Some("dns")
        );
        // After another TLV, and none at all.
        let mut v = udata_u32(NFTNL_UDATA_SET_KEYBYTEORDER + 1, 7);
        v.extend_from_slice(&udata_comment(0, "web"));
        assert_eq!(udata_comment_of(&v).as_deref(), Some("web"));
        assert_eq!(udata_comment_of(&udata_u32(1, 7)), None);
        assert_eq!(udata_comment_of(&[0, 9, b'x']), None, "a cut TLV");
    }
}
