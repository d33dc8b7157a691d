//! Diagnostics (errors and warnings) with byte spans, rendered as `FILE:LINE:COL: error: MESSAGE` plus the line and a caret.

use crate::model::Span;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One finding about a policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub span: Span,
    pub message: String,
    /// A short machine-readable name of the finding (for `--json` and for tests), e.g. `unknown-key`.
    pub code: &'static str,
}

impl Diagnostic {
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, span, message: message.into(), code }
    }
    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, span, message: message.into(), code }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..floor_char_boundary(src, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Renders a diagnostic the way compilers do:
///
/// ```text
/// policy.toml:7:8: error: unknown key `prot`
///     7 | prot = "udp"
///       | ^^^^
/// ```
pub fn render(file: &str, src: &str, d: &Diagnostic) -> String {
    let (line, col) = line_col(src, d.span.start);
    let start = floor_char_boundary(src, d.span.start.min(src.len()));
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
    let text = &src[line_start..line_end];
    let end = floor_char_boundary(src, d.span.end.clamp(start, line_end));
    let width = src[start..end].chars().count().max(1);
    let gutter = line.to_string().len();
    format!(
        "{file}:{line}:{col}: {}: {}\n{:>gutter$} |\n{line} | {text}\n{:>gutter$} | {}{}\n",
        d.severity.as_str(),
        d.message,
        "",
        "",
        " ".repeat(col - 1),
        "^".repeat(width),
    )
}
