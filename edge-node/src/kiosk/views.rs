//! Read endpoints: carts, rentals, stats and health, in the existing API's shapes.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cartwise_schema::{HookState, PostNo, PostStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Kiosk;
use super::errors::{KioskError, KioskMessage, Lang};
use super::routes_auth::parse_phone;
use crate::engine::{RentalFilter, RentalView, iso};
use crate::ledger::PostRow;

/// Largest page of a list.
pub const PAGE_LIMIT_MAX: i64 = 500;

/// A post ("cart" in the existing API) as JSON.
pub fn cart_json(post: &PostRow) -> Value {
    json!({
        "cart_id": post.post.get(),
        "id": post.post.get(),
        "cart_number": post.post.get(),
        "locker_id": post.post.locker_id(),
        "status": post.status().as_str(),
        "is_locked": post.hook == HookState::Latched,
        "has_cart": post.present,
        "controller_address": post.board.get(),
        "lock_number": post.lock.get(),
        "fault": post.fault,
        "use_count": post.use_count,
    })
}

/// A rental as JSON; the phone is masked unless `full_phone`.
pub fn rental_json(v: &RentalView, full_phone: bool) -> Value {
    let r = &v.row;
    json!({
        "id": r.id.to_string(),
        "rental_id": r.id.to_string(),
        "cart_id": r.post.get(),
        "locker_id": r.post.locker_id(),
        "user_phone": if full_phone { r.phone.as_e164().to_string() } else { r.phone.masked() },
        "status": r.status.as_str(),
        "is_overdue": v.overdue,
        "start_time": iso(v.start),
        "expected_return": iso(v.expected_return),
        "actual_return": v.end.map(iso),
        "duration_minutes": v.duration_minutes,
        "return_cart_id": r.return_post.map(PostNo::get),
    })
}

async fn posts(kiosk: &Kiosk, lang: Lang) -> Result<Vec<PostRow>, KioskError> {
    kiosk
        .engine
        .posts()
        .await
        .map_err(|e| KioskError::store(lang, e))
}

pub async fn carts(State(kiosk): State<Arc<Kiosk>>, lang: Lang) -> Result<Json<Value>, KioskError> {
    Ok(Json(Value::Array(
        posts(&kiosk, lang).await?.iter().map(cart_json).collect(),
    )))
}

pub async fn carts_available(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
) -> Result<Json<Value>, KioskError> {
    let list = posts(&kiosk, lang).await?;
    Ok(Json(Value::Array(
        list.iter()
            .filter(|p| p.status() == PostStatus::Available)
            .map(cart_json)
            .collect(),
    )))
}

pub async fn cart(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
    Path(id): Path<String>,
) -> Result<Json<Value>, KioskError> {
    let not_found = || KioskError::kiosk(StatusCode::NOT_FOUND, lang, KioskMessage::CartNotFound);
    let number: u16 = id.trim().parse().map_err(|_| not_found())?;
    let list = posts(&kiosk, lang).await?;
    let post = list
        .iter()
        .find(|p| p.post.get() == number)
        .ok_or_else(not_found)?;
    Ok(Json(cart_json(post)))
}

async fn rentals(
    kiosk: &Kiosk,
    lang: Lang,
    filter: RentalFilter,
    full_phone: bool,
) -> Result<Json<Value>, KioskError> {
    let list = kiosk
        .engine
        .rentals(filter)
        .await
        .map_err(|e| KioskError::store(lang, e))?;
    Ok(Json(Value::Array(
        list.iter().map(|v| rental_json(v, full_phone)).collect(),
    )))
}

pub async fn rentals_active(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
) -> Result<Json<Value>, KioskError> {
    rentals(&kiosk, lang, RentalFilter::Active, false).await
}

pub async fn rentals_overdue(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
) -> Result<Json<Value>, KioskError> {
    rentals(&kiosk, lang, RentalFilter::Overdue, false).await
}

