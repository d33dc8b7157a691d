//! Encodes a `ruleset::Table` into one nfnetlink batch that atomically replaces table `inet leash`.
//!
//! The batch is:
//!
//! ```text
//! BATCH_BEGIN (res_id NFNL_SUBSYS_NFTABLES)
//! NEWTABLE  inet leash            create it if missing, so that the DELTABLE below cannot fail
//! DELTABLE  inet leash            drop the old table with everything in it
//! NEWTABLE  inet leash + comment
//! NEWSET    per set                (batch-local set ids 1, 2, ... as nft numbers them)
//! NEWSETELEM per chunk of elements (each ELEMENTS attribute < 64 KiB)
//! NEWCHAIN  per base chain
//! NEWRULE   per rule
//! [NEWRULE  deliberately invalid, with ApplyOptions::fault_inject]
//! BATCH_END
//! ```
//!
//! Every message names family inet and table leash; no message can touch anything else. Every
//! message except BEGIN/END carries `NLM_F_ACK`, and we keep a description per sequence number so
//! that an error can be reported as "NEWRULE for rule `dns` ...". NEWSET, NEWCHAIN and NEWSETELEM
//! also carry `NLM_F_EXCL` (nft's `add` does not): without it the kernel silently skips an element
//! that is already there, with it a duplicate fails the batch, so an ack for every NEWSETELEM
//! proves every element went in. The flags are in the nlmsghdr; the payload stays nft's.
//!
//! Sets, elements, chains and rules are encoded attribute for attribute as nft 1.0.6 encodes them
//! (including nft's user data: the table and rule comments, the set's key byte order, and the
//! interval-open flag), so `nft list` shows exactly what it shows for the same text. Timed elements
//! carry `NFTA_SET_ELEM_TIMEOUT` only, as nft sends `192.0.2.1 timeout 5m` (no expiration: a new
//! element expires after its timeout anyway). A meter's set (`Set::dynamic`) is sent as nft sends
//! `set m { type ipv4_addr; size N; flags dynamic,timeout; timeout T; }`: flags `NFT_SET_EVAL`
//! (plus `NFT_SET_TIMEOUT` with a timeout), `NFTA_SET_DESC { SIZE }` and `NFTA_SET_TIMEOUT`.

use ruleset::{Chain, ChainPolicy, ChainType, Hook, Rule, Set, Table};

use super::batch::{Batch, Encoder};
use super::bulk::{chunks, put_elements};
use super::codec::{key_byteorder, key_type_id, set_flags_sent, udata_comment, udata_u32};
use super::consts::*;
use super::error::Error;
use super::expr::{self, SetRef};
use super::validate::{FAULT_SET_NAME, validate};
use crate::nl::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};

/// The id of the set the fault-injection rule looks up: one no set in the batch has.
const FAULT_SET_ID: u32 = u32::MAX;

/// Options of [`crate::nft::apply()`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyOptions {
    /// Append one deliberately invalid message (a rule using a set that does not exist) as the
    /// last message of the batch. The kernel then rejects the batch as a whole; tests use it to
    /// prove that a failed apply leaves the previous table untouched.
    pub fault_inject: bool,
}

