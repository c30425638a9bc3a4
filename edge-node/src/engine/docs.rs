//! Documents other than this device's own: the branch's intents document and the other
//! devices' documents of the branch, held here (read-only) so the branch keeps working, and
//! the intents are executed, while the hub is away.
//!
//! Who may send what (the session's mTLS identity is the [`SyncPeer`]):
//!
//! | document | accepted from | changes accepted by actor |
//! |---|---|---|
//! | this device's own (any epoch) | the hub; a branch Pi only without changes | this device's |
//! | another device's of this branch | the hub (it verified the device on its own session) or that device directly | that device's |
//! | this branch's intents | the hub only | the hub's for this chain ([`HubActors::for_chain`]) |
//! | anything else | nobody: [`DocRefusal`] | — |
//!
//! A device document names its branch inside; one naming another branch is refused (and what
//! was applied of it rolled back). Held documents live in SQLite (`held_docs`: a snapshot and
//! appended change chunks compacted every [`HELD_CHANGES_MAX`]), are loaded into memory on
//! first use, and are bounded by [`HELD_DOCS_MAX`]: a branch has few devices, so a full table
//! is a misconfiguration or an attack, refused rather than evicted. Of each writer only the
//! two newest epochs are kept (a rotation leaves the older one frozen).
//!
//! When a held device document changes, [`super::fold::peer_doc_changed`] runs in the same
//! transaction; when the intents document changes, the intents executor
//! ([`super::intents`]) runs right after it.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use automerge::{AutoCommit, ChangeHash};
use cartwise_schema::{ChainId, DeviceId};
use cartwise_sync_core::authority::changes_in;
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::message::body::{DocHeads, Head, SyncBody};
use cartwise_sync_core::{DocId, DocOwner, HubActors, PeerDocState};
use rusqlite::{Connection, OptionalExtension, params};

use super::{EdgeState, Engine};
use crate::store::StoreError;

/// Most documents of other writers held at once (a branch's devices, two epochs each, and
/// its intents).
pub const HELD_DOCS_MAX: usize = 32;

/// Appended change chunks of a held document before they are compacted into its snapshot.
pub const HELD_CHANGES_MAX: i64 = 64;

/// Who is at the other end of a session, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPeer {
    /// The hub.
    Hub,
    /// A device of this branch, on a direct session.
    Device(DeviceId),
}

/// Why a document (or a message about it) was refused. Nothing of it was kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocRefusal {
    /// The intents document comes only from the hub.
    #[error("{doc} is accepted only from the hub")]
    NotFromHub { doc: DocId },
    /// Another device's document comes only from the hub or from that device itself.
    #[error("{doc} is accepted only from the hub or from its device, not from device {peer}")]
    NotFromOwner { doc: DocId, peer: DeviceId },
    /// A branch Pi may not send changes to this device's own document.
    #[error("{doc} is this device's own; a branch peer may not send changes to it")]
    OwnDocChanges { doc: DocId },
    /// The document belongs to another branch.
    #[error("{doc} belongs to another branch")]
    OtherBranch { doc: DocId },
    /// Intents cannot be checked before the node knows its chain (it is not enrolled).
    #[error("{doc} cannot be checked: the node's chain is not known yet")]
    ChainUnknown { doc: DocId },
    /// An epoch older than the two newest held of its writer.
    #[error("{doc} is superseded by a newer epoch held here")]
    Superseded { doc: DocId },
    /// Already holding [`HELD_DOCS_MAX`] documents.
    #[error("{doc} refused: {max} documents are held already")]
    Full { doc: DocId, max: usize },
    /// A change was written by an actor not allowed to write the document.
    #[error("{0}")]
    Authority(String),
}

/// A held document in memory and how much of it is on disk.
struct Held {
    document: AutoCommit,
    /// The heads already stored (snapshot plus change log): a persist appends only the changes
    /// that follow them. Automerge's own incremental-save cursor starts empty after a load, and
    /// asking it then would re-encode and re-hash the whole history.
    saved_heads: Vec<ChangeHash>,
}

impl Held {
    fn new(mut document: AutoCommit) -> Self {
        let saved_heads = document.get_heads();
        Held {
            document,
            saved_heads,
        }
    }
}

