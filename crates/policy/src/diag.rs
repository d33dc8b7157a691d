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

/// At most this many invalid UTF-8 sequences are reported for one text.
pub const MAX_UTF8_ERRORS: usize = 20;

/// A policy's bytes as text. Invalid UTF-8 is an error at the line and column of each bad
/// sequence (up to [`MAX_UTF8_ERRORS`]), like every other policy error: the `Err` carries the
/// text with each bad sequence replaced by U+FFFD (so diagnostics can show the line; the valid
/// prefix, and with it every position up to the first bad byte, is the same as in the file) and
/// the diagnostics, whose spans point at the replacements.
pub fn decode(bytes: &[u8]) -> Result<&str, (String, Vec<Diagnostic>)> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Ok(s);
    }
    let mut text = String::with_capacity(bytes.len() + 16);
    let mut diags = Vec::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        let bad = chunk.invalid();
        if bad.is_empty() {
            continue;
        }
        let start = text.len();
        text.push(char::REPLACEMENT_CHARACTER);
        if diags.len() < MAX_UTF8_ERRORS {
            let hex: Vec<String> = bad.iter().map(|b| format!("0x{b:02x}")).collect();
            diags.push(Diagnostic::error(
                "not-utf8",
                start..text.len(),
                format!("invalid UTF-8 (byte {}): the file must be UTF-8 text", hex.join(" ")),
            ));
        }
    }
    Err((text, diags))
}

/// Where `bytes` stop being UTF-8: `Err((col, byte))` with the 1-based column (in characters of
/// the valid prefix) and the first bad byte. For one line of a line-oriented file.
pub fn line_utf8(bytes: &[u8]) -> Result<&str, (usize, u8)> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        // `good` is valid UTF-8 by definition of `valid_up_to`.
        let col = std::str::from_utf8(good).map_or(1, |g| g.chars().count() + 1);
        (col, bytes[e.valid_up_to()])
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_reported_at_line_and_column_of_each_bad_sequence() {
        assert_eq!(decode(b"version = 1\n"), Ok("version = 1\n"));
        let (text, d) = decode(b"a = 1\nb = \"\xc3\xa9\xe9x\"\n\xff\xfe\n").unwrap_err();
        assert_eq!(text, "a = 1\nb = \"\u{e9}\u{fffd}x\"\n\u{fffd}\u{fffd}\n");
        let at: Vec<(usize, usize)> = d.iter().map(|d| line_col(&text, d.span.start)).collect();
        // `\xff\xfe` is two bad sequences (each byte starts none).
        assert_eq!(at, vec![(2, 7), (3, 1), (3, 2)], "{d:?}");
        assert!(d.iter().all(|d| d.severity == Severity::Error && d.code == "not-utf8"));
        assert!(d[0].message.starts_with("invalid UTF-8 (byte 0xe9)"), "{}", d[0].message);
        let shown = render("p.toml", &text, &d[0]);
        assert_eq!(shown, "p.toml:2:7: error: invalid UTF-8 (byte 0xe9): the file must be UTF-8 text\n  |\n2 | b = \"\u{e9}\u{fffd}x\"\n  |       ^\n");
        let many = vec![0xffu8; 100];
        assert_eq!(decode(&many).unwrap_err().1.len(), MAX_UTF8_ERRORS);
    }

    #[test]
    fn a_line_stops_being_utf8_at_a_column() {
        assert_eq!(line_utf8(b"ok"), Ok("ok"));
        assert_eq!(line_utf8(b"\xc3\xa9a\xc3"), Err((3, 0xc3)));
    }
}
