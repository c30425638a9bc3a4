//! What the bus senses, turned into facts: hook and presence changes, docks that close
//! rentals (also rentals started at another Pi of the branch, recorded as `returns` through
//! `fold`), carts leaving, and the reconciliation of rentals left `unlocking`.

use cartwise_schema::{
    AnomalyKind, BoardAddr, HookState, LockNo, PostNo, RentalId, RentalStatus, Stamp,
};
use rusqlite::Connection;
use serde_json::json;

use super::{EdgeState, Engine, fold};
use crate::cu16::{BoardStatus, PollEvent};
use crate::ledger::{self, RentalRow, Service};
use crate::store::StoreError;

/// How a dock at an unreserved post was matched to a rental.
const MATCHED_ONLY_RESERVATION: &str = "the only return in progress";
const MATCHED_ONLY_OPEN: &str = "the only cart out";

impl Engine {
    /// Applies one poller event.
    pub async fn on_poll_event(&self, event: PollEvent) -> Result<(), StoreError> {
        match event {
            PollEvent::Baseline { status } => {
                self.note_bus(true);
                self.apply_board(status).await?;
                self.reconcile().await
            }
            PollEvent::Latched {
                board,
                lock,
                cart_present,
            } => {
                self.note_bus(true);
                self.apply_lock(
                    board.get(),
                    lock.get(),
                    Some(HookState::Latched),
                    cart_present.then_some(true),
                    cart_present,
                )
                .await
            }
            PollEvent::Opened { board, lock } => {
                self.note_bus(true);
                self.apply_lock(board.get(), lock.get(), Some(HookState::Open), None, false)
                    .await
            }
            PollEvent::CartArrived { board, lock } => {
                self.apply_lock(board.get(), lock.get(), None, Some(true), false)
                    .await
            }
            PollEvent::CartRemoved { board, lock } => {
                self.apply_lock(board.get(), lock.get(), None, Some(false), false)
                    .await
            }
            PollEvent::BoardSilent { board } => {
                tracing::warn!(board = board.get(), "board stopped answering");
                Ok(())
            }
            PollEvent::BusFailed { message } => {
                self.note_bus(false);
                tracing::warn!(%message, "bus read failed");
                Ok(())
            }
        }
    }

    async fn apply_board(&self, status: BoardStatus) -> Result<(), StoreError> {
        let Ok(board) = BoardAddr::new(status.board.get()) else {
            return Ok(());
        };
        self.note_baseline(board);
        let reading = self.clock.read();
        let layout = self.config.layout.clone();
        self.store
            .transact(move |tx, state| {
                let at = state.stamp(tx, reading)?;
                for lock in LockNo::all() {
                    let Some(post) = layout.post_at(board, lock) else {
                        continue;
                    };
                    let Ok(bus_lock) = crate::cu16::Lock::new(lock.get()) else {
                        continue;
                    };
                    let hook = if status.is_latched(bus_lock) {
                        HookState::Latched
                    } else {
                        HookState::Open
                    };
                    let present = status.has_cart(bus_lock);
                    sensed(tx, state, post, Some(hook), Some(present), false, &at)?;
                }
                state.finish(tx)
            })
            .await
    }

    async fn apply_lock(
        &self,
        board: u8,
        lock: u8,
        hook: Option<HookState>,
        present: Option<bool>,
        docked: bool,
    ) -> Result<(), StoreError> {
        let (Ok(board), Ok(lock)) = (BoardAddr::new(board), LockNo::new(lock)) else {
            return Ok(());
        };
        let Some(post) = self.config.layout.post_at(board, lock) else {
            return Ok(());
        };
        let reading = self.clock.read();
        self.store
            .transact(move |tx, state| {
                let at = state.stamp(tx, reading)?;
                sensed(tx, state, post, hook, present, docked, &at)?;
                state.finish(tx)
            })
            .await
    }

