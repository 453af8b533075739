//! NVML through nvml-wrapper, which loads `libnvidia-ml` with libloading at
//! run time: the same binary runs on a machine without the NVIDIA driver,
//! where opening simply fails and the GPU figures come from elsewhere.
//!
//! Every figure is its own NVML call and its own `Option`: Jetson's NVML
//! (JetPack 6) answers "Not Supported" for utilization while it still
//! reports memory, and one refusal must not hide the rest.

use std::ffi::OsStr;
use std::path::Path;

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::Nvml;

use super::{fill, GpuReading};
use crate::telemetry::{TelemetryError, MIB};

/// The names the driver installs, versioned first: the unversioned
/// `libnvidia-ml.so` comes only with development packages.
const DEFAULT_LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// An initialized NVML and the GPU it reports on.
pub struct NvmlGpu {
    nvml: Nvml,
    index: u32,
}

impl std::fmt::Debug for NvmlGpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlGpu")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl NvmlGpu {
    /// Loads NVML (`library`, else the driver's default names) and checks
    /// that GPU `index` exists. The error says which library and why: no
    /// library, no driver loaded, no such GPU.
    pub fn open(library: Option<&Path>, index: u32) -> Result<NvmlGpu, TelemetryError> {
        let candidates: Vec<&OsStr> = match library {
            Some(p) => vec![p.as_os_str()],
            None => DEFAULT_LIBRARIES.iter().map(OsStr::new).collect(),
        };
        // The first failure is the telling one: the versioned name is the
        // one a driver installs.
        let mut first = None;
        for lib in candidates {
            let unavailable = |reason: String| TelemetryError::NvmlUnavailable {
                library: lib.to_string_lossy().into_owned(),
                reason,
            };
            match Nvml::builder().lib_path(lib).init() {
                Ok(nvml) => {
                    let count = nvml
                        .device_count()
                        .map_err(|e| unavailable(e.to_string()))?;
                    if index >= count {
                        return Err(unavailable(format!(
                            "gpu_index {index} asked for, {count} GPU(s) present"
                        )));
                    }
                    nvml.device_by_index(index)
                        .map_err(|e| unavailable(format!("GPU {index}: {e}")))?;
                    return Ok(NvmlGpu { nvml, index });
                }
                Err(e) => {
                    first.get_or_insert_with(|| unavailable(e.to_string()));
                }
            }
        }
        Err(first.expect("at least one candidate library"))
    }

    /// Fills what `r` still lacks with what NVML reports; true when it
    /// filled anything.
    pub fn read(&self, r: &mut GpuReading) -> bool {
        let Ok(dev) = self.nvml.device_by_index(self.index) else {
            return false;
        };
        let mut any = fill(&mut r.percent, || {
            dev.utilization_rates().ok().map(|u| u.gpu as f32)
        });
        let needs_memory = r.memory_used_mb.is_none() || r.memory_total_mb.is_none();
        if needs_memory {
            if let Ok(m) = dev.memory_info() {
                any |= fill(&mut r.memory_used_mb, || Some((m.used as f64 / MIB) as f32));
                any |= fill(&mut r.memory_total_mb, || {
                    Some((m.total as f64 / MIB) as f32)
                });
            }
        }
        any |= fill(&mut r.frequency_mhz, || {
            dev.clock_info(Clock::Graphics).ok().map(|c| c as f32)
        });
        r.from_nvml |= any;
        any
    }
}
