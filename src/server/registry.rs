//! The registry: every session the server holds, by id, at most
//! `max_sessions` of them.
//!
//! A session is created by RegisterTrainingSession and lives until the
//! registry needs its slot for a new one: only finished sessions are
//! evicted, the one seen longest ago first; with none finished a new
//! registration is refused. Registering a known id resumes it, state,
//! counters and event sequence included.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock as StdRwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::apply;
use super::session::Session;
use crate::config::{History, Limits};
use crate::proto::{self, TrainingConfig};

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the server holds {0} sessions, its limit (max_sessions), none of them finished")]
    Full(usize),
}

/// The outcome of a registration.
pub struct Registered {
    pub session: Arc<Session>,
    pub resumed: bool,
    pub last_event_seq: u64,
}

/// All sessions, by id.
pub struct Registry {
    sessions: StdRwLock<HashMap<String, Arc<Session>>>,
    pub limits: Limits,
    pub history: History,
    max_sessions: usize,
    shutdown: CancellationToken,
    /// Bumped when any session changes, registers or is evicted.
    changes: watch::Sender<u64>,
}

impl Registry {
    pub fn new(
        limits: Limits,
        history: History,
        max_sessions: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Registry {
            sessions: StdRwLock::new(HashMap::new()),
            limits,
            history,
            max_sessions,
            shutdown,
            changes: watch::Sender::new(0),
        }
    }

    /// Notifies on each change of any session, and when one registers or is
    /// evicted (a counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Cancelled when the server stops.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.read().unwrap().get(id).cloned()
    }

    /// Every session, oldest registration first.
    pub fn all(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self.sessions.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn len(&self) -> usize {
        self.sessions.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers `id`, or resumes it when it is already known: its state,
    /// counters and event sequence carry over.
    pub async fn register(
        &self,
        id: &str,
        client_name: &str,
        client_version: &str,
        config: Option<TrainingConfig>,
    ) -> Result<Registered, RegisterError> {
        let now = proto::now_ms();
        let existing = self.get(id);
        let (session, resumed) = match existing {
            Some(s) => (s, true),
            None => (self.insert_new(id, now)?, false),
        };
        session.counters.registrations.fetch_add(1, Relaxed);
        session.touch(now);
        let mut st = session.state().write().await;
        st.client_name = client_name.to_string();
        st.client_version = client_version.to_string();
        if let Some(c) = config {
            session.set_config(&mut st, c);
        }
        st.last_seen_ms = now;
        let last_event_seq = st.last_event_seq;
        drop(st);
        session.changed();
        Ok(Registered {
            session,
            resumed,
            last_event_seq,
        })
    }

    fn insert_new(&self, id: &str, now: u64) -> Result<Arc<Session>, RegisterError> {
        let mut map = self.sessions.write().unwrap();
        if let Some(s) = map.get(id) {
            // Registered concurrently by another call.
            return Ok(s.clone());
        }
        if map.len() >= self.max_sessions {
            evict_one(&mut map)?;
        }
        let (session, rx) = Session::new(
            id,
            self.limits.buffer_size as usize,
            &self.history,
            now,
            self.shutdown.child_token(),
            self.changes.clone(),
        );
        map.insert(id.to_string(), session.clone());
        tokio::spawn(apply::run(session.clone(), rx, self.history));
        Ok(session)
    }
}

/// Makes room by dropping the finished session seen longest ago; with none
/// finished the registry is full.
fn evict_one(map: &mut HashMap<String, Arc<Session>>) -> Result<(), RegisterError> {
    let victim = map
        .values()
        .filter(|s| s.is_finished())
        .min_by_key(|s| s.last_seen_ms())
        .map(|s| s.id.clone());
    match victim {
        Some(v) => {
            if let Some(s) = map.remove(&v) {
                s.close();
                tracing::info!(session = %v, "evicted finished session to make room");
            }
            Ok(())
        }
        None => Err(RegisterError::Full(map.len())),
    }
}
