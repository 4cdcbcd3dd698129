-- Dead letters past a device's cap are counted, one row per device and minute with the first of
-- them as a sample, instead of kept one by one.
CREATE TABLE dead_letter_overflow (
    window_start     timestamptz NOT NULL,
    device_kind      text NOT NULL,
    device_name      text NOT NULL,
    dead_letters     bigint NOT NULL,
    last_received_at timestamptz NOT NULL,
    sample_reason    text NOT NULL,
    sample_payload   bytea NOT NULL,
    sample_bytes     integer NOT NULL,
    PRIMARY KEY (device_kind, device_name, window_start)
);
CREATE INDEX dead_letter_overflow_received_idx ON dead_letter_overflow (last_received_at);
