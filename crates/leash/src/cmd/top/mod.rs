//! `leash top`: a live terminal view of egress, like nethogs/iftop: processes, their
//! destinations, connection counts and rates, bytes from `tcp_info`, and blocked attempts per
//! process from NFLOG.
//!
//! `model.rs` aggregates snapshots, `ui.rs` draws; both are pure and tested with a fake source
//! and ratatui's `TestBackend`. This file owns the terminal: raw mode and the alternate screen
//! are entered once and always left again, on a normal exit, on an error (a guard's `Drop`), on
//! a panic (a panic hook, which runs before the panic message is printed, so the message lands
//! on a usable screen) and on SIGTERM/SIGHUP (a flag the loop polls; Ctrl-C is a key in raw mode).

mod model;
mod ui;

use crate::args::interval;
use crate::exit::{EXIT_OK, UsageError};
use anyhow::{Context, Result};
use kernel::Firewall;
use model::{Model, ProcKey, Sort};
use observe::detect::{LiveSource, Source};
use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::collections::HashMap;
use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use ui::View;

/// The order `leash top` starts with.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum SortArg {
    #[default]
    Conns,
    Bytes,
    Rate,
    New,
    Blocked,
    Pid,
}

impl From<SortArg> for Sort {
    fn from(s: SortArg) -> Sort {
        match s {
            SortArg::Conns => Sort::Conns,
            SortArg::Bytes => Sort::Bytes,
            SortArg::Rate => Sort::Rate,
            SortArg::New => Sort::New,
            SortArg::Blocked => Sort::Blocked,
            SortArg::Pid => Sort::Pid,
        }
    }
}

/// Arguments of `leash top`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Keys:
  q, Esc, Ctrl-C   quit
  c b r n x p      sort by connections, bytes, rate, new connections/s, blocked attempts, pid
  /                filter (process name, pid, user or destination); Enter keeps it, Esc clears it
  Up/Down, j/k     select a process; its destinations are listed below

Only egress is shown: connections this host opened to other hosts (not listening sockets, not
connections a local listener accepted, not loopback). Bytes are what the kernel counts per TCP
connection (tcp_info: payload bytes sent, retransmissions included, and bytes received); UDP has
no such counter. Rates compare two snapshots. Blocked attempts come from NFLOG (rules with
log = true, and the default with log_denied = true) and are counted from the start of
`leash top`. The kernel allows one reader per NFLOG group: while `leash log --follow` or
`leash metrics` reads it, the blocked pane says so (or use --no-log).")]
pub struct Args {
    /// Seconds between two snapshots.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub interval: f64,
    /// The NFLOG group blocked attempts are logged to (default: the active policy's
    /// `log_group`, else 0).
    #[arg(long, value_name = "N")]
    pub log_group: Option<u16>,
    /// Do not read blocked attempts.
    #[arg(long)]
    pub no_log: bool,
    /// Initial order of the process list.
    #[arg(long, value_enum, default_value_t)]
    pub sort: SortArg,
    /// Print one view (two snapshots --interval apart, so rates are filled in) as text, or as
    /// JSON with --json, and exit. Needs no terminal.
    #[arg(long)]
    pub once: bool,
    /// Testing aid: panic right after the first frame, to prove the terminal is restored.
    #[arg(long, hide = true)]
    pub fault_panic: bool,
}

pub fn run(a: &Args, json: bool, fw: &dyn Firewall) -> Result<u8> {
    let every = interval(a.interval, "--interval")?;
    let interactive = !(a.once || json);
    if interactive && !(io::stdout().is_terminal() && io::stdin().is_terminal()) {
        return Err(UsageError("leash top needs a terminal; use `leash top --once` (or --json) for a one-off view".into()).into());
    }
    let policy = crate::active::find(fw).policy();
    let group = a.log_group.or(policy.as_ref().map(|p| p.defaults.log_group)).unwrap_or(0);
    let mut source = LiveSource::open((!a.no_log).then_some(group), policy);
    let mut view = View::new(every);
    view.sort = a.sort.into();
    view.policy = status_line_policy(fw);
    view.log_note = if a.no_log {
        Some("not read (--no-log)".into())
    } else {
        source.log_error().map(|e| format!("not read: {e}"))
    };
    let mut users = UserNames::default();
    if !interactive {
        let m = sample_twice(&mut source, every)?;
        print_once(&m, &view, &mut |u| users.name(u), json);
        return Ok(EXIT_OK);
    }
    let mut term = TerminalGuard::enter().context("cannot set up the terminal")?;
    install_signal_flag();
    let mut next_event = |timeout: Duration| -> io::Result<Option<Event>> {
        // Events crossterm already buffered first; then wait on the terminal ourselves, because
        // crossterm's own wait spins on a hung-up terminal (read() returning 0 forever) and
        // never returns, so a closed window would leave a process burning a CPU.
        if event::poll(Duration::ZERO)? {
            return event::read().map(Some);
        }
        if wait_for_terminal(timeout)? && event::poll(Duration::ZERO)? {
            return event::read().map(Some);
        }
        Ok(None)
    };
    let result = app(&mut term.terminal, &mut source, &mut view, &mut next_event, &mut |u| users.name(u), a.fault_panic);
    drop(term);
    result?;
    Ok(EXIT_OK)
}

