-- Schema versions recorded by number: fleetgate 0.1.0 kept the digest of each schema.sql text it
-- applied (schema_applied); from here on each migration applied is recorded in schema_migration.
CREATE TABLE schema_migration (
    version     integer PRIMARY KEY,
    script      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
DROP TABLE schema_applied;
