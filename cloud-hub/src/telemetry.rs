//! Telemetry at the hub: each `Telemetry` batch a device sends is stored with one multi-row
//! `INSERT … SELECT FROM UNNEST` (not one statement per event), deduplicated, acknowledged,
//! and kept [`TELEMETRY_RETENTION_DAYS`] days.
//!
//! Delivery is at least once: an edge keeps a batch until the hub's `TelemetryAck` and sends it
//! again on its next session if the ack never came. An edge never gives two events of one kind
//! the same (boot, monotonic millisecond), so (device, boot, mono_ms, event_type) names an
//! event; a unique index on it (`0007_telemetry_dedup.sql`) turns a redelivery into a no-op.
//! A batch that cannot be stored is not acknowledged: the session is closed so the edge sends
//! it again later, never acknowledged and lost.
//!
//! Retention: [`run_retention`] deletes rows older than the retention every
//! [`RETENTION_SWEEP_INTERVAL`], in bounded statements ([`RETENTION_DELETE_ROWS_MAX`]) so a
//! sweep never holds a long lock; the BRIN index on `timestamp` keeps finding them cheap.

use std::time::Duration;

use cartwise_schema::{DeviceId, WallMillis};
use cartwise_sync_core::Session;
use cartwise_sync_core::message::body::{Telemetry, TelemetryAck};
use cartwise_sync_core::session::capability;
use cartwise_sync_core::{Message, message::body::TelemetryEvent};
use serde_json::json;
use sqlx::PgPool;

/// How long telemetry is kept.
pub const TELEMETRY_RETENTION_DAYS: i32 = 90;
/// How often old telemetry is deleted.
pub const RETENTION_SWEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Most rows one retention statement deletes; a sweep repeats it until fewer go.
pub const RETENTION_DELETE_ROWS_MAX: i64 = 10_000;
/// Most retention statements in one sweep (the rest wait for the next sweep).
pub const RETENTION_ROUNDS_MAX: u32 = 1_000;
/// Longest `event_type` the table holds.
pub const EVENT_TYPE_LEN_MAX: usize = 50;
/// How far ahead of the hub's clock a device's wall time may be before the hub's receive time
/// is stored instead (a Pi has no real-time clock).
pub const DEVICE_CLOCK_AHEAD_MS_MAX: i64 = 24 * 60 * 60 * 1000;

/// Stored batches a slow listener (the MQTT bridge) may fall behind by before it misses some.
pub const STORED_TELEMETRY_MAX: usize = 256;

/// A batch just stored, as announced to listeners ([`subscribe_stored`]).
#[derive(Debug, Clone)]
pub struct StoredTelemetry {
    /// The device that sent it.
    pub device: DeviceId,
    /// The batch's events: `[{"type", "data", "at"}]`.
    pub events: std::sync::Arc<serde_json::Value>,
}

static STORED: std::sync::LazyLock<tokio::sync::broadcast::Sender<StoredTelemetry>> =
    std::sync::LazyLock::new(|| tokio::sync::broadcast::channel(STORED_TELEMETRY_MAX).0);

/// Listens for telemetry batches stored by this process (new rows only).
pub fn subscribe_stored() -> tokio::sync::broadcast::Receiver<StoredTelemetry> {
    STORED.subscribe()
}

/// Why telemetry could not be stored or swept.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Postgres refused or failed.
    #[error("telemetry database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Stores one batch of `device`'s events in one statement; returns how many rows were new
/// (redelivered events are skipped). `now` is the hub's wall clock.
pub async fn store_batch(
    pool: &PgPool,
    device: DeviceId,
    batch: &Telemetry,
    now: WallMillis,
) -> Result<u64, TelemetryError> {
    let mut kinds = Vec::with_capacity(batch.events.len());
    let mut data = Vec::with_capacity(batch.events.len());
    let mut at = Vec::with_capacity(batch.events.len());
    let mut boots = Vec::with_capacity(batch.events.len());
    let mut monos = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        kinds.push(cut(&event.kind, EVENT_TYPE_LEN_MAX));
        data.push(event_data(event));
        at.push(event_time(event.wall_ms, now));
        boots.push(*event.boot.as_uuid());
        monos.push(i64::try_from(event.mono_ms.get()).unwrap_or(i64::MAX));
    }
    // For the MQTT bridge, only when something listens (the copy costs).
    let announced = (STORED.receiver_count() > 0).then(|| {
        let events: Vec<serde_json::Value> = kinds
            .iter()
            .zip(&data)
            .zip(&at)
            .map(|((kind, data), at)| json!({ "type": kind, "data": data, "at": at }))
            .collect();
        serde_json::Value::Array(events)
    });
    let inserted = sqlx::query(
        "INSERT INTO telemetry (device_id, event_type, event_data, \"timestamp\", boot, mono_ms)
         SELECT $1, e.event_type, e.event_data, e.at, e.boot, e.mono_ms
         FROM UNNEST($2::varchar[], $3::jsonb[], $4::timestamptz[], $5::uuid[], $6::int8[])
              AS e (event_type, event_data, at, boot, mono_ms)
         ON CONFLICT (device_id, boot, mono_ms, event_type) DO NOTHING",
    )
    .bind(*device.as_uuid())
    .bind(kinds)
    .bind(data)
    .bind(at)
    .bind(boots)
    .bind(monos)
    .execute(pool)
    .await?
    .rows_affected();
    crate::metrics::global()
        .telemetry_rows
        .fetch_add(inserted, std::sync::atomic::Ordering::Relaxed);
    if let (Some(events), true) = (announced, inserted > 0) {
        let _ = STORED.send(StoredTelemetry {
            device,
            events: std::sync::Arc::new(events),
        });
    }
    Ok(inserted)
}

