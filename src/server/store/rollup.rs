//! Downsampling a series of any length in a few milliseconds: each series
//! keeps a rollup of every [`ROLLUP`] steps (min, max, count and the last
//! point), kept in the transaction that stores the points. A query whose
//! buckets are at least [`ROLLUP`] steps wide reads rollups, [`ROLLUP`]
//! times fewer rows than points, plus the raw points of the two partial
//! rollups at its edges; a narrower one reads the raw points of its range
//! in one scan. Both backends only read rows; the bucketing is here, once.
//!
//! Bucketing the rollups gives exactly what bucketing the points would:
//! output buckets are whole multiples of [`ROLLUP`] steps aligned on a
//! multiple of it, so every rollup falls inside one bucket, and the min,
//! max, count and last of a union are those of its parts.

use std::collections::HashMap;

use super::group::PointGroup;
use super::{bucket_width, Bucket};

/// Steps per rollup row. 64: a 1,000,000-step series is 15,625 rows, and
/// the widest raw scan (a zoom just under 64 steps a bucket) is 64 points
/// per output bucket.
pub const ROLLUP: i64 = 64;

/// The rollup a step belongs to.
pub fn rollup_of(step: i64) -> i64 {
    step.div_euclid(ROLLUP)
}

/// One series' points in one rollup (`bucket` = `step.div_euclid(ROLLUP)`),
/// or one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollup {
    pub bucket: i64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
    pub last_step: i64,
    pub last_seq: i64,
    pub last_wall: i64,
    pub last_value: f64,
}

impl Rollup {
    pub fn point(step: i64, seq: i64, wall_ms: i64, value: f64) -> Rollup {
        Rollup {
            bucket: rollup_of(step),
            min: value,
            max: value,
            count: 1,
            last_step: step,
            last_seq: seq,
            last_wall: wall_ms,
            last_value: value,
        }
    }

    /// Folds `other` in: the last point is the one with the greatest
    /// (step, seq), as a query at full resolution orders them.
    pub fn merge(&mut self, other: &Rollup) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count += other.count;
        if (other.last_step, other.last_seq) > (self.last_step, self.last_seq) {
            self.last_step = other.last_step;
            self.last_seq = other.last_seq;
            self.last_wall = other.last_wall;
            self.last_value = other.last_value;
        }
    }
}

/// What a group's points add to the rollups: one row per (series pair,
/// rollup), the pair an index into [`PointGroup::series`].
pub fn of_group(g: &PointGroup) -> Vec<(usize, Rollup)> {
    let mut by: HashMap<(usize, i64), Rollup> = HashMap::new();
    for i in 0..g.point_count() {
        let r = Rollup::point(g.step[i], g.seq[i], g.wall[i], g.value[i]);
        by.entry((g.pair[i], r.bucket))
            .and_modify(|have| have.merge(&r))
            .or_insert(r);
    }
    by.into_iter().map(|((pair, _), r)| (pair, r)).collect()
}

/// How to read one series whose points in the query's range run from step
/// `lo` to step `hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Every point of `lo..=hi`, into buckets of `width` steps from `lo`.
    Raw { width: i64 },
    /// Raw points of `lo..=head_to`, rollups `first..=last`, raw points of
    /// `tail_from..=hi`, into buckets of `width` (a multiple of
    /// [`ROLLUP`]) from `origin` (a multiple of it too).
    Rolled {
        origin: i64,
        width: i64,
        head_to: Option<i64>,
        first: i64,
        last: i64,
        tail_from: Option<i64>,
    },
}

/// One read a plan asks of a backend; [`Plan::reads`] lists them in step
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The raw points of steps `from..=to`, ordered by (step, seq).
    Points { from: i64, to: i64 },
    /// The rollup rows `first..=last`, ordered by bucket.
    Rollups { first: i64, last: i64 },
}

impl Plan {
    /// What to read, in step order, for points running from `lo` to `hi`.
    pub fn reads(&self, lo: i64, hi: i64) -> Vec<Read> {
        match *self {
            Plan::Raw { .. } => vec![Read::Points { from: lo, to: hi }],
            Plan::Rolled {
                head_to,
                first,
                last,
                tail_from,
                ..
            } => head_to
                .map(|to| Read::Points { from: lo, to })
                .into_iter()
                .chain([Read::Rollups { first, last }])
                .chain(tail_from.map(|from| Read::Points { from, to: hi }))
                .collect(),
        }
    }
}

