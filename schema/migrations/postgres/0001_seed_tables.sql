-- The seed tables of the existing CartWise design: chains > branches > devices > controllers > carts,
-- rentals and telemetry. Forward-only: never edit this file once shipped; add a new migration.

CREATE FUNCTION cartwise_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE chains (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        varchar(255) NOT NULL,
    slug        varchar(100) NOT NULL UNIQUE,
    description text,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE branches (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    chain_id    uuid NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
    name        varchar(255) NOT NULL,
    branch_code varchar(50) NOT NULL UNIQUE,
    address     text,
    city        varchar(100),
    latitude    numeric(10, 8),
    longitude   numeric(11, 8),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX branches_chain_id_idx ON branches (chain_id);

CREATE TABLE devices (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id        uuid NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    device_name      varchar(255) NOT NULL,
    mac_address      varchar(17) UNIQUE,
    serial_number    varchar(100),
    status           varchar(20) NOT NULL DEFAULT 'offline',
    last_heartbeat   timestamptz,
    firmware_version varchar(50),
    ip_address       varchar(45),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_branch_id_idx ON devices (branch_id);

CREATE TABLE controllers (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id          uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    controller_address integer NOT NULL CHECK (controller_address BETWEEN 0 AND 9),
    port               varchar(100) NOT NULL,
    baudrate           integer NOT NULL DEFAULT 19200,
    status             varchar(20) NOT NULL DEFAULT 'unknown',
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, port, controller_address)
);

CREATE TABLE carts (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id         uuid NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    controller_id     uuid REFERENCES controllers (id) ON DELETE SET NULL,
    cart_number       integer NOT NULL CHECK (cart_number > 0),
    locker_id         integer NOT NULL CHECK (locker_id >= 0),
    status            varchar(20) NOT NULL DEFAULT 'available',
    is_locked         boolean NOT NULL DEFAULT true,
    assigned_to       varchar(20),
    last_used         timestamptz,
    maintenance_notes text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (branch_id, cart_number)
);
CREATE INDEX carts_controller_id_idx ON carts (controller_id);

CREATE TABLE rentals (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    cart_id          uuid NOT NULL REFERENCES carts (id),
    branch_id        uuid NOT NULL REFERENCES branches (id),
    user_phone       varchar(20) NOT NULL,
    start_time       timestamptz NOT NULL,
    expected_return  timestamptz NOT NULL,
    actual_return    timestamptz,
    status           varchar(20) NOT NULL DEFAULT 'active',
    duration_minutes integer,
    notes            text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rentals_branch_status_idx ON rentals (branch_id, status);
CREATE INDEX rentals_cart_id_idx ON rentals (cart_id);
CREATE INDEX rentals_user_phone_idx ON rentals (user_phone);
CREATE INDEX rentals_start_time_idx ON rentals (start_time);

-- Telemetry is append-only and kept 90 days: range queries go through (device_id, timestamp);
-- the BRIN index keeps the retention sweep (DELETE ... WHERE timestamp < now() - 90 days) cheap.
CREATE TABLE telemetry (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    event_type varchar(50) NOT NULL,
    event_data jsonb NOT NULL DEFAULT '{}'::jsonb,
    "timestamp" timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX telemetry_device_time_idx ON telemetry (device_id, "timestamp");
CREATE INDEX telemetry_time_brin_idx ON telemetry USING brin ("timestamp");

CREATE TRIGGER chains_touch BEFORE UPDATE ON chains
    FOR EACH ROW EXECUTE FUNCTION cartwise_touch_updated_at();
CREATE TRIGGER branches_touch BEFORE UPDATE ON branches
    FOR EACH ROW EXECUTE FUNCTION cartwise_touch_updated_at();
CREATE TRIGGER devices_touch BEFORE UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION cartwise_touch_updated_at();
CREATE TRIGGER carts_touch BEFORE UPDATE ON carts
    FOR EACH ROW EXECUTE FUNCTION cartwise_touch_updated_at();
