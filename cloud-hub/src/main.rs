//! `cartwise-hub`: the cloud hub and its operator commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cartwise_cloud_hub::clock::HubClock;
use cartwise_cloud_hub::users;
use cartwise_cloud_hub::{db, enroll, http, intents, pki, quic, seed, sync_server, world::World};
use cartwise_schema::DeviceId;
use cartwise_sync_core::identity::EnrollUrl;
use cartwise_sync_core::intents::{IntentId, IntentKind};
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
        /// Address of the HTTP server (REST API, dashboard, /health, /metrics).
        #[arg(long, env = "CARTWISE_HUB_HTTP", default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Also serve devices over QUIC on this UDP address (enrollment, renewal, sync),
        /// e.g. [::]:4433.
        #[arg(long, env = "CARTWISE_HUB_QUIC")]
        quic: Option<SocketAddr>,
        /// Bridge to an MQTT broker (off when not given):
        /// mqtt://user:password@host:1883?chain=<chain id>[&chain=…] — publishes device, telemetry
        /// and cart status of those chains and takes lock/unlock as intents.
        #[arg(long, env = "CARTWISE_HUB_MQTT")]
        mqtt: Option<String>,
        /// Most device sessions admitted at once by this process; more are told to come back
        /// later (`Busy`).
        #[arg(long, default_value_t = cartwise_cloud_hub::admission::SESSIONS_MAX_DEFAULT)]
        max_sessions: usize,
        /// Most sessions in their first exchange (handshake and first merge) at once; more
        /// are told to come back later, so a fleet reconnecting after an outage spreads out.
        #[arg(long, default_value_t = cartwise_cloud_hub::admission::ADMITTING_MAX_DEFAULT)]
        max_admitting: usize,
    },
    /// Devices: add one (prints its one-time enrollment code), re-issue a code, revoke, list.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Intents: ask one device to unlock a post for maintenance, take a post out of service
    /// or back, change its rental minutes, or leave a note; list them; show one. The device
    /// executes each intent once when it next syncs and reports the outcome.
    #[command(subcommand)]
    Intent(IntentCommand),
    /// Users of the REST API and dashboard: add one (e.g. the first platform admin).
    #[command(subcommand)]
    User(UserCommand),
    /// Technician credentials: issue (for a laptop's key), revoke (no new ones), list.
    #[command(subcommand)]
    Technician(cartwise_cloud_hub::technicians::cli::TechnicianCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user. The password is read from --password-file, else from standard input
    /// (one line; at least 10 characters).
    Add {
        /// The login name (letters, digits, '.', '_', '-', '@').
        #[arg(long)]
        login: String,
        /// platform_admin, chain_admin, branch_manager, technician or viewer.
        #[arg(long)]
        role: String,
        /// The chain (chain admins, branch managers, technicians; viewers of one chain).
        #[arg(long)]
        chain: Option<uuid::Uuid>,
        /// A branch of the chain (branch managers and technicians; repeat for several).
        #[arg(long = "branch")]
        branches: Vec<uuid::Uuid>,
        /// A file whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
enum IntentCommand {
    /// Write an intent for one device and print it (status `pending` until the device answers).
    Add {
        /// The device that is to execute it (`cartwise-hub device list`).
        #[arg(long)]
        device: DeviceId,
        #[command(subcommand)]
        kind: IntentKindArg,
        /// How long the device may still execute it: 90m, 1h, 7d (1 minute to 30 days).
        /// Default: 1h for unlock-post, no expiry for the rest.
        #[arg(long, global = true)]
        expires_in: Option<String>,
        /// Who asks, for the audit log (default: $USER).
        #[arg(long, global = true)]
        by: Option<String>,
        #[command(flatten)]
        db: GlobalDbArgs,
    },
    /// List intents, newest first (tab-separated: id, created, branch code, device name,
    /// intent, status, outcome).
    List {
        /// Only this branch's (its id or code).
        #[arg(long)]
        branch: Option<String>,
        /// Only this device's.
        #[arg(long)]
        device: Option<DeviceId>,
        /// Only these: pending, applied, failed or expired.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show one intent and the device's outcome.
    Show {
        /// The intent's id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
enum IntentKindArg {
    /// Open a post's lock for maintenance (no rental is started).
    UnlockPost {
        /// The post (its cart number in the branch).
        #[arg(long)]
        post: u16,
    },
    /// Take a post out of service: nothing is lent from it until it is put back.
    OutOfService {
        /// The post (its cart number in the branch).
        #[arg(long)]
        post: u16,
    },
    /// Put a post back in service.
    InService {
        /// The post (its cart number in the branch).
        #[arg(long)]
        post: u16,
    },
    /// Set how long rentals started at the device from then on last.
    RentalMinutes {
        /// Minutes, 1 to 10080 (a week).
        #[arg(long)]
        minutes: u32,
    },
    /// Set the branch's sign-in policy while SMS cannot be sent (overrides the device's
    /// configuration).
    OtpPolicy {
        /// `refuse` (no sign-in at all) or `token` (shoppers with a valid token still rent).
        #[arg(long, value_parser = otp_policy_arg)]
        when_sms_unavailable: cartwise_sync_core::intents::OtpFallback,
    },
    /// Set the kiosk's answer language when the shopper's device asks for none.
    Language {
        /// `he` or `en`.
        #[arg(long, value_parser = language_arg)]
        language: cartwise_sync_core::intents::KioskLanguage,
    },
    /// Leave a note for the branch staff on the device.
    Note {
        /// The note (at most 1024 bytes).
        #[arg(long)]
        text: String,
        /// The post it is about, if any.
        #[arg(long)]
        post: Option<u16>,
    },
}

fn otp_policy_arg(input: &str) -> Result<cartwise_sync_core::intents::OtpFallback, String> {
    intents::parse_otp_policy(input).map_err(|e| e.to_string())
}

fn language_arg(input: &str) -> Result<cartwise_sync_core::intents::KioskLanguage, String> {
    intents::parse_language(input).map_err(|e| e.to_string())
}

/// `--database-url` accepted before or after an intent's kind.
#[derive(Debug, Args)]
struct GlobalDbArgs {
    /// Postgres URL, e.g. postgres://cartwise@127.0.0.1:5432/cartwise.
    #[arg(long, env = "DATABASE_URL", default_value = "", global = true)]
    database_url: String,
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
            max_sessions,
            max_admitting,
            mqtt,
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
                    let server = sync_server::SyncServer::new(
                        pool.clone(),
                        std::sync::Arc::new(HubClock::new()),
                    );
                    cartwise_cloud_hub::metrics::register_sync_server(&server);
                    server
                        .admission()
                        .configure(cartwise_cloud_hub::admission::AdmissionConfig {
                            sessions_max: max_sessions,
                            admitting_max: max_admitting,
                            ..Default::default()
                        });
                    let handle =
                        quic::spawn(config, pool.clone(), server.handler(), shutdown).await?;
                    tokio::spawn(sweep_offline(pool.clone()));
                    tokio::spawn(cartwise_cloud_hub::telemetry::run_retention(pool.clone()));
                    println!(
                        "hub quic listening on {} (platform CA sha256 {})",
                        handle.local_addr, handle.platform_ca_sha256
                    );
                    Some(handle)
                }
                None => None,
            };
            tokio::spawn(cartwise_cloud_hub::metrics::run_fleet_refresh(pool.clone()));
            // Runs while `_bridge` lives: until the HTTP server has stopped.
            let _bridge = match mqtt {
                Some(url) => {
                    let config = cartwise_cloud_hub::mqtt::MqttConfig::parse(&url)?;
                    let events = match cartwise_cloud_hub::metrics::global().sync_server() {
                        Some(server) => server.events(),
                        None => cartwise_cloud_hub::mqtt::watch_changes(pool.clone()),
                    };
                    println!("hub mqtt bridge started ({})", url_without_password(&url));
                    Some(cartwise_cloud_hub::mqtt::spawn(
                        config,
                        pool.clone(),
                        events,
                    ))
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
        Command::Intent(command) => run_intent(command).await?,
        Command::User(command) => run_user(command).await?,
        Command::Technician(command) => cartwise_cloud_hub::technicians::cli::run(command).await?,
    }
    Ok(())
}

/// `url` with any password replaced, for logs.
fn url_without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
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

async fn run_intent(command: IntentCommand) -> anyhow::Result<()> {
    match command {
        IntentCommand::Add {
            device,
            kind,
            expires_in,
            by,
            db: args,
        } => {
            let expires_in = expires_in
                .as_deref()
                .map(intents::parse_expires_in)
                .transpose()?;
            let kind = match kind {
                IntentKindArg::UnlockPost { post } => IntentKind::UnlockPost { post },
                IntentKindArg::OutOfService { post } => IntentKind::OutOfService { post },
                IntentKindArg::InService { post } => IntentKind::InService { post },
                IntentKindArg::RentalMinutes { minutes } => {
                    IntentKind::SetRentalMinutes { minutes }
                }
                IntentKindArg::OtpPolicy {
                    when_sms_unavailable,
                } => IntentKind::SetOtpPolicy {
                    when_sms_unavailable,
                },
                IntentKindArg::Language { language } => IntentKind::SetLanguage { language },
                IntentKindArg::Note { text, post } => IntentKind::Note { post, text },
            };
            let actor = intents::Actor {
                kind: intents::ActorKind::Admin,
                name: by
                    .or_else(|| std::env::var("USER").ok())
                    .unwrap_or_else(|| "admin".to_owned()),
            };
            let pool = connect_migrated(&DbArgs {
                database_url: args.database_url,
            })
            .await?;
            let request = intents::IntentRequest {
                device,
                branch: None,
                kind,
                expires_in,
            };
            let intent = intents::create(&pool, request, &actor).await?;
            print_intent(&intent);
        }
        IntentCommand::List {
            branch,
            device,
            status,
            limit,
            db: args,
        } => {
            let status = status
                .as_deref()
                .map(intents::IntentStatus::parse)
                .transpose()?;
            let pool = connect_migrated(&args).await?;
            let branch = match branch {
                Some(text) => Some(intents::resolve_branch(&pool, &text).await?),
                None => None,
            };
            let filter = intents::IntentFilter {
                branch,
                device,
                status,
                limit: Some(limit),
            };
            for intent in intents::list(&pool, &filter).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    intent.id,
                    intent.created_at.format("%Y-%m-%d %H:%M"),
                    intent.branch_code,
                    intent.device_name,
                    describe(&intent.kind),
                    intent.status,
                    intent.outcome_detail.as_deref().unwrap_or("-"),
                );
            }
        }
        IntentCommand::Show { id, db: args } => {
            let id = IntentId::parse(id.trim())
                .map_err(|_| anyhow::anyhow!("{id:?} is not an intent id (a UUID)"))?;
            let pool = connect_migrated(&args).await?;
            print_intent(&intents::get(&pool, id).await?);
        }
    }
    Ok(())
}

/// What an intent asks, for people.
fn describe(kind: &IntentKind) -> String {
    match kind {
        IntentKind::UnlockPost { post } => format!("unlock post {post}"),
        IntentKind::OutOfService { post } => format!("take post {post} out of service"),
        IntentKind::InService { post } => format!("put post {post} back in service"),
        IntentKind::SetRentalMinutes { minutes } => format!("set rental minutes to {minutes}"),
        IntentKind::Note {
            post: Some(post),
            text,
        } => format!("note on post {post}: {text:?}"),
        IntentKind::Note { post: None, text } => format!("note: {text:?}"),
        IntentKind::AssignCart {
            post: Some(post), ..
        } => format!("lend the cart of post {post} to a shopper"),
        IntentKind::AssignCart { post: None, .. } => "lend a cart to a shopper".to_owned(),
        IntentKind::ForceReturn { post } => format!("force the return of post {post}'s cart"),
        IntentKind::SetFirmware { version } => format!("run firmware {version}"),
        IntentKind::SetOtpPolicy {
            when_sms_unavailable,
        } => format!(
            "when SMS is unavailable, {}",
            match when_sms_unavailable {
                cartwise_sync_core::intents::OtpFallback::Refuse => "refuse sign-in",
                cartwise_sync_core::intents::OtpFallback::Token => "let shoppers with a token rent",
            }
        ),
        IntentKind::SetLanguage { language } => {
            format!("answer shoppers in {} by default", language.as_str())
        }
    }
}

fn print_intent(intent: &intents::Intent) {
    let when = |at: chrono::DateTime<chrono::Utc>| at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    println!("intent   {}", intent.id);
    println!(
        "device   {} ({}, branch {})",
        intent.device, intent.device_name, intent.branch_code
    );
    println!("asks     {}", describe(&intent.kind));
    println!(
        "by       {} at {}",
        intent.created_by,
        when(intent.created_at)
    );
    match intent.expires_at {
        Some(at) if intent.status == intents::IntentStatus::Pending && at <= chrono::Utc::now() => {
            println!(
                "expires  {} (passed: the device answers `expired` when it sees it)",
                when(at)
            )
        }
        Some(at) => println!("expires  {}", when(at)),
        None => println!("expires  never"),
    }
    println!("status   {}", intent.status);
    if let Some(at) = intent.outcome_at {
        println!("answered {}", when(at));
    }
    if let Some(detail) = &intent.outcome_detail {
        println!("outcome  {detail}");
    }
}

async fn run_user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            login,
            role,
            chain,
            branches,
            password_file,
            db: args,
        } => {
            let role = users::Role::parse(&role)?;
            let text = match &password_file {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the password file {}", path.display()))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("cannot read the password from standard input")?;
                    line
                }
            };
            let password = text.lines().next().unwrap_or_default().to_owned();
            let pool = connect_migrated(&args).await?;
            let new = users::NewUser {
                login: login.clone(),
                password,
                role,
                chain,
                branches,
            };
            let id = users::add_user(&pool, &new).await?;
            sqlx::query(
                "INSERT INTO audit_log (actor_kind, actor_id, chain_id, action, target, detail) \
                 VALUES ('admin', $1, $2, 'user.create', $3, $4)",
            )
            .bind(std::env::var("USER").unwrap_or_else(|_| "cli".to_owned()))
            .bind(chain)
            .bind(format!("user/{id}"))
            .bind(serde_json::json!({ "login": login, "role": role.as_str() }))
            .execute(&pool)
            .await
            .context("recording the new user in the audit log")?;
            println!("user {login} ({role}) created with id {id}");
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
