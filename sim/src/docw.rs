//! Writes a device document in the layout `cartwise_sync_core::facts` reads (the same keys
//! and fields `edge-node/src/live.rs` writes; equal values are not rewritten, so history
//! grows with facts). The simulated Pis write their live documents through this module.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use cartwise_schema::{BranchId, DeviceId, RentalId, RentalStatus, Stamp};
use cartwise_sync_core::facts::keys;

/// A document write failed (an Automerge error; the simulation reports it as a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocError(pub String);

impl From<automerge::AutomergeError> for DocError {
    fn from(error: automerge::AutomergeError) -> Self {
        DocError(error.to_string())
    }
}

type Result<T> = std::result::Result<T, DocError>;

fn text(value: &str) -> ScalarValue {
    ScalarValue::Str(value.into())
}

fn map_at(doc: &mut AutoCommit, parent: &ObjId, key: &str) -> Result<ObjId> {
    match doc.get(parent, key)? {
        Some((Value::Object(ObjType::Map), obj)) => Ok(obj),
        _ => Ok(doc.put_object(parent, key, ObjType::Map)?),
    }
}

fn put_scalar(doc: &mut AutoCommit, obj: &ObjId, key: &str, value: ScalarValue) -> Result<()> {
    if let Some((Value::Scalar(existing), _)) = doc.get(obj, key)?
        && *existing == value
    {
        return Ok(());
    }
    doc.put(obj, key, value)?;
    Ok(())
}

fn put_fields(doc: &mut AutoCommit, obj: &ObjId, fields: Vec<(&str, ScalarValue)>) -> Result<()> {
    for (key, value) in fields {
        put_scalar(doc, obj, key, value)?;
    }
    Ok(())
}

/// Writes `schema`, `device` and `branch` if missing.
pub fn header(doc: &mut AutoCommit, device: DeviceId, branch: BranchId) -> Result<()> {
    put_fields(
        doc,
        &ROOT,
        vec![
            (keys::SCHEMA, ScalarValue::Int(1)),
            (keys::DEVICE, text(&device.to_string())),
            (keys::BRANCH, text(&branch.to_string())),
        ],
    )
}

/// A post as the device senses and decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostView {
    pub post: u16,
    pub status: &'static str,
    pub latched: bool,
    pub present: bool,
    pub holder: Option<RentalId>,
}

/// Mirrors a post.
pub fn put_post(doc: &mut AutoCommit, view: &PostView) -> Result<()> {
    let posts = map_at(doc, &ROOT, keys::POSTS)?;
    let obj = map_at(doc, &posts, &view.post.to_string())?;
    put_fields(
        doc,
        &obj,
        vec![
            ("board", ScalarValue::Uint(0)),
            ("lock", ScalarValue::Uint(u64::from(view.post))),
            ("status", text(view.status)),
            ("hook", text(if view.latched { "latched" } else { "open" })),
            ("present", ScalarValue::Boolean(view.present)),
            ("fault", ScalarValue::Null),
            (
                "holder",
                view.holder
                    .map_or(ScalarValue::Null, |r| text(&r.to_string())),
            ),
        ],
    )
}

/// A rental as the device's ledger holds it, with its corrected times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RentalView<'a> {
    pub id: RentalId,
    pub phone: &'a str,
    pub post: u16,
    pub status: RentalStatus,
    pub minutes: u32,
    pub start: &'a Stamp,
    pub taken: Option<String>,
    pub end: Option<&'a Stamp>,
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub time_trusted: bool,
    pub return_post: Option<u16>,
}

/// Mirrors a rental started here.
pub fn put_rental(doc: &mut AutoCommit, r: &RentalView<'_>) -> Result<()> {
    let rentals = map_at(doc, &ROOT, keys::RENTALS)?;
    let obj = map_at(doc, &rentals, &r.id.to_string())?;
    let mono = |s: &Stamp| ScalarValue::Int(i64::try_from(s.mono.get()).unwrap_or(i64::MAX));
    put_fields(
        doc,
        &obj,
        vec![
            ("start_at", ScalarValue::Int(r.start_at)),
            (
                "expected_at",
                ScalarValue::Int(r.start_at.saturating_add(i64::from(r.minutes) * 60_000)),
            ),
            (
                "end_at",
                r.end_at.map_or(ScalarValue::Null, ScalarValue::Int),
            ),
            ("time_trusted", ScalarValue::Boolean(r.time_trusted)),
            ("phone", text(r.phone)),
            ("post", ScalarValue::Uint(u64::from(r.post))),
            ("status", text(r.status.as_str())),
            ("minutes", ScalarValue::Uint(u64::from(r.minutes))),
            ("start_wall", ScalarValue::Int(r.start.wall.get())),
            ("start_boot", text(&r.start.boot.to_string())),
            ("start_mono", mono(r.start)),
            ("start_hlc", text(&r.start.hlc.to_string())),
            (
                "taken_hlc",
                r.taken.as_deref().map_or(ScalarValue::Null, text),
            ),
            (
                "end_wall",
                r.end
                    .map_or(ScalarValue::Null, |e| ScalarValue::Int(e.wall.get())),
            ),
            (
                "end_boot",
                r.end
                    .map_or(ScalarValue::Null, |e| text(&e.boot.to_string())),
            ),
            ("end_mono", r.end.map_or(ScalarValue::Null, mono)),
            (
                "end_hlc",
                r.end
                    .map_or(ScalarValue::Null, |e| text(&e.hlc.to_string())),
            ),
            (
                "return_post",
                r.return_post
                    .map_or(ScalarValue::Null, |p| ScalarValue::Uint(u64::from(p))),
            ),
            ("note", ScalarValue::Null),
        ],
    )
}