/// The plan for at most `n` buckets over the points of `from..=to`, the
/// first of which is at `lo` and the last at `hi`.
pub fn plan(from: i64, to: i64, lo: i64, hi: i64, n: usize) -> Plan {
    let width = bucket_width(lo, hi, n);
    if width < ROLLUP {
        return Plan::Raw { width };
    }
    // A rollup is whole inside the range only if none of its steps lies
    // outside `from..=to` (the rollups at the edges may hold points
    // before `from` or after `to`).
    let (kl, kh) = (rollup_of(lo), rollup_of(hi));
    let first = if from <= kl * ROLLUP { kl } else { kl + 1 };
    let last = if to >= (kh * ROLLUP).saturating_add(ROLLUP - 1) {
        kh
    } else {
        kh - 1
    };
    if first > last {
        return Plan::Raw { width };
    }
    let origin = kl * ROLLUP;
    let span = hi - origin + 1;
    let n = n.max(1) as i64;
    let width = ((span + n - 1) / n + ROLLUP - 1) / ROLLUP * ROLLUP;
    let head_to = (first * ROLLUP > lo).then(|| first * ROLLUP - 1);
    let tail_from = ((last + 1) * ROLLUP <= hi).then(|| (last + 1) * ROLLUP);
    Plan::Rolled {
        origin,
        width,
        head_to,
        first,
        last,
        tail_from,
    }
}

/// Folds points and rollups, in step order, into output buckets of
/// `width` steps from `origin`.
pub struct Bucketer {
    origin: i64,
    width: i64,
    current: Option<(i64, Rollup)>,
    out: Vec<Bucket>,
}

impl Bucketer {
    pub fn new(origin: i64, width: i64) -> Bucketer {
        Bucketer {
            origin,
            width: width.max(1),
            current: None,
            out: Vec::new(),
        }
    }

    /// For [`Plan::Raw`] (from `lo`) and [`Plan::Rolled`] (from `origin`).
    pub fn for_plan(plan: &Plan, lo: i64) -> Bucketer {
        match *plan {
            Plan::Raw { width } => Bucketer::new(lo, width),
            Plan::Rolled { origin, width, .. } => Bucketer::new(origin, width),
        }
    }

    fn index(&self, step: i64) -> i64 {
        (step - self.origin).div_euclid(self.width)
    }

    /// A raw point.
    pub fn point(&mut self, step: i64, seq: i64, wall_ms: i64, value: f64) {
        self.add(step, Rollup::point(step, seq, wall_ms, value));
    }

    /// A rollup row: all its steps fall in one output bucket.
    pub fn rollup(&mut self, r: Rollup) {
        self.add(r.bucket * ROLLUP, r);
    }

    fn add(&mut self, step: i64, r: Rollup) {
        let i = self.index(step);
        match &mut self.current {
            Some((at, have)) if *at == i => have.merge(&r),
            _ => {
                if let Some((_, done)) = self.current.replace((i, r)) {
                    self.out.push(bucket(&done));
                }
            }
        }
    }

    pub fn finish(mut self) -> Vec<Bucket> {
        if let Some((_, done)) = self.current.take() {
            self.out.push(bucket(&done));
        }
        self.out
    }
}

