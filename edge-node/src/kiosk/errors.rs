//! Kiosk answers that are not successes: one `KioskError` per failure, answered as
//! `{"detail": …}` in the shopper's language, with the status code the existing API used.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cartwise_sync_core::intents::KioskLanguage;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Kiosk;
use crate::engine::{LendError, ReturnError};
use crate::shopper::ShopperMessage;
use crate::store::StoreError;

/// The shopper's language: Hebrew first, English on request. A request without
/// `Accept-Language` gets the branch's default: Hebrew, or what the hub's latest
/// `set_language` intent set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    He,
    En,
}

impl Lang {
    /// From `Accept-Language`: English only when it asks for English first; Hebrew when the
    /// header is absent.
    pub fn of(headers: &HeaderMap) -> Lang {
        Lang::of_or(headers, Lang::He)
    }

    /// From `Accept-Language`, or `default` when the request carries none.
    pub fn of_or(headers: &HeaderMap, default: Lang) -> Lang {
        let Some(wanted) = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
        else {
            return default;
        };
        if wanted.trim_start().to_ascii_lowercase().starts_with("en") {
            Lang::En
        } else {
            Lang::He
        }
    }
}

impl FromRequestParts<Arc<Kiosk>> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        kiosk: &Arc<Kiosk>,
    ) -> Result<Self, Self::Rejection> {
        if parts
            .headers
            .contains_key(axum::http::header::ACCEPT_LANGUAGE)
        {
            return Ok(Lang::of(&parts.headers));
        }
        // The hub's `set_language` overrides the Hebrew default.
        let default = match kiosk.engine.language_override().await {
            Ok(Some(KioskLanguage::En)) => Lang::En,
            Ok(Some(KioskLanguage::He) | None) => Lang::He,
            Err(error) => {
                tracing::warn!(%error, "reading the kiosk language setting failed");
                Lang::He
            }
        };
        Ok(default)
    }
}

/// Kiosk-level texts that are not about signing in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KioskMessage {
    BadBody,
    AlreadyRenting { cart: u16 },
    NoCartAvailable,
    LocksDidNotOpen,
    LockSystemDown,
    NoActiveRental,
    StillStarting,
    NoFreePost,
    CartNotFound,
    NotFound,
    SignInRequired,
    Internal,
    CartAssigned { cart: u16 },
    DockAt { cart: u16 },
    Returned,
    WaitingForDock { cart: Option<u16> },
    AlreadySignedIn,
}

impl KioskMessage {
    /// The text in `lang`.
    pub fn text(&self, lang: Lang) -> String {
        match lang {
            Lang::He => self.he(),
            Lang::En => self.en(),
        }
    }

