//! The edge's rows and the SQL that reads and writes them: posts, rentals, return
//! reservations, the append-only event log and the closed-rental ledger.
//!
//! Every function takes a connection or transaction handed in by a store job, so a caller
//! composes several of them into one atomic transaction.

use cartwise_schema::{
    BoardAddr, BootId, Hlc, HookState, LockNo, MonoMillis, Phone, PostNo, PostStatus, RentalId,
    RentalStatus, Stamp, WallMillis,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::store::StoreError;
use crate::timekeeping::to_sql_mono;

/// Whether staff or a fault holds a post away from shoppers (`posts.service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    InService,
    Maintenance,
    OutOfService,
    Fault,
}

impl Service {
    pub const fn as_str(self) -> &'static str {
        match self {
            Service::InService => "in_service",
            Service::Maintenance => "maintenance",
            Service::OutOfService => "out_of_service",
            Service::Fault => "fault",
        }
    }

    fn parse(text: &str) -> Service {
        match text {
            "maintenance" => Service::Maintenance,
            "out_of_service" => Service::OutOfService,
            "fault" => Service::Fault,
            _ => Service::InService,
        }
    }
}

/// A post as the node knows it, with what holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostRow {
    pub post: PostNo,
    pub board: BoardAddr,
    pub lock: LockNo,
    pub service: Service,
    pub hook: HookState,
    /// Whether a cart is sensed in the post (`None` before the first reading).
    pub present: Option<bool>,
    pub fault: Option<String>,
    pub use_count: i64,
    pub last_used: Option<Hlc>,
    /// The rental holding the post's cart: unlocking, or active with the cart not yet taken.
    pub holder: Option<RentalId>,
    /// An active rental started here whose cart is out.
    pub out: Option<RentalId>,
    /// A return reserved at this post.
    pub reserved_for: Option<RentalId>,
}

impl PostRow {
    /// The status a post shows, derived from its service state, sensing and holds.
    pub fn status(&self) -> PostStatus {
        match self.service {
            Service::Maintenance => return PostStatus::Maintenance,
            Service::OutOfService => return PostStatus::OutOfService,
            Service::Fault => return PostStatus::Fault,
            Service::InService => {}
        }
        if self.reserved_for.is_some() || self.holder.is_some() {
            return PostStatus::Reserved;
        }
        if self.present == Some(true) && self.hook == HookState::Latched {
            return PostStatus::Available;
        }
        if self.out.is_some() {
            PostStatus::InUse
        } else {
            PostStatus::Empty
        }
    }

    /// Whether the kiosk may name this post for a return: in service, open, empty, unheld.
    pub fn takes_return(&self) -> bool {
        self.service == Service::InService
            && self.present == Some(false)
            && self.hook == HookState::Open
            && self.holder.is_none()
            && self.reserved_for.is_none()
    }
}

const POST_SELECT: &str = "
    SELECT p.post, p.board, p.lock, p.service, p.hook, p.present, p.fault, p.use_count,
           p.last_used_hlc,
           (SELECT r.id FROM rentals r WHERE r.post = p.post
              AND (r.status = 'unlocking' OR (r.status = 'active' AND r.taken_hlc IS NULL))),
           (SELECT r.id FROM rentals r WHERE r.post = p.post
              AND r.status = 'active' AND r.taken_hlc IS NOT NULL ORDER BY r.start_hlc DESC LIMIT 1),
           (SELECT v.rental_id FROM return_reservations v WHERE v.post = p.post)
    FROM posts p";

fn post_from_row(row: &Row<'_>) -> rusqlite::Result<PostRow> {
    Ok(PostRow {
        post: conv(row, 0, |v: i64| PostNo::new(u16::try_from(v).unwrap_or(0)))?,
        board: conv(row, 1, |v: i64| {
            BoardAddr::new(u8::try_from(v).unwrap_or(u8::MAX))
        })?,
        lock: conv(row, 2, |v: i64| LockNo::new(u8::try_from(v).unwrap_or(0)))?,
        service: Service::parse(&row.get::<_, String>(3)?),
        hook: HookState::parse(&row.get::<_, String>(4)?).unwrap_or(HookState::Unknown),
        present: row.get::<_, Option<i64>>(5)?.map(|v| v != 0),
        fault: row.get(6)?,
        use_count: row.get(7)?,
        last_used: opt_conv(row, 8, |v: String| v.parse::<Hlc>())?,
        holder: opt_conv(row, 9, |v: String| RentalId::parse(&v))?,
        out: opt_conv(row, 10, |v: String| RentalId::parse(&v))?,
        reserved_for: opt_conv(row, 11, |v: String| RentalId::parse(&v))?,
    })
}

