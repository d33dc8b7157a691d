//! `leash status`: whether a leash table is active, which policy it came from, per-rule counters
//! and set sizes, a warning for every cgroup the rules match that is gone or was made again, and
//! one for the processes holding packet sockets (which send past the firewall) or raw sockets.

use crate::exit::EXIT_OK;
use crate::output;
use crate::state::State;
use anyhow::{Context, Result};
use kernel::Firewall;
use serde_json::json;
use std::fmt::Write;

pub fn run(json: bool, fw: &dyn Firewall, state: &State) -> Result<u8> {
    crate::exit::end_quietly_on_closed_pipe();
    // Large sets are reported from what leash loaded, not counted (see state).
    let st = state.status(fw).context("cannot read the leash table")?;
    let raw = crate::bypass::holders();
    if json {
        let mut j = status_json(st.as_ref());
        j["raw_sockets"] = crate::bypass::json(&raw);
        output::print_json(&j);
    } else {
        print!("{}", status_text(st.as_ref()));
        crate::bypass::eprint(&raw);
    }
    // Rules for a cgroup match its id at apply time; a service restarted since has a new one.
    if st.is_some()
        && let Ok(Some(info)) = fw.table_info()
    {
        for c in state.stale_cgroups(info.handle) {
            let what = match c.now {
                Some(_) => "was made again (a restarted service?)",
                None => "is gone",
            };
            eprintln!(
                "leash: warning: cgroup /sys/fs/cgroup/{} {what} since the apply (the rules match id {}): \
                 they match no process until `leash apply` runs again",
                c.path, c.then
            );
        }
    }
    Ok(EXIT_OK)
}

/// Per policy rule (kernel rules grouped by comment, in chain order): kernel rules, packets and
/// bytes.
fn rule_counters(st: &kernel::TableStatus) -> Vec<(String, usize, u64, u64)> {
    let mut out: Vec<(String, usize, u64, u64)> = Vec::new();
    for chain in &st.chains {
        for r in &chain.rules {
            let name = r.comment.clone().unwrap_or_else(|| format!("handle {}", r.handle));
            let c = r.counter.unwrap_or_default();
            match out.iter_mut().find(|(n, ..)| *n == name) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += c.packets;
                    e.3 += c.bytes;
                }
                None => out.push((name, 1, c.packets, c.bytes)),
            }
        }
    }
    out
}

/// The policy hash and path leash stored in the table comment (`leash sha256:HEX PATH`).
fn comment_fields(comment: Option<&str>) -> (Option<&str>, Option<&str>) {
    match comment.and_then(crate::active::comment_fields) {
        Some((hash, path)) => (Some(hash), path),
        None => (None, None),
    }
}

fn status_json(st: Option<&kernel::TableStatus>) -> serde_json::Value {
    let Some(st) = st else { return json!({"active": false}) };
    let (hash, path) = comment_fields(st.comment.as_deref());
    let rules = rule_counters(st);
    json!({
        "active": true,
        "sha256": hash,
        "policy": path,
        "comment": st.comment,
        "rules": rules.iter().map(|(n, k, p, b)| json!({"rule": n, "kernel_rules": k, "packets": p, "bytes": b})).collect::<Vec<_>>(),
        "sets": st.sets.iter().map(|s| json!({"name": s.name, "elements": s.elements.value(), "elements_exact": matches!(s.elements, kernel::ElementCount::Exact(_)), "elements_recorded": matches!(s.elements, kernel::ElementCount::Recorded(_)), "interval": s.interval, "timeout": s.timeout})).collect::<Vec<_>>(),
        "chains": st.chains.iter().map(|c| json!({"name": c.name, "priority": c.priority, "policy": c.policy.map(|p| format!("{p:?}").to_lowercase()), "rules": c.rules.len()})).collect::<Vec<_>>(),
    })
}

