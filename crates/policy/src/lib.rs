//! The leash policy language: parsing, validation, lints and `explain`, all pure (no I/O, no clock).
//!
//! Text goes in (`load`), a validated [`Policy`] or a list of [`Diagnostic`]s comes out. Names of users
//! and groups are resolved through the [`Resolver`] the caller hands in, so this crate never reads
//! `/etc/passwd` itself.

pub mod diag;
pub mod dns;
pub mod explain;
pub mod geo;
pub mod lint;
pub mod model;
pub mod parse;
pub mod ranges;
pub mod setfile;
pub mod time;
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
    /// The contents of a file the policy names (a `[[set]]` file, the country database), as
    /// written in the policy: the binary resolves it relative to the policy's directory.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        Err(format!("{path}: files cannot be read here"))
    }
    /// Where nft finds the cgroup v2 hierarchy, relative to `/sys/fs/cgroup`: `Some("")` on a
    /// cgroup2-only host, `Some("unified")` on a hybrid one, `None` when cgroup v2 is not mounted.
    fn cgroup2_prefix(&self) -> Option<String> {
        None
    }
    /// The kernel's id (the inode number) of a cgroup v2 directory given relative to the cgroup v2
    /// root, or `None` when it does not exist.
    fn cgroup_id(&self, _path: &str) -> Option<u64> {
        None
    }
}
