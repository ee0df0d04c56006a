"""The web console over HTTP: logging in with Discord's OAuth2 (PKCE and state) against the
local Discord, and who sees what, route by role, decided by the bot's own access rules."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import pytest
from PIL import Image

from bot.cli_web import console_app
from bot.runtime import open_runtime
from generation.requests import GenerationRequest
from storage.models import JobKind, Review
from tests.bot.conftest import bot_settings, worker_for
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.oauth import CLIENT_SECRET
from tests.fakediscord.payloads import FakeUser
from web.sessions import SESSION_COOKIE

BASE = "http://console.test"
SCRIPT = "<script>alert(1)</script> a red circle"


@dataclasses.dataclass
class Console:
    server: LocalDiscord
    app: Any
    runtime: Any
    jobs: dict[str, int]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE)

    async def log_in(
        self, client: httpx.AsyncClient, user: FakeUser, next_path: str = "/"
    ) -> httpx.Response:
        """The browser's round trip: the console, Discord's consent page, back."""
        self.server.oauth.signed_in = user
        started = await client.get("/login", params={"next": next_path})
        assert started.status_code == 303
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(started.headers["location"], allow_redirects=False) as page,
        ):
            assert page.status == 302, await page.text()
            back = page.headers["Location"]
        assert back.startswith(f"{BASE}/auth/callback?")
        return await client.get(back[len(BASE) :])


@contextlib.asynccontextmanager
async def console_for(
    server: LocalDiscord, data: Path, engine: Any, base: str = BASE, **overrides: Any
) -> AsyncIterator[Console]:
    """A console on the local Discord at ``base``, with four jobs made (see ``asked``)."""
    settings = bot_settings(
        server,
        data,
        model="embedded-random",
        guild_ids=[server.guild_id, server.other_guild_id],
        admin_role_ids=[server.admin_role, server.other_admin_role],
        admin_user_ids=[server.host.id],
        web_base_url=base,
        web_client_id=str(server.application_id),
        web_client_secret=CLIENT_SECRET,
        web_session_secret="s" * 40,
        discord_oauth_url=f"{server.base}/oauth2/authorize",
        max_count=1,
        web_metrics_token="m" * 24,
        **overrides,
    )
    server.oauth.redirect_uris.add(f"{base}/auth/callback")
    async with open_runtime(settings) as runtime:
        service = runtime.service
        made = {}
        asked = {
            "public": (server.alice, server.guild_id, server.channel_id, False, SCRIPT),
            "private": (server.alice, server.guild_id, server.channel_id, True, "a blue square"),
            "other": (
                server.carol,
                server.other_guild_id,
                server.other_channel_id,
                False,
                "a green circle",
            ),
        }
        for name, (user, guild, channel, private, prompt) in asked.items():
            submission = await service.submit(
                GenerationRequest(
                    prompt,
                    user_id=user.id,
                    guild_id=guild,
                    channel_id=channel,
                    channel_public=True,
                    channel_nsfw=False,
                    private=private,
                    steps=2,
                    seed=3,
                )
            )
            made[name] = submission.job.id
        worker = worker_for(runtime, settings, engine)
        assert await worker.run(burst=True) == 3
        # Alice's private variation of her public job: its child, for the lineage.
        child = await service.derive(
            JobKind.VARIATION, made["public"], 0, server.alice.id, private=True
        )
        made["child"] = child.job.id
        assert await worker.run(burst=True) == 1
        yield Console(server, console_app(settings, runtime), runtime, made)


@pytest.fixture
async def console(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> AsyncIterator[Console]:
    async with console_for(local_discord, tmp_path / "data", engine) as built:
        yield built


async def test_a_visitor_is_sent_to_log_in_and_sees_nothing(console: Console) -> None:
    async with console.client() as client:
        home = await client.get("/")
        assert home.status_code == 303 and home.headers["location"] == "/login?next=%2F"
        job = await client.get(f"/jobs/{console.jobs['public']}")
        assert job.status_code == 303 and "next=%2Fjobs%2F" in job.headers["location"]
        assert (await client.get(f"/images/{console.jobs['public']}/0")).status_code == 401
        # A forged or altered session cookie is nobody.
        client.cookies.set("imagine_session", "eyJ1IjoiMSJ9.forged.signature")
        assert (await client.get("/")).status_code == 303
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"database": "ok", "store": "ok"}


async def test_login_is_pkce_and_state_and_goes_back_to_the_consoles_own_paths_only(
    console: Console,
) -> None:
    server = console.server
    async with console.client() as client:
        landed = await console.log_in(
            client, server.alice, next_path=f"/jobs/{console.jobs['public']}"
        )
        assert (
            landed.status_code == 303
            and landed.headers["location"] == f"/jobs/{console.jobs['public']}"
        )
        asked = server.oauth.authorized[-1]
        assert (asked["code_challenge_method"], asked["response_type"]) == ("S256", "code")
        assert asked["scope"] == "identify guilds" and asked["state"]
        cookie = landed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        for evil in (
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "javascript:alert(1)",
        ):
            async with console.client() as other:
                back = await console.log_in(other, server.alice, next_path=evil)
                assert back.headers["location"] == "/", evil
    # A callback whose state is not this browser's is refused.
    async with console.client() as client:
        await client.get("/login")
        refused = await client.get("/auth/callback", params={"code": "x", "state": "not-it"})
        assert refused.status_code == 400 and "Log in again" in refused.text


async def test_the_gallery_shows_a_members_own_jobs_escaped(console: Console) -> None:
    async with console.client() as client:
        await console.log_in(client, console.server.alice)
        page = await client.get("/")
        assert page.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt; a red circle" in page.text
        assert "<script>alert(1)</script>" not in page.text
        assert "a blue square" in page.text and "a green circle" not in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")


# Who may open each job's page and its image: the bot's rules (owner; moderators of its server;
# members of its server for a public job; host admins everything).
TABLE = {
    "alice": {"public", "private", "child"},
    "bob": {"public"},
    "carol": {"other"},
    "admin": {"public", "private", "child"},
    "dave": {"other"},
    "host": {"public", "private", "other", "child"},
}


@pytest.mark.parametrize("who", sorted(TABLE))
async def test_no_route_shows_a_job_to_someone_who_could_not_see_it_in_discord(
    console: Console, who: str
) -> None:
    user = getattr(console.server, who)
    async with console.client() as client:
        await console.log_in(client, user)
        for name, job_id in console.jobs.items():
            allowed = name in TABLE[who]
            page = await client.get(f"/jobs/{job_id}")
            image = await client.get(f"/images/{job_id}/0")
            thumb = await client.get(f"/images/{job_id}/0/thumb")
            expected = 200 if allowed else 404
            assert (page.status_code, image.status_code, thumb.status_code) == (expected,) * 3, (
                who,
                name,
            )
            if name == "public" and allowed:  # its private child is named only to who sees it
                named = f"/jobs/{console.jobs['child']}" in page.text
                assert named == ("child" in TABLE[who]), (who, "the lineage")
            if allowed:
                stored = console.runtime.store.get(
                    (await console.runtime.service.job(job_id)).images[0].path
                )
                assert image.content == stored, "the full-size PNG, byte for byte"
                assert thumb.headers["content-type"] == "image/webp"


# The moderators' and hosts' pages, by role (anything else answers 404, as if there were none).
PAGES = {
    "alice": set(),
    "bob": set(),
    "carol": set(),
    "admin": {"/review", "/logs", "/logs/export", "/users/alice"},
    "dave": {"/review", "/logs", "/logs/export", "/users/alice"},
    "host": {"/review", "/logs", "/logs/export", "/users/alice", "/status"},
}


@pytest.mark.parametrize("who", sorted(PAGES))
async def test_the_moderators_and_hosts_pages_answer_only_their_roles(
    console: Console, who: str
) -> None:
    server = console.server
    async with console.client() as client:
        await console.log_in(client, getattr(server, who))
        for page in ("/review", "/logs", "/logs/export", "/users/alice", "/status"):
            path = page.replace("alice", str(server.alice.id))
            answer = await client.get(path)
            assert answer.status_code == (200 if page in PAGES[who] else 404), (who, page)
            if page == "/logs/export" and page in PAGES[who]:
                other = str(console.jobs["other"]) + ","
                moderates_other = who in ("dave", "host")
                assert any(line.startswith(other) for line in answer.text.splitlines()) == (
                    moderates_other
                ), (who, "another server's job in the export")


async def test_deleting_needs_the_forms_token_and_the_right_person(console: Console) -> None:
    job = console.jobs["public"]
    async with console.client() as bob, console.client() as alice:
        await console.log_in(bob, console.server.bob)
        await console.log_in(alice, console.server.alice)
        page = await alice.get(f"/jobs/{job}")
        token = page.text.split('name="csrf" value="')[1].split('"')[0]
        refused = await alice.post(f"/jobs/{job}/delete", data={"csrf": "wrong"})
        assert refused.status_code == 403
        bobs = (await bob.get(f"/jobs/{job}")).text.split('name="csrf" value="')[1].split('"')[0]
        assert (await bob.post(f"/jobs/{job}/delete", data={"csrf": bobs})).status_code == 404
        done = await alice.post(f"/jobs/{job}/delete", data={"csrf": token})
        assert done.status_code == 303
        assert (await console.runtime.service.job(job)).job.status == "deleted"
        assert (await bob.get(f"/jobs/{job}")).status_code == 404


async def test_a_demoted_moderator_loses_access_at_the_next_look(
    local_discord: LocalDiscord,
    tmp_path: Path,
    engine: Any,
) -> None:
    server = local_discord
    # Roles are looked at again on every request here (every 5 minutes by default).
    async with (
        console_for(server, tmp_path / "data", engine, web_recheck_seconds=0) as built,
        built.client() as client,
    ):
        await built.log_in(client, server.admin)
        private = built.jobs["private"]
        assert (await client.get(f"/jobs/{private}")).status_code == 200
        server.users[server.admin.id] = dataclasses.replace(server.admin, roles=())
        assert (await client.get(f"/jobs/{private}")).status_code == 404
        # Discord away: the console sees them as a member for now, never as more.
        server.users[server.admin.id] = server.admin
        assert (await client.get(f"/jobs/{private}")).status_code == 200
        server.outage_until = float("inf")
        assert (await client.get(f"/jobs/{private}")).status_code == 404
        server.outage_until = 0.0


async def test_servers_without_the_bot_are_passed_over_and_the_cookie_stays_small(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    server.oauth.elsewhere[server.admin.id] = [111, 222, 333]  # servers the bot is not in
    async with (
        console_for(server, tmp_path / "data", engine, open_to_all_servers=True) as built,
        built.client() as client,
    ):
        landed = await built.log_in(client, server.admin)
        assert landed.status_code == 303, landed.text
        cookie = landed.headers["set-cookie"].split(";")[0]
        assert len(cookie) < 600, "only what the access rules read: moderator roles, Administrator"
        assert (await client.get(f"/jobs/{built.jobs['private']}")).status_code == 200


async def test_a_moderators_deletion_takes_the_thumbnails_with_the_images(console: Console) -> None:
    job = console.jobs["other"]
    store = console.runtime.store
    async with console.client() as host:
        await console.log_in(host, console.server.host)
        assert (await host.get(f"/images/{job}/0/thumb")).status_code == 200
        kept = (await console.runtime.service.job(job)).images
        key = f"thumbs/{job}/0-{kept[0].sha256[:16]}.webp"
        assert store.exists(key), "made once, kept"
        token = (await host.get(f"/jobs/{job}")).text.split('name="csrf" value="')[1].split('"')[0]
        assert (await host.post(f"/jobs/{job}/delete", data={"csrf": token})).status_code == 303
        assert not store.exists(key), "gone with the images"
        assert (await host.get(f"/images/{job}/0/thumb")).status_code == 404
        assert (await host.get(f"/images/{job}/0")).status_code == 404


async def test_hosts_see_the_queues_health_and_prometheus_reads_it_without_user_labels(
    console: Console,
) -> None:
    server = console.server
    waiting = await console.runtime.service.submit(
        GenerationRequest("still waiting", user_id=server.bob.id, guild_id=server.guild_id)
    )
    async with console.client() as host, console.client() as alice:
        await console.log_in(host, server.host)
        await console.log_in(alice, server.alice)
        page = await host.get("/status")
        assert page.status_code == 200
        queue = page.text.split('id="queue"')[1].split("</table>")[0]
        assert "<td>embedded-random</td><td>1</td><td>0</td>" in queue
        assert "pending 0, undeliverable 0" in page.text
        assert (await alice.get("/status")).status_code == 404
    assert waiting.job.status == "queued"

    async with console.client() as local:  # the test client comes from 127.0.0.1
        metrics = await local.get("/metrics")
        # ... but a request a proxy on this host forwarded is not local.
        proxied = await local.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.status_code == 403
    assert metrics.status_code == 200
    text = metrics.text
    assert 'imagine_jobs_waiting{model="embedded-random"} 1.0' in text
    assert 'imagine_wait_seconds{quantile="0.95"}' in text
    assert str(server.bob.id) not in text and str(server.alice.id) not in text
    remote = httpx.ASGITransport(app=console.app, client=("10.1.2.3", 5555))
    async with httpx.AsyncClient(transport=remote, base_url=BASE) as elsewhere:
        assert (await elsewhere.get("/metrics")).status_code == 403
        wrong = {"Authorization": "Bearer nope"}
        assert (await elsewhere.get("/metrics", headers=wrong)).status_code == 403
        right = {"Authorization": "Bearer " + "m" * 24}
        assert (await elsewhere.get("/metrics", headers=right)).status_code == 200


async def _flag(console: Console, name: str) -> int:
    """Hold job ``name``'s image for review, as the safety check does (the test's data)."""
    (image,) = (await console.runtime.service.job(console.jobs[name])).images
    async with console.runtime.db.uow() as uow:
        await uow.images.set_review(image.id, Review.PENDING)
        await uow.commit()
    return image.id


def _csrf(page: httpx.Response) -> str:
    return page.text.split('name="csrf" value="')[1].split('"')[0]


async def test_moderators_review_their_servers_flagged_images_blurred_and_act_in_one_click(
    console: Console,
) -> None:
    server = console.server
    mine, theirs = await _flag(console, "public"), await _flag(console, "other")
    async with console.client() as admin, console.client() as dave, console.client() as alice:
        await console.log_in(admin, server.admin)
        await console.log_in(dave, server.dave)
        await console.log_in(alice, server.alice)
        page = await admin.get("/review")
        assert page.status_code == 200
        assert f'id="image-{mine}"' in page.text and f'id="image-{theirs}"' not in page.text
        assert "&lt;script&gt;" in page.text, "the prompt, escaped"
        assert f'id="image-{theirs}"' in (await dave.get("/review")).text
        assert (await alice.get("/review")).status_code == 404
        public = console.jobs["public"]
        # Blurred for the review; the clear image only when opened; neither to its owner now.
        blurred = await admin.get(f"/images/{public}/0/blurred")
        clear = await admin.get(f"/images/{public}/0/thumb")
        assert blurred.status_code == clear.status_code == 200
        spread = np.asarray(Image.open(io.BytesIO(blurred.content)).convert("L"), dtype=float).std()
        sharp = np.asarray(Image.open(io.BytesIO(clear.content)).convert("L"), dtype=float).std()
        assert spread < sharp / 2, (spread, sharp)
        assert (await alice.get(f"/images/{public}/0")).status_code == 404
        assert (await alice.get(f"/images/{public}/0/blurred")).status_code == 404

        token = _csrf(page)
        assert (
            await admin.post("/review/act", data={"csrf": "x", "one": f"approve:{mine}"})
        ).status_code == 403
        # Another server's image is not theirs to judge, whatever the form says.
        forged = await admin.post("/review/act", data={"csrf": token, "one": f"approve:{theirs}"})
        assert forged.headers["location"] == "/review?done=0&what=approve"
        done = await admin.post("/review/act", data={"csrf": token, "one": f"approve:{mine}"})
        assert done.headers["location"] == "/review?done=1&what=approve"
        assert "1 approved." in (await admin.get(done.headers["location"])).text
        again = await admin.post("/review/act", data={"csrf": token, "one": f"approve:{mine}"})
        assert again.headers["location"] == "/review?done=0&what=approve", "judged once"
        said = await admin.get("/review", params={"done": "log in at evil.example", "what": "x"})
        assert "evil.example" not in said.text
        events = await console.runtime.moderation.events(target_user_id=server.alice.id)
        assert [e.kind for e in events if e.actor_id == server.admin.id] == ["image_approved"]
        assert (await alice.get(f"/images/{public}/0")).status_code == 200, "approved: shown"

        # dave bans carol in his server, then deletes in bulk.
        dave_token = _csrf(await dave.get("/review"))
        banned = await dave.post("/review/act", data={"csrf": dave_token, "one": f"ban:{theirs}"})
        assert banned.headers["location"] == "/review?done=1&what=ban"
        async with console.runtime.db.uow() as uow:
            assert await uow.users.guild_ban(server.other_guild_id, server.carol.id) is not None
        bulk = await dave.post(
            "/review/act", data={"csrf": dave_token, "action": "delete", "selected": [str(theirs)]}
        )
        assert bulk.headers["location"] == "/review?done=1&what=delete"
        assert (await console.runtime.service.job(console.jobs["other"])).job.status == "deleted"
        assert f'id="image-{theirs}"' not in (await dave.get("/review")).text


async def test_a_job_deleted_in_the_console_leaves_discord_too(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    from tests.bot.conftest import running_bot

    server = local_discord
    settings = bot_settings(
        server,
        tmp_path / "data",
        model="embedded-random",
        max_count=1,
        delivery_sweep_interval=0.2,
        web_base_url=BASE,
        web_client_id=str(server.application_id),
        web_client_secret=CLIENT_SECRET,
        web_session_secret="s" * 40,
        discord_oauth_url=f"{server.base}/oauth2/authorize",
    )
    server.oauth.redirect_uris.add(f"{BASE}/auth/callback")
    async with running_bot(settings, engine) as running:
        result = await server.wait_for_result(
            await server.invoke("imagine", server.alice, prompt="a red circle", seed=2, steps=2)
        )
        job_id = (await running.runtime.service.recent(user_id=server.alice.id, limit=1))[0].job.id
        console = Console(server, console_app(settings, running.runtime), running.runtime, {})
        async with console.client() as alice:
            await console.log_in(alice, server.alice)
            token = _csrf(await alice.get(f"/jobs/{job_id}"))
            assert (
                await alice.post(f"/jobs/{job_id}/delete", data={"csrf": token})
            ).status_code == 303
        await server.wait_for(
            lambda: int(result["id"]) in server.deleted, what="the result gone from Discord"
        )
        delivery = (await running.runtime.service.job(job_id)).delivery
        assert delivery is not None and delivery.state == "withdrawn"


async def test_logs_filter_search_and_export_only_the_servers_a_moderator_moderates(
    console: Console,
) -> None:
    server = console.server
    public, other = console.jobs["public"], console.jobs["other"]
    async with console.client() as admin, console.client() as host, console.client() as bob:
        await console.log_in(admin, server.admin)
        await console.log_in(host, server.host)
        await console.log_in(bob, server.bob)
        assert (await bob.get("/logs")).status_code == 404, "members read no logs"
        assert (await bob.get("/logs/export")).status_code == 404
        async with console.runtime.db.uow() as uow:  # the name the bot last saw
            await uow.users.ensure(server.alice.id, "<i>alice</i>")
            await uow.commit()
        page = await admin.get("/logs")
        assert page.status_code == 200
        assert f'id="job-{public}"' in page.text and f'id="job-{other}"' not in page.text
        assert f'href="/users/{server.alice.id}">&lt;i&gt;alice&lt;/i&gt;</a>' in page.text
        assert "&lt;script&gt;" in page.text and "<script>alert" not in page.text
        # Another server's logs are not theirs, whatever the query string says.
        forged = await admin.get("/logs", params={"server": server.other_guild_id})
        assert forged.status_code == 404
        assert (
            await admin.get("/logs/export", params={"server": server.other_guild_id})
        ).status_code == 404
        everywhere = (await host.get("/logs")).text
        assert f'id="job-{public}"' in everywhere and f'id="job-{other}"' in everywhere
        found = (await host.get("/logs", params={"q": "circ"})).text
        assert f'id="job-{public}"' in found and f'id="job-{other}"' in found
        assert f'id="job-{console.jobs["private"]}"' not in found, "a blue square"
        narrowed = await host.get("/logs", params={"q": "red circle", "status": "succeeded"})
        assert f'id="job-{public}"' in narrowed.text and f'id="job-{other}"' not in narrowed.text
        bad = await host.get("/logs", params={"since": "yesterday"})
        assert bad.status_code == 400 and "since: a date" in bad.text
        assert (await host.get("/logs", params={"status": "nope"})).status_code == 400

        csv_export = await admin.get("/logs/export", params={"format": "csv"})
        assert csv_export.status_code == 200
        assert "attachment" in csv_export.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(csv_export.text)))
        assert sorted(int(r["id"]) for r in rows) == sorted(
            console.jobs[n] for n in ("public", "private", "child")
        )
        lines = (await host.get("/logs/export", params={"format": "jsonl", "q": "green"})).text
        assert [json.loads(line)["id"] for line in lines.splitlines()] == [other]


async def test_exported_text_is_never_a_spreadsheet_formula(console: Console) -> None:
    server = console.server
    formula = '=HYPERLINK("http://evil.example","click")'
    await console.runtime.service.submit(
        GenerationRequest(formula, user_id=server.alice.id, guild_id=server.guild_id)
    )
    async with console.client() as admin:
        await console.log_in(admin, server.admin)
        text = (await admin.get("/logs/export", params={"format": "csv", "q": "hyperlink"})).text
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["prompt"] == "'" + formula


async def test_a_user_page_shows_and_changes_their_standing_in_the_moderators_servers(
    console: Console,
) -> None:
    server = console.server
    alice = server.alice.id
    async with console.client() as admin, console.client() as host, console.client() as bob:
        await console.log_in(admin, server.admin)
        await console.log_in(host, server.host)
        await console.log_in(bob, server.bob)
        assert (await bob.get(f"/users/{alice}")).status_code == 404
        page = await admin.get(f"/users/{alice}")
        assert page.status_code == 200 and "0 strike(s)" in page.text
        assert f"/jobs/{console.jobs['public']}" in page.text
        token = _csrf(page)
        act = f"/users/{alice}/act"
        common = {"csrf": token, "server": str(server.guild_id)}
        assert (
            await admin.post(act, data={**common, "csrf": "x", "action": "strike"})
        ).status_code == 403
        # Not in a server of theirs; not host-wide; no limits: those are the host's.
        for forged in (
            {**common, "action": "ban", "server": str(server.other_guild_id)},
            {**common, "action": "ban", "server": ""},
            {**common, "action": "limits", "weight": "9"},
        ):
            assert (await admin.post(act, data=forged)).status_code == 404, forged
        struck = await admin.post(act, data={**common, "action": "strike", "reason": "<b>spam</b>"})
        assert struck.headers["location"] == f"/users/{alice}?done=strike"
        bad = await admin.post(act, data={**common, "action": "ban", "duration": "soon"})
        assert bad.status_code == 400 and "duration" in bad.text
        banned = await admin.post(act, data={**common, "action": "ban", "duration": "2d"})
        assert banned.status_code == 303
        after = (await admin.get(f"/users/{alice}")).text
        assert "1 strike(s)" in after and f"Banned in server {server.guild_id}" in after
        assert "&lt;b&gt;spam&lt;/b&gt;" in after
        limits = {"csrf": _csrf(await host.get(f"/users/{alice}")), "action": "limits"}
        assert (await host.post(act, data={**limits, "weight": "2.5"})).status_code == 303
        assert "Weight 2.5" in (await host.get(f"/users/{alice}")).text
    kinds = [
        (e.kind, e.actor_id)
        for e in reversed(await console.runtime.moderation.events(target_user_id=alice))
    ]
    assert kinds == [
        ("strike", server.admin.id),
        ("ban", server.admin.id),
        ("quota", server.host.id),
    ]


async def test_a_strike_from_the_review_counts_in_the_images_server(console: Console) -> None:
    server = console.server
    image = await _flag(console, "public")
    async with console.client() as admin:
        await console.log_in(admin, server.admin)
        token = _csrf(await admin.get("/review"))
        done = await admin.post("/review/act", data={"csrf": token, "one": f"strike:{image}"})
        assert done.headers["location"] == "/review?done=1&what=strike"
        events = (await admin.get("/logs", params={"what": "events", "kind": "strike"})).text
        assert f"/jobs/{console.jobs['public']}" in events
    standing = await console.runtime.moderation.standing(server.alice.id, [server.guild_id])
    assert standing.strikes == 1
    assert (
        await console.runtime.moderation.standing(server.alice.id, [server.other_guild_id])
    ).strikes == 0


async def test_the_owner_toggles_private_and_deletes_a_job_with_everything_made_from_it(
    console: Console,
) -> None:
    server = console.server
    public, child = console.jobs["public"], console.jobs["child"]
    async with console.client() as alice, console.client() as bob:
        await console.log_in(alice, server.alice)
        await console.log_in(bob, server.bob)
        page = await alice.get(f"/jobs/{child}")
        assert "everything made from it" not in page.text, "nothing is made from the child"
        assert "everything made from it" in (await alice.get(f"/jobs/{public}")).text
        lineage = page.text.split('class="lineage"')[1].split("</ul>")[0]
        assert f'href="/jobs/{public}"' in lineage and f"<strong>job {child}</strong>" in lineage
        token = _csrf(page)
        # bob may not change alice's job, even one he can see.
        bobs = _csrf(await bob.get(f"/jobs/{public}"))
        assert (
            await bob.post(f"/jobs/{public}/private", data={"csrf": bobs, "private": "1"})
        ).status_code == 404
        made = await alice.post(f"/jobs/{public}/private", data={"csrf": token, "private": "1"})
        assert made.headers["location"] == f"/jobs/{public}?done=private"
        assert (await bob.get(f"/jobs/{public}")).status_code == 404, "private now"
        await alice.post(f"/jobs/{public}/private", data={"csrf": token, "private": "0"})
        assert (await bob.get(f"/jobs/{public}")).status_code == 200
        gone = await alice.post(f"/jobs/{public}/delete", data={"csrf": token, "tree": "1"})
        assert gone.status_code == 303
    for job_id in (public, child):
        assert (await console.runtime.service.job(job_id)).job.status == "deleted"
    assert (await console.runtime.service.job(console.jobs["private"])).job.status == "succeeded"


async def test_odd_numbers_and_dates_are_refused_never_an_error(console: Console) -> None:
    server = console.server
    huge = "9" * 20
    async with console.client() as host:
        await console.log_in(host, server.host)
        for params, field in (
            ({"user": "²"}, "user"),
            ({"user": huge}, "user"),
            ({"until": "9999-12-31"}, "until"),
            ({"since": "0001-01-01"}, "since"),
        ):
            refused = await host.get("/logs", params=params)
            assert refused.status_code == 400 and f"{field}:" in refused.text, params
        # A key past every row is the last row: the first page.
        assert (await host.get("/logs", params={"before": "3" * 12})).status_code == 200
        for path in (f"/users/{huge}", "/jobs/3000000000", f"/images/{huge}/0"):
            assert (await host.get(path)).status_code in (401, 404), path
        token = _csrf(await host.get("/review"))
        acted = await host.post("/review/act", data={"csrf": token, "one": f"approve:{huge}"})
        assert acted.headers["location"] == "/review?done=0&what=approve"


async def test_a_servers_moderator_does_not_see_the_hosts_side_of_a_user(
    console: Console,
) -> None:
    server = console.server
    await console.runtime.moderation.ban(server.host.id, server.alice.id, reason="host-wide")
    async with console.client() as admin, console.client() as host:
        await console.log_in(admin, server.admin)
        await console.log_in(host, server.host)
        theirs = (await admin.get(f"/users/{server.alice.id}")).text
        hosts = (await host.get(f"/users/{server.alice.id}")).text
    assert "host-wide" not in theirs and "images today" not in theirs
    assert "Banned on every server" in hosts and "images today" in hosts


async def test_an_object_stores_images_go_out_presigned_once_authorised(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any, s3_options: dict[str, str]
) -> None:
    server = local_discord
    store = {"image_store": "s3://imagine/console", "image_store_options": s3_options}
    async with (
        console_for(server, tmp_path / "data", engine, **store) as built,
        built.client() as alice,
        built.client() as carol,
    ):
        await built.log_in(alice, server.alice)
        await built.log_in(carol, server.carol)
        job = built.jobs["private"]
        assert (await carol.get(f"/images/{job}/0")).status_code == 404, "authorised first"
        sent = await alice.get(f"/images/{job}/0", params={"download": "1"})
        assert sent.status_code == 303 and sent.headers["cache-control"] == "no-store"
        url = sent.headers["location"]
        assert url.startswith(s3_options["endpoint_url"]) and "Signature=" in url
        async with httpx.AsyncClient() as browser:
            fetched = await browser.get(url)
        (image,) = (await built.runtime.service.job(job)).images
        assert fetched.content == built.runtime.store.get(image.path)
        assert f'filename="job-{job}-1.png"' in fetched.headers["content-disposition"]
        thumb = await alice.get(f"/images/{job}/0/thumb")  # thumbnails: through the console
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"


async def test_logging_out_ends_every_copy_of_the_session(console: Console) -> None:
    server = console.server
    async with console.client() as browser, console.client() as thief:
        await console.log_in(browser, server.alice)
        thief.cookies.set(SESSION_COOKIE, browser.cookies[SESSION_COOKIE])  # a copied cookie
        assert (await thief.get("/")).status_code == 200
        token = _csrf(await browser.get("/"))
        out = await browser.post("/logout", data={"csrf": token})
        assert out.status_code == 303
        assert (await thief.get("/")).status_code == 303, "the copy is nobody now"
        assert (await thief.get(f"/images/{console.jobs['public']}/0")).status_code == 401
        await console.log_in(browser, server.alice)  # a new login is a new session
        assert (await browser.get("/")).status_code == 200

        async def away(user_id: int) -> None:
            raise ConnectionError("the database is away")

        service = console.runtime.service
        service.sign_out = away  # type: ignore[method-assign]
        token = _csrf(await browser.get("/"))
        failed = await browser.post("/logout", data={"csrf": token})
        assert failed.status_code == 503 and "Log in and out again later" in failed.text
        assert "max-age=0" in failed.headers["set-cookie"].lower(), "this browser's cookie goes"
