//! How this kernel refreshes a set element's timeout, found out by trying it: kernels from 6.10
//! on take a re-added element's new timeout and expiration, older ones (Debian 12's 6.1) accept
//! the message and keep the old expiry. The DNS forwarder must know which, or it records an
//! expiry the kernel does not hold and answered addresses drop out of their sets early.
//!
//! The probe works on a scratch table of its own, `inet leash_probe_<pid>_<n>`, in the calling
//! thread's network namespace: one batch creates it with a timeout set and one element (1 min), a
//! second re-adds the element with 10 minutes, the element's expiry is read back, and a third
//! batch deletes the table, also when a step in between failed. This is safe on a live host: the
//! table is created with `NLM_F_EXCL` (an existing table of that name is never touched), it has
//! no chain, so no hook sees it and it decides no packet, and it lives a few milliseconds. No
//! other table is read or changed.

use std::sync::atomic::{AtomicU32, Ordering};

use super::batch::{Encoder, open_socket};
use super::consts::*;
use super::error::Error;
use super::read::timed_elements;
use crate::nl::{NLM_F_CREATE, NLM_F_EXCL};

/// How a [`crate::nft::SetWriter`] refreshes the timeout of an element that may already be in
/// the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refresh {
    /// Re-adding the element sets its timeout and expiration (Linux 6.10 and later): one
    /// NEWSETELEM per set.
    #[default]
    InPlace,
    /// Re-adding keeps the old expiry (before 6.10): the batch adds each element (a no-op when it
    /// is there, so the delete cannot fail), deletes it, and adds it again with the new timeout.
    /// One batch is one transaction: the packet path sees the old element until the commit and
    /// the new one from then on, never a set without it.
    DeleteAndAdd,
}

/// The address the probe adds (TEST-NET-1; the table has no chain, so it matches nothing).
const PROBE_ADDR: [u8; 4] = [192, 0, 2, 1];
/// The first timeout, and the longer one of the re-add. The first is long enough that the element
/// cannot expire while the probe runs, however slow the machine (a re-add of an expired element
/// would make a fresh one and look like a refresh); the table is gone right after anyway.
const SHORT_MS: u64 = 60_000;
const LONG_MS: u64 = 600_000;

/// Numbers the probe tables of this process.
static PROBES: AtomicU32 = AtomicU32::new(0);

/// Finds out how this kernel refreshes element timeouts (see the module documentation).
pub fn probe_refresh() -> Result<Refresh, Error> {
    let name = format!(
        "leash_probe_{}_{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    let mut sock = open_socket()?;
    // If this fails nothing was created (the batch is one transaction), unless the name was
    // taken, in which case the table is someone else's: it is left alone.
    batch(|e| {
        e.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, format!("probe table inet {name}"), |b| {
            b.attr_str(NFTA_TABLE_NAME, &name);
            b.attr_be32(NFTA_TABLE_FLAGS, 0);
        })?;
        e.nft(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL, "probe set".into(), |b| {
            b.attr_str(NFTA_SET_TABLE, &name);
            b.attr_str(NFTA_SET_NAME, "p");
            b.attr_be32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT);
            b.attr_be32(NFTA_SET_KEY_TYPE, TYPE_IPADDR);
            b.attr_be32(NFTA_SET_KEY_LEN, 4);
            b.attr_be32(NFTA_SET_ID, 1);
        })?;
        add(e, &name, SHORT_MS, NLM_F_EXCL)
    })?
    .send(&mut sock)?;
    let result = (|| {
        batch(|e| add(e, &name, LONG_MS, 0))?.send(&mut sock)?;
        let left = timed_elements(&name, "p")?
            .and_then(|v| v.first().map(|e| e.left_ms))
            .ok_or_else(|| Error::Verify(format!("the probe element is missing from table inet {name}")))?;
        Ok(if left > SHORT_MS { Refresh::InPlace } else { Refresh::DeleteAndAdd })
    })();
    let deleted = batch(|e| {
        e.nft(NFT_MSG_DELTABLE, 0, format!("probe table inet {name}"), |b| {
            b.attr_str(NFTA_TABLE_NAME, &name)
        })
    })
    .and_then(|b| b.send(&mut sock));
    let refresh = result?;
    deleted?;
    Ok(refresh)
}

fn batch(body: impl FnOnce(&mut Encoder) -> Result<(), Error>) -> Result<super::batch::Batch, Error> {
    let mut e = Encoder::new(512);
    e.begin_batch()?;
    body(&mut e)?;
    e.end_batch()?;
    Ok(e.finish(0))
}

/// NEWSETELEM of the probe address with timeout and expiration `ms`.
fn add(e: &mut Encoder, table: &str, ms: u64, flags: u16) -> Result<(), Error> {
    e.nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE | flags, "probe element".into(), |b| {
        b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        b.attr_str(NFTA_SET_ELEM_LIST_SET, "p");
        let list = b.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
        let el = b.begin_nested(NFTA_LIST_ELEM);
        b.attr_be64(NFTA_SET_ELEM_TIMEOUT, ms);
        b.attr_be64(NFTA_SET_ELEM_EXPIRATION, ms);
        let k = b.begin_nested(NFTA_SET_ELEM_KEY);
        b.attr(NFTA_DATA_VALUE, &PROBE_ADDR);
        b.end_nested(k);
        b.end_nested(el);
        b.end_nested(list);
    })
}
