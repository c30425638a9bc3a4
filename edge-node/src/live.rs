//! The node's live Automerge document: the facts this device alone writes about its posts and
//! the rentals started here that the hub does not hold yet. It replicates to every node of the
//! branch and to the hub; the branch's state is a fold over such documents.
//!
//! The layout (key names, value types) is `cartwise_sync_core::facts`, which also reads it on
//! the hub and on the other Pis of the branch.
//!
//! The document is persisted in the same SQLite transaction as the rows it mirrors: its new
//! changes are appended to `doc_changes`, and every `DOC_CHANGES_MAX` appends they are compacted
//! into one snapshot in `doc_snapshots`.
//!
//! Loading is one `AutoCommit::load` of the snapshot plus one `load_incremental` of the (short)
//! log, and nothing else: the heads just loaded become the save cursor (`saved_heads`), so the
//! next persist encodes only the changes made since. Automerge's own cursor starts empty after
//! a load, and asking it for an incremental save then re-encodes and re-hashes every change of
//! the history — the whole cost of a start, many times the load itself.
//!
//! Architecture Invariant: only the owning device writes its document; the values written only
//! change when the fact changes (no rewrite of equal values), so history grows with facts, not
//! with polls.
//!
//! # Rotation (epochs)
//!
//! Automerge never forgets history: a document that lent 100,000 rentals stays large even after
//! every closed rental left it. So when the saved document passes [`ROTATE_SAVED_BYTES`] and
//! [`ROTATE_GROWTH_FACTOR`] times the size its epoch started at (checked when the change log
//! is compacted; while the hub is away the unacknowledged rentals are current state, and
//! copying them at every compaction would only churn), the device starts the next epoch
//! (`device/<uuid>/e<N+1>`, `cartwise_sync_core::DocId`): a fresh document, same actor, holding
//! the current state only — every top-level entry of the old one copied generically (posts,
//! rentals not yet acknowledged, and every map other writers add), except that the entries of
//! [`HUB_HELD_MAPS`] are left behind when the hub already holds the retiring epoch whole. The
//! new epoch, the retired epoch's final heads and the epoch counter change in the one SQLite
//! transaction of the job that triggered it.
//!
//! Why rotating is safe at any compaction point:
//! - Nothing is lost if the hub never sees the retired epoch's tail: the next epoch carries the
//!   current state, and anything not acknowledged by the hub (closed rentals, anomalies,
//!   outcomes, returns) is copied unless the hub's persisted sync state proves it holds the
//!   retiring epoch's final heads.
//! - Nothing is resurrected: a retired epoch is frozen (nothing writes it again), and the hub's
//!   projection never moves a rental backwards (closed stays closed, `cloud-hub/src/project.rs`),
//!   so a late tail of an old epoch that still shows a rental open cannot reopen it.
//! - The retired epoch is still offered to peers until the hub holds its final heads; then it is
//!   dropped locally with its sync states. At most [`RETIRED_EPOCHS_MAX`] wait: past that the
//!   oldest is dropped unsent (its state lives on in the later epochs; only its intermediate
//!   history is not uploaded), so a Pi offline for a month stays bounded too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use automerge::transaction::Transactable;
use automerge::{
    ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};
use cartwise_schema::{BranchId, DeviceId, PostNo, RentalId};
use rusqlite::{Connection, OptionalExtension, params};

use cartwise_sync_core::facts::{DEVICE_DOC_SCHEMA, keys};
use cartwise_sync_core::{DocId, PeerDocState};

use crate::ledger::{PostRow, RentalRow};
use crate::store::StoreError;
use crate::timekeeping::Timeline;
use crate::timekeeping::to_sql_mono;

/// Appended change chunks kept before they are compacted into one snapshot.
pub const DOC_CHANGES_MAX: i64 = 64;

/// Saved size of the live document above which it is rotated to the next epoch: loading costs
/// about one hash per change in the epoch, so a small epoch keeps a start-up load in a few
/// milliseconds (measured by `benches/sync.rs`) at the price of more epochs (checked at
/// each compaction, so it is passed by at most `DOC_CHANGES_MAX` changes).
pub const ROTATE_SAVED_BYTES: usize = 8 * 1024;

