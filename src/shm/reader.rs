//! The agent's side: opens a segment, validates it, and reads it.
//!
//! Nothing in the mapping is trusted. The header is checked once at open
//! (magic, version, every region against the file length and the
//! capacities); every slot is checked again on each read, and a slot that
//! changed under the reader is retried or reported as busy, never used.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use super::layout::{
    self, control, event, frame, hdr, key, point, Geometry, RawGeometry, RunConfig, MAX_IMAGES,
};
use super::map::Mapping;
use super::seqlock::{read_slot, write_slot, SlotRead};
use super::{
    encode_params, monotonic_ns, read_command, unix_ns, CommandKind, ShmError, TrainingStatus,
};
use crate::tensor::{RawTensor, TensorDesc};

/// Reads of a slot that keeps changing under the reader before giving up
/// for this call (the writer lapped it; the next call reads a newer one).
const READ_TRIES: usize = 4;

/// The newest frame, copied out. Reused between reads: its buffer only grows.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub frame_no: u64,
    pub epoch: u32,
    pub batch_idx: u32,
    pub loss: f32,
    pub timestamp_unix_ns: u64,
    /// CLOCK_MONOTONIC of the batch, comparable with [`monotonic_ns`].
    pub mono_ns: u64,
    sample_count: usize,
    predictions: [i32; MAX_IMAGES],
    confidences: [f32; MAX_IMAGES],
    labels: [i32; MAX_IMAGES],
    /// The images' descriptor; `None` for a frame without images.
    pub images: Option<TensorDesc>,
    data: Vec<u8>,
    data_len: usize,
    /// The most bytes `data` may grow to; `None`: no bound.
    max_data: Option<usize>,
}

impl Frame {
    /// Bounds what the next reads may copy: a frame whose data would need
    /// more than `max` bytes of buffer is refused before it is copied.
    pub fn set_max_data(&mut self, max: usize) {
        self.max_data = Some(max);
    }

    /// Bytes the copy buffer holds allocated.
    pub fn data_capacity(&self) -> usize {
        self.data.capacity()
    }

    pub fn predictions(&self) -> &[i32] {
        &self.predictions[..self.sample_count]
    }
    pub fn confidences(&self) -> &[f32] {
        &self.confidences[..self.sample_count]
    }
    pub fn labels(&self) -> &[i32] {
        &self.labels[..self.sample_count]
    }
    /// The tensor bytes (empty without images, or when read as metadata only).
    pub fn image_bytes(&self) -> &[u8] {
        &self.data[..self.data_len]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameRead {
    /// Nothing published yet.
    Nothing,
    /// The newest frame is the one returned last time; `out` untouched.
    Unchanged,
    /// `out` holds a new frame.
    New,
    /// The writer kept overwriting the slot while it was read; try later.
    Busy,
}

/// A lossless event.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Epoch {
        epoch: u32,
        average_loss: f32,
        average_accuracy: f32,
        /// Named metrics the summary carries (format 2), in the order given.
        metrics: Vec<(Arc<str>, f64)>,
    },
    Status {
        status: TrainingStatus,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum EventRead {
    /// Event number `seq` (from 1; the wire's `event_seq`).
    Event {
        seq: u64,
        timestamp_unix_ns: u64,
        event: Event,
    },
    /// Events `first..first+count` were overwritten before they were read.
    Missed { first: u64, count: u64 },
}

/// A named scalar from the points ring.
#[derive(Clone, Debug, PartialEq)]
pub struct PointRecord {
    /// Point number (from 1; the wire's `ScalarBatch` sequence).
    pub seq: u64,
    pub key: Arc<str>,
    pub step: i64,
    pub wall_unix_ns: u64,
    pub value: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointsRead {
    /// n points appended to `out` (0: none new).
    Points(usize),
    /// Points `first..first+count` were overwritten before being read; the
    /// read position moved past them.
    Missed { first: u64, count: u64 },
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Sent(u64),
    /// The trainer has not applied enough commands to free a slot; keep the
    /// command and try later.
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WriterState {
    /// Publishing or heartbeating recently.
    Live,
    /// Alive but silent for `idle_ms`.
    Idle { idle_ms: u64 },
    /// Closed cleanly.
    Closed,
    /// The process is gone (or its pid now belongs to another process)
    /// without closing the segment.
    Dead,
}

/// The newest batch's numbers, whether or not its frame was copied.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Progress {
    pub epoch: u32,
    pub batch_idx: u32,
    pub loss: f32,
    pub mono_ns: u64,
}

/// A snapshot of the header's counters, for `inspect` and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct HeaderInfo {
    pub version: u32,
    pub total_size: u64,
    pub writer_pid: u32,
    pub writer_start_unix_ns: u64,
    pub writer_closed: bool,
    pub writer_heartbeat_age_ms: Option<u64>,
    pub frame_slots: u32,
    pub frame_capacity: u64,
    pub event_slots: u32,
    pub control_slots: u32,
    pub frames_published: u64,
    pub batches_seen: u64,
    pub frames_skipped: u64,
    pub images_dropped: u64,
    pub events_published: u64,
    pub events_acked: u64,
    pub commands_written: u64,
    pub commands_applied: u64,
    pub reader_pid: u32,
    pub reader_max_fps: Option<f64>,
    pub reader_heartbeat_age_ms: Option<u64>,
    pub frames_taken: u64,
}

pub struct Reader {
    map: Mapping,
    geo: Geometry,
    path: PathBuf,
    config: RunConfig,
    writer_pid: u32,
    writer_start_ticks: u64,
    last_frame: u64,
    event_cursor: u64,
    interval_ns: u64,
    version: u32,
    point_cursor: u64,
    /// Key table entries read so far, by key id.
    keys: Vec<Arc<str>>,
}

impl Reader {
    /// Opens a segment to read it and to write the agent's fields (event
    /// acknowledgements, commands, read rate).
    pub fn open(path: &Path) -> Result<Reader, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ShmError::io(path, "open", e))?;
        Self::from_file(path, &file, true)
    }

