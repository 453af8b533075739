//! `trainwatch inspect SEGMENT [--json] [--watch]`: a segment, human- or
//! machine-readable. Opens read-only and writes nothing into the segment.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::reader::{Event, EventRead, Frame, FrameRead, HeaderInfo, Reader};
use super::{CommandKind, ShmError, IDLE_AFTER_NS};

/// Pending events listed at most.
const MAX_EVENTS_SHOWN: usize = 20;

/// What to inspect and how; the command line (`trainwatch inspect`, in
/// `cli`) fills it in.
#[derive(Debug, Clone)]
pub struct Options {
    pub segment: PathBuf,
    /// JSON, one object per line with `watch`.
    pub json: bool,
    /// Print again every `interval` until interrupted.
    pub watch: bool,
    pub interval: Duration,
    /// Stop `watch` after this many reports (tests, scripts).
    pub iterations: Option<u64>,
}

/// Prints reports until done; an unreadable segment ends it with the
/// error, which the command line maps to an exit code.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<(), ShmError> {
    let mut done = 0u64;
    loop {
        // Reopened every time: a trainer restart replaces the file.
        let r = Reader::open_read_only(&opts.segment)?;
        let text = if opts.json {
            report_json(&r).to_string()
        } else {
            report_text(&r)
        };
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            return Ok(()); // stdout closed (a pager quit): not an error
        }
        done += 1;
        if !opts.watch || opts.iterations.is_some_and(|n| done >= n) {
            return Ok(());
        }
        std::thread::sleep(opts.interval);
    }
}

fn event_json(e: &Result<EventRead, ShmError>) -> Value {
    match e {
        Ok(EventRead::Event {
            seq,
            timestamp_unix_ns,
            event,
        }) => match event {
            Event::Epoch {
                epoch,
                average_loss,
                average_accuracy,
                metrics,
            } => json!({
                "seq": seq, "timestamp_unix_ns": timestamp_unix_ns, "kind": "epoch",
                "epoch": epoch, "average_loss": average_loss, "average_accuracy": average_accuracy,
                "metrics": metrics.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            }),
            Event::Status { status, message } => json!({
                "seq": seq, "timestamp_unix_ns": timestamp_unix_ns, "kind": "status",
                "status": status.name(), "message": message,
            }),
        },
        Ok(EventRead::Missed { first, count }) => {
            json!({"kind": "missed", "first": first, "count": count})
        }
        Err(e) => json!({"kind": "error", "error": e.to_string()}),
    }
}

fn frame_json(f: &Frame) -> Value {
    json!({
        "frame_no": f.frame_no,
        "epoch": f.epoch,
        "batch_idx": f.batch_idx,
        "loss": f.loss,
        "timestamp_unix_ns": f.timestamp_unix_ns,
        "predictions": f.predictions(),
        "confidences": f.confidences(),
        "labels": f.labels(),
        "images": f.images.map(|d| json!({
            "count": d.count, "dtype": d.dtype.name(), "layout": d.layout.name(),
            "channels": d.channels, "height": d.height, "width": d.width,
            "mean": d.normalization.map(|n| n.mean), "std": d.normalization.map(|n| n.std),
            "bytes": d.total_bytes(),
        })),
    })
}

pub fn report_json(r: &Reader) -> Value {
    let c = r.config();
    let mut frame = Frame::default();
    let newest = match r.peek_frame(&mut frame) {
        Ok(FrameRead::New) => frame_json(&frame),
        Ok(_) => Value::Null,
        Err(e) => json!({"error": e.to_string()}),
    };
    let (written, applied) = r.control_positions();
    json!({
        "segment": r.path().display().to_string(),
        "writer_state": r.writer_state(IDLE_AFTER_NS),
        "header": r.header(),
        "config": {
            "run_name": c.run_name, "model_name": c.model_name, "dataset_name": c.dataset_name,
            "total_epochs": c.total_epochs, "batches_per_epoch": c.batches_per_epoch,
            "batch_size": c.batch_size, "class_names": c.class_names,
        },
        "progress": r.progress(),
        "newest_frame": newest,
        "pending_events": r.pending_events(MAX_EVENTS_SHOWN).iter().map(event_json).collect::<Vec<_>>(),
        "control": {"written": written, "applied": applied, "pending": written.saturating_sub(applied)},
        "points": points_json(r),
    })
}

