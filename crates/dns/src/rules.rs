//! The policy side of an answer: which rules' sets a name feeds, the rebinding guard, and the set
//! elements an answer needs. Pure (no sockets, no clock), shared by the forwarder and the fuzz
//! target.

use crate::message::{self, Mismatch, Prepared, Query};
use crate::wire::Name;
use policy::Policy;
use policy::dns::NameDecision;
use std::net::IpAddr;
use std::sync::Arc;

/// The nftables sets of one domain rule, by address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSets {
    pub v4: Arc<str>,
    pub v6: Arc<str>,
}

/// Index of a set name in [`Rules`]: set elements are tracked by (SetId, address), which hashes
/// faster than the name.
pub type SetId = u32;

/// A set element an answer needs, with the TTL the client is given for the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub set: SetId,
    pub addr: IpAddr,
    pub ttl: u32,
}

/// An address the rebinding guard kept out of an allow rule's sets (and so out of the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub addr: IpAddr,
    pub rule: usize,
}

/// The policy and the set names the caller gave for its rules.
#[derive(Debug)]
pub struct Rules {
    policy: Arc<Policy>,
    /// Per policy rule index: (v4, v6) set ids.
    sets: Vec<Option<(SetId, SetId)>>,
    names: Vec<Arc<str>>,
}

impl Rules {
    /// `sets[i]` are the sets of `policy.rules[i]`; rules without sets (`None`, or beyond the end)
    /// still refuse names and guard answers, but receive no elements.
    pub fn new(policy: Arc<Policy>, sets: Vec<Option<RuleSets>>) -> Rules {
        let mut names: Vec<Arc<str>> = Vec::new();
        let mut id = |n: &Arc<str>| -> SetId {
            match names.iter().position(|x| x == n) {
                Some(i) => i as SetId,
                None => {
                    names.push(n.clone());
                    (names.len() - 1) as SetId
                }
            }
        };
        let sets = sets.iter().map(|s| s.as_ref().map(|s| (id(&s.v4), id(&s.v6)))).collect();
        Rules { policy, sets, names }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn set_name(&self, id: SetId) -> &Arc<str> {
        &self.names[id as usize]
    }

    pub fn rule_name(&self, i: usize) -> &str {
        self.policy.rules.get(i).map_or("?", |r| r.name.as_str())
    }

    /// Whether any rule names domains: without, the forwarder is a plain forwarder.
    pub fn has_domain_rules(&self) -> bool {
        self.policy.rules.iter().any(|r| !r.cond.domains.is_empty())
    }

    pub fn decide(&self, qname: &Name) -> NameDecision {
        if !self.has_domain_rules() {
            return NameDecision::default();
        }
        policy::dns::decide_name(&self.policy, &qname.to_dotted())
    }

    /// The set elements for `addrs` (address, client TTL) under `decision`, and the addresses
    /// the rebinding guard blocks. Each rule takes the address if it admits it
    /// (`policy::dns::admits`, the same test `explain` and `leash test` make); an address that
    /// some allow rule refused and no allow rule took is blocked: it is removed from the answer,
    /// since no allow set would let the client reach it. An address listed twice is timed by
    /// its longest TTL, which is what the client may keep it for.
    pub fn plan(&self, decision: &NameDecision, addrs: &[(IpAddr, u32)], own: &[IpAddr]) -> (Vec<Planned>, Vec<Blocked>) {
        let mut planned: Vec<Planned> = Vec::new();
        let mut blocked = Vec::new();
        for &(addr, ttl) in addrs {
            let is_own = policy::dns::is_own_address(addr, own);
            let mut refused_by = None;
            let mut allowed_somewhere = false;
            for &i in &decision.rules {
                let Some(rule) = self.policy.rules.get(i) else { continue };
                if !policy::dns::admits(rule, addr, is_own) {
                    refused_by.get_or_insert(i);
                    continue;
                }
                allowed_somewhere |= rule.action == policy::Action::Allow;
                let Some(Some((v4, v6))) = self.sets.get(i) else { continue };
                let set = if addr.is_ipv4() { *v4 } else { *v6 };
                match planned.iter_mut().find(|p| p.set == set && p.addr == addr) {
                    Some(p) => p.ttl = p.ttl.max(ttl),
                    None => planned.push(Planned { set, addr, ttl }),
                }
            }
            if let Some(rule) = refused_by
                && !allowed_somewhere
                && !blocked.iter().any(|b: &Blocked| b.addr == addr)
            {
                blocked.push(Blocked { addr, rule });
            }
        }
        // A blocked address leaves the answer, so no set needs it (not even a deny rule's).
        planned.retain(|p| !blocked.iter().any(|b| b.addr == p.addr));
        (planned, blocked)
    }
}

/// An upstream response turned into what the forwarder needs: the answer for clients (rebinding
/// targets and address records off the CNAME chain removed, TTLs capped), the set elements it
/// requires, and what the guard blocked.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub prepared: Prepared,
    pub inserts: Vec<Planned>,
    pub blocked: Vec<Blocked>,
    /// A/AAAA records off the question's CNAME chain that were stripped from the answer.
    pub off_chain: usize,
}

