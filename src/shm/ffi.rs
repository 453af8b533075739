//! C ABI of the publisher (`libtrainwatch.so`, `include/trainwatch.h`).
//!
//! A thin shell over [`Writer`]: C types in, status codes out, the error
//! text in a thread-local for `tw_last_error`. Nothing here unwinds into C;
//! a panic becomes an error return, so a trainer is never taken down.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use super::layout::{self, control};
use super::writer::{Batch, ImagePolicy, Images, Published, Writer, WriterOptions};
use super::{shm_dir_from_env, RunConfig, ShmError, TrainingStatus};
use crate::tensor::RawTensor;

/// Bumped with any change to the structs or functions below.
pub const ABI_VERSION: u32 = 1;

pub const TW_IMAGES_AUTO: u32 = 0;
pub const TW_IMAGES_ALWAYS: u32 = 1;

/// Opaque handle.
pub struct TwPublisher {
    writer: Writer,
    path: CString,
}

#[repr(C)]
pub struct TwOptions {
    pub run_name: *const c_char,
    /// NULL: `$TRAINWATCH_SHM_DIR`, else /dev/shm/trainwatch.
    pub shm_dir: *const c_char,
    pub model_name: *const c_char,
    pub dataset_name: *const c_char,
    pub class_names: *const *const c_char,
    pub class_count: u32,
    pub total_epochs: u32,
    pub batches_per_epoch: u32,
    pub batch_size: u32,
    /// 0 selects the default for each of these.
    pub frame_slots: u32,
    pub event_slots: u32,
    pub control_slots: u32,
    pub image_policy: u32,
    pub frame_capacity: u64,
    /// File mode; 0 = 0600 (the agent's user gets read/write by an ACL).
    pub mode: u32,
}

/// `tw_images`: the header spells out the descriptor's fields flat (C
/// trainers write `im.dtype`); here they are one [`RawTensor`], the type
/// the segment code uses too. The layout is the same either way, and is
/// pinned below and checked against the header by tests/shm.rs.
#[repr(C)]
pub struct TwImages {
    pub data: *const c_void,
    pub len: u64,
    pub tensor: RawTensor,
}

/// Offsets and size of `tw_images` as include/trainwatch.h lays it out on
/// the 64-bit targets we build for: a change here is an ABI change.
pub mod images_layout {
    pub const LEN: usize = 8;
    pub const DTYPE: usize = 16;
    pub const LAYOUT: usize = 20;
    pub const COUNT: usize = 24;
    pub const CHANNELS: usize = 28;
    pub const HEIGHT: usize = 32;
    pub const WIDTH: usize = 36;
    pub const HAS_NORM: usize = 40;
    pub const MEAN: usize = 44;
    pub const STD: usize = 56;
    pub const SIZE: usize = 72;
}

const _: () = {
    use std::mem::{offset_of, size_of};
    let t = offset_of!(TwImages, tensor);
    assert!(offset_of!(TwImages, len) == images_layout::LEN);
    assert!(t + offset_of!(RawTensor, dtype) == images_layout::DTYPE);
    assert!(t + offset_of!(RawTensor, layout) == images_layout::LAYOUT);
    assert!(t + offset_of!(RawTensor, count) == images_layout::COUNT);
    assert!(t + offset_of!(RawTensor, channels) == images_layout::CHANNELS);
    assert!(t + offset_of!(RawTensor, height) == images_layout::HEIGHT);
    assert!(t + offset_of!(RawTensor, width) == images_layout::WIDTH);
    assert!(t + offset_of!(RawTensor, has_norm) == images_layout::HAS_NORM);
    assert!(t + offset_of!(RawTensor, mean) == images_layout::MEAN);
    assert!(t + offset_of!(RawTensor, std) == images_layout::STD);
    assert!(size_of::<TwImages>() == images_layout::SIZE);
};

#[repr(C)]
pub struct TwBatch {
    pub epoch: u32,
    pub batch_idx: u32,
    pub loss: f32,
    pub sample_count: u32,
    pub predictions: *const i32,
    pub confidences: *const f32,
    pub labels: *const i32,
    /// NULL: no images.
    pub images: *const TwImages,
}

#[repr(C)]
pub struct TwCommand {
    pub seq: u64,
    pub command_type: u32,
    pub params_len: u32,
    pub timestamp_unix_ns: u64,
    /// `key\0value\0` pairs, `params_len` bytes.
    pub params: [u8; control::PARAMS_CAP],
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: String) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning an error or a panic into `fail` and the error text.
fn guard<T>(fail: T, f: impl FnOnce() -> Result<T, ShmError>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(e.to_string());
            fail
        }
        Err(_) => {
            set_error("internal error (panic) in libtrainwatch".into());
            fail
        }
    }
}

