-- Technicians on site. Every use of a technician credential on this device, allowed or
-- refused, in full (the live document keeps only the newest entries; the hub audits each id
-- once). `technician` is the credential's user id, '' when the credential could not be read.
CREATE TABLE technician_log (
    id         TEXT PRIMARY KEY NOT NULL,
    at_ms      INTEGER NOT NULL,
    technician TEXT NOT NULL,
    action     TEXT NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('allowed', 'refused')),
    detail     TEXT NOT NULL
) STRICT;

-- Bundle sequence numbers: `facts` is the last sequence this device gave a facts bundle it
-- produced; `intents` is the highest sequence of a hub intents bundle applied here (a bundle at
-- or below it is a replay and changes nothing).
CREATE TABLE bundle_seqs (
    kind TEXT PRIMARY KEY NOT NULL CHECK (kind IN ('facts', 'intents')),
    seq  INTEGER NOT NULL
) STRICT;
