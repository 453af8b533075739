//! The segment format, version 2 (version 1 still read) — the one place
//! that defines it.
//!
//! Every offset, size, capacity and the version live here; the writer, the
//! reader, the C header (`include/trainwatch.h`) and `docs/shm.md` follow
//! this file. All integers are little-endian (the only byte order of the
//! targets we build for, x86_64 and aarch64), naturally aligned, and every
//! field that changes after creation is accessed with atomics.
//!
//! ```text
//! 0       header (4096 bytes): identity, geometry, writer line, reader line
//! 4096    config (run config, written once before the segment appears)
//! …       control ring (agent → trainer), 64-byte aligned
//! …       event ring (trainer → agent, lossless), 64-byte aligned
//! …       key table (v2: scalar names, append-only), 64-byte aligned
//! …       points ring (v2: named scalars, lossless), 64-byte aligned
//! …       frame ring (trainer → agent, newest wins), page aligned
//! ```

use std::path::Path;

use super::ShmError;
use crate::tensor::{RawTensor, TensorDesc};

/// `b"TRNWATCH"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"TRNWATCH");
/// Bumped on any incompatible change. The writer writes `VERSION`; a reader
/// reads `MIN_VERSION..=VERSION` and refuses others, naming the version.
/// Version 2 adds the key table and the points ring; a version-1 segment
/// (those header fields zero) simply has no points.
pub const VERSION: u32 = 2;
pub const MIN_VERSION: u32 = 1;
/// One page: the header never shares a page with bulk data.
pub const HEADER_SIZE: usize = 4096;
/// Ring offsets and slot sizes are multiples of a cache line, so that no two
/// slots share one (and every u64 field is 8-aligned).
pub const ALIGN: usize = 64;
/// Frame slots start on a page boundary: image copies are page-aligned.
pub const PAGE: usize = 4096;

/// `writer_state` values.
pub const STATE_OPEN: u32 = 1;
pub const STATE_CLOSED: u32 = 2;

/// Header field offsets. Three groups on their own cache lines: fixed at
/// creation (0..256), written by the trainer (256..384), written by the
/// agent (384..512), so the two sides never false-share.
pub mod hdr {
    pub const MAGIC: usize = 0; // u64
    pub const VERSION: usize = 8; // u32
    pub const HEADER_SIZE: usize = 12; // u32
    pub const TOTAL_SIZE: usize = 16; // u64, the file length
    pub const WRITER_PID: usize = 24; // u32
    pub const FLAGS: usize = 28; // u32, reserved, 0
    pub const WRITER_START_UNIX_NS: usize = 32; // u64
    /// Start time of the writer process in clock ticks since boot
    /// (/proc/PID/stat field 22), to tell a reused pid from the writer.
    pub const WRITER_START_TICKS: usize = 40; // u64, 0 = unknown
    pub const CONFIG_OFFSET: usize = 64; // u64
    pub const CONFIG_LEN: usize = 72; // u32
    pub const FRAME_SLOTS: usize = 76; // u32
    pub const FRAMES_OFFSET: usize = 80; // u64
    pub const FRAME_SLOT_SIZE: usize = 88; // u64
    pub const FRAME_DATA_CAPACITY: usize = 96; // u64
    pub const EVENT_SLOTS: usize = 104; // u32
    pub const EVENT_SLOT_SIZE: usize = 108; // u32
    pub const EVENTS_OFFSET: usize = 112; // u64
    pub const CONTROL_SLOTS: usize = 120; // u32
    pub const CONTROL_SLOT_SIZE: usize = 124; // u32
    pub const CONTROL_OFFSET: usize = 128; // u64
                                           // Version 2: zero in a version-1 segment.
    pub const KEYS_OFFSET: usize = 136; // u64
    pub const KEY_CAPACITY: usize = 144; // u32, names the table holds
    pub const KEY_SIZE: usize = 148; // u32, bytes per key entry
    pub const POINT_SLOTS: usize = 152; // u32
    pub const POINT_SLOT_SIZE: usize = 156; // u32
    pub const POINTS_OFFSET: usize = 160; // u64

