//! The strongest test: on random policies and random connections, the kernel's verdict (a real
//! connection through the applied ruleset in a namespace) is `explain`'s verdict.
//!
//! Each generated policy is written as TOML (so the parser is exercised too), with its `[[set]]`
//! files and country database next to it in a temporary directory, loaded, and given one
//! `[[expect]]` per random connection whose verdict is what `explain` says. `lab::run_expectations`
//! then applies the compiled table in scratch namespaces, connects, and fails a row whenever the
//! kernel disagrees with `explain`.
//!
//! The dimensions covered: protocols, ports, networks, users, groups, domain names (the lab plays
//! the forwarder), the DNS bypass control, `when` windows in several time zones (connections at
//! the current time, with windows built around it, and at random `at` times, which the lab
//! imitates with shifted windows), `service`/`cgroup` rules (probes from processes in scratch
//! cgroups at, below and beside the rule's), named sets read from files, countries from a tiny
//! database, and `rate`/`max_connections` set high enough never to trigger (the structure of the
//! limit chains is checked here; the limiting itself in `dimensions.rs`); and forwarded
//! connections: `[forward]` interfaces and sources (or the defaults, or `mode = "ignore"`), rules
//! with `from` (networks and interface patterns), and connections from workload namespaces
//! routed through the client, entering on interfaces that match a pattern or none, to
//! destinations that are themselves workloads (left alone), to DNS (the bypass control) and
//! through rules that need a socket (which forwarded packets pass by).

use crate::harness::{TempDir, need_root};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::net::IpAddr;

const NETS: [&str; 8] = [
    "192.0.2.0/25", "192.0.2.10", "198.51.100.0/24", "203.0.113.64/26", "203.0.113.7",
    "2001:db8::/64", "2001:db8:1::5", "2001:db8:2::/48",
];
const ADDRS: [&str; 11] = [
    "192.0.2.10", "192.0.2.200", "198.51.100.9", "203.0.113.70", "203.0.113.7",
    "2001:db8::9", "2001:db8:1::5", "2001:db8:2::1", "198.51.100.200", "203.0.113.90", "192.0.2.130",
];
const PORTS: [u16; 5] = [22, 53, 443, 8080, 9999];
/// Domain patterns rules may name, and names connections may have been looked up as.
const DOMAINS: [&str; 4] = ["api.example.test", "*.cdn.example.test", "x.cdn.example.test", "*.example.test"];
const NAMES: [&str; 5] = ["api.example.test", "x.cdn.example.test", "y.z.cdn.example.test", "cdn.example.test", "other.test"];
const BYPASS: [&str; 3] = ["deny", "off", "redirect"];
const UIDS: [u32; 3] = [0, 4242, 65534];
const PROTOS: [&str; 4] = ["tcp", "udp", "icmp", "icmpv6"];
/// Time zones of `[defaults] timezone`: whole, negative, half-hour and half-hour-DST offsets.
const TZS: [&str; 5] = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"];
/// What rules name as processes: `cgroup:PATH` or `service:UNIT`.
const RULE_CGROUPS: [&str; 6] =
    ["cgroup:/app", "cgroup:/app/web", "cgroup:app/web/worker", "cgroup:/batch", "service:nginx", "service:db.service"];
/// The cgroup v2 paths those resolve to (each exists at "load time", with a made-up id).
const RULE_CGROUP_PATHS: [&str; 6] =
    ["app", "app/web", "app/web/worker", "batch", "system.slice/nginx.service", "system.slice/db.service"];
