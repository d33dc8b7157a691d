//! `leash compile`: print the nftables ruleset a policy compiles to, without applying it.

use crate::exit::{EXIT_OK, EXIT_POLICY};
use crate::load;
use crate::output;
use anyhow::Result;
use clap::ValueEnum;
use std::path::PathBuf;

/// Arguments of `leash compile`.
#[derive(Debug, clap::Args)]
pub struct Args {
    pub policy: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Nft)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// An nft script (`nft -f`).
    Nft,
    /// nft JSON (`nft -j -f`).
    Json,
}

pub fn run(a: &Args) -> Result<u8> {
    crate::exit::end_quietly_on_closed_pipe();
    let Some((l, p)) = load::load_valid(&a.policy)? else { return Ok(EXIT_POLICY) };
    let table = ruleset::compile(&p, &l.compile_options());
    match a.format {
        Format::Nft => print!("{}", ruleset::render::nft_text(&table)),
        Format::Json => output::print_json(&ruleset::render::nft_json(&table)),
    }
    Ok(EXIT_OK)
}
