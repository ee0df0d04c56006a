"""Fixtures of the generation tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from storage.db import Database


@pytest.fixture
async def sqlite(sqlite_url: str) -> AsyncIterator[Database]:
    """A migrated SQLite file database (for tests that run a worker on it)."""
    database = Database(sqlite_url)
    await database.upgrade()
    yield database
    await database.close()
