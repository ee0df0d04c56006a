"""Every message the bot sends, built here within Discord's limits (see ``bot.limits``).

Handlers and deliveries ask this module for a ``Message`` and send it; none writes text of its
own. What users typed is escaped and cut to its share, long recipes go as a text file, lists
are paged or capped, failures are told in short classified words.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Sequence

import discord

from bot.buttons import Action, AdminButton, JobButton, QueuePageButton, result_view
from bot.limits import CONTENT, MORE, ROWS, Message, Upload, clip, escape, quote, units
from generation import wording
from generation.imaging import FittedFile
from generation.moderation import Flagged, JobReport, LogPage
from generation.presets import Preset
from generation.quotas import SERVER_QUOTAS, Usage
from generation.reproduce import ReproduceReport
from generation.server_settings import ServerRules
from generation.service import JobView, Submission
from storage.models import JobKind, JobStatus, Review
from storage.records import JobRecord

PROMPT_SHOWN = 200  # a prompt's share of a progress or result line
PROMPT_LISTED = 80  # ... of a line in a list
PROMPT_LOGGED = 150  # ... of a field in /admin logs
SCORES_SHOWN = 200
QUEUE_PAGE = 10
CHILDREN_SHOWN = 10
LOGS_PER_PAGE = 10
# A logs button's numbers: the page's edge (job id), 0 older / 1 newer, the page number, and
# the four filters (user, since, flagged, server).
LOGS_BUTTON_ARGS = 7
REVIEWED = ROWS  # flagged images in one review message
SHA256 = re.compile(r"sha256 ([0-9a-f]{16})[0-9a-f]{48}")
SHORT_SHA256 = r"sha256 \1" + MORE


BROKE = "Sorry, that failed on our side; the host's log has the details."
AWAY = "The bot cannot reach its database just now, so nothing was done: try again in a minute."
NOT_SERVED = "This bot serves only the servers its host chose; ask your server's admins."
NO_DMS = "This bot takes commands in its servers, not in direct messages."
NO_VIDEO = (
    "Job {job_id} kept no video: its model showed no steps, or the file is too large to send "
    "here. The images are as made."
)
COMPARE_PICK = (
    "**Compare…**: pick what to turn. The image is made again at its own seed, once for each "
    "value you give, everything else equal; each image is its own recipe."
)
REGION_PICK = (
    "**Vary (Region)**: pick the cells to paint anew (numbered on the image, by rows from the "
    "top left), or an area; then say what goes there. Everything outside stays as it is."
)


def when(moment: dt.datetime) -> str:
    """A Discord timestamp: each reader sees it in their own time zone."""
    return f"<t:{int(moment.timestamp())}:R>"


def plain(text: str) -> Message:
    """A short answer: a refusal, a confirmation. Cut to fit, should it ever be long."""
    return Message(content=clip(text, CONTENT))


def _fit_lines(lines: Sequence[str], limit: int, rest: str = "") -> tuple[str, bool]:
    """As many whole lines as fit in ``limit`` units, and the start of the next if there is
    room for it; then ``rest`` (a pointer to what was left out) if anything was. Whether all of
    it fitted."""
    whole = "\n".join(lines)
    if units(whole) <= limit:
        return whole, True
    room = limit - units(rest) - 1
    kept: list[str] = []
    used = 0
    for line in lines:
        size = units(line) + (1 if kept else 0)
        if used + size > room:
            left = room - used - (1 if kept else 0)
            if left >= min(40, room):  # room for a useful start of the line that overflows
                kept.append(clip(line, left))
            break
        kept.append(line)
        used += size
    return "\n".join([*kept, rest]) if rest else "\n".join(kept), False


def _with_file(lines: Sequence[str], full_text: str, filename: str) -> Message:
    """The lines as the message, or, if they do not fit, their start and the whole as a file."""
    rest = f"{MORE} the whole of it is in {filename}."
    content, whole = _fit_lines(lines, CONTENT, rest)
    if whole:
        return Message(content=content)
    return Message(content=content, uploads=[Upload(filename, full_text.encode())])


# -- a job's life: queued, progress, result ------------------------------------------------


def _headline(job: JobRecord) -> str:
    return f"**{quote(job.prompt, PROMPT_SHOWN)}** — {wording.what(job)}"


# Why a job was cancelled before it ran: Discord had already told the member it failed.
EXPIRED_BEFORE_ANSWERED = (
    "Discord gave up on the command before the bot answered it (10062), and told the member "
    "it failed; so the job was cancelled and not charged"
)


def queued(submission: Submission) -> Message:
    job = submission.job
    if submission.position == 0:
        return Message(content=f"{_headline(job)}: starting")
    return Message(content=f"{_headline(job)}: queued, {wording.describe_place(submission)}")


def progress(job: JobRecord, step: int, total: int, preview: Upload | None = None) -> Message:
    percent = round(100 * step / max(1, total))
    return Message(
        content=f"{_headline(job)}: step {step}/{total} ({percent} %)",
        uploads=[preview] if preview else [],
    )


def _safety_note(action: str | None) -> str:
    if action == "spoiler":
        return "\n⚠ The safety check flagged this image, so it is behind a spoiler."
    if action == "withhold":
        return (
            "\n⚠ The safety check flagged this image, so it is held back for the moderators "
            "to review."
        )
    return ""


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{math.ceil(size / 1024)} KiB"


def _full_file_note(job: JobRecord, size: str, page: str | None = None) -> str:
    if page is not None:  # the web console's job page: full-size downloads
        return f"The full PNG ({size}) is on its page: <{page}>"
    return (
        f"The full PNG ({size}) is kept: `/job id:{job.id} full:True` sends it where Discord "
        "takes a file that size; the host has it too."
    )


def _reduced_note(job: JobRecord, fitted: FittedFile, page: str | None) -> str:
    width, height = fitted.size
    full_width, full_height = fitted.original_size
    full = _full_file_note(job, _mib(fitted.original_bytes), page)
    return (
        f"\n📉 Reduced to fit Discord's upload limit here: WebP {width}×{height} of "
        f"{full_width}×{full_height}. {full}"
    )


def _unattached_note(job: JobRecord, page: str | None) -> str:
    return (
        "\n📎 The image could not be attached within Discord's upload limit here. "
        + _full_file_note(job, "the original", page)
    )


def result_text(job: JobRecord, mention: str | None = None) -> str:
    """The line above a finished job's images, or what happened to it."""
    who = f"{mention} " if mention else ""
    prompt = f"**{quote(job.prompt, PROMPT_SHOWN)}**"
    if job.status == JobStatus.SUCCEEDED:
        return f"{who}{prompt} — seed {job.seed}, {job.width}×{job.height} (job {job.id})"
    if job.status == JobStatus.CANCELLED:
        return f"{who}{prompt} — job {job.id} was cancelled"
    if job.status == JobStatus.DELETED:
        return f"{who}{prompt} — job {job.id} was deleted"
    return f"{who}{prompt} — job {job.id} failed: {wording.public_failure(job)}. Sorry."


