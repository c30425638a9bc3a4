-- People who use the hub's REST API and dashboard: users with one role and a scope, their
-- dashboard sessions and API tokens; the audit log made append-only.
-- Forward-only: never edit this file once shipped; add a new migration.

-- A user's scope follows from the role: a platform admin sees everything (no chain); a chain
-- admin sees one chain; a branch manager and a technician see the branches listed in
-- user_branches (all of the user's chain); a viewer sees everything, one chain, or listed branches.
CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    login         varchar(100) NOT NULL UNIQUE,
    -- Argon2id in PHC string form (`$argon2id$v=19$...`): salt and parameters included.
    password_hash text NOT NULL,
    role          varchar(20) NOT NULL
        CHECK (role IN ('platform_admin', 'chain_admin', 'branch_manager', 'technician', 'viewer')),
    chain_id      uuid REFERENCES chains (id) ON DELETE CASCADE,
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'platform_admin' OR chain_id IS NULL),
    CHECK (role NOT IN ('chain_admin', 'branch_manager', 'technician') OR chain_id IS NOT NULL)
);

CREATE TABLE user_branches (
    user_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    branch_id uuid NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, branch_id)
);
CREATE INDEX user_branches_branch_idx ON user_branches (branch_id);

-- Dashboard sessions (a cookie) and API tokens (a bearer header). Only the SHA-256 of the
-- secret is stored: a database reader cannot act as a user with what it reads here.
CREATE TABLE user_credentials (
    token_hash   bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         varchar(16) NOT NULL CHECK (kind IN ('session', 'api_token')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    last_used_at timestamptz
);
CREATE INDEX user_credentials_user_idx ON user_credentials (user_id, created_at);
CREATE INDEX user_credentials_expiry_idx ON user_credentials (expires_at);

CREATE TRIGGER users_touch BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION cartwise_touch_updated_at();

-- The audit log is append-only: no row is ever changed, and a row is deleted only by the
-- retention sweep once it is older than 400 days.
CREATE FUNCTION cartwise_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.at < now() - interval '400 days' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION cartwise_audit_append_only();
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, at);

