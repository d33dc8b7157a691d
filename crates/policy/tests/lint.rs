//! Lints: each one firing where it should and staying quiet where it should not.

mod common;

use common::{found, load_ok};
use policy::{Date, lint::lint};

const TODAY: Date = Date { year: 2026, month: 5, day: 1 };

/// Policy text with DNS allowed and documented (and `[forward]` written, which says forwarded
/// traffic was thought of), so only the lint under test fires.
fn policy(rules: &str) -> String {
    format!(
        "version = 1\n\
         [[rule]]\nname = \"dns\"\naction = \"allow\"\nproto = \"udp\"\nports = [53]\nto = [\"192.0.2.53\"]\n\
         {rules}\n[forward]\n"
    )
}

/// (line, col, code, message) of every lint warning.
fn lints(src: &str) -> Vec<common::Found> {
    let p = load_ok(src);
    let l = lint(&p, TODAY);
    assert!(l.iter().all(|d| d.severity == policy::Severity::Warning));
    found(src, &l)
}

fn codes(src: &str) -> Vec<&'static str> {
    lints(src).into_iter().map(|f| f.2).collect()
}

#[test]
fn clean_policy_has_no_warnings() {
    assert_eq!(codes(&policy("")), Vec::<&str>::new());
}

// ---------------------------------------------------------------- shadowed

#[test]
fn shadowed_by_a_broader_rule() {
    let src = policy(
        "[[rule]]\nname = \"web\"\naction = \"deny\"\nproto = \"tcp\"\nto = [\"10.0.0.0/8\"]\n\
         [[rule]]\nname = \"intranet\"\naction = \"allow\"\nproto = \"tcp\"\nports = [443]\nto = [\"10.1.0.0/16\"]\n",
    );
    let l = lints(&src);
    assert_eq!(l.len(), 1, "{l:#?}");
    assert_eq!((l[0].0, l[0].1, l[0].2), (14, 8, "shadowed"));
    assert!(l[0].3.contains("rule `intranet` never decides: the earlier rule `web`"), "{}", l[0].3);
}

#[test]
fn shadowed_through_union_of_networks_and_ports() {
    // Two /25s cover the /24, two port ranges cover 80-90; users and groups are subsets.
    let src = policy(
        "[[rule]]\nname = \"a\"\naction = \"deny\"\nports = [\"1-85\", \"86-100\"]\n\
         to = [\"198.51.100.0/25\", \"198.51.100.128/25\", \"2001:db8::/32\"]\nuser = [\"root\", \"alice\"]\ngroup = [0, 10]\n\
         [[rule]]\nname = \"b\"\naction = \"deny\"\nproto = \"tcp\"\nports = [\"80-90\"]\n\
         to = [\"198.51.100.0/24\", \"2001:db8:1::/48\"]\nuser = 1000\ngroup = \"wheel\"\n",
    );
    assert_eq!(codes(&src), vec!["shadowed"]);
}

#[test]
fn not_shadowed_when_any_dimension_is_wider() {
    let base = "[[rule]]\nname = \"a\"\naction = \"deny\"\nproto = \"tcp\"\nports = [443]\nto = [\"10.0.0.0/8\"]\nuser = 0\ngroup = 0\n";
    let later = [
        "proto = [\"tcp\", \"udp\"]\nports = [443]\nto = [\"10.0.0.0/8\"]\nuser = 0\ngroup = 0\n",
        "proto = \"tcp\"\nports = [443, 444]\nto = [\"10.0.0.0/8\"]\nuser = 0\ngroup = 0\n",
        "proto = \"tcp\"\nto = [\"10.0.0.0/8\"]\nuser = 0\ngroup = 0\n",
        "proto = \"tcp\"\nports = [443]\nto = [\"10.0.0.0/7\"]\nuser = 0\ngroup = 0\n",
        "proto = \"tcp\"\nports = [443]\nto = [\"10.0.0.0/8\", \"::ffff:10.0.0.1\"]\nuser = 0\ngroup = 0\n",
        "proto = \"tcp\"\nports = [443]\nuser = 0\ngroup = 0\n",
        "proto = \"tcp\"\nports = [443]\nto = [\"10.0.0.0/8\"]\nuser = [0, 1000]\ngroup = 0\n",
        "proto = \"tcp\"\nports = [443]\nto = [\"10.0.0.0/8\"]\nuser = 0\n",
    ];
    for l in later {
        let src = policy(&format!("{base}[[rule]]\nname = \"b\"\naction = \"deny\"\n{l}"));
        assert_eq!(codes(&src), Vec::<&str>::new(), "{l}");
    }
    // The same rule again is shadowed, whatever its action.
    let src = policy(&format!("{base}{}", base.replace("\"a\"", "\"b\"").replace("deny", "allow")));
    assert_eq!(codes(&src), vec!["shadowed"]);
}