/// The documents of other writers loaded so far (the store thread's cache).
#[derive(Default)]
pub(crate) struct HeldDocs {
    docs: BTreeMap<DocId, Held>,
    /// Whether the intents may have something to do (set on load and whenever the intents
    /// document changes; cleared when a scan left nothing waiting).
    pub(crate) intents_dirty: bool,
}

impl std::fmt::Debug for HeldDocs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldDocs")
            .field("loaded", &self.docs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl HeldDocs {
    /// A fresh cache: nothing loaded, intents to be scanned once.
    pub(crate) fn new() -> Self {
        HeldDocs {
            docs: BTreeMap::new(),
            intents_dirty: true,
        }
    }

    /// The held document `doc`, loaded from the store on first use; `None` if not held.
    pub(crate) fn get(
        &mut self,
        conn: &Connection,
        doc: DocId,
    ) -> Result<Option<&mut AutoCommit>, StoreError> {
        Ok(self.entry(conn, doc)?.map(|held| &mut held.document))
    }

    fn entry(&mut self, conn: &Connection, doc: DocId) -> Result<Option<&mut Held>, StoreError> {
        match self.docs.entry(doc) {
            Entry::Occupied(loaded) => Ok(Some(loaded.into_mut())),
            Entry::Vacant(slot) => {
                Ok(load_held(conn, doc)?.map(|loaded| slot.insert(Held::new(loaded))))
            }
        }
    }

    fn insert(&mut self, doc: DocId, document: AutoCommit) {
        self.docs.entry(doc).or_insert_with(|| Held::new(document));
    }

    fn forget(&mut self, doc: &DocId) {
        self.docs.remove(doc);
    }
}

fn doc_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Rejected(format!("held document: {error}"))
}

fn sync_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Rejected(format!("sync: {error}"))
}

fn load_held(conn: &Connection, doc: DocId) -> Result<Option<AutoCommit>, StoreError> {
    let name = doc.to_string();
    let snapshot: Option<Vec<u8>> = conn
        .query_row(
            "SELECT snapshot FROM held_docs WHERE doc = ?1",
            [&name],
            |r| r.get(0),
        )
        .optional()?;
    let Some(snapshot) = snapshot else {
        return Ok(None);
    };
    let mut document = if snapshot.is_empty() {
        AutoCommit::new()
    } else {
        AutoCommit::load(&snapshot).map_err(doc_error)?
    };
    // One `load_incremental` for the whole log: each call has a fixed cost.
    let mut stmt =
        conn.prepare_cached("SELECT bytes FROM held_doc_changes WHERE doc = ?1 ORDER BY seq")?;
    let chunks = stmt.query_map([&name], |r| r.get::<_, Vec<u8>>(0))?;
    let mut log = Vec::new();
    for chunk in chunks {
        log.extend_from_slice(&chunk?);
    }
    if !log.is_empty() {
        document.load_incremental(&log).map_err(doc_error)?;
    }
    // Everything loaded is on disk: its heads are the save cursor (`Held::new`), nothing is
    // re-encoded here.
    Ok(Some(document))
}

/// Appends the document's changes made since it was last stored; compacts into the snapshot
/// every `HELD_CHANGES_MAX`.
fn persist_held(conn: &Connection, doc: DocId, held: &mut Held) -> Result<(), StoreError> {
    let name = doc.to_string();
    let chunk = held.document.save_after(&held.saved_heads);
    if chunk.is_empty() {
        return Ok(());
    }
    held.saved_heads = held.document.get_heads();
    let appended: i64 = conn.query_row(
        "SELECT count(*) FROM held_doc_changes WHERE doc = ?1",
        [&name],
        |r| r.get(0),
    )?;
    if appended + 1 >= HELD_CHANGES_MAX {
        conn.execute(
            "UPDATE held_docs SET snapshot = ?2 WHERE doc = ?1",
            params![name, held.document.save()],
        )?;
        conn.execute("DELETE FROM held_doc_changes WHERE doc = ?1", [&name])?;
    } else {
        conn.execute(
            "INSERT INTO held_doc_changes (doc, seq, bytes)
             VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM held_doc_changes WHERE doc = ?1), ?2)",
            params![name, chunk],
        )?;
    }
    Ok(())
}

