//! Running a program inside a namespace held by a `kernel::netns::NetNs`: `nsenter --net=` on the
//! `/proc/PID/fd/FD` path of its descriptor, which lives as long as this process holds the
//! namespace. nsenter execs the program, so the child's pid and rusage are the program's.

use super::child::{self, Finished};
use anyhow::Result;
use kernel::netns::NetNs;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Stdio};

/// `nsenter --net=NS`: add the program and its arguments.
pub fn nsenter(ns: &NetNs) -> Command {
    let mut net = OsString::from("--net=");
    net.push(ns.path());
    let mut c = Command::new("nsenter");
    c.arg(net);
    c
}

/// Runs `argv` in `ns` to its end, stdin from /dev/null, output through files in `dir` (see
/// [`child::run`]); an error unless it exits with 0.
pub fn run_in(ns: &NetNs, argv: &[impl AsRef<OsStr>], dir: &Path) -> Result<Finished> {
    child::run(nsenter(ns).args(argv).stdin(Stdio::null()), dir, "child", None)?.checked()
}
