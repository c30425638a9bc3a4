//! Read-only views for the kiosk API and the dashboard: rentals with corrected times and
//! overdue status, posts, and summary counts.

use cartwise_schema::{
    ClockReading, DeviceId, Hlc, Phone, PostStatus, RentalStatus, Stamp, WallMillis,
};
use serde_json::{Value, json};

use super::Engine;
use crate::ledger::{self, PostRow, RentalRow};
use crate::store::StoreError;
use crate::timekeeping::Timeline;

/// Which rentals to list.
#[derive(Debug, Clone)]
pub enum RentalFilter {
    /// Open rentals (unlocking or active).
    Active,
    /// Active rentals past their rental time.
    Overdue,
    /// Every rental, newest first.
    History { limit: i64, offset: i64 },
    /// One phone's rentals, newest first.
    Phone { phone: Phone, limit: i64 },
}

/// A rental with its times corrected and its overdue state derived.
#[derive(Debug, Clone)]
pub struct RentalView {
    pub row: RentalRow,
    pub start: WallMillis,
    pub expected_return: WallMillis,
    pub end: Option<WallMillis>,
    pub duration_minutes: Option<i64>,
    pub overdue: bool,
}

/// Summary counts of the station.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub total_carts: usize,
    pub available_carts: usize,
    pub active_rentals: usize,
    pub overdue_rentals: usize,
    pub rentals_today: usize,
    pub returns_today: usize,
    pub average_duration_minutes: Option<i64>,
}

/// The view of a rental at `now`.
pub fn view(rental: &RentalRow, timeline: &Timeline, now: &Stamp) -> RentalView {
    let allowed_ms = i64::from(rental.rental_minutes) * 60_000;
    let start = timeline.corrected(&rental.start);
    let end = rental.end.as_ref().map(|e| timeline.corrected(e));
    let elapsed = match &rental.end {
        Some(end) => timeline.elapsed_ms(&rental.start, end),
        None => timeline.elapsed_ms(&rental.start, now),
    };
    RentalView {
        row: rental.clone(),
        start,
        expected_return: start.saturating_add_ms(allowed_ms),
        end,
        duration_minutes: rental.end.as_ref().map(|_| elapsed.max(0) / 60_000),
        overdue: rental.status.is_overdue(elapsed, allowed_ms),
    }
}