/// Where connections come from: at, below and beside the rules' cgroups.
const CONN_CGROUPS: [&str; 9] = [
    "app", "app/web", "app/web/worker", "app/webby", "batch/x", "system.slice/nginx.service",
    "system.slice/nginx.service/child", "system.slice/db.service", "other",
];
/// Lines a `[[set]]` file may hold: addresses, networks, ranges, comments.
const SET_LINES: [&str; 8] = [
    "192.0.2.10", "198.51.100.0/25", "203.0.113.70-203.0.113.80", "2001:db8:1::/64", "2001:db8::9",
    "# a comment", "203.0.113.7 ; SBL1", "2001:db8:5::1-2001:db8:5::ff",
];
const SET_NAMES: [&str; 2] = ["blocklist", "partners"];
/// The country database: which networks belong to which (user-assigned) code.
const COUNTRY_NETS: [(&str, &str); 5] = [
    ("198.51.100.0/26", "XA"), ("2001:db8:2::/48", "XA"), ("203.0.113.64/27", "XB"), ("192.0.2.128/25", "XC"),
    ("2001:db8:5::/48", "XC"),
];
/// Codes rules may name; XD has no networks (a warning, and the rule matches nothing by country).
const CODES: [&str; 4] = ["XA", "XB", "XC", "XD"];
/// `[forward] interfaces` a policy may list (`lab*` matches the lab's uplink, so every forwarded
/// connection then goes to a workload interface and is left alone).
const FWD_IFACES: [&str; 4] = ["docker0", "br-*", "veth*", "lab*"];
/// `[forward] sources` a policy may list; 203.0.113.64/26 holds destinations (to a workload).
const FWD_SOURCES: [&str; 4] = ["198.18.7.0/24", "2001:db8:77::/48", "198.18.9.0/24", "203.0.113.64/26"];
/// What a rule's `from` may list: networks and interface patterns.
const FROM_ITEMS: [&str; 7] = ["198.18.7.0/24", "198.18.8.5", "2001:db8:78::/48", "2001:db8:77::5", "docker0", "br-*", "vm*"];
/// Workloads connections come from: source address and the interface it enters the client on
/// (each source always on the same one: the lab gives each interface its own namespace).
const WORKLOADS: [(&str, &str); 5] = [
    ("198.18.7.5", "docker0"), ("198.18.8.5", "br-0"), ("198.18.9.5", "vm1"), ("2001:db8:77::5", "docker0"),
    ("2001:db8:78::5", "vm1"),
];

#[derive(Debug, Clone)]
enum GenWindow {
    /// Days (bit 0 = Sunday), start minute, length in minutes.
    Fixed { days: u8, start: u16, len: u16 },
    /// Open from `before` minutes before now until `after` minutes after it, on the day it
    /// opened only or on every day.
    NearNow { before: u16, after: u16, one_day: bool },
}

#[derive(Debug, Clone)]
struct GenRule {
    allow: bool,
    protos: Option<Vec<usize>>,
    ports: Option<Vec<(usize, bool)>>,
    to: Option<Vec<usize>>,
    users: Option<Vec<usize>>,
    groups: Option<Vec<usize>>,
    domains: Vec<usize>,
    allow_private: bool,
    when: Option<Vec<GenWindow>>,
    cgroups: Option<Vec<usize>>,
    sets: Vec<usize>,
    countries: Vec<usize>,
    /// `rate` and/or `max_connections` (high), with `limit_per` (allow rules only).
    limits: Option<(bool, bool, usize)>,
    /// `from`: indexes into FROM_ITEMS (only on rules without user, group, cgroup or per-user
    /// limits, which the parser refuses next to it).
    from: Option<Vec<usize>>,
}

fn gen_window() -> impl Strategy<Value = GenWindow> {
    prop_oneof![
        (1u8..128, 0u16..288, 1u16..287).prop_map(|(days, s, l)| GenWindow::Fixed { days, start: s * 5, len: l * 5 }),
        (3u16..600, 5u16..600, any::<bool>()).prop_map(|(before, after, one_day)| GenWindow::NearNow { before, after, one_day }),
    ]
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    let classic = (
        any::<bool>(),
        prop::option::of(prop::collection::vec(0..PROTOS.len(), 1..3)),
        prop::option::of(prop::collection::vec((0..PORTS.len(), any::<bool>()), 1..3)),
        prop::option::of(prop::collection::vec(0..NETS.len(), 1..4)),
        prop::option::weighted(0.3, prop::collection::vec(0..UIDS.len(), 1..3)),
        prop::option::weighted(0.2, prop::collection::vec(0..UIDS.len(), 1..2)),
        prop::option::weighted(0.4, prop::collection::vec(0..DOMAINS.len(), 1..3)),
        prop::bool::weighted(0.3),
    );
    let new = (
        prop::option::weighted(0.3, prop::collection::vec(gen_window(), 1..3)),
        prop::option::weighted(0.3, prop::collection::vec(0..RULE_CGROUPS.len(), 1..3)),
        prop::option::weighted(0.2, prop::collection::vec(0..SET_NAMES.len(), 1..3)),
        prop::option::weighted(0.2, prop::collection::vec(0..CODES.len(), 1..3)),
        prop::option::weighted(0.2, (any::<bool>(), any::<bool>(), 0..3usize)),
        prop::option::weighted(0.3, prop::collection::vec(0..FROM_ITEMS.len(), 1..3)),
    );
    (classic, new).prop_map(
        |((allow, protos, ports, to, users, groups, domains, allow_private), (when, cgroups, sets, countries, limits, from))| {
            // `ports` only goes with tcp/udp; drop icmp from the list (or the ports) to stay valid.
            let protos = match (&protos, &ports) {
                (Some(p), Some(_)) => {
                    let p: Vec<usize> = p.iter().copied().filter(|&i| i < 2).collect();
                    if p.is_empty() { None } else { Some(p) }
                }
                _ => protos,
            };
            let limits = limits.filter(|&(r, m, _)| allow && (r || m));
            // `from` cannot go with a socket condition: keep one of the two.
            let socket = users.is_some() || groups.is_some() || cgroups.is_some() || limits.is_some_and(|l| l.2 == 2);
            let (users, groups, cgroups, limits) =
                if from.is_some() && socket { (None, None, None, limits.filter(|l| l.2 != 2)) } else { (users, groups, cgroups, limits) };
            GenRule {
                allow,
                protos,
                ports,
                to,
                users,
                groups,
                domains: domains.unwrap_or_default(),
                allow_private,
                when,
                cgroups,
                sets: sets.unwrap_or_default(),
                countries: countries.unwrap_or_default(),
                // Limits only on allow rules (a deny rule with a limit is an error), and at least one.
                limits,
                from,
            }
        },
    )
}

