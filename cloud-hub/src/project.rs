//! Projects a device's facts (its live document, read with `cartwise_sync_core::facts`) into
//! the seed tables: carts (the device's posts), rentals (upserted by id), anomalies, and
//! returns docked here of rentals started at another device of the branch (`rental_returns`).
//!
//! Incremental: the merge path passes the facts it projected last time ([`project_changes`]),
//! and only entries that differ are written. Idempotent: every write is an upsert that changes
//! nothing when the row already says the same, so replaying the same document (or the same
//! sync session) leaves the same rows. Rentals leave a device's document once the hub holds
//! them; the projection never deletes.
//!
//! Monotonic: a rental row never goes back (`unlocking` < `active` < closed), and times backed
//! by a trusted clock are never replaced by untrusted ones of the same stage, so an older
//! document state arriving late (an old epoch, a replay) cannot undo what a newer one said.
//! A return recorded by another device closes the rental only while its row is open (the
//! first close wins); recorded before the rental's own row arrives, it waits in
//! `rental_returns` and closes the row when it does.
//!
//! Architecture Invariant: a device's facts are projected only into its own branch, and only
//! onto posts the world gives that branch; the caller has checked that the document is the
//! device's own (authority), this module checks that what it says stays inside its branch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cartwise_schema::{AnomalyKind, BranchId, DeviceId, RentalId, RentalStatus};
use cartwise_sync_core::facts::DeviceFacts;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
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

/// Projects all of `facts` of `device` (whose identity says it belongs to `branch`) in one
/// transaction.
pub async fn project_device(
    pool: &PgPool,
    device: DeviceId,
    branch: BranchId,
    facts: &DeviceFacts,
) -> Result<Projected, ProjectError> {
    let mut tx = pool.begin().await?;
    let out = project_changes(&mut tx, device, branch, None, facts).await?;
    tx.commit().await?;
    Ok(out)
}

/// Projects what changed between `previous` (the facts projected last, none: everything) and
/// `facts`, inside the caller's transaction.
pub async fn project_changes(
    conn: &mut PgConnection,
    device: DeviceId,
    branch: BranchId,
    previous: Option<&DeviceFacts>,
    facts: &DeviceFacts,
) -> Result<Projected, ProjectError> {
    let input = Input {
        device,
        branch,
        previous,
        facts,
    };
    project_batch(conn, &[input])
        .await?
        .pop()
        .unwrap_or_else(|| Ok(Projected::default()))
}

/// One device document's share of a batch projection.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The device whose document this is (its identity).
    pub device: DeviceId,
    /// The device's branch (its identity).
    pub branch: BranchId,
    /// The facts projected last from this document (none: project everything).
    pub previous: Option<&'a DeviceFacts>,
    /// The document's facts now.
    pub facts: &'a DeviceFacts,
}

