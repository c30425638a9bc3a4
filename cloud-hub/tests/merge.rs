//! The hub's merge path through its API (`Merger::submit`), against Postgres: many devices of
//! one branch syncing at once converge in batches; replaying the same messages (on a warm or a
//! cold hub) leaves the same rows; a return docked at another device closes the rental once
//! and an older document state never reopens it, even when the rental and its return are synced
//! at the same moment on different workers; a second hub process's writes are not lost;
//! relayed documents are readable, not writable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use cartwise_cloud_hub::clock::HubClock;
use cartwise_cloud_hub::merge::{Access, Job, MergeError, Work};
use cartwise_cloud_hub::sync_server::SyncServer;
use cartwise_cloud_hub::{docs_store, enroll, seed, world::World};
use cartwise_schema::{BranchId, ChainId, DeviceId, RentalId};
use cartwise_sync_core::identity::{PeerIdentity, Role};
use cartwise_sync_core::message::body::SyncBody;
use cartwise_sync_core::{DocId, HubActors, PeerDocState, device_actor};
use sqlx::PgPool;

const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";
const BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000101"; // ST-RA, posts 1..=48
const PI_1: &str = "0b1e3c2a-0000-4000-8000-000000001001"; // posts 1..=32
const PI_2: &str = "0b1e3c2a-0000-4000-8000-000000001002"; // posts 33..=48
const T0: i64 = 1_795_248_000_000;

async fn seed_world(pool: &PgPool) {
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(pool, &World::parse(&text).unwrap())
        .await
        .unwrap();
}

fn peer(device: DeviceId) -> PeerIdentity {
    PeerIdentity {
        role: Role::Device,
        chain: ChainId::parse(CHAIN).unwrap(),
        branch: BranchId::parse(BRANCH).unwrap(),
        device,
    }
}

/// A device's live document, written as the edge writes it.
struct Device {
    id: DeviceId,
    doc: AutoCommit,
    hub: PeerDocState,
    /// The hub's side of the session (kept between syncs, as a live session does).
    hub_side: Option<PeerDocState>,
    sent: Vec<SyncBody>,
    acked: Vec<RentalId>,
    refused: Vec<String>,
}

impl Device {
    fn new(id: DeviceId) -> Device {
        let mut doc = AutoCommit::new().with_actor(device_actor(&id));
        doc.put(ROOT, "schema", 1).unwrap();
        doc.put(ROOT, "device", id.to_string()).unwrap();
        doc.put(ROOT, "branch", BRANCH).unwrap();
        doc.put_object(ROOT, "rentals", ObjType::Map).unwrap();
        doc.put_object(ROOT, "returns", ObjType::Map).unwrap();
        Device {
            id,
            doc,
            hub: PeerDocState::new(DocId::device(id)),
            hub_side: None,
            sent: Vec::new(),
            acked: Vec::new(),
            refused: Vec::new(),
        }
    }

    fn rental(&mut self, id: RentalId, post: u64, status: &str, start: i64, end: Option<i64>) {
        let rentals = self.doc.get(ROOT, "rentals").unwrap().unwrap().1;
        let r = self
            .doc
            .put_object(&rentals, id.to_string(), ObjType::Map)
            .unwrap();
        self.doc.put(&r, "phone", "+972521234567").unwrap();
        self.doc.put(&r, "post", post).unwrap();
        self.doc.put(&r, "status", status).unwrap();
        self.doc.put(&r, "minutes", 120_u64).unwrap();
        self.doc.put(&r, "start_hlc", format!("{start}:0")).unwrap();
        self.doc.put(&r, "start_at", start).unwrap();
        self.doc.put(&r, "time_trusted", true).unwrap();
        if let Some(end) = end {
            self.doc.put(&r, "end_at", end).unwrap();
            self.doc.put(&r, "end_hlc", format!("{end}:0")).unwrap();
        }
        self.doc.commit();
    }

