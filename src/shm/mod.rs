//! The trainer → agent hand-off: one shared-memory segment per training run.
//!
//! The trainer maps a file under the segment directory and publishes into
//! it with plain memory copies, never waiting on anyone: batches go to a
//! lossy newest-wins frame ring, epoch summaries and status changes to a
//! lossless event ring, and commands come back through a control ring. The
//! format is defined once, in [`layout`], and documented in `docs/shm.md`.
//!
//! Every slot is a seqlock written with Release and read with Acquire
//! atomics, so a torn read is detected on aarch64 as on x86. That ordering
//! cannot be had from Python's `mmap`, so the writer is Rust ([`Writer`]),
//! exported to C and Python through [`ffi`]. The [`Reader`] is the agent's
//! side: it trusts nothing in the mapping and names the field that is wrong.

#[allow(unsafe_code)]
mod acl;
#[allow(unsafe_code)]
pub mod ffi;
pub mod inspect;
pub mod layout;
#[allow(unsafe_code)]
mod map;
pub mod reader;
mod seqlock;
pub mod writer;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::tensor::TensorError;

pub use layout::RunConfig;
pub use reader::{
    Event, EventRead, Frame, FrameRead, HeaderInfo, PointRecord, PointsRead, Progress, Reader,
    SendOutcome, WriterState,
};
pub use writer::{Batch, ImagePolicy, Images, Published, Writer, WriterOptions, LOSS_KEY};

/// Default directory of segments; the agent watches it.
pub const DEFAULT_SHM_DIR: &str = "/dev/shm/trainwatch";

/// A writer silent this long counts as idle, not live, wherever a run's
/// state is reported (the agent's log, `trainwatch inspect`).
pub const IDLE_AFTER_NS: u64 = 5_000_000_000;

/// The segment directory from `TRAINWATCH_SHM_DIR`, else the default. Only
/// the C ABI's "no directory given" path reads the environment.
pub fn shm_dir_from_env() -> PathBuf {
    std::env::var_os("TRAINWATCH_SHM_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SHM_DIR))
}

/// What can go wrong with a segment. Messages name the segment, the field
/// and the value seen.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("segment {}: cannot {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("segment {}: file is {len} bytes, shorter than the {need}-byte header", path.display())]
    TooShort {
        path: PathBuf,
        len: u64,
        need: usize,
    },
    #[error("segment {}: {field} is {value}, expected {expected}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        value: String,
        expected: String,
    },
    /// A header counter no writer could have left: the whole run is
    /// unreadable from here on (reading on would only meet it again).
    #[error("segment {}: {field} is {value}, expected {expected}; the run is corrupt", path.display())]
    Header {
        path: PathBuf,
        field: String,
        value: String,
        expected: String,
    },
    /// A frame slot's tensor breaks the tensor rule.
    #[error("segment {}: {what} {error}", path.display())]
    BadTensor {
        path: PathBuf,
        what: String,
        error: TensorError,
    },
    /// Images given to the writer break the tensor rule.
    #[error("images: {0}")]
    Images(TensorError),
    #[error("segment {}: opened read-only, cannot {op}", path.display())]
    ReadOnly { path: PathBuf, op: &'static str },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ShmError {
    pub(crate) fn field(
        path: &Path,
        field: &str,
        value: impl fmt::Display,
        expected: String,
    ) -> ShmError {
        ShmError::Field {
            path: path.to_owned(),
            field: field.to_owned(),
            value: value.to_string(),
            expected,
        }
    }

    /// An impossible header counter: see [`ShmError::Header`].
    pub(crate) fn header(
        path: &Path,
        field: &str,
        value: impl fmt::Display,
        expected: String,
    ) -> ShmError {
        ShmError::Header {
            path: path.to_owned(),
            field: field.to_owned(),
            value: value.to_string(),
            expected,
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> ShmError {
        ShmError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    }

    /// True when the segment itself is bad (skip it); false for I/O trouble
    /// or a caller's mistake.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            ShmError::TooShort { .. }
                | ShmError::Field { .. }
                | ShmError::Header { .. }
                | ShmError::BadTensor { .. }
        )
    }

    /// True when the run cannot be read on (a header counter is
    /// impossible), not just one slot: the reader stops that run.
    pub fn corrupts_run(&self) -> bool {
        matches!(self, ShmError::Header { .. })
    }
}

/// A run's state as the trainer reports it (the seed's TrainingStatus).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TrainingStatus {
    Unknown = 0,
    Initializing = 1,
    Running = 2,
    Paused = 3,
    Completed = 4,
    Failed = 5,
}

impl TrainingStatus {
    pub fn from_code(code: u32) -> Option<Self> {
        use TrainingStatus::*;
        [Unknown, Initializing, Running, Paused, Completed, Failed]
            .into_iter()
            .find(|s| *s as u32 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            TrainingStatus::Unknown => "UNKNOWN",
            TrainingStatus::Initializing => "INITIALIZING",
            TrainingStatus::Running => "RUNNING",
            TrainingStatus::Paused => "PAUSED",
            TrainingStatus::Completed => "COMPLETED",
            TrainingStatus::Failed => "FAILED",
        }
    }
}

/// A dashboard command (the seed's ControlCommand.CommandType).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CommandKind {
    Pause = 1,
    Resume = 2,
    Stop = 3,
    AdjustBatchSize = 4,
    ChangeLearningRate = 5,
}

