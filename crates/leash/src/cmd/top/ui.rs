//! Drawing `leash top` with ratatui: a status line, the process table, the destinations of the
//! selected process beside the latest blocked attempts, and a line of keys (or the filter being
//! typed). Pure: it draws a [`Model`] and a [`View`] into any backend, so tests render it into
//! ratatui's `TestBackend`.

use super::model::{BlockedLine, DestRow, Model, ProcKey, ProcRow, Sort, human_bytes};
use observe::detect::State;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};
use std::time::Duration;

/// What the user chose, and facts for the status line.
#[derive(Debug, Clone)]
pub struct View {
    pub sort: Sort,
    pub filter: String,
    /// The filter is being typed (after `/`).
    pub editing: bool,
    /// The selected process; kept by identity so a refresh that reorders rows keeps it.
    pub selected: Option<ProcKey>,
    pub interval: Duration,
    /// The active policy, as `sha256 path` (from the table comment); `None` without a table.
    pub policy: Option<String>,
    /// Why blocked attempts are not shown, when they are not.
    pub log_note: Option<String>,
}

impl View {
    pub fn new(interval: Duration) -> View {
        View {
            sort: Sort::Conns,
            filter: String::new(),
            editing: false,
            selected: None,
            interval,
            policy: None,
            log_note: None,
        }
    }
}

fn rate(r: Option<f64>) -> String {
    r.map(human_bytes).unwrap_or_else(|| "-".into())
}

fn per_sec(r: Option<f64>) -> String {
    r.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// Terminal width from which the two lower panes sit side by side.
const SIDE_BY_SIDE: u16 = 140;

const HEAD: Style = Style::new().add_modifier(Modifier::BOLD);

/// Draws one frame.
pub fn draw(f: &mut Frame, model: &Model, view: &View, user: &dyn Fn(u32) -> String) {
    let [status, procs, lower, keys] =
        Layout::vertical([Constraint::Length(1), Constraint::Percentage(50), Constraint::Min(6), Constraint::Length(1)])
            .areas(f.area());
    let rows = model.visible(view.sort, &view.filter, user);
    let selected = view.selected.and_then(|k| rows.iter().position(|r| r.key == k)).or((!rows.is_empty()).then_some(0));

    f.render_widget(Paragraph::new(status_line(model, view)), status);
    draw_procs(f, procs, &rows, selected, view, user);
    // Destinations and blocked attempts side by side when both fit their columns, else one
    // above the other.
    let [dests, blocked] = if lower.width >= SIDE_BY_SIDE {
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(lower)
    } else {
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(lower)
    };
    draw_dests(f, dests, selected.and_then(|i| rows.get(i).copied()));
    draw_blocked(f, blocked, model, view);
    f.render_widget(Paragraph::new(keys_line(view)), keys);
}

fn status_line(model: &Model, view: &View) -> Line<'static> {
    // The policy goes last: on a narrow terminal its path is what gets cut, not the counts.
    let policy = match &view.policy {
        Some(p) => p.clone(),
        None => "no leash table".into(),
    };
    let mut spans = vec![
        Span::styled(" leash top ", Style::new().add_modifier(Modifier::REVERSED)),
        Span::raw(format!(
            " {} conns, {} procs | {} blocked | every {:.1}s | sort: {}",
            model.conns,
            model.rows.iter().filter(|r| r.conns > 0).count(),
            model.blocked_total,
            view.interval.as_secs_f64(),
            view.sort.name()
        )),
    ];
    if !view.filter.is_empty() && !view.editing {
        spans.push(Span::raw(format!(" | filter: {}", view.filter)));
    }
    if let Some(e) = &model.error {
        spans.push(Span::styled(format!(" | error: {e}"), Style::new().fg(Color::Red)));
    }
    spans.push(Span::raw(format!(" | {policy}")));
    Line::from(spans)
}

