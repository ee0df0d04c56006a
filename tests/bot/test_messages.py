"""Every message the bot builds, for any job in any state, fits Discord's limits.

The oracle is the local Discord's own rule book (``tests.fakediscord.rules``, written from
Discord's documentation), not the bot's: a message passes only if Discord would take it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import messages
from bot.limits import DEFAULT_FILE_LIMIT, Message, Upload, quote, units
from generation.imaging import FittedFile
from generation.moderation import Flagged, JobReport, LogPage
from generation.openai_engine import CONTENT_REFUSED
from generation.quotas import Quotas, Usage
from generation.reproduce import ImageComparison, ReproduceReport
from generation.samplers import SAMPLER_NAMES
from generation.service import JobView, Submission
from storage.models import JobKind, JobStatus
from storage.queue import LEASE_EXPIRED_ERROR
from storage.records import ImageRecord, JobRecord, ModerationEventRecord, UserRecord
from tests.fakediscord import rules

NOW = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
SNOWFLAKE = st.integers(10**17, 2**63 - 1)
TRICKY = ["😀", "a", "*", "_", "~", "`", "|", "\\", "@everyone ", "<@123>", "[x](https://e.x)", "ü"]
# Any script, astral planes included; and runs of what is hardest to fit or escape.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=300) | st.builds(
    lambda piece, times: (piece * times)[:1000], st.sampled_from(TRICKY), st.integers(0, 1000)
)
PROMPT = TEXT.filter(bool)
LONG = TEXT | st.builds(
    lambda piece, times: piece * times, st.sampled_from(TRICKY), st.integers(0, 8000)
)
RELAXED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def job_record(**fields: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": 1,
        "kind": JobKind.TXT2IMG,
        "parent_job_id": None,
        "parent_image_index": None,
        "user_id": 10**18,
        "guild_id": 10**18 + 1,
        "channel_id": 10**18 + 2,
        "channel_nsfw": False,
        "reproduces_job_id": None,
        "channel_public": True,
        "interaction_id": None,
        "prompt": "a red circle",
        "negative_prompt": "",
        "seed": 7,
        "steps": 10,
        "guidance": 3.0,
        "width": 64,
        "height": 64,
        "count": 4,
        "strength": None,
        "init_image_path": None,
        "init_image_sha256": None,
        "scheduler": "DPMSolverMultistepScheduler",
        "scheduler_options": {},
        "sampler": None,
        "vae_tiling": None,
        "loras": [],
        "preset": None,
        "raw_prompt": None,
        "model_id": "embedded",
        "model_revision": "f2784086d0bd",
        "dtype": "float32",
        "device_kind": "cpu",
        "torch_threads": 1,
        "library_versions": {},
        "engine_details": {},
        "cost": 1.0,
        "weight": 1.0,
        "start_tag": None,
        "virtual_start": None,
        "gpu_seconds": None,
        "status": JobStatus.SUCCEEDED,
        "attempts": 1,
        "max_attempts": 3,
        "runs": 1,
        "not_before": None,
        "deferred_since": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "cancel_requested": False,
        "created_at": NOW,
        "started_at": NOW,
        "finished_at": NOW,
        "error": None,
    }
    values.update(fields)
    return JobRecord(**values)


def image_record(job: JobRecord, index: int, review: str | None = None) -> ImageRecord:
    return ImageRecord(
        id=job.id * 10 + index,
        job_id=job.id,
        index=index,
        seed=job.seed + index,
        sha256="ab" * 32,
        path=f"images/{job.id}/1/{job.id}-{index}.png",
        width=job.width,
        height=job.height,
        flags={"safety": {"FEMALE_BREAST_EXPOSED": 0.9}} if review else {},
        review=review,
        created_at=NOW,
    )


ERRORS = (
    st.none()
    | LONG
    | st.sampled_from(
        [
            f"{CONTENT_REFUSED}: your request was rejected by the safety system",
            "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB",
            LEASE_EXPIRED_ERROR,
        ]
    )
)


@st.composite
def jobs(draw: Any) -> JobRecord:
    kind = draw(st.sampled_from(list(JobKind)))
    derived = kind in (JobKind.UPSCALE, JobKind.VARIATION, JobKind.REROLL)
    return job_record(
        id=draw(st.integers(1, 10**12)),
        kind=kind,
        parent_job_id=draw(st.integers(1, 10**12)) if derived else None,
        parent_image_index=draw(st.integers(0, 3)) if derived else None,
        user_id=draw(SNOWFLAKE),
        prompt=draw(PROMPT),
        negative_prompt=draw(TEXT),
        seed=draw(st.integers(0, 2**32 - 1)),
        steps=draw(st.integers(1, 150)),
        guidance=draw(st.floats(0, 30)),
        width=draw(st.integers(64, 4096)),
        height=draw(st.integers(64, 4096)),
        strength=draw(st.none() | st.floats(0, 1)),
        init_image_sha256=draw(st.none() | st.just("cd" * 32)),
        model_id=draw(st.text(min_size=1, max_size=300)),
        model_revision=draw(st.text(min_size=1, max_size=80)),
        scheduler=draw(st.text(min_size=1, max_size=64)),
        sampler=draw(st.none() | st.sampled_from(SAMPLER_NAMES)),
        status=draw(st.sampled_from(list(JobStatus))),
        error=draw(ERRORS),
    )


@st.composite
def views(draw: Any) -> JobView:
    job = draw(jobs())
    reviews = st.sampled_from([None, None, "pending", "approved", "deleted"])
    images = [image_record(job, i, draw(reviews)) for i in range(draw(st.integers(0, 4)))]
    return JobView(job, images)


def assert_discord_takes(message: Message, file_limit: int = DEFAULT_FILE_LIMIT) -> None:
    """Discord's rules, as the local Discord applies them, and the bot's own check agree; and
    what is sent is what was built (the last-resort guard did not have to cut anything)."""
    kwargs = message.send_kwargs()
    view = kwargs.get("view")
    payload = {
        "content": kwargs["content"] or "",
        "embeds": [embed.to_dict() for embed in kwargs.get("embeds", [])],
        "components": view.to_components() if view else [],
        "attachments": [{"id": i, "filename": u.filename} for i, u in enumerate(message.uploads)],
    }
    assert payload["content"] == message.content
    errors = rules.check_message(payload, files=len(message.uploads))
    assert not errors, json.dumps(errors.tree)[:2000]
    assert not rules.is_empty(payload, len(message.uploads))
    assert all(len(upload.data) <= file_limit for upload in message.uploads)
    assert message.problems(file_limit) == []


def _attached_text(message: Message) -> str:
    return "".join(u.data.decode() for u in message.uploads if u.filename.endswith(".txt"))


@RELAXED
@given(
    view=views(),
    position=st.integers(0, 100_000),
    eta=st.none() | st.floats(0, 10**7),
    step=st.integers(0, 150),
    action=st.sampled_from([None, "spoiler", "withhold"]),
    reduced=st.booleans(),
)
def test_the_messages_of_a_jobs_life_fit(
    view: JobView, position: int, eta: float | None, step: int, action: str | None, reduced: bool
) -> None:
    job = view.job
    assert_discord_takes(messages.queued(Submission(job, position, eta)))
    preview = Upload("preview.png", b"\x89PNG" + b"0" * 1000)
    assert_discord_takes(messages.progress(job, step, job.steps, preview))
    fitted = FittedFile(b"RIFF" + b"0" * 5000, "webp" if reduced else "png", (1, 1), (9, 9), 10**8)
    for mention in (None, f"<@{job.user_id}>"):
        for file, unattached in ((fitted, False), (None, False), (None, True)):
            result = messages.result(
                view, action=action, fitted=file, mention=mention, unattached=unattached
            )
            assert_discord_takes(result)
            assert bool(result.uploads) == (file is not None)
    assert_discord_takes(messages.content_refused(job))
    assert_discord_takes(messages.moderators_notice(view))


@RELAXED
@given(view=views(), children=st.integers(0, 400), has_parent=st.booleans())
def test_recipes_and_job_details_fit_and_a_cut_one_comes_whole_as_a_file(
    view: JobView, children: int, has_parent: bool
) -> None:
    job = view.job
    parent = job_record(id=job.id + 1, user_id=10**18) if has_parent else None
    kids = [job_record(id=job.id + 2 + n, kind=JobKind.UPSCALE) for n in range(children)]
    note = "The full PNG (12,345,678 bytes) is over Discord's 10,485,760-byte limit here."
    full = [Upload(f"imagine-{job.id}-full.png", b"png" * 100)]
    asked_full = (
        messages.job_details(view, parent, kids, full_note=note),
        messages.job_details(view, parent, kids, full_files=full),
    )
    for message in (messages.recipe(view), messages.job_details(view, parent, kids), *asked_full):
        assert_discord_takes(message)
        if any(u.filename == "recipe.txt" for u in message.uploads):
            whole = _attached_text(message)  # cut in the message: the file holds every word
            assert job.prompt in whole and job.negative_prompt in whole
            assert "recipe.txt" in message.content
    assert note in asked_full[0].content, "the reason the PNG is not there is never cut"
    assert asked_full[1].uploads[-1] == full[0]
    details = messages.job_details(view, parent, kids)
    if children > messages.CHILDREN_SHOWN and not details.uploads:
        assert f"and {children - messages.CHILDREN_SHOWN} more" in details.content


@RELAXED
@given(
    prompts=st.lists(PROMPT, min_size=0, max_size=5),
    count=st.integers(0, 150),
    page=st.integers(-2, 20),
    eta=st.floats(0, 10**7),
)
def test_every_page_of_the_queue_fits(
    prompts: list[str], count: int, page: int, eta: float
) -> None:
    entries = [
        (job_record(id=n + 1, prompt=(prompts or ["p"])[n % max(1, len(prompts))]), f"{n} in line")
        for n in range(count)
    ]
    message = messages.queue_page(entries, page)
    assert_discord_takes(message)
    if count:
        shown = min(max(page, 0), (count - 1) // messages.QUEUE_PAGE)
        on_page = entries[shown * messages.QUEUE_PAGE : (shown + 1) * messages.QUEUE_PAGE]
        labels = [c["label"] for row in message.view.to_components() for c in row["components"]]
        assert [label for label in labels if label.startswith("Cancel")] == [
            f"Cancel {job.id}" for job, _ in on_page
        ]


@RELAXED
@given(
    logged=st.lists(views(), max_size=messages.LOGS_PER_PAGE),
    page=st.integers(0, 10**6),
    has_next=st.booleans(),
    filters=st.tuples(SNOWFLAKE, st.integers(0, 2**32), st.integers(0, 1), SNOWFLAKE),
    described=LONG,
)
def test_admin_logs_fit(
    logged: list[JobView], page: int, has_next: bool, filters: tuple[int, ...], described: str
) -> None:
    result = LogPage(logged, page, has_next, has_previous=page > 0)
    assert_discord_takes(messages.admin_logs(result, filters, described))


@RELAXED
@given(
    view=views(),
    children=st.integers(0, 300),
    reasons=st.lists(LONG, max_size=30),
)
def test_admin_job_fits_with_any_error_and_any_events(
    view: JobView, children: int, reasons: list[str]
) -> None:
    job = view.job
    events = [
        ModerationEventRecord(n, "ban", 10**18, None, job.user_id, job.id, reason, {}, NOW)
        for n, reason in enumerate(reasons)
    ]
    kids = [job_record(id=job.id + 1 + n) for n in range(children)]
    message = messages.admin_job(JobReport(view, None, kids, events))
    assert_discord_takes(message)
    if message.uploads and job.error:
        assert job.error in _attached_text(message)


@RELAXED
@given(
    jobs_and_images=st.lists(
        st.tuples(jobs(), st.integers(1, 4)), min_size=1, max_size=8, unique_by=lambda t: t[0].id
    )
)
def test_the_review_queue_fits_when_one_job_has_several_flagged_images(
    jobs_and_images: list[tuple[JobRecord, int]],
) -> None:
    flagged = [
        Flagged(image_record(job, index, "pending"), job)
        for job, count in jobs_and_images
        for index in range(count)
    ]
    uploads = [Upload(f"SPOILER_{f.job.id}-{f.image.index}.png", b"0" * 100) for f in flagged]
    message = messages.admin_flagged(flagged, uploads)
    assert_discord_takes(message)
    labels = [c["label"] for row in message.view.to_components() for c in row["components"]]
    shown = min(len(flagged), messages.REVIEWED)
    assert sum(label.startswith("Approve") for label in labels) == shown
    assert len(message.uploads) == shown


@RELAXED
@given(text=LONG, differences=st.lists(LONG, max_size=20), used=st.integers(0, 10**9))
def test_short_answers_reproduce_reports_and_quotas_fit(
    text: str, differences: list[str], used: int
) -> None:
    if text:
        assert_discord_takes(messages.plain(text))
    comparison = ImageComparison(0, 7, "a" * 64, "b" * 64)
    assert_discord_takes(messages.reproduced(ReproduceReport(12, [comparison], differences)))
    user = UserRecord(1, "u", False, None, None, None, 0.0, {}, None, None, NOW)
    usage = Usage(user, Quotas(queued_per_user=used), used, used, used / 3, NOW)
    assert_discord_takes(messages.quota(usage))


def test_a_failure_is_told_in_classified_words_never_the_raw_error() -> None:
    for error, says in [
        (
            "RuntimeError: secret/path/on/the/host.py line 12 " * 50,
            "went wrong on our side (job 12)",
        ),
        ("OutOfMemoryError: CUDA out of memory. Tried to allocate 20 GiB", "ran out of memory"),
        (f"{CONTENT_REFUSED}: rejected by the safety system", "refused the prompt"),
        (LEASE_EXPIRED_ERROR, "stopped answering, too many times (job 12)"),
        ("it hung: no progress for 60 s, with no attempt left", "no progress, too many times"),
    ]:
        job = job_record(id=12, status=JobStatus.FAILED, error=error)
        text = messages.result_text(job)
        assert says in text, text
        assert (
            "secret" not in text and "Tried to allocate" not in text and "safety system" not in text
        )
        assert units(text) < 400


def test_an_echoed_prompt_can_neither_format_nor_ping() -> None:
    job = job_record(
        prompt="@everyone [free nitro](https://evil.example) **big** <@123456789012345678>"
    )
    text = messages.result_text(job)
    assert "[free nitro](" not in text.replace("\\[", "")
    assert "@everyone" not in text and "<@123456789012345678>" not in text
    assert "\\*\\*big\\*\\*" in text


MARKUP = set("\\*_~`|>#-[]()<")


def _unescaped(shown: str) -> list[str]:
    """Markdown characters in ``shown`` that are not escaped, outside <links>."""
    found = []
    outside = re.sub(r"<(?:https?|steam|discord)://[^\s<>]+>", "", shown)
    escaped = False
    for character in outside:
        if escaped:
            escaped = False
        elif character == "\\":
            escaped = True
        elif character in MARKUP:
            found.append(character)
    return found


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from(
            [
                *TRICKY,
                "[a](https://evil.example/x_y)",
                "[Claim Nitro](https://evil.example)",
                "(https://a.example).",
                "discord.gg/abc",
                "# heading",
                "-# small",
                "> quote",
                "<t:1:R>",
                "<#123456789012345678>",
                "<@&123456789012345678>",
                "\n",
            ]
        )
        | st.text(max_size=20),
        max_size=30,
    ),
    limit=st.integers(5, 400),
)
def test_an_echoed_prompt_keeps_no_markdown_link_or_mention_whatever_is_typed(
    pieces: list[str], limit: int
) -> None:
    typed = "".join(pieces)
    shown = quote(typed, limit)
    assert units(shown) <= limit
    assert _unescaped(shown) == [], shown
    words = re.sub(r"<(?:https?|steam|discord)://[^\s<>]+>", "", shown)  # links in <> aside
    assert "](" not in words.replace("\\]\\(", "")
    assert "\n" not in words and "discord.gg" not in words
    assert "@everyone" not in words and not re.search(r"(?<!\\)<@[!&]?\d", words)
    assert not re.search(r"(?:https?|steam|discord)://", words), "every link is in <>"
