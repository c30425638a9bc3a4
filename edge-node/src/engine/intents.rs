//! The intents executor: carries out, at most once each, the intents of the branch's intents
//! document that are addressed to this device, and answers each in the live document's
//! `outcomes` (`applied`, `failed` with a detail, or `expired`).
//!
//! Exactly once across crashes: an intent is recorded in `intent_runs` before anything is done
//! for it, and an intent with a row is never started again.
//! - `out_of_service`, `in_service`, `set_rental_minutes`, `set_otp_policy`, `set_language`
//!   and `note` change only the database: the record, the change and the outcome are one
//!   transaction. The three settings live in `branch_settings` and override the configuration
//!   where it is read: the rental time of new rentals, the shopper sign-in's policy while SMS
//!   cannot be sent (`kiosk/routes_auth.rs`), the kiosk's answer language when a request
//!   carries no `Accept-Language` (`kiosk/errors.rs`).
//! - `unlock_post` moves the post to `maintenance` (so the hook opening or a cart leaving is
//!   not an unrecorded unlock, and a cart latched back is not taken for a shopper's return)
//!   and records the intent `executing` in one transaction; then the lock is pulsed, and the
//!   outcome written. A run left `executing` (a crash, the bus failing mid-unlock) is settled
//!   from the board's sensed state once the board has been read again: hook open or cart gone
//!   is `applied`, latched is `failed` (the pulse never went out). It is never pulsed twice.
//!   The post stays in maintenance until an `in_service` intent.
//!
//! - `assign_cart` (a manager lends a cart to a shopper at the counter) is recorded `executing`
//!   first, then goes through the kiosk's own lend path ([`Engine::lend_at`]): the same rules
//!   (one open rental per phone, branch-wide through the held peer documents; the named post
//!   only if it is available, else the usual pick), each rental durable before its unlock and
//!   linked to the run in the transaction that records it (the run's `detail` holds the rental
//!   id while it is `executing`). The outcome follows that rental: `active` (or closed since)
//!   is `applied` with the rental and post, `failed_unlock` or `cancelled` is `failed`. A run
//!   an interruption left `executing` waits while its rental is `unlocking` (the reconciler
//!   settles that from the board) and then follows it; one with no rental recorded is
//!   `failed`. Nothing is ever unlocked twice for one intent.
//! - `force_return` closes, in one transaction, the open rental holding the post's cart, the
//!   one started there, or the one whose return is reserved there, as `closed_by_staff` (the
//!   existing status for a rental a manager closed without a dock; the hub knows it) with the
//!   note "forced by <created_by>", the end time now, its return reservation freed.
//! - `set_firmware` records the desired version in `branch_settings` and answers with it and
//!   the running version (`applied`, with "update pending: …" while they differ); `/health`
//!   shows both. The update itself is the package manager's or a technician's job: the edge
//!   never pretends to have installed anything.
//!
//! An intent read after its `expires_at` (corrected wall time) is answered `expired` and not
//! carried out. An unlock that cannot be tried now (no bus) waits for the next run (each
//! `tick`, and whenever the intents document changes).

use cartwise_schema::{HookState, Phone, PostNo, RentalId, RentalStatus};
use cartwise_sync_core::facts::OutcomeStatus;
use cartwise_sync_core::intents::{Intent, IntentId, IntentKind, OtpFallback, read_intents_doc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::lend::LendError;
use super::settings::{
    FIRMWARE_CURRENT, SETTING_FIRMWARE, SETTING_LANGUAGE, SETTING_OTP_POLICY,
    SETTING_RENTAL_MINUTES, put_setting,
};
use super::{EdgeState, Engine};
use crate::cu16::{BoardAddress, Lock, UnlockOutcome};
use crate::ledger::{self, PostRow, Service};
use crate::store::StoreError;
use crate::timekeeping::to_sql_mono;

/// Unlocks started by one run at most (the rest wait for the next run).
pub const INTENT_UNLOCKS_PER_RUN_MAX: usize = 16;

/// Executed intents listed by [`Engine::intent_runs`] at most.
pub const INTENT_RUNS_LIST_MAX: usize = 200;

/// Notes of one post shown at most.
pub const POST_NOTES_SHOWN_MAX: usize = 20;

/// One intent this device recorded, for the admin view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IntentRun {
    pub intent: String,
    pub kind: String,
    pub post: Option<u16>,
    /// `executing`, `applied`, `failed` or `expired`.
    pub state: String,
    pub detail: String,
    pub created_by: String,
    /// Local wall time it was started and finished at (Unix ms).
    pub started_wall: i64,
    pub finished_wall: Option<i64>,
}

