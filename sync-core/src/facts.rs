//! The layout of a device's live document (its facts: posts, rentals not yet at the hub,
//! anomalies) and a typed reader for it. The edge writes it (`edge-node/src/live.rs`, with
//! these key names); the hub and the other Pis of the branch read it with [`read_device_doc`].
//!
//! ```text
//! { "schema": 1, "device": uuid, "branch": uuid,
//!   "posts":     { "<post>":   { board, lock, status, hook, present, fault, holder } },
//!   "rentals":   { "<rental>": { phone, post, status, minutes,
//!                                start_wall, start_boot, start_mono, start_hlc,
//!                                taken_hlc, end_wall, end_boot, end_mono, end_hlc,
//!                                start_at, expected_at, end_at, time_trusted,
//!                                return_post, note } },
//!   "anomalies": { "<hlc>":    { kind, post, rental, detail, wall, boot, mono } },
//!   "outcomes":  { "<intent>": { status, detail, wall, hlc } },
//!   "returns":   { "<rental>": { origin, post, status, end_at, end_wall, end_boot,
//!                                end_mono, end_hlc, time_trusted } },
//!   "technician_log": { "<uuidv7>": { at, technician, action, outcome, detail } } }
//! ```
//!
//! `technician_log` records every use of a technician credential on the device (a LAN session,
//! a remote bus command, a bundle exported or imported, intents applied from a bundle), allowed
//! or refused: `at` the corrected Unix ms, `technician` the credential's user id (`""` when the
//! credential could not be read), `action` one of [`TECHNICIAN_ACTIONS`], `outcome` `allowed` or
//! `refused`, `detail` the reason in words. The device keeps the newest
//! [`TECHNICIAN_LOG_LIVE_MAX`] entries in the document; the hub audits each entry once, by id.
//!
//! `outcomes` answers the branch's intents (`crate::intents`): one entry per intent this device
//! executed or declined, `status` one of `applied`, `failed`, `expired` ([`OutcomeStatus`]),
//! `wall` the corrected Unix ms it was decided at. `returns` records carts of rentals started at
//! another device (`origin`) that docked at one of this device's posts (`post`): the origin
//! folds it into its own rental, and the hub closes the rental from whichever it sees first.
//!
//! `start_at`, `expected_at` and `end_at` are the device's best corrected wall times (Unix ms);
//! `time_trusted` says whether a trusted clock backed them. A device rewrites them when it
//! learns its boot's offset, so readers take them as they are.
//!
//! Architecture Invariant: reading never panics on a document from a peer: a malformed entry
//! is skipped and reported, the rest is read.

use automerge::{ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use cartwise_schema::{BranchId, DeviceId, RentalId, RentalStatus};

use crate::intents::IntentId;

/// The layout version this reader understands.
pub const DEVICE_DOC_SCHEMA: i64 = 1;

/// Key names of the device document.
pub mod keys {
    pub const SCHEMA: &str = "schema";
    pub const DEVICE: &str = "device";
    pub const BRANCH: &str = "branch";
    pub const POSTS: &str = "posts";
    pub const RENTALS: &str = "rentals";
    pub const ANOMALIES: &str = "anomalies";
    pub const OUTCOMES: &str = "outcomes";
    pub const RETURNS: &str = "returns";
    pub const TECHNICIAN_LOG: &str = "technician_log";

    /// Fields of a `technician_log` entry.
    pub mod techlog {
        pub const AT: &str = "at";
        pub const TECHNICIAN: &str = "technician";
        pub const ACTION: &str = "action";
        pub const OUTCOME: &str = "outcome";
        pub const DETAIL: &str = "detail";
    }

    /// Fields of an `outcomes` entry.
    pub mod outcome {
        pub const STATUS: &str = "status";
        pub const DETAIL: &str = "detail";
        pub const WALL: &str = "wall";
        pub const HLC: &str = "hlc";
    }

    /// Fields of a `returns` entry.
    pub mod ret {
        pub const ORIGIN: &str = "origin";
        pub const POST: &str = "post";
        pub const STATUS: &str = "status";
        pub const END_AT: &str = "end_at";
        pub const END_WALL: &str = "end_wall";
        pub const END_BOOT: &str = "end_boot";
        pub const END_MONO: &str = "end_mono";
        pub const END_HLC: &str = "end_hlc";
        pub const TIME_TRUSTED: &str = "time_trusted";
    }
}

/// A post as its device last sensed and decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostFact {
    pub post: u16,
    pub board: u8,
    pub lock: u8,
    pub status: String,
    pub hook: String,
    pub present: Option<bool>,
    pub fault: Option<String>,
    pub holder: Option<String>,
}

