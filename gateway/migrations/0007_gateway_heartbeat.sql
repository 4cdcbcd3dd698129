-- Each gateway's heartbeat, read by the API's GET /health (gateway/heartbeat.py): the gateway
-- writes its own row, the API and analysts read them.
CREATE TABLE gateway_heartbeat (
    client_id        text PRIMARY KEY,  -- MQTT_CLIENT_ID: one row per gateway replica
    host             text NOT NULL,
    pid              integer NOT NULL,
    version          text NOT NULL,
    started_at       timestamptz NOT NULL,
    beat_at          timestamptz NOT NULL,
    broker_connected boolean NOT NULL,
    backlog          integer NOT NULL,  -- readings taken from the broker, not yet committed
    write_error      text,              -- why its writes fail, while they fail
    stopped_at       timestamptz
);
ALTER TABLE gateway_heartbeat OWNER TO fleetgate_owner;
GRANT SELECT, INSERT, UPDATE ON gateway_heartbeat TO fleetgate_gateway;
GRANT SELECT ON gateway_heartbeat TO fleetgate_api, fleetgate_readonly;