    // Written by the trainer.
    pub const WRITER_STATE: usize = 256; // u32: STATE_OPEN / STATE_CLOSED
    pub const WRITER_HEARTBEAT_NS: usize = 264; // u64, CLOCK_MONOTONIC
    pub const FRAME_WRITE_SEQ: usize = 272; // u64, frames published
    pub const EVENT_WRITE_SEQ: usize = 280; // u64, events published
    pub const CONTROL_APPLIED_SEQ: usize = 288; // u64, commands applied
    pub const BATCHES_SEEN: usize = 296; // u64, batch calls
    pub const FRAMES_SKIPPED: usize = 304; // u64, batches not copied
    pub const IMAGES_DROPPED: usize = 312; // u64, images over capacity
    /// Progress: the newest batch's numbers, even when its frame was skipped.
    /// A small seqlock of its own.
    pub const PROGRESS_SEQ: usize = 320; // u64
    pub const PROGRESS_EPOCH: usize = 328; // u32
    pub const PROGRESS_BATCH_IDX: usize = 332; // u32
    pub const PROGRESS_LOSS: usize = 336; // u32, f32 bits
    pub const PROGRESS_MONO_NS: usize = 344; // u64
    /// Keys published (v2): entries below it are complete (Release).
    pub const KEY_COUNT: usize = 352; // u64
    pub const POINT_WRITE_SEQ: usize = 360; // u64, points published (v2)

    // Written by the agent.
    pub const READER_PID: usize = 384; // u32
    pub const READER_HEARTBEAT_NS: usize = 392; // u64, CLOCK_MONOTONIC
    pub const READER_INTERVAL_NS: usize = 400; // u64, 1/max_fps; 0 = none
    pub const READER_NEXT_READ_NS: usize = 408; // u64, CLOCK_MONOTONIC
    pub const EVENT_ACK_SEQ: usize = 416; // u64, events acknowledged
    pub const CONTROL_WRITE_SEQ: usize = 424; // u64, commands written
    pub const FRAMES_TAKEN: usize = 432; // u64
    pub const POINT_ACK_SEQ: usize = 440; // u64, points acknowledged (v2)
}

/// Most images (and predictions, labels) per frame, as the seed's
/// dashboard shows them.
pub const MAX_IMAGES: usize = 16;
pub use crate::tensor::MAX_DIM;

/// Frame slot: a seqlock word, metadata, then the tensor bytes.
pub mod frame {
    pub const SEQ: usize = 0; // u64: 2n-1 while frame n is written, 2n when done
    pub const FRAME_NO: usize = 8; // u64, n (from 1)
    pub const TIMESTAMP_UNIX_NS: usize = 16; // u64
    pub const MONO_NS: usize = 24; // u64
    pub const EPOCH: usize = 32; // u32
    pub const BATCH_IDX: usize = 36; // u32
    pub const LOSS: usize = 40; // u32, f32 bits
    pub const SAMPLE_COUNT: usize = 44; // u32, predictions/labels, ≤ MAX_IMAGES
    pub const DTYPE: usize = 48; // u32, tensor::DType code
    pub const LAYOUT: usize = 52; // u32, tensor::Layout code
    pub const IMAGE_COUNT: usize = 56; // u32, ≤ MAX_IMAGES; 0 = no images
    pub const CHANNELS: usize = 60; // u32, 1 or 3
    pub const HEIGHT: usize = 64; // u32
    pub const WIDTH: usize = 68; // u32
    pub const HAS_NORM: usize = 72; // u32, 0 or 1
    pub const MEAN: usize = 80; // 3 x f32 bits
    pub const STD: usize = 92; // 3 x f32 bits
    pub const DATA_LEN: usize = 104; // u64, = image_count*channels*h*w*dtype size
    pub const PREDICTIONS: usize = 112; // 16 x i32
    pub const CONFIDENCES: usize = 176; // 16 x f32 bits
    pub const LABELS: usize = 240; // 16 x i32
    /// Tensor bytes start here.
    pub const DATA: usize = 320;
}