def result(
    view: JobView,
    *,
    action: str | None,
    fitted: FittedFile | None,
    mention: str | None = None,
    unattached: bool = False,
    by_dm: bool = False,
    offers: frozenset[JobKind] = frozenset(JobKind),
    page: str | None = None,
) -> Message:
    """A finished job: its grid (or image) with U/V/🔄, or what happened to it; ``unattached``
    when its file could not be made to fit; ``by_dm`` when the channel would not take it;
    ``page``: its page on the web console (where a file that did not fit is, full size)."""
    job = view.job
    text = result_text(job, mention) + _safety_note(action)
    if view.reproduced is not None:  # at most three reasons: the line shares the message
        report = view.reproduced
        reasons = "; ".join(report.differences[:3]) + (" …" if len(report.differences) > 3 else "")
        text += f"\n♻ Made again: {_verdict(report)}" + (f" ({escape(reasons)})" if reasons else "")
    if action is None and any(image.review == Review.APPROVED for image in view.images):
        text += "\n✅ The safety check flagged this, and a moderator reviewed and approved it."
    if by_dm:
        text += "\n✉ Sent to you here: the channel you asked in would not take it."
    uploads = []
    if fitted is not None:
        prefix = "SPOILER_" if action == "spoiler" else ""
        uploads.append(Upload(f"{prefix}imagine-{job.id}.{fitted.extension}", fitted.data))
        if fitted.reduced:
            text += _reduced_note(job, fitted, page)
    elif unattached:
        text += _unattached_note(job, page)
    indices = [image.index for image in view.images]
    buttons = None if action == "withhold" else result_view(job, indices, offers)
    return Message(content=text, view=buttons, uploads=uploads)


