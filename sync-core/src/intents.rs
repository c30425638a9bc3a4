//! The layout of a branch's intents document (`branch/<uuid>/intents[/eN]`), its typed reader
//! and the writer the hub uses.
//!
//! ```text
//! { "schema": 1, "branch": uuid,
//!   "intents": { "<intent uuid>": { device: uuid, kind: str, post: u16?, minutes: u32?,
//!                                   text: str?, phone: str?, version: str?,
//!                                   when_sms_unavailable: str?, language: str?,
//!                                   created_at: i64 ms, created_by: str,
//!                                   expires_at: i64 ms? } },
//!   "revoked": { "<device uuid>": i64 ms } }
//! ```
//!
//! `revoked` lists the branch's devices whose certificate the hub revoked (and when): a branch
//! peer refuses a LAN session with one of them even while the hub is unreachable, since the
//! certificate alone still verifies against the chain's CA.
//!
//! An intent is something the cloud asks one device of the branch to do; only the hub writes
//! this document (its actor is [`crate::authority::hub_actor`] of the chain), and only the
//! addressed `device` acts on an entry. Kinds ([`IntentKind`]): `unlock_post` (a maintenance
//! unlock of `post`), `out_of_service` / `in_service` (`post`), `set_rental_minutes`
//! (`minutes`, for rentals started from then on), `note` (`text`, about `post` if given),
//! `assign_cart` (lend to the shopper `phone` at the counter, from `post` if given),
//! `force_return` (close the rental holding `post`'s cart), `set_firmware` (`version`),
//! `set_otp_policy` (`when_sms_unavailable`: `refuse` or `token`, the branch's sign-in policy
//! while SMS cannot be sent) and `set_language` (`language`: `he` or `en`, the kiosk's answer
//! language when the shopper's device asks for none).
//!
//! The device answers each intent at most once, in its own facts document's `outcomes`
//! ([`crate::facts::OutcomeFact`]): `applied`, `failed` (with a detail) or `expired` (not
//! carried out because it arrived after `expires_at`). The document only grows by intents; an
//! answered intent may be removed by the hub, which changes nothing on the device.
//!
//! Architecture Invariant: reading never panics on a document from a peer. An entry that is
//! malformed, or of a kind this reader does not know (a newer hub), is skipped with its reason
//! and the rest is read; a device never acts on an entry it could not read completely.

use std::fmt;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use cartwise_schema::{BranchId, ChainId, DeviceId};

use crate::authority::hub_actor;
use crate::facts::{int, scalar, string, uint};

/// The layout version this reader understands and the writer writes.
pub const INTENTS_DOC_SCHEMA: i64 = 1;

/// Longest rental a `set_rental_minutes` intent may set (a week), as the edge's own
/// configuration allows.
pub const RENTAL_MINUTES_MAX: u32 = 7 * 24 * 60;

/// Longest `note` text, in bytes.
pub const NOTE_LEN_MAX: usize = 1024;

/// Longest shopper phone of an `assign_cart` intent, in bytes (E.164: `+` and up to 15 digits).
pub const PHONE_LEN_MAX: usize = 20;

/// Longest firmware version of a `set_firmware` intent, in bytes.
pub const FIRMWARE_VERSION_LEN_MAX: usize = 50;

/// Longest `created_by` text, in bytes.
pub const CREATED_BY_LEN_MAX: usize = 256;

/// Key names of the intents document.
pub mod keys {
    pub const SCHEMA: &str = "schema";
    pub const BRANCH: &str = "branch";
    pub const INTENTS: &str = "intents";
    /// `{ "<device uuid>": i64 ms }`: devices whose certificate the hub revoked.
    pub const REVOKED: &str = "revoked";

    /// Fields of one intent.
    pub mod intent {
        pub const DEVICE: &str = "device";
        pub const KIND: &str = "kind";
        pub const POST: &str = "post";
        pub const MINUTES: &str = "minutes";
        pub const TEXT: &str = "text";
        pub const CREATED_AT: &str = "created_at";
        pub const CREATED_BY: &str = "created_by";
        pub const EXPIRES_AT: &str = "expires_at";
        pub const PHONE: &str = "phone";
        pub const VERSION: &str = "version";
        pub const WHEN_SMS_UNAVAILABLE: &str = "when_sms_unavailable";
        pub const LANGUAGE: &str = "language";
    }

