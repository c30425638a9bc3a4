//! Two edges of one branch and a hub on loopback with real QUIC and mutual TLS: the hub is
//! stopped, both edges lend and return (their clocks wrong: they have not met a trusted clock
//! since boot), then the hub starts again on the same address. Postgres then holds every
//! rental once, with the right states and times corrected by the hub's clock, and the closed
//! rentals leave the edges' live documents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::AutoCommit;
use cartwise_edge_node::cu16::Lock;
use cartwise_edge_node::engine::{Engine, ReturnState};
use cartwise_schema::Phone;
use cartwise_sync_core::facts::read_device_doc;
use cartwise_tests::{Station, enroll_device, eventually, seed_world, start_hub, start_hub_at};
use sqlx::PgPool;

/// 2026-11-21 08:00 UTC: what the Pis' clocks say; the hub's clock is the real time.
const PI_WALL: i64 = 1_795_248_000_000;

/// Lends to `out` (kept out) and `back` (returned `minutes` later at its own post).
async fn lend_and_return(station: &Station, out: &Phone, back: &Phone, minutes: u64) {
    let engine = station.engine();
    let kept = engine.lend(out).await.unwrap();
    let lent = engine.lend(back).await.unwrap();
    station.wait_taken(kept.post.post).await;
    station.wait_taken(lent.post.post).await;
    station.clock.advance_ms(minutes * 60_000);
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

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn edges_lend_while_the_hub_is_down_and_everything_arrives_once(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = enroll_device(&pool, &hub, "ST-RA", "st-ra-pi-a", dir_a.path())
        .await
        .peer();
    let b = enroll_device(&pool, &hub, "ST-RA", "st-ra-pi-b", dir_b.path())
        .await
        .peer();
    let addr = hub.stop().await;

    let station_a = Station::start(dir_a.path(), a.device, a.branch, 1, PI_WALL).await;
    let station_b = Station::start(dir_b.path(), b.device, b.branch, 1, PI_WALL).await;
    let phones: Vec<Phone> = ["0521111111", "0522222222", "0523333333", "0524444444"]
        .iter()
        .map(|p| Phone::parse(p).unwrap())
        .collect();
    lend_and_return(&station_a, &phones[0], &phones[1], 10).await;
    lend_and_return(&station_b, &phones[2], &phones[3], 30).await;
    let before_a = live_rentals(&station_a.engine()).await;
    let before_b = live_rentals(&station_b.engine()).await;
    assert_eq!((before_a.len(), before_b.len()), (2, 2));

    let _hub = start_hub_at(&pool, addr).await;
    eventually("every rental in Postgres with its final state", || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, bool)> =
                sqlx::query_as("SELECT status, time_trusted FROM rentals ORDER BY status")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            rows == vec![
                ("active".to_owned(), true),
                ("active".to_owned(), true),
                ("returned".to_owned(), true),
                ("returned".to_owned(), true),
            ]
        }
    })
    .await;
    // Once each, with the edges' ids, and times on the hub's clock (the Pis said 08:00 on
    // 2026-11-21; the hub's clock corrected them to about now).
    let rows: Vec<(uuid::Uuid, uuid::Uuid, String, Option<i32>, f64)> = sqlx::query_as(
        "SELECT id, device_id, status, duration_minutes,
                    (extract(epoch FROM now() - start_time) / 60)::float8
             FROM rentals ORDER BY start_time",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 4);
    for (id, device, status, minutes, age_minutes) in &rows {
        let station = if *device == *a.device.as_uuid() {
            &station_a
        } else {
            assert_eq!(*device, *b.device.as_uuid());
            &station_b
        };
        let history = station
            .engine()
            .rentals(cartwise_edge_node::engine::RentalFilter::History {
                limit: 10,
                offset: 0,
            })
            .await
            .unwrap();
        assert!(
            history.iter().any(|r| r.row.id.as_uuid() == id),
            "{id} not on its edge"
        );
        assert!(
            (-1.0..36.0).contains(age_minutes),
            "start time {age_minutes} minutes ago: not corrected to the hub's clock"
        );
        if status == "returned" {
            let expected = if *device == *a.device.as_uuid() {
                10
            } else {
                30
            };
            assert_eq!(*minutes, Some(expected));
        }
    }

    // The hub acknowledged the closed rentals: they left both live documents.
    for (station, before) in [(&station_a, before_a), (&station_b, before_b)] {
        let engine = station.engine();
        eventually("the live document to shrink", || {
            let engine = engine.clone();
            let before = before.clone();
            async move {
                let now = live_rentals(&engine).await;
                now.len() == 1 && now[0].ends_with(" active") && before.contains(&now[0])
            }
        })
        .await;
    }
    station_a.stop().await;
    station_b.stop().await;
}