/// Records an anomaly keyed by its stamp's HLC.
pub fn put_anomaly(
    doc: &mut AutoCommit,
    kind: &str,
    post: Option<u16>,
    rental: Option<RentalId>,
    detail: &str,
    at: &Stamp,
) -> Result<()> {
    let anomalies = map_at(doc, &ROOT, keys::ANOMALIES)?;
    let obj = map_at(doc, &anomalies, &at.hlc.to_string())?;
    put_fields(
        doc,
        &obj,
        vec![
            ("kind", text(kind)),
            (
                "post",
                post.map_or(ScalarValue::Null, |p| ScalarValue::Uint(u64::from(p))),
            ),
            (
                "rental",
                rental.map_or(ScalarValue::Null, |r| text(&r.to_string())),
            ),
            ("detail", text(detail)),
            ("wall", ScalarValue::Int(at.wall.get())),
            ("boot", text(&at.boot.to_string())),
            (
                "mono",
                ScalarValue::Int(i64::try_from(at.mono.get()).unwrap_or(i64::MAX)),
            ),
        ],
    )
}

/// Records that the cart of another device's rental docked here.
#[allow(clippy::too_many_arguments)]
pub fn put_return(
    doc: &mut AutoCommit,
    rental: RentalId,
    origin: DeviceId,
    post: u16,
    status: RentalStatus,
    end: &Stamp,
    end_at: i64,
    time_trusted: bool,
) -> Result<()> {
    use keys::ret;
    let returns = map_at(doc, &ROOT, keys::RETURNS)?;
    let obj = map_at(doc, &returns, &rental.to_string())?;
    put_fields(
        doc,
        &obj,
        vec![
            (ret::ORIGIN, text(&origin.to_string())),
            (ret::POST, ScalarValue::Uint(u64::from(post))),
            (ret::STATUS, text(status.as_str())),
            (ret::END_AT, ScalarValue::Int(end_at)),
            (ret::END_WALL, ScalarValue::Int(end.wall.get())),
            (ret::END_BOOT, text(&end.boot.to_string())),
            (
                ret::END_MONO,
                ScalarValue::Int(i64::try_from(end.mono.get()).unwrap_or(i64::MAX)),
            ),
            (ret::END_HLC, text(&end.hlc.to_string())),
            (ret::TIME_TRUSTED, ScalarValue::Boolean(time_trusted)),
        ],
    )
}

/// Records the device's answer to an intent.
pub fn put_outcome(
    doc: &mut AutoCommit,
    intent: &str,
    status: &str,
    detail: &str,
    at: &Stamp,
    wall: i64,
) -> Result<()> {
    use keys::outcome;
    let outcomes = map_at(doc, &ROOT, keys::OUTCOMES)?;
    let obj = map_at(doc, &outcomes, intent)?;
    put_fields(
        doc,
        &obj,
        vec![
            (outcome::STATUS, text(status)),
            (outcome::DETAIL, text(detail)),
            (outcome::WALL, ScalarValue::Int(wall)),
            (outcome::HLC, text(&at.hlc.to_string())),
        ],
    )
}

/// Removes an entry of a top-level map if present.
pub fn remove_entry(doc: &mut AutoCommit, map: &str, key: &str) -> Result<()> {
    if let Some((Value::Object(ObjType::Map), obj)) = doc.get(ROOT, map)?
        && doc.get(&obj, key)?.is_some()
    {
        doc.delete(&obj, key)?;
    }
    Ok(())
}

/// Commits pending operations with a fixed change time (no wall clock in the simulation).
pub fn commit(doc: &mut AutoCommit, time_s: i64) {
    doc.commit_with(CommitOptions::default().with_time(time_s));
}
