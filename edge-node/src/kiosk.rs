//! The kiosk HTTP server: the existing kiosk API at the root (same paths, fields, status codes
//! and Hebrew messages, errors as `{"detail": …}`), the same API versioned under `/api/v1`,
//! our kiosk page under `/kiosk/`, and `/health`.
//!
//! Answers are in Hebrew unless the request's `Accept-Language` starts with `en`.
//!
//! Architecture Invariant: handlers translate HTTP to engine and shopper calls and back; every
//! decision is the engine's or the shopper module's. A body that does not parse is a 4xx with a
//! `detail`, never a 5xx; internal errors are logged and answered with a generic message.

mod assets;
mod errors;
mod routes_auth;
mod routes_carts;
mod views;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use cartwise_schema::{MonoMillis, OtpCode, Phone};
use rand::rngs::StdRng;

use crate::engine::Engine;
use crate::shopper::{ShopperAuth, SmsSender};

pub use errors::{KioskError, KioskMessage, Lang};

/// Largest request body accepted (a phone and a code fit in far less).
pub const BODY_BYTES_MAX: usize = 16 * 1024;
/// Codes remembered after `verify-otp` so `assign` may still present them, at most.
pub const VERIFIED_CODES_MAX: usize = 1_024;

/// What every handler shares.
pub struct Kiosk {
    pub engine: Arc<Engine>,
    pub auth: Mutex<ShopperAuth>,
    pub sms: Option<Arc<dyn SmsSender>>,
    /// Whether the last SMS send failed for lack of a network.
    pub sms_down: AtomicBool,
    pub device_name: String,
    /// Whether the node is in session with the hub.
    pub hub: Arc<crate::uplink::HubLink>,
    /// The branch peers in session on the LAN.
    pub lan: Arc<crate::peers::LanLink>,
    rng: Mutex<StdRng>,
    verified: Mutex<VecDeque<(Phone, String, MonoMillis)>>,
}

impl std::fmt::Debug for Kiosk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kiosk")
            .field("device_name", &self.device_name)
            .finish_non_exhaustive()
    }
}

impl Kiosk {
    /// The kiosk state for an engine, a shopper-auth state and an SMS sender (if configured).
    pub fn new(
        engine: Arc<Engine>,
        auth: ShopperAuth,
        sms: Option<Arc<dyn SmsSender>>,
        device_name: String,
        hub: Arc<crate::uplink::HubLink>,
        rng: StdRng,
    ) -> Self {
        Self {
            engine,
            auth: Mutex::new(auth),
            sms,
            sms_down: AtomicBool::new(false),
            device_name,
            hub,
            lan: Arc::default(),
            rng: Mutex::new(rng),
            verified: Mutex::new(VecDeque::new()),
        }
    }

    fn sms_down(&self) -> bool {
        self.sms_down.load(Ordering::Relaxed)
    }

    /// Remembers a code that `verify-otp` accepted, for the rest of its lifetime, so an
    /// `assign` that presents it again (as the existing kiosk may) is honoured once.
    fn remember_verified(&self, phone: &Phone, code: &str, until: MonoMillis) {
        if let Ok(mut list) = self.verified.lock() {
            list.retain(|(p, _, _)| p != phone);
            if list.len() >= VERIFIED_CODES_MAX {
                list.pop_front();
            }
            list.push_back((phone.clone(), code.to_string(), until));
        }
    }

    /// Takes a remembered verified code (one use).
    fn take_verified(&self, phone: &Phone, code: &str, now: MonoMillis) -> bool {
        let Ok(typed) = OtpCode::parse(code) else {
            return false;
        };
        let Ok(mut list) = self.verified.lock() else {
            return false;
        };
        let found = list.iter().position(|(p, c, until)| {
            p == phone && *until > now && OtpCode::parse(c).is_ok_and(|c| c.matches(&typed))
        });
        found.map(|i| list.remove(i)).is_some()
    }
}

/// The kiosk router: the legacy API at the root and under `/api/v1`, the page, health.
pub fn router(kiosk: Arc<Kiosk>) -> Router {
    let api = Router::new()
        .route("/auth/request-otp", post(routes_auth::request_otp))
        .route("/auth/verify-otp", post(routes_auth::verify_otp))
        .route("/carts/assign", post(routes_carts::assign))
        .route(
            "/carts/initiate-return",
            post(routes_carts::initiate_return),
        )
        .route(
            "/carts/complete-return",
            post(routes_carts::complete_return),
        )
        .route("/carts", get(views::carts))
        .route("/carts/available", get(views::carts_available))
        .route("/carts/{id}", get(views::cart))
        .route("/rentals/active", get(views::rentals_active))
        .route("/rentals/overdue", get(views::rentals_overdue))
        .route("/rentals/history", get(views::rentals_history))
        .route("/rentals/my-rental", get(views::my_rental))
        .route("/rentals/stats/summary", get(views::stats_summary))
        .route("/health", get(views::health));
    Router::new()
        .merge(api.clone())
        .nest("/api/v1", api)
        .route("/api/v1/admin/time", post(routes_auth::set_time))
        .route("/api/v1/anomalies", get(views::anomalies))
        .route("/api/v1/intents", get(views::intents))
        .merge(assets::router())
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .with_state(kiosk)
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
