"""The dashboard (GET /) in a real browser: Debian's Chromium, headless, driven by Selenium,
against the API on a test server and PostgreSQL with readings written through the gateway's
writer. Screenshots of each view are written to .state/screenshots/ (ignored by git)."""

from __future__ import annotations

import asyncio
import html.parser
import json
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import psycopg
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from http_api.settings import Settings as ApiSettings
from http_api.views_page import CONTENT_SECURITY_POLICY, STATIC_DIR
from tests.http_helpers import Api, iso, meter_reading, vehicle_reading, write_readings
from tests.services import PROJECT

pytest_plugins = ["tests.http_fixtures"]

SCREENSHOTS = PROJECT / ".state" / "screenshots"
WAIT_S = 10.0
NOTHING = "\N{EN DASH}"  # what the page shows for a figure it does not have (yet)
# vehicle: (its meter, its efficiency); EV-106 has no meter: no efficiency.
FLEET = {
    "EV-101": ("MTR-101", 0.70),
    "EV-102": ("MTR-102", 0.80),
    "EV-103": ("MTR-103", 0.88),
    "EV-104": ("MTR-104", 0.95),
    "EV-105": ("MTR-105", 0.90),
    "EV-106": (None, 0.0),
}
HOUR = timedelta(hours=1)
T = TypeVar("T")


@pytest.fixture
def api_settings(api_settings: ApiSettings) -> ApiSettings:
    # A 10 s fleet view: the page's refresh (never sooner than the view expires, at least 10 s)
    # comes within the test.
    return api_settings.replace(fleet_cache_s=10.0)


@pytest.fixture
def browser(chromium: WebDriver, api: Api) -> Iterator[WebDriver]:
    """The browser, left on a blank page after the test (before its API stops), so that the
    page's refreshes do not outlive the test."""
    yield chromium
    chromium.get("about:blank")


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [
        name
        for name, path in [("chromium", chromium), ("chromium-driver", driver_path)]
        if path is None
    ]
    if missing:
        pytest.fail(f"Chromium is missing: apt-get install -y {' '.join(missing)}")
    assert chromium is not None
    assert driver_path is not None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1500"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


async def in_browser(call: Callable[..., T], *args: Any) -> T:
    """Selenium blocks: run it in a thread, so that this loop goes on serving the page's API."""
    return await asyncio.to_thread(call, *args)


