"""Whether what a member or a moderator does costs the same with a long history and queue.

Fills a fresh database in bulk with SQL (INSERT ... SELECT, quotas bypassed): U users in 20
servers, M finished jobs over the last year (4 images and a delivered result each, every 5th a
child of the one before), N waiting jobs with their fair-share tags and pending deliveries, a
few thousand moderation events; ANALYZE. Then times, through the project's own code, what runs
on each interaction or periodic sweep: submit (with place and ETA), claim (put back
after), a user's waiting jobs, the outbox sweep, a reaction's lookup by message id, a page of
the admin log, the fair order of the user with the most waiting jobs, and /status of a waiting
job; each the same on a nearly empty database in turn (just migrated; 10 users, the same
number of waiting jobs per user, 400 finished jobs: what each operation needs to find
something), so both see the same load on the machine. Prints p50 / p99 of both. Goals: every
p99 at most 25 ms, every p50 at most 3× its empty p50.

PostgreSQL: makes and drops its own database on IMAGINE_TEST_POSTGRES_DSN (default
postgresql://postgres@127.0.0.1:5432/postgres). Goal sizes: SQLite N=10,000 M=100,000
U=1,000 (the defaults); PostgreSQL N=100,000 M=1,000,000 U=10,000.

    python benchmarks/history.py [--queued N] [--history M] [--users U]
        [--database sqlite|postgresql] [--repeat 200] [--statements] [--explain] [--keep]
        [--json]

``--statements`` prints each operation's slowest SQL statements (mean ms a call);
``--explain`` the plan of the slowest one of each operation that misses a goal (PostgreSQL:
EXPLAIN ANALYZE, in a transaction rolled back; SQLite: EXPLAIN QUERY PLAN); ``--keep`` keeps
the filled database and prints its URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, the tests' helpers

from sqlalchemy import event, text

from generation.model_info import ModelInfo, describe_model
from generation.moderation import Moderation
from generation.outbox import DeliveryTarget, Outbox
from generation.quotas import Quotas
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import utcnow
from tests.postgres import admin, url

GOAL_P99_MS = 25.0
GOAL_RATIO = 3.0
GUILDS = 20
OPERATIONS = (
    "submit",
    "claim",
    "queue_for_user",
    "sweep",
    "reaction_lookup",
    "admin_log_page",
    "fair_order",
    "status",
)
# Snowflake-sized ids, each kind in its own range.
USER0 = 100_000_000_000_000_000
GUILD0 = 200_000_000_000_000_000
MESSAGE0 = 300_000_000_000_000_000  # a job's progress message: + 2 id; its result: + 2 id + 1
INTERACTION0 = 400_000_000_000_000_000
CHANNEL0 = 500_000_000_000_000_000
BENCH_INTERACTION0 = 600_000_000_000_000_000
YEAR_SECONDS = 365 * 86400
QUEUE_SECONDS = 3600  # the waiting jobs were asked for over the last hour
# The nearly empty database: 10 users (9 with waiting jobs, 1 of them heavy; 1 idle for
# submits) and enough finished jobs for a full admin page in each server.
EMPTY_USERS = 10
EMPTY_HISTORY = 400


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# -- the database ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_database(kind: str, keep: bool = False) -> AsyncIterator[str]:
    """A new, empty database's URL (not yet migrated); dropped (deleted) after, unless kept."""
    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="imagine-history-"))
        database_url = f"sqlite+aiosqlite:///{folder / 'imagine.db'}"
        try:
            yield database_url
        finally:
            if not keep:
                await asyncio.to_thread(shutil.rmtree, folder, True)
        return
    name = f"imagine_history_{uuid.uuid4().hex[:10]}"
    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield url(name)
    finally:
        if not keep:
            await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the fill made, for the operations to pick their arguments from."""

    users: int
    history: int
    queued: int
    active: int  # users 1..active have waiting jobs; the rest none (they submit)
    heavy: int  # users 1..heavy have the most waiting jobs
    heaviest_count: int  # waiting jobs of user 1
    events: int

    def user_id(self, u: int) -> int:
        return USER0 + u

    def guild_id(self, g: int) -> int:
        return GUILD0 + g


class Dialect:
    """The few pieces of SQL the two databases spell differently."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.t0 = time.time()
        self.false = "false" if name == "postgresql" else "0"
        self.true = "true" if name == "postgresql" else "1"
        self.json_object = "'{}'::json" if name == "postgresql" else "'{}'"

    def series(self, count: int) -> tuple[str, str]:
        """A CTE prefix and a FROM item giving ``i`` from 0 to count - 1."""
        if self.name == "postgresql":
            return "", f"generate_series(0, {count - 1}) AS s(i)"
        return (
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s "
            f"WHERE i + 1 < {count}) ",
            "s",
        )

    def ago(self, seconds: str) -> str:
        """The moment ``seconds`` (an SQL expression) before now, as the column stores it."""
        if self.name == "postgresql":
            return f"(now() - ({seconds}) * interval '1 second')"
        # Naive UTC text, as SQLAlchemy writes it: 'YYYY-MM-DD HH:MM:SS.ffffff'.
        return f"(strftime('%Y-%m-%d %H:%M:%f', {self.t0!r} - ({seconds}), 'unixepoch') || '000')"

    def pad64(self, value: str) -> str:
        if self.name == "postgresql":
            return f"lpad(({value})::text, 64, '0')"
        return f"printf('%064d', {value})"