/// A note for the staff from a `note` intent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StaffNote {
    pub intent: String,
    /// The post it is about, if any.
    pub post: Option<u16>,
    pub text: String,
    /// When the hub recorded it (Unix ms).
    pub created_at: i64,
    pub created_by: String,
}

/// Links the rental just begun for an `assign_cart` run to it (same transaction as the rental).
pub(crate) fn link_rental(
    conn: &Connection,
    intent: &IntentId,
    rental: RentalId,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE intent_runs SET detail = ?2 WHERE intent = ?1 AND state = 'executing'",
        params![intent.to_string(), rental.to_string()],
    )?;
    Ok(())
}

/// The outcome of an `assign_cart` run from its rental's state; `None` while it is unlocking.
fn assign_outcome(rental: &crate::ledger::RentalRow) -> Option<(OutcomeStatus, String)> {
    let lent = || format!("rental {} at post {}", rental.id, rental.post);
    match rental.status {
        RentalStatus::Unlocking => None,
        RentalStatus::FailedUnlock => Some((
            OutcomeStatus::Failed,
            format!("the lock of post {} did not open", rental.post),
        )),
        RentalStatus::Cancelled => Some((
            OutcomeStatus::Failed,
            format!(
                "the cart of post {} stayed docked; rental {} cancelled",
                rental.post, rental.id
            ),
        )),
        RentalStatus::Active
        | RentalStatus::Returned
        | RentalStatus::ReturnedLate
        | RentalStatus::ClosedByStaff => Some((OutcomeStatus::Applied, lent())),
    }
}

