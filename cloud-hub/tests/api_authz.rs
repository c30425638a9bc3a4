//! The authorisation matrix: each role × its own branch / a foreign branch of its chain / a
//! foreign chain × read / write. Allowed exactly where it should be, 403 where the caller sees
//! the resource but may not change it, 404 (indistinguishable from a missing id) elsewhere, and
//! nothing of a foreign scope in lists or counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::collections::BTreeSet;

use api_support::{BranchIds, World, app, assert_error_shape, call, world};
use axum::http::StatusCode;
use cartwise_cloud_hub::users::Role;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Which of the three places a caller sees.
fn sees(w: &World, role: Role, place: &BranchIds) -> bool {
    match role {
        Role::PlatformAdmin => true,
        Role::ChainAdmin => place.chain == w.a1.chain,
        _ => place.branch == w.a1.branch,
    }
}

fn reads(p: &BranchIds) -> Vec<String> {
    let (b, d) = (p.branch, p.device);
    vec![
        format!("/api/branches/{b}"),
        format!("/api/branches/{b}/stats"),
        format!("/api/branches/{b}/carts"),
        format!("/api/branches/{b}/carts/{}", p.cart),
        format!("/api/branches/{b}/rentals/active"),
        format!("/api/branches/{b}/rentals/history"),
        format!("/api/branches/{b}/rentals/stats"),
        format!("/api/devices/{d}"),
        format!("/api/devices/{d}/status"),
        format!("/api/telemetry/devices/{d}"),
        format!("/api/telemetry/branches/{b}"),
    ]
}

