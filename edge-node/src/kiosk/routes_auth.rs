//! `POST /auth/request-otp` and `POST /auth/verify-otp`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use cartwise_schema::{MonoMillis, OTP_TTL_MS, Phone};
use cartwise_sync_core::intents::OtpFallback;
use serde::Deserialize;
use serde_json::{Value, json};

use super::errors::{Body, KioskError, KioskMessage, Lang};
use super::{Kiosk, bearer};
use crate::shopper::{KioskKey, ShopperMessage, SmsUnavailablePolicy};

#[derive(Debug, Deserialize)]
pub struct PhoneBody {
    pub phone: String,
}

#[derive(Debug, Deserialize)]
pub struct VerifyBody {
    pub phone: String,
    pub otp_code: String,
}

/// Parses a phone or answers 400 with the reason.
pub fn parse_phone(lang: Lang, text: &str) -> Result<Phone, KioskError> {
    Phone::parse(text).map_err(|e| KioskError::shopper(lang, ShopperMessage::InvalidPhone(e)))
}

/// The calling kiosk's address, when the server was started with connection info.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// The rate-limit key of the calling kiosk: its address.
pub fn kiosk_key(peer: Peer) -> KioskKey {
    match peer.0 {
        Some(addr) => KioskKey::from_ip(addr.ip()),
        None => KioskKey::from_id("local"),
    }
}

pub async fn request_otp(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
    headers: HeaderMap,
    peer: Peer,
    Body(body): Body<PhoneBody>,
) -> Result<Json<Value>, KioskError> {
    let phone = parse_phone(lang, &body.phone)?;
    let now = kiosk.engine.now();
    // A shopper whose saved sign-in is valid for this phone needs no code.
    if let Some(token) = bearer(&headers) {
        let claims = kiosk
            .auth
            .lock()
            .ok()
            .and_then(|auth| auth.verify_token(token, now.wall).ok());
        if claims.is_some_and(|c| c.phone == phone) {
            return Ok(Json(json!({
                "success": true,
                "message": KioskMessage::AlreadySignedIn.text(lang),
                "expires_in_minutes": 0,
                "already_authenticated": true,
            })));
        }
    }
    let Some(sms) = kiosk.sms.clone() else {
        let policy = sms_policy(&kiosk).await;
        return Err(KioskError::shopper(
            lang,
            ShopperMessage::SmsUnavailable { policy },
        ));
    };
    let issued = {
        let mut auth = kiosk
            .auth
            .lock()
            .map_err(|e| KioskError::internal(lang, &e))?;
        let mut rng = kiosk
            .rng
            .lock()
            .map_err(|e| KioskError::internal(lang, &e))?;
        auth.request_otp(&phone, &kiosk_key(peer), now.mono, &mut *rng)
            .map_err(|m| KioskError::shopper(lang, m))?
    };
    if let Err(error) = sms.send(&issued.sms).await {
        kiosk
            .sms_down
            .store(error.is_unavailable(), Ordering::Relaxed);
        tracing::warn!(%error, sender = sms.name(), "the OTP SMS was not sent");
        let message = ShopperMessage::for_sms_error(&error, sms_policy(&kiosk).await);
        return Err(KioskError::shopper(lang, message));
    }
    kiosk.sms_down.store(false, Ordering::Relaxed);
    let message = match lang {
        Lang::He => issued.reply.he(),
        Lang::En => issued.reply.en(),
    };
    Ok(Json(json!({
        "success": true,
        "message": message,
        "expires_in_minutes": issued.expires_in_minutes,
        "already_authenticated": false,
    })))
}

pub async fn verify_otp(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
    peer: Peer,
    Body(body): Body<VerifyBody>,
) -> Result<Json<Value>, KioskError> {
    let phone = parse_phone(lang, &body.phone)?;
    let now = kiosk.engine.now();
    let issued = {
        let mut auth = kiosk
            .auth
            .lock()
            .map_err(|e| KioskError::internal(lang, &e))?;
        auth.verify_otp(&phone, &body.otp_code, &kiosk_key(peer), now.mono, now.wall)
            .map_err(|m| KioskError::shopper(lang, m))?
    };
    let until = MonoMillis::new(now.mono.get().saturating_add(OTP_TTL_MS));
    kiosk.remember_verified(&phone, body.otp_code.trim(), until);
    let days = kiosk.auth.lock().map(|a| a.token_ttl_days()).unwrap_or(30);
    let message = match lang {
        Lang::He => ShopperMessage::Verified.he(),
        Lang::En => ShopperMessage::Verified.en(),
    };
    Ok(Json(json!({
        "success": true,
        "message": message,
        "phone": phone.as_e164(),
        "auth_token": issued.token,
        "token_expires_days": days,
    })))
}

