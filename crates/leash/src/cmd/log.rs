//! `leash log`: blocked (and rule-logged) attempts read live from NFLOG, as text lines for people
//! or JSON lines for a log system, optionally also as a pcap file and to syslog.
//!
//! Semantics (NFLOG keeps no history; only packets logged while we are bound are seen):
//! - Without `--follow` it listens for `--seconds` (default 10) or until `--count` events,
//!   whichever comes first, then exits. With `--follow` it runs until SIGINT or SIGTERM (or the
//!   `--count`/`--seconds` limit, if one is given).
//! - Standard output carries only events, one per line, flushed after every kernel batch, so a
//!   pipe into a log shipper sees them within milliseconds. Everything else goes to standard
//!   error: a "listening" line once the group is bound (events before it are not seen), and at
//!   the end (limit, signal, or a closed stdout) a summary with counts and losses. With `--json`
//!   both stderr lines are JSON objects with a `type` field.
//! - The group is `--group`, else the `log_group` of the active policy (its path is in the table
//!   comment `leash sha256:HEX PATH`), else 0.
//! - Losses are what the kernel tells: packets missing between sequence numbers (exact),
//!   `ENOBUFS` receives, and the socket's count of dropped batches (which also covers a loss
//!   after the last packet read). Exit status 0 also when there were losses (they are in the
//!   summary); 3 for system errors (not root, group taken, pcap or syslog not writable).

use crate::active::Active;
use crate::exit::{EXIT_OK, UsageError};
use anyhow::{Context, Result, bail};
use kernel::Firewall;
use kernel::nflog::{Config, Subscriber};
use observe::log::{Blocked, DecodeStats, Decoder};
use observe::pcap::PcapWriter;
use serde_json::json;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long `leash log` listens without `--follow`, `--seconds` or `--count`.
const DEFAULT_SECONDS: u64 = 10;
/// Longest single wait for packets, so limits and signals are noticed promptly even if a signal
/// lands between the flag check and the wait.
const TICK: Duration = Duration::from_millis(200);

const AFTER_HELP: &str = "\
NFLOG keeps no history: only attempts logged while leash log is listening are shown. Which
packets are logged is the policy's choice: `log_denied = true` logs what the default denies,
`log = true` on a rule logs its matches (allowed or denied), to NFLOG group `log_group`.

Process attribution: for an outgoing TCP SYN or UDP datagram the socket is looked up by its
addresses (sock_diag) and its holder found in /proc. With deny_with = \"drop\" the socket is
still waiting and nearly always found; with \"reject\" a TCP reset closes it at once, so TCP
attempts are mostly shown with uid and gid only. `attribution` in each event says which.

Examples:
  sudo leash log                          # 10 seconds of blocked attempts, one line each
  sudo leash log --follow --json | ship   # JSON lines until SIGINT/SIGTERM
  sudo leash log --seconds 60 --pcap blocked.pcap && tcpdump -nn -r blocked.pcap
  sudo leash log --follow --syslog        # also to syslog (/dev/log), facility daemon";

/// Arguments of `leash log`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Keep listening until SIGINT or SIGTERM (without it: --seconds, default 10).
    #[arg(long)]
    pub follow: bool,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after N seconds (default 10 without --follow).
    #[arg(long, value_name = "N")]
    pub seconds: Option<u64>,
    /// NFLOG group to read (default: the active policy's log_group, else 0).
    #[arg(long, value_name = "N")]
    pub group: Option<u16>,
    /// Also write the logged packets to FILE as pcap (raw IP), for tcpdump -r or Wireshark.
    /// FILE is made anew, mode 0600 (it holds payloads); a symbolic link is refused.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Also send every event to syslog through /dev/log (facility daemon; warning for
    /// denials, info for logged allows). The message is the text line, or the JSON object
    /// with --json.
    #[arg(long)]
    pub syslog: bool,
    /// The syslog socket (for tests and unusual hosts).
    #[arg(long, value_name = "PATH", default_value = "/dev/log", hide = true)]
    pub syslog_socket: PathBuf,
    /// Bytes of each packet the kernel copies (headers need at most 128; 0: whole packets).
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub snaplen: u32,
    /// Packets the kernel collects before it hands them over (1-1000). Larger batches cost fewer
    /// wake-ups under a flood; a lone packet waits at most 10 ms either way.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// Do not look up the process of each attempt (saves a socket lookup and a /proc scan per
    /// new connection under heavy load).
    #[arg(long)]
    pub no_process: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set [`STOP`]; without `SA_RESTART`, so the wait for packets returns at once.
fn install_signal_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain old data; the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error()).context("cannot install signal handlers");
            }
        }
    }
    Ok(())
}

