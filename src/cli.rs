//! The `trainwatch` command line: flags are mapped onto config keys (the
//! last configuration layer), and each subcommand is one function returning
//! `Result<(), CliError>`. `main` only parses and dispatches.
//!
//! There is one exit path: [`exit`] prints a failure once, with its causes,
//! and maps it to the exit code — 64 (`EX_USAGE`) for what the user fixes on
//! the command line or in configuration, 1 for a failure after a valid start.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{AgentSettings, ConfigError, EnvMap, Overrides, ServerSettings};
use crate::server::Server;

/// `EX_USAGE`: the configuration or the command line is wrong.
pub const EXIT_CONFIG: u8 = 64;
/// A runtime failure after a valid start.
pub const EXIT_FAILURE: u8 = 1;

type BoxError = Box<dyn Error + Send + Sync>;

/// How a subcommand failed; the variant alone decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the configuration is wrong (exit 64).
    #[error(transparent)]
    Usage(BoxError),
    /// A failure after a valid start (exit 1).
    #[error(transparent)]
    Runtime(BoxError),
}

impl CliError {
    pub fn usage(e: impl Into<BoxError>) -> Self {
        CliError::Usage(e.into())
    }

    pub fn runtime(e: impl Into<BoxError>) -> Self {
        CliError::Runtime(e.into())
    }

    /// A component's error: a usage error when the component says the user
    /// fixes it in configuration (`is_config`), else a runtime one.
    pub fn classify(is_config: bool, e: impl Into<BoxError>) -> Self {
        if is_config {
            CliError::usage(e)
        } else {
            CliError::runtime(e)
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_CONFIG,
            CliError::Runtime(_) => EXIT_FAILURE,
        }
    }
}

