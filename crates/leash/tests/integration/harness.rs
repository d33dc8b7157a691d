//! Test harness: runs the real `leash` binary (optionally inside a namespace), records what
//! happened, and prints everything when an assertion fails.

use kernel::netns::NetNs;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use kernel::testutil::{list_leash, need_root, nft_load, nft_raw, root_has_no_leash_table};

/// Path of the leash binary Cargo built for these tests.
pub fn leash_bin() -> &'static str {
    env!("CARGO_BIN_EXE_leash")
}

/// Path of a shipped example policy.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(format!("{name}.toml"))
}

pub const EXAMPLES: [&str; 5] = ["web-server", "database-server", "developer-workstation", "app-server-domains", "branch-office"];

/// The result of one command, printable in full for failure messages.
#[derive(Debug)]
pub struct Run {
    pub cmdline: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The namespace's ruleset right after the command, when it ran in one.
    pub ruleset: Option<String>,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n===== command: {}", self.cmdline)?;
        writeln!(f, "===== exit code: {:?}", self.code)?;
        writeln!(f, "===== stdout:\n{}", self.stdout)?;
        writeln!(f, "===== stderr:\n{}", self.stderr)?;
        if let Some(r) = &self.ruleset {
            writeln!(f, "===== ruleset of the namespace after the command:\n{r}")?;
        }
        Ok(())
    }
}

/// Runs `leash ARGS` in the test process's own namespace (for commands that touch no kernel state).
pub fn leash(args: &[&str]) -> Run {
    run_cmd(None, leash_bin(), args, None)
}

/// Runs `leash ARGS` inside `ns` (via `nsenter --net=`).
pub fn leash_in(ns: &NetNs, args: &[&str]) -> Run {
    run_cmd(Some(ns), leash_bin(), args, None)
}

/// Runs any program, optionally inside `ns`, optionally feeding stdin.
pub fn run_cmd(ns: Option<&NetNs>, program: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.path().display())).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    // leash records the sizes of large sets and the cgroup ids it applied (for `status`); tests
    // keep that record under the target directory instead of the host's /run/leash. A test that
    // sets it itself wins.
    if std::env::var_os("LEASH_STATE_DIR").is_none() {
        cmd.env("LEASH_STATE_DIR", std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("leash-state"));
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let cmdline = format!(
        "{}{} {}",
        ns.map(|n| format!("nsenter --net={} ", n.path().display())).unwrap_or_default(),
        program,
        args.join(" ")
    );
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let ruleset = ns.map(|ns| nft_raw(ns, &["list", "ruleset"], None).1);
    Run {
        cmdline,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ruleset,
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("leash-it-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    /// Writes `text` to `name` in the directory and returns its path as a string.
    pub fn file(&self, name: &str, text: &str) -> String {
        self.file_bytes(name, text.as_bytes())
    }
    /// Writes `bytes` (text or not) to `name` in the directory and returns its path as a string.
    pub fn file_bytes(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
