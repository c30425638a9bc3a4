//! Lending: pick a post, record the rental durably, unlock, verify, move on from a jam.
//!
//! The unlock frame goes out only after the rental's transaction has committed (`synchronous =
//! FULL`). Before pulsing, the driver normally reads the board so an open hook is not pulsed
//! again; the engine skips that read only when its sensed state for the post shows the hook
//! latched on a present cart and the bus's latest reading of the board agrees and is fresh:
//! asked for no more than `SENSED_FRESH_POLLS` poll intervals ago, and after the board's last
//! unlock. A healthy poller keeps every board that fresh (it reads each one every interval); a
//! missed round, a stopped poller or no poller at all means the read is made.

use cartwise_schema::{
    AnomalyKind, ClockReading, HookState, Phone, PostNo, RentalId, RentalStatus, WallMillis,
};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

use cartwise_sync_core::intents::IntentId;

use super::{EdgeState, Engine};
use crate::cu16::{BoardAddress, Lock, PreRead, Sensed, UnlockOutcome};
use crate::ledger::{self, PostRow, RentalRow, Service};
use crate::store::StoreError;

/// How many poll intervals a board reading stays fresh enough to unlock without reading again:
/// one interval is the poller's normal spacing, the second absorbs one slow round (a poll that
/// waited behind unlocks); a round missed altogether makes the reading stale.
const SENSED_FRESH_POLLS: u32 = 2;

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
        self.lend_at(phone, None, None).await
    }

    /// [`Engine::lend`] from the post `only` if given (else the usual pick), for an
    /// `assign_cart` intent when `intent` is given: each rental begun is linked to the intent's
    /// `executing` run in the transaction that records it, so an interruption is settled from
    /// that rental's final state.
    pub(crate) async fn lend_at(
        &self,
        phone: &Phone,
        only: Option<PostNo>,
        intent: Option<IntentId>,
    ) -> Result<Lent, LendError> {
        let Some(bus) = self.bus() else {
            return Err(LendError::LockSystemDown("no lock bus is connected".into()));
        };
        let mut tried: Vec<PostNo> = Vec::new();
        let mut any_jam = false;
        for _ in 0..self.config.lend_posts_max.max(1) {
            let (rental, post) = match self.begin(phone, &tried, only, intent).await? {
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
        let pre_read = pre_read_for(
            post,
            lock,
            bus.sensed(board),
            bus.poll_interval(),
            Instant::now(),
        );
        tracing::debug!(post = %post.post, ?pre_read, "unlocking");
        bus.unlock_with(board, lock, pre_read)
            .await
            .map_err(|e| e.to_string())
    }

    /// Records the rental as `unlocking` on the chosen post, in one transaction.
    async fn begin(
        &self,
        phone: &Phone,
        exclude: &[PostNo],
        only: Option<PostNo>,
        intent: Option<IntentId>,
    ) -> Result<Option<(RentalRow, PostRow)>, LendError> {
        let reading = self.clock.read();
        let minutes = self.config.rental_minutes;
        let phone = phone.clone();
        let exclude = exclude.to_vec();
        let id_wall = reading.wall.get();
        let id = self.new_rental_id(id_wall);
        self.store
            .transact(move |tx, state| {
                let pick = Pick {
                    exclude: &exclude,
                    only,
                    intent,
                };
                begin_lend(tx, state, reading, id, phone, minutes, &pick)
            })
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

/// Whether the unlock of `post` must read the board first: it may skip the read only when the
/// engine's sensed state shows the hook latched on a present cart and the bus's latest reading
/// of the board, taken within `SENSED_FRESH_POLLS` poll intervals of `now`, says the same.
fn pre_read_for(
    post: &PostRow,
    lock: Lock,
    sensed: Option<Sensed>,
    poll_interval: Option<Duration>,
    now: Instant,
) -> PreRead {
    let engine_says_latched = post.hook == HookState::Latched && post.present == Some(true);
    let fresh_and_latched = match (sensed, poll_interval) {
        (Some(sensed), Some(interval)) => {
            let age = now.saturating_duration_since(sensed.asked_at);
            age <= interval.saturating_mul(SENSED_FRESH_POLLS)
                && sensed.status.is_latched(lock)
                && sensed.status.has_cart(lock)
        }
        _ => false,
    };
    if engine_says_latched && fresh_and_latched {
        PreRead::Skip
    } else {
        PreRead::Read
    }
}

/// Which post a lend may take, and the intent run it is done for.
struct Pick<'a> {
    exclude: &'a [PostNo],
    only: Option<PostNo>,
    intent: Option<IntentId>,
}

fn begin_lend(
    tx: &rusqlite::Transaction<'_>,
    state: &mut EdgeState,
    reading: ClockReading,
    id: RentalId,
    phone: Phone,
    minutes: u32,
    pick: &Pick<'_>,
) -> Result<Result<Option<(RentalRow, PostRow)>, LendError>, StoreError> {
    if let Some(open) = ledger::open_rental_of(tx, &phone)? {
        return Ok(Err(LendError::AlreadyRenting {
            post: open.post,
            rental: open.id,
        }));
    }
    // Branch-wide: an open rental at another Pi of the branch (as its document says here).
    if let Some(open) = super::fold::peer_open_rental_of(tx, &phone)? {
        return Ok(Err(LendError::AlreadyRenting {
            post: open.post,
            rental: open.id,
        }));
    }
    let post = match pick.only {
        Some(only) => ledger::post(tx, only)?.filter(|p| {
            p.status() == cartwise_schema::PostStatus::Available && !pick.exclude.contains(&p.post)
        }),
        None => ledger::pick_post_for_lend(tx, pick.exclude)?,
    };
    let Some(post) = post else {
        return Ok(Ok(None));
    };
    let at = state.stamp(tx, reading)?;
    // The hub's `set_rental_minutes` intent, when one was applied, overrides the configuration.
    let minutes = super::settings::rental_minutes_override(tx)?.unwrap_or(minutes);
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
    if let Some(intent) = pick.intent {
        super::intents::link_rental(tx, &intent, id)?;
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cartwise_schema::{BoardAddr, LockNo};

    use super::*;
    use crate::cu16::{BoardStatus, LockBits};

    const POLL: Duration = Duration::from_millis(500);

    fn post(hook: HookState, present: Option<bool>) -> PostRow {
        PostRow {
            post: PostNo::new(3).unwrap(),
            board: BoardAddr::new(0).unwrap(),
            lock: LockNo::new(3).unwrap(),
            service: Service::InService,
            hook,
            present,
            fault: None,
            use_count: 0,
            last_used: None,
            holder: None,
            out: None,
            reserved_for: None,
        }
    }

    /// Board 0 read `age` before `now`, with lock 3's hook and sensor as given.
    fn reading(now: Instant, age: Duration, latched: bool, present: bool) -> Sensed {
        let bit = |on: bool| -> u16 { if on { 0b100 } else { 0 } };
        Sensed {
            status: BoardStatus {
                board: BoardAddress::new(0).unwrap(),
                latched: LockBits(!0b100_u16 | bit(latched)),
                present: LockBits(!0b100_u16 | bit(present)),
            },
            asked_at: now - age,
        }
    }

    #[test]
    fn a_fresh_latched_present_reading_that_agrees_skips_the_read() {
        let now = Instant::now() + Duration::from_secs(10);
        let lock = Lock::new(3).unwrap();
        let latched = post(HookState::Latched, Some(true));
        for age in [Duration::ZERO, POLL, POLL * 2] {
            let sensed = Some(reading(now, age, true, true));
            assert_eq!(
                pre_read_for(&latched, lock, sensed, Some(POLL), now),
                PreRead::Skip,
                "age {age:?}"
            );
        }
    }

    #[test]
    fn stale_missing_or_disagreeing_readings_keep_the_read() {
        let now = Instant::now() + Duration::from_secs(10);
        let lock = Lock::new(3).unwrap();
        let latched = post(HookState::Latched, Some(true));
        let fresh = Some(reading(now, Duration::from_millis(100), true, true));
        let stale = Some(reading(
            now,
            POLL * 2 + Duration::from_millis(1),
            true,
            true,
        ));
        let cases = [
            ("stale reading", &latched, stale, Some(POLL)),
            (
                "no reading since the last unlock",
                &latched,
                None,
                Some(POLL),
            ),
            ("no poller", &latched, fresh, None),
            (
                "bus reads the hook open",
                &latched,
                Some(reading(now, Duration::ZERO, false, true)),
                Some(POLL),
            ),
            (
                "bus sees no cart",
                &latched,
                Some(reading(now, Duration::ZERO, true, false)),
                Some(POLL),
            ),
            (
                "engine has the hook open",
                &post(HookState::Open, Some(true)),
                fresh,
                Some(POLL),
            ),
            (
                "engine never sensed a cart",
                &post(HookState::Latched, None),
                fresh,
                Some(POLL),
            ),
        ];
        for (name, row, sensed, interval) in cases {
            assert_eq!(
                pre_read_for(row, lock, sensed, interval, now),
                PreRead::Read,
                "{name}"
            );
        }
    }
}