/// A document rotates only once it is also this many times the size its epoch started at:
/// while the hub is away, rentals it has not acknowledged stay (they must), and rotating a
/// document that is mostly current state would only copy it again.
pub const ROTATE_GROWTH_FACTOR: usize = 2;

/// Retired epochs kept for the hub at most; past this the oldest is dropped unsent.
pub const RETIRED_EPOCHS_MAX: usize = 8;

/// Top-level maps whose entries a new epoch leaves behind once the hub holds the retiring
/// epoch whole (it has them durably; nothing else acknowledges them one by one).
pub const HUB_HELD_MAPS: [&str; 3] = [keys::ANOMALIES, keys::OUTCOMES, keys::RETURNS];

/// The peer name under which sync progress with the hub is stored (`sync_peer_states`).
pub const HUB_PEER: &str = "hub";

/// `meta` key of the current epoch number.
const META_EPOCH: &str = "live_epoch";
/// `meta` key of the saved size the current epoch started at.
const META_EPOCH_BASE: &str = "live_epoch_base_bytes";
/// `meta` key prefix of a retired epoch (`live_retired/<N>`), valued with its final heads.
const META_RETIRED: &str = "live_retired/";

/// The device's live document and its name in the store.
pub struct LiveDoc {
    doc: AutoCommit,
    name: String,
    id: DocId,
    device: DeviceId,
    /// The current epoch, shared with readers outside the store thread.
    epoch: Arc<AtomicU32>,
    rotate_saved_bytes: usize,
    /// The saved size this epoch started at.
    base_bytes: usize,
    /// The heads already on disk (snapshot plus change log): `persist` appends only what
    /// follows them.
    saved_heads: Vec<ChangeHash>,
}

/// A retired epoch still waiting for the hub to hold its final heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredEpoch {
    /// The document.
    pub doc: DocId,
    /// Its heads when it was retired (it is never written again).
    pub final_heads: Vec<ChangeHash>,
}

impl std::fmt::Debug for LiveDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDoc")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn doc_error(err: automerge::AutomergeError) -> StoreError {
    StoreError::Rejected(format!("live document: {err}"))
}

impl LiveDoc {
    /// The store name of a device's first (epoch 0) document.
    pub fn name_of(device: DeviceId) -> String {
        DocId::device(device).to_string()
    }

    /// Loads the device's current-epoch document from its snapshot and appended changes, or
    /// starts it.
    pub fn open(conn: &Connection, device: DeviceId, branch: BranchId) -> Result<Self, StoreError> {
        let epoch = current_epoch(conn)?;
        let id = DocId::Device { device, epoch };
        let mut doc = load_stored(conn, &id.to_string())?;
        let base_bytes = get_meta(conn, META_EPOCH_BASE)?
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        // What was just loaded is on disk already: the next persist appends only what follows
        // these heads (see the module documentation for why this is not `save_incremental`).
        let saved_heads = doc.get_heads();
        doc.set_actor(device_actor(device));
        let mut live = Self {
            doc,
            name: id.to_string(),
            id,
            device,
            epoch: Arc::new(AtomicU32::new(epoch)),
            rotate_saved_bytes: ROTATE_SAVED_BYTES,
            base_bytes,
            saved_heads,
        };
        live.put_root(device, branch)?;
        Ok(live)
    }

    /// The current epoch's document id.
    pub fn doc_id(&self) -> DocId {
        self.id
    }

    /// The current epoch, readable without the store thread (it follows rotations).
    pub fn epoch_cell(&self) -> Arc<AtomicU32> {
        Arc::clone(&self.epoch)
    }

    /// Makes `cell` the shared epoch (after a reload built a new document).
    pub fn share_epoch(&mut self, cell: &Arc<AtomicU32>) {
        cell.store(self.id.epoch(), Ordering::Relaxed);
        self.epoch = Arc::clone(cell);
    }

    /// Changes the rotation threshold (tests and benchmarks use small ones).
    pub fn set_rotate_saved_bytes(&mut self, bytes: usize) {
        self.rotate_saved_bytes = bytes;
    }

    fn put_root(&mut self, device: DeviceId, branch: BranchId) -> Result<(), StoreError> {
        self.put_scalar(&ROOT, keys::SCHEMA, ScalarValue::Int(DEVICE_DOC_SCHEMA))?;
        self.put_scalar(
            &ROOT,
            keys::DEVICE,
            ScalarValue::Str(device.to_string().into()),
        )?;
        self.put_scalar(
            &ROOT,
            keys::BRANCH,
            ScalarValue::Str(branch.to_string().into()),
        )?;
        Ok(())
    }

