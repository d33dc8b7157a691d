//! Counters of the forwarder, readable at any time without a lock (a metrics endpoint reads them).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters; every field only grows.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`Stats`] at one moment (each counter read on its own, so not a transaction).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl StatsSnapshot {
            /// (name, value) pairs, for exporters.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

stats! {
    /// Valid client queries (UDP and TCP).
    queries,
    /// Queries answered from the cache.
    cache_hits,
    /// Queries sent to upstreams (every try, TCP retries included).
    upstream_queries,
    /// SERVFAIL answers sent because no upstream gave a usable answer.
    upstream_failures,
    /// Client packets dropped as malformed.
    malformed_dropped,
    /// Upstream packets discarded: unknown id, wrong question, unparsable.
    mismatched_responses,
    /// Queries answered NXDOMAIN because a deny rule refuses the name.
    refused_names,
    /// Addresses removed from answers by the rebinding guard.
    rebinding_blocked,
    /// Set elements the kernel acked.
    inserted_elements,
    /// Kernel batches sent.
    insert_batches,
    /// Kernel batches that failed (each failed client got SERVFAIL).
    insert_errors,
    /// Queries dropped because too many were already waiting for upstreams or the kernel.
    overload_dropped,
    /// SERVFAIL answers sent because the forwarder did not know the applied policy (it could
    /// not be loaded, or the table is gone): it feeds no set of a policy that is not applied.
    no_policy_servfail,
    /// SERVFAIL answers sent because a domain set was full (`[dns] set_size`).
    set_full,
    /// Inserts the kernel refused because the table they were decided for had been replaced.
    table_replaced,
    /// Address records off the question's CNAME chain stripped from answers.
    off_chain_stripped,
    /// TCP client connections closed to make room for a new one (the longest idle first).
    tcp_evicted,
    /// Log lines left out by the rate limit.
    log_suppressed,
    /// Times the forwarder switched to a newly applied policy.
    policy_reloads,
}

impl Stats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