    /// The `kind` strings.
    pub mod kind {
        pub const UNLOCK_POST: &str = "unlock_post";
        pub const OUT_OF_SERVICE: &str = "out_of_service";
        pub const IN_SERVICE: &str = "in_service";
        pub const SET_RENTAL_MINUTES: &str = "set_rental_minutes";
        pub const NOTE: &str = "note";
        pub const ASSIGN_CART: &str = "assign_cart";
        pub const FORCE_RETURN: &str = "force_return";
        pub const SET_FIRMWARE: &str = "set_firmware";
        pub const SET_OTP_POLICY: &str = "set_otp_policy";
        pub const SET_LANGUAGE: &str = "set_language";
    }
}

/// An intent's id: a UUID (the hub makes v7 ids, so keys sort by creation), lowercase
/// hyphenated on output.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntentId(uuid::Uuid);

impl IntentId {
    /// Wraps a UUID (the hub generates it).
    pub const fn from_uuid(uuid: uuid::Uuid) -> Self {
        IntentId(uuid)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }

    /// Parses the hyphenated form (either case); rejects other forms and the nil UUID.
    pub fn parse(input: &str) -> Result<Self, IntentError> {
        let bad = || IntentError::Id {
            input: input.chars().take(64).collect(),
        };
        if input.len() != 36 {
            return Err(bad());
        }
        let uuid = uuid::Uuid::try_parse(input).map_err(|_| bad())?;
        if uuid.is_nil() {
            return Err(bad());
        }
        Ok(IntentId(uuid))
    }
}

impl fmt::Display for IntentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for IntentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntentId({})", self.0.hyphenated())
    }
}

/// What a `set_otp_policy` intent says the kiosk does while SMS cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtpFallback {
    /// Refuse sign-in, by code and by token alike, until SMS works again.
    Refuse,
    /// Refuse codes but let a shopper with a valid token rent (the token path serves).
    Token,
}

impl OtpFallback {
    /// The wire string (`refuse`, `token`).
    pub const fn as_str(self) -> &'static str {
        match self {
            OtpFallback::Refuse => "refuse",
            OtpFallback::Token => "token",
        }
    }

    /// Parses the wire string; `None` for anything else.
    pub fn parse(input: &str) -> Option<Self> {
        match input {
            "refuse" => Some(OtpFallback::Refuse),
            "token" => Some(OtpFallback::Token),
            _ => None,
        }
    }
}

/// The kiosk's default answer language a `set_language` intent sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KioskLanguage {
    He,
    En,
}

impl KioskLanguage {
    /// The wire string (`he`, `en`).
    pub const fn as_str(self) -> &'static str {
        match self {
            KioskLanguage::He => "he",
            KioskLanguage::En => "en",
        }
    }

    /// Parses the wire string; `None` for anything else.
    pub fn parse(input: &str) -> Option<Self> {
        match input {
            "he" => Some(KioskLanguage::He),
            "en" => Some(KioskLanguage::En),
            _ => None,
        }
    }
}

/// What an intent asks, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentKind {
    /// Open `post`'s lock for maintenance (no rental).
    UnlockPost { post: u16 },
    /// Take `post` out of service: no rental is lent from it.
    OutOfService { post: u16 },
    /// Put `post` back in service.
    InService { post: u16 },
    /// Rentals started from now on at this device last `minutes`.
    SetRentalMinutes { minutes: u32 },
    /// A note for the staff, about `post` if given.
    Note { post: Option<u16>, text: String },
    /// Lend a cart to the shopper with `phone` (E.164) at the counter: a rental as if the
    /// shopper had signed in at the kiosk, from `post` if given, else the device's choice.
    AssignCart { post: Option<u16>, phone: String },
    /// Close the rental holding `post`'s cart as returned, on a manager's word.
    ForceReturn { post: u16 },
    /// The firmware `version` the device should run.
    SetFirmware { version: String },
    /// The branch's sign-in policy while SMS cannot be sent, overriding the configuration.
    SetOtpPolicy { when_sms_unavailable: OtpFallback },
    /// The kiosk's answer language when the request asks for none (no `Accept-Language`).
    SetLanguage { language: KioskLanguage },
}

