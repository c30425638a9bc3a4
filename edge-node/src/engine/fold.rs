//! The branch fold: what this device learns from the documents of the other Pis of its branch
//! (held here, from the Pi itself on the LAN or relayed by the hub), and the returns it shares
//! with them.
//!
//! - Whenever a held device document changes, [`peer_doc_changed`] rebuilds this device's
//!   index of that device's open rentals (`peer_rentals`) and returns (`peer_returns`), and
//!   folds its `returns` entries: a return of one of this device's open rentals closes it here,
//!   with the status and end time the docking device recorded, exactly once (with a `returned`
//!   event); a return of a rental already closed here is a `conflicting_return` anomaly,
//!   recorded once; a return naming a rental this device never started, a
//!   `return_of_unknown_rental`. Each outcome is remembered in `folded_returns`, so a document
//!   delivered twice changes nothing.
//! - A cart of another device's rental docked here ([`close_foreign`]) becomes a `returns`
//!   entry of this device's live document and a `foreign_returns` row (so `complete-return`
//!   here answers "returned").
//! - An open rental of a peer for a phone that has one open here too (both accepted while the
//!   Pis were out of touch) is a `duplicate_phone_rental` anomaly, recorded once by the device
//!   whose rental started later.
//! - The branch-wide rules read the index: one open rental per phone ([`peer_open_rental_of`])
//!   and which foreign rental a phone may return here ([`foreign_open_rental_of`]). What a
//!   partition hid is accepted offline and matched when the documents meet (invariant 5).
//!
//! The index is derived: it is rebuilt from the documents, never edited by hand, and bounded
//! by them (a branch has a few Pis, each document bounded by its own rotation).

use cartwise_schema::{
    AnomalyKind, BootId, ClockReading, DeviceId, Hlc, MonoMillis, Phone, PostNo, RentalId,
    RentalStatus, Stamp, WallMillis,
};
use cartwise_sync_core::facts::{DeviceFacts, ReturnFact};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::json;

use super::EdgeState;
use crate::ledger;
use crate::store::StoreError;
use crate::timekeeping::to_sql_mono;

/// Open rentals indexed per peer device (more than a Pi's posts can hold out is a broken
/// document; the rest is ignored).
pub const PEER_RENTALS_MAX: usize = 2_048;
/// Returns indexed per peer device.
pub const PEER_RETURNS_MAX: usize = 4_096;
/// Foreign returns kept here (oldest evicted; the hub holds them once synced).
pub const FOREIGN_RETURNS_MAX: i64 = 4_096;
/// Folded returns remembered (oldest evicted; a rental closed from a return also matches it by
/// its end HLC, so an evicted outcome is not applied twice).
pub const FOLDED_RETURNS_MAX: i64 = 8_192;

/// How a dock matched a rental of another device.
pub const MATCHED_ONLY_BRANCH: &str = "the only cart out in the branch";

/// An open rental of another device of the branch, as its document says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRental {
    pub id: RentalId,
    pub origin: DeviceId,
    pub phone: Phone,
    pub post: PostNo,
    pub status: RentalStatus,
    pub taken: bool,
    pub minutes: u32,
    /// Corrected start, Unix ms.
    pub start_at: i64,
}

/// A rental of another device whose cart docked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignReturn {
    pub rental: RentalId,
    pub post: PostNo,
    pub status: RentalStatus,
    pub end_hlc: Hlc,
}

/// Called inside the store transaction that applied a change to another device's document
/// held here (from the hub or from that device directly), with the document as it now reads.
pub(crate) fn peer_doc_changed(
    tx: &Transaction<'_>,
    state: &mut EdgeState,
    facts: &DeviceFacts,
) -> Result<(), StoreError> {
    let Some(origin) = facts.device else {
        return Ok(());
    };
    let Some(reading) = last_reading(state) else {
        return Ok(());
    };
    if origin == state.device || facts.branch.is_some_and(|b| b != state.branch) {
        return Ok(());
    }
    index_rentals(tx, origin, facts)?;
    index_returns(tx, origin, &facts.returns)?;
    find_duplicate_phones(tx, state, origin, facts, reading)?;
    let mine: Vec<&ReturnFact> = facts
        .returns
        .iter()
        .filter(|r| r.origin == state.device)
        .collect();
    for ret in mine {
        fold_return(tx, state, origin, ret, reading)?;
    }
    Ok(())
}

