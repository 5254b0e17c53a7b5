//! Where the engine's notion of "now" comes from.
//!
//! Time-based rules (heartbeat silence, sliding windows, cooldowns) read time only through a
//! [`Clock`], so tests drive them with a [`ManualClock`] and never sleep to wait for a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Now, in ns since the Unix epoch.
    fn now_unix_nanos(&self) -> u64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `unix_nanos`.
    pub fn new(unix_nanos: u64) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(unix_nanos)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.now.fetch_add(nanos, Ordering::SeqCst);
    }

    /// Sets the clock to `unix_nanos`.
    pub fn set(&self, unix_nanos: u64) {
        self.now.store(unix_nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_nanos(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new(1_000);
        let other = clock.clone();
        clock.advance(Duration::from_nanos(500));
        assert_eq!(other.now_unix_nanos(), 1_500);
        other.set(7);
        assert_eq!(clock.now_unix_nanos(), 7);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_unix_nanos() > 1_577_836_800_000_000_000);
    }
}
