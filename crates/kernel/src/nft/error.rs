//! The error of every nftables operation (apply, disable, status, set updates, element writes,
//! tracing), and the helper that wraps a netlink failure with what was being done.

use crate::nl::{KernelError, NlError};

/// Errors of apply, disable and status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The table model cannot be encoded as it is (nothing was sent).
    #[error("invalid table: {0}")]
    Invalid(String),
    /// Talking to the kernel failed (opening the socket, sending, receiving, dumping).
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: NlError,
    },
    /// The kernel rejected a message of the batch; it then aborts the whole batch, so nothing
    /// changed. `what` names the message, e.g. "NEWRULE for rule `dns` (chain output, rule 3)".
    #[error("{what}: {error}")]
    Rejected { what: String, error: KernelError },
    /// The kernel answered fewer messages than it was sent.
    #[error("the kernel acknowledged {acked} of the {expected} messages of the batch")]
    MissingAcks { acked: usize, expected: usize },
    /// The table read back after an apply differs from the one applied. The kernel committed
    /// the batch: the new table is in place.
    #[error("the table read back after apply differs: {0}")]
    Verify(String),
    /// The kernel committed the batch (the new table is in place), but what came after failed:
    /// reading the acks, or reading the table back to verify it.
    #[error("the kernel committed the new table, but {0}")]
    Committed(Box<Error>),
    /// The batch was sent, its acks could not be read, and asking the kernel afterwards whether
    /// it committed failed too: the table may be the old one or the new one.
    #[error("{0}; whether the kernel committed the batch is not known")]
    Uncertain(Box<Error>),
    /// There is no table `inet <name>` (to change the sets of).
    #[error("there is no table inet {0}")]
    NoSuchTable(String),
    /// Elements were decided for the table with handle `expected`, and the table in place is
    /// another one (re-applied: `found`) or gone (`None`); nothing was added.
    #[error("table inet {table} was replaced (handle {expected}, now {}): nothing was added", found.map_or("gone".to_string(), |h| h.to_string()))]
    TableReplaced { table: String, expected: u64, found: Option<u64> },
    /// Table `inet <table>` has no set `<set>`.
    #[error("table inet {table} has no set {set}")]
    NoSuchSet { table: String, set: String },
}

impl Error {
    /// For an error of [`crate::nft::apply`] or [`crate::nft::replace_set_elements`]: true when
    /// the kernel changed nothing (the batch was refused, or never sent), false when it committed
    /// it ([`Error::Committed`], [`Error::Verify`]) or may have ([`Error::Uncertain`]).
    pub fn changed_nothing(&self) -> bool {
        !matches!(self, Error::Committed(_) | Error::Verify(_) | Error::Uncertain(_))
    }

    /// The errno behind this error, if the kernel or a system call gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Committed(e) | Error::Uncertain(e) => e.errno(),
            Error::Rejected { error, .. } => Some(error.errno),
            Error::Netlink {
                source: NlError::Kernel(e),
                ..
            } => Some(e.errno),
            Error::Netlink {
                source: NlError::Io { source, .. },
                ..
            } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Wraps a netlink failure as [`Error::Netlink`] with what was being done.
pub(crate) fn netlink(context: &str) -> impl FnOnce(NlError) -> Error + '_ {
    move |source| Error::Netlink {
        context: context.to_string(),
        source,
    }
}
