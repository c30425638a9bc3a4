//! Returns: name a free post and hold it for the shopper; the dock (sensed by the poller, see
//! `sense`) closes the rental. A phone with no open rental here but one at another Pi of the
//! branch (known from that Pi's document, see `fold`) gets a post held for that rental too.

use cartwise_schema::{MonoMillis, Phone, PostNo, RentalId, RentalStatus};
use serde_json::json;

use super::{Engine, fold};
use crate::ledger::{self, Reservation};
use crate::store::StoreError;

/// The post named for a return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnSlot {
    pub rental: RentalId,
    pub post: PostNo,
}

/// Why a return cannot be started, or its state read.
#[derive(Debug, thiserror::Error)]
pub enum ReturnError {
    /// The phone has no open rental here.
    #[error("no active rental for this phone")]
    NoActiveRental,
    /// The rental is still unlocking.
    #[error("the rental is still starting; wait a moment")]
    StillStarting,
    /// Every post is full, held or out of service.
    #[error("no free post to return the cart to")]
    NoFreePost,
    /// The local database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a shopper's return stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnState {
    /// Waiting for the cart at `post` (if one is reserved).
    Waiting { post: Option<PostNo> },
    /// Docked: the rental is closed.
    Returned {
        rental: RentalId,
        status: RentalStatus,
        post: Option<PostNo>,
    },
}

impl Engine {
    /// Names a free post for the phone's open rental and holds it for `return_hold`. Asking
    /// again renews the same post while it is still free.
    pub async fn initiate_return(&self, phone: &Phone) -> Result<ReturnSlot, ReturnError> {
        let reading = self.clock.read();
        let hold_ms = u64::try_from(self.config.return_hold.as_millis()).unwrap_or(u64::MAX);
        let phone = phone.clone();
        self.store
            .transact(move |tx, state| {
                let Some(rental) = ledger::open_rental_of(tx, &phone)? else {
                    // A rental started at another Pi of the branch may be returned here.
                    return match fold::foreign_open_rental_of(tx, &phone)? {
                        Some(foreign) => {
                            reserve_foreign(tx, state, reading, hold_ms, &phone, &foreign)
                        }
                        None => Ok(Err(ReturnError::NoActiveRental)),
                    };
                };
                if rental.status == RentalStatus::Unlocking {
                    return Ok(Err(ReturnError::StillStarting));
                }
                let at = state.stamp(tx, reading)?;
                ledger::expire_reservations(tx, reading.boot, reading.mono)?;
                let post = match choose_post(tx, &rental)? {
                    Some(post) => post,
                    None => return Ok(Err(ReturnError::NoFreePost)),
                };
                let previous = ledger::reservation_of(tx, rental.id)?.map(|v| v.post);
                ledger::reserve(
                    tx,
                    &Reservation {
                        rental: rental.id,
                        post,
                        phone: phone.clone(),
                        boot: reading.boot,
                        expires: MonoMillis::new(reading.mono.get().saturating_add(hold_ms)),
                    },
                )?;
                ledger::append_event(
                    tx,
                    "return_reserved",
                    Some(rental.id),
                    Some(post),
                    &json!({}),
                    &at,
                )?;
                state.mirror_post(tx, post)?;
                if let Some(old) = previous.filter(|old| *old != post) {
                    state.mirror_post(tx, old)?;
                }
                state.finish(tx)?;
                Ok(Ok(ReturnSlot {
                    rental: rental.id,
                    post,
                }))
            })
            .await?
    }

