//! `trainwatch`: one binary, one subcommand per role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Show a shared-memory segment: header, config, newest frame, events, control
    Inspect(trainwatch::shm::inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect(args) => ExitCode::from(trainwatch::shm::inspect::run(
            &args,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
    }
}
