//! Replaying a whole recorded sync session against the hub (real QUIC, mutual TLS) changes
//! nothing in Postgres: an enrolled device syncs its document (rentals open and closed) while
//! every byte it sends is recorded; then the same bytes are sent again on a new connection,
//! and the projection and the stored documents are byte-identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT};
use cartwise_cloud_hub::clock::HubClock;
use cartwise_edge_node::identity::{self, EdgeIdentity};
use cartwise_schema::Clock;
use cartwise_sync_core::message::body::{Bye, Role};
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{
    DocId, HubActors, Message, Output, PeerDocState, Session, SessionConfig, SessionEvent, Side,
    device_actor,
};
use cartwise_tests::{WAIT, enroll_device, seed_world, start_hub};
use sqlx::PgPool;

const T0: i64 = 1_795_248_000_000;

/// The device's live document with `open` active and `closed` returned rentals.
fn document(identity: &EdgeIdentity, open: u32, closed: u32) -> AutoCommit {
    let peer = identity.peer();
    let mut doc = AutoCommit::new().with_actor(device_actor(&peer.device));
    doc.put(ROOT, "schema", 1).unwrap();
    doc.put(ROOT, "device", peer.device.to_string()).unwrap();
    doc.put(ROOT, "branch", peer.branch.to_string()).unwrap();
    let rentals = doc.put_object(ROOT, "rentals", ObjType::Map).unwrap();
    for n in 0..open + closed {
        let id = uuid::Uuid::now_v7().to_string();
        let r = doc.put_object(&rentals, &id, ObjType::Map).unwrap();
        let start = T0 + i64::from(n) * 60_000;
        doc.put(&r, "phone", format!("+97252{:07}", n)).unwrap();
        doc.put(&r, "post", u64::from(1 + n)).unwrap();
        doc.put(&r, "minutes", 120_u64).unwrap();
        doc.put(&r, "start_hlc", format!("{start}:0")).unwrap();
        doc.put(&r, "start_at", start).unwrap();
        doc.put(&r, "time_trusted", true).unwrap();
        if n < closed {
            doc.put(&r, "status", "returned").unwrap();
            doc.put(&r, "end_at", start + 20 * 60_000).unwrap();
            doc.put(&r, "end_hlc", format!("{}:0", start + 1)).unwrap();
        } else {
            doc.put(&r, "status", "active").unwrap();
        }
        doc.commit();
    }
    doc
}

async fn connect(hub_addr: &str, me: &EdgeIdentity) -> quinn::Connection {
    let endpoint = identity::client_endpoint().unwrap();
    identity::connect(
        &endpoint,
        hub_addr,
        identity::hub_client_config(me).unwrap(),
        cartwise_sync_core::identity::HUB_SERVER_NAME,
    )
    .await
    .unwrap()
}

/// Runs a session that syncs `doc` until the hub acknowledged `closed` rentals and has nothing
/// more to say; returns every byte the device sent.
async fn recorded_session(
    conn: &quinn::Connection,
    me: &EdgeIdentity,
    mut doc: AutoCommit,
    closed: usize,
) -> Vec<u8> {
    let peer = me.peer();
    let clock = HubClock::new();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let local = LocalIdentity {
        role: Role::Device,
        chain: peer.chain,
        branch: Some(peer.branch),
        device: Some(peer.device),
        schema_version: 1,
    };
    let mut session = Session::new(SessionConfig::new(Side::Initiator), local, clock.read());
    let doc_id = DocId::device(peer.device);
    let mut state = PeerDocState::new(doc_id);
    let body = state.generate(&mut doc).unwrap().unwrap();
    session.send(Message::Sync(body)).unwrap();
    let mut sent = Vec::new();
    let mut acked = 0;
    let mut settled = false;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => {
                    sent.extend_from_slice(&bytes);
                    send.write_all(&bytes).await.unwrap();
                }
                Output::Event(SessionEvent::SyncReceived(body)) if body.doc == doc_id => {
                    state.receive(&mut doc, &body, &HubActors::new([])).unwrap();
                    match state.generate(&mut doc).unwrap() {
                        Some(reply) => session.send(Message::Sync(reply)).unwrap(),
                        None => settled = true,
                    }
                }
                Output::Event(SessionEvent::LedgerAck(ack)) => acked = acked.max(ack.rentals.len()),
                Output::Event(_) => {}
            }
        }
        if settled && acked == closed {
            break;
        }
        let read = tokio::time::timeout_at(deadline, recv.read(&mut buf))
            .await
            .expect("the hub went silent");
        match read.unwrap() {
            Some(n) => session.handle_bytes(clock.read(), &buf[..n]).unwrap(),
            None => panic!("the hub closed the session"),
        }
    }
    session.close("done");
    while let Some(output) = session.poll_output() {
        if let Output::Send(bytes) = output {
            send.write_all(&bytes).await.unwrap();
        }
    }
    let _ = send.finish();
    sent
}

/// Every row the projection and the document store hold, as text.
async fn rows(pool: &PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for query in [
        "SELECT r::text FROM rentals r ORDER BY id",
        "SELECT c::text FROM carts c ORDER BY id",
        "SELECT a::text FROM anomalies a ORDER BY device_id, anomaly_key",
        "SELECT x::text FROM rental_returns x ORDER BY rental_id",
        "SELECT doc_id || ' ' || version || ' ' || encode(heads, 'hex') || ' ' || updated_at
           || ' ' || md5(snapshot) FROM sync_documents ORDER BY doc_id",
        "SELECT doc_id || ' ' || version || ' ' || md5(chunk) FROM sync_document_changes ORDER BY 1",
    ] {
        out.extend(
            sqlx::query_scalar::<_, String>(query)
                .fetch_all(pool)
                .await
                .unwrap(),
        );
    }
    out
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn replaying_a_whole_session_changes_nothing_in_postgres(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let me = enroll_device(&pool, &hub, "ST-RA", "st-ra-pi-7", dir.path()).await;
    let hub_addr = hub.handle.local_addr.to_string();

    let conn = connect(&hub_addr, &me).await;
    let recorded = recorded_session(&conn, &me, document(&me, 3, 2), 2).await;
    let before = rows(&pool).await;
    let rentals: i64 = sqlx::query_scalar("SELECT count(*) FROM rentals")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rentals, 5);

    // The same bytes on a new connection, then `Bye`; the hub ends the stream once it has
    // handled everything before the `Bye`.
    let conn = connect(&hub_addr, &me).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&recorded).await.unwrap();
    let bye = Message::Bye(Bye {
        reason: "replayed".into(),
    })
    .to_frame()
    .unwrap();
    send.write_all(&bye).await.unwrap();
    let _ = send.finish();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(WAIT, recv.read(&mut buf))
            .await
            .expect("the hub did not end the replayed session");
        match read {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(rows(&pool).await, before);
}
