"""How many dead letters are kept whole: the first ones of each device in each minute; the rest
are counted, one row per device and minute with a sample, so one broken or hostile device cannot
flood the database."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from gateway.readings import Decoded, Reject

WINDOW_S = 60
# The key of dead letters past the cap of devices the window no longer tracks one by one (and
# of messages on topics that name no device).
OTHERS = ("", "")


@dataclasses.dataclass(frozen=True, slots=True)
class Suppressed:
    """The dead letters of one message that were past the cap: counted, the first as a sample."""

    window_start: datetime
    device_kind: str  # "" for OTHERS
    device_name: str
    count: int
    sample: Reject


class DeadLetterCap:
    """Per window of ``WINDOW_S``: at most ``per_device`` dead letters of one device and
    ``total`` of all devices are kept whole. Past the cap, counts are kept per device for at
    most ``total`` devices, the others under ``OTHERS``: memory and rows per window stay
    bounded, whatever ids a sender makes up."""

    def __init__(self, per_device: int, total: int) -> None:
        self._per_device = per_device
        self._total = total
        self._window = -1
        self._kept: dict[tuple[str, str], int] = {}
        self._kept_total = 0
        self._counted: set[tuple[str, str]] = set()

    def admit(self, decoded: Decoded, received_at: datetime) -> tuple[Decoded, Suppressed | None]:
        """``decoded`` with only the rejects to keep whole, and what was counted instead."""
        rejects = decoded.rejects
        if not rejects:
            return decoded, None
        window = int(received_at.timestamp()) // WINDOW_S
        if window != self._window:
            self._window = window
            self._kept.clear()
            self._kept_total = 0
            self._counted.clear()
        key: tuple[str, str] = (decoded.device_kind or "", decoded.device_id or "")
        kept_before = self._kept.get(key, 0)
        room = max(0, min(self._per_device - kept_before, self._total - self._kept_total))
        if room >= len(rejects):
            self._kept[key] = kept_before + len(rejects)
            self._kept_total += len(rejects)
            return decoded, None
        if room:
            self._kept[key] = kept_before + room
            self._kept_total += room
        if key not in self._counted:
            if len(self._counted) < self._total:
                self._counted.add(key)
            else:
                key = OTHERS
        start = datetime.fromtimestamp(window * WINDOW_S, UTC)
        suppressed = Suppressed(start, key[0], key[1], len(rejects) - room, rejects[room])
        return decoded._replace(rejects=rejects[:room]), suppressed
