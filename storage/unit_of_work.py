"""A unit of work: one AsyncSession, its repositories, rolled back unless committed."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.queue import JobQueue, Policy
from storage.repositories import (
    DeliveryRepository,
    GuildRepository,
    ImageRepository,
    JobRepository,
    ModerationEventRepository,
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
    queue: JobQueue

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], policy: Policy = Policy.FAIR
    ) -> None:
        self._sessions = sessions
        self._policy = policy

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

    async def rollback(self) -> None:
        await self.session.rollback()