/// Failures of the process around a subcommand, before it runs.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// The one exit path: `Ok` is success; an error is printed once as
/// `trainwatch COMMAND: error: cause: ...` and mapped to its exit code.
pub fn exit(command: &str, result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trainwatch {command}: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// An error and its causes, `: `-separated. Most of our errors already end
/// with their cause's text; a cause is added only when the text so far does
/// not end with it, so nothing is printed twice.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.ends_with(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// A command line clap refused (exit 64), or `--help`/`--version` (exit 0):
/// printed by clap itself.
pub fn parse_failed(e: clap::Error) -> ExitCode {
    let usage = e.use_stderr();
    let _ = e.print();
    // --help and --version are not errors; a bad command line is a usage
    // error like a bad config value.
    if usage {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// TOML config file (keys as in systemd/server.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:50051].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// HTTP API listen address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// PEM certificate chain of the server.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the server.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Serve gRPC in plaintext (TLS is the default).
    #[arg(long)]
    pub insecure: bool,
    /// Token that control commands over HTTP must carry (>= 16 characters).
    /// Prefer TRAINWATCH_SERVER_HTTP_TOKEN: flags show in `ps`.
    #[arg(long, value_name = "TOKEN")]
    pub http_token: Option<String>,
    /// The store: a SQLite file, postgres://…, or "none" (live view only)
    /// [default: /var/lib/trainwatch/trainwatch.db].
    #[arg(long, value_name = "PATH|URL")]
    pub store: Option<String>,
}

impl ServerArgs {
    fn overrides(&self) -> Overrides {
        let mut o: Overrides = Vec::new();
        let path = |p: &PathBuf| p.display().to_string().into();
        if let Some(v) = &self.listen {
            o.push(("listen", v.clone().into()));
        }
        if let Some(v) = &self.http_listen {
            o.push(("http_listen", v.clone().into()));
        }
        if let Some(v) = &self.tls_cert {
            o.push(("tls.cert", path(v)));
        }
        if let Some(v) = &self.tls_key {
            o.push(("tls.key", path(v)));
        }
        if let Some(v) = &self.client_ca {
            o.push(("tls.client_ca", path(v)));
        }
        if self.insecure {
            o.push(("insecure", true.into()));
        }
        if let Some(v) = &self.http_token {
            o.push(("http_token", v.clone().into()));
        }
        if let Some(v) = &self.store {
            o.push(("store.path", v.clone().into()));
        }
        o
    }

    /// The validated settings: defaults → file → environment → these flags.
    pub fn settings(&self, env: &EnvMap) -> Result<ServerSettings, ConfigError> {
        ServerSettings::load(self.config.as_deref(), env, self.overrides())
    }
}

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory to write into (created; existing files are never overwritten).
    pub dir: PathBuf,
    /// Name or IP address the server is reached by (repeatable).
    #[arg(long = "host", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    pub hosts: Vec<String>,
    /// Also make a client certificate NAME.pem/NAME.key for mutual TLS (repeatable).
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
}

/// `trainwatch certs`: a small CA, a server certificate and optional client
/// certificates, for trials and small fleets without a PKI of their own.
pub fn certs(args: CertsArgs) -> Result<(), CliError> {
    let files =
        crate::tls::write_pki(&args.dir, &args.hosts, &args.clients).map_err(CliError::runtime)?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

#[derive(Args, Debug, Default)]
pub struct AgentArgs {
    /// TOML config file (keys as in systemd/agent.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The central server: https://HOST:PORT (http:// only with --insecure).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Talk to the server in plaintext (TLS is the default).
    #[arg(long)]
    pub insecure: bool,
    /// Directory of the trainers' segments [default: /dev/shm/trainwatch].
    #[arg(long, value_name = "DIR")]
    pub shm_dir: Option<PathBuf>,
    /// CA certificate that signed the server's certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// This device's certificate for mutual TLS (PEM).
    #[arg(long, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// This device's private key for mutual TLS (PEM).
    #[arg(long, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Most frames per second streamed per run [default: 60].
    #[arg(long, value_name = "N")]
    pub max_fps: Option<f64>,
    /// Device part of session ids [default: host name + machine id].
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    /// Serve Prometheus text at http://ADDR/metrics (loopback only).
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<String>,
    /// Test hook: while this file exists the main loop is wedged (it stops
    /// feeding the systemd watchdog).
    #[arg(long, value_name = "FILE", hide = true)]
    pub debug_wedge_file: Option<PathBuf>,
}

impl AgentArgs {
    fn overrides(&self) -> Overrides {
        let mut o: Overrides = Vec::new();
        let path = |p: &PathBuf| p.display().to_string().into();
        if let Some(v) = &self.server {
            o.push(("server", v.clone().into()));
        }
        if self.insecure {
            o.push(("insecure", true.into()));
        }
        if let Some(v) = &self.shm_dir {
            o.push(("shm_dir", path(v)));
        }
        if let Some(v) = &self.ca_cert {
            o.push(("tls.ca_cert", path(v)));
        }
        if let Some(v) = &self.client_cert {
            o.push(("tls.client_cert", path(v)));
        }
        if let Some(v) = &self.client_key {
            o.push(("tls.client_key", path(v)));
        }
        if let Some(v) = self.max_fps {
            o.push(("max_fps", v.into()));
        }
        if let Some(v) = &self.device_id {
            o.push(("device_id", v.clone().into()));
        }
        if let Some(v) = &self.health_listen {
            o.push(("health.listen", v.clone().into()));
        }
        o
    }

    /// The validated settings: defaults → file → environment → these flags.
    pub fn settings(&self, env: &EnvMap) -> Result<AgentSettings, ConfigError> {
        AgentSettings::load(self.config.as_deref(), env, self.overrides())
    }
}

/// `trainwatch agent`.
pub fn agent(args: AgentArgs) -> Result<(), CliError> {
    let env: EnvMap = std::env::vars().collect();
    let settings = args.settings(&env).map_err(CliError::usage)?;
    init_tracing();
    let rt = agent_runtime().map_err(|e| CliError::runtime(StartError::Runtime(e)))?;
    let mut systemd = crate::agent::notify::Systemd::new(args.debug_wedge_file.clone());
    rt.block_on(async {
        tracing::info!(
            server = %settings.server.url,
            shm_dir = %settings.shm_dir.display(),
            device_id = %settings.device_id,
            "trainwatch agent starting"
        );
        let agent = crate::agent::Agent::new(settings);
        let stop = tokio_util::sync::CancellationToken::new();
        let signal = shutdown_signal().map_err(|e| CliError::runtime(StartError::Signals(e)))?;
        let signal = {
            let stop = stop.clone();
            tokio::spawn(async move {
                signal.await;
                crate::agent::notify::stopping();
                stop.cancel();
            })
        };
        let result = agent.run(stop, &mut systemd).await;
        signal.abort();
        result.map_err(|e| CliError::classify(e.is_config(), e))
    })
}

/// Logs to stderr; `TRAINWATCH_LOG` (or `RUST_LOG`) sets the filter.
pub fn init_tracing() {
    let filter = std::env::var("TRAINWATCH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("trainwatch")
        .build()
}

/// The agent's runtime: one thread. Its sessions wait far more than they
/// work (a frame is a read, a small encode and a send), and on one thread
/// no wakeup crosses threads: measured against the multi-threaded runtime
/// it cut the agent's CPU per frame (docs/bench.md). Large frames are
/// encoded on blocking threads, so the loop never waits on one.
fn agent_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("trainwatch-agent")
        .build()
}

/// Installs SIGTERM and SIGINT handlers now (so a signal that comes right
/// after start-up is not fatal) and resolves when one arrives.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// `trainwatch server`.
pub fn server(args: ServerArgs) -> Result<(), CliError> {
    let env: EnvMap = std::env::vars().collect();
    let settings = args.settings(&env).map_err(CliError::usage)?;
    init_tracing();
    let rt = runtime().map_err(|e| CliError::runtime(StartError::Runtime(e)))?;
    rt.block_on(async {
        let signal = shutdown_signal().map_err(|e| CliError::runtime(StartError::Signals(e)))?;
        let running = Server::start(&settings)
            .await
            .map_err(|e| CliError::classify(e.is_config(), e))?;
        // One machine-readable line on stdout once both listeners accept.
        println!(
            "listening grpc={} http={} tls={}",
            running.grpc_addr,
            running.http_addr,
            if running.tls { "on" } else { "off" }
        );
        tracing::info!(
            grpc = %running.grpc_addr,
            http = %running.http_addr,
            tls = running.tls,
            "trainwatch server listening"
        );
        tokio::select! {
            _ = signal => {}
            _ = running.stopped() => tracing::error!("a listener stopped; shutting down"),
        }
        running
            .shutdown(settings.shutdown_grace)
            .await
            .map_err(CliError::runtime)
    })
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Dashboard port on 127.0.0.1 (0: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// gRPC port of the demo's server on 127.0.0.1 (0: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub grpc_port: u16,
    /// Epochs to train before the run is COMPLETED (the dashboard stays up).
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub epochs: u32,
    /// Batches per epoch.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batches_per_epoch: u32,
    /// Samples per batch (the dashboard can change it).
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::demo::trainer::MAX_BATCH_SIZE)))]
    pub batch_size: u32,
    /// Training speed in batches per second.
    #[arg(long, value_name = "N", default_value_t = 30.0, value_parser = positive_speed)]
    pub speed: f64,
    /// Starting learning rate (the dashboard can change it).
    #[arg(long, value_name = "LR", default_value_t = crate::demo::DEFAULT_LR)]
    pub lr: f32,
    /// Seed of the generated dataset and the initial weights.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Stop by itself after this many seconds (default: at Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Segment directory [default: a private temporary one, removed at exit].
    #[arg(long, value_name = "DIR")]
    pub shm_dir: Option<PathBuf>,
    /// Where the server records the run: a SQLite file or a postgres:// URL
    /// [default: a temporary SQLite file, removed at exit].
    #[arg(long, value_name = "PATH|URL")]
    pub store: Option<String>,
}