impl CommandKind {
    pub fn from_code(code: u32) -> Option<Self> {
        use CommandKind::*;
        [Pause, Resume, Stop, AdjustBatchSize, ChangeLearningRate]
            .into_iter()
            .find(|c| *c as u32 == code)
    }

    /// The seed's enum name.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Pause => "PAUSE_TRAINING",
            CommandKind::Resume => "RESUME_TRAINING",
            CommandKind::Stop => "STOP_TRAINING",
            CommandKind::AdjustBatchSize => "ADJUST_BATCH_SIZE",
            CommandKind::ChangeLearningRate => "CHANGE_LEARNING_RATE",
        }
    }
}

/// Parameter names the trainer-side wrappers understand.
pub mod params {
    /// STOP_TRAINING: seconds the trainer may take to stop (checkpoint).
    pub const GRACE_PERIOD_S: &str = "grace_period_s";
    pub const LEARNING_RATE: &str = "learning_rate";
    pub const BATCH_SIZE: &str = "batch_size";
}

/// A command in the control ring, numbered from 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub seq: u64,
    pub kind: CommandKind,
    pub params: Vec<(String, String)>,
    pub timestamp_unix_ns: u64,
}

impl Command {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Encodes parameters as `key\0value\0` pairs.
pub(crate) fn encode_params(params: &[(&str, &str)]) -> Result<Vec<u8>, ShmError> {
    let mut out = Vec::new();
    for (k, v) in params {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(ShmError::InvalidArgument(format!(
                "command parameter {k:?}={v:?}: keys must be non-empty, neither may contain NUL"
            )));
        }
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    if out.len() > layout::control::PARAMS_CAP {
        return Err(ShmError::InvalidArgument(format!(
            "command parameters take {} bytes, at most {} fit",
            out.len(),
            layout::control::PARAMS_CAP
        )));
    }
    Ok(out)
}

/// Reads control slot `n` (the agent's `n`th command), whoever reads it:
/// the trainer taking its next command, or the agent reading back what it
/// wrote. Anything but a complete slot numbered `n` is an error naming
/// what was found.
pub(crate) fn read_command(
    m: &map::Mapping,
    geo: &layout::Geometry,
    path: &std::path::Path,
    n: u64,
) -> Result<Command, ShmError> {
    use layout::control;
    use std::sync::atomic::Ordering;
    let base = geo.control_slot(n);
    let mut buf = [0u8; control::PARAMS_CAP];
    let fields = seqlock::read_slot(m, base + control::SEQ, n, || {
        let code = m.load_u32(base + control::COMMAND, Ordering::Relaxed);
        let len = m.load_u32(base + control::PARAMS_LEN, Ordering::Relaxed) as usize;
        let ts = m.load_u64(base + control::TIMESTAMP_UNIX_NS, Ordering::Relaxed);
        if len <= control::PARAMS_CAP {
            m.read_bytes(base + control::PARAMS, &mut buf[..len]);
        }
        (code, len, ts)
    });
    let (code, len, ts) = match fields {
        seqlock::SlotRead::Read(f) => f,
        seqlock::SlotRead::Seq(s1) => {
            return Err(ShmError::field(
                path,
                &format!("control slot for command {n} seq"),
                s1,
                (2 * n).to_string(),
            ))
        }
        seqlock::SlotRead::Torn => {
            return Err(ShmError::field(
                path,
                &format!("control slot for command {n}"),
                "rewritten while read",
                "stable".into(),
            ))
        }
    };
    if len > control::PARAMS_CAP {
        return Err(ShmError::field(
            path,
            &format!("command {n} params_len"),
            len,
            format!("at most {}", control::PARAMS_CAP),
        ));
    }
    let kind = CommandKind::from_code(code)
        .ok_or_else(|| ShmError::field(path, &format!("command {n} type"), code, "1..=5".into()))?;
    let params = decode_params(path, &format!("command {n}"), &buf[..len])?;
    Ok(Command {
        seq: n,
        kind,
        params,
        timestamp_unix_ns: ts,
    })
}

pub(crate) fn decode_params(
    path: &Path,
    what: &str,
    bytes: &[u8],
) -> Result<Vec<(String, String)>, ShmError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ShmError::field(
            path,
            &format!("{what} params"),
            format!("not UTF-8 ({e})"),
            "UTF-8".into(),
        )
    })?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = text.strip_suffix('\0') else {
        return Err(ShmError::field(
            path,
            &format!("{what} params"),
            format!("{text:?}"),
            "NUL-terminated key/value pairs".into(),
        ));
    };
    let parts: Vec<&str> = body.split('\0').collect();
    if !parts.len().is_multiple_of(2) || parts.iter().step_by(2).any(|k| k.is_empty()) {
        return Err(ShmError::field(
            path,
            &format!("{what} params"),
            format!("{text:?}"),
            "key\\0value\\0 pairs".into(),
        ));
    }
    Ok(parts
        .chunks(2)
        .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
        .collect())
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the
/// machine, so writer and reader can compare stamps.
pub fn monotonic_ns() -> u64 {
    map::clock_ns(libc::CLOCK_MONOTONIC)
}

pub fn unix_ns() -> u64 {
    map::clock_ns(libc::CLOCK_REALTIME)
}

/// Start time of a process in clock ticks since boot (/proc/PID/stat field
/// 22), or None where /proc does not tell.
pub(crate) fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after the last ')' start with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

pub(crate) use map::pid_exists;