def server_settings(rules: ServerRules, host: ServerRules) -> Message:
    """/admin settings: what holds in this server, and what is the host's."""

    def mark(own: bool) -> str:
        return "this server's" if own else "the host's"

    stored = rules.stored
    lines = [
        f"**Safety policy:** {rules.safety_policy} "
        f"({mark(bool(stored and stored.safety_policy))}; the host's is {host.safety_policy})",
        "**/imagine:** "
        + ("only in age-restricted channels" if rules.age_restricted_only else "in any channel"),
        "**Blocked here, on top of the host's:** "
        + (", ".join(quote(t, 60) for t in rules.blocked_terms) or "nothing"),
        "**Private mode:** "
        + {
            "allow": "each member chooses (/settings)",
            "forbid": "never: every job is public",
            "force": "always: every job is answered to its member alone",
        }[rules.private_mode],
    ]
    shown = [
        f"{name} {getattr(rules.limits, name):g}"
        + (" (this server's)" if name in rules.quotas else "")
        for name in SERVER_QUOTAS
    ]
    lines.append("**Limits:** " + ", ".join(shown))
    return Message(content=clip("\n".join(lines), CONTENT))


def presets(
    shown: Sequence[Preset], default: str | None, host_model: str, *, all_servers: bool
) -> Message:
    """/admin model list: each preset's source and defaults, and this server's default."""
    head = f"**Default here:** {default or f'the host model ({host_model})'}" + (
        "" if all_servers else "; the models this server may use:"
    )
    lines = []
    for preset in shown:
        parts = [preset.source]
        parts += [f"{key} {value}" for key, value in _preset_defaults(preset) if value is not None]
        if preset.negative_prefix:
            parts.append(f"negative {quote(preset.negative_prefix, 60)}")
        if preset.loras:
            parts.append("LoRAs " + ", ".join(f"{c.name}:{c.weight:g}" for c in preset.loras))
        if preset.cost_factor != 1:
            parts.append(f"cost ×{preset.cost_factor:g}")
        if all_servers:
            parts.append(
                "servers " + ", ".join(map(str, preset.guild_ids))
                if preset.guild_ids
                else "every server"
            )
        lines.append(f"**{preset.name}**: " + "; ".join(parts))
    body, _ = _fit_lines(
        lines or ["(no models beyond the host's)"],
        CONTENT - units(head) - 1,
        "… and more: `imagine-bot admin model list` shows them all",
    )
    return Message(content=f"{head}\n{body}")


def _preset_defaults(preset: Preset) -> list[tuple[str, object]]:
    size = f"{preset.width}×{preset.height}" if preset.width and preset.height else None
    return [
        ("sampler", preset.sampler),
        ("steps", preset.steps),
        ("guidance", None if preset.guidance is None else f"{preset.guidance:g}"),
        ("size", size),
    ]


def went_elsewhere(job: JobRecord, *, dm: bool) -> Message:
    """What the request's progress message says once the result went elsewhere."""
    where = "was sent to you by direct message" if dm else "is in a message below"
    return plain(f"{_headline(job)}: done; the result {where}.")


def sent_privately(job: JobRecord) -> Message:
    """What a private job's answer says where others may see it: nothing of the job."""
    return plain(f"Job {job.id} is private: its result goes to its member alone.")


def content_refused(job: JobRecord) -> Message:
    return plain(
        f"The image service refused job {job.id} under its content policy, so nothing was "
        "made. Try a different prompt."
    )


def moderators_notice(view: JobView) -> Message:
    job = view.job
    scores = [image.flags.get("safety") for image in view.images if image.review]
    return plain(
        f"Job {job.id} by <@{job.user_id}> was withheld: the safety check flagged "
        f"{len(scores)} image(s) {clip(str(scores), SCORES_SHOWN)}. Review it with "
        "`/admin flagged`."
    )


def undeliverable_notice(job: JobRecord, reason: str) -> Message:
    """For the moderators: a result the bot could deliver nowhere (its member cannot be told)."""
    return plain(
        f"The result of job {job.id} by <@{job.user_id}> could not be delivered: "
        f"{quote(reason, 1200)}. `/admin job id:{job.id}` shows it."
    )


# -- recipes and jobs --------------------------------------------------------------------