/// Event slot, fixed size.
pub mod event {
    pub const SIZE: usize = 256;
    pub const SEQ: usize = 0; // u64: 2n-1 while event n is written, 2n when done
    pub const KIND: usize = 8; // u32: KIND_EPOCH / KIND_STATUS
    pub const STATUS: usize = 12; // u32, TrainingStatus number
    pub const TIMESTAMP_UNIX_NS: usize = 16; // u64
    pub const EPOCH: usize = 24; // u32
    pub const AVG_LOSS: usize = 28; // f32 bits
    pub const AVG_ACCURACY: usize = 32; // f32 bits
    pub const MSG_LEN: usize = 36; // u32
    pub const MSG: usize = 40; // UTF-8
    pub const MSG_CAP: usize = SIZE - MSG;
    /// An epoch event's message area holds its named metrics (format 2):
    /// key id (u32 LE) then value (f64 bits, LE), 12 bytes each.
    pub const METRIC_SIZE: usize = 12;
    pub const MAX_METRICS: usize = MSG_CAP / METRIC_SIZE;
    pub const KIND_EPOCH: u32 = 1;
    pub const KIND_STATUS: u32 = 2;
}

/// Key table entry (v2): a scalar's name, interned by the writer. Entry
/// `i` is key id `i`; it is written before `KEY_COUNT` passes it and never
/// changes after.
pub mod key {
    pub const SIZE: usize = 136;
    pub const LEN: usize = 0; // u32, 1..=MAX_LEN
    pub const NAME: usize = 8; // ASCII of [A-Za-z0-9._/-]
    pub const MAX_LEN: usize = SIZE - NAME;
}

/// Point slot (v2), fixed size. 40 bytes rather than a cache line: points
/// come in batches from one writer, and 64 K of them should stay ~2.5 MiB.
pub mod point {
    pub const SIZE: usize = 40;
    pub const SEQ: usize = 0; // u64: 2n-1 while point n is written, 2n when done
    pub const KEY: usize = 8; // u32, key id (index into the key table)
    pub const STEP: usize = 16; // i64
    pub const WALL_UNIX_NS: usize = 24; // u64
    pub const VALUE: usize = 32; // f64 bits
}

/// Control slot, fixed size.
pub mod control {
    pub const SIZE: usize = 512;
    pub const SEQ: usize = 0; // u64: 2n-1 while command n is written, 2n when done
    pub const COMMAND: usize = 8; // u32, ControlCommand.CommandType number
    pub const PARAMS_LEN: usize = 12; // u32
    pub const TIMESTAMP_UNIX_NS: usize = 16; // u64
    /// Parameters: `key\0value\0` pairs, UTF-8, no NUL inside a key or value.
    pub const PARAMS: usize = 24;
    pub const PARAMS_CAP: usize = SIZE - PARAMS;
}

/// Default frame slots: one being written, one newest, one being read.
pub const DEFAULT_FRAME_SLOTS: u32 = 3;
/// Default tensor bytes per frame: 16 images of 224x224x3 f32 (9.6 MB), the
/// largest sample most classification runs publish. Larger batches publish
/// as many images as fit and count the rest in `images_dropped`.
pub const DEFAULT_FRAME_CAPACITY: u64 = 16 * 3 * 224 * 224 * 4;
/// Default event slots: 4096 x 256 B = 1 MiB holds ~2000 epochs of
/// summaries plus status changes, far more than an agent outage sees.
pub const DEFAULT_EVENT_SLOTS: u32 = 4096;
/// Default point slots: 64 Ki x 40 B = 2.5 MiB, 6.5 s of 10,000 points/s
/// with no agent reading — and an agent reads every few milliseconds.
pub const DEFAULT_POINT_SLOTS: u32 = 65536;
/// Distinct scalar names per run: far beyond what a training run logs.
pub const KEY_CAPACITY: u32 = 1024;
pub const MAX_POINT_SLOTS: u32 = 1 << 24;
/// Default control slots: commands come from a person at a dashboard.
pub const DEFAULT_CONTROL_SLOTS: u32 = 16;