#[derive(Debug, Clone)]
struct GenConn {
    proto: usize,
    addr: usize,
    port: usize,
    uid: usize,
    gid: usize,
    /// The name the address was looked up as, with the kind of address it resolved to.
    name: Option<(usize, usize)>,
    /// Index into the policy's `at` times (none when out of range: the current time).
    at: Option<usize>,
    cgroup: Option<usize>,
    /// Forwarded from a workload: an index into WORKLOADS (of the destination's family).
    from: Option<usize>,
}

fn gen_conn() -> impl Strategy<Value = GenConn> {
    (
        0..PROTOS.len(),
        0..ADDRS.len(),
        0..PORTS.len(),
        0..UIDS.len(),
        0..UIDS.len(),
        prop::option::weighted(0.4, (0..NAMES.len(), 0..6usize)),
        prop::option::weighted(0.5, 0..3usize),
        prop::option::weighted(0.5, 0..CONN_CGROUPS.len()),
        prop::option::weighted(0.35, 0..WORKLOADS.len()),
    )
        .prop_map(|(proto, addr, port, uid, gid, name, at, cgroup, from)| GenConn { proto, addr, port, uid, gid, name, at, cgroup, from })
}

/// A whole generated policy.
#[derive(Debug, Clone)]
struct GenPolicy {
    rules: Vec<GenRule>,
    default_allow: bool,
    drop: bool,
    bypass: usize,
    tz: Option<usize>,
    /// Lines of each `[[set]]` file.
    set_lines: [Vec<usize>; 2],
    /// The country database as a DB-IP CSV instead of an mmdb.
    csv_countries: bool,
    /// The `at` times expectations may use: weekday (0 = Sunday), minute, written as a date.
    /// At most three per policy, because each distinct `at` costs the lab one more table.
    times: Vec<(u8, u16, bool)>,
    /// `[forward]`: `None` keeps the defaults; else mode ignore, interfaces and sources (indexes).
    forward: Option<(bool, Vec<usize>, Vec<usize>)>,
}

fn gen_policy() -> impl Strategy<Value = GenPolicy> {
    (
        prop::collection::vec(gen_rule(), 0..6),
        any::<bool>(),
        prop::bool::weighted(0.25),
        0..BYPASS.len(),
        prop::option::weighted(0.8, 0..TZS.len()),
        [prop::collection::vec(0..SET_LINES.len(), 1..5), prop::collection::vec(0..SET_LINES.len(), 1..5)],
        any::<bool>(),
        prop::collection::vec((0u8..7, 0u16..1440, any::<bool>()), 0..4),
        prop::option::weighted(
            0.5,
            (prop::bool::weighted(0.15), prop::collection::vec(0..FWD_IFACES.len(), 1..3), prop::collection::vec(0..FWD_SOURCES.len(), 0..3)),
        ),
    )
        .prop_map(|(rules, default_allow, drop, bypass, tz, set_lines, csv_countries, times, forward)| {
            let lab_pattern_ok = times.len() % 2 == 1;
            GenPolicy {
            rules,
            default_allow,
            drop,
            bypass,
            tz,
            set_lines,
            csv_countries,
            times,
            // `lab*` only now and then: it makes every forwarded connection one between workloads.
            forward: forward.map(|(ignore, mut i, s)| {
                if !lab_pattern_ok {
                    i.retain(|&x| x != 3);
                }
                (ignore, i, s)
            }),
        }})
}

