"""A device's raw readings over a window (GET /v1/readings/...): JSON pages, CSV export,
through the real app and database, with readings written by the gateway's own writer."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import psycopg
import pytest

from http_api import views_readings
from tests.http_helpers import Api, iso, meter_reading, vehicle_reading, write_readings

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
START = NOW - timedelta(hours=3)


async def _seed(database_url: str) -> None:
    await write_readings(
        database_url,
        [
            *(
                meter_reading("M-1", START + timedelta(minutes=n), 0.1234 + n / 1000, 230.04 + n)
                for n in range(10)
            ),
            vehicle_reading("EV-1", START, 0.5, temp=30.06, soc=61.26),
            vehicle_reading("EV-1", START + timedelta(minutes=1), 0.25, temp=31, soc=62),
            meter_reading("M-2", START, 9.0),  # another meter's
            meter_reading("M-1", START - timedelta(hours=30), 1.0),  # before the window
        ],
    )


def _window(**more: str) -> dict[str, str]:
    return {"from": iso(START), "to": iso(NOW), **more}


async def test_a_meters_readings_oldest_first_in_pages(api: Api, database_url: str) -> None:
    await _seed(database_url)
    status, body = await api.get("/v1/readings/meter/M-1", **_window())
    assert status == 200, body
    assert body["meterId"] == "M-1"
    assert body["window"] == {"from": iso(START), "to": iso(NOW)}
    assert body["nextCursor"] is None
    assert len(body["readings"]) == 10
    assert body["readings"][0] == {"takenAt": iso(START), "consumedAc": 0.123, "voltage": 230.0}
    assert body["readings"][9]["takenAt"] == iso(START + timedelta(minutes=9))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = _window(limit="4") | ({"cursor": cursor} if cursor else {})
        status, page = await api.get("/v1/readings/meter/M-1", **query)
        assert status == 200, page
        seen += [reading["takenAt"] for reading in page["readings"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert (seen, pages) == ([r["takenAt"] for r in body["readings"]], 3)
    # from inclusive, to exclusive; by default the last 24 hours
    _, inner = await api.get(
        "/v1/readings/meter/M-1",
        **{"from": iso(START + timedelta(minutes=2)), "to": iso(START + timedelta(minutes=4))},
    )
    assert [r["takenAt"] for r in inner["readings"]] == [
        iso(START + timedelta(minutes=2)),
        iso(START + timedelta(minutes=3)),
    ]
    _, default = await api.get("/v1/readings/meter/M-1")
    assert len(default["readings"]) == 10


async def test_a_vehicles_readings(api: Api, database_url: str) -> None:
    await _seed(database_url)
    status, body = await api.get("/v1/readings/vehicle/EV-1", **_window())
    assert status == 200, body
    assert body["vehicleId"] == "EV-1"
    assert body["readings"] == [
        {"takenAt": iso(START), "soc": 61.3, "deliveredDc": 0.5, "batteryTemp": 30.1},
        {
            "takenAt": iso(START + timedelta(minutes=1)),
            "soc": 62.0,
            "deliveredDc": 0.25,
            "batteryTemp": 31.0,
        },
    ]


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def _csv(api: Api, path: str, headers: dict[str, str] | None = None, **query: Any) -> Any:
    response = await api.client.get(
        path, params=query, headers={**api.headers(api.read_token), **(headers or {})}
    )
    return response.status, response.headers, await response.text()


async def test_csv_export_has_a_header_row_and_the_same_values(api: Api, database_url: str) -> None:
    await _seed(database_url)
    _, json_body = await api.get("/v1/readings/meter/M-1", **_window())
    status, headers, text = await _csv(api, "/v1/readings/meter/M-1", **_window(format="csv"))
    assert status == 200
    assert headers["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in headers["Content-Disposition"]
    assert "Link" not in headers  # the whole window fit
    assert text.endswith("\r\n")
    header, *rows = _rows(text)
    assert header == ["takenAt", "consumedAc", "voltage"]
    assert rows == [
        [r["takenAt"], str(r["consumedAc"]), str(r["voltage"])] for r in json_body["readings"]
    ]
    # Accept: text/csv chooses CSV too; ?format=json wins over it.
    status, headers, by_accept = await _csv(
        api, "/v1/readings/meter/M-1", headers={"Accept": "text/csv"}, **_window()
    )
    assert (status, by_accept) == (200, text)
    status, headers, _ = await _csv(
        api, "/v1/readings/meter/M-1", headers={"Accept": "text/csv"}, **_window(format="json")
    )
    assert headers["Content-Type"].startswith("application/json")
    status, _, vehicle_text = await _csv(api, "/v1/readings/vehicle/EV-1", **_window(format="csv"))
    assert _rows(vehicle_text)[0] == ["takenAt", "soc", "deliveredDc", "batteryTemp"]
    assert len(_rows(vehicle_text)) == 3
    # A device without readings in the window: the header row alone.
    status, _, empty = await _csv(
        api, "/v1/readings/meter/M-2", format="csv", **{"from": iso(NOW - timedelta(hours=1))}
    )
    assert (status, _rows(empty)) == (200, [["takenAt", "consumedAc", "voltage"]])


async def test_a_long_csv_is_streamed_in_chunks_and_cut_with_a_link_to_the_rest(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _seed(database_url)
    monkeypatch.setattr(views_readings, "_CSV_CHUNK", 3)  # 10 readings: 4 chunks
    status, headers, whole = await _csv(api, "/v1/readings/meter/M-1", **_window(format="csv"))
    assert status == 200
    assert len(_rows(whole)) == 11
    status, headers, first = await _csv(
        api, "/v1/readings/meter/M-1", **_window(format="csv", limit="4")
    )
    assert len(_rows(first)) == 5  # the header and 4 readings
    link = headers["Link"]
    assert link.startswith("</v1/readings/meter/M-1?")
    assert link.endswith('>; rel="next"')
    following = link[1 : link.index(">")]
    response = await api.client.get(following, headers=api.headers(api.read_token))
    rest = await response.text()
    assert "Link" in response.headers  # 4 more, and 2 after them
    assert _rows(first)[1:] + _rows(rest)[1:] == _rows(whole)[1:9]


async def test_unknown_devices_and_bad_parameters(api: Api, database_url: str) -> None:
    await _seed(database_url)
    status, body = await api.get("/v1/readings/meter/M-404")
    assert (status, body["error"]["code"], body["error"]["parameter"]) == (
        404,
        "notFound",
        "meterId",
    )
    status, body = await api.get("/v1/readings/vehicle/M-1")  # a meter is not a vehicle
    assert (status, body["error"]["parameter"]) == (404, "vehicleId")
    cases: list[tuple[dict[str, str], str]] = [
        ({"from": iso(NOW - timedelta(days=40))}, "to"),  # longer than MAX_WINDOW_DAYS
        ({"from": iso(NOW + timedelta(hours=1))}, "from"),
        ({"format": "xml"}, "format"),
        ({"limit": "1001"}, "limit"),  # JSON pages hold at most 1000
        ({"limit": "100001", "format": "csv"}, "limit"),
        ({"cursor": "%%%"}, "cursor"),
        ({"cursor": "bm90LWEtdGltZQ"}, "cursor"),  # base64 of 'not-a-time'
    ]
    for query, parameter in cases:
        status, body = await api.get("/v1/readings/meter/M-1", **query)
        assert (status, body["error"]["parameter"]) == (400, parameter), query
    status, _headers, _ = await _csv(api, "/v1/readings/meter/M-1", format="csv", limit="5000")
    assert status == 200  # a CSV page may be longer than a JSON one
    status, body = await api.get("/v1/readings/meter/bad%20id")
    assert (status, body["error"]["parameter"]) == (400, "meterId")


async def test_a_csv_cut_by_a_database_failure_is_never_a_whole_looking_file(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _seed(database_url)
    monkeypatch.setattr(views_readings, "_CSV_CHUNK", 3)
    chunks = 0
    real = views_readings.readings

    async def failing(*args: Any) -> Any:
        nonlocal chunks
        chunks += 1
        if chunks == 2:
            raise psycopg.OperationalError("the database went away")
        return await real(*args)

    monkeypatch.setattr(views_readings, "readings", failing)
    # The status and the first chunk went out; then the connection is dropped, mid-answer.
    # (The contract client reads the whole answer before it returns.)
    with pytest.raises(aiohttp.ClientPayloadError, match="not completed"):
        await api.client.get(
            "/v1/readings/meter/M-1",
            params=_window(format="csv"),
            headers=api.headers(api.read_token),
        )