/// Largest sequence number a reader accepts (frames, events, commands):
/// 2^62 is never reached (146 years at a billion a second), and with it
/// `2 * seq + 1`, the seqlock word, cannot overflow.
pub const MAX_SEQ: u64 = 1 << 62;

pub const MIN_SLOTS: u32 = 2;
pub const MAX_FRAME_SLOTS: u32 = 64;
pub const MAX_EVENT_SLOTS: u32 = 1 << 20;
pub const MAX_CONTROL_SLOTS: u32 = 1024;
/// 1 GiB per frame is beyond any sample; a larger value is corruption.
pub const MAX_FRAME_CAPACITY: u64 = 1 << 30;
/// Config holds ImageNet-21k class names with room to spare.
pub const MAX_CONFIG_LEN: u32 = 8 << 20;
pub const MAX_NAME_LEN: usize = 4096;
pub const MAX_CLASSES: u32 = 100_000;

/// Where each region lies. Computed by the writer, validated by the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub total_size: u64,
    pub config_offset: usize,
    pub config_len: usize,
    pub control_slots: u32,
    pub control_offset: usize,
    pub event_slots: u32,
    pub events_offset: usize,
    /// 0 in a version-1 segment (no key table, no points).
    pub key_capacity: u32,
    pub keys_offset: usize,
    /// 0 in a version-1 segment.
    pub point_slots: u32,
    pub points_offset: usize,
    pub frame_slots: u32,
    pub frame_slot_size: usize,
    pub frame_data_capacity: usize,
    pub frames_offset: usize,
}

pub const fn align_up(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

impl Geometry {
    /// Lays out a new segment. Arguments are checked against the capacities.
    /// `point_slots` 0 lays out a version-1 segment (no keys, no points).
    pub fn new(
        config_len: usize,
        frame_slots: u32,
        frame_capacity: u64,
        event_slots: u32,
        control_slots: u32,
        point_slots: u32,
    ) -> Result<Geometry, ShmError> {
        let arg = |what: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(ShmError::InvalidArgument(format!(
                    "{what} is {v}, expected {lo}..={hi}"
                )))
            } else {
                Ok(())
            }
        };
        arg(
            "frame_slots",
            frame_slots.into(),
            MIN_SLOTS.into(),
            MAX_FRAME_SLOTS.into(),
        )?;
        arg("frame_capacity", frame_capacity, 0, MAX_FRAME_CAPACITY)?;
        arg(
            "event_slots",
            event_slots.into(),
            MIN_SLOTS.into(),
            MAX_EVENT_SLOTS.into(),
        )?;
        arg(
            "control_slots",
            control_slots.into(),
            MIN_SLOTS.into(),
            MAX_CONTROL_SLOTS.into(),
        )?;
        arg("config length", config_len as u64, 0, MAX_CONFIG_LEN.into())?;
        if point_slots != 0 {
            arg(
                "point_slots",
                point_slots.into(),
                MIN_SLOTS.into(),
                MAX_POINT_SLOTS.into(),
            )?;
        }
        let key_capacity = if point_slots == 0 { 0 } else { KEY_CAPACITY };
        let frame_data_capacity = align_up(frame_capacity as usize, ALIGN);
        let frame_slot_size = frame::DATA + frame_data_capacity;
        let config_offset = HEADER_SIZE;
        let control_offset = align_up(config_offset + config_len, ALIGN);
        let events_offset = control_offset + control_slots as usize * control::SIZE;
        let keys_offset = align_up(events_offset + event_slots as usize * event::SIZE, ALIGN);
        let points_offset = align_up(keys_offset + key_capacity as usize * key::SIZE, ALIGN);
        let frames_offset = align_up(points_offset + point_slots as usize * point::SIZE, PAGE);
        let end = frames_offset + frame_slots as usize * frame_slot_size;
        Ok(Geometry {
            total_size: align_up(end, PAGE) as u64,
            config_offset,
            config_len,
            control_slots,
            control_offset,
            event_slots,
            events_offset,
            key_capacity,
            keys_offset,
            point_slots,
            points_offset,
            frame_slots,
            frame_slot_size,
            frame_data_capacity,
            frames_offset,
        })
    }

    /// The segment format this geometry is: 2 with a points ring, else 1.
    pub fn version(&self) -> u32 {
        if self.point_slots == 0 {
            1
        } else {
            VERSION
        }
    }

    pub fn frame_slot(&self, frame_no: u64) -> usize {
        self.frames_offset
            + ((frame_no - 1) % self.frame_slots as u64) as usize * self.frame_slot_size
    }

    pub fn event_slot(&self, seq: u64) -> usize {
        self.events_offset + ((seq - 1) % self.event_slots as u64) as usize * event::SIZE
    }

    /// Only for a version-2 geometry (`point_slots > 0`).
    pub fn point_slot(&self, seq: u64) -> usize {
        self.points_offset + ((seq - 1) % self.point_slots as u64) as usize * point::SIZE
    }

    pub fn key_entry(&self, id: u32) -> usize {
        self.keys_offset + id as usize * key::SIZE
    }

    pub fn control_slot(&self, seq: u64) -> usize {
        self.control_offset + ((seq - 1) % self.control_slots as u64) as usize * control::SIZE
    }
}