fn arg(what: &str) -> ShmError {
    ShmError::InvalidArgument(format!("{what} is NULL"))
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn string(p: *const c_char, what: &str, required: bool) -> Result<String, ShmError> {
    if p.is_null() {
        return if required {
            Err(arg(what))
        } else {
            Ok(String::new())
        };
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(str::to_owned)
        .map_err(|_| ShmError::InvalidArgument(format!("{what} is not UTF-8")))
}

/// # Safety
/// `p` is NULL only if `len` is 0; else it points at `len` readable `T`s.
unsafe fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T], ShmError> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(arg(what));
    }
    // SAFETY: non-NULL, `len` elements readable per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// ABI version of this library (`TW_ABI_VERSION` in the header it matches).
#[no_mangle]
pub extern "C" fn tw_abi_version() -> u32 {
    ABI_VERSION
}

/// Segment format version this library writes.
#[no_mangle]
pub extern "C" fn tw_format_version() -> u32 {
    layout::VERSION
}

/// Text of the last error on this thread; valid until the next failing call.
#[no_mangle]
pub extern "C" fn tw_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Creates the segment. Returns NULL on error (see `tw_last_error`).
///
/// # Safety
/// `opts` points at a valid `tw_options`; its strings are NUL-terminated,
/// `class_names` holds `class_count` of them.
#[no_mangle]
pub unsafe extern "C" fn tw_publisher_create(opts: *const TwOptions) -> *mut TwPublisher {
    guard(std::ptr::null_mut(), || {
        // SAFETY: NULL or valid per the contract.
        let o = unsafe { opts.as_ref() }.ok_or_else(|| arg("options"))?;
        // SAFETY: the strings and the class array follow the contract.
        let (config, dir) = unsafe {
            let names = slice(o.class_names, o.class_count as usize, "class_names")?;
            let mut class_names = Vec::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                class_names.push(string(*n, &format!("class_names[{i}]"), true)?);
            }
            let config = RunConfig {
                run_name: string(o.run_name, "run_name", true)?,
                model_name: string(o.model_name, "model_name", false)?,
                dataset_name: string(o.dataset_name, "dataset_name", false)?,
                class_names,
                total_epochs: o.total_epochs,
                batches_per_epoch: o.batches_per_epoch,
                batch_size: o.batch_size,
            };
            (config, string(o.shm_dir, "shm_dir", false)?)
        };
        let dir = if dir.is_empty() {
            shm_dir_from_env()
        } else {
            PathBuf::from(dir)
        };
        let mut w = WriterOptions::new(dir);
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        w.frame_slots = or(o.frame_slots, w.frame_slots);
        w.event_slots = or(o.event_slots, w.event_slots);
        w.control_slots = or(o.control_slots, w.control_slots);
        w.mode = or(o.mode, w.mode);
        if o.frame_capacity != 0 {
            w.frame_capacity = o.frame_capacity;
        }
        w.image_policy = match o.image_policy {
            TW_IMAGES_AUTO => ImagePolicy::Auto,
            TW_IMAGES_ALWAYS => ImagePolicy::Always,
            v => {
                return Err(ShmError::InvalidArgument(format!(
                    "image_policy is {v}, expected 0 (auto) or 1 (always)"
                )))
            }
        };
        let writer = Writer::create(&config, &w)?;
        let path = CString::new(writer.path().as_os_str().as_encoded_bytes()).unwrap_or_default();
        Ok(Box::into_raw(Box::new(TwPublisher { writer, path })))
    })
}

/// # Safety
/// `p` is NULL or a live handle from `tw_publisher_create`.
unsafe fn handle<'a>(p: *mut TwPublisher) -> Result<&'a mut TwPublisher, ShmError> {
    // SAFETY: NULL or live and not aliased per the contract.
    unsafe { p.as_mut() }.ok_or_else(|| arg("publisher"))
}

