//! Configuration, layered and validated once.
//!
//! Each role reads defaults → a TOML file (`--config`) → `TRAINWATCH_<ROLE>_*`
//! environment variables → command-line flags, later layers winning, with
//! the `config` crate. The raw result is deserialized with unknown keys
//! refused (a typo is an error, not a silent default) and then validated
//! into typed settings: addresses parsed, bounds checked, TLS material
//! required unless plaintext was asked for. Every failure is a
//! [`ConfigError`] that names the key and the value seen; the binary exits
//! with 64 (`EX_USAGE`) on it.
//!
//! Environment variables carry the role in their prefix
//! (`TRAINWATCH_SERVER_LISTEN`, `TRAINWATCH_SERVER_LIMITS__BUFFER_SIZE`) so
//! that variables meant for another role or for the Python publisher
//! (`TRAINWATCH_SHM_DIR`) are never mistaken for this role's keys. Tests
//! pass the environment in as a map instead of touching the process's.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

// Re-exported so callers that take their settings' types from here keep
// working; the types belong to the server and to tls.
use crate::server::limits::LimitsError;
pub use crate::server::limits::{History, Limits};
pub use crate::tls::ServerTlsFiles;

/// A configuration that cannot be used, naming the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config key `{key}` = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("config file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: ::config::ConfigError,
    },
    #[error("config: {0}")]
    Layer(#[source] ::config::ConfigError),
}

impl ConfigError {
    pub fn invalid(key: &'static str, value: impl Display, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<LimitsError> for ConfigError {
    fn from(e: LimitsError) -> Self {
        ConfigError::invalid(e.field.key(), e.value, e.reason())
    }
}

/// Values set on the command line, as `(key, value)` pairs in the file's
/// key syntax (`"tls.cert"`, `"limits.buffer_size"`). They override every
/// other layer.
pub type Overrides = Vec<(&'static str, ::config::Value)>;

/// The environment as a map (`std::env::vars()` collected, or a test's map).
pub type EnvMap = HashMap<String, String>;

/// Builds the layered raw configuration for one role and deserializes it.
fn layered<T: for<'de> Deserialize<'de>>(
    defaults: &[(&str, ::config::Value)],
    file: Option<&Path>,
    env_prefix: &str,
    env: &EnvMap,
    overrides: Overrides,
) -> Result<T, ConfigError> {
    let mut b = ::config::Config::builder();
    for (k, v) in defaults {
        b = b.set_default(*k, v.clone()).map_err(ConfigError::Layer)?;
    }
    if let Some(path) = file {
        // Read the file ourselves so that a missing file names its path.
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            source: ::config::ConfigError::Foreign(Box::new(e)),
        })?;
        b = b.add_source(::config::File::from_str(&text, ::config::FileFormat::Toml));
    }
    let prefixed: ::config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{env_prefix}_")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    b = b.add_source(
        ::config::Environment::with_prefix(env_prefix)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(prefixed)),
    );
    for (k, v) in overrides {
        b = b.set_override(k, v).map_err(ConfigError::Layer)?;
    }
    let built = b.build().map_err(|e| match file {
        Some(path) => ConfigError::File {
            path: path.to_path_buf(),
            source: e,
        },
        None => ConfigError::Layer(e),
    })?;
    built.try_deserialize().map_err(ConfigError::Layer)
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e| {
        ConfigError::invalid(
            key,
            format!("{value:?}"),
            format!("not a socket address ({e}); expected e.g. 127.0.0.1:8080"),
        )
    })
}

/// The non-empty, trimmed items of a comma-separated setting.
fn comma_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn in_range<T: PartialOrd + Display + Copy>(
    key: &'static str,
    value: T,
    lo: T,
    hi: T,
) -> Result<T, ConfigError> {
    if value < lo || value > hi {
        return Err(ConfigError::invalid(
            key,
            value,
            format!("must be between {lo} and {hi}"),
        ));
    }
    Ok(value)
}

// ---------------------------------------------------------------- server --

/// Environment prefix of the server's keys.
pub const SERVER_ENV_PREFIX: &str = "TRAINWATCH_SERVER";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    http_listen: String,
    insecure: bool,
    http_token: Option<String>,
    http_token_reads: bool,
    http_hosts: String,
    agent_tokens: String,
    max_sessions: u32,
    shutdown_grace_ms: u64,
    #[serde(default)]
    tls: RawServerTls,
    limits: RawLimits,
    history: RawHistory,
    dashboard: RawDashboard,
    store: RawStore,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: String,
    keep_days: u32,
    images_every_s: u32,
    images_per_run: u32,
    image_quota_mb: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_batch_size: u32,
    max_image_dimension: u32,
    heartbeat_interval_ms: u32,
    buffer_size: u32,
    max_message_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDashboard {
    max_push_hz: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    loss_points: u32,
    epochs: u32,
    status_events: u32,
}