/// Whether `post` is in maintenance because an `unlock_post` intent opened it: a cart latched
/// there is the technician's, not a shopper's return.
pub(crate) fn maintenance_opened(conn: &Connection, post: &PostRow) -> Result<bool, StoreError> {
    if post.service != Service::Maintenance {
        return Ok(false);
    }
    Ok(conn
        .query_row(
            "SELECT 1 FROM intent_runs
             WHERE kind = 'unlock_post' AND post = ?1 AND state IN ('executing', 'applied')
             LIMIT 1",
            [post.post.get()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The notes of `note` intents about `post` (newest first, at most `limit`).
pub(crate) fn post_notes(
    conn: &Connection,
    post: PostNo,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT text FROM post_notes WHERE post = ?1 ORDER BY created_at DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(
        params![post.get(), i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| r.get::<_, String>(0),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn run_exists(conn: &Connection, id: &IntentId) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM intent_runs WHERE intent = ?1",
            [id.to_string()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// An unlock recorded `executing`, to pulse outside the transaction.
struct PendingUnlock {
    id: IntentId,
    post: PostRow,
}

/// A counter lend recorded `executing`, to lend outside the transaction.
struct PendingAssign {
    id: IntentId,
    phone: Phone,
    post: Option<PostNo>,
}

/// What [`start`] left to do outside the transaction.
enum Pending {
    Unlock(PendingUnlock),
    Assign(PendingAssign),
}

/// Records a run `executing` (nothing done yet).
fn record_executing(
    conn: &Connection,
    intent: &Intent,
    reading: cartwise_schema::ClockReading,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO intent_runs (intent, kind, post, state, created_by,
                                  started_wall, started_boot, started_mono)
         VALUES (?1, ?2, ?3, 'executing', ?4, ?5, ?6, ?7)",
        params![
            intent.id.to_string(),
            intent.kind.as_str(),
            intent.kind.post(),
            intent.created_by,
            reading.wall.get(),
            reading.boot.to_string(),
            to_sql_mono(reading.mono),
        ],
    )?;
    Ok(())
}

/// Closes the open rental of `post` on a manager's word; the failure text if there is none.
fn force_return(
    conn: &Connection,
    state: &mut EdgeState,
    intent: &Intent,
    row: &PostRow,
    reading: cartwise_schema::ClockReading,
) -> Result<Result<String, String>, StoreError> {
    let number = row.post;
    let mut candidates: Vec<RentalId> = Vec::new();
    candidates.extend(row.holder);
    candidates.extend(ledger::reservation_at(conn, number)?.map(|r| r.rental));
    let started_here = ledger::rentals_where(
        conn,
        "post = ?1 AND status IN ('unlocking', 'active')",
        &[&number.get()],
        1,
        0,
    )?;
    candidates.extend(started_here.iter().map(|r| r.id));
    let mut open = None;
    for id in candidates {
        if let Some(rental) = ledger::rental(conn, id)?
            && rental.status.is_open()
        {
            open = Some(rental);
            break;
        }
    }
    let Some(mut rental) = open else {
        return Ok(Err(format!("no open rental holds or uses post {number}")));
    };
    if rental.status == RentalStatus::Unlocking {
        return Ok(Err(format!(
            "rental {} at post {} is still unlocking",
            rental.id, rental.post
        )));
    }
    let at = state.stamp(conn, reading)?;
    let note = format!("forced by {}", intent.created_by);
    rental.status = RentalStatus::ClosedByStaff;
    rental.end = Some(at);
    rental.note = Some(note.clone());
    ledger::unreserve(conn, rental.id)?;
    state.save_rental(conn, &rental)?;
    ledger::append_event(
        conn,
        "force_returned",
        Some(rental.id),
        Some(number),
        &json!({ "intent": intent.id.to_string(), "note": note }),
        &at,
    )?;
    state.mirror_post(conn, rental.post)?;
    if rental.post != number {
        state.mirror_post(conn, number)?;
    }
    tracing::info!(rental = %rental.id, post = %number, %note, "rental closed by staff");
    Ok(Ok(format!("rental {} closed by staff ({note})", rental.id)))
}

/// Writes the outcome: the `intent_runs` row (inserted or finished) and the live document.
fn conclude(
    conn: &Connection,
    state: &mut EdgeState,
    intent: &Intent,
    status: OutcomeStatus,
    detail: &str,
    reading: cartwise_schema::ClockReading,
) -> Result<(), StoreError> {
    let at = state.stamp(conn, reading)?;
    let wall = state.timeline.corrected_reading(&reading).get();
    conn.execute(
        "INSERT INTO intent_runs (intent, kind, post, state, detail, created_by,
                                  started_wall, started_boot, started_mono, finished_wall)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?7)
         ON CONFLICT (intent) DO UPDATE SET state = excluded.state, detail = excluded.detail,
                                            finished_wall = excluded.finished_wall",
        params![
            intent.id.to_string(),
            intent.kind.as_str(),
            intent.kind.post(),
            status.as_str(),
            detail,
            intent.created_by,
            reading.wall.get(),
            reading.boot.to_string(),
            to_sql_mono(reading.mono),
        ],
    )?;
    let post = intent.kind.post().and_then(|p| PostNo::new(p).ok());
    ledger::append_event(
        conn,
        "intent_executed",
        None,
        post,
        &json!({ "intent": intent.id.to_string(), "kind": intent.kind.as_str(),
                 "outcome": status.as_str(), "detail": detail }),
        &at,
    )?;
    state
        .live
        .put_outcome(&intent.id, status, detail, wall, &at.hlc)?;
    tracing::info!(intent = %intent.id, kind = intent.kind.as_str(), outcome = status.as_str(), detail, "intent executed");
    Ok(())
}

/// Finishes a run recorded `executing` (only the id, kind and post are known from the row).
#[allow(clippy::too_many_arguments)]
fn conclude_run(
    conn: &Connection,
    state: &mut EdgeState,
    id: &IntentId,
    post: Option<PostNo>,
    kind: &str,
    status: OutcomeStatus,
    detail: &str,
    reading: cartwise_schema::ClockReading,
) -> Result<(), StoreError> {
    let at = state.stamp(conn, reading)?;
    let wall = state.timeline.corrected_reading(&reading).get();
    conn.execute(
        "UPDATE intent_runs SET state = ?2, detail = ?3, finished_wall = ?4 WHERE intent = ?1",
        params![id.to_string(), status.as_str(), detail, reading.wall.get()],
    )?;
    ledger::append_event(
        conn,
        "intent_executed",
        None,
        post,
        &json!({ "intent": id.to_string(), "kind": kind,
                 "outcome": status.as_str(), "detail": detail }),
        &at,
    )?;
    state.live.put_outcome(id, status, detail, wall, &at.hlc)?;
    tracing::info!(intent = %id, kind, outcome = status.as_str(), detail, "intent run settled");
    Ok(())
}

/// Looks up the post an intent names at this device.
fn post_of(conn: &Connection, post: u16) -> Result<Option<PostRow>, StoreError> {
    match PostNo::new(post) {
        Ok(number) => ledger::post(conn, number),
        Err(_) => Ok(None),
    }
}

/// Carries out one database-only intent, or records an unlock as `executing`. Returns the
/// unlock to pulse, if any.
fn start(
    conn: &Connection,
    state: &mut EdgeState,
    intent: &Intent,
    reading: cartwise_schema::ClockReading,
) -> Result<Option<Pending>, StoreError> {
    let missing = |post: u16| format!("this device has no post {post}");
    match &intent.kind {
        IntentKind::UnlockPost { post } => {
            let Some(row) = post_of(conn, *post)? else {
                conclude(
                    conn,
                    state,
                    intent,
                    OutcomeStatus::Failed,
                    &missing(*post),
                    reading,
                )?;
                return Ok(None);
            };
            if let Some(holder) = row.holder {
                let detail = format!("post {post} holds the cart of rental {holder}");
                conclude(conn, state, intent, OutcomeStatus::Failed, &detail, reading)?;
                return Ok(None);
            }
            let at = state.stamp(conn, reading)?;
            conn.execute(
                "INSERT INTO intent_runs (intent, kind, post, state, created_by,
                                          started_wall, started_boot, started_mono)
                 VALUES (?1, 'unlock_post', ?2, 'executing', ?3, ?4, ?5, ?6)",
                params![
                    intent.id.to_string(),
                    post,
                    intent.created_by,
                    reading.wall.get(),
                    reading.boot.to_string(),
                    to_sql_mono(reading.mono),
                ],
            )?;
            let reason = format!("maintenance unlock ({})", intent.created_by);
            ledger::set_service(conn, row.post, Service::Maintenance, Some(&reason))?;
            ledger::append_event(
                conn,
                "intent_executing",
                None,
                Some(row.post),
                &json!({ "intent": intent.id.to_string(), "kind": intent.kind.as_str() }),
                &at,
            )?;
            let row = state.mirror_post(conn, row.post)?.unwrap_or(row);
            Ok(Some(Pending::Unlock(PendingUnlock {
                id: intent.id,
                post: row,
            })))
        }
        IntentKind::OutOfService { post } | IntentKind::InService { post } => {
            let Some(row) = post_of(conn, *post)? else {
                conclude(
                    conn,
                    state,
                    intent,
                    OutcomeStatus::Failed,
                    &missing(*post),
                    reading,
                )?;
                return Ok(None);
            };
            let (service, detail) = match intent.kind {
                IntentKind::OutOfService { .. } => (Service::OutOfService, "out of service"),
                _ => (Service::InService, "in service"),
            };
            ledger::set_service(conn, row.post, service, None)?;
            state.mirror_post(conn, row.post)?;
            conclude(conn, state, intent, OutcomeStatus::Applied, detail, reading)?;
            Ok(None)
        }
        IntentKind::SetRentalMinutes { minutes } => {
            conn.execute(
                "INSERT INTO branch_settings (key, value, intent) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, intent = excluded.intent",
                params![
                    SETTING_RENTAL_MINUTES,
                    minutes.to_string(),
                    intent.id.to_string()
                ],
            )?;
            let detail = format!("new rentals last {minutes} minutes");
            conclude(
                conn,
                state,
                intent,
                OutcomeStatus::Applied,
                &detail,
                reading,
            )?;
            Ok(None)
        }
        IntentKind::SetOtpPolicy {
            when_sms_unavailable,
        } => {
            put_setting(
                conn,
                SETTING_OTP_POLICY,
                when_sms_unavailable.as_str(),
                intent,
            )?;
            let detail = match when_sms_unavailable {
                OtpFallback::Refuse => "while SMS is unavailable, sign-in is refused",
                OtpFallback::Token => "while SMS is unavailable, a valid shopper token rents",
            };
            conclude(conn, state, intent, OutcomeStatus::Applied, detail, reading)?;
            Ok(None)
        }
        IntentKind::SetLanguage { language } => {
            put_setting(conn, SETTING_LANGUAGE, language.as_str(), intent)?;
            let detail = format!("the kiosk answers in {} by default", language.as_str());
            conclude(
                conn,
                state,
                intent,
                OutcomeStatus::Applied,
                &detail,
                reading,
            )?;
            Ok(None)
        }
        IntentKind::Note { post, text } => {
            if let Some(post) = post
                && post_of(conn, *post)?.is_none()
            {
                conclude(
                    conn,
                    state,
                    intent,
                    OutcomeStatus::Failed,
                    &missing(*post),
                    reading,
                )?;
                return Ok(None);
            }
            conn.execute(
                "INSERT INTO post_notes (intent, post, text, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (intent) DO NOTHING",
                params![
                    intent.id.to_string(),
                    post,
                    text,
                    intent.created_at,
                    intent.created_by
                ],
            )?;
            conclude(
                conn,
                state,
                intent,
                OutcomeStatus::Applied,
                "noted",
                reading,
            )?;
            Ok(None)
        }
        IntentKind::AssignCart { post, phone } => {
            let phone = match Phone::parse(phone) {
                Ok(phone) => phone,
                Err(e) => {
                    let detail = format!("the phone is not valid here: {e}");
                    conclude(conn, state, intent, OutcomeStatus::Failed, &detail, reading)?;
                    return Ok(None);
                }
            };
            let post = match post {
                Some(number) => match post_of(conn, *number)? {
                    Some(row) => Some(row.post),
                    None => {
                        let detail = missing(*number);
                        conclude(conn, state, intent, OutcomeStatus::Failed, &detail, reading)?;
                        return Ok(None);
                    }
                },
                None => None,
            };
            record_executing(conn, intent, reading)?;
            Ok(Some(Pending::Assign(PendingAssign {
                id: intent.id,
                phone,
                post,
            })))
        }
        IntentKind::ForceReturn { post } => {
            let Some(row) = post_of(conn, *post)? else {
                conclude(
                    conn,
                    state,
                    intent,
                    OutcomeStatus::Failed,
                    &missing(*post),
                    reading,
                )?;
                return Ok(None);
            };
            let (status, detail) = match force_return(conn, state, intent, &row, reading)? {
                Ok(detail) => (OutcomeStatus::Applied, detail),
                Err(detail) => (OutcomeStatus::Failed, detail),
            };
            conclude(conn, state, intent, status, &detail, reading)?;
            Ok(None)
        }
        IntentKind::SetFirmware { version } => {
            put_setting(conn, SETTING_FIRMWARE, version, intent)?;
            let detail = if version == FIRMWARE_CURRENT {
                format!("running {FIRMWARE_CURRENT}, as desired")
            } else {
                format!(
                    "update pending: running {FIRMWARE_CURRENT}, desired {version}; \
                     installed by the package manager or a technician"
                )
            };
            conclude(
                conn,
                state,
                intent,
                OutcomeStatus::Applied,
                &detail,
                reading,
            )?;
            Ok(None)
        }
    }
}

impl Engine {
    /// Runs the intents addressed to this device that have not run yet, and settles runs an
    /// interruption left `executing`. Returns how many intents were concluded.
    pub async fn execute_intents(&self) -> Result<usize, StoreError> {
        let _running = self.intents_running.lock().await;
        let mut concluded = self.settle_interrupted_unlocks().await?;
        concluded += self.settle_assigns(None).await?;
        let reading = self.clock.read();
        let (device, branch) = (self.config.device, self.config.branch);
        let bus = self.bus();
        let bus_ready = bus.is_some();
        let (unlocks, done) = self
            .store
            .transact(move |tx, state| {
                if !state.held.intents_dirty {
                    return Ok((Vec::new(), 0));
                }
                let Some(document) = super::docs::newest_intents(tx, state, branch)? else {
                    state.held.intents_dirty = false;
                    return Ok((Vec::new(), 0));
                };
                let read = read_intents_doc(&*document);
                for (key, reason) in &read.skipped {
                    tracing::debug!(key, reason, "intent not read");
                }
                let now_ms = state.timeline.corrected_reading(&reading).get();
                let mut unlocks = Vec::new();
                let mut done = 0;
                let mut waiting = false;
                for intent in read.for_device(device) {
                    if run_exists(tx, &intent.id)? {
                        continue;
                    }
                    if intent.expired_at(now_ms) {
                        let detail = "it arrived after it expired";
                        conclude(tx, state, intent, OutcomeStatus::Expired, detail, reading)?;
                        done += 1;
                        continue;
                    }
                    let is_unlock = matches!(
                        intent.kind,
                        IntentKind::UnlockPost { .. } | IntentKind::AssignCart { .. }
                    );
                    if is_unlock && (!bus_ready || unlocks.len() >= INTENT_UNLOCKS_PER_RUN_MAX) {
                        waiting = true;
                        continue;
                    }
                    match start(tx, state, intent, reading)? {
                        Some(pending) => unlocks.push(pending),
                        None => done += 1,
                    }
                }
                state.held.intents_dirty = waiting;
                state.finish(tx)?;
                Ok((unlocks, done))
            })
            .await?;
        concluded += done;
        let mut pulses = Vec::new();
        for pending in unlocks {
            match pending {
                Pending::Unlock(unlock) => pulses.push(unlock),
                Pending::Assign(assign) => {
                    concluded += self.assign(assign).await?;
                }
            }
        }
        for unlock in pulses {
            let Some(bus) = bus.as_ref() else {
                break;
            };
            let outcome = pulse(bus, &unlock.post).await;
            let reading = self.clock.read();
            let PendingUnlock { id, post } = unlock;
            let number = post.post;
            let result = match outcome {
                Ok(UnlockOutcome::Opened) => {
                    self.note_bus(true);
                    Some((OutcomeStatus::Applied, "the lock opened".to_owned()))
                }
                Ok(UnlockOutcome::AlreadyOpen) => {
                    self.note_bus(true);
                    Some((
                        OutcomeStatus::Applied,
                        "the lock was already open".to_owned(),
                    ))
                }
                Ok(UnlockOutcome::DidNotOpen) => {
                    self.note_bus(true);
                    Some((OutcomeStatus::Failed, "the lock did not open".to_owned()))
                }
                Err(message) => {
                    // The frame may or may not have gone out: the run stays `executing` and is
                    // settled from the board once it is read again.
                    self.note_bus(false);
                    tracing::warn!(intent = %id, %message, "maintenance unlock interrupted");
                    None
                }
            };
            let Some((status, detail)) = result else {
                continue;
            };
            self.store
                .transact(move |tx, state| {
                    if status == OutcomeStatus::Applied {
                        ledger::set_hook(tx, number, HookState::Open)?;
                    }
                    conclude_run(
                        tx,
                        state,
                        &id,
                        Some(number),
                        "unlock_post",
                        status,
                        &detail,
                        reading,
                    )?;
                    state.mirror_post(tx, number)?;
                    state.finish(tx)
                })
                .await?;
            concluded += 1;
        }
        Ok(concluded)
    }

    /// Lends for one `assign_cart` run through the kiosk's lend path and answers it.
    async fn assign(&self, assign: PendingAssign) -> Result<usize, StoreError> {
        let PendingAssign { id, phone, post } = assign;
        let failed = match self.lend_at(&phone, post, Some(id)).await {
            Ok(_) => None,
            Err(LendError::Store(e)) => return Err(e),
            // Left `unlocking` (or never begun): settled below from the rental, or later.
            Err(LendError::LockSystemDown(message)) => {
                tracing::warn!(intent = %id, %message, "counter lend interrupted");
                None
            }
            Err(LendError::AlreadyRenting { post, rental }) => Some(format!(
                "this phone already has an open rental ({rental}, post {post})"
            )),
            Err(LendError::NoCartAvailable) => Some(match post {
                Some(post) => format!("post {post} has no cart available to lend"),
                None => "no cart is available at this station".to_owned(),
            }),
            Err(LendError::LocksDidNotOpen) => {
                Some("the locks tried did not open; the posts were flagged".to_owned())
            }
        };
        let reading = self.clock.read();
        if let Some(detail) = failed {
            self.store
                .transact(move |tx, state| {
                    conclude_run(
                        tx,
                        state,
                        &id,
                        post,
                        "assign_cart",
                        OutcomeStatus::Failed,
                        &detail,
                        reading,
                    )?;
                    state.finish(tx)
                })
                .await?;
            return Ok(1);
        }
        self.settle_assigns(Some(id)).await
    }

    /// Answers `assign_cart` runs left `executing` (only `only` if given) from their rental:
    /// an `unlocking` rental waits for the reconciler; one with no rental recorded failed.
    async fn settle_assigns(&self, only: Option<IntentId>) -> Result<usize, StoreError> {
        let reading = self.clock.read();
        self.store
            .transact(move |tx, state| {
                let mut stmt = tx.prepare_cached(
                    "SELECT intent, post, detail FROM intent_runs
                     WHERE state = 'executing' AND kind = 'assign_cart' ORDER BY intent",
                )?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<u16>>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                drop(stmt);
                let mut settled = 0;
                for (intent, post, linked) in rows {
                    let Ok(id) = IntentId::parse(&intent) else {
                        continue;
                    };
                    if only.is_some_and(|only| only != id) {
                        continue;
                    }
                    let rental = match RentalId::parse(&linked) {
                        Ok(rental) => ledger::rental(tx, rental)?,
                        Err(_) => None,
                    };
                    let (status, detail, number) = match rental {
                        None => (
                            OutcomeStatus::Failed,
                            "interrupted before a rental was recorded; nothing was unlocked"
                                .to_owned(),
                            post.and_then(|p| PostNo::new(p).ok()),
                        ),
                        Some(rental) => match assign_outcome(&rental) {
                            None => continue,
                            Some((status, detail)) => (status, detail, Some(rental.post)),
                        },
                    };
                    conclude_run(
                        tx,
                        state,
                        &id,
                        number,
                        "assign_cart",
                        status,
                        &detail,
                        reading,
                    )?;
                    settled += 1;
                }
                state.finish(tx)?;
                Ok(settled)
            })
            .await
    }

    /// When the hub revoked `device`, if the branch's intents document this device holds says
    /// it did (`revoked`): branch peers refuse it on the LAN without asking the hub.
    pub async fn peer_revoked(
        &self,
        device: cartwise_schema::DeviceId,
    ) -> Result<Option<i64>, StoreError> {
        let branch = self.config.branch;
        self.store
            .transact(move |tx, state| {
                let Some(document) = super::docs::newest_intents(tx, state, branch)? else {
                    return Ok(None);
                };
                Ok(cartwise_sync_core::intents::read_revoked(&*document)
                    .into_iter()
                    .find(|(revoked, _)| *revoked == device)
                    .map(|(_, at)| at))
            })
            .await
    }

    /// Settles unlock runs left `executing` by an interruption, from what the board senses
    /// (only boards read since this process started, only once the bus answers, only runs
    /// older than `reconcile_after`).
    async fn settle_interrupted_unlocks(&self) -> Result<usize, StoreError> {
        if !self.bus_connected() {
            return Ok(0);
        }
        let fresh = self.baselined();
        let reading = self.clock.read();
        let settle_ms = i64::try_from(self.config.reconcile_after.as_millis()).unwrap_or(i64::MAX);
        self.store
            .transact(move |tx, state| {
                let mut stmt = tx.prepare_cached(
                    "SELECT intent, post, started_boot, started_mono FROM intent_runs
                     WHERE state = 'executing' AND kind = 'unlock_post' ORDER BY intent",
                )?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<u16>>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                drop(stmt);
                let mut settled = 0;
                for (intent, post, boot, mono) in rows {
                    let Ok(id) = IntentId::parse(&intent) else {
                        continue;
                    };
                    let young = boot == reading.boot.to_string()
                        && to_sql_mono(reading.mono).saturating_sub(mono) < settle_ms;
                    if young {
                        continue;
                    }
                    let row = match post {
                        Some(post) => post_of(tx, post)?,
                        None => None,
                    };
                    let (status, detail, number) = match row {
                        None => (
                            OutcomeStatus::Failed,
                            "interrupted; the post is not configured any more",
                            None,
                        ),
                        Some(row) if !fresh.contains(&row.board) => continue,
                        Some(row) if row.hook == HookState::Open || row.present == Some(false) => (
                            OutcomeStatus::Applied,
                            "confirmed from the board after an interruption",
                            Some(row.post),
                        ),
                        Some(row) if row.hook == HookState::Latched => (
                            OutcomeStatus::Failed,
                            "interrupted before the lock opened; it is latched",
                            Some(row.post),
                        ),
                        Some(_) => continue,
                    };
                    conclude_run(
                        tx,
                        state,
                        &id,
                        number,
                        "unlock_post",
                        status,
                        detail,
                        reading,
                    )?;
                    if let Some(number) = number {
                        state.mirror_post(tx, number)?;
                    }
                    settled += 1;
                }
                state.finish(tx)?;
                Ok(settled)
            })
            .await
    }

    /// The intents this device recorded, newest first (at most [`INTENT_RUNS_LIST_MAX`]).
    pub async fn intent_runs(&self) -> Result<Vec<IntentRun>, StoreError> {
        self.store
            .read(|conn, _| {
                let mut stmt = conn.prepare_cached(
                    "SELECT intent, kind, post, state, detail, created_by, started_wall,
                            finished_wall
                     FROM intent_runs ORDER BY started_wall DESC, intent DESC LIMIT ?1",
                )?;
                let rows = stmt.query_map([INTENT_RUNS_LIST_MAX as i64], |r| {
                    Ok(IntentRun {
                        intent: r.get(0)?,
                        kind: r.get(1)?,
                        post: r.get(2)?,
                        state: r.get(3)?,
                        detail: r.get(4)?,
                        created_by: r.get(5)?,
                        started_wall: r.get(6)?,
                        finished_wall: r.get(7)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// The staff notes about `post` from `note` intents, newest first.
    pub async fn post_notes(&self, post: PostNo) -> Result<Vec<String>, StoreError> {
        self.store
            .read(move |conn, _| post_notes(conn, post, POST_NOTES_SHOWN_MAX))
            .await
    }

    /// Every staff note from `note` intents, newest first (at most
    /// [`INTENT_RUNS_LIST_MAX`]).
    pub async fn staff_notes(&self) -> Result<Vec<StaffNote>, StoreError> {
        self.store
            .read(|conn, _| {
                let mut stmt = conn.prepare_cached(
                    "SELECT intent, post, text, created_at, created_by FROM post_notes
                     ORDER BY created_at DESC, intent DESC LIMIT ?1",
                )?;
                let rows = stmt.query_map([INTENT_RUNS_LIST_MAX as i64], |r| {
                    Ok(StaffNote {
                        intent: r.get(0)?,
                        post: r.get(1)?,
                        text: r.get(2)?,
                        created_at: r.get(3)?,
                        created_by: r.get(4)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }
}

async fn pulse(bus: &crate::cu16::Bus, post: &PostRow) -> Result<UnlockOutcome, String> {
    let board = BoardAddress::new(post.board.get()).map_err(|e| e.to_string())?;
    let lock = Lock::new(post.lock.get()).map_err(|e| e.to_string())?;
    bus.unlock(board, lock).await.map_err(|e| e.to_string())
}
