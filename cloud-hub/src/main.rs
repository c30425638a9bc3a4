//! `cartwise-hub`: the cloud hub and its operator commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cartwise_cloud_hub::clock::HubClock;
use cartwise_cloud_hub::{db, enroll, http, pki, quic, seed, sync_server, world::World};
use cartwise_schema::DeviceId;
use cartwise_sync_core::identity::EnrollUrl;
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
        /// Also serve devices over QUIC on this UDP address (enrollment, renewal, sync),
        /// e.g. [::]:4433.
        #[arg(long)]
        quic: Option<SocketAddr>,
    },
    /// Devices: add one (prints its one-time enrollment code), re-issue a code, revoke, list.
    #[command(subcommand)]
    Device(DeviceCommand),
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Create a device in a branch and print its one-time enrollment code and URL.
    Add {
        /// The branch's code (branches.branch_code).
        #[arg(long)]
        branch: String,
        /// The device's name, e.g. "corral-pi-1".
        #[arg(long)]
        name: String,
        #[command(flatten)]
        code: CodeArgs,
    },
    /// Print a new enrollment code for an existing device (e.g. after an SD card swap).
    Code {
        /// The device's id.
        device: DeviceId,
        #[command(flatten)]
        code: CodeArgs,
    },
    /// Revoke a device: refused at connect, disconnected within seconds if connected.
    Revoke {
        /// The device's id.
        device: DeviceId,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List devices (tab-separated: id, branch code, name, state, certificate expiry).
    List {
        /// Only this branch's devices.
        #[arg(long)]
        branch: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Args)]
struct CodeArgs {
    /// How long the code stays valid: 90m, 24h, 7d (at most 30d).
    #[arg(long, default_value = "24h")]
    expires: String,
    /// The hub's QUIC address as devices reach it, printed in the enrollment URL.
    #[arg(long, default_value = "localhost:4433")]
    hub_addr: String,
    #[command(flatten)]
    db: DbArgs,
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
            quic: quic_addr,
        } => {
            let pool = db::connect(&args.database_url, CONNECT_TIMEOUT).await?;
            db::migrate(&pool).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let bound = listener.local_addr()?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let quic = match quic_addr {
                Some(listen) => {
                    let config = quic::QuicConfig {
                        listen,
                        ..quic::QuicConfig::default()
                    };
                    let mut stopped = stopped.clone();
                    let shutdown = async move {
                        let _ = stopped.changed().await;
                    };
                    let server = std::sync::Arc::new(sync_server::SyncServer {
                        pool: pool.clone(),
                        clock: std::sync::Arc::new(HubClock::new()),
                        hub_actors: cartwise_sync_core::HubActors::new([]),
                    });
                    let handle =
                        quic::spawn(config, pool.clone(), server.handler(), shutdown).await?;
                    tokio::spawn(sweep_offline(pool.clone()));
                    println!(
                        "hub quic listening on {} (platform CA sha256 {})",
                        handle.local_addr, handle.platform_ca_sha256
                    );
                    Some(handle)
                }
                None => None,
            };
            println!("hub http listening on http://{bound}");
            tracing::info!(%bound, "hub serving");
            let mut http_stopped = stopped;
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            });
            let http_shutdown = async move {
                let _ = http_stopped.changed().await;
            };
            http::serve(listener, http::AppState { pool }, http_shutdown).await?;
            if let Some(handle) = quic {
                handle.stopped().await;
            }
        }
        Command::Device(command) => run_device(command).await?,
    }
    Ok(())
}

/// Marks devices offline after missed heartbeats, every 15 s, for the life of the process.
async fn sweep_offline(pool: sqlx::PgPool) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        ticker.tick().await;
        if let Err(error) = sync_server::sweep_offline(&pool).await {
            tracing::warn!(%error, "marking offline devices failed");
        }
    }
}

async fn run_device(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Add { branch, name, code } => {
            let ttl = enroll::parse_ttl(&code.expires)?;
            let pool = connect_migrated(&code.db).await?;
            let new = enroll::add_device(&pool, &branch, &name, ttl).await?;
            print_enrollment(&pool, &new, &code.hub_addr).await?;
        }
        DeviceCommand::Code { device, code } => {
            let ttl = enroll::parse_ttl(&code.expires)?;
            let pool = connect_migrated(&code.db).await?;
            let new = enroll::reissue_code(&pool, device, ttl).await?;
            print_enrollment(&pool, &new, &code.hub_addr).await?;
        }
        DeviceCommand::Revoke { device, db: args } => {
            let pool = connect_migrated(&args).await?;
            match pki::revoke_device(&pool, device).await? {
                pki::RevokeOutcome::Revoked { certificates } => println!(
                    "revoked device {device} and {certificates} certificate(s); \
                     connected hubs drop it within seconds"
                ),
                pki::RevokeOutcome::AlreadyRevoked => {
                    println!("device {device} was already revoked")
                }
                pki::RevokeOutcome::UnknownDevice => {
                    anyhow::bail!("no device has the id {device}; see `cartwise-hub device list`")
                }
            }
        }
        DeviceCommand::List { branch, db: args } => {
            let pool = connect_migrated(&args).await?;
            for row in enroll::list_devices(&pool, branch.as_deref()).await? {
                let state = match (row.revoked_at, row.cert_not_after) {
                    (Some(at), _) => format!("revoked {}", at.format("%Y-%m-%d %H:%M")),
                    (None, Some(_)) => "enrolled".to_owned(),
                    (None, None) => "not enrolled".to_owned(),
                };
                let expiry = row
                    .cert_not_after
                    .map(|at| at.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|| "-".to_owned());
                println!(
                    "{}\t{}\t{}\t{state}\t{expiry}",
                    row.device, row.branch_code, row.name
                );
            }
        }
    }
    Ok(())
}

async fn connect_migrated(args: &DbArgs) -> anyhow::Result<sqlx::PgPool> {
    let pool = db::connect(&args.database_url, CONNECT_TIMEOUT).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

async fn print_enrollment(
    pool: &sqlx::PgPool,
    new: &enroll::NewEnrollment,
    hub_addr: &str,
) -> anyhow::Result<()> {
    let ca = pki::load_or_create_platform_ca(pool).await?;
    let url = EnrollUrl {
        hub: hub_addr.to_owned(),
        code: new.code.grouped(),
        ca_sha256: cartwise_sync_core::identity::parse_sha256_fingerprint(&ca.sha256_hex())?,
    };
    println!("device   {}", new.device);
    println!("branch   {} (chain {})", new.branch, new.chain);
    println!("code     {}", new.code.grouped());
    println!("expires  {}", new.expires_at.format("%Y-%m-%d %H:%M UTC"));
    println!("ca       {}", ca.sha256_hex());
    println!("url      {url}");
    println!(
        "on the Pi: cartwise-edge enroll --url '{url}'\n  or: cartwise-edge enroll --hub {hub_addr} --code {} --ca {}",
        new.code.grouped(),
        ca.sha256_hex()
    );
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
