//! Abuse of the hub's QUIC sync endpoint by an enrolled device: oversized, malformed and
//! truncated frames end that device's session (with the reason sent when the protocol has one),
//! connections that never open a session stream or stall mid-frame are closed by the hub's
//! handshake timeouts, and through all of it another device still syncs its rentals into
//! Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cartwise_edge_node::identity::{self, EdgeIdentity};
use cartwise_sync_core::frame::FrameDecoder;
use cartwise_sync_core::message::Message;
use cartwise_tests::{Hub, Station, enroll_device, eventually, seed_world, start_hub};
use sqlx::PgPool;

/// The hub ends a broken or stalled session within this (its handshake timeout is 10 s and
/// its wait for a session stream 10 s).
const END_MAX: Duration = Duration::from_secs(30);

async fn connect(hub: &Hub, me: &EdgeIdentity) -> quinn::Connection {
    let endpoint = identity::client_endpoint().unwrap();
    let config = identity::hub_client_config(me).unwrap();
    identity::connect(
        &endpoint,
        &hub.handle.local_addr.to_string(),
        config,
        cartwise_sync_core::identity::HUB_SERVER_NAME,
    )
    .await
    .unwrap()
}

/// How one broken session ended.
#[derive(Debug)]
struct Ended {
    /// Messages the hub sent before ending the stream.
    messages: Vec<Message>,
    /// How the connection closed (within a few seconds of the stream's end), if it did.
    closed: Option<quinn::ConnectionError>,
}

/// Sends `bytes` on a new session stream; returns how the hub ended it, or `None` if it did
/// not end it within [`END_MAX`].
async fn send_and_wait_end(hub: &Hub, me: &EdgeIdentity, bytes: &[u8]) -> Option<Ended> {
    let conn = connect(hub, me).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The hub may stop reading before everything is written.
    let _ = send.write_all(bytes).await;
    let read = tokio::time::timeout(END_MAX, async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                Ok(None) | Err(_) => return got,
            }
        }
    })
    .await
    .ok()?;
    let mut decoder = FrameDecoder::new();
    let mut messages = Vec::new();
    if decoder.feed(&read).is_ok() {
        while let Ok(Some(frame)) = decoder.next() {
            if let Ok(message) = Message::decode(&frame) {
                messages.push(message);
            }
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .ok();
    Some(Ended { messages, closed })
}

fn wall_now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn broken_and_stalled_sessions_end_and_other_devices_still_sync(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let abuser = enroll_device(&pool, &hub, "ST-RA", "abuser", dir.path()).await;

    let max = u32::try_from(cartwise_sync_core::frame::FRAME_LEN_MAX).unwrap();
    let mut garbage = 8u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xc1; 8]); // 0xc1 is never valid MessagePack
    let mut not_an_envelope = 3u32.to_be_bytes().to_vec();
    not_an_envelope.extend_from_slice(&[0x93, 0x01, 0x02]); // an array, not {k, b}
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a length over FRAME_LEN_MAX",
            (max + 1).to_be_bytes().to_vec(),
        ),
        (
            "the largest length there is",
            u32::MAX.to_be_bytes().to_vec(),
        ),
        ("bytes that are not MessagePack", garbage),
        ("MessagePack that is not an envelope", not_an_envelope),
        ("half a frame header, then nothing", vec![0, 0]),
    ];
    let started = Instant::now();
    let mut ended = Vec::new();
    for (what, bytes) in &cases {
        let Some(end) = send_and_wait_end(&hub, &abuser, bytes).await else {
            panic!("the hub did not end a session sent {what} within {END_MAX:?}");
        };
        // The connection is closed, not left open; a broken frame says why.
        assert!(
            end.closed.is_some(),
            "{what}: the connection stayed open: {end:?}"
        );
        if !what.starts_with("half a frame header") {
            let Some(quinn::ConnectionError::ApplicationClosed(close)) = &end.closed else {
                panic!("{what}: the hub did not close with a reason: {end:?}");
            };
            assert_eq!(
                close.error_code,
                cartwise_cloud_hub::quic::close_code::PROTOCOL.into(),
                "{what}: {end:?}"
            );
            assert!(
                close.reason.starts_with(b"protocol error: "),
                "{what}: {end:?}"
            );
        }
        assert!(
            end.messages.iter().all(|m| matches!(m, Message::Hello(_))),
            "{what}: the hub answered a broken session with more than its Hello: {end:?}"
        );
        ended.push(format!("{what}: {end:?}"));
    }
    eprintln!(
        "abuse_sync: {} broken sessions ended in {:.1?}:\n{}",
        cases.len(),
        started.elapsed(),
        ended.join("\n")
    );

    // Slow loris over QUIC: 20 connections that never open a stream and 20 that stall after
    // one byte of a frame. The hub closes all of them.
    let mut stalled = Vec::new();
    for nth in 0..40 {
        let conn = connect(&hub, &abuser).await;
        let stream = if nth % 2 == 0 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&[0]).await.unwrap();
            Some((send, recv))
        } else {
            None
        };
        stalled.push((conn, stream));
    }
    for (nth, (conn, stream)) in stalled.iter_mut().enumerate() {
        let closed = async {
            match stream {
                // The hub ends the session stream (and then drops the connection).
                Some((_, recv)) => {
                    let mut buf = [0u8; 1024];
                    while let Ok(Some(_)) = recv.read(&mut buf).await {}
                }
                None => {
                    conn.closed().await;
                }
            }
        };
        assert!(
            tokio::time::timeout(END_MAX, closed).await.is_ok(),
            "stalled connection {nth} still open after {END_MAX:?}"
        );
    }

    // The hub is fine: an honest device syncs a rental into Postgres.
    let honest_dir = tempfile::tempdir().unwrap();
    let honest = enroll_device(&pool, &hub, "ST-RA", "honest", honest_dir.path())
        .await
        .peer();
    let station = Station::start(
        honest_dir.path(),
        honest.device,
        honest.branch,
        1,
        wall_now_ms(),
    )
    .await;
    let phone = cartwise_schema::Phone::parse("0527000001").unwrap();
    station.engine().lend(&phone).await.unwrap();
    eventually("the honest device's rental in Postgres", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rentals")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
    station.stop().await;
}
