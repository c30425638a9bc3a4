//! The bounded server on loopback: requests see their peer address, a client that never
//! finishes its headers is closed after the timeout, a full server serves the next client as
//! soon as a slot frees, and shutdown ends the server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use cartwise_http_serve::{Limits, serve};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const LIMITS: Limits = Limits {
    connections_max: 2,
    header_read_timeout: Duration::from_millis(500),
    drain_timeout: Duration::from_secs(2),
};

async fn start() -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve(listener, router, LIMITS, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop, server)
}

/// Sends one request on a fresh connection and returns the whole answer.
async fn get_peer(addr: SocketAddr) -> (SocketAddr, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream
        .write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    (local, answer)
}

#[tokio::test]
async fn requests_see_their_peer_and_slow_clients_are_closed() {
    let (addr, stop, server) = start().await;
    let (local, answer) = get_peer(addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&local.to_string()), "{answer}");

    // Two stalled clients fill the server; the third waits for a slot, which the header
    // timeout frees.
    let mut stalled = Vec::new();
    for _ in 0..LIMITS.connections_max {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /peer HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let waiting = tokio::spawn(get_peer(addr));
    for stream in &mut stalled {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "a stalled client was kept past the header timeout"
        );
    }
    let (_, answer) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client was served once a slot freed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops after shutdown")
        .unwrap();
}