/// The raw geometry fields as read from a header, before validation.
#[derive(Clone, Copy, Debug)]
pub struct RawGeometry {
    pub total_size: u64,
    pub config_offset: u64,
    pub config_len: u32,
    pub frame_slots: u32,
    pub frames_offset: u64,
    pub frame_slot_size: u64,
    pub frame_data_capacity: u64,
    pub event_slots: u32,
    pub event_slot_size: u32,
    pub events_offset: u64,
    pub control_slots: u32,
    pub control_slot_size: u32,
    pub control_offset: u64,
    /// The version-2 fields; all zero in a version-1 segment.
    pub keys_offset: u64,
    pub key_capacity: u32,
    pub key_size: u32,
    pub point_slots: u32,
    pub point_slot_size: u32,
    pub points_offset: u64,
}

impl RawGeometry {
    /// Checks every field against the capacities and the file length: after
    /// this, every slot of every ring lies inside the mapping.
    pub fn validate(&self, path: &Path, file_len: u64, version: u32) -> Result<Geometry, ShmError> {
        let bad = |field: &str, value: u64, expected: String| {
            ShmError::field(path, field, value, expected)
        };
        if self.total_size != file_len {
            return Err(bad(
                "header total_size",
                self.total_size,
                format!("the file length {file_len}"),
            ));
        }
        let range = |field: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(bad(field, v, format!("{lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        range(
            "header config_len",
            self.config_len.into(),
            0,
            MAX_CONFIG_LEN.into(),
        )?;
        range(
            "header frame_slots",
            self.frame_slots.into(),
            MIN_SLOTS.into(),
            MAX_FRAME_SLOTS.into(),
        )?;
        range(
            "header frame_data_capacity",
            self.frame_data_capacity,
            0,
            MAX_FRAME_CAPACITY,
        )?;
        range(
            "header event_slots",
            self.event_slots.into(),
            MIN_SLOTS.into(),
            MAX_EVENT_SLOTS.into(),
        )?;
        range(
            "header control_slots",
            self.control_slots.into(),
            MIN_SLOTS.into(),
            MAX_CONTROL_SLOTS.into(),
        )?;
        if self.event_slot_size as usize != event::SIZE {
            return Err(bad(
                "header event_slot_size",
                self.event_slot_size.into(),
                event::SIZE.to_string(),
            ));
        }
        if self.control_slot_size as usize != control::SIZE {
            return Err(bad(
                "header control_slot_size",
                self.control_slot_size.into(),
                control::SIZE.to_string(),
            ));
        }
        if !self.frame_data_capacity.is_multiple_of(ALIGN as u64) {
            return Err(bad(
                "header frame_data_capacity",
                self.frame_data_capacity,
                format!("a multiple of {ALIGN}"),
            ));
        }
        let slot_size = frame::DATA as u64 + self.frame_data_capacity;
        if self.frame_slot_size != slot_size {
            return Err(bad(
                "header frame_slot_size",
                self.frame_slot_size,
                format!("{slot_size} (data offset + capacity)"),
            ));
        }
        // Regions must lie in order, aligned, without overlap, inside the file.
        let in_order = |field: &str, off: u64, min: u64, align: u64| {
            if off < min || !off.is_multiple_of(align) || off > file_len {
                Err(bad(
                    field,
                    off,
                    format!("a multiple of {align} in {min}..={file_len}"),
                ))
            } else {
                Ok(())
            }
        };
        in_order(
            "header config_offset",
            self.config_offset,
            HEADER_SIZE as u64,
            8,
        )?;
        let config_end = self.config_offset + u64::from(self.config_len);
        in_order(
            "header control_offset",
            self.control_offset,
            config_end,
            ALIGN as u64,
        )?;
        let control_end =
            self.control_offset + u64::from(self.control_slots) * control::SIZE as u64;
        in_order(
            "header events_offset",
            self.events_offset,
            control_end,
            ALIGN as u64,
        )?;
        let events_end = self.events_offset + u64::from(self.event_slots) * event::SIZE as u64;
        let (v2, points_end) = self.validate_v2(path, file_len, version, events_end)?;
        in_order(
            "header frames_offset",
            self.frames_offset,
            points_end,
            ALIGN as u64,
        )?;
        let frames_end = self.frames_offset + u64::from(self.frame_slots) * slot_size;
        if frames_end > file_len {
            return Err(bad(
                "header frame ring end",
                frames_end,
                format!("at most the file length {file_len}"),
            ));
        }
        Ok(Geometry {
            total_size: self.total_size,
            config_offset: self.config_offset as usize,
            config_len: self.config_len as usize,
            control_slots: self.control_slots,
            control_offset: self.control_offset as usize,
            event_slots: self.event_slots,
            events_offset: self.events_offset as usize,
            key_capacity: v2.key_capacity,
            keys_offset: v2.keys_offset,
            point_slots: v2.point_slots,
            points_offset: v2.points_offset,
            frame_slots: self.frame_slots,
            frame_slot_size: slot_size as usize,
            frame_data_capacity: self.frame_data_capacity as usize,
            frames_offset: self.frames_offset as usize,
        })
    }
}

/// The version-2 regions, validated.
#[derive(Clone, Copy, Default)]
struct V2Regions {
    key_capacity: u32,
    keys_offset: usize,
    point_slots: u32,
    points_offset: usize,
}

impl RawGeometry {
    /// Checks the key table and points ring of a version-2 header (a
    /// version-1 one has neither): returns them and where they end.
    fn validate_v2(
        &self,
        path: &Path,
        file_len: u64,
        version: u32,
        events_end: u64,
    ) -> Result<(V2Regions, u64), ShmError> {
        if version < 2 {
            return Ok((V2Regions::default(), events_end));
        }
        let bad = |field: &str, value: u64, expected: String| {
            ShmError::field(path, field, value, expected)
        };
        if self.key_capacity == 0 || self.key_capacity > KEY_CAPACITY {
            return Err(bad(
                "header key_capacity",
                self.key_capacity.into(),
                format!("1..={KEY_CAPACITY}"),
            ));
        }
        if self.key_size as usize != key::SIZE {
            return Err(bad(
                "header key_size",
                self.key_size.into(),
                key::SIZE.to_string(),
            ));
        }
        if self.point_slots < MIN_SLOTS || self.point_slots > MAX_POINT_SLOTS {
            return Err(bad(
                "header point_slots",
                self.point_slots.into(),
                format!("{MIN_SLOTS}..={MAX_POINT_SLOTS}"),
            ));
        }
        if self.point_slot_size as usize != point::SIZE {
            return Err(bad(
                "header point_slot_size",
                self.point_slot_size.into(),
                point::SIZE.to_string(),
            ));
        }
        let check = |field: &str, off: u64, min: u64| {
            if off < min || !off.is_multiple_of(ALIGN as u64) || off > file_len {
                Err(bad(
                    field,
                    off,
                    format!("a multiple of {ALIGN} in {min}..={file_len}"),
                ))
            } else {
                Ok(())
            }
        };
        check("header keys_offset", self.keys_offset, events_end)?;
        let keys_end = self.keys_offset + u64::from(self.key_capacity) * key::SIZE as u64;
        check("header points_offset", self.points_offset, keys_end)?;
        let points_end = self.points_offset + u64::from(self.point_slots) * point::SIZE as u64;
        Ok((
            V2Regions {
                key_capacity: self.key_capacity,
                keys_offset: self.keys_offset as usize,
                point_slots: self.point_slots,
                points_offset: self.points_offset as usize,
            },
            points_end,
        ))
    }
}

/// A scalar's name: 1..=128 of `[A-Za-z0-9._/-]`. The writer refuses
/// others; the reader checks the key table against the same rule.
pub fn valid_key(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= key::MAX_LEN
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(b))
}

/// The run's TrainingConfig plus its name, written once at creation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub run_name: String,
    pub model_name: String,
    pub dataset_name: String,
    pub class_names: Vec<String>,
    pub total_epochs: u32,
    pub batches_per_epoch: u32,
    pub batch_size: u32,
}