/// The active policy as the status line shows it.
fn status_line_policy(fw: &dyn Firewall) -> Option<String> {
    let info = fw.table_info().ok().flatten()?;
    let c = info.comment.unwrap_or_default();
    Some(match crate::active::comment_fields(&c) {
        Some((hash, path)) => format!("policy {} {}", &hash[..hash.len().min(12)], path.unwrap_or("")),
        None => "a leash table without leash's comment".into(),
    })
}

/// User names, looked up once per uid (NSS can be slow: LDAP).
#[derive(Debug, Default)]
struct UserNames(HashMap<u32, String>);

impl UserNames {
    fn name(&mut self, uid: u32) -> String {
        self.0.entry(uid).or_insert_with(|| crate::system::user_name(uid).unwrap_or_else(|| uid.to_string())).clone()
    }
}

fn now_hms() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}

fn sample(source: &mut dyn Source, model: &mut Model, dt: Option<Duration>) {
    match source.sockets() {
        Ok(socks) => {
            model.error = None;
            model.update(&socks, source.blocked(), dt, &now_hms());
        }
        // Shown in the status line; the next refresh tries again.
        Err(e) => model.error = Some(e.to_string()),
    }
}

fn sample_twice(source: &mut dyn Source, every: Duration) -> Result<Model> {
    let mut m = Model::default();
    sample(source, &mut m, None);
    std::thread::sleep(every);
    sample(source, &mut m, Some(every));
    if let Some(e) = &m.error {
        anyhow::bail!("cannot read the sockets: {e}");
    }
    Ok(m)
}

