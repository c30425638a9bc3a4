//! The dashboard's embedded assets and the change stream behind its live view.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::time::Duration;

use api_support::{call, world};
use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::http::{Request, StatusCode, header};
use cartwise_cloud_hub::dashboard;
use cartwise_cloud_hub::users::Role;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

async fn get(app: Router, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn every_asset_is_served_with_its_content_type() {
    let app: Router = dashboard::router();
    let expected = [
        ("index.html", "text/html; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
        ("dashboard.js", "text/javascript; charset=utf-8"),
        ("i18n.js", "text/javascript; charset=utf-8"),
        ("charts.js", "text/javascript; charset=utf-8"),
    ];
    assert_eq!(dashboard::ASSETS.len(), expected.len());
    for (name, content_type) in expected {
        let (status, headers, body) = get(app.clone(), &format!("/dashboard/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(headers[header::CONTENT_TYPE], content_type, "{name}");
        let on_disk = std::fs::read_to_string(format!(
            "{}/assets/dashboard/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert_eq!(body, on_disk, "{name} is served as it is on disk");
    }
    let (status, headers, body) = get(app.clone(), "/dashboard/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(body.contains("<html"));
    for from in ["/", "/dashboard"] {
        let (status, headers, _) = get(app.clone(), from).await;
        assert_eq!(status, StatusCode::TEMPORARY_REDIRECT, "{from}");
        assert_eq!(headers[header::LOCATION], "/dashboard/", "{from}");
    }
    let (status, _, _) = get(app, "/dashboard/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn the_assets_name_no_external_url_and_reference_only_served_files() {
    let dir = format!("{}/assets/dashboard", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut served: Vec<String> = dashboard::ASSETS
        .iter()
        .map(|(name, _, _)| (*name).to_owned())
        .collect();
    served.sort();
    assert_eq!(
        files, served,
        "every file in the folder is embedded, and only those"
    );
    for name in &files {
        let text = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
        let lower = text.to_lowercase();
        for scheme in ["http://", "https://", "//cdn", "@import"] {
            assert!(!lower.contains(scheme), "{name} mentions {scheme}");
        }
    }
    let index = std::fs::read_to_string(format!("{dir}/index.html")).unwrap();
    let mut referenced = 0;
    for attr in ["src=\"", "href=\""] {
        for part in index.split(attr).skip(1) {
            let target = part.split('"').next().unwrap();
            if target.starts_with('#') {
                continue;
            }
            assert!(
                files.iter().any(|f| f == target),
                "index.html loads {target}"
            );
            referenced += 1;
        }
    }
    assert_eq!(
        referenced,
        files.len() - 1,
        "index.html loads every other asset"
    );
}

async fn open_stream(app: &Router, path: &str, token: &str) -> (StatusCode, BodyDataStream) {
    let response = app
        .clone()
        .oneshot(
            Request::get(path)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    if status == StatusCode::OK {
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
    }
    (status, response.into_body().into_data_stream())
}

/// The next event (name and JSON data) on the stream, skipping keep-alive comments.
async fn next_event(stream: &mut BodyDataStream, buffer: &mut String) -> (String, Value) {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if name.is_empty() {
                continue; // a comment (keep-alive)
            }
            return (name, serde_json::from_str(&data).unwrap());
        }
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("an event within 20 s")
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_event_stream_is_scoped_like_the_api(pool: PgPool) {
    let w = world(&pool).await;
    let app = api_support::app(&pool);
    let manager = w.token(Role::BranchManager);
    for foreign in [w.a2.branch, w.b1.branch, uuid::Uuid::new_v4()] {
        let (status, _) =
            open_stream(&app, &format!("/api/events?branch_id={foreign}"), manager).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "branch {foreign}");
    }
    let (status, _) = open_stream(&app, "/api/events", manager).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = open_stream(&app, "/api/events?branch_id=not-a-uuid", manager).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/events?branch_id={}", w.a1.branch),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api_support::assert_error_shape(status, &body);
    let (status, _) = open_stream(
        &app,
        &format!("/api/events?branch_id={}", w.a2.branch),
        w.token(Role::PlatformAdmin),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a platform admin sees every branch");
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_change_to_the_branch_arrives_on_its_stream(pool: PgPool) {
    let w = world(&pool).await;
    let app = api_support::app(&pool);
    let manager = w.token(Role::BranchManager);
    let (status, mut mine) = open_stream(
        &app,
        &format!("/api/events?branch_id={}", w.a1.branch),
        manager,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, mut other) = open_stream(
        &app,
        &format!("/api/events?branch_id={}", w.a2.branch),
        w.token(Role::PlatformAdmin),
    )
    .await;
    let mut buffer = String::new();
    let mut other_buffer = String::new();
    let (name, data) = next_event(&mut mine, &mut buffer).await;
    assert_eq!(name, "ready");
    assert_eq!(data["branch_id"], json!(w.a1.branch));
    assert_eq!(next_event(&mut other, &mut other_buffer).await.0, "ready");
    // The first cart of A1 is post 1 on A1's device.
    let (status, body) = call(
        &app,
        "POST",
        &format!("/api/branches/{}/intents", w.a1.branch),
        Some(manager),
        Some(json!({ "kind": "out_of_service", "post": 1 })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["status"], "pending");
    let (name, data) = next_event(&mut mine, &mut buffer).await;
    assert_eq!(name, "change");
    assert_eq!(data["branch_id"], json!(w.a1.branch));
    assert_eq!(data["topic"], "intents");
    // The intent shows in the branch's list, pending; nothing arrived for the other branch.
    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{}/intents", w.a1.branch),
        Some(manager),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["kind"], "out_of_service");
    assert_eq!(body["data"][0]["post"], 1);
    assert_eq!(body["data"][0]["status"], "pending");
    let quiet = tokio::time::timeout(Duration::from_millis(500), other.next()).await;
    assert!(quiet.is_err(), "no event for another branch's change");
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn post_intents_check_their_input_and_role(pool: PgPool) {
    let w = world(&pool).await;
    let app = api_support::app(&pool);
    let path = format!("/api/branches/{}/intents", w.a1.branch);
    let manager = w.token(Role::BranchManager);
    for (body, code) in [
        (
            json!({ "kind": "explode", "post": 1 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "kind": "note", "post": 1 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "kind": "unlock", "post": 1, "text": "x" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "kind": "unlock", "post": 0 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "kind": "unlock", "post": 70000 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "kind": "unlock", "post": 99 }),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, answer) = call(&app, "POST", &path, Some(manager), Some(body.clone())).await;
        assert_eq!(status, code, "{body} → {answer}");
        api_support::assert_error_shape(status, &answer);
    }
    let (status, _) = call(
        &app,
        "POST",
        &path,
        Some(w.token(Role::Viewer)),
        Some(json!({ "kind": "unlock", "post": 1 })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = call(
        &app,
        "POST",
        &path,
        Some(manager),
        Some(json!({ "kind": "note", "post": 1, "text": "wobbly wheel" })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["kind"], "note");
    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{}/devices", w.a1.branch),
        Some(manager),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["id"], json!(w.a1.device));
    assert_eq!(body["data"][0]["pending_intents"], 1);
    let (status, _) = call(
        &app,
        "GET",
        &format!("/api/branches/{}/devices", w.b1.branch),
        Some(manager),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn event_streams_are_bounded(pool: PgPool) {
    use cartwise_cloud_hub::api::events::SSE_CLIENTS_MAX;
    let w = world(&pool).await;
    let app = api_support::app(&pool);
    let admin = w.token(Role::PlatformAdmin);
    let path = format!("/api/events?branch_id={}", w.a1.branch);
    let mut open = Vec::with_capacity(SSE_CLIENTS_MAX);
    for _ in 0..SSE_CLIENTS_MAX {
        let (status, stream) = open_stream(&app, &path, admin).await;
        assert_eq!(status, StatusCode::OK);
        open.push(stream);
    }
    let (status, body) = call(&app, "GET", &path, Some(admin), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        api_support::assert_error_shape(status, &body),
        "too_many_streams"
    );
    // A closed stream frees its place.
    drop(open.pop());
    let (status, _) = open_stream(&app, &path, admin).await;
    assert_eq!(status, StatusCode::OK);
}

/// With the sync server in the process, a merge reaches the stream through the server's own
/// broadcast, as the merge workers publish it after their commit: no poll in between. The
/// change announced here is a device document no poll or `NOTIFY` would ever report (it has no
/// stored row), so only the push path can deliver it.
#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn merges_are_pushed_from_the_sync_servers_broadcast(pool: PgPool) {
    use cartwise_schema::{BranchId, DeviceId};
    use cartwise_sync_core::DocId;
    let w = world(&pool).await;
    let server = cartwise_cloud_hub::sync_server::SyncServer::new(
        pool.clone(),
        std::sync::Arc::new(cartwise_cloud_hub::clock::HubClock::new()),
    );
    cartwise_cloud_hub::metrics::register_sync_server(&server);
    let app = api_support::app(&pool);
    let (status, mut stream) = open_stream(
        &app,
        &format!("/api/events?branch_id={}", w.a1.branch),
        w.token(Role::BranchManager),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut buffer = String::new();
    assert_eq!(next_event(&mut stream, &mut buffer).await.0, "ready");
    let doc = DocId::Device {
        device: DeviceId::from_uuid(w.a1.device),
        epoch: 0,
    };
    // What a merge worker does after its commit.
    server
        .events()
        .publish(BranchId::from_uuid(w.a1.branch), doc);
    // Keep-alive comments would keep `next_event` waiting forever: bound the whole wait.
    let (name, data) = tokio::time::timeout(
        Duration::from_secs(20),
        next_event(&mut stream, &mut buffer),
    )
    .await
    .expect("the merge is pushed to the stream");
    assert_eq!(name, "change");
    assert_eq!(data["topic"], "branch");
    assert_eq!(data["doc"], doc.to_string());
    // Another branch's merge is not on this stream.
    server.events().publish(
        BranchId::from_uuid(w.a2.branch),
        DocId::Device {
            device: DeviceId::from_uuid(w.a2.device),
            epoch: 0,
        },
    );
    let quiet = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(quiet.is_err(), "no event for another branch's merge");
}
