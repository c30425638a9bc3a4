//! `cartwise-netfault`: the UDP fault proxy as a process, with its HTTP control API.

use std::net::SocketAddr;

use anyhow::Context as _;
use cartwise_netfault::{NetFault, control};
use clap::Parser;

/// Forward UDP between clients and one upstream, passing, black-holing or degrading datagrams.
#[derive(Debug, Parser)]
#[command(name = "cartwise-netfault", version)]
struct Args {
    /// Address clients send to, e.g. 127.0.0.1:4434.
    #[arg(long)]
    listen: SocketAddr,
    /// Address datagrams are forwarded to, e.g. the hub's QUIC address.
    #[arg(long)]
    upstream: SocketAddr,
    /// Address of the HTTP control API (POST /block, /heal, /mode; GET /state).
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Seed of the RNG behind lossy mode's decisions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let handle = NetFault::start(args.listen, args.upstream, args.seed)
        .await
        .with_context(|| format!("cannot listen on {}; is the port free?", args.listen))?;
    tracing::info!(listen = %handle.local_addr(), upstream = %args.upstream, "forwarding");
    let control_task = match args.control {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot serve control API on {addr}; is the port free?")
            })?;
            tracing::info!(control = %listener.local_addr()?, "control API");
            Some(tokio::spawn(control::serve(listener, handle.clone())))
        }
        None => None,
    };
    match control_task {
        Some(task) => {
            tokio::select! {
                served = task => served.context("control API task failed")?.context("control API stopped")?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?,
    }
    Ok(())
}
