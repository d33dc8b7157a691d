//! nfnetlink / nf_tables numbers, named as in `linux/netfilter/nfnetlink.h` and `nf_tables.h`.
//!
//! Only the numbers leash uses are listed. They are kernel ABI and never change meaning.

// A few numbers are listed for completeness of a group (e.g. all message types) and not used.
#![allow(dead_code)]

// --- nfnetlink -------------------------------------------------------------------------------

/// nfnetlink subsystem id of nf_tables; the high byte of every nf_tables message type.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Opens a batch (sent with `res_id` = [`NFNL_SUBSYS_NFTABLES`] in the `nfgenmsg`).
pub const NFNL_MSG_BATCH_BEGIN: u16 = crate::nl::NLMSG_MIN_TYPE;
/// `NFNL_BATCH_GENID` (in BATCH_BEGIN, big-endian u32): the kernel refuses the batch with
/// `ERESTART` unless the ruleset generation is still this one.
pub const NFNL_BATCH_GENID: u16 = 1;
/// Closes a batch; the kernel commits everything between BEGIN and END, or nothing.
pub const NFNL_MSG_BATCH_END: u16 = crate::nl::NLMSG_MIN_TYPE + 1;
/// `nfgenmsg.version`.
pub const NFNETLINK_V0: u8 = 0;
/// Length of `struct nfgenmsg` (family u8, version u8, res_id be16).
pub const NFGENMSG_LEN: usize = 4;

// --- protocol families (nfgenmsg.nfgen_family) and meta nfproto values --------------------------

pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

// --- message types (low byte) ------------------------------------------------------------------

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_DELCHAIN: u16 = 5;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_NEWSET: u16 = 9;
pub const NFT_MSG_GETSET: u16 = 10;
pub const NFT_MSG_DELSET: u16 = 11;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_GETSETELEM: u16 = 13;
pub const NFT_MSG_DELSETELEM: u16 = 14;
pub const NFT_MSG_NEWGEN: u16 = 15;
pub const NFT_MSG_GETGEN: u16 = 16;
/// A trace event (kernel to listeners of [`NFNLGRP_NFTRACE`] only).
pub const NFT_MSG_TRACE: u16 = 17;

/// nfnetlink multicast group of nf_tables trace events (`enum nfnetlink_groups`).
pub const NFNLGRP_NFTRACE: u32 = 9;

/// `NFTA_GEN_ID`: the ruleset generation in a NEWGEN reply (big-endian u32).
pub const NFTA_GEN_ID: u16 = 1;

/// Full netlink message type of an nf_tables message.
pub const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// Human name of an nf_tables message type (low byte), for error messages.
pub fn nft_msg_name(msg: u16) -> &'static str {
    match msg {
        NFT_MSG_NEWTABLE => "NEWTABLE",
        NFT_MSG_GETTABLE => "GETTABLE",
        NFT_MSG_DELTABLE => "DELTABLE",
        NFT_MSG_NEWCHAIN => "NEWCHAIN",
        NFT_MSG_GETCHAIN => "GETCHAIN",
        NFT_MSG_DELCHAIN => "DELCHAIN",
        NFT_MSG_NEWRULE => "NEWRULE",
        NFT_MSG_GETRULE => "GETRULE",
        NFT_MSG_DELRULE => "DELRULE",
        NFT_MSG_NEWSET => "NEWSET",
        NFT_MSG_GETSET => "GETSET",
        NFT_MSG_DELSET => "DELSET",
        NFT_MSG_NEWSETELEM => "NEWSETELEM",
        NFT_MSG_GETSETELEM => "GETSETELEM",
        NFT_MSG_DELSETELEM => "DELSETELEM",
        NFT_MSG_GETGEN => "GETGEN",
        _ => "nf_tables message",
    }
}

// --- table -------------------------------------------------------------------------------------

pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_TABLE_FLAGS: u16 = 2;
pub const NFTA_TABLE_USE: u16 = 3;
pub const NFTA_TABLE_HANDLE: u16 = 4;
pub const NFTA_TABLE_USERDATA: u16 = 6;

// --- chain -------------------------------------------------------------------------------------

pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_HANDLE: u16 = 2;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_POLICY: u16 = 5;
pub const NFTA_CHAIN_USE: u16 = 6;
pub const NFTA_CHAIN_TYPE: u16 = 7;
pub const NFTA_CHAIN_FLAGS: u16 = 10;

pub const NFTA_HOOK_HOOKNUM: u16 = 1;
pub const NFTA_HOOK_PRIORITY: u16 = 2;

/// `NF_INET_LOCAL_OUT`: the output hook of the inet families.
pub const NF_INET_LOCAL_OUT: u32 = 3;
/// `NF_INET_FORWARD`: packets routed through the host.
pub const NF_INET_FORWARD: u32 = 2;
// Chain type names ("filter", "nat") are `ruleset::ChainType::nft_name`.

// --- verdicts (netfilter.h) --------------------------------------------------------------------

pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;
pub const NF_STOLEN: u32 = 2;
pub const NF_QUEUE: u32 = 3;
pub const NF_REPEAT: u32 = 4;
/// The low byte of a verdict is the verdict; `NF_QUEUE` carries the queue number above it.
pub const NF_VERDICT_MASK: u32 = 0xff;
// nf_tables' own verdicts (`enum nft_verdicts`): negative, as i32.
pub const NFT_CONTINUE: i32 = -1;
pub const NFT_BREAK: i32 = -2;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

// --- rule --------------------------------------------------------------------------------------

pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_HANDLE: u16 = 3;
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_RULE_USERDATA: u16 = 7;

/// Element of a list attribute (expressions of a rule, elements of a set).
pub const NFTA_LIST_ELEM: u16 = 1;

pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;

// --- data --------------------------------------------------------------------------------------

pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;
/// The target chain of a jump or goto verdict.
pub const NFTA_VERDICT_CHAIN: u16 = 2;

/// The verdict register.
pub const NFT_REG_VERDICT: u32 = 0;
/// The first 16-byte data register; nft uses it for every load in rules like leash's.
pub const NFT_REG_1: u32 = 1;

// --- expressions -------------------------------------------------------------------------------

pub const NFTA_META_DREG: u16 = 1;
pub const NFTA_META_KEY: u16 = 2;
/// The source register of a `meta ... set` statement.
pub const NFTA_META_SREG: u16 = 3;
pub const NFT_META_MARK: u32 = 3;
pub const NFT_META_OIF: u32 = 5;
pub const NFT_META_IIFNAME: u32 = 6;
pub const NFT_META_OIFNAME: u32 = 7;
pub const NFT_META_SKUID: u32 = 10;
pub const NFT_META_SKGID: u32 = 11;
/// The packet's trace flag (`meta nftrace`): while set, nf_tables reports every rule the packet
/// matches, and every chain policy it meets, to [`NFNLGRP_NFTRACE`].
pub const NFT_META_NFTRACE: u32 = 12;
pub const NFT_META_NFPROTO: u32 = 15;
pub const NFT_META_L4PROTO: u32 = 16;
/// `meta time`: the packet's wall-clock time, nanoseconds since the epoch (a host-order u64).
pub const NFT_META_TIME_NS: u32 = 30;
/// `meta day`: the weekday in UTC, 0 = Sunday (one byte).
pub const NFT_META_TIME_DAY: u32 = 31;
/// `meta hour`: seconds since midnight UTC (a host-order u32).
pub const NFT_META_TIME_HOUR: u32 = 32;

pub const NFTA_CMP_SREG: u16 = 1;
pub const NFTA_CMP_OP: u16 = 2;
pub const NFTA_CMP_DATA: u16 = 3;
pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;
pub const NFT_CMP_LT: u32 = 2;
pub const NFT_CMP_LTE: u32 = 3;
pub const NFT_CMP_GT: u32 = 4;
pub const NFT_CMP_GTE: u32 = 5;

/// `range` expression: the register is (not) within FROM..=TO, compared bytewise (memcmp), so
/// the bounds must be big-endian for the order to be numeric.
pub const NFTA_RANGE_SREG: u16 = 1;
pub const NFTA_RANGE_OP: u16 = 2;
pub const NFTA_RANGE_FROM_DATA: u16 = 3;
pub const NFTA_RANGE_TO_DATA: u16 = 4;
pub const NFT_RANGE_EQ: u32 = 0;
pub const NFT_RANGE_NEQ: u32 = 1;

