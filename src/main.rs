//! `trainwatch`: one binary, one subcommand per role. Parsing and dispatch
//! only (`main -> run -> ExitCode`); each subcommand lives in
//! `trainwatch::cli`, which also owns the one exit path.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trainwatch::cli;

#[derive(Parser)]
#[command(
    name = "trainwatch",
    version,
    about = "Real-time monitor for neural-network training on edge GPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the central MetricsService (gRPC) and its HTTP API.
    Server(cli::ServerArgs),
    /// Stream the training runs in shared memory to the central server.
    Agent(cli::AgentArgs),
    /// Show a shared-memory segment: header, config, newest frame, events, control.
    Inspect(cli::InspectArgs),
    /// Make a CA, a server certificate and client certificates (PEM files).
    Certs(cli::CertsArgs),
    /// Server, agent and a real training run in one process: open the dashboard.
    Demo(cli::DemoArgs),
}

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => run(cli.command),
        Err(e) => cli::parse_failed(e),
    }
}

fn run(command: Command) -> ExitCode {
    match command {
        Command::Server(args) => cli::exit("server", cli::server(args)),
        Command::Agent(args) => cli::exit("agent", cli::agent(args)),
        Command::Certs(args) => cli::exit("certs", cli::certs(args)),
        Command::Demo(args) => cli::exit("demo", cli::demo(args)),
        Command::Inspect(args) => cli::inspect(args),
    }
}
