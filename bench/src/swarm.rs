//! The swarm: thousands of simulated Pis against one real `cartwise-hub serve` (a release
//! binary on a scratch database), each a real QUIC connection with mutual TLS running the
//! sync protocol as the edge runs it (`swarm/device.rs`), all on one client endpoint (one
//! UDP socket) in this process.
//!
//! - [`sessions`]: N devices (ten per branch) connect and sync; over a steady window of at
//!   least one heartbeat interval the hub's CPU (% of one core, `/proc/<pid>/stat`) and its
//!   resident memory (`/proc/<pid>/status`) are read, and the pool's own CPU beside them. Then
//!   every connection is dropped and every device reconnects at once (the reconnect storm):
//!   the time until every device has completed its handshake and the idle sync of every one
//!   of its documents again, the connection and session errors seen, and the hub's
//!   "come back later" answers, not errors: `Busy` at admission (honoured with the edge's
//!   jitter) and refusals at its handshake door (retried after the edge's 1–10 s wait).
//! - [`same_workload`]: D devices each lend and return R rentals through the edge's own
//!   live-document writer (`LiveDoc`, one SQLite store each), syncing after every write;
//!   events/s = 2·D·R / the time from the first write until Postgres holds every rental
//!   returned. The automerge-repo side of the comparison runs the same workload.

pub mod device;
pub mod fleet;
pub mod hub;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cartwise_cloud_hub::db;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;

use device::{Device, Phase, Pool};
use hub::HubProcess;

/// How often progress is checked.
const POLL: Duration = Duration::from_millis(20);
/// How often progress is printed while waiting.
const PROGRESS: Duration = Duration::from_secs(10);

fn progress(what: &str, synced: usize, want: usize, stats: &device::Stats) {
    println!(
        "{what}: {synced} of {want} devices synced ({} errors; {} refusals at the hub's \
         handshake door and {} Busy deferrals, both retried)",
        stats.errors(),
        stats.refused.load(Ordering::Relaxed),
        stats.deferred.load(Ordering::Relaxed),
    );
}

/// What to run in [`sessions`].
#[derive(Debug, Clone, Copy)]
pub struct SessionsConfig {
    /// Devices, each one session.
    pub sessions: usize,
    /// The devices' heartbeat interval.
    pub heartbeat: Duration,
    /// The steady window CPU is averaged over (at least one heartbeat interval to mean it).
    pub window: Duration,
}

/// What [`sessions`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct SessionsReport {
    /// Devices, each one session.
    pub sessions: usize,
    /// Heartbeat interval, seconds.
    pub heartbeat_s: f64,
    /// Seconds from the first connection until every device had synced.
    pub connect_s: f64,
    /// The hub's resident memory at the end of the steady window, MB.
    pub hub_rss_mb: f64,
    /// The hub's CPU over the steady window, % of one core.
    pub hub_cpu_pct: f64,
    /// This process's CPU (the device pool) over the same window, % of one core.
    pub pool_cpu_pct: f64,
    /// The steady window, seconds.
    pub window_s: f64,
    /// Seconds from dropping every connection until every device had synced again.
    pub storm_s: f64,
    /// Connection and session errors during the storm.
    pub storm_errors: u64,
    /// `Busy` answers during the storm (honoured, not errors).
    pub storm_deferred: u64,
    /// Connections the hub refused at its handshake door during the storm (handshake slots
    /// and their queue full; retried after the edge's short wait, not errors).
    pub storm_refused: u64,
    /// The hub's peak resident memory during the storm, MB.
    pub storm_hub_rss_peak_mb: f64,
    /// The hub's CPU during the storm, % of one core.
    pub storm_hub_cpu_pct: f64,
    /// Errors while first connecting (before the steady window).
    pub setup_errors: u64,
    /// `Busy` answers while first connecting.
    pub setup_deferred: u64,
    /// Refusals at the hub's handshake door while first connecting.
    pub setup_refused: u64,
    /// A few of the errors seen, if any.
    pub error_samples: Vec<String>,
}

/// What [`same_workload`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct SameWorkload {
    /// D.
    pub devices: usize,
    /// R.
    pub rentals_per_device: u32,
    /// 2·D·R.
    pub events: u64,
    /// From the first write until Postgres held every rental returned, ms.
    pub converge_ms: f64,
    /// events / converge seconds.
    pub events_per_s: f64,
    /// Connection and session errors (expected 0).
    pub errors: u64,
    /// `Busy` answers honoured.
    pub deferred: u64,
    /// The hub's CPU from the first write to convergence, % of one core.
    pub hub_cpu_pct: f64,
    /// This process's CPU (the devices, their writes included) over the same time.
    pub pool_cpu_pct: f64,
    /// A few of the errors seen, if any.
    pub error_samples: Vec<String>,
}

