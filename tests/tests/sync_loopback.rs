//! An enrolled edge and the hub over real QUIC with mutual TLS on loopback: lends and returns
//! reach Postgres once with their states, the device shows online, the hub acknowledges the
//! closed rental and the edge's live document drops it; and a device that asks to sync another
//! device's document is refused and audited while its own sync goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::AutoCommit;
use cartwise_cloud_hub::clock::HubClock;
use cartwise_edge_node::cu16::Lock;
use cartwise_edge_node::engine::ReturnState;
use cartwise_edge_node::identity;
use cartwise_schema::Phone;
use cartwise_sync_core::HubActors;
use cartwise_sync_core::facts::read_device_doc;
use cartwise_tests::{Station, WAIT, enroll_device, eventually, seed_world, start_hub};
use sqlx::PgPool;

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn an_enrolled_edge_syncs_its_rentals_into_postgres(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    // A new Pi of branch ST-RA, enrolled over QUIC.
    let dir = tempfile::tempdir().unwrap();
    let peer = enroll_device(&pool, &hub, "ST-RA", "st-ra-pi-9", dir.path())
        .await
        .peer();
    let station = Station::start(dir.path(), peer.device, peer.branch, 1, 1_795_248_000_000).await;
    let engine = station.engine();
    let (sim, clock) = (&station.sim, &station.clock);

    let a = Phone::parse("0521234567").unwrap();
    let b = Phone::parse("0547654321").unwrap();
    let lent_a = engine.lend(&a).await.unwrap();
    let lent_b = engine.lend(&b).await.unwrap();
    for post in [lent_a.post.post, lent_b.post.post] {
        station.wait_taken(post).await;
    }
    clock.advance_ms(10 * 60_000);
    engine.initiate_return(&a).await.unwrap();
    sim.sim()
        .with_bus(|bus, now| bus.dock(now, 0, Lock::new(lent_a.post.lock.get()).unwrap()))
        .unwrap();
    eventually("the return", || {
        let engine = engine.clone();
        let a = a.clone();
        async move {
            matches!(
                engine.return_state(&a).await,
                Ok(ReturnState::Returned { .. })
            )
        }
    })
    .await;

    // Both rentals reach Postgres, once, with their states.
    eventually("the rentals in Postgres", || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(uuid::Uuid, String)> =
                sqlx::query_as("SELECT id, status FROM rentals ORDER BY id")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            rows.len() == 2
                && rows.iter().any(|r| r.1 == "returned")
                && rows.iter().any(|r| r.1 == "active")
        }
    })
    .await;
    let status: String = sqlx::query_scalar("SELECT status FROM devices WHERE id = $1")
        .bind(*peer.device.as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "online");

    // The hub acknowledged the closed rental: it left the edge's live document.
    eventually("the live document to shrink", || {
        let engine = engine.clone();
        async move {
            let doc = AutoCommit::load(&engine.document().await.unwrap()).unwrap();
            let facts = read_device_doc(&doc);
            facts.rentals.len() == 1 && facts.rentals[0].id == lent_b.rental.id
        }
    })
    .await;
    // ... while the ledger on the device still has both.
    let history = engine
        .rentals(cartwise_edge_node::engine::RentalFilter::History {
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    // Times reached Postgres corrected by the hub's clock (the Pi's clock said 2026-11-21 08:00).
    let trusted: Vec<bool> = sqlx::query_scalar("SELECT time_trusted FROM rentals")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(trusted.iter().all(|t| *t), "{trusted:?}");

    station.stop().await;
}

/// Drives a raw session as an enrolled device: opens sync for each of `docs` (answering the
/// hub's sync messages like a real peer) and collects the events until `done` says so.
async fn raw_session(
    conn: &quinn::Connection,
    peer: cartwise_sync_core::identity::PeerIdentity,
    mut docs: Vec<(cartwise_sync_core::DocId, AutoCommit)>,
    done: impl Fn(&[cartwise_sync_core::SessionEvent]) -> bool,
) -> Vec<cartwise_sync_core::SessionEvent> {
    use cartwise_schema::Clock;
    use cartwise_sync_core::session::LocalIdentity;
    use cartwise_sync_core::{
        Message, Output, PeerDocState, Session, SessionConfig, SessionEvent, Side,
    };
    let clock = HubClock::new();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let local = LocalIdentity {
        role: cartwise_sync_core::message::body::Role::Device,
        chain: peer.chain,
        branch: Some(peer.branch),
        device: Some(peer.device),
        schema_version: 1,
    };
    let mut session = Session::new(SessionConfig::new(Side::Initiator), local, clock.read());
    let mut states: Vec<PeerDocState> = docs.iter().map(|(id, _)| PeerDocState::new(*id)).collect();
    for ((_, doc), state) in docs.iter_mut().zip(states.iter_mut()) {
        if let Some(body) = state.generate(doc).unwrap() {
            session.send(Message::Sync(body)).unwrap();
        }
    }
    let mut events = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => send.write_all(&bytes).await.unwrap(),
                Output::Event(SessionEvent::SyncReceived(body)) => {
                    if let Some(i) = docs.iter().position(|(id, _)| *id == body.doc) {
                        let doc = &mut docs[i].1;
                        states[i].receive(doc, &body, &HubActors::new([])).unwrap();
                        if let Some(reply) = states[i].generate(doc).unwrap() {
                            session.send(Message::Sync(reply)).unwrap();
                        }
                    }
                    events.push(SessionEvent::SyncReceived(body));
                }
                Output::Event(event) => events.push(event),
            }
        }
        if done(&events) || session.is_closed() {
            return events;
        }
        let Ok(read) = tokio::time::timeout_at(deadline, recv.read(&mut buf)).await else {
            panic!("the hub went silent; events so far: {events:?}");
        };
        match read.unwrap() {
            Some(n) => session.handle_bytes(clock.read(), &buf[..n]).unwrap(),
            None => return events,
        }
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_forged_out_of_authority_change_is_refused_and_audited_while_sync_goes_on(pool: PgPool) {
    use automerge::transaction::Transactable;
    use cartwise_sync_core::message::body::ErrorBody;
    use cartwise_sync_core::{DocId, SessionEvent, device_actor, error_code};

    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let me = enroll_device(&pool, &hub, "ST-RA", "st-ra-pi-8", dir.path()).await;
    let peer = me.peer();
    let hub_addr = hub.handle.local_addr.to_string();
    let endpoint = identity::client_endpoint().unwrap();
    let conn = identity::connect(
        &endpoint,
        &hub_addr,
        identity::hub_client_config(&me).unwrap(),
        cartwise_sync_core::identity::HUB_SERVER_NAME,
    )
    .await
    .unwrap();

    // 1. A change written into another device's document (st-ra-pi-1's), forged with its actor.
    let victim = cartwise_schema::DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001001").unwrap();
    let mut forged = AutoCommit::new().with_actor(device_actor(&victim));
    forged
        .put(automerge::ROOT, "device", victim.to_string())
        .unwrap();
    let victim_doc = DocId::device(victim);
    // 2. In its own document, a change by another actor (not the device's).
    let own_doc = DocId::device(peer.device);
    let mut mixed = AutoCommit::new().with_actor(device_actor(&victim));
    mixed
        .put(automerge::ROOT, "device", peer.device.to_string())
        .unwrap();

    // 3. And an honest change in its own document.
    let mut honest = AutoCommit::new().with_actor(device_actor(&peer.device));
    honest.put(automerge::ROOT, "schema", 1).unwrap();
    honest
        .put(automerge::ROOT, "device", peer.device.to_string())
        .unwrap();
    honest
        .put(automerge::ROOT, "branch", peer.branch.to_string())
        .unwrap();

    let refusals = |events: &[SessionEvent]| {
        events.iter().filter(|e| matches!(e, SessionEvent::PeerError(ErrorBody { code, .. }) if *code == error_code::AUTHORITY)).count()
    };
    let events = raw_session(
        &conn,
        peer,
        vec![(victim_doc, forged), (own_doc, mixed)],
        |events| refusals(events) >= 2,
    )
    .await;
    assert_eq!(refusals(&events), 2, "{events:?}");

    // The refused writes are audited, and nothing of them was stored.
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'sync.refused_out_of_authority'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 2);
    let stored: Option<i32> = sqlx::query_scalar("SELECT 1 FROM sync_documents WHERE doc_id = $1")
        .bind(victim_doc.to_string())
        .fetch_optional(&pool)
        .await
        .unwrap();
    assert!(stored.is_none(), "the forged document must not be stored");

    // The session (and the device's own sync) goes on: the honest change is accepted.
    let conn2 = identity::connect(
        &endpoint,
        &hub_addr,
        identity::hub_client_config(&me).unwrap(),
        cartwise_sync_core::identity::HUB_SERVER_NAME,
    )
    .await
    .unwrap();
    raw_session(&conn2, peer, vec![(own_doc, honest)], |events| {
        events
            .iter()
            .filter(|e| matches!(e, SessionEvent::SyncReceived(_)))
            .count()
            >= 2
    })
    .await;
    eventually("the honest document stored", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT 1 FROM sync_documents WHERE doc_id = $1")
                .bind(own_doc.to_string())
                .fetch_optional(&pool)
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
}
