-- What this device knows of the other Pis of its branch, and the returns it shares with them.
-- Forward-only: never edit once shipped; add a new numbered file.

-- Open rentals of the branch's other devices, as their documents held here last said. Rebuilt
-- for a device whenever its document changes (from the device itself on the LAN, or relayed by
-- the hub). Serves the branch-wide rules: one open rental per phone, and a return here of a
-- rental started elsewhere.
CREATE TABLE peer_rentals (
    rental_id    TEXT PRIMARY KEY NOT NULL,
    origin       TEXT NOT NULL,
    phone        TEXT NOT NULL,
    post         INTEGER NOT NULL,
    status       TEXT NOT NULL,
    taken        INTEGER NOT NULL,
    minutes      INTEGER NOT NULL,
    start_at     INTEGER NOT NULL,
    start_hlc    TEXT NOT NULL
) STRICT;
CREATE INDEX peer_rentals_phone_idx ON peer_rentals (phone);
CREATE INDEX peer_rentals_origin_idx ON peer_rentals (origin);

-- Rentals that a held document's `returns` says docked at that device.
CREATE TABLE peer_returns (
    rental_id   TEXT NOT NULL,
    returned_by TEXT NOT NULL,
    PRIMARY KEY (rental_id, returned_by)
) STRICT;

-- Rentals started at another device whose carts docked here: each is also a `returns` entry
-- of this device's live document. A reservation for such a rental (initiate-return here) is an
-- ordinary `return_reservations` row keyed by the foreign rental's id.
CREATE TABLE foreign_returns (
    rental_id    TEXT PRIMARY KEY NOT NULL,
    origin       TEXT NOT NULL,
    phone        TEXT NOT NULL,
    post         INTEGER NOT NULL,
    status       TEXT NOT NULL,
    end_wall_ms  INTEGER NOT NULL,
    end_boot     TEXT NOT NULL,
    end_mono_ms  INTEGER NOT NULL,
    end_hlc      TEXT NOT NULL,
    end_at       INTEGER NOT NULL,
    time_trusted INTEGER NOT NULL,
    matched_by   TEXT NOT NULL
) STRICT;
CREATE INDEX foreign_returns_phone_idx ON foreign_returns (phone);

-- Returns of this device's rentals recorded by other devices, folded here exactly once:
-- outcome 'closed' (the rental was closed from it) or the anomaly kind recorded for it.
CREATE TABLE folded_returns (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    rental_id   TEXT NOT NULL,
    returned_by TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    UNIQUE (rental_id, returned_by)
) STRICT;

-- Pairs of open rentals of one phone found on two devices of the branch (started while they
-- were out of touch): each recorded once as a `duplicate_phone_rental` anomaly, by the device
-- whose rental started later.
CREATE TABLE duplicate_rentals (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    rental_id TEXT NOT NULL,
    other_id  TEXT NOT NULL,
    UNIQUE (rental_id, other_id)
) STRICT;
