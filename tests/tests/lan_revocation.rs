//! A device revoked at the hub is refused by its branch peers on the LAN even once the hub is
//! gone: the hub writes the revocation into the branch's intents document, the peers hold it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use cartwise_edge_node::identity;
use cartwise_tests::{Station, WAIT, enroll_device, eventually, seed_world, start_hub};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WALL: i64 = 1_795_248_000_000;

/// The `lan_peers_connected` of a station's `/health`.
async fn lan_peers_connected(http: SocketAddr) -> Option<u64> {
    let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let body = text.split("\r\n\r\n").nth(1)?;
    let health: serde_json::Value = serde_json::from_str(body).ok()?;
    health["lan_peers_connected"].as_u64()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_device_revoked_at_the_hub_is_refused_by_its_branch_peers_with_the_hub_down(
    pool: PgPool,
) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = enroll_device(&pool, &hub, "ST-RA", "st-ra-rev-a", dir_a.path())
        .await
        .peer();
    let b_identity = enroll_device(&pool, &hub, "ST-RA", "st-ra-rev-b", dir_b.path()).await;
    let b = b_identity.peer();

    let pi_a = Station::start_with(dir_a.path(), a.device, a.branch, 1, WALL, |config| {
        config.lan.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let a_lan = pi_a.edge.as_ref().unwrap().lan.unwrap();
    let a_http = pi_a.edge.as_ref().unwrap().http;
    let pi_b = Station::start_with(dir_b.path(), b.device, b.branch, 1, WALL, move |config| {
        config.lan.peers = vec![a_lan.to_string()];
        config.bus.first_post_number = 17;
    })
    .await;
    eventually("B in session with A", || async {
        lan_peers_connected(a_http).await == Some(1)
    })
    .await;

    // The hub revokes B; A (online) receives the branch's intents document saying so.
    let engine_a = pi_a.engine();
    cartwise_cloud_hub::pki::revoke_device(&pool, b.device)
        .await
        .unwrap();
    eventually("A to hold B's revocation", || {
        let engine_a = engine_a.clone();
        async move { matches!(engine_a.peer_revoked(b.device).await, Ok(Some(_))) }
    })
    .await;

    // The hub goes away: A still closes B's session and refuses B's new ones.
    hub.stop().await;
    eventually("A to drop B's session", || async {
        lan_peers_connected(a_http).await == Some(0)
    })
    .await;
    let endpoint = identity::client_endpoint().unwrap();
    let conn = tokio::time::timeout(
        WAIT,
        identity::connect(
            &endpoint,
            &a_lan.to_string(),
            identity::lan_client_config(&b_identity).unwrap(),
            identity::LAN_SERVER_NAME,
        ),
    )
    .await
    .unwrap()
    .expect("B's certificate still verifies at the handshake");
    let closed = tokio::time::timeout(WAIT, async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let _ = send.write_all(b"x").await;
        let mut buf = [0u8; 64];
        recv.read(&mut buf).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await
    .unwrap();
    assert!(closed.is_err(), "A must refuse a revoked peer");
    // A closed it, saying why.
    let why = conn.closed().await.to_string();
    assert!(why.contains("revoked"), "{why}");
    // A's view of B is unchanged by it: B is never back in session.
    assert_eq!(lan_peers_connected(a_http).await, Some(0));
    pi_b.stop().await;
    pi_a.stop().await;
}
