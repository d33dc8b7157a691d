//! The `leash` command: parses the command line and hands each subcommand to its module.

mod cli;
mod commands;
mod conns_cmd;
mod dns_cmd;
mod log_cmd;
mod metrics_cmd;
mod top_cmd;
mod trace_cmd;
mod watch_cmd;
mod load;
mod output;
mod system;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("leash: error: {err:#}");
            ExitCode::from(commands::exit_code_of(&err))
        }
    }
}
