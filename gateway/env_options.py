"""Settings read from environment variables: the option table, value parsers, ``--help`` text.

Shared by the gateway's and the HTTP API's settings, so both read and explain their environment
the same way.
"""

from __future__ import annotations

import dataclasses
import math
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """One environment variable: its name, default and what it does (shown by --help)."""

    env: str
    field: str
    default: str
    help: str
    parse: Callable[[str], Any]


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


def optional_mqtt_address(url: str) -> MqttAddress | None:
    return MqttAddress.parse(url) if url else None


DATABASE_URL_OPTION = Option(
    "DATABASE_URL",
    "database_url",
    "postgresql://localhost/fleetgate",
    "PostgreSQL connection string (libpq URL or key=value form).",
    str,
)


def read_options(options: Iterable[Option], environ: Mapping[str, str]) -> dict[str, Any]:
    """Each option's parsed value (or its default's), by field name; the first bad one raises
    ``SettingsError`` naming the variable."""
    values: dict[str, Any] = {}
    for option in options:
        text = environ.get(option.env, option.default)
        try:
            values[option.field] = option.parse(text)
        except SettingsError:
            raise
        except ValueError as exc:
            raise SettingsError(f"{option.env}={text!r}: {exc}") from None
    return values


def describe_options(options: Iterable[Option]) -> str:
    """The environment variables, their defaults and meaning, as shown by ``--help``."""
    lines = ["environment variables:"]
    for option in options:
        lines.append(f"  {option.env} (default {option.default})")
        lines.append(f"      {option.help}")
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("must be a port number, 1-65535")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if not value >= 0:
        raise ValueError("must be zero or more")
    return value


def optional_hour(text: str) -> int | None:
    """An hour of the day, 0-23; empty: none."""
    if not text.strip():
        return None
    value = int(text)
    if not 0 <= value <= 23:
        raise ValueError("must be an hour of the day, 0-23, or empty")
    return value


def ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("must be a number from 0 to 1")
    return value


def enrolment(text: str) -> str:
    """``closed``: only registered, active devices; ``open``: a device is registered by its
    first reading (trials)."""
    lowered = text.strip().lower()
    if lowered not in {"closed", "open"}:
        raise ValueError("must be closed or open")
    return lowered


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")
