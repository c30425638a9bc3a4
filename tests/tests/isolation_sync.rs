//! The sync isolation matrix against the hub over real QUIC: an enrolled device of branch X
//! (chain A), of branch Y (chain A) and of branch Z (chain B) each asks the hub for, and writes
//! into, the documents of the others — another branch's intents, another device's facts — with
//! the changes forged under the owner's actor. Zero leaks: the hub sends none of a foreign
//! document's content, stores none of the forged writes, and still serves each device its own
//! branch's intents (the control that proves the probe can see content at all).
//!
//! Rows: {X→Y, X→Z, Z→X} × {read intents, read device facts, write intents, write facts}.
//! (The REST API's matrix is `cloud-hub/tests/api_authz.rs`; a device of another chain's CA is
//! refused at the handshake in `identity.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use automerge::AutoCommit;
use automerge::transaction::Transactable;
use cartwise_cloud_hub::clock::HubClock;
use cartwise_cloud_hub::intents::{self, Actor, ActorKind, IntentRequest};
use cartwise_edge_node::identity::{self, EdgeIdentity};
use cartwise_schema::Clock;
use cartwise_sync_core::identity::PeerIdentity;
use cartwise_sync_core::intents::IntentKind;
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{
    DocId, HubActors, Message, Output, PeerDocState, Session, SessionConfig, SessionEvent, Side,
    device_actor, hub_actor,
};
use cartwise_tests::{Hub, WAIT, enroll_device, seed_world, start_hub};
use sqlx::PgPool;

/// After the control document's content arrives, how long stragglers are waited for.
const LINGER: Duration = Duration::from_secs(1);

/// What one device saw when probing the hub.
#[derive(Debug, Default)]
struct Probe {
    /// Foreign content received (a leak), by document.
    leaks: Vec<String>,
    /// Errors the hub sent about our messages (refusals of the forged writes).
    errors: usize,
    /// Whether the device's own branch intents arrived.
    control: bool,
}

async fn connect(hub: &Hub, me: &EdgeIdentity) -> quinn::Connection {
    identity::connect(
        &identity::client_endpoint().unwrap(),
        &hub.handle.local_addr.to_string(),
        identity::hub_client_config(me).unwrap(),
        cartwise_sync_core::identity::HUB_SERVER_NAME,
    )
    .await
    .unwrap()
}

/// One session as `me`: syncs each of `foreign` from the given local copy (empty: a read;
/// with forged changes: a write, which is a read too), and asks for its own branch's intents
/// as the control. Any content the hub sends into a foreign copy is a leak.
async fn probe(hub: &Hub, me: &EdgeIdentity, foreign: Vec<(DocId, AutoCommit)>) -> Probe {
    let peer: PeerIdentity = me.peer();
    let conn = connect(hub, me).await;
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
    let control = DocId::branch_intents(peer.branch);
    let mut docs: Vec<(DocId, AutoCommit, PeerDocState)> = Vec::new();
    for (id, doc) in foreign {
        docs.push((id, doc, PeerDocState::new(id)));
    }
    docs.push((control, AutoCommit::new(), PeerDocState::new(control)));
    for (_, doc, state) in &mut docs {
        if let Some(body) = state.generate(doc).unwrap() {
            session.send(Message::Sync(body)).unwrap();
        }
    }
    // Any hub actor may write an intents document as far as this receiver is concerned: a
    // leak must show up as content, not be hidden by our own authority check.
    let any_hub = HubActors::new([hub_actor(peer.chain)]);
    let mut out = Probe::default();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut linger_until = None;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => send.write_all(&bytes).await.unwrap(),
                Output::Event(SessionEvent::SyncReceived(body)) => {
                    let Some(i) = docs.iter().position(|(id, _, _)| *id == body.doc) else {
                        out.leaks.push(format!(
                            "a Sync for a document never asked for: {}",
                            body.doc
                        ));
                        continue;
                    };
                    let (id, doc, state) = &mut docs[i];
                    let before = doc.get_changes(&[]).len();
                    let received = state.receive(doc, &body, &any_hub);
                    let after = doc.get_changes(&[]).len();
                    if *id != control && (received.is_err() || after > before) {
                        out.leaks
                            .push(format!("content of {id}: {received:?}, {after} changes"));
                    }
                    if *id == control && after > 0 {
                        out.control = true;
                    }
                    if let Ok(Some(reply)) = state.generate(doc) {
                        session.send(Message::Sync(reply)).unwrap();
                    }
                }
                Output::Event(SessionEvent::PeerError(_)) => out.errors += 1,
                Output::Event(_) => {}
            }
        }
        if out.control && linger_until.is_none() {
            linger_until = Some(tokio::time::Instant::now() + LINGER);
        }
        if session.is_closed() || linger_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
            return out;
        }
        let until = linger_until.unwrap_or(deadline);
        match tokio::time::timeout_at(until, recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => session.handle_bytes(clock.read(), &buf[..n]).unwrap(),
            Ok(_) => return out,
            Err(_) => {
                assert!(
                    linger_until.is_some(),
                    "the hub never sent this device its own intents: {out:?}"
                );
                return out;
            }
        }
    }
}

