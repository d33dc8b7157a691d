//! The operations on table `inet leash` that leash's commands use, behind one trait, so that
//! command logic (carrying answers over, recording what was applied, reporting status) can be
//! tested with a recording fake while the kernel tests test the real netlink code.
//!
//! [`Netlink`] is the real implementation: each method is one of this crate's netlink functions,
//! acting on the network namespace of the calling thread, on table `inet leash` only.

use ruleset::Table;

use crate::nft::{
    self, ApplyOptions, ApplyReport, Error, ReplaceOptions, ReplaceReport, SetContents, SetStatus, TableInfo,
    TableStatus, TimedAnswer, TimedElement,
};

/// What a command may ask of leash's table. Every method acts on table `inet leash` of the
/// calling thread's network namespace; none touches another table.
pub trait Firewall {
    /// Replaces the table with `table` in one atomic batch, then reads it back and verifies it
    /// (see [`nft::apply`]).
    fn apply(&self, table: &Table, opts: &ApplyOptions) -> Result<ApplyReport, Error>;
    /// Deletes the table; `Ok(false)` when there was none.
    fn disable(&self) -> Result<bool, Error>;
    /// The table with rule counters and set sizes; a set for which `recorded(handle, set)` gives
    /// a number is reported with it instead of being counted (see [`nft::status_with`]).
    fn status_with(&self, recorded: &dyn Fn(u64, &SetStatus) -> Option<usize>)
    -> Result<Option<TableStatus>, Error>;
    /// Handle and comment of the table, without reading its contents.
    fn table_info(&self) -> Result<Option<TableInfo>, Error>;
    /// The addresses of a timeout set with the milliseconds each has left and the name each
    /// answer was for; `None` when there is no such table or set.
    fn timed_elements(&self, set: &str) -> Result<Option<Vec<TimedAnswer>>, Error>;
    /// Flushes and refills sets in one batch, leaving rules and other sets alone.
    fn replace_set_elements(&self, sets: &[SetContents<'_>], opts: &ReplaceOptions) -> Result<ReplaceReport, Error>;
    /// Adds (or refreshes) elements with timeouts in one acked batch, into the table with handle
    /// `table_handle` only ([`Error::TableReplaced`] when it was replaced since).
    fn add_timed(&self, table_handle: u64, elems: &[TimedElement<'_>]) -> Result<(), Error>;

    /// The table with every set counted in the kernel (up to [`nft::COUNT_LIMIT`]).
    fn status(&self) -> Result<Option<TableStatus>, Error> {
        self.status_with(&|_, _| None)
    }
}

/// The real thing: netlink to the kernel of the calling thread's network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct Netlink;

impl Firewall for Netlink {
    fn apply(&self, table: &Table, opts: &ApplyOptions) -> Result<ApplyReport, Error> {
        nft::apply(table, opts)
    }

    fn disable(&self) -> Result<bool, Error> {
        nft::disable()
    }

    fn status_with(
        &self,
        recorded: &dyn Fn(u64, &SetStatus) -> Option<usize>,
    ) -> Result<Option<TableStatus>, Error> {
        nft::status_with(recorded)
    }

    fn table_info(&self) -> Result<Option<TableInfo>, Error> {
        nft::table_comment(ruleset::TABLE_NAME)
    }

    fn timed_elements(&self, set: &str) -> Result<Option<Vec<TimedAnswer>>, Error> {
        nft::timed_elements(ruleset::TABLE_NAME, set)
    }

    fn replace_set_elements(&self, sets: &[SetContents<'_>], opts: &ReplaceOptions) -> Result<ReplaceReport, Error> {
        nft::replace_set_elements(ruleset::TABLE_NAME, sets, opts)
    }

    fn add_timed(&self, table_handle: u64, elems: &[TimedElement<'_>]) -> Result<(), Error> {
        nft::SetWriter::open()?.add_timed_to(ruleset::TABLE_NAME, table_handle, elems)
    }
}
