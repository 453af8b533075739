//! Training rate, epoch time and ETA from the trainer's publish timestamps.
//!
//! The agent sees only the newest frame of a lossy ring, so it cannot count
//! frames. Instead it samples, whenever it likes, the segment's count of
//! batches published and the newest batch's (epoch, batch_idx, publish
//! time). Rates are differences of counts over differences of the
//! trainer's own timestamps, exact however many frames were skipped and
//! however irregularly the agent looks.
//!
//! Memory is fixed: the tracker keeps at most [`POINTS`] points, thinned
//! so that they always span the FPS window.

use crate::proto;

/// What the agent reads from a segment at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSample {
    /// Batches the trainer has published so far (monotonic; every batch
    /// counts, whether or not its frame was copied).
    pub published: u64,
    /// The newest batch's epoch (0-based, as the seed's trainer counts).
    pub epoch: u32,
    /// The newest batch's index within its epoch (0-based).
    pub batch_idx: u32,
    /// When the newest batch was published, in ns on the trainer's clock.
    pub publish_ns: u64,
}

/// The run's size from its TrainingConfig; 0 means unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTotals {
    pub total_epochs: u32,
    pub batches_per_epoch: u32,
}

impl From<&proto::TrainingConfig> for RunTotals {
    fn from(c: &proto::TrainingConfig) -> Self {
        RunTotals {
            total_epochs: c.total_epochs,
            batches_per_epoch: c.batches_per_epoch,
        }
    }
}

/// Performance figures at one moment; `None` is "not known yet", never 0.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Performance {
    /// Mean time between batches over the FPS window.
    pub time_per_batch_ms: Option<f32>,
    /// Time since the current epoch's first batch.
    pub epoch_time_sec: Option<f32>,
    /// Batches left in the run at the windowed rate.
    pub eta_sec: Option<f32>,
    /// Batches per second over the FPS window; 0 once the trainer has
    /// published nothing for a whole window.
    pub current_fps: Option<f32>,
    /// Batches per second since the tracker's first sample.
    pub average_fps: Option<f32>,
    pub batches_published: Option<u64>,
}

/// Points kept; the window is covered by at most `POINTS - 1` of them
/// (they are thinned to window / (POINTS - 2) apart), however often the
/// agent samples.
const POINTS: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Point {
    published: u64,
    ns: u64,
}

#[derive(Clone, Copy, Debug)]
enum EpochStart {
    /// Its first batch's publish time, interpolated between two samples.
    Known(f64),
    /// First seen mid-epoch with no earlier sample: estimated from the
    /// rate later, as this point minus `batches` batch times.
    Before { ns: u64, batches: u64 },
}

/// Turns a stream of [`BatchSample`]s into [`Performance`] figures.
#[derive(Debug)]
pub struct FpsTracker {
    window_ns: u64,
    min_spacing_ns: u64,
    points: [Point; POINTS],
    /// Ring of `len` points starting at `head`, oldest first.
    head: usize,
    len: usize,
    first: Option<Point>,
    newest: Option<BatchSample>,
    /// The caller's clock when `published` last grew (stall detection
    /// compares this clock only with itself).
    advanced_at_ns: u64,
    epoch_start: Option<EpochStart>,
}

impl FpsTracker {
    pub fn new(window: std::time::Duration) -> Self {
        let window_ns = (window.as_nanos() as u64).max(1);
        FpsTracker {
            window_ns,
            min_spacing_ns: window_ns / (POINTS as u64 - 2),
            points: [Point {
                published: 0,
                ns: 0,
            }; POINTS],
            head: 0,
            len: 0,
            first: None,
            newest: None,
            advanced_at_ns: 0,
            epoch_start: None,
        }
    }