/// Every post, in post order.
pub fn posts(conn: &Connection) -> Result<Vec<PostRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{POST_SELECT} ORDER BY p.post"))?;
    let rows = stmt.query_map([], post_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One post.
pub fn post(conn: &Connection, post: PostNo) -> Result<Option<PostRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{POST_SELECT} WHERE p.post = ?1"))?;
    Ok(stmt.query_row([post.get()], post_from_row).optional()?)
}

/// Creates the posts of the configured layout that do not exist yet; never deletes any.
pub fn ensure_posts(
    conn: &Connection,
    layout: &[(PostNo, BoardAddr, LockNo)],
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO posts (post, board, lock) VALUES (?1, ?2, ?3)
         ON CONFLICT (post) DO UPDATE SET board = excluded.board, lock = excluded.lock",
    )?;
    for (post, board, lock) in layout {
        stmt.execute(params![post.get(), board.get(), lock.get()])?;
    }
    Ok(())
}

/// The post to lend from: in service, latched on a present cart, not held or reserved, not in
/// `exclude`; the least used first, then the longest unused, so wear spreads over the corral.
pub fn pick_post_for_lend(
    conn: &Connection,
    exclude: &[PostNo],
) -> Result<Option<PostRow>, StoreError> {
    Ok(posts(conn)?
        .into_iter()
        .filter(|p| p.status() == PostStatus::Available && !exclude.contains(&p.post))
        .min_by(|a, b| (a.use_count, a.last_used, a.post).cmp(&(b.use_count, b.last_used, b.post))))
}

/// Records what the bus sensed at a post.
pub fn set_sensed(
    conn: &Connection,
    post: PostNo,
    hook: HookState,
    present: Option<bool>,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE posts SET hook = ?1, present = ?2 WHERE post = ?3")?
        .execute(params![hook.as_str(), present.map(i64::from), post.get()])?;
    Ok(())
}

/// Records the hook alone (the bus reported it; presence is the poller's to tell).
pub fn set_hook(conn: &Connection, post: PostNo, hook: HookState) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE posts SET hook = ?1 WHERE post = ?2")?
        .execute(params![hook.as_str(), post.get()])?;
    Ok(())
}

/// Sets a post's service state (and its fault text, cleared unless the state is `Fault`).
pub fn set_service(
    conn: &Connection,
    post: PostNo,
    service: Service,
    fault: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE posts SET service = ?1, fault = ?2 WHERE post = ?3")?
        .execute(params![service.as_str(), fault, post.get()])?;
    Ok(())
}

/// Counts a use of the post, for wear spreading.
pub fn note_use(conn: &Connection, post: PostNo, hlc: Hlc) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE posts SET use_count = use_count + 1, last_used_hlc = ?1 WHERE post = ?2",
    )?
    .execute(params![hlc.to_string(), post.get()])?;
    Ok(())
}

/// A rental started at this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RentalRow {
    pub id: RentalId,
    pub phone: Phone,
    pub post: PostNo,
    pub status: RentalStatus,
    pub rental_minutes: u32,
    pub start: Stamp,
    /// When the cart was sensed leaving its post.
    pub taken: Option<Hlc>,
    pub end: Option<Stamp>,
    pub return_post: Option<PostNo>,
    pub note: Option<String>,
}

const RENTAL_SELECT: &str = "
    SELECT id, phone, post, status, rental_minutes, start_wall_ms, start_boot, start_mono_ms,
           start_hlc, taken_hlc, end_wall_ms, end_boot, end_mono_ms, end_hlc, return_post, note
    FROM rentals";

fn rental_from_row(row: &Row<'_>) -> rusqlite::Result<RentalRow> {
    let end = match (
        row.get::<_, Option<i64>>(10)?,
        row.get::<_, Option<String>>(11)?,
        row.get::<_, Option<i64>>(12)?,
        row.get::<_, Option<String>>(13)?,
    ) {
        (Some(wall), Some(boot), Some(mono), Some(hlc)) => Some(stamp_of(wall, &boot, mono, &hlc)?),
        _ => None,
    };
    let start = stamp_of(
        row.get(5)?,
        &row.get::<_, String>(6)?,
        row.get(7)?,
        &row.get::<_, String>(8)?,
    )?;
    Ok(RentalRow {
        id: conv(row, 0, |v: String| RentalId::parse(&v))?,
        phone: conv(row, 1, |v: String| Phone::parse(&v))?,
        post: conv(row, 2, |v: i64| PostNo::new(u16::try_from(v).unwrap_or(0)))?,
        status: conv(row, 3, |v: String| RentalStatus::parse(&v))?,
        rental_minutes: u32::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
        start,
        taken: opt_conv(row, 9, |v: String| v.parse::<Hlc>())?,
        end,
        return_post: opt_conv(row, 14, |v: i64| PostNo::new(u16::try_from(v).unwrap_or(0)))?,
        note: row.get(15)?,
    })
}

