//! The wire protocol, generated from `proto/metrics.proto` by build.rs.
//!
//! Everything a peer needs besides the generated types lives here: the
//! wall-clock timestamp every message carries, and a JPEG header reader the
//! server uses to check an image's dimensions without decoding it.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("metrics");

pub use self::metrics_service_client::MetricsServiceClient;
pub use self::metrics_service_server::{MetricsService, MetricsServiceServer};

/// Milliseconds since the Unix epoch, the unit of every `timestamp_ms`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
