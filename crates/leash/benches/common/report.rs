//! What goes into a bench's report besides its numbers: the versions of the tools compared, the
//! machine's kernel and CPUs, ratios as the tables print them, and where the report is written.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a tool prints when asked for its version (`nft --version`): its standard output, or its
/// standard error when that is empty, trimmed; `unknown (...)` if it cannot be run.
pub fn tool_output(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map(|o| {
            let t = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&t).trim().to_string()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The first non-empty line of [`tool_output`] (dnsmasq adds its compile options and licence).
pub fn tool_version(argv: &[&str]) -> String {
    tool_output(argv).lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

/// `kernel RELEASE, N CPUs`, for a report's header.
pub fn kernel_line() -> String {
    format!(
        "kernel {}, {} CPUs",
        tool_version(&["uname", "-r"]),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// `num / den` in bold, with two decimals (none from 100 on); `n/a` unless both are positive
/// numbers.
pub fn ratio(num: f64, den: f64) -> String {
    if num.is_nan() || den.is_nan() || num <= 0.0 || den <= 0.0 {
        "n/a".into()
    } else {
        let r = num / den;
        if r >= 100.0 { format!("**{r:.0}**") } else { format!("**{r:.2}**") }
    }
}

/// `target/bench-NAME` of the workspace (or of `CARGO_TARGET_DIR`), where a bench leaves its
/// report.
pub fn report_dir(name: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join(format!("bench-{name}"))
}

/// Writes `report` to `report.md` in [`report_dir`]; returns the file's path.
pub fn write_report(name: &str, report: &str) -> std::io::Result<PathBuf> {
    let dir = report_dir(name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("report.md");
    std::fs::write(&path, report)?;
    Ok(path)
}
