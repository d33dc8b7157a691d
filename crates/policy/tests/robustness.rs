//! `load` on hostile input: arbitrary text, token soup and mutated valid policies must never
//! panic, and every diagnostic must point inside the text.

mod common;

use common::users;
use policy::{Date, diag, explain, lint, load};
use proptest::prelude::*;

const SEEDS: &[&str] = &[
    r#"version = 1
[defaults]
outbound = "deny"
deny_with = "drop"
log_denied = true
log_group = 7
allow_loopback = true
allow_established = true

[[rule]]
name = "dns"
action = "allow"
proto = "udp"
ports = [53, "8000-8080"]
to = ["192.0.2.53", "198.51.100.0/24", "2001:db8::/32"]
user = ["root", 1000]
group = ["developers"]
log = false
purpose = "Name resolution"
justification = "Every service needs DNS"
risk = "low"
owner = "Platform team"
review = 2027-06-01

[[expect]]
to = "192.0.2.53:53"
proto = "udp"
user = "root"
group = "wheel"
verdict = "allow"
"#,
    r#"version = 1
rule = [{ name = "a", action = "deny", proto = ["icmp", "icmpv6"], to = ["::/0", "0.0.0.0/0"] }]
[[expect]]
to = "[2001:db8::1]:443"
verdict = "deny"
user = "alice"
"#,
];

/// Pieces of the language (and of broken versions of it) to splice into texts.
const TOKENS: &[&str] = &[
    "version",
    "=",
    "1",
    "2",
    "\n",
    "[[rule]]",
    "[[expect]]",
    "[defaults]",
    "[rule]",
    "name",
    "action",
    "proto",
    "ports",
    "to",
    "user",
    "group",
    "log",
    "review",
    "verdict",
    "\"allow\"",
    "\"deny\"",
    "\"tcp\"",
    "\"icmp\"",
    "\"any\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "\"",
    "'",
    "#",
    "\"10.0.0.1/8\"",
    "\"::1\"",
    "\"[::1]:80\"",
    "\"1-2\"",
    "65536",
    "-1",
    "0",
    "true",
    "2027-02-29",
    "1979-05-27T07:32:00Z",
    "\"\"\"",
    "é",
    "🦀",
    "\r\n",
    "\t",
    " ",
    "\u{0}",
    "\u{feff}",
    "\"\\u00e9\"",
    "x.y",
    "rule.name",
    "inf",
    "nan",
    "0x10",
    "1e3",
];

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, usize),
    Replace(usize, usize, usize),
    DuplicateLine(usize),
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..20).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, t)| Edit::Insert(a, t)),
        (any::<usize>(), 0usize..10, any::<usize>()).prop_map(|(a, n, t)| Edit::Replace(a, n, t)),
        any::<usize>().prop_map(Edit::DuplicateLine),
    ]
}

fn floor(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(src: &str, edits: &[Edit]) -> String {
    let mut s = src.to_string();
    for e in edits {
        let at = |s: &String, a: usize| floor(s, if s.is_empty() { 0 } else { a % (s.len() + 1) });
        match *e {
            Edit::Delete(a, n) => {
                let start = at(&s, a);
                let end = floor(&s, start + n);
                s.replace_range(start..end, "");
            }
            Edit::Insert(a, t) => {
                let i = at(&s, a);
                s.insert_str(i, TOKENS[t % TOKENS.len()]);
            }
            Edit::Replace(a, n, t) => {
                let start = at(&s, a);
                let end = floor(&s, start + n);
                s.replace_range(start..end, TOKENS[t % TOKENS.len()]);
            }
            Edit::DuplicateLine(a) => {
                let lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let i = a % lines.len();
                    let mut out: Vec<&str> = lines.clone();
                    out.insert(i, lines[i]);
                    s = out.join("\n");
                }
            }
        }
    }
    s
}

/// Everything a caller may do with a text: load, render each diagnostic, lint, explain the
/// expectations. Checks that each diagnostic's span lies inside the text on character boundaries.
fn check(src: &str) -> Result<(), TestCaseError> {
    let (policy, diags) = load(src, &users());
    for d in &diags {
        prop_assert!(
            d.span.start <= d.span.end && d.span.end <= src.len(),
            "span {:?} outside {} bytes",
            d.span,
            src.len()
        );
        prop_assert!(
            src.is_char_boundary(d.span.start) && src.is_char_boundary(d.span.end),
            "span {:?} splits a char",
            d.span
        );
        prop_assert!(!d.message.is_empty());
        let r = diag::render("p.toml", src, d);
        prop_assert!(r.starts_with("p.toml:"));
    }
    prop_assert!(diags.windows(2).all(|w| (w[0].span.start, w[0].span.end) <= (w[1].span.start, w[1].span.end)));
    let errors = diags.iter().any(|d| d.severity == policy::Severity::Error);
    prop_assert_eq!(policy.is_some(), !errors);
    if let Some(p) = policy {
        for d in lint::lint(&p, Date { year: 2026, month: 1, day: 1 }) {
            prop_assert!(d.span.start <= d.span.end && d.span.end <= src.len());
            diag::render("p.toml", src, &d);
        }
        for x in &p.expects {
            explain(&p, &x.connection());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_text(src in any::<String>()) {
        check(&src)?;
    }

    #[test]
    fn token_soup(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..60)) {
        check(&tokens.join(" "))?;
        check(&tokens.concat())?;
    }

    #[test]
    fn mutated_valid_policies(seed in prop::sample::select(SEEDS), edits in prop::collection::vec(arb_edit(), 1..6)) {
        check(&apply(seed, &edits))?;
    }
}

#[test]
fn seeds_are_valid() {
    for s in SEEDS {
        let (p, d) = load(s, &users());
        assert!(p.is_some(), "{d:#?}");
    }
}
