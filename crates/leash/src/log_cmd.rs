//! `leash log` (being written).

/// Arguments of `leash log`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_a: &Args, _json: bool) -> anyhow::Result<u8> {
    anyhow::bail!("leash log is being written")
}
