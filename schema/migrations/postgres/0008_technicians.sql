-- Technicians on site: the credentials the hub issued to technicians (one certificate per
-- branch, signed by the chain CA), technician revocation, the high-water marks of the signed
-- bundles the hub applied (replay protection), and the sequence of the intents bundles it
-- produced per branch.
-- Forward-only: never edit this file once shipped; add a new migration.

-- A revoked technician gets no new credentials; the ones issued expire on their own (at most
-- 168 hours), because a Pi offline cannot learn of the revocation.
ALTER TABLE users ADD COLUMN technician_revoked_at timestamptz;

-- Every technician certificate issued; serial is lowercase hex.
CREATE TABLE technician_credentials (
    serial     varchar(64) PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    chain_id   uuid NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
    branch_id  uuid NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    not_after  timestamptz NOT NULL
);
CREATE INDEX technician_credentials_user_idx ON technician_credentials (user_id, issued_at);

-- The highest bundle sequence applied per producer (`device/<uuid>` or `hub`) and kind: a
-- bundle at or below it is reported "already applied" and changes nothing (-1: none yet).
CREATE TABLE bundle_high_water (
    producer   varchar(64) NOT NULL,
    kind       varchar(16) NOT NULL CHECK (kind IN ('facts', 'intents')),
    seq        bigint NOT NULL CHECK (seq >= -1),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (producer, kind)
);

-- The last sequence number of the intents bundles the hub produced for each branch.
CREATE TABLE intents_bundle_seq (
    branch_id  uuid PRIMARY KEY REFERENCES branches (id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The technician-log entries of device documents already written to audit_log, so each entry
-- (keyed by the device and its UUIDv7 id) is audited once however often the document arrives.
CREATE TABLE technician_log_audited (
    device_id  uuid NOT NULL,
    entry_id   varchar(64) NOT NULL,
    audited_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, entry_id)
);
