//! Command-line definitions: every subcommand, option and the help text that teaches them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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
  sudo leash disable               # remove table inet leash; other tables are never touched";

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
    /// allows) exit 0 unless --deny-warnings.
    Check {
        /// The policy file (TOML).
        policy: PathBuf,
        /// Treat warnings as errors (exit 1 when there are any).
        #[arg(long)]
        deny_warnings: bool,
        /// Date used for the review-overdue lint (YYYY-MM-DD; default: today).
        #[arg(long, value_name = "DATE")]
        today: Option<String>,
    },
    /// Print the nftables ruleset a policy compiles to, without applying it.
    ///
    /// The nft script replaces only table inet leash and can be loaded with `nft -f`; the JSON form
    /// with `nft -j -f`.
    Compile {
        policy: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Nft)]
        format: Format,
    },
    /// Replace table inet leash in the current network namespace, atomically, then verify it.
    ///
    /// One netlink transaction creates the table if missing, deletes it and adds the new one. If
    /// anything fails, the kernel discards the whole transaction and the previous table stays.
    /// Needs CAP_NET_ADMIN (root).
    Apply {
        policy: PathBuf,
        #[command(flatten)]
        fault: FaultArgs,
    },
    /// Show whether a leash table is active, which policy it came from and per-rule counters.
    Status,
    /// Remove table inet leash; the host falls back to its other rules.
    Disable,
    /// Change the contents of a [[set]] (an address list such as a blocklist) of the applied
    /// policy without touching its rules: `leash set update NAME FILE`.
    Set(crate::cmd::set::Args),
    /// Evaluate one connection against a policy offline: verdict, deciding rule, and why each
    /// earlier rule did not match.
    Explain(ExplainArgs),
    /// Live TCP and UDP sockets with their process, user and the verdict of the active policy.
    Conns(crate::cmd::conns::Args),
    /// Blocked (and rule-logged) connection attempts from NFLOG, with the process when found.
    ///
    /// Listens for --seconds (default 10) or --count events, or with --follow until SIGINT or
    /// SIGTERM; NFLOG keeps no history. One line per attempt (JSON lines with --json) on stdout,
    /// a summary with counts and kernel-reported losses on stderr. Needs root.
    Log(crate::cmd::log::Args),
    /// Terminal UI: processes, their destinations, rates and blocked attempts, live.
    Top(crate::cmd::top::Args),
    /// Prometheus metrics: per-rule counters, blocked attempts, set sizes, the active policy,
    /// alert counts; served over HTTP (--listen) or printed once (--once).
    Metrics(crate::cmd::metrics::Args),
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
    Trace(crate::cmd::trace::Args),
    /// Alerts: too many connections (in total or per process), unusual ports, many half-open
    /// connections; one line each (JSON lines with --json).
    Watch(crate::cmd::watch::Args),
    /// Run the DNS forwarder for the policy's domain rules in this network namespace.
    ///
    /// It listens where `[dns] listen` says (UDP and TCP) and forwards to `[dns] upstreams`. For
    /// every answer to a name a domain rule lists, the addresses at the end of the CNAME chain go
    /// into that rule's nftables sets (with a timeout of the TTL plus grace) before the client
    /// gets the answer, so an application never connects before its address is allowed. Names
    /// an unconditional deny rule lists get NXDOMAIN; private answers for public names are
    /// stripped (rebinding guard) unless the rule says allow_private. Apply the policy first;
    /// runs until SIGINT or SIGTERM. Needs root (netlink and SO_MARK).
    Dns {
        policy: PathBuf,
        /// Also serve the forwarder's counters (queries, cache hits, upstream failures, set
        /// inserts, ...) as Prometheus metrics on http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Run the policy's [[expect]] cases against the real kernel in throwaway network namespaces.
    ///
    /// A client namespace gets the compiled policy; a peer namespace owns every destination address
    /// and echoes on every port. Each case makes a real connection as its user and must give the
    /// expected verdict, agree with `explain`, and (for denials) fail the way `deny_with` says.
    /// Nothing is changed outside the scratch namespaces, which are removed afterwards. Needs root.
    Test {
        policy: PathBuf,
        /// How long to wait for each connection before calling it timed out, in milliseconds.
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        timeout_ms: u64,
        #[command(flatten)]
        measure: MeasureArgs,
    },
}

/// `leash test --measure`: the performance impact assessment.
#[derive(Debug, Clone, Args)]
pub struct MeasureArgs {
    /// Instead of checking the expectations, measure what the policy costs new TCP connections:
    /// connect latency (p50, p99) and connects per second to the destinations of the allowed TCP
    /// expectations, with the policy applied versus with no table, in interleaved rounds in
    /// scratch namespaces. Reported as ratios (policy / no table).
    #[arg(long)]
    pub measure: bool,
    /// Rounds of --measure (each measures both sides once).
    #[arg(long, default_value_t = 5, value_name = "N", requires = "measure")]
    pub rounds: usize,
    /// Sequential connects per side and round of --measure.
    #[arg(long, default_value_t = 2000, value_name = "N", requires = "measure")]
    pub connects: usize,
    /// Stop --measure after the round that passes this many seconds.
    #[arg(long, default_value_t = 120, value_name = "S", requires = "measure")]
    pub max_seconds: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// An nft script (`nft -f`).
    Nft,
    /// nft JSON (`nft -j -f`).
    Json,
}

#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Testing aid: append an invalid message to the transaction so the kernel rejects it, to
    /// prove that a failed apply changes nothing.
    #[arg(long, hide = true)]
    pub fault_inject: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    pub policy: PathBuf,
    /// Destination: ADDR, ADDR:PORT or [IPV6]:PORT.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub to: String,
    /// The name the destination was looked up as through leash's DNS forwarder (domain rules
    /// match only such connections), e.g. --name api.example.com --to 192.0.2.10:443.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Protocol of the connection.
    #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
    pub proto: ProtoArg,
    /// User making the connection (name or uid; default: root).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Group of the socket (name or gid; default: the user's primary group).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// When the connection happens (default: now): an instant (RFC 3339, e.g.
    /// 2027-01-04T09:30:00Z), or a wall-clock time in the policy's time zone
    /// ("2027-01-04 09:30", "Mon 09:30"). Only rules with `when` windows depend on it.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// The systemd service making the connection (its cgroup is system.slice/SERVICE).
    #[arg(long, value_name = "UNIT", conflicts_with = "cgroup")]
    pub service: Option<String>,
    /// The cgroup v2 path of the process making the connection, e.g. /system.slice/nginx.service.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProtoArg {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl From<ProtoArg> for policy::Proto {
    fn from(p: ProtoArg) -> Self {
        match p {
            ProtoArg::Tcp => policy::Proto::Tcp,
            ProtoArg::Udp => policy::Proto::Udp,
            ProtoArg::Icmp => policy::Proto::Icmp,
            ProtoArg::Icmpv6 => policy::Proto::Icmpv6,
        }
    }
}
