//! Text and JSON presentation of command results (the commands decide, this module only prints).

use crate::load::Loaded;
use policy::{Connection, Decider, Explanation, Policy};
use serde_json::json;

pub fn print_json(v: &impl serde::Serialize) {
    // Serialising our own values cannot fail; a broken stdout pipe ends the process like any CLI.
    println!("{}", serde_json::to_string_pretty(v).expect("JSON serialisation"));
}

fn decider_text(p: &Policy, d: Decider) -> String {
    match d {
        Decider::Loopback => "allow_loopback (destination is a loopback address)".into(),
        Decider::Rule(i) => format!("rule `{}`", p.rules[i].name),
        Decider::Default => "the default (`outbound`, no rule matched)".into(),
        Decider::DnsBypass => "the DNS bypass control: only leash's forwarder may query other resolvers".into(),
        Decider::DnsRedirect => {
            "the DNS bypass control: the query is redirected to leash's forwarder on loopback".into()
        }
        Decider::NameRefused(i) => {
            format!("rule `{}`: the forwarder answers NXDOMAIN for the name, so no connection is made", p.rules[i].name)
        }
    }
}

fn rule_position(l: &Loaded, p: &Policy, i: usize) -> String {
    let (line, col) = policy::diag::line_col(&l.src, p.rules[i].span.start);
    format!("{}:{line}:{col}", l.display_name())
}