def wait_for(driver: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(check)
    except TimeoutException:
        raise AssertionError(f"the page did not show {what} within {WAIT_S} s") from None


def text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def loaded(driver: WebDriver) -> bool:
    freshness = text(driver, "#freshness")
    return freshness.startswith("updated") and text(driver, "#tile-online") != NOTHING


def errors_in_console(driver: WebDriver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver: WebDriver) -> list[str]:
    events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    sent = [e for e in events if e["method"] == "Network.requestWillBeSent"]
    return [e["params"]["request"]["url"] for e in sent]


def fleet_rows(driver: WebDriver) -> list[str]:
    """The vehicles of the fleet table's rows, read at once (a refresh replaces the rows)."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('#fleet-table tbody tr')]"
            ".map(row => row.dataset.vehicle)"
        )
    )


def no_horizontal_scroll(driver: WebDriver) -> bool:
    """Neither the page nor a table in it scrolls sideways."""
    return bool(
        driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth && [...document"
            ".querySelectorAll('.table-wrap')].every(t => t.scrollWidth <= t.clientWidth)"
        )
    )


def screenshot(driver: WebDriver, name: str) -> None:
    """The page's content (not the empty window below it), as .state/screenshots/NAME.png."""
    driver.find_element(By.TAG_NAME, "body").screenshot(str(SCREENSHOTS / f"{name}.png"))


def percent(ratio: float | None) -> str:
    return NOTHING if ratio is None else f"{ratio * 100:.2f} %"


async def seed_fleet(api: Api, database_url: str, now: datetime) -> None:
    """A reading a minute of each device of FLEET, charging at night and at noon, for 23 h: none
    leaves the 24 h window while the test runs, so the page's figures and the test's agree."""
    readings = []
    for minute in range(23 * 60):
        at = now - timedelta(minutes=minute, seconds=30)
        charging = at.hour < 6 or 11 <= at.hour < 14 or minute < 30
        for vehicle, (meter, efficiency) in FLEET.items():
            ac = round(0.12 + 0.01 * (minute % 7), 3) if charging else 0.0
            hot = vehicle == "EV-102" and minute < 10
            dc = round(ac * efficiency, 3) if meter else 0.05
            readings.append(vehicle_reading(vehicle, at, dc, temp=47.0 if hot else 31.0))
            if meter:
                readings.append(meter_reading(meter, at, ac))
    await write_readings(database_url, readings, per_batch=2000)
    for vehicle, (meter, _) in FLEET.items():
        if meter:
            body = {"vehicleId": vehicle, "meterId": meter, "since": iso(now - timedelta(days=2))}
            assert (await api.send("POST", "/v1/links", body))[0] == 201
    await add_alert(database_url, "EV-102", "batteryOverTemp", now - timedelta(minutes=8))
    await add_alert(database_url, "EV-101", "lowEfficiency", now - 3 * HOUR, (0.7, 0.75))
    await add_alert(database_url, "MTR-103", "voltageOutOfRange", now - HOUR, (262, 253))


async def add_alert(
    database_url: str,
    device: str,
    rule: str,
    raised_at: datetime,
    value_and_threshold: tuple[float, float] = (47.0, 45.0),
) -> None:
    kind = "meter" if device.startswith("MTR") else "vehicle"
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute(
            "INSERT INTO alert (device_kind, device_name, rule, raised_at, value, threshold,"
            " message) VALUES (%s, %s, %s, %s, %s, %s, 'stored')",
            (kind, device, rule, raised_at, *value_and_threshold),
        )


async def test_the_dashboard_shows_what_the_api_answers(
    api: Api, database_url: str, browser: WebDriver
) -> None:
    await seed_fleet(api, database_url, datetime.now(UTC))
    url = str(api.client.make_url("/"))
    browser.get_log("browser")  # each read empties its log
    browser.get_log("performance")
    await in_browser(browser.get, f"{url}#token={api.read_token}")
    await in_browser(wait_for, browser, loaded, "the fleet's tiles")

    # The token is read from the fragment, kept in sessionStorage, gone from the address bar.
    assert api.read_token not in browser.current_url
    stored = browser.execute_script(
        "return [sessionStorage.getItem('fleetgate.token'), localStorage.length, document.cookie]"
    )
    assert stored == [api.read_token, 0, ""]

    _, overview = await api.get("/v1/status/overview")
    _, fleet = await api.get("/v1/analytics/fleet")
    _, alerts = await api.get("/v1/alerts", state="raised", limit=1000)
    meters, vehicles = overview["meters"], overview["vehicles"]
    assert text(browser, "#tile-online") == str(meters["online"] + vehicles["online"]) == "11"
    assert text(browser, "#tile-offline") == str(meters["offline"] + vehicles["offline"])
    assert text(browser, "#tile-charging") == str(vehicles["charging"])
    assert text(browser, "#tile-power") == f"{overview['fleetPowerKw']:.3f} kW"
    assert text(browser, "#tile-efficiency") == percent(fleet["totals"]["efficiency"])
    assert text(browser, "#tile-alerts") == str(len(alerts["alerts"])) == "3"
    rules = browser.find_elements(By.CSS_SELECTOR, "#tile-alert-rules li")
    assert sorted(r.text for r in rules) == sorted(f"{a['rule']} 1" for a in alerts["alerts"])

    # The table: the API's page, worst first, with its figures and status colours.
    rows = browser.find_elements(By.CSS_SELECTOR, "#fleet-table tbody tr")
    expected = [
        [
            v["vehicleId"],
            percent(v["efficiency"]),
            v["efficiencyStatus"],
            f"{v['totalAc']:.3f}",
            f"{v['dcWhileLinked']:.3f}",
            percent(v["coverage"]["ac"]),
            percent(v["coverage"]["dc"]),
        ]
        for v in fleet["vehicles"]
    ]
    assert [v[0] for v in expected] == ["EV-101", "EV-102"]  # below good (0.85), worst first
    shown = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert shown == expected
    assert [row.get_attribute("class") for row in rows] == ["status-critical", "status-warning"]
    active = browser.find_elements(By.CSS_SELECTOR, "#alert-table tbody tr")
    assert [row.get_attribute("data-alert") for row in active] == [
        a["alertId"] for a in alerts["alerts"]
    ]
    # Acknowledging: a control only where the API's document offers the endpoint.
    _, document = await api.get("/openapi.json")
    acknowledges = [
        path
        for path, operations in document["paths"].items()
        if re.fullmatch(r"/v1/alerts/\{alertId\}/(ack|acknowledge)", path) and "post" in operations
    ]
    buttons = browser.find_elements(By.CSS_SELECTOR, "#alert-table button.acknowledge")
    assert len(buttons) == (len(active) if acknowledges else 0)
    await in_browser(screenshot, browser, "fleet")

    # By itself, within the fleet view's lifetime (10 s here), the page shows a new alert.
    refresh_s = int(browser.find_element(By.ID, "freshness").get_attribute("data-refresh-s"))
    assert 10 <= refresh_s <= 11  # the view's max-age minus its Age, plus a second
    await add_alert(database_url, "EV-104", "deviceOffline", datetime.now(UTC))
    await in_browser(wait_for, browser, lambda d: text(d, "#tile-alerts") == "4", "a new alert")

    # Every vehicle with data, on request.
    await in_browser(
        browser.execute_script,
        "const s = document.getElementById('fleet-below'); s.value = '10';"
        "s.dispatchEvent(new Event('change'))",
    )
    await in_browser(wait_for, browser, lambda d: len(fleet_rows(d)) == 5, "every vehicle")
    _, every = await api.get("/v1/analytics/fleet", below=10)
    assert fleet_rows(browser) == [v["vehicleId"] for v in every["vehicles"]]
    await in_browser(screenshot, browser, "fleet-every-vehicle")

    # A click on a row opens the vehicle: its status, meter, efficiency, chart and alerts.
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-vehicle=EV-101]")
    await in_browser(row.click)
    await in_browser(
        wait_for,
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#trend-chart svg circle.point"),
        "the vehicle's chart",
    )
    _, trend = await api.get("/v1/analytics/trend/EV-101")
    _, performance = await api.get("/v1/analytics/performance/EV-101")
    points = browser.find_elements(By.CSS_SELECTOR, "#trend-chart svg circle.point")
    assert len(points) == sum(hour["efficiency"] is not None for hour in trend["hours"]) >= 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "#trend-chart svg rect.bar-ac")) >= 10
    assert text(browser, "#vehicle-title") == "EV-101"
    assert text(browser, "#vehicle-online") == "online, charging"
    assert text(browser, "#vehicle-meter") == "MTR-101"
    assert text(browser, "#vehicle-efficiency") == (
        f"{percent(performance['efficiency'])} {performance['efficiencyStatus']}"
    )
    _, its_alerts = await api.get("/v1/alerts", deviceId="EV-101", limit=50)
    vehicle_alerts = browser.find_elements(By.CSS_SELECTOR, "#vehicle-alert-table tbody tr")
    assert (
        [row.get_attribute("data-alert") for row in vehicle_alerts]
        == [a["alertId"] for a in its_alerts["alerts"]]
        != []
    )
    assert browser.execute_script("return location.hash") == "#vehicle=EV-101"
    await in_browser(screenshot, browser, "vehicle")

    assert errors_in_console(browser) == []
    assert not [u for u in requested_urls(browser) if api.read_token in u], "token sent in a URL"

    # The API out of reach: the page says so, and that what it shows is stale.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    try:
        await in_browser(lambda: browser.find_element(By.ID, "refresh").click())
        notice = await in_browser(wait_for, browser, lambda d: text(d, "#notice"), "a notice")
        assert notice.startswith("The API is unreachable")
        assert text(browser, "#freshness").startswith("stale: updated")
        await in_browser(screenshot, browser, "unreachable")
    finally:
        browser.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )


async def test_a_wrong_token_is_told_clearly(api: Api, browser: WebDriver) -> None:
    url = str(api.client.make_url("/"))
    browser.get_log("browser")
    await in_browser(browser.get, f"{url}#token=fgt_not-a-token")
    message = await in_browser(wait_for, browser, lambda d: text(d, "#login-message"), "a reason")
    assert message.startswith("The API refused this token: it is unknown or has been revoked.")
    assert browser.find_element(By.ID, "login").is_displayed()
    assert not browser.find_element(By.ID, "fleet-view").is_displayed()
    assert "fgt_not-a-token" not in browser.current_url
    assert browser.execute_script("return sessionStorage.length") == 0
    # The API's 401s are the only errors the browser logs.
    assert [e for e in errors_in_console(browser) if "401" not in e] == []
    await in_browser(screenshot, browser, "login")

    # Signing in with the login field instead.
    browser.find_element(By.ID, "token-input").send_keys(api.read_token)
    await in_browser(lambda: browser.find_element(By.ID, "sign-in").click())
    await in_browser(wait_for, browser, loaded, "the fleet after signing in")
    assert api.read_token not in browser.current_url


async def test_a_phone_sized_window_needs_no_horizontal_scroll(
    api: Api, database_url: str, browser: WebDriver
) -> None:
    await seed_fleet(api, database_url, datetime.now(UTC))
    url = str(api.client.make_url("/"))
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        await in_browser(browser.get, f"{url}#token={api.read_token}")
        await in_browser(wait_for, browser, loaded, "the fleet on a phone")
        # With their acknowledge buttons, where the API offers acknowledging (it does).
        buttons = browser.find_elements(By.CSS_SELECTOR, "#alert-table button.acknowledge")
        assert [button.is_displayed() for button in buttons] == [True] * 3
        assert no_horizontal_scroll(browser)
        await in_browser(screenshot, browser, "phone-fleet")
        await in_browser(lambda: browser.find_element(By.LINK_TEXT, "EV-101").click())
        await in_browser(
            wait_for,
            browser,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#trend-chart svg circle.point"),
            "the chart on a phone",
        )
        assert no_horizontal_scroll(browser)
        await in_browser(screenshot, browser, "phone-vehicle")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def alert_rows(driver: WebDriver) -> dict[str, str]:
    """The fleet's alerts table, read at once: each alert's acknowledgement cell, "" for none, the
    button's text where there is one."""
    return dict(
        driver.execute_script(
            "return [...document.querySelectorAll('#alert-table tbody tr')]"
            ".map(row => [row.dataset.alert, row.querySelector('td.ack')?.textContent || ''])"
        )
    )