/// Processes an upstream response `resp` (already matched to `q`) under `decision`.
pub fn process(rules: &Rules, decision: &NameDecision, q: &Query<'_>, resp: &[u8], own: &[IpAddr], max_ttl: u32) -> Result<Outcome, Mismatch> {
    let plan = |a: &message::Analysis| {
        let addrs: Vec<(IpAddr, u32)> = a.addrs.iter().map(|f| (f.addr, f.ttl.min(max_ttl))).collect();
        rules.plan(decision, &addrs, own)
    };
    let a = message::analyze(resp, &q.qname)?;
    let (inserts, blocked) = plan(&a);
    if blocked.is_empty() && a.off_chain.is_empty() && a.opt_is_last() {
        return Ok(Outcome { prepared: message::prepare(resp, &a, max_ttl), inserts, blocked, off_chain: 0 });
    }
    let strip: Vec<IpAddr> = blocked.iter().map(|b| b.addr).collect();
    let rebuilt = message::rebuild_without(resp, &strip, &a.chain_end).ok_or(Mismatch::Records)?;
    // The re-encoded answer is planned again from scratch: what the client gets is what was
    // checked, even if the re-encoding read something differently.
    let a2 = message::analyze(&rebuilt, &q.qname)?;
    let (inserts, blocked_again) = plan(&a2);
    if !blocked_again.is_empty() || !a2.off_chain.is_empty() || !a2.opt_is_last() {
        return Err(Mismatch::Records);
    }
    Ok(Outcome { prepared: message::prepare(&rebuilt, &a2, max_ttl), inserts, blocked, off_chain: a.off_chain.len() })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use policy::StaticResolver;

    /// A small policy with exact, wildcard, deny and allow_private domain rules.
    pub(crate) const POLICY: &str = r#"
version = 1

[dns]
upstreams = ["127.0.0.1:5353"]

[[rule]]
name = "refused"
action = "deny"
to = ["blocked.example.test"]

[[rule]]
name = "api"
action = "allow"
proto = "tcp"
ports = [443]
to = ["api.example.test", "*.cdn.example.test"]

[[rule]]
name = "lan"
action = "allow"
proto = "tcp"
ports = [80]
to = ["nas.example.test"]
allow_private = true

[[rule]]
name = "smtp"
action = "deny"
proto = "tcp"
ports = [25]
to = ["*.example.test"]
"#;

    pub(crate) fn policy() -> Arc<Policy> {
        let (p, diags) = policy::load(POLICY, &StaticResolver::default());
        assert!(p.is_some(), "{diags:?}");
        Arc::new(p.unwrap())
    }

    pub(crate) fn sets(p: &Policy) -> Vec<Option<RuleSets>> {
        p.rules
            .iter()
            .map(|r| (!r.cond.domains.is_empty()).then(|| RuleSets { v4: format!("{}_v4", r.name).into(), v6: format!("{}_v6", r.name).into() }))
            .collect()
    }

    fn rules() -> Rules {
        let p = policy();
        let s = sets(&p);
        Rules::new(p, s)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn decisions_exact_wildcard_and_refused() {
        let r = rules();
        let d = r.decide(&Name::from_dotted("API.example.test.").unwrap());
        assert_eq!(d.refuse, None);
        assert_eq!(d.rules, vec![1, 3]);
        let d = r.decide(&Name::from_dotted("x.y.cdn.example.test").unwrap());
        assert_eq!(d.rules, vec![1, 3]);
        let d = r.decide(&Name::from_dotted("cdn.example.test").unwrap());
        assert_eq!(d.rules, vec![3]);
        let d = r.decide(&Name::from_dotted("blocked.example.test").unwrap());
        assert_eq!(d.refuse, Some(0));
        let d = r.decide(&Name::from_dotted("unrelated.test").unwrap());
        assert_eq!(d, NameDecision::default());
    }

    #[test]
    fn plan_puts_addresses_in_each_rules_family_set() {
        let r = rules();
        let d = r.decide(&Name::from_dotted("api.example.test").unwrap());
        let (p, b) = r.plan(&d, &[(ip("192.0.2.1"), 60), (ip("2001:db8::1"), 30)], &[]);
        assert!(b.is_empty());
        let named: Vec<(String, IpAddr, u32)> = p.iter().map(|p| (r.set_name(p.set).to_string(), p.addr, p.ttl)).collect();
        assert_eq!(
            named,
            vec![
                ("api_v4".into(), ip("192.0.2.1"), 60),
                ("smtp_v4".into(), ip("192.0.2.1"), 60),
                ("api_v6".into(), ip("2001:db8::1"), 30),
                ("smtp_v6".into(), ip("2001:db8::1"), 30),
            ]
        );
    }

    #[test]
    fn rebinding_guard_blocks_private_and_own_addresses_unless_allowed() {
        let r = rules();
        let d = r.decide(&Name::from_dotted("api.example.test").unwrap());
        let own = [ip("198.51.100.9")];
        let (p, b) = r.plan(&d, &[(ip("10.1.2.3"), 60), (ip("198.51.100.9"), 60), (ip("192.0.2.1"), 60)], &own);
        assert_eq!(b, vec![Blocked { addr: ip("10.1.2.3"), rule: 1 }, Blocked { addr: ip("198.51.100.9"), rule: 1 }]);
        assert!(p.iter().all(|p| p.addr == ip("192.0.2.1")));
        // allow_private admits them; the deny rule admits everything.
        let d = r.decide(&Name::from_dotted("nas.example.test").unwrap());
        let (p, b) = r.plan(&d, &[(ip("10.1.2.3"), 60)], &own);
        assert!(b.is_empty());
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn an_address_one_allow_rule_refuses_and_another_admits_stays_in_the_answer() {
        // nas.example.test is named by `lan` (allow_private) and, in this policy, by no other
        // allow rule; add one that names it without allow_private: the private answer goes into
        // `lan`'s set only and stays in the answer, as `explain` and `leash test` decide.
        let src = POLICY.replace("to = [\"api.example.test\", \"*.cdn.example.test\"]", "to = [\"api.example.test\", \"*.cdn.example.test\", \"nas.example.test\"]");
        let (p, diags) = policy::load(&src, &StaticResolver::default());
        let p = Arc::new(p.unwrap_or_else(|| panic!("{diags:?}")));
        let sets = (0..p.rules.len()).map(|i| Some(RuleSets { v4: format!("r{i}_v4").into(), v6: format!("r{i}_v6").into() })).collect();
        let r = Rules::new(p, sets);
        let d = r.decide(&Name::from_dotted("nas.example.test").unwrap());
        let (planned, blocked) = r.plan(&d, &[(ip("10.1.2.3"), 60), (ip("10.1.2.3"), 300)], &[]);
        assert!(blocked.is_empty(), "{blocked:?}");
        let names: Vec<(&str, u32)> = planned.iter().map(|x| (&**r.set_name(x.set), x.ttl)).collect();
        // lan (rule 2) and the smtp deny rule (3) take it, api (1) does not; the longest TTL wins.
        assert_eq!(names, vec![("r2_v4", 300), ("r3_v4", 300)]);
    }
}
