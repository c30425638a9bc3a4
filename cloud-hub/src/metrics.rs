//! The hub's Prometheus metrics, rendered by hand in the text exposition format (version
//! 0.0.4) at `GET /metrics`: the set is small and fixed, so a registry crate would add
//! dependencies for nothing.
//!
//! Counters live in one process-wide [`Metrics`] ([`global`]): the code that does the work
//! bumps an atomic (HTTP layer, sync sessions, admission, merges, telemetry), and the scrape
//! only reads. What needs Postgres (devices online/offline, sync lag, projection rows) is
//! refreshed by [`run_fleet_refresh`] every [`FLEET_REFRESH_INTERVAL`], never per scrape, so a
//! scraper cannot load the database. Gauges of the sync server (sessions, merge backlog) are
//! read at scrape time from the server registered with [`register_sync_server`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use sqlx::PgPool;

use crate::sync_server::SyncServer;

/// How often the Postgres-backed gauges are refreshed.
pub const FLEET_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// A device offline longer than this counts in `cartwise_devices_offline_long`.
pub const OFFLINE_LONG: Duration = Duration::from_secs(600);
/// Distinct (route, method, status) series kept; further ones are folded into one series so a
/// client cannot grow the scrape without bound.
pub const HTTP_SERIES_MAX: usize = 1_024;
/// Upper bounds (seconds) of the request latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// The projection tables whose row counts are exported.
const PROJECTION_TABLES: [&str; 6] = [
    "devices",
    "controllers",
    "carts",
    "rentals",
    "anomalies",
    "telemetry",
];

/// One HTTP series: the route template (never the raw path), method and status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HttpKey {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Default, Clone)]
struct HttpStats {
    count: u64,
    sum_seconds: f64,
    buckets: [u64; LATENCY_BUCKETS.len()],
}

/// The Postgres-backed gauges, as of the last refresh.
#[derive(Debug, Default, Clone)]
struct Fleet {
    online: i64,
    offline: i64,
    offline_long: i64,
    sync_lag_seconds_max: f64,
    projection_rows: Vec<(&'static str, i64)>,
}

/// The process's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<HttpKey, HttpStats>>,
    /// Sync connections that opened a session stream.
    pub sync_sessions_opened: AtomicU64,
    /// Sessions admission let in.
    pub sync_sessions_admitted: AtomicU64,
    /// Sessions answered `Busy` (come back later).
    pub sync_sessions_busy: AtomicU64,
    /// Merge passes (a received `Sync` merged and projected, or refused).
    pub merge_passes: AtomicU64,
    /// Documents merged successfully.
    pub documents_merged: AtomicU64,
    /// Telemetry rows stored.
    pub telemetry_rows: AtomicU64,
    /// MQTT messages published by the bridge.
    pub mqtt_published: AtomicU64,
    /// MQTT lock/unlock messages turned into intents.
    pub mqtt_intents: AtomicU64,
    /// MQTT messages refused (unknown topic, foreign chain, bad cart).
    pub mqtt_refused: AtomicU64,
    fleet: Mutex<Option<Fleet>>,
    fleet_refresh_errors: AtomicU64,
    last_refresh_ok: AtomicBool,
    sync: Mutex<Weak<SyncServer>>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Adds one to `counter`.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Makes the sync server's live gauges (sessions, merge backlog) visible to `/metrics` and
/// `/health`. Held weakly: a dropped server simply disappears from the scrape.
pub fn register_sync_server(server: &Arc<SyncServer>) {
    let mut sync = global().sync.lock().unwrap_or_else(|e| e.into_inner());
    *sync = Arc::downgrade(server);
}

/// What the sync server reports now, if one runs in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SyncLoad {
    /// Admitted sessions (connected devices).
    pub sessions: usize,
    /// Sessions still in their first exchange.
    pub admitting: usize,
    /// Merge jobs queued.
    pub merge_backlog: usize,
    /// The backlog beyond which new sessions are deferred.
    pub merge_backlog_max: usize,
    /// The admitted-sessions limit.
    pub sessions_max: usize,
}

impl Metrics {
    /// The registered sync server, if it still runs.
    pub fn sync_server(&self) -> Option<Arc<SyncServer>> {
        self.sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()
    }