#[test]
fn ports_without_proto_do_not_cover_icmp() {
    // `ports` implies tcp and udp, so the earlier rule does not cover an icmp rule...
    let src = policy(
        "[[rule]]\nname = \"a\"\naction = \"deny\"\nports = [\"1-65535\"]\n[[rule]]\nname = \"b\"\naction = \"deny\"\nproto = \"icmp\"\n",
    );
    assert_eq!(codes(&src), Vec::<&str>::new());
    // ...and a full port range does not cover a rule without ports (which also matches port 0
    // and connections without a port).
    let src = policy(
        "[[rule]]\nname = \"a\"\naction = \"deny\"\nports = [\"1-65535\"]\n[[rule]]\nname = \"b\"\naction = \"deny\"\nproto = \"tcp\"\n",
    );
    assert_eq!(codes(&src), Vec::<&str>::new());
    // A rule without any condition covers everything after it.
    let src = policy(
        "[[rule]]\nname = \"a\"\naction = \"deny\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\nproto = \"icmp\"\n",
    );
    assert_eq!(codes(&src), vec!["shadowed"]);
}

// ---------------------------------------------------------------- never-matches

#[test]
fn never_matches_on_empty_lists() {
    for (key, value) in [("proto", "[]"), ("ports", "[]"), ("to", "[]"), ("user", "[]"), ("group", "[]")] {
        let src = policy(&format!("[[rule]]\nname = \"e\"\naction = \"deny\"\n{key} = {value}\n"));
        let l = lints(&src);
        assert_eq!(l.len(), 1, "{key}: {l:#?}");
        assert_eq!((l[0].0, l[0].1, l[0].2), (9, 8, "never-matches"));
        assert!(l[0].3.contains(&format!("`{key}` is an empty list")), "{}", l[0].3);
    }
}

#[test]
fn never_matches_on_address_family() {
    let t = |proto: &str, to: &str| {
        codes(&policy(&format!("[[rule]]\nname = \"f\"\naction = \"deny\"\nproto = {proto}\nto = {to}\n")))
    };
    assert_eq!(t("\"icmp\"", "[\"2001:db8::/32\"]"), vec!["never-matches"]);
    assert_eq!(t("\"icmpv6\"", "[\"192.0.2.0/24\", \"198.51.100.1\"]"), vec!["never-matches"]);
    assert_eq!(t("[\"icmp\", \"icmpv6\"]", "[\"::/0\"]"), Vec::<&str>::new());
    assert_eq!(t("\"icmp\"", "[\"192.0.2.0/24\", \"2001:db8::/32\"]"), Vec::<&str>::new());
    assert_eq!(t("\"tcp\"", "[\"2001:db8::/32\"]"), Vec::<&str>::new());
    assert_eq!(t("\"any\"", "[\"2001:db8::/32\"]"), Vec::<&str>::new());
    let l = lints(&policy("[[rule]]\nname = \"f\"\naction = \"deny\"\nproto = \"icmp\"\nto = [\"::1\"]\n"));
    assert!(l[0].3.contains("icmp cannot reach any of its destinations"), "{}", l[0].3);
}

#[test]
fn a_never_matching_rule_is_not_also_shadowed() {
    let src = policy("[[rule]]\nname = \"a\"\naction = \"deny\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\nto = []\n");
    assert_eq!(codes(&src), vec!["never-matches"]);
}

// ---------------------------------------------------------------- no-dns

#[test]
fn no_dns_when_deny_by_default_without_a_dns_rule() {
    let src = "version = 1\n[defaults]\noutbound = \"deny\"\n";
    let l = lints(src);
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].0, l[0].1, l[0].2), (3, 12, "no-dns"));
    assert!(l[0].3.contains("no rule allows DNS"));
    // Without [defaults] the default (deny) applies; the warning points at the start.
    let l = lints("version = 1\n");
    assert_eq!((l[0].0, l[0].1, l[0].2), (1, 1, "no-dns"));
}