impl IntentKind {
    /// The wire string of the kind.
    pub const fn as_str(&self) -> &'static str {
        match self {
            IntentKind::UnlockPost { .. } => keys::kind::UNLOCK_POST,
            IntentKind::OutOfService { .. } => keys::kind::OUT_OF_SERVICE,
            IntentKind::InService { .. } => keys::kind::IN_SERVICE,
            IntentKind::SetRentalMinutes { .. } => keys::kind::SET_RENTAL_MINUTES,
            IntentKind::Note { .. } => keys::kind::NOTE,
            IntentKind::AssignCart { .. } => keys::kind::ASSIGN_CART,
            IntentKind::ForceReturn { .. } => keys::kind::FORCE_RETURN,
            IntentKind::SetFirmware { .. } => keys::kind::SET_FIRMWARE,
            IntentKind::SetOtpPolicy { .. } => keys::kind::SET_OTP_POLICY,
            IntentKind::SetLanguage { .. } => keys::kind::SET_LANGUAGE,
        }
    }

    /// The post the intent is about, if any.
    pub const fn post(&self) -> Option<u16> {
        match self {
            IntentKind::UnlockPost { post }
            | IntentKind::OutOfService { post }
            | IntentKind::InService { post }
            | IntentKind::ForceReturn { post } => Some(*post),
            IntentKind::Note { post, .. } | IntentKind::AssignCart { post, .. } => *post,
            IntentKind::SetRentalMinutes { .. }
            | IntentKind::SetFirmware { .. }
            | IntentKind::SetOtpPolicy { .. }
            | IntentKind::SetLanguage { .. } => None,
        }
    }

    /// Checks the arguments' ranges (what the reader would refuse).
    pub fn validate(&self) -> Result<(), IntentError> {
        if self.post() == Some(0) {
            return Err(IntentError::Invalid("post 0 does not exist".into()));
        }
        match self {
            IntentKind::SetRentalMinutes { minutes }
                if !(1..=RENTAL_MINUTES_MAX).contains(minutes) =>
            {
                Err(IntentError::Invalid(format!(
                    "minutes must be 1 to {RENTAL_MINUTES_MAX}, not {minutes}"
                )))
            }
            IntentKind::Note { text, .. } if text.len() > NOTE_LEN_MAX => Err(
                IntentError::Invalid(format!("note longer than {NOTE_LEN_MAX} bytes")),
            ),
            IntentKind::AssignCart { phone, .. }
                if !(phone.len() >= 8
                    && phone.len() <= PHONE_LEN_MAX
                    && phone.starts_with('+')
                    && phone[1..].bytes().all(|b| b.is_ascii_digit())) =>
            {
                Err(IntentError::Invalid(
                    "the phone must be E.164: + and 7 to 19 digits".into(),
                ))
            }
            IntentKind::SetFirmware { version }
                if version.is_empty()
                    || version.len() > FIRMWARE_VERSION_LEN_MAX
                    || !version.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Err(IntentError::Invalid(format!(
                    "the firmware version must be 1 to {FIRMWARE_VERSION_LEN_MAX} visible ASCII characters"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// One intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub id: IntentId,
    /// The device that executes it.
    pub device: DeviceId,
    pub kind: IntentKind,
    /// When the hub recorded it, Unix ms (the hub's trusted clock).
    pub created_at: i64,
    /// Who asked (a user's name or id, for the audit trail).
    pub created_by: String,
    /// Not executed after this instant (Unix ms, corrected wall time on the device).
    pub expires_at: Option<i64>,
}

impl Intent {
    /// Whether the intent is past its expiry at corrected wall time `now_ms`.
    pub fn expired_at(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|expires| now_ms >= expires)
    }
}

/// Everything an intents document says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntentsDoc {
    pub schema: i64,
    pub branch: Option<BranchId>,
    /// Readable intents, in id order.
    pub intents: Vec<Intent>,
    /// Entries that could not be read (key and reason); the rest was read.
    pub skipped: Vec<(String, String)>,
}

impl IntentsDoc {
    /// The intents addressed to `device`.
    pub fn for_device(&self, device: DeviceId) -> impl Iterator<Item = &Intent> {
        self.intents
            .iter()
            .filter(move |intent| intent.device == device)
    }
}

/// Why an intent could not be written or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    /// Not a hyphenated, non-nil UUID.
    #[error("invalid intent id {input:?}")]
    Id { input: String },
    /// An argument out of range.
    #[error("invalid intent: {0}")]
    Invalid(String),
    /// The document is another branch's.
    #[error("the intents document is branch {doc}'s, not {branch}'s")]
    OtherBranch { doc: String, branch: BranchId },
    /// Automerge refused the write.
    #[error("intents document: {0}")]
    Doc(String),
}

/// Reads an intents document.
pub fn read_intents_doc<D: ReadDoc>(doc: &D) -> IntentsDoc {
    let mut out = IntentsDoc {
        schema: int(doc, &ROOT, keys::SCHEMA).unwrap_or(0),
        branch: string(doc, &ROOT, keys::BRANCH).and_then(|s| BranchId::parse(&s).ok()),
        ..IntentsDoc::default()
    };
    let Ok(Some((Value::Object(ObjType::Map), parent))) = doc.get(ROOT, keys::INTENTS) else {
        return out;
    };
    for key in doc.keys(&parent) {
        let obj = match doc.get(&parent, key.as_str()) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => obj,
            _ => {
                out.skipped
                    .push((format!("intents/{key}"), "not a map".into()));
                continue;
            }
        };
        match read_intent(doc, &key, &obj) {
            Ok(intent) => out.intents.push(intent),
            Err(reason) => out.skipped.push((format!("intents/{key}"), reason)),
        }
    }
    out.intents.sort_by_key(|intent| intent.id);
    out
}

