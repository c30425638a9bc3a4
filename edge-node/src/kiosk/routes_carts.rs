//! `POST /carts/assign`, `/carts/initiate-return` and `/carts/complete-return`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::errors::{Body, KioskError, KioskMessage, Lang};
use super::routes_auth::{Peer, PhoneBody, authorize_rent, parse_phone};
use super::{Kiosk, bearer, views};
use crate::engine::{ReturnState, iso};

#[derive(Debug, Deserialize)]
pub struct AssignBody {
    /// Optional with a bearer token (the token names the phone).
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub otp_code: Option<String>,
}

pub async fn assign(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
    headers: HeaderMap,
    peer: Peer,
    Body(body): Body<AssignBody>,
) -> Result<Json<Value>, KioskError> {
    let phone = match (&body.phone, bearer(&headers)) {
        (Some(text), _) => parse_phone(lang, text)?,
        (None, Some(token)) => {
            let now = kiosk.engine.now();
            let auth = kiosk
                .auth
                .lock()
                .map_err(|e| KioskError::internal(lang, &e))?;
            auth.verify_token(token, now.wall)
                .map_err(|m| KioskError::shopper(lang, m))?
                .phone
        }
        (None, None) => {
            return Err(KioskError::kiosk(
                StatusCode::UNPROCESSABLE_ENTITY,
                lang,
                KioskMessage::BadBody,
            ));
        }
    };
    authorize_rent(
        &kiosk,
        lang,
        &headers,
        &phone,
        body.otp_code.as_deref(),
        peer,
    )
    .await?;
    let lent = kiosk
        .engine
        .lend(&phone)
        .await
        .map_err(|e| KioskError::lend(lang, e))?;
    let cart = lent.post.post.get();
    Ok(Json(json!({
        "success": true,
        "message": KioskMessage::CartAssigned { cart }.text(lang),
        "cart": views::cart_json(&lent.post),
        "rental_id": lent.rental.id.to_string(),
        "expected_return": iso(lent.expected_return),
    })))
}

pub async fn initiate_return(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
    Body(body): Body<PhoneBody>,
) -> Result<Json<Value>, KioskError> {
    let phone = parse_phone(lang, &body.phone)?;
    let slot = kiosk
        .engine
        .initiate_return(&phone)
        .await
        .map_err(|e| KioskError::give_back(lang, e))?;
    Ok(Json(json!({
        "success": true,
        "message": KioskMessage::DockAt { cart: slot.post.get() }.text(lang),
        "locker_number": slot.post.locker_id(),
        "locker_id": slot.post.locker_id(),
        "cart_id": slot.post.get(),
        "rental_id": slot.rental.to_string(),
    })))
}

pub async fn complete_return(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
    Body(body): Body<PhoneBody>,
) -> Result<Json<Value>, KioskError> {
    let phone = parse_phone(lang, &body.phone)?;
    let state = kiosk
        .engine
        .return_state(&phone)
        .await
        .map_err(|e| KioskError::give_back(lang, e))?;
    Ok(Json(match state {
        ReturnState::Waiting { post } => json!({
            "success": true,
            "message": KioskMessage::WaitingForDock { cart: post.map(|p| p.get()) }.text(lang),
            "returned": false,
        }),
        ReturnState::Returned {
            rental,
            status,
            post,
        } => json!({
            "success": true,
            "message": KioskMessage::Returned.text(lang),
            "returned": true,
            "rental_id": rental.to_string(),
            "status": status.as_str(),
            "cart_id": post.map(|p| p.get()),
        }),
    }))
}
