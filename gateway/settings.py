"""The gateway's settings: read once from the environment, then passed down frozen."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

from gateway.env_options import (
    DATABASE_URL_OPTION,
    MqttAddress,
    Option,
    SettingsError,
    boolean,
    describe_options,
    enrolment,
    finite_float,
    non_negative_float,
    non_negative_int,
    optional_hour,
    optional_mqtt_address,
    positive_float,
    positive_int,
    ratio,
    read_options,
)

__all__ = ["OPTIONS", "MqttAddress", "Option", "Settings", "SettingsError", "describe_options"]


def _session_count(text: str) -> int:
    value = positive_int(text)
    if value > 1000:  # gateway.replicas.MAX_SESSIONS: the lock keys above are the leader's
        raise ValueError("must be at most 1000")
    return value


OPTIONS: tuple[Option, ...] = (
    DATABASE_URL_OPTION,
    Option(
        "MQTT_URL",
        "mqtt",
        "mqtt://localhost:1883",
        "Broker address: mqtt://[user:password@]host[:port].",
        MqttAddress.parse,
    ),
    Option(
        "MQTT_ALERTS_URL",
        "mqtt_alerts",
        "",
        "Broker address and login of the alert publisher (a login of role alerts: the only one "
        "that may publish under fleet/alerts/); empty: MQTT_URL's. Each connection needs a "
        "login of its own where the broker makes usernames the client ids.",
        optional_mqtt_address,
    ),
    Option(
        "MQTT_CLIENT_ID",
        "client_id",
        "fleetgate-gateway",
        "Fixed client id of the persistent session; the broker queues for it while it is away.",
        str,
    ),
    Option(
        "GATEWAY_SESSIONS",
        "gateway_sessions",
        "1",
        "Persistent broker sessions the gateway replicas share (each a member of one $share "
        "subscription, client id and username MQTT_CLIENT_ID-n and MQTT_URL's username-n when "
        "above 1); replicas hold ceil(sessions/replicas) each. Keep it fixed once data flows.",
        _session_count,
    ),
    Option(
        "GATEWAY_REPLICA_NAME",
        "replica_name",
        "",
        "This replica's name in logs, metrics and /health; empty: host-pid.",
        str,
    ),
    Option(
        "REPLICA_TAKEOVER_S",
        "replica_takeover_s",
        "5",
        "How often a replica looks for sessions nobody owns (a dead replica's) and takes them: "
        "the longest a dead replica's share waits in the broker.",
        positive_float,
    ),
    Option(
        "ENROLMENT",
        "enrolment",
        "closed",
        "closed: readings of devices that are not registered and active are dead letters "
        "(reason 'unknown device'); open: a device is registered by its first reading (trials).",
        enrolment,
    ),
    Option(
        "BATCH_SIZE",
        "batch_size",
        "1000",
        "Messages per database transaction at most; keep it at or below half the broker's "
        "max_inflight_messages.",
        positive_int,
    ),
    Option(
        "BATCH_AGE_MS",
        "batch_age_ms",
        "50",
        "A batch is committed at the latest this long after its first message arrived.",
        positive_float,
    ),
    Option(
        "MAX_FUTURE_SKEW_S",
        "max_future_skew_s",
        "300",
        "Readings timestamped further than this into the future are dead-lettered.",
        positive_float,
    ),
    Option(
        "MAX_READING_AGE_DAYS",
        "max_reading_age_days",
        "31",
        "Readings older than this are dead-lettered (a clock far off, or a replay).",
        positive_float,
    ),
    Option(
        "MAX_PAYLOAD_BYTES",
        "max_payload_bytes",
        "262144",
        "Payloads above this size are dead-lettered (first KiB kept).",
        positive_int,
    ),
    Option(
        "MAX_READINGS_IN_FLIGHT",
        "max_readings_in_flight",
        "60000",
        "Memory budget: readings and dead letters held at once between the broker and the "
        "database (three batches of a third each, plus one message).",
        positive_int,
    ),
    Option(
        "MAX_BYTES_IN_FLIGHT",
        "max_bytes_in_flight",
        "67108864",
        "Memory budget: payload bytes held at once (a quarter waiting to be taken, a quarter "
        "in each of three batches, plus one message); reading from the broker pauses above it.",
        positive_int,
    ),
    Option(
        "DEAD_LETTERS_PER_DEVICE",
        "dead_letters_per_device",
        "100",
        "Dead letters kept whole per device and minute; the rest are counted, with a sample, "
        "in dead_letter_overflow.",
        positive_int,
    ),
    Option(
        "DEAD_LETTERS_PER_MINUTE",
        "dead_letters_per_minute",
        "10000",
        "Dead letters kept whole per minute over all devices; past it they are counted.",
        positive_int,
    ),
    Option(
        "PARTITION_DAYS_AHEAD",
        "partition_days_ahead",
        "7",
        "Daily history partitions are created this many days ahead.",
        positive_int,
    ),
    Option(
        "RETENTION_RAW_DAYS",
        "retention_raw_days",
        "90",
        "Raw history kept, in whole UTC days before today: the daily partitions of older days "
        "are dropped whole (their rollups stay until their own tier expires), and a reading "
        "for a dropped day is a dead letter; 0 keeps history for ever.",
        non_negative_int,
    ),
    Option(
        "RETENTION_HOURLY_DAYS",
        "retention_hourly_days",
        "730",
        "Hourly rollups kept, in days; older rows are deleted; 0: for ever.",
        non_negative_int,
    ),
    Option(
        "RETENTION_DAILY_DAYS",
        "retention_daily_days",
        "0",
        "Daily rollups kept, in days; 0: for ever.",
        non_negative_int,
    ),
    Option(
        "RETENTION_DEAD_LETTER_DAYS",
        "retention_dead_letter_days",
        "30",
        "Dead letters (and dead_letter_overflow's counts) kept, in days; 0: for ever.",
        non_negative_int,
    ),
    Option(
        "RETENTION_ALERT_DAYS",
        "retention_alert_days",
        "365",
        "Ended alerts (with their events) kept, in days after they cleared; active alerts are "
        "never deleted; 0: for ever.",
        non_negative_int,
    ),
    Option(
        "RETENTION_CHECK_INTERVAL_S",
        "retention_check_interval_s",
        "3600",
        "How often the gateway applies retention (one gateway at a time, under an advisory "
        "lock; the first check at start); 0: it runs neither retention nor compaction by "
        "itself (python -m gateway retention still does).",
        non_negative_float,
    ),
    Option(
        "COMPACTION_HOUR",
        "compaction_hour",
        "3",
        "UTC hour (0-23) in which the gateway rebuilds the indexes of finished days' history "
        "partitions (REINDEX CONCURRENTLY, once per partition; it takes the tables' owner: "
        "docs/operations.md#compaction); empty: never by itself.",
        optional_hour,
    ),
    Option(
        "COMPACTION_GRACE_HOURS",
        "compaction_grace_hours",
        "2",
        "A day is compacted once it has been over this long (late readings still land in it "
        "afterwards, and are kept).",
        non_negative_float,
    ),
    Option(
        "DB_POOL_SIZE",
        "db_pool_size",
        "2",
        "Connections in the database pool (one writes batches, one spare for partitions).",
        positive_int,
    ),
    Option(
        "RETRY_MAX_DELAY_S",
        "retry_max_delay_s",
        "5",
        "Cap of the growing, jittered delay between database retries and broker reconnects.",
        positive_float,
    ),
    Option(
        "SHUTDOWN_TIMEOUT_S",
        "shutdown_timeout_s",
        "15",
        "On SIGTERM, how long to keep trying to commit what was taken before giving up "
        "(unacknowledged messages are redelivered by the broker).",
        positive_float,
    ),
    Option(
        "STATS_INTERVAL_S",
        "stats_interval_s",
        "10",
        "How often a summary line (rates, duplicates, dead letters, lag) is logged.",
        positive_float,
    ),
    Option(
        "METRICS_PORT",
        "metrics_port",
        "9464",
        "Port of the Prometheus /metrics and the /health, /health/live and /health/ready "
        "endpoints on METRICS_HOST; 0 turns them off.",
        non_negative_int,
    ),
    Option("METRICS_HOST", "metrics_host", "127.0.0.1", "Address the metrics endpoint binds.", str),
    Option(
        "HEARTBEAT_INTERVAL_S",
        "heartbeat_interval_s",
        "5",
        "How often the gateway records its heartbeat in gateway_heartbeat (broker connection, "
        "backlog), on a connection of its own, for the API's GET /health; a beat waits at most "
        "this long (at least 1 s).",
        positive_float,
    ),
    Option("LOG_LEVEL", "log_level", "INFO", "DEBUG, INFO, WARNING or ERROR.", str.upper),
    Option(
        "ALERTS_ENABLED",
        "alerts_enabled",
        "true",
        "Evaluate alert rules and publish alerts under fleet/alerts/.",
        boolean,
    ),
    Option(
        "ALERT_CHECK_INTERVAL_S",
        "alert_check_interval_s",
        "10",
        "How often time-driven rules (deviceOffline, badPayloads) run over all devices.",
        positive_float,
    ),
    Option(
        "ALERT_GATHER_S",
        "alert_gather_s",
        "1.0",
        "Rules driven by readings run at most this often: each round judges every device "
        "written since the last one, so alerts follow a reading within about this long.",
        non_negative_float,
    ),
    Option(
        "OFFLINE_AFTER_S",
        "offline_after_s",
        "180",
        "deviceOffline: raised when a device has sent nothing for this long.",
        positive_float,
    ),
    Option(
        "BATTERY_TEMP_RAISE_C",
        "battery_temp_raise_c",
        "55",
        "batteryOverTemp: raised above this battery temperature.",
        finite_float,
    ),
    Option(
        "BATTERY_TEMP_CLEAR_C",
        "battery_temp_clear_c",
        "50",
        "batteryOverTemp: cleared below this one (hysteresis, so it does not flap).",
        finite_float,
    ),
    Option(
        "VOLTAGE_NOMINAL_V",
        "voltage_nominal_v",
        "230",
        "voltageOutOfRange: nominal grid voltage.",
        positive_float,
    ),
    Option(
        "VOLTAGE_TOLERANCE",
        "voltage_tolerance",
        "0.10",
        "voltageOutOfRange: allowed deviation from nominal, as a fraction.",
        positive_float,
    ),
    Option(
        "VOLTAGE_MIN_DURATION_S",
        "voltage_min_duration_s",
        "120",
        "voltageOutOfRange: raised once readings stay out of the band this long.",
        non_negative_float,
    ),
    Option(
        "EFFICIENCY_WINDOW_S",
        "efficiency_window_s",
        "3600",
        "lowEfficiency and dcExceedsAc: the rolling window over which DC and AC are summed.",
        positive_float,
    ),
    Option(
        "EFFICIENCY_MIN_AC_KWH",
        "efficiency_min_ac_kwh",
        "1.0",
        "lowEfficiency and dcExceedsAc: judged only when this much energy flowed in the window.",
        positive_float,
    ),
    Option(
        "EFFICIENCY_THRESHOLD",
        "efficiency_threshold",
        "0.85",
        "lowEfficiency: raised below this DC/AC ratio.",
        positive_float,
    ),
    Option(
        "EFFICIENCY_HYSTERESIS",
        "efficiency_hysteresis",
        "0.02",
        "lowEfficiency: cleared only at or above EFFICIENCY_THRESHOLD plus this, so that a "
        "charger hovering at the threshold raises once instead of flapping.",
        ratio,
    ),
    Option(
        "EFFICIENCY_MIN_COVERAGE",
        "efficiency_min_coverage",
        "0.5",
        "lowEfficiency and dcExceedsAc: judged only when at least this share of the readings "
        "expected (one every READING_INTERVAL_S) arrived: the vehicle's over the window and its "
        "meters' over the time they were linked; 0: whatever arrived.",
        ratio,
    ),
    Option(
        "READING_INTERVAL_S",
        "reading_interval_s",
        "60",
        "How often devices report, for EFFICIENCY_MIN_COVERAGE (the API's READING_INTERVAL_S "
        "is the same figure).",
        positive_float,
    ),
    Option(
        "BAD_PAYLOADS_WINDOW_S",
        "bad_payloads_window_s",
        "600",
        "badPayloads: the window in which a device's dead letters are counted.",
        positive_float,
    ),
    Option(
        "BAD_PAYLOADS_THRESHOLD",
        "bad_payloads_threshold",
        "5",
        "badPayloads: raised at this many dead letters in the window; cleared after a window "
        "without any.",
        positive_int,
    ),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    mqtt: MqttAddress
    mqtt_alerts: MqttAddress | None
    client_id: str
    gateway_sessions: int
    replica_name: str
    replica_takeover_s: float
    enrolment: str
    batch_size: int
    batch_age_ms: float
    max_future_skew_s: float
    max_reading_age_days: float
    max_payload_bytes: int
    max_readings_in_flight: int
    max_bytes_in_flight: int
    dead_letters_per_device: int
    dead_letters_per_minute: int
    partition_days_ahead: int
    retention_raw_days: int
    retention_hourly_days: int
    retention_daily_days: int
    retention_dead_letter_days: int
    retention_alert_days: int
    retention_check_interval_s: float
    compaction_hour: int | None
    compaction_grace_hours: float
    db_pool_size: int
    retry_max_delay_s: float
    shutdown_timeout_s: float
    stats_interval_s: float
    metrics_port: int
    metrics_host: str
    heartbeat_interval_s: float
    log_level: str
    alerts_enabled: bool
    alert_check_interval_s: float
    alert_gather_s: float
    offline_after_s: float
    battery_temp_raise_c: float
    battery_temp_clear_c: float
    voltage_nominal_v: float
    voltage_tolerance: float
    voltage_min_duration_s: float
    efficiency_window_s: float
    efficiency_min_ac_kwh: float
    efficiency_threshold: float
    efficiency_hysteresis: float
    efficiency_min_coverage: float
    reading_interval_s: float
    bad_payloads_window_s: float
    bad_payloads_threshold: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        return cls(**read_options(OPTIONS, environ))

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)
