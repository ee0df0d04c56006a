"""Engines and sessions for SQLite (WAL, one writer) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from storage.queue import Policy
from storage.unit_of_work import UnitOfWork

SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")


def _configure_sqlite(engine: AsyncEngine, synchronous: str) -> None:
    """WAL, a busy timeout, foreign keys; BEGIN IMMEDIATE so writers queue, never deadlock.

    ``synchronous``: FULL (each commit on disk before it returns: a power loss keeps every
    committed job) or NORMAL (faster; a crash of the process loses nothing, a power loss may
    lose the last commits)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine and its session factory; hands out units of work."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        policy: Policy = Policy.FAIR,
        sqlite_synchronous: str = "FULL",
    ) -> None:
        if sqlite_synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"sqlite_synchronous must be one of {SYNCHRONOUS}")
        parsed = make_url(url)
        self.url = url
        self.policy = policy
        # Added to the database's clock (UnitOfWork.now): tests move time forward with it.
        self.clock_offset = dt.timedelta()
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_async_engine(url, echo=echo, pool_pre_ping=self.dialect != "sqlite")
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, sqlite_synchronous.upper())
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def uow(self) -> UnitOfWork:
        """A new unit of work: one session, rolled back unless committed."""
        return UnitOfWork(
            self.sessions,
            self.policy,
            dialect=self.dialect,
            clock_offset=lambda: self.clock_offset,
        )

    async def upgrade(self) -> None:
        """Run the Alembic migrations up to head."""
        from storage.migrate import upgrade

        await upgrade(self.engine)

    async def close(self) -> None:
        await self.engine.dispose()
