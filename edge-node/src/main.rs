//! `cartwise-edge`: the branch Pi daemon and its operator commands.

use clap::Parser;

/// CartWise edge node: lends and returns carts at a branch, with or without the internet.
#[derive(Debug, Parser)]
#[command(name = "cartwise-edge", version, about)]
enum Command {}

fn main() -> anyhow::Result<()> {
    match Command::parse() {}
}
