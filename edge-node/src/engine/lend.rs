//! Lending: pick a post, record the rental durably, unlock, verify, move on from a jam.

use cartwise_schema::{
    AnomalyKind, ClockReading, HookState, Phone, PostNo, RentalId, RentalStatus, WallMillis,
};
use serde_json::json;

use super::{EdgeState, Engine};
use crate::cu16::{BoardAddress, Lock, UnlockOutcome};
use crate::ledger::{self, PostRow, RentalRow, Service};
use crate::store::StoreError;

/// A rental that started: its cart is unlocked for the shopper.
#[derive(Debug, Clone)]
pub struct Lent {
    pub rental: RentalRow,
    pub post: PostRow,
    /// When the cart is due back (corrected wall time).
    pub expected_return: WallMillis,
}

/// Why a lend did not happen. Nothing is left half-done: every started rental is closed or
/// left `unlocking` for the reconciler, never silently dropped.
#[derive(Debug, thiserror::Error)]
pub enum LendError {
    /// The phone already has an open rental.
    #[error("this phone already has an active rental (cart {post})")]
    AlreadyRenting { post: PostNo, rental: RentalId },
    /// No post has a latched cart that can be lent.
    #[error("no cart is available at this station")]
    NoCartAvailable,
    /// Every post tried did not open.
    #[error("the locks tried did not open; the posts were flagged for a technician")]
    LocksDidNotOpen,
    /// The lock bus is not reachable.
    #[error("the lock system is not answering: {0}")]
    LockSystemDown(String),
    /// The local database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Engine {
    /// Lends a cart to `phone`: up to `lend_posts_max` posts are tried; each rental is durable
    /// before its unlock frame is written.
    pub async fn lend(&self, phone: &Phone) -> Result<Lent, LendError> {
        let Some(bus) = self.bus() else {
            return Err(LendError::LockSystemDown("no lock bus is connected".into()));
        };
        let mut tried: Vec<PostNo> = Vec::new();
        let mut any_jam = false;
        for _ in 0..self.config.lend_posts_max.max(1) {
            let (rental, post) = match self.begin(phone, &tried).await? {
                Some(begun) => begun,
                None if any_jam => return Err(LendError::LocksDidNotOpen),
                None => return Err(LendError::NoCartAvailable),
            };
            tried.push(post.post);
            let id = rental.id;
            self.begin_flight(id);
            let outcome = self.unlock(&bus, &post).await;
            let result = match outcome {
                Ok(UnlockOutcome::Opened | UnlockOutcome::AlreadyOpen) => {
                    self.note_bus(true);
                    self.confirm(rental, post).await.map(Some)
                }
                Ok(UnlockOutcome::DidNotOpen) => {
                    self.note_bus(true);
                    any_jam = true;
                    self.fail(rental, post).await.map(|()| None)
                }
                Err(message) => {
                    // The frame may or may not have gone out: the rental stays `unlocking` and
                    // the reconciler settles it from the board's sensed state.
                    self.note_bus(false);
                    self.end_flight(id);
                    return Err(LendError::LockSystemDown(message));
                }
            };
            self.end_flight(id);
            if let Some(lent) = result? {
                return Ok(lent);
            }
        }
        Err(LendError::LocksDidNotOpen)
    }

    async fn unlock(
        &self,
        bus: &crate::cu16::Bus,
        post: &PostRow,
    ) -> Result<UnlockOutcome, String> {
        let board = BoardAddress::new(post.board.get()).map_err(|e| e.to_string())?;
        let lock = Lock::new(post.lock.get()).map_err(|e| e.to_string())?;
        bus.unlock(board, lock).await.map_err(|e| e.to_string())
    }