/// The points ring's positions and key table (format 2; null for 1).
fn points_json(r: &Reader) -> Value {
    if r.point_slots() == 0 {
        return Value::Null;
    }
    let (acked, _, written) = r.point_positions();
    let (keys, key_capacity) = r.keys_published();
    json!({
        "written": written, "acknowledged": acked, "slots": r.point_slots(),
        "keys": keys, "key_capacity": key_capacity,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

pub fn report_text(r: &Reader) -> String {
    let h = r.header();
    let c = r.config();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "segment  {} (format v{}, {})",
        r.path().display(),
        h.version,
        mib(h.total_size)
    );
    let state = match r.writer_state(IDLE_AFTER_NS) {
        super::WriterState::Live => "live".to_string(),
        super::WriterState::Idle { idle_ms } => format!("idle for {idle_ms} ms"),
        super::WriterState::Closed => "closed".to_string(),
        super::WriterState::Dead => "dead (process gone without closing)".to_string(),
    };
    let _ = writeln!(
        s,
        "writer   pid {}, started unix {}.{:03}, {}",
        h.writer_pid,
        h.writer_start_unix_ns / 1_000_000_000,
        h.writer_start_unix_ns / 1_000_000 % 1000,
        state
    );
    text_config(&mut s, c);
    text_frames(&mut s, r, &h);
    text_events(&mut s, r, &h);
    if r.point_slots() != 0 {
        let (acked, _, written) = r.point_positions();
        let (keys, cap) = r.keys_published();
        let _ = writeln!(
            s,
            "points   {written} logged, {acked} acknowledged, {} slots; {keys} of {cap} keys named",
            r.point_slots()
        );
    }
    text_reader(&mut s, &h);
    s
}

fn text_config(s: &mut String, c: &super::RunConfig) {
    let mut classes = c
        .class_names
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if c.class_names.len() > 10 {
        classes.push_str(", ...");
    }
    let _ = writeln!(
        s,
        "config   run {}, model {}, dataset {}, {} epochs x {} batches of {}, {} classes [{}]",
        c.run_name,
        c.model_name,
        c.dataset_name,
        c.total_epochs,
        c.batches_per_epoch,
        c.batch_size,
        c.class_names.len(),
        classes
    );
}

fn text_frames(s: &mut String, r: &Reader, h: &HeaderInfo) {
    let _ = writeln!(
        s,
        "frames   {} published, {} batches seen, {} skipped, {} images dropped; {} slots x {}",
        h.frames_published,
        h.batches_seen,
        h.frames_skipped,
        h.images_dropped,
        h.frame_slots,
        mib(h.frame_capacity)
    );
    let mut f = Frame::default();
    match r.peek_frame(&mut f) {
        Ok(FrameRead::New) => {
            let images = match f.images {
                Some(d) => format!(
                    "{} x {}x{}x{} {} {}{}",
                    d.count,
                    d.channels,
                    d.height,
                    d.width,
                    d.dtype,
                    d.layout,
                    if d.normalization.is_some() {
                        " normalized"
                    } else {
                        ""
                    }
                ),
                None => "none".into(),
            };
            let _ = writeln!(
                s,
                "newest   frame {}: epoch {} batch {} loss {:.4}, {} samples, images {}",
                f.frame_no,
                f.epoch,
                f.batch_idx,
                f.loss,
                f.predictions().len(),
                images
            );
        }
        Ok(FrameRead::Busy) => s.push_str("newest   (being rewritten, try again)\n"),
        Ok(_) => s.push_str("newest   none yet\n"),
        Err(e) => {
            let _ = writeln!(s, "newest   error: {e}");
        }
    }
    if let Some(p) = r.progress() {
        let _ = writeln!(
            s,
            "progress epoch {} batch {} loss {:.4}",
            p.epoch, p.batch_idx, p.loss
        );
    }
}

fn text_events(s: &mut String, r: &Reader, h: &HeaderInfo) {
    let _ = writeln!(
        s,
        "events   {} published, {} acknowledged, {} slots",
        h.events_published, h.events_acked, h.event_slots
    );
    for e in r.pending_events(MAX_EVENTS_SHOWN) {
        let line = match e {
            Ok(EventRead::Event {
                seq,
                event:
                    Event::Epoch {
                        epoch,
                        average_loss,
                        average_accuracy,
                        metrics,
                    },
                ..
            }) => {
                let named: String = metrics.iter().map(|(k, v)| format!(", {k} {v}")).collect();
                format!(
                    "#{seq} epoch {epoch}: loss {average_loss:.4}, accuracy {average_accuracy:.4}{named}"
                )
            }
            Ok(EventRead::Event {
                seq,
                event: Event::Status { status, message },
                ..
            }) => {
                format!("#{seq} status {} {message:?}", status.name())
            }
            Ok(EventRead::Missed { first, count }) => {
                format!("{count} events from #{first} overwritten before read")
            }
            Err(e) => format!("error: {e}"),
        };
        let _ = writeln!(s, "  {line}");
    }
}

fn text_reader(s: &mut String, h: &HeaderInfo) {
    let _ = writeln!(
        s,
        "control  {} written, {} applied",
        h.commands_written, h.commands_applied
    );
    match h.reader_max_fps {
        Some(fps) => {
            let _ = write!(
                s,
                "reader   pid {}, max {:.1} fps, heartbeat {} ms ago, {} frames taken",
                h.reader_pid,
                fps,
                h.reader_heartbeat_age_ms.unwrap_or(0),
                h.frames_taken
            );
        }
        None => s.push_str("reader   none attached"),
    }
}

/// Everything a reader does with a segment image, for fuzzing: the result
/// is thrown away, only a panic or an out-of-bounds read would show.
#[doc(hidden)]
pub fn fuzz_exercise(bytes: &[u8]) {
    let Ok(mut r) = Reader::from_bytes(Path::new("fuzz"), bytes) else {
        return;
    };
    let mut f = Frame::default();
    let _ = r.latest_frame(&mut f);
    let _ = r.peek_frame(&mut f);
    let _ = r.progress();
    let _ = r.header();
    let _ = r.writer_state(0);
    let _ = r.pending_events(100);
    for _ in 0..200 {
        if let Ok(None) = r.next_event() {
            break;
        }
    }
    let _ = r.ack_events(1);
    let _ = r.send_command(CommandKind::Pause, &[("k", "v")]);
    let _ = report_json(&r);
    let _ = report_text(&r);
}
