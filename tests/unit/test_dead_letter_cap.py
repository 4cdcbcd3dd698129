"""The dead-letter cap, without services: what is kept whole, what is counted, and the bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.batch import Batch, Received
from gateway.dead_letter_cap import OTHERS, DeadLetterCap
from gateway.readings import Decoded, Limits, decode_message

NOW = datetime(2026, 2, 9, 8, 46, 10, tzinfo=UTC)
LIMITS = Limits(
    max_payload_bytes=1 << 20, max_future_skew=timedelta(minutes=5), max_age=timedelta(days=31)
)


def bad(device: str, elements: int = 1) -> Decoded:
    payload = b"{oops" if elements == 1 else b"[" + b",".join([b"{}"] * elements) + b"]"
    return decode_message(f"fleet/meter/{device}", payload, NOW, LIMITS)


def test_a_device_keeps_its_first_dead_letters_of_a_minute_and_the_rest_are_counted() -> None:
    cap = DeadLetterCap(per_device=3, total=100)
    kept, counted = [], 0
    for _ in range(10):
        decoded, suppressed = cap.admit(bad("M1"), NOW)
        kept += decoded.rejects
        counted += suppressed.count if suppressed else 0
    assert (len(kept), counted) == (3, 7)
    other, suppressed = cap.admit(bad("M2"), NOW)  # another device has its own share
    assert (len(other.rejects), suppressed) == (1, None)
    later, suppressed = cap.admit(bad("M1"), NOW + timedelta(minutes=1))  # a new minute
    assert (len(later.rejects), suppressed) == (1, None)


def test_an_array_of_dead_letters_is_split_at_the_cap_with_a_sample_of_the_rest() -> None:
    cap = DeadLetterCap(per_device=5, total=100)
    decoded, suppressed = cap.admit(bad("M1", elements=40), NOW)
    assert len(decoded.rejects) == 5
    assert suppressed is not None
    assert (suppressed.device_kind, suppressed.device_name, suppressed.count) == ("meter", "M1", 35)
    assert suppressed.sample.reason.startswith("element 5 of 40")
    assert suppressed.window_start == datetime(2026, 2, 9, 8, 46, tzinfo=UTC)


def test_made_up_ids_cannot_grow_what_is_kept_past_the_total() -> None:
    cap = DeadLetterCap(per_device=10, total=50)
    kept = 0
    keys = set()
    for device in range(1000):
        decoded, suppressed = cap.admit(bad(f"fake-{device}"), NOW)
        kept += len(decoded.rejects)
        if suppressed:
            keys.add((suppressed.device_kind, suppressed.device_name))
    assert kept == 50
    assert len(keys) == 51  # 50 devices counted one by one, the rest together
    assert OTHERS in keys


def test_counted_dead_letters_become_one_row_per_device_and_minute() -> None:
    cap = DeadLetterCap(per_device=1, total=100)
    batch = Batch()
    for second in range(5):
        at = NOW + timedelta(seconds=second)
        decoded, suppressed = cap.admit(bad("M1"), at)
        batch.add(Received("fleet/meter/M1", b"{oops", at, 0.0, 1, 1, 1, decoded, suppressed))
    _, _, dead, overflow = batch.rows()
    assert len(dead) == 1
    [(window, kind, name, count, last, reason, payload, size)] = overflow
    assert (window, kind, name, count) == (
        datetime(2026, 2, 9, 8, 46, tzinfo=UTC),
        "meter",
        "M1",
        4,
    )
    assert last == NOW + timedelta(seconds=4)
    assert reason.startswith("malformed JSON")
    assert (payload, size) == (b"{oops", 5)
