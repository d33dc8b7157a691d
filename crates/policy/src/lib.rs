//! The leash policy language: parsing, validation, lints and `explain`, all pure (no I/O, no clock).
//!
//! Text goes in (`load`), a validated [`Policy`] or a list of [`Diagnostic`]s comes out. Names of users
//! and groups are resolved through the [`Resolver`] the caller hands in, so this crate never reads
//! `/etc/passwd` itself.

pub mod diag;
pub mod dns;
pub mod explain;
pub mod lint;
pub mod model;
pub mod parse;
pub mod ranges;
pub mod resolver;

pub use diag::{Diagnostic, Severity};
pub use dns::{Bypass, DnsConfig, NameDecision};
pub use explain::{Connection, Decider, Explanation, Miss, explain, explain_with};
pub use model::*;
pub use parse::load;
pub use resolver::StaticResolver;

/// Resolves user and group names to numeric ids. The binary implements it over the system's user
/// database; tests implement it over a fixed table.
pub trait Resolver {
    fn user(&self, name: &str) -> Option<u32>;
    fn group(&self, name: &str) -> Option<u32>;
    /// The primary group of a user id, used when an expectation names a user but no group.
    fn primary_group(&self, uid: u32) -> Option<u32>;
}
