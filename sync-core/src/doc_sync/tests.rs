//! `receive_decoded` against `receive`: the same documents, the same sync states (seen through
//! what each side generates next), and the same refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT, ReadDoc};
use cartwise_schema::DeviceId;

use super::*;
use crate::authority::device_actor;

fn device(text: &str) -> DeviceId {
    DeviceId::parse(text).unwrap()
}

fn owner() -> DeviceId {
    device("0b1e3c2a-0000-4000-8000-000000001001")
}

fn stranger() -> DeviceId {
    device("0b1e3c2a-0000-4000-8000-000000001002")
}

fn hub_actors() -> HubActors {
    HubActors::new([ActorId::from([0xFE; 16])])
}

/// The owner's device document id and a fresh device document written by its actor.
fn owner_device() -> (DocId, AutoCommit) {
    let id = DocId::device(owner());
    (id, AutoCommit::new().with_actor(device_actor(&owner())))
}

/// [`owner_device`], its sync state with the hub, and two hub copies: the first receiving
/// through `receive`, the second through `receive_decoded`.
fn device_and_hubs() -> (DocId, AutoCommit, PeerDocState, [Hub; 2]) {
    let (id, device) = owner_device();
    let hubs = [Hub::new(id, false), Hub::new(id, true)];
    (id, device, PeerDocState::new(id), hubs)
}

/// A hub's copy of one device document, received through one of the two paths.
struct Hub {
    doc: Automerge,
    state: PeerDocState,
    decoded: bool,
}

impl Hub {
    fn new(id: DocId, decoded: bool) -> Hub {
        Hub {
            doc: Automerge::new(),
            state: PeerDocState::new(id),
            decoded,
        }
    }

    fn receive(&mut self, body: &SyncBody) -> Result<Received, DocSyncError> {
        if self.decoded {
            self.state
                .receive_decoded(&mut self.doc, body, &hub_actors())
        } else {
            self.state.receive(&mut self.doc, body, &hub_actors())
        }
    }
}

/// Syncs `device` with both hubs until quiet, one message at a time, checking after every
/// step that the two paths answered alike; returns how many new changes the device's
/// messages carried.
fn sync_both(device: &mut AutoCommit, mine: &mut PeerDocState, hubs: &mut [Hub; 2]) -> usize {
    let actors = HubActors::new([]);
    let mut carried = 0;
    for _ in 0..10 {
        let Some(body) = mine.generate(device).unwrap() else {
            return carried;
        };
        let [plain, decoded] = hubs;
        let before = decoded.doc.get_heads();
        let a = plain.receive(&body).unwrap();
        let b = decoded.receive(&body).unwrap();
        assert_eq!(
            a.heads_changed, b.heads_changed,
            "both paths report the same"
        );
        // `receive` checks every change carried, `receive_decoded` the new ones only.
        assert!(b.changes_checked <= a.changes_checked);
        assert_eq!(
            b.applied,
            decoded.doc.save_after(&before),
            "the applied changes' bytes are what save_after gives for them"
        );
        carried += b.changes_checked;
        assert_eq!(plain.doc.get_heads(), decoded.doc.get_heads());
        assert_eq!(plain.state.encode(), decoded.state.encode());
        let reply_a = plain.state.generate(&mut plain.doc).unwrap();
        let reply_b = decoded.state.generate(&mut decoded.doc).unwrap();
        assert_eq!(reply_a, reply_b, "both paths answer the same");
        if let Some(reply) = reply_b {
            mine.receive(device, &reply, &actors).unwrap();
        }
    }
    panic!("the sync did not settle");
}

fn lend(device: &mut AutoCommit, key: &str) {
    device.put(ROOT, key, "active").unwrap();
    device.commit();
}

/// `count` lends, one change each.
fn lend_many(device: &mut AutoCommit, prefix: &str, count: usize) {
    for k in 0..count {
        lend(device, &format!("{prefix}-{k}"));
    }
}

/// How many chunks the Automerge message in `body` carries (a whole document is one).
fn chunks(body: &SyncBody) -> usize {
    sync::Message::decode(&body.data)
        .map(|m| m.changes.iter().count())
        .unwrap_or(0)
}

