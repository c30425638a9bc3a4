-- Sync progress with each peer (the hub, a branch Pi, a technician's laptop): the encoded
-- Automerge sync state per (peer, document), so a reconnect resumes in one round trip.
CREATE TABLE sync_peer_states (
    peer  TEXT NOT NULL,
    doc   TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (peer, doc)
) STRICT;
