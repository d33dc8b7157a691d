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
    pub fn table_comment(&self) -> String {
        let abs = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        format!("leash sha256:{} {}", self.sha256, abs.display())
    }
}

/// Reads and validates a policy, running the lints too when it parses (`today` for the review lint).
pub fn load(path: &Path, today: policy::Date) -> Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read policy {}", path.display()))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let src = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let (policy, mut diagnostics) = policy::load(&src, &SystemResolver);
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