    fn returned(&mut self, rental: RentalId, origin: DeviceId, post: u64, end: i64) {
        let returns = self.doc.get(ROOT, "returns").unwrap().unwrap().1;
        let r = self
            .doc
            .put_object(&returns, rental.to_string(), ObjType::Map)
            .unwrap();
        self.doc.put(&r, "origin", origin.to_string()).unwrap();
        self.doc.put(&r, "post", post).unwrap();
        self.doc.put(&r, "status", "returned").unwrap();
        self.doc.put(&r, "end_at", end).unwrap();
        self.doc.put(&r, "end_hlc", format!("{end}:0")).unwrap();
        self.doc.put(&r, "time_trusted", true).unwrap();
        self.doc.commit();
    }

    /// The origin's own dock: the cart came back to this device's `post`.
    fn docked_here(&mut self, id: RentalId, post: u64) {
        let rentals = self.doc.get(ROOT, "rentals").unwrap().unwrap().1;
        let r = self.doc.get(&rentals, id.to_string()).unwrap().unwrap().1;
        self.doc.put(&r, "return_post", post).unwrap();
        self.doc.commit();
    }

    /// A new session (to another hub process, say): both sides forget what is in flight.
    fn reconnect(&mut self) {
        self.hub.reset_in_flight();
        self.hub_side = None;
    }

    /// Syncs with the hub's merge path until neither side has anything to send.
    async fn sync(&mut self, server: &SyncServer) {
        let actors = HubActors::new([]);
        let mut hub_state = match self.hub_side.take() {
            Some(state) if state.doc() == self.hub.doc() => Some(state),
            _ => Some(PeerDocState::new(self.hub.doc())),
        };
        for _ in 0..20 {
            let Some(body) = self.hub.generate(&mut self.doc).unwrap() else {
                self.hub_side = hub_state;
                return;
            };
            self.sent.push(body.clone());
            let done = server
                .merger()
                .submit(Job {
                    peer: peer(self.id),
                    doc: body.doc,
                    access: Access::Write,
                    state: hub_state.take().unwrap(),
                    work: Work::Receive(body),
                })
                .await;
            hub_state = Some(done.state);
            let merged = done.outcome.unwrap();
            self.acked.extend(merged.acked);
            self.refused.extend(merged.refused_facts);
            if let Some(reply) = merged.reply {
                self.hub.receive(&mut self.doc, &reply, &actors).unwrap();
            }
        }
        panic!("sync did not settle");
    }
}

fn rental_id(n: u32) -> RentalId {
    RentalId::parse(&format!("019a0000-0000-7000-8000-{n:012}")).unwrap()
}

