//! Time windows in a time zone, projected onto the UTC weekday and time of day the kernel matches.
//!
//! The kernel's `meta day` and `meta hour` see UTC. A window written in local time (`Mon-Fri
//! 09:00-17:00` in Europe/Berlin) is therefore shifted by the zone's offset; since the offset
//! changes at daylight-saving transitions, the compiler splits the future into periods of one
//! offset each and bounds each period's rules with `meta time`. This module does the arithmetic;
//! it is pure (time zones come from the database bundled into the binary, the current time is a
//! parameter).

use crate::model::{Policy, Window};
use jiff::tz::TimeZone;
use jiff::{Timestamp, civil};

pub const DAY: i64 = 86_400;
pub const WEEK: i64 = 7 * DAY;

/// How far ahead [`periods`] looks for offset changes: a policy applied today keeps exact
/// windows through the next daylight-saving transitions of the coming year.
pub const HORIZON_DAYS: i64 = 400;

// The time zone lives with the other time arithmetic, so that the model itself needs no time
// zone database.
impl Policy {
    /// The time zone of `when` windows (`[defaults] timezone`, UTC when unset).
    pub fn time_zone(&self) -> TimeZone {
        self.defaults.timezone.as_deref().and_then(|n| zone(n).ok()).unwrap_or(TimeZone::UTC)
    }

    /// The local wall-clock time of an instant in the policy's time zone, which is what
    /// `Connection::at` (see `explain`) holds.
    pub fn local_time(&self, t: Timestamp) -> civil::DateTime {
        local(&self.time_zone(), t)
    }
}

/// Looks a time zone up by IANA name in the bundled database (so that the verdict does not depend
/// on the host's tzdata); `UTC` is always there.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    jiff::tz::TimeZoneDatabase::bundled()
        .get(name)
        .map_err(|_| format!("unknown time zone `{name}`; expected an IANA name such as `Europe/Berlin` or `UTC`"))
}

/// One span of time with a single UTC offset: `[from, until)` in seconds since the epoch,
/// `None` meaning unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: Option<i64>,
    pub until: Option<i64>,
    /// Seconds east of UTC.
    pub offset: i32,
}

/// The periods of constant offset from `now` over the next [`HORIZON_DAYS`]: one unbounded
/// period for a zone without transitions, otherwise the first open at its start and the last open
/// at its end (past the horizon the last offset stays in force until the policy is applied again).
pub fn periods(tz: &TimeZone, now: Timestamp) -> Vec<Period> {
    let horizon = now.as_second() + HORIZON_DAYS * DAY;
    let mut out = Vec::new();
    let mut from = None;
    let mut offset = tz.to_offset(now).seconds();
    for t in tz.following(now) {
        let at = t.timestamp().as_second();
        if at > horizon {
            break;
        }
        let next = t.offset().seconds();
        if next == offset {
            continue;
        }
        out.push(Period { from, until: Some(at), offset });
        from = Some(at);
        offset = next;
    }
    out.push(Period { from, until: None, offset });
    out
}

/// A window piece in UTC: weekdays `first_day..=last_day` (0 = Sunday), seconds of the day
/// `first_second..=last_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UtcSlot {
    pub first_day: u8,
    pub last_day: u8,
    pub first_second: u32,
    pub last_second: u32,
}

impl UtcSlot {
    /// Whether the slot covers whole days (no time-of-day condition needed).
    pub fn whole_days(&self) -> bool {
        self.first_second == 0 && self.last_second == DAY as u32 - 1
    }
}

