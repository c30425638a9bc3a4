//! The engine's side of sync: Automerge sync messages for the device's live document with a
//! peer (the hub today), persisted per-peer progress, the hub's acknowledgements of closed
//! rentals (which then leave the live document), and trusted time learned at sync.

use cartwise_schema::{BootOffset, ClockReading, RentalId, WallMillis};
use cartwise_sync_core::message::body::SyncBody;
use cartwise_sync_core::{DocId, HubActors, PeerDocState};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::{EdgeState, Engine};
use crate::ledger;
use crate::store::StoreError;

/// A learned clock offset that moves by more than this rewrites the corrected times.
pub const TIME_RECORRECT_MS: i64 = 1_000;

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

impl EdgeState {
    fn own_doc(&self) -> DocId {
        DocId::device(self.device())
    }
}

impl Engine {
    /// The id of this device's live document.
    pub fn document_id(&self) -> DocId {
        DocId::device(self.config.device)
    }

    /// Wakes whenever the live document gained changes.
    pub async fn document_changed(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.store
            .read(|_, state| Ok(std::sync::Arc::clone(&state.changed)))
            .await
            .unwrap_or_else(|_| std::sync::Arc::new(tokio::sync::Notify::new()))
    }

    /// The next sync message for `peer` about the live document, if any.
    pub async fn sync_generate(&self, peer: String) -> Result<Option<SyncBody>, StoreError> {
        self.store
            .transact(move |tx, state| {
                let doc = state.own_doc();
                let mut sync = load_state(tx, &peer, doc)?;
                let body = sync.generate(state.live.doc_mut()).map_err(sync_error)?;
                save_state(tx, &peer, &sync)?;
                Ok(body)
            })
            .await
    }

    /// Applies `peer`'s sync message to the live document (only this device's own changes are
    /// accepted into it) and returns the reply, if any.
    pub async fn sync_receive(
        &self,
        peer: String,
        body: SyncBody,
    ) -> Result<Option<SyncBody>, StoreError> {
        self.store
            .transact(move |tx, state| {
                let doc = state.own_doc();
                if body.doc != doc {
                    return Err(StoreError::Rejected(format!(
                        "sync: {} is not this device's document",
                        body.doc
                    )));
                }
                let mut sync = load_state(tx, &peer, doc)?;
                sync.receive(state.live.doc_mut(), &body, &HubActors::new([]))
                    .map_err(sync_error)?;
                let reply = sync.generate(state.live.doc_mut()).map_err(sync_error)?;
                save_state(tx, &peer, &sync)?;
                state.finish(tx)?;
                Ok(reply)
            })
            .await
    }

    /// The hub holds these closed rentals: they leave the live document (their rows stay in
    /// the ledger). Open rentals are never dropped, whatever a peer says.
    pub async fn ledger_acked(&self, rentals: Vec<RentalId>) -> Result<usize, StoreError> {
        let reading = self.clock.read();
        self.store
            .transact(move |tx, state| {
                let mut dropped = 0;
                for id in rentals {
                    let closed = ledger::rental(tx, id)?.is_some_and(|r| !r.status.is_open());
                    if closed && state.live.has_rental(id) {
                        state.live.remove_rental(id)?;
                        dropped += 1;
                    }
                }
                if dropped > 0 {
                    let at = state.stamp(tx, reading)?;
                    ledger::append_event(
                        tx,
                        "hub_acknowledged",
                        None,
                        None,
                        &json!({ "rentals": dropped }),
                        &at,
                    )?;
                }
                state.finish(tx)?;
                Ok(dropped)
            })
            .await
    }

    /// Learns the current boot's clock offset from a trusted observation (the hub's `Welcome`,
    /// an operator's `time set`). When it is new or moved by more than `TIME_RECORRECT_MS`,
    /// every rental the live document carries gets its corrected times again.
    pub async fn learn_time(
        &self,
        local: ClockReading,
        trusted_wall: WallMillis,
        source: &'static str,
    ) -> Result<i64, StoreError> {
        self.store
            .transact(move |tx, state| {
                let at = state.stamp(tx, local)?;
                let offset = BootOffset::learn(local.boot, local.mono, local.wall, trusted_wall);
                let before = state.timeline.corrected_reading(&local).get();
                let known = state.timeline.is_learned(&local.boot);
                let offset_ms = state.timeline.learn(tx, offset, source)?;
                let moved = (state.timeline.corrected_reading(&local).get() - before).abs();
                if !known || moved > TIME_RECORRECT_MS {
                    let data = json!({ "source": source, "offset_ms": offset_ms });
                    ledger::append_event(tx, "time_learned", None, None, &data, &at)?;
                    for rental in ledger::rentals_where(tx, "1 = 1", &[], 100_000, 0)? {
                        if state.live.has_rental(rental.id) {
                            state.live.put_rental(&rental, &state.timeline)?;
                        }
                    }
                }
                state.finish(tx)?;
                Ok(offset_ms)
            })
            .await
    }
}
