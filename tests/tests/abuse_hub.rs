//! Abuse of the hub's HTTP server (the real `http::serve` on loopback, default limits): login
//! brute force is bounded per login, and slow-loris connections do not stop others from being
//! served; the server answers normally afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

use std::net::SocketAddr;
use std::time::Duration;

use cartwise_cloud_hub::http::{self, AppState};
use cartwise_cloud_hub::users::{self, NewUser, Role};
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const PASSWORD: &str = "correct horse battery";

/// The hub's HTTP server on loopback; stops when the sender is dropped.
async fn hub_http(pool: &PgPool) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let state = AppState { pool: pool.clone() };
    tokio::spawn(http::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn login(client: &reqwest::Client, addr: SocketAddr, who: &str, password: &str) -> u16 {
    client
        .post(format!("http://{addr}/api/auth/login"))
        .header("content-type", "application/json")
        .body(json!({ "login": who, "password": password }).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn healthy(client: &reqwest::Client, addr: SocketAddr) {
    let response = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn login_brute_force_at_the_hub_is_bounded(pool: PgPool) {
    for login in ["victim", "bystander"] {
        let new = NewUser {
            login: login.to_owned(),
            password: PASSWORD.to_owned(),
            role: Role::PlatformAdmin,
            chain: None,
            branches: Vec::new(),
        };
        users::add_user(&pool, &new).await.unwrap();
    }
    let (addr, _stop) = hub_http(&pool).await;
    let client = reqwest::Client::new();

    let mut answers = Vec::new();
    for n in 0..14 {
        answers.push(login(&client, addr, "victim", &format!("guess number {n}")).await);
    }
    let checked = answers.iter().filter(|s| **s == 401).count();
    assert!(checked <= 10, "{checked} guesses were checked: {answers:?}");
    assert_eq!(answers.last(), Some(&429), "{answers:?}");
    // While limited, even the right password is refused: guessing buys nothing.
    assert_eq!(login(&client, addr, "victim", PASSWORD).await, 429);
    // Another login is not locked out by the attack on this one.
    assert_eq!(login(&client, addr, "bystander", PASSWORD).await, 200);
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'auth.login_failed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(failed >= 1, "failed logins are audited");
    healthy(&client, addr).await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn slow_loris_on_the_hub_leaves_others_served(pool: PgPool) {
    let (addr, _stop) = hub_http(&pool).await;
    let client = reqwest::Client::new();
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(stream);
    }
    for stream in &mut stalled {
        stream.write_all(b"a").await.unwrap();
    }
    for _ in 0..5 {
        healthy(&client, addr).await;
    }
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), stalled[0].read(&mut buf)).await;
    assert!(
        read.is_err() || matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "{read:?}"
    );
    // One that keeps dripping is closed once the header read timeout has passed.
    let limit = cartwise_cloud_hub::http::HTTP_LIMITS.header_read_timeout + Duration::from_secs(10);
    let closed = tokio::time::timeout(limit, async {
        let mut rest = Vec::new();
        stalled[1].read_to_end(&mut rest).await
    })
    .await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "a connection still sending its headers after {limit:?} was kept open"
    );
    drop(stalled);
    healthy(&client, addr).await;
}
