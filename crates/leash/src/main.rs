//! The `leash` command: parses the command line and hands each subcommand to its module in `cmd`.

mod active;
mod args;
mod bypass;
mod cli;
mod cmd;
mod exit;
mod flows;
mod load;
mod output;
mod privileges;
mod serve;
mod state;
mod system;
#[cfg(test)]
mod testing;

use clap::Parser;
use cli::Command;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("leash: error: {err:#}");
            ExitCode::from(exit::code_of(&err))
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<u8> {
    let json = cli.json;
    // The kernel as the commands see it, and what leash records about the table it applied.
    let fw = kernel::Netlink;
    let state = state::State::from_env();
    match cli.command {
        Command::Check(a) => cmd::check::run(&a, json),
        Command::Compile(a) => cmd::compile::run(&a),
        Command::Apply(a) => cmd::apply::run(&a, json, &fw, &state),
        Command::Status => cmd::status::run(json, &fw, &state),
        Command::Disable => cmd::disable::run(json, &fw, &state),
        Command::Set(a) => cmd::set::run(&a, json, &fw, &state),
        Command::Explain(a) => cmd::explain::run(&a, json),
        Command::Test(a) => cmd::test::run(&a, json),
        Command::Dns(a) => cmd::dns::run(&a, &fw),
        Command::Conns(a) => cmd::conns::run(&a, json, &fw),
        Command::Log(a) => cmd::log::run(&a, json, &fw),
        Command::Top(a) => cmd::top::run(&a, json, &fw),
        Command::Metrics(a) => cmd::metrics::run(&a, json, &fw, &state),
        Command::Trace(a) => cmd::trace::run(&a, json),
        Command::Watch(a) => cmd::watch::run(&a, json, &fw),
    }
}
