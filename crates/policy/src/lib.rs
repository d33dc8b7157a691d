//! The leash policy language: parsing, validation, lints and `explain`, all pure (no I/O, no clock).
//!
//! Text goes in (`load`), a validated [`Policy`] or a list of [`Diagnostic`]s comes out. Names of users
//! and groups are resolved through the [`Resolver`] the caller hands in, so this crate never reads
//! `/etc/passwd` itself.

pub mod diag;
pub mod dns;
pub mod explain;
pub mod forward;
pub mod geo;
pub mod lint;
pub mod model;
pub mod parse;
pub mod ranges;
pub mod setfile;
pub mod time;
pub mod resolver;

pub use diag::{Diagnostic, Severity};
pub use dns::NameDecision;
pub use explain::{Connection, Decider, Explanation, Forwarded, Miss, explain, explain_with};
pub use model::*;
pub use parse::load;
pub use resolver::{Resolver, StaticResolver};
