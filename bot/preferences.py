"""/settings: a member's own defaults, shown and changed as Midjourney shows them (selects for
model, aspect and sampler; a remix toggle; steps and guidance in a form; reset), and the forms
(modals) the bot opens: steps and guidance, the remix form of the Vary and 🔄 buttons, and the
prompt of a Vary (Region).

Every component's ``custom_id`` says what it is, and a form's submission is read from its
``custom_id`` and values (``on_interaction``), not from an object kept in memory: a form opened
before a restart still works when it is sent after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.buttons import Action, Served
from bot.limits import Message, clip
from generation.comparing import KNOB_NAMES, MAX_VALUES, MAX_WORD, MIN_VALUES
from generation.editing import Edit, region_of
from generation.errors import GenerationError, InvalidRequest
from generation.faults import is_transient
from generation.preferences import ASPECTS, Preferences
from generation.presets import PresetBook
from generation.requests import MAX_PROMPT_LENGTH
from generation.samplers import SAMPLER_NAMES

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)

READ_WAIT = 0.5  # seconds a command waits for the member's settings before going on without
UNREAD_SECONDS = 5.0  # after a read that failed, commands go on without for this long
CACHE_SECONDS = 300.0  # how long settings read are trusted (this process writes them)
UNSET = "-"  # a select's "not set" option (Discord needs a value for each option)
SETTINGS = "imagine-settings"
NUMBERS_FORM = "imagine-settings-numbers"
NUMBERS_FORM_ID = re.compile(re.escape(NUMBERS_FORM) + "$")
REMIX_FORM = re.compile(r"imagine-remix:(?P<action>[a-z]+):(?P<job>\d+)(?::(?P<index>\d+))?$")
# A comparison's values, for the knob picked.
COMPARE_FORM = re.compile(
    r"imagine-compare-form:(?P<job>\d+):(?P<index>\d+):(?P<knob>guidance|steps|sampler|seed|lora|word)$"
)
# Vary (Region)'s prompt, for the cells ("1,2,5") or the area ("left") picked.
REGION_FORM = re.compile(
    r"imagine-region-form:(?P<job>\d+):(?P<index>\d+):(?P<where>[1-9](?:,[1-9]){0,8}|[a-z]+)$"
)
REMIXABLE = frozenset({Action.VARY, Action.VARY_SUBTLE, Action.VARY_STRONG, Action.REROLL})
# The remix form's fields: a prompt and its parameters; a negative prompt.
PROMPT_FIELD = MAX_PROMPT_LENGTH + 300
NEGATIVE_FIELD = MAX_PROMPT_LENGTH
LOST = "Your settings could not be read just now"


class SettingsSelect(
    Served,
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=SETTINGS + r":(?P<what>model|aspect|sampler)",
):
    def __init__(self, what: str, options: list[discord.SelectOption], placeholder: str) -> None:
        super().__init__(
            discord.ui.Select(
                custom_id=f"{SETTINGS}:{what}", options=options, placeholder=placeholder
            )
        )
        self.what = what

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> SettingsSelect:
        return cls(match["what"], [discord.SelectOption(label=UNSET)], "")

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        values = _data(interaction).get("values") or [UNSET]
        chosen = str(values[0])
        await interaction.client.preferences.change(
            interaction, {self.what: None if chosen == UNSET else chosen}
        )


class SettingsButton(
    Served,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=SETTINGS + r":(?P<what>remix|private|numbers|reset)",
):
    def __init__(self, what: str, prefs: Preferences | None = None) -> None:
        remix, private = bool(prefs and prefs.remix), bool(prefs and prefs.private)
        on, off = discord.ButtonStyle.success, discord.ButtonStyle.secondary
        label, style = {
            "remix": (f"Remix mode: {'on' if remix else 'off'}", on if remix else off),
            "private": (f"Private mode: {'on' if private else 'off'}", on if private else off),
            "numbers": ("Steps & guidance…", discord.ButtonStyle.secondary),
            "reset": ("Reset settings", discord.ButtonStyle.danger),
        }[what]
        super().__init__(
            discord.ui.Button(label=label, style=style, custom_id=f"{SETTINGS}:{what}", row=3)
        )
        self.what = what

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> SettingsButton:
        return cls(match["what"])

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        await interaction.client.preferences.press(interaction, self.what)


def _options(
    values: list[str], current: str | None, unset: str, labels: dict[str, str] | None = None
) -> list[discord.SelectOption]:
    """A select's options: "not set" first, then ``values`` (at most 24), the current one
    marked as chosen (kept in the list even when it is no longer offered)."""
    shown = list(dict.fromkeys(values))[:24]
    if current is not None and current not in shown:
        shown = [*shown[:23], current]
    options = [discord.SelectOption(label=unset, value=UNSET, default=current is None)]
    options += [
        discord.SelectOption(
            label=clip((labels or {}).get(value, value), 100),
            value=value,
            default=value == current,
        )
        for value in shown
        if len(value) <= 100
    ]
    return options


def settings_message(prefs: Preferences, models: list[str], note: str = "") -> Message:
    """The /settings answer: what is set, and the controls (four rows of Discord's five)."""
    lines = [f"**{name}:** {value}" for name, value in prefs.describe()]
    head = "**Your settings** (a command's own options and `--parameters` win over them)"
    text = "\n".join([head, *lines, *([note] if note else [])])
    view = discord.ui.View(timeout=None)
    view.add_item(
        SettingsSelect(
            "model", _options(models, prefs.model, "The server's default model"), "Model"
        )
    )
    view.add_item(
        SettingsSelect(
            "aspect", _options(list(ASPECTS), prefs.aspect, "The model's own aspect"), "Aspect"
        )
    )
    view.add_item(
        SettingsSelect(
            "sampler",
            _options(list(SAMPLER_NAMES), prefs.sampler, "The model's own sampler"),
            "Sampler",
        )
    )
    for what in ("remix", "private", "numbers", "reset"):
        view.add_item(SettingsButton(what, prefs))
    return Message(content=clip(text, 2000), view=view)


class NumbersForm(discord.ui.Modal):
    """Steps and guidance, typed (a blank field: the model's own)."""

    def __init__(self, prefs: Preferences, max_steps: int) -> None:
        super().__init__(title="Steps and guidance", custom_id=NUMBERS_FORM, timeout=900)
        self.add_item(
            discord.ui.TextInput(
                label=f"Steps (1-{max_steps}; blank: the model's)",
                custom_id="steps",
                default="" if prefs.steps is None else str(prefs.steps),
                required=False,
                max_length=4,
            )
        )
        self.add_item(
            discord.ui.TextInput(
                label="Guidance (0-30; blank: the model's)",
                custom_id="guidance",
                default="" if prefs.guidance is None else f"{prefs.guidance:g}",
                required=False,
                max_length=8,
            )
        )


def _add_texts(form: discord.ui.Modal, label: str, prompt: str, negative: str) -> None:
    """A form's prompt (required) and negative prompt, filled in with the job's own."""
    form.add_item(
        discord.ui.TextInput(
            label=label,
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=prompt[:PROMPT_FIELD],
            required=True,
            min_length=1,
            max_length=PROMPT_FIELD,
        )
    )
    form.add_item(
        discord.ui.TextInput(
            label="Negative prompt",
            custom_id="negative",
            style=discord.TextStyle.paragraph,
            default=negative[:NEGATIVE_FIELD],
            required=False,
            max_length=NEGATIVE_FIELD,
        )
    )


class RemixForm(discord.ui.Modal):
    """The prompt and negative prompt of a variation or reroll, to edit before it is made."""

    def __init__(
        self, action: Action, job_id: int, index: int | None, prompt: str, negative: str
    ) -> None:
        custom_id = f"imagine-remix:{action.value}:{job_id}" + (
            "" if index is None else f":{index}"
        )
        title = "Remix" if index is None else f"Remix image {index + 1}"
        super().__init__(title=title, custom_id=custom_id, timeout=900)
        _add_texts(self, "Prompt", prompt, negative)


class RegionForm(discord.ui.Modal):
    """Vary (Region)'s prompt: what goes in the cells or area picked (the job's own prompt to
    start from, as Midjourney's remix does), and its negative prompt."""

    def __init__(self, job_id: int, index: int, edit: Edit, prompt: str, negative: str) -> None:
        where = edit.area or ",".join(map(str, edit.cells))
        super().__init__(
            title=clip(edit.describe(), 45),
            custom_id=f"imagine-region-form:{job_id}:{index}:{where}",
            timeout=900,
        )
        _add_texts(self, "Prompt for the region", prompt, negative)


class CompareForm(discord.ui.Modal):
    """A comparison's values (and, to swap a word of the prompt, the word), for its knob;
    filled in with values to start from."""

    def __init__(self, job_id: int, index: int, knob: str, suggested: str, most: int) -> None:
        title = "Compare a word of the prompt" if knob == "word" else f"Compare {KNOB_NAMES[knob]}"
        super().__init__(
            title=title, custom_id=f"imagine-compare-form:{job_id}:{index}:{knob}", timeout=900
        )
        most = min(MAX_VALUES, most)
        how_many = f"{MIN_VALUES} to {most}" if most > MIN_VALUES else str(MIN_VALUES)
        if knob == "word":
            self.add_item(
                discord.ui.TextInput(
                    label="The word of the prompt to swap",
                    custom_id="word",
                    required=True,
                    min_length=1,
                    max_length=MAX_WORD,
                )
            )
        self.add_item(
            discord.ui.TextInput(
                label=f"{how_many} values, comma-separated",
                custom_id="values",
                default=suggested or None,
                required=True,
                min_length=1,
                max_length=200,
            )
        )


def _data(interaction: discord.Interaction[Any]) -> dict[str, Any]:
    """The interaction's ``data`` as Discord sent it (a component's values, a form's fields)."""
    return cast(dict[str, Any], interaction.data or {})


def form_values(interaction: discord.Interaction[Any]) -> dict[str, str]:
    """A submitted form's text inputs by custom id (in action rows or labels)."""
    found: dict[str, str] = {}

    def walk(components: list[dict[str, Any]]) -> None:
        for component in components:
            if component.get("type") == 1:
                walk(component.get("components") or [])
            elif component.get("type") == 18:
                walk([component.get("component") or {}])
            elif "custom_id" in component:
                found[str(component["custom_id"])] = str(component.get("value") or "")

    walk(list(_data(interaction).get("components") or []))
    return found


def _number(text: str, name: str, whole: bool) -> int | float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise InvalidRequest(name, f"must be {kind}, not {text!r}") from None


class PreferencesCog(commands.Cog):
    """/settings, its controls and forms; the members' settings as last read, for commands."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.service = bot.runtime.service
        self._cache: dict[int, tuple[float, Preferences]] = {}
        self._unread_until = 0.0  # the database did not answer: don't wait on it again yet

    # -- reading -----------------------------------------------------------------------------

    async def read(self, user_id: int, *, wait: float = READ_WAIT) -> Preferences | None:
        """The member's settings: as last read (for a few minutes), else from the database,
        waiting at most ``wait`` seconds (a command must be answered within 3 s); None when
        they could not be read (the caller goes on without them and says so)."""
        cached = self._cache.get(user_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        if now < self._unread_until:  # it did not answer a moment ago: no second wait
            return cached[1] if cached is not None else None
        try:
            prefs = await asyncio.wait_for(self.service.preferences(user_id), wait)
        except Exception as error:
            if not isinstance(error, TimeoutError) and not is_transient(error):
                raise
            # The database away or slow: go on without (the caller says so).
            logger.warning("could not read user %s's settings: %s", user_id, error)
            if not isinstance(error, TimeoutError):  # away, not slow: don't ask again yet
                self._unread_until = time.monotonic() + UNREAD_SECONDS
            return cached[1] if cached is not None else None
        self._cache[user_id] = (time.monotonic(), prefs)
        return prefs

    def models_here(self, guild_id: int | None) -> list[str]:
        """The models a member may pick here: this server's presets (its default first), then
        the host's models."""
        snapshot = self.service.presets.snapshot
        default = snapshot.defaults.get(guild_id) if guild_id is not None else None
        presets = sorted(
            PresetBook.offered(snapshot, guild_id), key=lambda p: (p.name != default, p.name)
        )
        names = [p.name for p in presets]
        return names + [i.name for i in self.service.host_models.values() if i.name not in names]

    def offered(self, name: str, guild_id: int | None) -> bool:
        """Whether a model's name (a preset's or the host's) may be used here."""
        return self.service.offered(name, self.service.presets.snapshot, guild_id)

    async def for_job(
        self, user_id: int, guild_id: int | None
    ) -> tuple[Preferences | None, str | None]:
        """The settings a new job here takes, and a note for the member when some could not
        be used (unread, or a default model this server does not offer)."""
        prefs = await self.read(user_id)
        if prefs is None:
            # Not knowing whether the member uses private mode, the job is answered to them
            # alone (unless the server forbids it): never public against their setting.
            note = (
                f"{LOST}: this job uses the model's own defaults, and is shown to you alone "
                "where this server allows private mode."
            )
            return Preferences(private=True), note
        if prefs.model is not None and not self.offered(prefs.model, guild_id):
            note = (
                f"Your default model **{prefs.model}** is not offered here: this job uses the "
                "server's default (change it with /settings)."
            )
            return dataclasses.replace(prefs, model=None), note
        return prefs, None

    # -- /settings ---------------------------------------------------------------------------

    @app_commands.command(name="settings", description="Your own defaults for new jobs.")
    async def settings(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await self.service.presets.hint()
        prefs = await self.read(interaction.user.id)
        if prefs is None:
            await interaction.response.send_message(
                f"{LOST}: try again in a moment.", ephemeral=True
            )
            return
        note = await self._server_note(interaction.guild_id)
        message = settings_message(prefs, self.models_here(interaction.guild_id), note)
        await interaction.response.send_message(**message.send_kwargs(), ephemeral=True)

    async def _server_note(self, guild_id: int | None) -> str:
        """What this server decides for its members whatever their settings say."""
        mode = (await self.service.servers.hint(guild_id)).private_mode
        if mode == "forbid":
            return "This server does not allow private mode: your jobs here are public."
        if mode == "force":
            return "Every job in this server is private, whatever your setting says."
        return ""

    async def change(
        self, interaction: discord.Interaction[ImagineBot], values: dict[str, Any]
    ) -> None:
        """A select, the toggle, reset or the form: store the change, show the settings."""
        await interaction.response.defer()  # a write may take longer than Discord's 3 s
        user = interaction.user
        try:
            current = await self.service.preferences(user.id)
            if values.get("model") is not None and not self.offered(
                values["model"], interaction.guild_id
            ):
                raise InvalidRequest("model", f"{values['model']!r} is not offered here")
            changed = (
                Preferences()
                if values.get("reset")
                else current.changed(self.service.limits.max_steps, **values)
            )
            await self.service.set_preferences(user.id, changed, user.name)
        except GenerationError as error:
            await interaction.followup.send(str(error), ephemeral=True)
            return
        except Exception as error:
            self._cache.pop(user.id, None)  # the write may have landed: read it again
            if not is_transient(error):
                logger.exception("user %s's settings could not be changed", user.id)
                await interaction.followup.send(messages.BROKE, ephemeral=True)
                return
            logger.warning("could not store user %s's settings: %s", user.id, error)
            await interaction.followup.send(messages.AWAY, ephemeral=True)
            return
        self._cache[user.id] = (time.monotonic(), changed)
        note = await self._server_note(interaction.guild_id)
        models = self.models_here(interaction.guild_id)
        message = settings_message(changed, models, " ".join(filter(None, ["Saved.", note])))
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(**message.edit_kwargs())

    async def press(self, interaction: discord.Interaction[ImagineBot], what: str) -> None:
        if what == "numbers":  # a form is the first answer, or none
            prefs = await self.read(interaction.user.id)
            if prefs is None:
                await interaction.response.send_message(
                    f"{LOST}: try again in a moment.", ephemeral=True
                )
                return
            form = NumbersForm(prefs, self.service.limits.max_steps)
            await interaction.response.send_modal(form)
            return
        if what == "reset":
            await self.change(interaction, {"reset": True})
            return
        prefs = await self.read(interaction.user.id)
        await self.change(interaction, {what: not (getattr(prefs, what) if prefs else False)})

    # -- forms -------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[ImagineBot]) -> None:
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        custom_id = str(_data(interaction).get("custom_id") or "")
        forms = (
            (NUMBERS_FORM_ID, self._numbers),
            (REMIX_FORM, self._remix),
            (REGION_FORM, self._region),
            (COMPARE_FORM, self._compare),
        )
        for pattern, handle in forms:
            match = pattern.match(custom_id)
            if match is None:
                continue
            if await self.bot.admit(interaction):
                await handle(interaction, match, form_values(interaction))
            return

    async def _remix(
        self,
        interaction: discord.Interaction[ImagineBot],
        match: re.Match[str],
        values: dict[str, str],
    ) -> None:
        try:
            action = Action(match["action"])
        except ValueError:  # no form of the bot's names it
            logger.info("a remix form named an unknown action: %r", match.string)
            return
        index = match["index"]
        await self.bot.handlers.remix(
            interaction,
            action,
            int(match["job"]),
            None if index is None else int(index),
            prompt=values.get("prompt", ""),
            negative=values.get("negative", ""),
        )

    async def _compare(
        self,
        interaction: discord.Interaction[ImagineBot],
        match: re.Match[str],
        values: dict[str, str],
    ) -> None:
        knob = match["knob"]
        if knob == "word":
            knob = f"word:{values.get('word', '').strip()}"
        await self.bot.handlers.compare(
            interaction, int(match["job"]), int(match["index"]), knob, values.get("values", "")
        )

    async def _region(
        self,
        interaction: discord.Interaction[ImagineBot],
        match: re.Match[str],
        values: dict[str, str],
    ) -> None:
        try:
            edit = region_of(match["where"])
        except InvalidRequest:  # no form of the bot's names it
            logger.info("a region form named no region: %r", match.string)
            return
        await self.bot.handlers.region(
            interaction,
            int(match["job"]),
            int(match["index"]),
            edit,
            prompt=values.get("prompt", ""),
            negative=values.get("negative", ""),
        )

    async def _numbers(
        self,
        interaction: discord.Interaction[ImagineBot],
        match: re.Match[str],
        values: dict[str, str],
    ) -> None:
        try:
            steps = _number(values.get("steps", ""), "steps", whole=True)
            guidance = _number(values.get("guidance", ""), "guidance", whole=False)
            Preferences().changed(self.service.limits.max_steps, steps=steps, guidance=guidance)
        except InvalidRequest as error:
            await interaction.response.send_message(f"{error} Nothing was changed.", ephemeral=True)
            return
        await self.change(interaction, {"steps": steps, "guidance": guidance})