/// Every held document's id, in id order.
pub(crate) fn held_ids(conn: &Connection) -> Result<Vec<DocId>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT doc FROM held_docs ORDER BY doc")?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut ids = Vec::new();
    for name in names {
        match DocId::parse(&name?) {
            Ok(id) => ids.push(id),
            Err(error) => tracing::warn!(%error, "ignoring an unreadable held document id"),
        }
    }
    Ok(ids)
}

/// Whether two ids name the same writer's documents (any epochs).
fn same_writer(a: &DocId, b: &DocId) -> bool {
    a.owner() == b.owner()
}

/// Drops a held document, its change log and every peer's sync state of it.
fn drop_held(conn: &Connection, state: &mut EdgeState, doc: DocId) -> Result<(), StoreError> {
    let name = doc.to_string();
    conn.execute("DELETE FROM held_doc_changes WHERE doc = ?1", [&name])?;
    conn.execute("DELETE FROM held_docs WHERE doc = ?1", [&name])?;
    conn.execute("DELETE FROM sync_peer_states WHERE doc = ?1", [&name])?;
    state.held.forget(&doc);
    Ok(())
}

/// Starts holding `doc` (empty), within the bounds; drops its writer's epochs older than the
/// previous one.
fn start_holding(
    conn: &Connection,
    state: &mut EdgeState,
    doc: DocId,
) -> Result<Result<(), DocRefusal>, StoreError> {
    let held = held_ids(conn)?;
    let newest = held
        .iter()
        .filter(|other| same_writer(other, &doc))
        .map(DocId::epoch)
        .max();
    if newest.is_some_and(|newest| doc.epoch().saturating_add(1) < newest) {
        return Ok(Err(DocRefusal::Superseded { doc }));
    }
    for old in held
        .iter()
        .filter(|other| same_writer(other, &doc) && other.epoch().saturating_add(1) < doc.epoch())
    {
        drop_held(conn, state, *old)?;
    }
    let count: i64 = conn.query_row("SELECT count(*) FROM held_docs", [], |r| r.get(0))?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= HELD_DOCS_MAX {
        return Ok(Err(DocRefusal::Full {
            doc,
            max: HELD_DOCS_MAX,
        }));
    }
    conn.execute(
        "INSERT INTO held_docs (doc, snapshot) VALUES (?1, x'')",
        [doc.to_string()],
    )?;
    state.held.insert(doc, AutoCommit::new());
    Ok(Ok(()))
}

fn load_state(conn: &Connection, peer: &str, doc: DocId) -> Result<PeerDocState, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .query_row(
            "SELECT state FROM sync_peer_states WHERE peer = ?1 AND doc = ?2",
            params![peer, doc.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(bytes
        .and_then(|b| PeerDocState::decode(doc, &b).ok())
        .unwrap_or_else(|| PeerDocState::new(doc)))
}

fn save_state(conn: &Connection, peer: &str, state: &PeerDocState) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO sync_peer_states (peer, doc, state) VALUES (?1, ?2, ?3)
         ON CONFLICT (peer, doc) DO UPDATE SET state = excluded.state",
        params![peer, state.doc().to_string(), state.encode()],
    )?;
    Ok(())
}

/// What kind of document `doc` is for this device.
enum Kind {
    Own,
    Peer(DeviceId),
    Intents,
    Foreign,
}

impl Engine {
    /// Tells the engine its chain (from the enrolled identity): the hub's intents are checked
    /// against that chain's hub actor.
    pub fn set_chain(&self, chain: ChainId) {
        if let Ok(mut slot) = self.chain.write() {
            *slot = Some(chain);
        }
    }

    fn chain(&self) -> Option<ChainId> {
        self.chain.read().ok().and_then(|slot| *slot)
    }

    fn kind_of(&self, doc: &DocId) -> Kind {
        match doc.owner() {
            DocOwner::Device(device) if device == self.config.device => Kind::Own,
            DocOwner::Device(device) => Kind::Peer(device),
            DocOwner::Hub(branch) if branch == self.config.branch => Kind::Intents,
            DocOwner::Hub(_) => Kind::Foreign,
        }
    }