#[test]
fn no_dns_ignores_rules_that_do_not_let_port_53_through() {
    for rule in [
        "action = \"deny\"\nports = [53]\n",
        "action = \"allow\"\nports = [54]\n",
        "action = \"allow\"\nproto = \"icmp\"\n",
        "action = \"allow\"\nports = [53]\nto = []\n",
    ] {
        let src = format!("version = 1\n[[rule]]\nname = \"x\"\n{rule}purpose = \"p\"\nowner = \"o\"\n");
        assert!(codes(&src).contains(&"no-dns"), "{rule}");
    }
}

#[test]
fn dns_allowed_in_various_ways() {
    for rule in [
        "action = \"allow\"\nproto = \"tcp\"\nports = [\"50-60\"]\n",
        "action = \"allow\"\nports = [53]\nto = [\"0.0.0.0/0\"]\n",
        "action = \"allow\"\nproto = \"udp\"\nto = [\"192.0.2.53\"]\n",
        "action = \"allow\"\nuser = \"root\"\n",
    ] {
        let src = format!("version = 1\n[[rule]]\nname = \"x\"\n{rule}purpose = \"p\"\nowner = \"o\"\n[forward]\n");
        assert_eq!(codes(&src), Vec::<&str>::new(), "{rule}");
    }
    // Allow by default needs no DNS rule.
    assert_eq!(codes("version = 1\n[defaults]\noutbound = \"allow\"\n"), Vec::<&str>::new());
}

// ---------------------------------------------------------------- established-off

#[test]
fn established_off() {
    let src = policy("").replacen("version = 1\n", "version = 1\n[defaults]\nallow_established = false\n", 1);
    let l = lints(&src);
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].0, l[0].1, l[0].2), (3, 21, "established-off"));
    let src = policy("").replacen("version = 1\n", "version = 1\n[defaults]\nallow_established = true\n", 1);
    assert_eq!(codes(&src), Vec::<&str>::new());
}

// ---------------------------------------------------------------- review-overdue

#[test]
fn review_overdue() {
    let t = |date: &str| policy(&format!("[[rule]]\nname = \"r\"\naction = \"deny\"\nreview = {date}\n"));
    let l = lints(&t("2026-04-30"));
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].0, l[0].1, l[0].2), (11, 10, "review-overdue"));
    assert!(l[0].3.contains("rule `r` was due for review on 2026-04-30"));
    assert_eq!(codes(&t("2025-12-31")), vec!["review-overdue"]);
    // Due today or later: fine.
    assert_eq!(codes(&t("2026-05-01")), Vec::<&str>::new());
    assert_eq!(codes(&t("2027-01-01")), Vec::<&str>::new());
}

// ---------------------------------------------------------------- undocumented-broad-allow

#[test]
fn undocumented_broad_allow() {
    let t = |body: &str| policy(&format!("[[rule]]\nname = \"b\"\naction = \"allow\"\n{body}"));
    // All ports to one place.
    let l = lints(&t("proto = \"tcp\"\nto = [\"192.0.2.1\"]\npurpose = \"p\"\n"));
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].0, l[0].1, l[0].2), (9, 8, "undocumented-broad-allow"));
    assert!(l[0].3.contains("allows every port but has no `owner`"), "{}", l[0].3);
    // One port anywhere.
    let l = lints(&t("ports = [443]\nowner = \"o\"\n"));
    assert!(l[0].3.contains("allows any destination but has no `purpose`"), "{}", l[0].3);
    assert_eq!(codes(&t("ports = [443]\nto = [\"::/0\"]\n")), vec!["undocumented-broad-allow"]);
    assert_eq!(
        codes(&t("ports = [443]\nto = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\nowner = \"o\"\npurpose = \" \"\n")),
        vec!["undocumented-broad-allow"]
    );
    assert_eq!(codes(&t("")), vec!["undocumented-broad-allow"]);
    // Documented, narrow, or not an allow: quiet.
    assert_eq!(codes(&t("purpose = \"p\"\nowner = \"o\"\n")), Vec::<&str>::new());
    assert_eq!(codes(&t("ports = [443]\nto = [\"192.0.2.0/24\"]\n")), Vec::<&str>::new());
    assert_eq!(codes(&t("proto = \"icmp\"\nto = [\"192.0.2.0/24\"]\n")), Vec::<&str>::new());
    assert_eq!(codes(&policy("[[rule]]\nname = \"b\"\naction = \"deny\"\n")), Vec::<&str>::new());
}