fn status_text(st: Option<&kernel::TableStatus>) -> String {
    let Some(st) = st else { return "leash: not active (no table inet leash in this network namespace)\n".into() };
    let mut o = String::new();
    let (hash, path) = comment_fields(st.comment.as_deref());
    let rules = rule_counters(st);
    // Writing to a String cannot fail.
    let _ = writeln!(o, "leash: active");
    let _ = writeln!(o, "  policy  {}", path.unwrap_or("(unknown: table has no leash comment)"));
    let _ = writeln!(o, "  sha256  {}", hash.unwrap_or("-"));
    for c in &st.chains {
        // A chain without a hook is a limited rule's own chain, reached by jump.
        if c.hook_num.is_none() {
            let _ = writeln!(o, "  chain   {} (regular, jumped to; {} kernel rules)", c.name, c.rules.len());
            continue;
        }
        let _ = writeln!(
            o,
            "  chain   {} (priority {}, policy {}, {} kernel rules)",
            c.name,
            c.priority.map_or("?".into(), |p| p.to_string()),
            c.policy.map_or("?".into(), |p| format!("{p:?}").to_lowercase()),
            c.rules.len()
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "  {:<28} {:>14} {:>16}", "RULE", "PACKETS", "BYTES");
    for (name, _, p, b) in &rules {
        let _ = writeln!(o, "  {name:<28} {p:>14} {b:>16}");
    }
    if !st.sets.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "  {:<28} {:>14}", "SET", "ELEMENTS");
        for s in &st.sets {
            // Timeout sets are the forwarder's: their elements come and go with DNS answers.
            // Meters (limit_per) are dynamic sets the packet path fills: nft's NFT_SET_EVAL flag.
            let kind = if s.flags & 0x20 != 0 {
                "  (meter: one limiter per key)"
            } else if s.timeout {
                "  (domain answers, with timeouts)"
            } else {
                ""
            };
            let _ = writeln!(o, "  {:<28} {:>14}{kind}", s.name, s.elements.to_string());
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeFirewall;

    fn table() -> ruleset::Table {
        let mut t = FakeFirewall::table_with_sets(&["s_feed_v4"]);
        let rule = |comment: &str| ruleset::model::Rule { stmts: Vec::new(), comment: Some(comment.into()) };
        // One policy rule becomes several kernel rules sharing its name.
        t.chains[0].rules = vec![rule("dns"), rule("web"), rule("web")];
        t.sets.push(ruleset::Set {
            name: "r_api_d4".into(),
            key: ruleset::KeyType::Ipv4Addr,
            interval: false,
            timeout: true,
            dynamic: None,
            size: None,
            elements: ruleset::SetElements::TimedV4(vec![ruleset::TimedAddr::new("192.0.2.1".parse().unwrap(), 5000, None)]),
        });
        t
    }

    #[test]
    fn text_names_the_policy_sums_rules_by_name_and_labels_sets() {
        let st = FakeFirewall::with_table(&table(), 1).status().unwrap();
        let text = status_text(st.as_ref());
        assert!(text.starts_with("leash: active\n  policy  /etc/leash/policy.toml\n  sha256  0123456789abcdef\n"), "{text}");
        assert!(text.contains("  chain   output (priority 0, policy accept, 3 kernel rules)\n"), "{text}");
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("  dns ") || l.starts_with("  web ")).collect();
        assert_eq!(rules.len(), 2, "kernel rules are summed per policy rule: {text}");
        let set = text.lines().find(|l| l.starts_with("  r_api_d4 ")).unwrap_or_else(|| panic!("{text}"));
        assert!(set.ends_with(" 1  (domain answers, with timeouts)"), "{set}");
        assert_eq!(status_text(None), "leash: not active (no table inet leash in this network namespace)\n");
    }

    #[test]
    fn json_counts_kernel_rules_per_policy_rule_and_says_how_sets_were_counted() {
        let st = FakeFirewall::with_table(&table(), 1).status().unwrap();
        let j = status_json(st.as_ref());
        assert_eq!(j["active"], true);
        assert_eq!(j["policy"], "/etc/leash/policy.toml");
        assert_eq!(j["sha256"], "0123456789abcdef");
        assert_eq!(j["rules"][1], json!({"rule": "web", "kernel_rules": 2, "packets": 0, "bytes": 0}));
        assert_eq!(j["sets"][0]["elements_exact"], true);
        assert_eq!(j["sets"][1]["timeout"], true);
        assert_eq!(status_json(None), json!({"active": false}));
    }

    #[test]
    fn a_comment_without_a_path_shows_the_hash_alone() {
        let mut t = table();
        t.comment = Some("leash sha256:feedfacefeedface".into());
        let st = FakeFirewall::with_table(&t, 1).status().unwrap();
        let text = status_text(st.as_ref());
        assert!(text.contains("  policy  (unknown: table has no leash comment)\n  sha256  feedfacefeedface\n"), "{text}");
    }
}
