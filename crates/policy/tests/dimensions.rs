//! Parsing and `explain` of the rule dimensions beyond address, port and user: time windows,
//! limits, cgroups (services), named sets and countries.

use policy::{Action, Connection, Decider, Proto, StaticResolver, explain};

fn resolver() -> StaticResolver {
    StaticResolver::debian_base()
        .cgroup2("unified")
        .cgroup("system.slice/nginx.service", 4242)
        .file("feeds/block.txt", "# feed\n198.51.100.0/24\n203.0.113.7\n2001:db8:bad::/48 ; doc\n")
        .file("feeds/bad.txt", "192.0.2.1\n  not-an-address\n")
}

fn load(src: &str) -> (Option<policy::Policy>, Vec<policy::Diagnostic>) {
    policy::load(src, &resolver())
}

fn load_ok(src: &str) -> policy::Policy {
    let (p, d) = load(src);
    p.unwrap_or_else(|| panic!("policy did not load: {d:#?}"))
}

/// (line, column, code, message) of every diagnostic.
fn diags(src: &str) -> Vec<(usize, usize, &'static str, String)> {
    load(src)
        .1
        .into_iter()
        .map(|d| {
            let (l, c) = policy::diag::line_col(src, d.span.start);
            (l, c, d.code, d.message)
        })
        .collect()
}

fn conn(dst: &str, port: u16) -> Connection {
    Connection { proto: Proto::Tcp, dst: dst.parse().unwrap(), port: Some(port), uid: 0, gid: 0, name: None, cgroup: None, at: None, from: None }
}

fn at(s: &str) -> Option<jiff::civil::DateTime> {
    Some(policy::time::parse_at(s).unwrap())
}

const WINDOWS: &str = r#"version = 1
[defaults]
outbound = "deny"
timezone = "Europe/Berlin"

[[rule]]
name = "office"
action = "allow"
ports = [443]
when = ["Mon-Fri 09:00-17:00", "Sat 10:00-12:00"]

[[rule]]
name = "night"
action = "allow"
ports = [22]
when = "22:00-06:00"
"#;

#[test]
fn windows_decide_by_local_time() {
    let p = load_ok(WINDOWS);
    assert_eq!(p.defaults.timezone.as_deref(), Some("Europe/Berlin"));
    let check = |port, time: &str, want: Action| {
        let mut c = conn("192.0.2.1", port);
        c.at = at(time);
        let e = explain(&p, &c);
        assert_eq!(e.verdict, want, "port {port} at {time}: {e:?}");
    };
    check(443, "Mon 09:00", Action::Allow);
    check(443, "Fri 16:59", Action::Allow);
    check(443, "Fri 17:00", Action::Deny);
    check(443, "Sat 11:00", Action::Allow);
    check(443, "Sun 11:00", Action::Deny);
    // The night window crosses midnight: Sunday 03:00 belongs to Saturday night's window.
    check(22, "Sun 03:00", Action::Allow);
    check(22, "Wed 23:30", Action::Allow);
    check(22, "Wed 12:00", Action::Deny);
    // Without a time, windowed rules do not match, and the reason says so.
    let e = explain(&p, &conn("192.0.2.1", 443));
    assert_eq!(e.decider, Decider::Default);
    assert!(e.misses[0].1.to_string().contains("no time given"), "{}", e.misses[0].1);
    let mut c = conn("192.0.2.1", 443);
    c.at = at("2026-11-29 10:00");
    let m = explain(&p, &c).misses[0].1.to_string();
    assert_eq!(m, "Sun 2026-11-29 10:00:00 is outside Mon,Tue,Wed,Thu,Fri 09:00-17:00, Sat 10:00-12:00");
}

#[test]
fn instants_become_local_time() {
    let p = load_ok(WINDOWS);
    // 08:30 UTC on a winter Monday is 09:30 in Berlin; in summer 07:30 UTC is 09:30.
    let winter: jiff::Timestamp = "2026-11-23T08:30:00Z".parse().unwrap();
    let summer: jiff::Timestamp = "2027-06-07T07:30:00Z".parse().unwrap();
    assert_eq!(p.local_time(winter).hour(), 9);
    assert_eq!(p.local_time(summer).hour(), 9);
}