/// A session's telemetry batch: stores it and acknowledges it (when the peer takes
/// acknowledgements); if it cannot be stored, closes the session so the device sends it again.
pub async fn on_batch(
    pool: &PgPool,
    now: WallMillis,
    session: &mut Session,
    device: DeviceId,
    batch: Telemetry,
) {
    match store_batch(pool, device, &batch, now).await {
        Ok(inserted) => {
            tracing::debug!(%device, events = batch.events.len(), inserted, "telemetry stored");
            let acks = session
                .capabilities()
                .iter()
                .any(|cap| cap == capability::TELEMETRY_ACK);
            if let (true, Some(last)) = (acks, batch.events.last()) {
                let ack = TelemetryAck {
                    events: u32::try_from(batch.events.len()).unwrap_or(u32::MAX),
                    last_boot: last.boot,
                    last_mono_ms: last.mono_ms,
                };
                if let Err(error) = session.send(Message::TelemetryAck(ack)) {
                    tracing::warn!(%device, %error, "acknowledging telemetry failed");
                }
            }
        }
        Err(error) => {
            tracing::warn!(%device, %error, "storing telemetry failed; closing the session so it is sent again");
            session.close("the hub could not store telemetry; send it again later");
        }
    }
}

/// The event's JSON payload; text that is not JSON is kept as `{"raw": text}`.
fn event_data(event: &TelemetryEvent) -> serde_json::Value {
    serde_json::from_str(&event.data_json).unwrap_or_else(|_| json!({ "raw": event.data_json }))
}

/// The device's wall time, unless it is implausible (before the retention window or far ahead
/// of the hub): then the hub's receive time, so a Pi booted without a clock neither loses its
/// events to the retention sweep at once nor keeps them forever.
fn event_time(device_wall: WallMillis, now: WallMillis) -> chrono::DateTime<chrono::Utc> {
    let retention_ms = i64::from(TELEMETRY_RETENTION_DAYS) * 24 * 60 * 60 * 1000;
    let earliest = now.get().saturating_sub(retention_ms);
    let latest = now.get().saturating_add(DEVICE_CLOCK_AHEAD_MS_MAX);
    let wall = device_wall.get();
    let chosen = if (earliest..=latest).contains(&wall) {
        wall
    } else {
        now.get()
    };
    chrono::DateTime::from_timestamp_millis(chosen).unwrap_or_else(chrono::Utc::now)
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Deletes telemetry older than [`TELEMETRY_RETENTION_DAYS`]; returns how many rows went.
pub async fn sweep_retention(pool: &PgPool) -> Result<u64, TelemetryError> {
    let mut deleted = 0;
    for _ in 0..RETENTION_ROUNDS_MAX {
        let round = sqlx::query(
            "DELETE FROM telemetry WHERE id IN (
                 SELECT id FROM telemetry
                 WHERE \"timestamp\" < now() - make_interval(days => $1)
                 LIMIT $2)",
        )
        .bind(TELEMETRY_RETENTION_DAYS)
        .bind(RETENTION_DELETE_ROWS_MAX)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += round;
        if round < u64::try_from(RETENTION_DELETE_ROWS_MAX).unwrap_or(u64::MAX) {
            break;
        }
    }
    Ok(deleted)
}

/// Sweeps old telemetry every [`RETENTION_SWEEP_INTERVAL`] (the first sweep at once), for the
/// life of the process.
pub async fn run_retention(pool: PgPool) {
    let mut ticker = tokio::time::interval(RETENTION_SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match sweep_retention(&pool).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "old telemetry deleted"),
            Err(error) => tracing::warn!(%error, "deleting old telemetry failed"),
        }
    }
}
