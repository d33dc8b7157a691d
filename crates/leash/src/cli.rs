//! The command line: the subcommands and the help text that teaches them; each subcommand's
//! options are defined by its module in `cmd`.

use crate::cmd;
use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Exit codes:
  0  success (for `check`: no errors; for `test`: every expectation held)
  1  the policy has errors, or `test` found a mismatch, or `check --deny-warnings` found warnings
  2  usage error (bad command line)
  3  system error (not root, kernel refused the ruleset, file unreadable, ...)

Typical session:
  leash check policy.toml          # validate, show errors and warnings with file:line:col
  leash explain policy.toml --to 192.0.2.53:53 --proto udp --user www-data
  leash test policy.toml           # run the [[expect]] cases against the real kernel in scratch namespaces
  sudo leash apply policy.toml     # replace table inet leash atomically, then verify it
  leash status                     # active policy and per-rule counters
  sudo leash disable               # remove table inet leash; other tables are never touched

What is governed:
  the host's own new connections (output hook), IPv4 and IPv6; and, unless [forward] mode =
  \"ignore\", new connections forwarded from local workloads (containers, VMs, routed namespaces:
  packets entering on [forward] interfaces, default docker0 br-* podman* virbr* lxcbr* cni*, or
  from [forward] sources or a rule's `from`), which meet the rules without user, group, service or
  cgroup conditions (a forwarded packet has no local socket) and the default; their DNS to 53/853
  is denied under the DNS bypass control.
Not governed by leash (left to the other tables): established and related flows, traffic between
  local workloads, forwarded traffic from anywhere else, and traffic into the host (input).