fn read_intent<D: ReadDoc>(doc: &D, key: &str, obj: &ObjId) -> Result<Intent, String> {
    use keys::intent as k;
    let need = |field: &str| format!("field {field} is missing or of the wrong type");
    let id = IntentId::parse(key).map_err(|e| e.to_string())?;
    let device = string(doc, obj, k::DEVICE).ok_or_else(|| need(k::DEVICE))?;
    let device = DeviceId::parse(&device).map_err(|e| e.to_string())?;
    let kind_name = string(doc, obj, k::KIND).ok_or_else(|| need(k::KIND))?;
    let post = || -> Result<u16, String> {
        uint(doc, obj, k::POST)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| need(k::POST))
    };
    let kind = match kind_name.as_str() {
        keys::kind::UNLOCK_POST => IntentKind::UnlockPost { post: post()? },
        keys::kind::OUT_OF_SERVICE => IntentKind::OutOfService { post: post()? },
        keys::kind::IN_SERVICE => IntentKind::InService { post: post()? },
        keys::kind::SET_RENTAL_MINUTES => IntentKind::SetRentalMinutes {
            minutes: uint(doc, obj, k::MINUTES)
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| need(k::MINUTES))?,
        },
        keys::kind::NOTE => IntentKind::Note {
            post: match scalar(doc, obj, k::POST) {
                None | Some(ScalarValue::Null) => None,
                Some(_) => Some(post()?),
            },
            text: string(doc, obj, k::TEXT).ok_or_else(|| need(k::TEXT))?,
        },
        keys::kind::ASSIGN_CART => IntentKind::AssignCart {
            post: match scalar(doc, obj, k::POST) {
                None | Some(ScalarValue::Null) => None,
                Some(_) => Some(post()?),
            },
            phone: string(doc, obj, k::PHONE).ok_or_else(|| need(k::PHONE))?,
        },
        keys::kind::FORCE_RETURN => IntentKind::ForceReturn { post: post()? },
        keys::kind::SET_FIRMWARE => IntentKind::SetFirmware {
            version: string(doc, obj, k::VERSION).ok_or_else(|| need(k::VERSION))?,
        },
        keys::kind::SET_OTP_POLICY => IntentKind::SetOtpPolicy {
            when_sms_unavailable: string(doc, obj, k::WHEN_SMS_UNAVAILABLE)
                .and_then(|s| OtpFallback::parse(&s))
                .ok_or_else(|| need(k::WHEN_SMS_UNAVAILABLE))?,
        },
        keys::kind::SET_LANGUAGE => IntentKind::SetLanguage {
            language: string(doc, obj, k::LANGUAGE)
                .and_then(|s| KioskLanguage::parse(&s))
                .ok_or_else(|| need(k::LANGUAGE))?,
        },
        other => {
            return Err(format!(
                "unknown kind {:?}",
                other.chars().take(64).collect::<String>()
            ));
        }
    };
    kind.validate().map_err(|e| e.to_string())?;
    let created_by = string(doc, obj, k::CREATED_BY).unwrap_or_default();
    if created_by.len() > CREATED_BY_LEN_MAX {
        return Err(format!("created_by longer than {CREATED_BY_LEN_MAX} bytes"));
    }
    let expires_at = match scalar(doc, obj, k::EXPIRES_AT) {
        None | Some(ScalarValue::Null) => None,
        Some(_) => Some(int(doc, obj, k::EXPIRES_AT).ok_or_else(|| need(k::EXPIRES_AT))?),
    };
    Ok(Intent {
        id,
        device,
        kind,
        created_at: int(doc, obj, k::CREATED_AT).ok_or_else(|| need(k::CREATED_AT))?,
        created_by,
        expires_at,
    })
}