    /// Records the rental as `unlocking` on the chosen post, in one transaction.
    async fn begin(
        &self,
        phone: &Phone,
        exclude: &[PostNo],
    ) -> Result<Option<(RentalRow, PostRow)>, LendError> {
        let reading = self.clock.read();
        let minutes = self.config.rental_minutes;
        let phone = phone.clone();
        let exclude = exclude.to_vec();
        let id_wall = reading.wall.get();
        let id = self.new_rental_id(id_wall);
        self.store
            .transact(move |tx, state| begin_lend(tx, state, reading, id, phone, minutes, &exclude))
            .await?
    }

    async fn confirm(&self, mut rental: RentalRow, post: PostRow) -> Result<Lent, LendError> {
        let reading = self.clock.read();
        let lent = self
            .store
            .transact(move |tx, state| {
                let at = state.stamp(tx, reading)?;
                // The poller may have seen the cart leave already.
                if let Some(current) = ledger::rental(tx, rental.id)? {
                    rental.taken = current.taken;
                }
                rental.status = RentalStatus::Active;
                state.save_rental(tx, &rental)?;
                ledger::set_hook(tx, post.post, HookState::Open)?;
                ledger::note_use(tx, post.post, at.hlc)?;
                ledger::append_event(
                    tx,
                    "unlocked",
                    Some(rental.id),
                    Some(post.post),
                    &json!({}),
                    &at,
                )?;
                let post = state.mirror_post(tx, post.post)?.unwrap_or(post);
                let due_ms = i64::from(rental.rental_minutes) * 60_000;
                let expected_return = state
                    .timeline
                    .corrected(&rental.start)
                    .saturating_add_ms(due_ms);
                state.finish(tx)?;
                Ok(Lent {
                    rental,
                    post,
                    expected_return,
                })
            })
            .await?;
        tracing::info!(rental = %lent.rental.id, post = %lent.post.post, "cart lent");
        Ok(lent)
    }

    async fn fail(&self, mut rental: RentalRow, post: PostRow) -> Result<(), LendError> {
        let reading = self.clock.read();
        self.store
            .transact(move |tx, state| {
                let at = state.stamp(tx, reading)?;
                rental.status = RentalStatus::FailedUnlock;
                rental.end = Some(at);
                rental.note = Some("the lock did not open".into());
                state.save_rental(tx, &rental)?;
                ledger::set_service(tx, post.post, Service::Fault, Some("unlock did not open"))?;
                state.anomaly(
                    tx,
                    AnomalyKind::UnlockNotOpened,
                    Some(post.post),
                    Some(rental.id),
                    "the hook stayed latched after the unlock pulse",
                    &at,
                )?;
                state.mirror_post(tx, post.post)?;
                state.finish(tx)
            })
            .await?;
        tracing::warn!(post = %post.post, "lock did not open; post flagged, trying another");
        Ok(())
    }
}

fn begin_lend(
    tx: &rusqlite::Transaction<'_>,
    state: &mut EdgeState,
    reading: ClockReading,
    id: RentalId,
    phone: Phone,
    minutes: u32,
    exclude: &[PostNo],
) -> Result<Result<Option<(RentalRow, PostRow)>, LendError>, StoreError> {
    if let Some(open) = ledger::open_rental_of(tx, &phone)? {
        return Ok(Err(LendError::AlreadyRenting {
            post: open.post,
            rental: open.id,
        }));
    }
    let Some(post) = ledger::pick_post_for_lend(tx, exclude)? else {
        return Ok(Ok(None));
    };
    let at = state.stamp(tx, reading)?;
    let rental = RentalRow {
        id,
        phone,
        post: post.post,
        status: RentalStatus::Unlocking,
        rental_minutes: minutes,
        start: at,
        taken: None,
        end: None,
        return_post: None,
        note: None,
    };
    ledger::insert_rental(tx, &rental)?;
    state.live.put_rental(&rental, &state.timeline)?;
    ledger::append_event(
        tx,
        "lend_started",
        Some(id),
        Some(post.post),
        &json!({ "minutes": minutes }),
        &at,
    )?;
    let post = state.mirror_post(tx, post.post)?.unwrap_or(post);
    state.finish(tx)?;
    Ok(Ok(Some((rental, post))))
}
