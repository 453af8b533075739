//! What the server negotiates with each agent ([`Limits`], the seed's
//! ServerConfig) and how much history it keeps per session ([`History`]),
//! with the bounds each value must lie in.
//!
//! The server owns these rules; the config layer deserializes the raw
//! values, calls [`Limits::validate`] and [`History::validate`], and reports
//! a [`LimitsError`] under the key that [`LimitField::key`] names, so the
//! arrow runs from config to the server and never back.

use crate::proto::negotiated;

/// One bounded setting of [`Limits`] or [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitField {
    MaxBatchSize,
    MaxImageDimension,
    HeartbeatIntervalMs,
    BufferSize,
    MaxMessageBytes,
    LossPoints,
    Epochs,
    StatusEvents,
}

impl LimitField {
    /// The configuration key the value is set by.
    pub fn key(self) -> &'static str {
        match self {
            LimitField::MaxBatchSize => "limits.max_batch_size",
            LimitField::MaxImageDimension => "limits.max_image_dimension",
            LimitField::HeartbeatIntervalMs => "limits.heartbeat_interval_ms",
            LimitField::BufferSize => "limits.buffer_size",
            LimitField::MaxMessageBytes => "limits.max_message_bytes",
            LimitField::LossPoints => "history.loss_points",
            LimitField::Epochs => "history.epochs",
            LimitField::StatusEvents => "history.status_events",
        }
    }
}

/// A limit outside its bounds: which one, the value seen and the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} = {value}: {}", field.key(), self.reason())]
pub struct LimitsError {
    pub field: LimitField,
    pub value: u64,
    pub lo: u64,
    pub hi: u64,
}

impl LimitsError {
    /// Why the value is refused, without the key and the value.
    pub fn reason(&self) -> String {
        format!("must be between {} and {}", self.lo, self.hi)
    }
}

fn in_range(field: LimitField, value: u64, lo: u64, hi: u64) -> Result<(), LimitsError> {
    if value < lo || value > hi {
        return Err(LimitsError {
            field,
            value,
            lo,
            hi,
        });
    }
    Ok(())
}

/// What the server negotiates with each agent (the seed's ServerConfig) and
/// enforces on every message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub max_batch_size: u32,
    pub max_image_dimension: u32,
    pub heartbeat_interval_ms: u32,
    /// Messages a session may have waiting to be applied before the server
    /// answers BUFFER_FULL.
    pub buffer_size: u32,
    /// Largest gRPC message accepted (a 16-image batch of 512x512 JPEGs is
    /// about 1–2 MiB). Each session keeps its newest batch, so this bounds
    /// what a session holds too.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // The seed's own server answers these values.
        Limits {
            max_batch_size: negotiated::MAX_BATCH_SIZE,
            max_image_dimension: negotiated::MAX_IMAGE_DIMENSION,
            heartbeat_interval_ms: negotiated::HEARTBEAT_INTERVAL_MS,
            buffer_size: negotiated::BUFFER_SIZE,
            // gRPC's own default: twice the largest batch agents send, and
            // 1,000 sessions' newest batches within 4 GiB.
            max_message_bytes: 4 << 20,
        }
    }
}

impl Limits {
    /// Checks every bound, in field order; the first value out of bounds is
    /// the error.
    pub fn validate(self) -> Result<Self, LimitsError> {
        use LimitField::*;
        in_range(MaxBatchSize, self.max_batch_size.into(), 1, 1024)?;
        in_range(MaxImageDimension, self.max_image_dimension.into(), 8, 16384)?;
        in_range(
            HeartbeatIntervalMs,
            self.heartbeat_interval_ms.into(),
            100,
            600_000,
        )?;
        in_range(BufferSize, self.buffer_size.into(), 1, 100_000)?;
        in_range(
            MaxMessageBytes,
            self.max_message_bytes as u64,
            64 << 10,
            1 << 30,
        )?;
        Ok(self)
    }
}

/// How much history a session keeps; memory per session is bounded by these,
/// never by the length of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct History {
    /// Batch-loss points kept; beyond it the series is thinned evenly so the
    /// whole run stays visible.
    pub loss_points: usize,
    /// Epoch summaries kept (oldest dropped first).
    pub epochs: usize,
    /// Status changes kept (oldest dropped first).
    pub status_events: usize,
}

impl Default for History {
    fn default() -> Self {
        History {
            loss_points: 2000,
            epochs: 10_000,
            status_events: 200,
        }
    }
}

impl History {
    /// Checks every bound, in field order.
    pub fn validate(self) -> Result<Self, LimitsError> {
        use LimitField::*;
        in_range(LossPoints, self.loss_points as u64, 16, 1_000_000)?;
        in_range(Epochs, self.epochs as u64, 1, 1_000_000)?;
        in_range(StatusEvents, self.status_events as u64, 1, 100_000)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(Limits::default()));
        assert_eq!(History::default().validate(), Ok(History::default()));
    }

    #[test]
    fn errors_name_their_key_and_bounds() {
        let e = Limits {
            buffer_size: 0,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field.key(), "limits.buffer_size");
        assert_eq!(
            e.to_string(),
            "limits.buffer_size = 0: must be between 1 and 100000"
        );
        let e = History {
            loss_points: 15,
            ..History::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!((e.field, e.value, e.lo), (LimitField::LossPoints, 15, 16));
    }
}
