//! Points packed in chunks: the SQLite backend keeps a series' points as
//! rows of up to a few dozen points each, one rollup's steps
//! ([`ROLLUP`]) per row at most, instead of a row per point.
//!
//! Why (profiled, docs/store.md): with a fleet of trainers the SQLite
//! writer spent half its time in B-tree inserts, one per point, and half
//! rewriting one page per series per commit. A chunk row carries what one
//! commit adds to one series' rollup, so a commit inserts a row per series
//! it touches, not a row per point, and the page it rewrites holds the
//! whole series' recent history.
//!
//! A chunk row is keyed (series, bucket, seq of its first point); its
//! points are in (step, seq) order, each encoded as
//! - the step's offset in the bucket, one byte (0..[`ROLLUP`]),
//! - the seq as a zigzag varint delta from the previous point's (the first
//!   one's from the row's key),
//! - the wall-clock ms as a zigzag varint delta from the previous point's
//!   (the first one's from 0),
//! - the value, 8 bytes little-endian.
//!
//! A row stops growing at [`CHUNK_BYTES`] so it stays on its B-tree page:
//! SQLite moves a WITHOUT ROWID row's payload past ~1,000 bytes (4 KiB
//! pages) to an overflow page of its own.

use super::rollup::{rollup_of, ROLLUP};
use super::{Result, StoreError};

/// The most bytes of points in one row (a point is 11 to 28 bytes).
pub const CHUNK_BYTES: usize = 900;

/// One stored point of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Packed {
    pub step: i64,
    pub seq: i64,
    pub wall_ms: i64,
    pub value: f64,
}

/// One chunk row to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRow {
    pub bucket: i64,
    pub seq: i64,
    pub data: Vec<u8>,
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Packs one series' points into rows: sorted by (step, seq), split by
/// rollup and by [`CHUNK_BYTES`].
pub fn pack(points: &mut [Packed]) -> Vec<ChunkRow> {
    sort(points);
    let mut rows: Vec<ChunkRow> = Vec::new();
    let (mut prev_seq, mut prev_wall) = (0i64, 0i64);
    for p in points.iter() {
        let bucket = rollup_of(p.step);
        let fits = rows
            .last()
            .is_some_and(|r| r.bucket == bucket && r.data.len() < CHUNK_BYTES);
        if !fits {
            rows.push(ChunkRow {
                bucket,
                seq: p.seq,
                data: Vec::with_capacity(CHUNK_BYTES + 28),
            });
            (prev_seq, prev_wall) = (p.seq, 0);
        }
        let row = rows.last_mut().expect("a row was pushed above");
        row.data.push((p.step - bucket * ROLLUP) as u8);
        put_varint(&mut row.data, zigzag(p.seq.wrapping_sub(prev_seq)));
        put_varint(&mut row.data, zigzag(p.wall_ms.wrapping_sub(prev_wall)));
        row.data.extend_from_slice(&p.value.to_le_bytes());
        (prev_seq, prev_wall) = (p.seq, p.wall_ms);
    }
    rows
}

/// In (step, seq) order, as every read returns points.
pub fn sort(points: &mut [Packed]) {
    points.sort_by_key(|p| (p.step, p.seq));
}

fn corrupt(bucket: i64, seq: i64, why: &str) -> StoreError {
    StoreError::Corrupt {
        what: "point chunk",
        value: format!("bucket {bucket}, first seq {seq}: {why}"),
    }
}