/// The live dashboard on the HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dashboard {
    /// Most updates per second pushed to one browser viewing a session;
    /// changes in between are coalesced into the next update.
    pub max_push_hz: u32,
}

impl Default for Dashboard {
    fn default() -> Self {
        // Twice a typical screen's refresh would be wasted; 30 keeps the
        // coalescing delay under 34 ms, well within the 100 ms budget from
        // a batch's receipt to its paint.
        Dashboard { max_push_hz: 30 }
    }
}

/// Where the server keeps its system of record, and how long.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSettings {
    /// A SQLite file, a `postgres://` URL, or `None` ("none": live view
    /// only, nothing kept across a restart).
    pub place: Option<String>,
    /// Days finished runs are kept (0: forever).
    pub keep_days: u32,
    /// Least seconds between two image samples of a run (each epoch's last
    /// batch is kept as well).
    pub images_every_s: u32,
    /// Most image samples kept per run (0: no cap).
    pub images_per_run: u32,
    /// Bytes of JPEGs kept in all (0: no quota); beyond it the images of
    /// the oldest finished runs go first, never their scalars.
    pub image_quota_bytes: u64,
}

/// Where the packaged server keeps its store (systemd's StateDirectory).
pub const DEFAULT_STORE: &str = "/var/lib/trainwatch/trainwatch.db";

impl StoreSettings {
    /// No store: what in-process servers start from unless given one.
    pub fn none() -> Self {
        StoreSettings {
            place: None,
            keep_days: 0,
            // 10 s: a few hundred samples over a long run, enough to see
            // what the model saw without the images outgrowing the scalars.
            images_every_s: 10,
            images_per_run: 1000,
            // 10 GiB.
            image_quota_bytes: 10 << 30,
        }
    }

    /// The same knobs with the store at `place`.
    pub fn at(place: impl Into<String>) -> Self {
        StoreSettings {
            place: Some(place.into()),
            ..StoreSettings::none()
        }
    }
}

/// Validated settings of `trainwatch server`.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// `None`: plaintext gRPC (only with `insecure`).
    pub tls: Option<ServerTlsFiles>,
    pub http_token: Option<String>,
    /// Reading the API (sessions, runs, images, push streams) needs the
    /// token too, not only control.
    pub http_token_reads: bool,
    /// Tokens agents must send (`authorization: Bearer …`) when set; each
    /// is an identity a session is bound to (one per device or per fleet).
    pub agent_tokens: Vec<String>,
    /// Host names the HTTP listener answers to besides IP literals,
    /// localhost and this machine's name (a DNS-rebinding guard).
    pub http_hosts: Vec<String>,
    pub max_sessions: usize,
    pub shutdown_grace: Duration,
    pub limits: Limits,
    pub history: History,
    pub dashboard: Dashboard,
    pub store: StoreSettings,
}

