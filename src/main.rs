//! `trainwatch`: one binary, one subcommand per role. Parsing and dispatch
//! only; each subcommand lives in `trainwatch::cli`.

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
    Inspect(trainwatch::shm::inspect::InspectArgs),
    /// Make a CA, a server certificate and client certificates (PEM files).
    Certs(cli::CertsArgs),
    /// Server, agent and a real training run in one process: open the dashboard.
    Demo(cli::DemoArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            // --help and --version are not errors; a bad command line is a
            // usage error like a bad config value.
            return if usage {
                ExitCode::from(cli::EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Server(args) => cli::server(args),
        Command::Agent(args) => cli::agent(args),
        Command::Certs(args) => cli::certs(args),
        Command::Demo(args) => cli::demo(args),
        Command::Inspect(args) => ExitCode::from(trainwatch::shm::inspect::run(
            &args,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
    }
}
