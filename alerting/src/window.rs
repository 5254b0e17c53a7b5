//! Memory-bounded sliding windows.
//!
//! A window of `n` buckets of `bucket_nanos` each. A sample lands in the bucket of its time;
//! a query at `now` sums the `n` most recent buckets (the current, partial one included), so
//! the window covers between `(n-1)` and `n` bucket lengths. Memory is fixed per key: `n`
//! counters for rates, and `n` sparse log-scale histograms for latency.

use serde::{Deserialize, Serialize};

/// The bucket epoch of `now`.
fn epoch(now: u64, bucket_nanos: u64) -> u64 {
    now / bucket_nanos.max(1)
}

/// Failures among outcomes over a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateWindow {
    bucket_nanos: u64,
    /// `(epoch, total, failed)` per slot; slot = epoch % n.
    slots: Vec<(u64, u32, u32)>,
}

/// A window's sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateSums {
    /// Outcomes in the window.
    pub total: u64,
    /// Failed outcomes in the window.
    pub failed: u64,
}

impl RateSums {
    /// Failed / total, 0 when empty.
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.failed as f64 / self.total as f64
        }
    }
}

impl RateWindow {
    /// A window of `buckets` buckets of `bucket_nanos` each.
    pub fn new(buckets: usize, bucket_nanos: u64) -> Self {
        RateWindow {
            bucket_nanos: bucket_nanos.max(1),
            slots: vec![(u64::MAX, 0, 0); buckets.max(1)],
        }
    }

    /// Counts one outcome at `now`.
    pub fn record(&mut self, now: u64, failed: bool) {
        let e = epoch(now, self.bucket_nanos);
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(e % n) as usize];
        if slot.0 != e {
            *slot = (e, 0, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        if failed {
            slot.2 = slot.2.saturating_add(1);
        }
    }

    /// Whether `other` has the same number and length of buckets (a window restored from a
    /// state file written under other rules does not).
    pub fn same_shape(&self, other: &RateWindow) -> bool {
        self.bucket_nanos == other.bucket_nanos && self.slots.len() == other.slots.len()
    }

    /// The sums over the window ending at `now`.
    pub fn sums(&self, now: u64) -> RateSums {
        let current = epoch(now, self.bucket_nanos);
        let n = self.slots.len() as u64;
        let mut sums = RateSums::default();
        for &(e, total, failed) in &self.slots {
            if e <= current && current - e < n {
                sums.total += u64::from(total);
                sums.failed += u64::from(failed);
            }
        }
        sums
    }
}

/// Durations over a sliding window: how many exceeded a fixed threshold (exact), and a
/// log-scale histogram for the percentile shown to people (within about 5%).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyWindow {
    bucket_nanos: u64,
    threshold_nanos: u64,
    slots: Vec<LatencySlot>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct LatencySlot {
    epoch: u64,
    total: u32,
    over: u32,
    /// Sparse histogram: (bin, count), sorted by bin.
    bins: Vec<(u16, u32)>,
}

/// A latency window's view at one time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencySums {
    /// Samples in the window.
    pub total: u64,
    /// Samples above the threshold.
    pub over: u64,
}

impl LatencySums {
    /// True when the `percentile` (e.g. 95.0) of the window's samples exceeds the threshold:
    /// more than `100 - percentile` percent of them are above it.
    pub fn percentile_exceeds(&self, percentile: f64) -> bool {
        self.total > 0 && (self.over as f64) > (self.total as f64) * (1.0 - percentile / 100.0)
    }
}

/// Histogram bin of a duration in µs: 8 sub-bins per power of two (bins ≤ 12.5% wide).
fn bin_of(micros: u64) -> u16 {
    if micros < 8 {
        return micros as u16;
    }
    let e = 63 - u64::from(micros.leading_zeros()); // >= 3
    let sub = (micros >> (e - 3)) & 7;
    ((e - 3) * 8 + 8 + sub) as u16
}

/// The lower bound and width of a bin, in µs.
fn bin_bounds(bin: u16) -> (f64, f64) {
    let bin = u64::from(bin);
    if bin < 8 {
        return (bin as f64, 1.0);
    }
    let e = (bin - 8) / 8 + 3;
    let sub = (bin - 8) % 8;
    let lower = ((8 + sub) << (e - 3)) as f64;
    (lower, (1u64 << (e - 3)) as f64)
}

impl LatencyWindow {
    /// A window of `buckets` buckets of `bucket_nanos` each, counting samples above
    /// `threshold_nanos`.
    pub fn new(buckets: usize, bucket_nanos: u64, threshold_nanos: u64) -> Self {
        LatencyWindow {
            bucket_nanos: bucket_nanos.max(1),
            threshold_nanos,
            slots: vec![
                LatencySlot {
                    epoch: u64::MAX,
                    ..Default::default()
                };
                buckets.max(1)
            ],
        }
    }

    /// The threshold this window counts against, ns.
    pub fn threshold_nanos(&self) -> u64 {
        self.threshold_nanos
    }

