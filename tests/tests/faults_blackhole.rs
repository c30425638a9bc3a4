//! An edge's QUIC traffic to the hub goes through the UDP fault proxy (`cartwise-netfault`),
//! which black-holes it for longer than every idle and keep-alive timeout (the hub's 30 s idle
//! timeout, the edge's reconnect backoff) while the edge keeps lending and returning; then the
//! proxy heals. Postgres must converge on the edge's rentals, each once and in its final state,
//! and the closed ones must leave the edge's live document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use automerge::AutoCommit;
use cartwise_edge_node::cu16::Lock;
use cartwise_edge_node::engine::{Engine, ReturnState};
use cartwise_netfault::{Mode, NetFault};
use cartwise_schema::Phone;
use cartwise_sync_core::facts::read_device_doc;
use cartwise_tests::{Station, enroll_device_via, eventually, seed_world, start_hub};
use sqlx::PgPool;

/// How long the link is black-holed: past the hub's idle timeout (30 s) twice over.
const OUTAGE: Duration = Duration::from_secs(70);
/// How long after the heal Postgres may take to converge (the edge's backoff is capped at
/// 60 s plus jitter, but a reconnect attempt in flight at the heal completes by itself).
const CONVERGE_MAX: Duration = Duration::from_secs(100);

/// Lends to `out` (kept out) and `back` (returned at its own post).
async fn lend_and_return(station: &Station, out: &Phone, back: &Phone) {
    let engine = station.engine();
    let kept = engine.lend(out).await.unwrap();
    let lent = engine.lend(back).await.unwrap();
    station.wait_taken(kept.post.post).await;
    station.wait_taken(lent.post.post).await;
    station.clock.advance_ms(10 * 60_000);
    engine.initiate_return(back).await.unwrap();
    let (board, lock) = (lent.post.board.get(), lent.post.lock.get());
    station
        .sim
        .sim()
        .with_bus(|bus, now| bus.dock(now, board, Lock::new(lock).unwrap()))
        .unwrap();
    eventually("the return", || {
        let engine = engine.clone();
        let back = back.clone();
        async move {
            matches!(
                engine.return_state(&back).await,
                Ok(ReturnState::Returned { .. })
            )
        }
    })
    .await;
}

async fn live_rentals(engine: &Engine) -> Vec<String> {
    let doc = AutoCommit::load(&engine.document().await.unwrap()).unwrap();
    read_device_doc(&doc)
        .rentals
        .iter()
        .map(|r| format!("{} {}", r.id, r.status.as_str()))
        .collect()
}

async fn postgres_rentals(pool: &PgPool) -> Vec<(uuid::Uuid, String)> {
    sqlx::query_as("SELECT id, status FROM rentals ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn wall_now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn blackhole_longer_than_every_timeout_then_heal_converges(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let proxy = NetFault::start("127.0.0.1:0".parse().unwrap(), hub.handle.local_addr, 8)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let peer = enroll_device_via(
        &pool,
        &hub,
        proxy.local_addr(),
        "ST-RA",
        "bh-pi",
        dir.path(),
    )
    .await
    .peer();
    let station = Station::start(dir.path(), peer.device, peer.branch, 1, wall_now_ms()).await;
    let phones: Vec<Phone> = ["0526000001", "0526000002", "0526000003", "0526000004"]
        .iter()
        .map(|p| Phone::parse(p).unwrap())
        .collect();

    // Connected through the proxy: the first two rentals reach Postgres.
    lend_and_return(&station, &phones[0], &phones[1]).await;
    eventually("the first rentals in Postgres", || {
        let pool = pool.clone();
        async move { postgres_rentals(&pool).await.len() == 2 }
    })
    .await;
    assert!(proxy.stats().to_upstream.passed > 0);

    // The outage: everything dropped both ways, while the edge lends and returns.
    let outage = Instant::now();
    proxy.block();
    lend_and_return(&station, &phones[2], &phones[3]).await;
    let during = postgres_rentals(&pool).await;
    assert_eq!(during.len(), 2, "nothing crosses a black hole: {during:?}");
    tokio::time::sleep(OUTAGE.saturating_sub(outage.elapsed())).await;
    let blocked = proxy.stats();
    assert!(
        blocked.to_upstream.dropped > 0,
        "the edge kept trying during the outage: {blocked:?}"
    );
    let rentals_during = postgres_rentals(&pool).await;
    assert_eq!(rentals_during.len(), 2, "{rentals_during:?}");

    // Heal: a little loss and reordering on the way back, then Postgres converges.
    proxy
        .set_mode(Mode::Lossy {
            loss: 0.05,
            duplicate: 0.05,
            delay_ms: 5,
            jitter_ms: 10,
        })
        .unwrap();
    let healed = Instant::now();
    let deadline = healed + CONVERGE_MAX;
    loop {
        let rows = postgres_rentals(&pool).await;
        let mut statuses: Vec<&str> = rows.iter().map(|(_, s)| s.as_str()).collect();
        statuses.sort_unstable();
        if statuses == ["active", "active", "returned", "returned"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{CONVERGE_MAX:?} after the heal Postgres holds {rows:?}; proxy {:?}",
            proxy.stats()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "faults_blackhole: outage {:.1?}, converged {:.1?} after the heal; proxy {:?}",
        healed - outage,
        healed.elapsed(),
        proxy.stats()
    );
    // Each rental once, with the edge's ids.
    let rows = postgres_rentals(&pool).await;
    let engine = station.engine();
    let history = engine
        .rentals(cartwise_edge_node::engine::RentalFilter::History {
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    for (id, _) in &rows {
        assert!(
            history.iter().any(|r| r.row.id.as_uuid() == id),
            "{id} is in Postgres but not on the edge"
        );
    }
    // The hub acknowledged the closed rentals: only the two still out stay in the live doc.
    proxy.heal();
    eventually("the live document to shrink", || {
        let engine = engine.clone();
        async move {
            let live = live_rentals(&engine).await;
            live.len() == 2 && live.iter().all(|r| r.ends_with(" active"))
        }
    })
    .await;
    station.stop().await;
}