/// The first message of `device` that carries changes to a fresh hub copy, after the
/// handshake that tells the device the hub takes whole documents.
fn first_carrying(device: &mut AutoCommit, id: DocId) -> SyncBody {
    let mut mine = PeerDocState::new(id);
    let mut hub = Hub::new(id, true);
    for _ in 0..4 {
        if let Some(body) = mine.generate(device).unwrap() {
            if chunks(&body) > 0 {
                return body;
            }
            hub.receive(&body).unwrap();
        }
        if let Some(reply) = hub.state.generate(&mut hub.doc).unwrap() {
            mine.receive(device, &reply, &HubActors::new([])).unwrap();
        }
    }
    panic!("the device never sent its changes");
}

/// A few changes travel as changes, even when they are the whole document and the peer takes
/// whole documents; a backlog of `WHOLE_DOC_CHANGES_MIN` or more travels as one document.
#[test]
fn a_few_changes_travel_as_changes_and_a_backlog_as_the_whole_document() {
    let (id, mut device) = owner_device();
    lend_many(&mut device, "few", 10);
    assert_eq!(chunks(&first_carrying(&mut device, id)), 10);
    lend_many(&mut device, "backlog", WHOLE_DOC_CHANGES_MIN);
    assert_eq!(chunks(&first_carrying(&mut device, id)), 1);
}

/// A whole-document message (first contact, and a backlog later), change lists, several
/// changes at once and idle rounds leave both hubs with the same document and the same sync
/// state.
#[test]
fn receive_decoded_does_what_receive_does() {
    let (_, mut device, mut mine, mut hubs) = device_and_hubs();
    lend_many(&mut device, "first", WHOLE_DOC_CHANGES_MIN);
    assert_eq!(
        sync_both(&mut device, &mut mine, &mut hubs),
        WHOLE_DOC_CHANGES_MIN
    );
    for round in 1..4 {
        for k in 0..round * 3 {
            lend(&mut device, &format!("r{round}-{k}"));
        }
        assert!(sync_both(&mut device, &mut mine, &mut hubs) >= round * 3);
        assert_eq!(hubs[1].doc.get_heads(), device.get_heads());
    }
    // More than a third of the document, and enough to travel whole.
    lend_many(&mut device, "backlog", 2 * WHOLE_DOC_CHANGES_MIN);
    assert_eq!(
        sync_both(&mut device, &mut mine, &mut hubs),
        2 * WHOLE_DOC_CHANGES_MIN
    );
    lend(&mut device, "last");
    assert_eq!(sync_both(&mut device, &mut mine, &mut hubs), 1);
    // In sync: nothing more to say either way.
    assert_eq!(sync_both(&mut device, &mut mine, &mut hubs), 0);
    assert_eq!(
        hubs[1]
            .doc
            .get(ROOT, "last")
            .unwrap()
            .map(|(v, _)| v.to_string()),
        Some("\"active\"".to_owned())
    );
}

/// A message carrying a change by another actor than the document's owner is refused through
/// the new path too: nothing of it is applied and the sync state does not move.
#[test]
fn a_forged_change_is_refused_through_receive_decoded() {
    let (id, mut device, mut mine, mut hubs) = device_and_hubs();
    lend(&mut device, "r0");
    sync_both(&mut device, &mut mine, &mut hubs);
    let heads = hubs[1].doc.get_heads();
    let state = hubs[1].state.encode();

    // A change list (one new change, by a stranger's actor, among the owner's).
    device.set_actor(device_actor(&stranger()));
    lend(&mut device, "forged");
    device.set_actor(device_actor(&owner()));
    lend(&mut device, "after");
    let body = mine.generate(&mut device).unwrap().unwrap();
    for hub in &mut hubs {
        assert!(matches!(
            hub.receive(&body),
            Err(DocSyncError::Authority(AuthorityError::ForeignActor { .. }))
        ));
    }
    assert_eq!(hubs[1].doc.get_heads(), heads, "nothing was applied");
    assert_eq!(hubs[1].state.encode(), state, "the state did not move");
    assert!(hubs[1].doc.get(ROOT, "forged").unwrap().is_none());

    // The same forged history as a whole document, to a fresh hub copy.
    lend_many(&mut device, "more", WHOLE_DOC_CHANGES_MIN);
    let mut fresh = Hub::new(id, true);
    let mut state = PeerDocState::new(id);
    let mut refused = 0;
    for _ in 0..4 {
        if let Some(body) = state.generate(&mut device).unwrap() {
            let whole = chunks(&body);
            match fresh.receive(&body) {
                Err(DocSyncError::Authority(AuthorityError::ForeignActor { .. })) => {
                    assert_eq!(whole, 1, "the history travels as one whole document");
                    refused += 1;
                }
                other => assert_eq!(other.unwrap().changes_checked, 0),
            }
        }
        if let Some(reply) = fresh.state.generate(&mut fresh.doc).unwrap() {
            state
                .receive(&mut device, &reply, &HubActors::new([]))
                .unwrap();
        }
    }
    assert_eq!(refused, 1, "the whole document was sent and refused");
    assert!(fresh.doc.get_heads().is_empty(), "nothing was applied");
}