/// # Safety
/// `b` is NULL or points at a valid `tw_batch` whose arrays hold
/// `sample_count` elements and whose images (if any) hold `len` bytes.
unsafe fn batch<'a>(b: *const TwBatch) -> Result<Batch<'a>, ShmError> {
    // SAFETY: per the contract.
    let b = unsafe { b.as_ref() }.ok_or_else(|| arg("batch"))?;
    let n = b.sample_count as usize;
    // SAFETY: per the contract.
    let images = match unsafe { b.images.as_ref() } {
        None => None,
        // No images to publish: nothing to check either, as in the writer.
        Some(i) if i.tensor.count == 0 => None,
        Some(i) => {
            // The tensor rule, at the call, with the field and value.
            let desc = i.tensor.decode().map_err(ShmError::Images)?;
            let len = usize::try_from(i.len)
                .map_err(|_| ShmError::InvalidArgument("images len too large".into()))?;
            Some(Images {
                desc,
                // SAFETY: `len` readable bytes per the contract.
                data: unsafe { slice(i.data as *const u8, len, "images data")? },
            })
        }
    };
    // SAFETY: `sample_count` elements each, per the contract.
    unsafe {
        Ok(Batch {
            epoch: b.epoch,
            batch_idx: b.batch_idx,
            loss: b.loss,
            predictions: slice(b.predictions, n, "predictions")?,
            confidences: slice(b.confidences, n, "confidences")?,
            labels: slice(b.labels, n, "labels")?,
            images,
        })
    }
}

/// 1 when the next batch would be copied (prepare the images), else 0;
/// -1 on a NULL handle.
///
/// # Safety
/// `p` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn tw_wants_frame(p: *mut TwPublisher) -> c_int {
    // SAFETY: per the contract.
    guard(-1, || {
        Ok(c_int::from(unsafe { handle(p) }?.writer.wants_frame()))
    })
}

/// Publishes the batch if the agent can use it: 1 copied, 0 skipped
/// (progress recorded), -1 error.
///
/// # Safety
/// `p` is a live handle; `b` as for `batch`.
#[no_mangle]
pub unsafe extern "C" fn tw_publish_batch(p: *mut TwPublisher, b: *const TwBatch) -> c_int {
    guard(-1, || {
        // SAFETY: per the contract.
        let (h, b) = unsafe { (handle(p)?, batch(b)?) };
        Ok(match h.writer.publish_batch(&b)? {
            Published::Frame(_) => 1,
            Published::Skipped => 0,
        })
    })
}

/// Copies the batch whatever the policy: 1, or -1 on error.
///
/// # Safety
/// As `tw_publish_batch`.
#[no_mangle]
pub unsafe extern "C" fn tw_publish_frame(p: *mut TwPublisher, b: *const TwBatch) -> c_int {
    guard(-1, || {
        // SAFETY: per the contract.
        let (h, b) = unsafe { (handle(p)?, batch(b)?) };
        h.writer.publish_frame(&b).map(|_| 1)
    })
}

/// Records a batch without copying it: 0, or -1 on error.
///
/// # Safety
/// `p` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn tw_record_progress(
    p: *mut TwPublisher,
    epoch: u32,
    batch_idx: u32,
    loss: f32,
) -> c_int {
    guard(-1, || {
        // SAFETY: per the contract.
        let h = unsafe { handle(p)? };
        h.writer.record_progress(epoch, batch_idx, loss);
        Ok(0)
    })
}

/// Publishes an epoch summary: its event number (≥ 1), or -1.
///
/// # Safety
/// `p` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn tw_publish_epoch(
    p: *mut TwPublisher,
    epoch: u32,
    average_loss: f32,
    average_accuracy: f32,
) -> i64 {
    guard(-1, || {
        // SAFETY: per the contract.
        let h = unsafe { handle(p)? };
        Ok(h.writer
            .publish_epoch(epoch, average_loss, average_accuracy) as i64)
    })
}

/// Publishes a status change (TrainingStatus number, UTF-8 message or
/// NULL): its event number, or -1.
///
/// # Safety
/// `p` is a live handle; `message` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tw_publish_status(
    p: *mut TwPublisher,
    status: u32,
    message: *const c_char,
) -> i64 {
    guard(-1, || {
        // SAFETY: per the contract.
        let (h, msg) = unsafe { (handle(p)?, string(message, "message", false)?) };
        let status = TrainingStatus::from_code(status).ok_or_else(|| {
            ShmError::InvalidArgument(format!("status is {status}, expected 0..=5"))
        })?;
        Ok(h.writer.publish_status(status, &msg) as i64)
    })
}

/// The oldest command not yet acknowledged: 1 and `*out` filled, 0 none,
/// -1 a malformed command (skipped; see `tw_last_error`) or bad arguments.
///
/// # Safety
/// `p` is a live handle, `out` points at a writable `tw_command`.
#[no_mangle]
pub unsafe extern "C" fn tw_next_command(p: *mut TwPublisher, out: *mut TwCommand) -> c_int {
    guard(-1, || {
        // SAFETY: per the contract.
        let (h, out) = unsafe { (handle(p)?, out.as_mut().ok_or_else(|| arg("out"))?) };
        let Some(cmd) = h.writer.next_command()? else {
            return Ok(0);
        };
        let mut len = 0;
        for (k, v) in &cmd.params {
            for part in [k.as_bytes(), v.as_bytes()] {
                out.params[len..len + part.len()].copy_from_slice(part);
                out.params[len + part.len()] = 0;
                len += part.len() + 1;
            }
        }
        out.seq = cmd.seq;
        out.command_type = cmd.kind as u32;
        out.params_len = len as u32;
        out.timestamp_unix_ns = cmd.timestamp_unix_ns;
        Ok(1)
    })
}