/// The address a looked-up connection goes to. Each such connection gets an address of its own
/// (derived from its index), because the forwarder puts an address into the sets of the name it
/// answered: two names sharing one address would share their rules, which `explain` (one
/// connection, one name) does not model. The kinds cover a documentation address no rule lists,
/// one inside a rule's network, IPv6 of both sorts, and private ones (the rebinding guard).
fn named_addr(kind: usize, i: usize) -> IpAddr {
    let i = i as u8;
    match kind {
        0 => std::net::Ipv4Addr::new(192, 0, 2, 160 + i).into(),
        1 => std::net::Ipv4Addr::new(198, 51, 100, 160 + i).into(),
        2 => std::net::Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1 + u16::from(i)).into(),
        3 => std::net::Ipv4Addr::new(10, 0, 0, 1 + i).into(),
        5 => std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1 + u16::from(i)).into(),
        _ => std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100 + u16::from(i)).into(),
    }
}

const WEEK: i64 = 7 * 86_400;

/// Whether a window edge (in local seconds of the week) lies within `before` seconds before or
/// `after` seconds after `t`: the lab probes a little after it compiles, so a verdict so close
/// to an edge could flip between `explain` and the probe.
fn near_edge(windows: &[policy::Window], t: i64, before: i64, after: i64) -> bool {
    windows.iter().flat_map(|w| w.week_intervals()).flat_map(|(a, b)| [a as i64, b as i64]).any(|e| {
        let ahead = (e - t).rem_euclid(WEEK);
        let behind = (t - e).rem_euclid(WEEK);
        ahead <= after || behind <= before
    })
}

fn hm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// A `when` window as text, made concrete for the local time `now` (NearNow) and kept away
/// from it (Fixed windows are moved by ten minutes while an edge is within minutes of now).
fn window_text(w: &GenWindow, now: jiff::civil::DateTime) -> String {
    let now_min = now.hour() as i32 * 60 + now.minute() as i32;
    let today = now.weekday().to_sunday_zero_offset() as u8;
    let (mut days, mut start, len) = match *w {
        GenWindow::Fixed { days, start, len } => (days, start as i32, len as i32),
        GenWindow::NearNow { before, after, one_day } => {
            let s = now_min - before as i32;
            // The window opens on the day its start falls on.
            let day = if s < 0 { (today + 6) % 7 } else { today };
            (if one_day { 1 << day } else { 0x7f }, s.rem_euclid(1440), (before + after) as i32)
        }
    };
    let now_s = policy::explain::week_second(now) as i64;
    // Bounded: at most 12 moves of ten minutes.
    for _ in 0..12 {
        let end = start + len;
        let win = policy::Window { days, start: start as u16, end: if end % 1440 == 0 { 1440 } else { (end % 1440) as u16 }, span: 0..0 };
        if !near_edge(&[win], now_s, 120, 240) {
            break;
        }
        start += 10;
        if start >= 1440 {
            start -= 1440;
            days = ((days << 1) & 0x7f) | ((days >> 6) & 1);
        }
    }
    let end = (start + len) % 1440;
    let end = if end == 0 { 1440 } else { end };
    let day_text = if days == 0x7f {
        String::new()
    } else {
        let names: Vec<&str> = (0..7).filter(|d| days & (1 << d) != 0).map(|d| policy::WEEKDAYS[d]).collect();
        format!("{} ", names.join(","))
    };
    format!("{day_text}{}-{}", hm(start as u16), hm(end as u16))
}

