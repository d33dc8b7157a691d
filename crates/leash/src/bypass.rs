//! Sockets that reach past the firewall: the packet (`AF_PACKET`) and raw IP sockets of this
//! network namespace and the processes holding them, as `leash conns` and `leash status` warn
//! about them (see `observe::rawsocks` for what each can do and who uses them legitimately).

use observe::rawsocks::{self, Holders};

/// The holders, or the reason they could not be listed.
pub fn holders() -> Result<Holders, String> {
    rawsocks::holders().map_err(|e| e.to_string())
}

/// The warnings for people, each line ready to print after `leash: warning: `.
pub fn warnings(h: &Result<Holders, String>) -> Vec<String> {
    match h {
        Ok(h) => rawsocks::warning_lines(h),
        Err(e) => vec![format!("{e}: packet sockets, which bypass the firewall, are not listed")],
    }
}

/// Prints the warnings on standard error, the first line of each group prefixed as a warning.
pub fn eprint(h: &Result<Holders, String>) {
    for line in warnings(h) {
        if line.starts_with("  ") {
            eprintln!("leash:   {}", line.trim_start());
        } else {
            eprintln!("leash: warning: {line}");
        }
    }
}

/// The JSON both commands print under `raw_sockets`.
pub fn json(h: &Result<Holders, String>) -> serde_json::Value {
    match h {
        Ok(h) => serde_json::json!({
            "packet": h.packet().collect::<Vec<_>>(),
            "raw": h.raw().collect::<Vec<_>>(),
            "packet_source": if h.packet_diag { "sock_diag" } else { "proc" },
            "raw_source": if h.raw_diag { "sock_diag" } else { "proc" },
        }),
        Err(e) => serde_json::json!({ "error": e }),
    }
}
