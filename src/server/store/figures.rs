//! What a runs table shows beside each run's summary row: the keys it has
//! logged, the last `train/loss`, the last FPS, and the best value of a
//! chosen named metric. Read for a page of runs at a time from the
//! per-64-step rollups (min, max and last of each bucket), so a run of a
//! million points costs its ~16,000 rollup rows, never its points.
//!
//! The SQL is the same for both backends but for the placeholders
//! ([`Dialect`]); each backend runs [`series_sql`] and [`fps_sql`] and
//! hands the rows to [`assemble`].

use serde::Serialize;

use super::{Dialect, SqlParam};

/// The key every batch's loss is logged under (the writer's `LOSS_KEY`).
pub const LOSS_KEY: &str = crate::shm::LOSS_KEY;

/// Whether a metric is better small or large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    Min,
    Max,
}

impl Goal {
    /// What a name says: losses, errors, distances and times are better
    /// small; anything else (accuracy, F1, mAP, reward) large.
    pub fn for_key(key: &str) -> Goal {
        const SMALL: [&str; 12] = [
            "loss",
            "err",
            "perplexity",
            "ppl",
            "mse",
            "mae",
            "rmse",
            "wer",
            "cer",
            "time",
            "latency",
            "dist",
        ];
        let k = key.to_ascii_lowercase();
        if SMALL.iter().any(|s| k.contains(s)) {
            Goal::Min
        } else {
            Goal::Max
        }
    }

    pub fn parse(s: &str) -> Option<Goal> {
        match s {
            "min" => Some(Goal::Min),
            "max" => Some(Goal::Max),
            _ => None,
        }
    }
}

/// One series' smallest, largest and last (highest step) value; `None`
/// while it has no point.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SeriesFigures {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub last: Option<f64>,
}

/// One run's figures, as [`super::Store::figures`] returns them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunFigures {
    pub run: String,
    /// Every key the run has a series for, sorted.
    pub keys: Vec<String>,
    /// The figures of each asked key the run has.
    pub series: Vec<(String, SeriesFigures)>,
    /// The newest measured FPS.
    pub fps: Option<f64>,
}

impl RunFigures {
    pub fn of(&self, key: &str) -> Option<SeriesFigures> {
        self.series.iter().find(|(k, _)| k == key).map(|(_, f)| *f)
    }
}

fn list(d: &Dialect, from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| (d.placeholder)(i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every series of `runs` runs as (run, key, min, max, last); the three
/// figures only for the `keys` keys (NULL for the rest). Parameters: the
/// keys, then the runs ([`params`]).
pub fn series_sql(d: &Dialect, keys: usize, runs: usize) -> String {
    let k = list(d, 1, keys.max(1));
    let r = list(d, keys.max(1) + 1, runs);
    format!(
        "SELECT s.run, s.key,
           CASE WHEN s.key IN ({k}) THEN (SELECT min(r.mn) FROM rollups r WHERE r.series = s.id) END,
           CASE WHEN s.key IN ({k}) THEN (SELECT max(r.mx) FROM rollups r WHERE r.series = s.id) END,
           CASE WHEN s.key IN ({k}) THEN (SELECT r.last_value FROM rollups r WHERE r.series = s.id
                                          ORDER BY r.bucket DESC LIMIT 1) END
         FROM series s WHERE s.run IN ({r}) ORDER BY s.run, s.key"
    )
}

/// Each of `runs` runs as (id, newest FPS). Parameters: the runs.
pub fn fps_sql(d: &Dialect, runs: usize) -> String {
    let r = list(d, 1, runs);
    format!(
        "SELECT u.id, (SELECT p.fps FROM perf p WHERE p.run = u.id AND p.fps IS NOT NULL
                       ORDER BY p.wall_ms DESC LIMIT 1)
         FROM runs u WHERE u.id IN ({r})"
    )
}

/// [`series_sql`]'s parameters: the keys (one that matches nothing when
/// there are none), then the runs.
pub fn params(keys: &[&str], runs: &[String]) -> Vec<SqlParam> {
    let mut p: Vec<SqlParam> = keys.iter().map(|k| SqlParam::Text(k.to_string())).collect();
    if p.is_empty() {
        p.push(SqlParam::Text(String::new()));
    }
    p.extend(runs.iter().map(|r| SqlParam::Text(r.clone())));
    p
}

/// One row of [`series_sql`].
pub type SeriesRow = (String, String, Option<f64>, Option<f64>, Option<f64>);

/// The figures of `runs`, in their order, from the rows of the two queries.
pub fn assemble(
    runs: &[String],
    keys: &[&str],
    series: Vec<SeriesRow>,
    fps: Vec<(String, Option<f64>)>,
) -> Vec<RunFigures> {
    let mut out: Vec<RunFigures> = runs
        .iter()
        .map(|r| RunFigures {
            run: r.clone(),
            ..Default::default()
        })
        .collect();
    let at = |out: &[RunFigures], run: &str| out.iter().position(|f| f.run == run);
    for (run, key, min, max, last) in series {
        let Some(i) = at(&out, &run) else {
            continue;
        };
        if keys.contains(&key.as_str()) {
            out[i]
                .series
                .push((key.clone(), SeriesFigures { min, max, last }));
        }
        out[i].keys.push(key);
    }
    for (run, f) in fps {
        if let Some(i) = at(&out, &run) {
            out[i].fps = f;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_follow_the_name() {
        for k in [
            "train/loss",
            "val/Loss",
            "val/top1_err",
            "eval/wer",
            "step_time_ms",
        ] {
            assert_eq!(Goal::for_key(k), Goal::Min, "{k}");
        }
        for k in ["val/acc", "val/f1", "map50", "reward"] {
            assert_eq!(Goal::for_key(k), Goal::Max, "{k}");
        }
    }

    #[test]
    fn placeholders_number_keys_then_runs() {
        let d = Dialect {
            placeholder: |n| format!("${n}"),
            position: "strpos",
        };
        let sql = series_sql(&d, 2, 3);
        assert!(sql.contains("IN ($1, $2)"), "{sql}");
        assert!(sql.contains("IN ($3, $4, $5)"), "{sql}");
        assert!(series_sql(&d, 0, 1).contains("IN ($2)"));
        assert_eq!(params(&[], &["a".into()]).len(), 2);
    }
}
