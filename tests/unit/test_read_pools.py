"""Which pool a read takes (DATABASE_READ_URL), and the settings that bound it; no services:
the pools are never opened."""

from __future__ import annotations

import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.env_options import SettingsError
from http_api.read_pools import ReadPools, Replica
from http_api.settings import Settings


def _pool(name: str) -> AsyncConnectionPool:
    return AsyncConnectionPool(f"postgresql://127.0.0.1/{name}", open=False, name=name)


def _pools(usable: list[bool], read_your_writes_s: float = 10.0) -> ReadPools:
    replicas = []
    for number, state in enumerate(usable, start=1):
        replica = Replica(f"replica-{number}", f"postgresql://127.0.0.1/r{number}", _pool("r"))
        replica.usable = state
        replicas.append(replica)
    return ReadPools(_pool("primary"), replicas, 5.0, read_your_writes_s)


def test_usable_replicas_take_reads_in_turn() -> None:
    pools = _pools([True, False, True])
    first, third = pools.replicas[0].pool, pools.replicas[2].pool
    chosen = [pools.choose() for _ in range(4)]
    assert chosen.count(first) == chosen.count(third) == 2
    assert pools.replicas[1].reads == 0
    assert pools.primary_reads == 0


def test_reads_go_to_the_primary_without_a_usable_replica_or_when_asked() -> None:
    pools = _pools([False, False])
    assert pools.choose() is pools.primary
    assert _pools([]).choose() is not None
    usable = _pools([True])
    assert usable.choose(primary=True) is usable.primary
    assert usable.primary_reads == 1


def test_a_token_that_wrote_reads_the_primary_for_a_while() -> None:
    pools = _pools([True], read_your_writes_s=10.0)
    pools.wrote(b"writer")
    assert pools.wrote_recently(b"writer")
    assert not pools.wrote_recently(b"reader")
    assert not pools.wrote_recently(None)
    assert not _pools([True], read_your_writes_s=0.0).wrote_recently(b"writer")


def test_read_urls_and_their_window_are_checked() -> None:
    replicas = "postgresql://r1@127.0.0.1:5433/fleetgate, postgresql://r2@127.0.0.1:5434/fleetgate"
    settings = Settings.from_env({"DATABASE_READ_URL": replicas})
    assert settings.database_read_urls == (
        "postgresql://r1@127.0.0.1:5433/fleetgate",
        "postgresql://r2@127.0.0.1:5434/fleetgate",
    )
    assert Settings.from_env({}).database_read_urls == ()
    with pytest.raises(SettingsError, match="DATABASE_READ_URL"):
        Settings.from_env({"DATABASE_READ_URL": "replica.example.com"})
    with pytest.raises(SettingsError, match="READ_YOUR_WRITES_S"):
        Settings.from_env({"DATABASE_READ_URL": replicas, "READ_YOUR_WRITES_S": "5"})
