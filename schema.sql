-- fleetgate schema: what a new database gets. Idempotent (IF NOT EXISTS, OR REPLACE), so that it
-- can be applied again to repair a database that lost an object. A database made by an earlier
-- version is brought here by the numbered migrations in gateway/migrations/ instead, so a change
-- goes both here and into a new migration (docs/schema.md); tests/test_migrations.py checks that
-- the two agree.

-- Database roles (docs/security.md): fleetgate_owner owns everything below; the gateway, the
-- API and analysts (fleetgate_gateway, fleetgate_api, fleetgate_readonly) get, at the end of this
-- file, only what they use. An operator gives each service a login role that is a member of one.
-- The roles are created if missing (it takes CREATEROLE). They are the cluster's, so a second
-- fleetgate database of the same cluster finds them; without CREATEROLE, and without them, this
-- script stops here with an error saying what to do. A migrator that is not a superuser
-- can hand the objects to fleetgate_owner only as its member: one that may create roles makes
-- itself one (it owns the objects until then anyway).
DO $$
DECLARE
    wanted text;
    may_create_roles boolean := (SELECT rolsuper OR rolcreaterole FROM pg_roles
                                 WHERE rolname = current_user);
BEGIN
    FOREACH wanted IN ARRAY ARRAY['fleetgate_owner', 'fleetgate_gateway', 'fleetgate_api',
                                  'fleetgate_readonly'] LOOP
        CONTINUE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = wanted);
        IF NOT may_create_roles THEN
            RAISE EXCEPTION 'role % does not exist, and % may not create roles', wanted, current_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Create the fleetgate roles as a superuser (docs/security.md),'
                             ' or migrate as one.';
        END IF;
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', wanted);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile, migrating another database of the cluster
        END;
    END LOOP;
    IF NOT pg_has_role('fleetgate_owner', 'MEMBER') THEN
        IF NOT may_create_roles THEN
            RAISE EXCEPTION '% is not a member of fleetgate_owner, which owns the schema',
                            current_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Migrate as a superuser or as a member of fleetgate_owner'
                             ' (docs/security.md).';
        END IF;
        EXECUTE format('GRANT fleetgate_owner TO %I', current_user);
    END IF;
END
$$;

-- The owner creates in the schema (partitions, later migrations); the others use it. The
-- database: CONNECT for all, TEMPORARY where a pool makes staging tables (gateway.database),
-- granted when the migrator may (the database's owner); PUBLIC has both unless revoked.
DO $$
DECLARE
    service text;
BEGIN
    IF NOT has_schema_privilege('fleetgate_owner', current_schema(), 'CREATE') THEN
        EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO fleetgate_owner', current_schema());
        IF NOT has_schema_privilege('fleetgate_owner', current_schema(), 'CREATE') THEN
            RAISE EXCEPTION '% may not let fleetgate_owner create in schema %', current_user,
                            current_schema()
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Migrate as a superuser or as the owner of the schema.';
        END IF;
    END IF;
    FOREACH service IN ARRAY ARRAY['fleetgate_gateway', 'fleetgate_api',
                                   'fleetgate_readonly'] LOOP
        IF NOT has_schema_privilege(service, current_schema(), 'USAGE') THEN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), service);
        END IF;
    END LOOP;
    IF pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()),
                   'MEMBER') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO fleetgate_owner, fleetgate_gateway,'
                       ' fleetgate_api, fleetgate_readonly', current_database());
        EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO fleetgate_gateway, fleetgate_api',
                       current_database());
    END IF;
END
$$;