    /// Where the phone's return stands: still waiting, or returned (here, also for a rental
    /// started at another Pi of the branch).
    pub async fn return_state(&self, phone: &Phone) -> Result<ReturnState, ReturnError> {
        let phone = phone.clone();
        self.store
            .read(move |conn, _| {
                let latest = ledger::latest_rental_of(conn, &phone)?;
                if let Some(latest) = latest.as_ref().filter(|r| r.status.is_open()) {
                    let post = ledger::reservation_of(conn, latest.id)?.map(|v| v.post);
                    return Ok(Ok(ReturnState::Waiting { post }));
                }
                if let Some(foreign) = fold::foreign_open_rental_of(conn, &phone)? {
                    let post = ledger::reservation_of(conn, foreign.id)?.map(|v| v.post);
                    return Ok(Ok(ReturnState::Waiting { post }));
                }
                let foreign = fold::latest_foreign_return_of(conn, &phone)?;
                let local_end = latest.as_ref().and_then(|r| r.end.map(|e| e.hlc));
                match (latest, foreign) {
                    (_, Some(foreign)) if local_end.is_none_or(|end| foreign.end_hlc > end) => {
                        Ok(Ok(ReturnState::Returned {
                            rental: foreign.rental,
                            status: foreign.status,
                            post: Some(foreign.post),
                        }))
                    }
                    (Some(latest), _) => Ok(Ok(ReturnState::Returned {
                        rental: latest.id,
                        status: latest.status,
                        post: latest.return_post,
                    })),
                    (None, _) => Ok(Err(ReturnError::NoActiveRental)),
                }
            })
            .await?
    }
}

/// Holds a free post here for the return of `foreign`, a rental started at another Pi of the
/// branch (keyed by its id, like a local reservation); the dock closes it (`sense`).
fn reserve_foreign(
    tx: &rusqlite::Connection,
    state: &mut super::EdgeState,
    reading: cartwise_schema::ClockReading,
    hold_ms: u64,
    phone: &Phone,
    foreign: &fold::PeerRental,
) -> Result<Result<ReturnSlot, ReturnError>, StoreError> {
    if foreign.status == RentalStatus::Unlocking {
        return Ok(Err(ReturnError::StillStarting));
    }
    let at = state.stamp(tx, reading)?;
    ledger::expire_reservations(tx, reading.boot, reading.mono)?;
    let posts = ledger::posts(tx)?;
    let held = posts.iter().find(|p| {
        p.reserved_for == Some(foreign.id)
            && p.service == ledger::Service::InService
            && p.present != Some(true)
    });
    let post = match held {
        Some(held) => held.post,
        None => match posts
            .iter()
            .filter(|p| p.takes_return())
            .min_by_key(|p| (p.use_count, p.post))
        {
            Some(free) => free.post,
            None => return Ok(Err(ReturnError::NoFreePost)),
        },
    };
    let previous = ledger::reservation_of(tx, foreign.id)?.map(|v| v.post);
    ledger::reserve(
        tx,
        &Reservation {
            rental: foreign.id,
            post,
            phone: phone.clone(),
            boot: reading.boot,
            expires: MonoMillis::new(reading.mono.get().saturating_add(hold_ms)),
        },
    )?;
    ledger::append_event(
        tx,
        "return_reserved",
        Some(foreign.id),
        Some(post),
        &json!({ "origin": foreign.origin.to_string() }),
        &at,
    )?;
    state.mirror_post(tx, post)?;
    if let Some(old) = previous.filter(|old| *old != post) {
        state.mirror_post(tx, old)?;
    }
    state.finish(tx)?;
    Ok(Ok(ReturnSlot {
        rental: foreign.id,
        post,
    }))
}

/// The post to name: the one already reserved if still free for it, else the rental's own
/// post if free, else the free post used least.
fn choose_post(
    conn: &rusqlite::Connection,
    rental: &ledger::RentalRow,
) -> Result<Option<PostNo>, StoreError> {
    let posts = ledger::posts(conn)?;
    if let Some(held) = posts.iter().find(|p| p.reserved_for == Some(rental.id))
        && held.service == ledger::Service::InService
        && held.present != Some(true)
    {
        return Ok(Some(held.post));
    }
    // A cart that never left its post goes back into it.
    if rental.taken.is_none() {
        return Ok(Some(rental.post));
    }
    let free: Vec<&ledger::PostRow> = posts.iter().filter(|p| p.takes_return()).collect();
    if let Some(own) = free.iter().find(|p| p.post == rental.post) {
        return Ok(Some(own.post));
    }
    Ok(free
        .iter()
        .min_by_key(|p| (p.use_count, p.post))
        .map(|p| p.post))
}
