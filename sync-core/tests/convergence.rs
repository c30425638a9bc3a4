//! Two in-memory sessions with Automerge documents: convergence through `Sync` messages with
//! loss-free delivery, an idle reconnect from persisted sync state in one round trip, a
//! 300-rental catch-up, and an out-of-authority change refused while other documents sync.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT, ReadDoc};
use cartwise_schema::RentalId;
use cartwise_sync_core::message::SyncBody;
use cartwise_sync_core::session::{SessionConfig, Side};
use cartwise_sync_core::{
    DocId, DocSyncError, HubActors, Message, Output, PeerDocState, Session, SessionEvent,
    device_actor, error_code,
};

fn hub_actor() -> ActorId {
    ActorId::from([0xFE; 16])
}

/// One node of the test: a session, its documents, and its per-peer sync states.
struct Node {
    session: Session,
    docs: BTreeMap<DocId, AutoCommit>,
    states: BTreeMap<DocId, PeerDocState>,
    hub_actors: HubActors,
    refused: Vec<DocSyncError>,
    peer_errors: Vec<u16>,
    skipped: Vec<u16>,
}

impl Node {
    fn new(
        session: Session,
        docs: BTreeMap<DocId, AutoCommit>,
        persisted: &BTreeMap<DocId, Vec<u8>>,
    ) -> Self {
        let states = persisted
            .iter()
            .map(|(doc, bytes)| (*doc, PeerDocState::decode(*doc, bytes).unwrap()))
            .collect();
        Node {
            session,
            docs,
            states,
            hub_actors: HubActors::new([hub_actor()]),
            refused: Vec::new(),
            peer_errors: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Initiator: opens the exchange of every document it holds (pipelined after Hello).
    fn open_all(&mut self) {
        let docs: Vec<DocId> = self.docs.keys().copied().collect();
        for doc in docs {
            self.generate(doc);
        }
    }

    fn generate(&mut self, doc: DocId) {
        let document = self.docs.entry(doc).or_default();
        let state = self
            .states
            .entry(doc)
            .or_insert_with(|| PeerDocState::new(doc));
        if let Some(body) = state.generate(document).unwrap() {
            self.session.send(Message::Sync(body)).unwrap();
        }
    }

    fn on_sync(&mut self, body: SyncBody) {
        let doc = body.doc;
        let document = self.docs.entry(doc).or_default();
        let state = self
            .states
            .entry(doc)
            .or_insert_with(|| PeerDocState::new(doc));
        match state.receive(document, &body, &self.hub_actors) {
            Ok(_) => self.generate(doc),
            Err(error) => {
                self.session
                    .send(Message::Error(cartwise_sync_core::message::ErrorBody {
                        code: error_code::AUTHORITY,
                        reason: error.to_string(),
                        doc: Some(doc),
                    }))
                    .unwrap();
                self.refused.push(error);
            }
        }
    }

    /// Drains outputs: frames go to the wire, events to the application.
    fn drain(&mut self, now: cartwise_schema::ClockReading) -> (Vec<u8>, usize, usize) {
        let mut wire = Vec::new();
        let (mut frames, mut sync_frames) = (0, 0);
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Send(frame) => {
                    if matches!(
                        Message::decode(&frame[4..]).unwrap(),
                        Message::Sync(_) | Message::SyncIdle(_)
                    ) {
                        sync_frames += 1;
                    }
                    frames += 1;
                    wire.extend(frame);
                }
                Output::Event(SessionEvent::PeerHello(_)) if !is_initiator(&self.session) => {
                    self.session.admit(now).unwrap();
                }
                Output::Event(SessionEvent::SyncReceived(body)) => self.on_sync(body),
                Output::Event(SessionEvent::PeerError(error)) => self.peer_errors.push(error.code),
                Output::Event(SessionEvent::UnknownSkipped { kind }) => self.skipped.push(kind),
                Output::Event(_) => {}
            }
        }
        (wire, frames, sync_frames)
    }

    fn persisted(&self) -> BTreeMap<DocId, Vec<u8>> {
        self.states
            .iter()
            .map(|(doc, state)| (*doc, state.encode()))
            .collect()
    }
}

fn is_initiator(session: &Session) -> bool {
    session
        .peer_hello()
        .is_some_and(|hello| hello.role == cartwise_sync_core::message::Role::Hub)
}

