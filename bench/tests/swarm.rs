//! The swarm at a tiny size against a real hub (the debug `cartwise-hub`, built if missing)
//! on a fresh database: every session syncs, every device syncs again after the reconnect
//! storm, and the same-workload devices bring every rental to Postgres, all without an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cartwise_bench::swarm::{self, SessionsConfig};
use sqlx::PgPool;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The debug hub, built once if a narrow test run has not built it.
fn binaries() -> PathBuf {
    let dir = workspace().join("target/debug");
    if !dir.join("cartwise-hub").exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .args(["build", "--bins", "-p", "cartwise-cloud-hub"])
            .status()
            .unwrap();
        assert!(status.success(), "building cartwise-hub failed");
    }
    dir
}

/// The URL of the test's own database.
async fn url_of(pool: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for Postgres tests");
    let base = url.split('?').next().unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

#[sqlx::test(migrations = false)]
async fn twenty_sessions_sync_and_all_resync_after_the_storm(pool: PgPool) {
    let url = url_of(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let report = swarm::sessions(
        &binaries(),
        &url,
        dir.path(),
        SessionsConfig {
            sessions: 20,
            heartbeat: Duration::from_secs(1),
            window: Duration::from_secs(1),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.sessions, 20);
    assert_eq!(report.setup_errors, 0, "{:?}", report.error_samples);
    assert_eq!(report.storm_errors, 0, "{:?}", report.error_samples);
    assert!(report.hub_rss_mb > 0.0, "the hub's memory was read");
    // Every device holds its branch's documents as the hub has them.
    let docs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_documents WHERE doc_id LIKE 'device/%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(docs, 20, "every device's document reached the hub");
}

#[sqlx::test(migrations = false)]
async fn same_workload_brings_every_rental_to_postgres_returned(pool: PgPool) {
    let url = url_of(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let report = swarm::same_workload(&binaries(), &url, dir.path(), 3, 4)
        .await
        .unwrap();
    assert_eq!(report.events, 24);
    assert_eq!(report.errors, 0);
    let returned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rentals WHERE status = 'returned'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(returned, 12);
}
