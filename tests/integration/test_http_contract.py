"""The OpenAPI document is an exact contract: generated from the Structs the API answers with,
every operation named, every example valid, and every answer any HTTP test receives checked
against it (tests/http_helpers.py ContractClient), which this file shows catches a drift."""

from __future__ import annotations

import typing
from typing import Any

import jsonschema
import msgspec
import pytest

from http_api import errors, queries, views_ingest
from http_api.bodies import ErrorCode
from http_api.errors import ApiError, ConflictError
from http_api.middleware import _CODES
from http_api.openapi import OPERATION_IDS, document
from http_api.openapi_examples import EXAMPLES
from tests.http_helpers import Api, UndocumentedResponseError

pytest_plugins = ["tests.http_fixtures"]

_METHODS = {"get", "post", "put", "patch", "delete"}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, described)
        for path, operations in document()["paths"].items()
        for method, described in operations.items()
        if method in _METHODS
    ]


def test_every_operation_is_named_once() -> None:
    named = {(method, path): described["operationId"] for method, path, described in _operations()}
    assert named == OPERATION_IDS  # a new route gets its name here, deliberately
    assert len(set(named.values())) == len(named)


def test_the_document_has_servers_and_a_bearer_scheme() -> None:
    served = document()
    assert served["servers"][0]["url"] == "/"
    assert served["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_schemas_list_their_fields_and_which_are_required() -> None:
    schemas = document()["components"]["schemas"]

    def fields(name: str) -> set[str]:
        return set(schemas[name]["properties"])

    fleet_vehicle = fields("FleetVehicle")
    assert {"vehicleId", "totalAc", "efficiency", "readings", "coverage"} <= fleet_vehicle
    assert set(schemas["FleetVehicle"]["required"]) == fleet_vehicle
    assert fields("Window") == {"from", "to"}
    assert fields("ReadingCounts") == fields("ReadingCoverage") == {"ac", "dc"}
    assert {"vehicles", "matchedAc", "matchedDc", "efficiency", "byStatus"} <= fields("FleetTotals")
    assert fields("MeterSegment") == {"meterId", "from", "to", "totalAc", "readings"}
    assert schemas["Fleet"]["properties"]["vehicles"]["items"] == {
        "$ref": "#/components/schemas/FleetVehicle"
    }
    assert schemas["Performance"]["properties"]["meters"]["items"] == {
        "$ref": "#/components/schemas/MeterSegment"
    }
    assert set(schemas["VehicleStatus"]["required"]) == fields("VehicleStatus")
    assert "parameter" not in schemas["ErrorDetail"]["required"]  # only when one is at fault
    assert schemas["Link"]["properties"]["validFrom"]["format"] == "date-time"


def test_every_error_code_is_documented() -> None:
    documented = set(typing.get_args(ErrorCode))
    classes: list[type[ApiError]] = [ApiError]
    found = set()
    while classes:
        error = classes.pop()
        found.add(error.code)
        classes += error.__subclasses__()
    assert views_ingest.UnknownDeviceError.code in found  # subclasses elsewhere are seen
    assert found | set(_CODES.values()) | {"internalError", "httpError"} == documented
    schema = document()["components"]["schemas"]["ErrorDetail"]
    assert set(schema["properties"]["code"]["enum"]) == documented
    assert errors.UnknownParameterError.code in documented


def test_every_example_is_valid_against_its_schema() -> None:
    served = msgspec.json.decode(msgspec.json.encode(document()))
    schemas = served["components"]["schemas"]
    checked = 0
    for name, schema in schemas.items():
        for example in schema.get("examples", []):
            validator = jsonschema.Draft202012Validator(
                {"$ref": f"#/components/schemas/{name}", "components": served["components"]}
            )
            validator.validate(example)
            checked += 1
    assert checked == len(EXAMPLES)
    assert {"Overview", "Fleet", "Performance", "VehicleStatus", "Error"} <= set(EXAMPLES)


async def test_the_served_document_is_the_one_answers_are_checked_against(api: Api) -> None:
    status, served = await api.get("/openapi.json")
    assert status == 200
    assert served == msgspec.json.decode(msgspec.json.encode(document()))


async def test_an_answer_the_document_does_not_describe_fails_the_test(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract check is live: a count the schema forbids, and a status the operation does
    not document, each fail the request in the test."""
    overview = queries.overview

    async def negative(*args: Any) -> queries.Row:
        return {**await overview(*args), "meters_online": -1}

    monkeypatch.setattr(queries, "overview", negative)
    with pytest.raises(UndocumentedResponseError, match="minimum"):
        await api.get("/v1/status/overview")

    async def conflict(*args: Any) -> queries.Row:
        raise ConflictError("not a thing an overview answers")

    monkeypatch.setattr(queries, "overview", conflict)
    with pytest.raises(UndocumentedResponseError, match="status 409 is not documented"):
        await api.get("/v1/status/overview")