/// The windows as UTC slots for a local offset (seconds east of UTC) and an extra `shift`
/// (seconds the kernel clock is behind the time to imitate; 0 normally, see
/// `ruleset::compile::CompileOptions::imitate`). Slots are merged per day and grouped into runs of days with the
/// same hours, so that a working-week window stays one slot.
pub fn utc_slots(windows: &[Window], offset: i32, shift: i64) -> Vec<UtcSlot> {
    // Covered seconds of the UTC week, as sorted disjoint intervals.
    let mut week: Vec<(i64, i64)> = Vec::new();
    for w in windows {
        for (a, b) in w.week_intervals() {
            let len = b as i64 - a as i64;
            let start = (a as i64 - offset as i64 - shift).rem_euclid(WEEK);
            if start + len <= WEEK {
                week.push((start, start + len));
            } else {
                week.push((start, WEEK));
                week.push((0, start + len - WEEK));
            }
        }
    }
    week.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (a, b) in week {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    // Per UTC day, the covered seconds of that day.
    let mut per_day: Vec<Vec<(u32, u32)>> = vec![Vec::new(); 7];
    for (a, b) in merged {
        let mut s = a;
        while s < b {
            let day = s / DAY;
            let end = b.min((day + 1) * DAY);
            per_day[day as usize].push(((s - day * DAY) as u32, (end - day * DAY - 1) as u32));
            s = end;
        }
    }
    // Runs of consecutive days with the same piece.
    let mut slots: Vec<UtcSlot> = Vec::new();
    for (day, pieces) in per_day.iter().enumerate() {
        for &(f, l) in pieces {
            match slots.iter_mut().find(|s| s.last_day as usize + 1 == day && s.first_second == f && s.last_second == l) {
                Some(s) => s.last_day = day as u8,
                None => slots.push(UtcSlot { first_day: day as u8, last_day: day as u8, first_second: f, last_second: l }),
            }
        }
    }
    slots.sort_unstable();
    slots
}

/// The local wall-clock time of an instant in a zone.
pub fn local(tz: &TimeZone, t: Timestamp) -> civil::DateTime {
    tz.to_datetime(t)
}

/// Parses an expectation's `at`: `2026-11-23 10:00`, `2026-11-23T10:00:30`, or a weekday and
/// a time (`Mon 10:00`), which means that time in a fixed reference week.
pub fn parse_at(s: &str) -> Result<civil::DateTime, String> {
    let bad = || format!("invalid time `{s}`; expected `YYYY-MM-DD HH:MM[:SS]` or a weekday and time such as `Mon 10:00`");
    let t = s.trim();
    if let Some((day, time)) = t.split_once(' ')
        && let Some(d) = parse_day(day)
    {
        let time: civil::Time = time.trim().parse().map_err(|_| bad())?;
        // 2026-01-04 is a Sunday: weekday d is d days later.
        let date = civil::date(2026, 1, 4 + d as i8);
        return Ok(date.to_datetime(time));
    }
    t.replacen(' ', "T", 1).parse::<civil::DateTime>().map_err(|_| bad())
}

/// A weekday name (`Mon`, `monday`), as 0 = Sunday ... 6 = Saturday.
pub fn parse_day(s: &str) -> Option<u8> {
    const FULL: [&str; 7] = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];
    let l = s.to_ascii_lowercase();
    FULL.iter().position(|f| l == *f || (l.len() == 3 && f.starts_with(&l))).map(|d| d as u8)
}

/// Parses one `when` window: `[DAYS ]HH:MM-HH:MM`, DAYS a comma list of days and day ranges
/// (`Mon-Fri`, `Sat,Sun`, `Fri-Mon`), or `daily`; no days means every day. `24:00` ends a day.
pub fn parse_window(s: &str) -> Result<(u8, u16, u16), String> {
    let t = s.trim();
    let (days_text, times) = match t.rsplit_once(' ') {
        Some((d, times)) => (Some(d.trim()), times),
        None => (None, t),
    };
    let days = match days_text {
        None => 0x7f,
        Some(d) if d.eq_ignore_ascii_case("daily") => 0x7f,
        Some(d) => parse_days(d)?,
    };
    let (a, b) = times
        .split_once('-')
        .ok_or_else(|| format!("invalid window `{s}`; expected `[DAYS ]HH:MM-HH:MM`, e.g. `Mon-Fri 09:00-17:00`"))?;
    let (start, end) = (parse_hm(a)?, parse_hm(b)?);
    if start == 1440 {
        return Err(format!("window `{s}` starts at 24:00; write 00:00"));
    }
    if end == 0 {
        return Err(format!("window `{s}` ends at 00:00; write 24:00 for the end of the day"));
    }
    if start == end {
        return Err(format!("window `{s}` is empty; use 00:00-24:00 for a whole day"));
    }
    Ok((days, start, end))
}

fn parse_days(s: &str) -> Result<u8, String> {
    let mut mask = 0u8;
    for part in s.split(',') {
        let part = part.trim();
        let bad = || format!("invalid days `{part}`; expected day names such as `Mon-Fri` or `Sat,Sun`");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_day(a.trim()).ok_or_else(bad)?, parse_day(b.trim()).ok_or_else(bad)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << parse_day(part).ok_or_else(bad)?,
        }
    }
    Ok(mask)
}

