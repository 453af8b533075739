//! `trainwatch server`: the central MetricsService, its HTTP API and the
//! live dashboard.
//!
//! [`Server::start`] binds both listeners (gRPC, with TLS unless configured
//! otherwise, and HTTP), and returns a [`RunningServer`] with the bound
//! addresses and the session [`Registry`]; [`RunningServer::shutdown`] stops
//! accepting, ends every stream and waits for the tasks up to a grace period.
//!
//! A message goes `service` (the gRPC calls, checked by `validate`) →
//! `registry` (sessions by id) → `session` (one run's bounded queue and
//! command route) → `apply` (the task that writes it into the run's `state`
//! and acknowledges it); `http` and `dashboard` read that state. What a
//! trainer logs (events, scalar points, performance figures) also goes from
//! `apply` through `store`'s group-commit writer into the system of record,
//! and is acknowledged only once committed; the store is opened (and
//! migrated) at start unless configured "none".

pub mod api;
mod apply;
pub mod dashboard;
pub mod http;
pub mod identity;
pub mod latency;
pub mod limits;
pub mod registry;
pub mod service;
pub mod session;
pub mod state;
pub mod store;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::config::{ServerSettings, StoreSettings};
use crate::proto::MetricsServiceServer;
use crate::tls::{self, TlsError};

/// Largest HTTP/2 frame the server accepts (SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// How often retention looks for finished runs past `keep_days` and for
/// images beyond the quota (and once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

pub use registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TLS configuration rejected: {0}")]
    TlsConfig(#[source] tonic::transport::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl ServerError {
    /// Errors a user fixes in configuration (exit 64), as opposed to
    /// runtime failures.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ServerError::Bind { .. }
                | ServerError::Tls(_)
                | ServerError::TlsConfig(_)
                | ServerError::Store(
                    store::StoreError::Open { .. } | store::StoreError::NewerSchema { .. }
                )
        )
    }
}

pub struct Server;

/// A started server. Dropping it does not stop it; call [`shutdown`].
///
/// [`shutdown`]: RunningServer::shutdown
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub tls: bool,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    grpc: JoinHandle<Result<(), ServerError>>,
    http: JoinHandle<Result<(), ServerError>>,
    /// The store's writer task: it commits what is queued before it ends.
    writer: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds and starts serving; returns once both listeners accept.
    pub async fn start(settings: &ServerSettings) -> Result<RunningServer, ServerError> {
        let mut builder = tonic::transport::Server::builder()
            // HTTP/2 keepalive lets both sides see a dead peer even when no
            // message is due (a paused run sends only heartbeats).
            .http2_keepalive_interval(Some(Duration::from_millis(u64::from(
                settings.limits.heartbeat_interval_ms,
            ))))
            .http2_keepalive_timeout(Some(Duration::from_millis(
                3 * u64::from(settings.limits.heartbeat_interval_ms),
            )))
            .tcp_nodelay(true)
            // Frames up to 256 KiB (HTTP/2's default is 16 KiB): a batch of
            // 16 small JPEGs (about 20 KB) then travels in one DATA frame, one
            // write for the agent instead of two.
            .max_frame_size(Some(MAX_FRAME_SIZE));
        if let Some(files) = &settings.tls {
            builder = builder
                .tls_config(tls::server_config(files)?)
                .map_err(ServerError::TlsConfig)?;
        }
        let shutdown = CancellationToken::new();
        let mut registry = Registry::new(
            settings.limits,
            settings.history,
            settings.max_sessions,
            shutdown.clone(),
        );
        // The writer stops on its own token, cancelled only after the
        // listeners have ended, so the last acks' commits still land.
        let writer_stop = CancellationToken::new();
        let (ingestion, writer) = match open_store(&settings.store, &writer_stop).await? {
            Some((ing, task)) => (Some(ing), Some(task)),
            None => (None, None),
        };
        if let Some(ing) = ingestion {
            registry = registry.with_store(ing);
        }
        let registry = Arc::new(registry);
        {
            let (stop, writer_stop) = (shutdown.clone(), writer_stop.clone());
            tokio::spawn(async move {
                stop.cancelled().await;
                writer_stop.cancel();
            });
        }

        let grpc_listener = bind("gRPC", settings.listen).await?;
        let http_listener = bind("HTTP", settings.http_listen).await?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                what: "gRPC",
                addr: settings.listen,
                source,
            })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                what: "HTTP",
                addr: settings.http_listen,
                source,
            })?;

        let svc = MetricsServiceServer::new(service::Service::new(
            registry.clone(),
            shutdown.clone(),
            settings.agent_tokens.clone(),
        ))
        .max_decoding_message_size(settings.limits.max_message_bytes);
        let stop = shutdown.clone();
        let grpc = tokio::spawn(async move {
            let r = builder
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(grpc_listener),
                    stop.clone().cancelled_owned(),
                )
                .await
                .map_err(ServerError::Serve);
            // One listener failing stops the whole server.
            stop.cancel();
            r
        });

        let control = http::ControlPolicy {
            token: settings.http_token.clone(),
            loopback: http_addr.ip().is_loopback(),
            read_token: settings.http_token.is_some() && settings.http_token_reads,
        };
        let mut app = http::router(registry.clone(), control.clone()).merge(dashboard::router(
            registry.clone(),
            control.clone(),
            settings.dashboard,
        ));
        // The system of record: its history API, and retention beside it
        // (stopped with the server).
        if let Some(store) = registry.store() {
            app = app.merge(api::routes(store.clone(), control));
            let policy = store::Retention {
                keep_days: settings.store.keep_days,
                image_quota_bytes: settings.store.image_quota_bytes,
            };
            tokio::spawn(store::retention::run(
                store.clone(),
                policy,
                RETENTION_EVERY,
                shutdown.clone(),
            ));
        }
        let reads = std::sync::Arc::new(http::ReadPolicy {
            token: settings
                .http_token
                .clone()
                .filter(|_| settings.http_token_reads),
        });
        let hosts = std::sync::Arc::new(http::HostPolicy::new(&settings.http_hosts));
        // The Host check runs first (outermost), then the read token.
        let app = app
            .layer(axum::middleware::from_fn_with_state(
                reads,
                http::check_read,
            ))
            .layer(axum::middleware::from_fn_with_state(
                hosts,
                http::check_host,
            ));
        let stop = shutdown.clone();
        let http = tokio::spawn(async move {
            let r = axum::serve(
                http_listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .await
            .map_err(ServerError::Http);
            stop.cancel();
            r
        });

        Ok(RunningServer {
            grpc_addr,
            http_addr,
            tls: settings.tls.is_some(),
            registry,
            shutdown,
            grpc,
            http,
            writer,
        })
    }
}