    /// Opens a segment only to look at it (`inspect`): writes nothing.
    pub fn open_read_only(path: &Path) -> Result<Reader, ShmError> {
        let file = File::open(path).map_err(|e| ShmError::io(path, "open", e))?;
        Self::from_file(path, &file, false)
    }

    /// Parses a segment image held in memory (fuzzing, tests); `path` only
    /// names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Reader, ShmError> {
        check_len(path, bytes.len() as u64)?;
        let map = Mapping::from_bytes(bytes).map_err(|e| ShmError::io(path, "map", e))?;
        Self::parse(path, map, bytes.len() as u64)
    }

    fn from_file(path: &Path, file: &File, writable: bool) -> Result<Reader, ShmError> {
        let len = file
            .metadata()
            .map_err(|e| ShmError::io(path, "stat", e))?
            .len();
        check_len(path, len)?;
        let map = Mapping::map(file, writable).map_err(|e| ShmError::io(path, "map", e))?;
        Self::parse(path, map, len)
    }

    fn parse(path: &Path, map: Mapping, file_len: u64) -> Result<Reader, ShmError> {
        let m = &map;
        let magic = m.load_u64(hdr::MAGIC, Ordering::Acquire);
        if magic != layout::MAGIC {
            return Err(ShmError::field(
                path,
                "header magic",
                format!("{magic:#018x}"),
                format!("{:#018x} (\"TRNWATCH\")", layout::MAGIC),
            ));
        }
        let version = m.load_u32(hdr::VERSION, Ordering::Relaxed);
        if !(layout::MIN_VERSION..=layout::VERSION).contains(&version) {
            return Err(ShmError::field(
                path,
                "header version",
                version,
                format!(
                    "{}..={} (the formats this build reads)",
                    layout::MIN_VERSION,
                    layout::VERSION
                ),
            ));
        }
        let header_size = m.load_u32(hdr::HEADER_SIZE, Ordering::Relaxed);
        if header_size as usize != layout::HEADER_SIZE {
            return Err(ShmError::field(
                path,
                "header header_size",
                header_size,
                layout::HEADER_SIZE.to_string(),
            ));
        }
        let raw = RawGeometry {
            total_size: m.load_u64(hdr::TOTAL_SIZE, Ordering::Relaxed),
            config_offset: m.load_u64(hdr::CONFIG_OFFSET, Ordering::Relaxed),
            config_len: m.load_u32(hdr::CONFIG_LEN, Ordering::Relaxed),
            frame_slots: m.load_u32(hdr::FRAME_SLOTS, Ordering::Relaxed),
            frames_offset: m.load_u64(hdr::FRAMES_OFFSET, Ordering::Relaxed),
            frame_slot_size: m.load_u64(hdr::FRAME_SLOT_SIZE, Ordering::Relaxed),
            frame_data_capacity: m.load_u64(hdr::FRAME_DATA_CAPACITY, Ordering::Relaxed),
            event_slots: m.load_u32(hdr::EVENT_SLOTS, Ordering::Relaxed),
            event_slot_size: m.load_u32(hdr::EVENT_SLOT_SIZE, Ordering::Relaxed),
            events_offset: m.load_u64(hdr::EVENTS_OFFSET, Ordering::Relaxed),
            control_slots: m.load_u32(hdr::CONTROL_SLOTS, Ordering::Relaxed),
            control_slot_size: m.load_u32(hdr::CONTROL_SLOT_SIZE, Ordering::Relaxed),
            control_offset: m.load_u64(hdr::CONTROL_OFFSET, Ordering::Relaxed),
            keys_offset: m.load_u64(hdr::KEYS_OFFSET, Ordering::Relaxed),
            key_capacity: m.load_u32(hdr::KEY_CAPACITY, Ordering::Relaxed),
            key_size: m.load_u32(hdr::KEY_SIZE, Ordering::Relaxed),
            point_slots: m.load_u32(hdr::POINT_SLOTS, Ordering::Relaxed),
            point_slot_size: m.load_u32(hdr::POINT_SLOT_SIZE, Ordering::Relaxed),
            points_offset: m.load_u64(hdr::POINTS_OFFSET, Ordering::Relaxed),
        };
        // The mapping may be shorter than the file if it shrank since stat.
        let geo = raw.validate(path, file_len.min(m.len() as u64), version)?;
        let state = m.load_u32(hdr::WRITER_STATE, Ordering::Relaxed);
        if state != layout::STATE_OPEN && state != layout::STATE_CLOSED {
            return Err(ShmError::field(
                path,
                "header writer_state",
                state,
                "1 (open) or 2 (closed)".into(),
            ));
        }
        let mut config_bytes = vec![0u8; geo.config_len];
        m.read_bytes(geo.config_offset, &mut config_bytes);
        let config = RunConfig::decode(path, &config_bytes)?;
        // Every counter within what a writer can reach, so no reader
        // arithmetic on them can overflow and no loop meets one it cannot
        // pass.
        let mut counters = vec![
            (hdr::FRAME_WRITE_SEQ, "header frame_write_seq"),
            (hdr::EVENT_WRITE_SEQ, "header event_write_seq"),
            (hdr::EVENT_ACK_SEQ, "header event_ack_seq"),
            (hdr::CONTROL_WRITE_SEQ, "header control_write_seq"),
            (hdr::CONTROL_APPLIED_SEQ, "header control_applied_seq"),
        ];
        if version >= 2 {
            counters.push((hdr::POINT_WRITE_SEQ, "header point_write_seq"));
            counters.push((hdr::POINT_ACK_SEQ, "header point_ack_seq"));
        }
        for (off, field) in counters {
            bounded_seq(m, path, off, field)?;
        }
        let written = m.load_u64(hdr::EVENT_WRITE_SEQ, Ordering::Acquire);
        let acked = m.load_u64(hdr::EVENT_ACK_SEQ, Ordering::Acquire);
        if acked > written {
            return Err(ShmError::field(
                path,
                "header event_ack_seq",
                acked,
                format!("at most event_write_seq {written}"),
            ));
        }
        let (point_acked, point_written) = if version >= 2 {
            let w = m.load_u64(hdr::POINT_WRITE_SEQ, Ordering::Acquire);
            let a = m.load_u64(hdr::POINT_ACK_SEQ, Ordering::Acquire);
            (a, w)
        } else {
            (0, 0)
        };
        if point_acked > point_written {
            return Err(ShmError::field(
                path,
                "header point_ack_seq",
                point_acked,
                format!("at most point_write_seq {point_written}"),
            ));
        }
        let reader = Reader {
            writer_pid: m.load_u32(hdr::WRITER_PID, Ordering::Relaxed),
            writer_start_ticks: m.load_u64(hdr::WRITER_START_TICKS, Ordering::Relaxed),
            map,
            geo,
            path: path.to_owned(),
            config,
            last_frame: 0,
            event_cursor: acked,
            interval_ns: 0,
            version,
            point_cursor: point_acked,
            keys: Vec::new(),
        };
        Ok(reader)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    fn need_writable(&self, op: &'static str) -> Result<(), ShmError> {
        if self.map.writable() {
            Ok(())
        } else {
            Err(ShmError::ReadOnly {
                path: self.path.clone(),
                op,
            })
        }
    }

    /// Announces this reader and the rate it takes frames at; the writer
    /// then copies batches only around the reads. `max_fps` ≤ 0 detaches.
    pub fn attach(&mut self, max_fps: f64) -> Result<(), ShmError> {
        self.need_writable("attach")?;
        let interval = if max_fps > 0.0 {
            (1e9 / max_fps).clamp(1.0, 3.6e12) as u64
        } else {
            0
        };
        self.interval_ns = interval;
        let now = monotonic_ns();
        let m = &self.map;
        m.store_u32(hdr::READER_PID, std::process::id(), Ordering::Relaxed);
        m.store_u64(hdr::READER_HEARTBEAT_NS, now, Ordering::Relaxed);
        m.store_u64(hdr::READER_NEXT_READ_NS, now, Ordering::Relaxed);
        m.store_u64(hdr::READER_INTERVAL_NS, interval, Ordering::Relaxed);
        Ok(())
    }

    /// Marks the agent alive (its heartbeat in the header).
    pub fn touch(&self) {
        if self.map.writable() {
            self.map
                .store_u64(hdr::READER_HEARTBEAT_NS, monotonic_ns(), Ordering::Relaxed);
        }
    }

    /// Copies the newest complete frame into `out`, unless it is the one
    /// returned last time. When attached, also announces the next read.
    pub fn latest_frame(&mut self, out: &mut Frame) -> Result<FrameRead, ShmError> {
        self.still_mapped()?;
        let got = self.read_newest(out, true, self.last_frame)?;
        self.still_mapped()?;
        if got == FrameRead::New {
            self.last_frame = out.frame_no;
            if self.map.writable() {
                self.map.add_u64(hdr::FRAMES_TAKEN, 1);
            }
        }
        if self.interval_ns != 0 && self.map.writable() {
            // After a new frame the next read is one interval away; without
            // one the agent is waiting now, so the very next batch is wanted.
            // (Announcing now + interval on every call would keep the stamp
            // ahead of a trainer faster than the agent's rate, and it would
            // never copy a batch.)
            let now = monotonic_ns();
            let next = if got == FrameRead::New {
                now + self.interval_ns
            } else {
                now
            };
            self.map
                .store_u64(hdr::READER_HEARTBEAT_NS, now, Ordering::Relaxed);
            self.map
                .store_u64(hdr::READER_NEXT_READ_NS, next, Ordering::Relaxed);
        }
        Ok(got)
    }

    /// The newest frame with its tensor bytes, whether or not it was
    /// returned before; leaves the reader's position alone.
    pub fn newest_frame(&self, out: &mut Frame) -> Result<FrameRead, ShmError> {
        self.read_newest(out, true, 0)
    }

    /// The newest frame's metadata without its tensor bytes; leaves the
    /// reader's position alone.
    pub fn peek_frame(&self, out: &mut Frame) -> Result<FrameRead, ShmError> {
        self.read_newest(out, false, 0)
    }

    fn read_newest(
        &self,
        out: &mut Frame,
        copy_data: bool,
        last: u64,
    ) -> Result<FrameRead, ShmError> {
        let m = &self.map;
        for _ in 0..READ_TRIES {
            let f = self.seq(hdr::FRAME_WRITE_SEQ, "header frame_write_seq")?;
            if f == 0 {
                return Ok(FrameRead::Nothing);
            }
            if f == last {
                return Ok(FrameRead::Unchanged);
            }
            let base = self.geo.frame_slot(f);
            match read_slot(m, base + frame::SEQ, f, || {
                self.copy_frame(base, f, out, copy_data)
            }) {
                SlotRead::Read(Ok(())) => return Ok(FrameRead::New),
                // Checked on a stable slot: the writer really wrote it so.
                SlotRead::Read(Err(e)) => return Err(e),
                SlotRead::Torn => continue, // the writer reused the slot while we copied
                SlotRead::Seq(s1) if s1 > 2 * f => continue, // already reused for a newer frame
                SlotRead::Seq(s1) => {
                    return Err(ShmError::field(
                        &self.path,
                        &format!("frame slot for frame {f} seq"),
                        s1,
                        (2 * f).to_string(),
                    ))
                }
            }
        }
        Ok(FrameRead::Busy)
    }

    /// Copies frame `f` from the slot at `base` into `out`, checking the
    /// sizes before they steer the copy. Runs inside the slot's seqlock: what
    /// it reads may be torn, and `read_slot` decides whether it counts.
    fn copy_frame(
        &self,
        base: usize,
        f: u64,
        out: &mut Frame,
        copy_data: bool,
    ) -> Result<(), ShmError> {
        let m = &self.map;
        let frame_no = m.load_u64(base + frame::FRAME_NO, Ordering::Relaxed);
        let sample_count = m.load_u32(base + frame::SAMPLE_COUNT, Ordering::Relaxed);
        let raw = RawTensor {
            dtype: m.load_u32(base + frame::DTYPE, Ordering::Relaxed),
            layout: m.load_u32(base + frame::LAYOUT, Ordering::Relaxed),
            count: m.load_u32(base + frame::IMAGE_COUNT, Ordering::Relaxed),
            channels: m.load_u32(base + frame::CHANNELS, Ordering::Relaxed),
            height: m.load_u32(base + frame::HEIGHT, Ordering::Relaxed),
            width: m.load_u32(base + frame::WIDTH, Ordering::Relaxed),
            has_norm: m.load_u32(base + frame::HAS_NORM, Ordering::Relaxed),
            mean: [0, 1, 2].map(|i| m.load_f32(base + frame::MEAN + 4 * i)),
            std: [0, 1, 2].map(|i| m.load_f32(base + frame::STD + 4 * i)),
        };
        let data_len = m.load_u64(base + frame::DATA_LEN, Ordering::Relaxed);
        let what = || format!("frame {f}");
        if frame_no != f {
            return Err(ShmError::field(
                &self.path,
                &format!("{} frame_no", what()),
                frame_no,
                f.to_string(),
            ));
        }
        if sample_count as usize > MAX_IMAGES {
            return Err(ShmError::field(
                &self.path,
                &format!("{} sample_count", what()),
                sample_count,
                format!("at most {MAX_IMAGES}"),
            ));
        }
        let images = layout::frame_tensor(
            &self.path,
            what,
            &raw,
            data_len,
            self.geo.frame_data_capacity,
        )?;
        out.frame_no = f;
        out.epoch = m.load_u32(base + frame::EPOCH, Ordering::Relaxed);
        out.batch_idx = m.load_u32(base + frame::BATCH_IDX, Ordering::Relaxed);
        out.loss = m.load_f32(base + frame::LOSS);
        out.timestamp_unix_ns = m.load_u64(base + frame::TIMESTAMP_UNIX_NS, Ordering::Relaxed);
        out.mono_ns = m.load_u64(base + frame::MONO_NS, Ordering::Relaxed);
        out.sample_count = sample_count as usize;
        for i in 0..out.sample_count {
            out.predictions[i] =
                m.load_u32(base + frame::PREDICTIONS + 4 * i, Ordering::Relaxed) as i32;
            out.confidences[i] = m.load_f32(base + frame::CONFIDENCES + 4 * i);
            out.labels[i] = m.load_u32(base + frame::LABELS + 4 * i, Ordering::Relaxed) as i32;
        }
        out.images = images;
        out.data_len = 0;
        if copy_data {
            let len = data_len as usize; // validated ≤ capacity
            if let Some(max) = out.max_data {
                if len > max.max(out.data.capacity()) {
                    return Err(ShmError::field(
                        &self.path,
                        &format!("{} data_len", what()),
                        len,
                        format!("at most {max} bytes, what the agent's frame_memory_mb leaves for this run"),
                    ));
                }
            }
            if out.data.len() < len {
                out.data.reserve_exact(len - out.data.len());
                out.data.resize(len, 0);
            }
            m.read_bytes(base + frame::DATA, &mut out.data[..len]);
            out.data_len = len;
        }
        Ok(())
    }

    /// The newest batch's numbers (updated even for batches not copied).
    pub fn progress(&self) -> Option<Progress> {
        let m = &self.map;
        for _ in 0..READ_TRIES {
            // The progress block is a one-slot ring: read the version the
            // word names, or wait out the one being written.
            let s = m.load_u64(hdr::PROGRESS_SEQ, Ordering::Relaxed);
            if s == 0 {
                return None;
            }
            let read = read_slot(m, hdr::PROGRESS_SEQ, s.div_ceil(2), || Progress {
                epoch: m.load_u32(hdr::PROGRESS_EPOCH, Ordering::Relaxed),
                batch_idx: m.load_u32(hdr::PROGRESS_BATCH_IDX, Ordering::Relaxed),
                loss: m.load_f32(hdr::PROGRESS_LOSS),
                mono_ns: m.load_u64(hdr::PROGRESS_MONO_NS, Ordering::Relaxed),
            });
            match read {
                SlotRead::Read(p) => return Some(p),
                SlotRead::Seq(_) | SlotRead::Torn => std::hint::spin_loop(),
            }
        }
        None
    }

    /// The next event after the reader's position (which starts at the
    /// acknowledged position), or the exact run of events that were lost.
    /// A corrupt event is reported once and skipped.
    pub fn next_event(&mut self) -> Result<Option<EventRead>, ShmError> {
        self.still_mapped()?;
        let slots = u64::from(self.geo.event_slots);
        for _ in 0..READ_TRIES {
            let written = self.seq(hdr::EVENT_WRITE_SEQ, "header event_write_seq")?;
            if written < self.event_cursor {
                return Err(ShmError::header(
                    &self.path,
                    "header event_write_seq",
                    written,
                    format!("at least the read position {}", self.event_cursor),
                ));
            }
            let next = self.event_cursor + 1;
            if next > written {
                return Ok(None);
            }
            let oldest = (written + 1).saturating_sub(slots).max(1);
            if next < oldest {
                self.event_cursor = oldest - 1;
                return Ok(Some(EventRead::Missed {
                    first: next,
                    count: oldest - next,
                }));
            }
            match self.read_event(next) {
                Ok(Some(ev)) => {
                    self.event_cursor = next;
                    return Ok(Some(ev));
                }
                Ok(None) => continue, // lapped while reading: recount
                Err(e) => {
                    self.event_cursor = next;
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    /// Events after the acknowledged position, without moving anything
    /// (`inspect`). At most `max`.
    pub fn pending_events(&self, max: usize) -> Vec<Result<EventRead, ShmError>> {
        let written = match self.seq(hdr::EVENT_WRITE_SEQ, "header event_write_seq") {
            Ok(w) => w,
            Err(e) => return vec![Err(e)],
        };
        let acked = self
            .map
            .load_u64(hdr::EVENT_ACK_SEQ, Ordering::Acquire)
            .min(written);
        let oldest = (written + 1)
            .saturating_sub(u64::from(self.geo.event_slots))
            .max(1);
        let mut out = Vec::new();
        let mut n = acked + 1;
        if n < oldest {
            out.push(Ok(EventRead::Missed {
                first: n,
                count: oldest - n,
            }));
            n = oldest;
        }
        while n <= written && out.len() < max {
            match self.read_event(n) {
                Ok(Some(ev)) => out.push(Ok(ev)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
            n += 1;
        }
        out
    }

    /// Reads event `n`; `None` when it was overwritten (lapped).
    fn read_event(&self, n: u64) -> Result<Option<EventRead>, ShmError> {
        let m = &self.map;
        let base = self.geo.event_slot(n);
        let mut msg = [0u8; event::MSG_CAP];
        let read = read_slot(m, base + event::SEQ, n, || {
            let len = m.load_u32(base + event::MSG_LEN, Ordering::Relaxed) as usize;
            if len <= event::MSG_CAP {
                m.read_bytes(base + event::MSG, &mut msg[..len]);
            }
            (
                m.load_u32(base + event::KIND, Ordering::Relaxed),
                m.load_u32(base + event::STATUS, Ordering::Relaxed),
                m.load_u64(base + event::TIMESTAMP_UNIX_NS, Ordering::Relaxed),
                m.load_u32(base + event::EPOCH, Ordering::Relaxed),
                m.load_f32(base + event::AVG_LOSS),
                m.load_f32(base + event::AVG_ACCURACY),
                len,
            )
        });
        let (kind, status, ts, epoch, loss, acc, len) = match read {
            SlotRead::Read(fields) => fields,
            SlotRead::Torn => return Ok(None),
            SlotRead::Seq(s1) if s1 > 2 * n => return Ok(None), // lapped
            SlotRead::Seq(s1) => {
                return Err(ShmError::field(
                    &self.path,
                    &format!("event slot for event {n} seq"),
                    s1,
                    (2 * n).to_string(),
                ))
            }
        };
        let len_ok = len <= event::MSG_CAP;
        let field = |name: &str, v: u32, expected: &str| {
            ShmError::field(&self.path, &format!("event {n} {name}"), v, expected.into())
        };
        if !len_ok {
            return Err(field(
                "msg_len",
                len as u32,
                &format!("at most {}", event::MSG_CAP),
            ));
        }
        let event = match kind {
            event::KIND_EPOCH => Event::Epoch {
                epoch,
                average_loss: loss,
                average_accuracy: acc,
                metrics: self.epoch_metrics(n, &msg[..len])?,
            },
            event::KIND_STATUS => {
                let status = TrainingStatus::from_code(status)
                    .ok_or_else(|| field("status", status, "0..=5"))?;
                let message = std::str::from_utf8(&msg[..len])
                    .map_err(|e| {
                        ShmError::field(
                            &self.path,
                            &format!("event {n} message"),
                            format!("not UTF-8 ({e})"),
                            "UTF-8".into(),
                        )
                    })?
                    .to_owned();
                Event::Status { status, message }
            }
            k => return Err(field("kind", k, "1 (epoch) or 2 (status)")),
        };
        Ok(Some(EventRead::Event {
            seq: n,
            timestamp_unix_ns: ts,
            event,
        }))
    }

    /// Records that events up to `seq` are delivered (the server applied
    /// them): a restarted agent resumes after it. Never moves backwards.
    pub fn ack_events(&self, seq: u64) -> Result<(), ShmError> {
        self.need_writable("acknowledge events")?;
        let written = self.map.load_u64(hdr::EVENT_WRITE_SEQ, Ordering::Acquire);
        if seq > written {
            return Err(ShmError::InvalidArgument(format!(
                "acknowledging event {seq}, but only {written} were published"
            )));
        }
        self.map
            .fetch_max_u64(hdr::EVENT_ACK_SEQ, seq, Ordering::Release);
        Ok(())
    }

    /// Where the event ring stands: (acknowledged, read position, written).
    pub fn event_positions(&self) -> (u64, u64, u64) {
        (
            self.map.load_u64(hdr::EVENT_ACK_SEQ, Ordering::Acquire),
            self.event_cursor,
            self.map.load_u64(hdr::EVENT_WRITE_SEQ, Ordering::Acquire),
        )
    }

    /// Moves the read position back to the acknowledged one (after a lost
    /// connection, unacknowledged events are sent again).
    pub fn rewind_to_ack(&mut self) {
        let acked = self.map.load_u64(hdr::EVENT_ACK_SEQ, Ordering::Acquire);
        self.event_cursor = acked.min(self.map.load_u64(hdr::EVENT_WRITE_SEQ, Ordering::Acquire));
    }

    /// Moves the read position to just after event `after` (the server has
    /// applied up to it), within what was written. Events the ring no
    /// longer holds are reported by the next [`next_event`](Self::next_event)
    /// as missed.
    pub fn seek_events(&mut self, after: u64) {
        let written = self.map.load_u64(hdr::EVENT_WRITE_SEQ, Ordering::Acquire);
        self.event_cursor = after.min(written);
    }

    /// The read position of the event ring: the last event `next_event`
    /// returned or skipped (an unreadable one included).
    pub fn events_read(&self) -> u64 {
        self.event_cursor
    }

    /// How many batches the trainer has published (copied or not).
    pub fn batches_published(&self) -> u64 {
        self.map.load_u64(hdr::BATCHES_SEEN, Ordering::Relaxed)
    }

    /// How many events the writer has published.
    pub fn events_written(&self) -> u64 {
        self.map.load_u64(hdr::EVENT_WRITE_SEQ, Ordering::Acquire)
    }

    /// The status of the newest status event the ring still holds.
    pub fn last_status(&self) -> Option<TrainingStatus> {
        let written = self.events_written();
        let oldest = (written + 1)
            .saturating_sub(u64::from(self.geo.event_slots))
            .max(1);
        (oldest..=written)
            .rev()
            .find_map(|n| match self.read_event(n) {
                Ok(Some(EventRead::Event {
                    event: Event::Status { status, .. },
                    ..
                })) => Some(status),
                _ => None,
            })
    }

    /// How many commands the trainer has applied (its position in the
    /// control ring), at most how many were written.
    pub fn commands_applied(&self) -> u64 {
        let written = self.map.load_u64(hdr::CONTROL_WRITE_SEQ, Ordering::Acquire);
        self.map
            .load_u64(hdr::CONTROL_APPLIED_SEQ, Ordering::Acquire)
            .min(written)
    }

    /// The (control seq, `command_id` parameter) of each command still in
    /// the control ring that carries one, oldest first, so an agent (this
    /// one or one started after it) never writes a command twice.
    pub fn delivered_commands(&self) -> Result<Vec<(u64, u64)>, ShmError> {
        let written = self.seq(hdr::CONTROL_WRITE_SEQ, "header control_write_seq")?;
        let from = written.saturating_sub(u64::from(self.geo.control_slots)) + 1;
        Ok((from..=written)
            .filter_map(|n| {
                let c = read_command(&self.map, &self.geo, &self.path, n).ok()?;
                Some((n, c.param("command_id")?.parse().ok()?))
            })
            .collect())
    }

    /// Writes a command for the trainer. One agent writes a segment's
    /// control ring.
    pub fn send_command(
        &mut self,
        kind: CommandKind,
        params: &[(&str, &str)],
    ) -> Result<SendOutcome, ShmError> {
        self.need_writable("send a command")?;
        let encoded = encode_params(params)?;
        let m = &self.map;
        let written = self.seq(hdr::CONTROL_WRITE_SEQ, "header control_write_seq")?;
        let applied = m.load_u64(hdr::CONTROL_APPLIED_SEQ, Ordering::Acquire);
        if applied > written {
            return Err(ShmError::header(
                &self.path,
                "header control_applied_seq",
                applied,
                format!("at most control_write_seq {written}"),
            ));
        }
        if written - applied >= u64::from(self.geo.control_slots) {
            return Ok(SendOutcome::Full);
        }
        let n = written + 1;
        let base = self.geo.control_slot(n);
        write_slot(m, base + control::SEQ, n, || {
            m.store_u32(base + control::COMMAND, kind as u32, Ordering::Relaxed);
            m.store_u32(
                base + control::PARAMS_LEN,
                encoded.len() as u32,
                Ordering::Relaxed,
            );
            m.store_u64(
                base + control::TIMESTAMP_UNIX_NS,
                unix_ns(),
                Ordering::Relaxed,
            );
            m.write_bytes(base + control::PARAMS, &encoded);
        });
        m.store_u64(hdr::CONTROL_WRITE_SEQ, n, Ordering::Release);
        Ok(SendOutcome::Sent(n))
    }

    /// (written, applied) sequence numbers of the control ring.
    pub fn control_positions(&self) -> (u64, u64) {
        (
            self.map.load_u64(hdr::CONTROL_WRITE_SEQ, Ordering::Acquire),
            self.map
                .load_u64(hdr::CONTROL_APPLIED_SEQ, Ordering::Acquire),
        )
    }

    /// Whether the writer closed the segment (one load; no /proc read).
    pub fn writer_closed(&self) -> bool {
        self.map.load_u32(hdr::WRITER_STATE, Ordering::Acquire) == layout::STATE_CLOSED
    }

    /// Live, idle (silent for `idle_after_ns`), closed, or dead.
    pub fn writer_state(&self, idle_after_ns: u64) -> WriterState {
        if self.writer_closed() {
            return WriterState::Closed;
        }
        if !super::pid_exists(self.writer_pid) {
            return WriterState::Dead;
        }
        if self.writer_start_ticks != 0 {
            if let Some(ticks) = super::process_start_ticks(self.writer_pid) {
                if ticks != self.writer_start_ticks {
                    return WriterState::Dead;
                }
            }
        }
        let beat = self
            .map
            .load_u64(hdr::WRITER_HEARTBEAT_NS, Ordering::Relaxed);
        let idle = monotonic_ns().saturating_sub(beat);
        if idle > idle_after_ns {
            WriterState::Idle {
                idle_ms: idle / 1_000_000,
            }
        } else {
            WriterState::Live
        }
    }

    pub fn header(&self) -> HeaderInfo {
        let m = &self.map;
        let now = monotonic_ns();
        let age = |off: usize| {
            let t = m.load_u64(off, Ordering::Relaxed);
            (t != 0).then(|| now.saturating_sub(t) / 1_000_000)
        };
        let interval = m.load_u64(hdr::READER_INTERVAL_NS, Ordering::Relaxed);
        HeaderInfo {
            version: m.load_u32(hdr::VERSION, Ordering::Relaxed),
            total_size: self.geo.total_size,
            writer_pid: self.writer_pid,
            writer_start_unix_ns: m.load_u64(hdr::WRITER_START_UNIX_NS, Ordering::Relaxed),
            writer_closed: self.writer_closed(),
            writer_heartbeat_age_ms: age(hdr::WRITER_HEARTBEAT_NS),
            frame_slots: self.geo.frame_slots,
            frame_capacity: self.geo.frame_data_capacity as u64,
            event_slots: self.geo.event_slots,
            control_slots: self.geo.control_slots,
            frames_published: m.load_u64(hdr::FRAME_WRITE_SEQ, Ordering::Acquire),
            batches_seen: m.load_u64(hdr::BATCHES_SEEN, Ordering::Relaxed),
            frames_skipped: m.load_u64(hdr::FRAMES_SKIPPED, Ordering::Relaxed),
            images_dropped: m.load_u64(hdr::IMAGES_DROPPED, Ordering::Relaxed),
            events_published: m.load_u64(hdr::EVENT_WRITE_SEQ, Ordering::Acquire),
            events_acked: m.load_u64(hdr::EVENT_ACK_SEQ, Ordering::Acquire),
            commands_written: m.load_u64(hdr::CONTROL_WRITE_SEQ, Ordering::Acquire),
            commands_applied: m.load_u64(hdr::CONTROL_APPLIED_SEQ, Ordering::Acquire),
            reader_pid: m.load_u32(hdr::READER_PID, Ordering::Relaxed),
            reader_max_fps: (interval != 0).then(|| 1e9 / interval as f64),
            reader_heartbeat_age_ms: age(hdr::READER_HEARTBEAT_NS),
            frames_taken: m.load_u64(hdr::FRAMES_TAKEN, Ordering::Relaxed),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Detach: the writer stops copying frames for us.
        if self.interval_ns != 0 && self.map.writable() {
            self.map
                .store_u64(hdr::READER_INTERVAL_NS, 0, Ordering::Relaxed);
        }
    }
}

impl Reader {
    /// An error once the file has shrunk under the mapping (truncated while
    /// mapped: what was read past its end is zeros): the run is corrupt.
    fn still_mapped(&self) -> Result<(), ShmError> {
        if self.map.faulted() {
            return Err(ShmError::header(
                &self.path,
                "file",
                "shorter than its mapping",
                "the size it was created with (truncated or shrunk while in use)".into(),
            ));
        }
        Ok(())
    }

    /// A sequence counter from the header, bounded so that seqlock
    /// arithmetic on it cannot overflow.
    fn seq(&self, off: usize, field: &str) -> Result<u64, ShmError> {
        bounded_seq(&self.map, &self.path, off, field)
    }
}

/// The header counter at `off`, or the run is corrupt when it is beyond
/// what a writer can reach.
fn bounded_seq(m: &Mapping, path: &Path, off: usize, field: &str) -> Result<u64, ShmError> {
    let v = m.load_u64(off, Ordering::Acquire);
    if v > layout::MAX_SEQ {
        return Err(ShmError::header(
            path,
            field,
            v,
            format!("at most {}", layout::MAX_SEQ),
        ));
    }
    Ok(v)
}

fn check_len(path: &Path, len: u64) -> Result<(), ShmError> {
    if len < layout::HEADER_SIZE as u64 {
        return Err(ShmError::TooShort {
            path: path.to_owned(),
            len,
            need: layout::HEADER_SIZE,
        });
    }
    Ok(())
}

/// The points ring (format 2): named scalars, lossless like events.
impl Reader {
    /// An epoch event's metrics: `(key id u32, value f64 bits u64)` pairs,
    /// little-endian, in its message area.
    fn epoch_metrics(&self, n: u64, bytes: &[u8]) -> Result<Vec<(Arc<str>, f64)>, ShmError> {
        if !bytes.len().is_multiple_of(event::METRIC_SIZE) {
            return Err(ShmError::field(
                &self.path,
                &format!("event {n} metrics length"),
                bytes.len(),
                format!("a multiple of {}", event::METRIC_SIZE),
            ));
        }
        bytes
            .chunks_exact(event::METRIC_SIZE)
            .map(|c| {
                let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let mut v = [0u8; 8];
                v.copy_from_slice(&c[4..12]);
                let value = f64::from_bits(u64::from_le_bytes(v));
                let key = self.key_name(id, &format!("event {n} metric key id"))?;
                if !value.is_finite() {
                    return Err(ShmError::field(
                        &self.path,
                        &format!("event {n} metric {key:?}"),
                        value,
                        "a finite value".into(),
                    ));
                }
                Ok((key, value))
            })
            .collect()
    }

    /// The segment's format version (1 has no points).
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// Appends up to `max` points after the read position (which starts
    /// at the acknowledged position). A corrupt point is reported once and
    /// skipped; points read before it in the same call are returned first.
    pub fn next_points(
        &mut self,
        out: &mut Vec<PointRecord>,
        max: usize,
    ) -> Result<PointsRead, ShmError> {
        self.still_mapped()?;
        if self.geo.point_slots == 0 {
            return Ok(PointsRead::Points(0));
        }
        let slots = u64::from(self.geo.point_slots);
        let mut got = 0usize;
        for _ in 0..READ_TRIES {
            let written = self.seq(hdr::POINT_WRITE_SEQ, "header point_write_seq")?;
            if written < self.point_cursor {
                return Err(ShmError::header(
                    &self.path,
                    "header point_write_seq",
                    written,
                    format!("at least the read position {}", self.point_cursor),
                ));
            }
            let next = self.point_cursor + 1;
            let oldest = (written + 1).saturating_sub(slots).max(1);
            if next < oldest && got == 0 {
                self.point_cursor = oldest - 1;
                return Ok(PointsRead::Missed {
                    first: next,
                    count: oldest - next,
                });
            }
            while got < max && self.point_cursor < written {
                let n = self.point_cursor + 1;
                match self.read_point(n) {
                    Ok(Some(p)) => {
                        out.push(p);
                        got += 1;
                        self.point_cursor = n;
                    }
                    Ok(None) => break, // lapped while reading: recount
                    Err(e) if got > 0 => {
                        let _ = e; // reported on the next call, which starts at it
                        return Ok(PointsRead::Points(got));
                    }
                    Err(e) => {
                        self.point_cursor = n;
                        return Err(e);
                    }
                }
            }
            if got > 0 || self.point_cursor == written || got == max {
                return Ok(PointsRead::Points(got));
            }
        }
        Ok(PointsRead::Points(got))
    }

    /// Reads point `n`; `None` when it was overwritten (lapped).
    fn read_point(&mut self, n: u64) -> Result<Option<PointRecord>, ShmError> {
        let m = &self.map;
        let base = self.geo.point_slot(n);
        let read = read_slot(m, base + point::SEQ, n, || {
            (
                m.load_u32(base + point::KEY, Ordering::Relaxed),
                m.load_u64(base + point::STEP, Ordering::Relaxed) as i64,
                m.load_u64(base + point::WALL_UNIX_NS, Ordering::Relaxed),
                f64::from_bits(m.load_u64(base + point::VALUE, Ordering::Relaxed)),
            )
        });
        let (id, step, wall, value) = match read {
            SlotRead::Read(fields) => fields,
            SlotRead::Torn => return Ok(None),
            SlotRead::Seq(s1) if s1 > 2 * n => return Ok(None), // lapped
            SlotRead::Seq(s1) => {
                return Err(ShmError::field(
                    &self.path,
                    &format!("point slot for point {n} seq"),
                    s1,
                    (2 * n).to_string(),
                ))
            }
        };
        let key = self.key(id, n)?;
        Ok(Some(PointRecord {
            seq: n,
            key,
            step,
            wall_unix_ns: wall,
            value,
        }))
    }

    /// Key id `id`'s name, reading newly published table entries as needed.
    fn key(&mut self, id: u32, n: u64) -> Result<Arc<str>, ShmError> {
        if let Some(k) = self.keys.get(id as usize) {
            return Ok(k.clone());
        }
        self.check_key_id(id, &format!("point {n} key id"))?;
        while (self.keys.len() as u32) <= id {
            let k = self.read_key_entry(self.keys.len() as u32)?;
            self.keys.push(k);
        }
        Ok(self.keys[id as usize].clone())
    }

    /// Key id `id`'s name without caching it (for `&self` readers).
    fn key_name(&self, id: u32, what: &str) -> Result<Arc<str>, ShmError> {
        if let Some(k) = self.keys.get(id as usize) {
            return Ok(k.clone());
        }
        self.check_key_id(id, what)?;
        self.read_key_entry(id)
    }

    /// `id` names a published key table entry.
    fn check_key_id(&self, id: u32, what: &str) -> Result<(), ShmError> {
        let count = self.map.load_u64(hdr::KEY_COUNT, Ordering::Acquire);
        let cap = u64::from(self.geo.key_capacity);
        if u64::from(id) >= count.min(cap) {
            return Err(ShmError::field(
                &self.path,
                what,
                id,
                format!("below the key count {}", count.min(cap)),
            ));
        }
        Ok(())
    }

    /// Key table entry `i`, checked.
    fn read_key_entry(&self, i: u32) -> Result<Arc<str>, ShmError> {
        let base = self.geo.key_entry(i);
        let len = self.map.load_u32(base + key::LEN, Ordering::Relaxed) as usize;
        let mut buf = [0u8; key::MAX_LEN];
        let name = buf.get_mut(..len).filter(|_| len > 0);
        let Some(name) = name else {
            return Err(ShmError::field(
                &self.path,
                &format!("key {i} length"),
                len,
                format!("1..={}", key::MAX_LEN),
            ));
        };
        self.map.read_bytes(base + key::NAME, name);
        if !layout::valid_key(name) {
            return Err(ShmError::field(
                &self.path,
                &format!("key {i} name"),
                String::from_utf8_lossy(name),
                "1 to 128 of A-Z a-z 0-9 . _ / -".into(),
            ));
        }
        // valid_key admits ASCII only: this is UTF-8.
        Ok(Arc::from(std::str::from_utf8(name).unwrap_or_default()))
    }

    /// Points up to `seq` are committed by the server: a restarted agent
    /// resumes after them. Never moves backwards.
    pub fn ack_points(&self, seq: u64) -> Result<(), ShmError> {
        self.need_writable("acknowledge points")?;
        let written = self.points_written();
        if seq > written {
            return Err(ShmError::InvalidArgument(format!(
                "acknowledging point {seq}, but only {written} were published"
            )));
        }
        if self.geo.point_slots != 0 {
            self.map
                .fetch_max_u64(hdr::POINT_ACK_SEQ, seq, Ordering::Release);
        }
        Ok(())
    }

    /// (acknowledged, read position, written) of the points ring.
    pub fn point_positions(&self) -> (u64, u64, u64) {
        if self.geo.point_slots == 0 {
            return (0, 0, 0);
        }
        (
            self.map.load_u64(hdr::POINT_ACK_SEQ, Ordering::Acquire),
            self.point_cursor,
            self.points_written(),
        )
    }

    /// Moves the read position back to the acknowledged one.
    pub fn rewind_points_to_ack(&mut self) {
        let (acked, _, written) = self.point_positions();
        self.point_cursor = acked.min(written);
    }

    /// Moves the read position to just after point `after`, within what
    /// was written.
    pub fn seek_points(&mut self, after: u64) {
        self.point_cursor = after.min(self.points_written());
    }

    /// Distinct scalar keys the writer has named, and how many the segment
    /// holds ((0, 0) for format 1).
    pub fn keys_published(&self) -> (u64, u32) {
        if self.geo.point_slots == 0 {
            return (0, 0);
        }
        let cap = self.geo.key_capacity;
        let count = self.map.load_u64(hdr::KEY_COUNT, Ordering::Acquire);
        (count.min(u64::from(cap)), cap)
    }

    /// Slots of the points ring (0 for format 1).
    pub fn point_slots(&self) -> u32 {
        self.geo.point_slots
    }

    /// How many points the writer has published (0 for format 1).
    pub fn points_written(&self) -> u64 {
        if self.geo.point_slots == 0 {
            return 0;
        }
        self.map.load_u64(hdr::POINT_WRITE_SEQ, Ordering::Acquire)
    }
}
