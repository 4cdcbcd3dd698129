-- Alerts can be acknowledged by an engineer through the API (POST /v1/alerts/{id}/ack): who (the
-- API token's name and id) and when, with a note, on the alert; an 'acknowledged' event in its
-- outbox, which the gateway publishes to the alert's topic. The API may write only those columns
-- and the event. Adding nullable columns and swapping a check rewrite nothing (the check reads
-- alert_event once, under a lock that holds up the gateway's alert writes meanwhile).
ALTER TABLE alert
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by text,
    ADD COLUMN acknowledged_token_id integer,
    ADD COLUMN acknowledged_note text;
ALTER TABLE alert_event
    DROP CONSTRAINT alert_event_state_check,
    ADD CONSTRAINT alert_event_state_check
        CHECK (state IN ('raised', 'cleared', 'acknowledged'));
GRANT UPDATE (acknowledged_at, acknowledged_by, acknowledged_token_id, acknowledged_note)
    ON alert TO fleetgate_api;
GRANT INSERT ON alert_event TO fleetgate_api;
