"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from storage.db import Database
from storage.models import Base
from tests.postgres import admin, url


async def test_migrated_schema_matches_the_models(db: Database) -> None:
    def _diff(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with db.engine.connect() as connection:
        diff = await connection.run_sync(_diff)
    assert diff == []


async def test_upgrade_twice_is_harmless(db: Database) -> None:
    await db.upgrade()

    def _tables(connection: Any) -> set[str]:
        return set(inspect(connection).get_table_names())

    async with db.engine.connect() as connection:
        tables = await connection.run_sync(_tables)
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


@pytest.mark.postgres
async def test_five_processes_starting_together_on_a_fresh_database_all_come_up(
    postgres_template: str,
) -> None:
    """A bot and four workers started at once each migrate; the advisory lock makes them take
    turns (without it, all but one failed on tables that already existed)."""
    name = f"imagine_fresh_{uuid.uuid4().hex[:10]}"
    await admin(f'CREATE DATABASE "{name}"')
    databases = [Database(url(name)) for _ in range(5)]
    try:
        await asyncio.gather(*(database.upgrade() for database in databases))
        async with databases[0].engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert set(Base.metadata.tables) <= tables
    finally:
        for database in databases:
            await database.close()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(("setting", "pragma"), [("FULL", 2), ("NORMAL", 1)])
async def test_sqlite_commits_as_durably_as_the_setting_says(
    sqlite_url: str, setting: str, pragma: int
) -> None:
    database = Database(sqlite_url, sqlite_synchronous=setting)
    try:
        async with database.engine.connect() as connection:
            found = await connection.exec_driver_sql("PRAGMA synchronous")
            assert found.scalar() == pragma
            mode = await connection.exec_driver_sql("PRAGMA journal_mode")
            assert mode.scalar() == "wal"
    finally:
        await database.close()
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        Database(sqlite_url, sqlite_synchronous="OFF")
