//! The compiled time conditions (`meta time`, `meta day`, `meta hour`, all UTC) open exactly when
//! the policy's local-time windows do, across daylight-saving transitions: checked by evaluating
//! the statements the way the kernel does at many instants and comparing with `explain`'s rule.

use policy::{StaticResolver, Window};
use proptest::prelude::*;
use ruleset::compile::{CompileOptions, time_conditions};
use ruleset::model::Stmt;

/// What the kernel's `meta` keys give for an instant: the weekday (0 = Sunday) of UTC minus the
/// kernel's time zone (`nft_meta_weekday` subtracts `sys_tz.tz_minuteswest`), the second of the
/// day in UTC, and nanoseconds since the epoch.
fn holds(stmts: &[Stmt], t: i64, minutes_west: i32) -> bool {
    let day = (((t - minutes_west as i64 * 60).div_euclid(86_400)) + 4).rem_euclid(7) as u8;
    let sec = t.rem_euclid(86_400) as u32;
    let ns = t * 1_000_000_000;
    stmts.iter().all(|s| match s {
        // Ranges may wrap (Saturday to Monday).
        Stmt::MetaDay { first, last } if first <= last => *first <= day && day <= *last,
        Stmt::MetaDay { first, last } => day >= *first || day <= *last,
        Stmt::MetaHour { first, last } => *first <= sec && sec <= *last,
        Stmt::MetaTimeFrom(from) => ns >= *from,
        Stmt::MetaTimeUntil(until) => ns < *until,
        other => panic!("unexpected statement {other:?}"),
    })
}

const ZONES: [&str; 6] = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "America/St_Johns"];

fn policy_with(zone: &str, windows: &[String]) -> policy::Policy {
    let list: Vec<String> = windows.iter().map(|w| format!("\"{w}\"")).collect();
    let src = format!(
        "version = 1\n[defaults]\ntimezone = \"{zone}\"\n[[rule]]\nname = \"w\"\naction = \"allow\"\nwhen = [{}]\n",
        list.join(", ")
    );
    let (p, d) = policy::load(&src, &StaticResolver::new());
    p.unwrap_or_else(|| panic!("{src}\n{d:#?}"))
}

fn arb_window() -> impl Strategy<Value = String> {
    const DAYS: [&str; 9] = ["", "Mon-Fri ", "Sat,Sun ", "Sun ", "Fri-Mon ", "Wed ", "daily ", "Tue,Thu ", "Sat "];
    (0usize..DAYS.len(), 0u16..96, 1u16..96).prop_map(|(d, a, len)| {
        // Quarter-hour steps; an end equal to the start would be empty, so the length is at least 1.
        let start = a * 15;
        let end = (start + len * 15) % 1440;
        let end = if end == 0 { 1440 } else { end };
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        format!("{}{}-{}", DAYS[d], hm(start), hm(end))
    })
}

fn open_at(windows: &[Window], local: jiff::civil::DateTime) -> bool {
    let s = policy::explain::week_second(local);
    windows.iter().any(|w| w.contains(s))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Over a year after the compile time, sampled every few hours plus around every
    /// transition, the kernel conditions agree with the local windows.
    #[test]
    fn compiled_windows_agree(
        zone in 0usize..ZONES.len(),
        windows in prop::collection::vec(arb_window(), 1..4),
        start in 1_700_000_000i64..1_900_000_000,
        west in prop::sample::select(vec![0i32, 0, 60, -60, -330, 300, 720, -840]),
    ) {
        let p = policy_with(ZONES[zone], &windows);
        let now = jiff::Timestamp::from_second(start).unwrap();
        let opts = CompileOptions { now: Some(now), kernel_minutes_west: west, ..Default::default() };
        let w = p.rules[0].cond.when.clone().unwrap();
        let variants = time_conditions(&p, &w, &opts);
        let tz = p.time_zone();
        let mut instants: Vec<i64> = (0..(365 * 24 / 7)).map(|i| start + i * 7 * 3600 + (i * 611) % 3600).collect();
        // Past the horizon the last offset stays in force until the next apply.
        let horizon = start + policy::time::HORIZON_DAYS * 86_400;
        for t in tz.following(now).take_while(|t| t.timestamp().as_second() + 1800 < horizon) {
            let x = t.timestamp().as_second();
            instants.extend([x - 1, x, x + 1, x + 1800, x - 1800]);
        }
        for t in instants {
            let local = p.local_time(jiff::Timestamp::from_second(t).unwrap());
            let want = open_at(&w, local);
            let got = variants.iter().any(|v| holds(v, t, west));
            prop_assert_eq!(got, want, "{} at {} (local {}), kernel tz {} min west", ZONES[zone], t, local, west);
        }
    }

    /// `imitate`: the kernel at the real instant `now` (and a few seconds later) behaves as the
    /// policy at local time `at`.
    #[test]
    fn imitated_time_agrees(zone in 0usize..ZONES.len(), windows in prop::collection::vec(arb_window(), 1..4), now in 1_700_000_000i64..1_900_000_000, at_min in 0i64..(7 * 1440)) {
        let p = policy_with(ZONES[zone], &windows);
        let w = p.rules[0].cond.when.clone().unwrap();
        // 2026-01-04 is a Sunday.
        let at = jiff::civil::date(2026, 1, 4).at(0, 0, 0, 0) + jiff::Span::new().minutes(at_min);
        let opts = CompileOptions { imitate: Some((jiff::Timestamp::from_second(now).unwrap(), at)), ..Default::default() };
        let variants = time_conditions(&p, &w, &opts);
        for lag in [0i64, 5, 59] {
            let want = open_at(&w, at + jiff::Span::new().seconds(lag));
            let got = variants.iter().any(|v| holds(v, now + lag, 0));
            prop_assert_eq!(got, want, "{} at {} lag {}", ZONES[zone], at, lag);
        }
    }
}
