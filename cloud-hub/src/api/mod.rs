//! The hub's REST API under `/api`: chains, branches, devices, carts, rentals, telemetry,
//! users' sessions and the audit log, with its OpenAPI document at `/api/openapi.json`.
//!
//! - Every route is declared once in [`routes`] with its documentation ([`openapi::Op`]), so
//!   the router and the document cannot drift.
//! - Who may see and do what is decided in one place, [`auth::Caller`]: lists filter by the
//!   caller's scope in SQL; single resources outside it are 404, never 403.
//! - Every answer that is not a success has one shape (see [`error`]), including axum's own
//!   rejections; bad input is always 4xx.
//! - Every write is audited in the same transaction as the write.

pub mod audit;
pub mod auth;
pub mod branches;
pub mod carts;
pub mod chains;
pub mod devices;
pub mod error;
pub mod events;
pub mod extract;
pub mod intents;
pub mod limit;
pub mod live;
pub mod openapi;
pub mod page;
pub mod session;
pub mod settings;
pub mod technicians;
pub mod telemetry;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router, middleware};
use serde_json::{Value, json};
use sqlx::PgPool;

use self::error::ApiError;
use self::limit::{Limiter, RateLimit};
use self::openapi::{ApiBuilder, Auth, Op};
use self::technicians::TechnicianRoutes;

/// The largest request body any `/api` route accepts.
pub const BODY_MAX: usize = 64 * 1024;

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The hub's QUIC address as devices reach it (put in enrollment URLs).
    pub hub_quic_addr: String,
    /// Mark the session cookie `Secure` (set when the hub is served over HTTPS).
    pub secure_cookie: bool,
    /// Login attempts per login name.
    pub login_limit: RateLimit,
    /// Login attempts per client address.
    pub login_ip_limit: RateLimit,
    /// Writes per user.
    pub write_limit: RateLimit,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            hub_quic_addr: "localhost:4433".to_owned(),
            secure_cookie: false,
            login_limit: RateLimit {
                max: 10,
                window: Duration::from_secs(300),
            },
            login_ip_limit: RateLimit {
                max: 100,
                window: Duration::from_secs(300),
            },
            write_limit: RateLimit {
                max: 120,
                window: Duration::from_secs(60),
            },
        }
    }
}

impl ApiConfig {
    /// The defaults with the documented environment overrides: `CARTWISE_HUB_QUIC_ADDR` (the
    /// address in enrollment URLs) and `CARTWISE_SECURE_COOKIE=1` (behind HTTPS).
    pub fn from_env() -> Self {
        let mut config = Self::default();
        if let Ok(addr) = std::env::var("CARTWISE_HUB_QUIC_ADDR")
            && !addr.trim().is_empty()
        {
            config.hub_quic_addr = addr.trim().to_owned();
        }
        config.secure_cookie = std::env::var("CARTWISE_SECURE_COOKIE").is_ok_and(|v| v == "1");
        config
    }
}

/// The rate limiters of one process.
#[derive(Debug)]
pub struct Limits {
    /// Per login name.
    pub login: Limiter,
    /// Per client address.
    pub login_ip: Limiter,
    /// Per user, for writes.
    pub writes: Limiter,
}

/// What every API handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The database.
    pub pool: PgPool,
    /// Settings.
    pub config: Arc<ApiConfig>,
    /// Rate limiters.
    pub limits: Arc<Limits>,
    /// The OpenAPI document.
    pub document: Arc<Value>,
    /// The change feed behind `GET /api/events`.
    pub events: Arc<events::Feed>,
}

const ID: &[openapi::QueryParam] = &[];

fn op(method: Method, path: &'static str, tag: &'static str, summary: &'static str) -> Op {
    Op {
        method,
        path,
        tag,
        summary,
        auth: Auth::User,
        query: ID,
        body: None,
        data: json!({ "type": "object" }),
        paged: false,
        status: 200,
    }
}