/// Why the command stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Count,
    Time,
    Signal,
    StdoutClosed,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Stop::Count => "count",
            Stop::Time => "time",
            Stop::Signal => "signal",
            Stop::StdoutClosed => "stdout-closed",
        }
    }
}

/// The group to read and where that came from.
struct GroupChoice {
    group: u16,
    source: String,
    /// A warning about the active policy (logs nothing, file changed).
    warning: Option<String>,
}

pub fn run(a: &Args, json: bool, fw: &dyn Firewall) -> Result<u8> {
    if a.count == Some(0) {
        bail!(UsageError(
            "--count must be at least 1".into()
        ));
    }
    if !crate::system::is_root() {
        bail!("log needs root (CAP_NET_ADMIN) to bind an NFLOG group");
    }
    let choice = choose_group(a.group, fw);
    let limit = match (a.seconds, a.follow) {
        (Some(s), _) => Some(Duration::from_secs(s)),
        (None, false) => Some(Duration::from_secs(DEFAULT_SECONDS)),
        (None, true) => None,
    };
    // Everything that can fail is opened before the group is bound.
    let mut pcap = match &a.pcap {
        Some(path) => Some(open_pcap(path, a.snaplen)?),
        None => None,
    };
    let mut syslog = if a.syslog {
        Some(Syslog::open(&a.syslog_socket)?)
    } else {
        None
    };
    let config = Config {
        snaplen: a.snaplen,
        queue_threshold: a.batch,
        ..Config::new(choice.group)
    };
    let mut sub = Subscriber::open(&config)
        .with_context(|| format!("cannot read NFLOG group {}", choice.group))?;
    install_signal_handlers()?;
    let mut decoder = Decoder::new(!a.no_process);

    if let Some(w) = &choice.warning {
        if json {
            eprintln!("{}", json!({"type": "warning", "message": w}));
        } else {
            eprintln!("leash log: warning: {w}");
        }
    }
    if json {
        eprintln!(
            "{}",
            json!({"type": "listening", "group": choice.group, "source": choice.source})
        );
    } else {
        eprintln!(
            "leash log: listening on NFLOG group {} ({}){}",
            choice.group,
            choice.source,
            match (limit, a.count) {
                (Some(l), Some(c)) => format!(" for {} s or {c} events", l.as_secs()),
                (Some(l), None) => format!(" for {} s", l.as_secs()),
                (None, Some(c)) => format!(" until {c} events or SIGINT"),
                (None, None) => " until SIGINT".into(),
            }
        );
    }

    let t0 = Instant::now();
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut shown: u64 = 0;
    let (mut denied, mut allowed) = (0u64, 0u64);
    // Bounded by the time limit, the count, a signal, or a closed stdout.
    let stop = loop {
        if STOP.load(Ordering::SeqCst) {
            break Stop::Signal;
        }
        let wait = match limit {
            Some(l) => {
                let left = l.saturating_sub(t0.elapsed());
                if left.is_zero() {
                    break Stop::Time;
                }
                left.min(TICK)
            }
            None => TICK,
        };
        let packets = sub.recv(Some(wait)).context("reading NFLOG")?;
        if packets.is_empty() {
            continue;
        }
        let events = decoder.decode_batch(&packets);
        let mut stop = None;
        for (p, e) in &events {
            let written = if json {
                serde_json::to_writer(&mut out, e)
                    .map_err(io::Error::from)
                    .and_then(|()| out.write_all(b"\n"))
            } else {
                writeln!(out, "{}", e.line())
            };
            if written.is_err() {
                stop = Some(Stop::StdoutClosed);
                break;
            }
            if let Some(w) = pcap.as_mut() {
                w.write_packet(p.time(), &p.payload, None)
                    .context("cannot write the pcap file")?;
            }
            if let Some(s) = syslog.as_mut() {
                s.send(e, json);
            }
            shown += 1;
            if e.action == "deny" {
                denied += 1;
            } else {
                allowed += 1;
            }
            if a.count.is_some_and(|c| shown >= c) {
                stop = Some(Stop::Count);
                break;
            }
        }
        if out.flush().is_err() {
            break Stop::StdoutClosed;
        }
        if let Some(w) = pcap.as_mut() {
            w.flush().context("cannot write the pcap file")?;
        }
        if let Some(s) = stop {
            break s;
        }
    };
    let _ = out.flush();
    drop(out);
    if let Some(w) = pcap {
        w.into_inner().context("cannot write the pcap file")?;
    }
    let summary = Summary {
        stop,
        batch: a.batch,
        seconds: t0.elapsed().as_secs_f64(),
        group: choice.group,
        shown,
        denied,
        allowed,
        kernel: sub.stats(),
        decode: decoder.stats(),
        syslog_errors: syslog.as_ref().map(|s| s.errors),
        pcap: a.pcap.as_deref(),
    };
    summary.print(json);
    Ok(EXIT_OK)
}

