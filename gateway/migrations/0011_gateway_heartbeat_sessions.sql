-- Gateway replicas (gateway/replicas.py): each heartbeat says which of the GATEWAY_SESSIONS broker
-- sessions its replica owns and whether it leads (judges and publishes alerts), for the API's
-- GET /health. Columns with constant defaults rewrite nothing.
ALTER TABLE gateway_heartbeat
    ADD COLUMN sessions integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN leader boolean NOT NULL DEFAULT false;
