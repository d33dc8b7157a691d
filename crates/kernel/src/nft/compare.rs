//! Comparing a rule's expressions as the kernel lists them back with the expressions leash sent,
//! the way nft would see them: the same expressions in the same order, and every attribute that
//! was sent read back with the same value.
//!
//! The kernel does not echo a rule byte for byte. It drops what only serves to build the rule (a
//! set's batch-local id, `NFTA_LOOKUP_SET_ID`), adds attributes for its defaults (a lookup's flags
//! 0, a log's snaplen), reports a counter's current values, lists nests without `NLA_F_NESTED`,
//! puts attributes in its own order, and keeps a dynamic set's timeout in jiffies (so it reads
//! back rounded to the tick). So: expression names compared in order, then, per expression,
//! every attribute sent must be there with equal bytes (nests compared the same way, recursively),
//! except for those known to differ for the reasons above, and a zero the kernel leaves out (a
//! `connlimit`'s flags 0). An attribute the kernel adds is not a difference: it is a default of
//! what was sent, which nft would list the same way.

use super::consts::*;
use crate::nl::{Attr, Attrs, NlError};

/// Checks that `got` (the kernel's `NFTA_RULE_EXPRESSIONS` payload) holds the expressions of
/// `sent` (ours); `Err` says where they first differ.
/// An expression as compared: its name and its `NFTA_EXPR_DATA` payload.
type Expr = (String, Option<Vec<u8>>);

pub(crate) fn same_expressions(sent: &[u8], got: &[u8]) -> Result<(), String> {
    let parse = |b: &[u8]| -> Result<Vec<Expr>, NlError> {
        let mut out = Vec::new();
        for e in Attrs::new(b) {
            let e = e?;
            let mut name = String::new();
            let mut data = None;
            for a in e.nested() {
                let a = a?;
                match a.ty {
                    NFTA_EXPR_NAME => name = a.str(),
                    NFTA_EXPR_DATA => data = Some(a.data.to_vec()),
                    _ => {}
                }
            }
            out.push((name, data));
        }
        Ok(out)
    };
    let sent = parse(sent).map_err(|e| format!("the expressions sent do not parse: {e}"))?;
    let got = parse(got).map_err(|e| format!("the expressions read back do not parse: {e}"))?;
    let names = |v: &[Expr]| v.iter().map(|e| e.0.as_str()).collect::<Vec<_>>().join(" ");
    if sent.len() != got.len() || sent.iter().zip(&got).any(|(s, g)| s.0 != g.0) {
        return Err(format!("expressions are [{}], want [{}]", names(&got), names(&sent)));
    }
    for (i, ((name, s), (_, g))) in sent.iter().zip(&got).enumerate() {
        let (s, g) = (s.as_deref().unwrap_or(&[]), g.as_deref().unwrap_or(&[]));
        contains(name, s, g).map_err(|e| format!("expression {} ({name}): {e}", i + 1))?;
    }
    Ok(())
}

/// Every attribute of `sent` is in `got` with the same value (see the module documentation).
fn contains(expr: &str, sent: &[u8], got: &[u8]) -> Result<(), String> {
    let got: Vec<Attr<'_>> = Attrs::new(got)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("read back malformed: {e}"))?;
    for s in Attrs::new(sent) {
        let s = s.map_err(|e| format!("sent malformed: {e}"))?;
        if ignored(expr, s.ty) {
            continue;
        }
        let Some(g) = got.iter().find(|g| g.ty == s.ty) else {
            // A zero flags word the kernel does not list (`connlimit` omits flags 0).
            if !s.nested_flag && s.data.iter().all(|&b| b == 0) {
                continue;
            }
            return Err(format!("attribute {} is missing", s.ty));
        };
        if s.nested_flag {
            contains(expr, s.data, g.data).map_err(|e| format!("in attribute {}: {e}", s.ty))?;
        } else if expr == "dynset" && s.ty == NFTA_DYNSET_TIMEOUT {
            // Kept in jiffies: read back rounded to the tick (at most 10 ms at HZ=100).
            let (a, b) = (s.be64().map_err(|e| e.to_string())?, g.be64().map_err(|e| e.to_string())?);
            if a.abs_diff(b) > 10 {
                return Err(format!("timeout {b} ms, want {a} ms"));
            }
        } else if s.data != g.data {
            return Err(format!("attribute {} is {:02x?}, want {:02x?}", s.ty, g.data, s.data));
        }
    }
    Ok(())
}

