//! Errors of the netlink layer, and errno values named and explained the way this crate reports
//! them.

use std::fmt;
use std::io;

use super::wire::NlMsgHdr;

/// Errors of this layer.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    /// A system call failed.
    #[error("{context}: {}", errno_text(.source.raw_os_error().unwrap_or(0)))]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel answered a request with an error.
    #[error("{0}")]
    Kernel(KernelError),
    /// A reply did not parse.
    #[error("malformed netlink reply: {0}")]
    Malformed(String),
    /// A dump ended with `NLM_F_DUMP_INTR`: the objects changed while the kernel listed them
    /// (for nf_tables, any commit in the namespace, such as a DNS forwarder's set insert), so
    /// what was read may mix two states. Start the dump again ([`crate::nl::retry_interrupted`]).
    #[error("netlink dump interrupted by a concurrent change (EINTR), {attempts} time(s) in a row")]
    DumpInterrupted { attempts: usize },
    /// An attribute (usually a nested one) grew beyond 65535 bytes.
    #[error("netlink attribute type {ty} is {len} bytes, more than an attribute can hold (65535)")]
    AttrTooLong { ty: u16, len: usize },
}

impl NlError {
    pub(super) fn io(context: &'static str) -> NlError {
        NlError::Io {
            context,
            source: io::Error::last_os_error(),
        }
    }
}

/// An error the kernel returned in an `NLMSG_ERROR` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// Positive errno (the message carries it negated).
    pub errno: i32,
    /// Header of the request the error belongs to (its `seq` identifies it).
    pub request: NlMsgHdr,
    /// Extended-ack text (`NLMSGERR_ATTR_MSG`), when the kernel gave one.
    pub message: Option<String>,
    /// Extended-ack offset of the offending attribute within the request (`NLMSGERR_ATTR_OFFS`).
    pub offset: Option<u32>,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&errno_text(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for KernelError {}

/// Symbolic name of an errno value (`EPERM`), or `E<number>` for rare ones.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENOBUFS => "ENOBUFS",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

/// `EPERM: Operation not permitted (run as root)`: name, libc's text and a hint for the usual
/// cause. Used for every errno this crate reports.
pub fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    // io::Error's Display appends " (os error N)"; the name already identifies it.
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let hint = match errno {
        libc::EPERM => " (run as root: CAP_NET_ADMIN is needed)",
        libc::ENOBUFS => " (a netlink buffer overflowed: replies were lost)",
        _ => "",
    };
    format!("{}: {text}{hint}", errno_name(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_names_and_hints() {
        assert_eq!(
            errno_text(libc::EPERM),
            "EPERM: Operation not permitted (run as root: CAP_NET_ADMIN is needed)"
        );
        assert!(errno_text(libc::EINVAL).starts_with("EINVAL: Invalid argument"));
        assert_eq!(errno_name(9999), "E9999");
    }
}