/// Every route with its documentation.
pub fn routes() -> ApiBuilder {
    use Method as M;
    let time_filters: &'static [openapi::QueryParam] = &[
        ("since", "date-time", "from this time (inclusive)"),
        ("until", "date-time", "until this time (exclusive)"),
    ];
    ApiBuilder::new()
        .add(
            Op {
                auth: Auth::None,
                ..op(M::GET, "/openapi.json", "meta", "This OpenAPI document")
            },
            get(openapi_json),
        )
        .add(
            Op {
                auth: Auth::None,
                body: Some(session::login_schema()),
                data: session::me_schema(),
                ..op(
                    M::POST,
                    "/auth/login",
                    "auth",
                    "Sign in: sets the session cookie; issue_token also returns a bearer token",
                )
            },
            post(session::login),
        )
        .add(
            op(
                M::POST,
                "/auth/logout",
                "auth",
                "End the session or token used",
            ),
            post(session::logout),
        )
        .add(
            Op {
                data: session::me_schema(),
                ..op(
                    M::GET,
                    "/auth/me",
                    "auth",
                    "The signed-in user, role, scope and permissions",
                )
            },
            get(session::whoami),
        )
        .add(
            Op {
                paged: true,
                data: chains::schema(),
                query: &[
                    ("active", "boolean", "only active or inactive chains"),
                    ("q", "string", "text in the name or slug"),
                ],
                ..op(M::GET, "/chains", "chains", "Chains in scope")
            },
            get(chains::list),
        )
        .add(
            Op {
                status: 201,
                body: Some(chains::body_schema(true)),
                data: chains::schema(),
                ..op(
                    M::POST,
                    "/chains",
                    "chains",
                    "Create a chain (platform admins)",
                )
            },
            post(chains::create),
        )
        .add(
            Op {
                data: chains::schema(),
                ..op(M::GET, "/chains/{id}", "chains", "One chain")
            },
            get(chains::get),
        )
        .add(
            Op {
                body: Some(chains::body_schema(false)),
                data: chains::schema(),
                ..op(
                    M::PUT,
                    "/chains/{id}",
                    "chains",
                    "Change a chain (platform admins, its chain admins)",
                )
            },
            put(chains::update),
        )
        .add(
            op(
                M::DELETE,
                "/chains/{id}",
                "chains",
                "Delete a chain without rentals (platform admins)",
            ),
            delete(chains::delete),
        )
        .add(
            Op {
                paged: true,
                data: branches::schema(),
                query: &[
                    ("chain_id", "uuid", "only this chain's branches"),
                    ("city", "string", "only this city"),
                    ("active", "boolean", "only active or inactive branches"),
                    ("q", "string", "text in the name or code"),
                ],
                ..op(M::GET, "/branches", "branches", "Branches in scope")
            },
            get(branches::list),
        )
        .add(
            Op {
                status: 201,
                body: Some(branches::body_schema()),
                data: branches::schema(),
                ..op(
                    M::POST,
                    "/branches",
                    "branches",
                    "Create a branch (platform and chain admins)",
                )
            },
            post(branches::create),
        )
        .add(
            Op {
                data: branches::schema(),
                ..op(M::GET, "/branches/{id}", "branches", "One branch")
            },
            get(branches::get),
        )
        .add(
            Op {
                data: branches::stats_schema(),
                ..op(
                    M::GET,
                    "/branches/{id}/stats",
                    "branches",
                    "Carts, devices, rentals and anomalies of a branch now",
                )
            },
            get(branches::stats),
        )
        .add(
            Op {
                status: 201,
                body: Some(devices::register_schema()),
                data: devices::registered_schema(),
                ..op(
                    M::POST,
                    "/devices/register",
                    "devices",
                    "Create a device and its one-time enrollment code",
                )
            },
            post(devices::register),
        )
        .add(
            Op {
                auth: Auth::Device,
                body: Some(devices::heartbeat_schema()),
                ..op(
                    M::POST,
                    "/devices/{id}/heartbeat",
                    "devices",
                    "Heartbeat over HTTP, signed by the device's certificate key",
                )
            },
            post(devices::heartbeat),
        )
        .add(
            Op {
                data: devices::schema(),
                ..op(M::GET, "/devices/{id}", "devices", "One device")
            },
            get(devices::get),
        )
        .add(
            Op {
                data: devices::status_schema(),
                ..op(
                    M::GET,
                    "/devices/{id}/status",
                    "devices",
                    "Online state, certificate, sync and intents of a device",
                )
            },
            get(devices::status),
        )
        .add(
            Op {
                paged: true,
                data: carts::cart_schema(),
                query: &[("status", "string", "only carts in this status")],
                ..op(
                    M::GET,
                    "/branches/{branch_id}/carts",
                    "carts",
                    "Carts of a branch",
                )
            },
            get(carts::list),
        )
        .add(
            Op {
                data: carts::cart_schema(),
                ..op(
                    M::GET,
                    "/branches/{branch_id}/carts/{id}",
                    "carts",
                    "One cart",
                )
            },
            get(carts::get),
        )
        .add(
            Op {
                paged: true,
                data: carts::rental_schema(),
                query: &[(
                    "overdue",
                    "boolean",
                    "only overdue (true) or on-time (false) rentals",
                )],
                ..op(
                    M::GET,
                    "/branches/{branch_id}/rentals/active",
                    "rentals",
                    "Active rentals, soonest due first",
                )
            },
            get(carts::active),
        )
        .add(
            Op {
                paged: true,
                data: carts::rental_schema(),
                query: &[
                    ("since", "date-time", "started at or after"),
                    ("until", "date-time", "started before"),
                    ("status", "string", "only this status"),
                    (
                        "phone",
                        "string",
                        "only this shopper (roles with PII access)",
                    ),
                    ("cart_number", "integer", "only this cart"),
                ],
                ..op(
                    M::GET,
                    "/branches/{branch_id}/rentals/history",
                    "rentals",
                    "Rental history, newest first",
                )
            },
            get(carts::history),
        )
        .add(
            Op {
                data: carts::stats_schema(),
                query: time_filters,
                ..op(
                    M::GET,
                    "/branches/{branch_id}/rentals/stats",
                    "rentals",
                    "Rental counts per status and per day",
                )
            },
            get(carts::stats),
        )
        .add(
            Op {
                paged: true,
                data: telemetry::schema(),
                query: &[
                    ("event_type", "string", "only this event type"),
                    ("since", "date-time", "at or after"),
                    ("until", "date-time", "before"),
                ],
                ..op(
                    M::GET,
                    "/telemetry/devices/{id}",
                    "telemetry",
                    "A device's telemetry, newest first",
                )
            },
            get(telemetry::device),
        )
        .add(
            Op {
                paged: true,
                data: telemetry::schema(),
                query: &[
                    ("event_type", "string", "only this event type"),
                    ("since", "date-time", "at or after"),
                    ("until", "date-time", "before"),
                ],
                ..op(
                    M::GET,
                    "/telemetry/branches/{id}",
                    "telemetry",
                    "A branch's telemetry, newest first",
                )
            },
            get(telemetry::branch),
        )
        .add(
            Op {
                paged: true,
                data: telemetry::schema(),
                query: &[
                    ("event_type", "string", "only this event type"),
                    ("since", "date-time", "at or after"),
                    ("until", "date-time", "before"),
                ],
                ..op(
                    M::GET,
                    "/telemetry/chains/{id}",
                    "telemetry",
                    "A chain's telemetry (branches in scope), newest first",
                )
            },
            get(telemetry::chain),
        )
        .add(
            Op {
                status: 202,
                body: Some(intents::assign_schema()),
                data: intents::schema(),
                ..op(
                    M::POST,
                    "/branches/{branch_id}/carts/assign",
                    "carts",
                    "Lend a cart to a shopper at the counter (an intent to the owning device)",
                )
            },
            post(intents::assign),
        )
        .add(
            Op {
                status: 202,
                body: Some(intents::return_schema()),
                data: intents::schema(),
                ..op(
                    M::POST,
                    "/branches/{branch_id}/carts/return",
                    "carts",
                    "Force a cart's return (an intent to the owning device)",
                )
            },
            post(intents::force_return),
        )
        .add(
            Op {
                status: 202,
                body: Some(intents::firmware_schema()),
                data: intents::schema(),
                ..op(
                    M::PUT,
                    "/devices/{id}/firmware",
                    "devices",
                    "Record the device's desired firmware version (an intent)",
                )
            },
            put(intents::firmware),
        )
        .add(
            Op {
                paged: true,
                query: &[
                    ("chain_id", "uuid", "only this chain"),
                    ("branch_id", "uuid", "only this branch"),
                    ("actor", "string", "only this actor"),
                    ("action", "string", "only this action"),
                    ("since", "date-time", "at or after"),
                    ("until", "date-time", "before"),
                ],
                ..op(
                    M::GET,
                    "/audit",
                    "audit",
                    "The audit log, newest first (platform and chain admins, scoped)",
                )
            },
            get(audit::list),
        )
        .add(
            Op {
                data: json!({ "type": "array", "items": live::device_schema() }),
                ..op(
                    M::GET,
                    "/branches/{branch_id}/devices",
                    "devices",
                    "A branch's devices with online state and sync lag",
                )
            },
            get(live::devices),
        )
        .add(
            Op {
                data: json!({ "type": "array", "items": live::anomaly_schema() }),
                ..op(
                    M::GET,
                    "/branches/{branch_id}/anomalies",
                    "branches",
                    "A branch's open anomalies, newest first",
                )
            },
            get(live::anomalies),
        )
        .add(
            Op {
                data: json!({ "type": "array", "items": live::intent_schema() }),
                ..op(
                    M::GET,
                    "/branches/{branch_id}/intents",
                    "intents",
                    "A branch's newest intents with status and the device's outcome",
                )
            },
            get(live::intents),
        )
        .add(
            Op {
                status: 202,
                body: Some(live::post_intent_schema()),
                data: live::intent_schema(),
                ..op(
                    M::POST,
                    "/branches/{branch_id}/intents",
                    "intents",
                    "Take a post out of service or back, unlock it for maintenance, or note it",
                )
            },
            post(live::post_intent),
        )
        .add(
            Op {
                data: settings::schema(),
                ..op(
                    M::GET,
                    "/branches/{branch_id}/settings",
                    "branches",
                    "A branch's settings as last asked for, with each device's intent",
                )
            },
            get(settings::get),
        )
        .add(
            Op {
                status: 202,
                body: Some(settings::body_schema()),
                data: json!({ "type": "array", "items": live::intent_schema() }),
                ..op(
                    M::PUT,
                    "/branches/{branch_id}/settings",
                    "branches",
                    "Change a branch's rental minutes, OTP policy or kiosk language (one intent per device)",
                )
            },
            put(settings::put),
        )
        .add(
            Op {
                paged: true,
                data: users::schema(),
                query: &[
                    ("role", "string", "only this role"),
                    ("active", "boolean", "only active or disabled users"),
                    ("q", "string", "text in the login"),
                ],
                ..op(
                    M::GET,
                    "/users",
                    "users",
                    "Users (platform admins: all; chain admins: their chain's)",
                )
            },
            get(users::list),
        )
        .add(
            Op {
                status: 201,
                body: Some(users::body_schema(true)),
                data: users::schema(),
                ..op(
                    M::POST,
                    "/users",
                    "users",
                    "Create a user (chain admins: in their chain, never a platform admin)",
                )
            },
            post(users::create),
        )
        .add(
            Op {
                data: users::schema(),
                ..op(M::GET, "/users/{id}", "users", "One user")
            },
            get(users::get),
        )
        .add(
            Op {
                body: Some(users::body_schema(false)),
                data: users::schema(),
                ..op(
                    M::PUT,
                    "/users/{id}",
                    "users",
                    "Change a user's role, scope, password or active state (disabling ends its sessions)",
                )
            },
            put(users::update),
        )
        .add(
            Op {
                data: users::schema(),
                ..op(
                    M::DELETE,
                    "/users/{id}",
                    "users",
                    "Disable a user and end its sessions and tokens",
                )
            },
            delete(users::disable),
        )
        .technician_routes()
}

async fn openapi_json(axum::extract::State(state): axum::extract::State<ApiState>) -> Json<Value> {
    Json((*state.document).clone())
}

async fn no_route() -> ApiError {
    ApiError::not_found("route")
}

/// The OpenAPI document of every route.
pub fn document() -> Value {
    let (_, ops) = routes().finish();
    openapi::document(&ops)
}

/// The `/api` router (to be nested at `/api`), ready to serve.
pub fn router(pool: PgPool, config: ApiConfig) -> Router {
    let (router, ops) = routes().finish();
    let state = ApiState {
        pool,
        limits: Arc::new(Limits {
            login: Limiter::new(config.login_limit),
            login_ip: Limiter::new(config.login_ip_limit),
            writes: Limiter::new(config.write_limit),
        }),
        config: Arc::new(config),
        document: Arc::new(openapi::document(&ops)),
        events: Arc::new(events::Feed::default()),
    };
    router
        // A stream, not JSON: outside the OpenAPI document (see `events`).
        .route("/events", get(events::stream))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(BODY_MAX))
        .layer(middleware::from_fn(error::finish))
        .with_state(state)
}
