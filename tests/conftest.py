"""Fixtures: a private PostgreSQL and Mosquitto for the session, a fresh database per test."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiomqtt
import psycopg
import pytest

from gateway.settings import MqttAddress, Settings
from tests.services import Mosquitto, Postgres
from tests.support import GatewayProcess, LoginAs, RunningGateway

_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    broker = Mosquitto()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def database_url(postgres: Postgres) -> str:
    """A new, empty database for each test."""
    name = f"t{next(_database_numbers)}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return postgres.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def login_as(postgres: Postgres) -> Iterator[LoginAs]:
    """``login_as(database_url, group)``: a new login role, member of the group role ``group``,
    made as an operator makes one (docs/security.md), and ``database_url`` as that login, over
    TCP. The private server trusts every login: the password is given but not checked. The
    group roles are made by the schema, applied as the superuser."""
    made: list[str] = []

    def login(database_url: str, group: str) -> str:
        name = f"{group.removeprefix('fleetgate_')}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'unused' IN ROLE {group}".encode())
        made.append(name)
        return database_url.replace("://postgres@", f"://{name}:unused@", 1)

    yield login
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        for name in made:
            # a session still open (its temporary tables are the login's) would keep the role
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            conn.execute(f"REASSIGN OWNED BY {name} TO postgres".encode())  # its databases
            conn.execute(f"DROP ROLE {name}".encode())


@pytest.fixture
def settings(database_url: str, mosquitto: Mosquitto) -> Settings:
    return Settings.from_env({}).replace(
        database_url=database_url,
        mqtt=MqttAddress.parse(mosquitto.url),
        client_id=f"fleetgate-test-{uuid.uuid4().hex[:8]}",
        enrolment="open",  # most tests publish as devices nobody registered
        metrics_port=0,
        stats_interval_s=1.0,
        retry_max_delay_s=0.5,
    )


@pytest.fixture
async def start_gateway(
    settings: Settings,
) -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    running: list[RunningGateway] = []

    async def start(**changes: Any) -> RunningGateway:
        gateway = RunningGateway(settings.replace(**changes))
        running.append(gateway)
        await gateway.started()
        return gateway

    yield start
    for gateway in running:
        if not gateway.task.done():
            await gateway.close()


@pytest.fixture
async def publisher(mosquitto: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1", mosquitto.port, identifier=f"pub-{uuid.uuid4().hex[:8]}"
    ) as client:
        yield client


@pytest.fixture
def gateway_process(settings: Settings) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for number, process in enumerate(started):
        process.kill()
        print(f"--- gateway process {number} ---\n{process.output()}")