/// The line at the end.
struct Summary<'a> {
    stop: Stop,
    batch: u32,
    seconds: f64,
    group: u16,
    shown: u64,
    denied: u64,
    allowed: u64,
    kernel: kernel::nflog::Stats,
    decode: DecodeStats,
    syslog_errors: Option<u64>,
    pcap: Option<&'a Path>,
}

impl Summary<'_> {
    fn print(&self, json: bool) {
        let k = &self.kernel;
        let d = &self.decode;
        if json {
            eprintln!(
                "{}",
                json!({
                    "type": "summary",
                    "stopped_by": self.stop.as_str(),
                    "seconds": (self.seconds * 1000.0).round() / 1000.0,
                    "group": self.group,
                    "events": self.shown,
                    "denied": self.denied,
                    "allowed": self.allowed,
                    "packets": k.packets,
                    "not_leash": d.foreign,
                    "unparsable": d.unparsable,
                    "loss": k.lost_any(),
                    "seq_lost": k.seq_lost,
                    "enobufs": k.enobufs,
                    "dropped_batches": k.dropped_batches,
                    "attribution": {"tried": d.tried, "found": d.found, "socket_gone": d.socket_gone, "no_process": d.no_process, "errors": d.errors},
                    "syslog_errors": self.syslog_errors,
                    "pcap": self.pcap.map(|p| p.display().to_string()),
                })
            );
            return;
        }
        let mut s = format!(
            "leash log: {} events ({} denied, {} allowed) in {:.1} s from NFLOG group {}",
            self.shown, self.denied, self.allowed, self.seconds, self.group
        );
        if d.foreign > 0 || d.unparsable > 0 {
            s.push_str(&format!(
                "; {} packets of other rules skipped",
                d.foreign + d.unparsable
            ));
        }
        if k.lost_any() {
            s.push_str(&format!(
                "; LOST: the kernel dropped {} batches of up to {} packets (receive buffer full), \
                 {} packets counted by sequence gaps",
                k.dropped_batches, self.batch, k.seq_lost
            ));
        } else {
            s.push_str("; nothing lost");
        }
        if d.tried > 0 {
            s.push_str(&format!(
                "; process found for {} of {} ({} sockets already gone, {} without a process)",
                d.found, d.tried, d.socket_gone, d.no_process
            ));
        }
        if let Some(e) = self.syslog_errors.filter(|&e| e > 0) {
            s.push_str(&format!("; {e} syslog sends failed"));
        }
        s.push_str(&format!(" [stopped: {}]", self.stop.as_str()));
        eprintln!("{s}");
    }
}

/// `--group`, else the active policy's `log_group`, else 0.
fn choose_group(explicit: Option<u16>, fw: &dyn Firewall) -> GroupChoice {
    if let Some(g) = explicit {
        return GroupChoice {
            group: g,
            source: "--group".into(),
            warning: None,
        };
    }
    let default = |source: &str, warning: Option<String>| GroupChoice { group: 0, source: source.into(), warning };
    let a = match crate::active::find(fw) {
        Active::Policy(a) => a,
        Active::NoTable => {
            return default(
                "default; no leash table is active",
                Some("no leash table is active in this network namespace; reading group 0".into()),
            );
        }
        Active::TableUnreadable(e) => {
            return default("default", Some(format!("cannot read the leash table ({e}); reading group 0")));
        }
        Active::NoPolicyFile => return default("default; the table names no policy file", None),
        Active::Unreadable { path, error } => {
            return default("default", Some(format!("cannot read the active policy {path} ({error:#}); reading group 0")));
        }
        Active::HasErrors { path } => {
            return default("default", Some(format!("the active policy {path} has errors now; reading group 0")));
        }
    };
    let (p, path) = (&a.policy, &a.path);
    let mut warnings = Vec::new();
    if a.changed_since_apply() {
        warnings.push(format!(
            "{path} changed since it was applied; using its log_group anyway"
        ));
    }
    let logs_default = p.defaults.log_denied && p.defaults.outbound == policy::Action::Deny;
    if !logs_default && !p.rules.iter().any(|r| r.log) {
        warnings.push(
            "the active policy logs nothing (log_denied is off and no rule has log = true)".into(),
        );
    }
    GroupChoice {
        group: p.defaults.log_group,
        source: format!("log_group of {path}"),
        warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
    }
}