/// Projects several device documents' changes inside the caller's transaction, one statement
/// per kind for the whole batch (the branch's posts, cart updates, rental upserts, closes from
/// recorded returns, anomalies) rather than one per document or per row; returns are rare and
/// checked one by one. The answer has one entry per input, in order: an input naming another
/// device or branch is refused alone; a database error fails the whole batch (the caller rolls
/// back).
pub async fn project_batch(
    conn: &mut PgConnection,
    inputs: &[Input<'_>],
) -> Result<Vec<Result<Projected, ProjectError>>, ProjectError> {
    let mut answers: Vec<Result<Projected, ProjectError>> = Vec::with_capacity(inputs.len());
    let mut deltas: Vec<Option<DeviceFacts>> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let Input {
            device,
            branch,
            previous,
            facts,
        } = *input;
        if facts.device != Some(device) || facts.branch != Some(branch) {
            answers.push(Err(ProjectError::Authority {
                device,
                claimed: facts.device,
                branch: facts.branch,
                expected: branch,
            }));
            deltas.push(None);
            continue;
        }
        let delta = match previous {
            Some(previous) => changed(previous, facts),
            None => facts.clone(),
        };
        crate::tech_audit::record_log(conn, device, branch, &delta.technician_log).await?;
        let empty = delta.posts.is_empty()
            && delta.rentals.is_empty()
            && delta.anomalies.is_empty()
            && delta.returns.is_empty()
            && delta.outcomes.is_empty();
        answers.push(Ok(Projected::default()));
        deltas.push((!empty).then_some(delta));
    }
    let busy: Vec<usize> = (0..inputs.len()).filter(|&i| deltas[i].is_some()).collect();
    if busy.is_empty() {
        return Ok(answers);
    }
    let mut branches: Vec<Uuid> = busy.iter().map(|&i| *inputs[i].branch.as_uuid()).collect();
    branches.sort_unstable();
    branches.dedup();
    let mut known: HashMap<Uuid, BTreeSet<i32>> = HashMap::new();
    let rows: Vec<(Uuid, i32)> =
        sqlx::query_as("SELECT branch_id, cart_number FROM carts WHERE branch_id = ANY($1)")
            .bind(&branches)
            .fetch_all(&mut *conn)
            .await?;
    for (branch, number) in rows {
        known.entry(branch).or_default().insert(number);
    }
    let empty_set = BTreeSet::new();
    let scopes: Vec<Scope<'_>> = inputs
        .iter()
        .map(|input| Scope {
            branch: *input.branch.as_uuid(),
            device: *input.device.as_uuid(),
            known: known.get(input.branch.as_uuid()).unwrap_or(&empty_set),
        })
        .collect();
    let mut outs: Vec<Projected> = vec![Projected::default(); inputs.len()];
    project_posts(conn, &scopes, &deltas, &mut outs).await?;
    project_rentals(conn, &scopes, &deltas, &mut outs).await?;
    project_anomalies(conn, &scopes, &deltas).await?;
    for &i in &busy {
        if let Some(delta) = &deltas[i] {
            project_returns(conn, &scopes[i], delta, &mut outs[i]).await?;
            crate::intents::project_outcomes_in(conn, inputs[i].device, &delta.outcomes).await?;
        }
    }
    mark_folded(conn, &scopes, &deltas).await?;
    for (answer, out) in answers.iter_mut().zip(outs) {
        if let Ok(projected) = answer {
            *projected = out;
        }
    }
    Ok(answers)
}

/// Whether projecting `input` records returns it has not projected before: the one step of a
/// projection that reaches another device's rows (the rental a return closes), for which the
/// merge path takes its branch's lock exclusively.
pub fn has_new_returns(input: &Input<'_>) -> bool {
    match input.previous {
        None => !input.facts.returns.is_empty(),
        Some(previous) => input
            .facts
            .returns
            .iter()
            .any(|ret| !previous.returns.contains(ret)),
    }
}

/// The entries of `facts` that are new or differ from `previous` (same device and branch).
pub fn changed(previous: &DeviceFacts, facts: &DeviceFacts) -> DeviceFacts {
    fn fresh<T: PartialEq + Clone, K: Ord>(old: &[T], new: &[T], key: impl Fn(&T) -> K) -> Vec<T> {
        let old: BTreeMap<K, &T> = old.iter().map(|t| (key(t), t)).collect();
        new.iter()
            .filter(|t| old.get(&key(t)) != Some(t))
            .cloned()
            .collect()
    }
    DeviceFacts {
        schema: facts.schema,
        device: facts.device,
        branch: facts.branch,
        posts: fresh(&previous.posts, &facts.posts, |p| p.post),
        rentals: fresh(&previous.rentals, &facts.rentals, |r| r.id),
        anomalies: fresh(&previous.anomalies, &facts.anomalies, |a| a.key.clone()),
        outcomes: fresh(&previous.outcomes, &facts.outcomes, |o| o.intent),
        returns: fresh(&previous.returns, &facts.returns, |r| r.rental),
        technician_log: fresh(&previous.technician_log, &facts.technician_log, |t| {
            t.id.clone()
        }),
        skipped: Vec::new(),
    }
}

/// The device and branch being projected, and the branch's post numbers.
struct Scope<'a> {
    branch: Uuid,
    device: Uuid,
    known: &'a BTreeSet<i32>,
}

