//! Telemetry at the hub: a batch is one statement, a redelivered event inserts nothing, and
//! the retention sweep deletes what is older than 90 days and nothing newer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cartwise_cloud_hub::telemetry::{self, TELEMETRY_RETENTION_DAYS};
use cartwise_cloud_hub::{seed, world::World};
use cartwise_schema::{BootId, DeviceId, MonoMillis, WallMillis};
use cartwise_sync_core::message::body::{Telemetry, TelemetryEvent};
use sqlx::PgPool;

const BOOT: &str = "0193a1c2-0000-7000-8000-00000000b007";

async fn seeded_device(pool: &PgPool) -> DeviceId {
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(pool, &World::parse(&text).unwrap())
        .await
        .unwrap();
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM devices ORDER BY id LIMIT 1")
        .fetch_one(pool)
        .await
        .unwrap();
    DeviceId::from_uuid(id)
}

fn now() -> WallMillis {
    WallMillis::new(chrono::Utc::now().timestamp_millis())
}

fn event(kind: &str, mono_ms: u64, wall: WallMillis) -> TelemetryEvent {
    TelemetryEvent {
        kind: kind.into(),
        data_json: format!(r#"{{"mono":{mono_ms}}}"#),
        wall_ms: wall,
        boot: BootId::parse(BOOT).unwrap(),
        mono_ms: MonoMillis::new(mono_ms),
    }
}

async fn rows(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT event_type, mono_ms FROM telemetry ORDER BY mono_ms, event_type")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_batch_is_stored_whole_and_a_redelivery_inserts_nothing(pool: PgPool) {
    let device = seeded_device(&pool).await;
    let wall = now();
    let batch = Telemetry {
        events: (0..200)
            .map(|i| event(if i % 2 == 0 { "status" } else { "bus.reopened" }, i, wall))
            .collect(),
    };
    let inserted = telemetry::store_batch(&pool, device, &batch, wall)
        .await
        .unwrap();
    assert_eq!(inserted, 200);

    // The edge never heard the ack and sends the batch again, plus one new event: only that
    // one is new.
    let mut again = batch.clone();
    again
        .events
        .push(event("anomaly.unlock_not_opened", 500, wall));
    let inserted = telemetry::store_batch(&pool, device, &again, wall)
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    let stored = rows(&pool).await;
    assert_eq!(stored.len(), 201);
    assert_eq!(
        stored.last().unwrap(),
        &("anomaly.unlock_not_opened".to_string(), 500)
    );

    // Same clocks, another kind: a different event.
    let other = Telemetry {
        events: vec![event("bus.lost", 0, wall)],
    };
    assert_eq!(
        telemetry::store_batch(&pool, device, &other, wall)
            .await
            .unwrap(),
        1
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn payloads_and_implausible_device_clocks_are_kept_usable(pool: PgPool) {
    let device = seeded_device(&pool).await;
    let hub_now = now();
    let mut not_json = event("note", 1, WallMillis::new(0)); // a Pi that booted at 1970
    not_json.data_json = "not json".into();
    let batch = Telemetry {
        events: vec![not_json, event("status", 2, hub_now)],
    };
    telemetry::store_batch(&pool, device, &batch, hub_now)
        .await
        .unwrap();
    let stored: Vec<(serde_json::Value, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT event_data, \"timestamp\" FROM telemetry ORDER BY mono_ms")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored[0].0, serde_json::json!({ "raw": "not json" }));
    // The 1970 clock was replaced by the hub's receive time, so retention does not delete
    // the event at once.
    assert_eq!(stored[0].1.timestamp_millis(), hub_now.get());
    assert_eq!(stored[1].0, serde_json::json!({ "mono": 2 }));
    assert_eq!(stored[1].1.timestamp_millis(), hub_now.get());
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_retention_sweep_deletes_only_rows_older_than_90_days(pool: PgPool) {
    let device = seeded_device(&pool).await;
    for (days, kind) in [(91, "old"), (120, "older"), (89, "recent"), (0, "today")] {
        sqlx::query(
            "INSERT INTO telemetry (device_id, event_type, \"timestamp\")
             VALUES ($1, $2, now() - make_interval(days => $3))",
        )
        .bind(*device.as_uuid())
        .bind(kind)
        .bind(days)
        .execute(&pool)
        .await
        .unwrap();
    }
    assert_eq!(TELEMETRY_RETENTION_DAYS, 90);
    assert_eq!(telemetry::sweep_retention(&pool).await.unwrap(), 2);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM telemetry ORDER BY \"timestamp\"")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, ["recent", "today"]);
    assert_eq!(telemetry::sweep_retention(&pool).await.unwrap(), 0);
}