#[test]
fn lints_are_sorted_by_position() {
    let src = "version = 1\n[defaults]\nallow_established = false\n\
               [[rule]]\nname = \"a\"\naction = \"allow\"\nports = [443]\nreview = 2020-01-01\n\
               [[rule]]\nname = \"b\"\naction = \"deny\"\nports = [443]\n";
    let l = lints(src);
    let got: Vec<(usize, &str)> = l.iter().map(|f| (f.0, f.2)).collect();
    assert_eq!(
        got,
        vec![
            (1, "no-dns"),
            (3, "established-off"),
            (5, "undocumented-broad-allow"),
            (8, "review-overdue"),
            (10, "shadowed"),
        ]
    );
}

// ---------------------------------------------------------------- soundness

mod soundness {
    use super::TODAY;
    use crate::common::strategies::{arb_policy, arb_real_conn};
    use policy::{explain::first_miss, lint::lint};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// A rule reported `shadowed` by an earlier rule is matched by it whenever it matches, and a
        /// rule reported `never-matches` matches no connection that can exist.
        #[test]
        fn shadowed_and_never_matches_are_never_wrong(p in arb_policy(), conns in prop::collection::vec(arb_real_conn(), 1..40)) {
            for d in lint(&p, TODAY) {
                let index = |name: &str| p.rules.iter().position(|r| r.name == name).unwrap();
                let named: Vec<&str> = d.message.split('`').skip(1).step_by(2).collect();
                match d.code {
                    "shadowed" => {
                        let (later, earlier) = (index(named[0]), index(named[1]));
                        prop_assert!(earlier < later);
                        for c in &conns {
                            if first_miss(&p, &p.rules[later], c).is_none() {
                                prop_assert!(first_miss(&p, &p.rules[earlier], c).is_none(), "{:?} {}", c, d.message);
                            }
                        }
                    }
                    "never-matches" => {
                        let r = &p.rules[index(named[0])];
                        for c in &conns {
                            prop_assert!(first_miss(&p, r, c).is_some(), "{:?} matches {}", c, d.message);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn rules_needing_a_socket_are_said_not_to_govern_forwarded_traffic() {
    // Once, at the first such rule, naming all of them; without [forward] only.
    let src = "version = 1\n\
               [[rule]]\nname = \"dns\"\naction = \"allow\"\nports = [53]\nto = [\"192.0.2.53\"]\nuser = \"root\"\n\
               [[rule]]\nname = \"web\"\naction = \"allow\"\nports = [443]\nto = [\"192.0.2.0/24\"]\ngroup = 0\n";
    let l = lints(src);
    let forwarded: Vec<&common::Found> = l.iter().filter(|f| f.2 == "not-for-forwarded").collect();
    assert_eq!(forwarded.len(), 1, "{l:?}");
    assert_eq!((forwarded[0].0, forwarded[0].1), (7, 8), "{l:?}");
    assert!(forwarded[0].3.contains("rules `dns`, `web` match by user"), "{}", forwarded[0].3);
    assert!(forwarded[0].3.contains("no local socket"), "{}", forwarded[0].3);
    // A [forward] section says forwarded traffic was thought of; `ignore` means it is not governed.
    assert!(!codes(&format!("{src}[forward]\n")).contains(&"not-for-forwarded"));
    assert!(!codes(&format!("{src}[forward]\nmode = \"ignore\"\n")).contains(&"not-for-forwarded"));
    // A rule with `from` shadows only rules about the same or fewer sources; a socket rule never
    // shadows a rule without socket conditions (it passes forwarded traffic by).
    let p = |rules: &str| format!("version = 1\n[forward]\n{rules}");
    let shadow = |a: &str, b: &str| {
        codes(&p(&format!("[[rule]]\nname = \"a\"\naction = \"deny\"\n{a}[[rule]]\nname = \"b\"\naction = \"deny\"\n{b}")))
            .contains(&"shadowed")
    };
    assert!(shadow("from = [\"198.18.0.0/16\", \"br-*\"]\n", "from = [\"198.18.1.0/24\", \"br-x\"]\n"));
    assert!(!shadow("from = [\"198.18.1.0/24\"]\n", "from = [\"198.18.0.0/16\"]\n"));
    assert!(!shadow("from = [\"br-x\"]\n", "from = [\"br-*\"]\n"));
    assert!(!shadow("from = [\"docker0\"]\n", ""));
    assert!(shadow("", "from = [\"docker0\"]\n"));
    assert!(!shadow("user = 0\n", "ports = [1]\n"));
    assert!(shadow("ports = [1]\n", "user = 0\nports = [1]\n"));
}