fn parse_hm(s: &str) -> Result<u16, String> {
    let s = s.trim();
    let bad = || format!("invalid time `{s}`; expected HH:MM (00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Window {
        let (days, start, end) = parse_window(s).unwrap();
        Window { days, start, end, span: 0..0 }
    }

    #[test]
    fn parses_windows() {
        assert_eq!(parse_window("Mon-Fri 09:00-17:00").unwrap(), (0b0111110, 540, 1020));
        assert_eq!(parse_window("22:00-06:00").unwrap(), (0x7f, 1320, 360));
        assert_eq!(parse_window("Fri-Mon 00:00-24:00").unwrap(), (0b1100011, 0, 1440));
        assert_eq!(parse_window("sat,Sunday 10:00-12:30").unwrap(), (0b1000001, 600, 750));
        for bad in ["Mon-Fri", "09:00-09:00", "Mon-Fry 09:00-10:00", "25:00-26:00", "9:0-10:00", "10:00-00:00"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn utc_projection() {
        // Berlin in winter is UTC+1: 09:00-17:00 local is 08:00-16:00 UTC, same days.
        let s = utc_slots(&[w("Mon-Fri 09:00-17:00")], 3600, 0);
        assert_eq!(s, vec![UtcSlot { first_day: 1, last_day: 5, first_second: 8 * 3600, last_second: 16 * 3600 - 1 }]);
        // New York (UTC-5): 22:00-06:00 every night is 03:00-11:00 UTC every day.
        let s = utc_slots(&[w("22:00-06:00")], -5 * 3600, 0);
        assert_eq!(s, vec![UtcSlot { first_day: 0, last_day: 6, first_second: 3 * 3600, last_second: 11 * 3600 - 1 }]);
        // Kolkata (UTC+5:30): Mon 02:00-04:00 local is Sun 20:30-22:30 UTC.
        let s = utc_slots(&[w("Mon 02:00-04:00")], 19_800, 0);
        assert_eq!(s, vec![UtcSlot { first_day: 0, last_day: 0, first_second: 73_800, last_second: 81_000 - 1 }]);
        // A window crossing UTC midnight splits into two days.
        let s = utc_slots(&[w("Sat 23:00-24:00")], -3600, 0);
        assert_eq!(s, vec![UtcSlot { first_day: 0, last_day: 0, first_second: 0, last_second: 3599 }]);
        // Every day, all day: one slot of whole days.
        let s = utc_slots(&[w("00:00-24:00")], 7200, 0);
        assert_eq!(s.len(), 1);
        assert!(s[0].whole_days() && s[0].first_day == 0 && s[0].last_day == 6, "{s:?}");
    }

    #[test]
    fn slots_agree_with_local_windows() {
        // Brute force: for every minute of the week and several offsets and shifts, the local
        // window and the UTC slots agree.
        let windows = [w("Mon-Fri 09:00-17:30"), w("Sat 22:00-02:00"), w("Wed 23:45-00:15")];
        for offset in [0, 3600, -18_000, 19_800, 45_900, -34_200] {
            for shift in [0, 12_345, -600_000] {
                let slots = utc_slots(&windows, offset, shift);
                for m in 0..(WEEK / 60) {
                    let utc = m * 60;
                    let local = (utc + offset as i64 + shift).rem_euclid(WEEK) as u32;
                    let want = windows.iter().any(|x| x.contains(local));
                    let (day, sec) = ((utc / DAY) as u8, (utc % DAY) as u32);
                    let got = slots.iter().any(|s| s.first_day <= day && day <= s.last_day && s.first_second <= sec && sec <= s.last_second);
                    assert_eq!(got, want, "offset {offset} shift {shift} utc minute {m}");
                }
            }
        }
    }

    #[test]
    fn periods_follow_transitions() {
        let tz = zone("Europe/Berlin").unwrap();
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let p = periods(&tz, now);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(p[0].offset, 3600);
        assert_eq!(p[1].offset, 7200);
        assert_eq!(p[1].from, Some("2027-03-28T01:00:00Z".parse::<Timestamp>().unwrap().as_second()));
        assert_eq!(p[2].until, None);
        assert_eq!(periods(&TimeZone::UTC, now).len(), 1);
        assert!(zone("Mars/Olympus").is_err());
        assert_eq!(parse_at("Mon 10:00").unwrap().weekday(), jiff::civil::Weekday::Monday);
        assert_eq!(parse_at("2026-11-25 10:00").unwrap().hour(), 10);
    }
}
