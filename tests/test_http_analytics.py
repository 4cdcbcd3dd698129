"""Charging efficiency: rollup-based answers equal raw-history sums; the edge cases."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gateway.database import apply_schema
from http_api.window_pieces import DAY, SLOT, floor_to, split, split_sql, window_pieces
from tests.conftest import query
from tests.http_helpers import Api, iso, meter_reading, vehicle_reading, write_readings

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC)
HOUR = timedelta(hours=1)
MICRO = timedelta(microseconds=1)
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
    await write_readings(
        database_url,
        [
            vehicle_reading("EV-1", NOW - HOUR, 1.0),
            vehicle_reading("EV-1", NOW + timedelta(minutes=4), 50.0),  # a clock running ahead
        ],
    )
    _, body = await api.get("/v1/analytics/performance/EV-1")
    assert body["totalDc"] == 1.0
    _, body = await api.get("/v1/analytics/performance/EV-1", to=iso(NOW + timedelta(hours=1)))
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


def _only(p: dict[str, Any], kept: tuple[str, ...], at: datetime) -> dict[str, Any]:
    """The window pieces ``p`` with only the pieces named in ``kept``; the others empty."""
    pieces = {k: v for k, v in p.items() if k[:2] in kept}
    for name in ("p1", "p2", "q1", "q2", "u1", "u2"):
        if name not in kept:
            pieces |= {f"{name}sign": 1, f"{name}lo": at, f"{name}hi": at}
    return pieces | {"d_lo": at, "d_hi": at}


def _coefficient(p: dict[str, Any], at: datetime) -> int:
    """How many times the fleet's pieces count a reading taken at ``at``."""
    n = 0
    for name, unit in (("p", None), ("q", SLOT), ("u", HOUR)):
        cell = at if unit is None else floor_to(at, unit)
        for piece in (f"{name}1", f"{name}2"):
            n += p[f"{piece}sign"] if p[f"{piece}lo"] <= cell < p[f"{piece}hi"] else 0
    return n + (1 if p["d_lo"] <= floor_to(at, DAY) < p["d_hi"] else 0)


def test_fleet_window_pieces_count_every_reading_once_and_read_little() -> None:
    """Days, hours of a daily row, 10-minute slots of an hourly row and raw minutes: a reading
    inside the window is counted exactly once, one outside never; raw pieces are at most 5
    minutes, a slot piece lies in one hourly row and an hour piece in one daily row."""
    rng = random.Random(11)
    origin = datetime(2026, 3, 1, tzinfo=UTC)
    for _ in range(3000):
        start = origin + timedelta(seconds=rng.uniform(0, 4 * 86400))
        if rng.random() < 0.3:
            start = floor_to(start, rng.choice([SLOT, HOUR, DAY]))
        end = start + timedelta(
            seconds=rng.choice([rng.uniform(1, 900), rng.uniform(1, 3 * 86400)])
        )
        if rng.random() < 0.3:
            end = floor_to(end, rng.choice([SLOT, HOUR, DAY])) + SLOT
        now = end + timedelta(seconds=rng.uniform(-600, 600))
        p = window_pieces(start, end, now)
        probes = [start, end, start - MICRO, end - MICRO, p["r1"], p["r2"], p["r1"] - MICRO]
        probes += [start + (end - start) * rng.random() for _ in range(20)]
        probes += [start - timedelta(seconds=rng.uniform(0, 86400)) for _ in range(5)]
        probes += [end + timedelta(seconds=rng.uniform(0, 86400)) for _ in range(5)]
        for at in probes:
            assert _coefficient(p, at) == (1 if start <= at < end else 0), (start, end, now, at)
        for side in "12":  # what is read: the future has no rows yet
            span = min(p[f"p{side}hi"], now) - p[f"p{side}lo"]
            assert span.total_seconds() <= 5 * 60 or span <= end - start, (start, end, p)
            for name, whole in (("q", HOUR), ("u", DAY)):
                lo, hi = p[f"{name}{side}lo"], p[f"{name}{side}hi"]
                assert p[f"{name}{side}sign"] == 1, (start, end, p)
                assert lo <= hi, (start, end, p)
                assert floor_to(lo, whole) == p[f"{name}{side}cell"], (start, end, p)
                assert hi <= p[f"{name}{side}cell"] + whole, (start, end, p)
        if p["share_edges"]:  # [start, r1) is p1 + q1: what a cut link segment takes
            head = _only(p, ("p1", "q1"), start)
            for at in [start, p["r1"] - MICRO, start + (p["r1"] - start) * rng.random()]:
                if start <= at < p["r1"]:
                    assert _coefficient(head, at) == 1, (start, end, at)
            # and [r2, end) is q2 + p2; past the end when the window ends now (p2 subtracted)
            tail = _only(p, ("p2", "q2"), start)
            probes = [end - MICRO, end, p["r2"] - MICRO, p["r2"], end + (p["r2"] - end) / 2]
            for at in probes if start < end else []:  # an empty window has no pieces
                want = 1 if p["r2"] <= at < end else -1 if end <= at < p["r2"] else 0
                assert _coefficient(tail, at) == want, (start, end, now, at)


