//! The `trainwatch` command line: flags are mapped onto config keys (the
//! last configuration layer), and each subcommand is one function that
//! returns the process's exit code. `main` only parses and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{AgentSettings, ConfigError, EnvMap, Overrides, ServerSettings};
use crate::server::Server;

/// `EX_USAGE`: the configuration or the command line is wrong.
pub const EXIT_CONFIG: u8 = 64;
/// A runtime failure after a valid start.
pub const EXIT_FAILURE: u8 = 1;

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
pub fn certs(args: CertsArgs) -> ExitCode {
    match write_certs(&args) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trainwatch certs: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn write_certs(args: &CertsArgs) -> Result<Vec<PathBuf>, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    let pki = crate::tls::EphemeralPki::with_server_names("trainwatch CA", &hosts)
        .map_err(|e| format!("cannot make certificates for {hosts:?}: {e}"))?;
    let mut files: Vec<(String, String, bool)> = vec![
        ("ca.pem".into(), pki.ca_pem.clone(), false),
        ("ca.key".into(), pki.ca_key_pem.clone(), true),
        ("server.pem".into(), pki.server_cert_pem.clone(), false),
        ("server.key".into(), pki.server_key_pem.clone(), true),
    ];
    for name in &args.clients {
        let id = pki
            .client(name)
            .map_err(|e| format!("cannot make a client certificate for {name:?}: {e}"))?;
        files.push((format!("{name}.pem"), id.cert_pem, false));
        files.push((format!("{name}.key"), id.key_pem, true));
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    if let Some((name, ..)) = files.iter().find(|(n, ..)| args.dir.join(n).exists()) {
        return Err(format!(
            "{} exists; not overwriting certificates",
            args.dir.join(name).display()
        ));
    }
    let mut written = Vec::new();
    for (name, pem, secret) in files {
        let path = args.dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        f.write_all(pem.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
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

/// Tells systemd about the agent (when started by it): READY=1 after the
/// first scan, WATCHDOG=1 from healthy passes of the main loop.
struct Systemd {
    watchdog: Option<std::time::Duration>,
    last_ping: Option<std::time::Instant>,
    wedge_file: Option<PathBuf>,
}

impl crate::agent::Lifecycle for Systemd {
    fn ready(&mut self) {
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("streaming runs"),
        ]);
        tracing::info!("ready");
    }

    fn alive(&mut self) {
        if let Some(f) = &self.wedge_file {
            // The test hook: block this thread, as a wedged loop would.
            while f.exists() {
                std::thread::park_timeout(std::time::Duration::from_millis(50));
            }
        }
        let Some(period) = self.watchdog else { return };
        // Twice per watchdog period, as sd_watchdog_enabled(3) advises.
        if self.last_ping.is_none_or(|t| t.elapsed() >= period / 2) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_ping = Some(std::time::Instant::now());
        }
    }
}

/// `trainwatch agent`.
pub fn agent(args: AgentArgs) -> ExitCode {
    let env: EnvMap = std::env::vars().collect();
    let settings = match args.settings(&env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trainwatch agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing();
    let rt = match agent_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trainwatch agent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut systemd = Systemd {
        watchdog: sd_notify::watchdog_enabled(),
        last_ping: None,
        wedge_file: args.debug_wedge_file.clone(),
    };
    rt.block_on(async {
        tracing::info!(
            server = %settings.server.url,
            shm_dir = %settings.shm_dir.display(),
            device_id = %settings.device_id,
            "trainwatch agent starting"
        );
        let agent = crate::agent::Agent::new(settings);
        let stop = tokio_util::sync::CancellationToken::new();
        let signal = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("trainwatch agent: cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let signal = {
            let stop = stop.clone();
            tokio::spawn(async move {
                signal.await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                stop.cancel();
            })
        };
        let result = agent.run(stop, &mut systemd).await;
        signal.abort();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trainwatch agent: {e:#}");
                let code = if e.is_config() {
                    EXIT_CONFIG
                } else {
                    EXIT_FAILURE
                };
                ExitCode::from(code)
            }
        }
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
pub fn server(args: ServerArgs) -> ExitCode {
    let env: EnvMap = std::env::vars().collect();
    let settings = match args.settings(&env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trainwatch server: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trainwatch server: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    rt.block_on(async {
        let signal = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("trainwatch server: cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let running = match Server::start(&settings).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("trainwatch server: {e:#}");
                let code = if e.is_config() {
                    EXIT_CONFIG
                } else {
                    EXIT_FAILURE
                };
                return ExitCode::from(code);
            }
        };
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
        match running.shutdown(settings.shutdown_grace).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trainwatch server: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
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
}

fn positive_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=10_000.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: expected a number of batches per second from 0.1 to 10000"
        )),
    }
}

/// `trainwatch demo`: server, agent and a training run in one process.
pub fn demo(args: DemoArgs) -> ExitCode {
    if !(args.lr.is_finite() && args.lr > 0.0 && args.lr <= 10.0) {
        eprintln!("trainwatch demo: --lr {}: expected 0 < lr <= 10", args.lr);
        return ExitCode::from(EXIT_CONFIG);
    }
    let duration = match args.duration {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => {
            Some(std::time::Duration::from_secs_f64(s))
        }
        Some(s) => {
            eprintln!("trainwatch demo: --duration {s}: expected a positive number of seconds");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trainwatch demo: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let opts = crate::demo::DemoOptions {
        http_port: args.http_port,
        grpc_port: args.grpc_port,
        shm_dir: args.shm_dir,
        duration,
        epochs: args.epochs,
        batches_per_epoch: args.batches_per_epoch,
        batch_size: args.batch_size,
        speed: args.speed,
        learning_rate: args.lr,
        seed: args.seed,
    };
    rt.block_on(async {
        let signal = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("trainwatch demo: cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let result = crate::demo::run(opts, signal, |s| {
            // One machine-readable line, then one for people.
            println!(
                "listening http={} grpc={} tls=on run={} shm_dir={}",
                s.http_addr,
                s.grpc_addr,
                s.run_name,
                s.shm_dir.display()
            );
            println!(
                "trainwatch demo: open http://{}/ in a browser (Ctrl-C to stop)",
                s.http_addr
            );
        })
        .await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trainwatch demo: {e:#}");
                ExitCode::from(if e.is_config() {
                    EXIT_CONFIG
                } else {
                    EXIT_FAILURE
                })
            }
        }
    })
}