    /// The underlying document, for reading and for sync.
    pub fn doc(&self) -> &AutoCommit {
        &self.doc
    }

    /// The document for sync, which may apply a peer's changes.
    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// The document's heads (closes any open transaction).
    pub fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        self.doc.get_heads()
    }

    /// Mirrors a post.
    pub fn put_post(&mut self, post: &PostRow) -> Result<(), StoreError> {
        let posts = self.map_at(&ROOT, keys::POSTS)?;
        let obj = self.map_at(&posts, &post.post.to_string())?;
        let fields: [(&str, ScalarValue); 7] = [
            ("board", ScalarValue::Uint(u64::from(post.board.get()))),
            ("lock", ScalarValue::Uint(u64::from(post.lock.get()))),
            ("status", str_value(post.status().as_str())),
            ("hook", str_value(post.hook.as_str())),
            (
                "present",
                post.present.map_or(ScalarValue::Null, ScalarValue::Boolean),
            ),
            (
                "fault",
                post.fault.as_deref().map_or(ScalarValue::Null, str_value),
            ),
            (
                "holder",
                post.holder
                    .map_or(ScalarValue::Null, |r| str_value(&r.to_string())),
            ),
        ];
        for (key, value) in fields {
            self.put_scalar(&obj, key, value)?;
        }
        Ok(())
    }

    /// Mirrors a rental started here, with its best corrected times.
    pub fn put_rental(
        &mut self,
        rental: &RentalRow,
        timeline: &Timeline,
    ) -> Result<(), StoreError> {
        let rentals = self.map_at(&ROOT, keys::RENTALS)?;
        let obj = self.map_at(&rentals, &rental.id.to_string())?;
        let end = rental.end.as_ref();
        let start_at = timeline.corrected(&rental.start).get();
        let trusted = timeline.is_learned(&rental.start.boot)
            && end.is_none_or(|e| timeline.is_learned(&e.boot));
        let corrected: [(&str, ScalarValue); 4] = [
            ("start_at", ScalarValue::Int(start_at)),
            (
                "expected_at",
                ScalarValue::Int(
                    start_at.saturating_add(i64::from(rental.rental_minutes) * 60_000),
                ),
            ),
            (
                "end_at",
                end.map_or(ScalarValue::Null, |e| {
                    ScalarValue::Int(timeline.corrected(e).get())
                }),
            ),
            ("time_trusted", ScalarValue::Boolean(trusted)),
        ];
        for (key, value) in corrected {
            self.put_scalar(&obj, key, value)?;
        }
        let fields: [(&str, ScalarValue); 15] = [
            ("phone", str_value(rental.phone.as_e164())),
            ("post", ScalarValue::Uint(u64::from(rental.post.get()))),
            ("status", str_value(rental.status.as_str())),
            (
                "minutes",
                ScalarValue::Uint(u64::from(rental.rental_minutes)),
            ),
            ("start_wall", ScalarValue::Int(rental.start.wall.get())),
            ("start_boot", str_value(&rental.start.boot.to_string())),
            (
                "start_mono",
                ScalarValue::Int(to_sql_mono(rental.start.mono)),
            ),
            ("start_hlc", str_value(&rental.start.hlc.to_string())),
            (
                "taken_hlc",
                rental
                    .taken
                    .map_or(ScalarValue::Null, |h| str_value(&h.to_string())),
            ),
            (
                "end_wall",
                end.map_or(ScalarValue::Null, |e| ScalarValue::Int(e.wall.get())),
            ),
            (
                "end_boot",
                end.map_or(ScalarValue::Null, |e| str_value(&e.boot.to_string())),
            ),
            (
                "end_mono",
                end.map_or(ScalarValue::Null, |e| ScalarValue::Int(to_sql_mono(e.mono))),
            ),
            (
                "end_hlc",
                end.map_or(ScalarValue::Null, |e| str_value(&e.hlc.to_string())),
            ),
            (
                "return_post",
                rental
                    .return_post
                    .map_or(ScalarValue::Null, |p| ScalarValue::Uint(u64::from(p.get()))),
            ),
            (
                "note",
                rental.note.as_deref().map_or(ScalarValue::Null, str_value),
            ),
        ];
        for (key, value) in fields {
            self.put_scalar(&obj, key, value)?;
        }
        Ok(())
    }

    /// Records an anomaly for the manager, keyed by its stamp's HLC.
    pub fn put_anomaly(
        &mut self,
        kind: &str,
        post: Option<PostNo>,
        rental: Option<RentalId>,
        detail: &str,
        at: &cartwise_schema::Stamp,
    ) -> Result<(), StoreError> {
        let anomalies = self.map_at(&ROOT, keys::ANOMALIES)?;
        let obj = self.map_at(&anomalies, &at.hlc.to_string())?;
        let fields: [(&str, ScalarValue); 7] = [
            ("kind", str_value(kind)),
            (
                "post",
                post.map_or(ScalarValue::Null, |p| ScalarValue::Uint(u64::from(p.get()))),
            ),
            (
                "rental",
                rental.map_or(ScalarValue::Null, |r| str_value(&r.to_string())),
            ),
            ("detail", str_value(detail)),
            ("wall", ScalarValue::Int(at.wall.get())),
            ("boot", str_value(&at.boot.to_string())),
            ("mono", ScalarValue::Int(to_sql_mono(at.mono))),
        ];
        for (key, value) in fields {
            self.put_scalar(&obj, key, value)?;
        }
        Ok(())
    }

    /// Records that the cart of `rental`, started at device `origin`, docked at `post` here and
    /// closed it with `status` at `end` (corrected to `end_at`): the origin folds it into its
    /// own rental, the hub into the rental row.
    #[allow(clippy::too_many_arguments)]
    pub fn put_return(
        &mut self,
        rental: RentalId,
        origin: DeviceId,
        post: PostNo,
        status: cartwise_schema::RentalStatus,
        end: &cartwise_schema::Stamp,
        end_at: i64,
        time_trusted: bool,
    ) -> Result<(), StoreError> {
        use cartwise_sync_core::facts::keys::ret;
        let returns = self.map_at(&ROOT, keys::RETURNS)?;
        let obj = self.map_at(&returns, &rental.to_string())?;
        let fields: [(&str, ScalarValue); 9] = [
            (ret::ORIGIN, str_value(&origin.to_string())),
            (ret::POST, ScalarValue::Uint(u64::from(post.get()))),
            (ret::STATUS, str_value(status.as_str())),
            (ret::END_AT, ScalarValue::Int(end_at)),
            (ret::END_WALL, ScalarValue::Int(end.wall.get())),
            (ret::END_BOOT, str_value(&end.boot.to_string())),
            (ret::END_MONO, ScalarValue::Int(to_sql_mono(end.mono))),
            (ret::END_HLC, str_value(&end.hlc.to_string())),
            (ret::TIME_TRUSTED, ScalarValue::Boolean(time_trusted)),
        ];
        for (key, value) in fields {
            self.put_scalar(&obj, key, value)?;
        }
        Ok(())
    }

    /// Removes a rental the hub holds durably (its history stays in the ledger and Postgres).
    pub fn remove_rental(&mut self, id: RentalId) -> Result<(), StoreError> {
        let rentals = self.map_at(&ROOT, keys::RENTALS)?;
        if self
            .doc
            .get(&rentals, id.to_string())
            .map_err(doc_error)?
            .is_some()
        {
            self.doc
                .delete(&rentals, id.to_string())
                .map_err(doc_error)?;
        }
        Ok(())
    }

    /// Whether the document carries a `returns` entry for `rental` (a cart of another
    /// device's rental that docked here).
    pub fn has_return(&self, rental: RentalId) -> bool {
        match self.doc.get(ROOT, keys::RETURNS) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => {
                matches!(self.doc.get(&obj, rental.to_string()), Ok(Some(_)))
            }
            _ => false,
        }
    }

    /// Removes the `returns` entry of a rental the hub holds closed (the origin device has
    /// folded it; the ledger keeps its history).
    pub fn remove_return(&mut self, rental: RentalId) -> Result<(), StoreError> {
        if !self.has_return(rental) {
            return Ok(());
        }
        let returns = self.map_at(&ROOT, keys::RETURNS)?;
        self.doc
            .delete(&returns, rental.to_string())
            .map_err(doc_error)?;
        Ok(())
    }

    /// Whether the document carries the rental.
    pub fn has_rental(&self, id: RentalId) -> bool {
        match self.doc.get(ROOT, keys::RENTALS) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => {
                matches!(self.doc.get(&obj, id.to_string()), Ok(Some(_)))
            }
            _ => false,
        }
    }

    /// Whether the document mirrors `post`.
    pub fn has_post(&self, post: PostNo) -> bool {
        match self.doc.get(ROOT, keys::POSTS) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => {
                matches!(self.doc.get(&obj, post.to_string()), Ok(Some(_)))
            }
            _ => false,
        }
    }

    /// Appends the changes made since the last persist to the store; compacts when due, and
    /// rotates to the next epoch when the compacted document passed the threshold.
    /// Returns whether there was anything new.
    pub fn persist(&mut self, conn: &Connection) -> Result<bool, StoreError> {
        let chunk = self.unsaved_changes();
        if chunk.is_empty() {
            return Ok(false);
        }
        let next: i64 = conn.query_row(
            "SELECT coalesce(max(seq), 0) + 1 FROM doc_changes WHERE doc = ?1",
            [&self.name],
            |r| r.get(0),
        )?;
        if next > DOC_CHANGES_MAX {
            let snapshot = self.doc.save();
            conn.execute(
                "INSERT INTO doc_snapshots (doc, bytes) VALUES (?1, ?2)
                 ON CONFLICT (doc) DO UPDATE SET bytes = excluded.bytes",
                params![self.name, snapshot],
            )?;
            conn.execute("DELETE FROM doc_changes WHERE doc = ?1", [&self.name])?;
            let floor = self
                .rotate_saved_bytes
                .max(self.base_bytes.saturating_mul(ROTATE_GROWTH_FACTOR));
            if snapshot.len() > floor {
                self.rotate(conn)?;
            }
        } else {
            conn.execute(
                "INSERT INTO doc_changes (doc, seq, bytes) VALUES (?1, ?2, ?3)",
                params![self.name, next, chunk],
            )?;
        }
        Ok(true)
    }

    /// The changes not on disk yet (empty when there are none); moves the save cursor past
    /// them.
    fn unsaved_changes(&mut self) -> Vec<u8> {
        let chunk = self.doc.save_after(&self.saved_heads);
        if !chunk.is_empty() {
            self.saved_heads = self.doc.get_heads();
        }
        chunk
    }

    /// The whole document as `save()` writes it (compacted).
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Starts the next epoch now (the caller persisted everything first; `persist` does this
    /// when the document passed the threshold). See the module documentation for why this is
    /// safe at any job boundary.
    pub fn rotate(&mut self, conn: &Connection) -> Result<DocId, StoreError> {
        let retiring = self.id;
        // The retiring epoch's last changes must be on disk before it is frozen.
        let tail = self.unsaved_changes();
        if !tail.is_empty() {
            let snapshot = self.doc.save();
            conn.execute(
                "INSERT INTO doc_snapshots (doc, bytes) VALUES (?1, ?2)
                 ON CONFLICT (doc) DO UPDATE SET bytes = excluded.bytes",
                params![self.name, snapshot],
            )?;
            conn.execute("DELETE FROM doc_changes WHERE doc = ?1", [&self.name])?;
        }
        let final_heads = self.doc.get_heads();
        let hub_holds = hub_holds(conn, retiring, &final_heads)?;
        let next = retiring.next_epoch();
        let mut fresh = AutoCommit::new().with_actor(device_actor(self.device));
        copy_current_state(&self.doc, &mut fresh, hub_holds)?;
        let snapshot = fresh.save();
        let fresh_heads = fresh.get_heads();
        conn.execute(
            "INSERT INTO doc_snapshots (doc, bytes) VALUES (?1, ?2)
             ON CONFLICT (doc) DO UPDATE SET bytes = excluded.bytes",
            params![next.to_string(), snapshot],
        )?;
        conn.execute("DELETE FROM doc_changes WHERE doc = ?1", [next.to_string()])?;
        set_meta(conn, META_EPOCH, &next.epoch().to_string())?;
        set_meta(conn, META_EPOCH_BASE, &snapshot.len().to_string())?;
        if hub_holds {
            drop_epoch(conn, retiring)?;
        } else {
            set_meta(
                conn,
                &format!("{META_RETIRED}{}", retiring.epoch()),
                &heads_hex(&final_heads),
            )?;
            let mut waiting = retired_epochs(conn, self.device)?;
            while waiting.len() > RETIRED_EPOCHS_MAX {
                let oldest = waiting.remove(0);
                tracing::warn!(doc = %oldest.doc, "dropping a retired epoch the hub never got whole; its state lives on in later epochs");
                drop_epoch(conn, oldest.doc)?;
            }
        }
        tracing::info!(from = %retiring, to = %next, hub_holds, "live document rotated");
        self.base_bytes = snapshot.len();
        self.doc = fresh;
        self.saved_heads = fresh_heads;
        self.id = next;
        self.name = next.to_string();
        self.epoch.store(next.epoch(), Ordering::Relaxed);
        Ok(next)
    }

    /// Records this device's answer to an intent of its branch (`outcomes`, layout in
    /// `cartwise_sync_core::facts`): `wall` is the corrected wall time of the decision.
    pub fn put_outcome(
        &mut self,
        intent: &cartwise_sync_core::intents::IntentId,
        status: cartwise_sync_core::facts::OutcomeStatus,
        detail: &str,
        wall: i64,
        hlc: &cartwise_schema::Hlc,
    ) -> Result<(), StoreError> {
        use cartwise_sync_core::facts::keys::outcome;
        let outcomes = self.map_at(&ROOT, keys::OUTCOMES)?;
        let obj = self.map_at(&outcomes, &intent.to_string())?;
        let fields: [(&str, ScalarValue); 4] = [
            (outcome::STATUS, str_value(status.as_str())),
            (outcome::DETAIL, str_value(detail)),
            (outcome::WALL, ScalarValue::Int(wall)),
            (outcome::HLC, str_value(&hlc.to_string())),
        ];
        for (key, value) in fields {
            self.put_scalar(&obj, key, value)?;
        }
        Ok(())
    }

    fn map_at(&mut self, parent: &ObjId, key: &str) -> Result<ObjId, StoreError> {
        match self.doc.get(parent, key).map_err(doc_error)? {
            Some((Value::Object(ObjType::Map), obj)) => Ok(obj),
            _ => self
                .doc
                .put_object(parent, key, ObjType::Map)
                .map_err(doc_error),
        }
    }

    fn put_scalar(&mut self, obj: &ObjId, key: &str, value: ScalarValue) -> Result<(), StoreError> {
        let unchanged = matches!(
            self.doc.get(obj, key).map_err(doc_error)?,
            Some((Value::Scalar(current), _)) if *current == value
        );
        if !unchanged {
            self.doc.put(obj, key, value).map_err(doc_error)?;
        }
        Ok(())
    }
}