async def test_an_alert_is_acknowledged_with_a_write_token_only(
    api: Api, database_url: str, browser: WebDriver
) -> None:
    now = datetime.now(UTC)
    await add_alert(database_url, "EV-102", "batteryOverTemp", now - timedelta(minutes=8))
    await add_alert(database_url, "MTR-103", "voltageOutOfRange", now - HOUR, (262, 253))
    _, raised = await api.get("/v1/alerts", state="raised")
    hot, voltage = (alert["alertId"] for alert in raised["alerts"])
    url = str(api.client.make_url("/"))
    browser.get_log("browser")

    # A write token: the button acknowledges the alert, and its row then says so.
    await in_browser(browser.get, f"{url}#token={api.write_token}")
    await in_browser(wait_for, browser, loaded, "the fleet")
    assert alert_rows(browser) == {hot: "Acknowledge", voltage: "Acknowledge"}
    button = browser.find_element(By.CSS_SELECTOR, f"tr[data-alert='{hot}'] button.acknowledge")
    await in_browser(button.click)
    await in_browser(
        wait_for,
        browser,
        lambda d: alert_rows(d)[hot].startswith("acknowledged "),
        "the alert acknowledged",
    )
    assert alert_rows(browser)[voltage] == "Acknowledge"
    assert not browser.find_element(By.ID, "notice").is_displayed()
    _, acknowledged = await api.get("/v1/alerts", acknowledged="true")
    [alert] = acknowledged["alerts"]
    assert (alert["alertId"], alert["state"]) == (hot, "raised")  # acknowledged, still raised
    assert alert["acknowledgedBy"].startswith("ops (token ")  # the write token's name
    assert errors_in_console(browser) == []
    await in_browser(screenshot, browser, "acknowledged")

    # A read token: the API refuses it (403), the buttons go and a notice says why.
    await in_browser(browser.get, "about:blank")
    await in_browser(browser.get, f"{url}#token={api.read_token}")
    await in_browser(wait_for, browser, loaded, "the fleet with a read token")
    rows = alert_rows(browser)  # the page cannot know the token's scope before it tries
    assert rows[hot].startswith("acknowledged ")
    assert rows[voltage] == "Acknowledge"
    button = browser.find_element(By.CSS_SELECTOR, f"tr[data-alert='{voltage}'] button")
    await in_browser(button.click)
    await in_browser(wait_for, browser, lambda d: alert_rows(d)[voltage] == "", "the buttons gone")
    assert alert_rows(browser)[hot].startswith("acknowledged ")
    notice = await in_browser(wait_for, browser, lambda d: text(d, "#notice"), "a notice")
    assert notice == "Acknowledging an alert needs a token of scope write."
    assert browser.find_elements(By.CSS_SELECTOR, "button.acknowledge") == []
    _, still = await api.get("/v1/alerts", acknowledged="false")
    assert [a["alertId"] for a in still["alerts"]] == [voltage]
    # The API's 403 is the only error the browser logs.
    assert [e for e in errors_in_console(browser) if "403" not in e] == []
    await in_browser(screenshot, browser, "acknowledge-refused")


