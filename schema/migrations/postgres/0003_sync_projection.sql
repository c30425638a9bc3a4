-- What the hub keeps of sync: the documents themselves (the hub keeps no state outside
-- Postgres), per-peer sync progress, anomalies reported by devices, and where a rental ended.

-- One row per Automerge document the hub holds: a device's facts or a branch's intents.
CREATE TABLE sync_documents (
    doc_id     text PRIMARY KEY,
    branch_id  uuid NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    device_id  uuid REFERENCES devices (id) ON DELETE CASCADE,
    snapshot   bytea NOT NULL,
    heads      bytea NOT NULL DEFAULT ''::bytea,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_documents_branch_idx ON sync_documents (branch_id);

-- The hub's per-peer Automerge sync state (`sync::State::encode()`), so a reconnect resumes.
-- A state may exist before the hub stores the document (the peer has sent nothing yet).
CREATE TABLE sync_peer_states (
    doc_id     text NOT NULL,
    peer_id    uuid NOT NULL,
    state      bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (doc_id, peer_id)
);

-- Anomalies a device recorded (unmatched docks, unrecorded unlocks, jams, ...), for managers.
CREATE TABLE anomalies (
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    anomaly_key text NOT NULL,
    branch_id   uuid NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    kind        varchar(50) NOT NULL,
    cart_number integer,
    rental_id   uuid,
    detail      text NOT NULL,
    at          timestamptz NOT NULL,
    resolved_at timestamptz,
    PRIMARY KEY (device_id, anomaly_key)
);
CREATE INDEX anomalies_branch_idx ON anomalies (branch_id, at);

-- Where a rental started and ended (a return may dock at another post, on another Pi), which
-- device recorded it, and whether its times were backed by a trusted clock.
ALTER TABLE rentals ADD COLUMN device_id uuid REFERENCES devices (id);
ALTER TABLE rentals ADD COLUMN return_cart_id uuid REFERENCES carts (id);
ALTER TABLE rentals ADD COLUMN time_trusted boolean NOT NULL DEFAULT false;
ALTER TABLE rentals ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- Append-only audit log: who did what to what (refused writes included).
CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor_kind varchar(20) NOT NULL,
    actor_id   text NOT NULL,
    chain_id   uuid,
    branch_id  uuid,
    action     varchar(80) NOT NULL,
    target     text,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_scope_idx ON audit_log (chain_id, branch_id, at);