fn keys_line(view: &View) -> Line<'static> {
    if view.editing {
        return Line::from(vec![
            Span::styled(" filter: ", HEAD),
            Span::raw(format!("{}_", view.filter)),
            Span::raw("   (Enter: keep, Esc: clear)"),
        ]);
    }
    Line::from(" q quit  c conns  b bytes  r rate  n new/s  x blocked  p pid  / filter  Up/Down select")
}

fn draw_procs(f: &mut Frame, area: Rect, rows: &[&ProcRow], selected: Option<usize>, view: &View, user: &dyn Fn(u32) -> String) {
    let header = Row::new(["PID", "USER", "PROCESS", "CONNS", "SYN", "NEW/s", "SENT", "RECV", "TX/s", "RX/s", "BLOCKED", "TOP DESTINATION"])
        .style(HEAD);
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            let top = r.dests.first().map(|d| {
                if r.dests.len() > 1 { format!("{} (+{})", d.remote, r.dests.len() - 1) } else { d.remote.to_string() }
            });
            let row = Row::new([
                Cell::from(r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())),
                Cell::from(r.uid.map(user).unwrap_or_else(|| "?".into())),
                Cell::from(match r.key {
                    ProcKey::Pid(_) => r.comm.clone(),
                    ProcKey::Uid(_) => "(no process)".into(),
                }),
                Cell::from(r.conns.to_string()),
                Cell::from(r.half_open.to_string()),
                Cell::from(per_sec(r.new_rate)),
                Cell::from(human_bytes(r.sent as f64)),
                Cell::from(human_bytes(r.received as f64)),
                Cell::from(rate(r.tx_rate)),
                Cell::from(rate(r.rx_rate)),
                Cell::from(r.blocked.to_string()),
                Cell::from(top.unwrap_or_default()),
            ]);
            if r.blocked > 0 { row.style(Style::new().fg(Color::Red)) } else { row }
        })
        .collect();
    let widths = [
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(15),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Fill(1),
    ];
    let title = if view.filter.is_empty() {
        format!(" Processes ({}) ", rows.len())
    } else {
        format!(" Processes ({}, filter \"{}\") ", rows.len(), view.filter)
    };
    let table = Table::new(body, widths)
        .header(header)
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(">");
    let mut state = TableState::default().with_selected(selected);
    f.render_stateful_widget(table, area, &mut state);
}

/// `ss`'s short state names, to keep the column narrow.
fn short_state(s: State) -> &'static str {
    match s {
        State::Established => "ESTAB",
        State::SynSent => "SYN-SENT",
        State::CloseWait => "CLOSE-WT",
        State::FinWait1 => "FIN-WT-1",
        State::FinWait2 => "FIN-WT-2",
        State::LastAck => "LAST-ACK",
        other => other.as_str(),
    }
}

fn dest_row(d: &DestRow) -> Row<'static> {
    let mut verdict = match (&d.verdict, &d.rule) {
        (Some(v), Some(r)) => format!("{v} {r}"),
        (Some(v), None) => v.clone(),
        _ => "-".into(),
    };
    // The name that was looked up, as the kernel's domain set records it.
    if let Some(h) = &d.host {
        verdict.push_str(&format!(" ({h})"));
    }
    Row::new([
        d.proto.as_str().to_string(),
        d.remote.to_string(),
        d.conns.to_string(),
        short_state(d.state).to_string(),
        human_bytes((d.sent + d.received) as f64),
        rate(d.rate),
        verdict,
    ])
}

fn draw_dests(f: &mut Frame, area: Rect, row: Option<&ProcRow>) {
    let title = match row {
        Some(r) => format!(" Destinations of {} ", r.label()),
        None => " Destinations ".into(),
    };
    let header = Row::new(["PROTO", "REMOTE", "N", "STATE", "BYTES", "RATE", "POLICY"]).style(HEAD);
    let body: Vec<Row> = row.map(|r| r.dests.iter().map(dest_row).collect()).unwrap_or_default();
    let widths = [
        Constraint::Length(5),
        Constraint::Length(21),
        Constraint::Length(3),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Fill(1),
    ];
    f.render_widget(Table::new(body, widths).header(header).block(Block::bordered().title(title)), area);
}