fn str_value(text: &str) -> ScalarValue {
    ScalarValue::Str(text.into())
}

fn device_actor(device: DeviceId) -> ActorId {
    ActorId::from(device.as_uuid().as_bytes().as_slice())
}

/// A stored document: its snapshot (if any) plus its appended changes.
fn load_stored(conn: &Connection, name: &str) -> Result<AutoCommit, StoreError> {
    let snapshot: Option<Vec<u8>> = conn
        .query_row(
            "SELECT bytes FROM doc_snapshots WHERE doc = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    let mut doc = match snapshot {
        Some(bytes) => AutoCommit::load(&bytes).map_err(doc_error)?,
        None => AutoCommit::new(),
    };
    // One `load_incremental` for the whole log: each call has a fixed cost, and the log holds
    // up to `DOC_CHANGES_MAX` chunks.
    let mut stmt = conn.prepare("SELECT bytes FROM doc_changes WHERE doc = ?1 ORDER BY seq")?;
    let chunks = stmt.query_map([name], |r| r.get::<_, Vec<u8>>(0))?;
    let mut log = Vec::new();
    for chunk in chunks {
        log.extend_from_slice(&chunk?);
    }
    if !log.is_empty() {
        doc.load_incremental(&log).map_err(doc_error)?;
    }
    Ok(doc)
}

