"""Full-text search over prompts (the logs' filter): PostgreSQL's tsvector index and SQLite's
FTS5 table answer the same way, every word must match (as a word or its beginning), what is
typed is never query syntax, and an edited or removed prompt is found as it is now."""

from __future__ import annotations

import pytest

from storage.db import Database
from storage.repositories import search_words
from tests.storage.helpers import add_job


async def _found(db: Database, search: str, **filters: object) -> list[int]:
    async with db.uow() as uow:
        jobs = await uow.jobs.recent(search=search, limit=50, **filters)  # type: ignore[arg-type]
    return [job.id for job in jobs]


async def test_every_word_must_match_as_a_word_or_its_beginning(db: Database) -> None:
    cat = (await add_job(db, prompt="A red cat on a mat")).id
    cats = (await add_job(db, prompt="two CATS, sleeping")).id
    async with db.uow() as uow:
        await uow.guilds.ensure(7)
        await uow.commit()
    dog = (await add_job(db, prompt="a red dog", guild_id=7)).id
    await add_job(db, prompt="concatenate the scatter")  # "cat" inside a word: not a match
    assert await _found(db, "cat") == [cats, cat]
    assert await _found(db, "red cat") == [cat]
    assert await _found(db, "RED") == [dog, cat]
    assert await _found(db, "red", guild_ids=[7]) == [dog]
    assert await _found(db, "red", before=dog) == [cat]
    assert await _found(db, "unicorn") == []


@pytest.mark.parametrize(
    "typed",
    [
        "cat' OR 1=1 --",
        'cat" OR "dog',
        "cat & !dog | (mat:*)",
        "cat NEAR(dog) NOT mat",
        "cat\\",
        "prompt:cat",
    ],
)
async def test_query_syntax_typed_is_read_as_words(db: Database, typed: str) -> None:
    # Every word typed must still be in it: what is typed is read as those words.
    cat = (await add_job(db, prompt="a cat near 1 dog or not, on a mat in a prompt")).id
    await add_job(db, prompt="a dog alone")
    assert await _found(db, typed) == [cat]


async def test_nothing_searchable_matches_everything_and_edits_are_found(db: Database) -> None:
    first = (await add_job(db, prompt="a castle")).id
    second = (await add_job(db, prompt="a lighthouse")).id
    assert await _found(db, "!!! ---") == [second, first]
    async with db.uow() as uow:
        await uow.jobs.update_recipe(first, prompt="a windmill")
        await uow.commit()
    assert await _found(db, "castle") == []
    assert await _found(db, "windmill") == [first]


def test_search_words_are_bounded() -> None:
    assert search_words("Émile's  ünïcode_words 42") == ["émile", "s", "ünïcode", "words", "42"]
    assert len(search_words(" ".join(["w"] * 50))) == 8
    assert search_words("x" * 500) == ["x" * 64]


async def test_past_the_window_the_index_finds_the_same_pages(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL reads the jobs next to the key first, then asks the index: with a window of
    one job every page comes from the index, and is the same."""
    from storage import repositories

    ids = [(await add_job(db, prompt=f"a red cat, number {i}")).id for i in range(6)]
    await add_job(db, prompt="a dog")
    expected = {
        "first": ids[::-1][:4],
        "older": ids[::-1][4:],
        "newer": ids[1:5][::-1],  # newest first, as every page
    }

    async def pages() -> dict[str, list[int]]:
        async with db.uow() as uow:
            first = await uow.jobs.recent(search="cat", limit=4)
            older = await uow.jobs.recent(search="cat", limit=4, before=first[-1].id)
            newer = await uow.jobs.recent(search="red cat", limit=4, after=ids[0])
        return {name: [j.id for j in jobs] for name, jobs in
                (("first", first), ("older", older), ("newer", newer))}  # fmt: skip

    assert await pages() == expected
    monkeypatch.setattr(repositories, "SEARCH_WINDOW", 1)
    assert await pages() == expected
    # The index's answer takes the page's other filters with it: one user's matches, all
    # of them reachable however many others match.
    others = [(await add_job(db, user_id=2, prompt=f"a red cat {i}")).id for i in range(5)]
    async with db.uow() as uow:
        mine = await uow.jobs.recent(search="cat", limit=4, user_id=1)
        older = await uow.jobs.recent(search="cat", limit=4, user_id=1, before=mine[-1].id)
        far = await uow.jobs.recent(search="cat", limit=4, after=2**31 - 2)
    assert [j.id for j in mine + older] == ids[::-1] and others
    assert far == []
