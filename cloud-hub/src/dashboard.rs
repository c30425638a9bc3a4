//! The hub's dashboard: one page of HTML, CSS and vanilla JavaScript embedded in the binary
//! (no external assets, no chart library: charts are inline SVG drawn by the page), served at
//! `/dashboard/` with `/` redirecting to it. It is only a client of the REST API (`/api`,
//! session cookie from `POST /api/auth/login`) and of its change stream (`GET /api/events`),
//! so whatever it shows a script could read too, under the same scoping.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

/// Every embedded file: its path under `/dashboard/`, content type and body.
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../assets/dashboard/index.html"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../assets/dashboard/dashboard.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/dashboard.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/i18n.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/charts.js"),
    ),
];

/// `/` and `/dashboard` redirect to `/dashboard/`, which serves the page and its assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard/") }))
        .route(
            "/dashboard",
            get(|| async { Redirect::temporary("/dashboard/") }),
        );
    for &(name, content_type, body) in ASSETS {
        let serve = get(move || async move { asset(content_type, body) });
        if name == "index.html" {
            router = router.route("/dashboard/", serve.clone());
        }
        router = router.route(&format!("/dashboard/{name}"), serve);
    }
    router
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                 script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
}
