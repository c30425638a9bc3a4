//! A read-only view of a document whose map entries are read in one pass per map: the merge
//! path reads every fact of a device document after each merge, and a `get` per field (a
//! seek through the document's columns each) cost most of a merge pass; `map_range` walks
//! each map once instead.
//!
//! [`MapView`] answers `get` of a map key from what it read and hands every other read to the
//! document itself, so any `ReadDoc` reader (`read_device_doc`) gives the same answer through
//! it as through the document.

use std::collections::HashMap;
use std::ops::RangeBounds;

use automerge::hydrate;
use automerge::iter::{DocIter, Keys, ListRange, MapRange, Spans, Values};
use automerge::marks::{Mark, MarkSet};
use automerge::{
    Automerge, AutomergeError, Change, ChangeHash, Cursor, CursorPosition, MoveCursor, ObjId,
    ObjType, Parents, Prop, ROOT, ReadDoc, Stats, TextEncoding, Value,
};

/// Nesting below the root that is read ahead; deeper maps are read through the document.
pub const MAP_VIEW_DEPTH_MAX: usize = 4;

/// A map's entries: key → (winning value, its id).
type Entries = HashMap<String, (Value<'static>, ObjId)>;

/// The maps of a document, each read once, in front of the document.
pub struct MapView<'a> {
    doc: &'a Automerge,
    maps: HashMap<ObjId, Entries>,
}

impl<'a> MapView<'a> {
    /// Reads the root map and the maps below it (down to [`MAP_VIEW_DEPTH_MAX`]).
    pub fn new(doc: &'a Automerge) -> MapView<'a> {
        let mut maps = HashMap::new();
        let mut level = vec![ROOT];
        for _ in 0..=MAP_VIEW_DEPTH_MAX {
            let mut next = Vec::new();
            for obj in level {
                let mut entries = Entries::new();
                for item in doc.map_range(&obj, ..) {
                    let id = item.id();
                    let value = Value::from(item.value);
                    if matches!(value, Value::Object(ObjType::Map)) {
                        next.push(id.clone());
                    }
                    entries.insert(item.key.into_owned(), (value, id));
                }
                maps.insert(obj, entries);
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        MapView { doc, maps }
    }
}

impl ReadDoc for MapView<'_> {
    fn parents<O: AsRef<ObjId>>(&self, obj: O) -> Result<Parents<'_>, AutomergeError> {
        self.doc.parents(obj)
    }

    fn parents_at<O: AsRef<ObjId>>(
        &self,
        obj: O,
        heads: &[ChangeHash],
    ) -> Result<Parents<'_>, AutomergeError> {
        self.doc.parents_at(obj, heads)
    }

