"""Charging efficiency: rollup-based answers equal raw-history sums; the edge cases."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
import pytest

from gateway.database import apply_schema
from gateway.rollup_levels import HOURLY, LEVELS, floor_to
from http_api.window_pieces import RAW, Piece, Segment, cover, linked_reads
from tests.http_helpers import Api, iso, meter_reading, vehicle_reading, write_readings
from tests.support import query

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC)
HOUR = timedelta(hours=1)
MICRO = timedelta(microseconds=1)
MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)
BASE = NOW.replace(minute=0, second=0, microsecond=0) - 30 * HOUR

_RAW_DC = """
SELECT coalesce(sum(r.delivered_dc_mwh), 0), count(*), sum(r.battery_temp::float8),
       min(r.battery_temp), max(r.battery_temp)
FROM vehicle_reading r JOIN vehicle v USING (vehicle_id)
WHERE v.name = %s AND r.ts >= %s AND r.ts < %s
"""
_RAW_AC = """
SELECT coalesce(sum(r.consumed_ac_mwh), 0), count(*)
FROM meter_reading r JOIN meter m USING (meter_id)
WHERE m.name = %s AND r.ts >= %s AND r.ts < %s
"""
_LINKS = """
SELECT m.name, l.valid_from, coalesce(l.valid_to, '9999-01-01Z')
FROM vehicle_link l JOIN vehicle v USING (vehicle_id) JOIN meter m USING (meter_id)
WHERE v.name = %s
"""


async def raw_truth(database_url: str, vehicle: str, start: datetime, end: datetime) -> Any:
    """What summing raw history gives: DC over the window, AC and DC over the linked parts."""
    [(dc, dc_n, temp_sum, temp_min, temp_max)] = await query(
        database_url, _RAW_DC, vehicle, start, end
    )
    ac = ac_n = dc_linked = dc_linked_n = 0
    for meter, valid_from, valid_to in await query(database_url, _LINKS, vehicle):
        s, e = max(start, valid_from), min(end, valid_to)
        if s >= e:
            continue
        [(energy, n)] = await query(database_url, _RAW_AC, meter, s, e)
        ac, ac_n = ac + int(energy), ac_n + n
        [(energy, n, *_)] = await query(database_url, _RAW_DC, vehicle, s, e)
        dc_linked, dc_linked_n = dc_linked + int(energy), dc_linked_n + n
    # The readings are whole Wh (random_readings): kWh with 3 decimals are exact sums.
    return {
        "totalAc": ac / 1e6,
        "totalDc": int(dc) / 1e6,
        "dcWhileLinked": dc_linked / 1e6,
        "efficiency": round(dc_linked / ac, 4) if ac and dc_linked_n else None,
        "readings": {"ac": ac_n, "dc": dc_n},
        "avgBatteryTemp": temp_sum / dc_n if dc_n else None,
        "minBatteryTemp": None if temp_min is None else round(temp_min, 1),
        "maxBatteryTemp": None if temp_max is None else round(temp_max, 1),
    }


def assert_same(got: dict[str, Any], truth: dict[str, Any], where: object) -> None:
    for key in ("totalAc", "totalDc", "dcWhileLinked", "efficiency", "readings"):
        assert got[key] == truth[key], (where, key, got[key], truth[key])  # exact
    for key in ("minBatteryTemp", "maxBatteryTemp"):
        assert got[key] == truth[key], (where, key)
    if truth["avgBatteryTemp"] is None:
        assert got["avgBatteryTemp"] is None, where
    else:
        # to 0.1 °C, of float sums added in another order
        assert got["avgBatteryTemp"] == pytest.approx(truth["avgBatteryTemp"], abs=0.05 + 1e-9)


def random_readings(rng: random.Random) -> list[dict[str, Any]]:
    readings: list[dict[str, Any]] = []
    span = 28 * 3600
    for name in ("M-1", "M-2", "M-3"):
        for _ in range(700):
            at = BASE + timedelta(seconds=rng.uniform(0, span))
            readings.append(meter_reading(name, at, round(rng.uniform(0, 3), 3), 230))
    for name in ("EV-1", "EV-2"):
        for _ in range(700):
            at = BASE + timedelta(seconds=rng.uniform(0, span))
            kwh = round(rng.uniform(0, 2.8), 3)  # whole Wh: the API's kWh are exact sums
            readings.append(vehicle_reading(name, at, kwh, temp=round(rng.uniform(-5, 60), 1)))
    readings += rng.sample(readings, 300)  # duplicates: stored once, counted once
    rng.shuffle(readings)  # late arrivals: history is written out of time order
    return readings


def random_window(rng: random.Random) -> tuple[datetime, datetime]:
    def moment() -> datetime:
        at = BASE - HOUR + timedelta(seconds=rng.uniform(0, 31 * 3600))
        if rng.random() < 0.25:  # sometimes exactly on an hour
            at = at.replace(minute=0, second=0, microsecond=0)
        return at

    a, b = moment(), moment()
    if rng.random() < 0.2:  # sometimes inside one hour or across a single boundary
        b = a + timedelta(seconds=rng.uniform(1, 5000))
    return (min(a, b), max(a, b)) if a != b else (a, a + HOUR)


# The randomized tests' links: vehicles move between meters, M-1 freed at 9:47 and taken again.
MOVES: list[tuple[str, str, datetime]] = [
    ("EV-1", "M-1", BASE + timedelta(hours=1, minutes=13, seconds=7.25)),
    ("EV-2", "M-3", BASE + timedelta(hours=3)),
    ("EV-1", "M-2", BASE + timedelta(hours=9, minutes=47, seconds=12.5)),
    ("EV-2", "M-1", BASE + timedelta(hours=15, microseconds=1)),
]


async def post_links(api: Api, links: list[tuple[str, str, datetime]]) -> None:
    for vehicle, meter, since in links:
        body = {"vehicleId": vehicle, "meterId": meter, "since": iso(since)}
        status, answer = await api.send("POST", "/v1/links", body)
        assert status == 201, answer


# Vehicles unplugged for a while and linked to the same meter again: [from, to) cut out of the
# link that held then (history the API cannot write: an end in the past).
GAPS: list[tuple[str, datetime, datetime]] = [
    ("EV-1", BASE + timedelta(hours=3, minutes=30), BASE + timedelta(hours=4, seconds=0.5)),
    (
        "EV-1",
        BASE + timedelta(hours=5, minutes=12, seconds=11),
        BASE + timedelta(hours=6, minutes=1),
    ),
    (
        "EV-2",
        BASE + timedelta(hours=16, minutes=20, seconds=30),
        BASE + timedelta(hours=17, minutes=5),
    ),
]
_END_HELD_LINK = """
UPDATE vehicle_link l SET valid_to = %s FROM vehicle v
WHERE v.vehicle_id = l.vehicle_id AND v.name = %s
  AND l.valid_from < %s AND coalesce(l.valid_to, 'infinity') > %s