impl ServerSettings {
    /// Settings for a plaintext server on loopback with ephemeral ports and
    /// default limits: what tests and the demo start from.
    pub fn local_insecure() -> Self {
        ServerSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            http_token: None,
            http_token_reads: false,
            agent_tokens: Vec::new(),
            http_hosts: Vec::new(),
            max_sessions: 1000,
            shutdown_grace: Duration::from_secs(5),
            limits: Limits::default(),
            history: History::default(),
            dashboard: Dashboard::default(),
            store: StoreSettings::none(),
        }
    }

    /// Layers defaults, `file`, the `TRAINWATCH_SERVER_*` entries of `env`
    /// and `overrides`, then validates.
    pub fn load(
        file: Option<&Path>,
        env: &EnvMap,
        overrides: Overrides,
    ) -> Result<Self, ConfigError> {
        let l = Limits::default();
        let h = History::default();
        let st = StoreSettings::none();
        let defaults: Vec<(&str, ::config::Value)> = vec![
            ("listen", "0.0.0.0:50051".into()),
            ("http_listen", "127.0.0.1:8080".into()),
            ("http_hosts", "".into()),
            ("http_token_reads", false.into()),
            ("agent_tokens", "".into()),
            ("insecure", false.into()),
            ("max_sessions", 1000u64.into()),
            ("shutdown_grace_ms", 5000u64.into()),
            ("limits.max_batch_size", u64::from(l.max_batch_size).into()),
            (
                "limits.max_image_dimension",
                u64::from(l.max_image_dimension).into(),
            ),
            (
                "limits.heartbeat_interval_ms",
                u64::from(l.heartbeat_interval_ms).into(),
            ),
            ("limits.buffer_size", u64::from(l.buffer_size).into()),
            (
                "limits.max_message_bytes",
                (l.max_message_bytes as u64).into(),
            ),
            ("history.loss_points", (h.loss_points as u64).into()),
            ("history.epochs", (h.epochs as u64).into()),
            ("history.status_events", (h.status_events as u64).into()),
            (
                "dashboard.max_push_hz",
                u64::from(Dashboard::default().max_push_hz).into(),
            ),
            ("store.path", DEFAULT_STORE.into()),
            ("store.keep_days", u64::from(st.keep_days).into()),
            ("store.images_every_s", u64::from(st.images_every_s).into()),
            ("store.images_per_run", u64::from(st.images_per_run).into()),
            ("store.image_quota_mb", (st.image_quota_bytes >> 20).into()),
        ];
        let raw: RawServer = layered(&defaults, file, SERVER_ENV_PREFIX, env, overrides)?;
        Self::validate(raw)
    }

    fn validate(raw: RawServer) -> Result<Self, ConfigError> {
        let listen = parse_addr("listen", &raw.listen)?;
        let http_listen = parse_addr("http_listen", &raw.http_listen)?;
        let tls = match (raw.insecure, raw.tls.cert, raw.tls.key) {
            (true, None, None) => {
                if let Some(ca) = raw.tls.client_ca {
                    return Err(ConfigError::invalid(
                        "tls.client_ca",
                        ca.display(),
                        "mutual TLS needs TLS: remove `insecure` and set tls.cert and tls.key",
                    ));
                }
                None
            }
            (true, Some(cert), _) => {
                return Err(ConfigError::invalid(
                    "insecure",
                    true,
                    format!(
                        "plaintext was asked for but tls.cert is set ({}); choose one",
                        cert.display()
                    ),
                ))
            }
            (true, None, Some(key)) => {
                return Err(ConfigError::invalid(
                    "insecure",
                    true,
                    format!(
                        "plaintext was asked for but tls.key is set ({}); choose one",
                        key.display()
                    ),
                ))
            }
            (false, Some(cert), Some(key)) => Some(ServerTlsFiles {
                cert,
                key,
                client_ca: raw.tls.client_ca,
            }),
            (false, None, None) => return Err(ConfigError::invalid(
                "tls.cert",
                "(unset)",
                "TLS is the default: give --tls-cert and --tls-key, or --insecure for plaintext",
            )),
            (false, Some(cert), None) => {
                return Err(ConfigError::invalid(
                    "tls.key",
                    "(unset)",
                    format!(
                        "tls.cert is {} but its private key is missing",
                        cert.display()
                    ),
                ))
            }
            (false, None, Some(key)) => {
                return Err(ConfigError::invalid(
                    "tls.cert",
                    "(unset)",
                    format!(
                        "tls.key is {} but the certificate is missing",
                        key.display()
                    ),
                ))
            }
        };
        if let Some(token) = &raw.http_token {
            if token.len() < 16 {
                return Err(ConfigError::invalid(
                    "http_token",
                    format!("({} characters)", token.len()),
                    "must be at least 16 characters",
                ));
            }
        }
        let limits = Limits {
            max_batch_size: raw.limits.max_batch_size,
            max_image_dimension: raw.limits.max_image_dimension,
            heartbeat_interval_ms: raw.limits.heartbeat_interval_ms,
            buffer_size: raw.limits.buffer_size,
            // Saturating: a value past usize (32-bit only) is out of bounds anyway.
            max_message_bytes: usize::try_from(raw.limits.max_message_bytes).unwrap_or(usize::MAX),
        }
        .validate()?;
        let history = History {
            loss_points: raw.history.loss_points as usize,
            epochs: raw.history.epochs as usize,
            status_events: raw.history.status_events as usize,
        }
        .validate()?;
        if raw.http_token_reads && raw.http_token.is_none() {
            return Err(ConfigError::invalid(
                "http_token_reads",
                "true",
                "needs http_token: reading would need a token that does not exist",
            ));
        }
        let mut agent_tokens = Vec::new();
        for t in comma_list(&raw.agent_tokens) {
            if t.len() < 16 {
                return Err(ConfigError::invalid(
                    "agent_tokens",
                    format!("(one of {} characters)", t.len()),
                    "each token must be at least 16 characters",
                ));
            }
            agent_tokens.push(t.to_string());
        }
        let mut http_hosts = Vec::new();
        for name in comma_list(&raw.http_hosts) {
            let ok = name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
            if !ok {
                return Err(ConfigError::invalid(
                    "http_hosts",
                    format!("{name:?}"),
                    "expected host names (letters, digits, '.', '-'; no port), comma-separated",
                ));
            }
            http_hosts.push(name.to_ascii_lowercase());
        }
        Ok(ServerSettings {
            listen,
            http_listen,
            tls,
            http_token: raw.http_token,
            http_token_reads: raw.http_token_reads,
            agent_tokens,
            http_hosts,
            max_sessions: in_range("max_sessions", raw.max_sessions, 1, 1_000_000)? as usize,
            shutdown_grace: Duration::from_millis(in_range(
                "shutdown_grace_ms",
                raw.shutdown_grace_ms,
                0,
                600_000,
            )?),
            limits,
            history,
            dashboard: Dashboard {
                max_push_hz: in_range("dashboard.max_push_hz", raw.dashboard.max_push_hz, 1, 240)?,
            },
            store: store_settings(raw.store)?,
        })
    }
}

