//! The retention task: applies [`Store::retain`] (finished runs older than
//! `keep_days`, the global image quota) once at start and then every
//! `every`, logging what each pass removed, until cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Retention, Store};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs until `cancel`. A failed pass is logged and retried at the next
/// tick: retention is housekeeping, never a reason to stop the server.
pub async fn run(
    store: Arc<dyn Store>,
    policy: Retention,
    every: Duration,
    cancel: CancellationToken,
) {
    if policy.keep_days == 0 && policy.image_quota_bytes == 0 {
        tracing::info!("retention: keep_days = 0 and no image quota, nothing to do");
        return;
    }
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.retain(policy, now_ms()).await {
            Ok(r) if r.runs_deleted.is_empty() && r.images_evicted.is_empty() => {}
            Ok(r) => tracing::info!(
                runs_deleted = ?r.runs_deleted,
                images_evicted_from = ?r.images_evicted,
                image_bytes = r.image_bytes,
                "retention removed old runs / images"
            ),
            Err(e) => tracing::warn!(error = %e, "retention pass failed; retrying next tick"),
        }
    }
}