/// What a run exchanged.
#[derive(Debug, Default)]
struct Traffic {
    /// Flights (batches in one direction) that carried at least one frame.
    flights: usize,
    /// Bytes and `Sync` frames device → hub and hub → device.
    up_bytes: usize,
    down_bytes: usize,
    up_sync: usize,
    down_sync: usize,
    up_sync_bytes: usize,
    down_sync_bytes: usize,
}

/// Delivers flights alternately until neither side has anything to send.
fn run(device: &mut Node, hub: &mut Node) -> Traffic {
    let mut traffic = Traffic::default();
    let mut mono = 10;
    let mut idle_flights = 0;
    let mut from_device = true;
    while idle_flights < 2 {
        mono += 1;
        let now = common::clock(common::BOOT_HUB, mono);
        let (sender, receiver) = if from_device {
            (&mut *device, &mut *hub)
        } else {
            (&mut *hub, &mut *device)
        };
        let (wire, frames, sync_frames) = sender.drain(now);
        let sync_bytes = sync_wire_bytes(&wire);
        receiver.session.handle_bytes(now, &wire).unwrap();
        if frames == 0 {
            idle_flights += 1;
        } else {
            idle_flights = 0;
            traffic.flights += 1;
            if from_device {
                traffic.up_bytes += wire.len();
                traffic.up_sync += sync_frames;
                traffic.up_sync_bytes += sync_bytes;
            } else {
                traffic.down_bytes += wire.len();
                traffic.down_sync += sync_frames;
                traffic.down_sync_bytes += sync_bytes;
            }
        }
        from_device = !from_device;
        assert!(traffic.flights < 100, "no quiescence");
    }
    traffic
}

/// Bytes of the `Sync` frames in `wire`.
fn sync_wire_bytes(wire: &[u8]) -> usize {
    let mut decoder = cartwise_sync_core::FrameDecoder::new();
    decoder.feed(wire).unwrap();
    let mut total = 0;
    while let Some(payload) = decoder.next().unwrap() {
        if matches!(
            Message::decode(&payload).unwrap(),
            Message::Sync(_) | Message::SyncIdle(_)
        ) {
            total += payload.len() + 4;
        }
    }
    total
}

fn device_doc(rentals: usize) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(device_actor(&common::device_a()));
    add_rentals(&mut doc, 0, rentals);
    doc
}

fn add_rentals(doc: &mut AutoCommit, from: usize, count: usize) {
    let rentals = match doc.get(ROOT, "rentals").unwrap() {
        Some((_, id)) => id,
        None => doc
            .put_object(ROOT, "rentals", automerge::ObjType::Map)
            .unwrap(),
    };
    for index in from..from + count {
        let id = RentalId::from_parts(1_700_000_000_000 + index as u64 * 60_000, [index as u8; 10]);
        let rental = doc
            .put_object(&rentals, id.to_string(), automerge::ObjType::Map)
            .unwrap();
        doc.put(&rental, "post", (index % 160 + 1) as i64).unwrap();
        doc.put(&rental, "phone", "+972501234567").unwrap();
        doc.put(&rental, "status", "closed").unwrap();
        doc.put(
            &rental,
            "started_wall_ms",
            1_700_000_000_000_i64 + index as i64,
        )
        .unwrap();
        doc.put(&rental, "started_mono_ms", 5_000 + index as i64)
            .unwrap();
        doc.put(
            &rental,
            "ended_wall_ms",
            1_700_000_600_000_i64 + index as i64,
        )
        .unwrap();
        doc.put(&rental, "ended_post", (index % 160 + 2) as i64)
            .unwrap();
        doc.put(&rental, "hlc", format!("{:016x}-0000-a", index))
            .unwrap();
        doc.commit();
    }
}

fn intents_doc() -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(hub_actor());
    doc.put(ROOT, "rental_minutes", 120_i64).unwrap();
    doc.commit();
    doc
}

fn sessions() -> (Session, Session) {
    let device = Session::new(
        SessionConfig::new(Side::Initiator),
        common::device_identity(common::device_a()),
        common::clock(common::BOOT_A, 10),
    );
    let hub = Session::new(
        common::hub_config(),
        common::hub_identity(),
        common::clock(common::BOOT_HUB, 10),
    );
    (device, hub)
}

fn heads(node: &mut Node, doc: &DocId) -> Vec<automerge::ChangeHash> {
    node.docs.get_mut(doc).unwrap().get_heads()
}