fn open_pcap(path: &Path, snaplen: u32) -> Result<PcapWriter<BufWriter<File>>> {
    let f = create_private(path).with_context(|| format!("cannot create {}", path.display()))?;
    let snap = if snaplen == 0 {
        kernel::nflog::MAX_SNAPLEN
    } else {
        snaplen
    };
    PcapWriter::new(BufWriter::new(f), snap)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Opens `path` for the capture: the payloads of denied packets, readable by root alone. A new
/// file is made 0600 with `O_EXCL|O_NOFOLLOW` (nothing planted under the name is followed or
/// reused); an existing regular file is replaced by such a new one (so an earlier, wider mode, or
/// a reader holding it open, sees none of this capture); a symbolic link is refused; a FIFO or a
/// character device (`/dev/null`, a pipe into tcpdump) is written as it is.
fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let new = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => new(),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_symlink() => Err(io::Error::other(
            "it is a symbolic link; give the file itself (a capture is never written through a link)",
        )),
        Ok(m) if m.file_type().is_file() => {
            std::fs::remove_file(path)?;
            // Made again between the two calls: O_EXCL refuses it.
            new()
        }
        Ok(m) if m.file_type().is_fifo() || m.file_type().is_char_device() => {
            std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
        }
        Ok(_) => Err(io::Error::other("it is not a regular file, a FIFO or a character device")),
    }
}

/// The local syslog socket: a datagram socket as rsyslog and journald offer it, else a stream
/// socket (syslog-ng can be set up so), as glibc's `syslog()` tries them.
enum SyslogConn {
    Datagram(UnixDatagram),
    Stream(UnixStream),
}

struct Syslog {
    path: PathBuf,
    conn: SyslogConn,
    errors: u64,
    pid: u32,
}

/// `LOG_DAEMON` (3) shifted into the facility bits.
const FACILITY_DAEMON: u8 = 3 << 3;
const SEVERITY_WARNING: u8 = 4;
const SEVERITY_INFO: u8 = 6;

impl Syslog {
    fn open(path: &Path) -> Result<Syslog> {
        if !path.exists() {
            bail!(
                "--syslog: {} does not exist: no syslog daemon (rsyslog, syslog-ng) or systemd-journald \
                 listens on this host; run without --syslog or start one",
                path.display()
            );
        }
        Ok(Syslog {
            path: path.to_path_buf(),
            conn: Self::connect(path)?,
            errors: 0,
            pid: std::process::id(),
        })
    }

    fn connect(path: &Path) -> Result<SyslogConn> {
        let d = UnixDatagram::unbound().context("cannot create a socket for syslog")?;
        match d.connect(path) {
            Ok(()) => Ok(SyslogConn::Datagram(d)),
            Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Ok(SyslogConn::Stream(
                UnixStream::connect(path)
                    .with_context(|| format!("--syslog: cannot connect to {}", path.display()))?,
            )),
            Err(e) => {
                Err(e).with_context(|| format!("--syslog: cannot connect to {}", path.display()))
            }
        }
    }

    /// One RFC 3164 message as the local socket expects it (glibc's format: no host name):
    /// `<PRI>Mmm dd hh:mm:ss leash[PID]: MESSAGE`, the time in the host's time zone.
    fn message(&self, e: &Blocked, json: bool) -> Vec<u8> {
        let severity = if e.action == "deny" {
            SEVERITY_WARNING
        } else {
            SEVERITY_INFO
        };
        let now = jiff::Zoned::now();
        let body = if json {
            serde_json::to_string(e).expect("JSON serialisation")
        } else {
            // The text line without its own time stamp (syslog has one).
            e.line()
                .split_once(' ')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default()
        };
        format!(
            "<{}>{} leash[{}]: {body}",
            FACILITY_DAEMON | severity,
            now.strftime("%b %e %H:%M:%S"),
            self.pid
        )
        .into_bytes()
    }

    /// Sends one event; a failure (the daemon restarted) reconnects once, then counts.
    fn send(&mut self, e: &Blocked, json: bool) {
        let msg = self.message(e, json);
        for attempt in 0..2 {
            let ok = match &mut self.conn {
                SyslogConn::Datagram(d) => d.send(&msg).is_ok(),
                // A stream carries NUL-terminated messages.
                SyslogConn::Stream(s) => s.write_all(&msg).and_then(|()| s.write_all(&[0])).is_ok(),
            };
            if ok {
                return;
            }
            if attempt == 0 {
                match Self::connect(&self.path) {
                    Ok(c) => self.conn = c,
                    Err(_) => break,
                }
            }
        }
        self.errors += 1;
    }
}
