//! `cartwise-hub`: the cloud hub and its operator commands.

use clap::Parser;

/// CartWise cloud hub.
#[derive(Debug, Parser)]
#[command(name = "cartwise-hub", version, about)]
enum Command {}

fn main() -> anyhow::Result<()> {
    match Command::parse() {}
}
