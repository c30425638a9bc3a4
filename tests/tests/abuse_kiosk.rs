//! Abuse of a real `cartwise-edge run` process's kiosk API: one-time-code brute force is
//! bounded (a code is burnt after 3 wrong guesses, requests per phone and per kiosk are rate
//! limited), oversized and malformed bodies are refused with a reason, and slow-loris
//! connections do not stop other shoppers from being served. The process is alive and serving
//! after each attack.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

#[path = "../../edge-node/tests/support_proc/mod.rs"]
mod support_proc;

/// The edge binary under test, built beside this test.
fn edge_bin() -> std::path::PathBuf {
    cartwise_tests::workspace_bin("cartwise-edge")
}

use std::time::Duration;

use serde_json::{Value, json};
use support_proc::{EdgeFiles, EdgeProc, Scratch, SimProc, e164};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn station(prefix: &str) -> (Scratch, EdgeFiles, SimProc, EdgeProc) {
    let scratch = Scratch::new(prefix);
    let files = EdgeFiles::under(scratch.path());
    let sim = SimProc::start(1, Some(100), &scratch.path().join("sim.log")).await;
    let config = scratch.path().join("edge.toml");
    std::fs::write(&config, "").unwrap();
    let edge = EdgeProc::start(&files, Some(&config), &sim.bus, "0").await;
    edge.wait_bus().await;
    (scratch, files, sim, edge)
}

/// The latest code the SMS outbox holds for `phone`.
fn code_for(files: &EdgeFiles, phone: &str) -> String {
    let to = e164(phone);
    std::fs::read_to_string(&files.outbox)
        .unwrap()
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|sms| sms["to"] == json!(to))
        .and_then(|sms| sms["code"].as_str().map(str::to_owned))
        .unwrap()
}

/// A four-digit code that is not `code`.
fn wrong(code: &str, nth: u32) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:04}", (n + 1 + nth) % 10_000)
}

async fn healthy(edge: &EdgeProc) {
    let (status, body) = edge.api.get("/health").await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otp_brute_force_at_the_kiosk_is_bounded() {
    let (_scratch, files, _sim, edge) = station("cartwise-abuse-otp-").await;
    let phone = "0529000001";
    let (status, body) = edge
        .api
        .post("/auth/request-otp", &json!({ "phone": phone }))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let code = code_for(&files, phone);

    // Three wrong guesses burn the code: the third answers 429, and so does the right code.
    let mut statuses = Vec::new();
    for nth in 0..3 {
        let guess = json!({ "phone": phone, "otp_code": wrong(&code, nth) });
        statuses.push(edge.api.post("/auth/verify-otp", &guess).await.unwrap().0);
    }
    assert_eq!(statuses, [401, 401, 429]);
    let right = json!({ "phone": phone, "otp_code": code });
    let (status, body) = edge.api.post("/auth/verify-otp", &right).await.unwrap();
    assert_eq!(status, 429, "a burnt code must not sign in: {body}");
    assert!(body["detail"].is_string() || body.is_object(), "{body}");

    // Asking again gives a new code, but requests per phone are limited (3 per 10 minutes):
    // an attacker cannot buy unlimited guesses.
    let mut granted = 1; // the first request above
    for _ in 0..5 {
        let (status, _) = edge
            .api
            .post("/auth/request-otp", &json!({ "phone": phone }))
            .await
            .unwrap();
        match status {
            200 => granted += 1,
            429 => {}
            other => panic!("request-otp answered {other}"),
        }
    }
    assert_eq!(granted, 3, "request-otp per phone is bounded at 3");

    // Guesses per phone are bounded across codes too: at most 10 verifications per 10 minutes,
    // so an attacker gets a handful of guesses at ten thousand codes.
    let mut accepted_guesses = 0;
    for nth in 0..30 {
        let current = code_for(&files, phone);
        let guess = json!({ "phone": phone, "otp_code": wrong(&current, nth) });
        if edge.api.post("/auth/verify-otp", &guess).await.unwrap().0 == 401 {
            accepted_guesses += 1;
        }
    }
    assert!(
        accepted_guesses <= 10,
        "{accepted_guesses} guesses were checked"
    );

    // The kiosk as a whole sends at most 30 codes per 10 minutes (SMS cost and spraying).
    let mut sent = 0;
    for n in 0..40 {
        let other = format!("05291{n:05}");
        if edge
            .api
            .post("/auth/request-otp", &json!({ "phone": other }))
            .await
            .unwrap()
            .0
            == 200
        {
            sent += 1;
        }
    }
    assert!(sent <= 30, "the kiosk sent {sent} codes in one burst");
    assert!(sent > 0);
    healthy(&edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_bodies_are_refused_and_the_kiosk_keeps_serving() {
    let (_scratch, _files, _sim, edge) = station("cartwise-abuse-body-").await;
    let url = format!("http://{}/auth/request-otp", edge.http);
    let client = reqwest::Client::new();
    let huge = format!("{{\"phone\":\"{}\"}}", "9".repeat(4 * 1024 * 1024));
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await;
    // Refused with 413, or the connection cut once the limit is passed: never accepted.
    if let Ok(response) = response {
        assert_eq!(response.status().as_u16(), 413);
    }
    for body in [
        "{",
        "[]",
        "{\"phone\":12}",
        "\u{0}\u{1}\u{2}",
        "{\"phone\":\"\u{202e}\"}",
    ] {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{body:?} answered {status}");
        let text = response.text().await.unwrap();
        assert!(!text.is_empty(), "{body:?}: a refusal says why");
    }
    healthy(&edge).await;
}

/// Opens `n` connections that send part of a request's head and then stall.
async fn stalled_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: kiosk\r\nX-Slow: ")
            .await
            .unwrap();
        streams.push(stream);
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_on_the_kiosk_leaves_other_shoppers_served() {
    let (_scratch, _files, _sim, edge) = station("cartwise-abuse-loris-").await;
    let mut stalled = stalled_connections(edge.http, 200).await;
    // Drip one byte into each, as a slow-loris client does to look alive.
    for stream in &mut stalled {
        stream.write_all(b"a").await.unwrap();
    }
    for _ in 0..5 {
        healthy(&edge).await;
        let (status, body) = edge.api.get("/carts/available").await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // A stalled connection is never answered as if it were a request.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), stalled[0].read(&mut buf)).await;
    assert!(
        read.is_err() || matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "{read:?}"
    );
    // One that keeps dripping is closed once the header read timeout has passed.
    let limit =
        cartwise_edge_node::daemon::KIOSK_HTTP_LIMITS.header_read_timeout + Duration::from_secs(10);
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
    healthy(&edge).await;
}