#[derive(Debug, Deserialize)]
pub struct Page {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

pub async fn rentals_history(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, KioskError> {
    let Ok(Query(page)) = page else {
        return Err(KioskError::kiosk(
            StatusCode::UNPROCESSABLE_ENTITY,
            lang,
            KioskMessage::BadBody,
        ));
    };
    let limit = page.limit.unwrap_or(50).clamp(1, PAGE_LIMIT_MAX);
    let offset = page.offset.unwrap_or(0).max(0);
    rentals(&kiosk, lang, RentalFilter::History { limit, offset }, false).await
}

#[derive(Debug, Deserialize)]
pub struct PhoneQuery {
    pub phone: Option<String>,
}

pub async fn my_rental(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
    query: Result<Query<PhoneQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, KioskError> {
    let phone_text = query.ok().and_then(|Query(q)| q.phone).unwrap_or_default();
    let phone = parse_phone(lang, &phone_text)?;
    let list = kiosk
        .engine
        .rentals(RentalFilter::Phone { phone, limit: 1 })
        .await
        .map_err(|e| KioskError::store(lang, e))?;
    match list.first() {
        Some(v) if v.row.status.is_open() => Ok(Json(
            json!({ "success": true, "has_rental": true, "rental": rental_json(v, true) }),
        )),
        _ => Ok(Json(
            json!({ "success": true, "has_rental": false, "rental": null }),
        )),
    }
}

pub async fn anomalies(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
) -> Result<Json<Value>, KioskError> {
    let list = kiosk
        .engine
        .anomalies(PAGE_LIMIT_MAX)
        .await
        .map_err(|e| KioskError::store(lang, e))?;
    Ok(Json(Value::Array(list)))
}

/// `GET /api/v1/intents`: the hub's intents this device executed (newest first) and the
/// staff notes they left.
pub async fn intents(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
) -> Result<Json<Value>, KioskError> {
    let runs = kiosk
        .engine
        .intent_runs()
        .await
        .map_err(|e| KioskError::store(lang, e))?;
    let notes = kiosk
        .engine
        .staff_notes()
        .await
        .map_err(|e| KioskError::store(lang, e))?;
    Ok(Json(json!({ "runs": runs, "notes": notes })))
}

pub async fn stats_summary(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
) -> Result<Json<Value>, KioskError> {
    let s = kiosk
        .engine
        .stats()
        .await
        .map_err(|e| KioskError::store(lang, e))?;
    Ok(Json(json!({
        "total_carts": s.total_carts,
        "available_carts": s.available_carts,
        "active_rentals": s.active_rentals,
        "overdue_rentals": s.overdue_rentals,
        "rentals_today": s.rentals_today,
        "returns_today": s.returns_today,
        "average_duration_minutes": s.average_duration_minutes,
    })))
}

pub async fn health(State(kiosk): State<Arc<Kiosk>>) -> (StatusCode, Json<Value>) {
    let engine = &kiosk.engine;
    let rs485 = engine.bus_connected();
    let counts = engine.health_counts().await;
    let firmware = engine.firmware().await.ok();
    let now = engine.corrected_now().await.ok();
    let database_ok = counts.is_ok();
    let (total_carts, available_carts, active_rentals) = counts.unwrap_or_default();
    let status = if database_ok && rs485 {
        "healthy"
    } else {
        "degraded"
    };
    let code = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": status,
            "timestamp": now.map(iso),
            "rs485_connected": rs485,
            "sms_configured": kiosk.sms.is_some(),
            "sms_available": kiosk.sms.is_some() && !kiosk.sms_down(),
            "active_carts": active_rentals,
            "available_carts": available_carts,
            "total_carts": total_carts,
            "database": if database_ok { "ok" } else { "failing" },
            "hub_connected": kiosk.hub.connected(),
            "lan_peers_connected": kiosk.lan.connected(),
            "mode": if kiosk.hub.connected() { "online" } else { "offline" },
            "device_id": engine.config().device.to_string(),
            "device_name": kiosk.device_name,
            "version": env!("CARGO_PKG_VERSION"),
            "firmware": {
                "current": env!("CARGO_PKG_VERSION"),
                "desired": firmware.and_then(|f| f.desired),
            },
        })),
    )
}