    /// Every document this device syncs: its own (current epoch first, then retired epochs
    /// not yet at the hub) and those it holds of other writers.
    pub async fn held_docs(&self) -> Result<Vec<DocId>, StoreError> {
        let mut docs = self.own_documents().await?;
        let held = self.store.read(|conn, _| held_ids(conn)).await?;
        docs.extend(held);
        Ok(docs)
    }

    /// [`Engine::held_docs`] with the heads this device has of each (for a `Docs` listing).
    pub async fn doc_listing(&self) -> Result<Vec<DocHeads>, StoreError> {
        let device = self.config.device;
        self.store
            .transact(move |tx, state| {
                let heads = |hashes: Vec<automerge::ChangeHash>| -> Vec<Head> {
                    hashes.into_iter().map(Head::from).collect()
                };
                let mut listing = vec![DocHeads {
                    doc: state.live.doc_id(),
                    heads: heads(state.live.heads()),
                }];
                for retired in crate::live::retired_epochs(tx, device)? {
                    listing.push(DocHeads {
                        doc: retired.doc,
                        heads: heads(retired.final_heads),
                    });
                }
                for doc in held_ids(tx)? {
                    let hashes = state
                        .held
                        .get(tx, doc)?
                        .map(|document| document.get_heads())
                        .unwrap_or_default();
                    listing.push(DocHeads {
                        doc,
                        heads: heads(hashes),
                    });
                }
                Ok(listing)
            })
            .await
    }

    /// The next sync message for `peer` about `doc`. A document of another writer that may be
    /// held but is not yet gets a first message from an empty document (so the peer sends
    /// it whole); one that may not be held at all gets `None`.
    pub async fn sync_generate_doc(
        &self,
        peer: String,
        doc: DocId,
    ) -> Result<Option<SyncBody>, StoreError> {
        match self.kind_of(&doc) {
            Kind::Own if doc == self.document_id() => self.sync_generate(peer).await,
            Kind::Own => self.sync_generate_retired(peer, doc).await,
            Kind::Foreign => Ok(None),
            Kind::Peer(_) | Kind::Intents => {
                self.store
                    .transact(move |tx, state| {
                        let mut sync = load_state(tx, &peer, doc)?;
                        let body = match state.held.get(tx, doc)? {
                            Some(document) => sync.generate(document).map_err(sync_error)?,
                            None => sync.generate(&mut AutoCommit::new()).map_err(sync_error)?,
                        };
                        save_state(tx, &peer, &sync)?;
                        Ok(body)
                    })
                    .await
            }
        }
    }

    /// Applies `peer`'s sync message about `doc` (who `from` is decides what is accepted; see
    /// the module documentation) and returns the reply, if any. A refusal is
    /// [`StoreError::Refused`] and keeps nothing.
    pub async fn sync_receive_doc(
        &self,
        peer: String,
        from: SyncPeer,
        body: SyncBody,
    ) -> Result<Option<SyncBody>, StoreError> {
        let doc = body.doc;
        let hub_actors = match (self.kind_of(&doc), from) {
            (Kind::Own, SyncPeer::Hub) => return self.sync_receive(peer, body).await,
            (Kind::Own, SyncPeer::Device(_)) => {
                let carries_changes = automerge::sync::Message::decode(&body.data)
                    .map_err(sync_error)
                    .and_then(|message| changes_in(&message).map_err(sync_error))?;
                if !carries_changes.is_empty() {
                    return Err(DocRefusal::OwnDocChanges { doc }.into());
                }
                return self.sync_receive(peer, body).await;
            }
            (Kind::Foreign, _) => return Err(DocRefusal::OtherBranch { doc }.into()),
            (Kind::Intents, SyncPeer::Device(_)) => {
                return Err(DocRefusal::NotFromHub { doc }.into());
            }
            (Kind::Peer(owner), SyncPeer::Device(sender)) if owner != sender => {
                return Err(DocRefusal::NotFromOwner { doc, peer: sender }.into());
            }
            (Kind::Peer(_), _) => HubActors::default(),
            (Kind::Intents, SyncPeer::Hub) => match self.chain() {
                Some(chain) => HubActors::for_chain(chain),
                None => return Err(DocRefusal::ChainUnknown { doc }.into()),
            },
        };
        let branch = self.config.branch;
        let (reply, intents_changed) = self
            .store
            .transact(move |tx, state| {
                if state.held.get(tx, doc)?.is_none() {
                    start_holding(tx, state, doc)?.map_err(StoreError::from)?;
                }
                let mut sync = load_state(tx, &peer, doc)?;
                let held = state
                    .held
                    .entry(tx, doc)?
                    .ok_or_else(|| doc_error(format!("{doc} vanished")))?;
                let document = &mut held.document;
                let received = sync
                    .receive(document, &body, &hub_actors)
                    .map_err(|error| match error {
                        cartwise_sync_core::DocSyncError::Authority(refused) => {
                            StoreError::from(DocRefusal::Authority(refused.to_string()))
                        }
                        other => sync_error(other),
                    })?;
                let reply = sync.generate(document).map_err(sync_error)?;
                save_state(tx, &peer, &sync)?;
                let mut intents_changed = false;
                if received.heads_changed {
                    persist_held(tx, doc, held)?;
                    match doc {
                        DocId::Device { .. } => {
                            let facts = read_device_doc(&held.document);
                            if facts.branch.is_some_and(|named| named != branch) {
                                return Err(DocRefusal::OtherBranch { doc }.into());
                            }
                            super::fold::peer_doc_changed(tx, state, &facts)?;
                        }
                        DocId::BranchIntents { .. } => {
                            state.held.intents_dirty = true;
                            intents_changed = true;
                        }
                    }
                }
                state.finish(tx)?;
                Ok((reply, intents_changed))
            })
            .await?;
        if intents_changed {
            self.execute_intents().await?;
        }
        Ok(reply)
    }
}