    fn he(&self) -> String {
        match self {
            KioskMessage::BadBody => "הבקשה אינה תקינה. נסו שוב מהמסך הראשי.".into(),
            KioskMessage::AlreadyRenting { cart } => format!(
                "כבר יש לכם השכרה פעילה (עגלה {cart}). יש להחזיר אותה לפני לקיחת עגלה חדשה."
            ),
            KioskMessage::NoCartAvailable => {
                "אין כרגע עגלות פנויות בעמדה. נסו שוב בעוד מספר דקות או פנו לשירות הלקוחות.".into()
            }
            KioskMessage::LocksDidNotOpen => {
                "המנעול לא נפתח. העמדה סומנה לטכנאי; נסו שוב או פנו לשירות הלקוחות.".into()
            }
            KioskMessage::LockSystemDown => {
                "מערכת המנעולים אינה מגיבה כרגע. נסו שוב בעוד רגע או פנו לשירות הלקוחות.".into()
            }
            KioskMessage::NoActiveRental => "לא נמצאה השכרה פעילה למספר הטלפון הזה.".into(),
            KioskMessage::StillStarting => "ההשכרה עדיין בתהליך פתיחה. המתינו רגע ונסו שוב.".into(),
            KioskMessage::NoFreePost => {
                "אין כרגע עמדה פנויה להחזרה. נסו שוב בעוד רגע או פנו לשירות הלקוחות.".into()
            }
            KioskMessage::CartNotFound => "העגלה המבוקשת לא נמצאה.".into(),
            KioskMessage::NotFound => "הכתובת המבוקשת לא נמצאה.".into(),
            KioskMessage::SignInRequired => {
                "יש לאמת את מספר הטלפון בקוד SMS לפני לקיחת עגלה.".into()
            }
            KioskMessage::Internal => "אירעה תקלה בעמדה. נסו שוב או פנו לשירות הלקוחות.".into(),
            KioskMessage::CartAssigned { cart } => {
                format!("עגלה מספר {cart} שוחררה עבורכם. קחו אותה עכשיו.")
            }
            KioskMessage::DockAt { cart } => {
                format!("החזירו את העגלה לעמדה מספר {cart} ודחפו עד הנעילה.")
            }
            KioskMessage::Returned => "העגלה הוחזרה בהצלחה. תודה!".into(),
            KioskMessage::WaitingForDock { cart: Some(cart) } => {
                format!("ממתינים לעגלה בעמדה {cart}.")
            }
            KioskMessage::WaitingForDock { cart: None } => "ממתינים להחזרת העגלה.".into(),
            KioskMessage::AlreadySignedIn => "אתם כבר מחוברים. אפשר לקחת עגלה.".into(),
        }
    }

    fn en(&self) -> String {
        match self {
            KioskMessage::BadBody => "The request is not valid. Start again from the home screen.".into(),
            KioskMessage::AlreadyRenting { cart } => format!("You already have an active rental (cart {cart}). Return it before taking another cart."),
            KioskMessage::NoCartAvailable => "No cart is available at this station right now. Try again in a few minutes or ask customer service.".into(),
            KioskMessage::LocksDidNotOpen => "The lock did not open. The post was flagged for a technician; try again or ask customer service.".into(),
            KioskMessage::LockSystemDown => "The lock system is not responding. Try again in a moment or ask customer service.".into(),
            KioskMessage::NoActiveRental => "No active rental was found for this phone number.".into(),
            KioskMessage::StillStarting => "Your rental is still starting. Wait a moment and try again.".into(),
            KioskMessage::NoFreePost => "No post is free for a return right now. Try again in a moment or ask customer service.".into(),
            KioskMessage::CartNotFound => "That cart was not found.".into(),
            KioskMessage::NotFound => "Not found.".into(),
            KioskMessage::SignInRequired => "Confirm your phone number with the SMS code before taking a cart.".into(),
            KioskMessage::Internal => "Something went wrong at this station. Try again or ask customer service.".into(),
            KioskMessage::CartAssigned { cart } => format!("Cart {cart} is unlocked for you. Take it now."),
            KioskMessage::DockAt { cart } => format!("Return the cart to post {cart} and push until it locks."),
            KioskMessage::Returned => "The cart was returned. Thank you!".into(),
            KioskMessage::WaitingForDock { cart: Some(cart) } => format!("Waiting for the cart at post {cart}."),
            KioskMessage::WaitingForDock { cart: None } => "Waiting for the cart to be returned.".into(),
            KioskMessage::AlreadySignedIn => "You are already signed in. You can take a cart.".into(),
        }
    }
}

/// One failed kiosk request.
#[derive(Debug)]
pub struct KioskError {
    pub status: StatusCode,
    pub lang: Lang,
    pub detail: String,
}

impl KioskError {
    pub fn kiosk(status: StatusCode, lang: Lang, message: KioskMessage) -> Self {
        Self {
            status,
            lang,
            detail: message.text(lang),
        }
    }

