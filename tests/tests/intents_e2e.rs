//! Intents end to end over real QUIC: the hub writes "unlock post N" for an enrolled edge, the
//! edge receives the branch's intents document, pulses the lock once (the simulated board's
//! hook opens) and records the outcome in its own document, and the hub's projection moves the
//! Postgres row to `applied`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use cartwise_cloud_hub::docs_store;
use cartwise_cloud_hub::intents::{self, Actor, ActorKind, IntentRequest, IntentStatus};
use cartwise_edge_node::cu16::Lock;
use cartwise_schema::DeviceId;
use cartwise_sync_core::DocId;
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::intents::IntentKind;
use cartwise_tests::{Station, enroll_device, eventually, seed_world, start_hub};
use sqlx::PgPool;

/// Whether the hub holds a document of `device` that reports `post`.
async fn hub_knows_post(pool: &PgPool, device: DeviceId, post: u16) -> bool {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT doc_id FROM sync_documents WHERE device_id = $1")
            .bind(*device.as_uuid())
            .fetch_all(pool)
            .await
            .unwrap();
    for id in ids {
        let doc = docs_store::load(pool, &id.parse::<DocId>().unwrap())
            .await
            .unwrap();
        if read_device_doc(&doc).posts.iter().any(|p| p.post == post) {
            return true;
        }
    }
    false
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn an_unlock_intent_opens_the_lock_once_and_comes_back_applied(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    // A new Pi of branch ST-RA with one board, numbering its posts 49-64 (the seeded Pis of the
    // branch have 1-48).
    let dir = tempfile::tempdir().unwrap();
    let peer = enroll_device(&pool, &hub, "ST-RA", "st-ra-pi-9", dir.path())
        .await
        .peer();
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let station = Station::start_with(dir.path(), peer.device, peer.branch, 1, now_ms, |c| {
        c.bus.first_post_number = 49;
    })
    .await;
    // Post 51 is board 0, lock 3.
    let lock = Lock::new(3).unwrap();
    eventually("the device's posts at the hub", || {
        let pool = pool.clone();
        async move { hub_knows_post(&pool, peer.device, 51).await }
    })
    .await;
    let latched = |station: &Station| {
        station
            .sim
            .sim()
            .with_bus(|bus, now| bus.boards(now)[0].latched.contains(lock))
    };
    assert!(latched(&station), "the lock starts latched");

    let intent = intents::create(
        &pool,
        IntentRequest {
            device: peer.device,
            branch: Some(peer.branch),
            kind: IntentKind::UnlockPost { post: 51 },
            expires_in: None,
        },
        &Actor {
            kind: ActorKind::Admin,
            name: "technician".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(intent.status, IntentStatus::Pending);

    // The edge opens the lock ...
    eventually("the hook to open", || {
        let open = !latched(&station);
        async move { open }
    })
    .await;
    // ... and its outcome reaches Postgres.
    eventually("the intent to be applied", || {
        let pool = pool.clone();
        async move { intents::get(&pool, intent.id).await.unwrap().status == IntentStatus::Applied }
    })
    .await;
    let applied = intents::get(&pool, intent.id).await.unwrap();
    assert!(applied.outcome_at.is_some());
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'intent.applied' AND target = $1
           AND actor_kind = 'device' AND actor_id = $2",
    )
    .bind(intent.id.to_string())
    .bind(peer.device.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);

    // Executed once: the edge recorded one run of the intent, however often it syncs.
    let runs = station.engine().intent_runs().await.unwrap();
    assert_eq!(
        runs.iter()
            .filter(|r| r.intent == intent.id.to_string())
            .count(),
        1,
        "{runs:?}"
    );
    station.stop().await;
}
