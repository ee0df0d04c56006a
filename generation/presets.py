"""Model presets: the models a host offers by name, each with its defaults (sampler, steps,
guidance, size, a negative-prompt prefix, LoRAs), its cost factor and the servers that may use
it; and each server's default among them.

Host admins add and remove presets; a server's moderators pick their server's default among
the presets that server may use. A request that names a preset (``model``), or a request in a
server that has a default, takes the preset's defaults where it says nothing itself; what it
says wins (its LoRAs too, by name). The recipe then holds every value, so a job made from it
(U, V, 🔄, /reproduce) never applies the preset a second time.

Every process reads presets through ``PresetBook``, which keeps them for a few seconds (a
handful of rows, read whole): a change made in one process holds everywhere within ``ttl``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.exc import IntegrityError

from generation.access import Actor, may_edit_settings
from generation.errors import InvalidRequest, NotAllowed
from generation.loras import LoraChoice
from generation.model_info import ModelInfo
from storage.db import Database
from storage.models import EventKind, utcnow
from storage.records import ModelPresetRecord

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
MAX_PRESETS = 100  # what a member scrolls through, 25 at a time
MAX_NEGATIVE_PREFIX = 500
# A preset's fair-share factor: what its jobs are charged next to the model's own.
MIN_FACTOR, MAX_FACTOR = 0.1, 10.0
HINT_SECONDS = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class Preset:
    name: str
    source: str  # a host model's name or id, or a hub id, folder or file of its own (model)
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    negative_prefix: str = ""
    loras: tuple[LoraChoice, ...] = ()
    cost_factor: float = 1.0
    guild_ids: tuple[int, ...] = ()  # empty: every server
    # The model it runs when that is not one of the host's: described where it was added.
    model: ModelInfo | None = None

    @classmethod
    def of(cls, record: ModelPresetRecord) -> Preset:
        return cls(
            name=record.name,
            source=record.source,
            sampler=record.sampler,
            steps=record.steps,
            guidance=record.guidance,
            width=record.width,
            height=record.height,
            negative_prefix=record.negative_prefix,
            loras=tuple(LoraChoice(str(x["name"]), float(x["weight"])) for x in record.loras),
            cost_factor=record.cost_factor,
            guild_ids=tuple(int(g) for g in record.guild_ids),
            model=ModelInfo.from_dict(record.model) if record.model else None,
        )

    def offered_in(self, guild_id: int | None) -> bool:
        """A preset limited to some servers is theirs alone: not in a DM, nor on the command
        line (which acts outside any server)."""
        return not self.guild_ids or guild_id in self.guild_ids

    def row(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["loras"] = [{"name": c.name, "weight": c.weight} for c in self.loras]
        values["guild_ids"] = list(self.guild_ids)
        values["model"] = self.model.to_dict() if self.model else None
        return values

    def negative(self, negative: str) -> str:
        """The request's negative prompt after the preset's prefix."""
        return ", ".join(part for part in (self.negative_prefix.strip(), negative) if part)

    def with_loras(self, asked: Iterable[LoraChoice]) -> tuple[LoraChoice, ...]:
        """The preset's LoRAs, each replaced by the request's of the same name, then the
        request's others."""
        asked = tuple(asked)
        named = {choice.name for choice in asked}
        return tuple(c for c in self.loras if c.name not in named) + asked


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    presets: dict[str, Preset]
    defaults: dict[int, str]  # a server's default preset's name