fn blocked_row(b: &BlockedLine) -> Row<'static> {
    let dst = match b.event.port {
        Some(p) if b.event.dst.is_ipv6() => format!("[{}]:{p}", b.event.dst),
        Some(p) => format!("{}:{p}", b.event.dst),
        None => b.event.dst.to_string(),
    };
    let dst = match &b.event.host {
        Some(h) => format!("{dst} ({h})"),
        None => dst,
    };
    Row::new([b.time.clone(), b.who.clone(), b.event.proto.clone(), dst, b.event.rule.clone()])
}

fn draw_blocked(f: &mut Frame, area: Rect, model: &Model, view: &View) {
    let title = match &view.log_note {
        Some(n) => format!(" Blocked attempts: {n} "),
        None => format!(" Blocked attempts ({}) ", model.blocked_total),
    };
    let header = Row::new(["TIME", "PROCESS", "PROTO", "DESTINATION", "RULE"]).style(HEAD);
    let body: Vec<Row> = model.recent.iter().map(blocked_row).collect();
    let widths = [
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(5),
        Constraint::Length(21),
        Constraint::Fill(1),
    ];
    f.render_widget(Table::new(body, widths).header(header).block(Block::bordered().title(title)), area);
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{blocked, sock};
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn user(uid: u32) -> String {
        match uid {
            0 => "root".into(),
            1000 => "alice".into(),
            n => n.to_string(),
        }
    }

    /// A model after two snapshots one second apart, as a fake source would produce them.
    fn model() -> Model {
        let first = vec![
            sock(812, "curl", State::Established, "192.0.2.1:40100", "198.51.100.9:443", 1_000, 200_000, "web"),
            sock(2301, "python3", State::Established, "192.0.2.1:40200", "203.0.113.7:8443", 50, 100, "api"),
        ];
        let mut second = vec![
            sock(812, "curl", State::Established, "192.0.2.1:40100", "198.51.100.9:443", 3_048, 1_248_576, "web"),
            sock(812, "curl", State::Established, "192.0.2.1:40101", "198.51.100.9:443", 500, 20_000, "web"),
            sock(2301, "python3", State::Established, "192.0.2.1:40200", "203.0.113.7:8443", 1_074, 1_124, "api"),
        ];
        // A scanner: half-open connects a drop rule leaves hanging.
        second.extend(
            (0..3).map(|i| sock(2450, "nmap", State::SynSent, &format!("192.0.2.1:{}", 41000 + i), "203.0.113.66:22", 0, 0, "(default)")),
        );
        let mut m = Model::default();
        m.update(&first, vec![], None, "12:00:00");
        m.update(
            &second,
            vec![blocked(Some(2450), Some("nmap"), "203.0.113.66", 22), blocked(None, None, "2001:db8::66", 25)],
            Some(Duration::from_secs(1)),
            "12:00:01",
        );
        m
    }

    fn render(model: &Model, view: &View, width: u16, height: u16) -> TestBackend {
        let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
        t.draw(|f| draw(f, model, view, &user)).unwrap();
        t.backend().clone()
    }

    fn view() -> View {
        let mut v = View::new(Duration::from_secs(1));
        v.policy = Some("policy 3f2a1c0d9e8b /etc/leash/policy.toml".into());
        v
    }

    #[test]
    fn frame_by_connections() {
        insta::assert_snapshot!(render(&model(), &view(), 120, 30));
    }

    #[test]
    fn wide_frame_sorted_by_blocked_with_filter_being_typed() {
        let mut v = view();
        v.sort = Sort::Blocked;
        v.filter = "203.0.113".into();
        v.editing = true;
        v.log_note = None;
        insta::assert_snapshot!(render(&model(), &v, 160, 24));
    }

    #[test]
    fn selection_follows_the_process_not_the_line() {
        let m = model();
        let mut v = view();
        v.selected = Some(ProcKey::Pid(2301));
        let text = render(&m, &v, 120, 30).to_string();
        assert!(text.contains("Destinations of python3[2301]"), "{text}");
    }
}
