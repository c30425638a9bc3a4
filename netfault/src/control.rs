//! The proxy's HTTP control API: `POST /block`, `POST /heal`, `POST /mode` (a JSON [`Mode`]),
//! `GET /state` (JSON [`Stats`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::{Mode, NetFaultHandle, Stats};

/// The control routes for one proxy.
pub fn router(handle: NetFaultHandle) -> Router {
    Router::new()
        .route("/block", post(block))
        .route("/heal", post(heal))
        .route("/mode", post(set_mode))
        .route("/state", get(state))
        .with_state(handle)
}

/// Serves [`router`] on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: NetFaultHandle,
) -> std::io::Result<()> {
    axum::serve(listener, router(handle)).await
}

async fn block(State(handle): State<NetFaultHandle>) -> Json<Stats> {
    handle.block();
    Json(handle.stats())
}

async fn heal(State(handle): State<NetFaultHandle>) -> Json<Stats> {
    handle.heal();
    Json(handle.stats())
}

async fn set_mode(State(handle): State<NetFaultHandle>, Json(mode): Json<Mode>) -> Response {
    match handle.set_mode(mode) {
        Ok(()) => Json(handle.stats()).into_response(),
        Err(error) => (StatusCode::UNPROCESSABLE_ENTITY, error.to_string()).into_response(),
    }
}

async fn state(State(handle): State<NetFaultHandle>) -> Json<Stats> {
    Json(handle.stats())
}