#[test]
fn window_errors_point_at_the_value() {
    let src = "version = 1\n[defaults]\ntimezone = \"Mars/Base\"\n[[rule]]\nname = \"a\"\naction = \"allow\"\nwhen = [\"Mon-Fri 09:00-09:00\", \"Funday 10:00-11:00\", 3]\n";
    let d = diags(src);
    let got: Vec<(usize, usize, &str)> = d.iter().map(|(l, c, k, _)| (*l, *c, *k)).collect();
    assert_eq!(got, vec![(3, 12, "bad-timezone"), (7, 9, "bad-window"), (7, 32, "bad-window"), (7, 54, "wrong-type")], "{d:#?}");
    assert!(d[1].3.contains("empty"), "{}", d[1].3);
}

#[test]
fn limits() {
    let p = load_ok(
        "version = 1\n[[rule]]\nname = \"api\"\naction = \"allow\"\nports = [443]\nrate = \"10/minute\"\nburst = 3\nmax_connections = 4\nlimit_per = \"destination\"\n",
    );
    let r = &p.rules[0];
    assert_eq!(r.limits.rate, Some(policy::Rate { count: 10, per_seconds: 60, burst: 3 }));
    assert_eq!(r.limits.max_connections, Some(4));
    assert_eq!(r.limits.per, policy::LimitPer::Destination);
    // The burst defaults to the count.
    let p = load_ok("version = 1\n[[rule]]\nname = \"api\"\naction = \"allow\"\nrate = \"7/second\"\n");
    assert_eq!(p.rules[0].limits.rate.unwrap().burst, 7);

    let d = diags("version = 1\n[[rule]]\nname = \"x\"\naction = \"deny\"\nrate = \"10/minute\"\n");
    assert_eq!(d[0].2, "limit-on-deny", "{d:#?}");
    let d = diags("version = 1\n[[rule]]\nname = \"x\"\naction = \"allow\"\nburst = 3\nlimit_per = \"user\"\n");
    let codes: Vec<&str> = d.iter().map(|x| x.2).collect();
    assert_eq!(codes, vec!["burst-without-rate", "limit-per-without-limit"]);
    for bad in ["10", "10/fortnight", "0/second", "x/minute"] {
        let d = diags(&format!("version = 1\n[[rule]]\nname = \"x\"\naction = \"allow\"\nrate = \"{bad}\"\n"));
        assert_eq!(d[0].2, "bad-rate", "{bad}: {d:#?}");
    }
}

#[test]
fn cgroups_and_services() {
    let src = "version = 1\n[[rule]]\nname = \"web\"\naction = \"allow\"\nservice = \"nginx\"\n\n[[rule]]\nname = \"later\"\naction = \"allow\"\nservice = [\"postgresql.service\"]\ncgroup = \"/user.slice\"\n";
    let (p, d) = load(src);
    let p = p.unwrap();
    let web = &p.rules[0].cond.cgroups.as_ref().unwrap()[0];
    assert_eq!((web.path.as_str(), web.id, web.nft_path.as_str(), web.level()), ("system.slice/nginx.service", Some(4242), "unified/system.slice/nginx.service", 2));
    // Services that do not exist yet are warnings, not errors.
    let codes: Vec<&str> = d.iter().map(|x| x.code).collect();
    assert_eq!(codes, vec!["missing-cgroup", "missing-cgroup"], "{d:#?}");
    assert!(d[0].message.contains("postgresql.service"), "{}", d[0].message);

    let mut c = conn("192.0.2.1", 443);
    c.cgroup = Some("system.slice/nginx.service".into());
    assert_eq!(explain(&p, &c).decider, Decider::Rule(0));
    c.cgroup = Some("/system.slice/nginx.service/worker".into());
    assert_eq!(explain(&p, &c).decider, Decider::Rule(0), "below the service's cgroup");
    c.cgroup = Some("system.slice/nginx.service-other".into());
    let e = explain(&p, &c);
    assert_eq!(e.decider, Decider::Default);
    // The second rule's cgroups did not exist at load, so it matches nothing, and says why.
    c.cgroup = Some("user.slice".into());
    let e = explain(&p, &c);
    assert_eq!(e.decider, Decider::Default);
    assert!(e.misses[1].1.to_string().contains("(missing at load)"), "{}", e.misses[1].1);

    let d = diags("version = 1\n[[rule]]\nname = \"x\"\naction = \"allow\"\ncgroup = \"/a/../b\"\nservice = \"a/b\"\n");
    let codes: Vec<&str> = d.iter().map(|x| x.2).collect();
    assert_eq!(codes, vec!["bad-cgroup", "bad-service"]);
}

