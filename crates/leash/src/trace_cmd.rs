//! `leash trace` (being written).

/// Arguments of `leash trace`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_a: &Args, _json: bool) -> anyhow::Result<u8> {
    anyhow::bail!("leash trace is being written")
}