fn stamp_of(wall: i64, boot: &str, mono: i64, hlc: &str) -> rusqlite::Result<Stamp> {
    let bad = |e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    };
    Ok(Stamp {
        wall: WallMillis::new(wall),
        boot: BootId::parse(boot).map_err(|e| bad(e.to_string()))?,
        mono: MonoMillis::new(u64::try_from(mono).unwrap_or(0)),
        hlc: hlc
            .parse()
            .map_err(|e: cartwise_schema::HlcError| bad(e.to_string()))?,
    })
}

/// Inserts a new rental.
pub fn insert_rental(conn: &Connection, r: &RentalRow) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO rentals (id, phone, post, status, rental_minutes, start_wall_ms, start_boot,
                              start_mono_ms, start_hlc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        r.id.to_string(),
        r.phone.as_e164(),
        r.post.get(),
        r.status.as_str(),
        r.rental_minutes,
        r.start.wall.get(),
        r.start.boot.to_string(),
        to_sql_mono(r.start.mono),
        r.start.hlc.to_string(),
    ])?;
    Ok(())
}

/// Writes a rental's status, taken time, end and return post.
pub fn update_rental(conn: &Connection, r: &RentalRow) -> Result<(), StoreError> {
    let end = r.end.as_ref();
    conn.prepare_cached(
        "UPDATE rentals SET status = ?2, taken_hlc = ?3, end_wall_ms = ?4, end_boot = ?5,
                end_mono_ms = ?6, end_hlc = ?7, return_post = ?8, note = ?9
         WHERE id = ?1",
    )?
    .execute(params![
        r.id.to_string(),
        r.status.as_str(),
        r.taken.map(|h| h.to_string()),
        end.map(|s| s.wall.get()),
        end.map(|s| s.boot.to_string()),
        end.map(|s| to_sql_mono(s.mono)),
        end.map(|s| s.hlc.to_string()),
        r.return_post.map(PostNo::get),
        r.note,
    ])?;
    Ok(())
}

/// One rental by id.
pub fn rental(conn: &Connection, id: RentalId) -> Result<Option<RentalRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{RENTAL_SELECT} WHERE id = ?1"))?;
    Ok(stmt
        .query_row([id.to_string()], rental_from_row)
        .optional()?)
}

/// Rentals matching a SQL condition on `rentals`, newest first, paged.
pub fn rentals_where(
    conn: &Connection,
    condition: &str,
    args: &[&dyn rusqlite::ToSql],
    limit: i64,
    offset: i64,
) -> Result<Vec<RentalRow>, StoreError> {
    let sql = format!(
        "{RENTAL_SELECT} WHERE {condition} ORDER BY start_hlc DESC LIMIT {limit} OFFSET {offset}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(args, rental_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The open rental (unlocking or active) of a phone, if any.
pub fn open_rental_of(conn: &Connection, phone: &Phone) -> Result<Option<RentalRow>, StoreError> {
    Ok(rentals_where(
        conn,
        "phone = ?1 AND status IN ('unlocking', 'active')",
        &[&phone.as_e164()],
        1,
        0,
    )?
    .into_iter()
    .next())
}

/// The phone's most recent rental, open or closed.
pub fn latest_rental_of(conn: &Connection, phone: &Phone) -> Result<Option<RentalRow>, StoreError> {
    Ok(
        rentals_where(conn, "phone = ?1", &[&phone.as_e164()], 1, 0)?
            .into_iter()
            .next(),
    )
}

/// A return reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub rental: RentalId,
    pub post: PostNo,
    pub phone: Phone,
    pub boot: BootId,
    pub expires: MonoMillis,
}

fn reservation_from_row(row: &Row<'_>) -> rusqlite::Result<Reservation> {
    Ok(Reservation {
        rental: conv(row, 0, |v: String| RentalId::parse(&v))?,
        post: conv(row, 1, |v: i64| PostNo::new(u16::try_from(v).unwrap_or(0)))?,
        phone: conv(row, 2, |v: String| Phone::parse(&v))?,
        boot: conv(row, 3, |v: String| BootId::parse(&v))?,
        expires: MonoMillis::new(u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0)),
    })
}

