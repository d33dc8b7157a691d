//! Log lines that anyone who can send a query can cause (a refused name, the rebinding guard, a
//! full set, a kernel error), rate-limited per kind, so that a flood of queries cannot flood the
//! journal or the disk, nor slow the forwarder down with writes to stderr.
//!
//! A token bucket per kind: [`BURST`] lines at once, then [`PER_SECOND`]; the lines left out are
//! counted (`Stats::log_suppressed`) and the next line written says how many of its kind were.

use crate::stats::Stats;
use std::sync::Mutex;
use std::time::Instant;

/// Lines of one kind written at once before the rate applies.
pub const BURST: u32 = 20;
/// Lines of one kind written per second once the burst is spent.
pub const PER_SECOND: u32 = 5;

/// One kind of line.
#[derive(Debug)]
pub(crate) struct Limited {
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for Limited {
    fn default() -> Self {
        Limited { state: Mutex::new(Bucket { tokens: f64::from(BURST), last: None, suppressed: 0 }) }
    }
}

impl Limited {
    /// Writes the line `line()` builds (only then is it built), prefixed with `leash dns: `, if
    /// the bucket allows one at `now`; otherwise counts it.
    pub(crate) fn line(&self, stats: &Stats, now: Instant, line: impl FnOnce() -> String) {
        if let Some(text) = self.admit(stats, now, line) {
            eprintln!("{text}");
        }
    }

    /// The text to write, or `None` when the line is suppressed.
    fn admit(&self, stats: &Stats, now: Instant, line: impl FnOnce() -> String) -> Option<String> {
        let mut b = self.state.lock().unwrap();
        if let Some(last) = b.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * f64::from(PER_SECOND)).min(f64::from(BURST));
        }
        b.last = Some(now);
        if b.tokens < 1.0 {
            b.suppressed += 1;
            Stats::inc(&stats.log_suppressed);
            return None;
        }
        b.tokens -= 1.0;
        let suppressed = std::mem::take(&mut b.suppressed);
        drop(b);
        let text = line();
        Some(if suppressed > 0 {
            format!("leash dns: {text} ({suppressed} similar line(s) left out: rate limit)")
        } else {
            format!("leash dns: {text}")
        })
    }
}

/// The kinds of line the forwarder rate-limits.
#[derive(Debug, Default)]
pub(crate) struct Logs {
    pub(crate) refused: Limited,
    pub(crate) guard: Limited,
    pub(crate) kernel: Limited,
    pub(crate) clients: Limited,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_writes_the_burst_then_the_rate_and_says_what_it_left_out() {
        let stats = Stats::default();
        let l = Limited::default();
        let t0 = Instant::now();
        let written: Vec<String> = (0..1000).filter_map(|i| l.admit(&stats, t0, || format!("line {i}"))).collect();
        assert_eq!(written.len(), BURST as usize);
        assert_eq!(stats.snapshot().log_suppressed, 1000 - u64::from(BURST));
        // A second later the rate has refilled a few tokens; the first line says how many were
        // left out.
        let later = t0 + Duration::from_secs(1);
        let next = l.admit(&stats, later, || "next".into()).unwrap();
        assert_eq!(next, format!("leash dns: next ({} similar line(s) left out: rate limit)", 1000 - BURST));
        let more: usize = (0..100).filter_map(|_| l.admit(&stats, later, || "x".into())).count();
        assert_eq!(more, PER_SECOND as usize - 1);
        // The closure that builds a suppressed line never runs.
        let mut built = false;
        assert!(l.admit(&stats, later, || {
            built = true;
            String::new()
        })
        .is_none());
        assert!(!built);
    }
}
