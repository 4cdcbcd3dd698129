"""What an alert says: the one message that MQTT subscribers and the HTTP API both receive, its
topic, and its sentence. One Struct for both, so the two can never use different words."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec
from msgspec import Meta

# The API notifies this channel when it adds to the alert outbox (an acknowledgement), so that
# the gateway's publisher sends it at once instead of at its next look.
ALERT_EVENTS_CHANNEL: Final = "fleetgate_alert_events"
AlertState: TypeAlias = Literal["raised", "cleared"]
Time = Annotated[datetime, Meta(tz=True, description="RFC 3339, UTC")]

_TITLES: Final = {
    "lowEfficiency": "Low charging efficiency",
    "batteryOverTemp": "Battery over temperature",
    "voltageOutOfRange": "Voltage out of range",
    "deviceOffline": "Device offline",
    "dcExceedsAc": "DC delivered exceeds AC consumed",
    "badPayloads": "Repeated bad payloads",
}
# Decimals of an alert's value and threshold, by rule: in the unit of its message.
_DECIMALS: Final = {
    "lowEfficiency": 4,  # a ratio
    "batteryOverTemp": 1,  # °C
    "voltageOutOfRange": 1,  # V
    "deviceOffline": 1,  # seconds silent
    "dcExceedsAc": 3,  # kWh
    "badPayloads": 0,  # dead letters
}


class Alert(msgspec.Struct, rename="camel"):
    """An alert as it is now: on ``fleet/alerts/{kind}/{id}/{rule}`` and in ``GET /v1/alerts``."""

    alert_id: str
    rule: Annotated[str, Meta(examples=["batteryOverTemp", "lowEfficiency"])]
    state: AlertState  # raised: active now; cleared: ended
    device_id: str
    device_kind: Literal["meter", "vehicle"]
    value: float  # the worst value seen while raised, in the rule's unit
    threshold: float
    clear_value: float | None  # the value that cleared it
    raised_at: Time
    cleared_at: Time | None
    acknowledged_at: Time | None  # when an engineer acknowledged it (POST .../ack)
    acknowledged_by: str | None  # the API token that did: "its name (token N)"
    acknowledged_note: str | None
    message: str


def alert_topic(device_kind: str, device_name: str, rule: str) -> str:
    return f"fleet/alerts/{device_kind}/{device_name}/{rule}"


def rounded(rule: str, value: float | None) -> float | None:
    """An alert's value or threshold in its rule's unit (4 decimals for a rule unknown here)."""
    return None if value is None else round(value, _DECIMALS.get(rule, 4))


def describe(
    rule: str,
    state: str,
    device: str,
    value: float,
    threshold: float,
    *,
    clear_value: float | None = None,
) -> str:
    """The human sentence of an alert."""
    if state == "cleared":
        now = "" if clear_value is None else f" ({_format(rule, clear_value)} now)"
        return f"{_TITLES[rule]} on {device} cleared{now}; worst was {_format(rule, value)}."
    return (
        f"{_TITLES[rule]} on {device}: {_format(rule, value)}, threshold "
        f"{_format(rule, threshold)}."
    )


def _format(rule: str, value: float) -> str:
    if rule == "lowEfficiency":
        return f"{value:.1%} DC/AC"
    if rule == "dcExceedsAc":
        return f"{value:.3f} kWh more DC than AC"
    if rule == "batteryOverTemp":
        return f"{value:.1f} °C"
    if rule == "voltageOutOfRange":
        return f"{value:.1f} V"
    if rule == "deviceOffline":
        return f"{value:.0f} s silent"
    return f"{value:.0f} dead letters"


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def acknowledger(token_id: int, name: str) -> str:
    """Who acknowledged, as ``acknowledgedBy`` says it: the token's name and id."""
    return f"{name} (token {token_id})" if name else f"token {token_id}"


def alert_message(row: Mapping[str, Any], *, raised_only: bool = False) -> Alert:
    """The message of an ``alert`` row (its columns by name). ``raised_only``: as it was while
    raised, for an outbox event published after the alert cleared (its clear follows)."""
    rule = row["rule"]
    cleared_at = None if raised_only else row["cleared_at"]
    clear_value = None if raised_only else row["clear_value"]
    state: AlertState = "raised" if cleared_at is None else "cleared"
    value, threshold = rounded(rule, row["value"]), rounded(rule, row["threshold"])
    assert value is not None  # NOT NULL columns
    assert threshold is not None
    clear_value = rounded(rule, clear_value)
    # The sentence with the worst value so far; the stored one (written at the raise) only for
    # a rule this version no longer knows.
    message = (
        describe(rule, state, row["device_name"], value, threshold, clear_value=clear_value)
        if rule in _TITLES
        else row["message"]
    )
    return Alert(
        alert_id=str(row["alert_id"]),
        rule=rule,
        state=state,
        device_id=row["device_name"],
        device_kind=row["device_kind"],
        value=value,
        threshold=threshold,
        clear_value=clear_value,
        raised_at=row["raised_at"].astimezone(UTC),
        cleared_at=_utc(cleared_at),
        acknowledged_at=_utc(row["acknowledged_at"]),
        acknowledged_by=row["acknowledged_by"],
        acknowledged_note=row["acknowledged_note"],
        message=message,
    )