    /// Records one sample taken at `now_ns` on the caller's (the agent's)
    /// monotonic clock. Samples that repeat the last one are cheap no-ops;
    /// a count that goes backwards (a restarted trainer) starts afresh.
    pub fn observe(&mut self, now_ns: u64, s: BatchSample) {
        let prev = match self.newest {
            Some(p) if s.published < p.published || s.publish_ns < p.publish_ns => {
                *self = FpsTracker::new(std::time::Duration::from_nanos(self.window_ns));
                None
            }
            p => p,
        };
        if let Some(p) = prev {
            if s.published == p.published {
                return;
            }
        }
        self.advanced_at_ns = now_ns;
        let point = Point {
            published: s.published,
            ns: s.publish_ns,
        };
        let new_epoch = match prev {
            None => true,
            Some(p) => s.epoch != p.epoch || s.batch_idx < p.batch_idx,
        };
        if new_epoch {
            self.epoch_start = Some(self.start_of_epoch(prev, s));
        }
        self.push(point);
        self.first.get_or_insert(point);
        self.newest = Some(s);
    }

    /// When the epoch of `s` began: its batch 0 was the `batch_idx`-th
    /// batch before the newest, so it was published when the count was
    /// `published - batch_idx`; between two samples the count is taken to
    /// grow evenly.
    fn start_of_epoch(&self, prev: Option<BatchSample>, s: BatchSample) -> EpochStart {
        let c0 = s.published.saturating_sub(u64::from(s.batch_idx));
        match prev {
            _ if s.batch_idx == 0 => EpochStart::Known(s.publish_ns as f64),
            Some(p) if p.published < s.published => {
                // Batch 0 came after the previous sample's batch.
                let c0 = c0.max(p.published + 1);
                let frac = (c0 - p.published) as f64 / (s.published - p.published) as f64;
                EpochStart::Known(p.publish_ns as f64 + frac * (s.publish_ns - p.publish_ns) as f64)
            }
            _ => EpochStart::Before {
                ns: s.publish_ns,
                batches: u64::from(s.batch_idx),
            },
        }
    }

    fn push(&mut self, p: Point) {
        // Thin: a point closer than min_spacing to the previous one
        // replaces it, so POINTS always cover the window.
        if self.len >= 2 {
            let before_last = self.at(self.len - 2);
            if p.ns.saturating_sub(before_last.ns) < self.min_spacing_ns {
                let i = (self.head + self.len - 1) % POINTS;
                self.points[i] = p;
                self.trim(p.ns);
                return;
            }
        }
        if self.len == POINTS {
            self.head = (self.head + 1) % POINTS;
            self.len -= 1;
        }
        self.points[(self.head + self.len) % POINTS] = p;
        self.len += 1;
        self.trim(p.ns);
    }

    /// Drops points older than the one that opens the window.
    fn trim(&mut self, newest_ns: u64) {
        let start = newest_ns.saturating_sub(self.window_ns);
        while self.len >= 2 && self.at(1).ns <= start {
            self.head = (self.head + 1) % POINTS;
            self.len -= 1;
        }
    }

    fn at(&self, i: usize) -> Point {
        self.points[(self.head + i) % POINTS]
    }

    /// Batches per second over the window, on the trainer's clock.
    fn window_rate(&self) -> Option<f64> {
        if self.len < 2 {
            return None;
        }
        rate(self.at(0), self.at(self.len - 1))
    }

