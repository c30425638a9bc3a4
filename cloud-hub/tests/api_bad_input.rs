//! Bad input on every endpoint (wrong types, missing fields, huge bodies, bad ids, bad
//! parameters, wrong content types) answers 4xx in the error shape, never 5xx; then a
//! property-based run generates requests from the OpenAPI document's operations with junk
//! path ids, parameters and bodies and finds no 5xx.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use api_support::{app, assert_error_shape, call, raw, world};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cartwise_cloud_hub::users::Role;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use sqlx::PgPool;

fn assert_4xx(what: &str, status: StatusCode, body: &Value) {
    assert!(status.is_client_error(), "{what}: {status} {body}");
    assert_error_shape(status, body);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn bad_bodies_are_4xx_in_the_error_shape(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let admin = Some(w.token(Role::PlatformAdmin));
    let chain = w.a1.chain;
    let huge = "x".repeat(100 * 1024);
    let cases: Vec<(&str, String, Value, &str)> = vec![
        (
            "POST",
            "/api/chains".into(),
            json!({ "name": 5, "slug": "a" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/chains".into(),
            json!({ "name": "a" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/chains".into(),
            json!({ "name": "a", "slug": "A B" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/chains".into(),
            json!({ "name": "a\u{0}b", "slug": "ab" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/chains".into(),
            json!({ "name": "a", "slug": "ab", "extra": 1 }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/chains".into(),
            json!({ "name": "x".repeat(256), "slug": "ab" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/chains".into(),
            json!({ "name": huge, "slug": "ab" }),
            "payload_too_large",
        ),
        (
            "POST",
            "/api/chains".into(),
            json!([1, 2]),
            "validation_failed",
        ),
        (
            "POST",
            "/api/chains".into(),
            json!(null),
            "validation_failed",
        ),
        (
            "POST",
            "/api/chains".into(),
            json!({ "name": "dup", "slug": "chain-a" }),
            "conflict",
        ),
        (
            "PUT",
            format!("/api/chains/{chain}"),
            json!({ "active": "yes" }),
            "validation_failed",
        ),
        (
            "PUT",
            format!("/api/chains/{chain}"),
            json!({ "slug": "chain-b" }),
            "conflict",
        ),
        (
            "POST",
            "/api/branches".into(),
            json!({ "chain_id": "nope", "name": "a", "branch_code": "b" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/branches".into(),
            json!({ "chain_id": chain, "name": "a" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/branches".into(),
            json!({ "chain_id": chain, "name": "a", "branch_code": "A1" }),
            "conflict",
        ),
        (
            "POST",
            "/api/branches".into(),
            json!({ "chain_id": chain, "name": "a", "branch_code": "Z", "latitude": 1000.0 }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/branches".into(),
            json!({ "chain_id": chain, "name": "a", "branch_code": "Z", "longitude": "east" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/devices/register".into(),
            json!({ "branch_id": w.a1.branch }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/devices/register".into(),
            json!({ "branch_id": w.a1.branch, "device_name": " " }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/devices/register".into(),
            json!({ "branch_id": w.a1.branch, "device_name": "p", "expires_in_minutes": 0 }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/devices/register".into(),
            json!({ "branch_id": w.a1.branch, "device_name": "p", "expires_in_minutes": -5 }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/devices/register".into(),
            json!({ "branch_id": w.a1.branch, "device_name": "p", "expires_in_minutes": 99_999_999 }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/auth/login".into(),
            json!({ "login": "a" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/auth/login".into(),
            json!({ "login": "", "password": "x" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/auth/login".into(),
            json!({ "login": "a", "password": "p".repeat(300) }),
            "validation_failed",
        ),
        (
            "PUT",
            format!("/api/branches/{}/settings", w.a1.branch),
            json!({}),
            "validation_failed",
        ),
        (
            "PUT",
            format!("/api/branches/{}/settings", w.a1.branch),
            json!({ "rental_minutes": -1 }),
            "validation_failed",
        ),
        (
            "PUT",
            format!("/api/branches/{}/settings", w.a1.branch),
            json!({ "rental_minutes": 1e9 }),
            "validation_failed",
        ),
        (
            "PUT",
            format!("/api/branches/{}/settings", w.a1.branch),
            json!({ "language": ["he"] }),
            "validation_failed",
        ),
        (
            "PUT",
            format!("/api/branches/{}/settings", w.a1.branch),
            json!({ "when_sms_unavailable": "x".repeat(10_000) }),
            "validation_failed",
        ),
        (
            "PUT",
            format!("/api/branches/{}/settings", w.a1.branch),
            json!({ "language": huge }),
            "payload_too_large",
        ),
        (
            "POST",
            "/api/users".into(),
            json!({ "login": "u", "password": "long enough pw", "role": "viewer", "chain_id": "nope" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/users".into(),
            json!({ "login": "u", "password": "long enough pw", "role": "viewer",
                    "chain_id": chain, "branch_ids": "all" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/users".into(),
            json!({ "login": "u", "password": "long enough pw", "role": "chain_admin",
                    "chain_id": uuid::Uuid::new_v4() }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/users".into(),
            json!({ "login": "u\u{0}", "password": "long enough pw", "role": "viewer" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/users".into(),
            json!({ "login": "u", "password": "p".repeat(300), "role": "viewer" }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/users".into(),
            json!({ "login": "u", "password": "long enough pw", "role": "platform_admin",
                    "chain_id": chain }),
            "validation_failed",
        ),
        (
            "POST",
            "/api/users".into(),
            json!({ "login": "u", "password": "long enough pw", "role": "viewer",
                    "branch_ids": vec![uuid::Uuid::nil(); 1001] }),
            "validation_failed",
        ),
        (
            "PUT",
            format!("/api/users/{}", uuid::Uuid::nil()),
            json!({ "role": 3 }),
            "validation_failed",
        ),
    ];
    for (method, path, body, code) in cases {
        let (status, answer) = call(&app, method, &path, admin, Some(body.clone())).await;
        assert_4xx(&format!("{method} {path} {body}"), status, &answer);
        assert_eq!(
            answer["error"]["code"], code,
            "{method} {path} {body}: {answer}"
        );
    }

    // Not JSON, wrong content type, no content type, truncated JSON.
    for (content_type, text, code) in [
        (Some("application/json"), "{\"name\": ", "invalid_json"),
        (Some("application/json"), "not json", "invalid_json"),
        (
            Some("text/plain"),
            "{\"name\":\"a\",\"slug\":\"a\"}",
            "unsupported_media_type",
        ),
        (
            None,
            "{\"name\":\"a\",\"slug\":\"a\"}",
            "unsupported_media_type",
        ),
    ] {
        let mut request = Request::post("/api/chains").header(
            header::AUTHORIZATION,
            format!("Bearer {}", w.token(Role::PlatformAdmin)),
        );
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let (status, body) = raw(&app, request.body(Body::from(text)).unwrap()).await;
        assert_4xx(text, status, &body);
        assert_eq!(body["error"]["code"], code, "{body}");
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn bad_ids_and_parameters_are_4xx_in_the_error_shape(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let admin = Some(w.token(Role::PlatformAdmin));
    let b = w.a1.branch;
    let (status, doc) = call(&app, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // Every path with an id, called with ids that are not UUIDs.
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.contains('{') {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            for bad in [
                "1",
                "not-a-uuid",
                "%00",
                "00000000-0000-0000-0000-00000000000g",
                &"9".repeat(500),
            ] {
                let concrete = path.replace("{branch_id}", bad).replace("{id}", bad);
                let body = (method != "get" && method != "delete").then(|| json!({}));
                let (status, answer) =
                    call(&app, &method.to_uppercase(), &concrete, admin, body).await;
                assert_4xx(&format!("{method} {concrete}"), status, &answer);
            }
        }
    }
    let queries = [
        "/api/chains?page=0".to_owned(),
        "/api/chains?page=-1".to_owned(),
        "/api/chains?page=abc".to_owned(),
        "/api/chains?per_page=100000".to_owned(),
        "/api/chains?per_page=99999999999999999999".to_owned(),
        "/api/chains?active=maybe".to_owned(),
        "/api/chains?q=%00".to_owned(),
        "/api/branches?chain_id=xyz".to_owned(),
        format!("/api/branches/{b}/rentals/history?since=yesterday"),
        format!("/api/branches/{b}/rentals/history?since=0001-01-01T00:00:00Z"),
        format!("/api/branches/{b}/rentals/history?until=+99999-01-01T00:00:00Z"),
        format!("/api/branches/{b}/rentals/history?cart_number=99999999999"),
        format!(
            "/api/branches/{b}/rentals/stats?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z"
        ),
        format!("/api/branches/{b}/rentals/active?overdue=2"),
        format!(
            "/api/telemetry/devices/{}?since=1969-12-31T23:59:59Z",
            w.a1.device
        ),
        format!("/api/telemetry/branches/{b}?event_type={}", "e".repeat(51)),
        "/api/audit?since=not-a-time".to_owned(),
        "/api/audit?branch_id=1".to_owned(),
    ];
    for path in queries {
        let (status, body) = call(&app, "GET", &path, admin, None).await;
        assert_4xx(&path, status, &body);
    }
    // A wrong method is 405 in the error shape.
    let (status, body) = call(&app, "PATCH", "/api/chains", admin, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error_shape(status, &body);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn heartbeats_without_valid_device_credentials_are_refused(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let path = format!("/api/devices/{}/heartbeat", w.a1.device);
    // A user's token is not a device credential.
    let (status, body) = call(
        &app,
        "POST",
        &path,
        Some(w.token(Role::PlatformAdmin)),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(assert_error_shape(status, &body), "device_unauthenticated");
    let now = chrono::Utc::now().timestamp_millis().to_string();
    for (cert, signature, timestamp) in [
        ("!!", "AA==", now.as_str()),
        ("AAAA", "AA==", now.as_str()),
        ("AAAA", "AA==", "yesterday"),
        ("AAAA", "AA==", "0"),
    ] {
        let request = Request::post(&path)
            .header("x-cartwise-device-cert", cert)
            .header("x-cartwise-device-signature", signature)
            .header("x-cartwise-timestamp", timestamp)
            .body(Body::from("{}"))
            .unwrap();
        let (status, body) = raw(&app, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_error_shape(status, &body);
    }
    let request = Request::post(&path)
        .body(Body::from("x".repeat(10_000)))
        .unwrap();
    let (status, body) = raw(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

/// Junk for a path id, a query value or a JSON field.
fn junk_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("null".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("1e309".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("%00".to_owned()),
        Just("..%2F..".to_owned()),
        Just("00000000-0000-0000-0000-000000000000".to_owned()),
        Just("+99999-01-01T00:00:00Z".to_owned()),
        Just("2026-01-01T00:00:00Z".to_owned()),
        "[a-zA-Z0-9_.-]{0,40}",
        "\\PC{0,20}".prop_map(|s| s
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()),
    ]
}

fn junk_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,30}".prop_map(Value::from),
        Just(Value::from("\u{0}")),
        Just(Value::from("x".repeat(300))),
        Just(Value::from("00000000-0000-0000-0000-000000000000")),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn requests_generated_from_the_openapi_document_never_get_a_5xx(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let doc = cartwise_cloud_hub::api::document();
    // (method, path, query parameter names, body property names)
    let mut operations: Vec<(String, String, Vec<String>, Vec<String>)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if path == "/api/auth/logout" {
                continue; // it would end the tokens the run uses; it takes no input
            }
            let query = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            let body = op["requestBody"]["content"]["application/json"]["schema"]["properties"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            operations.push((method.to_uppercase(), path.clone(), query, body));
        }
    }
    let real_ids = [
        w.a1.branch,
        w.a2.branch,
        w.b1.branch,
        w.a1.device,
        w.b1.device,
        w.a1.cart,
        w.a1.chain,
        w.b1.chain,
    ]
    .map(|id| id.to_string());
    let tokens = [
        w.token(Role::PlatformAdmin).to_owned(),
        w.token(Role::Viewer).to_owned(),
        w.token(Role::ChainAdmin).to_owned(),
        "junk".to_owned(),
    ];
    let cases: usize = std::env::var("API_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);

    let strategy = (
        0..operations.len(),
        prop::collection::vec(
            prop_oneof![
                (0..real_ids.len()).prop_map(|i| (true, i.to_string())),
                junk_text().prop_map(|s| (false, s)),
            ],
            2,
        ),
        prop::collection::vec((any::<prop::sample::Index>(), junk_text()), 0..4),
        prop::collection::vec((any::<prop::sample::Index>(), junk_json()), 0..5),
        junk_json(),
        any::<bool>(),
        0..tokens.len(),
    );
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    for case in 0..cases {
        let (op, ids, query, fields, raw_body, use_fields, token) =
            strategy.new_tree(&mut runner).unwrap().current();
        let (method, path, query_names, body_names) = &operations[op];
        let id = |n: usize| {
            let (real, text) = &ids[n];
            if *real {
                real_ids[text.parse::<usize>().unwrap()].clone()
            } else {
                url_escape(text)
            }
        };
        let mut concrete = path.replace("{branch_id}", &id(0)).replace("{id}", &id(1));
        if !query_names.is_empty() && !query.is_empty() {
            let pairs: Vec<String> = query
                .iter()
                .map(|(i, v)| format!("{}={}", i.get(query_names), url_escape(v)))
                .collect();
            concrete = format!("{concrete}?{}", pairs.join("&"));
        }
        let body = if method == "GET" || method == "DELETE" {
            None
        } else if use_fields && !body_names.is_empty() {
            Some(Value::Object(
                fields
                    .into_iter()
                    .map(|(i, v)| (i.get(body_names).clone(), v))
                    .collect(),
            ))
        } else {
            Some(raw_body)
        };
        let (status, answer) =
            call(&app, method, &concrete, Some(&tokens[token]), body.clone()).await;
        assert!(
            !status.is_server_error(),
            "case {case}: {method} {concrete} body {body:?} → {status} {answer}"
        );
        if !status.is_success() {
            assert_error_shape(status, &answer);
        }
        *seen.entry(status.as_u16()).or_default() += 1;
    }
    // The run must reach the handlers, not only the authentication in front of them.
    println!("statuses over {cases} generated requests: {seen:?}");
    let reached: usize = seen
        .iter()
        .filter(|(s, _)| **s != 401)
        .map(|(_, n)| n)
        .sum();
    assert!(
        reached * 2 > cases,
        "most requests must get past authentication: {seen:?}"
    );
    assert!(
        seen.range(200..300).count() > 0 && seen.contains_key(&400),
        "{seen:?}"
    );
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'%' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