    /// Records one duration at `now`.
    pub fn record(&mut self, now: u64, duration_nanos: u64) {
        let e = epoch(now, self.bucket_nanos);
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(e % n) as usize];
        if slot.epoch != e {
            slot.epoch = e;
            slot.total = 0;
            slot.over = 0;
            slot.bins.clear();
        }
        slot.total = slot.total.saturating_add(1);
        if duration_nanos > self.threshold_nanos {
            slot.over = slot.over.saturating_add(1);
        }
        let bin = bin_of(duration_nanos / 1_000);
        match slot.bins.binary_search_by_key(&bin, |&(b, _)| b) {
            Ok(i) => slot.bins[i].1 = slot.bins[i].1.saturating_add(1),
            Err(i) => slot.bins.insert(i, (bin, 1)),
        }
    }

    fn live(&self, now: u64) -> impl Iterator<Item = &LatencySlot> {
        let current = epoch(now, self.bucket_nanos);
        let n = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(move |s| s.epoch <= current && current - s.epoch < n)
    }

    /// Sample and over-threshold counts in the window ending at `now`.
    pub fn sums(&self, now: u64) -> LatencySums {
        self.live(now).fold(LatencySums::default(), |mut acc, s| {
            acc.total += u64::from(s.total);
            acc.over += u64::from(s.over);
            acc
        })
    }

    /// The estimated `percentile` (0-100] of the window's durations in ms, or `None` when the
    /// window is empty. Interpolated inside the histogram bin, so within a few percent.
    pub fn percentile_ms(&self, now: u64, percentile: f64) -> Option<f64> {
        let mut merged: Vec<(u16, u64)> = Vec::new();
        for slot in self.live(now) {
            for &(bin, count) in &slot.bins {
                match merged.binary_search_by_key(&bin, |&(b, _)| b) {
                    Ok(i) => merged[i].1 += u64::from(count),
                    Err(i) => merged.insert(i, (bin, u64::from(count))),
                }
            }
        }
        let total: u64 = merged.iter().map(|&(_, c)| c).sum();
        if total == 0 {
            return None;
        }
        let rank = ((percentile / 100.0) * total as f64).ceil().max(1.0);
        let mut seen = 0u64;
        for (bin, count) in merged {
            if (seen + count) as f64 >= rank {
                let (lower, width) = bin_bounds(bin);
                let within = (rank - seen as f64) / count as f64;
                return Some((lower + width * within) / 1_000.0);
            }
            seen += count;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    #[test]
    fn rate_window_forgets_buckets_older_than_the_window() {
        let mut w = RateWindow::new(12, 5 * S);
        for i in 0..100 {
            w.record(1_000 * S, i % 10 == 0);
        }
        assert_eq!(
            w.sums(1_000 * S),
            RateSums {
                total: 100,
                failed: 10
            }
        );
        assert!((w.sums(1_000 * S).ratio() - 0.1).abs() < 1e-9);
        // Still inside 60 s (the bucket of t=1000 s is 11 buckets back at t=1059 s).
        assert_eq!(w.sums(1_059 * S).total, 100);
        // Gone once it is 12 buckets back.
        assert_eq!(w.sums(1_060 * S).total, 0);
        // A new sample in a reused slot resets it.
        w.record(1_060 * S, true);
        assert_eq!(
            w.sums(1_060 * S),
            RateSums {
                total: 1,
                failed: 1
            }
        );
    }

    #[test]
    fn rate_window_ignores_samples_from_the_future() {
        let mut w = RateWindow::new(4, S);
        w.record(100 * S, true);
        assert_eq!(w.sums(99 * S).total, 0);
    }

    #[test]
    fn bins_cover_every_value_in_order() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            100,
            1_000,
            123_456,
            1 << 40,
            u64::MAX,
        ] {
            let b = bin_of(v);
            assert!(b >= last, "bin of {v}");
            last = b;
            let (lower, width) = bin_bounds(b);
            assert!(
                lower <= v as f64 && (v as f64) <= lower + width,
                "{v} in {lower}+{width}"
            );
        }
    }

    #[test]
    fn latency_window_counts_over_threshold_exactly_and_estimates_p95() {
        let mut w = LatencyWindow::new(12, 5 * S, 1_000 * MS);
        // 100 samples: 94 at 100 ms, 6 at 1500 ms → more than 5% over: p95 is above 1 s.
        for i in 0..100 {
            let d = if i < 94 { 100 * MS } else { 1_500 * MS };
            w.record(10 * S, d);
        }
        let sums = w.sums(10 * S);
        assert_eq!((sums.total, sums.over), (100, 6));
        assert!(sums.percentile_exceeds(95.0));
        let p95 = w.percentile_ms(10 * S, 95.0).unwrap();
        assert!((1_400.0..=1_600.0).contains(&p95), "{p95}");
        // Exactly 5% over is not "more than 5%".
        let mut w = LatencyWindow::new(12, 5 * S, 1_000 * MS);
        for i in 0..100 {
            w.record(10 * S, if i < 95 { 10 * MS } else { 2_000 * MS });
        }
        assert!(!w.sums(10 * S).percentile_exceeds(95.0));
        let p50 = w.percentile_ms(10 * S, 50.0).unwrap();
        assert!((9.0..=11.0).contains(&p50), "{p50}");
    }

    #[test]
    fn latency_window_memory_is_bounded_by_bins_not_samples() {
        let mut w = LatencyWindow::new(12, S, u64::MAX);
        for i in 0..100_000u64 {
            w.record(i % 50 * S, (i % 5_000) * MS);
        }
        let bins: usize = w.slots.iter().map(|s| s.bins.len()).sum();
        assert!(bins <= 12 * 500, "{bins}");
        assert_eq!(w.percentile_ms(10_000 * S, 95.0), None);
    }
}
