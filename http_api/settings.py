"""The HTTP API's settings: read once from the environment, then passed down frozen."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Self

from gateway.settings import MqttAddress, Option, SettingsError


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("must be a port number, 1-65535")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("must be a number from 0 to 1")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
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
        "Broker that HTTP ingestion publishes to: mqtt://[user:password@]host[:port].",
        MqttAddress.parse,
    ),
    Option("HTTP_HOST", "http_host", "127.0.0.1", "Address the API listens on.", str),
    Option("HTTP_PORT", "http_port", "8080", "Port the API listens on.", _port),
    Option("DB_POOL_SIZE", "db_pool_size", "4", "Connections in the database pool.", _positive_int),
    Option(
        "ONLINE_SILENCE_S",
        "online_silence_s",
        "180",
        "A device is online if its latest reading was taken at most this long ago.",
        _positive_float,
    ),
    Option(
        "READING_INTERVAL_S",
        "reading_interval_s",
        "60",
        "Seconds between two readings of a device: coverage's expected readings, and power "
        "(kW) from the energy of the latest interval.",
        _positive_float,
    ),
    Option(
        "BATTERY_TEMP_WARNING_C",
        "battery_temp_warning_c",
        "45",
        "A vehicle whose latest battery temperature is at or above this has a warning.",
        _float,
    ),
    Option(
        "MAX_WINDOW_DAYS",
        "max_window_days",
        "31",
        "Longest window analytics accept.",
        _positive_float,
    ),
    Option("EFFICIENCY_EXCELLENT", "efficiency_excellent", "0.92", "Excellent from.", _ratio),
    Option("EFFICIENCY_GOOD", "efficiency_good", "0.85", "Good from.", _ratio),
    Option(
        "EFFICIENCY_WARNING",
        "efficiency_warning",
        "0.75",
        "Warning from; critical below.",
        _ratio,
    ),
    Option(
        "MAX_BODY_BYTES",
        "max_body_bytes",
        "1048576",
        "Request bodies above this size are refused with 413.",
        _positive_int,
    ),
    Option(
        "MAX_BATCH_READINGS",
        "max_batch_readings",
        "1000",
        "Readings per POST /v1/telemetry/batch at most.",
        _positive_int,
    ),
    Option(
        "MAX_FUTURE_SKEW_S",
        "max_future_skew_s",
        "300",
        "Readings timestamped further than this into the future are refused (as the gateway).",
        _positive_float,
    ),
    Option(
        "MAX_READING_AGE_DAYS",
        "max_reading_age_days",
        "31",
        "Readings older than this are refused (as the gateway).",
        _positive_float,
    ),
    Option(
        "MAX_GATEWAY_LAG_S",
        "max_gateway_lag_s",
        "300",
        "GET /health fails if the newest reading the gateway received is older than this.",
        _positive_float,
    ),
    Option(
        "PUBLISH_TIMEOUT_S",
        "publish_timeout_s",
        "5",
        "How long ingestion waits for the broker's acknowledgement.",
        _positive_float,
    ),
    Option(
        "SHUTDOWN_TIMEOUT_S",
        "shutdown_timeout_s",
        "15",
        "On SIGTERM, how long requests in flight may take to finish.",
        _positive_float,
    ),
    Option("LOG_LEVEL", "log_level", "INFO", "DEBUG, INFO, WARNING or ERROR.", str.upper),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    mqtt: MqttAddress
    http_host: str
    http_port: int
    db_pool_size: int
    online_silence_s: float
    reading_interval_s: float
    battery_temp_warning_c: float
    max_window_days: float
    efficiency_excellent: float
    efficiency_good: float
    efficiency_warning: float
    max_body_bytes: int
    max_batch_readings: int
    max_future_skew_s: float
    max_reading_age_days: float
    max_gateway_lag_s: float
    publish_timeout_s: float
    shutdown_timeout_s: float
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
        settings = cls(**values)
        if (
            not settings.efficiency_warning
            <= settings.efficiency_good
            <= (settings.efficiency_excellent)
        ):
            raise SettingsError(
                "EFFICIENCY_WARNING <= EFFICIENCY_GOOD <= EFFICIENCY_EXCELLENT must hold"
            )
        return settings

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def describe_options() -> str:
    """The environment variables, their defaults and meaning, as shown by ``--help``."""
    lines = ["environment variables:"]
    for option in OPTIONS:
        lines.append(f"  {option.env} (default {option.default})")
        lines.append(f"      {option.help}")
    return "\n".join(lines)