impl RunConfig {
    /// Encoding: u32 total_epochs, batches_per_epoch, batch_size; then
    /// run_name, model_name, dataset_name as (u32 length, UTF-8); then u32
    /// class count and each class name as (u32 length, UTF-8).
    pub fn encode(&self) -> Result<Vec<u8>, ShmError> {
        let mut out = Vec::new();
        for v in [self.total_epochs, self.batches_per_epoch, self.batch_size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let string = |out: &mut Vec<u8>, what: &str, s: &str| {
            if s.len() > MAX_NAME_LEN {
                return Err(ShmError::InvalidArgument(format!(
                    "{what} is {} bytes long, expected at most {MAX_NAME_LEN}",
                    s.len()
                )));
            }
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            Ok(())
        };
        string(&mut out, "run_name", &self.run_name)?;
        string(&mut out, "model_name", &self.model_name)?;
        string(&mut out, "dataset_name", &self.dataset_name)?;
        if self.class_names.len() > MAX_CLASSES as usize {
            return Err(ShmError::InvalidArgument(format!(
                "{} class names, expected at most {MAX_CLASSES}",
                self.class_names.len()
            )));
        }
        out.extend_from_slice(&(self.class_names.len() as u32).to_le_bytes());
        for c in &self.class_names {
            string(&mut out, "a class name", c)?;
        }
        if out.len() > MAX_CONFIG_LEN as usize {
            return Err(ShmError::InvalidArgument(format!(
                "run config is {} bytes encoded, expected at most {MAX_CONFIG_LEN}",
                out.len()
            )));
        }
        Ok(out)
    }

    pub fn decode(path: &Path, bytes: &[u8]) -> Result<RunConfig, ShmError> {
        let mut cur = Cursor {
            path,
            bytes,
            pos: 0,
        };
        let total_epochs = cur.u32("total_epochs")?;
        let batches_per_epoch = cur.u32("batches_per_epoch")?;
        let batch_size = cur.u32("batch_size")?;
        let run_name = cur.string("run_name")?;
        let model_name = cur.string("model_name")?;
        let dataset_name = cur.string("dataset_name")?;
        let count = cur.u32("class count")?;
        // Each name takes at least its 4-byte length: bounds the allocation.
        let fits = (bytes.len() - cur.pos) / 4;
        if count > MAX_CLASSES || count as usize > fits {
            return Err(ShmError::field(
                path,
                "config class count",
                count,
                format!("at most {}", fits.min(MAX_CLASSES as usize)),
            ));
        }
        let mut class_names = Vec::with_capacity(count as usize);
        for _ in 0..count {
            class_names.push(cur.string("class name")?);
        }
        Ok(RunConfig {
            run_name,
            model_name,
            dataset_name,
            class_names,
            total_epochs,
            batches_per_epoch,
            batch_size,
        })
    }
}

struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn u32(&mut self, what: &str) -> Result<u32, ShmError> {
        let Some(b) = self.bytes.get(self.pos..self.pos + 4) else {
            return Err(ShmError::field(
                self.path,
                &format!("config {what} at byte {}", self.pos),
                self.bytes.len() - self.pos,
                "4 more bytes".into(),
            ));
        };
        self.pos += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &str) -> Result<String, ShmError> {
        let len = self.u32(what)? as usize;
        let left = self.bytes.len() - self.pos;
        if len > MAX_NAME_LEN || len > left {
            return Err(ShmError::field(
                self.path,
                &format!("config {what} length"),
                len,
                format!("at most {}", left.min(MAX_NAME_LEN)),
            ));
        }
        let s = std::str::from_utf8(&self.bytes[self.pos..self.pos + len]).map_err(|e| {
            ShmError::field(
                self.path,
                &format!("config {what}"),
                format!("not UTF-8 ({e})"),
                "UTF-8".into(),
            )
        })?;
        self.pos += len;
        Ok(s.to_owned())
    }
}

