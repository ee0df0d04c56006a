"""Each server's own settings: its safety policy, its blocked terms, whether /imagine works only
in age-restricted channels, and its limits. Stored in ``guild_settings``; what a server has not
set is the host's (the environment). They only ever tighten the host's: a change that would
loosen them is refused, and what is stored is read as the stricter of it and the host's now
(the host may have tightened since). A host that wants a server looser says so in the
environment (``IMAGINE_GUILD_SAFETY_POLICIES``).

Every process reads them through ``ServerSettings``, which keeps each server's for a few
seconds: a change made in one process holds everywhere within ``ttl``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from generation.access import Actor, may_edit_settings
from generation.errors import InvalidRequest, NotAllowed
from generation.prompt_filter import Blocked, PromptFilter, Term
from generation.quotas import LONGER_IS_STRICTER, SERVER_QUOTAS, Quotas, check_override
from generation.safety import ACTIONS, SafetyPolicy
from storage.db import Database
from storage.models import EventKind, utcnow
from storage.records import GuildSettingsRecord

# From the loosest to the strictest.
STRICTNESS = {"off": 0, "spoiler": 1, "withhold": 2}
HINT_SECONDS = 0.5
HOST_POLICY = "host"  # as a server's safety policy: the host's (what it set is forgotten)
POLICY_CHOICES = (*ACTIONS, HOST_POLICY)
MAX_TERMS = 500  # a server's own blocked terms
MAX_TERM_LENGTH = 200


# Private mode in a server: members choose (allow), never (forbid), or always (force).
PRIVATE_MODES = ("allow", "forbid", "force")


@dataclasses.dataclass(frozen=True, slots=True)
class ServerRules:
    """What holds in one server now (``guild_id`` None: outside any server, the host's)."""

    guild_id: int | None
    safety_policy: str
    blocked_terms: tuple[str, ...]  # the server's own, on top of the host's
    age_restricted_only: bool
    quotas: Mapping[str, int | float]  # the server's own limits, as stored
    limits: Quotas  # what holds here: the host's, tightened by the server's own
    stored: GuildSettingsRecord | None = None
    filter: PromptFilter = dataclasses.field(default_factory=PromptFilter, repr=False)
    private_mode: str = "allow"  # allow (members choose), forbid or force

    def check_prompt(self, prompt: str, negative_prompt: str = "") -> Blocked | None:
        return self.filter.check(prompt, negative_prompt, self.guild_id)

    def private(self, wanted: bool) -> bool:
        """Whether a job here is private, its member ``wanted`` it or not."""
        if self.private_mode == "force":
            return True
        return wanted and self.private_mode != "forbid"


class ServerSettings:
    """Reads and edits servers' settings over the host's defaults."""

    def __init__(
        self,
        db: Database,
        *,
        safety: SafetyPolicy | None = None,
        prompt_filter: PromptFilter | None = None,
        quotas: Quotas | None = None,
        ttl: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.safety = safety or SafetyPolicy()
        self.prompt_filter = prompt_filter or PromptFilter()
        self.quotas = quotas or Quotas()
        self.ttl = ttl
        self._monotonic = monotonic
        self._cache: dict[int, tuple[float, ServerRules]] = {}

    def host_rules(self, guild_id: int | None = None) -> ServerRules:
        """The host's settings for a server that has set none of its own."""
        return self._rules(guild_id, None)

    def _rules(self, guild_id: int | None, stored: GuildSettingsRecord | None) -> ServerRules:
        host_policy = self.safety.for_guild(guild_id)
        own = tuple(stored.blocked_terms) if stored else ()
        terms_filter = self.prompt_filter
        if own and guild_id is not None:
            terms_filter = self.prompt_filter.with_terms(guild_id, own)
        return ServerRules(
            guild_id=guild_id,
            safety_policy=_stricter(stored.safety_policy if stored else None, host_policy),
            blocked_terms=own,
            age_restricted_only=bool(stored and stored.age_restricted_only),
            quotas=dict(stored.quotas) if stored else {},
            limits=self.quotas.within(stored.quotas if stored else {}),
            stored=stored,
            filter=terms_filter,
            private_mode=(stored.private_mode if stored else None) or "allow",
        )

    async def rules(self, guild_id: int | None) -> ServerRules:
        """A server's settings now (read again after ``ttl`` seconds)."""
        if guild_id is None:
            return self.host_rules()
        now = self._monotonic()
        cached = self._cache.get(guild_id)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        async with self.db.uow() as uow:
            stored = await uow.guilds.settings(guild_id)
        rules = self._rules(guild_id, stored)
        self._cache[guild_id] = (now, rules)
        return rules

    async def hint(self, guild_id: int | None, wait: float = HINT_SECONDS) -> ServerRules:
        """A server's settings now, or as last read (the host's if never read) when the
        database does not answer within ``wait`` seconds: for a hint that must not hold up an
        answer to Discord."""
        try:
            return await asyncio.wait_for(self.rules(guild_id), wait)
        except Exception:
            cached = self._cache.get(guild_id) if guild_id is not None else None
            return cached[1] if cached is not None else self.host_rules(guild_id)

    async def safety_policy(self, guild_id: int | None) -> str:
        return (await self.rules(guild_id)).safety_policy

    async def update(
        self,
        guild_id: int,
        actor: Actor,
        *,
        safety_policy: str | None = None,
        block: Iterable[str] = (),
        unblock: Iterable[str] = (),
        age_restricted_only: bool | None = None,
        quotas: Mapping[str, object] | None = None,
        clear_quotas: Iterable[str] = (),
        private_mode: str | None = None,
    ) -> ServerRules:
        """Change a server's settings (its moderators and host admins), within the host's
        limits. Refused (nothing changed) with the reason naming the setting; the change is a
        moderation event."""
        if not may_edit_settings(actor, guild_id):
            raise NotAllowed(
                "only this server's moderators and the host's admins change its settings"
            )
        checked_quotas = {
            name: check_override(name, value, SERVER_QUOTAS)
            for name, value in (quotas or {}).items()
        }
        clear = tuple(clear_quotas)
        for name in clear:
            check_override(name, 1, SERVER_QUOTAS)
        if private_mode is not None and private_mode not in PRIVATE_MODES:
            raise InvalidRequest(
                "private_mode", f"must be one of {', '.join(PRIVATE_MODES)}, not {private_mode!r}"
            )
        added = [term.strip() for term in block if term.strip()]
        _check_change(self.host_rules(guild_id), safety_policy, added)
        self._check_quotas(checked_quotas)
        removed = {term.strip() for term in unblock}
        async with self.db.uow() as uow:
            await uow.guilds.ensure(guild_id)
            stored = await uow.guilds.lock_settings(guild_id)
            terms = [t for t in stored.blocked_terms if t not in removed]
            terms += [term for term in added if term not in terms]
            if len(terms) > MAX_TERMS:
                raise InvalidRequest(
                    "block", f"a server keeps at most {MAX_TERMS} terms of its own"
                )
            limits = {**stored.quotas, **checked_quotas}
            for name in clear:
                limits.pop(name, None)
            policy = stored.safety_policy
            if safety_policy is not None:
                policy = None if safety_policy == HOST_POLICY else safety_policy
            values: dict[str, Any] = {
                "safety_policy": policy,
                "blocked_terms": terms,
                "age_restricted_only": (
                    stored.age_restricted_only
                    if age_restricted_only is None
                    else age_restricted_only
                ),
                "quotas": limits,
                "private_mode": stored.private_mode if private_mode is None else private_mode,
                "updated_by": actor.user_id,
            }
            saved = await uow.guilds.set_settings(guild_id, **values)
            await uow.events.add(
                kind=EventKind.SETTINGS,
                actor_id=actor.user_id,
                guild_id=guild_id,
                target_user_id=None,
                reason="server settings changed",
                details={
                    "safety_policy": policy,
                    "blocked_terms_added": added,
                    "blocked_terms_removed": sorted(removed),
                    "age_restricted_only": values["age_restricted_only"],
                    "quotas": limits,
                    "private_mode": values["private_mode"] or "allow",
                },
                created_at=utcnow(),
            )
            await uow.commit()
        rules = self._rules(guild_id, saved)
        self._cache[guild_id] = (self._monotonic(), rules)
        return rules

    def _check_quotas(self, quotas: Mapping[str, int | float]) -> None:
        """A server tightens the host's limits, never loosens them."""
        for name, value in quotas.items():
            host = getattr(self.quotas, name)
            if name in LONGER_IS_STRICTER and value < host:
                raise NotAllowed(f"{name} may not be below the host's {host:g}")
            if name not in LONGER_IS_STRICTER and value > host:
                raise NotAllowed(f"{name} may not be above the host's {host:g}")


def _check_change(host: ServerRules, safety_policy: str | None, added: list[str]) -> None:
    """Refuse a change naming the setting: an unknown policy, a looser one than the host's, a
    term the filter cannot use."""
    if safety_policy is not None and safety_policy != HOST_POLICY:
        if safety_policy not in ACTIONS:
            raise InvalidRequest(
                "safety", f"must be one of {', '.join(POLICY_CHOICES)}, not {safety_policy!r}"
            )
        if STRICTNESS[safety_policy] < STRICTNESS[host.safety_policy]:
            stricter = [
                p for p, rank in STRICTNESS.items() if rank > STRICTNESS[host.safety_policy]
            ]
            raise NotAllowed(
                f"the host's safety policy is {host.safety_policy}; a server may keep it or "
                f"choose a stricter one ({', '.join(stricter) or 'none'}), not {safety_policy}"
            )
    for term in added:
        if len(term) > MAX_TERM_LENGTH:
            raise InvalidRequest("block", f"must be at most {MAX_TERM_LENGTH} characters")
        try:
            Term.parse(term)
        except ValueError as error:
            raise InvalidRequest("block", str(error)) from None


def _stricter(stored: str | None, host: str) -> str:
    if stored is None or STRICTNESS.get(stored, 0) < STRICTNESS[host]:
        return host
    return stored