/// The branch's policy while SMS cannot be sent: the hub's latest `set_otp_policy` if one was
/// applied, else the configuration's (`[shopper] sms_unavailable`).
pub async fn sms_policy(kiosk: &Kiosk) -> SmsUnavailablePolicy {
    match kiosk.engine.otp_policy_override().await {
        Ok(Some(OtpFallback::Refuse)) => SmsUnavailablePolicy::Refuse,
        Ok(Some(OtpFallback::Token)) => SmsUnavailablePolicy::AllowToken,
        Ok(None) => kiosk
            .auth
            .lock()
            .map(|a| a.sms_unavailable_policy())
            .unwrap_or_default(),
        Err(error) => {
            tracing::warn!(%error, "reading the sign-in policy setting failed");
            kiosk
                .auth
                .lock()
                .map(|a| a.sms_unavailable_policy())
                .unwrap_or_default()
        }
    }
}

/// Who may rent: a valid bearer token for the phone, or a code verified now or just before.
/// While SMS is down and the branch refuses, even tokens are refused.
pub async fn authorize_rent(
    kiosk: &Kiosk,
    lang: Lang,
    headers: &HeaderMap,
    phone: &Phone,
    otp_code: Option<&str>,
    peer: Peer,
) -> Result<(), KioskError> {
    let now = kiosk.engine.now();
    if let Some(token) = bearer(headers) {
        let policy = sms_policy(kiosk).await;
        let auth = kiosk
            .auth
            .lock()
            .map_err(|e| KioskError::internal(lang, &e))?;
        if kiosk.sms_down() && !policy.token_path_serves() {
            return Err(KioskError::shopper(
                lang,
                ShopperMessage::SmsUnavailable { policy },
            ));
        }
        let claims = auth
            .verify_token(token, now.wall)
            .map_err(|m| KioskError::shopper(lang, m))?;
        if claims.phone != *phone {
            return Err(KioskError::shopper(lang, ShopperMessage::TokenInvalid));
        }
        return Ok(());
    }
    let Some(code) = otp_code else {
        return Err(KioskError::kiosk(
            StatusCode::UNAUTHORIZED,
            lang,
            KioskMessage::SignInRequired,
        ));
    };
    if kiosk.take_verified(phone, code.trim(), now.mono) {
        return Ok(());
    }
    let mut auth = kiosk
        .auth
        .lock()
        .map_err(|e| KioskError::internal(lang, &e))?;
    auth.verify_otp(phone, code, &kiosk_key(peer), now.mono, now.wall)
        .map(|_| ())
        .map_err(|m| KioskError::shopper(lang, m))
}

#[derive(Debug, Deserialize)]
pub struct TimeBody {
    pub trusted_time: String,
}

/// `POST /api/v1/admin/time`: the true time from an operator on this machine (loopback only).
pub async fn set_time(
    State(kiosk): State<Arc<Kiosk>>,
    lang: Lang,
    peer: Peer,
    Body(body): Body<TimeBody>,
) -> Result<Json<Value>, KioskError> {
    if !peer.0.is_some_and(|addr| addr.ip().is_loopback()) {
        return Err(KioskError::kiosk(
            StatusCode::FORBIDDEN,
            lang,
            KioskMessage::NotFound,
        ));
    }
    let trusted = chrono::DateTime::parse_from_rfc3339(body.trusted_time.trim()).map_err(|_| {
        KioskError::kiosk(
            StatusCode::UNPROCESSABLE_ENTITY,
            lang,
            KioskMessage::BadBody,
        )
    })?;
    let offset_ms = kiosk
        .engine
        .set_trusted_time(trusted.timestamp_millis(), "operator")
        .await
        .map_err(|e| KioskError::store(lang, e))?;
    Ok(Json(json!({ "success": true, "offset_ms": offset_ms })))
}