async fn database(url: &str) -> anyhow::Result<PgPool> {
    let pool = db::connect(url, Duration::from_secs(10))
        .await
        .context("connecting to the scratch database")?;
    db::migrate(&pool)
        .await
        .context("migrating the scratch database")?;
    Ok(pool)
}

/// How long all devices may take to sync before the run fails.
fn sync_wait(devices: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(40 * devices as u64)
}

/// Waits until `count()` reaches `want`, or fails after `limit` naming `what`.
async fn until(
    what: &str,
    want: usize,
    limit: Duration,
    stats: &device::Stats,
    hub: &mut HubProcess,
    mut count: impl FnMut() -> usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut report = started + PROGRESS;
    loop {
        let now = count();
        if now >= want {
            return Ok(started.elapsed());
        }
        if Instant::now() >= report {
            progress(what, now, want, stats);
            report += PROGRESS;
        }
        if !hub.running() {
            bail!("the hub exited during {what}; see {}", hub.log.display());
        }
        if started.elapsed() > limit {
            bail!(
                "{what}: only {now} of {want} devices synced within {} s ({} errors, {} \
                 deferrals, {} refusals; e.g. {:?}); see {}",
                limit.as_secs(),
                stats.errors(),
                stats.deferred.load(Ordering::Relaxed),
                stats.refused.load(Ordering::Relaxed),
                stats.samples(),
                hub.log.display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn spawn_devices(
    pool: &Arc<Pool>,
    devices: Vec<Device>,
    control: &watch::Receiver<Phase>,
) -> JoinSet<Device> {
    let mut tasks = JoinSet::new();
    for device in devices {
        tasks.spawn(device::run(Arc::clone(pool), device, control.clone()));
    }
    tasks
}

async fn stop(control: &watch::Sender<Phase>, mut tasks: JoinSet<Device>) {
    control.send_modify(|p| p.stop = true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

/// N idle sessions, their steady cost on the hub, then the reconnect storm.
pub async fn sessions(
    bin: &Path,
    database_url: &str,
    dir: &Path,
    config: SessionsConfig,
) -> anyhow::Result<SessionsReport> {
    let n = config.sessions;
    let db = database(database_url).await?;
    let fleet = fleet::build(&db, n, false).await?;
    let mut hub = HubProcess::start(bin, database_url, dir).await?;
    let heartbeat_ms = u32::try_from(config.heartbeat.as_millis()).unwrap_or(u32::MAX);
    let pool = Arc::new(Pool::new(hub.quic, heartbeat_ms)?);
    let devices = fleet
        .into_iter()
        .map(|f| Device::idle(f, hub.quic))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (control, rx) = watch::channel(Phase {
        round: 1,
        write: false,
        stop: false,
    });
    let tasks = spawn_devices(&pool, devices, &rx);
    let stats = &pool.stats;
    let connect = until("connecting", n, sync_wait(n), stats, &mut hub, || {
        stats.synced[1].load(Ordering::Relaxed)
    })
    .await;
    let connect = match connect {
        Ok(elapsed) => elapsed,
        Err(error) => {
            stop(&control, tasks).await;
            return Err(error);
        }
    };
    let setup_errors = stats.errors();
    let setup_deferred = stats.deferred.load(Ordering::Relaxed);
    let setup_refused = stats.refused.load(Ordering::Relaxed);
    println!(
        "sessions: {n} devices synced in {:.1} s ({setup_deferred} deferrals, {setup_refused} \
         refusals at the door, {setup_errors} errors); steady window {} s",
        connect.as_secs_f64(),
        config.window.as_secs()
    );
    let ticks = hub::clock_ticks();
    let hub_pid = hub.pid().to_string();
    let (hub0, self0) = (hub::sample(&hub_pid)?, hub::sample("self")?);
    tokio::time::sleep(config.window).await;
    let (hub1, self1) = (hub::sample(&hub_pid)?, hub::sample("self")?);
    let window_errors = stats.errors() - setup_errors;
    // The storm: every connection dropped, every device back at once.
    let (errors0, deferred0) = (stats.errors(), stats.deferred.load(Ordering::Relaxed));
    let refused0 = stats.refused.load(Ordering::Relaxed);
    control.send_modify(|p| p.round = 2);
    let mut peak_kb = hub1.rss_kb;
    let storm_started = Instant::now();
    let limit = sync_wait(n);
    let mut report = storm_started + PROGRESS;
    let storm = loop {
        let synced = stats.synced[2].load(Ordering::Relaxed);
        if synced >= n {
            break Ok(storm_started.elapsed());
        }
        if Instant::now() >= report {
            progress("reconnect storm", synced, n, stats);
            report += PROGRESS;
        }
        if let Ok(s) = hub::sample(&hub_pid) {
            peak_kb = peak_kb.max(s.rss_kb);
        }
        if !hub.running() || storm_started.elapsed() > limit {
            break Err(anyhow::anyhow!(
                "reconnect storm: only {synced} of {n} devices synced again within {} s \
                 ({} errors, {} refusals at the door; e.g. {:?}); see {}",
                limit.as_secs(),
                stats.errors() - errors0,
                stats.refused.load(Ordering::Relaxed) - refused0,
                stats.samples(),
                hub.log.display()
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    let hub2 = hub::sample(&hub_pid)?;
    let storm_errors = stats.errors() - errors0;
    let storm_deferred = stats.deferred.load(Ordering::Relaxed) - deferred0;
    let storm_refused = stats.refused.load(Ordering::Relaxed) - refused0;
    let samples = stats.samples();
    stop(&control, tasks).await;
    let storm = storm?;
    if window_errors > 0 {
        println!("sessions: {window_errors} errors during the steady window");
    }
    Ok(SessionsReport {
        sessions: n,
        heartbeat_s: config.heartbeat.as_secs_f64(),
        connect_s: connect.as_secs_f64(),
        hub_rss_mb: hub1.rss_kb as f64 / 1024.0,
        hub_cpu_pct: hub::cpu_percent(&hub0, &hub1, ticks),
        pool_cpu_pct: hub::cpu_percent(&self0, &self1, ticks),
        window_s: hub1.at.duration_since(hub0.at).as_secs_f64(),
        storm_s: storm.as_secs_f64(),
        storm_errors,
        storm_deferred,
        storm_refused,
        storm_hub_rss_peak_mb: peak_kb as f64 / 1024.0,
        storm_hub_cpu_pct: hub::cpu_percent(&hub1, &hub2, ticks),
        setup_errors,
        setup_deferred,
        setup_refused,
        error_samples: samples,
    })
}

/// D devices lending and returning R rentals each through the edge's writer, synced to the
/// hub; events/s until Postgres holds every rental returned.
pub async fn same_workload(
    bin: &Path,
    database_url: &str,
    dir: &Path,
    devices: usize,
    rentals: u32,
) -> anyhow::Result<SameWorkload> {
    let db = database(database_url).await?;
    let fleet = fleet::build(&db, devices, true).await?;
    let mut hub = HubProcess::start(bin, database_url, dir).await?;
    let pool = Arc::new(Pool::new(
        hub.quic,
        cartwise_sync_core::session::HEARTBEAT_INTERVAL_MS_DEFAULT,
    )?);
    let writers = fleet
        .into_iter()
        .map(|f| Device::writer(f, hub.quic, rentals))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (control, rx) = watch::channel(Phase {
        round: 1,
        write: false,
        stop: false,
    });
    let tasks = spawn_devices(&pool, writers, &rx);
    let stats = &pool.stats;
    let outcome = async {
        until(
            "connecting",
            devices,
            sync_wait(devices),
            stats,
            &mut hub,
            || stats.synced[1].load(Ordering::Relaxed),
        )
        .await?;
        let events = 2 * devices as u64 * u64::from(rentals);
        let want = devices as i64 * i64::from(rentals);
        let ticks = hub::clock_ticks();
        let hub_pid = hub.pid().to_string();
        let (hub0, self0) = (hub::sample(&hub_pid)?, hub::sample("self")?);
        let started = Instant::now();
        control.send_modify(|p| p.write = true);
        let limit = Duration::from_secs(120) + Duration::from_millis(events);
        loop {
            let returned: i64 =
                sqlx::query_scalar("SELECT count(*) FROM rentals WHERE status = 'returned'")
                    .fetch_one(&db)
                    .await
                    .context("counting returned rentals")?;
            if returned >= want {
                break;
            }
            if !hub.running() {
                bail!(
                    "the hub exited during the workload; see {}",
                    hub.log.display()
                );
            }
            if started.elapsed() > limit {
                bail!(
                    "only {returned} of {want} rentals reached Postgres returned within {} s \
                     ({} errors; e.g. {:?}); see {}",
                    limit.as_secs(),
                    stats.errors(),
                    stats.samples(),
                    hub.log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        let converge = started.elapsed();
        let (hub1, self1) = (hub::sample(&hub_pid)?, hub::sample("self")?);
        Ok(SameWorkload {
            devices,
            rentals_per_device: rentals,
            events,
            converge_ms: converge.as_secs_f64() * 1e3,
            events_per_s: events as f64 / converge.as_secs_f64(),
            errors: stats.errors(),
            deferred: stats.deferred.load(Ordering::Relaxed),
            hub_cpu_pct: hub::cpu_percent(&hub0, &hub1, ticks),
            pool_cpu_pct: hub::cpu_percent(&self0, &self1, ticks),
            error_samples: stats.samples(),
        })
    }
    .await;
    stop(&control, tasks).await;
    outcome
}