/// A rental started at the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RentalFact {
    pub id: RentalId,
    pub phone: String,
    pub post: u16,
    pub status: RentalStatus,
    pub minutes: u32,
    pub start_hlc: String,
    pub taken: bool,
    pub end_hlc: Option<String>,
    /// Corrected wall times, Unix ms.
    pub start_at: i64,
    pub expected_at: i64,
    pub end_at: Option<i64>,
    pub time_trusted: bool,
    pub return_post: Option<u16>,
    pub note: Option<String>,
}

/// Something the device could not explain, for the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyFact {
    pub key: String,
    pub kind: String,
    pub post: Option<u16>,
    pub rental: Option<String>,
    pub detail: String,
    pub wall: i64,
}

/// How an intent ended on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutcomeStatus {
    /// The intent was carried out.
    Applied,
    /// The intent was tried and did not succeed (`detail` says why).
    Failed,
    /// The intent arrived after its `expires_at` and was not carried out.
    Expired,
}

impl OutcomeStatus {
    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Applied => "applied",
            OutcomeStatus::Failed => "failed",
            OutcomeStatus::Expired => "expired",
        }
    }

    /// Parses the wire string.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "applied" => Some(OutcomeStatus::Applied),
            "failed" => Some(OutcomeStatus::Failed),
            "expired" => Some(OutcomeStatus::Expired),
            _ => None,
        }
    }
}

impl std::fmt::Display for OutcomeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The device's answer to one intent of its branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeFact {
    /// The intent's id, as the intents document keys it.
    pub intent: IntentId,
    pub status: OutcomeStatus,
    pub detail: String,
    /// Corrected wall time of the decision, Unix ms.
    pub wall: i64,
    pub hlc: String,
}

/// A cart of a rental started at another device that docked at this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnFact {
    pub rental: RentalId,
    /// The device that started the rental (and whose document holds it).
    pub origin: DeviceId,
    /// The post of this device where the cart docked.
    pub post: u16,
    /// `returned` or `returned_late`.
    pub status: RentalStatus,
    /// Corrected wall time of the dock, Unix ms.
    pub end_at: i64,
    pub end_wall: Option<i64>,
    pub end_boot: Option<String>,
    pub end_mono: Option<i64>,
    pub end_hlc: String,
    pub time_trusted: bool,
}

/// Entries of `technician_log` the device keeps in its live document (older ones stay in its
/// local store).
pub const TECHNICIAN_LOG_LIVE_MAX: usize = 256;

/// The actions a `technician_log` entry names.
pub const TECHNICIAN_ACTIONS: [&str; 7] = [
    "lan_session",
    "bus_scan",
    "bus_status",
    "bus_unlock",
    "bundle_export",
    "bundle_import",
    "intents_applied",
];

/// One use of a technician credential on the device, allowed or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TechnicianLogEntry {
    /// The entry's id (a UUIDv7 string): the hub audits each id once.
    pub id: String,
    /// Corrected wall time, Unix ms.
    pub at_ms: i64,
    /// The technician's user id; `None` when the credential could not be read.
    pub technician: Option<uuid::Uuid>,
    /// One of [`TECHNICIAN_ACTIONS`].
    pub action: String,
    /// `allowed` or `refused`.
    pub outcome: String,
    /// What happened, in words (the refusal's reason).
    pub detail: String,
}

/// Everything a device document says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    pub schema: i64,
    pub device: Option<DeviceId>,
    pub branch: Option<BranchId>,
    pub posts: Vec<PostFact>,
    pub rentals: Vec<RentalFact>,
    pub anomalies: Vec<AnomalyFact>,
    /// Answers to the branch's intents.
    pub outcomes: Vec<OutcomeFact>,
    /// Carts of other devices' rentals that docked here.
    pub returns: Vec<ReturnFact>,
    /// Uses of technician credentials on the device.
    pub technician_log: Vec<TechnicianLogEntry>,
    /// Entries that could not be read (key and reason); the rest was read.
    pub skipped: Vec<(String, String)>,
}

