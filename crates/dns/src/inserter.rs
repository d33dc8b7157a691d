//! The set inserter: one OS thread owns the [`SetSink`] and turns whatever inserts are queued
//! into one kernel batch, so that under load many answers share one netlink round trip.
//!
//! A thread rather than a task because the sink blocks (it waits for the kernel's acks) and
//! must not stall the runtime's reactor; one thread because one netlink socket serialises the
//! batches anyway and batching only works when the queue has a single consumer.

use crate::log::Logs;
use crate::stats::Stats;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One set element to add (or refresh) with a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub set: Arc<str>,
    pub addr: IpAddr,
    pub timeout_ms: u64,
    /// The name looked up, which the kernel keeps with the element (its comment), so that a
    /// re-apply carries the answer over only if the new policy still admits that name.
    pub name: Option<Arc<str>>,
}

/// Why a batch did not go in.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The table the batch was decided for is no longer the applied one (re-applied or gone).
    /// Nothing of it was added.
    #[error("the table was replaced since the policy was loaded")]
    TableReplaced,
    /// A set of the batch is full (its `size`); nothing of it was added.
    #[error("a domain set is full")]
    SetFull,
    #[error("{0}")]
    Other(#[from] io::Error),
}

/// Where set elements go: the binary implements it over the kernel's netlink set writer, tests
/// over a recording fake.
pub trait SetSink: Send + 'static {
    /// Adds all of `batch` as one kernel batch into the table `table` (the kernel's handle of the
    /// table the caller loaded the policy for, see [`crate::Applied::table`]), and returns after
    /// the kernel acked it. Must refuse ([`SinkError::TableReplaced`]) rather than add anything
    /// to any other table of the same name. An element that exists already must get the new
    /// timeout.
    fn add(&mut self, table: u64, batch: &[Insert]) -> Result<(), SinkError>;
}

/// How an insert job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    TableReplaced,
    SetFull,
    Failed,
}

/// Most elements merged into one batch; more stay queued for the next one.
const MAX_BATCH: usize = 4096;

struct Job {
    table: u64,
    inserts: Vec<Insert>,
    done: oneshot::Sender<Outcome>,
}

/// The sending side; the thread ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Inserter {
    tx: mpsc::Sender<Job>,
}

impl Inserter {
    pub(crate) fn start(sink: Box<dyn SetSink>, stats: Arc<Stats>, logs: Arc<Logs>) -> io::Result<Inserter> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("leash-dns-sets".into()).spawn(move || run(sink, rx, &stats, &logs))?;
        Ok(Inserter { tx })
    }

    /// Queues `inserts` for the table `table` and waits until the kernel acked them. Anything
    /// but [`Outcome::Done`] when the sink refused or failed, the thread is gone, or no ack came
    /// within `deadline` (the client then gets SERVFAIL instead of waiting forever on a stuck
    /// kernel).
    pub(crate) async fn insert(&self, table: u64, inserts: Vec<Insert>, deadline: Duration) -> Outcome {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Job { table, inserts, done }).is_err() {
            return Outcome::Failed;
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(o)) => o,
            _ => Outcome::Failed,
        }
    }
}

fn run(mut sink: Box<dyn SetSink>, rx: mpsc::Receiver<Job>, stats: &Stats, logs: &Logs) {
    let mut merged = Vec::new();
    let mut sent = Sent::default();
    while let Ok(first) = rx.recv() {
        let mut n = first.inserts.len();
        let mut jobs = vec![first];
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.inserts.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // A client that gave up (deadline) gets no answer: its elements need not go in.
        jobs.retain(|j| !j.done.is_closed());
        // One batch per table: around a re-apply, jobs decided for the old table and the new
        // one meet in the queue, and a batch is bound to one table.
        while !jobs.is_empty() {
            let table = jobs[0].table;
            let (group, rest): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.table == table);
            jobs = rest;
            run_group(&mut *sink, &mut sent, table, group, &mut merged, stats, logs);
        }
    }
}

fn run_group(sink: &mut dyn SetSink, sent: &mut Sent, table: u64, jobs: Vec<Job>, merged: &mut Vec<Insert>, stats: &Stats, logs: &Logs) {
    merge(&jobs, merged);
    let outcome = sent.add(sink, table, merged, stats, logs);
    // Only an element of its own fails a job: a batch refused for its table, or one whose
    // failure concerns one job alone, is the answer for all.
    if outcome == Outcome::Done || outcome == Outcome::TableReplaced || jobs.len() == 1 {
        for j in jobs {
            let _ = j.done.send(outcome);
        }
        return;
    }
    // One bad element (or one new name for a full set) must not fail every client that shared
    // the batch: retry each on its own so only the client whose answer holds it gets SERVFAIL.
    for j in jobs {
        let mut own = j.inserts.clone();
        let o = sent.add(sink, table, &mut own, stats, logs);
        let _ = j.done.send(o);
    }
}

