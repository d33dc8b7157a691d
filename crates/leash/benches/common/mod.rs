//! Plumbing every benchmark shares (each bench includes this module with `mod common;` and uses
//! a part of it): the command line, the machine, child processes, running them inside a network
//! namespace, statistics and the report's header lines.
#![allow(dead_code, unused_imports)] // each bench uses a subset

pub mod args;
pub mod child;
pub mod machine;
pub mod netns;
pub mod report;
pub mod stats;

pub use args::Args;
pub use child::{Finished, tv};
pub use machine::{Scratch, have, is_root, leash_bin, settle};
pub use netns::{nsenter, run_in};
pub use report::{kernel_line, ratio, tool_output, tool_version, write_report};
pub use stats::{median, median_f, mib, ms, percentile, percentile_f, sorted, us};
