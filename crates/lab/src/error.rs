//! Errors while building or using a lab.

use kernel::rtnl;
use std::io;
use std::net::{IpAddr, SocketAddr};

/// More listening sockets than this is surely a mistake (each is a file descriptor).
pub(crate) const MAX_LISTENERS: usize = 8192;

/// Errors while building or using a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("network namespace: {0}")]
    Namespace(#[source] io::Error),
    #[error("lab network setup: {0}")]
    Rtnl(#[from] rtnl::Error),
    #[error("cannot set {key} in the lab: {source}")]
    Sysctl {
        key: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {proto} {addr}: {source}")]
    Listen {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("destination {addr} cannot be tested: {reason}")]
    BadDestination { addr: IpAddr, reason: &'static str },
    #[error("too many listening sockets ({0}; at most {MAX_LISTENERS}): fewer destinations or ports")]
    TooLarge(usize),
    #[error("every documentation address is a destination: none is left for the client")]
    NoSourceAddress,
    #[error("workload {iif} cannot be set up: {reason}")]
    BadWorkload { iif: String, reason: String },
    #[error("cannot start the echo server: {0}")]
    Echo(#[source] io::Error),
    #[error("cannot apply the ruleset in the lab: {0}")]
    Apply(String),
    #[error("cannot measure: {0}")]
    Measure(String),
    /// The policy has no expectation `leash test --measure` can use.
    #[error("nothing to measure: {0}")]
    NothingToMeasure(String),
}
