//! The agent's own health: counters every part of the agent bumps, logged
//! periodically and served as Prometheus text on a loopback endpoint (off
//! by default).
//!
//! Counters are plain relaxed atomics: they are read for reporting only and
//! never order anything.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

macro_rules! stats {
    ($($(#[doc = $doc:literal])* $name:ident: $kind:literal,)*) => {
        /// Counters and gauges of the whole agent.
        #[derive(Debug, Default)]
        pub struct AgentStats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl AgentStats {
            /// `(name, kind, help, value)` for every metric, in order.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
                vec![$((stringify!($name), $kind, concat!($($doc),*).trim_ascii(), self.$name.load(Relaxed)),)*]
            }
        }
    };
}

stats! {
    /// Segments being streamed now.
    sessions_active: "gauge",
    /// Segments found corrupt or foreign and skipped.
    segments_rejected: "counter",
    /// Segments waiting for a place (`max_sessions` runs are streaming).
    segments_waiting: "gauge",
    /// Session tasks that died (a panic): reported, and the run retried.
    session_tasks_failed: "counter",
    /// New frames read from shared memory.
    frames_read: "counter",
    /// Frames encoded and sent to the server.
    frames_sent: "counter",
    /// Frames not sent (newer one already there, stream full, or no stream).
    frames_dropped: "counter",
    /// Frames the server acknowledged.
    frames_acked: "counter",
    /// Events (epoch summaries, status changes) sent, resends included.
    events_sent: "counter",
    /// Events the server acknowledged as applied.
    events_acked: "counter",
    /// Events overwritten in the segment's ring before they could be read.
    events_missed: "counter",
    /// Named scalar points sent, resends included.
    points_sent: "counter",
    /// Points the server acknowledged as committed.
    points_acked: "counter",
    /// Points lost in the segment (its ring lapped, or a slot unreadable).
    points_missed: "counter",
    /// Control commands written for trainers.
    commands_delivered: "counter",
    /// Streams re-established after a failure.
    reconnects: "counter",
    /// INVALID_DATA answers from the server.
    invalid_data: "counter",
    /// BUFFER_FULL answers from the server.
    buffer_full: "counter",
    /// Microseconds spent converting and encoding frames.
    encode_us: "counter",
    /// Bytes of JPEG sent.
    image_bytes_sent: "counter",
    /// Messages waiting in the sessions' outgoing queues.
    queue_depth: "gauge",
}

impl AgentStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in self.snapshot() {
            let full = if kind == "counter" {
                format!("trainwatch_agent_{name}_total")
            } else {
                format!("trainwatch_agent_{name}")
            };
            let _ = writeln!(out, "# HELP {full} {help}");
            let _ = writeln!(out, "# TYPE {full} {kind}");
            let _ = writeln!(out, "{full} {value}");
        }
        out
    }

    /// One log line with every non-zero figure.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (name, _, _, value) in self.snapshot() {
            if value > 0 {
                let _ = write!(out, "{name}={value} ");
            }
        }
        out.trim_end().to_string()
    }
}

/// Serves `GET /metrics` on `addr` until `stop`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<AgentStats>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let stats = stats.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    stats.prometheus(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "health endpoint stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_every_metric_with_its_type() {
        let s = AgentStats::default();
        AgentStats::add(&s.frames_sent, 3);
        s.sessions_active.store(2, Relaxed);
        let text = s.prometheus();
        assert!(text.contains("# TYPE trainwatch_agent_frames_sent_total counter\ntrainwatch_agent_frames_sent_total 3\n"));
        assert!(text.contains(
            "# TYPE trainwatch_agent_sessions_active gauge\ntrainwatch_agent_sessions_active 2\n"
        ));
        assert!(text.contains(
            "# HELP trainwatch_agent_reconnects_total Streams re-established after a failure."
        ));
        assert_eq!(s.summary(), "sessions_active=2 frames_sent=3");
    }
}
