-- The data lifecycle (docs/operations.md#retention): retention drops whole days of history and
-- deletes expired rollups, dead letters and ended alerts, through two functions that run as the
-- owner and check what they may remove (the gateway may do neither directly); the horizon of
-- what was dropped, so that a late reading is a dead letter instead of a new partition; the
-- record of compacted days. fleetgate_ensure_partition now returns whether the day is kept (a
-- new return type: dropped and made again). The index on alert_event (alert_id) is built while
-- writes to alert_event wait: seconds for millions of events (docs/CHANGELOG.md).

-- The retention horizon of each kind's history (gateway/retention.py): its days before kept_from
-- were dropped by fleetgate_drop_history_partition. A reading that arrives for one of them later
-- is a dead letter (its day is past retention), and its partition is not made again.
CREATE TABLE history_horizon (
    device_kind text PRIMARY KEY CHECK (device_kind IN ('meter', 'vehicle')),
    kept_from   date NOT NULL,        -- the first UTC day that was not dropped
    dropped_at  timestamptz NOT NULL  -- when the latest day was dropped
);

-- Finished days whose history partitions were compacted (gateway/compaction.py: their indexes
-- rebuilt by REINDEX CONCURRENTLY), once each, with the index bytes before and after. A day's row
-- goes with its partition.
CREATE TABLE history_compaction (
    device_kind        text NOT NULL CHECK (device_kind IN ('meter', 'vehicle')),
    day                date NOT NULL,
    compacted_at       timestamptz NOT NULL,
    index_bytes_before bigint NOT NULL,
    index_bytes_after  bigint NOT NULL,
    PRIMARY KEY (device_kind, day)
);

-- Ended alerts expire with their events (fleetgate_expire_rows): each deletion finds an alert's
-- events here, and so does the foreign key's check of each alert deleted.
CREATE INDEX alert_event_alert_idx ON alert_event (alert_id);

DROP FUNCTION fleetgate_ensure_partition(regclass, date);

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

ALTER TABLE history_horizon OWNER TO fleetgate_owner;
ALTER TABLE history_compaction OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_ensure_partition(regclass, date) OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_drop_history_partition(regclass, date) OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_expire_rows(regclass, timestamptz, integer) OWNER TO fleetgate_owner;
REVOKE ALL ON FUNCTION fleetgate_ensure_partition(regclass, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION fleetgate_drop_history_partition(regclass, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION fleetgate_expire_rows(regclass, timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fleetgate_ensure_partition(regclass, date) TO fleetgate_gateway;
GRANT EXECUTE ON FUNCTION fleetgate_drop_history_partition(regclass, date) TO fleetgate_gateway;
GRANT EXECUTE ON FUNCTION fleetgate_expire_rows(regclass, timestamptz, integer)
    TO fleetgate_gateway;
GRANT SELECT ON history_horizon, history_compaction TO fleetgate_gateway;
GRANT SELECT ON history_horizon, history_compaction TO fleetgate_api, fleetgate_readonly;