fn store_settings(raw: RawStore) -> Result<StoreSettings, ConfigError> {
    let place = match raw.path.trim() {
        "" => {
            return Err(ConfigError::invalid(
                "store.path",
                "(empty)",
                "give a SQLite file, a postgres:// URL, or \"none\" for no store",
            ))
        }
        "none" => None,
        p => Some(p.to_string()),
    };
    Ok(StoreSettings {
        place,
        keep_days: in_range("store.keep_days", raw.keep_days, 0, 100_000)?,
        images_every_s: in_range("store.images_every_s", raw.images_every_s, 1, 86_400)?,
        images_per_run: raw.images_per_run,
        image_quota_bytes: in_range("store.image_quota_mb", raw.image_quota_mb, 0, 1 << 30)? << 20,
    })
}

// ----------------------------------------------------------------- agent --

/// Environment prefix of the agent's keys.
pub const AGENT_ENV_PREFIX: &str = "TRAINWATCH_AGENT";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    server: String,
    insecure: bool,
    shm_dir: PathBuf,
    device_id: Option<String>,
    max_fps: f64,
    stop_grace_s: f64,
    finished_grace_s: u64,
    scan_interval_ms: u64,
    max_sessions: u32,
    frame_memory_mb: u32,
    token: Option<String>,
    #[serde(default)]
    tls: RawAgentTls,
    reconnect: RawReconnect,
    health: RawHealth,
    frames: RawFrames,
    telemetry: RawTelemetry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    interval_ms: u64,
    fps_window_ms: u64,
    root: PathBuf,
    nvml: bool,
    nvml_library: Option<PathBuf>,
    gpu_index: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrames {
    quality: u32,
    /// 0: a quarter of the cores, 1 to 4.
    workers: u32,
    backend: String,
    max_source_dimension: u32,
    pool_batches: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentTls {
    ca_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    domain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconnect {
    initial_ms: u64,
    max_ms: u64,
    factor: f64,
    liveness_intervals: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    log_interval_s: u64,
    listen: Option<String>,
}

/// Where the agent streams to.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerEndpoint {
    /// `https://host:port` or (insecure) `http://host:port`.
    pub url: String,
    /// The host part, for TLS server-name checks unless overridden.
    pub host: String,
    pub tls: bool,
}

/// Validated settings of `trainwatch agent`.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub server: ServerEndpoint,
    pub tls: crate::tls::ClientTlsFiles,
    /// Server name checked against the certificate (default: the URL's host).
    pub tls_domain: String,
    pub shm_dir: PathBuf,
    /// Stable per device: with the run name it makes the session id.
    pub device_id: String,
    pub max_fps: f64,
    /// Grace period added to a STOP command that has none, so the trainer
    /// can checkpoint before it ends.
    pub stop_grace: Duration,
    /// How long a finished run's segment stays before the agent removes it.
    pub finished_grace: Duration,
    /// How often the segment directory is rescanned for new runs.
    pub scan_interval: Duration,
    /// Runs streamed at once; more segments wait for a place (so a trainer
    /// creating a thousand cannot fill the server's sessions for the device).
    pub max_sessions: usize,
    /// Bytes the frame copies of all sessions together may hold; a frame
    /// that does not fit is skipped before it is copied.
    pub frame_memory: usize,
    /// Sent as `authorization: Bearer …` on every call: one of the server's
    /// `agent_tokens`, the identity its sessions are bound to.
    pub token: Option<String>,
    pub backoff: crate::agent::backoff::BackoffConfig,
    /// A stream with no answer for this many heartbeat intervals is dead.
    pub liveness_intervals: u32,
    pub health_log_interval: Duration,
    /// Prometheus text endpoint (loopback only), off when `None`.
    pub health_listen: Option<SocketAddr>,
    /// The frame pipeline's buffers and threads; the server's ServerConfig
    /// lowers the image count and size per session.
    pub frames: crate::frame::FrameConfig,
    /// FPS/ETA and CPU/RAM/GPU sampling, sent as PerformanceData per run.
    pub telemetry: crate::telemetry::TelemetryConfig,
}

