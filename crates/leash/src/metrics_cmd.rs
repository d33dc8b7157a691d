//! `leash metrics` (being written).

/// Arguments of `leash metrics`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_a: &Args, _json: bool) -> anyhow::Result<u8> {
    anyhow::bail!("leash metrics is being written")
}