RETURNING l.vehicle_id, l.meter_id, (SELECT valid_to FROM vehicle_link WHERE link_id = l.link_id)
"""


async def cut_gaps(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for vehicle, lo, hi in GAPS:
            cur = await conn.execute(_END_HELD_LINK, (lo, vehicle, lo, lo))
            [(vehicle_id, meter_id, valid_to)] = await cur.fetchall()
            await conn.execute(
                "INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from, valid_to)"
                " VALUES (%s, %s, %s, %s)",
                (vehicle_id, meter_id, hi, valid_to),
            )


def gap_windows() -> list[tuple[datetime, datetime]]:
    """Windows around each gap, starting in it and ending in it."""
    windows = []
    for _, lo, hi in GAPS:
        windows += [
            (lo - timedelta(hours=3, minutes=17), hi + timedelta(hours=1, minutes=3)),
            (lo + timedelta(minutes=5), hi + timedelta(hours=5)),
            (lo - timedelta(hours=2), lo + timedelta(minutes=7)),
        ]
    return windows


async def test_rollup_answers_equal_raw_history_sums(api: Api, database_url: str) -> None:
    rng = random.Random(20260209)
    await write_readings(database_url, random_readings(rng), per_batch=397)
    await post_links(api, MOVES)
    await cut_gaps(database_url)
    windows = [random_window(rng) for _ in range(40)] + gap_windows()
    windows.append((BASE - HOUR, NOW))  # everything, one edge exactly on an hour
    for start, end in windows:
        for vehicle in ("EV-1", "EV-2"):
            status, got = await api.get(
                f"/v1/analytics/performance/{vehicle}", **{"from": iso(start), "to": iso(end)}
            )
            assert status == 200, got
            truth = await raw_truth(database_url, vehicle, start, end)
            assert_same(got, truth, (vehicle, start, end))
            assert got["window"] == {"from": iso(start), "to": iso(end)}
    # The whole window crosses the reassignment: AC came from M-1, then M-2.
    _, whole = await api.get(
        "/v1/analytics/performance/EV-1", **{"from": iso(BASE), "to": iso(BASE + 20 * HOUR)}
    )
    assert [m["meterId"] for m in whole["meters"]] == ["M-1", "M-1", "M-1", "M-2"]
    assert whole["meters"][0]["to"] == iso(GAPS[0][1])  # unplugged
    assert whole["meters"][1]["from"] == iso(GAPS[0][2])  # and plugged in again
    assert whole["meters"][2]["to"] == whole["meters"][3]["from"] == iso(MOVES[2][2])
    assert sum(m["readings"] for m in whole["meters"]) == whole["readings"]["ac"]


async def _assert_trend_hours_are_raw_sums(
    api: Api, database_url: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    status, trend = await api.get(
        "/v1/analytics/trend/EV-1", **{"from": iso(start), "to": iso(end)}
    )
    assert status == 200
    hours: list[dict[str, Any]] = trend["hours"]
    first = start.replace(minute=0, second=0, microsecond=0)
    assert [h["hour"] for h in hours] == [iso(first + k * HOUR) for k in range(len(hours))]
    assert first + (len(hours) - 1) * HOUR < end <= first + len(hours) * HOUR
    for hour in hours:
        at = datetime.fromisoformat(hour["hour"])
        truth = await raw_truth(database_url, "EV-1", max(start, at), min(end, at + HOUR))
        assert_same(hour, truth, hour["hour"])
    return hours


async def test_trend_hours_add_up_to_the_window(api: Api, database_url: str) -> None:
    rng = random.Random(7)
    await write_readings(database_url, random_readings(rng))
    since = BASE + timedelta(hours=2, minutes=30)
    body = {"vehicleId": "EV-1", "meterId": "M-1", "since": iso(since)}
    assert (await api.send("POST", "/v1/links", body))[0] == 201
    # A window the link begins inside of, and one inside the link (its DC while linked is the
    # window's DC, read once).
    start, end = BASE + timedelta(minutes=17, seconds=3), BASE + timedelta(hours=6, minutes=5)
    hours = await _assert_trend_hours_are_raw_sums(api, database_url, start, end)
    assert [h["hour"] for h in hours] == [iso(BASE + i * HOUR) for i in range(7)]
    assert hours[0]["efficiency"] is None  # before the link: no AC, nothing invented
    assert hours[0]["efficiencyStatus"] == "noData"
    assert hours[3]["coverage"]["ac"] is not None
    start, end = since + timedelta(minutes=41, seconds=7), since + timedelta(hours=9, seconds=1)
    hours = await _assert_trend_hours_are_raw_sums(api, database_url, start, end)
    assert all(hour["dcWhileLinked"] == hour["totalDc"] for hour in hours)
    assert sum(hour["readings"]["dc"] for hour in hours) > 100


async def test_no_link_means_no_efficiency(api: Api, database_url: str) -> None:
    at = NOW - timedelta(hours=2)
    await write_readings(
        database_url, [vehicle_reading("EV-1", at, 5.0), meter_reading("M-1", at, 6.0)]
    )
    status, body = await api.get("/v1/analytics/performance/EV-1")
    assert status == 200
    assert (body["totalDc"], body["totalAc"]) == (5.0, 0.0)
    assert (body["efficiency"], body["efficiencyStatus"]) == (None, "noData")
    assert body["meters"] == []
    assert body["coverage"]["ac"] is None


async def _linked(api: Api, database_url: str, dc: float, ac: float) -> dict[str, Any]:
    at = NOW - timedelta(hours=2)
    await write_readings(
        database_url, [vehicle_reading("EV-1", at, dc), meter_reading("M-1", at, ac)]
    )
    body = {"vehicleId": "EV-1", "meterId": "M-1", "since": iso(NOW - 3 * HOUR)}
    assert (await api.send("POST", "/v1/links", body))[0] == 201
    status, answer = await api.get("/v1/analytics/performance/EV-1")
    assert status == 200
    return dict(answer)


async def test_dc_above_ac_is_suspect(api: Api, database_url: str) -> None:
    body = await _linked(api, database_url, dc=10.0, ac=9.0)
    assert body["efficiency"] == round(10 / 9, 4)
    assert body["efficiencyStatus"] == "suspect"


@pytest.mark.parametrize(
    ("dc", "status"),
    [(9.3, "excellent"), (9.2, "excellent"), (8.6, "good"), (8.0, "warning"), (7.0, "critical")],
)
async def test_status_thresholds(api: Api, database_url: str, dc: float, status: str) -> None:
    body = await _linked(api, database_url, dc=dc, ac=10.0)
    assert body["efficiencyStatus"] == status


async def test_future_dated_readings_are_not_counted(api: Api, database_url: str) -> None:
    now = datetime.now(UTC)  # not the module's NOW: that may be minutes ago in a long run
    await write_readings(
        database_url,
        [
            vehicle_reading("EV-1", now - HOUR, 1.0),
            vehicle_reading("EV-1", now + timedelta(minutes=4), 50.0),  # a clock running ahead
        ],
    )
    _, body = await api.get("/v1/analytics/performance/EV-1")
    assert body["totalDc"] == 1.0
    _, body = await api.get("/v1/analytics/performance/EV-1", to=iso(now + timedelta(hours=1)))
    assert body["totalDc"] == 1.0
    assert datetime.fromisoformat(body["window"]["to"]) <= datetime.now(UTC)


async def test_window_bad_input(api: Api, database_url: str) -> None:
    await write_readings(database_url, [vehicle_reading("EV-1", NOW - HOUR, 1.0)])
    cases = [
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-02-09T08:00:00"}, "to"),  # no offset
        ({"from": iso(NOW - HOUR), "to": iso(NOW - 2 * HOUR)}, "from"),
        ({"from": iso(NOW - timedelta(days=40)), "to": iso(NOW)}, "to"),
        ({"from": "0001-01-01T00:00:00Z", "to": iso(NOW)}, "from"),
        ({"from": iso(NOW + HOUR), "to": iso(NOW + 2 * HOUR)}, "from"),
    ]
    for path in ("/v1/analytics/performance/EV-1", "/v1/analytics/trend/EV-1"):
        for params, parameter in cases:
            status, body = await api.get(path, **params)
            assert (status, body["error"]["code"], body["error"]["parameter"]) == (
                400,
                "invalidParameter",
                parameter,
            ), (path, params)
        assert (await api.get(path.replace("EV-1", "EV-404")))[0] == 404
        assert (await api.get(path.replace("EV-1", "EV%24")))[0] == 400
    status, body = await api.get("/v1/analytics/fleet", below="x")
    assert (status, body["error"]["parameter"]) == (400, "below")


async def test_whole_hours_are_read_from_the_rollups(api: Api, database_url: str) -> None:
    start = BASE + HOUR
    await write_readings(
        database_url,
        [vehicle_reading("EV-1", start + timedelta(minutes=m), 1.0) for m in range(0, 180, 10)],
    )
    window = {"from": iso(start - timedelta(minutes=5)), "to": iso(start + 3 * HOUR)}
    _, before = await api.get("/v1/analytics/performance/EV-1", **window)
    assert before["totalDc"] == 18.0
    # Were history read for whole hours, zeroing the rollups would change nothing.
    await query(database_url, "UPDATE vehicle_hourly SET delivered_dc_mwh = 0 RETURNING 1")
    _, after = await api.get("/v1/analytics/performance/EV-1", **window)
    assert after["totalDc"] == 0.0


async def test_fleet_pairs_each_vehicle_with_its_own_meter(api: Api, database_url: str) -> None:
    at = NOW - 2 * HOUR
    energies = {"EV-a": (9.5, 10.0), "EV-b": (7.0, 10.0), "EV-c": (8.0, 10.0), "EV-d": (6.0, 8.0)}
    readings: list[dict[str, Any]] = []
    for index, (vehicle, (dc, ac)) in enumerate(energies.items()):
        readings += [vehicle_reading(vehicle, at, dc), meter_reading(f"M-{index}", at, ac)]
    readings += [vehicle_reading("EV-unlinked", at, 50.0), meter_reading("M-spare", at, 70.0)]
    await write_readings(database_url, readings)
    for index, vehicle in enumerate(energies):
        body = {"vehicleId": vehicle, "meterId": f"M-{index}", "since": iso(NOW - 3 * HOUR)}
        assert (await api.send("POST", "/v1/links", body))[0] == 201
    status, fleet = await api.get("/v1/analytics/fleet", limit="2")
    assert status == 200
    totals = fleet["totals"]
    assert totals["efficiency"] == round((9.5 + 7.0 + 8.0 + 6.0) / 38.0, 4)  # not all DC / all AC
    assert totals["vehicles"] == 5
    assert totals["byStatus"] == {"excellent": 1, "critical": 1, "warning": 2, "noData": 1}
    listed = [(v["vehicleId"], v["efficiency"]) for v in fleet["vehicles"]]
    assert listed == [("EV-b", 0.7), ("EV-d", 0.75)]  # worst first
    _, rest = await api.get("/v1/analytics/fleet", limit="2", cursor=fleet["nextCursor"])
    assert [(v["vehicleId"], v["efficiency"]) for v in rest["vehicles"]] == [("EV-c", 0.8)]
    assert rest["nextCursor"] is None
    _, strict = await api.get("/v1/analytics/fleet", below="0.72")
    assert [v["vehicleId"] for v in strict["vehicles"]] == ["EV-b"]


def assert_same_figures(
    fleet_row: dict[str, Any],
    performance: dict[str, Any],
    where: Any,
    coverage_rel: float | None = None,
) -> None:
    """A vehicle's fleet row has exactly its performance figures; the average temperature and
    the coverage within their last decimal (float sums added in another order, then rounded),
    or the coverage within ``coverage_rel`` relative."""
    for key, value in performance.items():
        if key == "coverage" and coverage_rel is not None:
            assert fleet_row[key] == pytest.approx(value, rel=coverage_rel), (where, key)
        elif key == "avgBatteryTemp":
            assert fleet_row[key] == pytest.approx(value, abs=0.1 + 1e-9), (where, key)
        elif key == "coverage":
            assert fleet_row[key] == pytest.approx(value, abs=1e-4 + 1e-9), (where, key)
        elif key not in ("vehicleId", "window", "meters"):
            assert fleet_row[key] == value, (where, key)  # exact


async def test_fleet_figures_equal_the_performance_figures(api: Api, database_url: str) -> None:
    rng = random.Random(20261123)
    await write_readings(database_url, random_readings(rng), per_batch=397)
    # and M-3 taken from EV-2 at 20:00: EV-2 unlinked
    await post_links(api, [*MOVES, ("EV-1", "M-3", BASE + timedelta(hours=20))])
    await cut_gaps(database_url)
    windows = [random_window(rng) for _ in range(25)] + gap_windows()
    windows += [(BASE - HOUR, NOW), (BASE + 2 * HOUR, BASE + 3 * HOUR)]  # on hours
    compared = 0
    for start, end in windows:
        span = {"from": iso(start), "to": iso(end)}
        status, fleet = await api.get("/v1/analytics/fleet", below="10", **span)
        assert status == 200, fleet
        listed = {v["vehicleId"]: v for v in fleet["vehicles"]}
        for vehicle in ("EV-1", "EV-2"):
            _, one = await api.get(f"/v1/analytics/performance/{vehicle}", **span)
            if one["efficiency"] is None:
                assert vehicle not in listed, (vehicle, start, end)
                continue
            assert_same_figures(listed[vehicle], one, (vehicle, start, end))
            compared += 1
        assert fleet["totals"]["vehicles"] == 2
    assert compared > 40


async def test_fleet_window_ending_now_leaves_out_readings_dated_later(
    api: Api, database_url: str
) -> None:
    """The default window ends now, and the fleet view then takes the day's daily rows whole
    less the readings dated after now (future-dated ones, within the allowed skew): those count
    in neither view, and the fleet's figures equal performance's, also for a vehicle moved to
    another meter within the window (link segments that end with it)."""
    now = datetime.now(UTC)
    readings: list[dict[str, Any]] = []
    past_dc = 0
    for minutes in range(1, 120, 7):  # the last two hours, across the hour
        at = now - timedelta(minutes=minutes, seconds=13)
        readings += [vehicle_reading("EV-n", at, 1 + minutes / 100), meter_reading("M-n", at, 2)]
        readings += [vehicle_reading("EV-m", at, 1.5), meter_reading("M-a", at, 1.75)]
        readings += [meter_reading("M-b", at, 1.625 + minutes / 1000)]
        past_dc += 1_000_000 + minutes * 10_000  # mWh
    for minutes in (3, 9, 30):
        at = now + timedelta(minutes=minutes)
        readings += [vehicle_reading(vehicle, at, 40.0) for vehicle in ("EV-n", "EV-m")]
        readings += [meter_reading(meter, at, 0.5) for meter in ("M-n", "M-a", "M-b")]
    await write_readings(database_url, readings)
    links = [("EV-n", "M-n", now - 3 * HOUR), ("EV-m", "M-a", now - 3 * HOUR)]
    await post_links(api, [*links, ("EV-m", "M-b", now - timedelta(minutes=47, seconds=30))])
    status, fleet = await api.get("/v1/analytics/fleet", below="10")
    assert status == 200, fleet
    listed = {v["vehicleId"]: v for v in fleet["vehicles"]}
    assert round(listed["EV-n"]["totalDc"] * 1e6) == past_dc
    for vehicle in ("EV-n", "EV-m"):
        _, one = await api.get(f"/v1/analytics/performance/{vehicle}")
        # coverage: of two windows that end a few milliseconds apart
        assert_same_figures(listed[vehicle], one, vehicle, coverage_rel=1e-3)


_UNITS: Final = {RAW: None} | {level.name: level.unit for level in LEVELS}


def _coefficient(pieces: Iterable[Piece], at: datetime) -> int:
    """How many times ``pieces`` count a reading taken at ``at`` (a rollup row counts it in
    the row of its hour or day)."""
    n = 0
    for piece in pieces:
        unit = _UNITS[piece.level]
        start = at if unit is None else floor_to(at, unit)
        n += piece.sign if piece.start <= start < piece.end else 0
    return n


def _random_span(rng: random.Random, origin: datetime) -> tuple[datetime, datetime, datetime]:
    start = origin + timedelta(seconds=rng.uniform(0, 4 * 86400))
    if rng.random() < 0.3:
        start = floor_to(start, rng.choice([MINUTE, HOUR, DAY]))
    end = start + timedelta(seconds=rng.choice([rng.uniform(1, 900), rng.uniform(1, 3 * 86400)]))
    if rng.random() < 0.3:
        end = max(floor_to(end, rng.choice([MINUTE, HOUR, DAY])) + MINUTE, start + MINUTE)
    now = end + timedelta(seconds=rng.choice([rng.uniform(-600, 600), rng.uniform(0, 0.1)]))
    return start, end, now


def test_fleet_window_pieces_count_every_reading_once_and_read_little() -> None:
    """Raw minutes, hourly and daily rows: a reading inside the window is counted exactly once,
    one outside never; at each level at most a piece at each edge, raw ones at most 30 minutes
    and hourly ones at most 12 hours (of what exists: the future has no rows yet)."""
    rng = random.Random(11)
    origin = datetime(2026, 3, 1, tzinfo=UTC)
    for _ in range(3000):
        start, end, now = _random_span(rng, origin)
        pieces = cover(start, end, now)
        probes = [start, end, start - MICRO, end - MICRO]
        probes += [p.start for p in pieces] + [p.end - MICRO for p in pieces]
        probes += [start + (end - start) * rng.random() for _ in range(20)]
        probes += [start - timedelta(seconds=rng.uniform(0, 86400)) for _ in range(5)]
        probes += [end + timedelta(seconds=rng.uniform(0, 86400)) for _ in range(5)]
        for at in probes:
            assert _coefficient(pieces, at) == (1 if start <= at < end else 0), (start, end, now)
        assert len({p.name for p in pieces}) == len(pieces), pieces
        assert all(p.start < p.end for p in pieces), pieces
        for p in pieces:
            read = min(p.end, max(now, p.start)) - p.start
            if p.level == RAW:
                assert read <= timedelta(minutes=30) or read <= end - start, (start, end, p)
            if p.level == HOURLY.name and p.edge != "middle":
                assert read <= timedelta(hours=12) or read <= end - start, (start, end, p)


def test_fleet_window_pieces_examples() -> None:
    def at(h: int, m: int = 0) -> datetime:
        return datetime(2026, 1, 1, h, m, tzinfo=UTC)

    def pieces(start: datetime, end: datetime, now: datetime) -> list[tuple[Any, ...]]:
        return [(p.name, p.sign, p.start, p.end) for p in cover(start, end, now)]

    # 10:47 to 12:40, now 13:00: 13 raw minutes, hours 11 and 12 less the 20 raw minutes after
    # 12:40 (fewer than the 40 before).
    assert pieces(at(10, 47), at(12, 40), at(13)) == [
        ("raw_head", 1, at(10, 47), at(11)),
        ("raw_tail", -1, at(12, 40), at(13)),
        ("hourly_head", 1, at(11), at(13)),
    ]
    # 10:47 to 12:10: the 10 raw minutes after 12:00.
    assert pieces(at(10, 47), at(12, 10), at(13)) == [
        ("raw_head", 1, at(10, 47), at(11)),
        ("raw_tail", 1, at(12), at(12, 10)),
        ("hourly_head", 1, at(11), at(12)),
    ]
    # 15:37 yesterday to now, 15:37:30 today: yesterday's last 8 hours and today's row whole,
    # less what is dated after now (nothing but future-dated readings).
    now = at(15, 37) + DAY + timedelta(seconds=30)
    assert pieces(now - DAY, now, now + timedelta(milliseconds=3)) == [
        ("raw_head", 1, now - DAY, at(16)),
        ("raw_tail", -1, now, at(16) + DAY),
        ("hourly_head", 1, at(16), at(0) + DAY),
        ("hourly_tail", -1, at(16) + DAY, at(0) + 2 * DAY),
        ("daily_middle", 1, at(0) + DAY, at(0) + 2 * DAY),
    ]
    # 23:52 to 00:31 the next day, now later: 8 raw minutes, and the hour of 00:00 less 29.
    assert pieces(at(23, 52), at(23, 52) + timedelta(minutes=39), at(23) + DAY) == [
        ("raw_head", 1, at(23, 52), at(0) + DAY),
        ("raw_tail", -1, at(0, 31) + DAY, at(1) + DAY),
        ("hourly_tail", 1, at(0) + DAY, at(1) + DAY),
    ]
    # 10:12 to 10:14, inside one hour: 2 raw minutes rather than the hour less 58.
    assert pieces(at(10, 12), at(10, 14), at(12)) == [("raw_head", 1, at(10, 12), at(10, 14))]
    # 23:00 to 01:00 two days later: the whole day from its daily row.
    assert pieces(at(23), at(1) + 2 * DAY, at(5) + 3 * DAY) == [
        ("hourly_head", 1, at(23), at(0) + DAY),
        ("hourly_tail", 1, at(0) + 2 * DAY, at(1) + 2 * DAY),
        ("daily_middle", 1, at(0) + DAY, at(0) + 2 * DAY),
    ]


def test_linked_reads_count_each_linked_reading_once() -> None:
    """A vehicle's cut link segments are read as they are, or as the window (its window sums,
    read anyway) less the gaps between them: either way, what is read counts each reading
    inside a segment once and every other one never."""
    rng = random.Random(5)
    origin = datetime(2026, 3, 1, tzinfo=UTC)
    for _ in range(500):
        start, end, now = _random_span(rng, origin)
        cuts = sorted(start + (end - start) * rng.random() for _ in range(rng.choice([2, 4, 6])))
        if rng.random() < 0.5:
            cuts[0] = start
        if rng.random() < 0.5:
            cuts[-1] = end
        segments = [
            Segment(1, 7, lo, hi) for lo, hi in zip(cuts[::2], cuts[1::2], strict=True) if lo < hi
        ]
        if [(s.start, s.end) for s in segments] in ([], [(start, end)]):
            continue  # not cut: the window sums
        reads = linked_reads(segments, (start, end), now)
        window = cover(start, end, now) if reads.window_pairs else ()
        assert reads.window_pairs in ((), ((1, 7),))
        read = [*window, *(cut.piece for cut in reads.pieces)]
        assert {(cut.vehicle_id, cut.device_id) for cut in reads.pieces} <= {(1, 7)}
        probes = [s.start for s in segments] + [s.end for s in segments]
        probes += [start + (end - start) * rng.random() for _ in range(30)]
        for at in probes + [p - MICRO for p in probes]:
            inside = any(s.start <= at < s.end for s in segments)
            assert _coefficient(read, at) == (1 if inside else 0), (segments, at)


async def test_fleet_energy_sums_are_exact_past_double_precision(database_url: str) -> None:
    """The fleet view adds energies with schema.sql's fleetgate_sum (bigint in, bigint out):
    exact where a double would round, and an error rather than a wrong total past a bigint."""
    await apply_schema(database_url)
    sql = "SELECT fleetgate_sum(x) FROM (VALUES (%s::bigint), (%s::bigint)) v (x)"
    assert await query(database_url, sql, 2**53 + 1, 2) == [(2**53 + 3,)]
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        await query(database_url, sql, 2**63 - 1, 1)
