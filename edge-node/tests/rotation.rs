//! Live-document rotation (`live.rs`, "Rotation"): a rental open across a rotation is still
//! returned and reaches the hub once; a retired epoch is dropped only once the hub holds it;
//! a device offline for thirty days, rotating all along, merges with nothing lost and nothing
//! resurrected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod station;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use automerge::AutoCommit;
use cartwise_edge_node::engine::{Engine, SyncPeer};
use cartwise_edge_node::ledger::RentalRow;
use cartwise_edge_node::live::{self, HUB_PEER, LiveDoc, RETIRED_EPOCHS_MAX};
use cartwise_edge_node::store::open_connection;
use cartwise_edge_node::timekeeping::Timeline;
use cartwise_schema::{
    BootId, BranchId, DeviceId, Hlc, MonoMillis, Phone, PostNo, RentalId, RentalStatus, Stamp,
    WallMillis,
};
use cartwise_sync_core::facts::{DeviceFacts, read_device_doc};
use cartwise_sync_core::{DocId, HubActors, PeerDocState};
use rusqlite::{Connection, params};
use station::Station;

fn engine(station: &Station) -> Arc<Engine> {
    Arc::clone(&station.edge.as_ref().unwrap().0.engine)
}

/// The hub's copies of a device's documents, one per epoch, with its sync state of each.
#[derive(Default)]
struct Hub {
    docs: BTreeMap<DocId, (AutoCommit, PeerDocState)>,
}

impl Hub {
    /// Runs the sync of `doc` with the engine until neither side has anything to send: the
    /// edge opens, then each side answers the other's message (as a session does).
    async fn sync(&mut self, engine: &Engine, doc: DocId) {
        let (hub_doc, hub_state) = self
            .docs
            .entry(doc)
            .or_insert_with(|| (AutoCommit::new(), PeerDocState::new(doc)));
        let mut up = engine
            .sync_generate_doc(HUB_PEER.into(), doc)
            .await
            .unwrap();
        for _ in 0..16 {
            if let Some(body) = up.take() {
                hub_state
                    .receive(hub_doc, &body, &HubActors::new([]))
                    .unwrap();
            }
            let Some(down) = hub_state.generate(hub_doc).unwrap() else {
                return;
            };
            up = engine
                .sync_receive_doc(HUB_PEER.into(), SyncPeer::Hub, down)
                .await
                .unwrap();
        }
        panic!("the sync of {doc} did not settle");
    }

    /// Every rental the hub's copies show, newest epoch last; the projection's rule applied:
    /// a closed rental never goes back to open.
    fn projection(&self) -> BTreeMap<RentalId, RentalStatus> {
        let mut rows: BTreeMap<RentalId, RentalStatus> = BTreeMap::new();
        for (doc, _) in self.docs.values() {
            for rental in read_device_doc(doc).rentals {
                let row = rows.entry(rental.id).or_insert(rental.status);
                if row.is_open() {
                    *row = rental.status;
                }
            }
        }
        rows
    }
}