/// `byteorder` expression: converts a register between host and network order (nft puts one
/// before an ordered comparison of a host-order value, as cmp and range compare bytewise).
pub const NFTA_BYTEORDER_SREG: u16 = 1;
pub const NFTA_BYTEORDER_DREG: u16 = 2;
pub const NFTA_BYTEORDER_OP: u16 = 3;
pub const NFTA_BYTEORDER_LEN: u16 = 4;
pub const NFTA_BYTEORDER_SIZE: u16 = 5;
pub const NFT_BYTEORDER_NTOH: u32 = 0;
pub const NFT_BYTEORDER_HTON: u32 = 1;

pub const NFTA_PAYLOAD_DREG: u16 = 1;
pub const NFTA_PAYLOAD_BASE: u16 = 2;
pub const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub const NFTA_PAYLOAD_LEN: u16 = 4;
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

pub const NFTA_LOOKUP_SET: u16 = 1;
pub const NFTA_LOOKUP_SREG: u16 = 2;
pub const NFTA_LOOKUP_SET_ID: u16 = 4;

pub const NFTA_CT_DREG: u16 = 1;
pub const NFTA_CT_KEY: u16 = 2;
pub const NFT_CT_STATE: u32 = 0;
/// `NFT_CT_DIRECTION`: the packet's direction in its connection (one byte, `IP_CT_DIR_*`).
pub const NFT_CT_DIRECTION: u32 = 1;
/// `IP_CT_DIR_REPLY`.
pub const IP_CT_DIR_REPLY: u8 = 1;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED)`.
pub const NF_CT_STATE_ESTABLISHED_BIT: u32 = 1 << 1;
/// `NF_CT_STATE_BIT(IP_CT_RELATED)`.
pub const NF_CT_STATE_RELATED_BIT: u32 = 1 << 2;

pub const NFTA_BITWISE_SREG: u16 = 1;
pub const NFTA_BITWISE_DREG: u16 = 2;
pub const NFTA_BITWISE_LEN: u16 = 3;
pub const NFTA_BITWISE_MASK: u16 = 4;
pub const NFTA_BITWISE_XOR: u16 = 5;

pub const NFTA_COUNTER_BYTES: u16 = 1;
pub const NFTA_COUNTER_PACKETS: u16 = 2;

pub const NFTA_LOG_GROUP: u16 = 1;
pub const NFTA_LOG_PREFIX: u16 = 2;
/// `NF_LOG_PREFIXLEN` including the NUL.
pub const NF_LOG_PREFIXLEN: usize = 128;

pub const NFTA_REJECT_TYPE: u16 = 1;
pub const NFTA_REJECT_ICMP_CODE: u16 = 2;
pub const NFT_REJECT_TCP_RST: u32 = 1;
pub const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
pub const NFT_REJECT_ICMPX_ADMIN_PROHIBITED: u8 = 3;

/// `limit` expression (`limit rate N/UNIT burst B packets`).
pub const NFTA_LIMIT_RATE: u16 = 1;
/// The unit in seconds (be64).
pub const NFTA_LIMIT_UNIT: u16 = 2;
pub const NFTA_LIMIT_BURST: u16 = 3;
pub const NFTA_LIMIT_TYPE: u16 = 4;
pub const NFTA_LIMIT_FLAGS: u16 = 5;
/// `NFT_LIMIT_PKTS`: the rate counts packets (`NFT_LIMIT_PKT_BYTES` would count bytes).
pub const NFT_LIMIT_PKTS: u32 = 0;
/// `NFT_LIMIT_F_INV`: `limit rate over`, which leash never uses.
pub const NFT_LIMIT_F_INV: u32 = 1;

/// `connlimit` expression (`ct count N`).
pub const NFTA_CONNLIMIT_COUNT: u16 = 1;
pub const NFTA_CONNLIMIT_FLAGS: u16 = 2;
/// `NFT_CONNLIMIT_F_INV`: `ct count over N`, which leash never uses.
pub const NFT_CONNLIMIT_F_INV: u32 = 1;

/// `socket` expression (`socket cgroupv2 level L`).
pub const NFTA_SOCKET_KEY: u16 = 1;
pub const NFTA_SOCKET_DREG: u16 = 2;
pub const NFTA_SOCKET_LEVEL: u16 = 3;
/// The id (inode number) of the socket's cgroup v2 ancestor at the given level (a host-order u64).
pub const NFT_SOCKET_CGROUPV2: u32 = 3;
/// Deepest level the kernel accepts for `socket cgroupv2` (it answers EOPNOTSUPP above).
pub const NFT_SOCKET_MAX_LEVEL: u32 = 255;

/// `dynset` expression (`add @set { KEY STMT }`, `update @set { KEY STMT }`).
pub const NFTA_DYNSET_SET_NAME: u16 = 1;
pub const NFTA_DYNSET_SET_ID: u16 = 2;
pub const NFTA_DYNSET_OP: u16 = 3;
pub const NFTA_DYNSET_SREG_KEY: u16 = 4;
pub const NFTA_DYNSET_SREG_DATA: u16 = 5;
/// A timeout for elements this statement adds; nft sends it only for `add @s { KEY timeout T }`.
pub const NFTA_DYNSET_TIMEOUT: u16 = 6;
/// One stateful expression given to each element (`NAME` + `DATA`, not a list); nft 1.0.6 uses
/// it for a single statement and `NFTA_DYNSET_EXPRESSIONS` only for several.
pub const NFTA_DYNSET_EXPR: u16 = 7;
pub const NFTA_DYNSET_FLAGS: u16 = 9;
pub const NFTA_DYNSET_EXPRESSIONS: u16 = 10;
/// Adds the element if missing; an existing one keeps its expiry.
pub const NFT_DYNSET_OP_ADD: u32 = 0;
/// Adds the element if missing, and restarts an existing one's timeout.
pub const NFT_DYNSET_OP_UPDATE: u32 = 1;

pub const NFTA_IMMEDIATE_DREG: u16 = 1;
pub const NFTA_IMMEDIATE_DATA: u16 = 2;

pub const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
pub const NFTA_REDIR_REG_PROTO_MAX: u16 = 2;
pub const NFTA_REDIR_FLAGS: u16 = 3;
/// `NF_NAT_RANGE_PROTO_SPECIFIED` (`linux/netfilter/nf_nat.h`): the redirect names a port.
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;

// --- trace events (`enum nft_trace_attributes`, `enum nft_trace_types`) ------------------------

pub const NFTA_TRACE_TABLE: u16 = 1;
pub const NFTA_TRACE_CHAIN: u16 = 2;
/// be64; absent in policy events and in the implicit return at a chain's end.
pub const NFTA_TRACE_RULE_HANDLE: u16 = 3;
pub const NFTA_TRACE_TYPE: u16 = 4;
/// Nested: `NFTA_VERDICT_CODE` and, for jump and goto, `NFTA_VERDICT_CHAIN`.
pub const NFTA_TRACE_VERDICT: u16 = 5;
/// A u32 in host order (the kernel's `nla_put_u32`), the same for every event of one packet.
pub const NFTA_TRACE_ID: u16 = 6;
pub const NFTA_TRACE_LL_HEADER: u16 = 7;
/// Up to 40 bytes from the network header (sent with the first event of a base chain only).
pub const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
/// Up to 20 bytes from the transport header (likewise).
pub const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
pub const NFTA_TRACE_IIF: u16 = 10;
pub const NFTA_TRACE_IIFTYPE: u16 = 11;
pub const NFTA_TRACE_OIF: u16 = 12;
pub const NFTA_TRACE_OIFTYPE: u16 = 13;
pub const NFTA_TRACE_MARK: u16 = 14;
/// The packet's family (be32): `NFPROTO_IPV4` or `NFPROTO_IPV6` in an inet table.
pub const NFTA_TRACE_NFPROTO: u16 = 15;
/// The chain policy (be32 `NF_ACCEPT`/`NF_DROP`) in a policy event.
pub const NFTA_TRACE_POLICY: u16 = 16;

pub const NFT_TRACETYPE_UNSPEC: u32 = 0;
pub const NFT_TRACETYPE_POLICY: u32 = 1;
pub const NFT_TRACETYPE_RETURN: u32 = 2;
pub const NFT_TRACETYPE_RULE: u32 = 3;

// --- sets --------------------------------------------------------------------------------------

pub const NFTA_SET_TABLE: u16 = 1;
pub const NFTA_SET_NAME: u16 = 2;
pub const NFTA_SET_FLAGS: u16 = 3;
pub const NFTA_SET_KEY_TYPE: u16 = 4;
pub const NFTA_SET_KEY_LEN: u16 = 5;
/// Nested set description; leash sends only [`NFTA_SET_DESC_SIZE`] (`size N`).
pub const NFTA_SET_DESC: u16 = 9;
pub const NFTA_SET_ID: u16 = 10;
/// A default timeout in milliseconds (be64) for elements added without one: nft sends it for
/// `timeout T` in the set; leash does for dynamic sets with a timeout.
pub const NFTA_SET_TIMEOUT: u16 = 11;
pub const NFTA_SET_USERDATA: u16 = 13;

/// The most elements the set may hold (be32), in [`NFTA_SET_DESC`].
pub const NFTA_SET_DESC_SIZE: u16 = 1;

pub const NFT_SET_INTERVAL: u32 = 0x4;
/// Elements may carry a timeout (`flags timeout`).
pub const NFT_SET_TIMEOUT: u32 = 0x10;
/// `flags dynamic`: the packet path adds elements (dynset); nft sets it for any set a rule
/// updates, declared or not.
pub const NFT_SET_EVAL: u32 = 0x20;

pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;

pub const NFTA_SET_ELEM_KEY: u16 = 1;
pub const NFTA_SET_ELEM_FLAGS: u16 = 3;
/// The element's timeout in milliseconds (big-endian u64).
pub const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
/// Milliseconds until the element expires (big-endian u64); on an existing element it restarts
/// the countdown (kernel >= 6.10, "set element timeout update support").
pub const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
pub const NFTA_SET_ELEM_USERDATA: u16 = 6;
/// The element closes an interval (its key is the first value past the range).
pub const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

/// Longest table, chain or set name the kernel accepts (`NFT_NAME_MAXLEN` - 1).
pub const NFT_NAME_MAXLEN: usize = 255;

// --- nft's datatype numbers (nftables `enum datatypes`), stored as NFTA_SET_KEY_TYPE ------------

pub const TYPE_IPADDR: u32 = 7;
pub const TYPE_IP6ADDR: u32 = 8;
pub const TYPE_INET_SERVICE: u32 = 13;
pub const TYPE_UID: u32 = 24;
pub const TYPE_GID: u32 = 25;
pub const TYPE_ICMPV6_TYPE: u32 = 29;

// --- libnftnl user data (TLV: u8 type, u8 length, value) ---------------------------------------

/// `NFTNL_UDATA_TABLE_COMMENT`.
pub const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;
/// `NFTNL_UDATA_RULE_COMMENT`.
pub const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
/// `NFTNL_UDATA_SET_KEYBYTEORDER`: nft's `enum byteorder` of the key, as a host-order u32.
pub const NFTNL_UDATA_SET_KEYBYTEORDER: u8 = 0;
/// `NFTNL_UDATA_SET_ELEM_COMMENT` in an element's user data (nft's `comment "..."` on an element).
pub const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;
/// `NFTNL_UDATA_SET_ELEM_FLAGS` in an element's user data.
pub const NFTNL_UDATA_SET_ELEM_FLAGS: u8 = 1;
/// `NFTNL_SET_ELEM_F_INTERVAL_OPEN`: the interval runs to the key type's maximum (no end element).
pub const NFTNL_SET_ELEM_F_INTERVAL_OPEN: u32 = 0x1;
/// nft's `BYTEORDER_HOST_ENDIAN` and `BYTEORDER_BIG_ENDIAN`.
pub const BYTEORDER_HOST_ENDIAN: u32 = 1;
pub const BYTEORDER_BIG_ENDIAN: u32 = 2;
/// `NFTNL_UDATA_COMMENT_MAXLEN`, including the NUL.
pub const NFTNL_UDATA_COMMENT_MAXLEN: usize = 128;