    /// The registered sync server's load.
    pub fn sync_load(&self) -> Option<SyncLoad> {
        let server = self.sync_server()?;
        let admission = server.admission();
        Some(SyncLoad {
            sessions: admission.sessions(),
            admitting: admission.admitting(),
            merge_backlog: server.merger().backlog(),
            merge_backlog_max: admission.merge_backlog_max(),
            sessions_max: admission.sessions_max(),
        })
    }

    /// Records one answered request.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = HttpKey {
            route: route.to_owned(),
            method: method.to_owned(),
            status,
        };
        if http.len() >= HTTP_SERIES_MAX && !http.contains_key(&key) {
            key = HttpKey {
                route: "other".to_owned(),
                method: "other".to_owned(),
                status,
            };
        }
        let stats = http.entry(key).or_default();
        let seconds = elapsed.as_secs_f64();
        stats.count += 1;
        stats.sum_seconds += seconds;
        for (bucket, bound) in stats.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// Reads the Postgres-backed gauges once.
    pub async fn refresh_fleet(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let result = fleet(pool).await;
        match result {
            Ok(fleet) => {
                *self.fleet.lock().unwrap_or_else(|e| e.into_inner()) = Some(fleet);
                self.last_refresh_ok.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.fleet_refresh_errors.fetch_add(1, Ordering::Relaxed);
                self.last_refresh_ok.store(false, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_http(&mut out);
        let counters: [(&str, &str, &AtomicU64); 9] = [
            (
                "cartwise_sync_sessions_opened_total",
                "Device sync connections that opened a session stream.",
                &self.sync_sessions_opened,
            ),
            (
                "cartwise_sync_sessions_admitted_total",
                "Sync sessions admitted.",
                &self.sync_sessions_admitted,
            ),
            (
                "cartwise_sync_sessions_busy_total",
                "Sync sessions told to come back later (Busy).",
                &self.sync_sessions_busy,
            ),
            (
                "cartwise_merge_passes_total",
                "Received Sync messages put through a merge pass.",
                &self.merge_passes,
            ),
            (
                "cartwise_documents_merged_total",
                "Merge passes that went through (document merged and projected).",
                &self.documents_merged,
            ),
            (
                "cartwise_telemetry_rows_total",
                "Telemetry rows stored.",
                &self.telemetry_rows,
            ),
            (
                "cartwise_mqtt_published_total",
                "Messages the MQTT bridge published.",
                &self.mqtt_published,
            ),
            (
                "cartwise_mqtt_intents_total",
                "MQTT lock/unlock messages turned into intents.",
                &self.mqtt_intents,
            ),
            (
                "cartwise_mqtt_refused_total",
                "MQTT messages refused by the bridge.",
                &self.mqtt_refused,
            ),
        ];
        for (name, help, counter) in counters {
            metric(
                &mut out,
                name,
                help,
                "counter",
                &[("", counter.load(Ordering::Relaxed) as f64)],
            );
        }
        metric(
            &mut out,
            "cartwise_fleet_refresh_errors_total",
            "Failed refreshes of the Postgres-backed gauges.",
            "counter",
            &[("", self.fleet_refresh_errors.load(Ordering::Relaxed) as f64)],
        );
        if let Some(load) = self.sync_load() {
            let gauges = [
                (
                    "cartwise_sync_sessions_open",
                    "Sync sessions admitted and open (connected devices).",
                    load.sessions,
                ),
                (
                    "cartwise_sync_sessions_admitting",
                    "Sync sessions still in their first exchange.",
                    load.admitting,
                ),
                (
                    "cartwise_merge_backlog",
                    "Merge jobs queued and not yet taken by a worker.",
                    load.merge_backlog,
                ),
            ];
            for (name, help, value) in gauges {
                metric(&mut out, name, help, "gauge", &[("", value as f64)]);
            }
        }
        let fleet = self.fleet.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(fleet) = fleet {
            metric(
                &mut out,
                "cartwise_devices",
                "Devices by status, as of the last refresh.",
                "gauge",
                &[
                    ("status=\"online\"", fleet.online as f64),
                    ("status=\"offline\"", fleet.offline as f64),
                ],
            );
            metric(
                &mut out,
                "cartwise_devices_offline_long",
                "Devices that have been heard from but not for more than 10 minutes.",
                "gauge",
                &[("", fleet.offline_long as f64)],
            );
            metric(
                &mut out,
                "cartwise_sync_lag_seconds_max",
                "Over online devices, the longest time since the hub stored a change of the device's document.",
                "gauge",
                &[("", fleet.sync_lag_seconds_max)],
            );
            let rows: Vec<(String, f64)> = fleet
                .projection_rows
                .iter()
                .map(|(table, rows)| (format!("table=\"{table}\""), *rows as f64))
                .collect();
            let rows: Vec<(&str, f64)> = rows.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            metric(
                &mut out,
                "cartwise_projection_rows",
                "Rows in the Postgres projection tables, as of the last refresh.",
                "gauge",
                &rows,
            );
        }
        out
    }

    fn render_http(&self, out: &mut String) {
        let http = self.http.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = writeln!(
            out,
            "# HELP cartwise_http_requests_total HTTP requests answered, by route template, method and status."
        );
        let _ = writeln!(out, "# TYPE cartwise_http_requests_total counter");
        for (key, stats) in &http {
            let _ = writeln!(
                out,
                "cartwise_http_requests_total{{{}}} {}",
                http_labels(key),
                stats.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP cartwise_http_request_duration_seconds HTTP request latency, by route template, method and status."
        );
        let _ = writeln!(
            out,
            "# TYPE cartwise_http_request_duration_seconds histogram"
        );
        for (key, stats) in &http {
            let labels = http_labels(key);
            for (count, bound) in stats.buckets.iter().zip(LATENCY_BUCKETS) {
                let _ = writeln!(
                    out,
                    "cartwise_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "cartwise_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                stats.count
            );
            let _ = writeln!(
                out,
                "cartwise_http_request_duration_seconds_sum{{{labels}}} {}",
                stats.sum_seconds
            );
            let _ = writeln!(
                out,
                "cartwise_http_request_duration_seconds_count{{{labels}}} {}",
                stats.count
            );
        }
    }
}

fn http_labels(key: &HttpKey) -> String {
    format!(
        "route=\"{}\",method=\"{}\",status=\"{}\"",
        escape(&key.route),
        escape(&key.method),
        key.status
    )
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

async fn fleet(pool: &PgPool) -> Result<Fleet, sqlx::Error> {
    let (online, offline, offline_long): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'online'),
                count(*) FILTER (WHERE status <> 'online'),
                count(*) FILTER (WHERE status <> 'online' AND last_heartbeat IS NOT NULL
                                 AND last_heartbeat < now() - make_interval(secs => $1))
         FROM devices",
    )
    .bind(OFFLINE_LONG.as_secs_f64())
    .fetch_one(pool)
    .await?;
    let lag: Option<f64> = sqlx::query_scalar(
        "SELECT max(EXTRACT(EPOCH FROM now() - last_write))::float8 FROM (
             SELECT max(s.updated_at) AS last_write
             FROM devices d JOIN sync_documents s ON s.device_id = d.id
             WHERE d.status = 'online' GROUP BY d.id) per_device",
    )
    .fetch_one(pool)
    .await?;
    let mut projection_rows = Vec::with_capacity(PROJECTION_TABLES.len());
    for table in PROJECTION_TABLES {
        // Table names come from the constant list above, never from outside.
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await?;
        projection_rows.push((table, rows));
    }
    Ok(Fleet {
        online,
        offline,
        offline_long,
        sync_lag_seconds_max: lag.unwrap_or(0.0),
        projection_rows,
    })
}

/// Refreshes the Postgres-backed gauges every [`FLEET_REFRESH_INTERVAL`] until the pool
/// closes.
pub async fn run_fleet_refresh(pool: PgPool) {
    let mut ticker = tokio::time::interval(FLEET_REFRESH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(error) = global().refresh_fleet(&pool).await {
            tracing::warn!(%error, "refreshing the device metrics failed");
        }
    }
}

/// Whether the last refresh of the Postgres-backed gauges went through (`None` before the
/// first).
pub fn fleet_fresh() -> Option<bool> {
    let fleet = global().fleet.lock().unwrap_or_else(|e| e.into_inner());
    fleet
        .as_ref()
        .map(|_| global().last_refresh_ok.load(Ordering::Relaxed))
}