What a policy does not stop on its own:
  - Connections that are up when it is applied: a policy decides new connections, and the
    established rule lets existing ones run until they close. `leash apply` lists the live
    connections the new policy denies (the host's, and those forwarded from local workloads,
    whose interfaces routing tells); `leash apply --cut` (or [defaults] on_apply = \"cut\") ends
    them: sockets destroyed, conntrack entries deleted.
  - AF_PACKET sockets (CAP_NET_RAW): they send link-layer frames past netfilter, so no rule
    applies to them. `leash status` and `leash conns` name the processes holding them (and raw
    IP sockets, which are decided but may forge headers).";

/// leash: declarative, default-deny egress firewall for Linux, enforced by nftables.
///
/// leash compiles one TOML policy into one nftables table (`inet leash`) and applies it in a single
/// atomic netlink transaction. Other tables (docker, ufw, firewalld, your own) are never touched.
#[derive(Debug, Parser)]
#[command(name = "leash", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Print machine-readable JSON instead of text (on standard output).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and validate a policy; print every error and warning as FILE:LINE:COL.
    ///
    /// Errors exit with status 1. Warnings (lints: shadowed rules, rules that never match, no DNS
    /// rule under default deny, established traffic not allowed, overdue reviews, undocumented broad
    /// allows, rules that need a local socket and so never apply to forwarded traffic) exit 0
    /// unless --deny-warnings. A note says which forwarded traffic (containers, VMs) the policy
    /// governs.
    Check(cmd::check::Args),
    /// Print the nftables ruleset a policy compiles to, without applying it.
    ///
    /// The nft script replaces only table inet leash and can be loaded with `nft -f`; the JSON form
    /// with `nft -j -f`.
    Compile(cmd::compile::Args),
    /// Replace table inet leash in the current network namespace, atomically, then verify it.
    ///
    /// One netlink transaction creates the table if missing, deletes it and adds the new one. If
    /// the kernel refuses any part, it discards the whole transaction and the previous table
    /// stays ("nothing changed"). After the commit the table is read back and every chain, rule
    /// (its expressions too) and set compared with what was sent; if that fails, apply says the
    /// policy was applied and what failed. Answers of domain rules are carried into the new
    /// table only if the new policy still admits the name each was looked up as (at most
    /// max_ttl + grace). Then it lists the live connections the new policy denies (they keep
    /// running), and with --cut (or `[defaults] on_apply = "cut"`) ends them. Needs
    /// CAP_NET_ADMIN (root).
    Apply(cmd::apply::Args),
    /// Show whether a leash table is active, which policy it came from and per-rule counters.
    ///
    /// Warns about processes holding packet sockets (AF_PACKET: what they send bypasses the
    /// firewall) or raw IP sockets, and about cgroups the rules match that are gone.
    Status,
    /// Remove table inet leash; the host falls back to its other rules.
    Disable,
    /// Change the contents of a [[set]] (an address list such as a blocklist) of the applied
    /// policy without touching its rules: `leash set update NAME FILE`.
    Set(cmd::set::Args),
    /// Evaluate one connection against a policy offline: verdict, deciding rule, and why each
    /// earlier rule did not match.
    ///
    /// The host's own connection by default; with --from ADDR (and --iif, --oif) a connection
    /// forwarded from a workload (container, VM), decided the way the forward chain does.
    Explain(cmd::explain::Args),
    /// Live TCP and UDP sockets with their process, user and the verdict of the active policy.
    ///
    /// With --policy FILE, the live connections a candidate would deny (cut). Warns about
    /// processes holding packet sockets (which bypass the firewall) or raw IP sockets.
    Conns(cmd::conns::Args),
    /// Blocked (and rule-logged) connection attempts from NFLOG, with the process when found.
    ///
    /// Listens for --seconds (default 10) or --count events, or with --follow until SIGINT or
    /// SIGTERM; NFLOG keeps no history. One line per attempt (JSON lines with --json) on stdout,
    /// a summary with counts and kernel-reported losses on stderr. Needs root.
    Log(cmd::log::Args),
    /// Terminal UI: processes, their destinations, rates and blocked attempts, live.
    Top(cmd::top::Args),
    /// Prometheus metrics: per-rule counters, blocked attempts, set sizes, the active policy,
    /// alert counts; served over HTTP (--listen) or printed once (--once).
    Metrics(cmd::metrics::Args),
    /// Trace matching packets through leash's table and print which rule decided each.
    ///
    /// Adds a chain `trace` to table inet leash that sets the nftables trace flag on packets
    /// matching --to, --port and --uid (it changes no verdict), prints one line per packet: the
    /// rules it passed, the rule that decided and the verdict; and removes the chain again when
    /// --seconds or --count is reached, or on SIGINT or SIGTERM. Needs root and an applied policy.
    ///
    /// A line reads `tcp 192.0.2.1:40000 -> 203.0.113.9:443 syn oif eth0: @loopback no,
    /// @established no, dns no, web -> accept` (rules that did not match, then the deciding rule
    /// and its verdict); --json prints one JSON object per packet instead. The socket's owner is
    /// shown only with --uid: trace events do not carry it.
    Trace(cmd::trace::Args),
    /// Alerts: too many connections (in total or per process), unusual ports, many half-open
    /// connections; one line each (JSON lines with --json).
    Watch(cmd::watch::Args),
    /// Run the DNS forwarder for the policy's domain rules in this network namespace.
    ///
    /// It listens where `[dns] listen` says (UDP and TCP) and forwards to `[dns] upstreams`. For
    /// every answer to a name a domain rule lists, the addresses at the end of the CNAME chain go
    /// into that rule's nftables sets (with a timeout of the TTL plus grace) before the client
    /// gets the answer, so an application never connects before its address is allowed. Names
    /// an unconditional deny rule lists get NXDOMAIN; private answers for public names (also
    /// behind NAT64, 6to4 or Teredo) are stripped (rebinding guard) unless the rule says
    /// allow_private, and so are address records off the CNAME chain.
    ///
    /// Names are decided by the applied policy (the file the table's comment names), loaded
    /// again on every re-apply; when it cannot be loaded (gone, changed since the apply, errors,
    /// unreadable) every query gets SERVFAIL until it can. Inserts go into the table they were
    /// decided for only. A full domain set ([dns] set_size) gives SERVFAIL for new names.
    ///
    /// Starts as root (or as the forwarder's user with CAP_NET_ADMIN, as the shipped systemd unit
    /// does), binds its sockets and becomes `[dns] user` (default leash-dns) with CAP_NET_ADMIN
    /// and CAP_NET_BIND_SERVICE only: the ruleset lets DNS out to the upstreams from that user's
    /// sockets only. A missing user is an error. Apply the policy first; runs until SIGINT or
    /// SIGTERM.
    Dns(cmd::dns::Args),
    /// Run the policy's [[expect]] cases against the real kernel in throwaway network namespaces.
    ///
    /// A client namespace gets the compiled policy; a peer namespace owns every destination address
    /// and echoes on every port. Each case makes a real connection as its user and must give the
    /// expected verdict, agree with `explain`, and (for denials) fail the way `deny_with` says.
    /// Cases with `from` connect from a workload namespace routed through the client (forwarding
    /// on inside the client namespace only), entering on their `iif`.
    /// Nothing is changed outside the scratch namespaces, which are removed afterwards. Needs root.
    Test(cmd::test::Args),
}
