//! trainwatch watches neural-network training on edge GPUs in real time.
//!
//! The modules follow the data: a trainer publishes into shared memory
//! (`shm`), the agent turns frames into JPEGs (`frame`) and streams them with
//! the run's events (`agent`) over the seed's gRPC protocol (`proto`) to the
//! central MetricsService (`server`), which keeps bounded per-session state
//! and serves it over HTTP.
//!
//! - [`tensor`] — how a batch of sample images is described (dtype, layout,
//!   channels, size, normalization): the contract between the trainer-side
//!   writer and the agent's converter.
//! - [`telemetry`] — the agent's device figures: training rate, epoch time
//!   and ETA from the trainer's publish timestamps (right even when frames
//!   are dropped), and CPU/memory/GPU use from procfs, Jetson sysfs and NVML
//!   (loaded at run time), each figure absent rather than 0 where the
//!   machine does not provide it.
//! - [`proto`] — the wire protocol: code generated from `proto/metrics.proto`
//!   (the seed's `metrics` package plus compatible extensions). Generated once
//!   here so agent, server and tests share the types.
//! - [`server`] — `trainwatch server`: the tonic MetricsService. Registration
//!   and stream handling validate every message; valid ones go through a
//!   bounded per-session queue into a session's bounded state, which the JSON
//!   HTTP API reads. A bad message is answered with an ErrorResponse and never
//!   ends the stream or touches another session.
//! - [`config`] — layered configuration (defaults → TOML file →
//!   `TRAINWATCH_<ROLE>_*` environment → flags), validated once into typed
//!   settings; a bad value is a [`config::ConfigError`] naming the key and the
//!   value.
//! - [`tls`] — certificates and keys read and checked before tonic sees them,
//!   with errors that name the file and what is wrong with it.
//! - [`cli`] — the `trainwatch` command line: flags mapped onto config keys,
//!   one function per subcommand returning an exit code.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod proto;
pub mod server;
pub mod telemetry;
pub mod tensor;
pub mod tls;