fn policy_text(g: &GenPolicy, now: jiff::Timestamp) -> String {
    let q = |v: &[String]| format!("[{}]", v.join(", "));
    let tz_name = g.tz.map(|i| TZS[i]);
    let tz = policy::time::zone(tz_name.unwrap_or("UTC")).unwrap();
    let now_local = policy::time::local(&tz, now);
    let mut s = format!(
        "version = 1\n[defaults]\noutbound = \"{}\"\ndeny_with = \"{}\"\nlog_denied = false\n",
        if g.default_allow { "allow" } else { "deny" },
        if g.drop { "drop" } else { "reject" }
    );
    if let Some(t) = tz_name {
        s += &format!("timezone = \"{t}\"\n");
    }
    // The forwarder listens on IPv4 loopback only, so IPv6 DNS is denied even in redirect mode.
    s += &format!(
        "[dns]\nupstreams = [\"192.0.2.53\"]\nlisten = [\"127.0.0.1:5353\"]\nbypass = \"{}\"\n",
        BYPASS[g.bypass]
    );
    if let Some((ignore, ifaces, sources)) = &g.forward {
        s += &format!("[forward]\nmode = \"{}\"\n", if *ignore { "ignore" } else { "govern" });
        s += &format!("interfaces = {}\n", q(&ifaces.iter().map(|&i| format!("\"{}\"", FWD_IFACES[i])).collect::<Vec<_>>()));
        s += &format!("sources = {}\n", q(&sources.iter().map(|&i| format!("\"{}\"", FWD_SOURCES[i])).collect::<Vec<_>>()));
    }
    for name in SET_NAMES {
        s += &format!("\n[[set]]\nname = \"{name}\"\nfile = \"{name}.txt\"\n");
    }
    if g.rules.iter().any(|r| !r.countries.is_empty()) {
        s += &format!("\n[countries]\ndatabase = \"{}\"\n", if g.csv_countries { "countries.csv" } else { "countries.mmdb" });
    }
    for (i, r) in g.rules.iter().enumerate() {
        s += &format!("\n[[rule]]\nname = \"r{i}\"\naction = \"{}\"\n", if r.allow { "allow" } else { "deny" });
        if let Some(p) = &r.protos {
            s += &format!("proto = {}\n", q(&p.iter().map(|&i| format!("\"{}\"", PROTOS[i])).collect::<Vec<_>>()));
        }
        if let Some(p) = &r.ports {
            let items: Vec<String> = p
                .iter()
                .map(|&(i, range)| if range { format!("\"{}-{}\"", PORTS[i], PORTS[i] + 100) } else { PORTS[i].to_string() })
                .collect();
            s += &format!("ports = {}\n", q(&items));
        }
        let mut to: Vec<String> = r.to.iter().flatten().map(|&i| format!("\"{}\"", NETS[i])).collect();
        to.extend(r.domains.iter().map(|&i| format!("\"{}\"", DOMAINS[i])));
        to.extend(r.sets.iter().map(|&i| format!("\"set:{}\"", SET_NAMES[i])));
        if r.to.is_some() || !r.domains.is_empty() || !r.sets.is_empty() {
            s += &format!("to = {}\n", q(&to));
        }
        if !r.countries.is_empty() {
            s += &format!("to_country = {}\n", q(&r.countries.iter().map(|&i| format!("\"{}\"", CODES[i])).collect::<Vec<_>>()));
        }
        if r.allow_private {
            s += "allow_private = true\n";
        }
        if let Some(u) = &r.users {
            s += &format!("user = {}\n", q(&u.iter().map(|&i| UIDS[i].to_string()).collect::<Vec<_>>()));
        }
        if let Some(g) = &r.groups {
            s += &format!("group = {}\n", q(&g.iter().map(|&i| UIDS[i].to_string()).collect::<Vec<_>>()));
        }
        if let Some(c) = &r.cgroups {
            for (key, prefix) in [("cgroup", "cgroup:"), ("service", "service:")] {
                let items: Vec<String> =
                    c.iter().filter_map(|&i| RULE_CGROUPS[i].strip_prefix(prefix)).map(|v| format!("\"{v}\"")).collect();
                if !items.is_empty() {
                    s += &format!("{key} = {}\n", q(&items));
                }
            }
        }
        if let Some(w) = &r.when {
            s += &format!("when = {}\n", q(&w.iter().map(|w| format!("\"{}\"", window_text(w, now_local))).collect::<Vec<_>>()));
        }
        // Under mode = "ignore" a rule with `from` is an error: leave it out there.
        if let (Some(f), false) = (&r.from, g.forward.as_ref().is_some_and(|f| f.0)) {
            s += &format!("from = {}\n", q(&f.iter().map(|&i| format!("\"{}\"", FROM_ITEMS[i])).collect::<Vec<_>>()));
        }
        if let Some((rate, max, per)) = r.limits {
            if rate {
                s += "rate = \"20000/second\"\nburst = 20000\n";
            }
            if max {
                s += "max_connections = 5000\n";
            }
            s += &format!("limit_per = \"{}\"\n", ["rule", "destination", "user"][per]);
        }
    }
    s
}

