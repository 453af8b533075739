//! Prints what the telemetry sampler reports on this machine, NVML
//! included: `cargo run --example nvml_probe [-- --samples N]`.
//! `scripts/nvml_check.sh` runs it on a GPU machine in one go.

use std::time::{Duration, Instant};

use trainwatch::proto;
use trainwatch::telemetry::{ResourceSampler, TelemetryConfig};

fn main() {
    let samples: u32 = std::env::args()
        .skip_while(|a| a != "--samples")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let config = TelemetryConfig {
        nvml_library: std::env::var_os("TRAINWATCH_NVML_LIBRARY").map(Into::into),
        ..TelemetryConfig::default()
    };
    let started = Instant::now();
    let mut sampler = ResourceSampler::new(&config);
    println!("open: {:?}", started.elapsed());
    match sampler.nvml_error() {
        None if sampler.has_nvml() => println!("nvml: open (gpu_index {})", config.gpu_index),
        None => println!("nvml: off"),
        Some(e) => println!("nvml: {e}"),
    }
    println!(
        "jetson: load={:?} devfreq={:?}",
        sampler.jetson().load_file(),
        sampler.jetson().devfreq_node()
    );
    let pid = Some(std::process::id());
    for i in 0..samples {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        let t = Instant::now();
        let s = sampler.sample(pid);
        let took = t.elapsed();
        println!("sample {i} ({took:?}): {s:?}");
        println!("  wire: {:?}", proto::ResourceUsage::from(&s));
    }
}
