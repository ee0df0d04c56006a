"""A unit of work: one AsyncSession, its repositories, rolled back unless committed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from types import TracebackType

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.queue import JobQueue, Policy
from storage.repositories import (
    DeliveryRepository,
    GuildRepository,
    ImageRepository,
    IntentRepository,
    JobRepository,
    ModerationEventRepository,
    PresetRepository,
    ResultPostRepository,
    UsageRepository,
    UserRepository,
    WorkerRepository,
)


class UnitOfWork:
    """``async with db.uow() as uow: ...; await uow.commit()``."""

    session: AsyncSession
    users: UserRepository
    guilds: GuildRepository
    jobs: JobRepository
    images: ImageRepository
    usage: UsageRepository
    deliveries: DeliveryRepository
    events: ModerationEventRepository
    workers: WorkerRepository
    intents: IntentRepository
    presets: PresetRepository
    queue: JobQueue

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        policy: Policy = Policy.FAIR,
        *,
        dialect: str = "sqlite",
        clock_offset: Callable[[], dt.timedelta] = dt.timedelta,
    ) -> None:
        self._sessions = sessions
        self._policy = policy
        self._dialect = dialect
        self._clock_offset = clock_offset

    async def __aenter__(self) -> UnitOfWork:
        self.session = self._sessions()
        self.users = UserRepository(self.session)
        self.guilds = GuildRepository(self.session)
        self.jobs = JobRepository(self.session)
        self.images = ImageRepository(self.session)
        self.usage = UsageRepository(self.session)
        self.deliveries = DeliveryRepository(self.session)
        self.events = ModerationEventRepository(self.session)
        self.workers = WorkerRepository(self.session)
        self.intents = IntentRepository(self.session)
        self.presets = PresetRepository(self.session)
        self.posts = ResultPostRepository(self.session)
        self.queue = JobQueue(self.session, self._policy)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.session.rollback()
        finally:
            await self.session.close()

    async def commit(self) -> None:
        await self.session.commit()

    async def now(self) -> dt.datetime:
        """The database's clock, in UTC: leases are set and compared on it, so workers on hosts
        whose clocks disagree still agree on who holds a job. (Tests move it with an offset.)"""
        if self._dialect == "sqlite":
            stamp = await self.session.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
            moment = dt.datetime.fromisoformat(str(stamp)).replace(tzinfo=dt.UTC)
        else:
            found = await self.session.scalar(select(func.now()))
            assert isinstance(found, dt.datetime)
            moment = found.astimezone(dt.UTC)
        return moment + self._clock_offset()

    async def rollback(self) -> None:
        await self.session.rollback()