/// An `at` time as the policy writes it: `Mon 10:05`, or a date in the week of 2026-07-05
/// (a Sunday, summer in the north, winter in the south).
fn at_text(day: u8, minute: u16, dated: bool) -> (String, jiff::civil::DateTime) {
    let date = if dated { jiff::civil::date(2026, 7, 5 + day as i8) } else { jiff::civil::date(2026, 1, 4 + day as i8) };
    let t = date.to_datetime(jiff::civil::time((minute / 60) as i8, (minute % 60) as i8, 0, 0));
    let text = if dated {
        t.strftime("%Y-%m-%d %H:%M").to_string()
    } else {
        format!("{} {}", policy::WEEKDAYS[day as usize], hm(minute))
    };
    (text, t)
}

/// The files the policy names, and the world it is loaded in: fixed users, cgroups that exist
/// (with made-up ids), files read from the policy's directory.
struct World {
    dir: std::path::PathBuf,
    ids: policy::StaticResolver,
}

impl policy::Resolver for World {
    fn user(&self, name: &str) -> Option<u32> {
        policy::Resolver::user(&self.ids, name)
    }
    fn group(&self, name: &str) -> Option<u32> {
        policy::Resolver::group(&self.ids, name)
    }
    fn primary_group(&self, uid: u32) -> Option<u32> {
        self.ids.primary_group(uid)
    }
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.dir.join(path)).map_err(|e| format!("{path}: {e}"))
    }
    fn cgroup2_prefix(&self) -> Option<String> {
        self.ids.cgroup2_prefix()
    }
    fn cgroup_id(&self, path: &str) -> Option<u64> {
        self.ids.cgroup_id(path)
    }
}

fn world(dir: &TempDir, g: &GenPolicy) -> World {
    use policy::geo::testdb;
    for (name, lines) in SET_NAMES.iter().zip(&g.set_lines) {
        let text: String = lines.iter().map(|&i| format!("{}\n", SET_LINES[i])).collect();
        dir.file(&format!("{name}.txt"), &text);
    }
    let nets: Vec<(ipnet::IpNet, &str)> = COUNTRY_NETS.iter().map(|(n, c)| (n.parse().unwrap(), *c)).collect();
    std::fs::write(dir.0.join("countries.mmdb"), testdb::write_mmdb(&nets, 6)).unwrap();
    dir.file("countries.csv", &testdb::write_dbip_csv(&nets));
    let mut ids = policy::StaticResolver::new().user("root", 0, Some(0)).group("root", 0).cgroup2("unified");
    for (i, p) in RULE_CGROUP_PATHS.iter().enumerate() {
        ids = ids.cgroup(p, 5000 + i as u64);
    }
    World { dir: dir.0.clone(), ids }
}