fn print_once(m: &Model, view: &View, user: &mut dyn FnMut(u32) -> String, json: bool) {
    // Names first: `visible` takes a `Fn`.
    let names: HashMap<u32, String> = m.rows.iter().filter_map(|r| r.uid).map(|u| (u, user(u))).collect();
    let name = |u: u32| names.get(&u).cloned().unwrap_or_else(|| u.to_string());
    let rows = m.visible(view.sort, "", &name);
    if json {
        let procs: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "pid": r.pid, "comm": r.comm, "uid": r.uid, "user": r.uid.map(name),
                    "conns": r.conns, "half_open": r.half_open, "new_per_s": r.new_rate,
                    "bytes_sent": r.sent, "bytes_received": r.received,
                    "tx_bytes_per_s": r.tx_rate, "rx_bytes_per_s": r.rx_rate, "blocked": r.blocked,
                    "destinations": r.dests.iter().map(|d| serde_json::json!({
                        "proto": d.proto.as_str(), "remote": d.remote.to_string(), "conns": d.conns,
                        "state": d.state.as_str(), "bytes_sent": d.sent, "bytes_received": d.received,
                        "bytes_per_s": d.rate, "verdict": d.verdict, "rule": d.rule,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        crate::output::print_json(&serde_json::json!({
            "policy": view.policy,
            "interval_s": view.interval.as_secs_f64(),
            "egress_connections": m.conns,
            "blocked": m.blocked_total,
            "processes": procs,
        }));
        return;
    }
    println!(
        "{} | {} egress connections | {} blocked in {:.1}s",
        view.policy.as_deref().unwrap_or("no leash table"),
        m.conns,
        m.blocked_total,
        view.interval.as_secs_f64()
    );
    println!("{:>7} {:<10} {:<15} {:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>7}  TOP DESTINATION", "PID", "USER", "PROCESS", "CONNS", "SYN", "SENT", "RECV", "TX/s", "RX/s", "BLOCKED");
    for r in rows {
        let rate = |v: Option<f64>| v.map(model::human_bytes).unwrap_or_else(|| "-".into());
        println!(
            "{:>7} {:<10} {:<15} {:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>7}  {}",
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.uid.map(name).unwrap_or_else(|| "?".into()),
            if matches!(r.key, ProcKey::Pid(_)) { r.comm.as_str() } else { "(no process)" },
            r.conns,
            r.half_open,
            model::human_bytes(r.sent as f64),
            model::human_bytes(r.received as f64),
            rate(r.tx_rate),
            rate(r.rx_rate),
            r.blocked,
            r.dests.first().map(|d| d.remote.to_string()).unwrap_or_default()
        );
    }
}

/// What a key does.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Quit,
    Redraw,
    Nothing,
}

fn on_key(k: KeyEvent, view: &mut View, model: &Model, user: &dyn Fn(u32) -> String) -> Action {
    if k.kind == KeyEventKind::Release {
        return Action::Nothing;
    }
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if view.editing {
        match k.code {
            KeyCode::Enter => view.editing = false,
            KeyCode::Esc => {
                view.editing = false;
                view.filter.clear();
            }
            KeyCode::Backspace => {
                view.filter.pop();
            }
            KeyCode::Char(c) if view.filter.chars().count() < 64 => view.filter.push(c),
            _ => return Action::Nothing,
        }
        return Action::Redraw;
    }
    match k.code {
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('/') => {
            view.editing = true;
            Action::Redraw
        }
        KeyCode::Char(c) if Sort::from_key(c).is_some() => {
            view.sort = Sort::from_key(c).unwrap_or(view.sort);
            Action::Redraw
        }
        KeyCode::Up | KeyCode::Down | KeyCode::Char('j') | KeyCode::Char('k') | KeyCode::Home | KeyCode::End => {
            let rows = model.visible(view.sort, &view.filter, user);
            if rows.is_empty() {
                return Action::Nothing;
            }
            let cur = view.selected.and_then(|s| rows.iter().position(|r| r.key == s)).unwrap_or(0);
            let next = match k.code {
                KeyCode::Up | KeyCode::Char('k') => cur.saturating_sub(1),
                KeyCode::Down | KeyCode::Char('j') => (cur + 1).min(rows.len() - 1),
                KeyCode::Home => 0,
                _ => rows.len() - 1,
            };
            view.selected = Some(rows[next].key);
            Action::Redraw
        }
        _ => Action::Nothing,
    }
}

/// Longest wait for a key before the loop looks at the signal flag again.
const TICK: Duration = Duration::from_millis(200);

/// The interactive loop, over any backend, source and event stream (tests script all three).
fn app<B: Backend>(
    term: &mut Terminal<B>,
    source: &mut dyn Source,
    view: &mut View,
    next_event: &mut dyn FnMut(Duration) -> io::Result<Option<Event>>,
    user: &mut dyn FnMut(u32) -> String,
    fault_panic: bool,
) -> Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let mut model = Model::default();
    let mut last: Option<Instant> = None;
    let mut names: HashMap<u32, String> = HashMap::new();
    loop {
        let due = last.is_none_or(|t| t.elapsed() >= view.interval);
        if due {
            let now = Instant::now();
            sample(source, &mut model, last.map(|t| now - t));
            last = Some(now);
            for uid in model.rows.iter().filter_map(|r| r.uid) {
                names.entry(uid).or_insert_with(|| user(uid));
            }
        }
        let name = |u: u32| names.get(&u).cloned().unwrap_or_else(|| u.to_string());
        term.draw(|f| ui::draw(f, &model, view, &name))?;
        if fault_panic {
            panic!("leash top: --fault-panic after the first frame");
        }
        // Wait for a key until the next refresh, but never longer than a tick, so that a
        // SIGTERM is seen soon.
        let mut wait = last.map_or(Duration::ZERO, |t| view.interval.saturating_sub(t.elapsed())).min(TICK);
        loop {
            if STOP.load(Ordering::Relaxed) || terminal_gone() {
                return Ok(());
            }
            match next_event(wait)? {
                Some(Event::Key(k)) => match on_key(k, view, &model, &name) {
                    Action::Quit => return Ok(()),
                    Action::Redraw => break,
                    Action::Nothing => {}
                },
                Some(Event::Resize(..)) => break,
                Some(_) => {}
                None => break,
            }
            wait = Duration::ZERO;
        }
    }
}

/// Waits up to `timeout` for input on the terminal (standard input). `Ok(true)`: something to
/// read; `Ok(false)`: the time ran out; an error when the terminal was hung up.
fn wait_for_terminal(timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the terminal went away"));
    }
    Ok(n > 0)
}