#[test]
fn documents_converge_then_an_idle_reconnect_is_one_round_trip() {
    let device_doc_id = DocId::device(common::device_a());
    let intents_id = DocId::branch_intents(common::branch());
    let (device_session, hub_session) = sessions();
    let mut device = Node::new(
        device_session,
        BTreeMap::from([
            (device_doc_id, device_doc(20)),
            (intents_id, AutoCommit::new()),
        ]),
        &BTreeMap::new(),
    );
    let mut hub = Node::new(
        hub_session,
        BTreeMap::from([(intents_id, intents_doc())]),
        &BTreeMap::new(),
    );
    device.open_all();
    let first = run(&mut device, &mut hub);
    for doc in [device_doc_id, intents_id] {
        assert_eq!(
            heads(&mut device, &doc),
            heads(&mut hub, &doc),
            "{doc} diverged"
        );
    }
    assert!(device.refused.is_empty() && hub.refused.is_empty());
    eprintln!("first sync: {first:?}");

    // Reconnect with the persisted states, nothing changed: one round trip.
    let (device_persisted, hub_persisted) = (device.persisted(), hub.persisted());
    let (device_session, hub_session) = sessions();
    let mut device = Node::new(device_session, device.docs, &device_persisted);
    let mut hub = Node::new(hub_session, hub.docs, &hub_persisted);
    device.open_all();
    let idle = run(&mut device, &mut hub);
    eprintln!("idle reconnect: {idle:?}");
    assert_eq!(idle.flights, 2, "one round trip: {idle:?}");
    assert_eq!(
        (idle.up_sync, idle.down_sync),
        (2, 2),
        "one Sync each way per document"
    );
    // Both peers speak `sync-idle`: a digest each way instead of a whole Automerge message.
    let per_doc_round_trip = (idle.up_sync_bytes + idle.down_sync_bytes) / 2;
    assert!(
        per_doc_round_trip <= 200,
        "{per_doc_round_trip} B per document round trip"
    );

    // A day offline: 300 rentals, then reconnect.
    add_rentals(device.docs.get_mut(&device_doc_id).unwrap(), 20, 300);
    let (device_persisted, hub_persisted) = (device.persisted(), hub.persisted());
    let (device_session, hub_session) = sessions();
    let mut device = Node::new(device_session, device.docs, &device_persisted);
    let mut hub = Node::new(hub_session, hub.docs, &hub_persisted);
    device.open_all();
    let day = run(&mut device, &mut hub);
    assert_eq!(
        heads(&mut device, &device_doc_id),
        heads(&mut hub, &device_doc_id)
    );
    let sync_bytes = day.up_sync_bytes + day.down_sync_bytes;
    eprintln!(
        "300 rentals: {day:?}; round trips {}; {} sync B per rental",
        day.flights.div_ceil(2),
        sync_bytes / 300
    );
    assert!(day.flights <= 4, "{day:?}");
}

#[test]
fn an_out_of_authority_change_is_refused_while_other_documents_sync() {
    let forged_id = DocId::device(common::device_a());
    let own_id = DocId::device(common::device_b());
    // Device B writes into device A's document (a change whose actor is B's).
    let mut forged = AutoCommit::new().with_actor(device_actor(&common::device_b()));
    forged.put(ROOT, "post_7", "unlocked").unwrap();
    forged.commit();
    let mut own = AutoCommit::new().with_actor(device_actor(&common::device_b()));
    own.put(ROOT, "post_1", "rented").unwrap();
    own.commit();

    let device_session = Session::new(
        SessionConfig::new(Side::Initiator),
        common::device_identity(common::device_b()),
        common::clock(common::BOOT_A, 10),
    );
    let hub_session = Session::new(
        common::hub_config(),
        common::hub_identity(),
        common::clock(common::BOOT_HUB, 10),
    );
    let mut device = Node::new(
        device_session,
        BTreeMap::from([(forged_id, forged), (own_id, own)]),
        &BTreeMap::new(),
    );
    let mut hub = Node::new(hub_session, BTreeMap::new(), &BTreeMap::new());
    device.open_all();
    run(&mut device, &mut hub);

    assert_eq!(
        heads(&mut device, &own_id),
        heads(&mut hub, &own_id),
        "own document synced"
    );
    assert!(
        heads(&mut hub, &forged_id).is_empty(),
        "forged change applied"
    );
    assert_eq!(hub.refused.len(), 1, "{:?}", hub.refused);
    let message = hub.refused[0].to_string();
    assert!(
        message.contains(&format!("refused for device/{}", common::DEVICE_A)),
        "{message}"
    );
    assert!(
        message.contains(&device_actor(&common::device_b()).to_hex_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("only device {}", common::DEVICE_A)),
        "{message}"
    );
    assert_eq!(device.peer_errors, vec![error_code::AUTHORITY]);
    assert!(device.session.is_established() && hub.session.is_established());
}

