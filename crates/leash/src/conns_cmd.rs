//! `leash conns` (being written).

/// Arguments of `leash conns`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_a: &Args, _json: bool) -> anyhow::Result<u8> {
    anyhow::bail!("leash conns is being written")
}
