"""Every button the bot shows: its ``custom_id`` holds only ids, so it works after a restart,
and is unique within its message (Discord refuses a message that repeats one)."""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Any, cast

import discord

from generation.comparing import KNOB_NAMES
from generation.editing import AREA_NAMES, CELL_NAMES, GRID, Edit
from storage.models import JobKind, JobStatus
from storage.records import JobRecord

if TYPE_CHECKING:
    from bot.client import ImagineBot

REROLL_EMOJI = "🔄"


class Action(enum.StrEnum):
    UPSCALE = "u"
    VARY = "v"
    REROLL = "r"
    VARY_SUBTLE = "vs"
    VARY_STRONG = "vx"
    VARY_REGION = "vr"  # opens the picker of cells (RegionSelect), then the prompt's form
    CANCEL = "c"
    RECIPE = "rc"  # ✉️ and ❌ as buttons: a private (ephemeral) result takes no reactions
    DELETE = "d"
    VIDEO = "vd"  # --video's animated WebP, to the presser
    COMPARE = "cmp"  # opens the picker of a knob (CompareSelect), then the values' form
    # Edits under an upscale (generation.editing)
    ZOOM_OUT_2 = "zo"
    ZOOM_OUT_15 = "zh"
    SQUARE = "sq"
    PAN_LEFT = "pl"
    PAN_RIGHT = "pr"
    PAN_UP = "pu"
    PAN_DOWN = "pd"


# What each edit button asks for.
EDITS = {
    Action.ZOOM_OUT_2: Edit.zoom(2.0),
    Action.ZOOM_OUT_15: Edit.zoom(1.5),
    Action.SQUARE: Edit.square(),
    Action.PAN_LEFT: Edit.pan("left"),
    Action.PAN_RIGHT: Edit.pan("right"),
    Action.PAN_UP: Edit.pan("up"),
    Action.PAN_DOWN: Edit.pan("down"),
}


EMOJIS = {
    Action.REROLL: REROLL_EMOJI,
    Action.RECIPE: "✉️",
    Action.DELETE: "❌",
    Action.VIDEO: "🎞️",
    Action.PAN_LEFT: "⬅️",
    Action.PAN_RIGHT: "➡️",
    Action.PAN_UP: "⬆️",
    Action.PAN_DOWN: "⬇️",
}

# How far a variation may move from its image: "Vary (subtle)" and "Vary (strong)".
SUBTLE_STRENGTH = 0.35
STRONG_STRENGTH = 0.75


class Served:
    """A button of the bot's answers only in the servers the bot serves (see
    ``ImagineBot.admit``): a message that stayed in a server the host dropped does nothing."""

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        client: ImagineBot = interaction.client
        return await client.admit(interaction)


class JobButton(
    Served,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:(?P<action>[a-z]+):(?P<job>\d+)(?::(?P<index>\d+))?",
):
    """One button acting on one job (and one of its images)."""

    def __init__(
        self, action: Action, job_id: int, index: int | None = None, row: int | None = None
    ) -> None:
        custom_id = f"imagine:{action.value}:{job_id}" + ("" if index is None else f":{index}")
        super().__init__(
            discord.ui.Button(
                label=_label(action, index),
                emoji=EMOJIS.get(action),
                style=discord.ButtonStyle.danger
                if action in (Action.CANCEL, Action.DELETE)
                else discord.ButtonStyle.secondary,
                custom_id=custom_id,
                row=row,  # the row is fixed when the view takes the item, so given here
            )
        )
        self.action = action
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> JobButton:
        index = match["index"]
        return cls(
            Action(match["action"]), int(match["job"]), None if index is None else int(index)
        )

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        await interaction.client.handlers.button(interaction, self.action, self.job_id, self.index)


