"""The logs' export: every row once, in batches by key, and a file cut short says so."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

from storage.records import ModerationEventRecord
from web import logs
from web.logs import LogQuery, export

AT = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)


class Events:
    """Moderation's events() over ``count`` events, failing after ``fail_after`` reads."""

    def __init__(self, count: int, fail_after: int | None = None) -> None:
        self.rows = [
            ModerationEventRecord(i, "strike", 1, 2, 3, None, f"=cmd|{i}", {"n": i}, AT)
            for i in range(count, 0, -1)
        ]
        self.reads, self.fail_after = 0, fail_after

    async def events(self, *, limit: int, before: int | None, **_: Any) -> list[Any]:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise ConnectionError("the database failed over")
        rows = [row for row in self.rows if before is None or row.id < before]
        return rows[:limit]


async def _collect(source: Events, form: str) -> str:
    query = LogQuery(what="events")
    chunks = [chunk async for chunk in export(source, query, None, form)]  # type: ignore[arg-type]
    return b"".join(chunks).decode()


async def test_every_row_once_across_batches(monkeypatch: Any) -> None:
    monkeypatch.setattr(logs, "EXPORT_BATCH", 7)
    source = Events(30)
    rows = [json.loads(line) for line in (await _collect(source, "jsonl")).splitlines()]
    assert [row["id"] for row in rows] == list(range(30, 0, -1))
    assert source.reads == 5  # 7 + 7 + 7 + 7 + 2
    table = list(csv.DictReader(io.StringIO(await _collect(Events(3), "csv"))))
    assert [row["reason"] for row in table] == ["'=cmd|3", "'=cmd|2", "'=cmd|1"]


async def test_an_export_cut_short_says_so_in_the_file(monkeypatch: Any) -> None:
    monkeypatch.setattr(logs, "EXPORT_BATCH", 7)
    lines = (await _collect(Events(30, fail_after=2), "jsonl")).splitlines()
    assert len(lines) == 15
    assert json.loads(lines[-1])["id"].startswith("EXPORT INCOMPLETE")
    table = list(csv.reader(io.StringIO(await _collect(Events(30, fail_after=1), "csv"))))
    assert table[-1][0].startswith("EXPORT INCOMPLETE") and len(table) == 1 + 7 + 1