/// RFC 3339 UTC text of a wall time.
pub fn iso(wall: WallMillis) -> String {
    chrono::DateTime::from_timestamp_millis(wall.get())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The rental as the ledger and the hub keep it (full phone, corrected times).
pub fn rental_json(rental: &RentalRow, timeline: &Timeline, device: DeviceId) -> Value {
    let end = rental.end.unwrap_or(rental.start);
    let v = view(rental, timeline, &end);
    json!({
        "id": rental.id.to_string(),
        "device_id": device.to_string(),
        "cart_id": rental.post.get(),
        "user_phone": rental.phone.as_e164(),
        "status": rental.status.as_str(),
        "start_time": iso(v.start),
        "expected_return": iso(v.expected_return),
        "actual_return": v.end.map(iso),
        "duration_minutes": v.duration_minutes,
        "return_cart_id": rental.return_post.map(|p| p.get()),
        "note": rental.note,
    })
}

fn now_stamp(reading: ClockReading) -> Stamp {
    Stamp {
        wall: reading.wall,
        boot: reading.boot,
        mono: reading.mono,
        hlc: Hlc::zero(0),
    }
}

impl Engine {
    /// Every post with its derived status.
    pub async fn posts(&self) -> Result<Vec<PostRow>, StoreError> {
        self.store.read(|conn, _| ledger::posts(conn)).await
    }

    /// Rentals matching `filter`.
    pub async fn rentals(&self, filter: RentalFilter) -> Result<Vec<RentalView>, StoreError> {
        let now = now_stamp(self.clock.read());
        self.store
            .read(move |conn, state| {
                let rows = match &filter {
                    RentalFilter::Active | RentalFilter::Overdue => ledger::rentals_where(
                        conn,
                        "status IN ('unlocking', 'active')",
                        &[],
                        10_000,
                        0,
                    )?,
                    RentalFilter::History { limit, offset } => {
                        ledger::rentals_where(conn, "1 = 1", &[], *limit, *offset)?
                    }
                    RentalFilter::Phone { phone, limit } => {
                        ledger::rentals_where(conn, "phone = ?1", &[&phone.as_e164()], *limit, 0)?
                    }
                };
                let views = rows.iter().map(|r| view(r, &state.timeline, &now));
                Ok(match filter {
                    RentalFilter::Overdue => views.filter(|v| v.overdue).collect(),
                    _ => views.collect(),
                })
            })
            .await
    }

    /// Summary counts; "today" is the last 24 hours of corrected time.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let now = now_stamp(self.clock.read());
        self.store
            .read(move |conn, state| {
                let posts = ledger::posts(conn)?;
                let recent = ledger::rentals_where(conn, "1 = 1", &[], 5_000, 0)?;
                let now_wall = state.timeline.corrected(&now);
                let day_ago = now_wall.saturating_add_ms(-86_400_000);
                let views: Vec<RentalView> = recent
                    .iter()
                    .map(|r| view(r, &state.timeline, &now))
                    .collect();
                let returned: Vec<&RentalView> = views
                    .iter()
                    .filter(|v| v.row.status.is_returned() && v.end.is_some_and(|e| e >= day_ago))
                    .collect();
                let durations: Vec<i64> =
                    returned.iter().filter_map(|v| v.duration_minutes).collect();
                Ok(Stats {
                    total_carts: posts.len(),
                    available_carts: posts
                        .iter()
                        .filter(|p| p.status() == PostStatus::Available)
                        .count(),
                    active_rentals: views
                        .iter()
                        .filter(|v| v.row.status == RentalStatus::Active)
                        .count(),
                    overdue_rentals: views.iter().filter(|v| v.overdue).count(),
                    rentals_today: views
                        .iter()
                        .filter(|v| {
                            v.start >= day_ago && v.row.status != RentalStatus::FailedUnlock
                        })
                        .count(),
                    returns_today: returned.len(),
                    average_duration_minutes: (!durations.is_empty())
                        .then(|| durations.iter().sum::<i64>() / durations.len() as i64),
                })
            })
            .await
    }

    /// Anomalies recorded here, newest first.
    pub async fn anomalies(&self, limit: i64) -> Result<Vec<Value>, StoreError> {
        self.store
            .read(move |conn, state| {
                let mut stmt = conn.prepare_cached(
                    "SELECT data, rental_id, post, wall_ms, boot, mono_ms, hlc FROM events
                     WHERE kind = 'anomaly' ORDER BY seq DESC LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, String>(6)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (data, rental, post, wall, boot, mono, hlc) = row?;
                    let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    let at = cartwise_schema::BootId::parse(&boot).ok().and_then(|boot| {
                        Some(Stamp {
                            wall: WallMillis::new(wall),
                            boot,
                            mono: cartwise_schema::MonoMillis::new(u64::try_from(mono).ok()?),
                            hlc: hlc.parse().ok()?,
                        })
                    });
                    out.push(json!({
                        "kind": data["anomaly"],
                        "detail": data["detail"],
                        "cart_id": post,
                        "rental_id": rental,
                        "at": at.map(|s| iso(state.timeline.corrected(&s))),
                    }));
                }
                Ok(out)
            })
            .await
    }

    /// What `/health` shows, cheaply (kiosks poll it): posts, available posts, active rentals.
    pub async fn health_counts(&self) -> Result<(usize, usize, usize), StoreError> {
        self.store
            .read(|conn, _| {
                let posts = ledger::posts(conn)?;
                let available = posts
                    .iter()
                    .filter(|p| p.status() == PostStatus::Available)
                    .count();
                let active: i64 = conn.query_row(
                    "SELECT count(*) FROM rentals WHERE status = 'active'",
                    [],
                    |r| r.get(0),
                )?;
                Ok((posts.len(), available, usize::try_from(active).unwrap_or(0)))
            })
            .await
    }

    /// The best known true time now.
    pub async fn corrected_now(&self) -> Result<WallMillis, StoreError> {
        let reading = self.clock.read();
        self.store
            .read(move |_, state| Ok(state.timeline.corrected_reading(&reading)))
            .await
    }
}
