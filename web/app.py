"""The console's routes: login with Discord, a member's gallery, a job's page, its images
through an authorised route, and health.

Who may see what is ``generation.access``'s decision, as in the bot: the logged-in user is an
``Actor`` in the job's server (their roles and permission bits there, read with the bot's token
at login and every ``recheck_seconds``). Anything they may not see answers 404, as if it did
not exist; an anonymous visitor is sent to log in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image, ImageFilter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from generation import wording
from generation.access import Access, Actor, may_moderate_job, may_see_job
from generation.errors import GenerationError, InvalidRequest, JobNotFound
from generation.health import Health, read_health
from generation.imaging import recipe_dict
from generation.moderation import Flagged, Moderation, parse_duration
from generation.rendering import thumbs_prefix
from generation.service import GenerationService, JobView
from storage.image_store import ImageStore
from storage.models import EventKind, JobStatus, Review
from storage.records import ImageRecord, JobRecord
from web.logs import (
    DISCORD_IDS,
    FORMATS,
    ROW_IDS,
    BadFilter,
    LogQuery,
    export,
    number,
    read_page,
)
from web.metrics import exposition
from web.oauth import ADMINISTRATOR, DiscordOAuth, LoginFailed, pkce
from web.sessions import (
    LOGIN_COOKIE,
    LOGIN_SECONDS,
    MAX_SERVERS,
    SESSION_COOKIE,
    Login,
    Membership,
    Signer,
    cookie_name,
    new_csrf,
)

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"  # vendored: no CDN
GALLERY_PAGE = 24
THUMB_SIDE = 256
HIDDEN = frozenset({Review.PENDING, Review.DELETED})  # images only moderators open
REVIEW_PAGE = 50  # flagged images on the review page
RETRY_SECONDS = 60.0  # a failed look at a user's roles is tried again after this
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "::1"})
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
HEALTH_SECONDS = 10.0  # /status and /metrics share one read of the health this long
VERBS = {"approve": "approved", "delete": "deleted", "ban": "banned", "strike": "struck"}
USER_VERBS = {
    "ban": "banned",
    "unban": "unbanned",
    "strike": "given a strike",
    "limits": "given new limits",
}
USER_JOBS = 24  # a user page's newest jobs (the logs page has the rest)
TREE_DELETE_LIMIT = 10_000  # jobs made from one that "delete with everything" reaches


@dataclasses.dataclass
class WebContext:
    """What the console is given by the composition root."""

    service: GenerationService
    moderation: Moderation
    store: ImageStore
    access: Access
    oauth: DiscordOAuth
    signer: Signer
    serves: Callable[[int], bool]  # whether the bot serves that server
    secure: bool  # behind HTTPS: cookies are Secure
    recheck_seconds: float = 300.0
    metrics_token: str | None = None  # /metrics from elsewhere than localhost
    presign_seconds: int = 300  # an object store's full-size images: presigned, this long


def safe_next(path: str | None) -> str:
    """Where to go after login: one of the console's own paths, never another site."""
    if not path or not path.startswith("/") or path.startswith(("//", "/\\")):
        return "/"
    if any(ch in path for ch in "\\\r\n") or ":" in path.split("?")[0]:
        return "/"
    return path


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response