impl AgentSettings {
    pub fn load(
        file: Option<&Path>,
        env: &EnvMap,
        overrides: Overrides,
    ) -> Result<Self, ConfigError> {
        let defaults: Vec<(&str, ::config::Value)> = vec![
            ("server", "https://localhost:50051".into()),
            ("insecure", false.into()),
            ("shm_dir", "/dev/shm/trainwatch".into()),
            ("max_fps", 60.0.into()),
            ("max_sessions", 64u64.into()),
            ("frame_memory_mb", 96u64.into()),
            ("stop_grace_s", 30.0.into()),
            ("finished_grace_s", 600u64.into()),
            ("scan_interval_ms", 500u64.into()),
            ("reconnect.initial_ms", 200u64.into()),
            ("reconnect.max_ms", 30_000u64.into()),
            ("reconnect.factor", 2.0.into()),
            ("reconnect.liveness_intervals", 3u64.into()),
            ("health.log_interval_s", 60u64.into()),
            (
                "frames.quality",
                u64::from(crate::frame::DEFAULT_QUALITY).into(),
            ),
            ("frames.workers", 0u64.into()),
            ("frames.backend", "auto".into()),
            (
                "frames.max_source_dimension",
                u64::from(crate::frame::DEFAULT_MAX_SOURCE_DIMENSION).into(),
            ),
            ("frames.pool_batches", 4u64.into()),
            ("telemetry.interval_ms", 1000u64.into()),
            ("telemetry.fps_window_ms", 2000u64.into()),
            ("telemetry.root", "/".into()),
            ("telemetry.nvml", true.into()),
            ("telemetry.gpu_index", 0u64.into()),
        ];
        let raw: RawAgent = layered(&defaults, file, AGENT_ENV_PREFIX, env, overrides)?;
        Self::validate(raw)
    }