/// Loads a retired epoch's frozen document.
pub fn load_retired(conn: &Connection, doc: DocId) -> Result<AutoCommit, StoreError> {
    load_stored(conn, &doc.to_string())
}

fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// The current epoch number (0 before the first rotation).
pub fn current_epoch(conn: &Connection) -> Result<u32, StoreError> {
    match get_meta(conn, META_EPOCH)? {
        None => Ok(0),
        Some(text) => text.parse().map_err(|_| {
            StoreError::Rejected(format!("live document epoch {text:?} is not a number"))
        }),
    }
}

/// The retired epochs still offered to peers, oldest first.
pub fn retired_epochs(
    conn: &Connection,
    device: DeviceId,
) -> Result<Vec<RetiredEpoch>, StoreError> {
    let mut stmt = conn.prepare("SELECT key, value FROM meta WHERE key LIKE 'live_retired/%'")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut retired = Vec::new();
    for row in rows {
        let (key, value) = row?;
        let epoch: Option<u32> = key.strip_prefix(META_RETIRED).and_then(|e| e.parse().ok());
        match (epoch, heads_from_hex(&value)) {
            (Some(epoch), Some(final_heads)) => retired.push(RetiredEpoch {
                doc: DocId::Device { device, epoch },
                final_heads,
            }),
            _ => tracing::warn!(key, "ignoring an unreadable retired-epoch record"),
        }
    }
    retired.sort_by_key(|r| r.doc.epoch());
    Ok(retired)
}

