-- The device registry lives in meter and vehicle (one row per device): display name, site,
-- tags, state, creation time, broker login (secret_hash) and kind-specific metadata. Devices
-- that have reported stay registered and active (the defaults), created when first seen.
-- Tokens gain the 'admin' scope (device management). Rewrites every meter and vehicle row once
-- (the created_at backfill): the gateway waits for it at start.
ALTER TABLE meter
    ADD COLUMN display_name text,
    ADD COLUMN site text,
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN secret_hash text,
    ADD COLUMN nominal_voltage_v double precision CHECK (nominal_voltage_v > 0),
    ADD COLUMN phases smallint CHECK (phases IN (1, 3));
UPDATE meter SET created_at = first_seen_at;

ALTER TABLE vehicle
    ADD COLUMN display_name text,
    ADD COLUMN site text,
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN secret_hash text,
    ADD COLUMN battery_capacity_kwh double precision CHECK (battery_capacity_kwh > 0);
UPDATE vehicle SET created_at = first_seen_at;

ALTER TABLE api_token DROP CONSTRAINT api_token_scope_check;
ALTER TABLE api_token
    ADD CONSTRAINT api_token_scope_check CHECK (scope IN ('read', 'write', 'admin'));

-- Whoever keeps the broker's logins (a broker-sync process rendering Mosquitto's password and
-- ACL files from the registry) listens on fleetgate_logins and looks again when told. One
-- notification per device whose login changed (inserted, deleted, state or secret changed),
-- its broker username ({kind}/{id}) as payload; '' after a TRUNCATE (look at everything).
-- Nothing else fires it: the gateway's live-row updates do not touch these columns.
CREATE OR REPLACE FUNCTION fleetgate_notify_logins_changed()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('fleetgate_logins', '');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('fleetgate_logins', TG_TABLE_NAME || '/' || OLD.name);
    ELSE
        IF TG_OP = 'UPDATE' AND OLD.name <> NEW.name THEN
            PERFORM pg_notify('fleetgate_logins', TG_TABLE_NAME || '/' || OLD.name);
        END IF;
        PERFORM pg_notify('fleetgate_logins', TG_TABLE_NAME || '/' || NEW.name);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER meter_login_added_or_removed
    AFTER INSERT OR DELETE ON meter
    FOR EACH ROW EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE TRIGGER meter_login_changed
    AFTER UPDATE OF name, state, secret_hash ON meter
    FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.state IS DISTINCT FROM NEW.state
          OR OLD.secret_hash IS DISTINCT FROM NEW.secret_hash)
    EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE TRIGGER meter_logins_truncated
    AFTER TRUNCATE ON meter
    FOR EACH STATEMENT EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE TRIGGER vehicle_login_added_or_removed
    AFTER INSERT OR DELETE ON vehicle
    FOR EACH ROW EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE TRIGGER vehicle_login_changed
    AFTER UPDATE OF name, state, secret_hash ON vehicle
    FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.state IS DISTINCT FROM NEW.state
          OR OLD.secret_hash IS DISTINCT FROM NEW.secret_hash)
    EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE TRIGGER vehicle_logins_truncated
    AFTER TRUNCATE ON vehicle
    FOR EACH STATEMENT EXECUTE FUNCTION fleetgate_notify_logins_changed();