const RESERVATION_SELECT: &str =
    "SELECT rental_id, post, phone, boot, expires_mono_ms FROM return_reservations";

/// The reservation of a rental, or at a post.
pub fn reservation_of(
    conn: &Connection,
    rental: RentalId,
) -> Result<Option<Reservation>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{RESERVATION_SELECT} WHERE rental_id = ?1"))?;
    Ok(stmt
        .query_row([rental.to_string()], reservation_from_row)
        .optional()?)
}

/// The reservation at a post.
pub fn reservation_at(conn: &Connection, post: PostNo) -> Result<Option<Reservation>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{RESERVATION_SELECT} WHERE post = ?1"))?;
    Ok(stmt
        .query_row([post.get()], reservation_from_row)
        .optional()?)
}

/// Reserves (or re-reserves) a post for a rental's return.
pub fn reserve(conn: &Connection, v: &Reservation) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO return_reservations (rental_id, post, phone, boot, expires_mono_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (rental_id) DO UPDATE SET post = excluded.post, boot = excluded.boot,
             expires_mono_ms = excluded.expires_mono_ms",
    )?
    .execute(params![
        v.rental.to_string(),
        v.post.get(),
        v.phone.as_e164(),
        v.boot.to_string(),
        to_sql_mono(v.expires)
    ])?;
    Ok(())
}

/// Drops a rental's reservation.
pub fn unreserve(conn: &Connection, rental: RentalId) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM return_reservations WHERE rental_id = ?1")?
        .execute([rental.to_string()])?;
    Ok(())
}

/// Drops reservations that lapsed: of an earlier boot, or past their expiry in this one.
pub fn expire_reservations(
    conn: &Connection,
    boot: BootId,
    now: MonoMillis,
) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM return_reservations WHERE boot != ?1 OR expires_mono_ms <= ?2",
        )?
        .execute(params![boot.to_string(), to_sql_mono(now)])?)
}

/// Appends a fact to the event log.
pub fn append_event(
    conn: &Connection,
    kind: &str,
    rental: Option<RentalId>,
    post: Option<PostNo>,
    data: &serde_json::Value,
    at: &Stamp,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (kind, rental_id, post, data, wall_ms, boot, mono_ms, hlc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        kind,
        rental.map(|r| r.to_string()),
        post.map(PostNo::get),
        data.to_string(),
        at.wall.get(),
        at.boot.to_string(),
        to_sql_mono(at.mono),
        at.hlc.to_string(),
    ])?;
    Ok(())
}

/// The largest HLC the node ever issued, to resume its clock after a restart.
/// Events are appended in the order their stamps were issued, so the last one carries the
/// largest (read by primary key, not by scanning the log).
pub fn last_hlc(conn: &Connection) -> Result<Option<Hlc>, StoreError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT hlc FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(text.and_then(|t| t.parse().ok()))
}

/// Appends a closed rental to the ledger (once; a second close of the same id is ignored).
pub fn append_ledger(
    conn: &Connection,
    r: &RentalRow,
    row_json: &serde_json::Value,
) -> Result<(), StoreError> {
    let closed = r.end.as_ref().map_or(r.start.hlc, |e| e.hlc);
    conn.prepare_cached("INSERT INTO ledger (rental_id, closed_hlc, row_json) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?
        .execute(params![r.id.to_string(), closed.to_string(), row_json.to_string()])?;
    Ok(())
}

/// Reads column `index` and converts it, turning a failed conversion into a SQLite error.
fn conv<T, V, E>(
    row: &Row<'_>,
    index: usize,
    f: impl FnOnce(V) -> Result<T, E>,
) -> rusqlite::Result<T>
where
    V: rusqlite::types::FromSql,
    E: std::fmt::Display,
{
    let value: V = row.get(index)?;
    f(value).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            e.to_string().into(),
        )
    })
}

fn opt_conv<T, V, E>(
    row: &Row<'_>,
    index: usize,
    f: impl FnOnce(V) -> Result<T, E>,
) -> rusqlite::Result<Option<T>>
where
    V: rusqlite::types::FromSql,
    E: std::fmt::Display,
{
    match row.get::<_, Option<V>>(index)? {
        Some(value) => f(value).map(Some).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                e.to_string().into(),
            )
        }),
        None => Ok(None),
    }
}