fn positive_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=10_000.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: expected a number of batches per second from 0.1 to 10000"
        )),
    }
}

/// Demo flags clap cannot check by itself.
#[derive(Debug, thiserror::Error)]
pub enum DemoArgsError {
    #[error("--lr {0}: expected 0 < lr <= 10")]
    LearningRate(f32),
    #[error("--duration {0}: expected a positive number of seconds")]
    Duration(f64),
}

impl DemoArgs {
    /// The demo's options, once `--lr` and `--duration` are checked.
    pub fn options(self) -> Result<crate::demo::DemoOptions, DemoArgsError> {
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return Err(DemoArgsError::LearningRate(self.lr));
        }
        let duration = match self.duration {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => {
                Some(std::time::Duration::from_secs_f64(s))
            }
            Some(s) => return Err(DemoArgsError::Duration(s)),
        };
        Ok(crate::demo::DemoOptions {
            http_port: self.http_port,
            grpc_port: self.grpc_port,
            shm_dir: self.shm_dir,
            store: self.store,
            duration,
            epochs: self.epochs,
            batches_per_epoch: self.batches_per_epoch,
            batch_size: self.batch_size,
            speed: self.speed,
            learning_rate: self.lr,
            seed: self.seed,
        })
    }
}

/// `trainwatch demo`: server, agent and a training run in one process.
pub fn demo(args: DemoArgs) -> Result<(), CliError> {
    let opts = args.options().map_err(CliError::usage)?;
    init_tracing();
    let rt = runtime().map_err(|e| CliError::runtime(StartError::Runtime(e)))?;
    rt.block_on(async {
        let signal = shutdown_signal().map_err(|e| CliError::runtime(StartError::Signals(e)))?;
        crate::demo::run(opts, signal, |s| {
            // One machine-readable line, then one for people.
            println!(
                "listening http={} grpc={} tls=on run={} shm_dir={} store={}",
                s.http_addr,
                s.grpc_addr,
                s.run_name,
                s.shm_dir.display(),
                s.store
            );
            println!(
                "trainwatch demo: open http://{}/ in a browser (Ctrl-C to stop)",
                s.http_addr
            );
        })
        .await
        .map_err(|e| CliError::classify(e.is_config(), e))
    })
}

