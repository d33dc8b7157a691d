//! Checks a table model (and the names, comments and timeouts of the other writers) against what
//! the kernel would reject or accept with a different meaning, before anything is sent, so that an
//! error names the model's item rather than a netlink attribute.

use ruleset::{
    ChainType, KeyType, L4, MeterLimit, RateLimit, Set, SetElements, Stmt, Table, Value,
};

use super::codec::{Inc, set_flags};
use super::consts::*;
use super::error::Error;

/// Name of the set the fault-injection rule looks up; sets are never named like this (the model's
/// names come from policy identifiers).
pub(crate) const FAULT_SET_NAME: &str = "__leash_fault_inject__";

/// Checks what the kernel would reject (or accept with a different meaning) before anything is
/// sent, so the error names the model's item rather than a netlink attribute.
pub(crate) fn validate(table: &Table) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Invalid(m));
    if table.name != ruleset::TABLE_NAME {
        return bad(format!(
            "table is named `{}`; leash only ever manages table inet {}",
            table.name,
            ruleset::TABLE_NAME
        ));
    }
    if let Some(c) = &table.comment {
        check_comment("table comment", c)?;
    }
    let mut set_names = std::collections::HashSet::new();
    for s in &table.sets {
        check_name("set", &s.name)?;
        if s.name == FAULT_SET_NAME {
            return bad(format!("set name `{}` is reserved", s.name));
        }
        if !set_names.insert(s.name.as_str()) {
            return bad(format!("two sets are named `{}`", s.name));
        }
        check_set(s)?;
    }
    let mut chain_names = std::collections::HashSet::new();
    for c in &table.chains {
        check_name("chain", &c.name)?;
        if !chain_names.insert(c.name.as_str()) {
            return bad(format!("two chains are named `{}`", c.name));
        }
        for (i, r) in c.rules.iter().enumerate() {
            let at = || format!("chain {}, rule {}", c.name, i + 1);
            if let Some(cm) = &r.comment {
                check_comment(&format!("comment of {}", at()), cm)?;
            }
            // The layer-4 protocol the rule has matched so far (for `redirect`).
            let mut l4 = None;
            for s in &r.stmts {
                match s {
                    Stmt::L4proto(p) | Stmt::Dport { l4: p, .. } => l4 = Some(*p),
                    Stmt::Icmpv6Type(_) => l4 = Some(L4::Icmpv6),
                    Stmt::Redirect { .. } if c.kind != ChainType::Nat => {
                        // The kernel answers EOPNOTSUPP, which would not say why.
                        return bad(format!(
                            "{}: redirect is only valid in a nat chain, and chain {} is type {}",
                            at(),
                            c.name,
                            c.kind.nft_name()
                        ));
                    }
                    Stmt::Redirect { .. } if !matches!(l4, Some(L4::Tcp | L4::Udp)) => {
                        // nft refuses it too ("transport protocol mapping is only valid after
                        // transport protocol match"), so the rendered text could not load.
                        return bad(format!(
                            "{}: redirect needs a tcp or udp match earlier in the rule",
                            at()
                        ));
                    }
                    _ => {}
                }
                if let Stmt::Dport {
                    l4: l4 @ (L4::Icmp | L4::Icmpv6),
                    ..
                } = s
                {
                    return bad(format!("{}: {} has no ports", at(), l4.nft_name()));
                }
                check_stmt(table, s).map_err(|m| Error::Invalid(format!("{}: {m}", at())))?;
                // nft_socket allows only the prerouting, input and output hooks; the kernel
                // would refuse the whole batch with EOPNOTSUPP.
                if c.hook == ruleset::Hook::Forward && matches!(s, Stmt::SocketCgroup { .. }) {
                    return bad(format!("{}: socket cgroupv2 is not allowed on the forward hook", at()));
                }
                let (name, want) = match s {
                    Stmt::Dport {
                        value: Value::InSet(n),
                        ..
                    } => (n, KeyType::InetService),
                    Stmt::ThDport(Value::InSet(n)) => (n, KeyType::InetService),
                    Stmt::Daddr4(Value::InSet(n)) => (n, KeyType::Ipv4Addr),
                    Stmt::Daddr6(Value::InSet(n)) => (n, KeyType::Ipv6Addr),
                    Stmt::Saddr4(Value::InSet(n)) => (n, KeyType::Ipv4Addr),
                    Stmt::Saddr6(Value::InSet(n)) => (n, KeyType::Ipv6Addr),
                    Stmt::SkUid(Value::InSet(n)) => (n, KeyType::Uid),
                    Stmt::SkGid(Value::InSet(n)) => (n, KeyType::Gid),
                    Stmt::Icmpv6Type(Value::InSet(n)) => (n, KeyType::Icmpv6Type),
                    Stmt::Log { prefix, .. } => {
                        if prefix.len() >= NF_LOG_PREFIXLEN || prefix.contains('\0') {
                            return bad(format!(
                                "{}: log prefix longer than {} bytes",
                                at(),
                                NF_LOG_PREFIXLEN - 1
                            ));
                        }
                        continue;
                    }
                    _ => continue,
                };
                match table.sets.iter().find(|s| &s.name == name) {
                    None => {
                        return bad(format!(
                            "{}: uses set @{name}, which the table does not define",
                            at()
                        ));
                    }
                    Some(s) if s.key != want => {
                        return bad(format!(
                            "{}: set @{name} holds {}, but the statement needs {}",
                            at(),
                            s.key.nft_name(),
                            want.nft_name()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

/// Checks a time, rate, connection-count, cgroup or meter statement against what nft can write
/// and the kernel accepts; the message says what is wrong (the caller adds where).
fn check_stmt(table: &Table, s: &Stmt) -> Result<(), String> {
    match s {
        Stmt::MetaDay { first, last } if u32::from(*first.max(last)) > ruleset::render::DAY_MAX => {
            return Err(format!(
                "meta day {first}-{last}: weekdays are 0 (Sunday) to 6 (Saturday)"
            ));
        }
        Stmt::MetaHour { first, last } if *first.max(last) > ruleset::render::HOUR_MAX => {
            return Err(format!(
                "meta hour {first}-{last}: a second of the day is 0 to {}",
                ruleset::render::HOUR_MAX
            ));
        }
        // The kernel compares an unsigned u64, so an instant before 1970 would wrap to the far
        // future; nft writes whole seconds only, so the text could not say more.
        Stmt::MetaTimeFrom(ns) | Stmt::MetaTimeUntil(ns) if *ns < 0 || *ns % 1_000_000_000 != 0 => {
            return Err(format!(
                "meta time {ns} ns: must be a whole second at or after 1970-01-01 00:00:00 UTC"
            ));
        }
        // IFNAMSIZ less the NUL; a wildcard needs a prefix (an empty one would match nothing
        // the way nft writes it), and nft's quoting must survive the name.
        Stmt::IifName { name, wildcard } | Stmt::OifName { name, wildcard }
            if name.is_empty()
                || name.len() > 15
                || name.contains(['"', '\0', '*', '\\'])
                || name.chars().any(char::is_whitespace) =>
        {
            return Err(format!(
                "interface name {name:?}{}: must be 1 to 15 bytes without quotes, `*`, backslashes or spaces",
                if *wildcard { " (before the `*`)" } else { "" }
            ));
        }
        Stmt::Limit(l) => check_rate(l)?,
        Stmt::CtCount(_) => {}
        Stmt::SocketCgroup { level, path, id } => {
            if *level > NFT_SOCKET_MAX_LEVEL {
                return Err(format!(
                    "socket cgroupv2 level {level}: the kernel supports levels up to {NFT_SOCKET_MAX_LEVEL}"
                ));
            }
            // The path is only text (the kernel compares `id`), but it must survive nft's
            // quoting for the rendered script to load.
            if path.is_empty() || path.contains(['"', '\0', '\n']) {
                return Err(format!(
                    "socket cgroupv2 path {path:?}: must be non-empty, without quotes or line breaks"
                ));
            }
            if *id == 0 {
                return Err(format!(
                    "socket cgroupv2 \"{path}\": cgroup id 0 names no cgroup"
                ));
            }
        }
        Stmt::Meter { set, key, limit } => {
            let Some(m) = table.sets.iter().find(|x| &x.name == set) else {
                return Err(format!("uses set @{set}, which the table does not define"));
            };
            if m.dynamic.is_none() {
                // nft would make the set dynamic on its own, and the table would then list
                // differently from the model.
                return Err(format!(
                    "a meter needs a dynamic set, and set @{set} is not (Set::dynamic is None)"
                ));
            }
            if m.key != key.key_type() {
                return Err(format!(
                    "set @{set} holds {}, but the meter's key is {}",
                    m.key.nft_name(),
                    key.key_type().nft_name()
                ));
            }
            match limit {
                MeterLimit::Rate(l) => check_rate(l)?,
                MeterLimit::Count(_) => {
                    if set_flags(m) & NFT_SET_TIMEOUT != 0 {
                        // The kernel answers EOPNOTSUPP: a connection counter is removed by
                        // the kernel's own garbage collection once its connections are gone,
                        // never by a timeout.
                        return Err(format!(
                            "ct count in set @{set}: a set of connection counters cannot have a timeout"
                        ));
                    }
                }
            }
            // One set holds one kind of element: a limiter or a counter, not both.
            let other_kind = table
                .chains
                .iter()
                .flat_map(|c| &c.rules)
                .flat_map(|r| &r.stmts)
                .any(|o| match o {
                    Stmt::Meter {
                        set: s2, limit: l2, ..
                    } => {
                        s2 == set
                            && matches!(l2, MeterLimit::Rate(_))
                                != matches!(limit, MeterLimit::Rate(_))
                    }
                    _ => false,
                });
            if other_kind {
                return Err(format!(
                    "set @{set} is used both for rate limits and for ct count; give each its own set"
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// What the kernel's `nft_limit_init` accepts (it answers EINVAL or EOVERFLOW otherwise), plus
/// nft's "packet limit burst must be > 0" (the kernel would silently turn 0 into 5).
fn check_rate(l: &RateLimit) -> Result<(), String> {
    let what = || {
        format!(
            "limit rate {}/{} burst {}",
            l.rate,
            l.unit.nft_name(),
            l.burst
        )
    };
    if l.rate == 0 || l.burst == 0 {
        return Err(format!("{}: rate and burst must be at least 1", what()));
    }
    let nsecs = l.unit.seconds() * 1_000_000_000;
    let fits = l.rate.checked_add(u64::from(l.burst)).is_some()
        && (nsecs / l.rate).checked_mul(u64::from(l.burst)).is_some();
    if !fits {
        return Err(format!(
            "{}: the bucket overflows the kernel's 64-bit token count (lower the burst)",
            what()
        ));
    }
    Ok(())
}

pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > NFT_NAME_MAXLEN || name.contains('\0') {
        return Err(Error::Invalid(format!(
            "{kind} name `{name}` must be 1 to {NFT_NAME_MAXLEN} bytes without NUL"
        )));
    }
    Ok(())
}

pub(crate) fn check_comment(what: &str, c: &str) -> Result<(), Error> {
    if c.len() >= NFTNL_UDATA_COMMENT_MAXLEN || c.contains('\0') {
        return Err(Error::Invalid(format!(
            "{what} is longer than {} bytes",
            NFTNL_UDATA_COMMENT_MAXLEN - 1
        )));
    }
    Ok(())
}

/// Largest element timeout the kernel accepts: it converts milliseconds to nanoseconds in a u64
/// (`nf_msecs_to_jiffies64` answers ERANGE from `u64::MAX / 1_000_000` on).
pub(crate) const MAX_TIMEOUT_MS: u64 = u64::MAX / 1_000_000 - 1;

/// A name for an element's comment: at most [`ruleset::MAX_ELEMENT_NAME`] bytes (the kernel's
/// 256 bytes of user data, less libnftnl's TLV header and NUL), without a NUL.
pub(crate) fn check_element_name(name: &str) -> Result<(), String> {
    if name.len() > ruleset::MAX_ELEMENT_NAME || name.contains('\0') {
        return Err(format!(
            "element name {name:?} is longer than {} bytes or holds a NUL",
            ruleset::MAX_ELEMENT_NAME
        ));
    }
    Ok(())
}

fn check_set(s: &Set) -> Result<(), Error> {
    let bad = |m: &str| Err(Error::Invalid(format!("set `{}`: {m}", s.name)));
    let timed = matches!(
        s.elements,
        SetElements::TimedV4(_) | SetElements::TimedV6(_)
    );
    let kind_ok = matches!(
        (&s.elements, s.key),
        (
            SetElements::V4(_) | SetElements::TimedV4(_),
            KeyType::Ipv4Addr
        ) | (
            SetElements::V6(_) | SetElements::TimedV6(_),
            KeyType::Ipv6Addr
        ) | (SetElements::Ports(_), KeyType::InetService)
            | (
                SetElements::Ids(_),
                KeyType::Uid | KeyType::Gid | KeyType::Icmpv6Type
            )
    );
    // An empty set may be written with any variant of its key type (a timeout set the DNS
    // forwarder fills later has no elements at apply time).
    if !kind_ok {
        return bad(&format!(
            "elements do not match key type {}",
            s.key.nft_name()
        ));
    }
    if s.size == Some(0) {
        return bad("a set needs a size of at least 1");
    }
    if s.size.is_some_and(|n| s.elements.len() > n as usize) {
        // The kernel refuses the elements beyond the size (ENFILE): the whole apply would fail.
        return bad(&format!("{} elements do not fit its size {}", s.elements.len(), s.size.unwrap_or(0)));
    }
    if let Some(d) = &s.dynamic {
        // A meter's set: the packet path fills it, each element with its own limiter or counter.
        if s.size.is_some() {
            return bad("a dynamic set's size is Dynamic::size");
        }
        if s.interval {
            // The kernel answers EOPNOTSUPP: interval sets cannot be updated from the packet path.
            return bad("a dynamic set cannot have flags interval");
        }
        if s.timeout && d.timeout_ms.is_none() {
            // `flags timeout` without a default timeout: elements a rule adds would never expire
            // (and a set of connection counters cannot have the flag at all). On a dynamic set,
            // `Set::timeout` may only restate that `Dynamic::timeout_ms` is set.
            return bad("flags timeout on a dynamic set needs Dynamic::timeout_ms");
        }
        if !s.elements.is_empty() {
            return bad("a dynamic set starts empty (its elements come from the packet path)");
        }
        if d.size == 0 {
            return bad("a dynamic set needs a size of at least 1");
        }
        if let Some(ms) = d.timeout_ms
            && !(1..=MAX_TIMEOUT_MS).contains(&ms)
        {
            return bad(&format!("timeout must be 1 to {MAX_TIMEOUT_MS} ms"));
        }
        return Ok(());
    }
    if s.timeout && s.interval {
        // nft allows it, but leash's interval encoding carries no timeouts.
        return bad("a set cannot have both flags interval and flags timeout");
    }
    if timed && !s.timeout {
        return bad("elements with a timeout need flags timeout");
    }
    let is_range = matches!(
        s.elements,
        SetElements::V4(_) | SetElements::V6(_) | SetElements::Ports(_)
    );
    if s.timeout {
        if is_range && !s.elements.is_empty() {
            return bad("a timeout set holds single addresses with timeouts, not ranges");
        }
    } else if is_range != s.interval {
        return bad(if is_range {
            "address and port sets must have flags interval"
        } else {
            "uid, gid, icmpv6 type and timed address sets cannot have flags interval"
        });
    }
    fn ranges_ok<T: PartialOrd + Copy + Inc>(r: &[(T, T)], max: T) -> bool {
        r.iter().all(|(a, b)| a <= b)
            && r.windows(2).all(|w| w[0].1 != max && w[0].1.inc() < w[1].0)
    }
    fn unique<T: std::hash::Hash + Eq>(v: impl ExactSizeIterator<Item = T>) -> bool {
        let mut seen = std::collections::HashSet::with_capacity(v.len());
        v.into_iter().all(|x| seen.insert(x))
    }
    fn timeouts_ok<T>(v: &[ruleset::TimedAddr<T>]) -> bool {
        v.iter().all(|e| (1..=MAX_TIMEOUT_MS).contains(&e.timeout_ms))
    }
    fn names_ok<T>(v: &[ruleset::TimedAddr<T>]) -> Result<(), String> {
        v.iter().filter_map(|e| e.name.as_deref()).try_for_each(check_element_name)
    }
    let ok = match &s.elements {
        SetElements::V4(r) => ranges_ok(
            &r.iter()
                .map(|(a, b)| (u32::from(*a), u32::from(*b)))
                .collect::<Vec<_>>(),
            u32::MAX,
        ),
        SetElements::V6(r) => ranges_ok(
            &r.iter()
                .map(|(a, b)| (u128::from(*a), u128::from(*b)))
                .collect::<Vec<_>>(),
            u128::MAX,
        ),
        SetElements::Ports(r) => ranges_ok(r, u16::MAX),
        SetElements::Ids(ids) => {
            if s.key == KeyType::Icmpv6Type && ids.iter().any(|&v| v > u32::from(u8::MAX)) {
                return bad("icmpv6 types must be at most 255");
            }
            unique(ids.iter())
        }
        SetElements::TimedV4(v) => {
            if !timeouts_ok(v) {
                return bad(&format!("timeouts must be 1 to {MAX_TIMEOUT_MS} ms"));
            }
            if let Err(e) = names_ok(v) {
                return bad(&e);
            }
            unique(v.iter().map(|e| e.addr))
        }
        SetElements::TimedV6(v) => {
            if !timeouts_ok(v) {
                return bad(&format!("timeouts must be 1 to {MAX_TIMEOUT_MS} ms"));
            }
            if let Err(e) = names_ok(v) {
                return bad(&e);
            }
            unique(v.iter().map(|e| e.addr))
        }
    };
    if !ok {
        return bad(if is_range {
            "ranges must be sorted, non-overlapping and non-adjacent"
        } else {
            "values must be unique"
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruleset::{Chain, ChainPolicy, Hook, Rule};

    fn table(hook: Hook, stmts: Vec<Stmt>) -> Table {
        Table {
            name: ruleset::TABLE_NAME.into(),
            comment: None,
            sets: vec![],
            chains: vec![Chain {
                name: "c".into(),
                kind: ChainType::Filter,
                hook,
                priority: 0,
                policy: ChainPolicy::Accept,
                rules: vec![Rule { stmts, comment: None }],
            }],
        }
    }

    #[test]
    fn interface_names_and_the_forward_hook() {
        let ok = |name: &str, wildcard| validate(&table(Hook::Forward, vec![Stmt::IifName { name: name.into(), wildcard }])).is_ok();
        assert!(ok("docker0", false) && ok("br-", true) && ok("abcdefghijklmno", false));
        for bad in ["", "abcdefghijklmnop", "a\"b", "a b", "a*", "a\\b"] {
            assert!(!ok(bad, false) && !ok(bad, true), "{bad:?}");
        }
        let oif = table(Hook::Forward, vec![Stmt::OifName { name: "x y".into(), wildcard: false }]);
        assert!(validate(&oif).is_err());
        // socket cgroupv2 is refused by the kernel on the forward hook.
        let cg = Stmt::SocketCgroup { level: 1, path: "x".into(), id: 7 };
        assert!(validate(&table(Hook::Output, vec![cg.clone()])).is_ok());
        let e = validate(&table(Hook::Forward, vec![cg])).unwrap_err().to_string();
        assert!(e.contains("not allowed on the forward hook"), "{e}");
    }
}