/// Attributes that are sent but legitimately read back differently or not at all.
fn ignored(expr: &str, ty: u16) -> bool {
    match expr {
        // Batch-local ids that name a set created in the same batch; the name is compared.
        "lookup" => ty == NFTA_LOOKUP_SET_ID,
        "dynset" => ty == NFTA_DYNSET_SET_ID,
        // The kernel reports the current counts.
        "counter" => ty == NFTA_COUNTER_PACKETS || ty == NFTA_COUNTER_BYTES,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::MsgBuf;

    fn exprs(f: impl FnOnce(&mut MsgBuf)) -> Vec<u8> {
        let mut b = MsgBuf::new();
        f(&mut b);
        b.into_bytes()
    }

    /// `NFTA_LOOKUP_FLAGS`, which the kernel lists and leash does not send.
    const NFTA_LOOKUP_FLAGS: u16 = 5;

    /// A nest, with `NLA_F_NESTED` as leash sends it or without, as the kernel lists it.
    fn nest(b: &mut MsgBuf, ty: u16, flag: bool, f: impl FnOnce(&mut MsgBuf)) {
        if flag {
            let n = b.begin_nested(ty);
            f(b);
            b.end_nested(n);
        } else {
            let inner = exprs(f);
            let mut raw = ((inner.len() + 4) as u16).to_ne_bytes().to_vec();
            raw.extend_from_slice(&ty.to_ne_bytes());
            raw.extend_from_slice(&inner);
            b.put_raw(&raw);
        }
    }

    fn lookup(b: &mut MsgBuf, set: &str, id: Option<u32>, flags: Option<u32>, flag: bool) {
        nest(b, NFTA_LIST_ELEM, flag, |b| {
            b.attr_str(NFTA_EXPR_NAME, "lookup");
            nest(b, NFTA_EXPR_DATA, flag, |b| {
                b.attr_be32(NFTA_LOOKUP_SREG, 1);
                b.attr_str(NFTA_LOOKUP_SET, set);
                if let Some(id) = id {
                    b.attr_be32(NFTA_LOOKUP_SET_ID, id);
                }
                if let Some(f) = flags {
                    b.attr_be32(NFTA_LOOKUP_FLAGS, f);
                }
            });
        });
    }

    fn counter(b: &mut MsgBuf, packets: Option<u64>) {
        let e = b.begin_nested(NFTA_LIST_ELEM);
        b.attr_str(NFTA_EXPR_NAME, "counter");
        let d = b.begin_nested(NFTA_EXPR_DATA);
        if let Some(p) = packets {
            b.attr_be64(NFTA_COUNTER_PACKETS, p);
            b.attr_be64(NFTA_COUNTER_BYTES, p * 60);
        }
        b.end_nested(d);
        b.end_nested(e);
    }

    #[test]
    fn the_kernels_echo_of_the_same_rule_compares_equal() {
        let sent = exprs(|b| {
            lookup(b, "s", Some(3), None, true);
            counter(b, None);
        });
        // No set id, a default flags attribute, nests without the flag, live counters.
        let got = exprs(|b| {
            lookup(b, "s", None, Some(0), false);
            counter(b, Some(7));
        });
        assert_eq!(same_expressions(&sent, &got), Ok(()));
    }

    #[test]
    fn a_different_value_order_or_expression_is_a_difference() {
        let sent = exprs(|b| {
            lookup(b, "s", Some(3), None, true);
            counter(b, None);
        });
        let other_set = exprs(|b| {
            lookup(b, "t", None, Some(0), false);
            counter(b, None);
        });
        let e = same_expressions(&sent, &other_set).unwrap_err();
        assert!(e.contains("expression 1 (lookup)") && e.contains("attribute 1"), "{e}");
        let swapped = exprs(|b| {
            counter(b, None);
            lookup(b, "s", None, None, false);
        });
        let e = same_expressions(&sent, &swapped).unwrap_err();
        assert_eq!(e, "expressions are [counter lookup], want [lookup counter]");
        let fewer = exprs(|b| lookup(b, "s", None, None, false));
        assert!(same_expressions(&sent, &fewer).is_err());
        let missing_attr = exprs(|b| {
            let e = b.begin_nested(NFTA_LIST_ELEM);
            b.attr_str(NFTA_EXPR_NAME, "lookup");
            let d = b.begin_nested(NFTA_EXPR_DATA);
            b.attr_str(NFTA_LOOKUP_SET, "s");
            b.end_nested(d);
            b.end_nested(e);
            counter(b, None);
        });
        let e = same_expressions(&sent, &missing_attr).unwrap_err();
        assert!(e.contains("attribute 2 is missing"), "{e}");
    }
}
