//! How a command ends: exit codes, usage errors versus system errors, the root check, and the
//! closed-pipe behaviour of commands that only print.

use anyhow::{Result, bail};

pub const EXIT_OK: u8 = 0;
/// The policy has errors, or a test found a mismatch.
pub const EXIT_POLICY: u8 = 1;
/// The command line was wrong (clap uses 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// Something outside the policy failed: permissions, the kernel, the file system.
pub const EXIT_SYSTEM: u8 = 3;

/// An error in what the user typed (exit 2), as opposed to one of the system (exit 3).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns a [`UsageError`] (exit 2) from the enclosing function, formatted like `format!`.
macro_rules! usage {
    ($($arg:tt)*) => { return Err(anyhow::Error::new($crate::exit::UsageError(format!($($arg)*)))) };
}
pub(crate) use usage;

/// The exit code for an error that ended a command.
pub fn code_of(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<UsageError>().is_some() { EXIT_USAGE } else { EXIT_SYSTEM }
}

/// Fails unless the process may change the firewall. Commands call it after they validated
/// their input, so that a bad policy is reported as such to an unprivileged user too.
pub fn require_root(what: &str) -> Result<()> {
    if !crate::system::is_root() {
        bail!("{what} needs root (CAP_NET_ADMIN); nothing was changed");
    }
    Ok(())
}

/// Makes the process end quietly when its reader goes away (`leash compile | head`), as other
/// Unix tools do. Only commands that merely print call it, first thing: commands that clean up
/// after themselves (trace, test), serve sockets (dns, metrics) or own a terminal (top) keep
/// Rust's default of ignoring SIGPIPE, so a closed pipe is an error they handle.
pub fn end_quietly_on_closed_pipe() {
    // SAFETY: restoring the default disposition of one signal; the commands that call this do so
    // before they start any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
