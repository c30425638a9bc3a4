-- Telemetry is delivered at least once: an edge sends an event again until the hub
-- acknowledges its batch. Each event carries the clocks it was stamped with, and an edge never
-- gives two events of one kind the same (boot, monotonic millisecond), so
-- (device, boot, mono_ms, event_type) names an event and a redelivery inserts nothing.
-- Rows written before this migration (and by senders without clocks) have NULL boot, which
-- never conflicts.
ALTER TABLE telemetry ADD COLUMN boot uuid;
ALTER TABLE telemetry ADD COLUMN mono_ms bigint;
CREATE UNIQUE INDEX telemetry_event_key_idx ON telemetry (device_id, boot, mono_ms, event_type);