/// Opens (and migrates) the configured store and starts its writer; `None`
/// for "none".
async fn open_store(
    settings: &StoreSettings,
    stop: &CancellationToken,
) -> Result<Option<(registry::Ingestion, JoinHandle<()>)>, ServerError> {
    let Some(place) = &settings.place else {
        tracing::warn!("no store (store = \"none\"): runs are kept in memory only");
        return Ok(None);
    };
    let options = store::StoreOptions {
        images_per_run: settings.images_per_run,
    };
    let st = store::open(place, options).await?;
    tracing::info!(backend = st.backend(), store = %redact(place), "store open");
    let (writer, task) =
        store::Writer::spawn(st.clone(), store::WriterConfig::default(), stop.clone());
    let ingestion = registry::Ingestion {
        store: st,
        writer,
        images_every_ms: u64::from(settings.images_every_s) * 1000,
    };
    Ok(Some((ingestion, task)))
}

/// A store location fit for the log: a PostgreSQL URL's password hidden.
pub fn redact(place: &str) -> String {
    match (place.find("://"), place.rfind('@')) {
        (Some(s), Some(at)) if at > s => match place[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &place[..s + 3 + c], &place[at..]),
            None => place.to_string(),
        },
        _ => place.to_string(),
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

impl RunningServer {
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The system of record, unless configured "none".
    pub fn store(&self) -> Option<&Arc<dyn store::Store>> {
        self.registry.store()
    }

    /// A token that, when cancelled, starts the shutdown (for signals).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server stops by itself (a listener failed) or its
    /// token is cancelled.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    /// Stops accepting, ends every stream, and waits up to `grace` for the
    /// listeners' tasks to finish.
    pub async fn shutdown(self, grace: Duration) -> Result<(), ServerError> {
        self.shutdown.cancel();
        let writer = self.writer;
        let both = async {
            let g = self.grpc.await;
            let h = self.http.await;
            if let Some(w) = writer {
                let _ = w.await;
            }
            (g, h)
        };
        match tokio::time::timeout(grace, both).await {
            Ok((g, h)) => {
                for r in [g, h] {
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(join) => {
                            return Err(ServerError::Http(std::io::Error::other(join.to_string())))
                        }
                    }
                }
                Ok(())
            }
            Err(_) => Err(ServerError::ShutdownTimeout(grace)),
        }
    }
}