/// Every row the projection and the document store write, as text, for byte comparison.
async fn snapshot(pool: &PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for query in [
        "SELECT r::text FROM rentals r ORDER BY id",
        "SELECT c::text FROM carts c ORDER BY id",
        "SELECT a::text FROM anomalies a ORDER BY device_id, anomaly_key",
        "SELECT x::text FROM rental_returns x ORDER BY rental_id",
        "SELECT doc_id || ' ' || version || ' ' || encode(heads, 'hex') || ' ' || updated_at
           FROM sync_documents ORDER BY doc_id",
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

async fn status(pool: &PgPool, id: RentalId) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM rentals WHERE id = $1")
        .bind(*id.as_uuid())
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn many_devices_of_one_branch_converge_in_batches(pool: PgPool) {
    seed_world(&pool).await;
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let mut devices = Vec::new();
    for n in 0..24_u32 {
        let new = enroll::add_device(&pool, "ST-RA", &format!("pi-{n}"), enroll::CODE_TTL_DEFAULT)
            .await
            .unwrap();
        let mut device = Device::new(new.device);
        for k in 0..4_u32 {
            let start = T0 + i64::from(k) * 60_000;
            let closed = k % 2 == 0;
            device.rental(
                rental_id(n * 10 + k),
                u64::from(1 + (n + k) % 48),
                if closed { "returned" } else { "active" },
                start,
                closed.then_some(start + 600_000),
            );
        }
        devices.push(device);
    }
    // All at once: the workers take what is queued in batches.
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|mut device| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                device.sync(&server).await;
                device
            })
        })
        .collect();
    let mut devices = Vec::new();
    for task in tasks {
        devices.push(task.await.unwrap());
    }
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM rentals GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        counts,
        vec![("active".to_owned(), 48), ("returned".to_owned(), 48)]
    );
    for device in &mut devices {
        // The hub's copy has exactly the device's heads, and the closed rentals were acked.
        let stored = docs_store::load(&pool, &DocId::device(device.id))
            .await
            .unwrap();
        assert_eq!(stored.get_heads(), device.doc.get_heads());
        let mut acked = device.acked.clone();
        acked.sort();
        acked.dedup();
        assert_eq!(acked.len(), 2, "{}", device.id);
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn replaying_the_same_messages_leaves_the_same_rows(pool: PgPool) {
    seed_world(&pool).await;
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let mut device = Device::new(DeviceId::parse(PI_1).unwrap());
    device.rental(rental_id(1), 3, "active", T0, None);
    device.sync(&server).await;
    device.rental(rental_id(2), 4, "returned", T0, Some(T0 + 30 * 60_000));
    device.sync(&server).await;
    let before = snapshot(&pool).await;
    assert_eq!(
        status(&pool, rental_id(2)).await.as_deref(),
        Some("returned")
    );

    // The recorded messages again, on a warm hub and on a cold one (a new process).
    for server in [
        Arc::clone(&server),
        SyncServer::new(pool.clone(), Arc::new(HubClock::new())),
    ] {
        let mut state = PeerDocState::new(DocId::device(device.id));
        for body in device.sent.clone() {
            let done = server
                .merger()
                .submit(Job {
                    peer: peer(device.id),
                    doc: body.doc,
                    access: Access::Write,
                    state,
                    work: Work::Receive(body),
                })
                .await;
            state = done.state;
            done.outcome.unwrap();
        }
        assert_eq!(snapshot(&pool).await, before);
    }

    // The hub forgets the document (a fresh hub database would not have it): the replay merges
    // and projects every fact again, and the projected rows stay byte-identical.
    sqlx::query("DELETE FROM sync_documents")
        .execute(&pool)
        .await
        .unwrap();
    let cold = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let mut state = PeerDocState::new(DocId::device(device.id));
    for body in device.sent.clone() {
        let done = cold
            .merger()
            .submit(Job {
                peer: peer(device.id),
                doc: body.doc,
                access: Access::Write,
                state,
                work: Work::Receive(body),
            })
            .await;
        state = done.state;
        done.outcome.unwrap();
    }
    let projected = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .filter(|r| !r.starts_with("device/"))
            .collect()
    };
    assert_eq!(projected(snapshot(&pool).await), projected(before));
    let stored = docs_store::load(&pool, &DocId::device(device.id))
        .await
        .unwrap();
    assert_eq!(stored.get_heads(), device.doc.get_heads());
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_return_elsewhere_closes_the_rental_once_and_old_states_never_reopen_it(pool: PgPool) {
    seed_world(&pool).await;
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let (pi_1, pi_2) = (
        DeviceId::parse(PI_1).unwrap(),
        DeviceId::parse(PI_2).unwrap(),
    );
    let mut a = Device::new(pi_1);
    let mut b = Device::new(pi_2);
    let (r1, r2) = (rental_id(1), rental_id(2));
    a.rental(r1, 5, "active", T0, None);
    a.sync(&server).await;
    // R1 docks at pi-2's post 40 after 25 minutes: the row closes from pi-2's document.
    b.returned(r1, pi_1, 40, T0 + 25 * 60_000);
    // R2's return reaches the hub before R2 itself.
    b.returned(r2, pi_1, 41, T0 + 50 * 60_000);
    b.sync(&server).await;
    let row: (String, i32, i32) = sqlx::query_as(
        "SELECT r.status, r.duration_minutes, c.cart_number FROM rentals r
         JOIN carts c ON c.id = r.return_cart_id WHERE r.id = $1",
    )
    .bind(*r1.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row, ("returned".to_owned(), 25, 40));
    assert_eq!(status(&pool, r2).await, None);

    // pi-1 has not folded the return yet: its document still says R1 is active, and now R2
    // arrives, active too. R1 stays returned; R2 closes from the waiting return.
    a.rental(r2, 6, "active", T0 + 20 * 60_000, None);
    a.sync(&server).await;
    assert_eq!(status(&pool, r1).await.as_deref(), Some("returned"));
    assert_eq!(status(&pool, r2).await.as_deref(), Some("returned"));

    // An older state of pi-1's facts (an epoch that never saw the returns) changes nothing.
    let mut old = Device::new(pi_1);
    old.hub = PeerDocState::new(DocId::Device {
        device: pi_1,
        epoch: 1,
    });
    old.rental(r1, 5, "active", T0, None);
    let before = snapshot(&pool).await;
    let old_body = old.hub.generate(&mut old.doc).unwrap().unwrap();
    let done = server
        .merger()
        .submit(Job {
            peer: peer(pi_1),
            doc: old_body.doc,
            access: Access::Write,
            state: PeerDocState::new(old_body.doc),
            work: Work::Receive(old_body),
        })
        .await;
    done.outcome.unwrap();
    let after: Vec<String> = snapshot(&pool)
        .await
        .into_iter()
        .filter(|row| !row.starts_with("device/"))
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|row| !row.starts_with("device/"))
        .collect();
    assert_eq!(after, before);

    // A second return of R1, at a third device, is an anomaly, never a second close.
    let pi_3 = enroll::add_device(&pool, "ST-RA", "st-ra-pi-3", enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap()
        .device;
    let mut c = Device::new(pi_3);
    c.returned(r1, pi_1, 42, T0 + 90 * 60_000);
    c.sync(&server).await;
    let row: (String, i32) =
        sqlx::query_as("SELECT status, duration_minutes FROM rentals WHERE id = $1")
            .bind(*r1.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row, ("returned".to_owned(), 25));
    let anomalies: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM anomalies WHERE kind = 'conflicting_return' AND rental_id = $1",
    )
    .bind(*r1.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(anomalies, 1);

    // A return naming a device of another branch is refused and audited.
    let foreign = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001003").unwrap();
    b.returned(rental_id(3), foreign, 43, T0);
    b.sync(&server).await;
    assert_eq!(status(&pool, rental_id(3)).await, None);
    assert!(
        b.refused.iter().any(|r| r.contains("outside this branch")),
        "{:?}",
        b.refused
    );
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rental_returns WHERE rental_id = $1")
            .bind(*rental_id(3).as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);
}

/// A rental and its return at another device, synced at the same moment by sessions merged on
/// different workers: whichever transaction projects second must see the first, so the rental
/// ends closed every time (the branch lock is taken exclusively by passes projecting returns,
/// shared by the others, which meanwhile project side by side).
#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_rental_and_its_return_synced_at_once_always_close(pool: PgPool) {
    seed_world(&pool).await;
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let mut pairs = Vec::new();
    for n in 0..4_u32 {
        let mut pair = Vec::new();
        for side in ["origin", "dock"] {
            let new = enroll::add_device(
                &pool,
                "ST-RA",
                &format!("race-{side}-{n}"),
                enroll::CODE_TTL_DEFAULT,
            )
            .await
            .unwrap();
            pair.push(Device::new(new.device));
        }
        let dock = pair.pop().unwrap();
        let origin = pair.pop().unwrap();
        pairs.push((origin, dock));
    }
    for round in 0..20_u32 {
        let mut ids = Vec::new();
        let mut tasks = Vec::new();
        for (n, (mut origin, mut dock)) in std::mem::take(&mut pairs).into_iter().enumerate() {
            let n = u32::try_from(n).unwrap();
            let id = rental_id(1_000 + round * 10 + n);
            let start = T0 + i64::from(round) * 60_000;
            origin.rental(id, u64::from(1 + n), "active", start, None);
            dock.returned(id, origin.id, u64::from(40 + n), start + 300_000);
            ids.push(id);
            let (s1, s2) = (Arc::clone(&server), Arc::clone(&server));
            tasks.push(tokio::spawn(async move {
                let (origin, dock) = tokio::join!(
                    async move {
                        origin.sync(&s1).await;
                        origin
                    },
                    async move {
                        dock.sync(&s2).await;
                        dock
                    }
                );
                (origin, dock)
            }));
        }
        for task in tasks {
            pairs.push(task.await.unwrap());
        }
        for id in ids {
            assert_eq!(
                status(&pool, id).await.as_deref(),
                Some("returned"),
                "round {round}: rental {id} stayed open beside its recorded return"
            );
        }
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_return_is_acknowledged_to_the_docking_device_once_its_origin_holds_it_closed(
    pool: PgPool,
) {
    seed_world(&pool).await;
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let (pi_1, pi_2) = (
        DeviceId::parse(PI_1).unwrap(),
        DeviceId::parse(PI_2).unwrap(),
    );
    let mut a = Device::new(pi_1);
    let mut b = Device::new(pi_2);
    let (r1, r2) = (rental_id(11), rental_id(12));
    a.rental(r1, 5, "active", T0, None);
    a.rental(r2, 6, "active", T0, None);
    a.sync(&server).await;

    // R1's cart docks at pi-2: the row closes, but pi-1's document still says active, so
    // pi-2 must keep its fact (pi-1 folds it from there).
    let end = T0 + 25 * 60_000;
    b.returned(r1, pi_1, 40, end);
    b.sync(&server).await;
    assert_eq!(status(&pool, r1).await.as_deref(), Some("returned"));
    assert!(!b.acked.contains(&r1), "{:?}", b.acked);

    // pi-1 folds it: its own document now shows R1 closed, and pi-1 is acknowledged.
    a.rental(r1, 5, "returned", T0, Some(end));
    a.sync(&server).await;
    assert!(a.acked.contains(&r1));
    // pi-2's next message is answered with R1 too.
    b.reconnect();
    b.sync(&server).await;
    assert_eq!(b.acked.iter().filter(|id| **id == r1).count(), 1);

    // Over the LAN pi-1 folded R2's return (and told the hub) before pi-2's fact arrived:
    // the return is acknowledged at once.
    let end = T0 + 30 * 60_000;
    a.rental(r2, 6, "returned", T0, Some(end));
    a.sync(&server).await;
    b.returned(r2, pi_1, 41, end);
    b.sync(&server).await;
    assert!(b.acked.contains(&r2), "{:?}", b.acked);

    // pi-2 drops the acknowledged entries: the hub keeps the rows as they are.
    let before = snapshot(&pool).await;
    let returns = b.doc.get(ROOT, "returns").unwrap().unwrap().1;
    b.doc.delete(&returns, r1.to_string()).unwrap();
    b.doc.delete(&returns, r2.to_string()).unwrap();
    b.doc.commit();
    b.sync(&server).await;
    let strip = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .filter(|r| !r.starts_with("device/"))
            .collect()
    };
    assert_eq!(strip(snapshot(&pool).await), strip(before));
    assert_eq!(status(&pool, r1).await.as_deref(), Some("returned"));
    // Returns the origin folded are no conflict.
    assert_eq!(conflicting_returns(&pool, r1).await, 0);
    assert_eq!(conflicting_returns(&pool, r2).await, 0);
}

async fn conflicting_returns(pool: &PgPool, id: RentalId) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM anomalies WHERE kind = 'conflicting_return' AND rental_id = $1",
    )
    .bind(*id.as_uuid())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_return_conflicting_with_the_origins_own_dock_is_recorded_by_the_hub_in_either_order(
    pool: PgPool,
) {
    seed_world(&pool).await;
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let (pi_1, pi_2) = (
        DeviceId::parse(PI_1).unwrap(),
        DeviceId::parse(PI_2).unwrap(),
    );
    let mut a = Device::new(pi_1);
    let mut b = Device::new(pi_2);
    let (r1, r2) = (rental_id(21), rental_id(22));
    a.rental(r1, 5, "active", T0, None);
    a.rental(r2, 6, "active", T0, None);
    a.sync(&server).await;

    // R1: the origin closes it with a dock at its own post; then pi-2, which had not heard,
    // reports a second cart docked for R1. pi-2 may forget its return (acknowledged), so the
    // origin will never see it: the hub records the conflict.
    let end = T0 + 25 * 60_000;
    a.rental(r1, 5, "returned", T0, Some(end));
    a.docked_here(r1, 42);
    a.sync(&server).await;
    b.returned(r1, pi_1, 40, end + 60_000);
    b.sync(&server).await;
    assert!(b.acked.contains(&r1), "{:?}", b.acked);
    assert_eq!(conflicting_returns(&pool, r1).await, 1);

    // R2 the other way round: pi-2's return closes the row first, then the origin's own dock
    // arrives. The return is acknowledged with the conflict recorded.
    b.returned(r2, pi_1, 41, T0 + 30 * 60_000);
    b.sync(&server).await;
    assert!(!b.acked.contains(&r2), "{:?}", b.acked);
    assert_eq!(conflicting_returns(&pool, r2).await, 0);
    a.rental(r2, 6, "returned", T0, Some(T0 + 31 * 60_000));
    a.docked_here(r2, 43);
    a.sync(&server).await;
    b.reconnect();
    b.sync(&server).await;
    assert!(b.acked.contains(&r2), "{:?}", b.acked);
    assert_eq!(conflicting_returns(&pool, r2).await, 1);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn two_hub_processes_never_lose_each_others_writes(pool: PgPool) {
    seed_world(&pool).await;
    let one = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let two = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let mut device = Device::new(DeviceId::parse(PI_1).unwrap());
    // Past `DOC_CHUNKS_MAX` writes, so both processes also compact: a snapshot written from a
    // stale copy would drop the other's changes.
    let writes = docs_store::DOC_CHUNKS_MAX as u32 + 6;
    for n in 0..writes {
        device.rental(rental_id(n), u64::from(1 + n % 32), "active", T0, None);
        // The device reconnects to the other process every 8 writes; each has the document
        // cached, stale after the other's writes (write 64, the first compaction, included).
        if n % 8 == 0 {
            device.reconnect();
        }
        let server = if (n / 8) % 2 == 0 { &one } else { &two };
        device.sync(server).await;
    }
    let stored = docs_store::load(&pool, &DocId::device(device.id))
        .await
        .unwrap();
    assert_eq!(stored.get_heads(), device.doc.get_heads());
    let rentals: i64 = sqlx::query_scalar("SELECT count(*) FROM rentals")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rentals, i64::from(writes));
    let compacted: i32 = sqlx::query_scalar("SELECT chunk_count FROM sync_documents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(compacted < docs_store::DOC_CHUNKS_MAX, "{compacted}");
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_relayed_document_is_readable_and_not_writable(pool: PgPool) {
    seed_world(&pool).await;
    let server = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let (pi_1, pi_2) = (
        DeviceId::parse(PI_1).unwrap(),
        DeviceId::parse(PI_2).unwrap(),
    );
    let mut a = Device::new(pi_1);
    a.rental(rental_id(1), 5, "active", T0, None);
    a.sync(&server).await;

    // pi-2 reads pi-1's document through the hub.
    let doc = DocId::device(pi_1);
    let mut replica = AutoCommit::new();
    let mut mine = PeerDocState::new(doc);
    let mut hub_state = PeerDocState::new(doc);
    let mut work = Work::Generate;
    for _ in 0..10 {
        let done = server
            .merger()
            .submit(Job {
                peer: peer(pi_2),
                doc,
                access: Access::Read,
                state: hub_state,
                work,
            })
            .await;
        hub_state = done.state;
        if let Some(reply) = done.outcome.unwrap().reply {
            mine.receive(&mut replica, &reply, &HubActors::new([]))
                .unwrap();
        }
        match mine.generate(&mut replica).unwrap() {
            Some(body) => work = Work::Receive(body),
            None => break,
        }
    }
    assert_eq!(replica.get_heads(), a.doc.get_heads());

    // A change to pi-1's document that the hub does not hold, sent by pi-2: refused.
    let mut forged = a.doc.fork().with_actor(device_actor(&pi_1));
    forged.put(ROOT, "note", "forged").unwrap();
    forged.commit();
    let mut state = PeerDocState::new(doc);
    let body = state.generate(&mut forged).unwrap().unwrap();
    let done = server
        .merger()
        .submit(Job {
            peer: peer(pi_2),
            doc,
            access: Access::Read,
            state: PeerDocState::new(doc),
            work: Work::Receive(body),
        })
        .await;
    // The first message carries no changes (heads and a Bloom filter); answer it like a peer
    // until the changes go out.
    let mut outcome = done.outcome;
    let mut hub = done.state;
    for _ in 0..5 {
        let reply = match &outcome {
            Ok(merged) => merged.reply.clone(),
            Err(_) => break,
        };
        if let Some(reply) = reply {
            state
                .receive(&mut forged, &reply, &HubActors::new([]))
                .unwrap();
        }
        let Some(body) = state.generate(&mut forged).unwrap() else {
            break;
        };
        let done = server
            .merger()
            .submit(Job {
                peer: peer(pi_2),
                doc,
                access: Access::Read,
                state: hub,
                work: Work::Receive(body),
            })
            .await;
        hub = done.state;
        outcome = done.outcome;
    }
    assert!(
        matches!(outcome, Err(MergeError::Refused(_))),
        "{outcome:?}"
    );
    let stored = docs_store::load(&pool, &doc).await.unwrap();
    assert_eq!(stored.get_heads(), a.doc.get_heads());
}

/// What one hub process merges reaches another process's branch broadcast by the `NOTIFY`
/// sent at commit, not by its version poll (whose next round is far off), and once only.
#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn another_hub_process_hears_of_a_merge_at_commit(pool: PgPool) {
    seed_world(&pool).await;
    let one = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let two = SyncServer::new(pool.clone(), Arc::new(HubClock::new()));
    let mut heard = two.events().subscribe(BranchId::parse(BRANCH).unwrap());
    // The listener of process two is connected once an intents notification reaches it.
    let mut device = Device::new(DeviceId::parse(PI_1).unwrap());
    let doc = DocId::device(device.id);
    let mut ready = false;
    for _ in 0..100 {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(cartwise_cloud_hub::intents::DOC_CHANGED_CHANNEL)
            .bind(DocId::branch_intents(BranchId::parse(BRANCH).unwrap()).to_string())
            .execute(&pool)
            .await
            .unwrap();
        if let Ok(Ok(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), heard.recv()).await
        {
            ready = true;
            break;
        }
    }
    assert!(ready, "process two listens for notifications");
    device.rental(rental_id(1), 1, "active", T0, None);
    device.sync(&one).await;
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match heard.recv().await {
                Ok(changed) if changed == doc => return changed,
                Ok(_) => {}
                Err(error) => panic!("{error}"),
            }
        }
    })
    .await
    .expect("process two hears of the merged document");
    assert_eq!(got, doc);
    // Process two knows that version now: hearing it again publishes nothing.
    let (version, branch): (i64, uuid::Uuid) =
        sqlx::query_as("SELECT version, branch_id FROM sync_documents WHERE doc_id = $1")
            .bind(doc.to_string())
            .fetch_one(&pool)
            .await
            .unwrap();
    two.events()
        .written(&cartwise_cloud_hub::merge::events::written_payload(
            doc,
            BranchId::from_uuid(branch),
            version,
        ));
    assert!(heard.try_recv().is_err());
}
