//! A real edge's live document, projected into Postgres by the hub: rentals appear once with
//! their states and corrected times, posts update, and projecting the same document again
//! changes nothing (idempotent), while a document that names another branch is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::AutoCommit;
use cartwise_cloud_hub::project::{ProjectError, project_device};
use cartwise_edge_node::cu16::Lock;
use cartwise_edge_node::engine::ReturnState;
use cartwise_schema::{BranchId, DeviceId, Phone};
use cartwise_sync_core::facts::read_device_doc;
use cartwise_tests::{Station, eventually, seed_world};
use sqlx::PgPool;

const DEVICE: &str = "0b1e3c2a-0000-4000-8000-000000001001"; // st-ra-pi-1, boards 0 and 1
const BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000101"; // ST-RA
const T0: i64 = 1_795_248_000_000;

async fn rows(pool: &PgPool) -> Vec<(uuid::Uuid, String, Option<i32>, String)> {
    sqlx::query_as(
        "SELECT id, status, duration_minutes, to_char(start_time AT TIME ZONE 'UTC', 'HH24:MI') FROM rentals ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn an_edge_document_projects_once_and_idempotently(pool: PgPool) {
    seed_world(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::parse(DEVICE).unwrap();
    let branch = BranchId::parse(BRANCH).unwrap();
    let station = Station::start(dir.path(), device, branch, 2, T0).await;
    let engine = station.engine();
    let (sim, clock) = (&station.sim, &station.clock);

    // Two rentals; one comes back 25 minutes later.
    let a = Phone::parse("0521234567").unwrap();
    let b = Phone::parse("0547654321").unwrap();
    let lent_a = engine.lend(&a).await.unwrap();
    let lent_b = engine.lend(&b).await.unwrap();
    station.wait_taken(lent_a.post.post).await;
    station.wait_taken(lent_b.post.post).await;
    clock.advance_ms(25 * 60_000);
    let slot = engine.initiate_return(&a).await.unwrap();
    let (board, lock) = (lent_a.post.board.get(), lent_a.post.lock.get());
    assert_eq!(
        slot.post, lent_a.post.post,
        "the free own post is named first"
    );
    sim.sim()
        .with_bus(|bus, now| bus.dock(now, board, Lock::new(lock).unwrap()))
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

    let bytes = engine.document().await.unwrap();
    let doc = AutoCommit::load(&bytes).unwrap();
    let facts = read_device_doc(&doc);
    let first = project_device(&pool, device, branch, &facts).await.unwrap();
    assert_eq!(first.rentals_changed, 2);
    assert_eq!(first.closed_held, vec![lent_a.rental.id]);
    assert!(first.refused.is_empty(), "{:?}", first.refused);
    let after_first = rows(&pool).await;
    let statuses: Vec<&str> = after_first.iter().map(|r| r.1.as_str()).collect();
    assert!(
        statuses.contains(&"returned") && statuses.contains(&"active"),
        "{after_first:?}"
    );
    let returned_row = after_first
        .iter()
        .find(|r| r.0 == *lent_a.rental.id.as_uuid())
        .unwrap();
    assert_eq!(returned_row.2, Some(25));
    assert_eq!(returned_row.3, "08:00");
    let in_use: String = sqlx::query_scalar(
        "SELECT c.status FROM carts c JOIN branches b ON b.id = c.branch_id
         WHERE b.branch_code = 'ST-RA' AND c.cart_number = $1",
    )
    .bind(i32::from(lent_b.post.post.get()))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_use, "in_use");

    // The same document again: nothing changes.
    let again = project_device(&pool, device, branch, &facts).await.unwrap();
    assert_eq!((again.rentals_changed, again.carts_changed), (0, 0));
    assert_eq!(rows(&pool).await, after_first);

    // A document presented as another branch's is refused whole.
    let other = BranchId::parse("0b1e3c2a-0000-4000-8000-000000000201").unwrap();
    let refused = project_device(&pool, device, other, &facts).await;
    assert!(matches!(refused, Err(ProjectError::Authority { .. })));

    station.stop().await;
}