/// Writes `intent` into `doc`, the intents document of `branch` in `chain`, as the hub: sets
/// the document's actor to [`hub_actor`]`(chain)`, writes `schema` and `branch` if the
/// document is new, and refuses a document of another branch. Rewriting an intent with the
/// same id overwrites its fields (the hub does not do that once a device may have seen it).
/// The caller commits (`AutoCommit::commit`) or saves as it persists.
pub fn put_intent(
    doc: &mut AutoCommit,
    chain: ChainId,
    branch: BranchId,
    intent: &Intent,
) -> Result<(), IntentError> {
    use keys::intent as k;
    intent.kind.validate()?;
    if intent.created_by.len() > CREATED_BY_LEN_MAX {
        return Err(IntentError::Invalid(format!(
            "created_by longer than {CREATED_BY_LEN_MAX} bytes"
        )));
    }
    let err = |e: automerge::AutomergeError| IntentError::Doc(e.to_string());
    hub_header(doc, chain, branch)?;
    let intents = match doc.get(ROOT, keys::INTENTS).map_err(err)? {
        Some((Value::Object(ObjType::Map), obj)) => obj,
        _ => doc
            .put_object(ROOT, keys::INTENTS, ObjType::Map)
            .map_err(err)?,
    };
    let obj = doc
        .put_object(&intents, intent.id.to_string(), ObjType::Map)
        .map_err(err)?;
    doc.put(&obj, k::DEVICE, intent.device.to_string())
        .map_err(err)?;
    doc.put(&obj, k::KIND, intent.kind.as_str()).map_err(err)?;
    match &intent.kind {
        IntentKind::UnlockPost { post }
        | IntentKind::OutOfService { post }
        | IntentKind::InService { post }
        | IntentKind::ForceReturn { post } => {
            doc.put(&obj, k::POST, u64::from(*post)).map_err(err)?;
        }
        IntentKind::AssignCart { post, phone } => {
            if let Some(post) = post {
                doc.put(&obj, k::POST, u64::from(*post)).map_err(err)?;
            }
            doc.put(&obj, k::PHONE, phone.as_str()).map_err(err)?;
        }
        IntentKind::SetFirmware { version } => {
            doc.put(&obj, k::VERSION, version.as_str()).map_err(err)?;
        }
        IntentKind::SetRentalMinutes { minutes } => {
            doc.put(&obj, k::MINUTES, u64::from(*minutes))
                .map_err(err)?;
        }
        IntentKind::SetOtpPolicy {
            when_sms_unavailable,
        } => {
            doc.put(&obj, k::WHEN_SMS_UNAVAILABLE, when_sms_unavailable.as_str())
                .map_err(err)?;
        }
        IntentKind::SetLanguage { language } => {
            doc.put(&obj, k::LANGUAGE, language.as_str()).map_err(err)?;
        }
        IntentKind::Note { post, text } => {
            if let Some(post) = post {
                doc.put(&obj, k::POST, u64::from(*post)).map_err(err)?;
            }
            doc.put(&obj, k::TEXT, text.as_str()).map_err(err)?;
        }
    }
    doc.put(&obj, k::CREATED_AT, intent.created_at)
        .map_err(err)?;
    doc.put(&obj, k::CREATED_BY, intent.created_by.as_str())
        .map_err(err)?;
    if let Some(expires) = intent.expires_at {
        doc.put(&obj, k::EXPIRES_AT, expires).map_err(err)?;
    }
    Ok(())
}

