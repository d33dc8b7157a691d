//! `leash watch` (being written).

/// Arguments of `leash watch`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_a: &Args, _json: bool) -> anyhow::Result<u8> {
    anyhow::bail!("leash watch is being written")
}