/// Both sides' documents after a first sync, and their persisted sync states.
type SyncedPair = (
    BTreeMap<DocId, AutoCommit>,
    BTreeMap<DocId, AutoCommit>,
    [BTreeMap<DocId, Vec<u8>>; 2],
);

/// A device and a hub that synced the device document once, with their persisted states.
fn synced_pair() -> SyncedPair {
    let doc = DocId::device(common::device_a());
    let (device_session, hub_session) = sessions();
    let mut device = Node::new(
        device_session,
        BTreeMap::from([(doc, device_doc(20))]),
        &BTreeMap::new(),
    );
    let mut hub = Node::new(hub_session, BTreeMap::new(), &BTreeMap::new());
    device.open_all();
    run(&mut device, &mut hub);
    assert_eq!(heads(&mut device, &doc), heads(&mut hub, &doc));
    let persisted = [device.persisted(), hub.persisted()];
    (device.docs, hub.docs, persisted)
}

#[test]
fn a_hub_without_sync_idle_gets_whole_messages_and_still_converges() {
    let doc = DocId::device(common::device_a());
    let (device_docs, hub_docs, [device_persisted, hub_persisted]) = synced_pair();
    // An older hub: minor 0, no `sync-idle`.
    let old_hub = || {
        let mut config = common::hub_config();
        config.protocol_minor = 0;
        config
            .capabilities
            .retain(|cap| cap != cartwise_sync_core::session::capability::SYNC_IDLE);
        Session::new(
            config,
            common::hub_identity(),
            common::clock(common::BOOT_HUB, 10),
        )
    };
    // Idle reconnect: the pipelined SyncIdle is skipped by the older hub and resent whole.
    let (device_session, _) = sessions();
    let mut device = Node::new(device_session, device_docs, &device_persisted);
    let mut hub = Node::new(old_hub(), hub_docs, &hub_persisted);
    device.open_all();
    let idle = run(&mut device, &mut hub);
    assert_eq!(hub.skipped, vec![35], "{idle:?}");
    assert!(idle.up_sync >= 2 && idle.down_sync >= 1, "{idle:?}");
    assert!(hub.peer_errors.is_empty() && device.peer_errors.is_empty());

    // A new rental reaches the older hub.
    let (device_persisted, hub_persisted) = (device.persisted(), hub.persisted());
    let mut device_docs = device.docs;
    add_rentals(device_docs.get_mut(&doc).unwrap(), 20, 1);
    let (device_session, _) = sessions();
    let mut device = Node::new(device_session, device_docs, &device_persisted);
    let mut hub = Node::new(old_hub(), hub.docs, &hub_persisted);
    device.open_all();
    let traffic = run(&mut device, &mut hub);
    assert_eq!(
        heads(&mut device, &doc),
        heads(&mut hub, &doc),
        "{traffic:?}"
    );
    assert!(hub.peer_errors.is_empty() && device.peer_errors.is_empty());
}

#[test]
fn a_digest_of_heads_the_peer_does_not_know_falls_back_to_whole_messages() {
    let doc = DocId::device(common::device_a());
    let (device_docs, mut hub_docs, [device_persisted, _]) = synced_pair();
    // The hub restored an older copy of the document and lost its sync state: the device's
    // idle digest names heads it has never seen.
    let mut older = device_doc(5);
    hub_docs.insert(doc, older.fork().with_actor(hub_actor()));
    let (device_session, hub_session) = sessions();
    let mut device = Node::new(device_session, device_docs, &device_persisted);
    let mut hub = Node::new(hub_session, hub_docs, &BTreeMap::new());
    device.open_all();
    let traffic = run(&mut device, &mut hub);
    assert_eq!(
        heads(&mut device, &doc),
        heads(&mut hub, &doc),
        "{traffic:?}"
    );
    assert!(traffic.flights <= 8, "no digest ping-pong: {traffic:?}");
    assert!(hub.refused.is_empty() && device.refused.is_empty());
}
