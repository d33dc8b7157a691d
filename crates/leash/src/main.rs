//! The `leash` command: parses the command line and hands each subcommand to its module.

mod cli;
mod cmd;
mod commands;
mod load;
mod output;
mod system;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Commands that only print end quietly when their reader goes away (`leash compile | head`),
    // as other Unix tools do. Commands that clean up after themselves (trace, test), serve sockets
    // (dns, metrics) or own a terminal (top) keep Rust's default of ignoring SIGPIPE.
    if matches!(
        cli.command,
        cli::Command::Check { .. }
            | cli::Command::Compile { .. }
            | cli::Command::Explain(_)
            | cli::Command::Status
            | cli::Command::Conns(_)
    ) {
        // SAFETY: restoring the default disposition of one signal before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("leash: error: {err:#}");
            ExitCode::from(commands::exit_code_of(&err))
        }
    }
}
