//! `cartwise-hub user add` creates the first admin, who can then log in over the API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::io::Write;
use std::process::{Command, Stdio};

use api_support::{app, call};
use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

/// The URL of the test's own database (the server of DATABASE_URL, the pool's database).
fn url_of(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").unwrap();
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let (server, _) = base.split('?').next().unwrap().rsplit_once('/').unwrap();
    format!("{server}/{database}")
}

fn user_add(pool: &PgPool, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cartwise-hub"))
        .args(["user", "add"])
        .args(args)
        .env("DATABASE_URL", url_of(pool))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_first_admin_is_created_at_the_command_line_and_logs_in(pool: PgPool) {
    let out = user_add(
        &pool,
        &["--login", "root", "--role", "platform_admin"],
        "a long admin password\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("user root (platform_admin) created"));

    let app = app(&pool);
    let (status, body) = call(
        &app,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({ "login": "root", "password": "a long admin password" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["scope"]["all"], true);

    // Refusals name the problem: a short password, a role needing a chain, a taken login.
    for (args, stdin, expected) in [
        (
            vec!["--login", "x", "--role", "viewer"],
            "short\n",
            "10 to 256",
        ),
        (
            vec!["--login", "x", "--role", "chain_admin"],
            "a long admin password\n",
            "--chain",
        ),
        (
            vec!["--login", "root", "--role", "viewer"],
            "a long admin password\n",
            "already exists",
        ),
        (
            vec!["--login", "x", "--role", "owner"],
            "a long admin password\n",
            "unknown role",
        ),
    ] {
        let out = user_add(&pool, &args, stdin);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