async fn note_for(pool: &PgPool, device: &PeerIdentity, text: &str) {
    intents::create(
        pool,
        IntentRequest {
            device: device.device,
            branch: Some(device.branch),
            kind: IntentKind::Note {
                post: None,
                text: text.to_owned(),
            },
            expires_in: None,
        },
        &Actor {
            kind: ActorKind::Admin,
            name: "isolation".into(),
        },
    )
    .await
    .unwrap();
}

/// A change in `owner`'s facts document, forged under `owner`'s actor.
fn forged_facts(owner: &PeerIdentity) -> (DocId, AutoCommit) {
    let mut doc = AutoCommit::new().with_actor(device_actor(&owner.device));
    doc.put(automerge::ROOT, "device", owner.device.to_string())
        .unwrap();
    doc.put(automerge::ROOT, "forged", true).unwrap();
    (DocId::device(owner.device), doc)
}

/// A change in `branch`'s intents document, forged under the hub's actor of `chain`.
fn forged_intents(victim: &PeerIdentity) -> (DocId, AutoCommit) {
    let mut doc = AutoCommit::new().with_actor(hub_actor(victim.chain));
    doc.put(automerge::ROOT, "forged", true).unwrap();
    (DocId::branch_intents(victim.branch), doc)
}

/// An honest facts document of `me`, sent so the hub stores something foreign to read.
async fn store_own_facts(hub: &Hub, me: &EdgeIdentity) {
    let peer = me.peer();
    let mut doc = AutoCommit::new().with_actor(device_actor(&peer.device));
    doc.put(automerge::ROOT, "schema", 1).unwrap();
    doc.put(automerge::ROOT, "device", peer.device.to_string())
        .unwrap();
    doc.put(automerge::ROOT, "branch", peer.branch.to_string())
        .unwrap();
    // Our own document: the hub's answers are not leaks, only its errors would matter.
    let probe = probe(hub, me, vec![(DocId::device(peer.device), doc)]).await;
    assert_eq!(probe.errors, 0, "{probe:?}");
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn devices_of_other_branches_and_chains_read_and_write_nothing_of_each_other(pool: PgPool) {
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let x = enroll_device(&pool, &hub, "ST-RA", "iso-x", dirs[0].path()).await;
    let y = enroll_device(&pool, &hub, "ST-HF", "iso-y", dirs[1].path()).await;
    let z = enroll_device(&pool, &hub, "MS-BS", "iso-z", dirs[2].path()).await;
    let (px, py, pz) = (x.peer(), y.peer(), z.peer());
    assert_eq!(px.chain, py.chain);
    assert_ne!(px.branch, py.branch);
    assert_ne!(px.chain, pz.chain);
    for (peer, text) in [(&px, "for x"), (&py, "for y"), (&pz, "for z")] {
        note_for(&pool, peer, text).await;
    }
    for me in [&x, &y, &z] {
        store_own_facts(&hub, me).await;
    }
    let stored_before: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT doc_id, heads FROM sync_documents ORDER BY doc_id")
            .fetch_all(&pool)
            .await
            .unwrap();

    // The probe's teeth: a second device of X's branch, which may read X's facts (branch
    // peers relay through the hub), does receive them through the same path, so a hub that
    // served a foreign document would be caught.
    let dir = tempfile::tempdir().unwrap();
    let x2 = enroll_device(&pool, &hub, "ST-RA", "iso-x2", dir.path()).await;
    let peer_read = probe(
        &hub,
        &x2,
        vec![(DocId::device(px.device), AutoCommit::new())],
    )
    .await;
    assert!(
        !peer_read.leaks.is_empty(),
        "the probe cannot see content: {peer_read:?}"
    );

    let mut rows = Vec::new();
    for (me, who, victim, what) in [
        (&x, "X", &py, "Y"),
        (&x, "X", &pz, "Z"),
        (&z, "Z", &px, "X"),
    ] {
        let reads = vec![
            (DocId::branch_intents(victim.branch), AutoCommit::new()),
            (DocId::device(victim.device), AutoCommit::new()),
        ];
        let read = probe(&hub, me, reads).await;
        assert!(
            read.control,
            "{who}: its own intents never arrived: {read:?}"
        );
        assert!(
            read.leaks.is_empty(),
            "{who} reads {what}: leaked {:#?}",
            read.leaks
        );
        let write = probe(&hub, me, vec![forged_intents(victim), forged_facts(victim)]).await;
        assert!(
            write.control,
            "{who}: its own intents never arrived: {write:?}"
        );
        assert!(
            write.leaks.is_empty(),
            "{who} writes {what}: leaked {:#?}",
            write.leaks
        );
        assert!(
            write.errors >= 2,
            "{who} → {what}: forged writes were not refused: {write:?}"
        );
        rows.push(format!(
            "{who} → {what}: reads 0 leaks ({} errors), writes 0 leaks ({} refusals)",
            read.errors, write.errors
        ));
    }
    // Nothing of the forged writes was stored.
    let stored_after: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT doc_id, heads FROM sync_documents ORDER BY doc_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        stored_before, stored_after,
        "a forged write changed a stored document"
    );
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'sync.refused_out_of_authority'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(refused >= 6, "{refused} refusals audited");
    eprintln!("isolation_sync:\n{}", rows.join("\n"));
}