class Console:
    """The routes, with what they share."""

    def __init__(self, context: WebContext) -> None:
        self.context = context
        self.session_cookie = cookie_name(SESSION_COOKIE, context.secure)
        self.login_cookie = cookie_name(LOGIN_COOKIE, context.secure)
        # The last look at each user's roles (None: it failed), shared by their requests.
        self._looked: dict[int, tuple[float, dict[int, Membership] | None]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._health: tuple[float, Health] | None = None
        self._health_lock = asyncio.Lock()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,  # every value shown is escaped: prompts and names are user text
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["score"] = _score

    # -- plumbing ----------------------------------------------------------------------------

    def page(
        self, name: str, login: Login | None, status: int = 200, **values: Any
    ) -> HTMLResponse:
        nav = {"moderator": False, "host": False}
        if login is not None:
            nav = {"moderator": bool(self.moderated(login)), "host": self.actor(login, None).host}
        html = self.templates.get_template(name).render(login=login, nav=nav, **values)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            secure=self.context.secure,
            samesite="lax",
            path="/",
        )

    async def login_of(self, request: Request) -> tuple[Login | None, bool]:
        """The logged-in user (None: nobody), their roles looked at again when due; and
        whether the cookie must be written again. A user's requests at once (a gallery's
        thumbnails) share one look; a look that failed is not tried again for RETRY_SECONDS,
        and meanwhile they count as a plain member, never as more."""
        login = self.context.signer.read_session(request.cookies.get(self.session_cookie))
        if login is None:
            return None, False
        out = await self.context.service.signed_out_at(login.user_id)
        if out is not None and login.issued_at <= out.timestamp():
            return None, False  # issued before they logged out: a copy of it is nobody too
        if time.time() - login.checked_at < self.context.recheck_seconds:
            return login, False
        async with self._locks.setdefault(login.user_id, asyncio.Lock()):
            at, servers = self._looked.get(login.user_id, (0.0, None))
            fresh = at > login.checked_at and time.time() - at < self.context.recheck_seconds
            if not fresh or (servers is None and time.time() - at >= RETRY_SECONDS):
                at = time.time()
                try:
                    servers = await self._memberships(login.user_id, list(login.servers))
                except LoginFailed as error:
                    logger.warning("could not check user %s's roles: %s", login.user_id, error)
                    servers = None
                self._looked[login.user_id] = (at, servers)
        if servers is None:  # Discord unreachable: a plain member until it answers
            weakened = {guild: Membership() for guild in login.servers}
            retry_at = at - self.context.recheck_seconds + RETRY_SECONDS
            return dataclasses.replace(login, servers=weakened, checked_at=retry_at), True
        return dataclasses.replace(login, servers=servers, checked_at=at), True

    async def _memberships(self, user_id: int, guild_ids: list[int]) -> dict[int, Membership]:
        """Their standing in each server now. Only what the access rules read is kept (the
        moderator roles they hold, and Administrator), so the cookie stays small."""
        found = {}
        moderator_roles = self.context.access.moderator_role_ids
        for guild_id in guild_ids[:MAX_SERVERS]:
            membership = await self.context.oauth.membership(guild_id, user_id)
            if membership is None:  # they left, or the bot is not in that server
                continue
            found[guild_id] = Membership(
                tuple(role for role in membership.roles if role in moderator_roles),
                membership.permissions & ADMINISTRATOR,
            )
        return found

    def actor(self, login: Login, guild_id: int | None) -> Actor:
        membership = login.servers.get(guild_id) if guild_id is not None else None
        if membership is None:  # not a member there: only what is their own
            return self.context.access.actor(login.user_id, None)
        return self.context.access.actor(
            login.user_id, guild_id, membership.roles, membership.permissions
        )

    def to_login(self, request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)

    def missing(self, login: Login | None) -> HTMLResponse:
        return self.page(
            "message.html", login, 404, title="Not found", text="There is nothing here."
        )

    async def visible(self, login: Login, job_id: int) -> JobView | None:
        if not 0 < job_id < ROW_IDS:  # no such row: not a question for the database
            return None
        try:
            view = await self.context.service.job(job_id)
        except JobNotFound:
            return None
        return view if self.sees(login, view) else None

    def sees(self, login: Login, view: JobView | None) -> bool:
        if view is None:
            return False
        return may_see_job(self.actor(login, view.job.guild_id), view.job, view.images)

    # -- login -------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        state = secrets.token_urlsafe(24)
        verifier, challenge = pkce()
        next_path = safe_next(request.query_params.get("next"))
        response = RedirectResponse(
            self.context.oauth.authorize_url(state, challenge), status_code=303
        )
        cookie = self.context.signer.login(state, verifier, next_path)
        self._cookie(response, self.login_cookie, cookie, LOGIN_SECONDS)
        return response

    async def callback(self, request: Request) -> Response:
        pending = self.context.signer.read_login(request.cookies.get(self.login_cookie))
        state = request.query_params.get("state", "")
        if pending is None or not secrets.compare_digest(pending["state"], state):
            return self.page(
                "message.html",
                None,
                400,
                title="Login failed",
                text="This login link is not the one this browser started, or it is too old. "
                "Log in again.",
            )
        code = request.query_params.get("code")
        if not code:
            said = request.query_params.get("error", "no code")
            return self.page(
                "message.html",
                None,
                400,
                title="Login failed",
                text=f"Discord said: {said}. Log in again.",
            )
        try:
            token = await self.context.oauth.exchange(code, pending["verifier"])
            user_id, name, guilds = await self.context.oauth.who(token)
            served = [guild for guild in guilds if self.context.serves(guild)]
            servers = await self._memberships(user_id, served)
        except LoginFailed as error:
            return self.page(
                "message.html", None, 502, title="Login failed", text=f"{error}. Try again."
            )
        now = time.time()
        login = Login(user_id, name, servers, now, new_csrf(), issued_at=now)
        response = RedirectResponse(safe_next(pending["next"]), status_code=303)
        self._renewed(response, login, renew=True)
        response.delete_cookie(self.login_cookie, path="/", secure=self.context.secure)
        return response

    async def posted(self, request: Request) -> tuple[Login, bool, Any] | Response:
        """A form's sender, logged in, with the form's CSRF token checked; else the answer
        (log in, or the form is out of date)."""
        login, renew = await self.login_of(request)
        if login is None:
            return self.to_login(request)
        form = await request.form()
        if not login.checks(str(form.get("csrf", ""))):
            return self.stale_form(login)
        return login, renew, form

    def stale_form(self, login: Login) -> HTMLResponse:
        return self.page(
            "message.html",
            login,
            403,
            title="Refused",
            text="That form is out of date: reload the page.",
        )

    async def logout(self, request: Request) -> Response:
        # The cookie itself, not login_of: logging out needs no database read to succeed.
        login = self.context.signer.read_session(request.cookies.get(self.session_cookie))
        form = await request.form()
        if login is not None and not login.checks(str(form.get("csrf", ""))):
            return self.stale_form(login)
        response: Response = RedirectResponse("/", status_code=303)
        if login is not None:  # every session of theirs ends, a copied cookie's too
            try:
                await self.context.service.sign_out(login.user_id)
            except Exception:  # this browser's cookie goes all the same
                logger.exception("could not record user %s's sign-out", login.user_id)
                text = (
                    "This browser is logged out, but the database did not answer: another "
                    "copy of the session lasts until it expires. Log in and out again later."
                )
                response = self.page("message.html", None, 503, title="Logged out", text=text)
        response.delete_cookie(self.session_cookie, path="/", secure=self.context.secure)
        return response

    # -- members -------------------------------------------------------------------------------

    async def gallery(self, request: Request) -> Response:
        login, renew = await self.login_of(request)
        if login is None:
            return self.to_login(request)
        before = number(request.query_params.get("before"), ROW_IDS)
        views = await self.context.service.recent(
            user_id=login.user_id, limit=GALLERY_PAGE + 1, before=before
        )
        more = len(views) > GALLERY_PAGE
        views = views[:GALLERY_PAGE]
        jobs = [
            {
                "view": view,
                "what": wording.what(view.job),
                "shown": [i for i in view.images if i.review not in HIDDEN],
            }
            for view in views
        ]
        older = views[-1].job.id if more and views else None
        response = self.page("gallery.html", login, jobs=jobs, older=older)
        return self._renewed(response, login, renew)

    async def job(self, request: Request) -> Response:
        login, renew = await self.login_of(request)
        if login is None:
            return self.to_login(request)
        view = await self.visible(login, int(request.path_params["job_id"]))
        if view is None:
            return self.missing(login)
        actor = self.actor(login, view.job.guild_id)
        moderator = may_moderate_job(actor, view.job)
        # The lineage: only the relatives they could see themselves (a private or hidden
        # one, or another server's, is not named).
        family = await self.context.service.family(view.job.id)
        relatives = await self.context.service.views([job.id for _, job in family])
        family = [
            (depth, job)
            for depth, job in family
            if job.id == view.job.id or self.sees(login, relatives.get(job.id))
        ]
        # A moderator's: the job's moderation events, oldest first (the rest is in ``view``).
        events = await self.context.moderation.events(job_id=view.job.id) if moderator else []
        shown = [i for i in view.images if moderator or i.review not in HIDDEN]
        response = self.page(
            "job.html",
            login,
            view=view,
            what=wording.what(view.job),
            recipe=wording.recipe_fields(view),
            recipe_json=json.dumps(recipe_dict(view.job), indent=2, ensure_ascii=False),
            images=shown,
            family=family,
            # Jobs made from it: after it in the tree (its ancestors come before it).
            made_from_it=family[-1][1].id != view.job.id,
            events=events[::-1],
            moderator=moderator,
            owner=view.job.user_id == login.user_id,
            may_delete=view.job.user_id == login.user_id or moderator,
            done=_done(request, {"private": "made private", "public": "made public"}),
        )
        return self._renewed(response, login, renew)

    async def delete(self, request: Request) -> Response:
        sent = await self.posted(request)
        if isinstance(sent, Response):
            return sent
        login, renew, form = sent
        view = await self.visible(login, int(request.path_params["job_id"]))
        if view is None:
            return self.missing(login)
        moderator = may_moderate_job(self.actor(login, view.job.guild_id), view.job)
        if view.job.user_id != login.user_id and not moderator:
            return self.missing(login)
        refused = await self._delete_as(login, view.job, moderator, "web console")
        if refused is not None:
            return self.page("message.html", login, 409, title="Not deleted", text=refused)
        kept = await self._delete_below(login, view.job.id) if form.get("tree") else 0
        response: Response = RedirectResponse("/", status_code=303)
        if kept:
            text = (
                f"Job {view.job.id} is deleted, and what was made from it, except "
                f"{kept} job(s) still running or not yours to delete."
            )
            response = self.page("message.html", login, 200, title="Deleted", text=text)
        return self._renewed(response, login, renew)

    async def _delete_below(self, login: Login, job_id: int) -> int:
        """Delete every job made from this one, at any depth, that they may delete (their
        own; a moderator's: any in the servers they moderate): each the same call, with its
        event. Returns how many were left (still running, or not theirs)."""
        family = await self.context.service.family(job_id, limit=TREE_DELETE_LIMIT)
        start = next(i for i, (_, job) in enumerate(family) if job.id == job_id)
        kept = 0
        for _, job in family[start + 1 :]:  # after the job itself: what was made from it
            if job.status == JobStatus.DELETED:
                continue
            moderator = may_moderate_job(self.actor(login, job.guild_id), job)
            if job.user_id != login.user_id and not moderator:
                kept += 1
                continue
            reason = f"web console: made from job {job_id}, deleted with it"
            if await self._delete_as(login, job, moderator, reason) is not None:
                kept += 1
        return kept

    async def _delete_as(
        self, login: Login, job: JobRecord, moderator: bool, reason: str
    ) -> str | None:
        """The same call as ❌ in Discord and `admin delete`, with the same event; None when
        done, else why not."""
        try:
            await self.context.moderation.delete_job(
                login.user_id, job.id, is_admin=moderator, reason=reason, guild_id=job.guild_id
            )
        except GenerationError as error:
            return str(error)
        return None

    async def private(self, request: Request) -> Response:
        """Its owner makes a job private, or not (as their server allows)."""
        sent = await self.posted(request)
        if isinstance(sent, Response):
            return sent
        login, renew, form = sent
        view = await self.visible(login, int(request.path_params["job_id"]))
        if view is None or view.job.user_id != login.user_id:
            return self.missing(login)
        wanted = form.get("private") == "1"
        try:
            await self.context.service.set_private(view.job.id, login.user_id, wanted)
        except GenerationError as error:
            return self.page("message.html", login, 409, title="Not changed", text=str(error))
        done = "private" if wanted else "public"
        back = RedirectResponse(f"/jobs/{view.job.id}?done={done}", status_code=303)
        return self._renewed(back, login, renew)

    async def thumb(self, request: Request) -> Response:
        return await self.image(request, thumb=True)

    async def blurred(self, request: Request) -> Response:
        return await self.image(request, thumb=True, blur=True)

    async def image(self, request: Request, *, thumb: bool = False, blur: bool = False) -> Response:
        """A job's image: the PNG as stored (``?download=1``: as a file to save), or its
        thumbnail, a WebP made once and kept. Only for whoever may see the job."""
        login, renew = await self.login_of(request)
        if login is None:
            return Response(status_code=401)
        response = await self._image(request, login, thumb, blur)
        return self._renewed(response, login, renew)

    async def _image(self, request: Request, login: Login, thumb: bool, blur: bool) -> Response:
        view = await self.visible(login, int(request.path_params["job_id"]))
        index = int(request.path_params["index"])
        image = _image(view, index) if view is not None else None
        if view is None or image is None:
            return Response(status_code=404)
        moderator = may_moderate_job(self.actor(login, view.job.guild_id), view.job)
        if image.review in HIDDEN and not moderator:
            return Response(status_code=404)
        store = self.context.store
        # Kept by the browser, but asked again each time: after a logout or a deletion, no.
        # A held image is never kept by the browser at all.
        cache = "no-store" if image.review in HIDDEN else "private, no-cache"
        headers = {"Cache-Control": cache}
        name = (
            f"job-{view.job.id}-{index + 1}.png" if request.query_params.get("download") else None
        )
        try:
            if thumb:  # a held image's is made for the moderator, never kept
                keep = image.review not in HIDDEN and not blur
                data = await asyncio.to_thread(_thumbnail, store, image, keep=keep, blur=blur)
                return Response(data, media_type="image/webp", headers=headers)
            seconds = self.context.presign_seconds
            if seconds and image.review not in HIDDEN:  # an object store's own URL, if it signs
                url = await asyncio.to_thread(store.signed_url, image.path, seconds, name)
                if url is not None:
                    return RedirectResponse(
                        url, status_code=303, headers={"Cache-Control": "no-store"}
                    )
            data = await asyncio.to_thread(store.get, image.path)
        except FileNotFoundError:  # removed by a moderator: its record stays
            return Response(status_code=404)
        if name is not None:
            headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return Response(data, media_type="image/png", headers=headers)

    def _renewed(self, response: Response, login: Login, renew: bool) -> Response:
        if renew:
            self._cookie(
                response,
                self.session_cookie,
                self.context.signer.session(login),
                self.context.signer.max_age,
            )
        return response

    # -- moderators ------------------------------------------------------------------------

    def moderated(self, login: Login) -> list[int | None]:
        """The servers whose review queue they see ([None]: a host admin's, every one)."""
        if self.actor(login, None).host:
            return [None]
        return [guild for guild in login.servers if self.actor(login, guild).moderator]

    async def review(self, request: Request) -> Response:
        """Flagged images waiting for a moderator, oldest first, blurred until opened."""
        login, renew = await self.login_of(request)
        if login is None:
            return self.to_login(request)
        servers = self.moderated(login)
        if not servers:
            return self.missing(login)
        flagged: list[Flagged] = []
        for guild_id in servers:
            flagged += await self.context.moderation.flagged(REVIEW_PAGE, guild_id)
        flagged = sorted(flagged, key=lambda f: f.image.id)[:REVIEW_PAGE]
        # What the last action did: a count and one of the actions' own words, nothing typed.
        count, verb = number(request.query_params.get("done")), request.query_params.get("what")
        done = f"{count} {VERBS[verb]}" if count is not None and verb in VERBS else ""
        names = await self.context.moderation.user_names(f.job.user_id for f in flagged)
        response = self.page("review.html", login, flagged=flagged, done=done, names=names)
        return self._renewed(response, login, renew)

    async def review_action(self, request: Request) -> Response:
        """One card's action (``one``: approve, delete or ban with its image id), or the
        selected cards' (``action`` on every ``selected`` image id): the same calls as the
        review buttons in Discord, each leaving its event."""
        sent = await self.posted(request)
        if isinstance(sent, Response):
            return sent
        login, renew, form = sent
        one = str(form.get("one", ""))
        if one:
            action, _, image = one.partition(":")
            targets = [number(image, ROW_IDS)]
        else:
            action = str(form.get("action", ""))
            selected = form.getlist("selected")[:REVIEW_PAGE]
            targets = [number(str(value), ROW_IDS) for value in selected]
        if action not in VERBS:
            return self.page("message.html", login, 400, title="Refused", text="No such action.")
        done = 0
        for image_id in dict.fromkeys(t for t in targets if t is not None):
            if await self._review_one(login, action, image_id):
                done += 1
        back = RedirectResponse(f"/review?done={done}&what={action}", status_code=303)
        return self._renewed(back, login, renew)

    async def _review_one(self, login: Login, action: str, image_id: int) -> bool:
        """The action on one flagged image, if this moderator moderates its job's server."""
        moderation = self.context.moderation
        try:
            job_id = await moderation.job_of_image(image_id)
            view = await self.context.service.job(job_id)
        except GenerationError:
            return False
        actor = self.actor(login, view.job.guild_id)
        image = next((i for i in view.images if i.id == image_id), None)
        waiting = image is not None and image.review == Review.PENDING
        if not may_moderate_job(actor, view.job) or not waiting:
            return False  # not theirs, or judged already: nothing is done twice
        try:
            if action == "approve":
                await moderation.approve(login.user_id, image_id, guild_id=view.job.guild_id)
            elif action == "delete":
                if view.job.status == JobStatus.DELETED:
                    return False
                await moderation.delete_job(
                    login.user_id,
                    job_id,
                    is_admin=True,
                    reason="from the web console's review",
                    guild_id=view.job.guild_id,
                )
            elif action == "strike":  # counted in the server it was made in
                await moderation.strike(
                    login.user_id,
                    view.job.user_id,
                    reason=f"from the web console's review of job {job_id}",
                    guild_id=view.job.guild_id,
                    job_id=job_id,
                )
            else:  # a server's moderator bans in their server; a host admin everywhere
                await moderation.ban(
                    login.user_id,
                    view.job.user_id,
                    reason=f"from the web console's review of job {job_id}",
                    guild_id=view.job.guild_id,
                    in_server=not actor.host,
                )
        except GenerationError as error:
            logger.info("review %s of image %s: %s", action, image_id, error)
            return False
        return True

    def scope(self, login: Login, server: int | None) -> list[int] | None:
        """The servers whose logs they read, narrowed to ``server`` if given: a host admin's,
        any (None: all); a moderator's, theirs ([]: not theirs)."""
        servers = self.moderated(login)
        if servers == [None]:
            return None if server is None else [server]
        theirs = [guild for guild in servers if guild is not None]
        if server is None:
            return theirs
        return [server] if server in theirs else []

    def _query(
        self, request: Request, login: Login
    ) -> tuple[LogQuery, list[int] | None] | Response:
        """The logs' filter and the servers it reads, or the page refusing it."""
        if not self.moderated(login):
            return self.missing(login)
        try:
            query = LogQuery.read(request.query_params)
        except BadFilter as error:
            text = f"The filter {error}. Change it and search again."
            return self.page("message.html", login, 400, title="Refused", text=text)
        guild_ids = self.scope(login, query.server)
        if guild_ids == []:
            return self.missing(login)
        return query, guild_ids

    async def logs(self, request: Request) -> Response:
        """Every job, or every moderation event, in the servers they moderate: filtered,
        searched, a page at a time by its keys."""
        login, renew = await self.login_of(request)
        if login is None:
            return self.to_login(request)
        read = self._query(request, login)
        if isinstance(read, Response):
            return read
        query, guild_ids = read
        page = await read_page(self.context.moderation, query, guild_ids)
        people = [view.job.user_id for view in page.jobs]
        for event in page.events:
            people += [event.actor_id or 0, event.target_user_id or 0]
        response = self.page(
            "logs.html",
            login,
            query=query,
            page=page,
            names=await self.context.moderation.user_names(people),
            servers=[g for g in self.moderated(login) if g is not None],
            statuses=list(JobStatus),
            kinds=list(EventKind),
        )
        return self._renewed(response, login, renew)

    async def export_logs(self, request: Request) -> Response:
        """The logs the filter matches, all of them, as CSV or JSON Lines (streamed)."""
        login, renew = await self.login_of(request)
        if login is None:
            return self.to_login(request)
        read = self._query(request, login)
        if isinstance(read, Response):
            return read
        query, guild_ids = read
        form = request.query_params.get("format", "csv")
        if form not in FORMATS:
            return self.page(
                "message.html", login, 400, title="Refused", text="format: csv or jsonl."
            )
        name = f"imagine-{query.what}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.{form}"
        response = StreamingResponse(
            export(self.context.moderation, query, guild_ids, form),
            media_type=FORMATS[form],
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Cache-Control": "no-store",
            },
        )
        return self._renewed(response, login, renew)

    async def user(self, request: Request) -> Response:
        """A user as their moderators see them: bans, strikes, limits, their jobs and the
        events about them, in the servers these moderators moderate."""
        login, renew = await self.login_of(request)
        if login is None:
            return self.to_login(request)
        servers = self.moderated(login)
        if not servers:
            return self.missing(login)
        user_id = int(request.path_params["user_id"])
        if user_id >= DISCORD_IDS:
            return self.missing(login)
        guild_ids = self.scope(login, None)
        host = servers == [None]
        standing = await self.context.moderation.standing(user_id, guild_ids)
        # Their host-wide ban and their use of the bot everywhere: the host's to see.
        usage = await self.context.service.usage(user_id) if host and standing.user else None
        moderation = self.context.moderation
        jobs = await read_page(moderation, LogQuery(user=user_id), guild_ids, USER_JOBS)
        events = await read_page(
            moderation, LogQuery(what="events", user=user_id), guild_ids, USER_JOBS
        )
        response = self.page(
            "user.html",
            login,
            user_id=user_id,
            standing=standing,
            usage=usage,
            jobs=jobs,
            events=events.events,
            names=await moderation.user_names(e.actor_id or 0 for e in events.events),
            servers=[g for g in servers if g is not None],
            host=host,
            done=_done(request, USER_VERBS),
        )
        return self._renewed(response, login, renew)

    async def user_action(self, request: Request) -> Response:
        """Ban, unban, strike (in one of their servers; a host admin: also everywhere), and
        a host admin's limits: the same calls as /admin in Discord, each with its event."""
        sent = await self.posted(request)
        if isinstance(sent, Response):
            return sent
        login, renew, form = sent
        servers = self.moderated(login)
        user_id = int(request.path_params["user_id"])
        action = str(form.get("action", ""))
        server = number(str(form.get("server", "")))
        host = servers == [None]
        allowed = (
            bool(servers)
            and user_id < DISCORD_IDS
            and action in USER_VERBS
            and (action != "limits" or host)
            and (host or server in servers)  # a moderator acts in a server of theirs
        )
        if not allowed:
            return self.missing(login)
        try:
            await self._act_on_user(login.user_id, user_id, action, server, form)
        except GenerationError as error:
            return self.page("message.html", login, 400, title="Refused", text=str(error))
        back = RedirectResponse(f"/users/{user_id}?done={action}", status_code=303)
        return self._renewed(back, login, renew)

    async def _act_on_user(
        self, actor_id: int, user_id: int, action: str, server: int | None, form: Any
    ) -> None:
        moderation = self.context.moderation
        reason = str(form.get("reason", "")).strip()[:500]
        if action == "ban":
            duration = str(form.get("duration", "")).strip()
            await moderation.ban(
                actor_id,
                user_id,
                reason=reason,
                duration=parse_duration(duration) if duration else None,
                guild_id=server,
                in_server=server is not None,
            )
        elif action == "unban":
            await moderation.unban(
                actor_id, user_id, reason=reason, guild_id=server, in_server=server is not None
            )
        elif action == "strike":
            await moderation.strike(actor_id, user_id, reason=reason, guild_id=server)
        else:
            overrides = {
                name: limit
                for name in ("queued_per_user", "images_per_user_day")
                if (limit := number(str(form.get(name, "")))) is not None
            }
            weight = _float(str(form.get("weight", "")))
            reset = bool(form.get("reset"))
            await self.context.service.set_limits(
                user_id,
                weight=weight,
                clear_weight=reset,
                overrides=overrides,
                clear=("queued_per_user", "images_per_user_day") if reset else (),
                actor_id=actor_id,
            )

    # -- hosts ---------------------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        """The queue's health, for host admins (anyone else: as if there were no page)."""
        login, renew = await self.login_of(request)
        if login is None:
            return self.to_login(request)
        if not self.actor(login, None).host:
            return self.missing(login)
        health = await self.health()
        response = self.page("status.html", login, health=health, waits=health.waits[:50])
        return self._renewed(response, login, renew)

    async def metrics(self, request: Request) -> Response:
        """Prometheus' text: from localhost, or with the metrics token."""
        # A request a proxy forwarded is not local, whichever address it came from.
        forwarded = any(h in request.headers for h in FORWARDING_HEADERS)
        local = (
            not forwarded and request.client is not None and request.client.host in LOCAL_ADDRESSES
        )
        token = self.context.metrics_token
        given = request.headers.get("authorization", "")
        allowed = local or (
            token is not None and secrets.compare_digest(given.encode(), f"Bearer {token}".encode())
        )
        if not allowed:
            return Response("metrics: from localhost, or with the token\n", status_code=403)
        return Response(exposition(await self.health()), media_type=CONTENT_TYPE_LATEST)

    async def health(self) -> Health:
        """The queue's health, read at most once every HEALTH_SECONDS whoever asks."""
        async with self._health_lock:
            cached = self._health
            if cached is None or time.monotonic() - cached[0] >= HEALTH_SECONDS:
                cached = (time.monotonic(), await read_health(self.context.service.db))
                self._health = cached
        return cached[1]

    # -- health --------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        """The database and the image store answer (503 naming what does not)."""
        problems = {}
        try:
            async with asyncio.timeout(5):
                async with self.context.service.db.uow() as uow:
                    await uow.now()
        except Exception as error:
            logger.warning("healthz: the database does not answer: %s", error)
            problems["database"] = "unreachable"
        try:
            async with asyncio.timeout(5):
                await asyncio.to_thread(self.context.store.exists, "healthz")
        except Exception as error:
            logger.warning("healthz: the image store does not answer: %s", error)
            problems["store"] = "unreachable"
        body = {"database": problems.get("database", "ok"), "store": problems.get("store", "ok")}
        return JSONResponse(body, status_code=503 if problems else 200)