def test_fleet_window_pieces_examples() -> None:
    def at(h: int, m: int = 0) -> datetime:
        return datetime(2026, 1, 1, h, m, tzinfo=UTC)

    # 10:47 to 12:40, now 13:00: 3 raw minutes and a slot to 11:00; the tail is on a slot.
    p = window_pieces(at(10, 47), at(12, 40), at(13))
    assert (p["p1sign"], p["p1lo"], p["p1hi"]) == (1, at(10, 47), at(10, 50))
    assert (p["q1cell"], p["q1klo"], p["q1khi"]) == (at(10), 5, 6)  # slot 5 of 10:00's row
    assert (p["r1"], p["r2"]) == (at(11), at(12))
    assert (p["u1cell"], p["u1klo"], p["u1khi"]) == (at(0), 11, 12)  # hour 11 of the day's row
    assert (p["q2cell"], p["q2klo"], p["q2khi"]) == (at(12), 0, 4)  # slots 0-3 of 12:00's row
    assert p["p2lo"] == p["p2hi"]
    assert p["d_lo"] == p["d_hi"]
    # The same, ending now at 12:40:30: the day's row whole, less what is dated after 12:40:30
    # (nothing but future-dated readings), instead of the slots of 12:00's row and raw minutes.
    end = at(12, 40) + timedelta(seconds=30)
    p = window_pieces(at(10, 47), end, end + timedelta(milliseconds=3))
    assert (p["p1sign"], p["p1lo"], p["p1hi"]) == (1, at(10, 47), at(10, 50))
    assert (p["q1cell"], p["q1klo"], p["q1khi"]) == (at(10), 5, 6)
    assert (p["u1cell"], p["u1klo"], p["u1khi"]) == (at(0), 11, 24)  # hours 11-23 of the row
    assert (p["p2sign"], p["p2lo"], p["p2hi"]) == (-1, end, at(0) + DAY)
    assert p["q2klo"] == p["q2khi"]
    assert p["u2klo"] == p["u2khi"]
    assert (p["r1"], p["r2"], p["hc"]) == (at(11), at(0) + DAY, at(0) + DAY)
    # 23:52 to 00:31 the next day, now later: one hourly row's slots at each edge, no hours.
    p = window_pieces(at(23, 52), at(23, 52) + timedelta(minutes=39), at(23) + DAY)
    assert (p["p1sign"], p["p1lo"], p["p1hi"]) == (-1, at(23, 50), at(23, 52))
    assert (p["q1cell"], p["q1klo"], p["q1khi"]) == (at(23), 5, 6)
    assert (p["q2cell"], p["q2klo"], p["q2khi"]) == (at(0) + DAY, 0, 3)
    assert p["u1klo"] == p["u1khi"]
    assert p["u2klo"] == p["u2khi"]
    # 10:12 to 10:14, inside one slot: 2 raw minutes rather than the slot less 8.
    p = window_pieces(at(10, 12), at(10, 14), at(12))
    assert (p["p1sign"], p["p1lo"], p["p1hi"]) == (1, at(10, 12), at(10, 14))
    assert not p["share_edges"]


async def test_the_sql_split_chooses_as_the_python_one(database_url: str) -> None:
    """Link segments are split in SQL (http_api.window_pieces.split_sql), the window in Python:
    both must read the same pieces."""
    units = {"interval '10 minutes'": SLOT, "interval '1 hour'": HOUR}
    rng = random.Random(3)
    origin = datetime(2026, 3, 1, tzinfo=UTC)
    cases = []
    for _ in range(300):
        lo = origin + timedelta(seconds=rng.uniform(0, 86400))
        if rng.random() < 0.3:
            lo = floor_to(lo, rng.choice([SLOT, HOUR]))
        hi = lo + timedelta(seconds=rng.choice([0, rng.uniform(1, 700), rng.uniform(1, 20000)]))
        if rng.random() < 0.3:
            hi = floor_to(hi, rng.choice([SLOT, HOUR]))
        now = hi + timedelta(seconds=rng.uniform(-900, 900))
        cases.append((lo, hi, now, rng.choice(list(units))))
    for lo, hi, now, unit in cases:
        sql = f"""SELECT s.alo, s.ahi, s.p1sign, s.p1lo, s.p1hi, s.p2sign, s.p2lo, s.p2hi
        FROM (SELECT %s::timestamptz AS lo, %s::timestamptz AS hi) x,
        {split_sql("x.lo", "x.hi", unit, "%s::timestamptz", "s")}"""
        [got] = await query(database_url, sql, lo, hi, now)
        want = split(lo, hi, units[unit], now)
        expected = (want.aligned_lo, want.aligned_hi, *dataclasses.astuple(want.head))
        assert got == (*expected, *dataclasses.astuple(want.tail)), (lo, hi, now, unit)


async def test_fleet_energy_sums_are_exact_past_double_precision(database_url: str) -> None:
    """The fleet view adds energies with schema.sql's fleetgate_sum (bigint in, bigint out):
    exact where a double would round, and an error rather than a wrong total past a bigint."""
    await apply_schema(database_url)
    sql = "SELECT fleetgate_sum(x) FROM (VALUES (%s::bigint), (%s::bigint)) v (x)"
    assert await query(database_url, sql, 2**53 + 1, 2) == [(2**53 + 3,)]
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        await query(database_url, sql, 2**63 - 1, 1)