/// The newest held epoch of this branch's intents document, loaded.
pub(crate) fn newest_intents<'a>(
    conn: &Connection,
    state: &'a mut EdgeState,
    branch: cartwise_schema::BranchId,
) -> Result<Option<&'a mut AutoCommit>, StoreError> {
    let newest = held_ids(conn)?
        .into_iter()
        .filter(|doc| doc.owner() == DocOwner::Hub(branch))
        .max_by_key(DocId::epoch);
    match newest {
        Some(doc) => state.held.get(conn, doc),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_connection;
    use automerge::ROOT;
    use automerge::transaction::Transactable;

    fn log_rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM held_doc_changes", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_reloaded_held_document_appends_only_its_new_changes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        let writer = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001002").unwrap();
        let doc = DocId::device(writer);
        conn.execute(
            "INSERT INTO held_docs (doc, snapshot) VALUES (?1, x'')",
            [doc.to_string()],
        )
        .unwrap();
        let actor = automerge::ActorId::from(writer.as_uuid().as_bytes().as_slice());
        let mut held = Held::new(AutoCommit::new().with_actor(actor.clone()));
        // Past one compaction, so the store holds a snapshot and a log.
        for n in 0..(HELD_CHANGES_MAX + 5) {
            held.document.put(ROOT, "n", n).unwrap();
            persist_held(&conn, doc, &mut held).unwrap();
        }
        let before = log_rows(&conn);
        assert!(before > 0 && before < HELD_CHANGES_MAX, "got {before} rows");

        let mut reloaded = Held::new(load_held(&conn, doc).unwrap().unwrap());
        assert_eq!(reloaded.document.get_heads(), held.document.get_heads());
        // Loading stored nothing, and persisting with nothing new appends nothing.
        persist_held(&conn, doc, &mut reloaded).unwrap();
        assert_eq!(log_rows(&conn), before);

        // A peer's next change: exactly that change is appended.
        let previous = held.document.get_heads();
        held.document.put(ROOT, "n", -1).unwrap();
        let change = held.document.get_last_local_change().unwrap();
        reloaded
            .document
            .load_incremental(change.raw_bytes())
            .unwrap();
        persist_held(&conn, doc, &mut reloaded).unwrap();
        assert_eq!(log_rows(&conn), before + 1);
        let appended: Vec<u8> = conn
            .query_row(
                "SELECT bytes FROM held_doc_changes ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let stored = automerge::Change::try_from(appended.as_slice()).unwrap();
        assert_eq!(stored.raw_bytes().len(), appended.len(), "one change only");
        assert_eq!(stored.deps(), previous.as_slice());

        let mut again = load_held(&conn, doc).unwrap().unwrap();
        assert_eq!(again.get_heads(), vec![change.hash()]);
    }
}
