-- Broker logins of the services (the gateway's consumer, its alert publisher, the API's
-- publisher, field engineers); a device's login is its registry row. broker_sync renders
-- Mosquitto's password and ACL files from both and is told of every change.
CREATE TABLE broker_login (
    username    text PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9._-]{1,64}$'),
    role        text NOT NULL CHECK (role IN ('gateway', 'alerts', 'api', 'engineer')),
    secret_hash text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER broker_login_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON broker_login
    FOR EACH STATEMENT EXECUTE FUNCTION fleetgate_notify_logins_changed();
