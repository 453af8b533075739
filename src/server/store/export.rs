//! `GET /api/runs/{id}/export`: a run's points as CSV or NDJSON, encoded
//! chunk by chunk as the backend's [`PointStream`] yields them, so an
//! export of any size holds one chunk in memory.

use std::fmt::Write as _;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};

use super::{PointStream, Result, ScalarPoint, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Ndjson,
}

impl ExportFormat {
    pub fn parse(s: &str) -> Option<ExportFormat> {
        match s {
            "csv" => Some(ExportFormat::Csv),
            "ndjson" => Some(ExportFormat::Ndjson),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv",
            ExportFormat::Ndjson => "application/x-ndjson",
        }
    }
}

/// Points per body chunk: about 15 KB of text, small enough to hold,
/// large enough that a write per chunk costs little.
const CHUNK_POINTS: usize = 256;

/// Encodes `points` in `format`: a header line for CSV, then one line per
/// point.
pub fn encode(points: PointStream, format: ExportFormat) -> BoxStream<'static, Result<Bytes>> {
    let header = match format {
        ExportFormat::Csv => "run,key,step,wall_ms,value\n".to_string(),
        ExportFormat::Ndjson => String::new(),
    };
    let lines = points
        .ready_chunks(CHUNK_POINTS)
        .scan(Some(header), move |header, chunk| {
            let mut out = header.take().unwrap_or_default();
            for p in chunk {
                match p {
                    Ok(p) => line(&mut out, &p, format),
                    Err(e) => return futures_util::future::ready(Some(Err(e))),
                }
            }
            futures_util::future::ready(Some(Ok(Bytes::from(out))))
        });
    lines.boxed()
}

fn line(out: &mut String, p: &ScalarPoint, format: ExportFormat) {
    match format {
        ExportFormat::Csv => {
            csv_field(out, &p.run);
            out.push(',');
            csv_field(out, &p.key);
            let _ = writeln!(out, ",{},{},{}", p.step, p.wall_ms, p.value);
        }
        ExportFormat::Ndjson => {
            // A point serialises infallibly: strings and finite numbers.
            out.push_str(&serde_json::to_string(p).unwrap_or_default());
            out.push('\n');
        }
    }
}

/// Quotes a CSV field when it holds a comma, quote or line break.
fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// Collects a stream's error-free prefix; for tests and small tools.
/// The stream of points a backend's export task sends in chunks (`rx`),
/// point by point; an error ends it after the points before it.
pub fn points_from_chunks(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<ScalarPoint>>>,
) -> PointStream {
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .flat_map(|chunk| {
            let items: Vec<Result<ScalarPoint>> = match chunk {
                Ok(points) => points.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures_util::stream::iter(items)
        })
        .boxed()
}

pub async fn collect(mut points: PointStream) -> Result<Vec<ScalarPoint>, StoreError> {
    let mut v = Vec::new();
    while let Some(p) = points.next().await {
        v.push(p?);
    }
    Ok(v)
}