    fn validate(raw: RawAgent) -> Result<Self, ConfigError> {
        let server = parse_server_url(&raw.server, raw.insecure)?;
        if raw.insecure && raw.tls.ca_cert.is_some() {
            return Err(ConfigError::invalid(
                "insecure",
                true,
                "plaintext was asked for but tls.ca_cert is set; choose one",
            ));
        }
        if raw.tls.client_cert.is_some() != raw.tls.client_key.is_some() {
            let (key, set) = if raw.tls.client_cert.is_some() {
                ("tls.client_key", "tls.client_cert")
            } else {
                ("tls.client_cert", "tls.client_key")
            };
            return Err(ConfigError::invalid(
                key,
                "(unset)",
                format!("{set} is set; mutual TLS needs both the certificate and its key"),
            ));
        }
        let device_id = match raw.device_id {
            Some(id) => {
                crate::proto::check_session_id(&id)
                    .map_err(|e| ConfigError::invalid("device_id", format!("{id:?}"), e))?;
                id
            }
            None => default_device_id(),
        };
        if !(raw.max_fps.is_finite() && (0.1..=1000.0).contains(&raw.max_fps)) {
            return Err(ConfigError::invalid(
                "max_fps",
                raw.max_fps,
                "must be between 0.1 and 1000",
            ));
        }
        if !(raw.stop_grace_s.is_finite() && (0.0..=3600.0).contains(&raw.stop_grace_s)) {
            return Err(ConfigError::invalid(
                "stop_grace_s",
                raw.stop_grace_s,
                "must be between 0 and 3600",
            ));
        }
        let backoff = crate::agent::backoff::BackoffConfig::new(
            Duration::from_millis(raw.reconnect.initial_ms),
            Duration::from_millis(raw.reconnect.max_ms),
            raw.reconnect.factor,
        )
        .map_err(|e| {
            let (key, value) = match e {
                crate::agent::backoff::BackoffError::InitialTooSmall(_) => {
                    ("reconnect.initial_ms", raw.reconnect.initial_ms.to_string())
                }
                crate::agent::backoff::BackoffError::MaxBelowInitial { .. } => {
                    ("reconnect.max_ms", raw.reconnect.max_ms.to_string())
                }
                crate::agent::backoff::BackoffError::Factor(_) => {
                    ("reconnect.factor", raw.reconnect.factor.to_string())
                }
            };
            ConfigError::invalid(key, value, e.to_string())
        })?;
        let health_listen = match raw.health.listen.as_deref() {
            None | Some("") => None,
            Some(a) => {
                let addr = parse_addr("health.listen", a)?;
                if !addr.ip().is_loopback() {
                    return Err(ConfigError::invalid(
                        "health.listen",
                        a,
                        "the health endpoint is for the device itself: use a loopback address",
                    ));
                }
                Some(addr)
            }
        };
        let tls_domain = raw.tls.domain.unwrap_or_else(|| server.host.clone());
        let frames = frame_config(&raw.frames)?;
        let t = &raw.telemetry;
        let telemetry = crate::telemetry::TelemetryConfig {
            interval: Duration::from_millis(t.interval_ms),
            fps_window: Duration::from_millis(t.fps_window_ms),
            root: t.root.clone(),
            nvml: t.nvml,
            nvml_library: t.nvml_library.clone(),
            gpu_index: t.gpu_index,
            ..Default::default()
        }
        .validate()
        .map_err(|e| {
            use crate::telemetry::{TelemetryError, TelemetrySetting};
            match e {
                // The raw millisecond values, as the user wrote them.
                TelemetryError::Invalid { key, value, reason } => match key {
                    TelemetrySetting::Interval => {
                        ConfigError::invalid("telemetry.interval_ms", t.interval_ms, reason)
                    }
                    TelemetrySetting::FpsWindow => {
                        ConfigError::invalid("telemetry.fps_window_ms", t.fps_window_ms, reason)
                    }
                    TelemetrySetting::Root => ConfigError::invalid("telemetry.root", value, reason),
                    // Not a config key: set only by code.
                    TelemetrySetting::ReprobeEvery => {
                        ConfigError::invalid("telemetry", value, reason)
                    }
                },
                other => ConfigError::invalid("telemetry", "", other.to_string()),
            }
        })?;
        Ok(AgentSettings {
            telemetry,
            frames,
            tls: crate::tls::ClientTlsFiles {
                ca_cert: raw.tls.ca_cert,
                client_cert: raw.tls.client_cert,
                client_key: raw.tls.client_key,
            },
            tls_domain,
            server,
            shm_dir: raw.shm_dir,
            device_id,
            max_fps: raw.max_fps,
            stop_grace: Duration::from_secs_f64(raw.stop_grace_s),
            finished_grace: Duration::from_secs(in_range(
                "finished_grace_s",
                raw.finished_grace_s,
                0,
                30 * 24 * 3600,
            )?),
            scan_interval: Duration::from_millis(in_range(
                "scan_interval_ms",
                raw.scan_interval_ms,
                10,
                60_000,
            )?),
            token: match raw.token {
                Some(t) if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                    return Err(ConfigError::invalid(
                        "token",
                        format!("({} characters)", t.len()),
                        "must be at least 16 printable characters, no spaces",
                    ))
                }
                t => t,
            },
            max_sessions: in_range("max_sessions", raw.max_sessions, 1, 10_000)? as usize,
            frame_memory: (in_range("frame_memory_mb", raw.frame_memory_mb, 1, 65_536)? as usize)
                << 20,
            backoff,
            liveness_intervals: in_range(
                "reconnect.liveness_intervals",
                raw.reconnect.liveness_intervals,
                2,
                100,
            )?,
            health_log_interval: Duration::from_secs(in_range(
                "health.log_interval_s",
                raw.health.log_interval_s,
                1,
                86_400,
            )?),
            health_listen,
        })
    }
}

