//! The hub's HTTP surface: health, Prometheus metrics, the REST API (`/api`, see
//! `crate::api`); the dashboard mounts here. Every route goes through one layer that counts
//! requests and latencies by route template and status (`crate::metrics`).
//!
//! `/health` is for load balancers and people: 503 only when the hub cannot serve
//! (`unhealthy`: Postgres unreachable); `degraded` (still 200) when it serves but sheds or
//! lags (admission at its limit, merge backlog past the deferral threshold, device gauges
//! not refreshing).

use std::future::Future;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;

/// How long a health probe waits for the database before calling it unreachable.
const HEALTH_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

/// Builds the hub's router.
pub fn router(state: AppState) -> Router {
    let api = crate::api::router(state.pool.clone(), crate::api::ApiConfig::from_env());
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
        .nest("/api", api)
        .merge(crate::dashboard::router())
        .layer(axum::middleware::from_fn(track))
}

/// Counts every request by its route template (never the raw path: ids would explode the
/// series) and status.
async fn track(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    crate::metrics::global().observe_http(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn metrics() -> Response {
    let mut response = crate::metrics::global().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The hub's HTTP connection limits: room for every dashboard's live stream (at most 256) and
/// many API clients; a client gets 10 s to send a request's headers.
pub const HTTP_LIMITS: cartwise_http_serve::Limits = cartwise_http_serve::Limits {
    connections_max: 1024,
    header_read_timeout: Duration::from_secs(10),
    drain_timeout: Duration::from_secs(10),
};

/// Serves `router` on `listener` within [`HTTP_LIMITS`] until `shutdown` completes, then
/// drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    cartwise_http_serve::serve(listener, router(state), HTTP_LIMITS, shutdown).await
}

async fn health(State(state): State<AppState>) -> Response {
    let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    let database_ok = matches!(
        tokio::time::timeout(HEALTH_DB_TIMEOUT, probe).await,
        Ok(Ok(1))
    );
    let metrics = crate::metrics::global();
    let sync = metrics.sync_load();
    let fleet_fresh = crate::metrics::fleet_fresh();
    let mut reasons = Vec::new();
    if !database_ok {
        reasons.push("database unreachable");
    }
    if let Some(load) = sync {
        if load.sessions >= load.sessions_max {
            reasons.push("sync sessions at their limit");
        }
        if load.merge_backlog >= load.merge_backlog_max {
            reasons.push("merge backlog past its limit");
        }
    }
    if fleet_fresh == Some(false) {
        reasons.push("device metrics not refreshing");
    }
    let (code, status) = if !database_ok {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    } else if reasons.is_empty() {
        (StatusCode::OK, "healthy")
    } else {
        (StatusCode::OK, "degraded")
    };
    let body = json!({
        "status": status,
        "reasons": reasons,
        "database": if database_ok { "ok" } else { "unreachable" },
        "sync": sync.map(|load| json!({
            "connected_devices": load.sessions,
            "admitting": load.admitting,
            "sessions_max": load.sessions_max,
        })),
        "queues": sync.map(|load| json!({
            "merge_backlog": load.merge_backlog,
            "merge_backlog_max": load.merge_backlog_max,
        })),
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": chrono::Utc::now().to_rfc3339(),
    });
    (code, Json(body)).into_response()
}
