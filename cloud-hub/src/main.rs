//! `cartwise-hub`: the cloud hub and its operator commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cartwise_cloud_hub::{db, http, seed, world::World};
use clap::{Args, Parser, Subcommand};

/// CartWise cloud hub: merges every branch's state into Postgres and serves the API.
#[derive(Debug, Parser)]
#[command(name = "cartwise-hub", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply every pending database migration, then exit.
    Migrate(DbArgs),
    /// Load a world file (chains, branches, devices, boards) idempotently.
    Seed {
        /// The world file, e.g. fixtures/data/world.toml.
        file: PathBuf,
        /// Only list the file's devices (tab-separated: device id, branch id, branch code,
        /// device name, boards, first post number), without touching the database.
        #[arg(long)]
        list_devices: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Run the hub: migrate, then serve HTTP until Ctrl-C.
    Serve {
        #[command(flatten)]
        db: DbArgs,
        /// Address of the HTTP server (REST API, dashboard, health).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
    },
}

#[derive(Debug, Args)]
struct DbArgs {
    /// Postgres URL, e.g. postgres://cartwise@127.0.0.1:5432/cartwise.
    #[arg(long, env = "DATABASE_URL", default_value = "")]
    database_url: String,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate(args) => {
            let pool = db::connect(&args.database_url, CONNECT_TIMEOUT).await?;
            db::migrate(&pool).await?;
            println!("database is at migration {}", db::MIGRATOR.iter().count());
        }
        Command::Seed {
            file,
            list_devices,
            db: args,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the seed file {}", file.display()))?;
            let world = World::parse(&text).with_context(|| format!("in {}", file.display()))?;
            if list_devices {
                print!("{}", world.device_table());
                return Ok(());
            }
            let pool = db::connect(&args.database_url, CONNECT_TIMEOUT).await?;
            db::migrate(&pool).await?;
            let counts = seed::seed(&pool, &world).await.context("seeding failed")?;
            println!(
                "seeded {} chains, {} branches, {} devices, {} controllers, {} carts",
                counts.chains, counts.branches, counts.devices, counts.controllers, counts.carts
            );
        }
        Command::Serve {
            db: args,
            http: addr,
        } => {
            let pool = db::connect(&args.database_url, CONNECT_TIMEOUT).await?;
            db::migrate(&pool).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let bound = listener.local_addr()?;
            println!("hub http listening on http://{bound}");
            tracing::info!(%bound, "hub serving");
            http::serve(listener, http::AppState { pool }, shutdown_signal()).await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
