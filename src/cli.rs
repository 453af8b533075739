//! The `trainwatch` command line: flags are mapped onto config keys (the
//! last configuration layer), and each subcommand is one function that
//! returns the process's exit code. `main` only parses and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{ConfigError, EnvMap, Overrides, ServerSettings};
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
        o
    }

    /// The validated settings: defaults → file → environment → these flags.
    pub fn settings(&self, env: &EnvMap) -> Result<ServerSettings, ConfigError> {
        ServerSettings::load(self.config.as_deref(), env, self.overrides())
    }
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

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
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
            _ = shutdown_signal() => {}
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
