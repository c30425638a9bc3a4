//! `cartwise-loadgen`: shoppers lending and returning carts at a human pace at every kiosk of
//! the running demo (`var/demo/endpoints.json`), until Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use cartwise_bench::endpoints::Endpoints;
use cartwise_bench::loadgen::{self, LoadConfig};
use clap::Parser;

/// Shoppers at every kiosk of the running demo.
#[derive(Debug, Parser)]
#[command(name = "cartwise-loadgen", version)]
struct Args {
    /// The demo's endpoints file.
    #[arg(long, default_value = "var/demo/endpoints.json")]
    endpoints: PathBuf,
    /// Lends asked of each kiosk per minute (at most 30).
    #[arg(long, default_value_t = 3.0)]
    lends_per_minute: f64,
    /// Shoppers per kiosk, so at most this many carts out per kiosk (at most 50).
    #[arg(long, default_value_t = 8)]
    shoppers: usize,
    /// Shortest time a shopper keeps a cart, seconds.
    #[arg(long, default_value_t = 20)]
    hold_min: u64,
    /// Longest time a shopper keeps a cart, seconds (at most 3600).
    #[arg(long, default_value_t = 120)]
    hold_max: u64,
    /// Seed of the timing jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoints = Endpoints::read(&args.endpoints)?;
    let config = LoadConfig {
        lends_per_minute: args.lends_per_minute,
        shoppers: args.shoppers,
        hold_min_s: args.hold_min,
        hold_max_s: args.hold_max,
        seed: args.seed,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move { loadgen::run(&endpoints, config, stop_rx).await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop_tx.send(true);
    let _ = run.await;
    Ok(())
}
