-- fleetgate schema. Idempotent: the gateway applies it at every start, holding an advisory lock
-- so that two processes starting at once take turns. Changes go here and nowhere else.

-- The digest (SHA-256) of each version of this file applied to the database: a start that finds
-- its own version here applies nothing, so it takes no lock that a running writer could need.
CREATE TABLE IF NOT EXISTS schema_applied (
    digest      text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Hot: one row per device. The row is also the device registry: its integer id is what the
-- history tables store, so a 64-character device name costs 4 bytes per history row.
CREATE TABLE IF NOT EXISTS meter (
    meter_id        integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    ts              timestamptz,          -- when the latest reading was taken
    received_at     timestamptz,          -- when the gateway received it
    consumed_ac_mwh bigint,               -- energy of the latest interval, in mWh
    voltage         real
);

CREATE TABLE IF NOT EXISTS vehicle (
    vehicle_id       integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    ts               timestamptz,
    received_at      timestamptz,
    soc              real,
    delivered_dc_mwh bigint,
    battery_temp     real
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
-- twice). Whole hours of a window are read here, the partial hours at its edges from history;
-- the fleet view also reads the 10-minute slots of its edge hours here (energy and readings per
-- slot), so that it reads at most ~5 minutes of each device's readings at each edge.
CREATE TABLE IF NOT EXISTS meter_hourly (
    meter_id        integer NOT NULL,
    hour            timestamptz NOT NULL,
    consumed_ac_mwh bigint NOT NULL,
    readings        integer NOT NULL,
    voltage_min     real NOT NULL,
    voltage_max     real NOT NULL,
    -- energy and readings of each 10 minutes of the hour (slot k: minutes 10k to 10k + 9)
    slot0_mwh       bigint NOT NULL DEFAULT 0,
    slot1_mwh       bigint NOT NULL DEFAULT 0,
    slot2_mwh       bigint NOT NULL DEFAULT 0,
    slot3_mwh       bigint NOT NULL DEFAULT 0,
    slot4_mwh       bigint NOT NULL DEFAULT 0,
    slot5_mwh       bigint NOT NULL DEFAULT 0,
    slot0_readings  integer NOT NULL DEFAULT 0,
    slot1_readings  integer NOT NULL DEFAULT 0,
    slot2_readings  integer NOT NULL DEFAULT 0,
    slot3_readings  integer NOT NULL DEFAULT 0,
    slot4_readings  integer NOT NULL DEFAULT 0,
    slot5_readings  integer NOT NULL DEFAULT 0,
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
    slot0_mwh       bigint NOT NULL DEFAULT 0,
    slot1_mwh       bigint NOT NULL DEFAULT 0,
    slot2_mwh       bigint NOT NULL DEFAULT 0,
    slot3_mwh       bigint NOT NULL DEFAULT 0,
    slot4_mwh       bigint NOT NULL DEFAULT 0,
    slot5_mwh       bigint NOT NULL DEFAULT 0,
    slot0_readings  integer NOT NULL DEFAULT 0,
    slot1_readings  integer NOT NULL DEFAULT 0,
    slot2_readings  integer NOT NULL DEFAULT 0,
    slot3_readings  integer NOT NULL DEFAULT 0,
    slot4_readings  integer NOT NULL DEFAULT 0,
    slot5_readings  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (vehicle_id, hour)
);

-- A database from before the 10-minute slots: add them and fill them once from history (a long
-- statement on a large database, once). Nothing to do on a new database or once they exist.
DO $$
DECLARE
    kind record;
    columns text := (  -- in the order of CREATE TABLE: energies, then readings
        SELECT string_agg(format('ADD COLUMN slot%s_mwh bigint NOT NULL DEFAULT 0', k), ', ')
               || ', ' || string_agg(format('ADD COLUMN slot%s_readings integer NOT NULL DEFAULT 0', k), ', ')
        FROM generate_series(0, 5) k);
    assignments text := (
        SELECT string_agg(format('slot%1$s_mwh = r.e%1$s, slot%1$s_readings = r.n%1$s', k), ', ')
        FROM generate_series(0, 5) k);
BEGIN
    FOR kind IN SELECT * FROM (VALUES ('meter', 'meter_id', 'consumed_ac_mwh'),
                                      ('vehicle', 'vehicle_id', 'delivered_dc_mwh'))
                              AS k (name, device, energy) LOOP
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = kind.name || '_hourly'
              AND column_name = 'slot0_mwh');
        EXECUTE format('ALTER TABLE %I %s', kind.name || '_hourly', columns);
        EXECUTE format(
            'UPDATE %1$I h SET %2$s FROM ('
            '  SELECT %3$I AS device, date_bin(''1 hour'', ts, ''2000-01-01 00:00:00+00'') AS hour, %4$s'
            '  FROM (SELECT *, mod(floor(date_part(''epoch'', ts))::bigint, 3600) / 600 AS slot'
            '        FROM %5$I) x'
            '  GROUP BY 1, 2) r'
            ' WHERE h.%3$I = r.device AND h.hour = r.hour',
            kind.name || '_hourly', assignments, kind.device,
            (SELECT string_agg(format('coalesce(sum(%2$I) FILTER (WHERE slot = %1$s), 0) AS e%1$s,'
                                      ' count(*) FILTER (WHERE slot = %1$s) AS n%1$s',
                                      k, kind.energy), ', ')
             FROM generate_series(0, 5) k),
            kind.name || '_reading');
    END LOOP;
END
$$;

