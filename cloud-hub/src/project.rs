//! Projects a device's facts (its live document, read with `cartwise_sync_core::facts`) into
//! the seed tables: carts (the device's posts), rentals (upserted by id), anomalies.
//!
//! Idempotent: every write is an upsert that changes nothing when the row already says the
//! same, so replaying the same document (or the same sync session) leaves the same rows.
//! Rentals leave a device's document once the hub holds them; the projection never deletes.
//!
//! Architecture Invariant: a device's facts are projected only into its own branch, and only
//! onto posts the world gives that branch; the caller has checked that the document is the
//! device's own (authority), this module checks that what it says stays inside its branch.

use std::collections::BTreeSet;

use cartwise_schema::{BranchId, DeviceId, RentalId};
use cartwise_sync_core::facts::DeviceFacts;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// What one projection wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Projected {
    /// Carts whose row changed.
    pub carts_changed: u64,
    /// Rentals inserted or changed.
    pub rentals_changed: u64,
    /// Closed rentals the hub now holds durably (to acknowledge to the device).
    pub closed_held: Vec<RentalId>,
    /// Entries refused (a post or rental outside the device's branch), with the reason.
    pub refused: Vec<String>,
}

/// Why a projection failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// The document names another device or branch than the connection's identity.
    #[error(
        "the document of device {claimed:?} in branch {branch:?} is not device {device}'s in branch {expected}"
    )]
    Authority {
        device: DeviceId,
        claimed: Option<DeviceId>,
        branch: Option<BranchId>,
        expected: BranchId,
    },
    /// Postgres failed; nothing was written.
    #[error("projection failed: {0}")]
    Db(#[from] sqlx::Error),
}

fn at(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// Projects `facts` of `device` (whose identity says it belongs to `branch`) in one
/// transaction.
pub async fn project_device(
    pool: &PgPool,
    device: DeviceId,
    branch: BranchId,
    facts: &DeviceFacts,
) -> Result<Projected, ProjectError> {
    if facts.device != Some(device) || facts.branch != Some(branch) {
        return Err(ProjectError::Authority {
            device,
            claimed: facts.device,
            branch: facts.branch,
            expected: branch,
        });
    }
    let branch_id: Uuid = *branch.as_uuid();
    let device_id: Uuid = *device.as_uuid();
    let mut out = Projected::default();
    let mut tx = pool.begin().await?;
    let known: BTreeSet<i32> =
        sqlx::query_scalar("SELECT cart_number FROM carts WHERE branch_id = $1")
            .bind(branch_id)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    for post in &facts.posts {
        if !known.contains(&i32::from(post.post)) {
            out.refused
                .push(format!("post {} is not a post of this branch", post.post));
            continue;
        }
        let changed = sqlx::query(
            "UPDATE carts SET status = $3, is_locked = $4, maintenance_notes = $5, updated_at = now()
             WHERE branch_id = $1 AND cart_number = $2
               AND (status, is_locked, maintenance_notes) IS DISTINCT FROM ($3, $4, $5)",
        )
        .bind(branch_id)
        .bind(i32::from(post.post))
        .bind(&post.status)
        .bind(post.hook == "latched")
        .bind(&post.fault)
        .execute(&mut *tx)
        .await?;
        out.carts_changed += changed.rows_affected();
    }
    for rental in &facts.rentals {
        if !known.contains(&i32::from(rental.post)) {
            out.refused.push(format!(
                "rental {} names post {} outside this branch",
                rental.id, rental.post
            ));
            continue;
        }
        let end = rental.end_at.and_then(at);
        let duration = rental.end_at.map(|e| (e - rental.start_at).max(0) / 60_000);
        let changed = sqlx::query(
            "INSERT INTO rentals (id, cart_id, branch_id, device_id, user_phone, start_time,
                                  expected_return, actual_return, status, duration_minutes, notes,
                                  return_cart_id, time_trusted)
             SELECT $1, c.id, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                    (SELECT r.id FROM carts r WHERE r.branch_id = $2 AND r.cart_number = $12), $13
             FROM carts c WHERE c.branch_id = $2 AND c.cart_number = $11
             ON CONFLICT (id) DO UPDATE SET
                 start_time = EXCLUDED.start_time, expected_return = EXCLUDED.expected_return,
                 actual_return = EXCLUDED.actual_return, status = EXCLUDED.status,
                 duration_minutes = EXCLUDED.duration_minutes, notes = EXCLUDED.notes,
                 return_cart_id = EXCLUDED.return_cart_id, time_trusted = EXCLUDED.time_trusted,
                 updated_at = now()
             WHERE rentals.branch_id = EXCLUDED.branch_id
               AND (rentals.start_time, rentals.expected_return, rentals.actual_return,
                    rentals.status, rentals.duration_minutes, rentals.notes,
                    rentals.return_cart_id, rentals.time_trusted)
               IS DISTINCT FROM
                   (EXCLUDED.start_time, EXCLUDED.expected_return, EXCLUDED.actual_return,
                    EXCLUDED.status, EXCLUDED.duration_minutes, EXCLUDED.notes,
                    EXCLUDED.return_cart_id, EXCLUDED.time_trusted)",
        )
        .bind(*rental.id.as_uuid())
        .bind(branch_id)
        .bind(device_id)
        .bind(&rental.phone)
        .bind(at(rental.start_at))
        .bind(at(rental.expected_at))
        .bind(end)
        .bind(rental.status.as_str())
        .bind(duration.and_then(|d| i32::try_from(d).ok()))
        .bind(&rental.note)
        .bind(i32::from(rental.post))
        .bind(rental.return_post.map(i32::from))
        .bind(rental.time_trusted)
        .execute(&mut *tx)
        .await?;
        out.rentals_changed += changed.rows_affected();
        if !rental.status.is_open() {
            out.closed_held.push(rental.id);
        }
    }
    for anomaly in &facts.anomalies {
        sqlx::query(
            "INSERT INTO anomalies (device_id, anomaly_key, branch_id, kind, cart_number, rental_id, detail, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (device_id, anomaly_key) DO NOTHING",
        )
        .bind(device_id)
        .bind(&anomaly.key)
        .bind(branch_id)
        .bind(&anomaly.kind)
        .bind(anomaly.post.map(i32::from))
        .bind(anomaly.rental.as_deref().and_then(|r| Uuid::parse_str(r).ok()))
        .bind(&anomaly.detail)
        .bind(at(anomaly.wall).unwrap_or_else(Utc::now))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(out)
}