/// The frame pipeline's configuration, validated by the pipeline's own rules
/// and reported under the `frames.` keys.
fn frame_config(raw: &RawFrames) -> Result<crate::frame::FrameConfig, ConfigError> {
    use crate::frame::{Backend, FrameConfig, FrameError, FrameSetting};
    let backend = match raw.backend.as_str() {
        "auto" => Backend::default_for_build(),
        name => name.parse::<Backend>().map_err(|e| {
            ConfigError::invalid("frames.backend", format!("{name:?}"), e.to_string())
        })?,
    };
    let c = FrameConfig {
        quality: u8::try_from(raw.quality).unwrap_or(0),
        workers: match raw.workers {
            0 => crate::frame::default_workers(),
            n => n as usize,
        },
        backend,
        max_source_dimension: raw.max_source_dimension,
        pool_batches: raw.pool_batches as usize,
        ..FrameConfig::default()
    };
    c.validate().map_err(|e| match e {
        FrameError::InvalidConfig {
            setting,
            value,
            reason,
        } => {
            let key = match setting {
                FrameSetting::Quality => "frames.quality",
                FrameSetting::Workers => "frames.workers",
                FrameSetting::MaxSourceDimension => "frames.max_source_dimension",
                FrameSetting::PoolBatches => "frames.pool_batches",
                // Taken from the negotiated limits, not from a frames key.
                FrameSetting::MaxDimension | FrameSetting::MaxImages => "frames",
            };
            let value = if key == "frames.quality" {
                raw.quality.to_string()
            } else {
                value
            };
            ConfigError::invalid(key, value, reason)
        }
        other => ConfigError::invalid(
            "frames.backend",
            format!("{:?}", raw.backend),
            other.to_string(),
        ),
    })?;
    Ok(c)
}

/// `https://host:port` (or `http://` with `insecure`) → endpoint.
fn parse_server_url(url: &str, insecure: bool) -> Result<ServerEndpoint, ConfigError> {
    let bad = |why: &str| ConfigError::invalid("server", format!("{url:?}"), why.to_string());
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        if !insecure {
            return Err(bad(
                "http:// is plaintext: use https://, or set insecure = true (--insecure) to allow it",
            ));
        }
        (false, r)
    } else {
        return Err(bad("expected https://HOST:PORT"));
    };
    if tls && insecure {
        return Err(bad(
            "insecure = true asks for plaintext but the URL is https://; use http://",
        ));
    }
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(bad("expected https://HOST:PORT with no path"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (h, p),
        _ => {
            return Err(bad(
                "the port is missing (e.g. https://metrics.example:50051)",
            ))
        }
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("the port is not a number between 1 and 65535"));
    }
    Ok(ServerEndpoint {
        url: format!("{}://{authority}", if tls { "https" } else { "http" }),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        tls,
    })
}

