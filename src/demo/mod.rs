//! `trainwatch demo`: the whole system in one process, for a first look.
//!
//! The central server (TLS, with a throw-away CA made in memory), the agent
//! (trusting that CA) and a demo trainer that really trains — softmax
//! regression with SGD on shapes drawn at start-up ([`data`], [`model`],
//! [`trainer`]) — all talk to each other through the same paths as in a
//! deployment: shared memory, gRPC over TLS, the HTTP API. Nothing is
//! special-cased for the demo except where the files live: a private
//! directory (under /dev/shm when it exists) removed at exit, so it never
//! meets a real agent's `/dev/shm/trainwatch`.

pub mod data;
pub mod model;
pub mod trainer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentError, NoLifecycle};
use crate::config::{AgentSettings, ConfigError, EnvMap, Overrides, ServerSettings};
use crate::server::{Server, ServerError};
use crate::shm::ShmError;
use crate::tls::{write_pem_files, PemFile, PkiError, ServerTlsFiles, SECRET_MODE};
pub use trainer::{End, Outcome, TrainerOptions};

/// Starting learning rate, tried on the generated data: accuracy climbs
/// from ~40% in the first epoch to ~85% by the twentieth, steadily enough
/// to watch (0.005 is done in five epochs, 0.0005 barely moves).
pub const DEFAULT_LR: f32 = 0.002;
/// How long the agent and the server get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot make the demo's certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("demo certificates: {0}")]
    Certs(#[from] PkiError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("demo settings: {0}")]
    Config(#[from] Box<ConfigError>),
    #[error("demo server: {0}")]
    Server(#[from] ServerError),
    #[error("demo agent: {0}")]
    Agent(#[from] AgentError),
    #[error("demo trainer: {0}")]
    Trainer(#[from] ShmError),
    #[error("demo {0} panicked")]
    Panicked(&'static str),
}

impl DemoError {
    /// Errors the user fixes on the command line (exit 64).
    pub fn is_config(&self) -> bool {
        match self {
            DemoError::Config(_) => true,
            DemoError::Server(e) => e.is_config(),
            DemoError::Agent(e) => e.is_config(),
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// 0 = any free port.
    pub http_port: u16,
    pub grpc_port: u16,
    /// Segment directory; `None`: a private one, removed at exit.
    pub shm_dir: Option<PathBuf>,
    /// The server's store (a SQLite file or a `postgres://` URL); `None`: a
    /// SQLite file in the private directory, removed at exit.
    pub store: Option<String>,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    pub epochs: u32,
    pub batches_per_epoch: u32,
    pub batch_size: u32,
    pub speed: f64,
    pub learning_rate: f32,
    pub seed: u64,
}

/// Where the demo is serving.
#[derive(Clone, Debug)]
pub struct Serving {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub shm_dir: PathBuf,
    pub run_name: String,
    /// Where the run is recorded (a PostgreSQL URL's password hidden).
    pub store: String,
}

/// A directory removed (with what is in it) when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    /// `trainwatch-demo-PID-RANDOM` under /dev/shm (RAM, like a real
    /// segment directory) or else the system's temp dir; mode 0700.
    fn create() -> Result<PrivateDir, DemoError> {
        use std::os::unix::fs::DirBuilderExt;
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "trainwatch-demo-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| DemoError::Io {
                what: "cannot create the demo directory",
                path: path.clone(),
                source,
            })?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), "cannot remove the demo directory: {e}");
        }
    }
}

/// The throw-away PKI, written into the private directory (the server's
/// key never leaves it): the server's TLS files and the CA the agent trusts.
fn write_pki(dir: &Path) -> Result<(ServerTlsFiles, PathBuf), DemoError> {
    let pki = crate::tls::EphemeralPki::new("trainwatch demo CA")?;
    let tls = ServerTlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: None,
    };
    let ca = dir.join("ca.pem");
    let secret = |name: &str, pem: &str| PemFile {
        name: name.to_string(),
        pem: pem.to_string(),
        mode: SECRET_MODE,
    };
    write_pem_files(
        dir,
        vec![
            secret("server.pem", &pki.server_cert_pem),
            secret("server.key", &pki.server_key_pem),
            secret("ca.pem", &pki.ca_pem),
        ],
    )?;
    Ok((tls, ca))
}

/// The demo agent's settings: the demo server over TLS, the demo's segment
/// directory.
fn agent_settings(grpc_port: u16, ca: &Path, shm_dir: &Path) -> Result<AgentSettings, DemoError> {
    let overrides: Overrides = vec![
        ("server", format!("https://localhost:{grpc_port}").into()),
        ("tls.ca_cert", ca.display().to_string().into()),
        ("shm_dir", shm_dir.display().to_string().into()),
        ("device_id", "demo".into()),
        // Pick the run up quickly: the user is watching.
        ("scan_interval_ms", 100u64.into()),
    ];
    // No environment: a TRAINWATCH_AGENT_* meant for a real agent must not
    // steer the demo's.
    AgentSettings::load(None, &EnvMap::new(), overrides).map_err(|e| DemoError::Config(e.into()))
}