def _label(action: Action, index: int | None) -> str | None:
    number = "" if index is None else str(index + 1)
    return {
        Action.UPSCALE: f"U{number}",
        Action.VARY: f"V{number}",
        Action.REROLL: None,
        Action.VARY_SUBTLE: "Vary (subtle)",
        Action.VARY_STRONG: "Vary (strong)",
        Action.VARY_REGION: "Vary (Region)",
        Action.CANCEL: "Cancel",
        Action.RECIPE: "Recipe",
        Action.DELETE: "Delete",
        Action.VIDEO: "Video",
        Action.COMPARE: "Compare…",
        Action.ZOOM_OUT_2: "Zoom Out 2×",
        Action.ZOOM_OUT_15: "Zoom Out 1.5×",
        Action.SQUARE: "Make Square",
        Action.PAN_LEFT: None,
        Action.PAN_RIGHT: None,
        Action.PAN_UP: None,
        Action.PAN_DOWN: None,
    }[action]


def result_view(
    job: JobRecord, indices: list[int], offers: frozenset[JobKind] = frozenset(JobKind)
) -> discord.ui.View | None:
    """U1–U4, V1–V4 and 🔄 under a grid; Vary (subtle/strong) and Upscale 2× under an upscale.
    Only the buttons whose job this host would make (``offers``: an upscale past the size
    caps shows no Upscale 2×)."""
    if job.status != JobStatus.SUCCEEDED:
        return None
    view = discord.ui.View(timeout=None)
    if job.private:  # an ephemeral message takes no reactions: ✉️ and ❌ are buttons
        view.add_item(JobButton(Action.RECIPE, job.id, row=3))
        view.add_item(JobButton(Action.DELETE, job.id, row=3))
    upscale, vary = JobKind.UPSCALE in offers, JobKind.VARIATION in offers
    if job.kind == JobKind.UPSCALE:
        _under_upscale(view, job, offers)
        return view if view.children else None
    for index in indices if upscale else ():
        view.add_item(JobButton(Action.UPSCALE, job.id, index, row=0))
    if JobKind.REROLL in offers:
        view.add_item(JobButton(Action.REROLL, job.id, row=0))
    for index in indices if vary else ():
        view.add_item(JobButton(Action.VARY, job.id, index, row=1))
    if job.video:  # asked with --video: its steps, as an animated WebP
        view.add_item(JobButton(Action.VIDEO, job.id, row=1))
    return view if view.children else None


def _under_upscale(view: discord.ui.View, job: JobRecord, offers: frozenset[JobKind]) -> None:
    """Vary (subtle, strong, Region), Upscale 2×; Zoom Out, Make Square (if it is not), Pan."""
    if JobKind.VARIATION in offers:
        view.add_item(JobButton(Action.VARY_SUBTLE, job.id, 0, row=0))
        view.add_item(JobButton(Action.VARY_STRONG, job.id, 0, row=0))
    edits = JobKind.EDIT in offers
    if edits:
        view.add_item(JobButton(Action.VARY_REGION, job.id, 0, row=0))
    if JobKind.UPSCALE in offers:
        button = JobButton(Action.UPSCALE, job.id, 0, row=0)
        button.item.label = "Upscale 2×"
        view.add_item(button)
    if JobKind.COMPARE in offers and not edits:
        view.add_item(JobButton(Action.COMPARE, job.id, 0, row=1))
    if not edits:
        return
    for action in (Action.ZOOM_OUT_2, Action.ZOOM_OUT_15, Action.SQUARE):
        if action is not Action.SQUARE or job.width != job.height:
            view.add_item(JobButton(action, job.id, 0, row=1))
    if JobKind.COMPARE in offers:
        view.add_item(JobButton(Action.COMPARE, job.id, 0, row=1))
    for action in (Action.PAN_LEFT, Action.PAN_RIGHT, Action.PAN_UP, Action.PAN_DOWN):
        view.add_item(JobButton(action, job.id, 0, row=2))


def chosen(interaction: discord.Interaction[Any]) -> list[str]:
    """The values a select's interaction sent, as Discord sent them."""
    data = cast(dict[str, Any], interaction.data or {})
    return [str(value) for value in data.get("values") or ()]


