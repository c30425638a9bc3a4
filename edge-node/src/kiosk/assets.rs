//! Our kiosk page, embedded in the binary (no external assets: it works with no internet).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../assets/kiosk/index.html");
const KIOSK_CSS: &str = include_str!("../../assets/kiosk/kiosk.css");
const KIOSK_JS: &str = include_str!("../../assets/kiosk/kiosk.js");

/// `/` redirects to `/kiosk/`, which serves the page and its two assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/kiosk/") }))
        .route("/kiosk", get(|| async { Redirect::temporary("/kiosk/") }))
        .route(
            "/kiosk/",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/kiosk/kiosk.css",
            get(|| async { page("text/css; charset=utf-8", KIOSK_CSS) }),
        )
        .route(
            "/kiosk/kiosk.js",
            get(|| async { page("text/javascript; charset=utf-8", KIOSK_JS) }),
        )
}

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
