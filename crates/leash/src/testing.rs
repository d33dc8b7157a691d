//! A recording fake of [`kernel::Firewall`] for the commands' unit tests: it holds one table the
//! way the kernel would report it and records every call, so command logic (carrying answers
//! over, recording what was applied, status) is tested without root. The kernel tests test the
//! real netlink implementation.

use kernel::{ApplyOptions, ApplyReport, ElementCount, Error, Firewall, SetStatus, TableInfo, TableStatus, TimedAnswer};
use ruleset::SetElements;
use std::cell::RefCell;
use std::net::IpAddr;

/// One call made to the fake, as far as tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Apply { sets: Vec<String> },
    Disable,
    Status,
    TableInfo,
    TimedElements(String),
    ReplaceSets(Vec<String>),
    AddTimed(Vec<(String, IpAddr, u64)>),
}

/// Makes the error a failing call returns.
type MakeError = Box<dyn Fn() -> Error>;

/// The table "in the kernel" with the handle it got, and the calls made so far.
#[derive(Default)]
pub struct FakeFirewall {
    table: RefCell<Option<(u64, ruleset::Table)>>,
    calls: RefCell<Vec<Call>>,
    /// The next apply fails with this error; with `true`, after "the kernel" committed the table.
    fail_apply: RefCell<Option<(bool, MakeError)>>,
}

impl std::fmt::Debug for FakeFirewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeFirewall").field("table", &self.table).field("calls", &self.calls).finish_non_exhaustive()
    }
}

impl FakeFirewall {
    /// No table in the kernel.
    pub fn empty() -> FakeFirewall {
        FakeFirewall::default()
    }

    /// `table` in the kernel, with handle `handle`.
    pub fn with_table(table: &ruleset::Table, handle: u64) -> FakeFirewall {
        FakeFirewall { table: RefCell::new(Some((handle, table.clone()))), ..FakeFirewall::default() }
    }

    /// Makes the next apply fail with `error()`: after committing the table when `committed`
    /// (a read-back or verification failure), before it otherwise (a refused batch).
    pub fn fail_next_apply(&self, committed: bool, error: impl Fn() -> Error + 'static) {
        *self.fail_apply.borrow_mut() = Some((committed, Box::new(error)));
    }

    /// A table `inet leash` with an output chain and an empty IPv4 interval set for each name.
    pub fn table_with_sets(names: &[&str]) -> ruleset::Table {
        ruleset::Table {
            name: ruleset::TABLE_NAME.into(),
            comment: Some("leash sha256:0123456789abcdef /etc/leash/policy.toml".into()),
            sets: names
                .iter()
                .map(|n| ruleset::Set {
                    name: (*n).into(),
                    key: ruleset::KeyType::Ipv4Addr,
                    interval: true,
                    timeout: false,
                    dynamic: None,
                    size: None,
                    elements: SetElements::V4(Vec::new()),
                })
                .collect(),
            chains: vec![ruleset::Chain {
                name: "output".into(),
                kind: ruleset::ChainType::Filter,
                hook: ruleset::Hook::Output,
                priority: 0,
                policy: ruleset::ChainPolicy::Accept,
                rules: Vec::new(),
            }],
        }
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn call(&self, c: Call) {
        self.calls.borrow_mut().push(c);
    }
}

impl Firewall for FakeFirewall {
    fn apply(&self, table: &ruleset::Table, _opts: &ApplyOptions) -> Result<ApplyReport, Error> {
        self.call(Call::Apply { sets: table.sets.iter().map(|s| s.name.clone()).collect() });
        let fail = self.fail_apply.borrow_mut().take();
        if let Some((false, e)) = &fail {
            return Err(e());
        }
        let mut t = self.table.borrow_mut();
        // The kernel numbers new tables from a counter that only goes up.
        let handle = t.as_ref().map_or(1, |(h, _)| h + 1);
        *t = Some((handle, table.clone()));
        if let Some((true, e)) = &fail {
            return Err(e());
        }
        Ok(ApplyReport { messages: 2 + table.sets.len(), table_handle: handle, ..ApplyReport::default() })
    }

    fn disable(&self) -> Result<bool, Error> {
        self.call(Call::Disable);
        Ok(self.table.borrow_mut().take().is_some())
    }

