//! One module per subcommand, each owning its command-line arguments and its `run`.

pub mod conns;
pub mod dns;
pub mod log;
pub mod metrics;
pub mod set;
pub mod top;
pub mod trace;
pub mod watch;
