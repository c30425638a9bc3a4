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
//! Architecture Invariant: only the owning device writes its document; the values written only
//! change when the fact changes (no rewrite of equal values), so history grows with facts, not
//! with polls.

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use cartwise_schema::{BranchId, DeviceId, PostNo, RentalId};
use rusqlite::{Connection, OptionalExtension, params};

use cartwise_sync_core::facts::{DEVICE_DOC_SCHEMA, keys};

use crate::ledger::{PostRow, RentalRow};
use crate::store::StoreError;
use crate::timekeeping::Timeline;
use crate::timekeeping::to_sql_mono;

/// Appended change chunks kept before they are compacted into one snapshot.
pub const DOC_CHANGES_MAX: i64 = 64;

/// The device's live document and its name in the store.
pub struct LiveDoc {
    doc: AutoCommit,
    name: String,
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
    /// The store name of a device's document.
    pub fn name_of(device: DeviceId) -> String {
        format!("device/{device}")
    }

    /// Loads the device's document from its snapshot and appended changes, or starts it.
    pub fn open(conn: &Connection, device: DeviceId, branch: BranchId) -> Result<Self, StoreError> {
        let name = Self::name_of(device);
        let actor = ActorId::from(device.as_uuid().as_bytes().as_slice());
        let snapshot: Option<Vec<u8>> = conn
            .query_row(
                "SELECT bytes FROM doc_snapshots WHERE doc = ?1",
                [&name],
                |r| r.get(0),
            )
            .optional()?;
        let mut doc = match snapshot {
            Some(bytes) => AutoCommit::load(&bytes).map_err(doc_error)?,
            None => AutoCommit::new(),
        };
        let mut stmt = conn.prepare("SELECT bytes FROM doc_changes WHERE doc = ?1 ORDER BY seq")?;
        let chunks = stmt.query_map([&name], |r| r.get::<_, Vec<u8>>(0))?;
        for chunk in chunks {
            doc.load_incremental(&chunk?).map_err(doc_error)?;
        }
        // What was just loaded is on disk already: move the save cursor past it, so the next
        // persist appends only new changes.
        let _ = doc.save_incremental();
        doc.set_actor(actor);
        let mut live = Self { doc, name };
        live.put_root(device, branch)?;
        Ok(live)
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

    /// Appends the changes made since the last persist to the store; compacts when due.
    /// Returns whether there was anything new.
    pub fn persist(&mut self, conn: &Connection) -> Result<bool, StoreError> {
        let chunk = self.doc.save_incremental();
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
        } else {
            conn.execute(
                "INSERT INTO doc_changes (doc, seq, bytes) VALUES (?1, ?2, ?3)",
                params![self.name, next, chunk],
            )?;
        }
        Ok(true)
    }

    /// The whole document as `save()` writes it (compacted).
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
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