    fn status_with(
        &self,
        recorded: &dyn Fn(u64, &SetStatus) -> Option<usize>,
    ) -> Result<Option<TableStatus>, Error> {
        self.call(Call::Status);
        let t = self.table.borrow();
        let Some((handle, table)) = t.as_ref() else { return Ok(None) };
        let sets = table
            .sets
            .iter()
            .map(|s| {
                let mut st = SetStatus {
                    name: s.name.clone(),
                    key: Some(s.key),
                    key_type: 0,
                    key_len: s.key.key_len() as u32,
                    flags: 0,
                    interval: s.interval,
                    timeout: s.timeout,
                    elements: ElementCount::Exact(0),
                };
                let n = s.elements.len();
                st.elements = match recorded(*handle, &st) {
                    Some(r) => ElementCount::Recorded(r),
                    None if n > kernel::nft::COUNT_LIMIT => ElementCount::AtLeast(kernel::nft::COUNT_LIMIT),
                    None => ElementCount::Exact(n),
                };
                st
            })
            .collect();
        let chains = table
            .chains
            .iter()
            .enumerate()
            .map(|(i, c)| kernel::ChainStatus {
                name: c.name.clone(),
                handle: i as u64 + 1,
                hook: Some(c.hook),
                hook_num: Some(3),
                priority: Some(c.priority),
                policy: Some(c.policy),
                chain_type: Some(c.kind.nft_name().into()),
                rules: c
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(j, r)| kernel::RuleStatus {
                        handle: 100 + j as u64,
                        comment: r.comment.clone(),
                        counter: Some(kernel::Counter::default()),
                    })
                    .collect(),
            })
            .collect();
        Ok(Some(TableStatus { comment: table.comment.clone(), chains, sets }))
    }

    fn table_info(&self) -> Result<Option<TableInfo>, Error> {
        self.call(Call::TableInfo);
        Ok(self.table.borrow().as_ref().map(|(h, t)| TableInfo { handle: *h, comment: t.comment.clone() }))
    }

    fn timed_elements(&self, set: &str) -> Result<Option<Vec<TimedAnswer>>, Error> {
        self.call(Call::TimedElements(set.into()));
        let t = self.table.borrow();
        let Some(s) = t.as_ref().and_then(|(_, t)| t.sets.iter().find(|s| s.name == set)) else { return Ok(None) };
        let answer = |addr, left_ms, name: &Option<String>| TimedAnswer { addr, left_ms, name: name.clone() };
        let mut out: Vec<TimedAnswer> = match &s.elements {
            SetElements::TimedV4(v) => v.iter().map(|e| answer(IpAddr::V4(e.addr), e.timeout_ms, &e.name)).collect(),
            SetElements::TimedV6(v) => v.iter().map(|e| answer(IpAddr::V6(e.addr), e.timeout_ms, &e.name)).collect(),
            _ => return Err(Error::Invalid(format!("set {set} holds no addresses with timeouts"))),
        };
        out.sort_by_key(|e| e.addr);
        Ok(Some(out))
    }

    fn replace_set_elements(
        &self,
        sets: &[kernel::SetContents<'_>],
        _opts: &kernel::ReplaceOptions,
    ) -> Result<kernel::ReplaceReport, Error> {
        self.call(Call::ReplaceSets(sets.iter().map(|s| s.name.to_string()).collect()));
        let mut t = self.table.borrow_mut();
        let Some((handle, table)) = t.as_mut() else { return Err(Error::NoSuchTable(ruleset::TABLE_NAME.into())) };
        for c in sets {
            let Some(s) = table.sets.iter_mut().find(|s| s.name == c.name) else {
                return Err(Error::NoSuchSet { table: ruleset::TABLE_NAME.into(), set: c.name.into() });
            };
            s.elements = c.elements.clone();
        }
        Ok(kernel::ReplaceReport { table_handle: *handle, ..kernel::ReplaceReport::default() })
    }

    fn add_timed(&self, table_handle: u64, elems: &[kernel::TimedElement<'_>]) -> Result<(), Error> {
        self.call(Call::AddTimed(elems.iter().map(|e| (e.set.to_string(), e.addr, e.timeout_ms)).collect()));
        let mut t = self.table.borrow_mut();
        let Some((handle, table)) = t.as_mut() else {
            return Err(Error::TableReplaced { table: ruleset::TABLE_NAME.into(), expected: table_handle, found: None });
        };
        if *handle != table_handle {
            return Err(Error::TableReplaced { table: ruleset::TABLE_NAME.into(), expected: table_handle, found: Some(*handle) });
        }
        for e in elems {
            let Some(s) = table.sets.iter_mut().find(|s| s.name == e.set) else {
                return Err(Error::NoSuchSet { table: ruleset::TABLE_NAME.into(), set: e.set.into() });
            };
            let name = e.name.map(String::from);
            match (&mut s.elements, e.addr) {
                (SetElements::TimedV4(v), IpAddr::V4(a)) => {
                    v.retain(|x| x.addr != a);
                    v.push(ruleset::TimedAddr::new(a, e.timeout_ms, name));
                }
                (SetElements::TimedV6(v), IpAddr::V6(a)) => {
                    v.retain(|x| x.addr != a);
                    v.push(ruleset::TimedAddr::new(a, e.timeout_ms, name));
                }
                _ => return Err(Error::Invalid(format!("{} does not fit set {}", e.addr, e.set))),
            }
        }
        Ok(())
    }
}