/// A post's projected columns: (input index, status, locked, fault).
type PostRow<'a> = (i32, &'a str, bool, Option<&'a str>);

/// All changed posts of the batch in one `UPDATE … FROM UNNEST`; a cart named twice (two
/// epochs of one device) takes the last document's value.
async fn project_posts(
    conn: &mut PgConnection,
    scopes: &[Scope<'_>],
    deltas: &[Option<DeviceFacts>],
    outs: &mut [Projected],
) -> Result<(), ProjectError> {
    let mut rows: HashMap<(Uuid, i32), PostRow<'_>> = HashMap::new();
    for (i, (scope, delta)) in scopes.iter().zip(deltas).enumerate() {
        let Some(delta) = delta else { continue };
        for post in &delta.posts {
            let number = i32::from(post.post);
            if !scope.known.contains(&number) {
                outs[i]
                    .refused
                    .push(format!("post {} is not a post of this branch", post.post));
                continue;
            }
            let index = i32::try_from(i).unwrap_or(i32::MAX);
            rows.insert(
                (scope.branch, number),
                (
                    index,
                    post.status.as_str(),
                    post.hook == "latched",
                    post.fault.as_deref(),
                ),
            );
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let mut index = Vec::with_capacity(rows.len());
    let mut branch = Vec::with_capacity(rows.len());
    let mut number = Vec::with_capacity(rows.len());
    let mut status = Vec::with_capacity(rows.len());
    let mut locked = Vec::with_capacity(rows.len());
    let mut fault = Vec::with_capacity(rows.len());
    for ((b, n), (i, s, l, f)) in rows {
        index.push(i);
        branch.push(b);
        number.push(n);
        status.push(s);
        locked.push(l);
        fault.push(f);
    }
    let changed: Vec<i32> = sqlx::query_scalar(
        "UPDATE carts c SET status = t.status, is_locked = t.locked, maintenance_notes = t.fault,
                updated_at = now()
         FROM UNNEST($1::int[], $2::uuid[], $3::int[], $4::text[], $5::bool[], $6::text[])
              AS t(i, branch, number, status, locked, fault)
         WHERE c.branch_id = t.branch AND c.cart_number = t.number
           AND (c.status, c.is_locked, c.maintenance_notes)
               IS DISTINCT FROM (t.status, t.locked, t.fault)
         RETURNING t.i",
    )
    .bind(&index)
    .bind(&branch)
    .bind(&number)
    .bind(&status)
    .bind(&locked)
    .bind(&fault)
    .fetch_all(&mut *conn)
    .await?;
    for i in changed {
        if let Some(out) = usize::try_from(i).ok().and_then(|i| outs.get_mut(i)) {
            out.carts_changed += 1;
        }
    }
    Ok(())
}

/// The stage of a rental status in SQL: 0 unlocking, 1 active, 2 closed. A row never moves
/// to a lower stage.
const STAGE_OLD: &str =
    "(CASE rentals.status WHEN 'unlocking' THEN 0 WHEN 'active' THEN 1 ELSE 2 END)";
const STAGE_NEW: &str =
    "(CASE EXCLUDED.status WHEN 'unlocking' THEN 0 WHEN 'active' THEN 1 ELSE 2 END)";

/// All changed rentals of the batch: one upsert per round (a rental id named by two
/// documents of the batch — two epochs of one device — goes in a later round, as one statement
/// may not change a row twice), then one close from recorded returns.
async fn project_rentals(
    conn: &mut PgConnection,
    scopes: &[Scope<'_>],
    deltas: &[Option<DeviceFacts>],
    outs: &mut [Projected],
) -> Result<(), ProjectError> {
    // One statement for the batch's changed rentals (arrays unnested), not one per row.
    let upsert = format!(
        "INSERT INTO rentals (id, cart_id, branch_id, device_id, user_phone, start_time,
                              expected_return, actual_return, status, duration_minutes, notes,
                              return_cart_id, time_trusted)
         SELECT t.id, c.id, t.branch, t.device, t.phone, t.start_time, t.expected, t.actual,
                t.status, t.duration, t.notes, r.id, t.trusted
         FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[],
                     $6::timestamptz[], $7::timestamptz[], $8::text[], $9::int[], $10::text[],
                     $11::int[], $12::int[], $13::bool[])
              AS t(id, branch, device, phone, start_time, expected, actual, status, duration,
                   notes, post, return_post, trusted)
         JOIN carts c ON c.branch_id = t.branch AND c.cart_number = t.post
         LEFT JOIN carts r ON r.branch_id = t.branch AND r.cart_number = t.return_post
         ON CONFLICT (id) DO UPDATE SET
             start_time = EXCLUDED.start_time, expected_return = EXCLUDED.expected_return,
             actual_return = EXCLUDED.actual_return, status = EXCLUDED.status,
             duration_minutes = EXCLUDED.duration_minutes, notes = EXCLUDED.notes,
             return_cart_id = EXCLUDED.return_cart_id, time_trusted = EXCLUDED.time_trusted,
             updated_at = now()
         WHERE rentals.branch_id = EXCLUDED.branch_id
           AND rentals.device_id = EXCLUDED.device_id
           AND {STAGE_OLD} <= {STAGE_NEW}
           AND ({STAGE_OLD} < {STAGE_NEW} OR EXCLUDED.time_trusted OR NOT rentals.time_trusted)
           AND (rentals.start_time, rentals.expected_return, rentals.actual_return,
                rentals.status, rentals.duration_minutes, rentals.notes,
                rentals.return_cart_id, rentals.time_trusted)
           IS DISTINCT FROM
               (EXCLUDED.start_time, EXCLUDED.expected_return, EXCLUDED.actual_return,
                EXCLUDED.status, EXCLUDED.duration_minutes, EXCLUDED.notes,
                EXCLUDED.return_cart_id, EXCLUDED.time_trusted)
         RETURNING id"
    );
    let mut rounds: Vec<RentalRows> = Vec::new();
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let mut owner: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, (scope, delta)) in scopes.iter().zip(deltas).enumerate() {
        let Some(delta) = delta else { continue };
        for rental in &delta.rentals {
            if !scope.known.contains(&i32::from(rental.post)) {
                outs[i].refused.push(format!(
                    "rental {} names post {} outside this branch",
                    rental.id, rental.post
                ));
                continue;
            }
            let id = *rental.id.as_uuid();
            let round = seen.entry(id).or_insert(0);
            if rounds.len() <= *round {
                rounds.push(RentalRows::default());
            }
            rounds[*round].push(scope, rental);
            *round += 1;
            owner.entry(id).or_default().push(i);
            if !rental.status.is_open() {
                outs[i].closed_held.push(rental.id);
            }
        }
    }
    if owner.is_empty() {
        return Ok(());
    }
    let count = |ids: Vec<Uuid>, outs: &mut [Projected]| {
        for id in ids {
            // Counted once, for the last document of the batch that named the rental.
            if let Some(&i) = owner.get(&id).and_then(|o| o.last()) {
                outs[i].rentals_changed += 1;
            }
        }
    };
    for rows in &rounds {
        let changed: Vec<Uuid> = sqlx::query_scalar(&upsert)
            .bind(&rows.id)
            .bind(&rows.branch)
            .bind(&rows.device)
            .bind(&rows.phone)
            .bind(&rows.start)
            .bind(&rows.expected)
            .bind(&rows.end)
            .bind(&rows.status)
            .bind(&rows.duration)
            .bind(&rows.note)
            .bind(&rows.post)
            .bind(&rows.return_post)
            .bind(&rows.trusted)
            .fetch_all(&mut *conn)
            .await?;
        count(changed, outs);
    }
    // Returns recorded elsewhere before these rows arrived (or while they were open).
    let ids: Vec<Uuid> = owner.keys().copied().collect();
    count(close_from_returns(conn, &ids).await?, outs);
    Ok(())
}

/// Marks the recorded returns of rentals whose origin's own document, in this batch, shows
/// them closed (`rental_returns.folded`): the returning device may then forget them. Where
/// the origin closed the rental otherwise than by folding that return (its own dock, or a
/// status that is no return), the two conflict; the origin will never see the forgotten
/// return, so the hub records the `conflicting_return` for the returning device.
async fn mark_folded(
    conn: &mut PgConnection,
    scopes: &[Scope<'_>],
    deltas: &[Option<DeviceFacts>],
) -> Result<(), sqlx::Error> {
    let mut device = Vec::new();
    let mut rental = Vec::new();
    let mut otherwise = Vec::new();
    for (scope, delta) in scopes.iter().zip(deltas) {
        for r in delta.iter().flat_map(|d| d.rentals.iter()) {
            if !r.status.is_open() {
                device.push(scope.device);
                rental.push(*r.id.as_uuid());
                otherwise.push(
                    r.return_post.is_some()
                        || !matches!(
                            r.status,
                            RentalStatus::Returned | RentalStatus::ReturnedLate
                        ),
                );
            }
        }
    }
    if rental.is_empty() {
        return Ok(());
    }
    // (origin closed otherwise, rental, returning device, branch, end, return post)
    type Folded = (bool, Uuid, Uuid, Uuid, DateTime<Utc>, Option<i32>);
    let folded: Vec<Folded> = sqlx::query_as(
        "UPDATE rental_returns x SET folded = true
         FROM UNNEST($1::uuid[], $2::uuid[], $3::bool[]) AS t(device, rental, otherwise)
         WHERE x.rental_id = t.rental AND x.origin_device_id = t.device AND NOT x.folded
         RETURNING t.otherwise, x.rental_id, x.device_id, x.branch_id, x.end_at,
                   (SELECT c.cart_number FROM carts c WHERE c.id = x.return_cart_id)",
    )
    .bind(&device)
    .bind(&rental)
    .bind(&otherwise)
    .fetch_all(&mut *conn)
    .await?;
    let none = BTreeSet::new();
    for (_, rental, device, branch, end, post) in folded.into_iter().filter(|f| f.0) {
        let scope = Scope {
            branch,
            device,
            known: &none,
        };
        let detail = format!(
            "rental {rental} was closed at its origin otherwise; this return at post {} was not applied",
            post.map_or_else(|| "?".to_owned(), |p| p.to_string())
        );
        conflicting_return(conn, &scope, rental, post, &detail, end).await?;
    }
    Ok(())
}

/// Rental facts as columns, for one `UNNEST` upsert.
#[derive(Default)]
struct RentalRows {
    id: Vec<Uuid>,
    branch: Vec<Uuid>,
    device: Vec<Uuid>,
    phone: Vec<String>,
    start: Vec<Option<DateTime<Utc>>>,
    expected: Vec<Option<DateTime<Utc>>>,
    end: Vec<Option<DateTime<Utc>>>,
    status: Vec<&'static str>,
    duration: Vec<Option<i32>>,
    note: Vec<Option<String>>,
    post: Vec<i32>,
    return_post: Vec<Option<i32>>,
    trusted: Vec<bool>,
}

impl RentalRows {
    fn push(&mut self, scope: &Scope<'_>, rental: &cartwise_sync_core::facts::RentalFact) {
        let duration = rental.end_at.map(|e| (e - rental.start_at).max(0) / 60_000);
        self.id.push(*rental.id.as_uuid());
        self.branch.push(scope.branch);
        self.device.push(scope.device);
        self.phone.push(rental.phone.clone());
        self.start.push(at(rental.start_at));
        self.expected.push(at(rental.expected_at));
        self.end.push(rental.end_at.and_then(at));
        self.status.push(rental.status.as_str());
        self.duration
            .push(duration.and_then(|d| i32::try_from(d).ok()));
        self.note.push(rental.note.clone());
        self.post.push(i32::from(rental.post));
        self.return_post.push(rental.return_post.map(i32::from));
        self.trusted.push(rental.time_trusted);
    }
}

/// Closes the open rentals among `rentals` that have a recorded return; returns their ids.
///
/// Returns recorded at another device are rare, so the recorded ones are looked up first in
/// `rental_returns` alone and the update runs only for them: `rentals` is the hub's largest
/// table, and a plan cached while it was small scans it whole on every pass.
async fn close_from_returns(
    conn: &mut PgConnection,
    rentals: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let recorded: Vec<Uuid> =
        sqlx::query_scalar("SELECT rental_id FROM rental_returns WHERE rental_id = ANY($1)")
            .bind(rentals)
            .fetch_all(&mut *conn)
            .await?;
    if recorded.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE rentals r SET status = x.status, actual_return = x.end_at,
             duration_minutes = GREATEST(0, floor(extract(epoch FROM x.end_at - r.start_time) / 60))::int,
             return_cart_id = x.return_cart_id, time_trusted = x.time_trusted AND r.time_trusted,
             updated_at = now()
         FROM rental_returns x
         WHERE x.rental_id = r.id AND r.id = ANY($1) AND x.branch_id = r.branch_id
           AND x.origin_device_id = r.device_id AND r.status IN ('unlocking', 'active')
         RETURNING r.id",
    )
    .bind(&recorded)
    .fetch_all(&mut *conn)
    .await
}

/// All new anomalies of the batch in one insert (an anomaly is kept once per device and key).
async fn project_anomalies(
    conn: &mut PgConnection,
    scopes: &[Scope<'_>],
    deltas: &[Option<DeviceFacts>],
) -> Result<(), ProjectError> {
    let mut device = Vec::new();
    let mut key = Vec::new();
    let mut branch = Vec::new();
    let mut kind = Vec::new();
    let mut post = Vec::new();
    let mut rental = Vec::new();
    let mut detail = Vec::new();
    let mut wall = Vec::new();
    for (scope, delta) in scopes.iter().zip(deltas) {
        for anomaly in delta.iter().flat_map(|d| d.anomalies.iter()) {
            device.push(scope.device);
            key.push(anomaly.key.as_str());
            branch.push(scope.branch);
            kind.push(anomaly.kind.as_str());
            post.push(anomaly.post.map(i32::from));
            rental.push(
                anomaly
                    .rental
                    .as_deref()
                    .and_then(|r| Uuid::parse_str(r).ok()),
            );
            detail.push(anomaly.detail.as_str());
            wall.push(at(anomaly.wall).unwrap_or_else(Utc::now));
        }
    }
    if device.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO anomalies (device_id, anomaly_key, branch_id, kind, cart_number, rental_id, detail, at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::int[],
                              $6::uuid[], $7::text[], $8::timestamptz[])
         ON CONFLICT (device_id, anomaly_key) DO NOTHING",
    )
    .bind(&device)
    .bind(&key)
    .bind(&branch)
    .bind(&kind)
    .bind(&post)
    .bind(&rental)
    .bind(&detail)
    .bind(&wall)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn insert_anomaly(
    conn: &mut PgConnection,
    scope: &Scope<'_>,
    key: &str,
    kind: &str,
    post: Option<i32>,
    rental: Option<Uuid>,
    detail: &str,
    wall: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO anomalies (device_id, anomaly_key, branch_id, kind, cart_number, rental_id, detail, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (device_id, anomaly_key) DO NOTHING",
    )
    .bind(scope.device)
    .bind(key)
    .bind(scope.branch)
    .bind(kind)
    .bind(post)
    .bind(rental)
    .bind(detail)
    .bind(wall)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records a `conflicting_return` of `rental` for the returning device of `scope` (once per
/// device and rental: the key is `return/<rental>`).
async fn conflicting_return(
    conn: &mut PgConnection,
    scope: &Scope<'_>,
    rental: Uuid,
    post: Option<i32>,
    detail: &str,
    end: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let key = format!("return/{rental}");
    let kind = AnomalyKind::ConflictingReturn.as_str();
    insert_anomaly(conn, scope, &key, kind, post, Some(rental), detail, end).await
}

/// Returns docked at this device of rentals started at another device of the branch: the
/// first return recorded for a rental is kept and closes the rental's row if it is open. A
/// second return of the same rental, or a return of a rental its origin closed otherwise, is
/// an anomaly; a return naming a device of another branch is refused.
async fn project_returns(
    conn: &mut PgConnection,
    scope: &Scope<'_>,
    facts: &DeviceFacts,
    out: &mut Projected,
) -> Result<(), ProjectError> {
    for ret in &facts.returns {
        if !scope.known.contains(&i32::from(ret.post)) {
            out.refused.push(format!(
                "return of rental {} names post {} outside this branch",
                ret.rental, ret.post
            ));
            continue;
        }
        let origin_branch: Option<Uuid> =
            sqlx::query_scalar("SELECT branch_id FROM devices WHERE id = $1")
                .bind(*ret.origin.as_uuid())
                .fetch_optional(&mut *conn)
                .await?;
        if origin_branch != Some(scope.branch) {
            out.refused.push(format!(
                "return of rental {} started at device {} outside this branch",
                ret.rental, ret.origin
            ));
            continue;
        }
        let rental = *ret.rental.as_uuid();
        let Some(end) = at(ret.end_at) else {
            out.refused.push(format!(
                "return of rental {} has no valid end time",
                ret.rental
            ));
            continue;
        };
        let inserted = sqlx::query(
            "INSERT INTO rental_returns (rental_id, branch_id, device_id, origin_device_id,
                                         return_cart_id, status, end_at, time_trusted)
             SELECT $1, $2, $3, $4,
                    (SELECT c.id FROM carts c WHERE c.branch_id = $2 AND c.cart_number = $5),
                    $6, $7, $8
             ON CONFLICT (rental_id) DO NOTHING",
        )
        .bind(rental)
        .bind(scope.branch)
        .bind(scope.device)
        .bind(*ret.origin.as_uuid())
        .bind(i32::from(ret.post))
        .bind(ret.status.as_str())
        .bind(end)
        .bind(ret.time_trusted)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 1 {
            // Recorded first while the origin's own document already closed the rental: the
            // returning device may forget it. If the origin closed it with its own dock (a
            // return post of its own), the two docks conflict; the origin will never see this
            // return once it is forgotten, so the hub records the conflict here.
            let closed: Option<(String, bool)> = sqlx::query_as(
                "UPDATE rental_returns x SET folded = true FROM rentals r
                 WHERE x.rental_id = $1 AND r.id = x.rental_id
                   AND r.device_id = x.origin_device_id
                   AND r.status NOT IN ('unlocking', 'active')
                 RETURNING r.status, r.return_cart_id IS NOT NULL",
            )
            .bind(rental)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((status, true)) = closed {
                let detail = format!(
                    "rental {} was already {status} at its origin's own post; this return at post {} was not applied",
                    ret.rental, ret.post
                );
                conflicting_return(conn, scope, rental, Some(i32::from(ret.post)), &detail, end)
                    .await?;
                continue;
            }
        }
        let kept: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT device_id, origin_device_id FROM rental_returns WHERE rental_id = $1",
        )
        .bind(rental)
        .fetch_optional(&mut *conn)
        .await?;
        if kept != Some((scope.device, *ret.origin.as_uuid())) {
            let detail = format!(
                "rental {} was already returned elsewhere; this return at post {} was not applied",
                ret.rental, ret.post
            );
            conflicting_return(conn, scope, rental, Some(i32::from(ret.post)), &detail, end)
                .await?;
            continue;
        }
        out.rentals_changed += close_from_returns(conn, &[rental]).await?.len() as u64;
        let row: Option<String> = sqlx::query_scalar("SELECT status FROM rentals WHERE id = $1")
            .bind(rental)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(status) = row.filter(|s| !matches!(s.as_str(), "returned" | "returned_late")) {
            let detail = format!(
                "rental {} was already {status} at its origin; the cart docked at post {}",
                ret.rental, ret.post
            );
            conflicting_return(conn, scope, rental, Some(i32::from(ret.post)), &detail, end)
                .await?;
        }
    }
    Ok(())
}