/// When each element this thread sent will expire in the kernel, so that a later insert never
/// shortens it. The kernel takes a re-added element's timeout as is, even a shorter one, and
/// two answers for one shared address (two names on one CDN address, or every name at once
/// after the table was re-applied) can both decide to insert before either is acked. This
/// thread is the only writer, so raising every timeout to what was sent before keeps the
/// promise: an element outlives every TTL any client was given.
#[derive(Debug, Default)]
struct Sent {
    /// Per table handle, newest last: a table that replaced another starts with other elements,
    /// and around a re-apply batches for the old and the new table alternate (the old one's
    /// are refused), so the two most recent are kept apart rather than one cleared for the other.
    tables: Vec<(u64, Expiries)>,
}

#[derive(Debug, Default)]
struct Expiries {
    expiry: HashMap<(Arc<str>, IpAddr), Instant>,
    /// Prune expired entries when the map has doubled since the last prune.
    prune_at: usize,
}

impl Sent {
    fn add(&mut self, sink: &mut dyn SetSink, table: u64, batch: &mut [Insert], stats: &Stats, logs: &Logs) -> Outcome {
        let now = Instant::now();
        let i = match self.tables.iter().position(|(t, _)| *t == table) {
            Some(i) => i,
            None => {
                if self.tables.len() >= 2 {
                    self.tables.remove(0);
                }
                self.tables.push((table, Expiries::default()));
                self.tables.len() - 1
            }
        };
        let m = &mut self.tables[i].1;
        for ins in batch.iter_mut() {
            if let Some(&until) = m.expiry.get(&(ins.set.clone(), ins.addr)) {
                let left = until.saturating_duration_since(now).as_millis() as u64;
                ins.timeout_ms = ins.timeout_ms.max(left);
            }
        }
        let outcome = add(sink, table, batch, stats, logs);
        if outcome == Outcome::Done {
            for ins in batch.iter() {
                let until = now + Duration::from_millis(ins.timeout_ms);
                let e = m.expiry.entry((ins.set.clone(), ins.addr)).or_insert(until);
                *e = (*e).max(until);
            }
            if m.expiry.len() > m.prune_at.max(1024) {
                m.expiry.retain(|_, until| *until > now);
                m.prune_at = m.expiry.len() * 2;
            }
        }
        outcome
    }
}

/// Concatenates the jobs' inserts, keeping one element per (set, address) with the longest
/// timeout (and the name of the answer that gave it): a batch must not add the same element
/// twice.
fn merge(jobs: &[Job], out: &mut Vec<Insert>) {
    out.clear();
    let mut seen: HashMap<(&str, IpAddr), usize> = HashMap::new();
    for ins in jobs.iter().flat_map(|j| &j.inserts) {
        match seen.get(&(&*ins.set, ins.addr)) {
            Some(&i) => {
                if ins.timeout_ms > out[i].timeout_ms {
                    out[i].timeout_ms = ins.timeout_ms;
                    out[i].name = ins.name.clone();
                }
            }
            None => {
                seen.insert((&ins.set, ins.addr), out.len());
                out.push(ins.clone());
            }
        }
    }
}

