//! A group's scalar points, gathered so a backend stores them in one pass:
//! one insert (a COPY on PostgreSQL) for every point of every run, the
//! series ids of all (run, key) pairs resolved together, and each run's
//! summary updated once.
//!
//! The writer's groups mix many sessions' small batches (a fleet of
//! trainers logging 10 scalars a frame sends thousands of 10-point writes
//! a second). Storing each write on its own cost a sequence lookup, a
//! series lookup per key, an insert statement (a whole COPY on
//! PostgreSQL) and a summary update per write; gathering them makes the
//! cost per point, not per write.
//!
//! Sequencing stays per write: [`PointGroup::add`] admits a write against
//! the run's last point number as the group has moved it so far (the
//! backend reads the stored one the first time a run appears), so a resend
//! inside one group is skipped exactly as across groups.

use std::collections::HashMap;

use super::{admit, Applied, Point, Result, SeqKind, Write};

/// foldhash's fast hasher, not SipHash: a fleet's group looks up a key for
/// every point, and these maps hold only what the writer itself gathers.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What a group did to one run's points.
#[derive(Debug, Clone, Copy)]
pub struct RunPoints {
    /// The last point number admitted (or passed by a gap).
    pub last_seq: u64,
    /// Points admitted in this group.
    pub stored: u64,
    pub max_step: i64,
    pub max_wall: i64,
}

/// Points of one group, column by column, each naming its (run, key) pair
/// by index into [`PointGroup::series`].
#[derive(Debug, Default)]
pub struct PointGroup {
    runs: FastMap<String, RunPoints>,
    /// The distinct (run, key) pairs, in first-seen order.
    pub series: Vec<(String, String)>,
    /// run → key → index into `series`.
    index: FastMap<String, FastMap<String, usize>>,
    pub pair: Vec<usize>,
    pub step: Vec<i64>,
    pub seq: Vec<i64>,
    pub wall: Vec<i64>,
    pub value: Vec<f64>,
}

impl PointGroup {
    /// The run's last point number as this group has left it, if the run
    /// has appeared in it.
    pub fn last_seq(&self, run: &str) -> Option<u64> {
        self.runs.get(run).map(|r| r.last_seq)
    }

    fn entry(&mut self, run: &str, stored_last: u64) -> &mut RunPoints {
        if !self.runs.contains_key(run) {
            self.runs.insert(
                run.to_string(),
                RunPoints {
                    last_seq: stored_last,
                    stored: 0,
                    max_step: i64::MIN,
                    max_wall: i64::MIN,
                },
            );
        }
        self.runs.get_mut(run).expect("inserted above")
    }

    /// Admits `points` numbered from `first_seq` against `last` (the run's
    /// last number: [`PointGroup::last_seq`], else the stored one) and
    /// gathers what is new. A gap is refused, naming both numbers.
    pub fn add(
        &mut self,
        run: &str,
        last: u64,
        first_seq: u64,
        points: Vec<Point>,
    ) -> Result<Applied> {
        let n = points.len() as u64;
        if n == 0 {
            return Ok(Applied::default());
        }
        let skip = admit(run, SeqKind::Point, last, first_seq, n)?;
        if skip == n {
            return Ok(Applied {
                stored: 0,
                skipped: n,
            });
        }
        let (mut max_step, mut max_wall) = (i64::MIN, i64::MIN);
        // The run's keys looked up once per write, each point's key once.
        if !self.index.contains_key(run) {
            self.index.insert(run.to_string(), FastMap::default());
        }
        let keys = self.index.get_mut(run).expect("inserted above");
        let fresh = (n - skip) as usize;
        self.pair.reserve(fresh);
        self.step.reserve(fresh);
        self.seq.reserve(fresh);
        self.wall.reserve(fresh);
        self.value.reserve(fresh);
        for (i, p) in points.into_iter().enumerate().skip(skip as usize) {
            let pair = match keys.get(p.key.as_str()) {
                Some(&i) => i,
                None => {
                    let i = self.series.len();
                    self.series.push((run.to_string(), p.key.clone()));
                    keys.insert(p.key, i);
                    i
                }
            };
            self.pair.push(pair);
            self.step.push(p.step);
            self.seq.push((first_seq + i as u64) as i64);
            self.wall.push(p.wall_ms);
            self.value.push(p.value);
            max_step = max_step.max(p.step);
            max_wall = max_wall.max(p.wall_ms);
        }
        let r = self.entry(run, last);
        r.last_seq = first_seq + n - 1;
        r.stored += n - skip;
        r.max_step = r.max_step.max(max_step);
        r.max_wall = r.max_wall.max(max_wall);
        Ok(Applied {
            stored: n - skip,
            skipped: skip,
        })
    }

