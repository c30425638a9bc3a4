-- The edge node's local store. Forward-only: never edit once shipped; add a new numbered file.
-- PRAGMA user_version is the cursor: after this file it is 1.

-- Who this node is and what it was configured with (device id, branch id, actor id, ...).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

-- Every boot this node has run in. Raspberry Pis have no real-time clock: a boot may start with
-- a wrong wall clock. Once a trusted source (the hub, a technician, `cartwise-edge time set`)
-- is heard, the boot's correction is stored as one observation: at monotonic time
-- offset_mono_ms the local clock read offset_local_wall_ms and the trusted one
-- offset_trusted_wall_ms (see schema::time::BootOffset).
CREATE TABLE boots (
    boot_id       TEXT PRIMARY KEY NOT NULL,
    seq           INTEGER NOT NULL UNIQUE,
    first_wall_ms INTEGER NOT NULL,
    first_mono_ms INTEGER NOT NULL,
    last_wall_ms  INTEGER NOT NULL,
    last_mono_ms  INTEGER NOT NULL,
    offset_mono_ms         INTEGER,
    offset_local_wall_ms   INTEGER,
    offset_trusted_wall_ms INTEGER,
    offset_source          TEXT
) STRICT;

-- The posts of this node's boards and what the node last sensed and decided about them.
-- `service` is the held-away state ('in_service', 'maintenance', 'out_of_service', 'fault');
-- the status a post shows (available, in use, empty, reserved, ...) is derived from it, the
-- sensed hook and presence, and the rentals and reservations that hold the post.
CREATE TABLE posts (
    post          INTEGER PRIMARY KEY NOT NULL,
    board         INTEGER NOT NULL CHECK (board BETWEEN 0 AND 9),
    lock          INTEGER NOT NULL CHECK (lock BETWEEN 1 AND 16),
    service       TEXT NOT NULL DEFAULT 'in_service',
    hook          TEXT NOT NULL DEFAULT 'unknown',
    present       INTEGER,
    fault         TEXT,
    use_count     INTEGER NOT NULL DEFAULT 0,
    last_used_hlc TEXT,
    UNIQUE (board, lock)
) STRICT;

-- Rentals started at this node: open ones and closed ones until the hub holds them.
-- Stamps are (wall ms, boot id, monotonic ms, hybrid logical clock).
CREATE TABLE rentals (
    id                TEXT PRIMARY KEY NOT NULL,
    phone             TEXT NOT NULL,
    post              INTEGER NOT NULL REFERENCES posts (post),
    status            TEXT NOT NULL,
    rental_minutes    INTEGER NOT NULL,
    start_wall_ms     INTEGER NOT NULL,
    start_boot        TEXT NOT NULL,
    start_mono_ms     INTEGER NOT NULL,
    start_hlc         TEXT NOT NULL,
    taken_hlc         TEXT,
    end_wall_ms       INTEGER,
    end_boot          TEXT,
    end_mono_ms       INTEGER,
    end_hlc           TEXT,
    return_post       INTEGER,
    return_device     TEXT,
    note              TEXT
) STRICT;
-- Invariant 4, enforced by the store itself: at most one rental holds a post's cart (unlocking,
-- or active with the cart not yet taken), and (locally) one open rental per phone.
CREATE UNIQUE INDEX rentals_one_holding_per_post ON rentals (post)
    WHERE status = 'unlocking' OR (status = 'active' AND taken_hlc IS NULL);
CREATE UNIQUE INDEX rentals_one_open_per_phone ON rentals (phone)
    WHERE status IN ('unlocking', 'active');

-- A post reserved for a rental's return (initiate-return), until it expires.
CREATE TABLE return_reservations (
    rental_id      TEXT PRIMARY KEY NOT NULL,
    post           INTEGER NOT NULL UNIQUE REFERENCES posts (post),
    phone          TEXT NOT NULL,
    boot           TEXT NOT NULL,
    expires_mono_ms INTEGER NOT NULL
) STRICT;

-- The append-only ledger of every fact this node recorded, in order. Nothing updates or
-- deletes a row here except the retention sweep of rows the hub has acknowledged.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    rental_id  TEXT,
    post       INTEGER,
    data       TEXT NOT NULL DEFAULT '{}',
    wall_ms    INTEGER NOT NULL,
    boot       TEXT NOT NULL,
    mono_ms    INTEGER NOT NULL,
    hlc        TEXT NOT NULL
) STRICT;
CREATE INDEX events_rental_idx ON events (rental_id);

-- Closed rentals, append-only: one row each, written once when the rental closes.
CREATE TABLE ledger (
    rental_id  TEXT PRIMARY KEY NOT NULL,
    closed_hlc TEXT NOT NULL,
    row_json   TEXT NOT NULL
) STRICT;

-- Automerge documents: a compacted snapshot plus the changes appended since.
CREATE TABLE doc_snapshots (
    doc   TEXT PRIMARY KEY NOT NULL,
    bytes BLOB NOT NULL
) STRICT;
CREATE TABLE doc_changes (
    doc   TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (doc, seq)
) STRICT;