pub fn print_explanation(
    l: &Loaded,
    p: &Policy,
    c: &Connection,
    e: &Explanation,
    at: Option<jiff::civil::DateTime>,
    json: bool,
) {
    let conn_text = format!(
        "{} to {}{}{} as uid {} gid {}",
        c.proto.as_str(),
        c.name.as_ref().map(|n| format!("{n} = ")).unwrap_or_default(),
        c.dst,
        c.port.map(|p| format!(" port {p}")).unwrap_or_default(),
        c.uid,
        c.gid
    );
    // The time shows when it was asked for or when windows decide; the cgroup when given.
    let shown_time = at.or(c.at.filter(|_| p.rules.iter().any(|r| r.cond.when.is_some())));
    let conn_text = format!(
        "{conn_text}{}{}",
        c.cgroup.as_ref().map(|g| format!(" in cgroup /{g}")).unwrap_or_default(),
        shown_time
            .map(|t| format!(
                " at {} {}",
                policy::WEEKDAYS[t.weekday().to_sunday_zero_offset() as usize],
                t.strftime("%Y-%m-%d %H:%M:%S")
            ))
            .unwrap_or_default()
    );
    let limits = match e.decider {
        Decider::Rule(i) => limits_text(p, &p.rules[i]),
        _ => None,
    };
    if json {
        print_json(&json!({
            "connection": {
                "proto": c.proto.as_str(), "to": c.dst.to_string(), "name": c.name, "port": c.port,
                "uid": c.uid, "gid": c.gid, "cgroup": c.cgroup, "at": c.at.map(|t| t.to_string()),
                "time_zone": p.defaults.timezone.as_deref().unwrap_or("UTC"),
            },
            "limits": limits,
            "verdict": e.verdict.as_str(),
            "decided_by": match e.decider {
                Decider::Loopback => json!({"kind": "loopback"}),
                Decider::Rule(i) => json!({"kind": "rule", "rule": p.rules[i].name, "index": i, "position": rule_position(l, p, i)}),
                Decider::Default => json!({"kind": "default"}),
                Decider::DnsBypass => json!({"kind": "dns-bypass"}),
                Decider::DnsRedirect => json!({"kind": "dns-redirect"}),
                Decider::NameRefused(i) => json!({"kind": "name-refused", "rule": p.rules[i].name, "index": i, "position": rule_position(l, p, i)}),
            },
            "not_matched": e.misses.iter().map(|(i, m)| json!({
                "rule": p.rules[*i].name, "index": i, "position": rule_position(l, p, *i), "reason": m.to_string(),
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("{}: {}", e.verdict.as_str().to_uppercase(), conn_text);
    println!("decided by {}", decider_text(p, e.decider));
    if let Decider::Rule(i) | Decider::NameRefused(i) = e.decider {
        println!("  at {}", rule_position(l, p, i));
    }
    if let Some(l) = &limits {
        println!("  {l}");
    }
    if !e.misses.is_empty() {
        println!("earlier rules that did not match:");
        for (i, m) in &e.misses {
            println!("  {:<24} {}", p.rules[*i].name, m);
        }
    }
}

/// What an allow rule's `rate` and `max_connections` let through, for explain: the verdict holds
/// only below them.
fn limits_text(p: &Policy, r: &policy::Rule) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(rate) = r.limits.rate {
        parts.push(format!("at most {rate} new connections"));
    }
    if let Some(n) = r.limits.max_connections {
        parts.push(format!("at most {n} connections at once"));
    }
    if parts.is_empty() {
        return None;
    }
    let per = match r.limits.per {
        policy::LimitPer::Rule => "for the whole rule",
        policy::LimitPer::Destination => "per destination",
        policy::LimitPer::User => "per user",
    };
    let above = match p.defaults.deny_with {
        policy::DenyWith::Reject => "reject",
        policy::DenyWith::Drop => "drop",
    };
    Some(format!("limited: {} {per}; above that: deny ({above})", parts.join(" and ")))
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn apply_report_text(r: &kernel::ApplyReport) -> String {
    format!(
        "{} messages, {} bytes in one transaction, kernel {:.1} ms, read-back {:.1} ms",
        r.messages,
        r.bytes,
        ms(r.send_and_ack),
        ms(r.verify)
    )
}

pub fn apply_report_json(r: &kernel::ApplyReport) -> serde_json::Value {
    json!({
        "messages": r.messages,
        "bytes": r.bytes,
        "elements": r.elements,
        "kernel_ms": ms(r.send_and_ack),
        "verify_ms": ms(r.verify),
    })
}

/// Per policy rule (kernel rules grouped by comment, in chain order): packets and bytes.
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
    let Some(rest) = comment.and_then(|c| c.strip_prefix("leash sha256:")) else { return (None, None) };
    match rest.split_once(' ') {
        Some((hash, path)) => (Some(hash), Some(path)),
        None => (Some(rest), None),
    }
}

pub fn print_status(st: Option<&kernel::TableStatus>, json: bool) {
    let Some(st) = st else {
        if json {
            print_json(&json!({"active": false}));
        } else {
            println!("leash: not active (no table inet leash in this network namespace)");
        }
        return;
    };
    let (hash, path) = comment_fields(st.comment.as_deref());
    let rules = rule_counters(st);
    if json {
        print_json(&json!({
            "active": true,
            "sha256": hash,
            "policy": path,
            "comment": st.comment,
            "rules": rules.iter().map(|(n, k, p, b)| json!({"rule": n, "kernel_rules": k, "packets": p, "bytes": b})).collect::<Vec<_>>(),
            "sets": st.sets.iter().map(|s| json!({"name": s.name, "elements": s.elements.value(), "elements_exact": matches!(s.elements, kernel::ElementCount::Exact(_)), "elements_recorded": matches!(s.elements, kernel::ElementCount::Recorded(_)), "interval": s.interval, "timeout": s.timeout})).collect::<Vec<_>>(),
            "chains": st.chains.iter().map(|c| json!({"name": c.name, "priority": c.priority, "policy": c.policy.map(|p| format!("{p:?}").to_lowercase()), "rules": c.rules.len()})).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("leash: active");
    println!("  policy  {}", path.unwrap_or("(unknown: table has no leash comment)"));
    println!("  sha256  {}", hash.unwrap_or("-"));
    for c in &st.chains {
        // A chain without a hook is a limited rule's own chain, reached by jump.
        if c.hook_num.is_none() {
            println!("  chain   {} (regular, jumped to; {} kernel rules)", c.name, c.rules.len());
            continue;
        }
        println!(
            "  chain   {} (priority {}, policy {}, {} kernel rules)",
            c.name,
            c.priority.map_or("?".into(), |p| p.to_string()),
            c.policy.map_or("?".into(), |p| format!("{p:?}").to_lowercase()),
            c.rules.len()
        );
    }
    println!();
    println!("  {:<28} {:>14} {:>16}", "RULE", "PACKETS", "BYTES");
    for (name, _, p, b) in &rules {
        println!("  {name:<28} {p:>14} {b:>16}");
    }
    if !st.sets.is_empty() {
        println!();
        println!("  {:<28} {:>14}", "SET", "ELEMENTS");
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
            println!("  {:<28} {:>14}{kind}", s.name, s.elements.to_string());
        }
    }
}

pub fn print_test_report(l: &Loaded, p: &Policy, r: &lab::Report) {
    let dst_text = |row: &lab::Row| {
        let c = &row.case;
        let dst = match (c.dst, c.port) {
            (std::net::IpAddr::V6(a), Some(port)) => format!("[{a}]:{port}"),
            (a, Some(port)) => format!("{a}:{port}"),
            (a, None) => a.to_string(),
        };
        let mut t = match &c.name {
            Some(n) => format!("{n} = {dst}"),
            None => dst,
        };
        // The process and the time, when the expectation names them.
        if let Some(cg) = &c.cgroup {
            t += &format!(" from /{cg}");
        }
        if let Some(at) = row.at {
            t += &format!(" at {}", at.strftime("%a %Y-%m-%d %H:%M"));
        }
        t
    };
    // Columns as wide as their widest cell, so names of domain cases do not break the table.
    let dw = r.rows.iter().map(|row| dst_text(row).len()).max().unwrap_or(0).max("DESTINATION".len());
    let ow = r.rows.iter().map(|row| row.outcome.describe().len()).max().unwrap_or(0).max("OUTCOME".len());
    println!(
        "{:<4} {:<6} {:<6} {:<dw$} {:<8} {:<8} {:<8} {:<ow$} DECIDED BY",
        "#", "RESULT", "PROTO", "DESTINATION", "USER", "EXPECT", "KERNEL", "OUTCOME"
    );
    for row in &r.rows {
        let c = &row.case;
        let dst = dst_text(row);
        let user = crate::system::user_name(c.uid).unwrap_or_else(|| c.uid.to_string());
        println!(
            "{:<4} {:<6} {:<6} {:<dw$} {:<8} {:<8} {:<8} {:<ow$} {}",
            row.index + 1,
            if row.pass { "ok" } else { "FAIL" },
            c.proto.as_str(),
            dst,
            user,
            row.expected.as_str(),
            row.kernel.as_str(),
            row.outcome.describe(),
            row.decider
        );
        for problem in &row.problems {
            let (line, col) = policy::diag::line_col(&l.src, p.expects[row.index].span.start);
            println!("     {}:{line}:{col}: {problem}", l.display_name());
        }
    }
}
