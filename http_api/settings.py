"""The HTTP API's settings: read once from the environment, then passed down frozen."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Final, Self

from gateway.env_options import (
    DATABASE_URL_OPTION,
    MqttAddress,
    Option,
    SettingsError,
    boolean,
    finite_float,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    ratio,
    read_options,
)
from gateway.env_options import describe_options as _describe
from gateway.settings import OPTIONS as GATEWAY_OPTIONS


def _shared(env: str, help_text: str) -> Option:
    """The gateway's option ``env``, with the same default and parser: the two services read
    one variable the same way (a help of the API's own)."""
    [option] = [option for option in GATEWAY_OPTIONS if option.env == env]
    return dataclasses.replace(option, help=help_text)


# An origin as a browser sends it: scheme, host and an optional port; no path, no slash.
_ORIGIN: Final = re.compile(r"https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def origins(text: str) -> frozenset[str]:
    """CORS_ORIGINS: origins separated by commas or spaces, or * for any origin."""
    named = {origin.lower() for origin in re.split(r"[\s,]+", text.strip()) if origin}
    for origin in named:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(f"{origin!r} is not an origin such as https://dashboard.example.com")
    return frozenset(named)


def database_urls(text: str) -> tuple[str, ...]:
    """DATABASE_READ_URL: PostgreSQL URLs separated by commas (a URL holds no bare comma)."""
    urls = tuple(url.strip() for url in text.split(",") if url.strip())
    for url in urls:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"{url.split('@')[-1]!r} is not a postgresql:// URL")
    return urls


OPTIONS: tuple[Option, ...] = (
    DATABASE_URL_OPTION,
    Option(
        "MQTT_URL",
        "mqtt",
        "mqtt://localhost:1883",
        "Broker that HTTP ingestion publishes to: mqtt://[user:password@]host[:port].",
        MqttAddress.parse,
    ),
    _shared(
        "ENROLMENT",
        "closed: HTTP ingestion refuses readings of devices that are not registered and active "
        "(422 unknownDevice; rejected in a batch), as the gateway dead-letters them; open: it "
        "publishes them and the gateway registers a device by its first reading (trials). Set "
        "it as the gateway's.",
    ),
    Option("HTTP_HOST", "http_host", "127.0.0.1", "Address the API listens on.", str),
    Option("HTTP_PORT", "http_port", "8080", "Port the API listens on.", port),
    Option(
        "CORS_ORIGINS",
        "cors_origins",
        "",
        "Web origins whose pages may call the API from a browser (CORS), separated by commas: "
        "https://dashboard.example.com; * for any. Empty: none (browsers refuse other origins).",
        origins,
    ),
    Option("DB_POOL_SIZE", "db_pool_size", "4", "Connections in the database pool.", positive_int),
    Option(
        "DATABASE_READ_URL",
        "database_read_urls",
        "",
        "Streaming replicas of DATABASE_URL for the dashboards' reads, separated by commas, "
        "taken in turn; writes, token checks, health and a token's reads for READ_YOUR_WRITES_S "
        "after its write stay on DATABASE_URL. Empty: every query on DATABASE_URL.",
        database_urls,
    ),
    Option(
        "DB_READ_POOL_SIZE",
        "db_read_pool_size",
        "2",
        "Connections in each replica's pool (DATABASE_READ_URL).",
        positive_int,
    ),
    Option(
        "MAX_REPLICA_LAG_S",
        "max_replica_lag_s",
        "5",
        "A replica further behind than this (or unreachable, or no longer in recovery) gets no "
        "reads until it catches up: they go to DATABASE_URL.",
        positive_float,
    ),
    Option(
        "READ_YOUR_WRITES_S",
        "read_your_writes_s",
        "10",
        "After a token's write (POST, PATCH, DELETE), its reads go to DATABASE_URL for this "
        "long, so it sees what it wrote; a request with the header Fleetgate-Read: primary "
        "always does.",
        non_negative_float,
    ),
    Option(
        "TOKEN_CONCURRENCY",
        "token_concurrency",
        "8",
        "Requests one bearer token may have in progress at once; one more is answered 429 "
        "(Retry-After: 1) at once. 0: no limit.",
        non_negative_int,
    ),
    Option(
        "TOKEN_RATE",
        "token_rate",
        "20",
        "Requests a second one bearer token may send, on average (a token bucket); past it, "
        "429 with Retry-After. 0: no limit.",
        non_negative_float,
    ),
    Option(
        "TOKEN_BURST",
        "token_burst",
        "40",
        "Requests one bearer token may send at once above TOKEN_RATE (the bucket's size).",
        positive_int,
    ),
    Option(
        "FLEET_CACHE_S",
        "fleet_cache_s",
        "60",
        "GET /v1/analytics/fleet with default parameters is computed once per this period (a "
        "UTC minute by default) and that answer served to every request within it (Age, "
        "Cache-Control: max-age). 0: every request computes it.",
        non_negative_float,
    ),
    Option(
        "TOKEN_CACHE_S",
        "token_cache_s",
        "60",
        "A valid token is cached at most this long; a revoke empties the cache at once (the "
        "database notifies the API). 0 checks every request against the database.",
        non_negative_float,
    ),
    Option(
        "ONLINE_SILENCE_S",
        "online_silence_s",
        "180",
        "A device is online if its latest reading was taken at most this long ago.",
        positive_float,
    ),
    Option(
        "READING_INTERVAL_S",
        "reading_interval_s",
        "60",
        "Seconds between two readings of a device: coverage's expected readings, and power "
        "(kW) from the energy of the latest interval.",
        positive_float,
    ),
    Option(
        "BATTERY_TEMP_WARNING_C",
        "battery_temp_warning_c",
        "45",
        "A vehicle whose latest battery temperature is at or above this has a warning.",
        finite_float,
    ),
    Option(
        "MAX_WINDOW_DAYS",
        "max_window_days",
        "31",
        "Longest window analytics accept.",
        positive_float,
    ),
    Option("EFFICIENCY_EXCELLENT", "efficiency_excellent", "0.92", "Excellent from.", ratio),
    Option("EFFICIENCY_GOOD", "efficiency_good", "0.85", "Good from.", ratio),
    Option(
        "EFFICIENCY_WARNING",
        "efficiency_warning",
        "0.75",
        "Warning from; critical below.",
        ratio,
    ),
    Option(
        "MAX_BODY_BYTES",
        "max_body_bytes",
        "1048576",
        "Request bodies above this size are refused with 413.",
        positive_int,
    ),
    _shared(
        "MAX_PAYLOAD_BYTES",
        "A reading (one POST /v1/telemetry, or one element of a batch) above this size is "
        "refused with 413 or rejected in the batch: the gateway, set alike, dead-letters it.",
    ),
    Option(
        "MAX_BATCH_READINGS",
        "max_batch_readings",
        "1000",
        "Readings per POST /v1/telemetry/batch at most.",
        positive_int,
    ),
    Option(
        "MAX_FUTURE_SKEW_S",
        "max_future_skew_s",
        "300",
        "Readings timestamped further than this into the future are refused (as the gateway).",
        positive_float,
    ),
    Option(
        "MAX_READING_AGE_DAYS",
        "max_reading_age_days",
        "31",
        "Readings older than this are refused (as the gateway).",
        positive_float,
    ),
    Option(
        "HEARTBEAT_MAX_AGE_S",
        "heartbeat_max_age_s",
        "30",
        "GET /health is degraded when no gateway has recorded a heartbeat for this long, or one "
        "that did not stop on purpose has not (the gateways beat every HEARTBEAT_INTERVAL_S, "
        "5 s).",
        positive_float,
    ),
    Option(
        "HEARTBEAT_FORGET_S",
        "heartbeat_forget_s",
        "86400",
        "GET /health leaves out a gateway whose last heartbeat is older than this: a replica "
        "removed or renamed without stopping on purpose.",
        positive_float,
    ),
    Option(
        "PUBLISH_TIMEOUT_S",
        "publish_timeout_s",
        "5",
        "How long ingestion waits for the broker's acknowledgement.",
        positive_float,
    ),
    Option(
        "SHUTDOWN_TIMEOUT_S",
        "shutdown_timeout_s",
        "15",
        "On SIGTERM, how long requests in flight may take to finish.",
        positive_float,
    ),
    Option("LOG_LEVEL", "log_level", "INFO", "DEBUG, INFO, WARNING or ERROR.", str.upper),
    Option(
        "ACCESS_LOG",
        "access_log",
        "off",
        "on: one line per request on the aiohttp.access logger (client address, method, path "
        "without its query string, status, duration, request id); never a header or a token.",
        boolean,
    ),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    mqtt: MqttAddress
    enrolment: str
    http_host: str
    http_port: int
    cors_origins: frozenset[str]
    db_pool_size: int
    database_read_urls: tuple[str, ...]
    db_read_pool_size: int
    max_replica_lag_s: float
    read_your_writes_s: float
    token_concurrency: int
    token_rate: float
    token_burst: int
    fleet_cache_s: float
    token_cache_s: float
    online_silence_s: float
    reading_interval_s: float
    battery_temp_warning_c: float
    max_window_days: float
    efficiency_excellent: float
    efficiency_good: float
    efficiency_warning: float
    max_body_bytes: int
    max_payload_bytes: int
    max_batch_readings: int
    max_future_skew_s: float
    max_reading_age_days: float
    heartbeat_max_age_s: float
    heartbeat_forget_s: float
    publish_timeout_s: float
    shutdown_timeout_s: float
    log_level: str
    access_log: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        settings = cls(**read_options(OPTIONS, environ))
        if (
            not settings.efficiency_warning
            <= settings.efficiency_good
            <= (settings.efficiency_excellent)
        ):
            raise SettingsError(
                "EFFICIENCY_WARNING <= EFFICIENCY_GOOD <= EFFICIENCY_EXCELLENT must hold"
            )
        # A replica is judged every second: within MAX_REPLICA_LAG_S of the primary when judged,
        # it may be up to a second further behind before the next look.
        least = settings.max_replica_lag_s + 1.0
        if settings.database_read_urls and settings.read_your_writes_s < least:
            raise SettingsError(
                f"READ_YOUR_WRITES_S must be at least MAX_REPLICA_LAG_S + 1 ({least:g}), or a "
                "token's write may not be on the replica that serves its next read"
            )
        return settings

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def describe_options() -> str:
    """The environment variables, their defaults and meaning, as shown by ``--help``."""
    return _describe(OPTIONS)