/// The tensor of a frame slot as stored: `None` for a frame without
/// images; otherwise the image count within [`MAX_IMAGES`], the tensor rule
/// ([`RawTensor::decode`]), and `data_len` equal to the shape's bytes and
/// within the slot's `capacity`. Errors name the field, prefixed by `what`
/// (the frame), which is built only for an error: the read path does not
/// allocate.
pub fn frame_tensor(
    path: &Path,
    what: impl Fn() -> String,
    raw: &RawTensor,
    data_len: u64,
    capacity: usize,
) -> Result<Option<TensorDesc>, ShmError> {
    let f = |name: &str| format!("{} {name}", what());
    if raw.count == 0 {
        if data_len != 0 {
            return Err(ShmError::field(
                path,
                &f("data_len"),
                data_len,
                "0 (no images)".into(),
            ));
        }
        return Ok(None);
    }
    if raw.count as usize > MAX_IMAGES {
        return Err(ShmError::field(
            path,
            &f("image_count"),
            raw.count,
            format!("at most {MAX_IMAGES}"),
        ));
    }
    let desc = raw.decode().map_err(|error| ShmError::BadTensor {
        path: path.to_owned(),
        what: what(),
        error,
    })?;
    // count ≤ 16, c ≤ 3, h, w ≤ 16384, size ≤ 4: the product fits in u64.
    let expected = desc.total_bytes() as u64;
    if data_len != expected {
        return Err(ShmError::field(
            path,
            &f("data_len"),
            data_len,
            format!("{expected} (count x channels x height x width x dtype size)"),
        ));
    }
    if expected > capacity as u64 {
        return Err(ShmError::field(
            path,
            &f("data_len"),
            data_len,
            format!("at most the slot capacity {capacity}"),
        ));
    }
    Ok(Some(desc))
}