/// Appends one `[[expect]]` per connection with the verdict `explain` gives it: at its `at`, or
/// (without one) at the current local time.
fn with_expectations(text: &str, conns: &[GenConn], g: &GenPolicy, w: &World, now: jiff::Timestamp) -> String {
    let (p, diags) = policy::load(text, w);
    let p = p.unwrap_or_else(|| panic!("generated policy invalid: {diags:?}\n{text}"));
    let windows: Vec<policy::Window> = p.rules.iter().filter_map(|r| r.cond.when.clone()).flatten().collect();
    let mut s = text.to_string();
    for (i, c) in conns.iter().enumerate() {
        let mut proto = PROTOS[c.proto];
        let dst: IpAddr = match c.name {
            Some((_, kind)) => named_addr(kind, i),
            None => ADDRS[c.addr].parse().unwrap(),
        };
        let name = c.name.map(|(n, _)| NAMES[n].to_string());
        // ICMP goes with IPv4 and ICMPv6 with IPv6.
        if proto == "icmp" && dst.is_ipv6() {
            proto = "icmpv6";
        } else if proto == "icmpv6" && dst.is_ipv4() {
            proto = "icmp";
        }
        let proto_v = policy::Proto::parse(proto).unwrap();
        let port = proto_v.has_ports().then_some(PORTS[c.port]);
        // An `at` near a window edge moves on by seven minutes (bounded).
        let at = c.at.and_then(|k| g.times.get(k)).map(|&(day, mut minute, dated)| {
            let mut day = day;
            for _ in 0..20 {
                let t = day as i64 * 86_400 + minute as i64 * 60;
                if !near_edge(&windows, t, 60, 240) {
                    break;
                }
                minute += 7;
                if minute >= 1440 {
                    minute -= 1440;
                    day = (day + 1) % 7;
                }
            }
            at_text(day, minute, dated)
        });
        // A forwarded connection comes from a workload of the destination's family, and has no
        // user, group or cgroup (the expectation may not name them).
        let from = c.from.map(|k| {
            let family: Vec<&(&str, &str)> =
                WORKLOADS.iter().filter(|(a, _)| a.parse::<IpAddr>().unwrap().is_ipv6() == dst.is_ipv6()).collect();
            let (src, iif) = family[k % family.len()];
            (src.parse::<IpAddr>().unwrap(), iif.to_string())
        });
        let cgroup = if from.is_some() { None } else { c.cgroup.map(|k| CONN_CGROUPS[k].to_string()) };
        let (uid, gid) = if from.is_some() { (0, 0) } else { (UIDS[c.uid], UIDS[c.gid]) };
        let conn = policy::Connection {
            proto: proto_v,
            dst,
            port,
            uid,
            gid,
            name: name.clone(),
            cgroup: cgroup.clone(),
            at: Some(at.as_ref().map_or_else(|| p.local_time(now), |a| a.1)),
            from: from.as_ref().map(|(src, iif)| policy::Forwarded {
                src: *src,
                iif: Some(iif.clone()),
                oif: Some(lab::Lab::uplink().to_string()),
            }),
        };
        let verdict = policy::explain(&p, &conn).verdict;
        let to = match (&name, dst, port) {
            (Some(n), _, Some(port)) => format!("{n}:{port}\"\naddress = \"{dst}"),
            (Some(n), _, None) => format!("{n}\"\naddress = \"{dst}"),
            (None, IpAddr::V6(a), Some(port)) => format!("[{a}]:{port}"),
            (None, a, Some(port)) => format!("{a}:{port}"),
            (None, a, None) => a.to_string(),
        };
        s += &format!("\n[[expect]]\nto = \"{to}\"\nproto = \"{proto}\"\nverdict = \"{}\"\n", verdict.as_str());
        match &from {
            Some((src, iif)) => s += &format!("from = \"{src}\"\niif = \"{iif}\"\n"),
            None => s += &format!("user = {}\ngroup = {}\n", conn.uid, conn.gid),
        }
        if let Some((t, _)) = &at {
            s += &format!("at = \"{t}\"\n");
        }
        match cgroup.as_deref().and_then(|c| c.strip_prefix("system.slice/")) {
            Some(unit) if !unit.contains('/') => s += &format!("service = \"{unit}\"\n"),
            _ => {
                if let Some(c) = &cgroup {
                    s += &format!("cgroup = \"/{c}\"\n");
                }
            }
        }
    }
    s
}