def _image(view: JobView, index: int) -> ImageRecord | None:
    return next((image for image in view.images if image.index == index), None)


def _thumbnail(store: ImageStore, image: ImageRecord, *, keep: bool, blur: bool = False) -> bytes:
    """A WebP at most THUMB_SIDE on its long side, made once and kept (``keep``) under the
    job's thumbnails, which go with its images."""
    key = f"{thumbs_prefix(image.job_id)}/{image.index}-{image.sha256[:16]}.webp"
    if keep and store.exists(key):
        return store.get(key)
    with Image.open(io.BytesIO(store.get(image.path))) as stored:
        picture = stored.convert("RGB")
    picture.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    if blur:  # the review queue: nothing recognisable until the moderator opens it
        picture = picture.resize((16, 16), Image.Resampling.BOX).resize(
            picture.size, Image.Resampling.BILINEAR
        )
        picture = picture.filter(ImageFilter.GaussianBlur(8))
    out = io.BytesIO()
    picture.save(out, format="WEBP", quality=80)
    data = out.getvalue()
    if keep:
        store.put(key, data)
    return data


def _score(flags: dict[str, Any]) -> str:
    """The safety check's highest score on an image, as "LABEL 0.91"."""
    scores = flags.get("safety") or {}
    if not isinstance(scores, dict) or not scores:
        return "no score recorded"
    label, value = max(scores.items(), key=lambda item: float(item[1]))
    return f"{label} {float(value):.2f}"