fn trainer_options(opts: &DemoOptions, run_name: &str, shm_dir: &Path) -> TrainerOptions {
    TrainerOptions {
        run_name: run_name.to_string(),
        shm_dir: shm_dir.to_path_buf(),
        epochs: opts.epochs,
        batches_per_epoch: opts.batches_per_epoch,
        batch_size: opts.batch_size,
        speed: opts.speed,
        learning_rate: opts.learning_rate,
        seed: opts.seed,
    }
}

/// Runs the demo until `shutdown` resolves, `duration` passes or the server
/// stops; calls `serving` once the dashboard accepts connections.
pub async fn run(
    opts: DemoOptions,
    shutdown: impl std::future::Future<Output = ()>,
    serving: impl FnOnce(&Serving),
) -> Result<(), DemoError> {
    let private = PrivateDir::create()?;
    let shm_dir = opts
        .shm_dir
        .clone()
        .unwrap_or_else(|| private.0.join("runs"));

    let (tls, ca) = write_pki(&private.0)?;

    let mut server_settings = ServerSettings::local_insecure();
    server_settings.listen = SocketAddr::from(([127, 0, 0, 1], opts.grpc_port));
    server_settings.http_listen = SocketAddr::from(([127, 0, 0, 1], opts.http_port));
    server_settings.tls = Some(tls);
    server_settings.shutdown_grace = SHUTDOWN_GRACE;
    let store = opts
        .store
        .clone()
        .unwrap_or_else(|| private.0.join("trainwatch.db").display().to_string());
    server_settings.store.place = Some(store.clone());
    let server = Server::start(&server_settings).await?;

    let agent = Agent::new(agent_settings(server.grpc_addr.port(), &ca, &shm_dir)?);
    std::fs::create_dir_all(&shm_dir).map_err(|source| DemoError::Io {
        what: "cannot create the segment directory",
        path: shm_dir.clone(),
        source,
    })?;
    let agent_stop = CancellationToken::new();
    let mut agent_task = {
        let stop = agent_stop.clone();
        tokio::spawn(async move { agent.run(stop, &mut NoLifecycle).await })
    };

    let run_name = format!("demo-{}", std::process::id());
    let trainer_opts = trainer_options(&opts, &run_name, &shm_dir);
    let (trainer_stop, stop_rx) = std::sync::mpsc::channel::<()>();
    let mut trainer = tokio::task::spawn_blocking(move || trainer::train(&trainer_opts, &stop_rx));

    serving(&Serving {
        http_addr: server.http_addr,
        grpc_addr: server.grpc_addr,
        shm_dir: shm_dir.clone(),
        run_name,
        store: crate::server::redact(&store),
    });

    let duration = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(shutdown, duration);
    let mut trainer_done = false;
    let mut result = Ok(());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = &mut duration => {
                tracing::info!("demo duration reached");
                break;
            }
            _ = server.stopped() => {
                tracing::error!("a server listener stopped; shutting down");
                break;
            }
            r = &mut agent_task => {
                result = match r {
                    Ok(r) => r.map_err(DemoError::from),
                    Err(_) => Err(DemoError::Panicked("agent")),
                };
                break;
            }
            r = &mut trainer, if !trainer_done => {
                trainer_done = true;
                match r {
                    Ok(Ok(out)) => tracing::info!(
                        batches = out.batches,
                        epochs = out.epochs,
                        how = ?out.how,
                        "demo training over; the dashboard keeps serving until Ctrl-C"
                    ),
                    Ok(Err(e)) => {
                        result = Err(e.into());
                        break;
                    }
                    Err(_) => {
                        result = Err(DemoError::Panicked("trainer"));
                        break;
                    }
                }
            }
        }
    }

    // Trainer first (it reports COMPLETED), then the agent, then the server.
    drop(trainer_stop);
    if !trainer_done {
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut trainer).await {
            Ok(Ok(Err(e))) if result.is_ok() => result = Err(e.into()),
            Ok(Err(_)) if result.is_ok() => result = Err(DemoError::Panicked("trainer")),
            Err(_) => tracing::warn!("demo trainer did not stop in time"),
            _ => {}
        }
    }
    agent_stop.cancel();
    if !agent_task.is_finished()
        && tokio::time::timeout(SHUTDOWN_GRACE, &mut agent_task)
            .await
            .is_err()
    {
        tracing::warn!("demo agent did not stop in time");
        agent_task.abort();
    }
    if let Err(e) = server.shutdown(SHUTDOWN_GRACE).await {
        tracing::warn!("demo server shutdown: {e}");
    }
    drop(private);
    result
}
