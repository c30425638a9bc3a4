//! `cartwise-edge`: the branch Pi daemon and its operator commands.
//!
//! Each subcommand is one enum variant holding its `clap::Args` and one match arm calling the
//! library; add new ones the same way.

use std::process::ExitCode;

use cartwise_edge_node::{bundle_cli, bus_cli, enroll_cli, run_cli, sim_board};
use clap::Parser;

/// CartWise edge node: lends and returns carts at a branch, with or without the internet.
#[derive(Debug, Parser)]
#[command(name = "cartwise-edge", version, about)]
enum Command {
    /// Run the node: lend and return carts, serve the kiosk, drive the lock bus.
    Run(run_cli::RunArgs),
    /// Set the true time on a running node (Pis have no real-time clock).
    Time(run_cli::TimeArgs),
    /// Run a simulated bus of KERONG CU16 lock boards (for tests, demos and training).
    SimBoard(sim_board::cli::SimBoardArgs),
    /// Test the RS485 lock bus: scan, status, unlock, pulse, watch.
    Bus(bus_cli::BusArgs),
    /// Enroll this device with the hub: trade a one-time code for its certificate.
    Enroll(enroll_cli::EnrollArgs),
    /// Export this Pi's signed facts bundle or import the hub's intents bundle (USB stick).
    Bundle(bundle_cli::BundleArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = Command::parse();
    init_logging();
    let result = match command {
        Command::Run(args) => run_cli::run(args).await,
        Command::Time(args) => run_cli::time(args).await,
        Command::SimBoard(args) => sim_board::cli::run(args).await,
        Command::Bus(args) => bus_cli::run(args).await,
        Command::Enroll(args) => enroll_cli::run(args).await,
        Command::Bundle(args) => bundle_cli::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default (warnings only).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