async def test_the_fleet_table_pages(api: Api, database_url: str, browser: WebDriver) -> None:
    now = datetime.now(UTC) - timedelta(minutes=5)
    names = [f"EV-P{number:03}" for number in range(101)]  # one more than the API's page
    await write_readings(
        database_url,
        [
            reading
            for name in names
            for reading in (
                vehicle_reading(name, now, 0.5),
                meter_reading(name.replace("EV", "MTR"), now, 1.0),
            )
        ],
    )
    for name in names:
        link = {"vehicleId": name, "meterId": name.replace("EV", "MTR"), "since": iso(now)}
        assert (await api.send("POST", "/v1/links", link))[0] == 201
    await in_browser(browser.get, f"{api.client.make_url('/')}#token={api.read_token}")
    await in_browser(wait_for, browser, loaded, "the fleet")

    assert fleet_rows(browser) == names[:100]
    await in_browser(lambda: browser.find_element(By.ID, "page-next").click())
    await in_browser(wait_for, browser, lambda d: fleet_rows(d) == names[100:], "page 2")
    assert text(browser, "#page-number") == "page 2"
    assert not browser.find_element(By.ID, "page-next").is_enabled()
    await in_browser(lambda: browser.find_element(By.ID, "page-previous").click())
    await in_browser(wait_for, browser, lambda d: len(fleet_rows(d)) == 100, "page 1 again")


class _Markup(html.parser.HTMLParser):
    """What of index.html a Content-Security-Policy without 'unsafe-inline' would refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or "style" in names or any(n.startswith("on") for n in names):
            self.refused.append(f"<{tag} {sorted(names)}>")
        if tag == "script" and "src" not in names:
            self.refused.append("<script> without src")
        self._in_script = tag == "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.refused.append("inline script")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


async def test_the_page_is_served_without_a_token_with_strict_headers(api: Api) -> None:
    markup = _Markup()
    markup.feed((STATIC_DIR / "index.html").read_text())
    assert markup.refused == []
    for script in STATIC_DIR.glob("*.js"):  # text as text nodes, never as markup
        assert "innerHTML" not in script.read_text(), script.name
    # A plain client: the page is not an API operation, so not in the OpenAPI document.
    async with aiohttp.ClientSession() as session:

        async def get(path: str, **headers: str) -> tuple[aiohttp.ClientResponse, bytes]:
            async with session.get(api.client.make_url(path), headers=headers) as response:
                return response, await response.read()

        for path, content_type in [
            ("/", "text/html"),
            ("/static/app.js", "text/javascript"),
            ("/static/chart.js", "text/javascript"),
            ("/static/style.css", "text/css"),
        ]:
            response, body = await get(path)
            assert (response.status, response.content_type) == (200, content_type), path
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"
            assert body
            again, _ = await get(path, **{"If-None-Match": response.headers["ETag"]})
            assert again.status == 304
        # Only the page's own files; a path no route takes asks for a token, as any other.
        for path, status in [
            ("/static/nothing.js", 404),
            ("/static/..%2Fviews_page.py", 404),
            ("/static/", 401),
            ("/index.html", 401),
        ]:
            response, _ = await get(path)
            assert response.status == status, path
        # The exemption is the page's GETs only: the API still asks for a token.
        response, _ = await get("/v1/status/overview")
        assert response.status == 401
        async with session.post(api.client.make_url("/")) as response:
            assert response.status == 401
