//! CPU, memory and GPU figures of the device and of one trainer process.
//!
//! [`ResourceSampler`] probes its sources once (NVML, Jetson sysfs) and then
//! reads only what a sample needs: the global CPU times, the memory totals,
//! the trainer's `/proc/<pid>` entry (through `sysinfo`, refreshed for that
//! pid alone), and the GPU's files or NVML calls. CPU percentages are
//! differences between two samples, so the first sample of the device, and
//! of each trainer pid, has none: absent, not 0.

use std::time::Instant;

use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::gpu::{GpuReading, JetsonGpu, NvmlGpu};
use super::{TelemetryConfig, TelemetryError, MIB};
use crate::proto;

/// One reading; every figure is `None` when this machine does not provide
/// it (or, for a CPU percentage, on its first sample).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResourceSample {
    /// The trainer's CPU use, percent of one core (above 100 on several).
    pub process_cpu_percent: Option<f32>,
    /// The trainer's resident memory, MiB.
    pub process_memory_mb: Option<f32>,
    /// The device's CPU use over all cores, 0–100.
    pub device_cpu_percent: Option<f32>,
    /// The device's memory in use (total − available), MiB.
    pub device_memory_used_mb: Option<f32>,
    pub device_memory_total_mb: Option<f32>,
    pub gpu: GpuReading,
}

/// Trainer processes whose CPU time was read before, so the next read
/// yields a percentage. An agent streams a handful of runs at most.
const PRIMED_PIDS: usize = 16;

/// A process's CPU time at the last sample. Kept here rather than using
/// sysinfo's own percentage, which stays 0 (not "unknown") for one more
/// sample when the first read found no CPU time yet, as with a trainer
/// that has just started.
#[derive(Clone, Copy, Debug)]
struct CpuMark {
    pid: u32,
    /// Tells a reused pid from the process first seen under it.
    start_time: u64,
    cpu_ms: u64,
    at: Instant,
}

/// Samples the device and trainer processes; build one per agent.
#[derive(Debug)]
pub struct ResourceSampler {
    system: System,
    nvml: Option<NvmlGpu>,
    nvml_error: Option<TelemetryError>,
    jetson: JetsonGpu,
    cpu_primed_at: Option<Instant>,
    primed: [Option<CpuMark>; PRIMED_PIDS],
    next_primed: usize,
}

