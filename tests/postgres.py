"""The PostgreSQL server the tests and benchmarks make their databases on."""

from __future__ import annotations

import os

ADMIN_DSN = os.environ.get(
    "IMAGINE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def admin(statement: str) -> None:
    """Run one statement (CREATE / DROP DATABASE) as the admin role."""
    import asyncpg

    connection = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def url(database: str) -> str:
    """The SQLAlchemy URL of ``database`` on that server."""
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{database}"
