//! The command line of a bench: `cargo bench -p leash --bench NAME -- OPTIONS`, where cargo adds
//! `--bench` itself; and the environment variables every bench reads (`LEASH_BENCH_ROUNDS`,
//! `LEASH_BENCH_QUICK`).

use anyhow::{Context, Result, anyhow};
use std::str::FromStr;

/// The options after `--`, one at a time.
#[derive(Debug)]
pub struct Args {
    args: std::vec::IntoIter<String>,
    /// The bench's options, for the error about an unknown one.
    usage: &'static str,
}

impl Args {
    /// This process's arguments. `usage` lists the bench's options (`--rounds N, --keep`).
    pub fn new(usage: &'static str) -> Args {
        Args::from(std::env::args().skip(1).collect(), usage)
    }

    pub fn from(args: Vec<String>, usage: &'static str) -> Args {
        Args { args: args.into_iter(), usage }
    }

    /// The next option (`--bench`, which cargo passes, is skipped).
    pub fn flag(&mut self) -> Option<String> {
        self.args.find(|a| a != "--bench")
    }

    /// The word after an option, as given.
    pub fn word(&mut self) -> Option<String> {
        self.args.next()
    }

    /// The value after option `flag`, parsed (a number, mostly).
    pub fn value<T: FromStr>(&mut self, flag: &str) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let v = self.args.next().with_context(|| format!("{flag} needs a value"))?;
        v.parse().with_context(|| format!("{flag} {v:?}"))
    }

    /// The error for an option the bench does not know.
    pub fn unknown(&self, arg: &str) -> anyhow::Error {
        anyhow!("unknown argument {arg:?} (options: {})", self.usage)
    }
}

/// `LEASH_BENCH_ROUNDS` if it is set (an error if it is not a number), else `default`.
pub fn rounds(default: usize) -> Result<usize> {
    match std::env::var("LEASH_BENCH_ROUNDS") {
        Ok(s) => s.parse().context("LEASH_BENCH_ROUNDS"),
        Err(_) => Ok(default),
    }
}

/// `LEASH_BENCH_QUICK` is set to anything but empty or `0`: a bench's shortest configuration.
pub fn quick() -> bool {
    std::env::var("LEASH_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}