fn bucket(r: &Rollup) -> Bucket {
    Bucket {
        step: r.last_step,
        wall_ms: r.last_wall,
        min: r.min,
        max: r.max,
        last: r.last_value,
        count: r.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets straight from the points, for comparison.
    fn brute(points: &[(i64, f64)], origin: i64, width: i64) -> Vec<Bucket> {
        let mut b = Bucketer::new(origin, width);
        for &(step, v) in points {
            b.point(step, step, step * 10, v);
        }
        b.finish()
    }

    fn series(lo: i64, hi: i64) -> Vec<(i64, f64)> {
        (lo..=hi)
            .map(|s| (s, ((s * 7919) % 1009) as f64 - 500.0))
            .collect()
    }

    /// Reads as a backend would, following the plan (a point's seq is its
    /// step here).
    fn planned(points: &[(i64, f64)], from: i64, to: i64, n: usize) -> (Plan, Vec<Bucket>) {
        let inside: Vec<(i64, f64)> = points
            .iter()
            .copied()
            .filter(|(s, _)| (from..=to).contains(s))
            .collect();
        let (lo, hi) = (inside[0].0, inside.last().unwrap().0);
        let p = plan(from, to, lo, hi, n);
        let mut rollups: std::collections::BTreeMap<i64, Rollup> = Default::default();
        for &(s, v) in points {
            let r = Rollup::point(s, s, s * 10, v);
            rollups
                .entry(r.bucket)
                .and_modify(|h| h.merge(&r))
                .or_insert(r);
        }
        let mut b = Bucketer::for_plan(&p, lo);
        let raw = |b: &mut Bucketer, a: i64, z: i64| {
            for &(s, v) in &inside {
                if (a..=z).contains(&s) {
                    b.point(s, s, s * 10, v);
                }
            }
        };
        for read in p.reads(lo, hi) {
            match read {
                Read::Points { from, to } => raw(&mut b, from, to),
                Read::Rollups { first, last } => {
                    for r in rollups.range(first..=last).map(|(_, r)| *r) {
                        b.rollup(r);
                    }
                }
            }
        }
        (p, b.finish())
    }

    #[test]
    fn rollups_bucket_exactly_as_the_points_do() {
        let points = series(-1000, 100_000);
        for (from, to, n) in [
            (i64::MIN, i64::MAX, 1000),
            (i64::MIN, i64::MAX, 7),
            (37, 99_001, 500),
            (-999, 5, 3),
            (1, 64 * 300 - 1, 100),
            (64 * 10, 64 * 900, 200),
        ] {
            let (p, got) = planned(&points, from, to, n);
            assert!(matches!(p, Plan::Rolled { .. }), "{from}..{to}: {p:?}");
            assert!(got.len() <= n, "{} buckets for {n}", got.len());
            let Plan::Rolled { origin, width, .. } = p else {
                unreachable!()
            };
            let inside: Vec<(i64, f64)> = points
                .iter()
                .copied()
                .filter(|(s, _)| (from..=to).contains(s))
                .collect();
            // The same buckets as from the points.
            assert_eq!(got, brute(&inside, origin, width), "{from}..{to} n={n}");
            assert_eq!(
                got.iter().map(|b| b.count).sum::<u64>(),
                inside.len() as u64
            );
        }
    }

    #[test]
    fn narrow_buckets_read_the_points() {
        let points = series(0, 10_000);
        let (p, got) = planned(&points, 100, 5000, 1000);
        assert_eq!(p, Plan::Raw { width: 5 });
        let inside: Vec<(i64, f64)> = points[100..=5000].to_vec();
        assert_eq!(got, brute(&inside, 100, 5));
        // Ties on step are ordered by seq: the later one is the last.
        let mut b = Bucketer::new(0, 100);
        b.point(3, 1, 0, 1.0);
        b.point(3, 2, 0, 2.0);
        assert_eq!(b.finish()[0].last, 2.0);
    }

    #[test]
    fn a_group_adds_one_rollup_per_series_and_step_range() {
        let mut g = PointGroup::default();
        let pts = |step: i64| {
            vec![
                super::super::Point {
                    key: "a".into(),
                    step,
                    wall_ms: step,
                    value: step as f64,
                },
                super::super::Point {
                    key: "b".into(),
                    step,
                    wall_ms: step,
                    value: -(step as f64),
                },
            ]
        };
        g.add("r", 0, 1, pts(1)).unwrap();
        g.add("r", 2, 3, pts(63)).unwrap();
        g.add("r", 4, 5, pts(64)).unwrap();
        let mut r = of_group(&g);
        r.sort_by_key(|(pair, r)| (*pair, r.bucket));
        assert_eq!(r.len(), 4);
        let (pair, a0) = r[0];
        assert_eq!(
            (pair, a0.bucket, a0.count, a0.min, a0.max),
            (0, 0, 2, 1.0, 63.0)
        );
        assert_eq!((a0.last_step, a0.last_value), (63, 63.0));
        assert_eq!((r[1].1.bucket, r[1].1.count), (1, 1));
    }
}