-- The schema version the database is at, and how it got there: one row per migration applied
-- (its file), or one row for the version a new database was built at (schema.sql). A database
-- made by fleetgate 0.1.0 has none (it has schema_applied): it is version 1.
CREATE TABLE IF NOT EXISTS schema_migration (
    version     integer PRIMARY KEY,
    script      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Hot: one row per device. The row is also the device registry: its integer id is what the
-- history tables store, so a 64-character device name costs 4 bytes per history row. A device
-- is registered by an operator (HTTP /v1/devices, `python -m http_api device`) or by its first
-- reading, which registers it active with the defaults; received_at is when it was last seen.
-- secret_hash is its broker login (Mosquitto's password-file hash, gateway/broker_logins.py;
-- NULL: none yet). The registry columns are never indexed: the gateway's live-row updates stay
-- HOT, and listing 10,000 devices reads a few hundred pages.
CREATE TABLE IF NOT EXISTS meter (
    meter_id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE,  -- the device id, as in its topic
    first_seen_at     timestamptz NOT NULL DEFAULT now(),
    ts                timestamptz,          -- when the latest reading was taken
    received_at       timestamptz,          -- when the gateway received it
    consumed_ac_mwh   bigint,               -- energy of the latest interval, in mWh
    voltage           real,
    display_name      text,
    site              text,
    tags              text[] NOT NULL DEFAULT '{}',
    state             text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    secret_hash       text,
    nominal_voltage_v double precision CHECK (nominal_voltage_v > 0),  -- NULL: VOLTAGE_NOMINAL_V
    phases            smallint CHECK (phases IN (1, 3))
);

CREATE TABLE IF NOT EXISTS vehicle (
    vehicle_id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    first_seen_at        timestamptz NOT NULL DEFAULT now(),
    ts                   timestamptz,
    received_at          timestamptz,
    soc                  real,
    delivered_dc_mwh     bigint,
    battery_temp         real,
    display_name         text,
    site                 text,
    tags                 text[] NOT NULL DEFAULT '{}',
    state                text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    secret_hash          text,
    battery_capacity_kwh double precision CHECK (battery_capacity_kwh > 0)
);

-- Cold: append-only history, one partition per UTC day. Columns are ordered widest first so
-- that no alignment padding is wasted. The primary key (device, ts) makes a repeated reading a
-- no-op and serves every per-device time-range query. Energy is stored as an integer number of
-- milliwatt-hours (kWh x 1,000,000, far below any meter's resolution) so that every sum is
-- exact and independent of order: rollups and raw history agree to the last digit. Voltage,
-- state of charge and temperature fit real.
CREATE TABLE IF NOT EXISTS meter_reading (
    ts              timestamptz NOT NULL,
    consumed_ac_mwh bigint NOT NULL,
    meter_id        integer NOT NULL,
    voltage         real NOT NULL,
    PRIMARY KEY (meter_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS vehicle_reading (
    ts               timestamptz NOT NULL,
    delivered_dc_mwh bigint NOT NULL,
    vehicle_id       integer NOT NULL,
    soc              real NOT NULL,
    battery_temp     real NOT NULL,
    PRIMARY KEY (vehicle_id, ts)
) PARTITION BY RANGE (ts);

-- Hourly rollups per device (hour = UTC hour start), maintained by the gateway in the same
-- transaction as the history rows, from the rows actually inserted (a duplicate never counts
-- twice). Whole hours of a window are read here, the partial hours at its edges from history.
-- The rollup levels and their columns are declared in gateway/rollup_levels.py.
CREATE TABLE IF NOT EXISTS meter_hourly (
    meter_id        integer NOT NULL,
    hour            timestamptz NOT NULL,
    consumed_ac_mwh bigint NOT NULL,
    readings        integer NOT NULL,
    voltage_min     real NOT NULL,
    voltage_max     real NOT NULL,
    PRIMARY KEY (meter_id, hour)
);

CREATE TABLE IF NOT EXISTS vehicle_hourly (
    vehicle_id       integer NOT NULL,
    hour             timestamptz NOT NULL,
    delivered_dc_mwh bigint NOT NULL,
    readings         integer NOT NULL,
    battery_temp_sum double precision NOT NULL,
    battery_temp_min real NOT NULL,
    battery_temp_max real NOT NULL,
    PRIMARY KEY (vehicle_id, hour)
);

-- The sum of bigints as a bigint, exact, and an error past 9.2e18 (sum(bigint) returns a numeric
-- and keeps a 128-bit state per group: the fleet view adds ~60,000 rows a half, where that state
-- cost ~5 ms a column).
CREATE OR REPLACE AGGREGATE fleetgate_sum(bigint) (
    SFUNC = int8pl, STYPE = bigint, COMBINEFUNC = int8pl, PARALLEL = SAFE
);

-- Daily rollups per device (day = UTC midnight), energy and counts only, maintained with the
-- hourly ones from the same inserted rows. The fleet view takes a window's whole days from here.
CREATE TABLE IF NOT EXISTS meter_daily (
    meter_id        integer NOT NULL,
    day             timestamptz NOT NULL,
    consumed_ac_mwh bigint NOT NULL,
    readings        integer NOT NULL,
    PRIMARY KEY (meter_id, day)
);

CREATE TABLE IF NOT EXISTS vehicle_daily (
    vehicle_id       integer NOT NULL,
    day              timestamptz NOT NULL,
    delivered_dc_mwh bigint NOT NULL,
    readings         integer NOT NULL,
    PRIMARY KEY (vehicle_id, day)
);

-- Everything that could not be stored as a reading, with the reason, so nothing is lost unseen.
CREATE TABLE IF NOT EXISTS dead_letter (
    dead_letter_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at    timestamptz NOT NULL,
    topic          text NOT NULL,
    device_kind    text,
    device_name    text,
    reason         text NOT NULL,
    payload        bytea NOT NULL,          -- the raw bytes (first KiB of an oversized payload)
    payload_bytes  integer NOT NULL         -- the size that arrived
);
CREATE INDEX IF NOT EXISTS dead_letter_received_at_idx ON dead_letter (received_at);
CREATE INDEX IF NOT EXISTS dead_letter_device_idx
    ON dead_letter (device_kind, device_name, received_at);

-- Dead letters past a device's cap (DEAD_LETTERS_PER_DEVICE a minute, DEAD_LETTERS_PER_MINUTE in
-- all): counted, one row per device and minute, with the first of them as a sample. Device kind
-- and name are '' for dead letters of devices past the number tracked one by one, and for topics
-- that name no device.
CREATE TABLE IF NOT EXISTS dead_letter_overflow (
    window_start     timestamptz NOT NULL,
    device_kind      text NOT NULL,
    device_name      text NOT NULL,
    dead_letters     bigint NOT NULL,          -- how many were counted instead of kept
    last_received_at timestamptz NOT NULL,
    sample_reason    text NOT NULL,
    sample_payload   bytea NOT NULL,
    sample_bytes     integer NOT NULL,
    PRIMARY KEY (device_kind, device_name, window_start)
);
CREATE INDEX IF NOT EXISTS dead_letter_overflow_received_idx
    ON dead_letter_overflow (last_received_at);

-- Alerts for field engineers: at most one active alert per (device, rule), raised and cleared by
-- the gateway, kept afterwards as history. The active alerts are the evaluation state: a restarted
-- gateway neither raises an active alert again nor forgets to clear it.
CREATE TABLE IF NOT EXISTS alert (
    alert_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_kind text NOT NULL,
    device_name text NOT NULL,
    rule        text NOT NULL,
    raised_at   timestamptz NOT NULL,
    cleared_at  timestamptz,
    value       double precision NOT NULL,  -- the worst value seen while active
    threshold   double precision NOT NULL,
    clear_value double precision,           -- the value that cleared it
    message     text NOT NULL,
    -- an engineer's acknowledgement (POST /v1/alerts/{id}/ack), at most one: when, the API
    -- token's name and id as the API answers them, the token's id, the note
    acknowledged_at       timestamptz,
    acknowledged_by       text,
    acknowledged_token_id integer,
    acknowledged_note     text
);
CREATE UNIQUE INDEX IF NOT EXISTS alert_one_active_idx
    ON alert (device_kind, device_name, rule) WHERE cleared_at IS NULL;
CREATE INDEX IF NOT EXISTS alert_raised_at_idx ON alert (raised_at);
CREATE INDEX IF NOT EXISTS alert_device_idx ON alert (device_name, raised_at);

-- Outbox of alert changes, and so each alert's history: written in the transaction that raises,
-- acknowledges (the API) or clears, published to MQTT after the commit and marked; after a crash
-- the unmarked ones are published again (at least once; the alert id tells a subscriber it has
-- seen it).
CREATE TABLE IF NOT EXISTS alert_event (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alert (alert_id),
    state        text NOT NULL CHECK (state IN ('raised', 'cleared', 'acknowledged')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS alert_event_unpublished_idx
    ON alert_event (event_id) WHERE published_at IS NULL;
-- Ended alerts expire with their events (fleetgate_expire_rows): each deletion finds an alert's
-- events here, and so does the foreign key's check of each alert deleted.
CREATE INDEX IF NOT EXISTS alert_event_alert_idx ON alert_event (alert_id);

-- The retention horizon of each kind's history (gateway/retention.py): its days before kept_from
-- were dropped by fleetgate_drop_history_partition. A reading that arrives for one of them later
-- is a dead letter (its day is past retention), and its partition is not made again.
CREATE TABLE IF NOT EXISTS history_horizon (
    device_kind text PRIMARY KEY CHECK (device_kind IN ('meter', 'vehicle')),
    kept_from   date NOT NULL,        -- the first UTC day that was not dropped
    dropped_at  timestamptz NOT NULL  -- when the latest day was dropped
);

-- Finished days whose history partitions were compacted (gateway/compaction.py: their indexes
-- rebuilt by REINDEX CONCURRENTLY), once each, with the index bytes before and after. A day's row
-- goes with its partition.
CREATE TABLE IF NOT EXISTS history_compaction (
    device_kind        text NOT NULL CHECK (device_kind IN ('meter', 'vehicle')),
    day                date NOT NULL,
    compacted_at       timestamptz NOT NULL,
    index_bytes_before bigint NOT NULL,
    index_bytes_after  bigint NOT NULL,
    PRIMARY KEY (device_kind, day)
);

-- Creates the daily partition of `parent` that holds `day` (UTC), unless it exists, and returns
-- true; for a day before the history's retention horizon (history_horizon) it makes nothing and
-- returns false: that day was dropped, and a reading for it is past retention. Safe to call from
-- many sessions at once: they queue on a transaction-scoped advisory lock, which
-- fleetgate_drop_history_partition takes too, so a day is never made again as it is dropped. It
-- runs as its owner (the tables' owner), so that the gateway needs no right to create tables:
-- hence only for the two history tables, with a search_path nobody else can put objects in.
CREATE OR REPLACE FUNCTION fleetgate_ensure_partition(parent regclass, day date)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent_schema text;
    parent_name text;
    partition_name text;
    kept_from date;
BEGIN
    SELECT n.nspname, c.relname INTO parent_schema, parent_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = parent AND c.relkind = 'p' AND c.relpersistence = 'p'
      AND c.relname IN ('meter_reading', 'vehicle_reading');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fleetgate_ensure_partition: % is not a history table', parent
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    partition_name := format('%s_%s', parent_name, to_char(day, 'YYYYMMDD'));
    PERFORM pg_advisory_xact_lock(hashtext('fleetgate_ensure_partition'));
    EXECUTE format('SELECT kept_from FROM %I.history_horizon WHERE device_kind = $1',
                   parent_schema)
        INTO kept_from USING split_part(parent_name, '_', 1);
    IF day < kept_from THEN
        RETURN false;
    END IF;
    IF to_regclass(format('%I.%I', parent_schema, partition_name)) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
            parent_schema, partition_name, parent_schema, parent_name,
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END IF;
    RETURN true;
END
$$;

-- Retention (gateway/retention.py): the gateway may not drop or delete, but through these two,
-- which run as their owner and do only this. This one drops the daily partition of `parent` (a
-- history table) that holds `day`, only a day that ended more than a day ago (UTC), and moves
-- the retention horizon past it; false if there is no such partition (nothing changes). DROP
-- holds an exclusive lock on the parent until the commit, and every writer queues behind it
-- while it waits for that lock: so it waits at most 100 ms, then fails with lock_not_available
-- and is tried again later.
CREATE OR REPLACE FUNCTION fleetgate_drop_history_partition(parent regclass, day date)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '100ms'
AS $$
DECLARE
    parent_schema text;
    parent_name text;
    kind text;
    doomed regclass;
BEGIN
    SELECT n.nspname, c.relname INTO parent_schema, parent_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = parent AND c.relkind = 'p' AND c.relpersistence = 'p'
      AND c.relname IN ('meter_reading', 'vehicle_reading');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fleetgate_drop_history_partition: % is not a history table', parent
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF day IS NULL OR day > (now() AT TIME ZONE 'UTC')::date - 2 THEN
        RAISE EXCEPTION 'fleetgate_drop_history_partition: day % ended less than a day ago', day
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    kind := split_part(parent_name, '_', 1);
    PERFORM pg_advisory_xact_lock(hashtext('fleetgate_ensure_partition'));
    SELECT i.inhrelid::regclass INTO doomed
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent AND c.relkind = 'r'
      AND c.relname = format('%s_%s', parent_name, to_char(day, 'YYYYMMDD'));
    IF doomed IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE %s', doomed);
    EXECUTE format(
        'INSERT INTO %I.history_horizon AS h (device_kind, kept_from, dropped_at)'
        ' VALUES ($1, $2, now()) ON CONFLICT (device_kind) DO UPDATE'
        ' SET kept_from = greatest(h.kept_from, EXCLUDED.kept_from), dropped_at = now()',
        parent_schema)
        USING kind, day + 1;
    EXECUTE format('DELETE FROM %I.history_compaction WHERE device_kind = $1 AND day = $2',
                   parent_schema)
        USING kind, day;
    RETURN true;
END
$$;

-- This one deletes at most max_rows rows of `target` (rollups, dead letters, or ended alerts with
-- their outbox events) from before `before`, which must be a day or more before today (UTC), and
-- returns how many it deleted: the caller calls again until fewer come back, each call a short
-- transaction. Rows that a writer holds are skipped (the next call takes them), so it never
-- waits for the gateway's writes.
CREATE OR REPLACE FUNCTION fleetgate_expire_rows(target regclass, before timestamptz,
                                                 max_rows integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target_schema text;
    target_name text;
    deleted integer;
BEGIN
    SELECT n.nspname, c.relname INTO target_schema, target_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = target AND c.relkind = 'r' AND c.relpersistence = 'p'
      AND c.relname IN ('meter_hourly', 'vehicle_hourly', 'meter_daily', 'vehicle_daily',
                        'dead_letter', 'dead_letter_overflow', 'alert');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fleetgate_expire_rows: % is not a table whose rows expire', target
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF before IS NULL
       OR before > date_trunc('day', now(), 'UTC') - interval '1 day' THEN
        RAISE EXCEPTION 'fleetgate_expire_rows: % is less than a day before today', before
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'fleetgate_expire_rows: max_rows must be 1 to 100000, not %', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF target_name = 'alert' THEN
        -- an alert cleared before `before` was raised before it too: raised_at is indexed
        EXECUTE format(
            'WITH expired AS (SELECT alert_id FROM %1$I.alert'
            '    WHERE raised_at < $1 AND cleared_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED),'
            ' events AS (DELETE FROM %1$I.alert_event e USING expired x'
            '    WHERE e.alert_id = x.alert_id)'
            ' DELETE FROM %1$I.alert a USING expired x WHERE a.alert_id = x.alert_id',
            target_schema)
            USING before, max_rows;
    ELSE
        EXECUTE format(
            'DELETE FROM %1$I.%2$I WHERE ctid = ANY (ARRAY('
            'SELECT ctid FROM %1$I.%2$I WHERE %3$I < $1 LIMIT $2 FOR UPDATE SKIP LOCKED))',
            target_schema, target_name,
            CASE target_name
                WHEN 'dead_letter' THEN 'received_at'
                WHEN 'dead_letter_overflow' THEN 'last_received_at'
                WHEN 'meter_daily' THEN 'day'
                WHEN 'vehicle_daily' THEN 'day'
                ELSE 'hour'
            END)
            USING before, max_rows;
    END IF;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- HTTP API
-- Which meter feeds which vehicle's charger, and since when: vehicles move between chargers, so
-- a link is never updated in place; it is ended (valid_to) and a new one begins. At most one open
-- link per vehicle and per meter (a charger charges one vehicle at a time), so AC energy is never
-- counted for two vehicles.
CREATE TABLE IF NOT EXISTS vehicle_link (
    link_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id integer NOT NULL REFERENCES vehicle (vehicle_id),
    meter_id   integer NOT NULL REFERENCES meter (meter_id),
    valid_from timestamptz NOT NULL,
    valid_to   timestamptz,                 -- NULL while the link holds
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE UNIQUE INDEX IF NOT EXISTS vehicle_link_open_vehicle_idx
    ON vehicle_link (vehicle_id) WHERE valid_to IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS vehicle_link_open_meter_idx
    ON vehicle_link (meter_id) WHERE valid_to IS NULL;
CREATE INDEX IF NOT EXISTS vehicle_link_vehicle_idx ON vehicle_link (vehicle_id, valid_from);
CREATE INDEX IF NOT EXISTS vehicle_link_meter_idx ON vehicle_link (meter_id, valid_from);
-- The fleet view's links that hold in its window: the open ones and those ended inside it,
-- without reading every link ever made (a year of re-linking one vehicle in ten a day is
-- ~365,000 rows: 40 ms a scan).
CREATE INDEX IF NOT EXISTS vehicle_link_valid_to_idx ON vehicle_link (valid_to);
-- One vehicle's links that hold in a window (performance, trend, the fleet view's page): those
-- ending after its start, not every link the vehicle ever had.
CREATE INDEX IF NOT EXISTS vehicle_link_vehicle_end_idx
    ON vehicle_link (vehicle_id, (coalesce(valid_to, 'infinity')));

-- Bearer tokens of the HTTP API. Only the SHA-256 of a token is kept: a leaked table grants
-- nothing. 'admin' (the device registry) implies 'write', which implies 'read'.
CREATE TABLE IF NOT EXISTS api_token (
    token_id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL DEFAULT '',
    scope      text NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- GET /v1/alerts filtered by rule, newest first. alert_raised_at_idx, alert_device_idx and the
-- partial alert_one_active_idx serve the other filters (a backward scan, sorting only alerts
-- raised in the same round by id), but a rule holds only a part of the history, and a rare one
-- would otherwise be found by reading all of it (a sequential scan: 55 ms at 400k alerts and
-- growing). alert_id completes the keyset, so each page starts exactly at the cursor.
CREATE INDEX IF NOT EXISTS alert_rule_idx ON alert (rule, raised_at, alert_id);

-- GET /v1/analytics/fleet reads the window's partial edge hours of every device by time, and its
-- whole hours of every device from the rollups by hour (http_api/fleet_queries.py).
-- BRIN on history ts: history is written in arrival order, so a block range covers a few minutes;
-- a range is summarized by autovacuum once full (autosummarize), the pages being written are read
-- unsummarized, and an insert costs at most one small summary update: far cheaper than a B-tree.
-- Measured, 10,000 devices: an edge-hour read went from a parallel seq scan of the day's partition
-- (~690 ms) to a bitmap scan of the hour's blocks (~120 ms).
CREATE INDEX IF NOT EXISTS vehicle_reading_ts_brin ON vehicle_reading
    USING brin (ts) WITH (pages_per_range = 32, autosummarize = on);
CREATE INDEX IF NOT EXISTS meter_reading_ts_brin ON meter_reading
    USING brin (ts) WITH (pages_per_range = 32, autosummarize = on);
-- Rollups by hour. Key column only: the gateway's upserts never change hour, so they stay HOT
-- updates and cost this index nothing; it gains one entry when a device's hour row is created.
-- (A covering index with the sums would make every upsert non-HOT.) 250k rows of a 24 h window:
-- a bitmap scan of this index ~27 ms, a plain index scan ~70 ms, a parallel seq scan of the
-- whole table ~100 ms and growing with it.
CREATE INDEX IF NOT EXISTS vehicle_hourly_hour_idx ON vehicle_hourly (hour);
CREATE INDEX IF NOT EXISTS meter_hourly_hour_idx ON meter_hourly (hour);
-- Daily rollups by day, for the same reason (10,000 rows a day per kind).
CREATE INDEX IF NOT EXISTS vehicle_daily_day_idx ON vehicle_daily (day);
CREATE INDEX IF NOT EXISTS meter_daily_day_idx ON meter_daily (day);

-- The HTTP API caches valid tokens (http_api/token_cache.py) and empties its cache when told that
-- tokens changed: so a revoke takes effect at once, by `python -m http_api token revoke` or by
-- plain SQL. Once per statement: the notification says only "look again".
CREATE OR REPLACE FUNCTION fleetgate_notify_tokens_changed()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetgate_tokens', '');
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER api_token_changed
    AFTER UPDATE OR DELETE OR TRUNCATE ON api_token
    FOR EACH STATEMENT EXECUTE FUNCTION fleetgate_notify_tokens_changed();

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
CREATE OR REPLACE TRIGGER meter_login_added_or_removed
    AFTER INSERT OR DELETE ON meter
    FOR EACH ROW EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE OR REPLACE TRIGGER meter_login_changed
    AFTER UPDATE OF name, state, secret_hash ON meter
    FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.state IS DISTINCT FROM NEW.state
          OR OLD.secret_hash IS DISTINCT FROM NEW.secret_hash)
    EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE OR REPLACE TRIGGER meter_logins_truncated
    AFTER TRUNCATE ON meter
    FOR EACH STATEMENT EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE OR REPLACE TRIGGER vehicle_login_added_or_removed
    AFTER INSERT OR DELETE ON vehicle
    FOR EACH ROW EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE OR REPLACE TRIGGER vehicle_login_changed
    AFTER UPDATE OF name, state, secret_hash ON vehicle
    FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.state IS DISTINCT FROM NEW.state
          OR OLD.secret_hash IS DISTINCT FROM NEW.secret_hash)
    EXECUTE FUNCTION fleetgate_notify_logins_changed();
CREATE OR REPLACE TRIGGER vehicle_logins_truncated
    AFTER TRUNCATE ON vehicle
    FOR EACH STATEMENT EXECUTE FUNCTION fleetgate_notify_logins_changed();

-- Broker logins of the services (the gateway's consumer, its alert publisher, the API's
-- publisher, field engineers); a device's login is its registry row. broker_sync renders
-- Mosquitto's password and ACL files from both and is told of every change.
CREATE TABLE IF NOT EXISTS broker_login (
    username    text PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9._-]{1,64}$'),
    role        text NOT NULL CHECK (role IN ('gateway', 'alerts', 'api', 'engineer')),
    secret_hash text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE TRIGGER broker_login_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON broker_login
    FOR EACH STATEMENT EXECUTE FUNCTION fleetgate_notify_logins_changed();

-- Each gateway's heartbeat (gateway/heartbeat.py): upserted every HEARTBEAT_INTERVAL_S on a
-- connection of its own, read by the API's GET /health. beat_at is the database's clock, so the
-- API judges every gateway's age on one clock; stopped_at is set when a gateway stopped on
-- purpose (SIGTERM), and cleared when it starts again.
CREATE TABLE IF NOT EXISTS gateway_heartbeat (
    client_id        text PRIMARY KEY,  -- MQTT_CLIENT_ID: one row per gateway replica
    host             text NOT NULL,
    pid              integer NOT NULL,
    version          text NOT NULL,
    started_at       timestamptz NOT NULL,
    beat_at          timestamptz NOT NULL,
    broker_connected boolean NOT NULL,
    backlog          integer NOT NULL,  -- readings taken from the broker, not yet committed
    write_error      text,              -- why its writes fail, while they fail
    stopped_at       timestamptz,
    sessions         integer[] NOT NULL DEFAULT '{}',  -- the broker sessions it owns (replicas)
    leader           boolean NOT NULL DEFAULT false    -- it judges and publishes alerts
);

-- Database roles: ownership and rights (the roles are made at the top of this file).
-- Everything fleetgate made belongs to fleetgate_owner (identity sequences and indexes follow
-- their table). Partitions are made by fleetgate_ensure_partition, which runs as the owner.
ALTER TABLE schema_migration OWNER TO fleetgate_owner;
ALTER TABLE meter OWNER TO fleetgate_owner;
ALTER TABLE vehicle OWNER TO fleetgate_owner;
ALTER TABLE meter_reading OWNER TO fleetgate_owner;
ALTER TABLE vehicle_reading OWNER TO fleetgate_owner;
ALTER TABLE meter_hourly OWNER TO fleetgate_owner;
ALTER TABLE vehicle_hourly OWNER TO fleetgate_owner;
ALTER TABLE meter_daily OWNER TO fleetgate_owner;
ALTER TABLE vehicle_daily OWNER TO fleetgate_owner;
ALTER TABLE dead_letter OWNER TO fleetgate_owner;
ALTER TABLE dead_letter_overflow OWNER TO fleetgate_owner;
ALTER TABLE alert OWNER TO fleetgate_owner;
ALTER TABLE alert_event OWNER TO fleetgate_owner;
ALTER TABLE vehicle_link OWNER TO fleetgate_owner;
ALTER TABLE api_token OWNER TO fleetgate_owner;
ALTER TABLE broker_login OWNER TO fleetgate_owner;
ALTER TABLE gateway_heartbeat OWNER TO fleetgate_owner;
ALTER TABLE history_horizon OWNER TO fleetgate_owner;
ALTER TABLE history_compaction OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_ensure_partition(regclass, date) OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_drop_history_partition(regclass, date) OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_expire_rows(regclass, timestamptz, integer) OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_notify_tokens_changed() OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_notify_logins_changed() OWNER TO fleetgate_owner;
ALTER AGGREGATE fleetgate_sum(bigint) OWNER TO fleetgate_owner;

-- What each service may do. Partitions need no grants: rows go in and come out through the
-- parent, whose rights are the ones checked. Identity columns need no right on their sequence.
REVOKE ALL ON FUNCTION fleetgate_ensure_partition(regclass, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION fleetgate_drop_history_partition(regclass, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION fleetgate_expire_rows(regclass, timestamptz, integer) FROM PUBLIC;

-- The gateway: readings with their rollups and live rows, dead letters, alerts and their outbox,
-- its heartbeat; it reads the registry, links and history that the alert rules judge. It
-- registers a device only by name (open enrolment) and updates only its live columns, so it can
-- neither enable a disabled device nor set a broker secret; it never truncates or alters, and
-- drops and deletes only through the retention functions, below.
GRANT SELECT ON schema_migration, meter, vehicle, vehicle_link TO fleetgate_gateway;
GRANT INSERT (name) ON meter, vehicle TO fleetgate_gateway;
GRANT UPDATE (ts, received_at, consumed_ac_mwh, voltage) ON meter TO fleetgate_gateway;
GRANT UPDATE (ts, received_at, soc, delivered_dc_mwh, battery_temp) ON vehicle
    TO fleetgate_gateway;
GRANT SELECT, INSERT ON meter_reading, vehicle_reading, dead_letter TO fleetgate_gateway;
GRANT SELECT, INSERT, UPDATE
    ON meter_hourly, vehicle_hourly, meter_daily, vehicle_daily, dead_letter_overflow, alert,
       alert_event, gateway_heartbeat
    TO fleetgate_gateway;
GRANT EXECUTE ON FUNCTION fleetgate_ensure_partition(regclass, date) TO fleetgate_gateway;
-- Retention: whole days of history dropped, expired rows deleted, each only through its function
-- (which checks what it may remove); what was dropped and compacted is read.
GRANT EXECUTE ON FUNCTION fleetgate_drop_history_partition(regclass, date) TO fleetgate_gateway;
GRANT EXECUTE ON FUNCTION fleetgate_expire_rows(regclass, timestamptz, integer)
    TO fleetgate_gateway;
GRANT SELECT ON history_horizon, history_compaction TO fleetgate_gateway;
GRANT SELECT ON history_horizon, history_compaction TO fleetgate_api, fleetgate_readonly;

-- The API (and its CLIs, and broker_sync): reads everything; writes links, tokens, the device
-- registry, the services' broker logins and alert acknowledgements; never history.
GRANT SELECT
    ON schema_migration, meter, vehicle, meter_reading, vehicle_reading, meter_hourly,
       vehicle_hourly, meter_daily, vehicle_daily, dead_letter, dead_letter_overflow, alert,
       alert_event, vehicle_link, api_token, broker_login, gateway_heartbeat
    TO fleetgate_api;
GRANT INSERT, UPDATE ON vehicle_link, api_token TO fleetgate_api;
-- Acknowledging an alert: its acknowledgement columns only (never its state), and the event.
GRANT UPDATE (acknowledged_at, acknowledged_by, acknowledged_token_id, acknowledged_note)
    ON alert TO fleetgate_api;
GRANT INSERT ON alert_event TO fleetgate_api;
GRANT INSERT, UPDATE, DELETE ON meter, vehicle, broker_login TO fleetgate_api;

-- Analysts and Grafana: read everything but the services' credentials (tokens, broker logins).
GRANT SELECT
    ON schema_migration, meter, vehicle, meter_reading, vehicle_reading, meter_hourly,
       vehicle_hourly, meter_daily, vehicle_daily, dead_letter, dead_letter_overflow, alert,
       alert_event, vehicle_link, gateway_heartbeat
    TO fleetgate_readonly;