/// The latest clock reading this boot recorded (events of a fold are stamped with it; the
/// rental's end comes from the docking device's fact).
fn last_reading(state: &EdgeState) -> Option<ClockReading> {
    state.timeline.boots().last().map(|boot| ClockReading {
        wall: boot.last_wall,
        boot: boot.boot,
        mono: boot.last_mono,
    })
}

fn index_rentals(tx: &Connection, origin: DeviceId, facts: &DeviceFacts) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM peer_rentals WHERE origin = ?1")?
        .execute([origin.to_string()])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO peer_rentals (rental_id, origin, phone, post, status, taken, minutes,
                                   start_at, start_hlc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (rental_id) DO NOTHING",
    )?;
    let open = facts.rentals.iter().filter(|r| r.status.is_open());
    for rental in open.take(PEER_RENTALS_MAX) {
        let Ok(phone) = Phone::parse(&rental.phone) else {
            continue;
        };
        insert.execute(params![
            rental.id.to_string(),
            origin.to_string(),
            phone.as_e164(),
            rental.post,
            rental.status.as_str(),
            rental.taken,
            rental.minutes,
            rental.start_at,
            rental.start_hlc,
        ])?;
    }
    Ok(())
}

fn index_returns(
    tx: &Connection,
    returned_by: DeviceId,
    returns: &[ReturnFact],
) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM peer_returns WHERE returned_by = ?1")?
        .execute([returned_by.to_string()])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO peer_returns (rental_id, returned_by) VALUES (?1, ?2)
         ON CONFLICT DO NOTHING",
    )?;
    for ret in returns.iter().take(PEER_RETURNS_MAX) {
        insert.execute(params![ret.rental.to_string(), returned_by.to_string()])?;
    }
    Ok(())
}