/// Undecodable changes are refused and a garbled message is malformed, as through `receive`.
#[test]
fn undecodable_changes_are_refused_through_receive_decoded() {
    let (id, mut device) = owner_device();
    lend(&mut device, "r0");
    let mut state = PeerDocState::new(id);
    let body = state.generate(&mut device).unwrap().unwrap();
    let mut message = sync::Message::decode(&body.data).unwrap();
    // Give the hub's empty side's first answer so the device sends its changes.
    let mut hub = Hub::new(id, true);
    let hello = hub.state.generate(&mut hub.doc).unwrap().unwrap();
    state
        .receive(&mut device, &hello, &HubActors::new([]))
        .unwrap();
    if message.changes.is_empty()
        && let Some(next) = state.generate(&mut device).unwrap()
    {
        message = sync::Message::decode(&next.data).unwrap();
    }
    assert!(!message.changes.is_empty(), "the device sends its change");
    let mut chunks: Vec<Vec<u8>> = message.changes.iter().map(<[u8]>::to_vec).collect();
    chunks[0].extend([0x85, 0x6f, 0x4a]);
    message.changes = chunks.into();
    let bad = SyncBody {
        doc: id,
        data: message.encode(),
    };
    assert!(matches!(
        hub.receive(&bad),
        Err(DocSyncError::Authority(AuthorityError::Undecodable { .. }))
    ));
    assert!(hub.doc.get_heads().is_empty(), "nothing was applied");
    let garbage = SyncBody {
        doc: id,
        data: vec![0x42, 0xFF],
    };
    assert!(matches!(
        hub.receive(&garbage),
        Err(DocSyncError::Malformed { .. })
    ));
    let other = SyncBody {
        doc: DocId::device(stranger()),
        data: bad.data,
    };
    assert!(matches!(
        hub.receive(&other),
        Err(DocSyncError::WrongDoc { .. })
    ));
}

/// A whole document sent to a hub that holds part of it: only the changes the hub lacks are
/// taken out of it and checked, and a forged one among them is refused with nothing applied.
#[test]
fn a_forged_change_in_a_whole_document_to_a_holding_hub_is_refused() {
    let (_, mut device, mut mine, mut hubs) = device_and_hubs();
    for k in 0..3 {
        lend(&mut device, &format!("r{k}"));
    }
    sync_both(&mut device, &mut mine, &mut hubs);
    let heads = hubs[1].doc.get_heads();
    lend_many(&mut device, "before", WHOLE_DOC_CHANGES_MIN / 2);
    device.set_actor(device_actor(&stranger()));
    lend(&mut device, "forged");
    device.set_actor(device_actor(&owner()));
    lend_many(&mut device, "after", WHOLE_DOC_CHANGES_MIN / 2);
    let body = mine.generate(&mut device).unwrap().unwrap();
    assert_eq!(
        chunks(&body),
        1,
        "more than a third of the document, and a backlog: it travels whole"
    );
    assert!(matches!(
        hubs[1].receive(&body),
        Err(DocSyncError::Authority(AuthorityError::ForeignActor { .. }))
    ));
    assert_eq!(hubs[1].doc.get_heads(), heads, "nothing was applied");
}
