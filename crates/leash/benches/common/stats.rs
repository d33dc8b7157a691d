//! The statistics every bench computes over its rounds: one median, nearest-rank percentiles, and
//! the unit conversions the tables print.

use std::cmp::Ordering;
use std::time::Duration;

/// A value a median can be taken of: totally ordered, with a midpoint of two values (the median
/// of an even number of samples is the mean of the two middle ones).
pub trait Sample: Copy {
    fn order(&self, other: &Self) -> Ordering;
    fn midpoint(self, other: Self) -> Self;
}

impl Sample for f64 {
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
    fn midpoint(self, other: Self) -> Self {
        (self + other) / 2.0
    }
}

impl Sample for Duration {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
    fn midpoint(self, other: Self) -> Self {
        (self + other) / 2
    }
}

/// The samples in ascending order.
pub fn sorted<T: Sample>(v: &[T]) -> Vec<T> {
    let mut s = v.to_vec();
    s.sort_by(T::order);
    s
}

/// The median: the middle sample, or the mean of the two middle ones for an even count; `None`
/// without samples.
pub fn median<T: Sample>(v: &[T]) -> Option<T> {
    let s = sorted(v);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some(s[n / 2 - 1].midpoint(s[n / 2])),
    }
}

/// [`median`] of numbers that go into a table: NaN without samples, which the table then shows.
pub fn median_f(v: &[f64]) -> f64 {
    median(v).unwrap_or(f64::NAN)
}

/// The nearest-rank `p`th percentile (0 < p <= 100) of samples sorted ascending; `None` without
/// samples.
pub fn percentile<T: Sample>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// [`percentile`] of numbers that go into a table: NaN without samples.
pub fn percentile_f(sorted: &[f64], p: f64) -> f64 {
    percentile(sorted, p).unwrap_or(f64::NAN)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// KiB (rusage's `ru_maxrss`) to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
