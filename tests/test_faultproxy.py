"""The fault proxy does to a real PostgreSQL connection what a failover or a slow link does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from generation.relay import asyncpg_dsn
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.postgres


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[tuple[FaultProxy, str]]:
    async with FaultProxy("127.0.0.1", 5432) as running:
        yield running, asyncpg_dsn(running.url(postgres_url))


async def test_queries_pass_through_then_a_drop_cuts_them_and_a_refusal_keeps_them_out(
    proxy: tuple[FaultProxy, str],
) -> None:
    faults, dsn = proxy
    connection = await asyncpg.connect(dsn)
    assert await connection.fetchval("SELECT 41 + 1") == 42

    faults.drop()
    with pytest.raises((asyncpg.PostgresConnectionError, ConnectionError, OSError)):
        await connection.fetchval("SELECT 1")

    faults.refuse(0.5)
    with pytest.raises((asyncpg.PostgresConnectionError, ConnectionError, OSError)):
        await asyncpg.connect(dsn, timeout=2)
    await asyncio.sleep(0.6)
    again = await asyncpg.connect(dsn)
    assert await again.fetchval("SELECT 1") == 1
    await again.close()
    assert faults.refused >= 1 and faults.connections == 2


async def test_latency_slows_every_round_trip(proxy: tuple[FaultProxy, str]) -> None:
    faults, dsn = proxy
    connection = await asyncpg.connect(dsn)
    try:
        faults.latency = 0.1
        started = time.monotonic()
        await connection.fetchval("SELECT 1")
        assert time.monotonic() - started >= 0.2, "0.1 s each way"
    finally:
        faults.latency = 0.0
        await connection.close()