/// Whether the terminal on standard input was hung up (its window or tmux server closed).
/// SIGHUP does not always reach us (a shell that does not forward it, a reparented process),
/// and a hung-up tty can keep reporting "no key" to the event poll, so the loop would go on
/// sampling for no one. `tcgetattr` fails with EIO once the tty is gone. A standard input that
/// never was a terminal (the tests' scripted events) does not count as gone.
fn terminal_gone() -> bool {
    // SAFETY: tcgetattr only reads the descriptor's state into `t`.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EIO)
    }
}

/// Set by SIGTERM and SIGHUP.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_flag() {
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

type CrosstermTerminal = Terminal<ratatui::backend::CrosstermBackend<io::Stdout>>;

/// Raw mode and the alternate screen, left again when dropped.
struct TerminalGuard {
    terminal: CrosstermTerminal,
}

impl TerminalGuard {
    fn enter() -> io::Result<TerminalGuard> {
        use ratatui::crossterm::{cursor, execute, terminal};
        install_panic_hook();
        terminal::enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        // From here on every failure must restore: build the guard's parts, restoring on error.
        let setup = || -> io::Result<CrosstermTerminal> {
            execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
            Terminal::new(ratatui::backend::CrosstermBackend::new(io::stdout()))
        };
        match setup() {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(e) => {
                restore_terminal();
                Err(e)
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

impl std::fmt::Debug for TerminalGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TerminalGuard")
    }
}

/// Whether the terminal is in raw mode on the alternate screen, set up by us.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Leaves raw mode and the alternate screen and shows the cursor, once: the panic hook and the
/// guard's `Drop` (during the unwinding that follows) both call it, and leaving the alternate
/// screen a second time is not harmless: the terminal restores the cursor it saved on entering
/// again, and what was printed since (the panic message) gets overwritten.
fn restore_terminal() {
    use ratatui::crossterm::{cursor, execute, terminal};
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return;
    }
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

/// Restores the terminal before the previous hook prints the panic, so the message is readable
/// and the shell usable afterwards.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::model::tests::sock;
    use super::*;
    use observe::detect::{Replay, State};
    use ratatui::backend::TestBackend;
    use std::collections::VecDeque;

    fn key(c: KeyCode) -> Event {
        Event::Key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    #[test]
    fn keys_drive_the_loop_until_q() {
        let snap = vec![
            sock(10, "curl", State::Established, "192.0.2.1:40000", "198.51.100.9:443", 10, 10, "web"),
            sock(20, "wget", State::Established, "192.0.2.1:40001", "198.51.100.80:80", 9000, 9000, "web"),
        ];
        let mut src = Replay::new(vec![snap], vec![]);
        let mut term = Terminal::new(TestBackend::new(120, 24)).unwrap();
        let mut view = View::new(Duration::from_secs(3600));
        let mut script: VecDeque<Event> =
            [key(KeyCode::Char('b')), key(KeyCode::Down), key(KeyCode::Char('/')), key(KeyCode::Char('c')), key(KeyCode::Enter), key(KeyCode::Char('q'))]
                .into();
        let mut events = |_: Duration| -> io::Result<Option<Event>> { Ok(script.pop_front()) };
        app(&mut term, &mut src, &mut view, &mut events, &mut |u| u.to_string(), false).unwrap();
        assert_eq!(view.sort, Sort::Bytes);
        assert_eq!(view.selected, Some(ProcKey::Pid(10)), "Down from wget (most bytes) selects curl");
        assert_eq!(view.filter, "c");
        assert!(!view.editing);
        let screen = term.backend().to_string();
        assert!(screen.contains("filter: c"), "{screen}");
    }

    #[test]
    fn escape_clears_the_filter_and_ctrl_c_quits() {
        let m = Model::default();
        let mut v = View::new(Duration::from_secs(1));
        let u = |x: u32| x.to_string();
        assert_eq!(on_key(KeyEvent::new(KeyCode::Char('/'), KeyModifiers::NONE), &mut v, &m, &u), Action::Redraw);
        on_key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE), &mut v, &m, &u);
        assert_eq!(v.filter, "q", "q is text while typing a filter");
        on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE), &mut v, &m, &u);
        assert!(v.filter.is_empty() && !v.editing);
        assert_eq!(on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), &mut v, &m, &u), Action::Quit);
    }
}
