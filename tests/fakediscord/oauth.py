"""The local Discord's OAuth2: the authorization code grant with PKCE, as Discord documents
it (https://discord.com/developers/docs/topics/oauth2), for the web console's login.

- ``GET /oauth2/authorize``: the browser's page. Discord shows a consent screen to whoever is
  logged in there; here ``signed_in`` is that person, and the consent is given at once (or
  refused: ``deny``). It checks the client id, the redirect URI (registered exactly), the
  scopes, ``response_type=code`` and an S256 ``code_challenge``, and redirects back with a code
  and the state, unchanged.
- ``POST /api/v10/oauth2/token``: a form (``application/x-www-form-urlencoded``), the client
  authenticated by HTTP Basic or its id and secret in the form; the code once, within ten
  minutes, for the same redirect URI, and only with the verifier whose SHA-256 is the
  challenge. Errors are OAuth2's: 400/401 with ``{"error": ...}``.
- ``GET /api/v10/users/@me`` and ``/users/@me/guilds`` with ``Authorization: Bearer``: the user,
  and the servers they are in with their permissions there (a string, as Discord sends it).
- ``GET /api/v10/guilds/{id}/members/{user}`` and ``/guilds/{id}`` with the bot's token (the
  server's routes): a member's roles (404, 10007 Unknown Member, once they left), and the
  server's owner and each role's permissions.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.fakediscord.payloads import ADMINISTRATOR, MEMBER_PERMISSIONS, FakeUser

if TYPE_CHECKING:
    from tests.fakediscord.server import FakeDiscord

CLIENT_SECRET = "fake-client-secret"
CODE_SECONDS = 600
ALL = (1 << 53) - 1  # every permission bit (Discord sends them as a decimal string)
SCOPES = {"identify", "guilds"}


@dataclasses.dataclass
class Grant:
    user_id: int
    redirect_uri: str
    challenge: str
    scopes: set[str]
    expires: float


def oauth_error(status: int, error: str, description: str = "") -> web.Response:
    body = {"error": error}
    if description:
        body["error_description"] = description
    return web.json_response(body, status=status)


class OAuth:
    """The OAuth2 side of the local Discord; its state is the server's."""

    def __init__(self, server: FakeDiscord) -> None:
        self.server = server
        self.redirect_uris: set[str] = set()  # registered in the developer portal
        self.signed_in: FakeUser | None = None  # who is logged in to Discord in the browser
        self.deny = False  # they press "Cancel" on the consent screen
        self.codes: dict[str, Grant] = {}
        self.tokens: dict[str, int] = {}  # bearer token -> user id
        self.authorized: list[dict[str, str]] = []  # each /authorize's query, as sent
        self.elsewhere: dict[int, list[int]] = {}  # user id -> servers without the bot

    @property
    def client_id(self) -> str:
        return str(self.server.application_id)

    # -- the browser's side ----------------------------------------------------------------

    async def authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorized.append(query)
        redirect = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id:
            return web.Response(status=400, text="Unknown application")
        if redirect not in self.redirect_uris:
            return web.Response(status=400, text="Invalid OAuth2 redirect_uri")
        scopes = set(query.get("scope", "").split())
        problem = None
        if query.get("response_type") != "code":
            problem = "unsupported_response_type"
        elif not scopes or not scopes <= SCOPES:
            problem = "invalid_scope"
        elif query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            problem = "invalid_request"
        elif self.signed_in is None:
            return web.Response(status=401, text="Log in to Discord to continue")
        elif self.deny:
            problem = "access_denied"
        back = {"state": query["state"]} if "state" in query else {}
        if problem is None:
            code = secrets.token_urlsafe(24)
            assert self.signed_in is not None
            self.codes[code] = Grant(
                self.signed_in.id,
                redirect,
                query["code_challenge"],
                scopes,
                time.monotonic() + CODE_SECONDS,
            )
            back["code"] = code
        else:
            back["error"] = problem
        separator = "&" if "?" in redirect else "?"
        raise web.HTTPFound(redirect + separator + urllib.parse.urlencode(back))

    # -- the API's side --------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:  # noqa: PLR0911 - OAuth2 errors
        if request.content_type != "application/x-www-form-urlencoded":
            return oauth_error(400, "invalid_request", "a form is expected")
        form = dict(await request.post())
        client_id, secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            decoded = base64.b64decode(basic[6:]).decode()
            client_id, _, secret = decoded.partition(":")
        if client_id != self.client_id or secret != CLIENT_SECRET:
            return oauth_error(401, "invalid_client")
        if form.get("grant_type") != "authorization_code":
            return oauth_error(400, "unsupported_grant_type")
        grant = self.codes.pop(str(form.get("code", "")), None)  # a code works once
        if grant is None or grant.expires < time.monotonic():
            return oauth_error(400, "invalid_grant", 'Invalid "code" in request.')
        if form.get("redirect_uri") != grant.redirect_uri:
            return oauth_error(400, "invalid_grant", 'Invalid "redirect_uri" in request.')
        verifier = str(form.get("code_verifier", ""))
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
            return oauth_error(400, "invalid_grant", 'Invalid "code_verifier".')
        token = secrets.token_urlsafe(24)
        self.tokens[token] = grant.user_id
        return web.json_response(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 604800,
                "refresh_token": secrets.token_urlsafe(24),
                "scope": " ".join(sorted(grant.scopes)),
            }
        )

    def bearer(self, request: web.Request) -> FakeUser | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        user_id = self.tokens.get(header[7:])
        return None if user_id is None else self.server.users.get(user_id)

    def guilds_of(self, user: FakeUser) -> list[int]:
        """The servers the user is in: their own, and the first for its owner."""
        server = self.server
        home = server.home.get(user.id)
        return ([home] if home is not None else []) + self.elsewhere.get(user.id, [])

    def permissions(self, user: FakeUser, guild_id: int) -> int:
        """What Discord computes for a member: its owner has every permission; anyone else,
        @everyone's (the moderators' role adds none)."""
        owner = self.server.owner if guild_id == self.server.guild_id else self.server.erin
        return ALL if user.id == owner.id else MEMBER_PERMISSIONS

    def my_guilds(self, user: FakeUser) -> list[dict[str, Any]]:
        names = {
            self.server.guild_id: "the test server",
            self.server.other_guild_id: "another server",
        }
        return [
            {
                "id": str(guild_id),
                "name": names.get(guild_id, "a server"),
                "icon": None,
                "owner": self.permissions(user, guild_id) == ALL,
                "permissions": str(self.permissions(user, guild_id)),
                "features": [],
            }
            for guild_id in self.guilds_of(user)
        ]


__all__ = ["ADMINISTRATOR", "CLIENT_SECRET", "OAuth"]
