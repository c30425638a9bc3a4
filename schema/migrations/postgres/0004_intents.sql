-- Intents: what the hub asks one device of a branch to do (unlock a post for maintenance, take
-- a post out of service or back, change the rental minutes, a note), and what the device
-- answered. The intent itself travels in the branch's intents document (`sync_documents`,
-- `branch/<uuid>/intents`); this table is its projection for listing, the dashboard and the
-- API. Forward-only: never edit this file once shipped; add a new migration.

CREATE TABLE intents (
    -- UUIDv7, the same id as the intent's key in the intents document.
    id             uuid PRIMARY KEY,
    chain_id       uuid NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
    branch_id      uuid NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    -- The one device that executes it.
    device_id      uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    -- `cartwise_sync_core::intents::IntentKind::as_str` (unlock_post, out_of_service, in_service,
    -- set_rental_minutes, note, assign_cart, force_return, set_firmware, ...); not checked
    -- here, so a new kind needs no migration.
    kind           varchar(32) NOT NULL,
    -- The branch-wide post number (`carts.cart_number`) the intent is about, if any.
    post           integer CHECK (post > 0),
    -- Kind-specific fields as written into the document (`minutes`, `text`, `phone`, `version`).
    payload        jsonb NOT NULL DEFAULT '{}'::jsonb,
    status         varchar(16) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'applied', 'failed', 'expired')),
    -- What the device said with its outcome (why it failed, what it did).
    outcome_detail text,
    -- When the device decided the outcome (its corrected wall time), whatever the outcome.
    outcome_at     timestamptz,
    created_by     varchar(255) NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- The device does not execute it after this (it answers `expired`).
    expires_at     timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'pending') = (outcome_at IS NULL))
);
CREATE INDEX intents_branch_created_idx ON intents (branch_id, created_at DESC);
CREATE INDEX intents_branch_status_idx ON intents (branch_id, status, created_at DESC);
CREATE INDEX intents_device_status_idx ON intents (device_id, status);

CREATE TRIGGER intents_touch BEFORE UPDATE ON intents
    FOR EACH ROW EXECUTE FUNCTION cartwise_touch_updated_at();

-- An intent's history in the audit log (created, refused, answered), and the "audited once"
-- check of refused outcomes, go through (target, action).
CREATE INDEX audit_log_target_idx ON audit_log (target, action) WHERE target IS NOT NULL;
