//! Jetson's integrated GPU through sysfs and procfs, the files tegrastats
//! and jtop read, without spawning either.
//!
//! - Load: `sys/devices/platform/gpu.0/load` (Orin) or
//!   `sys/devices/gpu.0/load` (Xavier, Nano, TX2), else the GPU devfreq
//!   node's `device/load`; per-mille of busy time.
//! - Clock: `cur_freq` (Hz) of the node under `sys/class/devfreq/` whose
//!   device is the GPU. Nodes are named by address and device-tree name
//!   (`17000000.ga10b`, `57000000.gpu`); the GPU is recognised by its
//!   device-tree node name (`device/of_node/name`), else by the suffix of
//!   the node's or its device's name. The node appears only once the GPU
//!   driver has probed, so a missing one is looked for again every
//!   `reprobe_every` samples.
//! - Memory: unified with the CPU's. In use: `NvMapMemUsed` from
//!   `proc/meminfo` (what the NvMap allocator holds for the GPU and other
//!   engines), absent where the kernel has no such line. Total: `MemTotal`,
//!   everything the GPU could be given, reported only on a Jetson.
//!
//! All paths hang off a configurable root so that tests run against
//! fixture trees.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{fill, GpuReading};
use crate::telemetry::MIB;

/// Device-tree names of Jetson GPUs: Nano/TX1 (gm20b), TX2 (gp10b),
/// Xavier (gv11b), Orin (ga10b), Thor (gb10b), and the generic `gpu` that
/// JetPack 6 kernels use.
pub const GPU_NODE_NAMES: [&str; 6] = ["gm20b", "gp10b", "gv11b", "ga10b", "gb10b", "gpu"];

/// Load files by platform, newest first.
const LOAD_FILES: [&str; 2] = ["sys/devices/platform/gpu.0/load", "sys/devices/gpu.0/load"];

const DEVFREQ_DIR: &str = "sys/class/devfreq";

/// The Jetson sysfs source: what it found, and a reusable read buffer.
#[derive(Debug)]
pub struct JetsonGpu {
    root: PathBuf,
    load: Option<PathBuf>,
    devfreq: Option<PathBuf>,
    cur_freq: Option<PathBuf>,
    meminfo: PathBuf,
    reprobe_every: u32,
    since_probe: u32,
    buf: String,
}

impl JetsonGpu {
    /// Looks for the GPU's nodes under `root` once; whatever is missing is
    /// looked for again every `reprobe_every` calls to [`read`](Self::read).
    pub fn new(root: &Path, reprobe_every: u32) -> JetsonGpu {
        let mut j = JetsonGpu {
            root: root.to_path_buf(),
            load: None,
            devfreq: None,
            cur_freq: None,
            meminfo: root.join("proc/meminfo"),
            reprobe_every: reprobe_every.max(1),
            since_probe: 0,
            // meminfo is ~1.5 KiB on a Jetson; one allocation, kept.
            buf: String::with_capacity(4096),
        };
        j.probe();
        j
    }

    /// The GPU's devfreq node, once found.
    pub fn devfreq_node(&self) -> Option<&Path> {
        self.devfreq.as_deref()
    }

    /// The load file in use, once found.
    pub fn load_file(&self) -> Option<&Path> {
        self.load.as_deref()
    }

    fn probe(&mut self) {
        if self.devfreq.is_none() {
            self.devfreq = find_gpu_devfreq(&self.root.join(DEVFREQ_DIR));
            self.cur_freq = self
                .devfreq
                .as_ref()
                .map(|d| d.join("cur_freq"))
                .filter(|p| p.is_file());
        }
        if self.load.is_none() {
            self.load = LOAD_FILES
                .iter()
                .map(|f| self.root.join(f))
                .chain(self.devfreq.as_ref().map(|d| d.join("device/load")))
                .find(|p| p.is_file());
        }
    }