/// A device id stable across restarts: the host name plus the first 8
/// characters of /etc/machine-id when there is one.
fn default_device_id() -> String {
    let clean = |s: &str| -> String {
        s.trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(48)
            .collect()
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| clean(&h))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".to_string());
    match std::fs::read_to_string("/etc/machine-id") {
        Ok(id) if id.trim().len() >= 8 => format!("{host}-{}", clean(&id.trim()[..8])),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_tls_or_insecure() {
        let err = ServerSettings::load(None, &EnvMap::new(), vec![]).unwrap_err();
        assert!(err.to_string().contains("tls.cert"), "{err}");
        let ok =
            ServerSettings::load(None, &EnvMap::new(), vec![("insecure", true.into())]).unwrap();
        assert_eq!(ok.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(ok.limits, Limits::default());
        assert!(ok.tls.is_none());
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "insecure = true\nlisten = \"127.0.0.1:1\"\n[limits]\nbuffer_size = 7\nmax_batch_size = 8\n",
        )
        .unwrap();
        let e = env(&[
            ("TRAINWATCH_SERVER_LISTEN", "127.0.0.1:2"),
            ("TRAINWATCH_SERVER_LIMITS__BUFFER_SIZE", "9"),
            ("TRAINWATCH_SHM_DIR", "/ignored/by/the/server"),
        ]);
        let s =
            ServerSettings::load(Some(&file), &e, vec![("listen", "127.0.0.1:3".into())]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:3".parse().unwrap(), "flag wins");
        assert_eq!(s.limits.buffer_size, 9, "env beats file");
        assert_eq!(s.limits.max_batch_size, 8, "file beats default");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let e = env(&[
            ("TRAINWATCH_SERVER_INSECURE", "true"),
            ("TRAINWATCH_SERVER_LIMITS__BUFFER_SIZE", "0"),
        ]);
        let err = ServerSettings::load(None, &e, vec![])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits.buffer_size") && err.contains("= 0"),
            "{err}"
        );

        let err = ServerSettings::load(
            None,
            &EnvMap::new(),
            vec![("insecure", true.into()), ("listen", "nowhere".into())],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`listen`") && err.contains("nowhere"), "{err}");
    }

    #[test]
    fn the_example_server_toml_is_valid_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/server.toml");
        let s = ServerSettings::load(Some(&path), &EnvMap::new(), vec![]).unwrap();
        let d = ServerSettings::local_insecure();
        assert_eq!(s.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(s.http_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (
                s.limits,
                s.history,
                s.dashboard,
                s.max_sessions,
                s.shutdown_grace
            ),
            (
                d.limits,
                d.history,
                d.dashboard,
                d.max_sessions,
                d.shutdown_grace
            )
        );
        assert_eq!(
            s.tls.unwrap().cert,
            PathBuf::from("/etc/trainwatch/tls/server.pem")
        );
    }

    #[test]
    fn agent_server_urls_are_checked() {
        let load = |pairs: &[(&str, &str)]| AgentSettings::load(None, &env(pairs), vec![]);
        let ok = load(&[("TRAINWATCH_AGENT_SERVER", "https://metrics.lab:50051")]).unwrap();
        assert_eq!(
            ok.server,
            ServerEndpoint {
                url: "https://metrics.lab:50051".into(),
                host: "metrics.lab".into(),
                tls: true
            }
        );
        assert_eq!(ok.tls_domain, "metrics.lab");
        for (url, insecure, why) in [
            ("http://h:1", "false", "http:// is plaintext"),
            ("https://h:1", "true", "URL is https://"),
            ("h:1", "false", "expected https://HOST:PORT"),
            ("https://h", "false", "port is missing"),
            ("https://h:0", "false", "between 1 and 65535"),
            ("https://h:1/x", "false", "no path"),
        ] {
            let err = load(&[
                ("TRAINWATCH_AGENT_SERVER", url),
                ("TRAINWATCH_AGENT_INSECURE", insecure),
            ])
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("`server`") && err.contains(why),
                "{url}: {err}"
            );
        }
        let plain = load(&[
            ("TRAINWATCH_AGENT_SERVER", "http://[::1]:7"),
            ("TRAINWATCH_AGENT_INSECURE", "true"),
        ])
        .unwrap();
        assert_eq!(
            (plain.server.host.as_str(), plain.server.tls),
            ("::1", false)
        );
    }

    #[test]
    fn agent_values_are_validated() {
        let load = |pairs: &[(&str, &str)]| {
            AgentSettings::load(None, &env(pairs), vec![])
                .unwrap_err()
                .to_string()
        };
        let e = load(&[("TRAINWATCH_AGENT_MAX_FPS", "0")]);
        assert!(e.contains("`max_fps` = 0"), "{e}");
        let e = load(&[("TRAINWATCH_AGENT_RECONNECT__FACTOR", "0.5")]);
        assert!(e.contains("reconnect.factor") && e.contains("0.5"), "{e}");
        let e = load(&[("TRAINWATCH_AGENT_HEALTH__LISTEN", "0.0.0.0:9464")]);
        assert!(e.contains("health.listen") && e.contains("loopback"), "{e}");
        let e = load(&[("TRAINWATCH_AGENT_DEVICE_ID", "a b")]);
        assert!(e.contains("device_id"), "{e}");
        let e = load(&[("TRAINWATCH_AGENT_TLS__CLIENT_CERT", "/x.pem")]);
        assert!(e.contains("tls.client_key"), "{e}");
        let d = AgentSettings::load(None, &EnvMap::new(), vec![]).unwrap();
        assert!(
            crate::proto::check_session_id(&d.device_id).is_ok(),
            "{}",
            d.device_id
        );
        assert_eq!(d.max_fps, 60.0);
    }

    #[test]
    fn the_example_agent_toml_is_valid_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/agent.toml");
        let s = AgentSettings::load(Some(&path), &EnvMap::new(), vec![]).unwrap();
        let d = AgentSettings::load(None, &EnvMap::new(), vec![]).unwrap();
        assert_eq!(s.server, d.server);
        assert_eq!(s.tls, d.tls);
        assert_eq!(
            (
                &s.shm_dir,
                s.max_fps,
                s.stop_grace,
                s.finished_grace,
                s.scan_interval
            ),
            (
                &d.shm_dir,
                d.max_fps,
                d.stop_grace,
                d.finished_grace,
                d.scan_interval
            )
        );
        assert_eq!(
            (
                s.backoff,
                s.liveness_intervals,
                s.health_log_interval,
                s.health_listen
            ),
            (
                d.backoff,
                d.liveness_intervals,
                d.health_log_interval,
                d.health_listen
            )
        );
        assert_eq!(s.frames, d.frames);
        assert_eq!(s.telemetry, d.telemetry);
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(&file, "insecure = true\nlisen = \"x\"\n").unwrap();
        let err = ServerSettings::load(Some(&file), &EnvMap::new(), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }
}
