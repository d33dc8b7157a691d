//! Serde helpers for the policy types the report carries (the policy crate stays serde-free).

use policy::{Action, DenyWith, Proto};
use serde::Serializer;
use std::time::Duration;

pub(crate) fn proto<S: Serializer>(p: &Proto, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

pub(crate) fn action<S: Serializer>(a: &Action, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.as_str())
}

pub(crate) fn deny_with<S: Serializer>(d: &DenyWith, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match d {
        DenyWith::Reject => "reject",
        DenyWith::Drop => "drop",
    })
}

/// Durations as (fractional) milliseconds: `"elapsed_ms": 1002.4`.
pub(crate) fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// A local time as `2026-11-23T10:00:00` (`skip_serializing_if` leaves `None` out).
pub(crate) fn opt_civil<S: Serializer>(t: &Option<jiff::civil::DateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.strftime("%Y-%m-%dT%H:%M:%S").to_string()),
        None => s.serialize_none(),
    }
}
