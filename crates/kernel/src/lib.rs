//! The only code that talks to the kernel: netlink, leash's nftables table, sockets and
//! connection tracking, and namespaces for tests.

pub mod conntrack;
pub mod firewall;
pub mod netns;
pub mod nflog;
pub mod nft;
pub mod nl;
pub mod rawsock;
pub mod rtnl;
pub mod sockdiag;
#[cfg(feature = "testutil")]
pub mod testutil;

pub use firewall::{Firewall, Netlink};
pub use nft::trace;
pub use nft::{
    ApplyOptions, ApplyReport, ChainStatus, Counter, ElementCount, Error, ReplaceOptions,
    Refresh, ReplaceReport, RuleStatus, SetContents, SetElement, SetStatus, SetWriter, TableInfo,
    TableStatus, TimedAnswer, TimedElement, probe_refresh, apply, disable, encode_apply_batch, replace_set_elements,
    element_name, set_elements, status, status_with, table_comment, timed_elements, verify,
};
