//! A small world for the REST API tests: two chains, three branches, devices, carts, rentals,
//! telemetry, and one user per role, plus a helper that calls the router in-process.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cartwise_cloud_hub::api::{self, ApiConfig};
use cartwise_cloud_hub::users::{self, CredentialKind, NewUser, Role};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

pub const PHONE: &str = "+972501234567";
pub const MASKED: &str = "+97250***4567";
pub const PASSWORD: &str = "correct horse battery";

/// One branch with its device, cart, rental and telemetry.
#[derive(Debug, Clone, Copy)]
pub struct BranchIds {
    pub chain: Uuid,
    pub branch: Uuid,
    pub device: Uuid,
    pub cart: Uuid,
    pub rental: Uuid,
}

#[derive(Debug, Clone)]
pub struct World {
    /// Chain A, branch A1 (the users' home).
    pub a1: BranchIds,
    /// Chain A, branch A2 (a foreign branch in the users' chain).
    pub a2: BranchIds,
    /// Chain B, branch B1 (a foreign chain).
    pub b1: BranchIds,
    /// Tokens by role: every user but the platform admin is scoped to chain A (branch A1).
    pub tokens: Vec<(Role, String)>,
    /// A viewer scoped to the whole of chain A.
    pub chain_viewer: String,
}

impl World {
    pub fn token(&self, role: Role) -> &str {
        &self.tokens.iter().find(|(r, _)| *r == role).unwrap().1
    }
}

pub fn app(pool: &PgPool) -> Router {
    Router::new().nest("/api", api::router(pool.clone(), ApiConfig::default()))
}

pub fn app_with(pool: &PgPool, config: ApiConfig) -> Router {
    Router::new().nest("/api", api::router(pool.clone(), config))
}

async fn branch(pool: &PgPool, chain: Uuid, code: &str, first_cart: i32) -> BranchIds {
    let branch: Uuid = sqlx::query_scalar(
        "INSERT INTO branches (chain_id, name, branch_code, city) VALUES ($1, $2, $2, 'Haifa') \
         RETURNING id",
    )
    .bind(chain)
    .bind(code)
    .fetch_one(pool)
    .await
    .unwrap();
    let device: Uuid = sqlx::query_scalar(
        "INSERT INTO devices (branch_id, device_name, status) VALUES ($1, $2, 'online') RETURNING id",
    )
    .bind(branch)
    .bind(format!("pi-{code}"))
    .fetch_one(pool)
    .await
    .unwrap();
    let controller: Uuid = sqlx::query_scalar(
        "INSERT INTO controllers (device_id, controller_address, port) \
         VALUES ($1, 0, '/dev/ttyUSB0') RETURNING id",
    )
    .bind(device)
    .fetch_one(pool)
    .await
    .unwrap();
    // The first cart is on the device's board; the second on none (no device owns it).
    let cart: Uuid = sqlx::query_scalar(
        "INSERT INTO carts (branch_id, controller_id, cart_number, locker_id, status, is_locked, \
         assigned_to) VALUES ($1, $4, $2, 1, 'rented', false, $3) RETURNING id",
    )
    .bind(branch)
    .bind(first_cart)
    .bind(PHONE)
    .bind(controller)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO carts (branch_id, cart_number, locker_id) VALUES ($1, $2, 2)")
        .bind(branch)
        .bind(first_cart + 1)
        .execute(pool)
        .await
        .unwrap();
    let rental: Uuid = sqlx::query_scalar(
        "INSERT INTO rentals (cart_id, branch_id, user_phone, start_time, expected_return, \
         status, device_id) VALUES ($1, $2, $3, now() - interval '3 hours', \
         now() - interval '1 hour', 'active', $4) RETURNING id",
    )
    .bind(cart)
    .bind(branch)
    .bind(PHONE)
    .bind(device)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO rentals (cart_id, branch_id, user_phone, start_time, expected_return, \
         actual_return, status, duration_minutes) VALUES ($1, $2, $3, now() - interval '2 days', \
         now() - interval '2 days' + interval '2 hours', now() - interval '2 days' + interval '1 hour', \
         'returned', 60)",
    )
    .bind(cart)
    .bind(branch)
    .bind(PHONE)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO telemetry (device_id, event_type, event_data) VALUES ($1, 'boot', '{}'), \
         ($1, 'heartbeat', '{\"cpu\": 3}')",
    )
    .bind(device)
    .execute(pool)
    .await
    .unwrap();
    BranchIds {
        chain,
        branch,
        device,
        cart,
        rental,
    }
}

async fn chain(pool: &PgPool, slug: &str) -> Uuid {
    sqlx::query_scalar("INSERT INTO chains (name, slug) VALUES ($1, $1) RETURNING id")
        .bind(slug)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Creates a user directly and returns an API token for it.
pub async fn user(
    pool: &PgPool,
    login: &str,
    role: Role,
    chain: Option<Uuid>,
    branches: Vec<Uuid>,
) -> String {
    let id = users::add_user(
        pool,
        &NewUser {
            login: login.to_owned(),
            password: PASSWORD.to_owned(),
            role,
            chain,
            branches,
        },
    )
    .await
    .unwrap();
    users::issue_credential(pool, id, CredentialKind::ApiToken)
        .await
        .unwrap()
        .0
}

pub async fn world(pool: &PgPool) -> World {
    let a = chain(pool, "chain-a").await;
    let b = chain(pool, "chain-b").await;
    let a1 = branch(pool, a, "A1", 1).await;
    let a2 = branch(pool, a, "A2", 1).await;
    let b1 = branch(pool, b, "B1", 1).await;
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let (chain, branches) = match role {
            Role::PlatformAdmin => (None, vec![]),
            Role::ChainAdmin => (Some(a), vec![]),
            _ => (Some(a), vec![a1.branch]),
        };
        let token = user(pool, role.as_str(), role, chain, branches).await;
        tokens.push((role, token));
    }
    let chain_viewer = user(pool, "chain-viewer", Role::Viewer, Some(a), vec![]).await;
    World {
        a1,
        a2,
        b1,
        tokens,
        chain_viewer,
    }
}

/// One in-process request; the status and the JSON body (Null when not JSON).
pub async fn call(
    app: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    raw(app, request).await
}

pub async fn raw(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 4 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Asserts the error shape and returns the code.
pub fn assert_error_shape(status: StatusCode, body: &Value) -> String {
    assert_eq!(body["success"], false, "{status}: {body}");
    let error = &body["error"];
    for field in ["code", "message", "details", "timestamp", "requestId"] {
        assert!(
            error.get(field).is_some(),
            "{status}: {field} missing in {body}"
        );
    }
    assert!(
        error["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{body}"
    );
    assert!(
        error["requestId"].as_str().is_some_and(|c| !c.is_empty()),
        "{body}"
    );
    chrono::DateTime::parse_from_rfc3339(error["timestamp"].as_str().unwrap()).unwrap();
    error["code"].as_str().unwrap().to_owned()
}