-- The sum of bigints as a bigint, exact, and an error past 9.2e18 (sum(bigint) returns a numeric
-- and keeps a 128-bit state per group: the fleet view adds ~60,000 rows a half, where that state
-- cost ~5 ms a column).
CREATE OR REPLACE AGGREGATE fleetgate_sum(bigint) (
    SFUNC = int8pl, STYPE = bigint, COMBINEFUNC = int8pl, PARALLEL = SAFE
);

-- Daily rollups per device (day = UTC midnight), energy and counts only, maintained with the
-- hourly ones from the same inserted rows, with the same sums for each hour of the day (hourK:
-- hour K, columns added below). The fleet view takes a window's whole days from here and the
-- hours at its edges from the two edge days' rows: one row a device at each edge.
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

-- The hour columns (hourK_mwh bigint, then hourK_readings integer, K = 0..23), added here on a
-- new database as on one from before them (whose 6-hour quarter columns they replace): existing
-- daily rows are filled once from the hourly rollups. Then, on a database from before the daily
-- rollups, these are derived once from the hourly ones. Nothing to do once they exist.
DO $$
DECLARE
    kind record;
    columns text := (
        SELECT string_agg(format('ADD COLUMN hour%s_mwh bigint NOT NULL DEFAULT 0', k), ', ')
               || ', ' || string_agg(format('ADD COLUMN hour%s_readings integer NOT NULL DEFAULT 0', k), ', ')
        FROM generate_series(0, 23) k);
    quarters text := (
        SELECT string_agg(format('DROP COLUMN IF EXISTS quarter%1$s_mwh,'
                                 ' DROP COLUMN IF EXISTS quarter%1$s_readings', k), ', ')
        FROM generate_series(0, 3) k);
    names text := (
        SELECT string_agg(format('hour%s_mwh', k), ', ') || ', '
               || string_agg(format('hour%s_readings', k), ', ')
        FROM generate_series(0, 23) k);
    assignments text := (
        SELECT string_agg(format('hour%1$s_mwh = r.hour%1$s_mwh,'
                                 ' hour%1$s_readings = r.hour%1$s_readings', k), ', ')
        FROM generate_series(0, 23) k);
    by_day text;
BEGIN
    FOR kind IN SELECT * FROM (VALUES ('meter', 'meter_id', 'consumed_ac_mwh'),
                                      ('vehicle', 'vehicle_id', 'delivered_dc_mwh'))
                              AS k (name, device, energy) LOOP
        -- the hourly rollups summed by device and day, with the hour columns
        by_day := format(
            'SELECT %1$I AS device, date_bin(''1 day'', hour, ''2000-01-01 00:00:00+00'') AS day,'
            '       sum(%2$I) AS energy, sum(readings) AS readings, %3$s'
            '  FROM (SELECT *, mod(floor(date_part(''epoch'', hour))::bigint, 86400) / 3600'
            '               AS hour_of_day FROM %4$I) h'
            '  GROUP BY 1, 2',
            kind.device, kind.energy,
            (SELECT string_agg(format('coalesce(sum(%2$I) FILTER (WHERE hour_of_day = %1$s), 0)'
                                      ' AS hour%1$s_mwh', k, kind.energy), ', ') || ', '
                    || string_agg(format('coalesce(sum(readings) FILTER (WHERE hour_of_day = %1$s),'
                                         ' 0) AS hour%1$s_readings', k), ', ')
             FROM generate_series(0, 23) k),
            kind.name || '_hourly');
        IF NOT EXISTS (
            SELECT 1 FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = kind.name || '_daily'
              AND column_name = 'hour0_mwh') THEN
            EXECUTE format('ALTER TABLE %I %s, %s', kind.name || '_daily', columns, quarters);
            EXECUTE format('UPDATE %1$I d SET %2$s FROM (%3$s) r'
                           ' WHERE d.%4$I = r.device AND d.day = r.day',
                           kind.name || '_daily', assignments, by_day, kind.device);
        END IF;
        EXECUTE format('INSERT INTO %1$I (%2$I, day, %3$I, readings, %4$s)'
                       ' SELECT * FROM (%5$s) r WHERE NOT EXISTS (SELECT 1 FROM %1$I)',
                       kind.name || '_daily', kind.device, kind.energy, names, by_day);
    END LOOP;
END
$$;

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
    message     text NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alert_one_active_idx
    ON alert (device_kind, device_name, rule) WHERE cleared_at IS NULL;
CREATE INDEX IF NOT EXISTS alert_raised_at_idx ON alert (raised_at);
CREATE INDEX IF NOT EXISTS alert_device_idx ON alert (device_name, raised_at);

-- Outbox of alert changes: written in the transaction that raises or clears, published to MQTT
-- after the commit and marked; after a crash the unmarked ones are published again (at least
-- once; the alert id tells a subscriber it has seen it).
CREATE TABLE IF NOT EXISTS alert_event (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alert (alert_id),
    state        text NOT NULL CHECK (state IN ('raised', 'cleared')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS alert_event_unpublished_idx
    ON alert_event (event_id) WHERE published_at IS NULL;

-- Creates the daily partition of `parent` that holds `day` (UTC), unless it exists. Safe to call
-- from many sessions at once: they queue on a transaction-scoped advisory lock.
CREATE OR REPLACE FUNCTION fleetgate_ensure_partition(parent regclass, day date)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    partition_name text := format('%s_%s', parent::text, to_char(day, 'YYYYMMDD'));
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fleetgate_ensure_partition'));
    IF to_regclass(partition_name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
            partition_name, parent,
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END IF;
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
-- nothing. 'write' implies 'read'.
CREATE TABLE IF NOT EXISTS api_token (
    token_id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL DEFAULT '',
    scope      text NOT NULL CHECK (scope IN ('read', 'write')),
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
