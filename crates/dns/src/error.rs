//! Why the forwarder could not start.

use std::io;
use std::net::SocketAddr;

/// Why the forwarder could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the [dns] section lists no upstream resolvers")]
    NoUpstreams,
    #[error("the [dns] section lists no listen address")]
    NoListen,
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot set SO_MARK {mark:#x} on upstream sockets (it needs CAP_NET_ADMIN): {source}")]
    Mark { mark: u32, source: io::Error },
    #[error("cannot open a socket to upstream {addr}: {source}")]
    Upstream { addr: SocketAddr, source: io::Error },
    #[error("cannot start the set inserter thread: {0}")]
    Thread(io::Error),
    #[error("the forwarder listens on {} but the policy says {}: restart leash dns", list(from), list(to))]
    ListenChanged { from: Vec<SocketAddr>, to: Vec<SocketAddr> },
}

fn list(a: &[SocketAddr]) -> String {
    a.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Listen { source, .. } | Error::Mark { source, .. } | Error::Upstream { source, .. } | Error::Thread(source) => source.kind(),
            Error::NoUpstreams | Error::NoListen | Error::ListenChanged { .. } => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}
