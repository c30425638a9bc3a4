//! `cartwise-tech`: the technician's laptop CLI.

use std::process::ExitCode;

use cartwise_edge_node::bus_cli;
use cartwise_edge_node::tech::{hub_cli, lan_cli};
use clap::Parser;

/// CartWise technician tool: enroll Pis, test the lock bus, carry a branch's data by hand.
#[derive(Debug, Parser)]
#[command(name = "cartwise-tech", version, about)]
enum Command {
    /// Test the RS485 lock bus: scan, status, unlock, pulse, watch.
    Bus(bus_cli::BusArgs),
    #[command(flatten)]
    Hub(hub_cli::HubCommand),
    #[command(flatten)]
    Lan(lan_cli::LanCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Command::parse() {
        Command::Bus(args) => bus_cli::run(args).await,
        Command::Hub(cmd) => hub_cli::run(cmd).await,
        Command::Lan(cmd) => lan_cli::run(cmd).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
