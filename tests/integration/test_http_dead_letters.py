"""GET /v1/dead-letters: what could not be stored, filtered, paged, and shown safely whatever
the payload (binary, huge, hostile), through the real app and database."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from gateway.database import apply_schema
from http_api.params import encode_cursor
from http_api.views_dead_letters import preview
from tests.http_helpers import Api, iso

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)
BINARY = bytes(range(256)) * 4  # every byte value: NUL, controls, invalid UTF-8
LARGE = b'{"voltage": "' + b"9" * 200_000 + b'"}'  # kept whole: under MAX_PAYLOAD_BYTES


async def seed(database_url: str, letters: list[dict[str, Any]]) -> list[str]:
    """Insert dead letters as the gateway stores them; their ids, as the API spells them."""
    await apply_schema(database_url)
    ids = []
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for letter in letters:
            row = {
                "received_at": NOW - timedelta(minutes=10),
                "topic": f"fleet/{letter.get('device_kind')}/{letter.get('device_name')}",
                "device_kind": None,
                "device_name": None,
                "reason": "malformed JSON: expected value",
                "payload": b"{oops",
            } | letter
            row.setdefault("payload_bytes", len(row["payload"]))
            cur = await conn.execute(
                """INSERT INTO dead_letter (received_at, topic, device_kind, device_name, reason,
                                            payload, payload_bytes)
                   VALUES (%(received_at)s, %(topic)s, %(device_kind)s, %(device_name)s,
                           %(reason)s, %(payload)s, %(payload_bytes)s)
                   RETURNING dead_letter_id""",
                row,
            )
            found = await cur.fetchone()
            assert found is not None
            ids.append(str(found[0]))
    return ids


def ids_of(body: dict[str, Any]) -> list[str]:
    return [letter["deadLetterId"] for letter in body["deadLetters"]]


async def test_payloads_are_shown_safely_whatever_they_hold(api: Api, database_url: str) -> None:
    binary, large, oversized, lines = await seed(
        database_url,
        [
            {"device_kind": "meter", "device_name": "M-1", "payload": BINARY},
            {"device_kind": "meter", "device_name": "M-1", "payload": LARGE},
            {
                # over MAX_PAYLOAD_BYTES: its first KiB kept, its size noted
                "device_kind": "vehicle",
                "device_name": "EV-1",
                "reason": "payload of 1048576 bytes exceeds MAX_PAYLOAD_BYTES",
                "payload": b"[" * 1024,
                "payload_bytes": 1 << 20,
            },
            {
                "topic": "fleet/odd/\u202etopic",
                "reason": "unknown topic",
                "payload": 'line one\nline "two"\t\u2028end \U0001f600'.encode(),
            },
        ],
    )
    response = await api.client.get("/v1/dead-letters", headers=api.headers(api.read_token))
    raw = await response.read()
    assert response.status == 200
    assert len(raw) < 20_000  # 200 kB of payload and a 1 MiB message: about 1 KiB shown each
    body = json.loads(raw)
    letters = {letter["deadLetterId"]: letter for letter in body["deadLetters"]}
    assert set(letters) == {binary, large, oversized, lines}

    shown = letters[binary]
    assert base64.b64decode(shown["payloadBase64"]) == BINARY[:1024]
    assert (shown["payloadBytes"], shown["payloadTruncated"]) == (1024, False)
    assert shown["payloadPreview"].startswith("\\x00\\x01\\x02")
    assert shown["payloadPreview"].isprintable()
    assert (shown["deviceKind"], shown["deviceId"]) == ("meter", "M-1")

    shown = letters[large]
    assert base64.b64decode(shown["payloadBase64"]) == LARGE[:1024]
    assert (shown["payloadBytes"], shown["payloadTruncated"]) == (len(LARGE), True)
    assert shown["payloadPreview"] == LARGE[:160].decode()

    shown = letters[oversized]
    assert (shown["payloadBytes"], shown["payloadTruncated"]) == (1 << 20, True)
    assert shown["reason"].startswith("payload of 1048576 bytes")

    shown = letters[lines]
    assert shown["payloadPreview"] == 'line one\\x0aline "two"\\x09\\u2028end \U0001f600'
    assert (shown["deviceKind"], shown["deviceId"]) == (None, None)
    assert shown["topic"] == "fleet/odd/\u202etopic"  # JSON escapes what it must


def test_a_preview_escapes_what_cannot_be_printed() -> None:
    assert preview(b"ok") == "ok"
    assert preview(b"\xff\xfe{") == "\\xff\\xfe{"
    assert preview("\x7f\u0085\u200b".encode()) == "\\x7f\\x85\\u200b"
    assert len(preview(b"x" * 10_000)) == 160


async def test_filters_window_pages_and_counts(api: Api, database_url: str) -> None:
    minutes = [timedelta(minutes=m) for m in range(8)]
    at = NOW - timedelta(hours=1)
    letters = [
        {"device_kind": "meter", "device_name": "M-1", "received_at": at - minutes[1]},
        {
            "device_kind": "meter",
            "device_name": "M-1",
            "received_at": at - minutes[2],
            "reason": "invalid reading: value 100% - at $.soc_x",
        },
        {"device_kind": "vehicle", "device_name": "M-1", "received_at": at - minutes[3]},
        {"device_kind": "vehicle", "device_name": "EV-1", "received_at": at - minutes[4]},
        {"reason": "unknown topic fleet/x", "received_at": at - minutes[4]},  # same time
        {"device_kind": "meter", "device_name": "M-2", "received_at": NOW - timedelta(days=2)},
    ]
    m1, m1_invalid, v_m1, ev1, no_device, old = await seed(database_url, letters)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for kind, name, count, minute_ago in (
            ("meter", "M-1", 250, 30),
            ("meter", "M-1", 40, 31),
            ("vehicle", "EV-1", 7, 30),
            ("meter", "M-1", 999, 2 * 24 * 60),  # outside the default window
        ):
            window_start = (NOW - timedelta(minutes=minute_ago)).replace(second=0)
            await conn.execute(
                """INSERT INTO dead_letter_overflow VALUES
                   (%s, %s, %s, %s, %s, 'malformed JSON: x', 'x', 1)""",
                (window_start, kind, name, count, window_start + timedelta(seconds=30)),
            )

    async def listed(**query: str) -> tuple[list[str], dict[str, int]]:
        status, body = await api.get("/v1/dead-letters", **query)
        assert status == 200, body
        return ids_of(body), body["counted"]

    everything = [m1, m1_invalid, v_m1, no_device, ev1]  # same time: the higher id first
    assert await listed() == (everything, {"deadLetters": 297, "minutes": 3})
    assert (await listed(deviceKind="meter"))[0] == [m1, m1_invalid]
    assert await listed(deviceKind="meter", deviceId="M-1") == (
        [m1, m1_invalid],
        {"deadLetters": 290, "minutes": 2},
    )
    assert (await listed(deviceId="M-1"))[0] == [m1, m1_invalid, v_m1]
    assert await listed(deviceId="EV-1") == ([ev1], {"deadLetters": 7, "minutes": 1})
    assert (await listed(reason="MALFORMED json"))[0] == [m1, v_m1, ev1]
    assert (await listed(reason="100%"))[0] == [m1_invalid]  # % and _ are literal
    assert (await listed(reason="soc_x"))[0] == [m1_invalid]
    assert (await listed(reason="s_c"))[0] == []
    assert (await listed(reason="unknown topic"))[0] == [no_device]
    window = {"from": iso(NOW - timedelta(days=3)), "to": iso(NOW - timedelta(days=1))}
    assert await listed(**window) == ([old], {"deadLetters": 999, "minutes": 1})

    seen: list[str] = []
    cursor = None
    while True:
        status, body = await api.get(
            "/v1/dead-letters", limit="2", **({"cursor": cursor} if cursor else {})
        )
        assert status == 200, body
        seen += ids_of(body)
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == everything


async def test_bad_parameters_are_named(api: Api) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        ({"deviceKind": "car"}, "deviceKind"),
        ({"deviceId": "bad id"}, "deviceId"),
        ({"reason": ""}, "reason"),
        ({"reason": "x" * 201}, "reason"),
        ({"reason": "a\x01b"}, "reason"),
        ({"from": iso(NOW - timedelta(days=40))}, "to"),
        ({"from": "yesterday"}, "from"),
        ({"limit": "0"}, "limit"),
        ({"cursor": encode_cursor("M-1")}, "cursor"),
        ({"cursor": encode_cursor('["2026-02-09T08:00:00", 1]')}, "cursor"),
    ]
    for query, parameter in cases:
        status, body = await api.get("/v1/dead-letters", **query)
        assert (status, body["error"]["parameter"]) == (400, parameter), (query, body)
    status, _ = await api.get("/v1/dead-letters", token=None)
    assert status == 401
