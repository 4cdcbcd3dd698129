"""Helpers of the HTTP API tests: the app on a test server, a client that carries tokens and
checks every JSON answer against the OpenAPI document, and readings written through the
gateway's own BatchWriter (so history and rollups are the real thing)."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jsonschema
import msgspec
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from aiohttp.typedefs import StrOrURL

from gateway.batch import Batch, Received
from gateway.database import Partitions, apply_schema, open_pool
from gateway.readings import Limits, decode_message
from gateway.writer import BatchWriter
from http_api.app import create_app
from http_api.openapi import document
from http_api.settings import Settings as ApiSettings
from http_api.tokens import create_token

# Seeding may go far into the past; the writer trusts what decode_message let through.
_SEED_LIMITS = Limits(
    max_payload_bytes=1 << 20, max_future_skew=timedelta(days=1), max_age=timedelta(days=3650)
)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def meter_reading(name: str, at: datetime, kwh: float, voltage: float = 230.0) -> dict[str, Any]:
    return {"meterId": name, "kwhConsumedAc": kwh, "voltage": voltage, "timestamp": iso(at)}


def vehicle_reading(
    name: str, at: datetime, kwh: float, temp: float = 30.0, soc: float = 50.0
) -> dict[str, Any]:
    return {
        "vehicleId": name,
        "soc": soc,
        "kwhDeliveredDc": kwh,
        "batteryTemp": temp,
        "timestamp": iso(at),
    }


async def write_readings(
    database_url: str, readings: Sequence[dict[str, Any]], per_batch: int = 500
) -> None:
    """Commit readings as the gateway would, in batches of one message per reading."""
    await apply_schema(database_url)
    async with open_pool(database_url, 1, "seed") as pool:
        writer = BatchWriter(
            pool, Partitions(pool), 0.5, lambda batch, result: None, open_enrolment=True
        )
        now = datetime.now(UTC)
        for start in range(0, len(readings), per_batch):
            batch = Batch()
            for reading in readings[start : start + per_batch]:
                kind = "meter" if "meterId" in reading else "vehicle"
                topic = f"fleet/{kind}/{reading[kind + 'Id']}"
                payload = json.dumps(reading).encode()
                decoded = decode_message(topic, payload, now, _SEED_LIMITS)
                assert not decoded.rejects, decoded.rejects
                batch.add(Received(topic, payload, now, time.monotonic(), 0, 1, 0, decoded))
            await writer.write(batch)


# An RFC 3339 time with its offset, as every time the API writes.
_RFC3339: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(
    lambda value: not isinstance(value, str) or bool(_RFC3339.fullmatch(value))
)
# What aiohttp answers before any operation is chosen (the token is asked for first).
_UNROUTED_STATUSES: Final = frozenset({401, 404, 405})


class UndocumentedResponseError(AssertionError):
    """An answer that the OpenAPI document does not describe: the two have drifted."""


@functools.cache
def _served_document() -> dict[str, Any]:
    """The document as GET /openapi.json serves it (encoded to JSON and back), with every
    object that lists its properties closed (additionalProperties false, unless it says), so
    that a field the document does not name fails too."""
    served: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(document()))
    closed = copy.deepcopy(served)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(closed["components"])
    return closed


@functools.cache
def _validator(pointer: tuple[str, ...]) -> jsonschema.Draft202012Validator:
    """A validator of the schema at ``pointer`` in the document, whose $refs resolve in it."""
    served = _served_document()
    node: Any = served
    for key in pointer:
        node = node[key]
    schema = {**node, "components": served["components"]}
    return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)


async def check_against_document(
    app: web.Application, method: str, response: ClientResponse
) -> None:
    """Raise UndocumentedResponseError unless the document has ``response``: its operation
    (the route aiohttp chose for it), its status, and a body its schema allows."""
    served = _served_document()
    where = f"{method} {response.url.path} answered {response.status}"
    is_json = response.content_type == "application/json"
    body = await response.read()
    match = await app.router.resolve(make_mocked_request(method, response.url.raw_path, app=app))
    resource = match.route.resource
    if match.http_exception is not None or resource is None:
        if response.status not in _UNROUTED_STATUSES and not (
            method == "OPTIONS" and response.status == 204
        ):
            raise UndocumentedResponseError(f"{where}: no operation, and not a 401, 404 or 405")
        pointer: tuple[str, ...] = ("components", "schemas", "Error")
    else:
        path, verb, status = resource.canonical, method.lower(), str(response.status)
        operation = served["paths"].get(path, {}).get(verb)
        if operation is None:
            raise UndocumentedResponseError(f"{where}: {verb} {path} is not in the document")
        if status not in operation["responses"]:
            raise UndocumentedResponseError(f"{where}: status {status} is not documented")
        content = operation["responses"][status].get("content", {})
        if not is_json:
            if body and response.content_type not in content:
                raise UndocumentedResponseError(f"{where}: {response.content_type} undocumented")
            return
        if "application/json" not in content:
            raise UndocumentedResponseError(f"{where}: a JSON body is not documented")
        pointer = ("paths", path, verb, "responses", status, "content", "application/json")
        pointer += ("schema",)
    if not is_json:
        return
    errors = sorted(_validator(pointer).iter_errors(json.loads(body)), key=str)
    if errors:
        first = errors[0]
        at = "/".join(str(part) for part in first.absolute_path)
        raise UndocumentedResponseError(
            f"{where}: not as documented at /{at}: {first.message} ({len(errors)} error(s));"
            f" body: {body[:500]!r}"
        )


class ContractClient(TestClient[web.Request, web.Application]):
    """A test client that checks every answer against the served OpenAPI document, so that the
    document and the API cannot drift: an answer it does not describe fails the test."""

    async def _request(self, method: str, path: StrOrURL, **kwargs: Any) -> ClientResponse:
        response = await super()._request(method, path, **kwargs)
        await check_against_document(self.app, method.upper(), response)
        return response


def contract_client(app: web.Application) -> ContractClient:
    return ContractClient(TestServer(app))


@dataclass
class Api:
    client: TestClient[Any, Any]
    settings: ApiSettings
    read_token: str
    write_token: str
    admin_token: str = ""

    def headers(self, token: str | None) -> dict[str, str]:
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, token: str | None = "read", **query: Any) -> Any:
        """GET with the read token; returns (status, JSON body)."""
        response = await self.client.get(path, params=query, headers=self._auth(token))
        return response.status, await response.json()

    async def send(
        self,
        method: str,
        path: str,
        body: Any,
        token: str | None = "write",
        content_type: str | None = None,
    ) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = self._auth(token)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await self.client.request(method, path, data=data, headers=headers)
        return response.status, await response.json()

    def _auth(self, token: str | None) -> dict[str, str]:
        named = {"read": self.read_token, "write": self.write_token, "admin": self.admin_token}
        return self.headers(named.get(token, token) if token else None)


@contextlib.asynccontextmanager
async def serving(settings: ApiSettings) -> AsyncIterator[Api]:
    """The app with ``settings`` on a test server, and a read, a write and an admin token."""
    client = contract_client(create_app(settings))
    async with client:
        _, read_token = await create_token(settings.database_url, "read", "dashboard")
        _, write_token = await create_token(settings.database_url, "write", "ops")
        _, admin_token = await create_token(settings.database_url, "admin", "registry")
        yield Api(client, settings, read_token, write_token, admin_token)
