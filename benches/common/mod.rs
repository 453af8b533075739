//! Small helpers the end-to-end benches share: env knobs, the Python to run
//! the reference with, and order statistics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Env knob `name` parsed as `T`; `default` when unset or unparsable.
pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    env_parse(name, default)
}

pub fn env_f64(name: &str, default: f64) -> f64 {
    env_parse(name, default)
}

pub fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A comma-separated list of numbers, e.g. `TW_FLEET_STEPS=1,10,100`.
pub fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// `TW_BENCH_PYTHON`, else the tests' choice (TRAINWATCH_PYTHON, .venv,
/// python3).
pub fn python() -> PathBuf {
    std::env::var_os("TW_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(crate::util::python)
}

/// The reference implementation's directory (`TW_BENCH_REF_DIR`), by
/// default `../shared/reference` beside the repository.
pub fn ref_dir() -> PathBuf {
    std::env::var_os("TW_BENCH_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"))
}

/// The q-quantile by rank (nearest rank, 1-based); NaN when empty.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}