/// Reads a device document.
pub fn read_device_doc<D: ReadDoc>(doc: &D) -> DeviceFacts {
    let mut facts = DeviceFacts {
        schema: int(doc, &ROOT, keys::SCHEMA).unwrap_or(0),
        device: string(doc, &ROOT, keys::DEVICE).and_then(|s| DeviceId::parse(&s).ok()),
        branch: string(doc, &ROOT, keys::BRANCH).and_then(|s| BranchId::parse(&s).ok()),
        ..DeviceFacts::default()
    };
    for (key, obj) in entries(doc, keys::POSTS) {
        match read_post(doc, &key, &obj) {
            Some(post) => facts.posts.push(post),
            None => facts
                .skipped
                .push((format!("posts/{key}"), "missing or malformed fields".into())),
        }
    }
    for (key, obj) in entries(doc, keys::RENTALS) {
        match read_rental(doc, &key, &obj) {
            Ok(rental) => facts.rentals.push(rental),
            Err(reason) => facts.skipped.push((format!("rentals/{key}"), reason)),
        }
    }
    for (key, obj) in entries(doc, keys::ANOMALIES) {
        facts.anomalies.push(AnomalyFact {
            kind: string(doc, &obj, "kind").unwrap_or_default(),
            post: uint(doc, &obj, "post").and_then(|v| u16::try_from(v).ok()),
            rental: string(doc, &obj, "rental"),
            detail: string(doc, &obj, "detail").unwrap_or_default(),
            wall: int(doc, &obj, "wall").unwrap_or(0),
            key,
        });
    }
    for (key, obj) in entries(doc, keys::OUTCOMES) {
        match read_outcome(doc, &key, &obj) {
            Ok(outcome) => facts.outcomes.push(outcome),
            Err(reason) => facts.skipped.push((format!("outcomes/{key}"), reason)),
        }
    }
    for (key, obj) in entries(doc, keys::RETURNS) {
        match read_return(doc, &key, &obj) {
            Ok(ret) => facts.returns.push(ret),
            Err(reason) => facts.skipped.push((format!("returns/{key}"), reason)),
        }
    }
    for (key, obj) in entries(doc, keys::TECHNICIAN_LOG) {
        match read_techlog(doc, &key, &obj) {
            Ok(entry) => facts.technician_log.push(entry),
            Err(reason) => facts
                .skipped
                .push((format!("technician_log/{key}"), reason)),
        }
    }
    facts
}

fn read_techlog<D: ReadDoc>(doc: &D, key: &str, obj: &ObjId) -> Result<TechnicianLogEntry, String> {
    use keys::techlog as k;
    uuid::Uuid::parse_str(key).map_err(|e| format!("entry id: {e}"))?;
    let technician = string(doc, obj, k::TECHNICIAN).ok_or_else(|| need(k::TECHNICIAN))?;
    let technician = if technician.is_empty() {
        None
    } else {
        Some(uuid::Uuid::parse_str(&technician).map_err(|e| format!("technician: {e}"))?)
    };
    let outcome = string(doc, obj, k::OUTCOME).ok_or_else(|| need(k::OUTCOME))?;
    if outcome != "allowed" && outcome != "refused" {
        return Err(format!("unknown outcome {outcome:?}"));
    }
    let action = string(doc, obj, k::ACTION).ok_or_else(|| need(k::ACTION))?;
    if action.is_empty() || action.len() > 64 {
        return Err("action is empty or too long".into());
    }
    Ok(TechnicianLogEntry {
        id: key.to_string(),
        at_ms: int(doc, obj, k::AT).ok_or_else(|| need(k::AT))?,
        technician,
        action,
        outcome,
        detail: string(doc, obj, k::DETAIL).unwrap_or_default(),
    })
}

fn need(field: &str) -> String {
    format!("field {field} is missing or of the wrong type")
}

fn read_outcome<D: ReadDoc>(doc: &D, key: &str, obj: &ObjId) -> Result<OutcomeFact, String> {
    use keys::outcome as k;
    let intent = IntentId::parse(key).map_err(|e| e.to_string())?;
    let status = string(doc, obj, k::STATUS).ok_or_else(|| need(k::STATUS))?;
    Ok(OutcomeFact {
        intent,
        status: OutcomeStatus::parse(&status)
            .ok_or_else(|| format!("unknown outcome status {status:?}"))?,
        detail: string(doc, obj, k::DETAIL).unwrap_or_default(),
        wall: int(doc, obj, k::WALL).ok_or_else(|| need(k::WALL))?,
        hlc: string(doc, obj, k::HLC).unwrap_or_default(),
    })
}

