//! Receipt latency of a session's batches: from the trainer's publish time
//! (the request's `timestamp_ms`) to the server's receipt, in a fixed-bucket
//! histogram of relaxed atomics.
//!
//! Fixed buckets keep the record allocation-free and lock-free in the apply
//! path, and readable by the HTTP API without the session lock. Resolution is
//! 100 µs below 10 ms (the goal is ≤ 5 ms), coarser above. The publish time
//! is whole milliseconds on the wire, so every value is an upper bound: it
//! exceeds the true latency by less than 1 ms. Clocks of two hosts are not
//! compared for truth: the figure means something when trainer and server
//! share a clock (the benchmark) or are well synchronised.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// 100 µs buckets up to 10 ms, 1 ms buckets up to 100 ms, 10 ms buckets up
/// to 1 s, then one overflow bucket.
const FINE: u64 = 100;
const MID: u64 = 1_000;
const COARSE: u64 = 10_000;
const FINE_END: u64 = 10_000;
const MID_END: u64 = 100_000;
const COARSE_END: u64 = 1_000_000;
const FINE_N: usize = (FINE_END / FINE) as usize;
const MID_N: usize = ((MID_END - FINE_END) / MID) as usize;
const COARSE_N: usize = ((COARSE_END - MID_END) / COARSE) as usize;
const BUCKETS: usize = FINE_N + MID_N + COARSE_N + 1;

#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// `p50`/`p99` in milliseconds (upper edges of their buckets; `null` with
/// no sample, and for the overflow bucket), and the number of samples.
#[derive(Debug, Serialize, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub count: u64,
}

fn bucket(us: u64) -> usize {
    if us < FINE_END {
        (us / FINE) as usize
    } else if us < MID_END {
        FINE_N + ((us - FINE_END) / MID) as usize
    } else if us < COARSE_END {
        FINE_N + MID_N + ((us - MID_END) / COARSE) as usize
    } else {
        BUCKETS - 1
    }
}

/// The exclusive upper edge of bucket `i` in µs; `None` for the overflow.
fn upper_us(i: usize) -> Option<u64> {
    if i < FINE_N {
        Some((i as u64 + 1) * FINE)
    } else if i < FINE_N + MID_N {
        Some(FINE_END + (i - FINE_N) as u64 * MID + MID)
    } else if i < BUCKETS - 1 {
        Some(MID_END + (i - FINE_N - MID_N) as u64 * COARSE + COARSE)
    } else {
        None
    }
}

impl LatencyHistogram {
    /// Records one batch sent at `sent_ms` (Unix ms) and received at
    /// `received_us` (Unix µs); a send time in the future counts as 0.
    pub fn record(&self, sent_ms: u64, received_us: u64) {
        let us = received_us.saturating_sub(sent_ms.saturating_mul(1000));
        self.buckets[bucket(us)].fetch_add(1, Relaxed);
    }

    pub fn summary(&self) -> LatencySummary {
        let counts: [u64; BUCKETS] = std::array::from_fn(|i| self.buckets[i].load(Relaxed));
        let count: u64 = counts.iter().sum();
        let quantile = |q: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            // The rank of the q-quantile, 1-based: the smallest bucket whose
            // cumulative count reaches it.
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return upper_us(i).map(|us| us as f64 / 1000.0);
                }
            }
            None
        };
        LatencySummary {
            p50: quantile(0.50),
            p99: quantile(0.99),
            count,
        }
    }
}

/// Microseconds since the Unix epoch, for the receipt side.
pub fn now_unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_without_gaps() {
        for us in [0, 99, 100, 9_999, 10_000, 99_999, 100_000, 999_999] {
            let i = bucket(us);
            assert!(us < upper_us(i).unwrap(), "{us} in bucket {i}");
            if i > 0 {
                assert!(us >= upper_us(i - 1).unwrap(), "{us} in bucket {i}");
            }
        }
        assert_eq!(bucket(5_000_000), BUCKETS - 1);
        assert_eq!(upper_us(BUCKETS - 1), None);
    }

    #[test]
    fn percentiles_are_bucket_upper_edges() {
        let h = LatencyHistogram::default();
        assert_eq!(h.summary().p50, None);
        // 98 batches at 1.25 ms, 2 at 42 ms: p50 1.3 ms, p99 43 ms.
        for _ in 0..98 {
            h.record(1_000, 1_001_250);
        }
        for _ in 0..2 {
            h.record(1_000, 1_042_000);
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Some(1.3));
        assert_eq!(s.p99, Some(43.0));
        // A clock that runs behind the sender's counts as 0.
        h.record(2_000, 1_000_000);
        assert_eq!(h.summary().count, 101);
    }
}