fn add(sink: &mut dyn SetSink, table: u64, batch: &[Insert], stats: &Stats, logs: &Logs) -> Outcome {
    Stats::inc(&stats.insert_batches);
    match sink.add(table, batch) {
        Ok(()) => {
            Stats::add(&stats.inserted_elements, batch.len() as u64);
            Outcome::Done
        }
        Err(SinkError::TableReplaced) => {
            Stats::inc(&stats.table_replaced);
            Outcome::TableReplaced
        }
        Err(SinkError::SetFull) => {
            Stats::inc(&stats.insert_errors);
            Outcome::SetFull
        }
        Err(SinkError::Other(e)) => {
            Stats::inc(&stats.insert_errors);
            logs.kernel.line(stats, Instant::now(), || format!("adding {} set element(s) failed: {e}", batch.len()));
            Outcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Rec(Arc<Mutex<Vec<Vec<Insert>>>>, Option<IpAddr>);
    impl SetSink for Rec {
        fn add(&mut self, table: u64, batch: &[Insert]) -> Result<(), SinkError> {
            if table != 1 {
                return Err(SinkError::TableReplaced);
            }
            if self.1.is_some_and(|bad| batch.iter().any(|i| i.addr == bad)) {
                return Err(io::Error::other("bad element").into());
            }
            // Slow kernel: lets jobs pile up so the next batch merges them.
            std::thread::sleep(Duration::from_millis(20));
            self.0.lock().unwrap().push(batch.to_vec());
            Ok(())
        }
    }

    fn ins(set: &str, a: &str, t: u64) -> Insert {
        Insert { set: set.into(), addr: a.parse().unwrap(), timeout_ms: t, name: None }
    }

    #[tokio::test]
    async fn queued_jobs_share_a_batch_and_a_bad_element_fails_only_its_job() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::default());
        let bad: IpAddr = "192.0.2.99".parse().unwrap();
        let ins_ = Inserter::start(Box::new(Rec(log.clone(), Some(bad))), stats.clone(), Arc::default()).unwrap();
        let d = Duration::from_secs(5);
        let mut handles = Vec::new();
        for i in 0..20u8 {
            let ins_ = ins_.clone();
            handles.push(tokio::spawn(async move {
                let addr = format!("192.0.2.{i}");
                ins_.insert(1, vec![ins("s", &addr, 1000), ins("s", "192.0.2.200", 1000 + u64::from(i))], d).await == Outcome::Done
            }));
        }
        for h in handles {
            assert!(h.await.unwrap());
        }
        let batches = log.lock().unwrap().clone();
        assert!(batches.len() < 20, "jobs were merged: {} batches", batches.len());
        // The shared element appears once per batch.
        for b in &batches {
            assert_eq!(b.iter().filter(|i| i.addr.to_string() == "192.0.2.200").count(), 1);
        }
        assert_eq!(ins_.insert(1, vec![ins("s", "192.0.2.99", 1)], d).await, Outcome::Failed);
        // A batch for a table that is no longer the applied one fails as such.
        assert_eq!(ins_.insert(2, vec![ins("s", "192.0.2.1", 1000)], d).await, Outcome::TableReplaced);
        assert_eq!(stats.snapshot().insert_errors, 1);
    }

    #[tokio::test]
    async fn a_bad_element_in_a_merged_batch_fails_only_its_own_job() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::default());
        let bad: IpAddr = "192.0.2.99".parse().unwrap();
        let ins_ = Inserter::start(Box::new(Rec(log.clone(), Some(bad))), stats.clone(), Arc::default()).unwrap();
        let d = Duration::from_secs(5);
        let mut handles = Vec::new();
        // Job 7 carries the bad element among good ones, queued with the others.
        for i in 0..20u8 {
            let ins_ = ins_.clone();
            handles.push(tokio::spawn(async move {
                let mut v = vec![ins("s", &format!("192.0.2.{i}"), 1000)];
                if i == 7 {
                    v.push(ins("s", "192.0.2.99", 1000));
                }
                (i, ins_.insert(1, v, d).await == Outcome::Done)
            }));
        }
        for h in handles {
            let (i, ok) = h.await.unwrap();
            assert_eq!(ok, i != 7, "job {i}");
        }
        // Every good element went in; the bad job's good element did not (its batch failed).
        let inserted: Vec<String> = log.lock().unwrap().iter().flatten().map(|i| i.addr.to_string()).collect();
        for i in (0..20u8).filter(|&i| i != 7) {
            assert!(inserted.contains(&format!("192.0.2.{i}")), "192.0.2.{i} missing");
        }
        assert!(!inserted.contains(&"192.0.2.7".to_string()));
    }

    #[tokio::test]
    async fn a_later_shorter_insert_never_shortens_an_element() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::default());
        let ins_ = Inserter::start(Box::new(Rec(log.clone(), None)), stats, Arc::default()).unwrap();
        let d = Duration::from_secs(5);
        assert_eq!(ins_.insert(1, vec![ins("s", "192.0.2.1", 3_600_000)], d).await, Outcome::Done);
        // A second name on the same address with a short TTL.
        assert_eq!(ins_.insert(1, vec![ins("s", "192.0.2.1", 60_000)], d).await, Outcome::Done);
        let batches = log.lock().unwrap().clone();
        assert_eq!(batches.len(), 2);
        let second = batches[1][0].timeout_ms;
        assert!(second > 3_590_000, "the element was shortened to {second} ms");
    }

    #[test]
    fn a_refused_batch_for_an_old_table_does_not_make_the_new_one_forget() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stats, logs) = (Stats::default(), Logs::default());
        let mut sink = Rec(log.clone(), None);
        let mut sent = Sent::default();
        assert_eq!(sent.add(&mut sink, 1, &mut [ins("s", "192.0.2.1", 3_600_000)], &stats, &logs), Outcome::Done);
        // A late batch decided for table 2 (replaced: the fake's table is 1) is refused...
        assert_eq!(sent.add(&mut sink, 2, &mut [ins("s", "192.0.2.1", 1000)], &stats, &logs), Outcome::TableReplaced);
        // ...and table 1 still knows what it holds: no shortening.
        let mut again = [ins("s", "192.0.2.1", 60_000)];
        assert_eq!(sent.add(&mut sink, 1, &mut again, &stats, &logs), Outcome::Done);
        assert!(again[0].timeout_ms > 3_590_000, "shortened to {} ms", again[0].timeout_ms);
    }
}