/// Sets the hub's actor and writes `schema` and `branch` if missing; refuses another
/// branch's document.
fn hub_header(doc: &mut AutoCommit, chain: ChainId, branch: BranchId) -> Result<(), IntentError> {
    let err = |e: automerge::AutomergeError| IntentError::Doc(e.to_string());
    doc.set_actor(hub_actor(chain));
    match string(doc, &ROOT, keys::BRANCH) {
        Some(existing) if existing != branch.to_string() => {
            return Err(IntentError::OtherBranch {
                doc: existing,
                branch,
            });
        }
        Some(_) => {}
        None => doc
            .put(ROOT, keys::BRANCH, branch.to_string())
            .map_err(err)?,
    }
    if int(doc, &ROOT, keys::SCHEMA) != Some(INTENTS_DOC_SCHEMA) {
        doc.put(ROOT, keys::SCHEMA, INTENTS_DOC_SCHEMA)
            .map_err(err)?;
    }
    Ok(())
}

/// Records, as the hub, that `device`'s certificate was revoked at `at_ms` (Unix ms) in the
/// intents document of its `branch`: the branch's other devices read it
/// ([`read_revoked`]) and refuse the device on the LAN even while the hub is unreachable.
/// Idempotent: the first instant recorded is kept. The caller commits or saves.
pub fn put_revoked(
    doc: &mut AutoCommit,
    chain: ChainId,
    branch: BranchId,
    device: DeviceId,
    at_ms: i64,
) -> Result<(), IntentError> {
    let err = |e: automerge::AutomergeError| IntentError::Doc(e.to_string());
    hub_header(doc, chain, branch)?;
    let revoked = match doc.get(ROOT, keys::REVOKED).map_err(err)? {
        Some((Value::Object(ObjType::Map), obj)) => obj,
        _ => doc
            .put_object(ROOT, keys::REVOKED, ObjType::Map)
            .map_err(err)?,
    };
    let key = device.to_string();
    if int(doc, &revoked, &key).is_none() {
        doc.put(&revoked, key, at_ms).map_err(err)?;
    }
    Ok(())
}

/// The devices an intents document says are revoked, with when (Unix ms), in id order. A
/// malformed entry is left out (never panics on a peer's document).
pub fn read_revoked<D: ReadDoc>(doc: &D) -> Vec<(DeviceId, i64)> {
    let Ok(Some((Value::Object(ObjType::Map), obj))) = doc.get(ROOT, keys::REVOKED) else {
        return Vec::new();
    };
    let mut out: Vec<(DeviceId, i64)> = doc
        .keys(&obj)
        .filter_map(|key| {
            let device = DeviceId::parse(&key).ok()?;
            Some((device, int(doc, &obj, &key)?))
        })
        .collect();
    out.sort_by_key(|(device, _)| *device);
    out
}

#[cfg(test)]
mod tests {
    use automerge::ActorId;

    use super::*;

    fn chain() -> ChainId {
        ChainId::parse("0b1e3c2a-0000-4000-8000-000000000001").unwrap()
    }

    fn branch() -> BranchId {
        BranchId::parse("0b1e3c2a-0000-4000-8000-000000000101").unwrap()
    }

    fn device() -> DeviceId {
        DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001001").unwrap()
    }

    fn intent(n: u8, kind: IntentKind) -> Intent {
        Intent {
            id: IntentId::parse(&format!("01a1ffeb-fcae-72a9-aa32-a6e6c791df{n:02x}")).unwrap(),
            device: device(),
            kind,
            created_at: 1_700_000_000_000 + i64::from(n),
            created_by: "manager@branch".into(),
            expires_at: n.is_multiple_of(2).then_some(1_800_000_000_000),
        }
    }

    fn all_kinds() -> Vec<Intent> {
        vec![
            intent(1, IntentKind::UnlockPost { post: 3 }),
            intent(2, IntentKind::OutOfService { post: 4 }),
            intent(3, IntentKind::InService { post: 4 }),
            intent(4, IntentKind::SetRentalMinutes { minutes: 90 }),
            intent(
                5,
                IntentKind::Note {
                    post: Some(7),
                    text: "wheel squeaks".into(),
                },
            ),
            intent(
                6,
                IntentKind::Note {
                    post: None,
                    text: "inventory Sunday".into(),
                },
            ),
            intent(
                7,
                IntentKind::SetOtpPolicy {
                    when_sms_unavailable: OtpFallback::Token,
                },
            ),
            intent(
                8,
                IntentKind::SetOtpPolicy {
                    when_sms_unavailable: OtpFallback::Refuse,
                },
            ),
            intent(
                9,
                IntentKind::SetLanguage {
                    language: KioskLanguage::En,
                },
            ),
            intent(
                10,
                IntentKind::SetLanguage {
                    language: KioskLanguage::He,
                },
            ),
        ]
    }

