//! What leash sees on a live host: connections with their process and the verdict of the active
//! policy (and the live flows a policy denies), packet and raw sockets, blocked attempts from
//! NFLOG with process attribution, detectors, and metrics.
//!
//! The kernel side (sock_diag, NFLOG, trace) lives in the `kernel` crate; this crate joins it
//! with `/proc` and with `policy::explain`, groups and explains trace events, and is what the
//! binary's `conns`, `log`, `top`, `metrics`, `watch` and `trace` commands print.

pub mod conns;
pub mod denied;
pub mod detect;
pub mod ip;
pub mod log;
pub mod metrics;
pub mod pcap;
pub mod procfs;
pub mod procs;
pub mod rawsocks;
pub mod trace;
