-- The telemetry outbox: events that are not rental facts (lock faults, bus trouble, status
-- snapshots), kept until the hub acknowledges them. Bounded by the daemon (`OUTBOX_ROWS_MAX`):
-- when full it drops the lowest priority, oldest first, and reports how many it dropped.
-- Priorities: 2 fault, 1 telemetry, 0 status. The edge gives every event of a boot its own
-- monotonic millisecond, so (device, boot, mono_ms, kind) names an event and the hub
-- deduplicates redeliveries on it.
CREATE TABLE outbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 2),
    kind     TEXT NOT NULL,
    data     TEXT NOT NULL,
    wall_ms  INTEGER NOT NULL,
    boot     TEXT NOT NULL,
    mono_ms  INTEGER NOT NULL
) STRICT;
-- Draining takes the highest priority first; eviction the lowest priority first.
CREATE INDEX outbox_priority_idx ON outbox (priority, id);

-- The outbox's own bookkeeping: how far the events log has been read, the last stamp given,
-- drops not yet reported and dropped in total.
CREATE TABLE outbox_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;
