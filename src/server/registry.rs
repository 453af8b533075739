//! The registry: every session the server holds, by id, at most
//! `max_sessions` of them.
//!
//! A session is created by RegisterTrainingSession and lives until the
//! registry needs its slot for a new one: only finished sessions are
//! evicted, the one seen longest ago first; with none finished a new
//! registration is refused. Registering a known id resumes it, state,
//! counters and event sequence included.
//!
//! With a store, registration also writes the run (and waits for the
//! commit), and a session not in memory (the server restarted, or it was
//! evicted) resumes from the sequence numbers the store committed, so the
//! agent resends only what is not on disk.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock as StdRwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::apply;
use super::identity::Identity;
use super::session::Session;
use super::store::{RunRecord, Store, StoreError, Write, Writer};
use crate::config::{History, Limits};
use crate::proto::{self, TrainingConfig};

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the server holds {0} sessions, its limit (max_sessions), none of them finished")]
    Full(usize),
    #[error("the store cannot record the run: {0}")]
    Store(#[from] StoreError),
    #[error("session {0:?} was registered by another client; it cannot be taken over")]
    Owned(String),
}

/// The system of record and the group-commit writer in front of it.
#[derive(Clone)]
pub struct Ingestion {
    pub store: Arc<dyn Store>,
    pub writer: Writer,
    /// Least time between two image samples a run stores (`images_every_s`).
    pub images_every_ms: u64,
}

/// The outcome of a registration.
pub struct Registered {
    pub session: Arc<Session>,
    pub resumed: bool,
    pub last_event_seq: u64,
    pub last_point_seq: u64,
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
    /// `None`: live view only, nothing kept (store = "none").
    ingestion: Option<Ingestion>,
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
            ingestion: None,
        }
    }

    /// Writes what sessions log to this store from now on.
    pub fn with_store(mut self, ingestion: Ingestion) -> Self {
        self.ingestion = Some(ingestion);
        self
    }

    /// The store, when there is one (for the HTTP API).
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.ingestion.as_ref().map(|i| &i.store)
    }

    /// Hands `write` to the store's writer without waiting for its commit
    /// (no store: nothing); a failed one is logged.
    pub async fn record(&self, write: Write) {
        let Some(ing) = &self.ingestion else {
            return;
        };
        let run = write.run().to_string();
        match ing.writer.submit(write).await {
            Ok(pending) => {
                tokio::spawn(async move {
                    if let Err(e) = pending.await {
                        tracing::warn!(session = %run, error = %e, "store write failed");
                    }
                });
            }
            Err(e) => tracing::warn!(session = %run, error = %e, "store write not queued"),
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
        who: Option<&Identity>,
    ) -> Result<Registered, RegisterError> {
        let now = proto::now_ms();
        let existing = self.get(id);
        // Only who registered a session may register it again (before its
        // run record, config included, is written).
        if existing.as_ref().is_some_and(|s| !s.claim(who)) {
            return Err(RegisterError::Owned(id.to_string()));
        }
        let mut from_store = None;
        if let Some(ing) = &self.ingestion {
            if existing.is_none() {
                from_store = ing.store.run(id).await?;
            }
            // A stored run stays bound to who registered it, across
            // restarts (with identities on; with none, anyone may act).
            let stored_owner = from_store.as_ref().and_then(|s| s.run.owner.as_deref());
            if let (Some(w), Some(owner)) = (who, stored_owner) {
                if w.as_str() != owner {
                    return Err(RegisterError::Owned(id.to_string()));
                }
            }
            let record = run_record(id, client_name, config.as_ref(), now, who);
            ing.writer.write(Write::Run(record)).await?;
        }
        let (session, resumed) = match existing {
            Some(s) => (s, true),
            None => {
                let s = self.insert_new(id, now)?;
                // Registered concurrently from another identity: the first
                // to claim it owns it.
                if !s.claim(who) {
                    return Err(RegisterError::Owned(id.to_string()));
                }
                (s, from_store.is_some())
            }
        };
        session.counters.registrations.fetch_add(1, Relaxed);
        session.touch(now);
        let mut st = session.state().write().await;
        if let Some(sum) = &from_store {
            // Only ever forwards: a session created concurrently may have
            // accepted more already.
            st.last_event_seq = st.last_event_seq.max(sum.last_event_seq);
            st.last_point_seq = st.last_point_seq.max(sum.last_point_seq);
            session.committed(sum.last_event_seq, sum.last_point_seq);
            session.set_finished(sum.status.is_finished());
        }
        st.client_name = client_name.to_string();
        st.client_version = client_version.to_string();
        if let Some(c) = config {
            session.set_config(&mut st, c);
        }
        st.last_seen_ms = now;
        // What the agent resumes after: committed, so nothing it drops
        // from its segment is lost if the server dies now.
        let (last_event_seq, last_point_seq) = match &self.ingestion {
            Some(_) => session.committed_seqs(),
            None => (st.last_event_seq, st.last_point_seq),
        };
        drop(st);
        session.changed();
        Ok(Registered {
            session,
            resumed,
            last_event_seq,
            last_point_seq,
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
        tokio::spawn(apply::run(
            session.clone(),
            rx,
            self.history,
            self.ingestion
                .as_ref()
                .map(|i| (i.writer.clone(), i.images_every_ms)),
        ));
        Ok(session)
    }
}

/// The run as registered: the device is the agent's client name, the name
/// the session id; model, dataset and the whole config from TrainingConfig.
fn run_record(
    id: &str,
    client: &str,
    config: Option<&TrainingConfig>,
    now: u64,
    who: Option<&Identity>,
) -> RunRecord {
    let json = config.map(|c| {
        serde_json::json!({
            "total_epochs": c.total_epochs,
            "batches_per_epoch": c.batches_per_epoch,
            "batch_size": c.batch_size,
            "model_name": c.model_name,
            "dataset_name": c.dataset_name,
            "class_names": c.class_names,
        })
    });
    // An agent's id says which device and run (the whole run name comes in
    // the config); anything else is shown as it came, under the client's
    // name.
    let (device, short) = crate::proto::session_parts(id).unwrap_or((client, id));
    let name = config
        .map(|c| c.run_name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(short);
    RunRecord {
        id: id.to_string(),
        device: device.to_string(),
        name: name.to_string(),
        model: config.map(|c| c.model_name.clone()).unwrap_or_default(),
        dataset: config.map(|c| c.dataset_name.clone()).unwrap_or_default(),
        config: json.map(|j| j.to_string()).unwrap_or_else(|| "{}".into()),
        created_ms: now as i64,
        owner: who.map(|w| w.as_str().to_string()),
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
