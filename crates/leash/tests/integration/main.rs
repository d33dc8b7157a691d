//! One integration-test binary for the `leash` command: CLI behaviour, and kernel tests that apply
//! real rulesets in throwaway network namespaces and make real connections.
//!
//! The harness (`harness.rs`) records every command it runs with its output and, when a test
//! fails, prints all of it together with the namespace's ruleset.

mod harness;

mod agreement;
mod apply;
mod check;
mod conns;
mod contrib;
mod cut;
mod cut_forwarded;
mod dimensions;
mod dns;
mod explain;
mod forward;
mod log;
mod metrics;
mod packet_sockets;
mod sets;
mod structure;
mod test_cmd;
mod top;
mod watch;
mod trace;
