//! `trainwatch agent`: discovers training runs in shared memory and streams
//! each as a session to the central MetricsService, carrying control
//! commands back.

pub mod backoff;
pub mod channel;
pub mod health;
pub mod link;