def _split(users: int) -> tuple[int, int]:
    """(active, heavy): users 1..active have waiting jobs, users 1..heavy the most."""
    active = max(1, min(users - 1, round(0.9 * users)))
    return active, max(1, active // 10)


def _owner(i: int, active: int, heavy: int) -> int:
    """The user of waiting job i, as the fill's SQL picks it."""
    return (i // 4) % heavy + 1 if i % 4 == 0 else (i - i // 4 - 1) % active + 1


def _queue_with_heaviest(count: int, users: int) -> int:
    """The fewest waiting jobs over ``users`` users that give user 1 ``count`` of them."""
    active, heavy = _split(users)
    queued = has = 0
    while has < count:
        has += _owner(queued, active, heavy) == 1
        queued += 1
    return queued


async def fill(db: Database, model: ModelInfo, *, queued: int, history: int, users: int) -> Shape:
    """Users, servers, finished jobs with images and delivered results, waiting jobs with
    their tags and pending deliveries, flows, the model's clock, moderation events: in bulk."""
    d = Dialect(db.dialect)
    active, heavy = _split(users)
    events = max(100, min(5000, history // 30))
    params = {"model_id": model.model_id, "revision": model.revision, "scheduler": model.scheduler}
    statements: list[str] = []

    cte, series = d.series(users)
    statements.append(
        f"{cte}INSERT INTO users (id, name, banned, virtual_time, quota_overrides, created_at) "
        f"SELECT {USER0} + i + 1, 'member ' || (i + 1), {d.false}, 0.0, {d.json_object}, "
        f"{d.ago(str(400 * 86400))} FROM {series}"
    )
    cte, series = d.series(GUILDS)
    statements.append(
        f"{cte}INSERT INTO guilds (id, name, created_at) "
        f"SELECT {GUILD0} + i + 1, 'server ' || (i + 1), {d.ago(str(400 * 86400))} FROM {series}"
    )

    job_columns = (
        "id, kind, parent_job_id, parent_image_index, user_id, guild_id, channel_id, "
        "channel_nsfw, channel_public, interaction_id, prompt, negative_prompt, seed, steps, "
        "guidance, width, height, count, strength, scheduler, model_id, model_revision, dtype, "
        "device_kind, torch_threads, library_versions, engine_details, cost, weight, start_tag, "
        "virtual_start, gpu_seconds, status, attempts, max_attempts, runs, cancel_requested, "
        "created_at, started_at, finished_at"
    )
    if history:
        # Job i (id i + 1): every 5th is a variation of the one before, by the same member in
        # the same server; created evenly over the last year, oldest first.
        child = "(i % 5 = 4)"
        # The original job's number among originals (0, 1, 2, ...): its member and server.
        parent = f"(i - CASE WHEN {child} THEN 1 ELSE 0 END)"
        owner = f"({parent} - {parent} / 5)"
        created = f"{history} - i"
        step = YEAR_SECONDS / history
        cte, series = d.series(history)
        statements.append(
            f"{cte}INSERT INTO jobs ({job_columns}) SELECT i + 1, "
            f"CASE WHEN {child} THEN 'variation' ELSE 'txt2img' END, "
            f"CASE WHEN {child} THEN i ELSE NULL END, CASE WHEN {child} THEN 0 ELSE NULL END, "
            f"{USER0} + {owner} % {users} + 1, {GUILD0} + {owner} % {GUILDS} + 1, "
            f"{CHANNEL0} + {owner} % {GUILDS} + 1, {d.false}, {d.true}, {INTERACTION0} + i + 1, "
            f"'a red circle on a blue square, number ' || i, '', i, 10, 3.0, 64, 64, 4, "
            f"CASE WHEN {child} THEN 0.6 ELSE NULL END, :scheduler, :model_id, :revision, "
            f"'float32', 'cpu', 1, {d.json_object}, {d.json_object}, 1.0, 1.0, 0.0, 0.0, 0.5, "
            f"'succeeded', 1, 3, 1, {d.false}, "
            f"{d.ago(f'({created}) * {step}')}, {d.ago(f'({created}) * {step} - 2')}, "
            f"{d.ago(f'({created}) * {step} - 12')} FROM {series}"
        )
        cte, series = d.series(4 * history)
        job = "(i / 4 + 1)"
        statements.append(
            f'{cte}INSERT INTO images (id, job_id, "index", seed, sha256, path, width, height, '
            "flags, review, created_at) "
            f"SELECT i + 1, {job}, i % 4, i, {d.pad64('i')}, "
            f"'images/' || {job} || '/' || {job} || '-' || (i % 4) || '.png', 64, 64, "
            f"{d.json_object}, NULL, {d.ago(f'({history} - i / 4) * {step} - 12')} FROM {series}"
        )
        cte, series = d.series(history)
        statements.append(
            f"{cte}INSERT INTO deliveries (job_id, application_id, interaction_token, "
            "interaction_at, channel_id, original_message_id, reply_to_message_id, "
            "result_message_id, delivered_at, attachment_size_limit, state, attempts, "
            "next_try_at, last_error, delivered_via, withheld) "
            f"SELECT i + 1, 1, 'token', {d.ago(f'({created}) * {step}')}, "
            f"{CHANNEL0} + {owner} % {GUILDS} + 1, {MESSAGE0} + 2 * (i + 1), NULL, "
            f"{MESSAGE0} + 2 * (i + 1) + 1, {d.ago(f'({created}) * {step} - 13')}, 26214400, "
            f"'delivered', 1, NULL, NULL, 'response', {d.false} FROM {series}"
        )
    if queued:
        # Waiting job i (id history + i + 1): a quarter of them from the heavy users, the rest
        # spread over the active users; job k of a user has the tag k × cost / weight (= k).
        cte, series = d.series(queued)
        user = (
            f"CASE WHEN i % 4 = 0 THEN (i / 4) % {heavy} + 1 "
            f"ELSE (i - i / 4 - 1) % {active} + 1 END"
        )
        picked = f"SELECT i, {user} AS u FROM {series}"
        numbered = (
            "SELECT i, u, row_number() OVER (PARTITION BY u ORDER BY i) - 1 AS k "
            f"FROM ({picked}) AS p"
        )
        created = f"({queued} - i) * {QUEUE_SECONDS / queued}"
        statements.append(
            f"{cte}INSERT INTO jobs ({job_columns}) SELECT {history} + i + 1, 'txt2img', NULL, "
            f"NULL, {USER0} + u, {GUILD0} + i % {GUILDS} + 1, {CHANNEL0} + i % {GUILDS} + 1, "
            f"{d.false}, {d.true}, {INTERACTION0} + {history} + i + 1, "
            f"'a green triangle, waiting, number ' || i, '', i, 10, 3.0, 64, 64, 4, NULL, "
            f":scheduler, :model_id, :revision, NULL, NULL, NULL, {d.json_object}, "
            f"{d.json_object}, 1.0, 1.0, k * 1.0, NULL, NULL, 'queued', 0, 3, 0, {d.false}, "
            f"{d.ago(created)}, NULL, NULL FROM ({numbered}) AS n"
        )
        statements.append(
            "INSERT INTO deliveries (job_id, application_id, interaction_token, interaction_at, "
            "channel_id, state, attempts, next_try_at, withheld) "
            f"SELECT id, 1, 'token', created_at, channel_id, 'pending', 0, NULL, {d.false} "
            f"FROM jobs WHERE id > {history}"
        )
        statements.append(
            "INSERT INTO queue_flows (user_id, model_id, finish_tag) "
            "SELECT user_id, model_id, max(start_tag) + 1.0 FROM jobs "
            "WHERE status = 'queued' GROUP BY user_id, model_id"
        )
    statements.append(
        "INSERT INTO queue_clocks (model_id, virtual_time, seconds_per_cost, updated_at) "
        f"VALUES (:model_id, 0.0, 0.5, {d.ago('0')})"
    )
    cte, series = d.series(events)
    statements.append(
        f"{cte}INSERT INTO moderation_events (id, kind, actor_id, guild_id, target_user_id, "
        "job_id, reason, details, created_at) "
        f"SELECT i + 1, CASE WHEN i % 4 = 3 THEN 'ban' ELSE 'prompt_blocked' END, "
        f"CASE WHEN i % 4 = 3 THEN {USER0} + 1 ELSE NULL END, {GUILD0} + i % {GUILDS} + 1, "
        f"{USER0} + (i * 7) % {users} + 1, NULL, 'benchmark', {d.json_object}, "
        f"{d.ago(f'({events} - i) * {YEAR_SECONDS / events}')} FROM {series}"
    )
    if d.name == "postgresql":
        for table in ("jobs", "images", "moderation_events"):
            statements.append(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
    async with db.engine.begin() as connection:
        for statement in statements:
            names = [name for name in params if f":{name}" in statement]
            await connection.execute(text(statement), {name: params[name] for name in names})
    async with db.engine.connect() as connection:
        if d.name == "postgresql":
            await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.exec_driver_sql("ANALYZE")
        await connection.commit()
        heaviest = await connection.scalar(
            text(f"SELECT count(*) FROM jobs WHERE status = 'queued' AND user_id = {USER0 + 1}")
        )
    return Shape(users, history, queued, active, heavy, int(heaviest or 0), events)


# -- the operations ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timed:
    """An operation that timed itself, and what puts things back (not timed)."""

    took: float
    after: Callable[[], Awaitable[None]]


Operation = Callable[[int], Awaitable[Timed | None]]


class Statements:
    """Each operation's SQL statements and their times (before/after_cursor_execute)."""

    def __init__(self, db: Database) -> None:
        self.current: str | None = None
        self.times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.parameters: dict[tuple[str, str], Any] = {}
        self.calls: dict[str, int] = defaultdict(int)
        engine = db.engine.sync_engine

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            conn.info.setdefault("started", []).append(time.perf_counter())

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            took = 1000 * (time.perf_counter() - conn.info["started"].pop())
            if self.current is not None:
                self.times[self.current][statement].append(took)
                self.parameters[(self.current, statement)] = parameters

    def slowest(self, operation: str, top: int = 3) -> list[tuple[str, float, float]]:
        """(statement, mean ms a run of the operation, mean ms an execution), slowest first."""
        calls = max(1, self.calls[operation])
        rows = [
            (statement, sum(times) / calls, sum(times) / len(times))
            for statement, times in self.times[operation].items()
        ]
        return sorted(rows, key=lambda row: -row[1])[:top]

    def totals(self, operation: str) -> tuple[float, float]:
        """(statements a run of the operation, ms in them a run)."""
        calls = max(1, self.calls[operation])
        times = [took for each in self.times[operation].values() for took in each]
        return len(times) / calls, sum(times) / calls


class Operations:
    """Each operation through the project's own code, with its arguments varied; those that
    change the queue time themselves and put it back as it was after."""

    def __init__(self, db: Database, model: ModelInfo, shape: Shape, store: ImageStore) -> None:
        quotas = Quotas(  # never the reason a submit is refused
            queued_per_user=10**6,
            queued_per_guild=10**9,
            images_per_user_day=10**9,
            images_per_guild_day=10**9,
        )
        limits = Limits(max_steps=50, max_width=256, max_height=256)
        self.db, self.model, self.shape = db, model, shape
        self.service = GenerationService(db, model, limits, quotas=quotas, store=store)
        self.outbox = Outbox(db)
        self.moderation = Moderation(db, store)
        self.rng = random.Random(7)
        self.interactions = iter(range(BENCH_INTERACTION0, BENCH_INTERACTION0 + 10**9))
        # Users past the active ones wait on nothing: they submit.
        self.idle_users = [shape.user_id(u) for u in range(shape.active + 1, shape.users + 1)]
        self.typical_users = [shape.user_id(u) for u in range(shape.heavy + 1, shape.active + 1)]

    def get(self, name: str) -> Operation:
        operation: Operation = getattr(self, name)
        return operation

    async def submit(self, i: int) -> Timed:
        user_id = self.idle_users[i % len(self.idle_users)]
        started = time.perf_counter()
        submission = await self.service.submit(
            GenerationRequest(
                f"a yellow star {i}",
                user_id=user_id,
                guild_id=self.shape.guild_id(1 + i % GUILDS),
                channel_id=CHANNEL0 + 1,
                channel_public=True,
                interaction_id=next(self.interactions),
                steps=10,
            ),
            delivery=DeliveryTarget(
                application_id=1,
                interaction_token="token",
                interaction_at=utcnow(),
                channel_id=CHANNEL0 + 1,
            ),
        )
        took = time.perf_counter() - started
        assert submission.position >= 1

        async def after() -> None:  # the queue as it was; nothing left to deliver
            await self.service.cancel(submission.job.id, user_id, withdraw="benchmark")

        return Timed(took, after)

    async def claim(self, i: int) -> Timed:
        started = time.perf_counter()
        async with self.db.uow() as uow:
            claimed = await uow.queue.claim(
                "bench", 60, await uow.now(), model_ids=[self.model.model_id]
            )
            await uow.commit()
        took = time.perf_counter() - started
        assert claimed is not None
        lease = claimed[1]

        async def after() -> None:
            async with self.db.uow() as uow:
                await uow.queue.put_back(
                    lease, await uow.now(), attempt_counts=False, run_counts=False
                )
                await uow.commit()

        return Timed(took, after)

    async def queue_for_user(self, i: int) -> None:
        user_id = self.typical_users[self.rng.randrange(len(self.typical_users))]
        assert await self.service.waiting(user_id)

    async def sweep(self, i: int) -> None:
        await self.outbox.due()

    async def reaction_lookup(self, i: int) -> None:
        job_id = self.rng.randint(1, self.shape.history)
        message = MESSAGE0 + 2 * job_id + (1 if i % 2 == 0 else 0)  # its result, its progress
        found = await self.outbox.by_message(message)
        assert found is not None
        assert found.job_id == job_id

    async def admin_log_page(self, i: int) -> None:
        before = self.rng.randint(1, self.shape.history + self.shape.queued)
        guild = self.shape.guild_id(1 + self.rng.randrange(GUILDS)) if i % 2 else None
        await self.moderation.logs(per_page=10, before=before, guild_id=guild)

    async def fair_order(self, i: int) -> None:
        assert await self.service.waiting(self.shape.user_id(1 + i % self.shape.heavy))

    async def status(self, i: int) -> None:
        first = self.shape.history + 1
        job_id = self.rng.randint(first, first + self.shape.queued - 1)
        assert (await self.service.status(job_id)).position >= 1


async def measure(
    operations: dict[str, Operations], repeat: int, statements: Statements | None = None
) -> dict[str, dict[str, list[float]]]:
    """Milliseconds of each operation on each database, ``repeat`` times after a short
    warm-up, the databases taking turns (so both see the same load on the machine);
    ``statements`` follows the full one."""
    results: dict[str, dict[str, list[float]]] = {which: {} for which in operations}
    warmup = max(5, repeat // 20)
    for name in OPERATIONS:
        for which in operations:
            results[which][name] = []
        for i in range(warmup + repeat):
            for which, each in operations.items():
                profiled = statements is not None and which == "full" and i >= warmup
                if statements is not None:
                    statements.current = name if profiled else None
                started = time.perf_counter()
                follow_up = await each.get(name)(i)
                took = time.perf_counter() - started
                if statements is not None:
                    statements.current = None
                if follow_up is not None:
                    took = follow_up.took
                    await follow_up.after()
                if i >= warmup:
                    results[which][name].append(1000 * took)
        if statements is not None:
            statements.calls[name] = repeat
    return results


async def explain(db: Database, statement: str, parameters: Any) -> str:
    """The plan of one captured statement: PostgreSQL runs it (EXPLAIN ANALYZE) in a
    transaction it rolls back; SQLite only plans it."""
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if db.dialect == "postgresql" else "EXPLAIN QUERY PLAN "
    async with db.engine.connect() as connection:
        result = await connection.exec_driver_sql(prefix + statement, parameters)
        rows: list[Any] = list(result.fetchall())
        await connection.rollback()
    if db.dialect == "postgresql":
        return "\n".join(str(row[0]) for row in rows)
    return "\n".join(" " * 2 * int(row[1] != 0) + str(row[-1]) for row in rows)


# -- the run -------------------------------------------------------------------------------


def _model() -> ModelInfo:
    """The embedded model as the bot describes it (nothing is loaded: only its configs)."""
    with tempfile.TemporaryDirectory(prefix="imagine-history-models-") as models:
        return describe_model("embedded", Path(models))


async def _filled(
    where: str, model: ModelInfo, log: Callable[[str], None], which: str, **sizes: int
) -> tuple[Database, Shape]:
    db = Database(where)
    await db.upgrade()
    started = time.perf_counter()
    shape = await fill(db, model, **sizes)
    log(
        f"{which}: filled {shape.history:,} finished jobs ({4 * shape.history:,} images), "
        f"{shape.queued:,} waiting, {shape.users:,} users, {shape.events:,} events in "
        f"{time.perf_counter() - started:.1f} s (the heaviest user waits on "
        f"{shape.heaviest_count})"
    )
    return db, shape


async def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    # Nothing here writes images: the moderators' pages read their rows only.
    with tempfile.TemporaryDirectory(prefix="imagine-history-store-") as folder:
        return await _run(args, log, _model(), ImageStore(Path(folder)))


async def _run(
    args: argparse.Namespace, log: Callable[[str], None], model: ModelInfo, store: ImageStore
) -> dict[str, Any]:
    async with (
        fresh_database(args.database, keep=args.keep) as full_url,
        fresh_database(args.database) as empty_url,
    ):
        full, shape = await _filled(
            full_url, model, log, "full", queued=args.queued, history=args.history, users=args.users
        )
        try:
            # The same waiting jobs per user: the heaviest has as many as there.
            queued = _queue_with_heaviest(shape.heaviest_count, EMPTY_USERS)
            empty, empty_shape = await _filled(
                empty_url,
                model,
                log,
                "empty",
                queued=queued,
                history=EMPTY_HISTORY,
                users=EMPTY_USERS,
            )
            try:
                profile = Statements(full) if args.statements or args.explain else None
                operations = {
                    "full": Operations(full, model, shape, store),
                    "empty": Operations(empty, model, empty_shape, store),
                }
                figures = await measure(operations, args.repeat, profile)
                if profile is not None:
                    await _report_statements(args, full, figures, profile, log)
            finally:
                await empty.close()
        finally:
            await full.close()
        if args.keep:
            log(f"kept the filled database: {full_url}")
    results = {}
    for name in OPERATIONS:
        big, small = figures["full"][name], figures["empty"][name]
        results[name] = {
            "p50_ms": round(statistics.median(big), 2),
            "p99_ms": round(_percentile(big, 0.99), 2),
            "empty_p50_ms": round(statistics.median(small), 2),
            "empty_p99_ms": round(_percentile(small, 0.99), 2),
        }
    return {
        "database": args.database,
        "queued": shape.queued,
        "history": shape.history,
        "operations": results,
    }


def _misses(p50: float, p99: float, empty_p50: float) -> bool:
    return p99 > GOAL_P99_MS or p50 > GOAL_RATIO * empty_p50


async def _report_statements(
    args: argparse.Namespace,
    db: Database,
    figures: dict[str, dict[str, list[float]]],
    profile: Statements,
    log: Callable[[str], None],
) -> None:
    """Each operation's slowest statements on the full database (--statements); the plan of
    the slowest of each that misses a goal (--explain; of every one with both)."""
    for name in OPERATIONS:
        times = figures["full"][name]
        p50, p99 = statistics.median(times), _percentile(times, 0.99)
        slowest = profile.slowest(name)
        if args.statements:
            count, spent = profile.totals(name)
            log(
                f"\n{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms; {count:.1f} statements a run, "
                f"{spent:.2f} ms in them (mean); the slowest:"
            )
            for statement, per_run, per_execution in slowest:
                log(f"  {per_run:7.2f} ms a run ({per_execution:.2f} ms each): {_short(statement)}")
        missed = _misses(p50, p99, statistics.median(figures["empty"][name]))
        if args.explain and slowest and (missed or args.statements):
            statement = slowest[0][0]
            plan = await explain(db, statement, profile.parameters[(name, statement)])
            log(f"\n{name}: plan of {_short(statement, 400)}\n{plan}")


def _short(statement: str, limit: int = 160) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--statements", action="store_true")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.users < 2 or args.queued < 1 or args.history < 1:
        parser.error("needs at least 2 users, 1 waiting job and 1 finished job")

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    result = asyncio.run(run(args, log))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"\n{result['database']}: {result['queued']:,} waiting jobs, {result['history']:,} "
        f"finished (goals: p99 ≤ {GOAL_P99_MS:g} ms, p50 ≤ {GOAL_RATIO:g}× empty p50)"
    )
    print(
        f"{'operation':<16} {'p50 ms':>8} {'p99 ms':>8} {'empty p50':>10} {'empty p99':>10} "
        f"{'ratio':>6}  goal"
    )
    for name, row in result["operations"].items():
        ratio = row["p50_ms"] / row["empty_p50_ms"] if row["empty_p50_ms"] else float("inf")
        met = not _misses(row["p50_ms"], row["p99_ms"], row["empty_p50_ms"])
        print(
            f"{name:<16} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['empty_p50_ms']:>10.2f} "
            f"{row['empty_p99_ms']:>10.2f} {ratio:>6.2f}  {'✓' if met else '✗'}"
        )


if __name__ == "__main__":
    main()
