//! What leash sees on a live host: connections with their process and the verdict of the active
//! policy, blocked attempts from NFLOG with process attribution, detectors, and metrics.
//!
//! The kernel side (sock_diag, NFLOG, trace) lives in the `kernel` crate; this crate joins it
//! with `/proc` and with `policy::explain`, and is what the binary's `conns`, `log`, `top`,
//! `metrics` and `watch` commands print.

pub mod conns;
pub mod detect;
pub mod log;
pub mod metrics;
pub mod pcap;
pub mod procs;
