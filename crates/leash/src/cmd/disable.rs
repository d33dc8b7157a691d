//! `leash disable`: remove table inet leash; the host falls back to its other rules.

use crate::exit::{EXIT_OK, require_root};
use crate::output;
use crate::state::State;
use anyhow::{Context, Result};
use kernel::Firewall;

pub fn run(json: bool, fw: &dyn Firewall, state: &State) -> Result<u8> {
    require_root("disable")?;
    let existed = fw.disable().context("removing table inet leash failed; nothing changed")?;
    state.forget();
    if json {
        output::print_json(&serde_json::json!({ "removed": existed }));
    } else if existed {
        println!("removed table inet leash; the host's other rules decide again");
    } else {
        println!("no leash table was active");
    }
    Ok(EXIT_OK)
}
