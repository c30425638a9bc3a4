//! The one error shape of every `/api` answer, and the middleware that guarantees it.
//!
//! Handlers return [`ApiError`]; its response carries the error in an extension and no body.
//! [`finish`] (a middleware around the whole `/api` router) gives every request an id and
//! renders every error answer — ours, axum's extractor rejections (bad JSON, wrong content
//! type, body too large, bad path ids), unknown routes and wrong methods — as
//! `{"success": false, "error": {"code", "message", "details", "timestamp", "requestId"}}`.
//! Internal errors are logged with the request id and shown only as "internal error".

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The response header carrying the request id (also accepted from the client).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The longest client-supplied request id kept (longer ones are replaced).
const REQUEST_ID_LEN_MAX: usize = 64;
/// The most bytes of a non-JSON error body (an axum rejection's text) read into the message.
const REJECTION_BODY_MAX: usize = 4 * 1024;

/// An error answer of the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code (`not_found`, `validation_failed`, …).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Structured details (which field, which limit), or null.
    pub details: Value,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 400: a field's value is not acceptable.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_failed", message)
            .with_details(json!({ "field": field }))
    }

    /// 401: no valid session or token.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "sign in first: send the session cookie or an Authorization: Bearer token",
        )
    }

    /// 403: visible, but the role may not do this.
    pub fn forbidden(what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role may not {what}"),
        )
    }

    /// 404: absent, or outside the caller's scope (the two are never told apart).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    /// 409: conflicts with what exists.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 429: too many requests.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; try again in {retry_after_secs} s"),
        )
        .with_details(json!({ "retryAfterSeconds": retry_after_secs }))
    }

    /// 500: logged with the request id; the client sees only "internal error".
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; quote the request id to an administrator",
        )
        .with_details(json!({ "internal": error.to_string() }))
    }
}

impl From<sqlx::Error> for ApiError {
    /// Data errors the database raises on what a client sent become 4xx; the rest are 500.
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if code == "23505" {
                return ApiError::conflict("a record with these unique values already exists");
            }
            if code == "23503" {
                return ApiError::conflict("the record refers to, or is referred to by, another");
            }
            if code.starts_with("22") || code.starts_with("23") {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "validation_failed",
                    "a value is out of range or malformed",
                );
            }
        }
        ApiError::internal(error)
    }
}

impl From<crate::users::UserError> for ApiError {
    fn from(error: crate::users::UserError) -> Self {
        use crate::users::UserError as E;
        match error {
            E::Db { .. } | E::Hash(_) => ApiError::internal(error),
            E::LoginTaken(_) => ApiError::conflict(error.to_string()),
            other => ApiError::new(
                StatusCode::BAD_REQUEST,
                "validation_failed",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// The request id, in the request's extensions for handlers that want to log it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn request_id_of(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= REQUEST_ID_LEN_MAX
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        status if status.is_client_error() => "bad_request",
        _ => "internal_error",
    }
}

/// The middleware: request id in, error shape out.
pub async fn finish(mut request: Request, next: Next) -> Response {
    let id = request_id_of(&request);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    request.extensions_mut().insert(RequestId(id.clone()));
    let response = next.run(request).await;
    let status = response.status();
    let mut response = if let Some(error) = response.extensions().get::<ApiError>().cloned() {
        render(error, &id, &method, &path, response)
    } else if status.is_client_error() || status.is_server_error() {
        let (parts, body) = response.into_parts();
        let text = axum::body::to_bytes(body, REJECTION_BODY_MAX)
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
            .unwrap_or_default();
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        };
        let error = ApiError::new(status, code_for(status), message);
        render(
            error,
            &id,
            &method,
            &path,
            Response::from_parts(parts, Body::empty()),
        )
    } else {
        response
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

fn render(
    error: ApiError,
    id: &str,
    method: &axum::http::Method,
    path: &str,
    template: Response,
) -> Response {
    let mut details = error.details;
    if error.status.is_server_error() {
        tracing::error!(request_id = id, %method, path, code = error.code, ?details, "api request failed");
        details = Value::Null;
    }
    let body = json!({
        "success": false,
        "error": {
            "code": error.code,
            "message": error.message,
            "details": details,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "requestId": id,
        }
    });
    let (mut parts, _) = template.into_parts();
    parts.extensions.remove::<ApiError>();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.status = error.status;
    Response::from_parts(parts, Body::from(body.to_string()))
}
