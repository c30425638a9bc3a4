-- Incremental document storage for the hub's merge path, and returns docked at another device.

-- Every write to a document bumps `version`: a hub process that caches the document compares
-- it (cheaply, under the row lock) before using its copy, so another process's writes are
-- never lost. `chunk_count`/`chunk_bytes` say how much sits in `sync_document_changes` since
-- the snapshot; past a limit the next write compacts them into a new snapshot.
ALTER TABLE sync_documents ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE sync_documents ADD COLUMN chunk_count integer NOT NULL DEFAULT 0;
ALTER TABLE sync_documents ADD COLUMN chunk_bytes bigint NOT NULL DEFAULT 0;
CREATE INDEX sync_documents_updated_idx ON sync_documents (updated_at);

-- A writer that replaces the snapshot without bumping the version (a whole-document write
-- outside the merge path) still moves it, so no cached copy survives the change.
CREATE FUNCTION sync_documents_bump_version() RETURNS trigger AS $$
BEGIN
    IF NEW.version = OLD.version AND NEW.snapshot IS DISTINCT FROM OLD.snapshot THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER sync_documents_version BEFORE UPDATE ON sync_documents
    FOR EACH ROW EXECUTE FUNCTION sync_documents_bump_version();

-- Changes appended since the document's snapshot (`save_after` chunks), in version order.
CREATE TABLE sync_document_changes (
    doc_id  text NOT NULL REFERENCES sync_documents (doc_id) ON DELETE CASCADE,
    version bigint NOT NULL,
    chunk   bytea NOT NULL,
    PRIMARY KEY (doc_id, version)
);

-- A cart of a rental started at one device (`origin_device_id`) that docked at another
-- device's post (`device_id`, `return_cart_id`). The first return recorded for a rental wins;
-- it closes the rental row if the row is open, now or when the origin's document arrives.
-- `folded` turns true once the origin device's own document shows the rental closed.
CREATE TABLE rental_returns (
    rental_id        uuid PRIMARY KEY,
    branch_id        uuid NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    device_id        uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    origin_device_id uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    return_cart_id   uuid REFERENCES carts (id),
    status           varchar(20) NOT NULL,
    end_at           timestamptz NOT NULL,
    time_trusted     boolean NOT NULL,
    folded           boolean NOT NULL DEFAULT false,
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rental_returns_device_idx ON rental_returns (device_id) WHERE folded;
