-- Documents of other writers held here (the branch's intents, the other devices' documents
-- of the branch), and the execution of the intents addressed to this device.
-- Forward-only: never edit once shipped; add a new numbered file.

-- A held document: its last compacted snapshot (empty before the first compaction) and the
-- change chunks appended since, as for the live document.
CREATE TABLE held_docs (
    doc      TEXT PRIMARY KEY NOT NULL,
    snapshot BLOB NOT NULL
) STRICT;

CREATE TABLE held_doc_changes (
    doc   TEXT NOT NULL REFERENCES held_docs (doc),
    seq   INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (doc, seq)
) STRICT;

-- Each intent addressed to this device, recorded as `executing` before anything physical is
-- done for it, then with its outcome (`applied`, `failed`, `expired`). An intent with a row
-- is never started again; a row left `executing` by a crash is settled from the board.
CREATE TABLE intent_runs (
    intent        TEXT PRIMARY KEY NOT NULL,
    kind          TEXT NOT NULL,
    post          INTEGER,
    state         TEXT NOT NULL CHECK (state IN ('executing', 'applied', 'failed', 'expired')),
    detail        TEXT NOT NULL DEFAULT '',
    created_by    TEXT NOT NULL DEFAULT '',
    started_wall  INTEGER NOT NULL,
    started_boot  TEXT NOT NULL,
    started_mono  INTEGER NOT NULL,
    finished_wall INTEGER
) STRICT;

-- Branch settings the hub's intents override (`rental_minutes`), with the intent that set
-- each.
CREATE TABLE branch_settings (
    key    TEXT PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL,
    intent TEXT NOT NULL
) STRICT;

-- Notes for the staff, from `note` intents; about a post when `post` is set.
CREATE TABLE post_notes (
    intent     TEXT PRIMARY KEY NOT NULL,
    post       INTEGER,
    text       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
) STRICT;
CREATE INDEX post_notes_post_idx ON post_notes (post);