/// The batch that replaces table `inet leash` with `table`.
pub(crate) fn encode_apply(table: &Table, opts: &ApplyOptions) -> Result<Batch, Error> {
    validate(table)?;
    let elements: usize = table.sets.iter().map(|s| s.elements.len()).sum();
    let estimate = 4096
        + table
            .sets
            .iter()
            .map(|s| s.elements.len() * (2 * s.key.key_len() + 44))
            .sum::<usize>();
    let mut e = Encoder::new(estimate);
    let name = table.name.as_str();
    e.begin_batch()?;
    let t = format!("table inet {name}");
    e.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, t.clone(), |b| {
        b.attr_str(NFTA_TABLE_NAME, name);
        b.attr_be32(NFTA_TABLE_FLAGS, 0);
    })?;
    e.nft(NFT_MSG_DELTABLE, 0, t.clone(), |b| {
        b.attr_str(NFTA_TABLE_NAME, name)
    })?;
    e.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, t, |b| {
        b.attr_str(NFTA_TABLE_NAME, name);
        b.attr_be32(NFTA_TABLE_FLAGS, 0);
        if let Some(c) = &table.comment {
            b.attr(
                NFTA_TABLE_USERDATA,
                &udata_comment(NFTNL_UDATA_TABLE_COMMENT, c),
            );
        }
    })?;
    for (i, set) in table.sets.iter().enumerate() {
        encode_set(&mut e, name, set, set_id(i))?;
    }
    for chain in &table.chains {
        encode_chain(&mut e, name, chain)?;
    }
    let sets = |n: &str| -> Option<SetRef<'_>> {
        table.sets.iter().position(|s| s.name == n).map(|i| SetRef {
            name: &table.sets[i].name,
            id: set_id(i),
        })
    };
    for chain in &table.chains {
        for (i, rule) in chain.rules.iter().enumerate() {
            encode_rule(&mut e, name, chain, i, rule, &sets)?;
        }
    }
    if opts.fault_inject {
        let chain = table.chains.first().map_or("output", |c| c.name.as_str());
        e.nft(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            "the injected fault (a rule using a missing set)".into(),
            |b| {
                b.attr_str(NFTA_RULE_TABLE, name);
                b.attr_str(NFTA_RULE_CHAIN, chain);
                let x = b.begin_nested(NFTA_RULE_EXPRESSIONS);
                expr::lookup(
                    b,
                    Some(SetRef {
                        name: FAULT_SET_NAME,
                        id: FAULT_SET_ID,
                    }),
                );
                b.end_nested(x);
            },
        )?;
    }
    e.end_batch()?;
    Ok(e.finish(elements))
}

/// The contents of `NFTA_RULE_EXPRESSIONS` that [`encode_apply`] sends for each rule, per chain
/// in table order: what verification compares the rules read back with.
pub(crate) fn rule_expressions(table: &Table) -> Vec<Vec<Vec<u8>>> {
    let sets = |n: &str| -> Option<SetRef<'_>> {
        table.sets.iter().position(|s| s.name == n).map(|i| SetRef {
            name: &table.sets[i].name,
            id: set_id(i),
        })
    };
    table
        .chains
        .iter()
        .map(|c| {
            c.rules
                .iter()
                .map(|r| {
                    let mut b = crate::nl::MsgBuf::new();
                    expr::encode_stmts(&mut b, &r.stmts, &sets);
                    b.into_bytes()
                })
                .collect()
        })
        .collect()
}

/// The batch that deletes table `inet <name>` (and nothing else).
pub(crate) fn encode_delete(name: &str) -> Result<Batch, Error> {
    let mut e = Encoder::new(256);
    e.begin_batch()?;
    e.nft(NFT_MSG_DELTABLE, 0, format!("table inet {name}"), |b| {
        b.attr_str(NFTA_TABLE_NAME, name)
    })?;
    e.end_batch()?;
    Ok(e.finish(0))
}

/// nft numbers the sets of a batch from 1 in the order it adds them.
fn set_id(index: usize) -> u32 {
    index as u32 + 1
}

fn encode_set(e: &mut Encoder, table: &str, set: &Set, id: u32) -> Result<(), Error> {
    let flags = set_flags_sent(set);
    e.nft(
        NFT_MSG_NEWSET,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("set `{}`", set.name),
        |b| {
            b.attr_str(NFTA_SET_TABLE, table);
            b.attr_str(NFTA_SET_NAME, &set.name);
            b.attr_be32(NFTA_SET_FLAGS, flags);
            b.attr_be32(NFTA_SET_KEY_TYPE, key_type_id(set.key));
            b.attr_be32(NFTA_SET_KEY_LEN, set.key.key_len() as u32);
            b.attr_be32(NFTA_SET_ID, id);
            // `size N` and `timeout T` of a dynamic set, where libnftnl puts them.
            if let Some(d) = &set.dynamic {
                let desc = b.begin_nested(NFTA_SET_DESC);
                b.attr_be32(NFTA_SET_DESC_SIZE, d.size);
                b.end_nested(desc);
                if let Some(ms) = d.timeout_ms {
                    b.attr_be64(NFTA_SET_TIMEOUT, ms);
                }
            } else if let Some(size) = set.size {
                // `size N` of any other set (the bounded domain sets), in the same place.
                let desc = b.begin_nested(NFTA_SET_DESC);
                b.attr_be32(NFTA_SET_DESC_SIZE, size);
                b.end_nested(desc);
            }
            b.attr(
                NFTA_SET_USERDATA,
                &udata_u32(NFTNL_UDATA_SET_KEYBYTEORDER, key_byteorder(set.key)),
            );
        },
    )?;

    // Straight from the model's ranges, no allocation per element (see `bulk`): a blocklist
    // set can hold a million ranges.
    let n = set.elements.len();
    for r in chunks(set.key, &set.elements) {
        let what = format!(
            "set `{}` (elements {}..{} of {n})",
            set.name,
            r.start + 1,
            r.end
        );
        e.nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL, what, |b| {
            b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
            b.attr_str(NFTA_SET_ELEM_LIST_SET, &set.name);
            b.attr_be32(NFTA_SET_ELEM_LIST_SET_ID, id);
            put_elements(b, set.key, &set.elements, r);
        })?;
    }
    Ok(())
}

