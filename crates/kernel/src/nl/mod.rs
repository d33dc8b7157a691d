//! A small, protocol-neutral netlink layer: raw sockets, a message builder and an attribute parser.
//!
//! Why hand-written: leash must put one whole nftables table into ONE atomic nfnetlink batch and
//! control every byte of it. The netlink-packet-netfilter crate models only a few nf_tables
//! expressions (no `ct`, `counter`, `log`, `reject`, `range`, no set-element timeouts) and builds
//! messages one at a time, so we could not reproduce nft's bytecode or its batch exactly. The
//! protocol itself is simple (a 16-byte header, 4-byte aligned TLV attributes), so a few hundred
//! lines over `libc` give us exact control with no dependency beyond libc. The same layer serves
//! rtnetlink (links, addresses and routes in test namespaces) because nothing here knows about any
//! particular netlink family: family headers and attribute numbers belong to the callers.
//!
//! Layout reminders (see `netlink(7)`):
//! - a message is `nlmsghdr` (len, type, flags, seq, pid), then a family header (e.g. `nfgenmsg`,
//!   `ifinfomsg`), then attributes, all padded to 4 bytes;
//! - an attribute is `nlattr` (u16 len incl. the 4-byte header, u16 type), then its payload padded
//!   to 4 bytes; a nested attribute carries `NLA_F_NESTED` in its type and holds attributes;
//! - the kernel answers a request flagged `NLM_F_ACK` with an `NLMSG_ERROR` message whose error
//!   code is 0 (an ack) or a negative errno, optionally followed by extended-ack attributes.

mod build;
mod error;
mod parse;
mod socket;
mod wire;

pub use build::{MsgBuf, MsgStart, NestStart};
pub use error::{KernelError, NlError, errno_name, errno_text};
pub use parse::{Attr, Attrs, Message, Messages, ack_result, done_result, parse_error};
pub use socket::{DUMP_ATTEMPTS, Socket, retry_interrupted};
pub use wire::*;