fn facts(bytes: &[u8]) -> DeviceFacts {
    read_device_doc(&AutoCommit::load(bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rental_open_across_a_rotation_is_returned_and_reaches_the_hub_once() {
    let station = Station::start().await;
    let engine = engine(&station);
    station.rent("0521234567", "+972521234567").await;
    let before = facts(&engine.document().await.unwrap());
    let [rental] = before.rentals.as_slice() else {
        panic!("{:?}", before.rentals);
    };
    assert!(rental.status.is_open());
    let first = engine.document_id();
    assert_eq!(first.epoch(), 0);

    let next = engine.rotate_live_document().await.unwrap();
    assert_eq!(next, first.next_epoch());
    assert_eq!(engine.document_id(), next);
    // The new epoch carries the current state: the open rental, every post.
    let rotated = facts(&engine.document().await.unwrap());
    assert_eq!(rotated.rentals, before.rentals);
    assert_eq!(rotated.posts, before.posts);
    assert_eq!(
        engine.own_documents().await.unwrap(),
        vec![next, first],
        "the retired epoch is still offered"
    );

    station.give_back("0521234567").await;
    let after = facts(&engine.document().await.unwrap());
    let [returned] = after.rentals.as_slice() else {
        panic!("{:?}", after.rentals);
    };
    assert_eq!(returned.id, rental.id);
    assert_eq!(returned.status, RentalStatus::Returned);

    // The hub gets the new epoch first; the retired one is kept until the hub holds it.
    let mut hub = Hub::default();
    hub.sync(&engine, next).await;
    assert!(engine.own_documents().await.unwrap().contains(&first));
    hub.sync(&engine, first).await;
    assert_eq!(
        engine.own_documents().await.unwrap(),
        vec![next],
        "dropped once the hub holds its final heads"
    );
    // Once at the hub, and closed there, whatever order the epochs arrived in.
    assert_eq!(
        hub.projection(),
        BTreeMap::from([(rental.id, RentalStatus::Returned)])
    );
    // The edge forgot the retired epoch's sync progress with it.
    let states: i64 = engine
        .store()
        .read(move |conn, _| {
            Ok(conn.query_row(
                "SELECT count(*) FROM sync_peer_states WHERE doc = ?1",
                [first.to_string()],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(states, 0);
}

// ---- Thirty days offline, through the live-document writer itself ----

const DEVICE: &str = "0b1e3c2a-0000-4000-8000-000000001001";
const BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000101";
const BOOT: &str = "0b1e3c2a-0000-4000-8000-0000000b0071";

fn device() -> DeviceId {
    DeviceId::parse(DEVICE).unwrap()
}

struct Writer {
    conn: Connection,
    live: LiveDoc,
    timeline: Timeline,
    _dir: tempfile::TempDir,
}

impl Writer {
    fn open(rotate_bytes: usize) -> Writer {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        let mut live = LiveDoc::open(&conn, device(), BranchId::parse(BRANCH).unwrap()).unwrap();
        live.set_rotate_saved_bytes(rotate_bytes);
        let timeline = Timeline::load(&conn).unwrap();
        Writer {
            conn,
            live,
            timeline,
            _dir: dir,
        }
    }

    fn stamp(n: u64, offset: u64) -> Stamp {
        // Thirty days of rentals: one every ~27 minutes.
        let mono = n * 1_620_000 + offset;
        Stamp {
            wall: WallMillis::new(1_795_248_000_000 + mono as i64),
            boot: BootId::parse(BOOT).unwrap(),
            mono: MonoMillis::new(mono),
            hlc: Hlc::new(
                1_795_248_000_000 + mono,
                0,
                Hlc::node_from_uuid(device().as_uuid()),
            )
            .unwrap(),
        }
    }

    fn lend(&mut self, n: u64) -> RentalRow {
        let row = RentalRow {
            id: RentalId::from_parts(1_795_248_000_000 + n * 1_620_000, [(n % 251) as u8; 10]),
            phone: Phone::parse(&format!("052{:07}", n)).unwrap(),
            post: PostNo::new((n % 32 + 1) as u16).unwrap(),
            status: RentalStatus::Active,
            rental_minutes: 120,
            start: Self::stamp(n, 0),
            taken: Some(Self::stamp(n, 2_000).hlc),
            end: None,
            return_post: None,
            note: None,
        };
        self.live.put_rental(&row, &self.timeline).unwrap();
        self.live.persist(&self.conn).unwrap();
        row
    }

    fn close(&mut self, mut row: RentalRow, n: u64) {
        row.status = RentalStatus::Returned;
        row.end = Some(Self::stamp(n, 30 * 60_000));
        row.return_post = Some(row.post);
        self.live.put_rental(&row, &self.timeline).unwrap();
        self.live.persist(&self.conn).unwrap();
    }

    fn own_docs(&self) -> Vec<DocId> {
        let mut docs = vec![self.live.doc_id()];
        docs.extend(
            live::retired_epochs(&self.conn, device())
                .unwrap()
                .into_iter()
                .map(|r| r.doc),
        );
        docs
    }

    fn hub_state(&self, doc: DocId) -> PeerDocState {
        self.conn
            .query_row(
                "SELECT state FROM sync_peer_states WHERE peer = ?1 AND doc = ?2",
                params![HUB_PEER, doc.to_string()],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .ok()
            .map(|bytes| PeerDocState::decode(doc, &bytes).unwrap())
            .unwrap_or_else(|| PeerDocState::new(doc))
    }

    /// Syncs every own document with the hub (as the engine does), then drops the retired
    /// epochs it now holds whole.
    fn sync_with(&mut self, hub: &mut BTreeMap<DocId, (AutoCommit, PeerDocState)>) {
        for doc in self.own_docs() {
            let mut document = if doc == self.live.doc_id() {
                self.live.doc().clone()
            } else {
                live::load_retired(&self.conn, doc).unwrap()
            };
            let mut state = self.hub_state(doc);
            let (hub_doc, hub_state) = hub
                .entry(doc)
                .or_insert_with(|| (AutoCommit::new(), PeerDocState::new(doc)));
            for _ in 0..16 {
                let up = state.generate(&mut document).unwrap();
                if let Some(body) = &up {
                    hub_state
                        .receive(hub_doc, body, &HubActors::new([]))
                        .unwrap();
                }
                let down = hub_state.generate(hub_doc).unwrap();
                if let Some(body) = &down {
                    state
                        .receive(&mut document, body, &HubActors::new([]))
                        .unwrap();
                }
                if up.is_none() && down.is_none() {
                    break;
                }
            }
            self.conn
                .execute(
                    "INSERT INTO sync_peer_states (peer, doc, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT (peer, doc) DO UPDATE SET state = excluded.state",
                    params![HUB_PEER, doc.to_string(), state.encode()],
                )
                .unwrap();
        }
        for retired in live::retired_epochs(&self.conn, device()).unwrap() {
            if live::hub_holds(&self.conn, retired.doc, &retired.final_heads).unwrap() {
                live::drop_epoch(&self.conn, retired.doc).unwrap();
            }
        }
    }
}

/// The hub's projection after a merge: every rental any of its copies shows, a closed one
/// never going back to open (the rows stay when a rental later leaves the document).
fn project(
    hub: &BTreeMap<DocId, (AutoCommit, PeerDocState)>,
    rows: &mut BTreeMap<RentalId, RentalStatus>,
) {
    for (doc, _) in hub.values() {
        for (id, status) in rentals_of(doc) {
            let row = rows.entry(id).or_insert(status);
            if row.is_open() {
                *row = status;
            }
        }
    }
}

fn rentals_of(doc: &AutoCommit) -> BTreeMap<RentalId, RentalStatus> {
    read_device_doc(doc)
        .rentals
        .into_iter()
        .map(|r| (r.id, r.status))
        .collect()
}

/// Rentals while the hub is reachable, then while it is not.
const ONLINE: u64 = 100;
const OFFLINE: u64 = 500;

#[test]
fn thirty_days_offline_with_rotations_merges_with_nothing_lost_or_resurrected() {
    let mut writer = Writer::open(4 * 1024);
    let mut hub: BTreeMap<DocId, (AutoCommit, PeerDocState)> = BTreeMap::new();
    let mut projected: BTreeMap<RentalId, RentalStatus> = BTreeMap::new();

    // Online: rentals synced and acknowledged in batches as they close (they leave the
    // document); the last few are still open when the hub goes away.
    let mut acked = BTreeSet::new();
    let mut open = BTreeMap::new();
    let mut batch = Vec::new();
    for n in 0..ONLINE {
        let row = writer.lend(n);
        if n < ONLINE - 20 {
            writer.close(row.clone(), n);
            batch.push(row.id);
        } else {
            open.insert(n, row);
        }
        if batch.len() == 25 {
            writer.sync_with(&mut hub);
            project(&hub, &mut projected);
            for id in batch.drain(..) {
                writer.live.remove_rental(id).unwrap();
                acked.insert(id);
            }
            writer.live.persist(&writer.conn).unwrap();
        }
    }
    writer.sync_with(&mut hub);
    project(&hub, &mut projected);
    for id in batch.drain(..) {
        writer.live.remove_rental(id).unwrap();
        acked.insert(id);
    }
    writer.live.persist(&writer.conn).unwrap();
    writer.sync_with(&mut hub);
    let epoch_offline = writer.live.doc_id().epoch();

    // Thirty days offline: the open rentals come back, many more are lent and returned.
    let mut offline = BTreeSet::new();
    for (n, row) in std::mem::take(&mut open) {
        offline.insert(row.id);
        writer.close(row, n);
    }
    for n in ONLINE..ONLINE + OFFLINE {
        let row = writer.lend(n);
        offline.insert(row.id);
        writer.close(row, n);
    }
    let rotations = writer.live.doc_id().epoch() - epoch_offline;
    assert!(rotations >= 2, "rotated while offline: {rotations}");
    let waiting = live::retired_epochs(&writer.conn, device()).unwrap();
    assert!(waiting.len() <= RETIRED_EPOCHS_MAX, "{}", waiting.len());

    // Nothing lost on the device: the current epoch holds every rental the hub has not
    // acknowledged, closed; no acknowledged rental came back.
    let current = rentals_of(writer.live.doc());
    assert!(
        current.keys().copied().eq(offline.iter().copied()),
        "the current epoch holds {} rentals, {} not acknowledged",
        current.len(),
        offline.len()
    );
    assert!(current.values().all(|s| *s == RentalStatus::Returned));

    // Back online: everything merges; the hub's projection has every rental, closed.
    writer.sync_with(&mut hub);
    project(&hub, &mut projected);
    let all: BTreeSet<RentalId> = acked.union(&offline).copied().collect();
    let at_hub_ids: BTreeSet<RentalId> = projected.keys().copied().collect();
    let missing: Vec<_> = all.difference(&at_hub_ids).collect();
    let extra: Vec<_> = at_hub_ids.difference(&all).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {} (acked {}), extra {}: {:?}",
        missing.len(),
        missing.iter().filter(|id| acked.contains(id)).count(),
        extra.len(),
        missing.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        projected.values().all(|s| *s == RentalStatus::Returned),
        "nothing reopened"
    );
    // The current epoch at the hub equals the device's; acknowledged rentals are in no epoch
    // newer than the one they were acknowledged in, so nothing can bring them back.
    let newest = writer.live.doc_id();
    let at_hub = rentals_of(&hub.get(&newest).unwrap().0);
    assert_eq!(at_hub, current);
    assert!(at_hub.keys().all(|id| !acked.contains(id)));
    assert!(
        live::retired_epochs(&writer.conn, device())
            .unwrap()
            .is_empty(),
        "every retired epoch dropped once the hub held it"
    );
}
