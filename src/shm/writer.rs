//! The trainer's side: creates a segment and publishes into it.
//!
//! Publishing never waits: a frame is a memcpy into the next slot, an event
//! a few stores, and nothing ever blocks on the agent. With
//! [`ImagePolicy::Auto`] the writer copies a batch only when the agent will
//! take it soon (it announces its next read in the header); other batches
//! cost a few atomic stores.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::layout::{
    self, control, event, frame, hdr, key, point, Geometry, RunConfig, MAX_IMAGES,
};
use super::map::Mapping;
use super::seqlock::write_slot;
use super::{monotonic_ns, read_command, unix_ns, Command, ShmError, TrainingStatus};
use crate::tensor::{RawTensor, TensorDesc};

/// When batches are copied into the frame ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePolicy {
    /// Only when an attached agent will read soon: calling `publish_batch`
    /// every batch stays cheap.
    Auto,
    /// Every batch (tests, debugging, tools that read without attaching).
    Always,
}

/// How to lay out a new segment.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    pub shm_dir: PathBuf,
    pub frame_slots: u32,
    /// Tensor bytes one frame can hold.
    pub frame_capacity: u64,
    pub event_slots: u32,
    pub control_slots: u32,
    /// Slots of the points ring (named scalars, version 2).
    pub point_slots: u32,
    pub image_policy: ImagePolicy,
    /// File mode (default 0600). The agent's user, the owner of `shm_dir`
    /// when that is not the trainer's user, gets read/write by an ACL
    /// ([`grant_agent`]); nobody else can open the segment.
    pub mode: u32,
}

impl WriterOptions {
    pub fn new(shm_dir: impl Into<PathBuf>) -> WriterOptions {
        WriterOptions {
            shm_dir: shm_dir.into(),
            frame_slots: layout::DEFAULT_FRAME_SLOTS,
            frame_capacity: layout::DEFAULT_FRAME_CAPACITY,
            event_slots: layout::DEFAULT_EVENT_SLOTS,
            control_slots: layout::DEFAULT_CONTROL_SLOTS,
            point_slots: layout::DEFAULT_POINT_SLOTS,
            image_policy: ImagePolicy::Auto,
            mode: 0o600,
        }
    }
}

/// Sample images of a batch: a descriptor and exactly its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Images<'a> {
    pub desc: TensorDesc,
    pub data: &'a [u8],
}

/// One batch. The per-sample slices have equal lengths; past
/// [`MAX_IMAGES`] samples or images the rest is not published.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub epoch: u32,
    pub batch_idx: u32,
    pub loss: f32,
    pub predictions: &'a [i32],
    pub confidences: &'a [f32],
    pub labels: &'a [i32],
    pub images: Option<Images<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Copied as frame number n.
    Frame(u64),
    /// Not copied (nobody would read it yet); progress still updated.
    Skipped,
}

/// Agent's announced next read may be this late before the writer decides
/// the agent is gone and stops copying frames for it.
const READER_STALE_NS: u64 = 2_000_000_000;

pub struct Writer {
    map: Mapping,
    geo: Geometry,
    path: PathBuf,
    policy: ImagePolicy,
    frame_no: u64,
    event_no: u64,
    applied: u64,
    /// Estimated time between batches: lets the writer copy the batch just
    /// before the agent's announced read rather than the one just after.
    batch_period_ns: u64,
    last_batch_ns: u64,
    progress_seq: u64,
    /// Interned scalar keys → their id in the key table.
    keys: HashMap<Box<str>, u32>,
    point_no: u64,
    batches_per_epoch: u32,
    closed: bool,
}

/// The key of every batch's loss in the points ring.
pub const LOSS_KEY: &str = "train/loss";

/// A run name is a file name: 1..=128 of `[A-Za-z0-9._-]`, not starting with
/// '.' (hidden names are the writer's temporary files).
pub fn validate_run_name(name: &str) -> Result<(), ShmError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ShmError::InvalidArgument(format!(
            "run name {name:?}: expected 1 to 128 of A-Z a-z 0-9 . _ -, not starting with '.'"
        )))
    }
}

/// A segment directory the writer makes itself: sticky (only a file's
/// owner removes or renames it), setgid (files take its group).
const DIR_MODE: u32 = 0o3770;

