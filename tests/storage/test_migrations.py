"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from storage.db import Database
from storage.models import Base


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