/// Exit codes of `trainwatch inspect` (sysexits.h): a corrupt or foreign
/// file, a missing one.
pub const EXIT_DATAERR: u8 = 65;
pub const EXIT_NOINPUT: u8 = 66;

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// Segment file, e.g. /dev/shm/trainwatch/run1
    pub segment: PathBuf,
    /// Print JSON (one object per line with --watch)
    #[arg(long)]
    pub json: bool,
    /// Print again every --interval-ms until interrupted
    #[arg(long)]
    pub watch: bool,
    /// Refresh interval for --watch
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub interval_ms: u64,
    /// Stop --watch after this many reports (tests, scripts)
    #[arg(long, hide = true)]
    pub iterations: Option<u64>,
}

/// `trainwatch inspect`: reports on stdout, an unreadable segment on stderr
/// with the exit code that says why.
pub fn inspect(args: InspectArgs) -> ExitCode {
    let opts = crate::shm::inspect::Options {
        segment: args.segment,
        json: args.json,
        watch: args.watch,
        interval: std::time::Duration::from_millis(args.interval_ms),
        iterations: args.iterations,
    };
    match crate::shm::inspect::run(&opts, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trainwatch inspect: {e}");
            ExitCode::from(inspect_exit_code(&e))
        }
    }
}

fn inspect_exit_code(e: &crate::shm::ShmError) -> u8 {
    match e {
        crate::shm::ShmError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            EXIT_NOINPUT
        }
        e if e.is_corrupt() => EXIT_DATAERR,
        _ => EXIT_FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variant_decides_the_exit_code() {
        let io = || std::io::Error::other("boom");
        assert_eq!(CliError::usage(io()).exit_code(), EXIT_CONFIG);
        assert_eq!(CliError::runtime(io()).exit_code(), EXIT_FAILURE);
        assert_eq!(CliError::classify(true, io()).exit_code(), EXIT_CONFIG);
        assert_eq!(CliError::classify(false, io()).exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn causes_are_printed_once() {
        // The message already ends with its cause: not repeated.
        let e = CliError::runtime(StartError::Signals(std::io::Error::other("no signalfd")));
        assert_eq!(chain(&e), "cannot install signal handlers: no signalfd");
        // A cause the message does not show is appended.
        #[derive(Debug, thiserror::Error)]
        #[error("TLS configuration rejected")]
        struct Outer(#[source] std::io::Error);
        let e = CliError::usage(Outer(std::io::Error::other("bad key")));
        assert_eq!(chain(&e), "TLS configuration rejected: bad key");
    }

    #[test]
    fn demo_flags_are_checked() {
        let args = |lr: f32, duration: Option<f64>| DemoArgs {
            http_port: 0,
            grpc_port: 0,
            epochs: 1,
            batches_per_epoch: 1,
            batch_size: 1,
            speed: 1.0,
            lr,
            seed: 1,
            duration,
            shm_dir: None,
            store: None,
        };
        assert!(matches!(
            args(0.0, None).options(),
            Err(DemoArgsError::LearningRate(_))
        ));
        assert!(matches!(
            args(0.1, Some(-1.0)).options(),
            Err(DemoArgsError::Duration(_))
        ));
        let o = args(0.1, Some(2.0)).options().unwrap();
        assert_eq!(o.duration, Some(std::time::Duration::from_secs(2)));
    }
}