/// Appends the points of one row to `out`, in the row's (step, seq) order.
pub fn unpack(bucket: i64, seq: i64, data: &[u8], out: &mut Vec<Packed>) -> Result<()> {
    let mut at = 0usize;
    let varint = |at: &mut usize| -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *data
                .get(*at)
                .ok_or_else(|| corrupt(bucket, seq, "ends inside a number"))?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(corrupt(bucket, seq, "a number longer than 10 bytes"))
    };
    let base = bucket
        .checked_mul(ROLLUP)
        .ok_or_else(|| corrupt(bucket, seq, "bucket out of range"))?;
    let (mut prev_seq, mut prev_wall) = (seq, 0i64);
    while at < data.len() {
        let offset = i64::from(data[at]);
        at += 1;
        if offset >= ROLLUP {
            return Err(corrupt(bucket, seq, &format!("step offset {offset}")));
        }
        prev_seq = prev_seq.wrapping_add(unzigzag(varint(&mut at)?));
        prev_wall = prev_wall.wrapping_add(unzigzag(varint(&mut at)?));
        let bytes: [u8; 8] = data
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt(bucket, seq, "ends inside a value"))?;
        at += 8;
        out.push(Packed {
            step: base + offset,
            seq: prev_seq,
            wall_ms: prev_wall,
            value: f64::from_le_bytes(bytes),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(step: i64, seq: i64, wall_ms: i64, value: f64) -> Packed {
        Packed {
            step,
            seq,
            wall_ms,
            value,
        }
    }

    #[test]
    fn points_come_back_exactly_in_step_then_seq_order() {
        let mut pts = vec![
            p(65, 9, 1_700_000_000_900, -0.0),
            p(3, 2, 1_700_000_000_000, 0.5),
            p(-1, 7, -5, f64::MAX),
            p(3, 1, 1_700_000_000_001, 1e-300),
            p(i64::MAX, i64::MAX, i64::MIN, 2.0),
            p(i64::MIN, 0, i64::MAX, -2.0),
        ];
        let rows = pack(&mut pts);
        let buckets: Vec<i64> = rows.iter().map(|r| r.bucket).collect();
        assert_eq!(
            buckets,
            vec![rollup_of(i64::MIN), -1, 0, 1, rollup_of(i64::MAX)]
        );
        let mut back = Vec::new();
        for r in &rows {
            unpack(r.bucket, r.seq, &r.data, &mut back).unwrap();
        }
        assert_eq!(back, pts, "sorted by pack, unchanged by the trip");
        assert_eq!(back[2].seq, 1, "ties on step ordered by seq");
    }

    #[test]
    fn a_full_rollup_splits_into_rows_that_stay_on_their_page() {
        // 64 steps logged 3 times with scattered walls: too many bytes for
        // one row.
        let mut pts: Vec<Packed> = (0..192)
            .map(|i| p(i % 64, i * 1_000_003, i * 7_777_777, i as f64))
            .collect();
        let rows = pack(&mut pts);
        assert!(rows.len() > 1, "{} rows", rows.len());
        assert!(rows.iter().all(|r| r.bucket == 0));
        assert!(rows.iter().all(|r| r.data.len() < CHUNK_BYTES + 28));
        let mut back = Vec::new();
        for r in &rows {
            unpack(r.bucket, r.seq, &r.data, &mut back).unwrap();
        }
        assert_eq!(back.len(), 192);
        // Steady training: a point of 11 or 12 bytes.
        let mut steady: Vec<Packed> = (0..64).map(|i| p(i, i + 1, 1000 + i * 16, 0.1)).collect();
        let rows = pack(&mut steady);
        assert_eq!(rows.len(), 1);
        assert!(
            rows[0].data.len() <= 64 * 12,
            "{} bytes",
            rows[0].data.len()
        );
    }

    #[test]
    fn a_damaged_row_is_an_error_naming_it() {
        let mut pts = vec![p(5, 1, 10, 1.0), p(6, 2, 11, 2.0)];
        let rows = pack(&mut pts);
        let mut out = Vec::new();
        let cut = &rows[0].data[..rows[0].data.len() - 3];
        let e = unpack(0, 1, cut, &mut out).unwrap_err().to_string();
        assert!(
            e.contains("point chunk") && e.contains("ends inside a value"),
            "{e}"
        );
        let e = unpack(0, 1, &[64, 0, 0], &mut out).unwrap_err().to_string();
        assert!(e.contains("step offset 64"), "{e}");
        let e = unpack(0, 1, &[1, 0xff, 0xff], &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ends inside a number"), "{e}");
    }
}