#[test]
fn named_sets() {
    let src = "version = 1\n[[set]]\nname = \"threats\"\nfile = \"feeds/block.txt\"\n\n[[rule]]\nname = \"block\"\naction = \"deny\"\nto = [\"set:threats\"]\n\n[[rule]]\nname = \"rest\"\naction = \"allow\"\n";
    let p = load_ok(src);
    assert_eq!(p.sets.len(), 1);
    assert_eq!((p.sets[0].entries, p.sets[0].ranges.len()), (3, 3));
    assert_eq!(explain(&p, &conn("198.51.100.9", 443)).decider, Decider::Rule(0));
    assert_eq!(explain(&p, &conn("2001:db8:bad::1", 443)).decider, Decider::Rule(0));
    let e = explain(&p, &conn("192.0.2.1", 443));
    assert_eq!(e.decider, Decider::Rule(1));
    assert_eq!(e.misses[0].1.to_string(), "192.0.2.1 not in set:threats");

    // A rule may name a set defined after it.
    let later = "version = 1\n[[rule]]\nname = \"b\"\naction = \"deny\"\nto = [\"set:threats\"]\n[[set]]\nname = \"threats\"\nfile = \"feeds/block.txt\"\n";
    assert_eq!(load_ok(later).rules[0].cond.sets[0].index, 0);

    let d = diags("version = 1\n[[set]]\nname = \"t\"\nfile = \"feeds/bad.txt\"\n[[set]]\nname = \"u\"\nfile = \"feeds/none.txt\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\nto = [\"set:threat\"]\n");
    let got: Vec<(usize, &str)> = d.iter().map(|x| (x.0, x.2)).collect();
    assert_eq!(got, vec![(4, "set-file"), (7, "set-file"), (11, "unknown-set")], "{d:#?}");
    assert!(d[0].3.contains("feeds/bad.txt:2:3:"), "{}", d[0].3);
    assert!(d[2].3.contains("define it with [[set]]"), "{}", d[2].3);
    let d = diags("version = 1\n[[set]]\nname = \"threats\"\nfile = \"feeds/block.txt\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\nto = [\"set:threat\"]\n");
    assert!(d[0].3.contains("did you mean `set:threats`?"), "{}", d[0].3);
}

#[test]
fn expectations_with_time_and_service() {
    let src = format!(
        "{WINDOWS}\n[[expect]]\nto = \"192.0.2.1:443\"\nat = \"Mon 10:00\"\nservice = \"nginx\"\nverdict = \"allow\"\n\n[[expect]]\nto = \"192.0.2.1:443\"\nat = \"2026-11-29 10:00\"\nverdict = \"deny\"\n"
    );
    let p = load_ok(&src);
    assert_eq!(p.expects[0].cgroup.as_deref(), Some("system.slice/nginx.service"));
    for x in &p.expects {
        assert_eq!(explain(&p, &x.connection()).verdict, x.verdict);
    }
    let d = diags(&format!("{WINDOWS}\n[[expect]]\nto = \"192.0.2.1:443\"\nat = \"someday\"\nverdict = \"allow\"\n"));
    assert_eq!(d.iter().map(|x| x.2).collect::<Vec<_>>(), vec!["bad-time"]);
}

