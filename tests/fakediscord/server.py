"""A local Discord: the gateway and the REST routes imagine-bot calls, on 127.0.0.1.

The real discord.py client connects to it. It keeps messages as Discord would, records
every request, can inject 429s, 5xx, dropped gateway connections and expired interaction
tokens, and answers any route it does not implement with a 404 that it records, so a test
fails at teardown instead of passing silently. It is as strict as Discord: the limits of
``rules`` (content, embeds, components, nonces, files), the 3 s first response, the bot token on
every bot route.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakediscord import rules
from tests.fakediscord.oauth import OAuth
from tests.fakediscord.payloads import (
    ADMINISTRATOR,
    FORUM,
    MEMBER_PERMISSIONS,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    TEXT,
    FakeUser,
    dm_channel,
    message,
    role,
    snowflake,
    text_channel,
    thread_channel,
    timestamp,
)

TOKEN = "fake-bot-token"
# Routes authorised by the interaction token in their path; every other route needs the bot's.
TOKEN_ROUTE = re.compile(r"^/api/v10/(interactions/\d+/[^/]+/callback|webhooks/\d+/[^/]+)")
EPHEMERAL = 1 << 6
LOADING = 1 << 7
TOKEN_LIFETIME = 15 * 60

Handler = Callable[[web.Request, "Call", re.Match[str]], Awaitable[web.Response]]


def json_response(data: Any, status: int = 200, **headers: str) -> web.Response:
    # discord.py wants exactly "application/json": aiohttp's json_response adds a charset.
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **headers},
    )


def api_error(
    status: int, code: int, text: str, errors: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {"message": text, "code": code}
    if errors:
        body["errors"] = errors
    return json_response(body, status)


class ApiError(Exception):
    """Raised by a route handler: answered as Discord's JSON error."""

    def __init__(
        self, status: int, code: int, text: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(text)
        self.response = api_error(status, code, text, errors)


def invalid_form(errors: rules.FormErrors) -> ApiError:
    return ApiError(400, 50035, "Invalid Form Body", errors.tree)


TOO_LARGE = (413, 40005, "Request entity too large")


@dataclasses.dataclass
class Call:
    """One REST request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[tuple[str, bytes]]
    status: int = 0
    at: float = dataclasses.field(default_factory=time.monotonic)  # when it arrived


@dataclasses.dataclass
class Injection:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: float


@dataclasses.dataclass
class Interaction:
    id: int
    token: str
    type: int
    user: FakeUser
    channel_id: int
    created: float
    attachment_size_limit: int = rules.DEFAULT_FILE_LIMIT
    sent_at: float | None = None  # time.monotonic() when its INTERACTION_CREATE went out
    message_id: int | None = None  # the message a component sits on
    callback_type: int | None = None
    original_id: int | None = None
    expired: bool = False
    refused: bool = False  # the token answers 401 although it has not expired
    answered: float | None = None  # time.monotonic() when the callback arrived
    modal: dict[str, Any] | None = None  # the modal it was answered with (response type 9)

    def alive(self) -> bool:
        return not self.expired and time.monotonic() - self.created < TOKEN_LIFETIME


class FakeDiscord:
    """``async with FakeDiscord() as discord: ...``; ``discord.base`` is its URL."""

    def __init__(self) -> None:
        self.application_id = snowflake()
        self.bot = FakeUser(snowflake(), "imagine-bot", bot=True)
        self.guild_id = snowflake()
        self.admin_role = snowflake()
        self.channel_id = snowflake()
        self.alice = FakeUser(snowflake(), "alice")
        self.bob = FakeUser(snowflake(), "bob")
        self.admin = FakeUser(snowflake(), "moderator", roles=(self.admin_role,))
        self.owner = FakeUser(snowflake(), "owner", permissions=ADMINISTRATOR)
        self.users = {u.id: u for u in (self.bot, self.alice, self.bob, self.admin, self.owner)}
        # A second server on the same bot, with its own members, moderator role and channel:
        # carol is a member, dave holds its moderator role, erin is its Administrator.
        self.other_guild_id = snowflake()
        self.other_admin_role = snowflake()
        self.other_channel_id = snowflake()
        self.carol = FakeUser(snowflake(), "carol")
        self.dave = FakeUser(snowflake(), "dave", roles=(self.other_admin_role,))
        self.erin = FakeUser(snowflake(), "erin", permissions=ADMINISTRATOR)
        # The host's own account (a test lists it in IMAGINE_ADMIN_USER_IDS), in the first server.
        self.host = FakeUser(snowflake(), "host")
        for user in (self.carol, self.dave, self.erin, self.host):
            self.users[user.id] = user
        # Which server each channel is in, and each user's own server (the bot is in both).
        self.channel_guilds = {
            self.channel_id: self.guild_id,
            self.other_channel_id: self.other_guild_id,
        }
        # Every guild channel as Discord describes it (threads and forum posts included).
        self.channels: dict[int, dict[str, Any]] = {
            self.channel_id: text_channel(self.channel_id, self.guild_id, "imagine"),
            self.other_channel_id: text_channel(
                self.other_channel_id, self.other_guild_id, "imagine"
            ),
        }
        # Who may use a command whose default_member_permissions they lack: the roles and
        # members a server's owner allowed in Server Settings → Integrations (the guild's id
        # is @everyone), by (guild, command). Here: each server's moderator role, and the
        # host's own account in the first server.
        self.command_roles: dict[tuple[int, str], set[int]] = {
            (self.guild_id, "admin"): {self.admin_role, self.host.id},
            (self.other_guild_id, "admin"): {self.other_admin_role},
        }
        self.home = {user.id: self.guild_id for user in self.users.values()}
        self.home.update({u.id: self.other_guild_id for u in (self.carol, self.dave, self.erin)})
        self.messages: dict[int, dict[str, Any]] = {}
        self.deleted: list[int] = []
        self.edits: list[tuple[int, dict[str, Any]]] = []
        self.calls: list[Call] = []
        self.unknown: list[str] = []
        self.callbacks: list[tuple[int, int, dict[str, Any]]] = []  # interaction id, type, body
        self.interactions: dict[str, Interaction] = {}
        self.commands: dict[str, dict[str, Any]] = {}
        self.synced: list[int | None] = []  # the guild (None: global) of each command sync
        self.files: dict[int, tuple[str, bytes]] = {}
        self.dm_channels: dict[int, int] = {}  # channel id -> user id
        # Discord returns the first message for a repeated nonce of the same author, for a few
        # minutes: (author id, nonce) -> (message id, time.monotonic() when made).
        self.nonces: dict[tuple[int, str], tuple[int, float]] = {}
        self.nonce_window = 300.0
        # The first response to an interaction must come this soon after it was sent, else
        # 10062; None switches the rule off for a test that needs to.
        self.response_deadline: float | None = 3.0
        # What uploads may weigh: each interaction says its own; a server without boosts and
        # a DM take 10 MiB.
        self.attachment_size_limit = rules.DEFAULT_FILE_LIMIT
        self.premium_tier = 0  # no boosts: 10 MiB files in its channels
        self.injections: list[Injection] = []
        # Discord away: until this time.monotonic(), every REST route answers 503.
        self.outage_until = 0.0
        self.forbidden_channels: set[int] = set()  # the bot lost Send Messages there
        self.deleted_channels: set[int] = set()
        self.closed_dms: set[int] = set()  # users who take no DMs from the server's members
        self.identifies = 0
        self.resumes = 0
        self.frames: list[dict[str, Any]] = []
        self._session_id = ""
        self._sequence = 0
        self._dispatched: list[dict[str, Any]] = []
        self._socket: web.WebSocketResponse | None = None
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base = ""
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.oauth = OAuth(self)  # the web console's login (tests.fakediscord.oauth)
        self._route_table()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/oauth2/authorize", self.oauth.authorize)  # a browser's page
        app.router.add_route("*", "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"{self.base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"{self.base.replace('http', 'ws', 1)}/gateway"

    # -- injection -------------------------------------------------------------------------

    def inject(
        self, method: str, path: str, status: int = 429, *, times: int = 1, retry_after: float = 0.2
    ) -> None:
        """Answer the next ``times`` requests matching ``path`` (a regex) with ``status``."""
        self.injections.append(Injection(method, re.compile(path), status, times, retry_after))

    def outage(self, seconds: float) -> None:
        """Discord is away for ``seconds``: every REST route answers 503, as its edge does."""
        self.outage_until = time.monotonic() + seconds

    @property
    def away(self) -> bool:
        return time.monotonic() < self.outage_until

    def forbid(self, channel_id: int) -> None:
        """The bot loses Send Messages in the channel: posts there answer 403/50013. (An
        interaction's own response is not a channel post, and still works.)"""
        self.forbidden_channels.add(channel_id)

    def delete_channel(self, channel_id: int) -> None:
        """The channel is deleted, with its messages: its routes answer 404/10003, and the
        responses of interactions made there are gone (10008)."""
        self.deleted_channels.add(channel_id)
        for message_id, stored in list(self.messages.items()):
            if int(stored["channel_id"]) == channel_id:
                self._remove(message_id)

    def close_dms(self, user: FakeUser) -> None:
        """The member takes no direct messages from the server's members: 403/50007."""
        self.closed_dms.add(user.id)

    def expire(self, interaction: Interaction, *, refused: bool = False) -> None:
        """Make an interaction's token dead: expired (15 minutes passed) or refused (401)."""
        interaction.expired = not refused
        interaction.refused = refused

    async def drop_gateway(self) -> None:
        """Close the gateway connection with 4000, as Discord does; the client resumes."""
        if self._socket is not None:
            await self._socket.close(code=4000, message=b"dropped by the test")

    # -- gateway ---------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        async for frame in socket:
            if frame.type is not WSMsgType.TEXT:
                continue
            data = json.loads(frame.data)
            self.frames.append(data)
            op = data["op"]
            if op == 1:
                await socket.send_json({"op": 11, "d": None, "s": None, "t": None})
            elif op == 2:
                if data["d"]["token"] != TOKEN:
                    await socket.close(code=4004, message=b"Authentication failed.")
                    break
                self.identifies += 1
                self._socket = socket
                self._session_id = secrets.token_hex(8)
                self._sequence = 0
                self._dispatched.clear()
                await self.dispatch("READY", self._ready())
                await self.dispatch("GUILD_CREATE", self._guild())
                await self.dispatch("GUILD_CREATE", self._other_guild())
            elif op == 6:
                if data["d"]["session_id"] != self._session_id:
                    await socket.send_json({"op": 9, "d": False, "s": None, "t": None})
                    continue
                self.resumes += 1
                self._socket = socket
                seen = data["d"]["seq"] or 0
                for missed in [d for d in self._dispatched if d["s"] > seen]:
                    await socket.send_json(missed)
                    self._sent(missed)
                await self.dispatch("RESUMED", {})
        if self._socket is socket:
            self._socket = None
        return socket

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a dispatch; one sent while disconnected is replayed on RESUME."""
        self._sequence += 1
        payload = {"op": 0, "t": event, "s": self._sequence, "d": data}
        self._dispatched.append(payload)
        if self._socket is not None and not self._socket.closed:
            await self._socket.send_json(payload)
            self._sent(payload)

    def _sent(self, payload: dict[str, Any]) -> None:
        """An interaction's 3 s start when it goes out (a replay on RESUME, if it waited)."""
        if payload["t"] != "INTERACTION_CREATE":
            return
        interaction = self.interactions.get(payload["d"]["token"])
        if interaction is not None and interaction.sent_at is None:
            interaction.sent_at = time.monotonic()

    def _ready(self) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self.bot.payload(),
            "guilds": [
                {"id": str(guild_id), "unavailable": True}
                for guild_id in (self.guild_id, self.other_guild_id)
            ],
            "session_id": self._session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }

    def _guild(self) -> dict[str, Any]:
        return self._guild_payload(
            self.guild_id, "the test server", self.owner, self.admin_role, self.channel_id
        )

    def _other_guild(self) -> dict[str, Any]:
        return self._guild_payload(
            self.other_guild_id,
            "another server",
            self.erin,
            self.other_admin_role,
            self.other_channel_id,
        )

    def add_member(self, name: str, guild_id: int | None = None) -> FakeUser:
        """A new member of a server (the first by default)."""
        user = FakeUser(snowflake(), name)
        self.users[user.id] = user
        self.home[user.id] = guild_id or self.guild_id
        return user

    def add_channel(
        self,
        guild_id: int | None = None,
        *,
        kind: str = "text",
        nsfw: bool = False,
        private: bool = False,
        parent_id: int | None = None,
    ) -> int:
        """A new channel of a server (the first by default), made before the bot connects
        (GUILD_CREATE carries it): ``kind`` text, thread (under ``parent_id``, else the
        server's first channel) or forum_post (in a new forum, or the forum ``parent_id``).
        ``nsfw`` marks a text channel or forum age-restricted (a thread takes its parent's);
        ``private``: @everyone may not view it (a private thread, for a thread)."""
        guild_id = guild_id or self.guild_id
        channel_id = snowflake()
        if kind == "text":
            channel = text_channel(channel_id, guild_id, "more", nsfw=nsfw, private=private)
        elif kind in ("thread", "forum_post"):
            if parent_id is None:
                if kind == "thread":
                    parent_id = next(c for c, g in self.channel_guilds.items() if g == guild_id)
                else:
                    parent_id = self.add_channel(guild_id, kind="forum", nsfw=nsfw)
            owner = self.bot.id
            channel = thread_channel(
                channel_id, guild_id, parent_id, owner, kind, private=private and kind == "thread"
            )
        elif kind == "forum":
            channel = text_channel(channel_id, guild_id, "forum", nsfw=nsfw, kind=FORUM)
        else:
            raise ValueError(f"no channel kind {kind!r}")
        self.channels[channel_id] = channel
        self.channel_guilds[channel_id] = guild_id
        return channel_id

    def channel_payload(self, channel_id: int) -> dict[str, Any]:
        return self.channels[channel_id]

    def members_of(self, guild_id: int) -> list[FakeUser]:
        return [
            user for user in self.users.values() if user.bot or self.home.get(user.id) == guild_id
        ]

    def _guild_payload(
        self, guild_id: int, name: str, owner: FakeUser, admin_role: int, channel_id: int
    ) -> dict[str, Any]:
        members = [user.member() for user in self.members_of(guild_id)]
        return {
            "id": str(guild_id),
            "name": name,
            "owner_id": str(owner.id),
            "roles": [
                # What every member may do unless a channel says otherwise, as a new server's.
                role(guild_id, "@everyone", MEMBER_PERMISSIONS, 0),
                role(admin_role, "moderators", 0, 1),
            ],
            "channels": [
                c
                for c in self.channels.values()
                if c["guild_id"] == str(guild_id) and c["type"] in (TEXT, FORUM)
            ],
            "members": members,
            "member_count": len(members),
            "emojis": [],
            "stickers": [],
            "features": [],
            "threads": [
                c
                for c in self.channels.values()
                if c["guild_id"] == str(guild_id) and c["type"] in (PUBLIC_THREAD, PRIVATE_THREAD)
            ],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "voice_states": [],
            "presences": [],
            "large": False,
            "unavailable": False,
            "verification_level": 0,
            "mfa_level": 0,
            "premium_tier": self.premium_tier,
            "joined_at": timestamp(),
        }

    # -- REST plumbing ---------------------------------------------------------------------

    def _route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(f"^/api/v10{pattern}$"), handler))

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/cdn/"):
            return self._cdn(request)
        call = await self._read(request)
        self.calls.append(call)
        if (
            not TOKEN_ROUTE.match(request.path)
            and not self._user_route(request)
            and (request.headers.get("Authorization") != f"Bot {TOKEN}")
        ):
            call.status = 401
            return api_error(401, 0, "401: Unauthorized")
        if self.away:
            call.status = 503
            # Discord's edge, not its API, answers: plain text, no JSON error.
            return web.Response(
                status=503, text="upstream connect error or disconnect/reset before headers"
            )
        for injection in self.injections:
            if (
                injection.times > 0
                and injection.method == request.method
                and injection.pattern.search(request.path)
            ):
                injection.times -= 1
                call.status = injection.status
                return self._injected(injection)
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match and method == request.method:
                try:
                    response = await handler(request, call, match)
                except ApiError as error:
                    response = error.response
                call.status = response.status
                async with self._changed:
                    self._changed.notify_all()
                return response
        self.unknown.append(f"{request.method} {request.path}")
        call.status = 404
        return api_error(404, 0, f"the local Discord does not implement {request.path}")

    def _user_route(self, request: web.Request) -> bool:
        """OAuth2's routes: the token exchange (the client authenticates in its form), and a
        user's own with their bearer token (an unknown one is refused as Discord does)."""
        if request.path == "/api/v10/oauth2/token":
            return True
        bearer = request.headers.get("Authorization", "").startswith("Bearer ")
        return bearer and request.path in ("/api/v10/users/@me", "/api/v10/users/@me/guilds")

    @staticmethod
    def _injected(injection: Injection) -> web.Response:
        if injection.status == 429:
            return json_response(
                {
                    "message": "You are being rate limited.",
                    "retry_after": injection.retry_after,
                    "global": False,
                },
                429,
                Via="1.1 google",
            )
        return api_error(injection.status, 0, "injected failure")

    @staticmethod
    async def _read(request: web.Request) -> Call:
        body: Any = None
        files: list[tuple[str, bytes]] = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    data = await part.read()  # type: ignore[union-attr]
                    files.append((part.filename or "", bytes(data)))  # type: ignore[union-attr]
        elif request.content_type == "application/x-www-form-urlencoded":  # OAuth2's token
            body = dict(urllib.parse.parse_qsl((await request.read()).decode()))
        elif request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        return Call(request.method, request.path, dict(request.query), body, files)

    def _cdn(self, request: web.Request) -> web.Response:
        attachment_id = int(request.path.split("/")[2])
        if attachment_id not in self.files:
            return web.Response(status=404)
        name, data = self.files[attachment_id]
        kind = "image/png" if name.endswith(".png") else "application/octet-stream"
        return web.Response(body=data, content_type=kind)

    def upload(self, name: str, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
        """A file as a user's attachment: its payload, with bytes served by the CDN route."""
        attachment_id = snowflake()
        self.files[attachment_id] = (name, data)
        url = f"{self.base}/cdn/{attachment_id}/{name}"
        return {
            "id": str(attachment_id),
            "filename": name,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    def _attachments(self, call: Call, kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
        listed = (call.json or {}).get("attachments")
        if listed is None:
            new = [{"id": index, "filename": name} for index, (name, _) in enumerate(call.files)]
            listed = [*kept, *new]
        result = []
        existing = {a["id"]: a for a in kept}
        for entry in listed:
            if str(entry["id"]) in existing:
                result.append(existing[str(entry["id"])])
                continue
            name, data = call.files[int(entry["id"])]
            result.append(self.upload(entry.get("filename") or name, data))
        return result

    # -- the routes ------------------------------------------------------------------------

    def _route_table(self) -> None:
        snow = r"(?P<{}>\d+)"
        self._route("GET", "/users/@me", self._me)
        self._route("GET", "/users/@me/guilds", self._my_guilds)
        self._route("POST", "/oauth2/token", self._token)
        self._route("GET", r"/guilds/(?P<guild>\d+)/members/(?P<user>\d+)", self._member)
        self._route("GET", r"/guilds/(?P<guild>\d+)", self._get_guild)
        self._route("GET", "/oauth2/applications/@me", self._application)
        self._route("GET", "/users/" + snow.format("user"), self._user)
        self._route("PUT", r"/applications/\d+/commands", self._sync)
        self._route("PUT", r"/applications/\d+/guilds/(?P<guild>\d+)/commands", self._sync)
        self._route("POST", r"/interactions/(?P<id>\d+)/(?P<token>[^/]+)/callback", self._callback)
        webhook = r"/webhooks/\d+/(?P<token>[^/]+)"
        message_ref = r"/messages/(?P<message>@original|\d+)"
        self._route("GET", webhook + message_ref, self._webhook_get)
        self._route("PATCH", webhook + message_ref, self._webhook_edit)
        self._route("DELETE", webhook + message_ref, self._webhook_delete)
        self._route("POST", webhook, self._followup)
        channel = "/channels/" + snow.format("channel")
        self._route("GET", channel, self._channel)
        self._route("POST", channel + "/messages", self._send)
        self._route("GET", channel + "/messages/" + snow.format("message"), self._get_message)
        self._route("PATCH", channel + "/messages/" + snow.format("message"), self._edit_message)
        self._route("DELETE", channel + "/messages/" + snow.format("message"), self._delete)
        self._route("POST", "/users/@me/channels", self._open_dm)

    async def _me(self, request: web.Request, call: Call, match: re.Match[str]) -> web.Response:
        if request.headers.get("Authorization", "").startswith("Bearer "):
            user = self.oauth.bearer(request)
            if user is None:
                return api_error(401, 0, "401: Unauthorized")
            return json_response(user.payload())
        return json_response(self.bot.payload())

    async def _my_guilds(self, request: web.Request, *_: Any) -> web.Response:
        user = self.oauth.bearer(request)
        if user is None:
            return api_error(401, 0, "401: Unauthorized")
        return json_response(self.oauth.my_guilds(user))

    async def _token(self, request: web.Request, *_: Any) -> web.Response:
        return await self.oauth.token(request)

    async def _member(self, request: web.Request, call: Call, match: re.Match[str]) -> web.Response:
        guild_id, user = int(match["guild"]), self.users.get(int(match["user"]))
        if guild_id not in (self.guild_id, self.other_guild_id):  # a server the bot is not in
            raise ApiError(403, 50001, "Missing Access")
        if user is None or self.home.get(user.id) != guild_id:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(user.member())

    async def _get_guild(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        guild_id = int(match["guild"])
        if guild_id not in (self.guild_id, self.other_guild_id):  # a server the bot is not in
            raise ApiError(403, 50001, "Missing Access")
        return json_response(self._guild() if guild_id == self.guild_id else self._other_guild())

    async def _application(self, *_: Any) -> web.Response:
        return json_response(
            {
                "id": str(self.application_id),
                "name": "imagine-bot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.owner.payload(),
                "verify_key": "0" * 64,
                "flags": 0,
            }
        )

    async def _user(self, request: web.Request, call: Call, match: re.Match[str]) -> web.Response:
        user = self.users.get(int(match["user"]))
        if user is None:
            return api_error(404, 10013, "Unknown User")
        return json_response(user.payload())

    async def _sync(self, request: web.Request, call: Call, match: re.Match[str]) -> web.Response:
        guild = match.groupdict().get("guild")
        if guild is not None and int(guild) not in (self.guild_id, self.other_guild_id):
            # A server the bot is not in (it was kicked, or the id is wrong).
            raise ApiError(403, 50001, "Missing Access")
        for index, command in enumerate(call.json):
            errors = rules.check_command(command)
            if errors:
                wrapped = rules.FormErrors()
                wrapped.tree = {str(index): errors.tree}
                raise invalid_form(wrapped)
        self.synced.append(int(guild) if guild else None)
        result = []
        for command in call.json:
            stored = {
                **command,
                "id": str(snowflake()),
                "application_id": str(self.application_id),
                "version": "1",
            }
            self.commands[command["name"]] = stored
            result.append(stored)
        return json_response(result)

    def _new_message(
        self,
        channel_id: int,
        call: Call,
        *,
        author: FakeUser | None = None,
        webhook: bool = False,
        interaction: Interaction | None = None,
    ) -> dict[str, Any]:
        body = call.json or {}
        reference = body.get("message_reference")
        if reference is not None:  # Discord gives ids back as strings
            reference = {
                "message_id": str(reference["message_id"]),
                "channel_id": str(reference.get("channel_id") or channel_id),
            }
        if interaction is not None and interaction.message_id is not None:
            # Discord shows an answer to a button as a reply to the message it sits on.
            reference = {
                "message_id": str(interaction.message_id),
                "channel_id": str(channel_id),
            }
            if channel_id in self.channel_guilds:
                reference["guild_id"] = str(self.channel_guilds[channel_id])
        data = message(
            message_id=snowflake(),
            channel_id=channel_id,
            guild_id=self.channel_guilds.get(channel_id),
            author=(author or self.bot).payload(),
            body=body,
            attachments=self._attachments(call, []),
            webhook_id=self.application_id if webhook else None,
            reference=reference,
            interaction=(
                {
                    "id": str(interaction.id),
                    "type": interaction.type,
                    "user": interaction.user.payload(),
                }
                if interaction
                else None
            ),
        )
        replied = None
        if reference is not None and interaction is None:
            replied = int(self.messages[int(reference["message_id"])]["author"]["id"])
        self._record_mentions(data, body, replied)
        self.messages[int(data["id"])] = data
        return data

    def _record_mentions(
        self, stored: dict[str, Any], body: dict[str, Any], replied: int | None = None
    ) -> None:
        """Who the message pings, as its ``allowed_mentions`` allows (all, if it has none)."""
        users, roles, everyone = rules.mentions(
            stored["content"], body.get("allowed_mentions"), replied
        )
        stored["mentions"] = [self.users[u].payload() for u in users if u in self.users]
        stored["mention_roles"] = [str(r) for r in roles]
        stored["mention_everyone"] = everyone

    def check(
        self,
        call: Call,
        body: dict[str, Any],
        *,
        file_limit: int,
        editing: dict[str, Any] | None = None,
    ) -> None:
        """Refuse what Discord refuses: a file over the limit (413/40005), a message past its
        limits (400/50035), a message with nothing in it (400/50006). An edit is judged by
        the message it would leave (``editing`` is the message as it stands)."""
        if any(len(data) > file_limit for _, data in call.files):
            raise ApiError(*TOO_LARGE)
        errors = rules.check_message(body, files=len(call.files))
        files = len(call.files)
        if not errors and editing is not None:
            body, files = self._after_edit(editing, body, files), 0
            errors = rules.check_message(body)
        if errors:
            raise invalid_form(errors)
        if rules.is_empty(body, files):
            raise ApiError(400, 50006, "Cannot send an empty message")

    @staticmethod
    def check_suggestions(body: dict[str, Any]) -> None:
        errors = rules.check_suggestions(body)
        if errors:
            raise invalid_form(errors)

    @staticmethod
    def _after_edit(stored: dict[str, Any], body: dict[str, Any], files: int) -> dict[str, Any]:
        """The message an edit would leave: what the edit sets, the rest as it was."""
        after = {
            key: body[key] if key in body else stored[key]
            for key in ("content", "embeds", "components")
        }
        listed = body.get("attachments")
        kept = len(stored["attachments"]) + files if listed is None else len(listed)
        after["attachments"] = [{"id": n} for n in range(kept)]
        return after

    @property
    def guild_file_limit(self) -> int:
        """What a file may weigh in the server's channels: by its boost tier, as on Discord."""
        return {2: 50, 3: 100}.get(self.premium_tier, 10) * 1024 * 1024

    async def set_premium_tier(self, tier: int) -> None:
        """The server gains or loses boosts; the bot hears of it (GUILD_UPDATE)."""
        self.premium_tier = tier
        guild = self._guild()
        await self.dispatch("GUILD_UPDATE", {k: v for k, v in guild.items() if k != "members"})

    def _channel_file_limit(self, channel_id: int) -> int:
        return rules.DEFAULT_FILE_LIMIT if channel_id in self.dm_channels else self.guild_file_limit

    def _channel_message(self, match: re.Match[str]) -> int:
        """A message through the channel routes: ephemeral ones are not there for the bot."""
        self._open_channel(match)
        message_id = int(match["message"])
        stored = self.messages.get(message_id)
        if stored is None or stored["flags"] & EPHEMERAL:
            raise ApiError(404, 10008, "Unknown Message")
        return message_id

    def _edit(self, message_id: int, call: Call) -> dict[str, Any]:
        stored = self.messages[message_id]
        body = call.json or {}
        for key in ("content", "embeds", "components"):
            if key in body:
                stored[key] = (
                    body[key] if body[key] is not None else ([] if key != "content" else "")
                )
        if "content" in body:
            self._record_mentions(stored, body)
        if "attachments" in body or call.files:
            stored["attachments"] = self._attachments(call, stored["attachments"])
        stored["flags"] = stored["flags"] & ~LOADING
        stored["edited_timestamp"] = timestamp()
        self.edits.append((message_id, json.loads(json.dumps(stored))))
        return stored

    async def _callback(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        interaction = self.interactions.get(match["token"])
        if interaction is None or interaction.id != int(match["id"]) or not interaction.alive():
            return api_error(404, 10062, "Unknown interaction")
        if interaction.callback_type is not None:
            return api_error(400, 40060, "Interaction has already been acknowledged.")
        if self._too_late(interaction):
            interaction.expired = True  # never answered in time: its token is dead
            return api_error(404, 10062, "Unknown interaction")
        kind = call.json["type"]
        body = call.json.get("data") or {}
        self._check_response(interaction, kind, call, body)
        interaction.callback_type = kind
        interaction.answered = time.monotonic()
        self.callbacks.append((interaction.id, kind, body))
        resource: dict[str, Any] | None = None
        if kind in (4, 5):
            sub = Call(call.method, call.path, call.query, body, call.files)
            created = self._new_message(
                interaction.channel_id, sub, webhook=True, interaction=interaction
            )
            if kind == 5:
                created["flags"] |= LOADING
            interaction.original_id = int(created["id"])
            resource = {"type": kind, "message": created}
        elif kind in (6, 7):
            interaction.original_id = interaction.message_id
            if kind == 7 and interaction.message_id is not None:
                sub = Call(call.method, call.path, call.query, body, call.files)
                resource = {"type": kind, "message": self._edit(interaction.message_id, sub)}
        answer: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_id": str(interaction.original_id)
                if interaction.original_id
                else None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(int(body.get("flags") or 0) & EPHEMERAL),
            }
        }
        if resource is not None:
            answer["resource"] = resource
        return json_response(answer)

    def _check_response(
        self, interaction: Interaction, kind: int, call: Call, body: dict[str, Any]
    ) -> None:
        """Refuse a response Discord refuses: one of a type the interaction does not take, or
        a message or modal past the limits."""
        if (kind == 8) != (interaction.type == 4):
            # Suggestions answer an autocomplete interaction, which takes nothing else.
            raise ApiError(400, 50035, "Invalid Form Body (interaction response type)")
        if kind == 9 and interaction.type not in (2, 3):
            # A modal answers a command or a component, never a modal's submission.
            raise ApiError(400, 50035, "Invalid Form Body (interaction response type)")
        if kind in (6, 7) and interaction.message_id is None:
            # Only an interaction on a message (a component, or a modal opened by one) can
            # update that message.
            raise ApiError(400, 50035, "Invalid Form Body (interaction response type)")
        if kind == 8:
            self.check_suggestions(body)
        elif kind == 9:
            errors = rules.check_modal(body)
            if errors:
                raise invalid_form(errors)
            interaction.modal = body
        elif kind == 4:
            self.check(call, body, file_limit=interaction.attachment_size_limit)
        elif kind == 7 and interaction.message_id in self.messages:
            editing = self.messages[interaction.message_id]
            self.check(call, body, file_limit=interaction.attachment_size_limit, editing=editing)

    def _too_late(self, interaction: Interaction) -> bool:
        if self.response_deadline is None:
            return False
        # Counted from when the interaction happened, as on Discord: one replayed after a
        # RESUME has the time the bot took to come back taken from its 3 s.
        return time.monotonic() - interaction.created > self.response_deadline

    def _webhook_interaction(self, match: re.Match[str]) -> Interaction:
        interaction = self.interactions.get(match["token"])
        if interaction is None or interaction.type == 4:
            # An autocomplete interaction is answered with suggestions, and nothing else.
            raise ApiError(404, 10015, "Unknown Webhook")
        if interaction.refused or not interaction.alive():
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if interaction.channel_id in self.deleted_channels:
            raise ApiError(404, 10003, "Unknown Channel")
        return interaction

    def _webhook_message(self, match: re.Match[str]) -> int:
        interaction = self._webhook_interaction(match)
        reference = match["message"]
        message_id = interaction.original_id if reference == "@original" else int(reference)
        if message_id is None or message_id not in self.messages:
            raise ApiError(404, 10008, "Unknown Message")
        return message_id

    async def _webhook_get(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        return json_response(self.messages[self._webhook_message(match)])

    async def _webhook_edit(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        message_id = self._webhook_message(match)
        limit = self._webhook_interaction(match).attachment_size_limit
        self.check(call, call.json or {}, file_limit=limit, editing=self.messages[message_id])
        return json_response(self._edit(message_id, call))

    async def _webhook_delete(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        self._remove(self._webhook_message(match))
        return web.Response(status=204)

    async def _followup(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        interaction = self._webhook_interaction(match)
        self.check(call, call.json or {}, file_limit=interaction.attachment_size_limit)
        created = self._new_message(
            interaction.channel_id, call, webhook=True, interaction=interaction
        )
        return json_response(created)

    def _open_channel(self, match: re.Match[str]) -> int:
        channel_id = int(match["channel"])
        if channel_id in self.deleted_channels:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel_id

    async def _channel(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        channel_id = self._open_channel(match)
        if channel_id in self.channels:
            return json_response(self.channels[channel_id])
        if channel_id in self.dm_channels:
            user = self.users[self.dm_channels[channel_id]]
            return json_response(dm_channel(channel_id, user.payload()))
        return api_error(404, 10003, "Unknown Channel")

    async def _send(self, request: web.Request, call: Call, match: re.Match[str]) -> web.Response:
        channel_id = self._open_channel(match)
        if channel_id not in self.channel_guilds and channel_id not in self.dm_channels:
            return api_error(404, 10003, "Unknown Channel")
        if channel_id in self.forbidden_channels:
            return api_error(403, 50013, "Missing Permissions")
        if self.dm_channels.get(channel_id) in self.closed_dms:
            return api_error(403, 50007, "Cannot send messages to this user")
        body = call.json or {}
        self.check(call, body, file_limit=self._channel_file_limit(channel_id))
        nonce = body.get("nonce")
        key = (self.bot.id, str(nonce))
        if nonce and body.get("enforce_nonce") and key in self.nonces:
            made, at = self.nonces[key]
            if time.monotonic() - at <= self.nonce_window and made in self.messages:
                # Discord answers a repeated nonce with the message it already made.
                return json_response(self.messages[made])
        reference = body.get("message_reference")
        if reference and int(reference["message_id"]) not in self.messages:
            if reference.get("fail_if_not_exists", True):
                errors = rules.FormErrors()
                errors.add(("message_reference",), "REPLIES_UNKNOWN_MESSAGE", "Unknown message")
                raise invalid_form(errors)
            # Asked not to fail: Discord sends it as a plain message, not a reply.
            call = dataclasses.replace(
                call, json={k: v for k, v in body.items() if k != "message_reference"}
            )
        created = self._new_message(channel_id, call)
        if nonce:
            self.nonces[key] = (int(created["id"]), time.monotonic())
        return json_response(created)

    async def _get_message(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        return json_response(self.messages[self._channel_message(match)])

    async def _edit_message(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        message_id = self._channel_message(match)
        limit = self._channel_file_limit(int(match["channel"]))
        self.check(call, call.json or {}, file_limit=limit, editing=self.messages[message_id])
        return json_response(self._edit(message_id, call))

    async def _delete(self, request: web.Request, call: Call, match: re.Match[str]) -> web.Response:
        self._remove(self._channel_message(match))
        return web.Response(status=204)

    def _remove(self, message_id: int) -> None:
        self.messages.pop(message_id)
        self.deleted.append(message_id)

    async def _open_dm(
        self, request: web.Request, call: Call, match: re.Match[str]
    ) -> web.Response:
        user = self.users[int(call.json["recipient_id"])]
        for channel_id, user_id in self.dm_channels.items():
            if user_id == user.id:
                return json_response(dm_channel(channel_id, user.payload()))
        channel_id = snowflake()
        self.dm_channels[channel_id] = user.id
        return json_response(dm_channel(channel_id, user.payload()))
