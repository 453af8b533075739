//! Device telemetry for the agent: training rate and ETA
//! ([`FpsTracker`]) and CPU, memory and GPU figures ([`ResourceSampler`]),
//! turned into the wire's `PerformanceData` and `ResourceUsage`.
//!
//! Rates come from the trainer's own publish timestamps and its count of
//! published batches, not from the frames the agent happens to read, so
//! they stay right when frames are dropped. Resources come from files the
//! kernel already keeps (`/proc`, Jetson's sysfs, through `sysinfo`) and
//! from NVML loaded at run time; nothing is spawned per sample, so a sample
//! costs microseconds (see `benches/telemetry.rs`).
//!
//! A figure the machine does not provide is *absent* (`None`), never 0, and
//! each figure is read on its own: an unsupported GPU clock never hides the
//! GPU load. On the wire, absence is a seed field named in `unavailable` or
//! an unset `optional` trainwatch field (`docs/telemetry.md`).

use std::path::PathBuf;
use std::time::Duration;

pub mod fps;
pub mod gpu;
pub mod resources;

pub use fps::{BatchSample, FpsTracker, Performance, RunTotals};
pub use gpu::GpuReading;
pub use resources::{ResourceSample, ResourceSampler};

/// One bounded setting of [`TelemetryConfig`], so that callers map an error
/// to their own key by its kind, not by its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TelemetrySetting {
    Interval,
    FpsWindow,
    Root,
    ReprobeEvery,
}

impl TelemetrySetting {
    /// The field's name in [`TelemetryConfig`].
    pub fn name(self) -> &'static str {
        match self {
            TelemetrySetting::Interval => "interval",
            TelemetrySetting::FpsWindow => "fps_window",
            TelemetrySetting::Root => "root",
            TelemetrySetting::ReprobeEvery => "reprobe_every",
        }
    }
}

/// Telemetry settings that cannot be used, naming the setting and the value.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.{} = {value}: {reason}", key.name())]
    Invalid {
        key: TelemetrySetting,
        value: String,
        reason: &'static str,
    },
    /// NVML could not be used; the GPU figures come from sysfs or nowhere.
    /// Reported once when the sampler starts, not per sample.
    #[error("NVML ({library}) unavailable: {reason}")]
    NvmlUnavailable { library: String, reason: String },
}

/// Validated telemetry settings (see [`TelemetryConfig::validate`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// How often the agent sends PerformanceData per session.
    pub interval: Duration,
    /// The span "current FPS" is averaged over.
    pub fps_window: Duration,
    /// Where `sys/` and `proc/` are found: `/` on a device, a fixture tree
    /// in tests.
    pub root: PathBuf,
    /// Whether to try NVML at all (off: Jetson sysfs or nothing).
    pub nvml: bool,
    /// The NVML library to load; `None` tries `libnvidia-ml.so.1`, then
    /// `libnvidia-ml.so` (the unversioned name exists only with dev
    /// packages installed).
    pub nvml_library: Option<PathBuf>,
    /// Which GPU NVML reports on.
    pub gpu_index: u32,
    /// A missing Jetson sysfs node (the GPU's devfreq appears only once its
    /// driver has probed, possibly after the agent started) is looked for
    /// again every this many samples.
    pub reprobe_every: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            interval: Duration::from_secs(1),
            // Two sends' worth: smooth enough to read, recent enough to show
            // a slowdown within a couple of seconds.
            fps_window: Duration::from_secs(2),
            root: PathBuf::from("/"),
            nvml: true,
            nvml_library: None,
            gpu_index: 0,
            // Once every ~30 s at the default interval: a directory listing
            // of /sys/class/devfreq, too cheap to matter, soon enough after
            // a late driver probe.
            reprobe_every: 30,
        }
    }
}

impl TelemetryConfig {
    /// Checks every bound once; the agent's config layer calls this after
    /// merging its layers.
    pub fn validate(self) -> Result<Self, TelemetryError> {
        fn invalid(
            key: TelemetrySetting,
            value: impl std::fmt::Debug,
            reason: &'static str,
        ) -> TelemetryError {
            TelemetryError::Invalid {
                key,
                value: format!("{value:?}"),
                reason,
            }
        }
        let in_range = |d: Duration, lo: u64, hi: u64| {
            d >= Duration::from_millis(lo) && d <= Duration::from_millis(hi)
        };
        if !in_range(self.interval, 100, 3_600_000) {
            return Err(invalid(
                TelemetrySetting::Interval,
                self.interval,
                "expected between 100 ms and 1 hour",
            ));
        }
        if !in_range(self.fps_window, 100, 600_000) {
            return Err(invalid(
                TelemetrySetting::FpsWindow,
                self.fps_window,
                "expected between 100 ms and 10 minutes",
            ));
        }
        if !self.root.is_absolute() {
            return Err(invalid(
                TelemetrySetting::Root,
                &self.root,
                "expected an absolute path",
            ));
        }
        if self.reprobe_every == 0 {
            return Err(invalid(
                TelemetrySetting::ReprobeEvery,
                0,
                "expected at least 1 sample",
            ));
        }
        Ok(self)
    }
}

/// Bytes in the wire's "MB" (the seed's psutil figures are MiB).
pub(crate) const MIB: f64 = 1024.0 * 1024.0;
