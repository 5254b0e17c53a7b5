//! The runtime every consuming stage (indexer, alerter) shares: how it waits between retries
//! ([`Backoff`]).

mod backoff;

pub use backoff::{
    delay, Backoff, DEFAULT_RETRY_INITIAL_MS, DEFAULT_RETRY_MAX_MS, JITTER_FRACTION,
};
