"""The gateway's settings: read once from the environment, then passed down frozen."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Self


class SettingsError(ValueError):
    """An environment variable holds a value the gateway cannot use."""


@dataclasses.dataclass(frozen=True, slots=True)
class MqttAddress:
    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> Self:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise SettingsError(
                f"MQTT_URL must look like mqtt://[user:password@]host[:port], not {url!r}"
            )
        return cls(
            host=parts.hostname,
            port=parts.port or 1883,
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """One environment variable: its name, default and what it does (shown by --help)."""

    env: str
    field: str
    default: str
    help: str
    parse: Callable[[str], Any]


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be zero or more")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


OPTIONS: tuple[Option, ...] = (
    Option(
        "DATABASE_URL",
        "database_url",
        "postgresql://localhost/fleetgate",
        "PostgreSQL connection string (libpq URL or key=value form).",
        str,
    ),
    Option(
        "MQTT_URL",
        "mqtt",
        "mqtt://localhost:1883",
        "Broker address: mqtt://[user:password@]host[:port].",
        MqttAddress.parse,
    ),
    Option(
        "MQTT_CLIENT_ID",
        "client_id",
        "fleetgate-gateway",
        "Fixed client id of the persistent session; the broker queues for it while it is away.",
        str,
    ),
    Option(
        "BATCH_SIZE",
        "batch_size",
        "1000",
        "Messages per database transaction at most; keep it at or below half the broker's "
        "max_inflight_messages.",
        _positive_int,
    ),
    Option(
        "BATCH_AGE_MS",
        "batch_age_ms",
        "50",
        "A batch is committed at the latest this long after its first message arrived.",
        _positive_float,
    ),
    Option(
        "MAX_FUTURE_SKEW_S",
        "max_future_skew_s",
        "300",
        "Readings timestamped further than this into the future are dead-lettered.",
        _positive_float,
    ),
    Option(
        "MAX_READING_AGE_DAYS",
        "max_reading_age_days",
        "31",
        "Readings older than this are dead-lettered (a clock far off, or a replay).",
        _positive_float,
    ),
    Option(
        "MAX_PAYLOAD_BYTES",
        "max_payload_bytes",
        "262144",
        "Payloads above this size are dead-lettered (first KiB kept).",
        _positive_int,
    ),
    Option(
        "PARTITION_DAYS_AHEAD",
        "partition_days_ahead",
        "7",
        "Daily history partitions are created this many days ahead.",
        _positive_int,
    ),
    Option(
        "DB_POOL_SIZE",
        "db_pool_size",
        "2",
        "Connections in the database pool (one writes batches, one spare for partitions).",
        _positive_int,
    ),
    Option(
        "RETRY_MAX_DELAY_S",
        "retry_max_delay_s",
        "5",
        "Cap of the growing, jittered delay between database retries and broker reconnects.",
        _positive_float,
    ),
    Option(
        "SHUTDOWN_TIMEOUT_S",
        "shutdown_timeout_s",
        "15",
        "On SIGTERM, how long to keep trying to commit what was taken before giving up "
        "(unacknowledged messages are redelivered by the broker).",
        _positive_float,
    ),
    Option(
        "STATS_INTERVAL_S",
        "stats_interval_s",
        "10",
        "How often a summary line (rates, duplicates, dead letters, lag) is logged.",
        _positive_float,
    ),
    Option(
        "METRICS_PORT",
        "metrics_port",
        "9464",
        "Port of the Prometheus /metrics endpoint on METRICS_HOST; 0 turns it off.",
        _non_negative_int,
    ),
    Option("METRICS_HOST", "metrics_host", "127.0.0.1", "Address the metrics endpoint binds.", str),
    Option("LOG_LEVEL", "log_level", "INFO", "DEBUG, INFO, WARNING or ERROR.", str.upper),
    Option(
        "ALERTS_ENABLED",
        "alerts_enabled",
        "true",
        "Evaluate alert rules and publish alerts under fleet/alerts/.",
        _boolean,
    ),
    Option(
        "ALERT_CHECK_INTERVAL_S",
        "alert_check_interval_s",
        "10",
        "How often time-driven rules (deviceOffline, badPayloads) run over all devices.",
        _positive_float,
    ),
    Option(
        "OFFLINE_AFTER_S",
        "offline_after_s",
        "180",
        "deviceOffline: raised when a device has sent nothing for this long.",
        _positive_float,
    ),
    Option(
        "BATTERY_TEMP_RAISE_C",
        "battery_temp_raise_c",
        "55",
        "batteryOverTemp: raised above this battery temperature.",
        float,
    ),
    Option(
        "BATTERY_TEMP_CLEAR_C",
        "battery_temp_clear_c",
        "50",
        "batteryOverTemp: cleared below this one (hysteresis, so it does not flap).",
        float,
    ),
    Option(
        "VOLTAGE_NOMINAL_V",
        "voltage_nominal_v",
        "230",
        "voltageOutOfRange: nominal grid voltage.",
        _positive_float,
    ),
    Option(
        "VOLTAGE_TOLERANCE",
        "voltage_tolerance",
        "0.10",
        "voltageOutOfRange: allowed deviation from nominal, as a fraction.",
        _positive_float,
    ),
    Option(
        "VOLTAGE_MIN_DURATION_S",
        "voltage_min_duration_s",
        "120",
        "voltageOutOfRange: raised once readings stay out of the band this long.",
        _non_negative_float,
    ),
    Option(
        "EFFICIENCY_WINDOW_S",
        "efficiency_window_s",
        "3600",
        "lowEfficiency and dcExceedsAc: the rolling window over which DC and AC are summed.",
        _positive_float,
    ),
    Option(
        "EFFICIENCY_MIN_AC_KWH",
        "efficiency_min_ac_kwh",
        "1.0",
        "lowEfficiency and dcExceedsAc: judged only when this much energy flowed in the window.",
        _positive_float,
    ),
    Option(
        "EFFICIENCY_THRESHOLD",
        "efficiency_threshold",
        "0.85",
        "lowEfficiency: raised below this DC/AC ratio, cleared at or above it.",
        _positive_float,
    ),
    Option(
        "BAD_PAYLOADS_WINDOW_S",
        "bad_payloads_window_s",
        "600",
        "badPayloads: the window in which a device's dead letters are counted.",
        _positive_float,
    ),
    Option(
        "BAD_PAYLOADS_THRESHOLD",
        "bad_payloads_threshold",
        "5",
        "badPayloads: raised at this many dead letters in the window; cleared after a window "
        "without any.",
        _positive_int,
    ),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    mqtt: MqttAddress
    client_id: str
    batch_size: int
    batch_age_ms: float
    max_future_skew_s: float
    max_reading_age_days: float
    max_payload_bytes: int
    partition_days_ahead: int
    db_pool_size: int
    retry_max_delay_s: float
    shutdown_timeout_s: float
    stats_interval_s: float
    metrics_port: int
    metrics_host: str
    log_level: str
    alerts_enabled: bool
    alert_check_interval_s: float
    offline_after_s: float
    battery_temp_raise_c: float
    battery_temp_clear_c: float
    voltage_nominal_v: float
    voltage_tolerance: float
    voltage_min_duration_s: float
    efficiency_window_s: float
    efficiency_min_ac_kwh: float
    efficiency_threshold: float
    bad_payloads_window_s: float
    bad_payloads_threshold: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        values: dict[str, Any] = {}
        for option in OPTIONS:
            text = environ.get(option.env, option.default)
            try:
                values[option.field] = option.parse(text)
            except SettingsError:
                raise
            except ValueError as exc:
                raise SettingsError(f"{option.env}={text!r}: {exc}") from None
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def describe_options() -> str:
    """The environment variables, their defaults and meaning, as shown by ``--help``."""
    lines = ["environment variables:"]
    for option in OPTIONS:
        lines.append(f"  {option.env} (default {option.default})")
        lines.append(f"      {option.help}")
    return "\n".join(lines)