/// Marks commands up to `seq` applied: 0, or -1.
///
/// # Safety
/// `p` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn tw_ack_command(p: *mut TwPublisher, seq: u64) -> c_int {
    guard(-1, || {
        // SAFETY: per the contract.
        unsafe { handle(p)? }.writer.ack_command(seq);
        Ok(0)
    })
}

/// Marks the trainer alive without publishing: 0, or -1.
///
/// # Safety
/// `p` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn tw_heartbeat(p: *mut TwPublisher) -> c_int {
    guard(-1, || {
        // SAFETY: per the contract.
        unsafe { handle(p)? }.writer.heartbeat();
        Ok(0)
    })
}

/// The segment's path; valid until `tw_publisher_close`. NULL on a NULL handle.
///
/// # Safety
/// `p` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn tw_segment_path(p: *mut TwPublisher) -> *const c_char {
    // SAFETY: per the contract.
    guard(std::ptr::null(), || Ok(unsafe { handle(p)? }.path.as_ptr()))
}

/// Marks the run closed and frees the handle; with `unlink` also removes
/// the file. 0, or -1 (the handle is freed either way).
///
/// # Safety
/// `p` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn tw_publisher_close(p: *mut TwPublisher, unlink: c_int) -> c_int {
    guard(-1, || {
        if p.is_null() {
            return Err(arg("publisher"));
        }
        // SAFETY: a live handle from Box::into_raw, ownership returns here.
        let h = unsafe { Box::from_raw(p) };
        h.writer.close(unlink != 0).map(|_| 0)
    })
}

/// Logs `n` named scalars at `step` (`keys[i]` = `values[i]`). Returns the
/// point seq of the last point written, or -1 (see `tw_last_error`): a bad
/// key or a non-finite value is refused naming both, and nothing is written.
///
/// # Safety
/// `p` is a live publisher; `keys` and `values` point at `n` elements each
/// (NULL only when `n` is 0), every key NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tw_log(
    p: *mut TwPublisher,
    step: i64,
    keys: *const *const c_char,
    values: *const f64,
    n: usize,
) -> i64 {
    guard(-1, || {
        // SAFETY: per the contract.
        let (h, keys, values) = unsafe {
            (
                handle(p)?,
                slice(keys, n, "keys")?,
                slice(values, n, "values")?,
            )
        };
        let points = named_values(keys, values)?;
        Ok(h.writer.log(step, &points)? as i64)
    })
}

/// Publishes an epoch summary with `n` named metrics (`keys[i]` =
/// `values[i]`, at most 18, checked like `tw_log`'s): its event number, or
/// -1 (see `tw_last_error`) and nothing published.
///
/// # Safety
/// As `tw_log`.
#[no_mangle]
pub unsafe extern "C" fn tw_publish_epoch_metrics(
    p: *mut TwPublisher,
    epoch: u32,
    average_loss: f32,
    average_accuracy: f32,
    keys: *const *const c_char,
    values: *const f64,
    n: usize,
) -> i64 {
    guard(-1, || {
        // SAFETY: per the contract.
        let (h, keys, values) = unsafe {
            (
                handle(p)?,
                slice(keys, n, "keys")?,
                slice(values, n, "values")?,
            )
        };
        let metrics = named_values(keys, values)?;
        Ok(h.writer
            .publish_epoch_with(epoch, average_loss, average_accuracy, &metrics)? as i64)
    })
}

/// `keys[i]` = `values[i]` pairs from C, each key checked for NULL and UTF-8.
fn named_values<'a>(
    keys: &'a [*const c_char],
    values: &[f64],
) -> Result<Vec<(&'a str, f64)>, ShmError> {
    let mut points = Vec::with_capacity(keys.len());
    for (i, (&k, &v)) in keys.iter().zip(values).enumerate() {
        if k.is_null() {
            return Err(arg(&format!("keys[{i}]")));
        }
        // SAFETY: non-NULL and NUL-terminated per the callers' contract.
        let k = unsafe { CStr::from_ptr(k) }.to_str().map_err(|_| {
            ShmError::InvalidArgument(format!("keys[{i}] is not UTF-8 (value {v})"))
        })?;
        points.push((k, v));
    }
    Ok(points)
}