/// Lets the agent read and acknowledge a new segment, and nobody else:
/// when `agent` (the directory's owner, the agent's user as deployed) is
/// not the trainer's user, an ACL gives that user read/write. Where the
/// file system has no ACLs the segment falls back to the directory's group
/// (read/write), as before ACLs, with one warning on stderr.
fn grant_agent(file: &File, path: &Path, mode: u32, agent: u32) -> Result<(), ShmError> {
    let me = file
        .metadata()
        .map_err(|e| ShmError::io(path, "stat", e))?
        .uid();
    if agent == me {
        return Ok(());
    }
    let Err(e) = super::acl::grant_user_rw(file, mode, agent) else {
        return Ok(());
    };
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        eprintln!(
            "trainwatch: cannot give the agent's user (uid {agent}) access to {} by an ACL ({e}); \
             segments are readable by the directory's group instead",
            path.display()
        );
    });
    file.set_permissions(fs::Permissions::from_mode(mode | 0o060))
        .map_err(|e| ShmError::io(path, "set permissions", e))
}

impl Writer {
    /// Creates `<shm_dir>/<run_name>`, replacing an older segment of that
    /// name. The file appears complete: it is built under a hidden name and
    /// renamed into place.
    pub fn create(config: &RunConfig, opts: &WriterOptions) -> Result<Writer, ShmError> {
        validate_run_name(&config.run_name)?;
        let encoded = config.encode()?;
        let geo = Geometry::new(
            encoded.len(),
            opts.frame_slots,
            opts.frame_capacity,
            opts.event_slots,
            opts.control_slots,
            opts.point_slots,
        )?;
        let dir = &opts.shm_dir;
        if !dir.is_dir() {
            // The agent's tmpfiles rule normally makes it (owned by the
            // agent's user, sticky, setgid); without it, make one that is
            // sticky too, so no user removes or replaces another's segment.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|e| ShmError::io(dir, "create the segment directory", e))?;
            // mkdir ignores the setgid and sticky bits.
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| ShmError::io(dir, "set permissions of the segment directory", e))?;
        }
        let agent = fs::metadata(dir)
            .map_err(|e| ShmError::io(dir, "stat the segment directory", e))?
            .uid();
        let path = dir.join(&config.run_name);
        let tmp = dir.join(format!(".{}.{}.tmp", config.run_name, std::process::id()));
        let result = Self::build(&tmp, &path, &encoded, geo, opts, agent).map(|mut w| {
            w.batches_per_epoch = config.batches_per_epoch;
            w
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn build(
        tmp: &Path,
        path: &Path,
        encoded: &[u8],
        geo: Geometry,
        opts: &WriterOptions,
        agent: u32,
    ) -> Result<Writer, ShmError> {
        let _ = fs::remove_file(tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(opts.mode)
            .open(tmp)
            .map_err(|e| ShmError::io(tmp, "create", e))?;
        // Exactly the mode asked for, whatever the umask; then the agent.
        file.set_permissions(fs::Permissions::from_mode(opts.mode))
            .map_err(|e| ShmError::io(tmp, "set permissions", e))?;
        grant_agent(&file, tmp, opts.mode, agent)?;
        file.set_len(geo.total_size)
            .map_err(|e| ShmError::io(tmp, "set length", e))?;
        reserve(&file, tmp, geo.total_size)?;
        let map = Mapping::map(&file, true).map_err(|e| ShmError::io(tmp, "map", e))?;
        drop(file);

        let pid = std::process::id();
        let m = &map;
        m.write_bytes(geo.config_offset, encoded);
        m.store_u32(hdr::VERSION, geo.version(), Ordering::Relaxed);
        if geo.point_slots != 0 {
            m.store_u64(hdr::KEYS_OFFSET, geo.keys_offset as u64, Ordering::Relaxed);
            m.store_u32(hdr::KEY_CAPACITY, geo.key_capacity, Ordering::Relaxed);
            m.store_u32(hdr::KEY_SIZE, key::SIZE as u32, Ordering::Relaxed);
            m.store_u32(hdr::POINT_SLOTS, geo.point_slots, Ordering::Relaxed);
            m.store_u32(hdr::POINT_SLOT_SIZE, point::SIZE as u32, Ordering::Relaxed);
            m.store_u64(
                hdr::POINTS_OFFSET,
                geo.points_offset as u64,
                Ordering::Relaxed,
            );
        }
        m.store_u32(
            hdr::HEADER_SIZE,
            layout::HEADER_SIZE as u32,
            Ordering::Relaxed,
        );
        m.store_u64(hdr::TOTAL_SIZE, geo.total_size, Ordering::Relaxed);
        m.store_u32(hdr::WRITER_PID, pid, Ordering::Relaxed);
        m.store_u64(hdr::WRITER_START_UNIX_NS, unix_ns(), Ordering::Relaxed);
        m.store_u64(
            hdr::WRITER_START_TICKS,
            super::process_start_ticks(pid).unwrap_or(0),
            Ordering::Relaxed,
        );
        m.store_u64(
            hdr::CONFIG_OFFSET,
            geo.config_offset as u64,
            Ordering::Relaxed,
        );
        m.store_u32(hdr::CONFIG_LEN, geo.config_len as u32, Ordering::Relaxed);
        m.store_u32(hdr::FRAME_SLOTS, geo.frame_slots, Ordering::Relaxed);
        m.store_u64(
            hdr::FRAMES_OFFSET,
            geo.frames_offset as u64,
            Ordering::Relaxed,
        );
        m.store_u64(
            hdr::FRAME_SLOT_SIZE,
            geo.frame_slot_size as u64,
            Ordering::Relaxed,
        );
        m.store_u64(
            hdr::FRAME_DATA_CAPACITY,
            geo.frame_data_capacity as u64,
            Ordering::Relaxed,
        );
        m.store_u32(hdr::EVENT_SLOTS, geo.event_slots, Ordering::Relaxed);
        m.store_u32(hdr::EVENT_SLOT_SIZE, event::SIZE as u32, Ordering::Relaxed);
        m.store_u64(
            hdr::EVENTS_OFFSET,
            geo.events_offset as u64,
            Ordering::Relaxed,
        );
        m.store_u32(hdr::CONTROL_SLOTS, geo.control_slots, Ordering::Relaxed);
        m.store_u32(
            hdr::CONTROL_SLOT_SIZE,
            control::SIZE as u32,
            Ordering::Relaxed,
        );
        m.store_u64(
            hdr::CONTROL_OFFSET,
            geo.control_offset as u64,
            Ordering::Relaxed,
        );
        m.store_u32(hdr::WRITER_STATE, layout::STATE_OPEN, Ordering::Relaxed);
        m.store_u64(hdr::WRITER_HEARTBEAT_NS, monotonic_ns(), Ordering::Relaxed);
        // Magic last: a header with the magic is complete.
        m.store_u64(hdr::MAGIC, layout::MAGIC, Ordering::Release);
        fs::rename(tmp, path).map_err(|e| ShmError::io(path, "rename into place", e))?;
        Ok(Writer {
            map,
            geo,
            path: path.to_owned(),
            policy: opts.image_policy,
            frame_no: 0,
            event_no: 0,
            applied: 0,
            batch_period_ns: 0,
            last_batch_ns: 0,
            progress_seq: 0,
            keys: HashMap::new(),
            point_no: 0,
            batches_per_epoch: 0,
            closed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor bytes one frame holds.
    pub fn frame_capacity(&self) -> usize {
        self.geo.frame_data_capacity
    }

    /// Whether the next batch would be copied: lets a wrapper skip preparing
    /// the images (a contiguous copy, a device → host transfer) at all.
    pub fn wants_frame(&self) -> bool {
        self.wants_frame_at(monotonic_ns())
    }

    fn wants_frame_at(&self, now: u64) -> bool {
        match self.policy {
            ImagePolicy::Always => true,
            ImagePolicy::Auto => {
                // Untrusted values: any number only changes our decision.
                let interval = self
                    .map
                    .load_u64(hdr::READER_INTERVAL_NS, Ordering::Relaxed);
                let next = self
                    .map
                    .load_u64(hdr::READER_NEXT_READ_NS, Ordering::Relaxed);
                if interval == 0 || now > next.saturating_add(READER_STALE_NS) {
                    return false;
                }
                now.saturating_add(self.batch_period_ns) >= next
            }
        }
    }

    /// Publishes a batch if the agent can use it, else records its progress.
    /// Either way its loss is logged as [`LOSS_KEY`] (see `note_batch`).
    pub fn publish_batch(&mut self, batch: &Batch<'_>) -> Result<Published, ShmError> {
        let now = monotonic_ns();
        if self.wants_frame_at(now) {
            self.publish_frame(batch).map(Published::Frame)
        } else {
            self.record_progress(batch.epoch, batch.batch_idx, batch.loss);
            Ok(Published::Skipped)
        }
    }

    /// Records a batch that is not copied: its numbers go to the progress
    /// block, and it counts as skipped.
    pub fn record_progress(&mut self, epoch: u32, batch_idx: u32, loss: f32) {
        self.note_batch(epoch, batch_idx, loss);
        self.map.add_u64(hdr::FRAMES_SKIPPED, 1);
    }

    fn note_batch(&mut self, epoch: u32, batch_idx: u32, loss: f32) {
        let now = monotonic_ns();
        if self.last_batch_ns != 0 {
            let dt = now.saturating_sub(self.last_batch_ns).min(1_000_000_000);
            self.batch_period_ns = (self.batch_period_ns * 3 + dt) / 4;
        }
        self.last_batch_ns = now;
        let m = &self.map;
        self.progress_seq += 1;
        write_slot(m, hdr::PROGRESS_SEQ, self.progress_seq, || {
            m.store_u32(hdr::PROGRESS_EPOCH, epoch, Ordering::Relaxed);
            m.store_u32(hdr::PROGRESS_BATCH_IDX, batch_idx, Ordering::Relaxed);
            m.store_f32(hdr::PROGRESS_LOSS, loss);
            m.store_u64(hdr::PROGRESS_MONO_NS, now, Ordering::Relaxed);
        });
        m.add_u64(hdr::BATCHES_SEEN, 1);
        m.store_u64(hdr::WRITER_HEARTBEAT_NS, now, Ordering::Relaxed);
        // Every batch's loss, copied or not. A non-finite loss is counted
        // (batches_seen) but not logged; the key table can only be full if
        // the run logged KEY_CAPACITY other names first, and then the loss
        // is not logged either — a publish_batch never fails for it.
        if loss.is_finite() && self.geo.point_slots != 0 {
            let step = i64::from(epoch) * i64::from(self.batches_per_epoch) + i64::from(batch_idx);
            let _ = self.log(step, &[(LOSS_KEY, f64::from(loss))]);
        }
    }

    /// Logs named scalars at `step`. Validates every (key, value) first
    /// (key: 1–128 of `[A-Za-z0-9._/-]`; value finite; at most
    /// `KEY_CAPACITY` distinct keys per run) and writes nothing if any is
    /// bad. Returns the point seq of the last point written (the current
    /// write position when `points` is empty). Never waits: a ring the
    /// agent does not drain is lapped, and the agent counts what it missed.
    pub fn log(&mut self, step: i64, points: &[(&str, f64)]) -> Result<u64, ShmError> {
        self.check_points(points)?;
        let wall = unix_ns();
        let m = &self.map;
        for &(name, value) in points {
            let id = match self.keys.get(name) {
                Some(&id) => id,
                None => intern(m, &self.geo, &mut self.keys, name),
            };
            let n = self.point_no + 1;
            let base = self.geo.point_slot(n);
            write_slot(m, base + point::SEQ, n, || {
                m.store_u32(base + point::KEY, id, Ordering::Relaxed);
                m.store_u64(base + point::STEP, step as u64, Ordering::Relaxed);
                m.store_u64(base + point::WALL_UNIX_NS, wall, Ordering::Relaxed);
                m.store_u64(base + point::VALUE, value.to_bits(), Ordering::Relaxed);
            });
            self.point_no = n;
        }
        // One publish per call: batching is what keeps a point cheap.
        m.store_u64(hdr::POINT_WRITE_SEQ, self.point_no, Ordering::Release);
        Ok(self.point_no)
    }

    /// Points published so far.
    pub fn points_written(&self) -> u64 {
        self.point_no
    }

    /// Copies a batch into the next frame slot, whatever the policy.
    pub fn publish_frame(&mut self, batch: &Batch<'_>) -> Result<u64, ShmError> {
        let n = batch.predictions.len();
        if batch.confidences.len() != n || batch.labels.len() != n {
            return Err(ShmError::InvalidArgument(format!(
                "{} predictions, {} confidences, {} labels: expected equal counts",
                n,
                batch.confidences.len(),
                batch.labels.len()
            )));
        }
        let samples = n.min(MAX_IMAGES);
        let (images, dropped) = match &batch.images {
            Some(img) if img.desc.count > 0 => self.fit_images(img)?,
            _ => (None, 0),
        };

        self.note_batch(batch.epoch, batch.batch_idx, batch.loss);
        if dropped > 0 {
            self.map.add_u64(hdr::IMAGES_DROPPED, dropped);
        }
        let f = self.frame_no + 1;
        let base = self.geo.frame_slot(f);
        let m = &self.map;
        write_slot(m, base + frame::SEQ, f, || {
            m.store_u64(base + frame::FRAME_NO, f, Ordering::Relaxed);
            m.store_u64(
                base + frame::TIMESTAMP_UNIX_NS,
                unix_ns(),
                Ordering::Relaxed,
            );
            m.store_u64(base + frame::MONO_NS, self.last_batch_ns, Ordering::Relaxed);
            m.store_u32(base + frame::EPOCH, batch.epoch, Ordering::Relaxed);
            m.store_u32(base + frame::BATCH_IDX, batch.batch_idx, Ordering::Relaxed);
            m.store_f32(base + frame::LOSS, batch.loss);
            m.store_u32(
                base + frame::SAMPLE_COUNT,
                samples as u32,
                Ordering::Relaxed,
            );
            for i in 0..samples {
                m.store_u32(
                    base + frame::PREDICTIONS + 4 * i,
                    batch.predictions[i] as u32,
                    Ordering::Relaxed,
                );
                m.store_f32(base + frame::CONFIDENCES + 4 * i, batch.confidences[i]);
                m.store_u32(
                    base + frame::LABELS + 4 * i,
                    batch.labels[i] as u32,
                    Ordering::Relaxed,
                );
            }
            let raw = images
                .map(|(d, _)| RawTensor::from_desc(&d))
                .unwrap_or_default();
            let data_len = images.map_or(0, |(d, _)| d.total_bytes() as u64);
            m.store_u32(base + frame::DTYPE, raw.dtype, Ordering::Relaxed);
            m.store_u32(base + frame::LAYOUT, raw.layout, Ordering::Relaxed);
            m.store_u32(base + frame::IMAGE_COUNT, raw.count, Ordering::Relaxed);
            m.store_u32(base + frame::CHANNELS, raw.channels, Ordering::Relaxed);
            m.store_u32(base + frame::HEIGHT, raw.height, Ordering::Relaxed);
            m.store_u32(base + frame::WIDTH, raw.width, Ordering::Relaxed);
            m.store_u32(base + frame::HAS_NORM, raw.has_norm, Ordering::Relaxed);
            for i in 0..3 {
                m.store_f32(base + frame::MEAN + 4 * i, raw.mean[i]);
                m.store_f32(base + frame::STD + 4 * i, raw.std[i]);
            }
            m.store_u64(base + frame::DATA_LEN, data_len, Ordering::Relaxed);
            if let Some((_, data)) = images {
                m.write_bytes(base + frame::DATA, data);
            }
        });
        m.store_u64(hdr::FRAME_WRITE_SEQ, f, Ordering::Release);
        self.frame_no = f;
        Ok(f)
    }

    /// Checks the caller's images against the tensor rule and their bytes,
    /// then keeps what one frame holds (`MAX_IMAGES`, the slot capacity):
    /// the images to copy, if any, and how many were dropped.
    fn fit_images<'b>(&self, img: &Images<'b>) -> Result<(Option<Fitted<'b>>, u64), ShmError> {
        let mut desc = img.desc;
        desc.validate().map_err(ShmError::Images)?;
        let size = desc.image_bytes();
        if img.data.len() as u128 != size as u128 * u128::from(desc.count) {
            return Err(ShmError::InvalidArgument(format!(
                "images: {} bytes given, the descriptor ({} x {}x{}x{} {}) needs {}",
                img.data.len(),
                desc.count,
                desc.channels,
                desc.height,
                desc.width,
                desc.dtype,
                size as u128 * u128::from(desc.count)
            )));
        }
        let fit = (self.geo.frame_data_capacity / size).min(MAX_IMAGES) as u32;
        let mut dropped = 0;
        if desc.count > fit {
            dropped = u64::from(desc.count - fit);
            desc.count = fit;
        }
        Ok((
            (desc.count > 0).then(|| (desc, &img.data[..desc.total_bytes()])),
            dropped,
        ))
    }

    /// Checks named values before any is written: valid keys, finite
    /// values, room in the key table for the new ones. Errors name the key
    /// and its value.
    fn check_points(&self, points: &[(&str, f64)]) -> Result<(), ShmError> {
        if self.geo.point_slots == 0 {
            return Err(ShmError::InvalidArgument(
                "this segment is format version 1, which has no points ring".into(),
            ));
        }
        let mut new_keys = 0usize;
        for (i, &(name, value)) in points.iter().enumerate() {
            if !layout::valid_key(name.as_bytes()) {
                return Err(ShmError::InvalidArgument(format!(
                    "key {name:?} (value {value}): expected 1 to {} of A-Z a-z 0-9 . _ / -",
                    key::MAX_LEN
                )));
            }
            if !value.is_finite() {
                return Err(ShmError::InvalidArgument(format!(
                    "key {name:?}: value {value} is not finite"
                )));
            }
            if !self.keys.contains_key(name) && !points[..i].iter().any(|p| p.0 == name) {
                new_keys += 1;
            }
        }
        let capacity = self.geo.key_capacity as usize;
        if self.keys.len() + new_keys > capacity {
            let first_new = points
                .iter()
                .find(|p| !self.keys.contains_key(p.0))
                .map_or("", |p| p.0);
            return Err(ShmError::InvalidArgument(format!(
                "key {first_new:?}: {} new keys would exceed the segment's {capacity} distinct keys",
                new_keys
            )));
        }
        Ok(())
    }

    /// Publishes an epoch summary; returns its event number.
    pub fn publish_epoch(&mut self, epoch: u32, average_loss: f32, average_accuracy: f32) -> u64 {
        self.publish_event(
            event::KIND_EPOCH,
            0,
            epoch,
            average_loss,
            average_accuracy,
            &[],
        )
    }

    /// An epoch summary with named metrics (at most
    /// [`event::MAX_METRICS`], checked like [`log`](Self::log)'s; format 2
    /// only): returns its event number. Nothing is published on an error.
    pub fn publish_epoch_with(
        &mut self,
        epoch: u32,
        average_loss: f32,
        average_accuracy: f32,
        metrics: &[(&str, f64)],
    ) -> Result<u64, ShmError> {
        if metrics.is_empty() {
            return Ok(self.publish_epoch(epoch, average_loss, average_accuracy));
        }
        if self.geo.point_slots == 0 {
            return Err(ShmError::InvalidArgument(format!(
                "epoch {epoch}: this segment is format version 1, which carries no epoch metrics"
            )));
        }
        if metrics.len() > event::MAX_METRICS {
            return Err(ShmError::InvalidArgument(format!(
                "epoch {epoch}: {} metrics, at most {} fit an epoch summary (log the rest with log())",
                metrics.len(),
                event::MAX_METRICS
            )));
        }
        self.check_points(metrics)?;
        let mut bytes = [0u8; event::MSG_CAP];
        for (i, &(name, value)) in metrics.iter().enumerate() {
            let id = match self.keys.get(name) {
                Some(&id) => id,
                None => intern(&self.map, &self.geo, &mut self.keys, name),
            };
            let at = i * event::METRIC_SIZE;
            bytes[at..at + 4].copy_from_slice(&id.to_le_bytes());
            bytes[at + 4..at + 12].copy_from_slice(&value.to_bits().to_le_bytes());
        }
        let len = metrics.len() * event::METRIC_SIZE;
        Ok(self.publish_event(
            event::KIND_EPOCH,
            0,
            epoch,
            average_loss,
            average_accuracy,
            &bytes[..len],
        ))
    }

    /// Publishes a status change; a message longer than the slot is cut at
    /// a character boundary.
    pub fn publish_status(&mut self, status: TrainingStatus, message: &str) -> u64 {
        let mut cut = message.len().min(event::MSG_CAP);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let msg = &message.as_bytes()[..cut];
        self.publish_event(event::KIND_STATUS, status as u32, 0, 0.0, 0.0, msg)
    }

    fn publish_event(
        &mut self,
        kind: u32,
        status: u32,
        epoch: u32,
        loss: f32,
        acc: f32,
        msg: &[u8],
    ) -> u64 {
        let n = self.event_no + 1;
        let base = self.geo.event_slot(n);
        let m = &self.map;
        write_slot(m, base + event::SEQ, n, || {
            m.store_u32(base + event::KIND, kind, Ordering::Relaxed);
            m.store_u32(base + event::STATUS, status, Ordering::Relaxed);
            m.store_u64(
                base + event::TIMESTAMP_UNIX_NS,
                unix_ns(),
                Ordering::Relaxed,
            );
            m.store_u32(base + event::EPOCH, epoch, Ordering::Relaxed);
            m.store_f32(base + event::AVG_LOSS, loss);
            m.store_f32(base + event::AVG_ACCURACY, acc);
            m.store_u32(base + event::MSG_LEN, msg.len() as u32, Ordering::Relaxed);
            m.write_bytes(base + event::MSG, msg);
        });
        m.store_u64(hdr::EVENT_WRITE_SEQ, n, Ordering::Release);
        m.store_u64(hdr::WRITER_HEARTBEAT_NS, monotonic_ns(), Ordering::Relaxed);
        self.event_no = n;
        n
    }

    /// Marks the writer alive without publishing (long evaluation phases).
    pub fn heartbeat(&self) {
        self.map
            .store_u64(hdr::WRITER_HEARTBEAT_NS, monotonic_ns(), Ordering::Relaxed);
    }

    /// The oldest command not yet applied, if any. It stays pending until
    /// [`ack_command`](Self::ack_command). A malformed command is reported
    /// once and skipped, so one bad slot cannot wedge the trainer.
    pub fn next_command(&mut self) -> Result<Option<Command>, ShmError> {
        self.heartbeat();
        let m = &self.map;
        let written = m.load_u64(hdr::CONTROL_WRITE_SEQ, Ordering::Acquire);
        if written <= self.applied {
            return Ok(None);
        }
        let slots = u64::from(self.geo.control_slots);
        if written > layout::MAX_SEQ {
            return Err(ShmError::field(
                &self.path,
                "header control_write_seq",
                written,
                format!("at most {}", layout::MAX_SEQ),
            ));
        }
        if written - self.applied > slots {
            let err = ShmError::field(
                &self.path,
                "header control_write_seq",
                written,
                format!("at most applied + slots = {}", self.applied + slots),
            );
            self.ack_command(written - slots);
            return Err(err);
        }
        let n = self.applied + 1;
        // The agent publishes control_write_seq only after the slot is
        // complete, so anything but 2n here is corruption: skipped below.
        match read_command(m, &self.geo, &self.path, n) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                self.ack_command(n);
                Err(e)
            }
        }
    }

    /// Marks commands up to `seq` applied.
    pub fn ack_command(&mut self, seq: u64) {
        let written = self.map.load_u64(hdr::CONTROL_WRITE_SEQ, Ordering::Relaxed);
        if seq > self.applied && seq <= written {
            self.applied = seq;
            self.map
                .store_u64(hdr::CONTROL_APPLIED_SEQ, seq, Ordering::Release);
        }
    }

    /// Marks the run closed; the file stays for the agent to drain (it
    /// removes closed segments), unless `unlink`.
    pub fn close(mut self, unlink: bool) -> Result<(), ShmError> {
        self.mark_closed();
        if unlink {
            fs::remove_file(&self.path).map_err(|e| ShmError::io(&self.path, "remove", e))?;
        }
        Ok(())
    }

    fn mark_closed(&mut self) {
        if !self.closed {
            self.closed = true;
            self.heartbeat();
            self.map
                .store_u32(hdr::WRITER_STATE, layout::STATE_CLOSED, Ordering::Release);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.mark_closed();
    }
}

/// Writes `name` as the next key table entry and publishes the count with
/// Release, so a reader that sees the count sees the name. The caller
/// checked the name and the capacity.
fn intern(m: &Mapping, geo: &Geometry, keys: &mut HashMap<Box<str>, u32>, name: &str) -> u32 {
    let id = keys.len() as u32;
    let base = geo.key_entry(id);
    m.store_u32(base + key::LEN, name.len() as u32, Ordering::Relaxed);
    m.write_bytes(base + key::NAME, name.as_bytes());
    m.store_u64(hdr::KEY_COUNT, u64::from(id) + 1, Ordering::Release);
    keys.insert(name.into(), id);
    id
}

/// Reserves the file's pages now, so a full /dev/shm is an error here
/// rather than a SIGBUS in the middle of a publish.
fn reserve(file: &File, path: &Path, len: u64) -> Result<(), ShmError> {
    let Ok(len) = libc::off_t::try_from(len) else {
        return Err(ShmError::InvalidArgument(format!(
            "segment size {len} too large"
        )));
    };
    super::map::fallocate(file, len)
        .map_err(|e| ShmError::io(path, "reserve memory for the segment", e))
}

/// Images that fit one frame: their descriptor (count capped) and bytes.
type Fitted<'b> = (TensorDesc, &'b [u8]);