#[test]
fn explain_agrees_with_the_kernel_on_random_policies() {
    if !need_root("explain_agrees_with_the_kernel_on_random_policies") {
        return;
    }
    // The cgroup dimension needs cgroup v2; without it the cases from a cgroup would be errors.
    if lab::cgroup::mount_point().is_none() {
        assert!(std::env::var_os("CI").is_none(), "cgroup v2 is not mounted, and CI is set: failing instead of skipping");
        eprintln!("skipped: cgroup v2 is not mounted");
        return;
    }
    let cases: u32 = std::env::var("LEASH_AGREEMENT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (gen_policy(), prop::collection::vec(gen_conn(), 1..12));
    let total = std::cell::Cell::new(0usize);
    let tables = std::cell::Cell::new(0usize);
    // How often each new dimension decided a row, or was the condition a rule failed on: a
    // check that the generator reaches them (printed at the end).
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<&str, usize>::new());
    runner
        .run(&strategy, |(g, conns)| {
            let dir = TempDir::new("agree");
            let w = world(&dir, &g);
            let now = jiff::Timestamp::now();
            let text = with_expectations(&policy_text(&g, now), &conns, &g, &w, now);
            dir.file("policy.toml", &text);
            let (p, diags) = policy::load(&text, &w);
            let p = p.unwrap_or_else(|| panic!("{diags:?}"));
            let opts = lab::RunOptions { timeout: std::time::Duration::from_millis(300), ..Default::default() };
            let report = lab::run_expectations(&p, &opts).expect("lab");
            total.set(total.get() + report.rows.len());
            tables.set(tables.get() + report.tables.len());
            for (row, e) in report.rows.iter().zip(&p.expects) {
                let mut conn = e.connection();
                conn.at = row.local_time;
                if let Some(f) = &mut conn.from {
                    f.oif = Some(lab::Lab::uplink().to_string());
                }
                let ex = policy::explain(&p, &conn);
                let mut seen = seen.borrow_mut();
                if let policy::Decider::Rule(i) = ex.decider {
                    // Every condition and limit is named here, so that a new one does not
                    // compile until it is either counted or said to be covered otherwise.
                    let policy::Conditions {
                        // The first dimensions: reached by every generated policy.
                        protos: _,
                        ports: _,
                        ports_span: _,
                        to: _,
                        to_span: _,
                        domains: _,
                        allow_private: _,
                        users: _,
                        groups: _,
                        sets,
                        countries,
                        country_ranges: _,
                        cgroups,
                        cgroups_span: _,
                        when,
                        when_span: _,
                        from,
                        from_span: _,
                    } = &p.rules[i].cond;
                    let policy::Limits { rate, max_connections, per: _, span: _ } = &p.rules[i].limits;
                    for (on, what) in [
                        (from.is_some(), "decided by a from rule"),
                        (conn.from.is_some(), "forwarded, decided by a rule"),
                        (when.is_some(), "decided by a when rule"),
                        (cgroups.is_some(), "decided by a cgroup rule"),
                        (!sets.is_empty(), "decided by a set rule"),
                        (!countries.is_empty(), "decided by a country rule"),
                        (rate.is_some() || max_connections.is_some(), "decided by a limited rule"),
                    ] {
                        if on {
                            *seen.entry(what).or_default() += 1;
                        }
                    }
                }
                match ex.decider {
                    policy::Decider::NotGoverned if conn.from.is_some() => *seen.entry("forwarded, not governed").or_default() += 1,
                    policy::Decider::BetweenWorkloads => *seen.entry("forwarded, between workloads").or_default() += 1,
                    policy::Decider::Default if conn.from.is_some() => *seen.entry("forwarded, default").or_default() += 1,
                    policy::Decider::DnsBypass if conn.from.is_some() => *seen.entry("forwarded, dns bypass").or_default() += 1,
                    _ => {}
                }
                for (_, m) in &ex.misses {
                    let what = match m {
                        policy::explain::Miss::Time { .. } => "missed on time",
                        policy::explain::Miss::Cgroup { .. } => "missed on cgroup",
                        policy::explain::Miss::From { .. } => "missed on from",
                        policy::explain::Miss::NoSocket { .. } => "forwarded, missed on no socket",
                        _ => continue,
                    };
                    *seen.entry(what).or_default() += 1;
                }
            }
            let bad: Vec<String> = report
                .rows
                .iter()
                // The kernel against explain; and explain in the lab (on the policy pointed at
                // scratch cgroups, at the time of the probe) against explain here.
                .filter(|r| r.kernel != r.explain || r.expected != r.explain || matches!(r.outcome, lab::Outcome::Error(_)))
                .map(|r| {
                    format!(
                        "{}{}{}: explain {} ({}; {} when generated), kernel {} ({})",
                        r.case,
                        r.from.as_ref().map(|f| format!(" forwarded from {f}")).unwrap_or_default(),
                        r.local_time.map(|t| format!(" at {t}")).unwrap_or_default(),
                        r.explain.as_str(),
                        r.decider,
                        r.expected.as_str(),
                        r.kernel.as_str(),
                        r.outcome.describe()
                    )
                })
                .collect();
            let files: String = SET_NAMES
                .iter()
                .map(|n| format!("--- {n}.txt ---\n{}", std::fs::read_to_string(dir.0.join(format!("{n}.txt"))).unwrap()))
                .collect();
            let rulesets: String = report
                .tables
                .iter()
                .map(|(at, t)| format!("--- ruleset (at {at:?}) ---\n{}", ruleset::render::nft_text(t)))
                .collect();
            prop_assert!(
                bad.is_empty(),
                "kernel and explain disagree:\n{}\n--- policy ---\n{text}\n{files}{rulesets}",
                bad.join("\n")
            );
            Ok(())
        })
        .unwrap();
    eprintln!(
        "agreement: {cases} random policies, {} tables, {} real connections, kernel == explain for all; {:?}",
        tables.get(),
        total.get(),
        seen.borrow()
    );
    // The generator must keep reaching every dimension, or the test silently stops checking it.
    // At 64 cases each of these is expected about ten times or more.
    if cases >= 64 {
        let seen = seen.borrow();
        for dimension in ["when", "cgroup", "set", "country", "from", "forwarded", "not governed", "no socket"] {
            let n: usize = seen.iter().filter(|(k, _)| k.contains(dimension)).map(|(_, n)| *n).sum();
            assert!(n > 0, "no connection of {cases} cases was decided or missed by a {dimension} rule: {seen:?}");
        }
    }
}
