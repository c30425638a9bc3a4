-- Device identity: the platform CA and one CA per chain, the hub's server certificate,
-- one-time enrollment codes, issued device certificates, and device revocation.
-- Forward-only: never edit this file once shipped; add a new migration.
--
-- CA and hub private keys are stored here as PEM, because the hub keeps no state outside
-- Postgres. Whoever can read these tables can mint device certificates: restrict them to the
-- hub's role, back them up encrypted, and move the keys to a KMS/HSM when one is available
-- (see cloud-hub/src/pki.rs).

CREATE TABLE certificate_authorities (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind       varchar(16) NOT NULL CHECK (kind IN ('platform', 'chain')),
    chain_id   uuid UNIQUE REFERENCES chains (id) ON DELETE CASCADE,
    cert_pem   text NOT NULL,
    key_pem    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'platform') = (chain_id IS NULL))
);
-- At most one platform CA: concurrent hubs race with INSERT ... ON CONFLICT DO NOTHING.
CREATE UNIQUE INDEX certificate_authorities_one_platform_idx
    ON certificate_authorities (kind) WHERE kind = 'platform';

-- The hub's server certificate (signed by the platform CA), shared by every hub process.
CREATE TABLE hub_identity (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    cert_pem   text NOT NULL,
    key_pem    text NOT NULL,
    not_after  timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One-time enrollment codes. Only the SHA-256 of the code is stored: a database reader
-- cannot enroll a device with what it reads here.
CREATE TABLE enrollment_codes (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code_hash  bytea NOT NULL UNIQUE CHECK (octet_length(code_hash) = 32),
    device_id  uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    chain_id   uuid NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
    branch_id  uuid NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX enrollment_codes_device_id_idx ON enrollment_codes (device_id);

-- Every certificate issued to a device (enrollment and renewals); serial is lowercase hex.
CREATE TABLE device_certificates (
    serial     varchar(64) PRIMARY KEY,
    device_id  uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    chain_id   uuid NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
    not_after  timestamptz NOT NULL,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX device_certificates_device_id_idx ON device_certificates (device_id);

-- A revoked device is refused at connect and disconnected within seconds.
ALTER TABLE devices ADD COLUMN revoked_at timestamptz;
