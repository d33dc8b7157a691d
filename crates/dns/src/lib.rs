//! The leash DNS forwarder: answers on loopback, forwards to upstream resolvers, and for every
//! answer to a name that a domain rule matches, puts the addresses at the end of the CNAME chain
//! into that rule's nftables sets (hash sets with element timeouts) before the answer is sent.
//!
//! The crate knows nothing about netlink: the binary hands in a [`SetSink`] (one kernel batch per
//! call) and the set names of each rule ([`RuleSets`]). Message handling is pure and fuzzed
//! (`message`, `wire`, `rules`); sockets live in `server`, `udp`, `upstream` and `stub`.
//!
//! Threads: UDP queries are read by blocking OS threads, one per CPU and listen address (`udp`),
//! which answer cache hits themselves and hand everything that must wait to the tokio runtime
//! the caller gives the forwarder; [`runtime`] builds the recommended one (current-thread, see
//! there). Set inserts run on one dedicated OS thread that owns the sink and batches whatever is
//! queued.

pub mod cache;
mod error;
mod inserter;
mod log;
pub mod message;
pub mod rules;
mod server;
mod stats;
mod stub;
mod udp;
mod upstream;
pub mod wire;

pub use error::Error;
pub use inserter::{Insert, SetSink, SinkError};
pub use rules::RuleSets;
pub use server::{Applied, Forwarder, ForwarderConfig, Handle, Listeners, MAX_TCP_CLIENTS, TCP_IDLE, run};
pub use stats::{Stats, StatsSnapshot};
pub use stub::resolve_once;
pub use upstream::owned_by;

use std::io;

/// The runtime the forwarder is meant to run on: current-thread, with I/O and timers.
///
/// Why not multi-thread: the target machines have 2 vCPUs, and the runtime only sees what the
/// UDP listener threads could not answer from the cache (and TCP): per query it does little
/// besides a few syscalls and a hash lookup. A second worker would mostly add cross-thread
/// wake-ups, contention on the cache lock and task migration, and would compete for the second
/// core with the set inserter thread (whose netlink round trips are where the kernel does its
/// work) and, on a busy host, with the upstream resolver. The code itself is runtime-agnostic
/// (all shared state is `Send + Sync`), so a caller may still choose a multi-thread runtime.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}