def _recipe_lines(view: JobView, *, shown: bool) -> list[str]:
    """The recipe: escaped for Discord (``shown``) or plain for the text file."""
    job = view.job
    head = f"**Job {job.id}** ({job.kind}, {job.status})" if shown else f"Job {job.id}"
    lines = [head if shown else f"{head} ({job.kind}, {job.status})"]
    for label, value in wording.recipe_fields(view):
        if shown and label.startswith("image "):  # hashes shortened to their first 16 digits
            lines.append(f"{label}: {SHA256.sub(SHORT_SHA256, value)}")
        elif shown:
            lines.append(f"{label}: {escape(value)}")
        else:
            lines.append(f"{label}: {value}")
    return lines


def recipe(view: JobView) -> Message:
    """Everything needed to make a job's images again (the ✉️ DM)."""
    full = "\n".join(_recipe_lines(view, shown=False))
    return _with_file(_recipe_lines(view, shown=True), full, "recipe.txt")


def _lineage(
    job: JobRecord, parent: JobRecord | None, children: Sequence[JobRecord], cap: int | None
) -> list[str]:
    lines = []
    if parent is not None:
        lines.append(f"parent: job {parent.id} ({parent.kind}) by <@{parent.user_id}>")
    shown = children if cap is None else children[:cap]
    lines += [f"child: job {c.id} ({c.kind}, {c.status})" for c in shown]
    if len(children) > len(shown):
        lines.append(f"and {len(children) - len(shown)} more")
    return lines


def _delivery_lines(view: JobView, *, shown: bool) -> list[str]:
    """Where the result went, or why not: escaped with Discord timestamps (``shown``), or
    plain for the text file."""
    if shown:
        line = wording.delivery(view.delivery, view.job, when, escape)
    else:
        line = wording.delivery(view.delivery, view.job)
    return [f"result: {line}"] if line else []


def job_details(
    view: JobView,
    parent: JobRecord | None,
    children: Sequence[JobRecord],
    *,
    full_files: Sequence[Upload] = (),
    full_note: str = "",
    owner: bool = False,
) -> Message:
    """/job: the recipe and lineage; where its result went, for its owner only; the full images
    when asked for and they fit, else a note (first, so it is never the part cut)."""
    note = [full_note] if full_note else []
    if not owner:
        view = dataclasses.replace(view, delivery=None)
    family = _lineage(view.job, parent, children, CHILDREN_SHOWN)
    lines = [*note, *_recipe_lines(view, shown=True), *_delivery_lines(view, shown=True), *family]
    full = "\n".join(
        [
            *note,
            *_recipe_lines(view, shown=False),
            *_delivery_lines(view, shown=False),
            *_lineage(view.job, parent, children, None),
        ]
    )
    message = _with_file(lines, full, "recipe.txt")
    message.uploads.extend(full_files)
    return message


def _verdict(report: ReproduceReport) -> str:
    same = sum(image.identical for image in report.images)
    verdict = "identical" if report.identical else "different"
    return (
        f"Job {report.job_id}: {verdict} ({same} of {len(report.images)} images match bit for bit)"
    )


def reproduced(report: ReproduceReport) -> Message:
    lines = [_verdict(report), *report.differences]
    return Message(content=_fit_lines(lines, CONTENT, f"{MORE} and more differences")[0])


def quota(usage: Usage) -> Message:
    limits = usage.limits
    return plain(
        "\n".join(
            [
                f"waiting or running: {usage.queued} of {limits.queued_per_user}",
                f"images today: {usage.images_today} of {limits.images_per_user_day} "
                f"(resets {when(usage.day_resets_at)})",
                f"buttons: {usage.bucket_tokens:.0f} of {limits.bucket_size} presses left, "
                f"one back every {limits.bucket_refill_seconds:g} s",
            ]
        )
    )


