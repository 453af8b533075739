//! GPU figures from two sources, merged metric by metric: NVML where the
//! driver offers it (discrete GPUs, JetPack 7), Jetson's sysfs where it
//! does not (JetPack 5, and JetPack 6 whose NVML answers "Not Supported"
//! for utilization). Each source fills only what it can read; whatever
//! neither fills stays absent.

pub mod jetson;
pub mod nvml;

pub use jetson::JetsonGpu;
pub use nvml::NvmlGpu;

/// One reading of the GPU; `None` is "this machine does not say".
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GpuReading {
    /// Busy time over the driver's last sample period, 0–100.
    pub percent: Option<f32>,
    pub memory_used_mb: Option<f32>,
    pub memory_total_mb: Option<f32>,
    pub frequency_mhz: Option<f32>,
    /// Which sources contributed at least one figure.
    pub from_nvml: bool,
    pub from_jetson: bool,
}

impl GpuReading {
    /// The wire's `gpu_source` string for the sources that contributed.
    pub fn source(&self) -> &'static str {
        match (self.from_nvml, self.from_jetson) {
            (true, true) => "nvml+jetson-sysfs",
            (true, false) => "nvml",
            (false, true) => "jetson-sysfs",
            (false, false) => "",
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.percent.is_some()
            && self.memory_used_mb.is_some()
            && self.memory_total_mb.is_some()
            && self.frequency_mhz.is_some()
    }
}

/// Sets `slot` from `read` when it is still empty; true when it filled it.
fn fill(slot: &mut Option<f32>, read: impl FnOnce() -> Option<f32>) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = read();
    slot.is_some()
}
