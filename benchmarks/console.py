"""What the web console's moderator pages cost in server time with a year of history.

Fills a fresh database as ``benchmarks/history.py`` does (finished jobs with 4 images each,
every 5th a variation, moderation events), holds ``--flagged`` images of one server for
review, then asks the console's own app (in process, through httpx's ASGI transport, logged
in with a signed session cookie) for each page ``--repeat`` times: the review page of that
server's moderator and of a host admin, the logs' first page, a page 1,000 jobs back by its
key, the logs searched for a word in every prompt and for one in a single prompt, the events,
and a user page. Prints p50 / p95 per page in ms. Goal: the review page (50 flagged images)
under 300 ms at p95 (SQLite 100,000 jobs; PostgreSQL 1,000,000).

    python benchmarks/console.py [--database sqlite|postgresql] [--history M] [--users U]
        [--flagged 60] [--repeat 100] [--json]

Absolute times depend on the machine; the goal is for the host's, quoted from a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import text

from benchmarks.history import _model, _percentile, fill, fresh_database
from generation.access import Access
from generation.moderation import Moderation
from generation.requests import Limits
from generation.service import GenerationService
from storage.db import Database
from storage.image_store import ImageStore
from web.app import WebContext, create_app
from web.oauth import DiscordOAuth
from web.sessions import SESSION_COOKIE, Login, Membership, Signer, new_csrf

GOAL_P95_MS = 300.0
MODERATOR_ROLE = 900_000_000_000_000_001
MODERATOR = 800_000_000_000_000_001
HOST = 800_000_000_000_000_002
SECRET = "b" * 40


async def _flag(db: Database, guild_id: int, count: int) -> int:
    """Hold ``count`` images of one server's jobs, spread over the year, for review."""
    async with db.engine.begin() as connection:
        ids = list(
            await connection.scalars(
                text("SELECT id FROM jobs WHERE guild_id = :g AND status = 'succeeded'"),
                {"g": guild_id},
            )
        )
        step = max(1, len(ids) // count)
        chosen = ids[::step][:count]
        await connection.execute(
            text(
                "UPDATE images SET review = 'pending', "
                """flags = '{"safety": {"FEMALE_BREAST_EXPOSED": 0.91}}' """
                'WHERE "index" = 0 AND job_id = :job'
            ),
            [{"job": job} for job in chosen],
        )
    return len(chosen)


def _app(db: Database, store: ImageStore) -> Any:
    model = _model()
    service = GenerationService(db, model, Limits())
    oauth = DiscordOAuth(
        client_id="1",
        client_secret="unused",
        redirect_uri="http://console.test/auth/callback",
        api_base="http://127.0.0.1:9",  # never asked: the sessions' roles are fresh
        authorize_base="http://127.0.0.1:9/oauth2/authorize",
        bot_token="unused",
    )
    context = WebContext(
        service=service,
        moderation=Moderation(db, store),
        store=store,
        access=Access.of([HOST], [MODERATOR_ROLE]),
        oauth=oauth,
        signer=Signer(SECRET, 7 * 86400),
        serves=lambda guild: True,
        secure=False,
        recheck_seconds=10**9,
    )
    return create_app(context)


def _cookie(user_id: int, guild_id: int | None) -> str:
    servers = {guild_id: Membership((MODERATOR_ROLE,), 0)} if guild_id else {}
    now = time.time()
    login = Login(user_id, "bench", servers, now, new_csrf(), issued_at=now)
    return Signer(SECRET, 7 * 86400).session(login)


async def _time(client: httpx.AsyncClient, path: str, cookie: str, repeat: int) -> list[float]:
    client.cookies.set(SESSION_COOKIE, cookie)
    first = await client.get(path)
    assert first.status_code == 200, (path, first.status_code, first.text[:300])
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return times


async def run(args: argparse.Namespace) -> dict[str, Any]:
    history = args.history or (1_000_000 if args.database == "postgresql" else 100_000)
    users = args.users or (10_000 if args.database == "postgresql" else 1_000)
    async with fresh_database(args.database) as where:
        db = Database(where)
        try:
            await db.upgrade()
            started = time.perf_counter()
            shape = await fill(db, _model(), queued=0, history=history, users=users)
            guild = shape.guild_id(1)
            flagged = await _flag(db, guild, args.flagged)
            print(
                f"{args.database}: {history:,} jobs ({4 * history:,} images), {users:,} users, "
                f"{flagged} flagged in one server, filled in {time.perf_counter() - started:.0f} s"
            )
            with tempfile.TemporaryDirectory(prefix="imagine-console-") as folder:
                app = _app(db, ImageStore(Path(folder)))
                moderator, host = _cookie(MODERATOR, guild), _cookie(HOST, None)
                user = shape.user_id(1)
                pages = {
                    "review (server moderator)": ("/review", moderator),
                    "review (host admin)": ("/review", host),
                    "logs, first page": ("/logs", moderator),
                    "logs, 1,000 jobs back": (f"/logs?before={history - 1000}", host),
                    "logs, a word in every prompt": ("/logs?q=circle", moderator),
                    "logs, a word in one prompt": (f"/logs?q={history // 2}", host),
                    "events": ("/logs?what=events", moderator),
                    "user page": (f"/users/{user}", moderator),
                }
                transport = httpx.ASGITransport(app=app)
                figures = {}
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://console.test"
                ) as client:
                    for name, (path, cookie) in pages.items():
                        times = await _time(client, path, cookie, args.repeat)
                        figures[name] = {
                            "p50_ms": round(_percentile(times, 0.5), 1),
                            "p95_ms": round(_percentile(times, 0.95), 1),
                        }
                        print(
                            f"  {name:32} p50 {figures[name]['p50_ms']:7.1f} ms"
                            f"   p95 {figures[name]['p95_ms']:7.1f} ms"
                        )
        finally:
            await db.close()
    review = figures["review (server moderator)"]["p95_ms"]
    verdict = "meets" if review < GOAL_P95_MS else "MISSES"
    print(f"review page p95 {review:.1f} ms: {verdict} the goal of {GOAL_P95_MS:.0f} ms")
    return {"database": args.database, "history": history, "users": users, "pages": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--history", type=int, default=0)
    parser.add_argument("--users", type=int, default=0)
    parser.add_argument("--flagged", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
