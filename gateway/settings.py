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
