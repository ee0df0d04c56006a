"""Discord's OAuth2 for the console's login: the authorization code grant with PKCE and state
(https://discord.com/developers/docs/topics/oauth2), then who the user is and which servers
they are in; their roles there are read with the bot's token (the user's own token says
nothing of roles), and read again every few minutes so a demoted moderator loses access."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import urllib.parse
from typing import Any

import aiohttp

from web.sessions import Membership

SCOPES = "identify guilds"
ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = (1 << 53) - 1


class LoginFailed(Exception):
    """Discord refused or could not complete the login: said to the visitor, who may retry."""


def pkce() -> tuple[str, str]:
    """A code verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclasses.dataclass(frozen=True, slots=True)
class DiscordOAuth:
    client_id: str
    client_secret: str
    redirect_uri: str
    api_base: str  # https://discord.com/api/v10, or a compatible proxy
    authorize_base: str  # https://discord.com/oauth2/authorize
    bot_token: str | None
    timeout: float = 10.0

    def authorize_url(self, state: str, challenge: str) -> str:
        query = {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "response_type": "code",
            "scope": SCOPES,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "prompt": "none",
        }
        return f"{self.authorize_base}?{urllib.parse.urlencode(query)}"

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def exchange(self, code: str, verifier: str) -> str:
        """The user's access token for the code Discord sent back."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        # HTTP Basic with each part form-encoded first (RFC 6749 §2.3.1).
        quote = urllib.parse.quote_plus
        pair = f"{quote(self.client_id)}:{quote(self.client_secret)}"
        headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        async with self._session() as http:
            try:
                url = f"{self.api_base}/oauth2/token"
                async with http.post(url, data=form, headers=headers) as r:
                    body: Any = await r.json(content_type=None)
                    if r.status != 200 or "access_token" not in body:
                        raise LoginFailed(
                            f"Discord refused the login ({body.get('error', r.status)})"
                        )
                    return str(body["access_token"])
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                raise LoginFailed(f"Discord could not be reached ({error})") from None

    async def who(self, token: str) -> tuple[int, str, dict[int, int]]:
        """The user's id, name, and each of their servers' permission bits."""
        headers = {"Authorization": f"Bearer {token}"}
        async with self._session() as http:
            try:
                me = await _get(http, f"{self.api_base}/users/@me", headers)
                guilds = await _get(http, f"{self.api_base}/users/@me/guilds", headers)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                raise LoginFailed(f"Discord could not be reached ({error})") from None
        if me is None or guilds is None:
            raise LoginFailed("Discord did not say who you are")
        name = str(me.get("global_name") or me.get("username") or me["id"])
        servers = {int(g["id"]): int(g.get("permissions") or 0) for g in guilds}
        return int(me["id"]), name, servers

    async def membership(self, guild_id: int, user_id: int) -> Membership | None:
        """Their roles and permissions in a server now, read with the bot's token (None: no
        longer a member). Permissions as Discord computes them: @everyone's and their roles'
        together; Administrator is every permission."""
        if self.bot_token is None:
            raise LoginFailed("the console has no bot token to read roles with")
        headers = {"Authorization": f"Bot {self.bot_token}"}
        base = f"{self.api_base}/guilds/{guild_id}"
        async with self._session() as http:
            try:
                member = await _get(http, f"{base}/members/{user_id}", headers)
                if member is None:
                    return None
                guild = await _get(http, base, headers) or {}
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                raise LoginFailed(f"Discord could not be reached ({error})") from None
        held = {int(role) for role in member.get("roles", [])}
        permissions = 0
        for role in guild.get("roles", []):
            if int(role["id"]) in held or int(role["id"]) == guild_id:  # @everyone's id
                permissions |= int(role.get("permissions") or 0)
        if permissions & ADMINISTRATOR or str(guild.get("owner_id")) == str(user_id):
            permissions = ALL_PERMISSIONS
        return Membership(tuple(sorted(held)), permissions)


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    """JSON of a GET; None on 404 (an unknown member or server) or 403 (a server the bot is
    not in: Missing Access); an error for anything else."""
    async with http.get(url, headers=headers) as response:
        if response.status in (403, 404):
            return None
        if response.status != 200:
            raise LoginFailed(f"Discord answered {response.status} to {url.rsplit('/', 2)[-2:]}")
        return await response.json(content_type=None)