fn read_return<D: ReadDoc>(doc: &D, key: &str, obj: &ObjId) -> Result<ReturnFact, String> {
    use keys::ret as k;
    let rental = RentalId::parse(key).map_err(|e| e.to_string())?;
    let origin = string(doc, obj, k::ORIGIN).ok_or_else(|| need(k::ORIGIN))?;
    let status = string(doc, obj, k::STATUS).ok_or_else(|| need(k::STATUS))?;
    let status = RentalStatus::parse(&status).map_err(|e| e.to_string())?;
    if !matches!(status, RentalStatus::Returned | RentalStatus::ReturnedLate) {
        return Err(format!("return status {status:?} is not a return"));
    }
    let end_wall = int(doc, obj, k::END_WALL);
    Ok(ReturnFact {
        rental,
        origin: DeviceId::parse(&origin).map_err(|e| e.to_string())?,
        post: uint(doc, obj, k::POST)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| need(k::POST))?,
        status,
        end_at: int(doc, obj, k::END_AT)
            .or(end_wall)
            .ok_or_else(|| need(k::END_AT))?,
        end_wall,
        end_boot: string(doc, obj, k::END_BOOT),
        end_mono: int(doc, obj, k::END_MONO),
        end_hlc: string(doc, obj, k::END_HLC).ok_or_else(|| need(k::END_HLC))?,
        time_trusted: boolean(doc, obj, k::TIME_TRUSTED).unwrap_or(false),
    })
}

fn read_post<D: ReadDoc>(doc: &D, key: &str, obj: &ObjId) -> Option<PostFact> {
    Some(PostFact {
        post: key.parse().ok()?,
        board: u8::try_from(uint(doc, obj, "board")?).ok()?,
        lock: u8::try_from(uint(doc, obj, "lock")?).ok()?,
        status: string(doc, obj, "status")?,
        hook: string(doc, obj, "hook")?,
        present: boolean(doc, obj, "present"),
        fault: string(doc, obj, "fault"),
        holder: string(doc, obj, "holder"),
    })
}

fn read_rental<D: ReadDoc>(doc: &D, key: &str, obj: &ObjId) -> Result<RentalFact, String> {
    let need = |field: &str| format!("field {field} is missing or of the wrong type");
    let id = RentalId::parse(key).map_err(|e| e.to_string())?;
    let status = string(doc, obj, "status").ok_or_else(|| need("status"))?;
    let start_at = int(doc, obj, "start_at")
        .or_else(|| int(doc, obj, "start_wall"))
        .ok_or_else(|| need("start_at"))?;
    let minutes = uint(doc, obj, "minutes")
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| need("minutes"))?;
    Ok(RentalFact {
        id,
        phone: string(doc, obj, "phone").ok_or_else(|| need("phone"))?,
        post: uint(doc, obj, "post")
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| need("post"))?,
        status: RentalStatus::parse(&status).map_err(|e| e.to_string())?,
        minutes,
        start_hlc: string(doc, obj, "start_hlc").ok_or_else(|| need("start_hlc"))?,
        taken: string(doc, obj, "taken_hlc").is_some(),
        end_hlc: string(doc, obj, "end_hlc"),
        start_at,
        expected_at: int(doc, obj, "expected_at")
            .unwrap_or(start_at.saturating_add(i64::from(minutes) * 60_000)),
        end_at: int(doc, obj, "end_at").or_else(|| int(doc, obj, "end_wall")),
        time_trusted: boolean(doc, obj, "time_trusted").unwrap_or(false),
        return_post: uint(doc, obj, "return_post").and_then(|p| u16::try_from(p).ok()),
        note: string(doc, obj, "note"),
    })
}

/// The (key, map) entries of a top-level map, skipping non-map values.
fn entries<D: ReadDoc>(doc: &D, name: &str) -> Vec<(String, ObjId)> {
    let Ok(Some((Value::Object(ObjType::Map), parent))) = doc.get(ROOT, name) else {
        return Vec::new();
    };
    doc.keys(&parent)
        .filter_map(|key| match doc.get(&parent, key.as_str()) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => Some((key, obj)),
            _ => None,
        })
        .collect()
}

pub(crate) fn scalar<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Option<ScalarValue> {
    match doc.get(obj, key) {
        Ok(Some((Value::Scalar(value), _))) => Some(value.into_owned()),
        _ => None,
    }
}