    /// A sign-in failure from the shopper module, with the status the existing API used.
    pub fn shopper(lang: Lang, message: ShopperMessage) -> Self {
        let status = match &message {
            ShopperMessage::WrongCode { .. }
            | ShopperMessage::CodeExpired
            | ShopperMessage::NoCode
            | ShopperMessage::TokenExpired
            | ShopperMessage::TokenInvalid => StatusCode::UNAUTHORIZED,
            ShopperMessage::TooManyAttempts | ShopperMessage::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ShopperMessage::SmsUnavailable { .. } | ShopperMessage::SmsFailed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        let detail = match lang {
            Lang::He => message.he(),
            Lang::En => message.en(),
        };
        Self {
            status,
            lang,
            detail,
        }
    }

    /// A storage failure: logged, answered without internals.
    pub fn internal(lang: Lang, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "kiosk request failed");
        Self::kiosk(
            StatusCode::INTERNAL_SERVER_ERROR,
            lang,
            KioskMessage::Internal,
        )
    }

    pub fn lend(lang: Lang, error: LendError) -> Self {
        match error {
            LendError::AlreadyRenting { post, .. } => Self::kiosk(
                StatusCode::CONFLICT,
                lang,
                KioskMessage::AlreadyRenting { cart: post.get() },
            ),
            LendError::NoCartAvailable => Self::kiosk(
                StatusCode::SERVICE_UNAVAILABLE,
                lang,
                KioskMessage::NoCartAvailable,
            ),
            LendError::LocksDidNotOpen => Self::kiosk(
                StatusCode::SERVICE_UNAVAILABLE,
                lang,
                KioskMessage::LocksDidNotOpen,
            ),
            LendError::LockSystemDown(reason) => {
                tracing::warn!(%reason, "lend refused: lock bus down");
                Self::kiosk(
                    StatusCode::SERVICE_UNAVAILABLE,
                    lang,
                    KioskMessage::LockSystemDown,
                )
            }
            LendError::Store(error) => Self::internal(lang, &error),
        }
    }

    pub fn give_back(lang: Lang, error: ReturnError) -> Self {
        match error {
            ReturnError::NoActiveRental => {
                Self::kiosk(StatusCode::NOT_FOUND, lang, KioskMessage::NoActiveRental)
            }
            ReturnError::StillStarting => {
                Self::kiosk(StatusCode::CONFLICT, lang, KioskMessage::StillStarting)
            }
            ReturnError::NoFreePost => Self::kiosk(
                StatusCode::SERVICE_UNAVAILABLE,
                lang,
                KioskMessage::NoFreePost,
            ),
            ReturnError::Store(error) => Self::internal(lang, &error),
        }
    }

    pub fn store(lang: Lang, error: StoreError) -> Self {
        Self::internal(lang, &error)
    }
}

impl IntoResponse for KioskError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "detail": self.detail }))).into_response()
    }
}

/// A JSON body whose rejection is a 422 `{"detail": …}` in the shopper's language.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = KioskError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let lang = Lang::of(req.headers());
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        // The body is always read (within the size limit) before it is judged, so a refused
        // request never leaves unread bytes on a kept-alive connection.
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                tracing::debug!(%rejection, "kiosk body refused");
                KioskError::kiosk(StatusCode::PAYLOAD_TOO_LARGE, lang, KioskMessage::BadBody)
            })?;
        if !is_json {
            return Err(KioskError::kiosk(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                lang,
                KioskMessage::BadBody,
            ));
        }
        serde_json::from_slice(&bytes).map(Body).map_err(|error| {
            tracing::debug!(%error, "kiosk body is not the expected JSON");
            KioskError::kiosk(
                StatusCode::UNPROCESSABLE_ENTITY,
                lang,
                KioskMessage::BadBody,
            )
        })
    }
}

/// A known path with the wrong method: 405 with a `detail`.
pub async fn method_not_allowed(lang: Lang) -> KioskError {
    KioskError::kiosk(StatusCode::METHOD_NOT_ALLOWED, lang, KioskMessage::NotFound)
}

/// Unknown paths: 404 with a `detail`.
pub async fn not_found(lang: Lang) -> KioskError {
    KioskError::kiosk(StatusCode::NOT_FOUND, lang, KioskMessage::NotFound)
}