pub(crate) fn encode_chain(e: &mut Encoder, table: &str, chain: &Chain) -> Result<(), Error> {
    let hook = match chain.hook {
        Hook::Output => NF_INET_LOCAL_OUT,
        Hook::Forward => NF_INET_FORWARD,
    };
    let policy = match chain.policy {
        ChainPolicy::Accept => NF_ACCEPT,
        ChainPolicy::Drop => NF_DROP,
    };
    e.nft(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("chain `{}`", chain.name),
        |b| {
            b.attr_str(NFTA_CHAIN_TABLE, table);
            b.attr_str(NFTA_CHAIN_NAME, &chain.name);
            // A regular chain has no type, hook or policy: nft sends only its name.
            if chain.kind == ChainType::Regular {
                return;
            }
            b.attr_str(NFTA_CHAIN_TYPE, chain.kind.nft_name());
            b.attr_be32(NFTA_CHAIN_POLICY, policy);
            let h = b.begin_nested(NFTA_CHAIN_HOOK);
            b.attr_be32(NFTA_HOOK_HOOKNUM, hook);
            b.attr_be32(NFTA_HOOK_PRIORITY, chain.priority as u32);
            b.end_nested(h);
        },
    )
}

fn encode_rule<'a>(
    e: &mut Encoder,
    table: &str,
    chain: &Chain,
    index: usize,
    rule: &Rule,
    sets: &dyn Fn(&str) -> Option<SetRef<'a>>,
) -> Result<(), Error> {
    let what = match &rule.comment {
        Some(c) => format!("rule `{c}` (chain {}, rule {})", chain.name, index + 1),
        None => format!("rule {} of chain {}", index + 1, chain.name),
    };
    e.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, what, |b| {
        b.attr_str(NFTA_RULE_TABLE, table);
        b.attr_str(NFTA_RULE_CHAIN, &chain.name);
        let x = b.begin_nested(NFTA_RULE_EXPRESSIONS);
        expr::encode_stmts(b, &rule.stmts, sets);
        b.end_nested(x);
        if let Some(c) = &rule.comment {
            b.attr(
                NFTA_RULE_USERDATA,
                &udata_comment(NFTNL_UDATA_RULE_COMMENT, c),
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::batch::FIRST_SEQ;
    use crate::nl::{Attrs, Messages, NLM_F_ACK};
    use ruleset::{KeyType, L4, MeterLimit, RateLimit, SetElements, Stmt, TimedAddr, Value};
    use std::net::Ipv4Addr;

    fn table(sets: Vec<Set>, rules: Vec<Rule>) -> Table {
        Table {
            name: "leash".into(),
            comment: Some("c".into()),
            sets,
            chains: vec![Chain {
                name: "output".into(),
                kind: ChainType::Filter,
                hook: Hook::Output,
                priority: 0,
                policy: ChainPolicy::Drop,
                rules,
            }],
        }
    }

    fn v4set(name: &str, n: u32) -> Set {
        let r = (0..n)
            .map(|i| {
                (
                    Ipv4Addr::from(0x0100_0000 + i * 4),
                    Ipv4Addr::from(0x0100_0000 + i * 4 + 1),
                )
            })
            .collect();
        Set {
            name: name.into(),
            key: KeyType::Ipv4Addr,
            interval: true,
            timeout: false,
            dynamic: None,
            size: None,
            elements: SetElements::V4(r),
        }
    }

    #[test]
    fn batch_is_framed_and_numbered() {
        let b = encode_apply(
            &table(
                vec![v4set("a", 3)],
                vec![Rule {
                    stmts: vec![Stmt::Accept],
                    comment: Some("x".into()),
                }],
            ),
            &ApplyOptions::default(),
        )
        .unwrap();
        let msgs: Vec<_> = Messages::new(&b.bytes).collect::<Result<_, _>>().unwrap();
        let types: Vec<u16> = msgs.iter().map(|m| m.header.ty).collect();
        let t = nft_type;
        assert_eq!(
            types,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_DELTABLE),
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_NEWSET),
                t(NFT_MSG_NEWSETELEM),
                t(NFT_MSG_NEWCHAIN),
                t(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(
            msgs[0].payload,
            &[0, 0, 0, 10],
            "BEGIN: AF_UNSPEC, v0, res_id NFNL_SUBSYS_NFTABLES"
        );
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.header.seq, FIRST_SEQ + i as u32);
            if (1..msgs.len() - 1).contains(&i) {
                assert_eq!(m.payload[0], NFPROTO_INET);
                assert_ne!(m.header.flags & NLM_F_ACK, 0);
                // Every message names table leash first.
                let first = m.attrs(4).next().unwrap().unwrap();
                assert_eq!((first.ty, first.str().as_str()), (1, "leash"));
            }
        }
        assert_eq!(b.acked, msgs.len() - 2);
        assert_eq!(
            b.describe(FIRST_SEQ + 7),
            "NEWRULE for rule `x` (chain output, rule 1)"
        );
    }

    #[test]
    fn big_sets_are_chunked_below_64k_without_splitting_ranges() {
        let b = encode_apply(
            &table(vec![v4set("big", 10_000)], vec![]),
            &ApplyOptions::default(),
        )
        .unwrap();
        let mut starts = 0;
        let mut ends = 0;
        let mut chunks = 0;
        for m in Messages::new(&b.bytes) {
            let m = m.unwrap();
            if m.header.ty != nft_type(NFT_MSG_NEWSETELEM) {
                continue;
            }
            chunks += 1;
            let list = m
                .attrs(4)
                .find(|a| a.as_ref().unwrap().ty == NFTA_SET_ELEM_LIST_ELEMENTS)
                .unwrap()
                .unwrap();
            assert!(list.data.len() + 4 <= 65535);
            let mut last_was_start = false;
            for el in list.nested() {
                let el = el.unwrap();
                let end = Attrs::new(el.data).any(|a| a.unwrap().ty == NFTA_SET_ELEM_FLAGS);
                if end {
                    ends += 1
                } else {
                    starts += 1
                }
                last_was_start = !end;
            }
            assert!(!last_was_start, "a chunk ends inside a range");
        }
        assert!(chunks > 1);
        assert_eq!(starts, 10_000);
        assert_eq!(
            ends, 10_001,
            "one end per range plus nft's leading zero end element"
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let mut t = table(
            vec![],
            vec![Rule {
                stmts: vec![Stmt::Daddr4(Value::InSet("nope".into()))],
                comment: None,
            }],
        );
        let e = encode_apply(&t, &ApplyOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("@nope"), "{e}");
        let icmp_port = Stmt::Dport {
            l4: L4::Icmp,
            value: Value::Eq(1),
        };
        let e = encode_apply(
            &table(
                vec![],
                vec![Rule {
                    stmts: vec![icmp_port],
                    comment: None,
                }],
            ),
            &ApplyOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("icmp has no ports"), "{e}");
        t.name = "filter".into();
        assert!(
            encode_apply(&t, &ApplyOptions::default())
                .unwrap_err()
                .to_string()
                .contains("only ever manages")
        );
        let overlapping = Set {
            name: "o".into(),
            key: KeyType::InetService,
            interval: true,
            timeout: false,
            dynamic: None,
            size: None,
            elements: SetElements::Ports(vec![(1, 10), (10, 20)]),
        };
        let e = encode_apply(&table(vec![overlapping], vec![]), &ApplyOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-overlapping"), "{e}");
    }

    #[test]
    fn redirect_and_timeout_sets_are_validated() {
        let err = |t: &Table| {
            encode_apply(t, &ApplyOptions::default())
                .unwrap_err()
                .to_string()
        };
        let redirect = |stmts: Vec<Stmt>| Rule {
            stmts,
            comment: None,
        };
        let udp53 = Stmt::Dport {
            l4: L4::Udp,
            value: Value::Eq(53),
        };
        let to = Stmt::Redirect { port: 5353 };
        let mut t = table(vec![], vec![redirect(vec![udp53.clone(), to.clone()])]);
        assert!(err(&t).contains("only valid in a nat chain"), "{}", err(&t));
        t.chains[0].kind = ChainType::Nat;
        assert!(encode_apply(&t, &ApplyOptions::default()).is_ok());
        t.chains[0].rules = vec![redirect(vec![Stmt::L4proto(L4::Icmp), to.clone()])];
        assert!(err(&t).contains("needs a tcp or udp match"), "{}", err(&t));
        t.chains[0].rules = vec![redirect(vec![to, udp53])];
        assert!(err(&t).contains("needs a tcp or udp match"), "{}", err(&t));

        let timed = |timeout, interval, elements| Set {
            name: "d".into(),
            key: KeyType::Ipv4Addr,
            interval,
            timeout,
            dynamic: None,
            size: None,
            elements,
        };
        let one = |ms| SetElements::TimedV4(vec![TimedAddr::new(Ipv4Addr::new(192, 0, 2, 1), ms, None)]);
        let e = err(&table(vec![timed(false, false, one(1000))], vec![]));
        assert!(e.contains("need flags timeout"), "{e}");
        let e = err(&table(vec![timed(true, false, one(0))], vec![]));
        assert!(e.contains("timeouts must be 1 to"), "{e}");
        let e = err(&table(vec![timed(true, true, one(1000))], vec![]));
        assert!(e.contains("both flags interval and flags timeout"), "{e}");
        let ranges = SetElements::V4(vec![(
            Ipv4Addr::new(192, 0, 2, 0),
            Ipv4Addr::new(192, 0, 2, 9),
        )]);
        let e = err(&table(vec![timed(true, false, ranges)], vec![]));
        assert!(e.contains("not ranges"), "{e}");
        let twice = SetElements::TimedV4(vec![
            TimedAddr::new(Ipv4Addr::new(192, 0, 2, 1), 1, None),
            TimedAddr::new(Ipv4Addr::new(192, 0, 2, 1), 2, None),
        ]);
        let e = err(&table(vec![timed(true, false, twice)], vec![]));
        assert!(e.contains("unique"), "{e}");
        let long = SetElements::TimedV4(vec![TimedAddr::new(Ipv4Addr::new(192, 0, 2, 1), 1, Some("x".repeat(254)))]);
        let e = err(&table(vec![timed(true, false, long)], vec![]));
        assert!(e.contains("element name") && e.contains("253 bytes"), "{e}");
        for ok in [
            one(1000),
            SetElements::TimedV4(vec![]),
            SetElements::V4(vec![]),
        ] {
            encode_apply(
                &table(vec![timed(true, false, ok)], vec![]),
                &ApplyOptions::default(),
            )
            .unwrap();
        }
    }

    #[test]
    fn time_rate_cgroup_and_meter_statements_are_validated() {
        use ruleset::{Dynamic, MeterKey, RateUnit};
        let err = |sets: Vec<Set>, stmts: Vec<Stmt>| {
            encode_apply(
                &table(
                    sets,
                    vec![Rule {
                        stmts,
                        comment: None,
                    }],
                ),
                &ApplyOptions::default(),
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        let dynamic = |name: &str, key, timeout_ms| Set {
            name: name.into(),
            key,
            interval: false,
            timeout: false,
            dynamic: Some(Dynamic {
                size: 10,
                timeout_ms,
            }),
            size: None,
            elements: SetElements::Ids(vec![]),
        };
        let rate = |rate, unit, burst| RateLimit { rate, unit, burst };
        let ok_rate = MeterLimit::Rate(rate(5, RateUnit::Second, 5));
        let meter = |set: &str, key, limit| Stmt::Meter {
            set: set.into(),
            key,
            limit,
        };
        let uid = KeyType::Uid;
        for (sets, stmts, want) in [
            (
                vec![],
                vec![Stmt::MetaDay { first: 0, last: 7 }],
                "weekdays are 0",
            ),
            (
                vec![],
                vec![Stmt::MetaHour {
                    first: 86_400,
                    last: 0,
                }],
                "second of the day",
            ),
            (
                vec![],
                vec![Stmt::MetaTimeFrom(-1_000_000_000)],
                "whole second",
            ),
            (
                vec![],
                vec![Stmt::MetaTimeUntil(1_500_000_000)],
                "whole second",
            ),
            (
                vec![],
                vec![Stmt::Limit(rate(0, RateUnit::Second, 1))],
                "at least 1",
            ),
            (
                vec![],
                vec![Stmt::Limit(rate(1, RateUnit::Second, 0))],
                "at least 1",
            ),
            (
                vec![],
                vec![Stmt::Limit(rate(u64::MAX, RateUnit::Second, 1))],
                "overflows",
            ),
            (
                vec![],
                vec![Stmt::Limit(rate(1, RateUnit::Day, u32::MAX))],
                "overflows",
            ),
            (
                vec![],
                vec![Stmt::SocketCgroup {
                    level: 256,
                    path: "a/b".into(),
                    id: 7,
                }],
                "levels up to 255",
            ),
            (
                vec![],
                vec![Stmt::SocketCgroup {
                    level: 1,
                    path: "a\"b".into(),
                    id: 7,
                }],
                "without quotes",
            ),
            (
                vec![],
                vec![meter("m", MeterKey::SkUid, ok_rate)],
                "does not define",
            ),
            (
                vec![Set {
                    dynamic: None,
                    size: None,
                    ..dynamic("m", uid, None)
                }],
                vec![meter("m", MeterKey::SkUid, ok_rate)],
                "needs a dynamic set",
            ),
            (
                vec![dynamic("m", uid, None)],
                vec![meter("m", MeterKey::Daddr4, ok_rate)],
                "holds uid, but the meter's key is ipv4_addr",
            ),
            (
                vec![dynamic("m", uid, Some(1000))],
                vec![meter("m", MeterKey::SkUid, MeterLimit::Count(3))],
                "cannot have a timeout",
            ),
            (
                vec![dynamic("m", uid, None)],
                vec![
                    meter("m", MeterKey::SkUid, MeterLimit::Count(3)),
                    meter("m", MeterKey::SkUid, ok_rate),
                ],
                "both for rate limits and for ct count",
            ),
            (
                vec![Set {
                    interval: true,
                    ..dynamic("m", uid, None)
                }],
                vec![],
                "cannot have flags interval",
            ),
            (
                vec![Set {
                    timeout: true,
                    ..dynamic("m", uid, None)
                }],
                vec![],
                "needs Dynamic::timeout_ms",
            ),
            (
                vec![Set {
                    elements: SetElements::Ids(vec![1]),
                    ..dynamic("m", uid, None)
                }],
                vec![],
                "starts empty",
            ),
            (
                vec![Set {
                    dynamic: Some(Dynamic {
                        size: 0,
                        timeout_ms: None,
                    }),
                    ..dynamic("m", uid, None)
                }],
                vec![],
                "size of at least 1",
            ),
        ] {
            let e = err(sets, stmts);
            assert!(e.contains(want), "want {want:?} in {e:?}");
        }
        // And what is valid encodes (`Set::timeout` may restate a dynamic set's timeout).
        let restated = Set {
            timeout: true,
            ..dynamic("m", uid, Some(1000))
        };
        assert_eq!(
            err(
                vec![restated, dynamic("c", uid, None)],
                vec![
                    Stmt::MetaDay { first: 6, last: 0 },
                    Stmt::MetaHour {
                        first: 0,
                        last: 86_399
                    },
                    Stmt::MetaTimeFrom(0),
                    Stmt::Limit(rate(1, RateUnit::Day, 1000)),
                    Stmt::CtCount(0),
                    meter("m", MeterKey::SkUid, ok_rate),
                    meter("c", MeterKey::SkUid, MeterLimit::Count(3)),
                ],
            ),
            ""
        );
    }
}