class RegionSelect(
    Served,
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"imagine-region:(?P<what>cells|area):(?P<job>\d+):(?P<index>\d+)",
):
    """Vary (Region)'s picker: the cells of the 3×3 grid to paint anew, or a named area.
    Choosing opens the form for the region's prompt (``RegionForm``)."""

    def __init__(self, what: str, job_id: int, index: int, row: int | None = None) -> None:
        if what == "cells":
            options = [
                discord.SelectOption(label=f"{number} · {name}", value=str(number))
                for number, name in enumerate(CELL_NAMES, start=1)
            ]
            placeholder, most = "Cells to paint anew (numbered on the image)", GRID * GRID - 1
        else:
            options = [
                discord.SelectOption(label=name, value=area) for area, name in AREA_NAMES.items()
            ]
            placeholder, most = "Or an area", 1
        super().__init__(
            discord.ui.Select(
                custom_id=f"imagine-region:{what}:{job_id}:{index}",
                placeholder=placeholder,
                options=options,
                min_values=1,
                max_values=most,
                row=row,
            )
        )
        self.what = what
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> RegionSelect:
        return cls(match["what"], int(match["job"]), int(match["index"]))

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        values = chosen(interaction)
        await interaction.client.handlers.region_picked(
            interaction, self.job_id, self.index, self.what, values
        )


class CompareSelect(
    Served,
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"imagine-compare:(?P<job>\d+):(?P<index>\d+)",
):
    """Compare…'s picker: the knob to turn. Choosing opens the form of its values."""

    def __init__(self, job_id: int, index: int, row: int | None = None) -> None:
        super().__init__(
            discord.ui.Select(
                custom_id=f"imagine-compare:{job_id}:{index}",
                placeholder="What to compare",
                options=[
                    discord.SelectOption(label=name[:1].upper() + name[1:], value=knob)
                    for knob, name in KNOB_NAMES.items()
                ],
                row=row,
            )
        )
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> CompareSelect:
        return cls(int(match["job"]), int(match["index"]))

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        values = chosen(interaction)
        await interaction.client.handlers.compare_picked(
            interaction, self.job_id, self.index, values[0] if values else ""
        )


def compare_picker(job_id: int, index: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CompareSelect(job_id, index, row=0))
    return view


def region_picker(job_id: int, index: int) -> discord.ui.View:
    """The cells and areas of Vary (Region), under the guide to their numbers."""
    view = discord.ui.View(timeout=None)
    view.add_item(RegionSelect("cells", job_id, index, row=0))
    view.add_item(RegionSelect("area", job_id, index, row=1))
    return view


class QueuePageButton(
    Served,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine-queue:(?P<page>\d+)",
):
    """◀ / ▶ under /queue: shows that page of the presser's own queue."""

    def __init__(self, page: int, label: str, row: int | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                custom_id=f"imagine-queue:{page}",
                row=row,
            )
        )
        self.page = page

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> QueuePageButton:
        return cls(int(match["page"]), label="")

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        await interaction.client.handlers.queue_page(interaction, self.page)


class AdminButton(
    Served,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine-admin:(?P<action>[a-z]+):(?P<args>[0-9:]*)",
):
    """Moderators' buttons: page the logs; approve, delete or ban from the review queue."""

    def __init__(
        self, action: str, *args: int, label: str | None = None, row: int | None = None
    ) -> None:
        style = {
            "approve": discord.ButtonStyle.success,
            "delete": discord.ButtonStyle.danger,
            "ban": discord.ButtonStyle.danger,
        }.get(action, discord.ButtonStyle.secondary)
        super().__init__(
            discord.ui.Button(
                label=label or action.title(),
                style=style,
                custom_id=f"imagine-admin:{action}:" + ":".join(map(str, args)),
                row=row,
            )
        )
        self.action = action
        self.args = args

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> AdminButton:
        args = tuple(int(a) for a in match["args"].split(":") if a)
        return cls(match["action"], *args)

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        await interaction.client.admin.button(interaction, self.action, self.args)