    /// Settles rentals left `unlocking` (not in flight) from what the board senses: an open
    /// hook or a missing cart means the unlock happened (the rental is active); a latched hook
    /// on a present cart means it never did (the rental is cancelled, nothing was lent). Only
    /// posts of boards read since start are settled: older sensed state may predate the unlock.
    pub async fn reconcile(&self) -> Result<(), StoreError> {
        let skip = self.in_flight();
        let fresh = self.baselined();
        let reading = self.clock.read();
        let settle_ms = i64::try_from(self.config.reconcile_after.as_millis()).unwrap_or(i64::MAX);
        self.store
            .transact(move |tx, state| {
                ledger::expire_reservations(tx, reading.boot, reading.mono)?;
                let stuck = ledger::rentals_where(tx, "status = 'unlocking'", &[], 1_000, 0)?;
                for mut rental in stuck.into_iter().filter(|r| !skip.contains(&r.id)) {
                    let young = rental.start.boot == reading.boot
                        && reading.mono.signed_diff_ms(rental.start.mono) < settle_ms;
                    if young {
                        continue;
                    }
                    let Some(post) = ledger::post(tx, rental.post)? else {
                        continue;
                    };
                    if !fresh.contains(&post.board) {
                        continue;
                    }
                    let at = state.stamp(tx, reading)?;
                    if post.hook == HookState::Open || post.present == Some(false) {
                        rental.status = RentalStatus::Active;
                        if post.present == Some(false) {
                            rental.taken = Some(at.hlc);
                        }
                        rental.note =
                            Some("unlock confirmed from the board after a restart".into());
                        ledger::append_event(
                            tx,
                            "unlock_reconciled",
                            Some(rental.id),
                            Some(post.post),
                            &json!({ "outcome": "active" }),
                            &at,
                        )?;
                    } else if post.hook == HookState::Latched {
                        rental.status = RentalStatus::Cancelled;
                        rental.end = Some(at);
                        rental.note =
                            Some("the lock never opened (interrupted before the unlock)".into());
                        ledger::append_event(
                            tx,
                            "unlock_reconciled",
                            Some(rental.id),
                            Some(post.post),
                            &json!({ "outcome": "cancelled" }),
                            &at,
                        )?;
                    } else {
                        continue;
                    }
                    state.save_rental(tx, &rental)?;
                    state.mirror_post(tx, post.post)?;
                }
                state.finish(tx)
            })
            .await
    }

    /// Periodic upkeep: lapse old reservations, record the boot's progress, reconcile, run the
    /// intents still waiting (`engine/intents.rs`).
    pub async fn tick(&self) -> Result<(), StoreError> {
        let reading = self.clock.read();
        self.store
            .transact(move |tx, state| {
                let lapsed = ledger::expire_reservations(tx, reading.boot, reading.mono)?;
                state.timeline.note(tx, reading)?;
                if lapsed > 0 {
                    for post in ledger::posts(tx)? {
                        state.live.put_post(&post)?;
                    }
                }
                state.finish(tx)
            })
            .await?;
        self.reconcile().await?;
        self.execute_intents().await.map(|_| ())
    }
}

/// Records a sensed change at `post` and the facts it implies.
fn sensed(
    tx: &Connection,
    state: &mut EdgeState,
    post: PostNo,
    hook: Option<HookState>,
    present: Option<bool>,
    docked: bool,
    at: &Stamp,
) -> Result<(), StoreError> {
    let Some(before) = ledger::post(tx, post)? else {
        return Ok(());
    };
    let hook_now = hook.unwrap_or(before.hook);
    let present_now = present.or(before.present);
    if hook_now == before.hook && present_now == before.present && !docked {
        return Ok(());
    }
    ledger::set_sensed(tx, post, hook_now, present_now)?;
    if present_now == Some(false) && before.present == Some(true) {
        cart_left(tx, state, &before, at)?;
    }
    let just_docked = docked
        || (hook_now == HookState::Latched
            && before.hook == HookState::Open
            && present_now == Some(true));
    if just_docked && super::intents::maintenance_opened(tx, &before)? {
        // A maintenance unlock's cart latched back: the technician's, not a return.
        ledger::append_event(tx, "maintenance_docked", None, Some(post), &json!({}), at)?;
    } else if just_docked {
        dock(tx, state, post, at)?;
    } else if hook_now == HookState::Open
        && before.hook == HookState::Latched
        && before.holder.is_none()
        && before.service == Service::InService
    {
        state.anomaly(
            tx,
            AnomalyKind::UnrecordedUnlock,
            Some(post),
            None,
            "the hook opened with no rental or maintenance order",
            at,
        )?;
    }
    state.mirror_post(tx, post)?;
    Ok(())
}

fn cart_left(
    tx: &Connection,
    state: &mut EdgeState,
    before: &ledger::PostRow,
    at: &Stamp,
) -> Result<(), StoreError> {
    match before
        .holder
        .map(|id| ledger::rental(tx, id))
        .transpose()?
        .flatten()
    {
        Some(mut rental) => {
            rental.taken = Some(at.hlc);
            state.save_rental(tx, &rental)?;
            ledger::append_event(
                tx,
                "cart_taken",
                Some(rental.id),
                Some(before.post),
                &json!({}),
                at,
            )?;
        }
        None if before.service == Service::InService => {
            state.anomaly(
                tx,
                AnomalyKind::UnrecordedUnlock,
                Some(before.post),
                None,
                "a cart left the post with no rental",
                at,
            )?;
        }
        None => {}
    }
    Ok(())
}