impl ResourceSampler {
    /// Probes the GPU sources once. A missing NVML is normal (no driver, a
    /// Jetson without NVML): [`nvml_error`](Self::nvml_error) says why, for
    /// one log line.
    pub fn new(config: &TelemetryConfig) -> ResourceSampler {
        let (nvml, nvml_error) = if config.nvml {
            match NvmlGpu::open(config.nvml_library.as_deref(), config.gpu_index) {
                Ok(n) => (Some(n), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        ResourceSampler {
            system: System::new(),
            nvml,
            nvml_error,
            jetson: JetsonGpu::new(&config.root, config.reprobe_every),
            cpu_primed_at: None,
            primed: [None; PRIMED_PIDS],
            next_primed: 0,
        }
    }

    /// Why NVML is not in use, when it was asked for and failed.
    pub fn nvml_error(&self) -> Option<&TelemetryError> {
        self.nvml_error.as_ref()
    }

    pub fn has_nvml(&self) -> bool {
        self.nvml.is_some()
    }

    /// The Jetson sysfs source (which nodes it has found so far).
    pub fn jetson(&self) -> &JetsonGpu {
        &self.jetson
    }

    /// Reads everything once. `trainer_pid` is the process to measure
    /// (from the segment's header); `None` leaves the process figures
    /// absent.
    pub fn sample(&mut self, trainer_pid: Option<u32>) -> ResourceSample {
        let mut s = ResourceSample::default();

        // sysinfo skips a CPU refresh closer than MINIMUM_CPU_UPDATE_INTERVAL
        // (200 ms) to the last one and keeps the previous figure, so
        // sampling faster is harmless. Its first refresh yields the average
        // since boot, which is not "now": absent until a real interval.
        self.system.refresh_cpu_usage();
        let primed = *self.cpu_primed_at.get_or_insert_with(Instant::now);
        if primed.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            s.device_cpu_percent = Some(self.system.global_cpu_usage());
        }

        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let total = self.system.total_memory();
        if total > 0 {
            let used = total.saturating_sub(self.system.available_memory());
            s.device_memory_total_mb = Some((total as f64 / MIB) as f32);
            s.device_memory_used_mb = Some((used as f64 / MIB) as f32);
        }

        if let Some(pid) = trainer_pid {
            self.sample_process(pid, &mut s);
        }

        if let Some(nvml) = &self.nvml {
            nvml.read(&mut s.gpu);
        }
        if !s.gpu.is_complete() {
            self.jetson.read(&mut s.gpu);
        }
        s
    }

    fn sample_process(&mut self, pid: u32, s: &mut ResourceSample) {
        let spid = Pid::from_u32(pid);
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[spid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let slot = self
            .primed
            .iter()
            .position(|m| m.is_some_and(|m| m.pid == pid));
        let Some(process) = self.system.process(spid) else {
            if let Some(i) = slot {
                self.primed[i] = None;
            }
            return;
        };
        s.process_memory_mb = Some((process.memory() as f64 / MIB) as f32);
        let mark = CpuMark {
            pid,
            start_time: process.start_time(),
            cpu_ms: process.accumulated_cpu_time(),
            at: Instant::now(),
        };
        match slot {
            Some(i) => {
                if let Some(prev) = self.primed[i].filter(|p| p.start_time == mark.start_time) {
                    let wall_ms = mark.at.duration_since(prev.at).as_secs_f64() * 1e3;
                    // The kernel counts CPU time in 10 ms ticks: below a
                    // few ticks of wall time the share is noise; keep the
                    // older mark and say nothing this time.
                    if wall_ms < 50.0 {
                        return;
                    }
                    let cpu_ms = mark.cpu_ms.saturating_sub(prev.cpu_ms) as f64;
                    s.process_cpu_percent = Some((cpu_ms / wall_ms * 100.0) as f32);
                }
                self.primed[i] = Some(mark);
            }
            None => {
                // The oldest entry gives way; it is primed again on its
                // next sample, which then has no percentage.
                self.primed[self.next_primed] = Some(mark);
                self.next_primed = (self.next_primed + 1) % PRIMED_PIDS;
            }
        }
    }
}

/// Seed fields of ResourceUsage as `unavailable` names them.
const CPU: &str = "cpu_percent";
const MEMORY: &str = "memory_mb";
const GPU: &str = "gpu_percent";
const GPU_MEMORY: &str = "gpu_memory_mb";

/// The names `ResourceUsage.unavailable` may carry.
pub const RESOURCE_FIELDS: [&str; 4] = [CPU, MEMORY, GPU, GPU_MEMORY];

impl From<&ResourceSample> for proto::ResourceUsage {
    /// Absent seed fields are 0 and named in `unavailable`; absent
    /// trainwatch fields are unset.
    fn from(s: &ResourceSample) -> Self {
        let mut unavailable = Vec::new();
        let mut put = |name: &'static str, v: Option<f32>| {
            v.unwrap_or_else(|| {
                unavailable.push(name.to_string());
                0.0
            })
        };
        proto::ResourceUsage {
            cpu_percent: put(CPU, s.process_cpu_percent),
            memory_mb: put(MEMORY, s.process_memory_mb),
            gpu_percent: put(GPU, s.gpu.percent),
            gpu_memory_mb: put(GPU_MEMORY, s.gpu.memory_used_mb),
            unavailable,
            device_cpu_percent: s.device_cpu_percent,
            device_memory_used_mb: s.device_memory_used_mb,
            device_memory_total_mb: s.device_memory_total_mb,
            gpu_memory_total_mb: s.gpu.memory_total_mb,
            gpu_frequency_mhz: s.gpu.frequency_mhz,
            gpu_source: s.gpu.source().to_string(),
        }
    }
}

impl From<&proto::ResourceUsage> for ResourceSample {
    /// Reads a ResourceUsage back, absence included; a seed peer's message
    /// (no `unavailable`) has its four figures present.
    fn from(r: &proto::ResourceUsage) -> Self {
        let get = |name: &str, v: f32| (!r.unavailable.iter().any(|u| u == name)).then_some(v);
        ResourceSample {
            process_cpu_percent: get(CPU, r.cpu_percent),
            process_memory_mb: get(MEMORY, r.memory_mb),
            device_cpu_percent: r.device_cpu_percent,
            device_memory_used_mb: r.device_memory_used_mb,
            device_memory_total_mb: r.device_memory_total_mb,
            gpu: GpuReading {
                percent: get(GPU, r.gpu_percent),
                memory_used_mb: get(GPU_MEMORY, r.gpu_memory_mb),
                memory_total_mb: r.gpu_memory_total_mb,
                frequency_mhz: r.gpu_frequency_mhz,
                from_nvml: r.gpu_source.contains("nvml"),
                from_jetson: r.gpu_source.contains("jetson-sysfs"),
            },
        }
    }
}