/// Forgets a retired epoch: its document, its change log, its sync progress with every peer.
pub fn drop_epoch(conn: &Connection, doc: DocId) -> Result<(), StoreError> {
    let name = doc.to_string();
    conn.execute("DELETE FROM doc_snapshots WHERE doc = ?1", [&name])?;
    conn.execute("DELETE FROM doc_changes WHERE doc = ?1", [&name])?;
    conn.execute("DELETE FROM sync_peer_states WHERE doc = ?1", [&name])?;
    conn.execute(
        "DELETE FROM meta WHERE key = ?1",
        [format!("{META_RETIRED}{}", doc.epoch())],
    )?;
    Ok(())
}

/// Whether the hub's persisted sync state for `doc` shows it holds all of `heads`.
pub fn hub_holds(conn: &Connection, doc: DocId, heads: &[ChangeHash]) -> Result<bool, StoreError> {
    let state: Option<Vec<u8>> = conn
        .query_row(
            "SELECT state FROM sync_peer_states WHERE peer = ?1 AND doc = ?2",
            params![HUB_PEER, doc.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(state) = state.and_then(|bytes| PeerDocState::decode(doc, &bytes).ok()) else {
        return Ok(false);
    };
    let mut shared = state.shared_heads().to_vec();
    let mut wanted = heads.to_vec();
    shared.sort();
    wanted.sort();
    Ok(shared == wanted)
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn heads_hex(heads: &[ChangeHash]) -> String {
    heads
        .iter()
        .flat_map(|h| h.0)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn heads_from_hex(text: &str) -> Option<Vec<ChangeHash>> {
    if !text.len().is_multiple_of(64) || !text.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect();
    let bytes = bytes?;
    bytes
        .chunks(32)
        .map(|chunk| <[u8; 32]>::try_from(chunk).ok().map(ChangeHash))
        .collect()
}

/// Copies every top-level entry of `from` into the empty `into` (one change), generically, so
/// maps other writers add travel too. The entries of [`HUB_HELD_MAPS`] stay behind (the map
/// itself is kept, empty) when the hub holds them.
fn copy_current_state(
    from: &AutoCommit,
    into: &mut AutoCommit,
    hub_holds: bool,
) -> Result<(), StoreError> {
    for key in from.keys(ROOT) {
        match from.get(ROOT, key.as_str()).map_err(doc_error)? {
            Some((Value::Scalar(value), _)) => {
                into.put(ROOT, key.as_str(), value.into_owned())
                    .map_err(doc_error)?;
            }
            Some((Value::Object(kind), obj)) => {
                if hub_holds && HUB_HELD_MAPS.contains(&key.as_str()) && kind == ObjType::Map {
                    into.put_object(ROOT, key.as_str(), ObjType::Map)
                        .map_err(doc_error)?;
                } else {
                    let value = from.hydrate(&obj, None).map_err(doc_error)?;
                    into.batch_create_object(ROOT, key.as_str(), &value, false)
                        .map_err(doc_error)?;
                }
            }
            None => {}
        }
    }
    into.commit();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_connection;

    fn ids() -> (DeviceId, BranchId) {
        (
            DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001001").unwrap(),
            BranchId::parse("0b1e3c2a-0000-4000-8000-000000000101").unwrap(),
        )
    }

    #[test]
    fn the_document_survives_a_reload_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        let (device, branch) = ids();
        let mut live = LiveDoc::open(&conn, device, branch).unwrap();
        conn.execute("INSERT INTO posts (post, board, lock) VALUES (1, 0, 1)", [])
            .unwrap();
        let mut row = crate::ledger::post(&conn, PostNo::new(1).unwrap())
            .unwrap()
            .unwrap();
        for n in 0..(DOC_CHANGES_MAX + 5) {
            row.use_count = n;
            row.present = Some(n % 2 == 0);
            live.put_post(&row).unwrap();
            live.persist(&conn).unwrap();
        }
        let chunks: i64 = conn
            .query_row("SELECT count(*) FROM doc_changes", [], |r| r.get(0))
            .unwrap();
        assert!(
            chunks < DOC_CHANGES_MAX,
            "compaction keeps the change log short, got {chunks}"
        );
        let mut reloaded = LiveDoc::open(&conn, device, branch).unwrap();
        assert!(reloaded.has_post(PostNo::new(1).unwrap()));
        assert_eq!(reloaded.heads(), live.heads());
        // Reopening adds nothing to persist.
        let chunks_before: i64 = conn
            .query_row("SELECT count(*) FROM doc_changes", [], |r| r.get(0))
            .unwrap();
        reloaded.persist(&conn).unwrap();
        let chunks_after: i64 = conn
            .query_row("SELECT count(*) FROM doc_changes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(chunks_before, chunks_after);
    }

    #[test]
    fn after_a_reload_a_persist_appends_only_the_new_change() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        let (device, branch) = ids();
        let mut live = LiveDoc::open(&conn, device, branch).unwrap();
        conn.execute("INSERT INTO posts (post, board, lock) VALUES (1, 0, 1)", [])
            .unwrap();
        let mut row = crate::ledger::post(&conn, PostNo::new(1).unwrap())
            .unwrap()
            .unwrap();
        for n in 0..(DOC_CHANGES_MAX + 5) {
            row.present = Some(n % 2 == 0);
            live.put_post(&row).unwrap();
            live.persist(&conn).unwrap();
        }
        let mut reloaded = LiveDoc::open(&conn, device, branch).unwrap();
        row.fault = Some("jammed".to_owned());
        reloaded.put_post(&row).unwrap();
        assert!(reloaded.persist(&conn).unwrap());
        let appended: Vec<u8> = conn
            .query_row(
                "SELECT bytes FROM doc_changes ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let change = automerge::Change::try_from(appended.as_slice()).unwrap();
        assert_eq!(
            change.raw_bytes().len(),
            appended.len(),
            "the appended row is exactly one change"
        );
        assert_eq!(change.deps(), live.heads().as_slice());
        let mut again = LiveDoc::open(&conn, device, branch).unwrap();
        assert_eq!(again.heads(), reloaded.heads());
        assert_eq!(again.heads(), vec![change.hash()]);
    }

    #[test]
    fn writing_an_equal_value_adds_no_history() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        let (device, branch) = ids();
        let mut live = LiveDoc::open(&conn, device, branch).unwrap();
        live.persist(&conn).unwrap();
        conn.execute("INSERT INTO posts (post, board, lock) VALUES (1, 0, 1)", [])
            .unwrap();
        let row = crate::ledger::post(&conn, PostNo::new(1).unwrap())
            .unwrap()
            .unwrap();
        live.put_post(&row).unwrap();
        live.persist(&conn).unwrap();
        let before: i64 = conn
            .query_row("SELECT count(*) FROM doc_changes", [], |r| r.get(0))
            .unwrap();
        live.put_post(&row).unwrap();
        live.persist(&conn).unwrap();
        let after: i64 = conn
            .query_row("SELECT count(*) FROM doc_changes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(before, after);
    }
}
