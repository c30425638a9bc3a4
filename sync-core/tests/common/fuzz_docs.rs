//! Shared by the `peer_docs` fuzz target and its stable replay test: arbitrary bytes as a
//! peer's document (an intents document, another device's document) through Automerge's
//! loader and the tolerant readers. Must never panic.
//!
//! The first byte picks the mode: even, the rest is loaded as saved document bytes; odd, the
//! rest is a script of writes (map, key, value) that builds a document of arbitrary shape
//! with the readers' own key names, so the readers see every type in every field.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, ObjType, ROOT, ScalarValue};
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::intents::{read_intents_doc, read_revoked};

/// Key names the script draws from.
const KEYS: [&str; 25] = [
    "schema",
    "branch",
    "device",
    "intents",
    "outcomes",
    "returns",
    "rentals",
    "posts",
    "anomalies",
    "kind",
    "post",
    "minutes",
    "text",
    "created_at",
    "created_by",
    "expires_at",
    "status",
    "detail",
    "wall",
    "hlc",
    "origin",
    "end_at",
    "end_hlc",
    "time_trusted",
    "revoked",
];

/// Strings the script draws from (ids, kinds, statuses).
const TEXTS: [&str; 10] = [
    "01a1ffeb-fcae-72a9-aa32-a6e6c791df01",
    "0b1e3c2a-0000-4000-8000-000000001001",
    "0b1e3c2a-0000-4000-8000-000000000101",
    "unlock_post",
    "set_rental_minutes",
    "note",
    "applied",
    "returned_late",
    "",
    "00000000-0000-0000-0000-000000000000",
];

pub fn drive_docs(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(doc) = Automerge::load(rest) {
            let _ = read_intents_doc(&doc);
            let _ = read_revoked(&doc);
            let _ = read_device_doc(&doc);
        }
        return;
    }
    let mut doc = AutoCommit::new();
    let mut maps = vec![ROOT];
    for step in rest.chunks(3) {
        let [parent, key, value] = step else {
            break;
        };
        let parent = maps[usize::from(*parent) % maps.len()].clone();
        let key = if key & 0x80 != 0 {
            TEXTS[usize::from(*key) % TEXTS.len()]
        } else {
            KEYS[usize::from(*key) % KEYS.len()]
        };
        let written = match value % 8 {
            0 => doc
                .put_object(&parent, key, ObjType::Map)
                .map(|obj| maps.push(obj)),
            1 => doc.put(&parent, key, i64::from(*value) - 128),
            2 => doc.put(&parent, key, u64::from(*value) << 40),
            3 => doc.put(&parent, key, TEXTS[usize::from(*value) % TEXTS.len()]),
            4 => doc.put(&parent, key, *value > 128),
            5 => doc.put(&parent, key, ScalarValue::Null),
            6 => doc.put(&parent, key, f64::from(*value)),
            _ => doc.put_object(&parent, key, ObjType::List).map(|_| ()),
        };
        if written.is_err() || maps.len() > 64 {
            break;
        }
    }
    let _ = read_intents_doc(&doc);
    let _ = read_revoked(&doc);
    let _ = read_device_doc(&doc);
    if let Ok(loaded) = Automerge::load(&doc.save()) {
        let _ = read_intents_doc(&loaded);
    }
}
