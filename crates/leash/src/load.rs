//! Reads a policy file, validates it and turns its diagnostics into text or JSON.

use crate::system::SystemResolver;
use anyhow::{Context, Result};
use policy::{Diagnostic, Policy, Severity};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A policy file as read from disk, with what validation found.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub src: String,
    /// `Some` when there are no errors.
    pub policy: Option<Policy>,
    pub diagnostics: Vec<Diagnostic>,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
}

impl Loaded {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }
    pub fn warnings(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Warning).count()
    }
    /// The name diagnostics use for the file: the path as the user typed it.
    pub fn display_name(&self) -> String {
        self.path.display().to_string()
    }
    /// The comment leash stores in the kernel with the table: hash and absolute path.
    ///
    /// nft keeps at most 127 bytes of comment. A long path would be cut, and every command that
    /// finds the active policy through it (`status`, `conns`, `log`, `metrics`, `top`) would read
    /// a wrong file; so the hash is shortened first (to no less than 16 hex digits, which
    /// readers compare as a prefix), and a path that still does not fit is left out whole.
    pub fn table_comment(&self) -> String {
        let abs = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let path = abs.display().to_string();
        let fixed = "leash sha256: ".len();
        let room = ruleset::MAX_COMMENT_LEN.saturating_sub(fixed + path.len());
        if room >= MIN_HASH_HEX && !path.contains('"') && !path.chars().any(char::is_control) {
            let hash = &self.sha256[..room.min(self.sha256.len())];
            format!("leash sha256:{hash} {path}")
        } else {
            format!("leash sha256:{}", self.sha256)
        }
    }

    /// How this host compiles the policy: now, with the kernel's time zone (see
    /// `CompileOptions`).
    pub fn compile_options(&self) -> ruleset::compile::CompileOptions {
        ruleset::compile::CompileOptions {
            comment: Some(self.table_comment()),
            now: Some(jiff::Timestamp::now()),
            imitate: None,
            kernel_minutes_west: crate::system::kernel_minutes_west(),
        }
    }
}

/// The shortest policy hash a table comment carries (64 bits).
const MIN_HASH_HEX: usize = 16;

/// Whether the policy hash read from a table comment (possibly shortened, see
/// [`Loaded::table_comment`]) is the hash of `full`.
pub fn same_hash(full: &str, from_comment: &str) -> bool {
    from_comment.len() >= MIN_HASH_HEX && full.starts_with(from_comment)
}

/// Reads and validates a policy, running the lints too when it parses (`today` for the review lint).
pub fn load(path: &Path, today: policy::Date) -> Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read policy {}", path.display()))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let (src, policy, mut diagnostics) = match policy::diag::decode(&bytes) {
        Ok(src) => {
            let (policy, diagnostics) = policy::load(src, &SystemResolver::for_policy(path));
            (src.to_string(), policy, diagnostics)
        }
        // Invalid UTF-8 is a policy error with a position (exit 1, nothing changed); the text
        // with replacements is not parsed further: its values would not be the file's.
        Err((lossy, diagnostics)) => (lossy, None, diagnostics),
    };
    if let Some(p) = &policy {
        diagnostics.extend(policy::lint::lint(p, today));
        diagnostics.sort_by_key(|d| (d.span.start, d.severity));
    }
    Ok(Loaded { path: path.to_path_buf(), src, policy, diagnostics, sha256 })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A diagnostic as JSON.
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
}

pub fn json_diagnostics(l: &Loaded) -> Vec<JsonDiagnostic> {
    l.diagnostics
        .iter()
        .map(|d| {
            let (line, column) = policy::diag::line_col(&l.src, d.span.start);
            let (end_line, end_column) = policy::diag::line_col(&l.src, d.span.end);
            JsonDiagnostic {
                file: l.display_name(),
                line,
                column,
                end_line,
                end_column,
                severity: d.severity.as_str(),
                code: d.code,
                message: d.message.clone(),
            }
        })
        .collect()
}

/// Prints every diagnostic to standard error, compiler style.
pub fn print_diagnostics(l: &Loaded) {
    let name = l.display_name();
    for d in &l.diagnostics {
        eprint!("{}", policy::diag::render(&name, &l.src, d));
    }
}

/// Loads a policy for a command that needs a valid one: prints diagnostics (errors and warnings) and
/// returns `None` when there are errors.
pub fn load_valid(path: &Path) -> Result<Option<(Loaded, Policy)>> {
    let mut l = load(path, crate::system::today())?;
    // Commands other than `check` show only errors; warnings are `check`'s business.
    l.diagnostics.retain(|d| d.severity == Severity::Error);
    if l.errors() > 0 {
        print_diagnostics(&l);
        eprintln!("leash: {} has {} error(s); nothing was changed", l.display_name(), l.errors());
        return Ok(None);
    }
    let p = l.policy.clone().context("policy validated without errors but produced no policy")?;
    Ok(Some((l, p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(path: &str) -> Loaded {
        Loaded { path: path.into(), src: String::new(), policy: None, diagnostics: Vec::new(), sha256: "ab".repeat(32) }
    }

    #[test]
    fn table_comments_fit_nft_and_never_carry_a_cut_path() {
        // (path length) -> the comment keeps the whole path with a (possibly shortened) hash,
        // or leaves the path out.
        for len in [10, 40, 49, 50, 60, 97, 98, 200] {
            let path = format!("/{}", "p".repeat(len - 1));
            let c = loaded(&path).table_comment();
            assert!(c.len() <= ruleset::MAX_COMMENT_LEN, "{len}: {} bytes", c.len());
            let rest = c.strip_prefix("leash sha256:").unwrap();
            match rest.split_once(' ') {
                Some((hash, p)) => {
                    assert_eq!(p, path, "{len}: the path is whole");
                    assert!(same_hash(&"ab".repeat(32), hash), "{len}: {hash}");
                }
                None => {
                    assert!(len > 97, "{len}: a path that fits was left out");
                    assert_eq!(rest, "ab".repeat(32));
                }
            }
        }
        assert!(!same_hash("abcdef", "abc"), "too short a prefix proves nothing");
    }
}