    /// The figures at `now_ns` (the caller's clock, as given to
    /// [`observe`](Self::observe)) for a run of `totals`.
    pub fn performance(&self, now_ns: u64, totals: RunTotals) -> Performance {
        let Some(newest) = self.newest else {
            return Performance::default();
        };
        let window_rate = self.window_rate();
        let stalled = now_ns.saturating_sub(self.advanced_at_ns) > self.window_ns;
        let newest_point = Point {
            published: newest.published,
            ns: newest.publish_ns,
        };
        let average = self.first.and_then(|f| rate(f, newest_point));
        let epoch_start = match self.epoch_start {
            Some(EpochStart::Known(ns)) => Some(ns),
            Some(EpochStart::Before { ns, batches }) => window_rate
                .or(average)
                .map(|r| ns as f64 - batches as f64 / r * 1e9),
            None => None,
        };
        let eta = match (window_rate, totals) {
            (
                Some(r),
                RunTotals {
                    total_epochs: e,
                    batches_per_epoch: b,
                },
            ) if e > 0 && b > 0 => {
                let total = u64::from(e) * u64::from(b);
                let done = u64::from(newest.epoch) * u64::from(b) + u64::from(newest.batch_idx) + 1;
                Some(total.saturating_sub(done) as f64 / r)
            }
            _ => None,
        };
        Performance {
            time_per_batch_ms: window_rate.map(|r| (1000.0 / r) as f32),
            epoch_time_sec: epoch_start
                .map(|s| ((newest.publish_ns as f64 - s) / 1e9).max(0.0) as f32),
            eta_sec: eta.map(|s| s as f32),
            current_fps: if stalled {
                Some(0.0)
            } else {
                window_rate.map(|r| r as f32)
            },
            average_fps: average.map(|r| r as f32),
            batches_published: Some(newest.published),
        }
    }
}

fn rate(from: Point, to: Point) -> Option<f64> {
    let dt = to.ns.checked_sub(from.ns).filter(|&d| d > 0)?;
    Some((to.published - from.published) as f64 * 1e9 / dt as f64)
}

/// Seed fields of PerformanceData, in field order, as `unavailable` names
/// them.
const TIME_PER_BATCH: &str = "time_per_batch_ms";
const EPOCH_TIME: &str = "total_time_for_epoch_sec";
const ETA: &str = "estimated_time_remaining_sec";
const CURRENT_FPS: &str = "current_fps";
const AVERAGE_FPS: &str = "average_fps";

/// The names `PerformanceData.unavailable` may carry.
pub const PERFORMANCE_FIELDS: [&str; 5] =
    [TIME_PER_BATCH, EPOCH_TIME, ETA, CURRENT_FPS, AVERAGE_FPS];

impl Performance {
    /// The wire form: absent seed fields are 0 and named in `unavailable`.
    pub fn to_proto(
        &self,
        timestamp_ms: u64,
        resources: Option<proto::ResourceUsage>,
    ) -> proto::PerformanceData {
        let mut unavailable = Vec::new();
        let mut put = |name: &'static str, v: Option<f32>| {
            v.unwrap_or_else(|| {
                unavailable.push(name.to_string());
                0.0
            })
        };
        proto::PerformanceData {
            time_per_batch_ms: put(TIME_PER_BATCH, self.time_per_batch_ms),
            total_time_for_epoch_sec: put(EPOCH_TIME, self.epoch_time_sec),
            estimated_time_remaining_sec: put(ETA, self.eta_sec),
            current_fps: put(CURRENT_FPS, self.current_fps),
            average_fps: put(AVERAGE_FPS, self.average_fps),
            resource_usage: resources,
            timestamp_ms,
            unavailable,
            batches_published: self.batches_published,
        }
    }
}

impl From<&proto::PerformanceData> for Performance {
    /// Reads a PerformanceData back, absence included; a seed peer's
    /// message (no `unavailable`) has every seed field present.
    fn from(p: &proto::PerformanceData) -> Self {
        let get = |name: &str, v: f32| (!p.unavailable.iter().any(|u| u == name)).then_some(v);
        Performance {
            time_per_batch_ms: get(TIME_PER_BATCH, p.time_per_batch_ms),
            epoch_time_sec: get(EPOCH_TIME, p.total_time_for_epoch_sec),
            eta_sec: get(ETA, p.estimated_time_remaining_sec),
            current_fps: get(CURRENT_FPS, p.current_fps),
            average_fps: get(AVERAGE_FPS, p.average_fps),
            batches_published: p.batches_published,
        }
    }
}
