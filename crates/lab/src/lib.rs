//! Scratch network namespaces that test a policy against the real kernel (`leash test`).
//!
//! A [`Lab`] is two anonymous network namespaces joined by one veth pair:
//!
//! ```text
//!   client namespace                         peer namespace
//!   policy applied here                      owns every destination (/32, /128),
//!   lab0: 192.0.2.x/32, 2001:db8::x/128 ---- lab1   TCP + UDP echo on every port
//!   default routes on-link via lab0          default routes on-link via lab1
//! ```
//!
//! Each [`Case`] is one real connection from the client namespace, made on a throwaway thread
//! that has entered the namespace and then dropped to the case's uid/gid, so the socket is owned
//! by that user exactly as `meta skuid`/`meta skgid` see it. Loopback destinations (127.0.0.0/8,
//! `::1`) cannot live on the peer: their echo servers run on the client's own `lo` instead.
//! Nothing is bind-mounted: the namespaces live only as long as the `Lab` (and die with the
//! process however it ends), and the root namespace is never touched.
//!
//! # How denials look to the caller (measured on kernel 6.18)
//!
//! Rules in the client's `output` hook; `reject` is `reject with tcp reset` for TCP and
//! `reject with icmpx admin-prohibited` otherwise, which is how leash compiles it. Same results
//! as root and as an unprivileged user.
//!
//! | probe          | no rule   | `reject`                   | `drop`               |
//! |----------------|-----------|----------------------------|----------------------|
//! | TCP, IPv4      | Connected | Refused (ECONNREFUSED)     | TimedOut             |
//! | TCP, IPv6      | Connected | Refused (ECONNREFUSED)     | TimedOut             |
//! | UDP, IPv4      | Connected | Unreachable(EHOSTUNREACH)* | NotPermitted (EPERM) |
//! | UDP, IPv6      | Connected | Unreachable(EACCES)*       | NotPermitted (EPERM) |
//! | ICMP echo      | Connected | Unreachable(EHOSTUNREACH)* | NotPermitted (EPERM) |
//! | ICMPv6 echo    | Connected | Unreachable(EACCES)        | TimedOut             |
//!
//! Why:
//! - TCP ignores the `EPERM` its first SYN gets from the output hook and retransmits, so a
//!   dropped connect only times out. The reset of a `reject` reaches the socket at once.
//! - \* A `reject` in the output hook sends its ICMP error back to the socket *and* drops the
//!   packet, so `send` on a UDP or ICMP socket fails with `EPERM` first; the ICMP error (IPv4
//!   "packet filtered" = `EHOSTUNREACH`, IPv6 "administratively prohibited" = `EACCES`) is then
//!   pending on the (connected) socket. The probe looks for it for up to 100 ms after an `EPERM`,
//!   which is what tells a reject from a drop.
//! - IPv6 ping sockets ignore the error of their own send, so a dropped ICMPv6 echo only times
//!   out, while a rejected one gets `EACCES` from `recv`.
//! - Not produced by leash's compiler, measured for completeness: `reject with icmpx
//!   admin-prohibited` on TCP gives Unreachable(EHOSTUNREACH) at once on IPv4, but on IPv6 the
//!   error arrives while `connect` holds the socket and is kept only as a soft error, so the
//!   connect fails with `EACCES` after the first SYN retransmit (about 1 s).
//!
//! `tests/outcomes.rs` checks every cell. [`run_expectations`] accepts Refused/Unreachable as
//! "denied by reject" and TimedOut/NotPermitted as "denied by drop".
//!
//! # Processes and time
//!
//! A case with a `cgroup` is probed by a child process forked from a thread inside the client
//! namespace, which joins the cgroup before it creates its socket (`socket cgroupv2` sees the
//! socket creator's cgroup; see `fork.rs`). [`run_expectations`] never uses the host's cgroups: it
//! mirrors the policy's in a scratch subtree (`cgroup.rs`). Expectations with `at` get the table
//! compiled again with the windows shifted so that the kernel, now, behaves as at that time
//! (`run.rs`). [`measure`] (`leash test --measure`) uses the same pieces to time connects with the
//! policy applied and without it.

pub mod cgroup;
mod echo;
mod error;
mod fork;
mod identity;
pub mod measure;
mod probe;
mod run;
mod scratch;
mod ser;

pub use measure::{Measurement, MeasureOptions, measure};
pub use probe::{Case, Outcome};
pub use run::{Report, Row, RunOptions, run_expectations};
pub use error::LabError;
pub use scratch::{Lab, WorkloadSpec};
