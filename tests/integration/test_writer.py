"""The batch writer against the real database: refusals isolated, rollups exact."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from gateway.batch import Batch, Received
from gateway.database import Partitions, apply_schema, open_pool
from gateway.readings import Limits, decode_message
from gateway.writer import BatchWriter, WriteResult
from tests.support import query

NOW = datetime.now(UTC).replace(microsecond=0)
LIMITS = Limits(65536, timedelta(minutes=5), timedelta(days=31))


def message(topic: str, payload: bytes) -> Received:
    return Received(
        topic,
        payload,
        NOW,
        0.0,
        mid=0,
        qos=0,
        connection=0,
        decoded=decode_message(topic, payload, NOW, LIMITS),
    )


def vehicle_payload(at: datetime, kwh: float, temp: float) -> bytes:
    return b'{"soc": 50, "kwhDeliveredDc": %r, "batteryTemp": %r, "timestamp": "%s"}' % (
        kwh,
        temp,
        at.isoformat().encode(),
    )


async def write(database_url: str, *batches: Batch) -> list[WriteResult]:
    await apply_schema(database_url)
    committed: list[WriteResult] = []
    async with open_pool(database_url, 1) as pool:
        writer = BatchWriter(
            pool,
            Partitions(pool),
            0.1,
            lambda _batch, result: committed.append(result),
            open_enrolment=True,  # devices register by their first reading
        )
        for batch in batches:
            await writer.write(batch)
    return committed


async def test_a_message_the_database_refuses_becomes_a_dead_letter_and_the_rest_is_stored(
    database_url: str,
) -> None:
    good = [message(f"fleet/vehicle/V{n}", vehicle_payload(NOW, 1.0, 20)) for n in range(3)]
    # Past validation, but PostgreSQL text cannot hold NUL: injected to stand for any value
    # the database refuses.
    poisoned = good[1]._replace(decoded=good[1].decoded._replace(device_id="V1\x00"))
    results = await write(database_url, Batch([good[0], poisoned, good[2]]))
    assert await query(database_url, "SELECT name FROM vehicle ORDER BY name") == [("V0",), ("V2",)]
    [(topic, reason)] = await query(database_url, "SELECT topic, reason FROM dead_letter")
    assert topic == "fleet/vehicle/V1"
    assert reason.startswith("database refused the message:")
    assert sum(r.messages for r in results) == 3  # every message committed, hence acknowledged


async def test_rollups_equal_the_sums_of_history_despite_duplicates_and_disorder(
    database_url: str,
) -> None:
    rng = random.Random(7)
    start = NOW - timedelta(hours=60)  # three UTC days at least: daily rollups too
    payloads = [
        vehicle_payload(
            start + timedelta(seconds=rng.randrange(60 * 3600)),
            round(rng.uniform(0, 2), 4),
            round(rng.uniform(-10, 60), 1),
        )
        for _ in range(600)
    ]
    payloads += rng.sample(payloads, 150)  # duplicates
    rng.shuffle(payloads)  # late arrivals
    batches = [
        Batch([message("fleet/vehicle/EV-R", p) for p in payloads[i : i + 37]])
        for i in range(0, len(payloads), 37)
    ]
    results = await write(database_url, *batches)
    assert sum(r.duplicates for r in results) >= 150
    from_history = await query(
        database_url,
        """
        SELECT date_bin('1 hour', ts, '2000-01-01 00:00:00+00'), sum(delivered_dc_mwh), count(*),
               sum(battery_temp::double precision), min(battery_temp), max(battery_temp)
        FROM vehicle_reading GROUP BY 1 ORDER BY 1""",
    )
    from_rollups = await query(
        database_url,
        """
        SELECT hour, delivered_dc_mwh, readings, battery_temp_sum, battery_temp_min,
               battery_temp_max
        FROM vehicle_hourly ORDER BY hour""",
    )
    assert [row[:3] for row in from_rollups] == [row[:3] for row in from_history]
    for rolled, raw in zip(from_rollups, from_history, strict=True):
        assert abs(rolled[3] - raw[3]) < 1e-9
        assert rolled[4:] == raw[4:]
    daily_from_history = await query(
        database_url,
        """
        SELECT date_bin('1 day', ts, '2000-01-01 00:00:00+00'), sum(delivered_dc_mwh), count(*)
        FROM vehicle_reading GROUP BY 1 ORDER BY 1""",
    )
    daily = await query(
        database_url, "SELECT day, delivered_dc_mwh, readings FROM vehicle_daily ORDER BY day"
    )
    assert len(daily) >= 3
    assert daily == daily_from_history