    /// Gathers a point write ([`Write::is_point`]: points or a point gap)
    /// against `last`, the run's last point number ([`PointGroup::last_seq`],
    /// else the stored one).
    pub fn apply(&mut self, w: Write, last: u64) -> Result<Applied> {
        match w {
            Write::Points {
                run,
                first_seq,
                points,
            } => self.add(&run, last, first_seq, points),
            Write::Gap { run, through, .. } => {
                self.gap(&run, last, through);
                Ok(Applied {
                    stored: 1,
                    skipped: 0,
                })
            }
            _ => unreachable!("only point writes are gathered"),
        }
    }

    /// A point gap the agent reported: the run's number moves on to
    /// `through` (never back).
    pub fn gap(&mut self, run: &str, last: u64, through: u64) {
        let r = self.entry(run, last);
        r.last_seq = r.last_seq.max(through);
    }

    pub fn point_count(&self) -> usize {
        self.pair.len()
    }

    /// Nothing gathered: no point and no run touched.
    pub fn is_empty(&self) -> bool {
        self.pair.is_empty() && self.runs.is_empty()
    }

    /// Each run touched, with what the group did to it.
    pub fn runs(&self) -> impl Iterator<Item = (&str, &RunPoints)> {
        self.runs.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::StoreError;

    fn pts(keys: &[&str], step: i64) -> Vec<Point> {
        keys.iter()
            .map(|k| Point {
                key: k.to_string(),
                step,
                wall_ms: 1000 + step,
                value: step as f64,
            })
            .collect()
    }

    #[test]
    fn writes_in_one_group_are_sequenced_against_each_other() {
        let mut g = PointGroup::default();
        let a = g.add("r", 0, 1, pts(&["loss", "lr"], 1)).unwrap();
        assert_eq!((a.stored, a.skipped), (2, 0));
        assert_eq!(g.last_seq("r"), Some(2));
        // A resend of the first write inside the same group is skipped.
        let again = g.add("r", 2, 1, pts(&["loss", "lr"], 1)).unwrap();
        assert_eq!((again.stored, again.skipped), (0, 2));
        // An overlapping write keeps only what is new.
        let next = g.add("r", 2, 2, pts(&["lr", "loss"], 2)).unwrap();
        assert_eq!((next.stored, next.skipped), (1, 1));
        // A gap names both numbers.
        match g.add("r", 3, 9, pts(&["loss"], 3)) {
            Err(StoreError::SeqGap { seq, last, .. }) => assert_eq!((seq, last), (9, 3)),
            other => panic!("gap admitted: {other:?}"),
        }
        assert_eq!(g.point_count(), 3);
        assert_eq!(g.series.len(), 2, "pairs are gathered once");
        assert_eq!(g.seq, vec![1, 2, 3]);
        let (run, r) = g.runs().next().unwrap();
        assert_eq!((run, r.last_seq, r.stored, r.max_step), ("r", 3, 3, 2));
    }

    #[test]
    fn a_gap_moves_the_number_on_and_never_back() {
        let mut g = PointGroup::default();
        g.gap("r", 5, 20);
        assert_eq!(g.last_seq("r"), Some(20));
        g.gap("r", 20, 10);
        assert_eq!(g.last_seq("r"), Some(20));
        let a = g.add("r", 20, 21, pts(&["loss"], 7)).unwrap();
        assert_eq!(a.stored, 1);
        assert!(!g.is_empty());
    }
}