/// A cart docked (hook latched on a present cart) at `post`: closes the rental it returns.
fn dock(
    tx: &Connection,
    state: &mut EdgeState,
    post: PostNo,
    at: &Stamp,
) -> Result<(), StoreError> {
    let row = ledger::post(tx, post)?;
    // The rental's own cart never left: the shopper pushed it back.
    if let Some(holder) = row.as_ref().and_then(|p| p.holder)
        && let Some(mut rental) = ledger::rental(tx, holder)?
    {
        if rental.status == RentalStatus::Active {
            rental.status = RentalStatus::Cancelled;
            rental.end = Some(*at);
            rental.return_post = Some(post);
            rental.note = Some("the cart was never taken".into());
            ledger::unreserve(tx, rental.id)?;
            state.save_rental(tx, &rental)?;
            ledger::append_event(
                tx,
                "lend_cancelled",
                Some(rental.id),
                Some(post),
                &json!({}),
                at,
            )?;
        }
        return Ok(());
    }
    let matched = match ledger::reservation_at(tx, post)? {
        Some(reservation) => Some((reservation.rental, "reserved post")),
        None => match_unreserved(tx)?,
    };
    // A rental started at another Pi of the branch: this device records the return.
    let matched = match matched {
        Some((id, how)) if ledger::rental(tx, id)?.is_none() => {
            if fold::close_foreign(tx, state, id, post, how, at)? {
                return Ok(());
            }
            ledger::unreserve(tx, id)?;
            None
        }
        other => other,
    };
    let Some((rental_id, how)) = matched else {
        ledger::append_event(
            tx,
            "cart_docked",
            None,
            Some(post),
            &json!({ "matched": false }),
            at,
        )?;
        let open =
            ledger::rentals_where(tx, "status = 'active' AND taken_hlc IS NOT NULL", &[], 2, 0)?;
        if !open.is_empty() || fold::peer_carts_out(tx)? > 1 {
            state.anomaly(
                tx,
                AnomalyKind::UnmatchedDock,
                Some(post),
                None,
                "a cart was docked at a post nobody reserved while several carts are out",
                at,
            )?;
        }
        return Ok(());
    };
    close_returned(tx, state, rental_id, post, how, at)
}

/// A dock at a post nobody reserved matches a rental only when exactly one candidate exists:
/// the only return in progress, else the only cart out here, else (none out here) the only
/// cart out at the branch's other Pis.
fn match_unreserved(tx: &Connection) -> Result<Option<(RentalId, &'static str)>, StoreError> {
    let reserved: Vec<RentalId> = {
        let mut stmt = tx.prepare_cached("SELECT rental_id FROM return_reservations LIMIT 2")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.filter_map(|r| r.ok())
            .filter_map(|id| RentalId::parse(&id).ok())
            .collect()
    };
    if let [only] = reserved.as_slice() {
        return Ok(Some((*only, MATCHED_ONLY_RESERVATION)));
    }
    if !reserved.is_empty() {
        return Ok(None);
    }
    let out = ledger::rentals_where(tx, "status = 'active' AND taken_hlc IS NOT NULL", &[], 2, 0)?;
    Ok(match out.as_slice() {
        [only] => Some((only.id, MATCHED_ONLY_OPEN)),
        [] => fold::only_peer_cart_out(tx)?.map(|only| (only.id, fold::MATCHED_ONLY_BRANCH)),
        _ => None,
    })
}

fn close_returned(
    tx: &Connection,
    state: &mut EdgeState,
    rental_id: RentalId,
    post: PostNo,
    how: &str,
    at: &Stamp,
) -> Result<(), StoreError> {
    let Some(mut rental): Option<RentalRow> = ledger::rental(tx, rental_id)? else {
        return Ok(());
    };
    if !rental.status.is_open() {
        return Ok(());
    }
    let elapsed = state.timeline.elapsed_ms(&rental.start, at);
    rental.status =
        RentalStatus::returned_after(elapsed, i64::from(rental.rental_minutes) * 60_000);
    rental.end = Some(*at);
    rental.return_post = Some(post);
    ledger::unreserve(tx, rental.id)?;
    state.save_rental(tx, &rental)?;
    ledger::append_event(
        tx,
        "returned",
        Some(rental.id),
        Some(post),
        &json!({ "matched_by": how, "status": rental.status.as_str() }),
        at,
    )?;
    state.mirror_post(tx, rental.post)?;
    tracing::info!(rental = %rental.id, %post, status = rental.status.as_str(), how, "cart returned");
    Ok(())
}
