//! leash's nftables table over nfnetlink: apply (one atomic batch, then read back and verify),
//! disable, status, set updates, the DNS forwarder's element writes, and tracing.
//!
//! Everything here acts on the network namespace of the calling thread (netlink sockets belong to
//! the namespace of the thread that opens them) and on table `inet leash` only: every message
//! names family inet and that table.
//!
//! The modules, from the bottom up: `consts` (nf_tables numbers), `error`, `codec` (what writer
//! and reader share: key types, set flags, user data, element attributes), `validate`, `expr`
//! (statements to expressions), `batch` (framing, sending, acks), `bulk` (large element lists),
//! `encode` (a table into one batch), `status` (the table as read back), `read` (the only reader),
//! `apply`, `probe` (how this kernel refreshes element timeouts), `elements` (the forwarder's
//! writer) and `trace`; `compare` checks rules read back against what was sent.

mod apply;
mod batch;
mod bulk;
mod codec;
mod compare;
mod consts;
mod elements;
mod encode;
mod error;
mod expr;
mod probe;
mod read;
mod status;
pub mod trace;
mod validate;

pub use apply::{
    ApplyReport, ReplaceReport, apply, disable, encode_apply_batch, replace_set_elements, verify,
};
pub use bulk::{ReplaceOptions, SetContents};
pub use elements::{SetWriter, TimedElement};
pub use probe::{Refresh, probe_refresh};
pub use encode::ApplyOptions;
pub use error::Error;
pub use read::{element_name, set_elements, status, status_with, table_comment, timed_elements};
pub use status::{
    COUNT_LIMIT, ChainStatus, Counter, ElementCount, RuleStatus, SetElement, SetStatus, TableInfo,
    TableStatus, TimedAnswer,
};
