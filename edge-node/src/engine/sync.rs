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

/// Drops from the live document the acknowledged rentals that are closed here and the
/// acknowledged `returns` entries; returns how many entries left.
fn drop_acked(
    tx: &Connection,
    state: &mut EdgeState,
    rentals: &[RentalId],
    reading: ClockReading,
) -> Result<usize, StoreError> {
    let mut dropped = 0;
    for &id in rentals {
        let closed = ledger::rental(tx, id)?.is_some_and(|r| !r.status.is_open());
        if closed && state.live.has_rental(id) {
            state.live.remove_rental(id)?;
            dropped += 1;
        }
        if state.live.has_return(id) {
            state.live.remove_return(id)?;
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
    Ok(dropped)
}

impl EdgeState {
    fn own_doc(&self) -> DocId {
        self.live.doc_id()
    }
}

impl Engine {
    /// The id of this device's live document: its current epoch (see `live.rs`, rotation).
    pub fn document_id(&self) -> DocId {
        DocId::Device {
            device: self.config.device,
            epoch: self.epoch.load(std::sync::atomic::Ordering::Relaxed),
        }
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
        if body.doc != self.document_id() && self.is_retired_document(body.doc).await? {
            return self.sync_receive_retired(peer, body).await;
        }
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
    /// the ledger). Open rentals are never dropped, whatever a peer says. A rental of another
    /// device whose cart docked here leaves the document's `returns` too: the hub acknowledges
    /// one only once it holds the rental closed and its origin's own document shows it closed,
    /// so the origin no longer needs this device's fact.
    pub async fn ledger_acked(&self, rentals: Vec<RentalId>) -> Result<usize, StoreError> {
        let reading = self.clock.read();
        self.store
            .transact(move |tx, state| {
                let dropped = drop_acked(tx, state, &rentals, reading)?;
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

#[cfg(test)]
mod tests {
    use cartwise_schema::{
        BranchId, DeviceId, MonoMillis, Phone, PostNo, RentalStatus, WallMillis,
    };

    use super::*;
    use crate::store::open_connection;

    const WALL: i64 = 1_800_000_000_000;

    fn reading(mono: u64) -> ClockReading {
        ClockReading {
            wall: WallMillis::new(WALL + i64::try_from(mono).unwrap()),
            boot: cartwise_fixtures::clock::boot_id(1),
            mono: MonoMillis::new(mono),
        }
    }

    #[test]
    fn an_acknowledgement_drops_closed_rentals_and_returns_docked_here_but_never_open_rentals() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        conn.execute("INSERT INTO posts (post, board, lock) VALUES (1, 0, 1)", [])
            .unwrap();
        conn.execute("INSERT INTO posts (post, board, lock) VALUES (2, 0, 2)", [])
            .unwrap();
        let me = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001001").unwrap();
        let origin = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001002").unwrap();
        let branch = BranchId::parse("0b1e3c2a-0000-4000-8000-000000000101").unwrap();
        let mut state = EdgeState::load(&conn, me, branch).unwrap();
        let at = state.stamp(&conn, reading(1_000)).unwrap();
        let rental = |n: u8, post: u16, status| ledger::RentalRow {
            id: RentalId::from_parts(u64::try_from(WALL).unwrap(), [n; 10]),
            phone: Phone::parse("0521234567").unwrap(),
            post: PostNo::new(post).unwrap(),
            status,
            rental_minutes: 120,
            start: at,
            taken: Some(at.hlc),
            end: (status != RentalStatus::Active).then_some(at),
            return_post: None,
            note: None,
        };
        let closed = rental(1, 1, RentalStatus::Returned);
        let open = rental(2, 2, RentalStatus::Active);
        for row in [&closed, &open] {
            ledger::insert_rental(&conn, row).unwrap();
            state.live.put_rental(row, &state.timeline).unwrap();
        }
        // A cart of `origin`'s rental docked here.
        let foreign = RentalId::from_parts(u64::try_from(WALL).unwrap(), [3; 10]);
        state
            .live
            .put_return(
                foreign,
                origin,
                PostNo::new(2).unwrap(),
                RentalStatus::Returned,
                &at,
                WALL + 60_000,
                true,
            )
            .unwrap();
        assert!(state.live.has_return(foreign));

        let acked = [closed.id, open.id, foreign];
        let dropped = drop_acked(&conn, &mut state, &acked, reading(2_000)).unwrap();
        assert_eq!(dropped, 2);
        assert!(!state.live.has_rental(closed.id));
        assert!(
            state.live.has_rental(open.id),
            "an open rental is never dropped"
        );
        assert!(!state.live.has_return(foreign));
        let facts = cartwise_sync_core::facts::read_device_doc(state.live.doc());
        assert!(facts.returns.is_empty());
        // Idempotent: a repeated acknowledgement drops nothing more.
        assert_eq!(
            drop_acked(&conn, &mut state, &acked, reading(3_000)).unwrap(),
            0
        );
    }
}
