-- Least-privilege database roles (docs/security.md): fleetgate_owner owns the schema, and the
-- gateway, the API and analysts get only what they use. Every table, its indexes and identity
-- sequences, and every partition made so far change owner (a catalog update each, no rewrite).
-- fleetgate_ensure_partition becomes SECURITY DEFINER, for the history tables only, so that the
-- gateway creates partitions without owning anything.

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

-- Creates the daily partition of `parent` that holds `day` (UTC), unless it exists. Safe to call
-- from many sessions at once: they queue on a transaction-scoped advisory lock. It runs as its
-- owner (the tables' owner), so that the gateway needs no right to create tables: hence only for
-- the two history tables, with a search_path nobody else can put objects in.
CREATE OR REPLACE FUNCTION fleetgate_ensure_partition(parent regclass, day date)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent_schema text;
    parent_name text;
    partition_name text;
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
    IF to_regclass(format('%I.%I', parent_schema, partition_name)) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
            parent_schema, partition_name, parent_schema, parent_name,
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END IF;
END
$$;

-- Everything fleetgate made belongs to fleetgate_owner (identity sequences and indexes follow
-- their table; a partitioned table's partitions do not, hence the loop).
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
ALTER FUNCTION fleetgate_ensure_partition(regclass, date) OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_notify_tokens_changed() OWNER TO fleetgate_owner;
ALTER FUNCTION fleetgate_notify_logins_changed() OWNER TO fleetgate_owner;
ALTER AGGREGATE fleetgate_sum(bigint) OWNER TO fleetgate_owner;
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent IN ('meter_reading'::regclass, 'vehicle_reading'::regclass) LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO fleetgate_owner', part);
    END LOOP;
END
$$;

-- What each service may do. Partitions need no grants: rows go in and come out through the
-- parent, whose rights are the ones checked. Identity columns need no right on their sequence.
REVOKE ALL ON FUNCTION fleetgate_ensure_partition(regclass, date) FROM PUBLIC;

-- The gateway: readings with their rollups and live rows, dead letters, alerts and their outbox;
-- it reads the registry, links and history that the alert rules judge. It registers a device
-- only by name (open enrolment) and updates only its live columns, so it can neither enable a
-- disabled device nor set a broker secret; it never deletes, truncates or alters.
GRANT SELECT ON schema_migration, meter, vehicle, vehicle_link TO fleetgate_gateway;
GRANT INSERT (name) ON meter, vehicle TO fleetgate_gateway;
GRANT UPDATE (ts, received_at, consumed_ac_mwh, voltage) ON meter TO fleetgate_gateway;
GRANT UPDATE (ts, received_at, soc, delivered_dc_mwh, battery_temp) ON vehicle
    TO fleetgate_gateway;
GRANT SELECT, INSERT ON meter_reading, vehicle_reading, dead_letter TO fleetgate_gateway;
GRANT SELECT, INSERT, UPDATE
    ON meter_hourly, vehicle_hourly, meter_daily, vehicle_daily, dead_letter_overflow, alert,
       alert_event
    TO fleetgate_gateway;
GRANT EXECUTE ON FUNCTION fleetgate_ensure_partition(regclass, date) TO fleetgate_gateway;

-- The API (and its CLIs, and broker_sync): reads everything; writes links, tokens, the device
-- registry and the services' broker logins; never history.
GRANT SELECT
    ON schema_migration, meter, vehicle, meter_reading, vehicle_reading, meter_hourly,
       vehicle_hourly, meter_daily, vehicle_daily, dead_letter, dead_letter_overflow, alert,
       alert_event, vehicle_link, api_token, broker_login
    TO fleetgate_api;
GRANT INSERT, UPDATE ON vehicle_link, api_token TO fleetgate_api;
GRANT INSERT, UPDATE, DELETE ON meter, vehicle, broker_login TO fleetgate_api;

-- Analysts and Grafana: read everything but the services' credentials (tokens, broker logins).
GRANT SELECT
    ON schema_migration, meter, vehicle, meter_reading, vehicle_reading, meter_hourly,
       vehicle_hourly, meter_daily, vehicle_daily, dead_letter, dead_letter_overflow, alert,
       alert_event, vehicle_link
    TO fleetgate_readonly;
