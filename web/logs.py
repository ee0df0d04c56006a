"""The logs' filters, read from a query string, and their export as CSV or JSON Lines.

A filter is what a moderator typed into a GET form: every value is checked here and a bad one
is refused naming the field, never passed on. Paging is by keys (``before``/``after`` a job or
event id), so page 1 and page 10,000 cost the same.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from generation.moderation import Moderation
from generation.service import JobView
from storage.models import EventKind, JobStatus
from storage.records import ModerationEventRecord

logger = logging.getLogger(__name__)

LOG_PAGE = 50
ROW_IDS = 2**31  # job and event ids are 32-bit on PostgreSQL
DISCORD_IDS = 2**63  # snowflakes are 64-bit signed in the database
EXPORT_BATCH = 500
WHAT = ("jobs", "events")
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
JOB_COLUMNS = (
    "id",
    "created_at",
    "guild_id",
    "channel_id",
    "user_id",
    "kind",
    "status",
    "model_id",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "width",
    "height",
    "count",
    "parent_job_id",
    "private",
    "flagged_images",
    "error",
)
EVENT_COLUMNS = (
    "id",
    "created_at",
    "kind",
    "guild_id",
    "actor_id",
    "target_user_id",
    "job_id",
    "reason",
    "details",
)


class BadFilter(ValueError):
    """A filter's value that cannot be read: ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True, slots=True)