def _float(text: str) -> float | None:
    try:
        return float(text) if text.strip() else None
    except ValueError:
        raise InvalidRequest("weight", f"must be a number, not {text[:20]!r}") from None


def _done(request: Request, verbs: dict[str, str]) -> str:
    """What the last action did, in the action's own words (never text from the URL)."""
    return verbs.get(request.query_params.get("done", ""), "")


def _quote(path: str) -> str:
    return urllib.parse.quote(path, safe="")


def create_app(context: WebContext) -> Starlette:
    console = Console(context)
    routes: list[BaseRoute] = [
        Route("/", console.gallery),
        Route("/login", console.login),
        Route("/auth/callback", console.callback),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/jobs/{job_id:int}", console.job),
        Route("/jobs/{job_id:int}/delete", console.delete, methods=["POST"]),
        Route("/jobs/{job_id:int}/private", console.private, methods=["POST"]),
        Route("/logs", console.logs),
        Route("/logs/export", console.export_logs),
        Route("/users/{user_id:int}", console.user),
        Route("/users/{user_id:int}/act", console.user_action, methods=["POST"]),
        Route("/images/{job_id:int}/{index:int}", console.image),
        Route("/images/{job_id:int}/{index:int}/thumb", console.thumb),
        Route("/images/{job_id:int}/{index:int}/blurred", console.blurred),
        Route("/review", console.review),
        Route("/review/act", console.review_action, methods=["POST"]),
        Route("/healthz", console.healthz),
        Route("/status", console.status),
        Route("/metrics", console.metrics),
    ]
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