/// One open rental per phone, branch-wide, cannot hold while Pis are out of touch: when a
/// peer's open rental meets an open rental here of the same phone, the device whose rental
/// started later records a `duplicate_phone_rental` anomaly, once. Both rentals stay open.
fn find_duplicate_phones(
    tx: &Connection,
    state: &mut EdgeState,
    origin: DeviceId,
    facts: &DeviceFacts,
    reading: ClockReading,
) -> Result<(), StoreError> {
    let open = facts.rentals.iter().filter(|r| r.status.is_open());
    for theirs in open.take(PEER_RENTALS_MAX) {
        let Ok(phone) = Phone::parse(&theirs.phone) else {
            continue;
        };
        let Some(mine) = ledger::open_rental_of(tx, &phone)? else {
            continue;
        };
        if mine.id < theirs.id {
            continue;
        }
        let new = tx
            .prepare_cached(
                "INSERT INTO duplicate_rentals (rental_id, other_id) VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![mine.id.to_string(), theirs.id.to_string()])?;
        if new == 0 {
            continue;
        }
        tx.prepare_cached(
            "DELETE FROM duplicate_rentals WHERE seq <= (SELECT max(seq) FROM duplicate_rentals) - ?1",
        )?
        .execute([FOLDED_RETURNS_MAX])?;
        let at = state.stamp(tx, reading)?;
        let detail = format!(
            "the phone also has rental {} open at device {origin}, started while the devices were out of touch",
            theirs.id
        );
        state.anomaly(
            tx,
            AnomalyKind::DuplicatePhoneRental,
            Some(mine.post),
            Some(mine.id),
            &detail,
            &at,
        )?;
    }
    Ok(())
}

/// One return of this device's rental recorded by `returned_by`: applied exactly once.
fn fold_return(
    tx: &Connection,
    state: &mut EdgeState,
    returned_by: DeviceId,
    ret: &ReturnFact,
    reading: ClockReading,
) -> Result<(), StoreError> {
    let key = (ret.rental.to_string(), returned_by.to_string());
    let folded: Option<i64> = tx
        .prepare_cached("SELECT 1 FROM folded_returns WHERE rental_id = ?1 AND returned_by = ?2")?
        .query_row(params![key.0, key.1], |r| r.get(0))
        .optional()?;
    if folded.is_some() {
        return Ok(());
    }
    let Ok(end_hlc) = ret.end_hlc.parse::<Hlc>() else {
        return Ok(());
    };
    let outcome = match ledger::rental(tx, ret.rental)? {
        Some(rental) if rental.status.is_open() => {
            close_from_peer(tx, state, rental, returned_by, ret, end_hlc, reading)?;
            "closed"
        }
        // Already closed from this very return (its outcome was evicted): nothing to do.
        Some(rental) if rental.end.is_some_and(|e| e.hlc == end_hlc) => "closed",
        Some(rental) => {
            let at = state.stamp(tx, reading)?;
            let detail = format!(
                "device {returned_by} recorded a return at its post {} of a rental already {} here",
                ret.post,
                rental.status.as_str()
            );
            state.anomaly(
                tx,
                AnomalyKind::ConflictingReturn,
                None,
                Some(rental.id),
                &detail,
                &at,
            )?;
            AnomalyKind::ConflictingReturn.as_str()
        }
        None => {
            let at = state.stamp(tx, reading)?;
            let detail = format!(
                "device {returned_by} recorded a return of a rental this device never started"
            );
            state.anomaly(
                tx,
                AnomalyKind::ReturnOfUnknownRental,
                None,
                Some(ret.rental),
                &detail,
                &at,
            )?;
            AnomalyKind::ReturnOfUnknownRental.as_str()
        }
    };
    tx.prepare_cached(
        "INSERT INTO folded_returns (rental_id, returned_by, outcome) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![key.0, key.1, outcome])?;
    tx.prepare_cached(
        "DELETE FROM folded_returns WHERE seq <= (SELECT max(seq) FROM folded_returns) - ?1",
    )?
    .execute([FOLDED_RETURNS_MAX])?;
    Ok(())
}

/// Closes this device's open rental from another device's return: status and end time are
/// the docking device's.
fn close_from_peer(
    tx: &Connection,
    state: &mut EdgeState,
    mut rental: ledger::RentalRow,
    returned_by: DeviceId,
    ret: &ReturnFact,
    end_hlc: Hlc,
    reading: ClockReading,
) -> Result<(), StoreError> {
    let at = state.stamp(tx, reading)?;
    // The end as the docking device saw it; its wall is the corrected time (this device does
    // not know that device's boots), so every reader here shows the same end.
    let end = Stamp {
        wall: WallMillis::new(ret.end_at),
        boot: ret
            .end_boot
            .as_deref()
            .and_then(|b| BootId::parse(b).ok())
            .unwrap_or(at.boot),
        mono: MonoMillis::new(
            ret.end_mono
                .and_then(|m| u64::try_from(m).ok())
                .unwrap_or(0),
        ),
        hlc: end_hlc,
    };
    rental.status = ret.status;
    rental.end = Some(end);
    if rental.taken.is_none() {
        rental.taken = Some(end_hlc);
    }
    rental.note = Some(format!(
        "returned at device {returned_by}, its post {}",
        ret.post
    ));
    ledger::unreserve(tx, rental.id)?;
    state.save_rental(tx, &rental)?;
    ledger::append_event(
        tx,
        "returned",
        Some(rental.id),
        None,
        &json!({
            "matched_by": "a return recorded by another device",
            "returned_by": returned_by.to_string(),
            "return_post": ret.post,
            "status": rental.status.as_str(),
        }),
        &at,
    )?;
    state.mirror_post(tx, rental.post)?;
    tracing::info!(rental = %rental.id, %returned_by, post = ret.post, status = rental.status.as_str(), "rental returned at a branch peer");
    Ok(())
}

const PEER_RENTAL_SELECT: &str = "
    SELECT rental_id, origin, phone, post, status, taken, minutes, start_at FROM peer_rentals p
    WHERE NOT EXISTS (SELECT 1 FROM peer_returns r WHERE r.rental_id = p.rental_id)
      AND NOT EXISTS (SELECT 1 FROM foreign_returns f WHERE f.rental_id = p.rental_id)";

fn peer_rental_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<PeerRental>> {
    let id: String = row.get(0)?;
    let origin: String = row.get(1)?;
    let phone: String = row.get(2)?;
    let post: i64 = row.get(3)?;
    let status: String = row.get(4)?;
    let parsed = (|| {
        Some(PeerRental {
            id: RentalId::parse(&id).ok()?,
            origin: DeviceId::parse(&origin).ok()?,
            phone: Phone::parse(&phone).ok()?,
            post: PostNo::new(u16::try_from(post).ok()?).ok()?,
            status: RentalStatus::parse(&status).ok()?,
            taken: false,
            minutes: 0,
            start_at: 0,
        })
    })();
    Ok(match parsed {
        Some(mut rental) => {
            rental.taken = row.get::<_, i64>(5)? != 0;
            rental.minutes = u32::try_from(row.get::<_, i64>(6)?).unwrap_or(0);
            rental.start_at = row.get(7)?;
            Some(rental)
        }
        None => None,
    })
}

fn peer_rentals_where(
    tx: &Connection,
    condition: &str,
    args: &[&dyn rusqlite::ToSql],
    limit: i64,
) -> Result<Vec<PeerRental>, StoreError> {
    let sql = format!("{PEER_RENTAL_SELECT} AND {condition} ORDER BY start_hlc LIMIT {limit}");
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt.query_map(args, peer_rental_from_row)?;
    let mut out = Vec::new();
    for row in rows {
        if let Some(rental) = row? {
            out.push(rental);
        }
    }
    Ok(out)
}

/// The phone's open rental at another device of the branch (not returned anywhere known).
pub fn peer_open_rental_of(
    tx: &Connection,
    phone: &Phone,
) -> Result<Option<PeerRental>, StoreError> {
    Ok(
        peer_rentals_where(tx, "phone = ?1", &[&phone.as_e164()], 1)?
            .into_iter()
            .next(),
    )
}

/// The phone's rental at another device that may be returned here, if any.
pub fn foreign_open_rental_of(
    tx: &Connection,
    phone: &Phone,
) -> Result<Option<PeerRental>, StoreError> {
    peer_open_rental_of(tx, phone)
}

/// The only cart out in the branch's other devices, if exactly one is out.
pub fn only_peer_cart_out(tx: &Connection) -> Result<Option<PeerRental>, StoreError> {
    let out = peer_rentals_where(tx, "status = 'active' AND taken = 1", &[], 2)?;
    Ok(match out.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    })
}

/// How many carts the other devices have out (up to 2: "none", "one", "several").
pub fn peer_carts_out(tx: &Connection) -> Result<usize, StoreError> {
    Ok(peer_rentals_where(tx, "status = 'active' AND taken = 1", &[], 2)?.len())
}

/// The open foreign rental `id`, if this device knows it.
pub fn peer_rental(tx: &Connection, id: RentalId) -> Result<Option<PeerRental>, StoreError> {
    Ok(
        peer_rentals_where(tx, "rental_id = ?1", &[&id.to_string()], 1)?
            .into_iter()
            .next(),
    )
}

/// The cart of another device's rental docked at `post` here: records the return (row and
/// live document `returns` entry) and drops its reservation. `false` if `id` is not an open
/// rental of another device known here.
pub fn close_foreign(
    tx: &Connection,
    state: &mut EdgeState,
    id: RentalId,
    post: PostNo,
    how: &str,
    at: &Stamp,
) -> Result<bool, StoreError> {
    let Some(rental) = peer_rental(tx, id)? else {
        return Ok(false);
    };
    let end_at = state.timeline.corrected(at).get();
    let elapsed = end_at.saturating_sub(rental.start_at);
    let status = RentalStatus::returned_after(elapsed, i64::from(rental.minutes) * 60_000);
    let trusted = state.timeline.is_learned(&at.boot);
    tx.prepare_cached(
        "INSERT INTO foreign_returns (rental_id, origin, phone, post, status, end_wall_ms,
                                      end_boot, end_mono_ms, end_hlc, end_at, time_trusted,
                                      matched_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (rental_id) DO NOTHING",
    )?
    .execute(params![
        id.to_string(),
        rental.origin.to_string(),
        rental.phone.as_e164(),
        post.get(),
        status.as_str(),
        at.wall.get(),
        at.boot.to_string(),
        to_sql_mono(at.mono),
        at.hlc.to_string(),
        end_at,
        trusted,
        how,
    ])?;
    tx.prepare_cached(
        "DELETE FROM foreign_returns WHERE rowid <= (SELECT max(rowid) FROM foreign_returns) - ?1",
    )?
    .execute([FOREIGN_RETURNS_MAX])?;
    ledger::unreserve(tx, id)?;
    state
        .live
        .put_return(id, rental.origin, post, status, at, end_at, trusted)?;
    ledger::append_event(
        tx,
        "returned_foreign",
        Some(id),
        Some(post),
        &json!({
            "origin": rental.origin.to_string(),
            "matched_by": how,
            "status": status.as_str(),
        }),
        at,
    )?;
    tracing::info!(rental = %id, origin = %rental.origin, %post, status = status.as_str(), how, "cart of a branch peer's rental returned here");
    Ok(true)
}

/// The phone's latest return here of another device's rental.
pub fn latest_foreign_return_of(
    conn: &Connection,
    phone: &Phone,
) -> Result<Option<ForeignReturn>, StoreError> {
    let row: Option<(String, i64, String, String)> = conn
        .prepare_cached(
            "SELECT rental_id, post, status, end_hlc FROM foreign_returns WHERE phone = ?1
             ORDER BY end_hlc DESC LIMIT 1",
        )?
        .query_row([phone.as_e164()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    Ok(row.and_then(|(id, post, status, hlc)| {
        Some(ForeignReturn {
            rental: RentalId::parse(&id).ok()?,
            post: PostNo::new(u16::try_from(post).ok()?).ok()?,
            status: RentalStatus::parse(&status).ok()?,
            end_hlc: hlc.parse().ok()?,
        })
    }))
}

#[cfg(test)]
mod tests {
    use cartwise_schema::BranchId;
    use cartwise_sync_core::facts::RentalFact;

    use super::*;
    use crate::store::open_connection;

    const WALL: i64 = 1_800_000_000_000;

    fn device(n: u128) -> DeviceId {
        DeviceId::from_uuid(uuid::Uuid::from_u128(
            0x0b1e_3c2a_0000_4000_8000_0000_0000_1000 + n,
        ))
    }

    fn branch() -> BranchId {
        BranchId::parse("0b1e3c2a-0000-4000-8000-000000000101").unwrap()
    }

    fn reading(boot: u128, mono: u64) -> ClockReading {
        ClockReading {
            wall: WallMillis::new(WALL + i64::try_from(mono).unwrap()),
            boot: cartwise_fixtures::clock::boot_id(boot),
            mono: MonoMillis::new(mono),
        }
    }

    /// Device 1's store with one open rental (cart out), and a stamp another device docked at.
    fn station() -> (
        tempfile::TempDir,
        rusqlite::Connection,
        EdgeState,
        ledger::RentalRow,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        conn.execute("INSERT INTO posts (post, board, lock) VALUES (1, 0, 1)", [])
            .unwrap();
        let mut state = EdgeState::load(&conn, device(1), branch()).unwrap();
        let at = state.stamp(&conn, reading(1, 1_000)).unwrap();
        let rental = ledger::RentalRow {
            id: RentalId::from_parts(u64::try_from(WALL).unwrap(), [7; 10]),
            phone: Phone::parse("0521234567").unwrap(),
            post: PostNo::new(1).unwrap(),
            status: RentalStatus::Active,
            rental_minutes: 120,
            start: at,
            taken: Some(at.hlc),
            end: None,
            return_post: None,
            note: None,
        };
        ledger::insert_rental(&conn, &rental).unwrap();
        state.stamp(&conn, reading(1, 2_000)).unwrap();
        (dir, conn, state, rental)
    }

    fn return_by(by: DeviceId, rental: RentalId, end_at: i64, hlc: &str) -> DeviceFacts {
        DeviceFacts {
            schema: 1,
            device: Some(by),
            branch: Some(branch()),
            returns: vec![ReturnFact {
                rental,
                origin: device(1),
                post: 17,
                status: RentalStatus::ReturnedLate,
                end_at,
                end_wall: Some(end_at),
                end_boot: Some(cartwise_fixtures::clock::boot_id(9).to_string()),
                end_mono: Some(5_000),
                end_hlc: hlc.to_owned(),
                time_trusted: true,
            }],
            ..DeviceFacts::default()
        }
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn fold(conn: &mut rusqlite::Connection, state: &mut EdgeState, facts: &DeviceFacts) {
        let tx = conn.transaction().unwrap();
        peer_doc_changed(&tx, state, facts).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn a_peer_return_closes_the_rental_once_and_a_second_one_is_an_anomaly() {
        let (_dir, mut conn, mut state, rental) = station();
        let end_at = WALL + 3 * 3_600_000;
        let hlc = state
            .stamp(&conn, reading(1, 3_000))
            .unwrap()
            .hlc
            .to_string();
        let from_b = return_by(device(2), rental.id, end_at, &hlc);
        // Delivered twice (a duplicate, a replay after a reconnect): closed once.
        fold(&mut conn, &mut state, &from_b);
        fold(&mut conn, &mut state, &from_b);
        let closed = ledger::rental(&conn, rental.id).unwrap().unwrap();
        assert_eq!(closed.status, RentalStatus::ReturnedLate);
        assert_eq!(closed.end.unwrap().wall.get(), end_at);
        assert_eq!(closed.end.unwrap().hlc.to_string(), hlc);
        assert_eq!(
            count(&conn, "SELECT count(*) FROM events WHERE kind = 'returned'"),
            1
        );
        assert_eq!(count(&conn, "SELECT count(*) FROM ledger"), 1);
        assert!(state.live.has_rental(rental.id));

        // Another device also says it docked this cart: recorded once, not applied.
        let later = state
            .stamp(&conn, reading(1, 4_000))
            .unwrap()
            .hlc
            .to_string();
        let from_c = return_by(device(3), rental.id, end_at + 60_000, &later);
        fold(&mut conn, &mut state, &from_c);
        fold(&mut conn, &mut state, &from_c);
        let anomalies = count(
            &conn,
            "SELECT count(*) FROM events WHERE kind = 'anomaly'
             AND data LIKE '%conflicting_return%'",
        );
        assert_eq!(anomalies, 1);
        let still = ledger::rental(&conn, rental.id).unwrap().unwrap();
        assert_eq!(still.end, closed.end);
        assert_eq!(
            count(&conn, "SELECT count(*) FROM events WHERE kind = 'returned'"),
            1
        );
    }

    #[test]
    fn a_return_of_a_rental_never_started_here_is_an_anomaly() {
        let (_dir, mut conn, mut state, _) = station();
        let hlc = state
            .stamp(&conn, reading(1, 3_000))
            .unwrap()
            .hlc
            .to_string();
        let unknown = RentalId::from_parts(u64::try_from(WALL).unwrap(), [9; 10]);
        fold(
            &mut conn,
            &mut state,
            &return_by(device(2), unknown, WALL, &hlc),
        );
        let anomalies = count(
            &conn,
            "SELECT count(*) FROM events WHERE kind = 'anomaly'
             AND data LIKE '%return_of_unknown_rental%'",
        );
        assert_eq!(anomalies, 1);
    }

    #[test]
    fn two_open_rentals_of_one_phone_are_an_anomaly_once() {
        let (_dir, mut conn, mut state, rental) = station();
        // Device 2 lent to the same phone after device 1 did, while they were apart.
        let later = RentalId::from_parts(u64::try_from(WALL).unwrap() + 1, [1; 10]);
        let earlier = RentalId::from_parts(u64::try_from(WALL).unwrap() - 1, [1; 10]);
        for (other, recorded_here) in [(later, 0), (earlier, 1)] {
            let facts = DeviceFacts {
                schema: 1,
                device: Some(device(2)),
                branch: Some(branch()),
                rentals: vec![open_rental(other, rental.phone.as_e164())],
                ..DeviceFacts::default()
            };
            fold(&mut conn, &mut state, &facts);
            fold(&mut conn, &mut state, &facts);
            let anomalies = count(
                &conn,
                "SELECT count(*) FROM events WHERE kind = 'anomaly'
                 AND data LIKE '%duplicate_phone_rental%'",
            );
            // The later rental's device records it: device 2 for `later`, this one for
            // `earlier`.
            assert_eq!(anomalies, recorded_here, "{other}");
        }
    }

    fn open_rental(id: RentalId, phone: &str) -> RentalFact {
        RentalFact {
            id,
            phone: phone.to_owned(),
            post: 17,
            status: RentalStatus::Active,
            minutes: 120,
            start_hlc: "x".into(),
            taken: true,
            end_hlc: None,
            start_at: WALL,
            expected_at: WALL + 7_200_000,
            end_at: None,
            time_trusted: false,
            return_post: None,
            note: None,
        }
    }

    #[test]
    fn peer_rentals_are_indexed_until_returned_anywhere() {
        let (_dir, mut conn, mut state, _) = station();
        let id = RentalId::from_parts(u64::try_from(WALL).unwrap(), [5; 10]);
        let phone = Phone::parse("0547654321").unwrap();
        let open = DeviceFacts {
            schema: 1,
            device: Some(device(2)),
            branch: Some(branch()),
            rentals: vec![open_rental(id, phone.as_e164())],
            ..DeviceFacts::default()
        };
        fold(&mut conn, &mut state, &open);
        let found = peer_open_rental_of(&conn, &phone).unwrap().unwrap();
        assert_eq!((found.id, found.origin), (id, device(2)));
        assert_eq!(only_peer_cart_out(&conn).unwrap().map(|r| r.id), Some(id));
        // Device 3 recorded its return: the rental no longer counts anywhere here.
        let mut returned = return_by(device(3), id, WALL, "y");
        returned.returns[0].origin = device(2);
        fold(&mut conn, &mut state, &returned);
        assert!(peer_open_rental_of(&conn, &phone).unwrap().is_none());
        assert!(only_peer_cart_out(&conn).unwrap().is_none());
        // A document of another branch is ignored.
        let mut foreign = open.clone();
        foreign.device = Some(device(4));
        foreign.branch = Some(BranchId::parse("0b1e3c2a-0000-4000-8000-000000000999").unwrap());
        fold(&mut conn, &mut state, &foreign);
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM peer_rentals WHERE origin LIKE '%1004'"
            ),
            0
        );
    }
}