    #[test]
    fn every_kind_round_trips_through_a_saved_document() {
        let mut doc = AutoCommit::new();
        let written = all_kinds();
        for intent in &written {
            put_intent(&mut doc, chain(), branch(), intent).unwrap();
        }
        let loaded = AutoCommit::load(&doc.save()).unwrap();
        let read = read_intents_doc(&loaded);
        assert_eq!(read.schema, INTENTS_DOC_SCHEMA);
        assert_eq!(read.branch, Some(branch()));
        assert_eq!(read.skipped, Vec::<(String, String)>::new());
        assert_eq!(read.intents, written);
        assert_eq!(read.for_device(device()).count(), written.len());
    }

    #[test]
    fn every_change_the_writer_makes_is_the_hub_actor() {
        let mut doc = AutoCommit::new();
        doc.set_actor(ActorId::from([7_u8; 16]));
        for intent in all_kinds() {
            put_intent(&mut doc, chain(), branch(), &intent).unwrap();
            doc.commit();
        }
        let changes = doc.get_changes(&[]);
        assert!(!changes.is_empty());
        for change in changes {
            assert_eq!(change.actor_id(), &hub_actor(chain()));
        }
    }

    #[test]
    fn another_branch_document_is_refused() {
        let mut doc = AutoCommit::new();
        put_intent(&mut doc, chain(), branch(), &all_kinds()[0]).unwrap();
        let other = BranchId::parse("0b1e3c2a-0000-4000-8000-000000000102").unwrap();
        let refused = put_intent(&mut doc, chain(), other, &all_kinds()[1]);
        assert!(matches!(refused, Err(IntentError::OtherBranch { .. })));
    }

    #[test]
    fn out_of_range_arguments_are_not_written() {
        let mut doc = AutoCommit::new();
        for kind in [
            IntentKind::UnlockPost { post: 0 },
            IntentKind::SetRentalMinutes { minutes: 0 },
            IntentKind::SetRentalMinutes {
                minutes: RENTAL_MINUTES_MAX + 1,
            },
            IntentKind::Note {
                post: None,
                text: "x".repeat(NOTE_LEN_MAX + 1),
            },
        ] {
            let result = put_intent(&mut doc, chain(), branch(), &intent(1, kind.clone()));
            assert!(
                matches!(result, Err(IntentError::Invalid(_))),
                "{kind:?}: {result:?}"
            );
        }
        assert!(read_intents_doc(&doc).intents.is_empty());
    }

