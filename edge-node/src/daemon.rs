//! `cartwise-edge run`: wires the store, the engine, the lock bus, the poller and the kiosk
//! server, and runs them until shutdown. Tests and the demo start it in-process through
//! [`spawn`] with port 0 and their own clock.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cartwise_schema::Clock;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::EdgeConfig;
use crate::cu16::{Bus, PollEvent, PollerConfig, spawn_poller};
use crate::engine::Engine;
use crate::kiosk::{self, Kiosk};
use crate::outbox::{self, OUTBOX_ROWS_MAX, Outbox, Priority};
use crate::peers::{self, LanLink};
use crate::shopper::{ShopperAuth, load_or_create_key_file};
use crate::uplink::{self, HubLink};

/// Consecutive failed bus reads before the bus is closed and opened again.
pub const BUS_FAILURES_MAX: u32 = 6;
/// Longest wait between attempts to open the bus.
pub const BUS_RETRY_MAX: Duration = Duration::from_secs(30);
/// How often reservations lapse, the boot's progress is recorded and `unlocking` rentals are
/// reconciled.
pub const TICK: Duration = Duration::from_secs(5);
/// The kiosk's HTTP connection limits: a branch has a few kiosk screens and a technician; a
/// client gets 10 s to send a request's headers.
pub const KIOSK_HTTP_LIMITS: cartwise_http_serve::Limits = cartwise_http_serve::Limits {
    connections_max: 256,
    header_read_timeout: Duration::from_secs(10),
    drain_timeout: Duration::from_secs(5),
};