    fn keys<O: AsRef<ObjId>>(&self, obj: O) -> Keys<'_> {
        self.doc.keys(obj)
    }

    fn keys_at<O: AsRef<ObjId>>(&self, obj: O, heads: &[ChangeHash]) -> Keys<'_> {
        self.doc.keys_at(obj, heads)
    }

    fn iter_at<O: AsRef<ObjId>>(&self, obj: O, heads: Option<&[ChangeHash]>) -> DocIter<'_> {
        self.doc.iter_at(obj, heads)
    }

    fn map_range<'b, O: AsRef<ObjId>, R: RangeBounds<String> + 'b>(
        &'b self,
        obj: O,
        range: R,
    ) -> MapRange<'b> {
        self.doc.map_range(obj, range)
    }

    fn map_range_at<'b, O: AsRef<ObjId>, R: RangeBounds<String> + 'b>(
        &'b self,
        obj: O,
        range: R,
        heads: &[ChangeHash],
    ) -> MapRange<'b> {
        self.doc.map_range_at(obj, range, heads)
    }

    fn list_range<O: AsRef<ObjId>, R: RangeBounds<usize>>(
        &self,
        obj: O,
        range: R,
    ) -> ListRange<'_> {
        self.doc.list_range(obj, range)
    }

    fn list_range_at<O: AsRef<ObjId>, R: RangeBounds<usize>>(
        &self,
        obj: O,
        range: R,
        heads: &[ChangeHash],
    ) -> ListRange<'_> {
        self.doc.list_range_at(obj, range, heads)
    }

    fn values<O: AsRef<ObjId>>(&self, obj: O) -> Values<'_> {
        self.doc.values(obj)
    }

    fn values_at<O: AsRef<ObjId>>(&self, obj: O, heads: &[ChangeHash]) -> Values<'_> {
        self.doc.values_at(obj, heads)
    }

    fn length<O: AsRef<ObjId>>(&self, obj: O) -> usize {
        self.doc.length(obj)
    }

    fn length_at<O: AsRef<ObjId>>(&self, obj: O, heads: &[ChangeHash]) -> usize {
        self.doc.length_at(obj, heads)
    }

    fn object_type<O: AsRef<ObjId>>(&self, obj: O) -> Result<ObjType, AutomergeError> {
        self.doc.object_type(obj)
    }

    fn marks<O: AsRef<ObjId>>(&self, obj: O) -> Result<Vec<Mark>, AutomergeError> {
        self.doc.marks(obj)
    }

    fn marks_at<O: AsRef<ObjId>>(
        &self,
        obj: O,
        heads: &[ChangeHash],
    ) -> Result<Vec<Mark>, AutomergeError> {
        self.doc.marks_at(obj, heads)
    }

    fn get_marks<O: AsRef<ObjId>>(
        &self,
        obj: O,
        index: usize,
        heads: Option<&[ChangeHash]>,
    ) -> Result<MarkSet, AutomergeError> {
        self.doc.get_marks(obj, index, heads)
    }

    fn text<O: AsRef<ObjId>>(&self, obj: O) -> Result<String, AutomergeError> {
        self.doc.text(obj)
    }

    fn text_at<O: AsRef<ObjId>>(
        &self,
        obj: O,
        heads: &[ChangeHash],
    ) -> Result<String, AutomergeError> {
        self.doc.text_at(obj, heads)
    }

    fn spans<O: AsRef<ObjId>>(&self, obj: O) -> Result<Spans<'_>, AutomergeError> {
        self.doc.spans(obj)
    }

    fn spans_at<O: AsRef<ObjId>>(
        &self,
        obj: O,
        heads: &[ChangeHash],
    ) -> Result<Spans<'_>, AutomergeError> {
        self.doc.spans_at(obj, heads)
    }

    fn get_cursor<O: AsRef<ObjId>, I: Into<CursorPosition>>(
        &self,
        obj: O,
        position: I,
        at: Option<&[ChangeHash]>,
    ) -> Result<Cursor, AutomergeError> {
        self.doc.get_cursor(obj, position, at)
    }

    fn get_cursor_moving<O: AsRef<ObjId>, I: Into<CursorPosition>>(
        &self,
        obj: O,
        position: I,
        at: Option<&[ChangeHash]>,
        move_cursor: MoveCursor,
    ) -> Result<Cursor, AutomergeError> {
        self.doc.get_cursor_moving(obj, position, at, move_cursor)
    }

    fn get_cursor_position<O: AsRef<ObjId>>(
        &self,
        obj: O,
        cursor: &Cursor,
        at: Option<&[ChangeHash]>,
    ) -> Result<usize, AutomergeError> {
        self.doc.get_cursor_position(obj, cursor, at)
    }

    fn get<O: AsRef<ObjId>, P: Into<Prop>>(
        &self,
        obj: O,
        prop: P,
    ) -> Result<Option<(Value<'_>, ObjId)>, AutomergeError> {
        let prop = prop.into();
        if let (Some(entries), Prop::Map(key)) = (self.maps.get(obj.as_ref()), &prop) {
            return Ok(entries.get(key.as_str()).cloned());
        }
        self.doc.get(obj, prop)
    }

    fn get_at<O: AsRef<ObjId>, P: Into<Prop>>(
        &self,
        obj: O,
        prop: P,
        heads: &[ChangeHash],
    ) -> Result<Option<(Value<'_>, ObjId)>, AutomergeError> {
        self.doc.get_at(obj, prop, heads)
    }

    fn hydrate<O: AsRef<ObjId>>(
        &self,
        obj: O,
        heads: Option<&[ChangeHash]>,
    ) -> Result<hydrate::Value, AutomergeError> {
        ReadDoc::hydrate(self.doc, obj, heads)
    }

    fn get_all<O: AsRef<ObjId>, P: Into<Prop>>(
        &self,
        obj: O,
        prop: P,
    ) -> Result<Vec<(Value<'_>, ObjId)>, AutomergeError> {
        self.doc.get_all(obj, prop)
    }

    fn get_all_at<O: AsRef<ObjId>, P: Into<Prop>>(
        &self,
        obj: O,
        prop: P,
        heads: &[ChangeHash],
    ) -> Result<Vec<(Value<'_>, ObjId)>, AutomergeError> {
        self.doc.get_all_at(obj, prop, heads)
    }

    fn get_missing_deps(&self, heads: &[ChangeHash]) -> Vec<ChangeHash> {
        self.doc.get_missing_deps(heads)
    }

    fn get_change_by_hash(&self, hash: &ChangeHash) -> Option<Change> {
        self.doc.get_change_by_hash(hash)
    }

    fn stats(&self) -> Stats {
        self.doc.stats()
    }

    fn text_encoding(&self) -> TextEncoding {
        self.doc.text_encoding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ScalarValue};

    fn sample() -> Automerge {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "schema", 1).unwrap();
        let rentals = doc.put_object(ROOT, "rentals", ObjType::Map).unwrap();
        for n in 0..5_u64 {
            let r = doc
                .put_object(&rentals, format!("r{n}"), ObjType::Map)
                .unwrap();
            doc.put(&r, "post", n).unwrap();
            doc.put(&r, "status", "active").unwrap();
            let deep = doc.put_object(&r, "a", ObjType::Map).unwrap();
            let deeper = doc.put_object(&deep, "b", ObjType::Map).unwrap();
            let deepest = doc.put_object(&deeper, "c", ObjType::Map).unwrap();
            let bottom = doc.put_object(&deepest, "d", ObjType::Map).unwrap();
            doc.put(&bottom, "e", n).unwrap();
        }
        let list = doc.put_object(ROOT, "list", ObjType::List).unwrap();
        doc.insert(&list, 0, "x").unwrap();
        doc.commit();
        doc.document().clone()
    }

    /// Every key of every map, read through the view and through the document, agrees
    /// (including maps below the read-ahead depth and a list).
    #[test]
    fn the_view_reads_what_the_document_says() {
        let doc = sample();
        let view = MapView::new(&doc);
        let mut stack = vec![ROOT];
        let mut seen = 0;
        while let Some(obj) = stack.pop() {
            for key in doc.keys(&obj) {
                let direct = doc.get(&obj, key.as_str()).unwrap();
                let through = view.get(&obj, key.as_str()).unwrap();
                assert_eq!(direct, through, "{key}");
                if let Some((Value::Object(ObjType::Map), id)) = direct {
                    stack.push(id);
                }
                seen += 1;
            }
            assert_eq!(view.get(&obj, "missing").unwrap(), None);
        }
        assert!(seen > 30, "the sample has nested maps ({seen} keys)");
        let (_, list) = doc.get(ROOT, "list").unwrap().unwrap();
        assert_eq!(
            view.get(&list, 0_usize).unwrap().map(|(v, _)| v),
            Some(Value::Scalar(std::borrow::Cow::Owned(ScalarValue::Str(
                "x".into()
            ))))
        );
    }

    /// A device document (rentals, posts, a malformed entry) reads to the same facts through
    /// the view.
    #[test]
    fn device_facts_are_the_same_through_the_view() {
        let device = uuid::Uuid::now_v7();
        let branch = uuid::Uuid::now_v7();
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "schema", 1).unwrap();
        doc.put(ROOT, "device", device.to_string()).unwrap();
        doc.put(ROOT, "branch", branch.to_string()).unwrap();
        let rentals = doc.put_object(ROOT, "rentals", ObjType::Map).unwrap();
        for n in 0..4_i64 {
            let r = doc
                .put_object(&rentals, uuid::Uuid::now_v7().to_string(), ObjType::Map)
                .unwrap();
            doc.put(&r, "phone", "+972521234567").unwrap();
            doc.put(&r, "post", 1 + n as u64).unwrap();
            doc.put(&r, "status", if n % 2 == 0 { "active" } else { "returned" })
                .unwrap();
            doc.put(&r, "minutes", 120_u64).unwrap();
            doc.put(&r, "start_hlc", format!("{n}:0")).unwrap();
            doc.put(&r, "start_at", 1_795_248_000_000 + n).unwrap();
            doc.put(&r, "end_at", 1_795_251_600_000 + n).unwrap();
            doc.put(&r, "end_hlc", "e:0").unwrap();
            doc.put(&r, "time_trusted", true).unwrap();
        }
        let bad = doc
            .put_object(&rentals, "not-a-rental", ObjType::Map)
            .unwrap();
        doc.put(&bad, "status", 7).unwrap();
        let posts = doc.put_object(ROOT, "posts", ObjType::Map).unwrap();
        let post = doc.put_object(&posts, "3", ObjType::Map).unwrap();
        doc.put(&post, "status", "available").unwrap();
        doc.commit();
        let doc = doc.document().clone();
        let facts = cartwise_sync_core::facts::read_device_doc(&doc);
        assert!(!facts.rentals.is_empty(), "the sample's rentals read");
        assert!(!facts.skipped.is_empty(), "the malformed entry is skipped");
        assert_eq!(
            cartwise_sync_core::facts::read_device_doc(&MapView::new(&doc)),
            facts
        );
    }
}