def queue_page(entries: Sequence[tuple[JobRecord, str]], page: int) -> Message:
    """/queue: one page of the user's running and waiting jobs (job, place), with a Cancel
    button for each and ◀ ▶ between pages."""
    if not entries:
        return plain("You have nothing waiting or running.")
    pages = math.ceil(len(entries) / QUEUE_PAGE)
    page = min(max(page, 0), pages - 1)
    shown = entries[page * QUEUE_PAGE : (page + 1) * QUEUE_PAGE]
    lines = [f"job {job.id}: {place} — {quote(job.prompt, PROMPT_LISTED)}" for job, place in shown]
    if pages > 1:
        lines.insert(0, f"Page {page + 1} of {pages} ({len(entries)} jobs)")
    view = discord.ui.View(timeout=None)
    for number, (job, _) in enumerate(shown):
        button = JobButton(Action.CANCEL, job.id, row=number // 5)
        button.item.label = f"Cancel {job.id}"
        view.add_item(button)
    if page > 0:
        view.add_item(QueuePageButton(page - 1, "◀ Previous", row=2))
    if page < pages - 1:
        view.add_item(QueuePageButton(page + 1, "Next ▶", row=2))
    return Message(content=_fit_lines(lines, CONTENT)[0], view=view)


# -- moderators ----------------------------------------------------------------------------


def admin_logs(result: LogPage, filters: tuple[int, ...], described: str) -> Message:
    """/admin logs: one page of jobs as an embed, with ◀ ▶ that keep the filters."""
    embed = discord.Embed(
        title=f"Jobs — page {result.page + 1}", description=clip(described, 1000) or None
    )
    for view in result.jobs:
        job = view.job
        flags = [i for i in view.images if i.review is not None]
        flag = f" · ⚠ flagged ({len(flags)})" if flags else ""
        embed.add_field(
            name=f"job {job.id} · {job.status}{flag}",
            value=f"{when(job.created_at)} · <@{job.user_id}> · {quote(job.prompt, PROMPT_LOGGED)}",
            inline=False,
        )
    if not result.jobs:
        embed.description = (embed.description or "") + "\nNo jobs match."
    buttons = discord.ui.View(timeout=None)
    # Each button holds the page's edge (a job id) and which way: a key, not an offset.
    if result.has_previous and result.jobs:
        first = result.jobs[0].job.id
        buttons.add_item(
            AdminButton("logs", first, 1, max(0, result.page - 1), *filters, label="◀ Previous")
        )
    if result.has_next and result.jobs:
        last = result.jobs[-1].job.id
        buttons.add_item(AdminButton("logs", last, 0, result.page + 1, *filters, label="Next ▶"))
    return Message(embeds=[embed], view=buttons)


def admin_job(report: JobReport) -> Message:
    """/admin job: recipe, lineage, the raw error, moderation events and reviews; the whole
    of it as a file when it does not fit."""
    job = report.view.job

    def lines(shown: bool) -> list[str]:
        cap = CHILDREN_SHOWN if shown else None
        text = escape if shown else str
        result = [
            *_recipe_lines(report.view, shown=shown),
            *_delivery_lines(report.view, shown=shown),
            *_lineage(job, report.parent, report.children, cap),
        ]
        if job.error:
            result.append(f"error: {text(job.error)}")
        result += [
            f"event: {e.kind} by {f'<@{e.actor_id}>' if e.actor_id else 'the bot'} "
            f"{when(e.created_at)} {text(e.reason)}"
            for e in report.events
        ]
        result += [
            f"image {i.index + 1}: review {i.review}, scores {i.flags.get('safety')}"
            for i in report.view.images
            if i.review is not None
        ]
        return result

    return _with_file(lines(shown=True), "\n".join(lines(shown=False)), f"job-{job.id}.txt")


def admin_flagged(items: Sequence[Flagged], images: Sequence[Upload]) -> Message:
    """The review queue: each flagged image behind a spoiler, Approve for each image, and
    Delete and Ban once per job (a message may not repeat a button); one row an image, so five
    at most."""
    view = discord.ui.View(timeout=None)
    lines = []
    offered: set[int] = set()
    for row, item in enumerate(items[:REVIEWED]):
        image, job = item.image, item.job
        scores = clip(str(image.flags.get("safety")), SCORES_SHOWN)
        lines.append(
            f"{row + 1}. job {job.id} image {image.index + 1} by <@{job.user_id}>: {scores} — "
            f"{quote(job.prompt, PROMPT_LISTED)}"
        )
        view.add_item(AdminButton("approve", image.id, label=f"Approve {row + 1}", row=row))
        if job.id not in offered:
            offered.add(job.id)
            view.add_item(AdminButton("delete", job.id, label=f"Delete job {job.id}", row=row))
            view.add_item(
                AdminButton("ban", job.user_id, job.id, label=f"Ban {job.user_id}", row=row)
            )
    return Message(
        content=_fit_lines(lines, CONTENT)[0], view=view, uploads=list(images[:REVIEWED])
    )
