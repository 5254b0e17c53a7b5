//! Exponential backoff with jitter, the one every stage and output waits by.

use std::time::Duration;

/// Default first wait, ms: the `retry_initial_ms` default of every stage.
pub const DEFAULT_RETRY_INITIAL_MS: u64 = 100;
/// Default longest wait, ms: the `retry_max_ms` default of every stage.
pub const DEFAULT_RETRY_MAX_MS: u64 = 5_000;
/// Most jitter added to a wait, as a fraction of it. Jitter spreads the retries of many
/// consumers (or many alerts) that failed together, so they do not hit a recovering
/// server in lockstep.
pub const JITTER_FRACTION: f64 = 0.25;

/// Waits that double from `initial` up to `max`, each with up to [`JITTER_FRACTION`]
/// added (never beyond `max`).
///
/// ```
/// use std::time::Duration;
/// use dlog_core::stage::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
/// assert_eq!(backoff.attempt(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_millis(DEFAULT_RETRY_INITIAL_MS),
            Duration::from_millis(DEFAULT_RETRY_MAX_MS),
        )
    }
}

impl Backoff {
    /// A backoff whose first wait is `initial` and whose waits never exceed `max` (a `max`
    /// below `initial` caps the waits between the two).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// A backoff from millisecond settings (`retry_initial_ms`, `retry_max_ms`).
    pub fn from_millis(initial_ms: u64, max_ms: u64) -> Self {
        Backoff::new(
            Duration::from_millis(initial_ms),
            Duration::from_millis(max_ms),
        )
    }

    /// Counts one more failed attempt and returns how long to wait before the next.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        delay(self.initial, self.max, self.attempt)
    }

    /// Failed attempts counted since the start or the last [`Backoff::reset`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over at `initial` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The wait after failed attempt `attempt` (1-based): `initial * 2^(attempt-1)` capped at
/// `max`, plus up to [`JITTER_FRACTION`] of it, never beyond `max` (nor beyond `initial`
/// when `max` is smaller).
pub fn delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let base = exp.min(max);
    let jitter = base.mul_f64(rand::random::<f64>() * JITTER_FRACTION);
    (base + jitter).min(max.max(initial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(2);
        let b1 = delay(i, m, 1);
        assert!(b1 >= i && b1 <= i.mul_f64(1.25), "{b1:?}");
        let b3 = delay(i, m, 3);
        assert!(b3 >= i * 4 && b3 <= (i * 4).mul_f64(1.25), "{b3:?}");
        assert_eq!(delay(i, m, 40), m);
    }

    #[test]
    fn next_delay_counts_attempts_and_reset_starts_over() {
        let i = Duration::from_millis(10);
        let mut backoff = Backoff::new(i, Duration::from_secs(1));
        backoff.next_delay();
        backoff.next_delay();
        let third = backoff.next_delay();
        assert_eq!(backoff.attempt(), 3);
        assert!(third >= i * 4, "{third:?}");
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert!(backoff.next_delay() <= i.mul_f64(1.25));
    }

    #[test]
    fn max_below_initial_never_waits_beyond_initial() {
        let i = Duration::from_millis(50);
        let m = Duration::from_millis(10);
        let wait = delay(i, m, 3);
        assert!(wait >= m && wait <= i, "{wait:?}");
    }
}
