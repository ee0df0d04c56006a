"""``imagine-bot web``: the web console, served by uvicorn (its composition root: the runtime
is built here and handed to ``web.app``, which never imports the bot)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator
from types import FrameType

import click
import uvicorn
from starlette.applications import Starlette

from bot.runtime import Runtime, open_runtime
from bot.settings import Settings
from generation.access import Access
from web.app import WebContext, create_app
from web.oauth import DiscordOAuth
from web.sessions import Signer

SESSION_SECONDS = 7 * 24 * 3600
DISCORD_API = "https://discord.com/api/v10"


class ConsoleNotConfigured(click.ClickException):
    pass


def console_app(settings: Settings, runtime: Runtime) -> Starlette:
    """The console's app over an open runtime, from settings (refused, naming the setting,
    when one it needs is missing)."""
    missing = [
        name
        for name, value in (
            ("IMAGINE_WEB_CLIENT_SECRET", settings.web_client_secret),
            ("IMAGINE_WEB_SESSION_SECRET", settings.web_session_secret),
            ("IMAGINE_DISCORD_TOKEN", settings.discord_token),
        )
        if value is None
    ]
    client_id = settings.web_client_id or _application_id(settings)
    if client_id is None:
        missing.append("IMAGINE_WEB_CLIENT_ID")
    if missing:
        raise ConsoleNotConfigured(f"the web console needs {', '.join(missing)} (see .env.example)")
    assert settings.web_client_secret is not None
    assert settings.web_session_secret is not None
    assert settings.discord_token is not None
    secret = settings.web_session_secret.get_secret_value()
    if len(secret) < 32:
        raise ConsoleNotConfigured("IMAGINE_WEB_SESSION_SECRET must be 32 characters or more")
    base = settings.web_base_url.rstrip("/")
    oauth = DiscordOAuth(
        client_id=str(client_id),
        client_secret=settings.web_client_secret.get_secret_value(),
        redirect_uri=f"{base}/auth/callback",
        api_base=(settings.discord_api_base or DISCORD_API).rstrip("/"),
        authorize_base=settings.discord_oauth_url,
        bot_token=settings.discord_token.get_secret_value(),
    )

    def serves(guild_id: int) -> bool:
        return settings.open_to_all_servers or guild_id in settings.guild_ids

    context = WebContext(
        service=runtime.service,
        moderation=runtime.moderation,
        store=runtime.store,
        access=Access.of(settings.admin_user_ids, settings.admin_role_ids),
        oauth=oauth,
        signer=Signer(secret, SESSION_SECONDS),
        serves=serves,
        secure=base.startswith("https://"),
        recheck_seconds=settings.web_recheck_seconds,
        presign_seconds=settings.web_presign_seconds,
        metrics_token=(
            settings.web_metrics_token.get_secret_value() if settings.web_metrics_token else None
        ),
    )
    return create_app(context)


def _application_id(settings: Settings) -> str | None:
    """A bot token's first part is its application's id, base64 (Discord's own format)."""
    if settings.discord_token is None:
        return None
    head = settings.discord_token.get_secret_value().split(".")[0]
    try:
        decoded = base64.b64decode(head + "=" * (-len(head) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded if decoded.isdigit() else None


class ConsoleServer(uvicorn.Server):
    """Stops on SIGTERM or Ctrl-C, finishing the requests in hand, and exits 0 as the other
    processes do (uvicorn's own raises the signal again once stopped, so its process would
    end killed by it)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


@contextlib.asynccontextmanager
async def running_console(settings: Settings) -> AsyncIterator[Starlette]:
    async with open_runtime(settings, wait_for_database=True) as runtime:
        yield console_app(settings, runtime)


@click.command()
@click.option("--host", default=None, help="Address to listen on (IMAGINE_WEB_HOST).")
@click.option("--port", type=int, default=None, help="Port (IMAGINE_WEB_PORT).")
@click.pass_obj
def web(settings: Settings, host: str | None, port: int | None) -> None:
    """Serve the web console: log in with Discord; your gallery, jobs and full-size images."""
    proxies = [p.strip() for p in settings.web_trusted_proxies.split(",") if p.strip()]

    async def serve() -> None:
        async with running_console(settings) as app:
            config = uvicorn.Config(
                app,
                host=host or settings.web_host,
                port=port or settings.web_port,
                proxy_headers=bool(proxies),  # X-Forwarded-* from the listed proxies only
                forwarded_allow_ips=proxies or None,
                log_level=settings.log_level.lower(),
            )
            await ConsoleServer(config).serve()

    asyncio.run(serve())
