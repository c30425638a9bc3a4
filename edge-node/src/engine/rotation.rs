//! The engine's side of live-document rotation (`crate::live`, "Rotation"): the retired epochs
//! still offered to peers, their sync, and dropping each once the hub holds its final heads.
//!
//! A retired epoch is frozen: nothing writes it again, a peer's message can only tell us what
//! the peer holds of it. Only this device's actor is accepted into it, as for the live one.

use cartwise_sync_core::message::body::SyncBody;
use cartwise_sync_core::{DocId, HubActors, PeerDocState};
use rusqlite::{Connection, OptionalExtension, params};

use super::Engine;
use crate::live::{self, HUB_PEER};
use crate::store::StoreError;

fn sync_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Rejected(format!("sync: {error}"))
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

impl Engine {
    /// This device's own documents to offer a peer: the current epoch first, then the retired
    /// epochs the hub does not hold whole yet, oldest first.
    pub async fn own_documents(&self) -> Result<Vec<DocId>, StoreError> {
        let device = self.config.device;
        self.store
            .read(move |conn, state| {
                let mut docs = vec![state.live.doc_id()];
                docs.extend(
                    live::retired_epochs(conn, device)?
                        .into_iter()
                        .map(|retired| retired.doc),
                );
                Ok(docs)
            })
            .await
    }

    /// Whether `doc` is a retired epoch of this device still kept.
    pub async fn is_retired_document(&self, doc: DocId) -> Result<bool, StoreError> {
        let device = self.config.device;
        self.store
            .read(move |conn, _| {
                Ok(live::retired_epochs(conn, device)?
                    .iter()
                    .any(|retired| retired.doc == doc))
            })
            .await
    }

    /// The next sync message for `peer` about a retired epoch (`None` once it was dropped).
    pub async fn sync_generate_retired(
        &self,
        peer: String,
        doc: DocId,
    ) -> Result<Option<SyncBody>, StoreError> {
        let device = self.config.device;
        self.store
            .transact(move |tx, _| {
                if !live::retired_epochs(tx, device)?
                    .iter()
                    .any(|r| r.doc == doc)
                {
                    return Ok(None);
                }
                let mut document = live::load_retired(tx, doc)?;
                let mut sync = load_state(tx, &peer, doc)?;
                let body = sync.generate(&mut document).map_err(sync_error)?;
                save_state(tx, &peer, &sync)?;
                Ok(body)
            })
            .await
    }

    /// Applies `peer`'s sync message about a retired epoch and returns the reply. When the
    /// peer is the hub and it now holds the epoch's final heads, the epoch is dropped here
    /// (document, change log, every peer's sync state).
    pub async fn sync_receive_retired(
        &self,
        peer: String,
        body: SyncBody,
    ) -> Result<Option<SyncBody>, StoreError> {
        let device = self.config.device;
        self.store
            .transact(move |tx, _| {
                let doc = body.doc;
                let Some(retired) = live::retired_epochs(tx, device)?
                    .into_iter()
                    .find(|r| r.doc == doc)
                else {
                    return Ok(None);
                };
                let mut document = live::load_retired(tx, doc)?;
                let mut sync = load_state(tx, &peer, doc)?;
                let received = sync
                    .receive(&mut document, &body, &HubActors::new([]))
                    .map_err(sync_error)?;
                if received.heads_changed {
                    tracing::warn!(%doc, "a peer held changes of a retired epoch this device lacked; they are not kept");
                }
                let reply = sync.generate(&mut document).map_err(sync_error)?;
                save_state(tx, &peer, &sync)?;
                if peer == HUB_PEER && live::hub_holds(tx, doc, &retired.final_heads)? {
                    live::drop_epoch(tx, doc)?;
                    tracing::info!(%doc, "the hub holds the retired epoch; dropped locally");
                    return Ok(None);
                }
                Ok(reply)
            })
            .await
    }

    /// Rotates the live document to its next epoch now, whatever its size.
    pub async fn rotate_live_document(&self) -> Result<DocId, StoreError> {
        self.store
            .transact(|tx, state| {
                state.live.persist(tx)?;
                let next = state.live.rotate(tx)?;
                state.changed.notify_one();
                Ok(next)
            })
            .await
    }

    /// Sets the size at which the live document rotates (tests and benchmarks).
    pub async fn set_rotate_saved_bytes(&self, bytes: usize) -> Result<(), StoreError> {
        self.store
            .transact(move |_, state| {
                state.live.set_rotate_saved_bytes(bytes);
                Ok(())
            })
            .await
    }
}