pub(crate) fn string<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Option<String> {
    match scalar(doc, obj, key)? {
        ScalarValue::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

pub(crate) fn int<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Option<i64> {
    match scalar(doc, obj, key)? {
        ScalarValue::Int(v) => Some(v),
        ScalarValue::Uint(v) => i64::try_from(v).ok(),
        _ => None,
    }
}

pub(crate) fn uint<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Option<u64> {
    match scalar(doc, obj, key)? {
        ScalarValue::Uint(v) => Some(v),
        ScalarValue::Int(v) => u64::try_from(v).ok(),
        _ => None,
    }
}

pub(crate) fn boolean<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Option<bool> {
    match scalar(doc, obj, key)? {
        ScalarValue::Boolean(v) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use automerge::AutoCommit;
    use automerge::transaction::Transactable;

    use super::*;

    #[test]
    fn a_document_with_garbage_entries_reads_the_rest() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, keys::SCHEMA, 1).unwrap();
        doc.put(ROOT, keys::DEVICE, "0b1e3c2a-0000-4000-8000-000000001001")
            .unwrap();
        let rentals = doc.put_object(ROOT, keys::RENTALS, ObjType::Map).unwrap();
        let good = doc
            .put_object(
                &rentals,
                "01a1ffeb-fcae-72a9-aa32-a6e6c791dff8",
                ObjType::Map,
            )
            .unwrap();
        for (k, v) in [
            ("phone", "+972521234567"),
            ("status", "active"),
            ("start_hlc", "x"),
        ] {
            doc.put(&good, k, v).unwrap();
        }
        doc.put(&good, "post", 3_u64).unwrap();
        doc.put(&good, "minutes", 120_u64).unwrap();
        doc.put(&good, "start_at", 1_000_i64).unwrap();
        let bad = doc
            .put_object(&rentals, "not-a-uuid", ObjType::Map)
            .unwrap();
        doc.put(&bad, "status", "active").unwrap();
        doc.put(&rentals, "scalar", 7).unwrap();
        let facts = read_device_doc(&doc);
        assert_eq!(facts.rentals.len(), 1);
        assert_eq!(facts.rentals[0].expected_at, 1_000 + 120 * 60_000);
        assert_eq!(facts.skipped.len(), 1);
        assert!(facts.device.is_some());
    }

    #[test]
    fn outcomes_and_returns_are_read_and_malformed_ones_skipped() {
        let mut doc = AutoCommit::new();
        let outcomes = doc.put_object(ROOT, keys::OUTCOMES, ObjType::Map).unwrap();
        let good = doc
            .put_object(
                &outcomes,
                "01a1ffeb-fcae-72a9-aa32-a6e6c791df01",
                ObjType::Map,
            )
            .unwrap();
        doc.put(&good, "status", "failed").unwrap();
        doc.put(&good, "detail", "lock did not open").unwrap();
        doc.put(&good, "wall", 5_000_i64).unwrap();
        doc.put(&good, "hlc", "h1").unwrap();
        let unknown = doc
            .put_object(
                &outcomes,
                "01a1ffeb-fcae-72a9-aa32-a6e6c791df02",
                ObjType::Map,
            )
            .unwrap();
        doc.put(&unknown, "status", "maybe").unwrap();
        doc.put(&unknown, "wall", 5_000_i64).unwrap();
        let badkey = doc.put_object(&outcomes, "x", ObjType::Map).unwrap();
        doc.put(&badkey, "status", "applied").unwrap();

        let returns = doc.put_object(ROOT, keys::RETURNS, ObjType::Map).unwrap();
        let ret = doc
            .put_object(
                &returns,
                "01a1ffeb-fcae-72a9-aa32-a6e6c791dff8",
                ObjType::Map,
            )
            .unwrap();
        doc.put(&ret, "origin", "0b1e3c2a-0000-4000-8000-000000001002")
            .unwrap();
        doc.put(&ret, "post", 17_u64).unwrap();
        doc.put(&ret, "status", "returned_late").unwrap();
        doc.put(&ret, "end_at", 9_000_i64).unwrap();
        doc.put(&ret, "end_wall", 8_000_i64).unwrap();
        doc.put(&ret, "end_hlc", "h2").unwrap();
        doc.put(&ret, "time_trusted", true).unwrap();
        let active = doc
            .put_object(
                &returns,
                "01a1ffeb-fcae-72a9-aa32-a6e6c791dff9",
                ObjType::Map,
            )
            .unwrap();
        doc.put(&active, "origin", "0b1e3c2a-0000-4000-8000-000000001002")
            .unwrap();
        doc.put(&active, "post", 17_u64).unwrap();
        doc.put(&active, "status", "active").unwrap();
        doc.put(&active, "end_at", 9_000_i64).unwrap();
        doc.put(&active, "end_hlc", "h3").unwrap();
        let noorigin = doc
            .put_object(
                &returns,
                "01a1ffeb-fcae-72a9-aa32-a6e6c791dffa",
                ObjType::Map,
            )
            .unwrap();
        doc.put(&noorigin, "post", 17_u64).unwrap();

        let facts = read_device_doc(&AutoCommit::load(&doc.save()).unwrap());
        assert_eq!(
            facts.outcomes,
            vec![OutcomeFact {
                intent: crate::intents::IntentId::parse("01a1ffeb-fcae-72a9-aa32-a6e6c791df01")
                    .unwrap(),
                status: OutcomeStatus::Failed,
                detail: "lock did not open".into(),
                wall: 5_000,
                hlc: "h1".into(),
            }]
        );
        assert_eq!(facts.returns.len(), 1);
        let ret = &facts.returns[0];
        assert_eq!(ret.status, RentalStatus::ReturnedLate);
        assert_eq!(ret.post, 17);
        assert_eq!((ret.end_at, ret.end_wall), (9_000, Some(8_000)));
        assert!(ret.time_trusted);
        assert_eq!(
            ret.origin.to_string(),
            "0b1e3c2a-0000-4000-8000-000000001002"
        );
        let mut skipped: Vec<&str> = facts.skipped.iter().map(|(k, _)| k.as_str()).collect();
        skipped.sort_unstable();
        assert_eq!(
            skipped,
            vec![
                "outcomes/01a1ffeb-fcae-72a9-aa32-a6e6c791df02",
                "outcomes/x",
                "returns/01a1ffeb-fcae-72a9-aa32-a6e6c791dff9",
                "returns/01a1ffeb-fcae-72a9-aa32-a6e6c791dffa",
            ]
        );
    }

    #[test]
    fn technician_log_entries_are_read_and_malformed_ones_skipped() {
        let mut doc = AutoCommit::new();
        let log = doc
            .put_object(ROOT, keys::TECHNICIAN_LOG, ObjType::Map)
            .unwrap();
        let put = |doc: &mut AutoCommit, key: &str, tech: &str, outcome: &str| {
            let e = doc.put_object(&log, key, ObjType::Map).unwrap();
            doc.put(&e, "at", 7_000_i64).unwrap();
            doc.put(&e, "technician", tech).unwrap();
            doc.put(&e, "action", "lan_session").unwrap();
            doc.put(&e, "outcome", outcome).unwrap();
            doc.put(&e, "detail", "expired at 1970").unwrap();
        };
        let tech = "01a1ffeb-fcae-72a9-aa32-a6e6c791d001";
        put(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791e001",
            tech,
            "refused",
        );
        put(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791e002",
            "",
            "allowed",
        );
        put(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791e003",
            tech,
            "maybe",
        );
        put(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791e004",
            "nobody",
            "allowed",
        );
        put(&mut doc, "x", tech, "allowed");
        let facts = read_device_doc(&AutoCommit::load(&doc.save()).unwrap());
        assert_eq!(
            facts.technician_log,
            vec![
                TechnicianLogEntry {
                    id: "01a1ffeb-fcae-72a9-aa32-a6e6c791e001".into(),
                    at_ms: 7_000,
                    technician: Some(uuid::Uuid::parse_str(tech).unwrap()),
                    action: "lan_session".into(),
                    outcome: "refused".into(),
                    detail: "expired at 1970".into(),
                },
                TechnicianLogEntry {
                    id: "01a1ffeb-fcae-72a9-aa32-a6e6c791e002".into(),
                    at_ms: 7_000,
                    technician: None,
                    action: "lan_session".into(),
                    outcome: "allowed".into(),
                    detail: "expired at 1970".into(),
                },
            ]
        );
        assert_eq!(facts.skipped.len(), 3);
    }

    #[test]
    fn outcome_statuses_round_trip() {
        for status in [
            OutcomeStatus::Applied,
            OutcomeStatus::Failed,
            OutcomeStatus::Expired,
        ] {
            assert_eq!(OutcomeStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OutcomeStatus::parse("Applied"), None);
    }
}