#[test]
fn countries_from_each_database_layout() {
    use policy::geo::testdb;
    let nets: Vec<(ipnet::IpNet, &str)> = vec![
        ("192.0.2.0/25".parse().unwrap(), "XA"),
        ("198.51.100.0/24".parse().unwrap(), "XB"),
        ("2001:db8:1::/48".parse().unwrap(), "XA"),
    ];
    let (blocks, locations) = testdb::write_geolite_csv(&nets);
    let layouts: Vec<(&str, StaticResolver, &str)> = vec![
        ("geo/db.mmdb", resolver().file("geo/db.mmdb", testdb::write_mmdb(&nets, 6)), ""),
        ("geo/db.csv", resolver().file("geo/db.csv", testdb::write_dbip_csv(&nets)), ""),
        (
            "geo/GeoLite2-Country-Blocks-IPv4.csv",
            resolver()
                .file("geo/GeoLite2-Country-Blocks-IPv4.csv", blocks.clone())
                .file("geo/GeoLite2-Country-Locations-en.csv", locations.clone()),
            "",
        ),
    ];
    for (db, r, _) in layouts {
        let src = format!(
            "version = 1\n[countries]\ndatabase = \"{db}\"\n[[rule]]\nname = \"xa\"\naction = \"deny\"\nto_country = [\"XA\", \"xz\"]\n[[rule]]\nname = \"rest\"\naction = \"allow\"\n"
        );
        let (p, d) = policy::load(&src, &r);
        let p = p.unwrap_or_else(|| panic!("{db}: {d:#?}"));
        // `xz` is a valid code the database does not have: a warning.
        assert_eq!(d.iter().map(|d| d.code).collect::<Vec<_>>(), vec!["unknown-country"], "{db}");
        assert_eq!(p.rules[0].cond.countries.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), vec!["XA", "XZ"]);
        assert_eq!(explain(&p, &conn("192.0.2.7", 443)).decider, Decider::Rule(0), "{db}");
        assert_eq!(explain(&p, &conn("2001:db8:1::9", 443)).decider, Decider::Rule(0), "{db}");
        let e = explain(&p, &conn("198.51.100.7", 443));
        assert_eq!(e.decider, Decider::Rule(1), "{db}");
        assert_eq!(e.misses[0].1.to_string(), "198.51.100.7 not in country XA, country XZ");
    }

    // Errors: no [countries], a bad code, a CSV with a bad line (file:line:col).
    let d = diags("version = 1\n[[rule]]\nname = \"x\"\naction = \"deny\"\nto_country = [\"XA\"]\n");
    assert_eq!(d[0].2, "no-country-db");
    let r = resolver().file("geo/bad.csv", "192.0.2.0,192.0.2.255,XA\n192.0.2.300,192.0.3.0,XB\n");
    let src = "version = 1\n[countries]\ndatabase = \"geo/bad.csv\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\nto_country = [\"XA\", \"X1\"]\n";
    let (p, d) = policy::load(src, &r);
    assert!(p.is_none());
    let msgs: Vec<String> = d.iter().map(|d| format!("{}: {}", d.code, d.message)).collect();
    assert!(msgs[0].starts_with("country-db: geo/bad.csv:2:"), "{msgs:#?}");
    assert!(msgs[1].starts_with("bad-country: invalid country code `X1`"), "{msgs:#?}");
}

