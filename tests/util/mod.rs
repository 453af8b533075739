//! Helpers shared by the integration tests: real processes, real sockets.
#![allow(dead_code)]

pub mod images;

use std::path::PathBuf;
use std::time::Duration;

/// Upper bound for any single wait in a test: generous for a loaded 2-core
/// CI machine, yet every test still ends by itself.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The `trainwatch` binary cargo built for these tests.
pub fn trainwatch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trainwatch"))
}

/// The Python interpreter for cross-language tests: `TRAINWATCH_PYTHON`
/// (scripts/test.sh points it at .venv), else the repo's .venv, else python3.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TRAINWATCH_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// A SQLite store file in a temp dir of its own, removed when dropped: what
/// in-test servers keep their system of record in.
pub struct TempStore {
    dir: tempfile::TempDir,
}

impl TempStore {
    pub fn new() -> TempStore {
        TempStore {
            dir: tempfile::tempdir().expect("temp dir for a store"),
        }
    }

    /// The `--store` value: the file's path.
    pub fn place(&self) -> String {
        self.dir.path().join("trainwatch.db").display().to_string()
    }
}

impl Default for TempStore {
    fn default() -> Self {
        TempStore::new()
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub mod alloc;
pub mod blackhole;
pub mod browser;
pub mod grpc;
pub mod http;
pub mod postgres;
pub mod proc;
pub mod procs;
pub mod python;
