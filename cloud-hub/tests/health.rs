//! The hub's `/health` answers through the real router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cartwise_cloud_hub::http::{AppState, router};
use sqlx::PgPool;
use tower::ServiceExt;

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn health_reports_a_reachable_database(pool: PgPool) {
    let response = router(AppState { pool })
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["database"], "ok");
}

#[tokio::test]
async fn health_reports_an_unreachable_database_as_unhealthy() {
    // A lazily connecting pool aimed at a closed port: the probe fails fast and must yield 503.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let response = router(AppState { pool })
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}
