"""HTTP conventions a browser dashboard and an operator rely on: CORS, the Bearer challenge on a
401, 405 before the scope check, unknown query parameters refused by name, numbers rounded to
what they can mean."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from http_api.settings import Settings as ApiSettings
from tests.http_helpers import Api, iso, meter_reading, serving, vehicle_reading, write_readings

pytest_plugins = ["tests.http_fixtures"]

DASHBOARD = "https://dashboard.example.com"
PREFLIGHT = {
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization",
}


@pytest.fixture
async def cors_api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async with serving(api_settings.replace(cors_origins=frozenset({DASHBOARD}))) as running:
        yield running


async def test_a_preflight_is_answered_without_a_token_for_an_allowed_origin(
    cors_api: Api,
) -> None:
    response = await cors_api.client.options(
        "/v1/analytics/fleet", headers={"Origin": DASHBOARD, **PREFLIGHT}
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert response.headers["Access-Control-Allow-Methods"] == "GET"
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "content-type"} <= allowed
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in response.headers.getall("Vary")
    response = await cors_api.client.options(
        "/v1/links", headers={"Origin": DASHBOARD, **PREFLIGHT}
    )
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST"


async def test_a_disallowed_origin_gets_no_cors_headers(cors_api: Api) -> None:
    for origin in ("https://evil.example.com", "http://dashboard.example.com"):
        response = await cors_api.client.options(
            "/v1/analytics/fleet", headers={"Origin": origin, **PREFLIGHT}
        )
        assert response.status == 204
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
        response = await cors_api.client.get(
            "/v1/status/overview",
            headers={"Origin": origin, **cors_api.headers(cors_api.read_token)},
        )
        assert response.status == 200
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
        assert "Origin" in response.headers.getall("Vary")


async def test_actual_responses_carry_the_allowed_origin_also_on_errors(cors_api: Api) -> None:
    headers = {"Origin": DASHBOARD, **cors_api.headers(cors_api.read_token)}
    response = await cors_api.client.get("/v1/status/overview", headers=headers)
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "Origin" in response.headers.getall("Vary")
    exposed = response.headers["Access-Control-Expose-Headers"]
    assert "X-Request-Id" in exposed
    assert "Retry-After" in exposed
    # A dashboard must be able to read why it was refused.
    response = await cors_api.client.get("/v1/status/overview", headers={"Origin": DASHBOARD})
    assert response.status == 401
    assert response.headers["Access-Control-Allow-Origin"] == DASHBOARD


async def test_without_cors_origins_no_origin_is_allowed(api: Api) -> None:
    assert api.settings.cors_origins == frozenset()
    response = await api.client.options(
        "/v1/analytics/fleet", headers={"Origin": DASHBOARD, **PREFLIGHT}
    )
    assert response.status == 204
    assert "Access-Control-Allow-Origin" not in response.headers
    response = await api.client.get(
        "/v1/links", headers={"Origin": DASHBOARD, **api.headers(api.read_token)}
    )
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_origins_are_checked_when_read() -> None:
    settings = ApiSettings.from_env({"CORS_ORIGINS": "https://a.example, http://localhost:3000"})
    assert settings.cors_origins == frozenset({"https://a.example", "http://localhost:3000"})
    assert ApiSettings.from_env({"CORS_ORIGINS": "*"}).cors_origins == frozenset({"*"})
    for bad in ("https://a.example/", "a.example", "https://a.example/path"):
        with pytest.raises(ValueError, match="CORS_ORIGINS"):
            ApiSettings.from_env({"CORS_ORIGINS": bad})


async def test_every_401_carries_a_bearer_challenge(api: Api) -> None:
    response = await api.client.get("/v1/links")
    assert response.status == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert "error=" not in challenge  # no token was given: no error code (RFC 6750)
    response = await api.client.get("/v1/links", headers={"Authorization": "Basic abc"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    response = await api.client.get("/v1/links", headers=api.headers("fgt_not-a-real-token"))
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    response = await api.client.post("/v1/links", headers=api.headers(api.read_token))
    assert response.status == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="write"' in response.headers["WWW-Authenticate"]


async def test_a_wrong_method_is_a_405_before_the_scope_check(api: Api) -> None:
    status, body = await api.send("POST", "/v1/status/overview", {}, token="read")
    assert (status, body["error"]["code"]) == (405, "methodNotAllowed")
    response = await api.client.delete("/v1/analytics/fleet", headers=api.headers(api.read_token))
    assert response.status == 405
    assert response.headers["Allow"] == "GET"
    response = await api.client.delete("/v1/nowhere", headers=api.headers(api.read_token))
    assert response.status == 404  # not "needs scope write" either
    response = await api.client.post("/v1/status/overview")
    assert response.status == 401  # the token is still asked for first


async def test_an_unknown_query_parameter_is_a_400_naming_it(api: Api) -> None:
    # A typo of "from" would otherwise answer silently for the default window.
    status, body = await api.get("/v1/analytics/fleet", form=iso(datetime.now(UTC)))
    assert status == 400
    assert body["error"]["code"] == "unknownParameter"
    assert body["error"]["parameter"] == "form"
    assert "from" in body["error"]["message"]
    status, body = await api.get("/v1/status/overview", verbose="1")
    assert (status, body["error"]["parameter"]) == (400, "verbose")
    assert "no query parameters" in body["error"]["message"]
    response = await api.client.get(
        "/v1/alerts?limit=5&limit=6", headers=api.headers(api.read_token)
    )
    body = await response.json()
    assert (response.status, body["error"]["parameter"]) == (400, "limit")
    assert (await api.get("/v1/alerts", limit="5", state="active"))[0] == 200


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


async def test_numbers_are_rounded_to_what_they_mean(api: Api, database_url: str) -> None:
    """Battery temperatures are float4: 30.1 is stored as 30.100000381..., and their average
    over a window is float noise; energy ratios are long fractions. None of it reaches a
    client: temperatures to 0.1 °C, kWh to 1 Wh, kW to 1 W, ratios to 4 decimals."""
    now = datetime.now(UTC).replace(microsecond=0)
    readings: list[dict[str, Any]] = []
    for minutes, temp in ((50, 30.1), (40, 30.2), (30, 30.3), (1, 31.7)):
        at = now - timedelta(minutes=minutes)
        readings.append(vehicle_reading("EV-r", at, 1.1, temp=temp, soc=55.55))
        readings.append(meter_reading("M-r", at, 1.234567, voltage=229.91))
    await write_readings(database_url, readings)
    body = {"vehicleId": "EV-r", "meterId": "M-r", "since": iso(now - timedelta(hours=2))}
    assert (await api.send("POST", "/v1/links", body))[0] == 201

    _, fleet = await api.get("/v1/analytics/fleet", below="10")
    [vehicle] = fleet["vehicles"]
    assert vehicle["vehicleId"] == "EV-r"
    assert vehicle["avgBatteryTemp"] == round((30.1 + 30.2 + 30.3 + 31.7) / 4, 1)
    assert (vehicle["minBatteryTemp"], vehicle["maxBatteryTemp"]) == (30.1, 31.7)
    assert vehicle["totalAc"] == 4.938  # 4 x 1.234567 kWh, to the Wh
    assert vehicle["efficiency"] == round(4.4 / 4.938268, 4)
    assert fleet["totals"]["efficiency"] == vehicle["efficiency"]
    _, overview = await api.get("/v1/status/overview")
    assert overview["fleetPowerKw"] == 74.074  # 1.234567 kWh in 60 s
    _, status = await api.get("/v1/status/vehicle/EV-r")
    assert (status["batteryTemp"], status["soc"]) == (31.7, 55.5)
    _, meter = await api.get("/v1/status/meter/M-r")
    assert (meter["voltage"], meter["consumedAc"]) == (229.9, 1.235)
    _, performance = await api.get("/v1/analytics/performance/EV-r")
    for key, most in (("avgBatteryTemp", 1), ("totalAc", 3), ("efficiency", 4)):
        assert _decimals(performance[key]) <= most, (key, performance[key])
    for ratio in performance["coverage"].values():
        assert _decimals(ratio) <= 4
    # No number anywhere in these answers has float noise (more than 4 decimals).
    for answer in (fleet, overview, status, meter, performance):
        noisy = [number for number in _numbers(answer) if _decimals(number) > 4]
        assert not noisy, noisy


def _numbers(node: Any) -> list[float]:
    if isinstance(node, dict):
        return [n for value in node.values() for n in _numbers(value)]
    if isinstance(node, list):
        return [n for value in node for n in _numbers(value)]
    return [node] if isinstance(node, float) else []
