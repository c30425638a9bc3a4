//! Every `/api` endpoint's happy path through the real router, the login flow, and the OpenAPI
//! document against the router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use api_support::{MASKED, PASSWORD, PHONE, app, assert_error_shape, call, raw, world};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cartwise_cloud_hub::users::Role;
use serde_json::json;
use sqlx::PgPool;
use tower::ServiceExt;

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn login_sets_a_strict_cookie_and_the_cookie_and_token_work_until_logout(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let response = app
        .clone()
        .oneshot(
            Request::post("/api/auth/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({ "login": "branch_manager", "password": PASSWORD, "issue_token": true })
                        .to_string(),
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["data"]["role"], "branch_manager");
    assert_eq!(body["data"]["scope"]["branch_ids"], json!([w.a1.branch]));
    let token = body["data"]["token"].as_str().unwrap().to_owned();
    let session = cookie.split(';').next().unwrap().to_owned();

    let me = |credential: (&'static str, String)| {
        let app = app.clone();
        async move {
            raw(
                &app,
                Request::get("/api/auth/me")
                    .header(credential.0, credential.1)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
        }
    };
    let (status, body) = me(("cookie", session.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["login"], "branch_manager");
    let (status, _) = me(("authorization", format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::OK);

    // Logging out with the cookie ends the session, not the token.
    let (status, _) = raw(
        &app,
        Request::post("/api/auth/logout")
            .header("cookie", session.clone())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = me(("cookie", session)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(assert_error_shape(status, &body), "unauthenticated");
    let (status, _) = me(("authorization", format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::OK);

    // A wrong password and an unknown login answer alike, and both are audited.
    for login in ["branch_manager", "nobody"] {
        let (status, body) = call(
            &app,
            "POST",
            "/api/auth/login",
            None,
            Some(json!({ "login": login, "password": "wrong password!" })),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(assert_error_shape(status, &body), "invalid_credentials");
    }
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'auth.login_failed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(failed, 2);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn login_is_rate_limited_per_login(pool: PgPool) {
    world(&pool).await;
    let mut config = cartwise_cloud_hub::api::ApiConfig::default();
    config.login_limit.max = 3;
    let app = api_support::app_with(&pool, config);
    let attempt = |password: &'static str| {
        let app = app.clone();
        async move {
            call(
                &app,
                "POST",
                "/api/auth/login",
                None,
                Some(json!({ "login": "viewer", "password": password })),
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(attempt("wrong password!").await.0, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = attempt(PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(assert_error_shape(status, &body), "rate_limited");
    // Another login is not limited by this one's failures.
    let (status, _) = call(
        &app,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({ "login": "technician", "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn writes_are_rate_limited_per_user(pool: PgPool) {
    let w = world(&pool).await;
    let mut config = cartwise_cloud_hub::api::ApiConfig::default();
    config.write_limit.max = 2;
    let app = api_support::app_with(&pool, config);
    let admin = w.token(Role::PlatformAdmin);
    for i in 0..2 {
        let (status, body) = call(
            &app,
            "POST",
            "/api/chains",
            Some(admin),
            Some(json!({ "name": format!("c{i}"), "slug": format!("c{i}") })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = call(
        &app,
        "POST",
        "/api/chains",
        Some(admin),
        Some(json!({ "name": "c3", "slug": "c3" })),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_error_shape(status, &body);
    // Reads are not writes.
    assert_eq!(
        call(&app, "GET", "/api/chains", Some(admin), None).await.0,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn chains_and_branches_round_trip_and_are_audited(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let admin = Some(w.token(Role::PlatformAdmin));

    let (status, body) = call(
        &app,
        "POST",
        "/api/chains",
        admin,
        Some(json!({ "name": "Rami Levy", "slug": "rami-levy", "description": "x" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let chain = body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["data"]["branch_count"], 0);

    let (status, body) = call(
        &app,
        "PUT",
        &format!("/api/chains/{chain}"),
        admin,
        Some(json!({ "name": "Rami Levy Hashikma", "description": null })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["name"], "Rami Levy Hashikma");
    assert_eq!(body["data"]["slug"], "rami-levy");
    assert_eq!(body["data"]["description"], serde_json::Value::Null);

    let (status, body) = call(
        &app,
        "POST",
        "/api/branches",
        admin,
        Some(json!({
        "chain_id": chain, "name": "Talpiot", "branch_code": "RL-TLP", "city": "Jerusalem",
        "latitude": 31.75, "longitude": 35.21 })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let branch = body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["data"]["latitude"], 31.75);

    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches?chain_id={chain}"),
        admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["pagination"]["total"], 1);
    assert_eq!(body["data"][0]["id"], branch.as_str());

    let (status, body) = call(&app, "GET", &format!("/api/branches/{branch}"), admin, None).await;
    assert_eq!(
        (status, body["data"]["branch_code"].as_str()),
        (StatusCode::OK, Some("RL-TLP"))
    );

    let (status, body) = call(&app, "GET", &format!("/api/chains/{chain}"), admin, None).await;
    assert_eq!(
        (status, body["data"]["branch_count"].as_i64()),
        (StatusCode::OK, Some(1))
    );

    // Pagination: three chains, two per page.
    let (status, body) = call(&app, "GET", "/api/chains?per_page=2&page=2", admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["pagination"],
        json!({ "page": 2, "per_page": 2, "total": 3, "total_pages": 2 })
    );
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (_, body) = call(&app, "GET", "/api/chains?q=hashikma", admin, None).await;
    assert_eq!(body["pagination"]["total"], 1);

    // A chain with rentals cannot be deleted; an empty one can.
    let (status, body) = call(
        &app,
        "DELETE",
        &format!("/api/chains/{}", w.b1.chain),
        admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error_shape(status, &body);
    let (status, _) = call(&app, "DELETE", &format!("/api/chains/{chain}"), admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, "GET", &format!("/api/chains/{chain}"), admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = call(&app, "GET", "/api/audit?per_page=200", admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let actions: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["action"].as_str().unwrap())
        .collect();
    for action in [
        "chain.create",
        "chain.update",
        "branch.create",
        "chain.delete",
    ] {
        assert!(
            actions.contains(&action),
            "{action} not audited: {actions:?}"
        );
    }
    let (_, body) = call(
        &app,
        "GET",
        "/api/audit?action=chain.create&actor=platform_admin",
        admin,
        None,
    )
    .await;
    assert_eq!(body["pagination"]["total"], 1);
    // The log is append-only.
    let error = sqlx::query("UPDATE audit_log SET action = 'x'")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    assert!(
        sqlx::query("DELETE FROM audit_log")
            .execute(&pool)
            .await
            .is_err()
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn branch_reads_carts_rentals_and_telemetry_answer(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let manager = Some(w.token(Role::BranchManager));
    let b = w.a1.branch;

    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/stats"),
        manager,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["carts_total"], 2);
    assert_eq!(body["data"]["rentals"]["active"], 1);
    assert_eq!(body["data"]["rentals"]["overdue"], 1);
    assert_eq!(body["data"]["devices"]["total"], 1);

    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/carts"),
        manager,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["pagination"]["total"], 2);
    assert_eq!(body["data"][0]["assigned_to"], PHONE);
    let (_, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/carts?status=available"),
        manager,
        None,
    )
    .await;
    assert_eq!(body["pagination"]["total"], 1);
    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/carts/{}", w.a1.cart),
        manager,
        None,
    )
    .await;
    assert_eq!(
        (status, body["data"]["cart_number"].as_i64()),
        (StatusCode::OK, Some(1))
    );
    // A cart of another branch is not found through this branch.
    let (status, _) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/carts/{}", w.a2.cart),
        Some(w.token(Role::PlatformAdmin)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/rentals/active"),
        manager,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["pagination"]["total"], 1);
    assert_eq!(body["data"][0]["id"], w.a1.rental.to_string());
    assert_eq!(body["data"][0]["overdue"], true);
    assert_eq!(body["data"][0]["user_phone"], PHONE);

    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/rentals/history"),
        manager,
        None,
    )
    .await;
    assert_eq!(
        (status, body["pagination"]["total"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    let (_, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/rentals/history?status=returned"),
        manager,
        None,
    )
    .await;
    assert_eq!(body["pagination"]["total"], 1);
    let (_, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/rentals/history?phone=%2B972501234567"),
        manager,
        None,
    )
    .await;
    assert_eq!(body["pagination"]["total"], 2);

    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/rentals/stats"),
        manager,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["total"], 2);
    assert_eq!(body["data"]["by_status"]["returned"], 1);
    assert_eq!(body["data"]["average_duration_minutes"], 60.0);

    // Viewers and technicians see masked phones and cannot search by phone.
    for role in [Role::Viewer, Role::Technician] {
        let token = Some(w.token(role));
        let (_, body) = call(
            &app,
            "GET",
            &format!("/api/branches/{b}/rentals/active"),
            token,
            None,
        )
        .await;
        assert_eq!(body["data"][0]["user_phone"], MASKED, "{role}");
        let (_, body) = call(
            &app,
            "GET",
            &format!("/api/branches/{b}/carts/{}", w.a1.cart),
            token,
            None,
        )
        .await;
        assert_eq!(body["data"]["assigned_to"], MASKED, "{role}");
        let (status, _) = call(
            &app,
            "GET",
            &format!("/api/branches/{b}/rentals/history?phone=%2B972501234567"),
            token,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/telemetry/devices/{}", w.a1.device),
        manager,
        None,
    )
    .await;
    assert_eq!(
        (status, body["pagination"]["total"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    let (_, body) = call(
        &app,
        "GET",
        &format!("/api/telemetry/devices/{}?event_type=boot", w.a1.device),
        manager,
        None,
    )
    .await;
    assert_eq!(body["pagination"]["total"], 1);
    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/telemetry/branches/{b}"),
        manager,
        None,
    )
    .await;
    assert_eq!(
        (status, body["pagination"]["total"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    // The chain's telemetry holds only what the caller's scope sees: A1's rows for the manager,
    // A1's and A2's for the chain admin.
    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/telemetry/chains/{}", w.a1.chain),
        manager,
        None,
    )
    .await;
    assert_eq!(
        (status, body["pagination"]["total"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    let (_, body) = call(
        &app,
        "GET",
        &format!("/api/telemetry/chains/{}", w.a1.chain),
        Some(w.token(Role::ChainAdmin)),
        None,
    )
    .await;
    assert_eq!(body["pagination"]["total"], 4);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn register_returns_what_a_device_needs_to_enroll(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let tech = Some(w.token(Role::Technician));
    let (status, body) = call(&app, "POST", "/api/devices/register", tech,
        Some(json!({ "branch_id": w.a1.branch, "device_name": "corral-pi-2", "expires_in_minutes": 90 }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let data = &body["data"];
    let code = data["code"].as_str().unwrap();
    assert_eq!(code.len(), 24, "grouped code: {code}");
    assert!(data["enroll_url"].as_str().unwrap().contains(code));
    assert_eq!(data["hub"], "localhost:4433");
    assert_eq!(data["qr"], data["enroll_url"]);
    // The code enrolls the device it names.
    let device = data["device_id"].as_str().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = cartwise_sync_core::identity::device_csr_params()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let enrolled = cartwise_cloud_hub::enroll::enroll(&pool, code, &csr)
        .await
        .unwrap();
    assert_eq!(enrolled.identity.device.as_uuid().to_string(), device);

    let (status, body) = call(&app, "GET", &format!("/api/devices/{device}"), tech, None).await;
    assert_eq!(
        (status, body["data"]["device_name"].as_str()),
        (StatusCode::OK, Some("corral-pi-2"))
    );
    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/devices/{device}/status"),
        tech,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["enrolled"], true);
    assert_eq!(body["data"]["status"], "offline");
    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/devices/{}/status", w.a1.device),
        tech,
        None,
    )
    .await;
    assert_eq!(
        (status, body["data"]["status"].as_str()),
        (StatusCode::OK, Some("not_enrolled"))
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn every_documented_operation_is_routed_and_every_issue_endpoint_documented(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let (status, doc) = call(&app, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["responses"]
                    .as_object()
                    .unwrap()
                    .contains_key("400")
            );
            assert!(operation["operationId"].is_string());
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    let expected = [
        "GET /api/chains",
        "POST /api/chains",
        "GET /api/chains/{id}",
        "PUT /api/chains/{id}",
        "DELETE /api/chains/{id}",
        "GET /api/branches",
        "POST /api/branches",
        "GET /api/branches/{id}",
        "GET /api/branches/{id}/stats",
        "POST /api/devices/register",
        "POST /api/devices/{id}/heartbeat",
        "GET /api/devices/{id}",
        "GET /api/devices/{id}/status",
        "GET /api/branches/{branch_id}/carts",
        "GET /api/branches/{branch_id}/carts/{id}",
        "GET /api/branches/{branch_id}/rentals/active",
        "GET /api/branches/{branch_id}/rentals/history",
        "GET /api/branches/{branch_id}/rentals/stats",
        "GET /api/telemetry/devices/{id}",
        "GET /api/telemetry/branches/{id}",
        "GET /api/telemetry/chains/{id}",
        "POST /api/auth/login",
        "POST /api/auth/logout",
        "GET /api/auth/me",
        "GET /api/audit",
        "GET /api/openapi.json",
        "POST /api/branches/{branch_id}/carts/assign",
        "POST /api/branches/{branch_id}/carts/return",
        "PUT /api/devices/{id}/firmware",
        "GET /api/branches/{branch_id}/settings",
        "PUT /api/branches/{branch_id}/settings",
        "GET /api/users",
        "POST /api/users",
        "GET /api/users/{id}",
        "PUT /api/users/{id}",
        "DELETE /api/users/{id}",
    ];
    for endpoint in expected {
        let (method, path) = endpoint.split_once(' ').unwrap();
        assert!(
            operations.contains(&(method.to_owned(), path.to_owned())),
            "{endpoint} undocumented"
        );
    }
    // Every documented operation is served: called with real ids it is neither an unknown
    // route nor a wrong method.
    let admin = w.token(Role::PlatformAdmin);
    for (method, path) in &operations {
        let concrete = path
            .replace("{branch_id}", &w.a1.branch.to_string())
            .replace("{id}", &uuid::Uuid::nil().to_string());
        let body = (method != "GET" && method != "DELETE").then(|| json!({}));
        let (status, body) = call(&app, method, &concrete, Some(admin), body).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !status.is_server_error(),
            "{method} {path}: {status} {body}"
        );
        if status == StatusCode::NOT_FOUND {
            assert_ne!(body["error"]["message"], "no such route", "{method} {path}");
        }
    }
    // And an undocumented path is an unknown route in the error shape.
    let (status, body) = call(&app, "GET", "/api/nope", Some(admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "no such route");
    assert_error_shape(status, &body);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn cart_and_firmware_intents_go_to_the_owning_device(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let manager = Some(w.token(Role::BranchManager));
    let b = w.a1.branch;

    let (status, body) = call(
        &app,
        "POST",
        &format!("/api/branches/{b}/carts/assign"),
        manager,
        Some(json!({ "cart_number": 1, "phone": "050-1234567" })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["kind"], "assign_cart");
    assert_eq!(body["data"]["status"], "pending");
    assert_eq!(body["data"]["device_id"], w.a1.device.to_string());
    assert_eq!(body["data"]["post"], 1);
    assert!(
        body["data"]["expires_at"].is_string(),
        "a counter lend expires: {body}"
    );
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM intents WHERE kind = 'assign_cart'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(payload["phone"], PHONE);

    let (status, body) = call(
        &app,
        "POST",
        &format!("/api/branches/{b}/carts/assign"),
        manager,
        Some(json!({ "device_id": w.a1.device, "phone": PHONE })),
    )
    .await;
    assert_eq!(
        (status, body["data"]["post"].clone()),
        (StatusCode::ACCEPTED, serde_json::Value::Null),
        "{body}"
    );

    let (status, body) = call(
        &app,
        "POST",
        &format!("/api/branches/{b}/carts/return"),
        manager,
        Some(json!({ "cart_id": w.a1.cart })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["kind"], "force_return");

    let tech = Some(w.token(Role::Technician));
    let (status, body) = call(
        &app,
        "PUT",
        &format!("/api/devices/{}/firmware", w.a1.device),
        tech,
        Some(json!({ "version": "1.5.0" })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["kind"], "set_firmware");

    // Every intent is in the audit log, by the user who asked.
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE actor_id IN ('branch_manager', 'technician') \
         AND detail->>'kind' IN ('assign_cart', 'force_return', 'set_firmware')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 4);

    // Refusals: a cart no device owns, a bad phone, an ambiguous cart, a bad version.
    for (path, body, code) in [
        (
            "assign",
            json!({ "cart_number": 2, "phone": PHONE }),
            "conflict",
        ),
        (
            "assign",
            json!({ "cart_number": 1, "phone": "12" }),
            "validation_failed",
        ),
        ("assign", json!({ "phone": PHONE }), "validation_failed"),
        (
            "return",
            json!({ "cart_number": 1, "cart_id": w.a1.cart }),
            "validation_failed",
        ),
        ("return", json!({ "cart_number": 99 }), "not_found"),
    ] {
        let (status, answer) = call(
            &app,
            "POST",
            &format!("/api/branches/{b}/carts/{path}"),
            manager,
            Some(body.clone()),
        )
        .await;
        assert!(status.is_client_error(), "{path} {body}: {status} {answer}");
        assert_eq!(
            assert_error_shape(status, &answer),
            code,
            "{path} {body}: {answer}"
        );
    }
    let (status, answer) = call(
        &app,
        "PUT",
        &format!("/api/devices/{}/firmware", w.a1.device),
        tech,
        Some(json!({ "version": "1.5 beta" })),
    )
    .await;
    assert_eq!(assert_error_shape(status, &answer), "validation_failed");
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn branch_settings_become_one_intent_per_device_audited_once(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let manager = Some(w.token(Role::BranchManager));
    let b = w.a1.branch;
    // A second device in the branch, and a revoked one that gets nothing.
    let second: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO devices (branch_id, device_name) VALUES ($1, 'pi-A1-2') RETURNING id",
    )
    .bind(b)
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO devices (branch_id, device_name, revoked_at) VALUES ($1, 'pi-old', now())",
    )
    .bind(b)
    .execute(&pool)
    .await
    .unwrap();

    let (status, body) = call(
        &app,
        "PUT",
        &format!("/api/branches/{b}/settings"),
        manager,
        Some(json!({ "rental_minutes": 90, "when_sms_unavailable": "token", "language": "en" })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let intents = body["data"].as_array().unwrap();
    assert_eq!(intents.len(), 6, "3 settings x 2 devices: {body}");
    let mut pairs: Vec<(String, String)> = intents
        .iter()
        .map(|i| {
            assert_eq!(i["status"], "pending");
            assert_eq!(i["created_by"], "branch_manager");
            (
                i["device_id"].as_str().unwrap().to_owned(),
                i["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    let mut expected: Vec<(String, String)> = [w.a1.device, second]
        .iter()
        .flat_map(|d| {
            ["set_language", "set_otp_policy", "set_rental_minutes"]
                .map(|k| (d.to_string(), k.to_owned()))
        })
        .collect();
    expected.sort();
    assert_eq!(pairs, expected);

    // The rows carry the values the devices read; the document holds every intent.
    let payloads: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM intents WHERE branch_id = $1 ORDER BY kind")
            .bind(b)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(payloads.contains(&json!({ "minutes": 90 })), "{payloads:?}");
    assert!(
        payloads.contains(&json!({ "language": "en" })),
        "{payloads:?}"
    );
    assert!(
        payloads.contains(&json!({ "when_sms_unavailable": "token" })),
        "{payloads:?}"
    );
    let listed = cartwise_cloud_hub::intents::list(
        &pool,
        &cartwise_cloud_hub::intents::IntentFilter {
            branch: Some(cartwise_schema::BranchId::from_uuid(b)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 6);

    // One audit row for the request, listing every intent; none per intent.
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT detail FROM audit_log WHERE action = 'branch.settings' AND actor_id = 'branch_manager'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["intents"].as_array().unwrap().len(), 6);
    assert_eq!(rows[0]["request"]["rental_minutes"], 90);
    let per_intent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'intent.created' AND branch_id = $1",
    )
    .bind(b)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(per_intent, 0);

    // GET shows each setting's newest value and each device's intent with its state.
    sqlx::query(
        "UPDATE intents SET status = 'applied', outcome_detail = 'ok', outcome_at = now() \
         WHERE device_id = $1 AND kind = 'set_language'",
    )
    .bind(w.a1.device)
    .execute(&pool)
    .await
    .unwrap();
    let viewer = Some(w.token(Role::Viewer));
    let (status, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/settings"),
        viewer,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["rental_minutes"]["value"], 90);
    assert_eq!(body["data"]["when_sms_unavailable"]["value"], "token");
    let language = &body["data"]["language"];
    assert_eq!(language["value"], "en");
    assert_eq!(language["requested_by"], "branch_manager");
    let states: Vec<(String, String)> = language["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap().to_owned(),
                d["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states.len(), 2);
    assert!(states.contains(&(w.a1.device.to_string(), "applied".to_owned())));
    assert!(states.contains(&(second.to_string(), "pending".to_owned())));

    // A newer request for one setting replaces only that one's view.
    let (status, _) = call(
        &app,
        "PUT",
        &format!("/api/branches/{b}/settings"),
        manager,
        Some(json!({ "language": "he" })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, body) = call(
        &app,
        "GET",
        &format!("/api/branches/{b}/settings"),
        viewer,
        None,
    )
    .await;
    assert_eq!(body["data"]["language"]["value"], "he");
    assert_eq!(body["data"]["rental_minutes"]["value"], 90);

    // Bad input writes nothing.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM intents")
        .fetch_one(&pool)
        .await
        .unwrap();
    for bad in [
        json!({}),
        json!({ "rental_minutes": 0 }),
        json!({ "rental_minutes": 10081 }),
        json!({ "rental_minutes": "90" }),
        json!({ "when_sms_unavailable": "allow" }),
        json!({ "language": "fr" }),
        json!({ "language": "en", "colour": "red" }),
    ] {
        let (status, answer) = call(
            &app,
            "PUT",
            &format!("/api/branches/{b}/settings"),
            manager,
            Some(bad.clone()),
        )
        .await;
        assert!(status.is_client_error(), "{bad}: {status} {answer}");
        assert_error_shape(status, &answer);
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM intents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, after);

    // A branch without an unrevoked device: 409, audited as refused, nothing written.
    sqlx::query("UPDATE devices SET revoked_at = now() WHERE branch_id = $1")
        .bind(b)
        .execute(&pool)
        .await
        .unwrap();
    let (status, answer) = call(
        &app,
        "PUT",
        &format!("/api/branches/{b}/settings"),
        manager,
        Some(json!({ "rental_minutes": 60 })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_error_shape(status, &answer);
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'intent.refused' AND target = $1",
    )
    .bind(format!("branch/{b}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(refused, 1);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn technicians_send_maintenance_unlocks_and_nothing_else_new(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let tech = Some(w.token(Role::Technician));
    let b = w.a1.branch;
    let (status, body) = call(
        &app,
        "POST",
        &format!("/api/branches/{b}/intents"),
        tech,
        Some(json!({ "kind": "unlock", "post": 1 })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["kind"], "unlock_post");
    assert_eq!(body["data"]["created_by"], "technician");
    assert_eq!(body["data"]["device_id"], w.a1.device.to_string());
    for kind in ["out_of_service", "in_service"] {
        let (status, answer) = call(
            &app,
            "POST",
            &format!("/api/branches/{b}/intents"),
            tech,
            Some(json!({ "kind": kind, "post": 1 })),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind}: {answer}");
    }
    let (status, _) = call(
        &app,
        "PUT",
        &format!("/api/branches/{b}/settings"),
        tech,
        Some(json!({ "language": "en" })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Outside its branches: 404, like a missing branch.
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/branches/{}/intents", w.a2.branch),
        tech,
        Some(json!({ "kind": "unlock", "post": 1 })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, me) = call(&app, "GET", "/api/auth/me", tech, None).await;
    let may: Vec<&str> = me["data"]["may"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(may.contains(&"maintenance_unlock"), "{me}");
    assert!(
        !may.contains(&"cart_intent") && !may.contains(&"branch_settings"),
        "{me}"
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn users_are_created_changed_and_disabled_with_their_sessions(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let admin = Some(w.token(Role::ChainAdmin));

    // Create a branch manager of A1 (the chain defaults to the admin's own).
    let (status, body) = call(
        &app,
        "POST",
        "/api/users",
        admin,
        Some(
            json!({ "login": "dana", "password": "a long password", "role": "branch_manager",
                     "branch_ids": [w.a1.branch] }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let user = &body["data"];
    assert_eq!(user["login"], "dana");
    assert_eq!(user["role"], "branch_manager");
    assert_eq!(user["chain_id"], w.a1.chain.to_string());
    assert_eq!(user["branch_ids"], json!([w.a1.branch]));
    assert_eq!(user["active"], true);
    assert!(!body.to_string().contains("password") && !body.to_string().contains("argon2"));
    let id = user["id"].as_str().unwrap().to_owned();

    // The new user signs in and works.
    let (status, login) = call(
        &app,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({ "login": "dana", "password": "a long password", "issue_token": true })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let token = login["data"]["token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &app,
        "GET",
        &format!("/api/branches/{}", w.a1.branch),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Read, list, change scope and role.
    let (status, body) = call(&app, "GET", &format!("/api/users/{id}"), admin, None).await;
    assert_eq!(
        (status, body["data"]["login"].clone()),
        (StatusCode::OK, json!("dana"))
    );
    let (_, body) = call(
        &app,
        "GET",
        "/api/users?role=branch_manager&q=dan",
        admin,
        None,
    )
    .await;
    assert_eq!(body["pagination"]["total"], 1, "{body}");
    let (status, body) = call(
        &app,
        "PUT",
        &format!("/api/users/{id}"),
        admin,
        Some(json!({ "role": "viewer", "branch_ids": [w.a1.branch, w.a2.branch] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["role"], "viewer");
    assert_eq!(body["data"]["branch_ids"].as_array().unwrap().len(), 2);
    // The role change takes effect at once, without a new sign-in.
    let (_, me) = call(&app, "GET", "/api/auth/me", Some(&token), None).await;
    assert_eq!(me["data"]["role"], "viewer");

    // Disabling ends its sessions and tokens; it cannot sign in again.
    let (status, body) = call(&app, "DELETE", &format!("/api/users/{id}"), admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["active"], false);
    let (status, _) = call(&app, "GET", "/api/auth/me", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_credentials c JOIN users u ON u.id = c.user_id \
         WHERE u.login = 'dana'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(live, 0);
    let (status, _) = call(
        &app,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({ "login": "dana", "password": "a long password" })),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Enabled again with a new password; the old one no longer works.
    let (status, body) = call(
        &app,
        "PUT",
        &format!("/api/users/{id}"),
        admin,
        Some(json!({ "active": true, "password": "another long one" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (password, expected) in [
        ("a long password", StatusCode::UNAUTHORIZED),
        ("another long one", StatusCode::OK),
    ] {
        let (status, _) = call(
            &app,
            "POST",
            "/api/auth/login",
            None,
            Some(json!({ "login": "dana", "password": password })),
        )
        .await;
        assert_eq!(status, expected, "{password}");
    }

    // Nobody disables or demotes themself.
    let own: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE login = 'chain_admin'")
        .fetch_one(&pool)
        .await
        .unwrap();
    for (method, body) in [
        ("DELETE", None),
        ("PUT", Some(json!({ "active": false }))),
        (
            "PUT",
            Some(json!({ "role": "viewer", "branch_ids": [w.a1.branch] })),
        ),
    ] {
        let (status, answer) = call(&app, method, &format!("/api/users/{own}"), admin, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method}: {answer}");
    }

    // Every change is audited, with no password in it.
    let rows: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT action, detail FROM audit_log WHERE target = $1 ORDER BY id")
            .bind(format!("user/{id}"))
            .fetch_all(&pool)
            .await
            .unwrap();
    let actions: Vec<&str> = rows.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "user.created",
            "user.updated",
            "user.disabled",
            "user.updated"
        ]
    );
    assert_eq!(rows[3].1["password_changed"], true);
    for (_, detail) in &rows {
        assert!(!detail.to_string().contains("long"), "{detail}");
    }

    // Bad input: 4xx in the error shape, nothing created.
    for bad in [
        json!({ "login": "x", "password": "short", "role": "viewer" }),
        json!({ "login": "bad login!", "password": "long enough pw", "role": "viewer" }),
        json!({ "login": "x", "password": "long enough pw", "role": "emperor" }),
        json!({ "login": "x", "password": "long enough pw" }),
        json!({ "login": "x", "password": "long enough pw", "role": "technician" }),
        json!({ "login": "x", "password": "long enough pw", "role": "technician",
                "branch_ids": [w.b1.branch] }),
        json!({ "login": "x", "password": "long enough pw", "role": "viewer", "active": false }),
        json!({ "login": "dana", "password": "long enough pw", "role": "viewer" }),
        json!({ "login": 7, "password": "long enough pw", "role": "viewer" }),
    ] {
        let (status, answer) = call(&app, "POST", "/api/users", admin, Some(bad.clone())).await;
        assert!(status.is_client_error(), "{bad}: {status} {answer}");
        assert_error_shape(status, &answer);
    }
    let x: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE login = 'x'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(x, 0);
}

#[test]
fn the_api_intent_kinds_round_trip_through_the_intents_document() {
    use cartwise_schema::{BranchId, ChainId, DeviceId};
    use cartwise_sync_core::intents::{Intent, IntentId, IntentKind, put_intent, read_intents_doc};
    let (chain, branch) = (
        ChainId::from_uuid(uuid::Uuid::now_v7()),
        BranchId::from_uuid(uuid::Uuid::now_v7()),
    );
    let device = DeviceId::from_uuid(uuid::Uuid::now_v7());
    let kinds = [
        IntentKind::AssignCart {
            post: Some(3),
            phone: PHONE.to_owned(),
        },
        IntentKind::AssignCart {
            post: None,
            phone: PHONE.to_owned(),
        },
        IntentKind::ForceReturn { post: 3 },
        IntentKind::SetFirmware {
            version: "1.5.0".to_owned(),
        },
    ];
    let mut doc = automerge::AutoCommit::new();
    let mut written = Vec::new();
    for kind in kinds {
        let intent = Intent {
            id: IntentId::from_uuid(uuid::Uuid::now_v7()),
            device,
            kind,
            created_at: 1,
            created_by: "manager".to_owned(),
            expires_at: None,
        };
        put_intent(&mut doc, chain, branch, &intent).unwrap();
        written.push(intent);
    }
    let read = read_intents_doc(&doc);
    assert!(read.skipped.is_empty(), "{:?}", read.skipped);
    assert_eq!(read.intents, written);
    // Out-of-range arguments are refused by the writer.
    for kind in [
        IntentKind::AssignCart {
            post: None,
            phone: "0501234567".to_owned(),
        },
        IntentKind::SetFirmware {
            version: String::new(),
        },
        IntentKind::ForceReturn { post: 0 },
    ] {
        assert!(kind.validate().is_err(), "{kind:?}");
    }
}