/// A running edge node.
pub struct RunningEdge {
    /// Where the kiosk server listens.
    pub http: SocketAddr,
    /// Where branch peers are served (`[lan] listen`), if anywhere.
    pub lan: Option<SocketAddr>,
    /// The engine, for in-process tests.
    pub engine: Arc<Engine>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for RunningEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEdge")
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl RunningEdge {
    /// Waits until every task has stopped (after the shutdown signal).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the node; it runs until `shutdown` completes.
pub async fn spawn(
    config: EdgeConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningEdge> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    if let Ok(enrolled) = crate::identity::load(&config.data_dir) {
        let peer = enrolled.peer();
        anyhow::ensure!(
            peer.device == config.device.id && peer.branch == config.device.branch_id,
            "the config names device {} of branch {}, but this Pi is enrolled as device {} of \
             branch {}: fix [device] in the config",
            config.device.id,
            config.device.branch_id,
            peer.device,
            peer.branch
        );
    }
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let engine = Arc::new(
        Engine::open(
            &config.data_dir.join("edge.db"),
            config.engine_config()?,
            Arc::clone(&clock),
            StdRng::from_rng(&mut rng),
        )
        .await
        .context("cannot open the local database")?,
    );
    let outbox = Arc::new(
        Outbox::open(engine.store().clone(), Arc::clone(&clock), OUTBOX_ROWS_MAX)
            .await
            .context("cannot open the telemetry outbox")?,
    );
    let key = load_or_create_key_file(&config.data_dir.join("shopper-token.key"), &mut rng)
        .context("cannot load the shopper-token key")?;
    let sms = match &config.sms {
        Some(sms) => Some(sms.build().context("the SMS sender cannot be set up")?),
        None => None,
    };
    let auth = ShopperAuth::new(&config.shopper, key);
    let link = Arc::new(HubLink::default());
    let mut kiosk = Kiosk::new(
        Arc::clone(&engine),
        auth,
        sms,
        config.device.name.clone(),
        Arc::clone(&link),
        StdRng::from_rng(&mut rng),
    );
    let lan_link = Arc::new(LanLink::relaying(link.relay()));
    kiosk.lan = Arc::clone(&lan_link);
    let kiosk = Arc::new(kiosk);
    let lan_socket = peers::bind(&config.lan).with_context(|| {
        format!(
            "cannot listen for branch peers on {}",
            config.lan.listen.map(|a| a.to_string()).unwrap_or_default()
        )
    })?;
    let lan = peers::local_addr(&lan_socket);

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let http = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let app = kiosk::router(kiosk);
    let mut http_stop = stopped.clone();
    tasks.spawn(async move {
        let stop = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        let served = cartwise_http_serve::serve(listener, app, KIOSK_HTTP_LIMITS, stop).await;
        if let Err(error) = served {
            tracing::error!(%error, "kiosk server stopped");
        }
    });
    tasks.spawn(supervise_bus(
        Arc::clone(&engine),
        Arc::clone(&outbox),
        config.clone(),
        stopped.clone(),
    ));
    tasks.spawn(Arc::clone(&outbox).run_flusher(stopped.clone()));
    tasks.spawn(outbox::status::run(
        Arc::clone(&engine),
        Arc::clone(&outbox),
        outbox::status::STATUS_INTERVAL,
        stopped.clone(),
    ));
    tasks.spawn(tick(Arc::clone(&engine), stopped.clone()));
    tasks.spawn(peers::run(
        Arc::clone(&engine),
        Arc::clone(&clock),
        config.data_dir.clone(),
        config.lan.clone(),
        lan_socket,
        lan_link,
        stopped.clone(),
    ));
    tasks.spawn(uplink::run(
        Arc::clone(&engine),
        clock,
        config.data_dir.clone(),
        link,
        outbox,
        stopped,
    ));
    tracing::info!(%http, device = %config.device.id, "edge node running");
    Ok(RunningEdge {
        http,
        lan,
        engine,
        tasks,
    })
}

/// Opens the bus (retrying with capped backoff), feeds the poller's events to the engine, and
/// reopens the bus after `BUS_FAILURES_MAX` consecutive failed reads. Telemetry: the bus going
/// away and each reopen are faults, the bus coming back after failed attempts is telemetry;
/// single failed reads are only counted into those (never a write per poll).
async fn supervise_bus(
    engine: Arc<Engine>,
    outbox: Arc<Outbox>,
    config: EdgeConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let Ok(uri) = config.bus_uri() else { return };
    let poller_config = PollerConfig {
        interval: Duration::from_millis(config.bus.poll_interval_ms),
        ..PollerConfig::default()
    };
    let mut backoff = Duration::from_millis(500);
    let mut failed_opens = 0u32;
    loop {
        let bus = tokio::select! {
            opened = Bus::open(&uri, config.bus_config()) => opened,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let bus = match bus {
            Ok(bus) => bus,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "lock bus not available");
                engine.set_bus(None);
                if failed_opens == 0 {
                    let data =
                        serde_json::json!({ "line": uri.to_string(), "error": error.to_string() });
                    outbox.push(Priority::Fault, "bus.unavailable", data, engine.now());
                }
                failed_opens = failed_opens.saturating_add(1);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(BUS_RETRY_MAX);
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        tracing::info!(line = %bus.line(), "lock bus open");
        if failed_opens > 0 {
            let data =
                serde_json::json!({ "line": bus.line().to_string(), "failed_opens": failed_opens });
            outbox.push(Priority::Telemetry, "bus.opened", data, engine.now());
            failed_opens = 0;
        }
        engine.set_bus(Some(bus.clone()));
        let mut poller = spawn_poller(bus, poller_config.clone());
        let mut failures = 0u32;
        loop {
            let event = tokio::select! {
                event = poller.events.recv() => event,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let Some(event) = event else { break };
            failures = if matches!(event, PollEvent::BusFailed { .. }) {
                failures + 1
            } else {
                0
            };
            if let Err(error) = engine.on_poll_event(event).await {
                tracing::error!(%error, "recording a bus event failed");
            }
            if failures >= BUS_FAILURES_MAX {
                tracing::warn!("the lock bus stopped answering; reopening it");
                let data = serde_json::json!({ "failed_reads": failures });
                outbox.push(Priority::Fault, "bus.reopen", data, engine.now());
                break;
            }
        }
        poller.task.abort();
        engine.set_bus(None);
    }
}

async fn tick(engine: Arc<Engine>, mut stopped: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = stopped.wait_for(|s| *s) => true,
        };
        // The last tick of a clean stop records how far this boot's clocks got, so the time
        // counted before a restart is not lost (a power cut loses at most one `TICK`).
        if let Err(error) = engine.tick().await {
            tracing::error!(%error, "periodic upkeep failed");
        }
        if stopping {
            return;
        }
    }
}