    #[test]
    fn malformed_and_unknown_entries_are_skipped_and_the_rest_read() {
        let mut doc = AutoCommit::new();
        put_intent(&mut doc, chain(), branch(), &all_kinds()[0]).unwrap();
        let intents = match doc.get(ROOT, keys::INTENTS).unwrap() {
            Some((_, obj)) => obj,
            None => panic!("no intents map"),
        };
        let base = |doc: &mut AutoCommit, key: &str, kind: &str| {
            let obj = doc.put_object(&intents, key, ObjType::Map).unwrap();
            doc.put(&obj, "device", device().to_string()).unwrap();
            doc.put(&obj, "kind", kind).unwrap();
            doc.put(&obj, "created_at", 1_i64).unwrap();
            obj
        };
        // A newer hub's kind.
        let future = base(&mut doc, "01a1ffeb-fcae-72a9-aa32-a6e6c791df10", "reboot");
        doc.put(&future, "post", 1_u64).unwrap();
        // A post of the wrong type.
        let wrong = base(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791df11",
            "unlock_post",
        );
        doc.put(&wrong, "post", "three").unwrap();
        // A post out of range.
        let big = base(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791df12",
            "in_service",
        );
        doc.put(&big, "post", 70_000_u64).unwrap();
        // Minutes missing.
        base(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791df13",
            "set_rental_minutes",
        );
        // A policy and a language outside their ranges.
        let policy = base(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791df17",
            "set_otp_policy",
        );
        doc.put(&policy, "when_sms_unavailable", "maybe").unwrap();
        let language = base(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791df18",
            "set_language",
        );
        doc.put(&language, "language", "fr").unwrap();
        // A key that is not a UUID, a scalar entry, a negative post.
        base(&mut doc, "not-a-uuid", "note");
        doc.put(&intents, "01a1ffeb-fcae-72a9-aa32-a6e6c791df14", 5_i64)
            .unwrap();
        let negative = base(
            &mut doc,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791df15",
            "unlock_post",
        );
        doc.put(&negative, "post", -1_i64).unwrap();
        // A device that is not a UUID.
        let nodev = doc
            .put_object(
                &intents,
                "01a1ffeb-fcae-72a9-aa32-a6e6c791df16",
                ObjType::Map,
            )
            .unwrap();
        doc.put(&nodev, "device", 12_i64).unwrap();
        doc.put(&nodev, "kind", "note").unwrap();

        let read = read_intents_doc(&doc);
        assert_eq!(read.intents, vec![all_kinds()[0].clone()]);
        let mut skipped: Vec<&str> = read.skipped.iter().map(|(k, _)| k.as_str()).collect();
        skipped.sort_unstable();
        assert_eq!(
            skipped,
            vec![
                "intents/01a1ffeb-fcae-72a9-aa32-a6e6c791df10",
                "intents/01a1ffeb-fcae-72a9-aa32-a6e6c791df11",
                "intents/01a1ffeb-fcae-72a9-aa32-a6e6c791df12",
                "intents/01a1ffeb-fcae-72a9-aa32-a6e6c791df13",
                "intents/01a1ffeb-fcae-72a9-aa32-a6e6c791df14",
                "intents/01a1ffeb-fcae-72a9-aa32-a6e6c791df15",
                "intents/01a1ffeb-fcae-72a9-aa32-a6e6c791df16",
                "intents/01a1ffeb-fcae-72a9-aa32-a6e6c791df17",
                "intents/01a1ffeb-fcae-72a9-aa32-a6e6c791df18",
                "intents/not-a-uuid",
            ]
        );
        let reason = |key: &str| {
            read.skipped
                .iter()
                .find(|(k, _)| k.ends_with(key))
                .map(|(_, r)| r.clone())
                .unwrap()
        };
        assert!(reason("df10").contains("unknown kind"));
        assert!(reason("df13").contains("minutes"));
        assert!(reason("df17").contains("when_sms_unavailable"));
        assert!(reason("df18").contains("language"));
    }

    #[test]
    fn a_document_that_is_not_an_intents_document_reads_as_empty() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, keys::INTENTS, "surprise").unwrap();
        doc.put(ROOT, keys::BRANCH, 12_i64).unwrap();
        let read = read_intents_doc(&doc);
        assert_eq!(read.branch, None);
        assert!(read.intents.is_empty());
        assert_eq!(read.schema, 0);
    }

    #[test]
    fn expiry_is_inclusive_of_its_instant() {
        let mut it = all_kinds()[0].clone();
        assert!(!it.expired_at(i64::MAX));
        it.expires_at = Some(100);
        assert!(!it.expired_at(99));
        assert!(it.expired_at(100));
    }

    #[test]
    fn revoked_devices_are_written_once_by_the_hub_and_read_tolerantly() {
        let mut doc = AutoCommit::new();
        assert!(read_revoked(&doc).is_empty());
        put_revoked(&mut doc, chain(), branch(), device(), 1_000).unwrap();
        // A second revocation keeps the first instant.
        put_revoked(&mut doc, chain(), branch(), device(), 2_000).unwrap();
        assert_eq!(doc.get_actor(), &hub_actor(chain()));
        let revoked = doc.get(ROOT, keys::REVOKED).unwrap().unwrap().1;
        doc.put(&revoked, "not-a-device", 5).unwrap();
        let other = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001002").unwrap();
        doc.put(&revoked, other.to_string(), "yesterday").unwrap();
        assert_eq!(read_revoked(&doc), vec![(device(), 1_000)]);
        // The intents are untouched and the branch checked.
        assert!(read_intents_doc(&doc).intents.is_empty());
        assert_eq!(read_intents_doc(&doc).branch, Some(branch()));
        let elsewhere = BranchId::parse("0b1e3c2a-0000-4000-8000-000000000102").unwrap();
        assert!(matches!(
            put_revoked(&mut doc, chain(), elsewhere, device(), 3_000),
            Err(IntentError::OtherBranch { .. })
        ));
    }
}
