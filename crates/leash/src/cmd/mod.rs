//! One module per subcommand, each owning its command-line arguments and its `run`. No command
//! imports another: what two share lives in a module of its own beside `cmd` (`active`, `args`,
//! `serve`, `state`, `load`, `system`).

pub mod apply;
pub mod check;
pub mod compile;
pub mod conns;
pub mod disable;
pub mod dns;
pub mod explain;
pub mod log;
pub mod metrics;
pub mod set;
pub mod status;
pub mod test;
pub mod top;
pub mod trace;
pub mod watch;