#[test]
fn lints_for_the_new_dimensions() {
    let today = policy::Date { year: 2026, month: 6, day: 1 };
    // The general lints (no DNS rule, undocumented broad allows) are not what this is about.
    let codes = |src: &str| -> Vec<&'static str> {
        let p = load_ok(src);
        policy::lint::lint(&p, today)
            .into_iter()
            .map(|d| d.code)
            .filter(|c| !matches!(*c, "no-dns" | "undocumented-broad-allow"))
            .collect()
    };
    // Only the expectation whose verdict depends on the hour is flagged.
    let src = format!(
        "{WINDOWS}\n[[expect]]\nto = \"192.0.2.1:443\"\nverdict = \"allow\"\n\n[[expect]]\nto = \"192.0.2.1:80\"\nverdict = \"deny\"\n"
    );
    assert_eq!(codes(&src), vec!["expect-without-time"]);
    // A rate with allow_established off counts every packet.
    let c = codes("version = 1\n[defaults]\nallow_established = false\n[[rule]]\nname = \"a\"\naction = \"allow\"\npurpose = \"p\"\nowner = \"o\"\nrate = \"5/second\"\n");
    assert!(c.contains(&"rate-counts-packets"), "{c:?}");
    // A set or a country is a destination: `to = ["set:x"]` is not an empty list, and an earlier
    // windowed rule does not shadow a later unwindowed one.
    let c = codes("version = 1\n[[set]]\nname = \"t\"\nfile = \"feeds/block.txt\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\nto = [\"set:t\"]\nwhen = \"Mon 09:00-10:00\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\nto = [\"set:t\"]\n");
    assert!(c.is_empty(), "{c:?}");
    // ... while a later rule inside the earlier one's set and window is shadowed.
    let c = codes("version = 1\n[[set]]\nname = \"t\"\nfile = \"feeds/block.txt\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\nto = [\"set:t\"]\n[[rule]]\nname = \"b\"\naction = \"deny\"\nto = [\"198.51.100.7\"]\nwhen = \"Mon 09:00-10:00\"\n");
    assert_eq!(c, vec!["shadowed"]);
}

#[test]
fn rules_that_match_nothing_stay_out_of_everything() {
    let today = policy::Date { year: 2026, month: 6, day: 1 };
    // An empty `to_country` matches nothing, as `to = []` does: never "anywhere".
    let geo = resolver().file("geo/db.csv", policy::geo::testdb::write_dbip_csv(&[("192.0.2.0/25".parse().unwrap(), "XA")]));
    let src = "version = 1\n[countries]\ndatabase = \"geo/db.csv\"\n[[rule]]\nname = \"a\"\naction = \"allow\"\nto_country = []\n";
    let (p, d) = policy::load(src, &geo);
    let p = p.unwrap_or_else(|| panic!("{d:#?}"));
    assert_eq!(explain(&p, &conn("198.51.100.1", 443)).decider, Decider::Default);
    let lints = policy::lint::lint(&p, today);
    assert!(lints.iter().any(|l| l.code == "never-matches" && l.message.contains("`to_country` is an empty list")), "{lints:#?}");

    // A domain rule for a service that does not run gets no answers: the forwarder feeds the
    // next rule naming the domain, and explain agrees.
    let src = "version = 1\n[dns]\nupstreams = [\"192.0.2.53\"]\n[[rule]]\nname = \"web\"\naction = \"deny\"\nto = [\"example.com\"]\nservice = \"not-running\"\n[[rule]]\nname = \"ok\"\naction = \"allow\"\nto = [\"example.com\"]\n";
    let p = load_ok(src);
    let d = policy::dns::decide_name(&p, "example.com");
    assert_eq!((d.refuse, d.rules.clone()), (None, vec![1]));
    let mut c = conn("198.51.100.1", 443);
    c.name = Some("example.com".into());
    assert_eq!(explain(&p, &c).decider, Decider::Rule(1));
    assert!(p.rules[0].matches_nothing().unwrap().contains("existed when the policy was loaded"));
    // The load warned about the service already; the linter does not repeat it.
    let lints = policy::lint::lint(&p, today);
    assert!(!lints.iter().any(|l| l.code == "never-matches"), "{lints:#?}");

    // An empty `when` matches nothing either.
    let p = load_ok("version = 1\n[[rule]]\nname = \"a\"\naction = \"allow\"\nwhen = []\n");
    assert!(p.rules[0].matches_nothing().unwrap().contains("`when` is an empty list"));
}
