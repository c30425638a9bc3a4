//! The simulator's control HTTP API: read the posts, move carts, inject faults.
//!
//! `GET /state`, `POST /take {"board":0,"lock":1}`, `POST /dock {…}`,
//! `POST /fault {"kind":"drop_reply"|"corrupt_sum"|"jam"|"echo"|"slow"|"clear",
//! "board":0,"lock":1,"ms":1500}`. Errors are `{"detail": "..."}` with 400 or 409.
//! These are the simulator's only wire types, so they are the only ones deriving serde.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::boards::{Fault, SimBoard, SimError};
use super::server::SimShared;
use crate::cu16::{BoardAddress, Lock, RangeError};

/// Slow-fault delay when the request names none.
const SLOW_DEFAULT_MS: u64 = 2000;

/// The router, over the shared simulated bus.
pub fn router(sim: Arc<SimShared>) -> Router {
    Router::new()
        .route("/state", get(state))
        .route("/take", post(take))
        .route("/dock", post(dock))
        .route("/fault", post(fault))
        .with_state(sim)
}

/// `GET /state` body.
#[derive(Debug, Serialize)]
pub struct StateBody {
    /// Every board, in address order.
    pub boards: Vec<BoardBody>,
}

/// One board in `GET /state`.
#[derive(Debug, Serialize)]
pub struct BoardBody {
    /// DIP address.
    pub address: u8,
    /// Lock 1 first; `true` = latched.
    pub hooks: Vec<bool>,
    /// Lock 1 first; `true` = a cart is present.
    pub present: Vec<bool>,
    /// Unlock pulse in milliseconds.
    pub pulse_ms: u64,
    /// Delayed unlock in seconds.
    pub delay_s: u8,
    /// Line speed in bits per second.
    pub baud: u32,
}

impl From<&SimBoard> for BoardBody {
    fn from(board: &SimBoard) -> Self {
        Self {
            address: board.address.get(),
            hooks: Lock::all()
                .map(|lock| board.latched.contains(lock))
                .collect(),
            present: Lock::all()
                .map(|lock| board.present.contains(lock))
                .collect(),
            pulse_ms: u64::try_from(board.pulse.duration().as_millis()).unwrap_or(u64::MAX),
            delay_s: board.delay.secs(),
            baud: board.baud.bits_per_second(),
        }
    }
}

/// `POST /take` and `POST /dock` body.
#[derive(Debug, Deserialize)]
pub struct PostBody {
    /// Board address.
    pub board: u8,
    /// Lock, 1–16.
    pub lock: u8,
}

/// Fault kinds, as named on the wire.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    DropReply,
    CorruptSum,
    Jam,
    Echo,
    Slow,
    Clear,
}

/// `POST /fault` body.
#[derive(Debug, Deserialize)]
pub struct FaultBody {
    /// What to break.
    pub kind: FaultKind,
    /// Which board; absent = every board (required for `jam`).
    pub board: Option<u8>,
    /// Which lock (only `jam`).
    pub lock: Option<u8>,
    /// Delay for `slow`, in milliseconds.
    pub ms: Option<u64>,
}

/// A refused control request.
#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("{0}")]
    Missing(&'static str),
    #[error("{0}")]
    Body(String),
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match &self {
            ControlError::Sim(SimError::Latched { .. } | SimError::NoCart { .. })
            | ControlError::Sim(SimError::Occupied { .. }) => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        (
            status,
            Json(serde_json::json!({ "detail": self.to_string() })),
        )
            .into_response()
    }
}

/// JSON bodies whose rejections are answered as `{"detail": …}` too.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(reject(rejection)),
        }
    }
}

fn reject(rejection: JsonRejection) -> Response {
    ControlError::Body(rejection.body_text()).into_response()
}

fn snapshot(sim: &SimShared) -> StateBody {
    sim.with_bus(|bus, now| StateBody {
        boards: bus.boards(now).iter().map(BoardBody::from).collect(),
    })
}

async fn state(State(sim): State<Arc<SimShared>>) -> Json<StateBody> {
    Json(snapshot(&sim))
}

async fn take(
    State(sim): State<Arc<SimShared>>,
    JsonBody(body): JsonBody<PostBody>,
) -> Result<Json<StateBody>, ControlError> {
    let lock = Lock::new(body.lock)?;
    sim.with_bus(|bus, now| bus.take(now, body.board, lock))?;
    Ok(Json(snapshot(&sim)))
}

async fn dock(
    State(sim): State<Arc<SimShared>>,
    JsonBody(body): JsonBody<PostBody>,
) -> Result<Json<StateBody>, ControlError> {
    let lock = Lock::new(body.lock)?;
    sim.with_bus(|bus, now| bus.dock(now, body.board, lock))?;
    Ok(Json(snapshot(&sim)))
}

async fn fault(
    State(sim): State<Arc<SimShared>>,
    JsonBody(body): JsonBody<FaultBody>,
) -> Result<Json<StateBody>, ControlError> {
    match fault_of(&body)? {
        Some(fault) => sim.with_bus(|bus, _| bus.inject(fault))?,
        None => sim.with_bus(|bus, _| bus.clear_faults()),
    }
    Ok(Json(snapshot(&sim)))
}

/// The fault a body asks for; `None` for `clear`.
fn fault_of(body: &FaultBody) -> Result<Option<Fault>, ControlError> {
    let board = body.board.map(BoardAddress::new).transpose()?;
    let fault = match body.kind {
        FaultKind::Clear => return Ok(None),
        FaultKind::DropReply => Fault::DropReply { board },
        FaultKind::CorruptSum => Fault::CorruptSum { board },
        FaultKind::Echo => Fault::Echo,
        FaultKind::Slow => {
            let delay = Duration::from_millis(body.ms.unwrap_or(SLOW_DEFAULT_MS));
            Fault::Slow { board, delay }
        }
        FaultKind::Jam => {
            let board = board.ok_or(ControlError::Missing("a jam needs \"board\""))?;
            let lock = body
                .lock
                .ok_or(ControlError::Missing("a jam needs \"lock\" (1-16)"))?;
            Fault::Jam {
                board,
                lock: Lock::new(lock)?,
            }
        }
    };
    Ok(Some(fault))
}