class LogQuery:
    what: str = "jobs"
    server: int | None = None
    user: int | None = None
    status: str | None = None
    flagged: bool = False
    model: str | None = None
    kind: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None  # the last day shown, whole
    search: str = ""
    before: int | None = None
    after: int | None = None

    @classmethod
    def read(cls, params: Mapping[str, str]) -> LogQuery:
        """The filters in a query string (empty fields: no filter)."""
        what = params.get("what") or "jobs"
        if what not in WHAT:
            raise BadFilter("what", "jobs or events")
        status = params.get("status") or None
        if status is not None and status not in set(JobStatus):
            raise BadFilter("status", "one of " + ", ".join(JobStatus))
        kind = params.get("kind") or None
        if kind is not None and kind not in set(EventKind):
            raise BadFilter("kind", "one of " + ", ".join(EventKind))
        return cls(
            what=what,
            server=_id(params, "server"),
            user=_id(params, "user"),
            status=status,
            flagged=params.get("flagged") in {"1", "on", "true"},
            model=(params.get("model") or "").strip()[:200] or None,
            kind=kind,
            since=_day(params, "since"),
            until=_day(params, "until"),
            search=(params.get("q") or "").strip()[:200],
            before=_id(params, "before"),
            after=_id(params, "after"),
        )

    def link(self, **changes: Any) -> str:
        """This filter's query string, with changes (None or empty: left out)."""
        values = dataclasses.replace(self, **changes)
        pairs = {
            "what": values.what,
            "server": values.server,
            "user": values.user,
            "status": values.status,
            "flagged": "1" if values.flagged else None,
            "model": values.model,
            "kind": values.kind,
            "since": values.since.isoformat() if values.since else None,
            "until": values.until.isoformat() if values.until else None,
            "q": values.search,
            "before": values.before,
            "after": values.after,
        }
        return urllib.parse.urlencode({k: v for k, v in pairs.items() if v not in (None, "")})

    def window(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """Since the start of ``since`` up to the end of ``until``, in UTC."""
        since = _midnight(self.since) if self.since else None
        until = _midnight(self.until) + dt.timedelta(days=1) if self.until else None
        return since, until


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    jobs: list[JobView]
    events: list[ModerationEventRecord]
    older: int | None  # the key of the next page back (None: this is the last)
    newer: int | None  # the key of the page before (None: this is the first)


async def read_page(
    moderation: Moderation, query: LogQuery, guild_ids: Sequence[int] | None, size: int = LOG_PAGE
) -> Page:
    """One page of the log the query asks for, in these servers only (None: all)."""
    since, until = query.window()
    if query.what == "events":
        events = await moderation.events(
            target_user_id=query.user,
            limit=size + 1,
            guild_ids=guild_ids,
            kind=query.kind,
            since=since,
            until=until,
            before=query.before,
        )
        older = events[size - 1].id if len(events) > size else None
        return Page([], events[:size], older, None)  # back to the newest: no ``before``
    logs = await moderation.logs(
        user_id=query.user,
        since=since,
        until=until,
        flagged=query.flagged,
        guild_ids=guild_ids,
        status=query.status,
        model_id=query.model,
        search=query.search or None,
        per_page=size,
        before=query.before,
        after=query.after,
    )
    jobs = logs.jobs
    older = jobs[-1].job.id if logs.has_next and jobs else None
    newer = jobs[0].job.id if logs.has_previous and jobs else None
    return Page(jobs, [], older, newer)


async def export(
    moderation: Moderation, query: LogQuery, guild_ids: Sequence[int] | None, form: str
) -> AsyncIterator[bytes]:
    """Every row the query matches, newest first, in batches read by their keys: the whole
    history streams without being held in memory."""
    line: Callable[[dict[str, Any]], str] = _csv_line if form == "csv" else _json_line
    columns = EVENT_COLUMNS if query.what == "events" else JOB_COLUMNS
    if form == "csv":
        yield _csv_line(dict(zip(columns, columns, strict=True))).encode()

    def read(changed: LogQuery) -> Awaitable[Page]:
        return read_page(moderation, changed, guild_ids, EXPORT_BATCH)

    try:
        page = await read(dataclasses.replace(query, after=None))
        while True:
            rows = [_job_row(v) for v in page.jobs] + [_event_row(e) for e in page.events]
            yield "".join(line(row) for row in rows).encode()
            if page.older is None:
                return
            page = await read(dataclasses.replace(query, before=page.older, after=None))
    except Exception:  # the status line has gone: the file itself must say it is cut short
        logger.exception("the export stopped")
        marker = dict.fromkeys(columns, "")
        marker[columns[0]] = "EXPORT INCOMPLETE: the database failed; export again"
        yield line(marker).encode()


def _job_row(view: JobView) -> dict[str, Any]:
    job = view.job
    row = {column: getattr(job, column, None) for column in JOB_COLUMNS}
    row["created_at"] = job.created_at.isoformat()
    row["status"] = str(job.status)
    row["kind"] = str(job.kind)
    row["flagged_images"] = sum(1 for image in view.images if image.review is not None)
    return row


def _event_row(event: ModerationEventRecord) -> dict[str, Any]:
    row = {column: getattr(event, column, None) for column in EVENT_COLUMNS}
    row["created_at"] = event.created_at.isoformat()
    row["kind"] = str(event.kind)
    row["details"] = json.dumps(event.details, sort_keys=True, default=str)
    return row


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str) + "\n"


def _csv_line(row: dict[str, Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(_cell(value) for value in row.values())
    return out.getvalue()


def _cell(value: Any) -> str:
    """A value as a spreadsheet shows it, never as a formula it runs: text that begins like
    one (=, +, -, @, a tab or a return) is prefixed with an apostrophe (OWASP's advice)."""
    text = "" if value is None else str(value)
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def number(text: str | None, below: int = DISCORD_IDS) -> int | None:
    """A whole number from 0 up to ``below`` (a Discord id by default; ROW_IDS for a row's
    id), else None."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value < below else None


def _id(params: Mapping[str, str], field: str) -> int | None:
    """A Discord id, or a job's or event's number (a key past every row: the last row)."""
    text = (params.get(field) or "").strip()
    if not text:
        return None
    value = number(text)
    if value is None:
        raise BadFilter(field, "a number (a Discord id, or a job or event number)")
    return min(value, ROW_IDS - 1) if field in ("before", "after") else value


def _day(params: Mapping[str, str], field: str) -> dt.date | None:
    text = (params.get(field) or "").strip()
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise BadFilter(field, "a date such as 2026-12-04") from None
    if not 2000 <= day.year <= 9000:
        raise BadFilter(field, "a date between the years 2000 and 9000")
    return day


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
