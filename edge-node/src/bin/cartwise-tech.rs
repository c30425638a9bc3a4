//! `cartwise-tech`: the technician's laptop CLI.

use clap::Parser;

/// CartWise technician tool: enroll Pis, test the lock bus, carry a branch's data by hand.
#[derive(Debug, Parser)]
#[command(name = "cartwise-tech", version, about)]
enum Command {}

fn main() -> anyhow::Result<()> {
    match Command::parse() {}
}
