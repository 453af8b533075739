//! trainwatch watches neural-network training on edge GPUs in real time.
//!
//! The modules follow the data: a trainer publishes into shared memory
//! (`shm`), the agent turns frames into JPEGs (`frame`) and streams them with
//! the run's events and named scalars (`agent`) over the seed's gRPC
//! protocol (`proto`) to the central MetricsService (`server`), which keeps
//! bounded live state per session, records every run in its store, and
//! serves both over HTTP.
//!
//! - [`shm`] — the trainer → agent hand-off: one shared-memory segment per
//!   run (format in [`shm::layout`]; v2 adds a lossless points ring for
//!   named scalars beside the event ring), a never-blocking writer exported to C
//!   and Python, and a reader that validates everything it maps. Every ring
//!   goes through one seqlock (`shm/seqlock.rs`), whose Acquire/Release
//!   ordering makes torn reads detectable on aarch64.
//! - [`tensor`] — how a batch of sample images is described (dtype, layout,
//!   channels, size, normalization), and the one rule a description must
//!   meet, checked at publish time: the contract between the trainer-side
//!   writer and the agent's converter.
//! - [`frame`] — tensor → JPEG: convert (dtype, layout, normalization →
//!   8-bit gray/RGB or YCbCr 4:2:0 planes, vectorized), downscale to the
//!   negotiated maximum, encode (bundled libjpeg-turbo by default, pure-Rust
//!   jpeg-encoder as the alternative) into a fixed pool of output memory
//!   handed out as `bytes::Bytes`, so the gRPC layer sends it without a copy. Buffers are
//!   sized from config at start-up; a batch in steady state allocates nothing.
//! - [`agent`] — `trainwatch agent`: finds runs in the segment directory and
//!   streams each as a session: registration, one StreamMetrics, events and
//!   scalar points in order and exactly once across restarts (one go-back-N
//!   cursor each, [`agent::link::SeqCursor`]), the newest frame at a paced
//!   rate, heartbeats, liveness and reconnect with backoff, commands back
//!   into the segment, health counters, systemd readiness and watchdog. The
//!   stream loop is a state machine ([`agent::stream`]) woken per kind of
//!   work; segment data → proto messages is [`agent::messages`].
//! - [`proto`] — the wire protocol: code generated from `proto/metrics.proto`
//!   (the seed's `metrics` package plus compatible extensions). Generated once
//!   here so agent, server and tests share the types, with what both sides
//!   must agree on beside them: the session-id rule and the negotiated
//!   defaults and clamps of a `ServerConfig` (`proto::negotiated`).
//! - [`server`] — `trainwatch server`: the tonic MetricsService. Registration
//!   and stream handling validate every message; valid ones go through a
//!   bounded per-session queue into a session's bounded state, which the JSON
//!   HTTP API reads. A bad message is answered with an ErrorResponse and never
//!   ends the stream or touches another session. Each session's apply task
//!   takes sequenced messages strictly in order and acknowledges them only
//!   after [`server::store`] (SQLite by default, PostgreSQL when shared,
//!   behind one trait, written in groups by one writer task) has committed
//!   them; `server::api` serves the store's history (runs, scalars, export,
//!   images, commands, statuses, epochs, figures).
//! - [`demo`] — `trainwatch demo`: server, agent and a trainer in one
//!   process, over the real paths (shared memory, gRPC with TLS from a
//!   throw-away CA, the HTTP API). The trainer really learns: softmax
//!   regression with SGD on shapes drawn at start-up, paced to a watchable
//!   speed and obeying the dashboard's commands.
//! - [`config`] — layered configuration (defaults → TOML file →
//!   `TRAINWATCH_<ROLE>_*` environment → flags), validated once into typed
//!   settings; a bad value is a [`config::ConfigError`] naming the key and the
//!   value. It sits at the top: it imports and builds the components' own
//!   types (the server's limits in [`server::limits`], TLS files in [`tls`])
//!   and maps their typed errors to its keys; nothing below imports it back.
//! - [`tls`] — certificates and keys read and checked before tonic sees them,
//!   with errors that name the file and what is wrong with it; the TLS file
//!   types, and the throw-away CA and PEM writing of `certs` and the demo.
//! - [`cli`] — the `trainwatch` command line: flags mapped onto config keys,
//!   one function per subcommand returning `Result<(), CliError>`, and the
//!   one exit path mapping it to 64 (usage) or 1 (runtime).
#![deny(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod config;
pub mod demo;
pub mod frame;
pub mod proto;
pub mod server;
pub mod shm;
pub mod telemetry;
pub mod tensor;
pub mod tls;