    /// Fills what `r` still lacks from sysfs and meminfo; true when it
    /// filled anything.
    pub fn read(&mut self, r: &mut GpuReading) -> bool {
        if self.load.is_none() || self.cur_freq.is_none() {
            self.since_probe += 1;
            if self.since_probe >= self.reprobe_every {
                self.since_probe = 0;
                self.probe();
            }
        }
        let mut any = false;
        if let Some(path) = &self.load {
            any |= fill(&mut r.percent, || {
                read_u64(path, &mut self.buf).map(|permille| permille as f32 / 10.0)
            });
        }
        if let Some(path) = &self.cur_freq {
            any |= fill(&mut r.frequency_mhz, || {
                read_u64(path, &mut self.buf).map(|hz| (hz as f64 / 1e6) as f32)
            });
        }
        if r.memory_used_mb.is_none() || r.memory_total_mb.is_none() {
            let on_jetson = self.load.is_some() || self.devfreq.is_some();
            if read_to(&self.meminfo, &mut self.buf) {
                let used = meminfo_kib(&self.buf, "NvMapMemUsed:");
                any |= fill(&mut r.memory_used_mb, || used.map(kib_to_mib));
                // MemTotal is the GPU's ceiling only where memory is
                // unified, i.e. on a Jetson.
                if on_jetson || used.is_some() {
                    any |= fill(&mut r.memory_total_mb, || {
                        meminfo_kib(&self.buf, "MemTotal:").map(kib_to_mib)
                    });
                }
            }
        }
        r.from_jetson |= any;
        any
    }
}

fn kib_to_mib(kib: u64) -> f32 {
    (kib as f64 * 1024.0 / MIB) as f32
}

/// The GPU's node under `dir` (a devfreq class directory), if any.
fn find_gpu_devfreq(dir: &Path) -> Option<PathBuf> {
    let entries = fs::read_dir(dir).ok()?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_gpu_node(p))
        .collect();
    // Deterministic when a board lists two (never seen, but read_dir's
    // order is arbitrary).
    found.sort();
    found.into_iter().next()
}

fn is_gpu_node(node: &Path) -> bool {
    // The device-tree node name is the authority; it ends in a NUL.
    if let Ok(name) = fs::read_to_string(node.join("device/of_node/name")) {
        return is_gpu_name(name.trim_end_matches(['\0', '\n', ' ']));
    }
    let own = node.file_name().and_then(|n| n.to_str());
    let device = fs::canonicalize(node.join("device")).ok();
    let device = device
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    own.into_iter().chain(device).any(|n| {
        // `17000000.ga10b` → `ga10b`
        is_gpu_name(n.rsplit('.').next().unwrap_or(n))
    })
}

fn is_gpu_name(name: &str) -> bool {
    GPU_NODE_NAMES.contains(&name)
}

/// Reads a whole file into `buf` (cleared first); false when unreadable.
fn read_to(path: &Path, buf: &mut String) -> bool {
    buf.clear();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_string(buf))
        .is_ok()
}

/// A file holding one unsigned number (sysfs style, trailing newline).
fn read_u64(path: &Path, buf: &mut String) -> Option<u64> {
    if !read_to(path, buf) {
        return None;
    }
    buf.trim().parse().ok()
}

/// `KEY:   12345 kB` from meminfo text, in KiB.
fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_lines_are_read_by_key() {
        let text =
            "MemTotal:       31250000 kB\nNvMapMemFree:  100 kB\nNvMapMemUsed:     524288 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal:"), Some(31_250_000));
        assert_eq!(meminfo_kib(text, "NvMapMemUsed:"), Some(524_288));
        assert_eq!(meminfo_kib(text, "SwapTotal:"), None);
        assert_eq!(kib_to_mib(524_288), 512.0);
    }

    #[test]
    fn gpu_names_are_matched_whole() {
        assert!(is_gpu_name("ga10b"));
        assert!(is_gpu_name("gpu"));
        assert!(!is_gpu_name("vic"));
        assert!(!is_gpu_name("gpu0"));
    }
}