/// A 404 for a foreign resource must read exactly like a 404 for an id that does not exist.
fn same_as_missing(body: &Value, missing: &Value) {
    assert_eq!(body["error"]["code"], missing["error"]["code"]);
    assert_eq!(body["error"]["message"], missing["error"]["message"]);
    assert_eq!(body["error"]["details"], missing["error"]["details"]);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn reads_are_allowed_exactly_in_scope(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let missing = BranchIds {
        chain: Uuid::new_v4(),
        branch: Uuid::new_v4(),
        device: Uuid::new_v4(),
        cart: Uuid::new_v4(),
        rental: Uuid::new_v4(),
    };
    for role in Role::ALL {
        let token = Some(w.token(role));
        let missing_paths = reads(&missing);
        for place in [&w.a1, &w.a2, &w.b1] {
            for (path, missing_path) in reads(place).iter().zip(&missing_paths) {
                let (status, body) = call(&app, "GET", path, token, None).await;
                if sees(&w, role, place) {
                    assert_eq!(status, StatusCode::OK, "{role} GET {path}: {body}");
                } else {
                    assert_eq!(status, StatusCode::NOT_FOUND, "{role} GET {path}: {body}");
                    assert_error_shape(status, &body);
                    let (_, missing_body) = call(&app, "GET", missing_path, token, None).await;
                    same_as_missing(&body, &missing_body);
                }
            }
        }
        // Chains: a branch-scoped user sees its own chain (read-only), never another.
        for (chain, visible) in [
            (w.a1.chain, true),
            (w.b1.chain, role == Role::PlatformAdmin),
        ] {
            for path in [
                format!("/api/chains/{chain}"),
                format!("/api/telemetry/chains/{chain}"),
            ] {
                let (status, body) = call(&app, "GET", &path, token, None).await;
                let expected = if visible {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                };
                assert_eq!(status, expected, "{role} GET {path}: {body}");
            }
        }
    }
}

fn ids(body: &Value, field: &str) -> BTreeSet<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[field].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn lists_and_counts_hold_nothing_foreign(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let mut callers: Vec<(String, &str, Vec<&BranchIds>)> = Role::ALL
        .iter()
        .map(|role| {
            let visible = [&w.a1, &w.a2, &w.b1]
                .into_iter()
                .filter(|p| sees(&w, *role, p))
                .collect();
            (role.to_string(), w.token(*role), visible)
        })
        .collect();
    callers.push(("chain viewer".into(), &w.chain_viewer, vec![&w.a1, &w.a2]));
    for (who, token, visible) in callers {
        let token = Some(token);
        let branches: BTreeSet<String> = visible.iter().map(|p| p.branch.to_string()).collect();
        let chains: BTreeSet<String> = visible.iter().map(|p| p.chain.to_string()).collect();

        let (_, body) = call(&app, "GET", "/api/branches", token, None).await;
        assert_eq!(ids(&body, "id"), branches, "{who}");
        assert_eq!(body["pagination"]["total"], branches.len(), "{who}");
        // Filtering by a foreign chain yields nothing rather than an error that confirms it.
        let (status, body) = call(
            &app,
            "GET",
            &format!("/api/branches?chain_id={}", w.b1.chain),
            token,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let expected = usize::from(who == "platform_admin");
        assert_eq!(body["pagination"]["total"], expected, "{who}");

        let (_, body) = call(&app, "GET", "/api/chains", token, None).await;
        assert_eq!(ids(&body, "id"), chains, "{who}");
        // A chain's branch count counts only the branches the caller sees.
        let a = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == w.a1.chain.to_string())
            .unwrap();
        let in_a = visible.iter().filter(|p| p.chain == w.a1.chain).count();
        assert_eq!(a["branch_count"], in_a, "{who}");

        let (_, body) = call(
            &app,
            "GET",
            &format!("/api/telemetry/chains/{}", w.a1.chain),
            token,
            None,
        )
        .await;
        let devices: BTreeSet<String> = ids(&body, "device_id");
        let expected: BTreeSet<String> = visible
            .iter()
            .filter(|p| p.chain == w.a1.chain)
            .map(|p| p.device.to_string())
            .collect();
        assert_eq!(devices, expected, "{who}");
    }
}

/// The writes, each with where it is allowed for which role.
#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn writes_are_allowed_exactly_where_role_and_scope_allow(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    let mut n = 0;
    for role in Role::ALL {
        let token = Some(w.token(role));
        for place in [&w.a1, &w.a2, &w.b1] {
            let visible = sees(&w, role, place);
            n += 1;
            // Register a device in the branch: admins and technicians.
            let (status, body) = call(
                &app,
                "POST",
                "/api/devices/register",
                token,
                Some(json!({ "branch_id": place.branch, "device_name": format!("pi-{n}") })),
            )
            .await;
            let may = matches!(
                role,
                Role::PlatformAdmin | Role::ChainAdmin | Role::Technician
            );
            let expected = match (visible, may) {
                (false, _) => StatusCode::NOT_FOUND,
                (true, false) => StatusCode::FORBIDDEN,
                (true, true) => StatusCode::CREATED,
            };
            assert_eq!(
                status, expected,
                "{role} register in {}: {body}",
                place.branch
            );

            // Lend a cart at the counter and force a return: admins and branch managers.
            for (path, body) in [
                (
                    "assign",
                    json!({ "cart_id": place.cart, "phone": api_support::PHONE }),
                ),
                ("return", json!({ "cart_id": place.cart })),
            ] {
                let (status, answer) = call(
                    &app,
                    "POST",
                    &format!("/api/branches/{}/carts/{path}", place.branch),
                    token,
                    Some(body),
                )
                .await;
                let may = matches!(
                    role,
                    Role::PlatformAdmin | Role::ChainAdmin | Role::BranchManager
                );
                let expected = match (visible, may) {
                    (false, _) => StatusCode::NOT_FOUND,
                    (true, false) => StatusCode::FORBIDDEN,
                    (true, true) => StatusCode::ACCEPTED,
                };
                assert_eq!(
                    status, expected,
                    "{role} {path} in {}: {answer}",
                    place.branch
                );
            }
            // Desired firmware: admins and technicians.
            let (status, answer) = call(
                &app,
                "PUT",
                &format!("/api/devices/{}/firmware", place.device),
                token,
                Some(json!({ "version": "2.0.1" })),
            )
            .await;
            let may = matches!(
                role,
                Role::PlatformAdmin | Role::ChainAdmin | Role::Technician
            );
            let expected = match (visible, may) {
                (false, _) => StatusCode::NOT_FOUND,
                (true, false) => StatusCode::FORBIDDEN,
                (true, true) => StatusCode::ACCEPTED,
            };
            assert_eq!(
                status, expected,
                "{role} firmware of {}: {answer}",
                place.device
            );

            // Branch settings (one intent per device): admins and branch managers.
            let (status, answer) = call(
                &app,
                "PUT",
                &format!("/api/branches/{}/settings", place.branch),
                token,
                Some(json!({ "rental_minutes": 90, "language": "en" })),
            )
            .await;
            let may = matches!(
                role,
                Role::PlatformAdmin | Role::ChainAdmin | Role::BranchManager
            );
            let expected = match (visible, may) {
                (false, _) => StatusCode::NOT_FOUND,
                (true, false) => StatusCode::FORBIDDEN,
                (true, true) => StatusCode::ACCEPTED,
            };
            assert_eq!(
                status, expected,
                "{role} settings of {}: {answer}",
                place.branch
            );
            // Reading them: whoever sees the branch.
            let (status, answer) = call(
                &app,
                "GET",
                &format!("/api/branches/{}/settings", place.branch),
                token,
                None,
            )
            .await;
            let expected = if visible {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            assert_eq!(status, expected, "{role} read settings: {answer}");

            // A maintenance unlock: admins, branch managers and technicians; the other post
            // intents: admins and branch managers (not technicians).
            for (kind, may) in [
                (
                    "unlock",
                    matches!(
                        role,
                        Role::PlatformAdmin
                            | Role::ChainAdmin
                            | Role::BranchManager
                            | Role::Technician
                    ),
                ),
                (
                    "out_of_service",
                    matches!(
                        role,
                        Role::PlatformAdmin | Role::ChainAdmin | Role::BranchManager
                    ),
                ),
            ] {
                let (status, answer) = call(
                    &app,
                    "POST",
                    &format!("/api/branches/{}/intents", place.branch),
                    token,
                    Some(json!({ "kind": kind, "post": 1 })),
                )
                .await;
                let expected = match (visible, may) {
                    (false, _) => StatusCode::NOT_FOUND,
                    (true, false) => StatusCode::FORBIDDEN,
                    (true, true) => StatusCode::ACCEPTED,
                };
                assert_eq!(
                    status, expected,
                    "{role} {kind} in {}: {answer}",
                    place.branch
                );
            }

            // Create a branch in the place's chain: admins of the chain (a branch-scoped user
            // sees its chain but may not add to it).
            let chain_visible = role == Role::PlatformAdmin || place.chain == w.a1.chain;
            let (status, body) = call(
                &app,
                "POST",
                "/api/branches",
                token,
                Some(json!({
                "chain_id": place.chain, "name": "new", "branch_code": format!("N-{n}") })),
            )
            .await;
            let may = matches!(role, Role::PlatformAdmin | Role::ChainAdmin);
            let expected = match (chain_visible, may) {
                (false, _) => StatusCode::NOT_FOUND,
                (true, false) => StatusCode::FORBIDDEN,
                (true, true) => StatusCode::CREATED,
            };
            assert_eq!(
                status, expected,
                "{role} create branch in {}: {body}",
                place.chain
            );

            // Change the chain.
            let (status, body) = call(
                &app,
                "PUT",
                &format!("/api/chains/{}", place.chain),
                token,
                Some(json!({ "description": format!("by {role}") })),
            )
            .await;
            let expected = match (chain_visible, may) {
                (false, _) => StatusCode::NOT_FOUND,
                (true, false) => StatusCode::FORBIDDEN,
                (true, true) => StatusCode::OK,
            };
            assert_eq!(
                status, expected,
                "{role} update chain {}: {body}",
                place.chain
            );

            // Delete the chain: platform admins only (and these chains have rentals: 409).
            let (status, body) = call(
                &app,
                "DELETE",
                &format!("/api/chains/{}", place.chain),
                token,
                None,
            )
            .await;
            let expected = match (chain_visible, role == Role::PlatformAdmin) {
                (false, _) => StatusCode::NOT_FOUND,
                (true, false) => StatusCode::FORBIDDEN,
                (true, true) => StatusCode::CONFLICT,
            };
            assert_eq!(
                status, expected,
                "{role} delete chain {}: {body}",
                place.chain
            );
        }
        let (status, _) = call(
            &app,
            "POST",
            "/api/chains",
            token,
            Some(json!({ "name": "x", "slug": format!("x-{}", role.as_str().replace('_', "-")) })),
        )
        .await;
        let expected = if role == Role::PlatformAdmin {
            StatusCode::CREATED
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(status, expected, "{role} create chain");

        let (status, body) = call(&app, "GET", "/api/audit", token, None).await;
        let may = matches!(role, Role::PlatformAdmin | Role::ChainAdmin);
        assert_eq!(
            status,
            if may {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            },
            "{role} audit: {body}"
        );
    }
    // Refused writes are audited; the chain admin's audit view holds only its chain's rows.
    let denied: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'denied'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(denied > 0);
    let (_, body) = call(
        &app,
        "GET",
        "/api/audit?per_page=200",
        Some(w.token(Role::ChainAdmin)),
        None,
    )
    .await;
    let rows = body["data"].as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let chain = &row["chain_id"];
        let branch = &row["branch_id"];
        let ours = *chain == json!(w.a1.chain)
            || [w.a1.branch, w.a2.branch]
                .iter()
                .any(|b| *branch == json!(b));
        assert!(ours, "foreign audit row leaked: {row}");
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn no_credential_or_a_bad_one_is_401_everywhere(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    for path in reads(&w.a1)
        .iter()
        .chain(["/api/chains".to_owned(), "/api/audit".to_owned()].iter())
    {
        for token in [None, Some("not-a-token"), Some(&"ab".repeat(32)[..])] {
            let (status, body) = call(&app, "GET", path, token, None).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "GET {path} with {token:?}"
            );
            assert_eq!(assert_error_shape(status, &body), "unauthenticated");
        }
    }
}

/// Users are managed by platform admins (everyone) and chain admins (their chain's users, never
/// a platform admin); nobody else reads or changes them, and nothing foreign leaks.
#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn users_are_managed_only_by_admins_within_their_chain(pool: PgPool) {
    let w = world(&pool).await;
    let app = app(&pool);
    api_support::user(
        &pool,
        "b-manager",
        Role::BranchManager,
        Some(w.b1.chain),
        vec![w.b1.branch],
    )
    .await;
    let id_of = |login: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM users WHERE login = $1")
                .bind(login)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let foreign = id_of("b-manager").await;
    let platform = id_of("platform_admin").await;
    let ours = id_of("viewer").await;
    let missing = Uuid::new_v4();
    for role in Role::ALL {
        let token = Some(w.token(role));
        let admin = matches!(role, Role::PlatformAdmin | Role::ChainAdmin);
        let (status, body) = call(&app, "GET", "/api/users?per_page=200", token, None).await;
        if !admin {
            assert_eq!(status, StatusCode::FORBIDDEN, "{role} list users: {body}");
            assert_error_shape(status, &body);
            for (method, path, body) in [
                ("GET", format!("/api/users/{ours}"), None),
                (
                    "POST",
                    "/api/users".to_owned(),
                    Some(
                        json!({ "login": format!("x-{role}"), "password": "long enough pw", "role": "viewer" }),
                    ),
                ),
                (
                    "PUT",
                    format!("/api/users/{ours}"),
                    Some(json!({ "active": false })),
                ),
                ("DELETE", format!("/api/users/{ours}"), None),
            ] {
                let (status, answer) = call(&app, method, &path, token, body).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role} {method} {path}: {answer}"
                );
            }
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{role}: {body}");
        let logins = ids(&body, "login");
        assert_eq!(
            logins.contains("b-manager"),
            role == Role::PlatformAdmin,
            "{role}"
        );
        assert_eq!(
            logins.contains("platform_admin"),
            role == Role::PlatformAdmin,
            "{role}"
        );
        assert!(
            logins.contains("viewer") && logins.contains("chain-viewer"),
            "{role}"
        );
        assert!(!body.to_string().contains("password"), "{body}");
        assert!(!body.to_string().contains("argon2"), "{body}");
        // A foreign user reads exactly like a missing one for a chain admin.
        for id in [foreign, platform] {
            let (status, answer) =
                call(&app, "GET", &format!("/api/users/{id}"), token, None).await;
            if role == Role::PlatformAdmin {
                assert_eq!(status, StatusCode::OK, "{answer}");
            } else {
                assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
                let (_, missing_body) =
                    call(&app, "GET", &format!("/api/users/{missing}"), token, None).await;
                same_as_missing(&answer, &missing_body);
                let (status, _) = call(
                    &app,
                    "PUT",
                    &format!("/api/users/{id}"),
                    token,
                    Some(json!({ "active": false })),
                )
                .await;
                assert_eq!(status, StatusCode::NOT_FOUND);
                let (status, _) =
                    call(&app, "DELETE", &format!("/api/users/{id}"), token, None).await;
                assert_eq!(status, StatusCode::NOT_FOUND);
            }
        }
        // Creating: a chain admin only in its chain and never a platform admin.
        let suffix = role.as_str().replace('_', "-");
        let (status, answer) = call(
            &app,
            "POST",
            "/api/users",
            token,
            Some(
                json!({ "login": format!("pa-{suffix}"), "password": "long enough pw",
                         "role": "platform_admin" }),
            ),
        )
        .await;
        let expected = if role == Role::PlatformAdmin {
            StatusCode::CREATED
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(status, expected, "{role} create platform admin: {answer}");
        let (status, answer) = call(
            &app,
            "POST",
            "/api/users",
            token,
            Some(
                json!({ "login": format!("b-{suffix}"), "password": "long enough pw",
                         "role": "technician", "chain_id": w.b1.chain,
                         "branch_ids": [w.b1.branch] }),
            ),
        )
        .await;
        let expected = if role == Role::PlatformAdmin {
            StatusCode::CREATED
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(status, expected, "{role} create in chain B: {answer}");
        // Moving one of its users to another chain is refused like the other chain is missing.
        if role == Role::ChainAdmin {
            let (status, answer) = call(
                &app,
                "PUT",
                &format!("/api/users/{ours}"),
                token,
                Some(json!({ "chain_id": w.b1.chain, "branch_ids": [w.b1.branch] })),
            )
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
            let (status, answer) = call(
                &app,
                "PUT",
                &format!("/api/users/{ours}"),
                token,
                Some(json!({ "role": "platform_admin" })),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        }
    }
    // Refusals are audited.
    let denied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'denied' \
         AND detail->>'refused' IN ('manage users', 'grant platform_admin')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(denied >= 3, "{denied}");
}