def _readable(records: Iterable[ModelPresetRecord]) -> dict[str, Preset]:
    """The presets by name; a row this version cannot read (its model's description written
    by hand, or by a version whose fields differ) is left out, with an error in the log."""
    presets = {}
    for record in records:
        try:
            presets[record.name] = Preset.of(record)
        except (TypeError, ValueError, KeyError) as error:
            logger.error(
                "model preset %s cannot be read (%s): it is not offered", record.name, error
            )
    return presets


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidRequest(
            "name",
            f"{name!r} is not a preset name: 1-32 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return name


class PresetBook:
    """Reads and edits the host's presets and servers' defaults."""

    def __init__(
        self,
        db: Database,
        *,
        ttl: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.ttl = ttl
        self._monotonic = monotonic
        self._snapshot = Snapshot({}, {})
        self._read_at: float | None = None

    @property
    def snapshot(self) -> Snapshot:
        """What was last read (empty before the first read)."""
        return self._snapshot

    async def current(self) -> Snapshot:
        """The presets as stored, read again when older than ``ttl``."""
        if self._read_at is None or self._monotonic() - self._read_at > self.ttl:
            async with self.db.uow() as uow:
                records = await uow.presets.all()
                defaults = await uow.presets.defaults()
            self._snapshot = Snapshot(_readable(records), defaults)
            self._read_at = self._monotonic()
        return self._snapshot

    async def hint(self) -> Snapshot:
        """``current()`` within half a second, else what was last read: for answering
        Discord within its 3 s (the submit reads them again)."""
        try:
            return await asyncio.wait_for(self.current(), HINT_SECONDS)
        except Exception:  # a slow or absent database: the last read, good enough for a hint
            return self._snapshot

    def forget(self) -> None:
        self._read_at = None

    @staticmethod
    def offered(snapshot: Snapshot, guild_id: int | None) -> list[Preset]:
        return [p for p in snapshot.presets.values() if p.offered_in(guild_id)]

    @staticmethod
    def chosen(snapshot: Snapshot, name: str | None, guild_id: int | None) -> Preset | None:
        """The preset a request names, or its server's default when it names no model; None
        when it names a host model, or nothing with no default, or a preset this server may
        not use (which is then refused as a name this server does not know: another server's
        presets are not told)."""
        if name is None:
            name = snapshot.defaults.get(guild_id) if guild_id is not None else None
            if name is None:
                return None
        preset = snapshot.presets.get(name)
        return preset if preset is not None and preset.offered_in(guild_id) else None

    async def put(self, actor: Actor, preset: Preset) -> Preset:
        """Add a preset or replace one (host admins; the caller has checked its values)."""
        if not actor.host:
            raise NotAllowed("only the host's admins add or change models")
        check_name(preset.name)
        if len(preset.negative_prefix) > MAX_NEGATIVE_PREFIX:
            raise InvalidRequest(
                "negative",
                f"a preset's negative prefix is at most {MAX_NEGATIVE_PREFIX} characters",
            )
        if not MIN_FACTOR <= preset.cost_factor <= MAX_FACTOR:
            raise InvalidRequest(
                "cost",
                f"must be from {MIN_FACTOR:g} to {MAX_FACTOR:g}, not {preset.cost_factor:g}",
            )
        values = preset.row()
        async with self.db.uow() as uow:
            existing = {record.name for record in await uow.presets.all()}
            if preset.name not in existing and len(existing) >= MAX_PRESETS:
                raise InvalidRequest("name", f"the host has {MAX_PRESETS} models: remove one first")
            await uow.presets.put(
                preset.name,
                **{k: v for k, v in values.items() if k != "name"},
                created_by=actor.user_id,
            )
            if preset.guild_ids:  # servers no longer allowed lose it as their default
                await uow.presets.clear_defaults(preset.name, keep=preset.guild_ids)
            await uow.events.add(
                kind=EventKind.MODEL,
                actor_id=actor.user_id,
                guild_id=None,
                target_user_id=None,
                reason=f"model {preset.name} {'changed' if preset.name in existing else 'added'}",
                details=values,
                created_at=utcnow(),
            )
            try:
                await uow.commit()
            except IntegrityError:  # added by someone else at the same moment
                raise InvalidRequest(
                    "name", f"{preset.name} was being added elsewhere at the same time: try again"
                ) from None
        self.forget()
        return preset

    async def remove(self, actor: Actor, name: str) -> None:
        """Remove a preset (host admins); servers whose default it was go back to the host's."""
        if not actor.host:
            raise NotAllowed("only the host's admins remove models")
        async with self.db.uow() as uow:
            if not await uow.presets.remove(name):
                raise InvalidRequest("name", f"there is no model preset called {name!r}")
            await uow.presets.clear_defaults(name)
            await uow.events.add(
                kind=EventKind.MODEL,
                actor_id=actor.user_id,
                guild_id=None,
                target_user_id=None,
                reason=f"model {name} removed",
                details={"name": name},
                created_at=utcnow(),
            )
            await uow.commit()
        self.forget()

    async def set_default(self, actor: Actor, guild_id: int | None, name: str | None) -> None:
        """A server's default preset (its moderators, host admins); None: the host's model."""
        if guild_id is None or not may_edit_settings(actor, guild_id):
            raise NotAllowed("only this server's moderators pick its default model")
        self.forget()
        snapshot = await self.current()
        if name is not None:
            preset = snapshot.presets.get(name)
            if preset is None or not preset.offered_in(guild_id):
                offered = ", ".join(p.name for p in self.offered(snapshot, guild_id)) or "(none)"
                raise InvalidRequest(
                    "name", f"{name!r} is not a model this server may use; these are: {offered}"
                )
        async with self.db.uow() as uow:
            await uow.guilds.lock_settings(guild_id)
            await uow.guilds.set_settings(guild_id, default_model=name, updated_by=actor.user_id)
            await uow.events.add(
                kind=EventKind.SETTINGS,
                actor_id=actor.user_id,
                guild_id=guild_id,
                target_user_id=None,
                reason="server settings changed",
                details={"default_model": name},
                created_at=utcnow(),
            )
            await uow.commit()
        self.forget()
