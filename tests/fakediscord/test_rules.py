"""The local Discord refuses what Discord refuses, with Discord's error bodies: one test a rule."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakediscord import rules
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.server import TOKEN, Interaction

AUTH = {"Authorization": f"Bot {TOKEN}"}


@pytest.fixture
async def server() -> AsyncIterator[LocalDiscord]:
    async with LocalDiscord() as running:
        running.commands["imagine"] = {"id": "1", "name": "imagine", "options": []}
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _request(
    http: aiohttp.ClientSession,
    server: LocalDiscord,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    files: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    url = server.api_base + path
    headers = AUTH if headers is None else headers
    if files:
        form = aiohttp.FormData()
        form.add_field("payload_json", json.dumps(body or {}), content_type="application/json")
        for index, (name, data) in enumerate(files):
            form.add_field(f"files[{index}]", data, filename=name)
        response = await http.request(method, url, data=form, headers=headers)
    else:
        response = await http.request(method, url, json=body, headers=headers)
    async with response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def _send(http: aiohttp.ClientSession, server: LocalDiscord, body: dict[str, Any], **kw: Any):  # type: ignore[no-untyped-def]
    return await _request(
        http, server, "POST", f"/channels/{server.channel_id}/messages", body, **kw
    )


def _errors_at(answer: dict[str, Any], *path: str | int) -> list[str]:
    node = answer["errors"]
    for part in path:
        node = node[str(part)]
    return [error["code"] for error in node["_errors"]]


def _refused(status: int, answer: Any, *path: str | int) -> str:
    assert status == 400, (status, answer)
    assert answer["code"] == 50035 and answer["message"] == "Invalid Form Body"
    codes = _errors_at(answer, *path)
    assert len(codes) == 1, codes
    return codes[0]


async def test_content_is_limited_to_2000_utf16_code_units(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    assert (await _send(http, server, {"content": "a" * 2000}))[0] == 200
    assert (await _send(http, server, {"content": "😀" * 1000}))[0] == 200  # 2 units each
    status, answer = await _send(http, server, {"content": "a" * 2001})
    assert _refused(status, answer, "content") == "BASE_TYPE_MAX_LENGTH"
    # 1,001 characters, but 2,002 UTF-16 code units: Discord counts the latter.
    status, answer = await _send(http, server, {"content": "😀" * 1001})
    assert _refused(status, answer, "content") == "BASE_TYPE_MAX_LENGTH"
    assert "2000 or fewer" in answer["errors"]["content"]["_errors"][0]["message"]


def _embed(**fields: Any) -> dict[str, Any]:
    return {"type": "rich", **fields}


@pytest.mark.parametrize(
    ("embeds", "path", "code"),
    [
        ([_embed(title="t" * 257)], ("embeds", 0, "title"), "BASE_TYPE_MAX_LENGTH"),
        ([_embed(description="d" * 4097)], ("embeds", 0, "description"), "BASE_TYPE_MAX_LENGTH"),
        (
            [_embed(fields=[{"name": "n" * 257, "value": "v"}])],
            ("embeds", 0, "fields", 0, "name"),
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            [_embed(fields=[{"name": "n", "value": "v"}, {"name": "n", "value": "v" * 1025}])],
            ("embeds", 0, "fields", 1, "value"),
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            [_embed(fields=[{"name": "n", "value": "v"}] * 26)],
            ("embeds", 0, "fields"),
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            [_embed(footer={"text": "f" * 2049})],
            ("embeds", 0, "footer", "text"),
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            [_embed(description="d" * 3001), _embed(description="d" * 3000)],
            ("embeds",),
            "MAX_EMBED_SIZE_EXCEEDED",
        ),
        ([_embed(title="t")] * 11, ("embeds",), "BASE_TYPE_BAD_LENGTH"),
    ],
)
async def test_embeds_are_held_to_discords_limits(
    server: LocalDiscord,
    http: aiohttp.ClientSession,
    embeds: list[dict[str, Any]],
    path: tuple[str | int, ...],
    code: str,
) -> None:
    status, answer = await _send(http, server, {"embeds": embeds})
    assert _refused(status, answer, *path) == code


async def test_embeds_at_their_limits_are_taken(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    fields = [{"name": "n" * 256, "value": "v" * 10} for _ in range(6)]
    embeds = [_embed(title="t" * 256, description="d" * 3000, fields=fields), _embed(title="x")]
    assert sum(256 + 10 for _ in fields) + 256 + 3000 + 1 <= 6000
    assert (await _send(http, server, {"embeds": embeds}))[0] == 200


def _button(custom_id: str, label: str = "b") -> dict[str, Any]:
    return {"type": 2, "style": 2, "label": label, "custom_id": custom_id}


def _row(*buttons: dict[str, Any]) -> dict[str, Any]:
    return {"type": 1, "components": list(buttons)}


@pytest.mark.parametrize(
    ("components", "path", "code"),
    [
        ([_row(_button(f"r{i}")) for i in range(6)], ("components",), "BASE_TYPE_BAD_LENGTH"),
        (
            [_row(*[_button(f"b{i}") for i in range(6)])],
            ("components", 0, "components"),
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            [_row(_button("x" * 101))],
            ("components", 0, "components", 0, "custom_id"),
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            [_row(_button("same"), _button("other")), _row(_button("same"))],
            ("components", 1, "components", 0, "custom_id"),
            "COMPONENT_CUSTOM_ID_DUPLICATED",
        ),
        (
            [_row(_button("a", label="l" * 81))],
            ("components", 0, "components", 0, "label"),
            "BASE_TYPE_MAX_LENGTH",
        ),
    ],
)
async def test_components_are_held_to_discords_limits(
    server: LocalDiscord,
    http: aiohttp.ClientSession,
    components: list[dict[str, Any]],
    path: tuple[str | int, ...],
    code: str,
) -> None:
    status, answer = await _send(http, server, {"content": "x", "components": components})
    assert _refused(status, answer, *path) == code


async def test_five_rows_of_five_buttons_with_100_character_ids_are_taken(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    rows = [_row(*[_button(f"{r}{b}".ljust(100, "x")) for b in range(5)]) for r in range(5)]
    assert (await _send(http, server, {"content": "x", "components": rows}))[0] == 200


async def test_a_message_with_nothing_in_it_is_refused(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    status, answer = await _send(http, server, {"content": ""})
    assert (status, answer["code"]) == (400, 50006)


async def test_a_nonce_is_at_most_25_characters_and_deduplicated_for_a_few_minutes_only(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    status, answer = await _send(
        http, server, {"content": "x", "nonce": "n" * 26, "enforce_nonce": True}
    )
    assert _refused(status, answer, "nonce") == "BASE_TYPE_MAX_LENGTH"

    body = {"content": "once", "nonce": "imagine-job-1", "enforce_nonce": True}
    first = (await _send(http, server, body))[1]
    again = (await _send(http, server, body))[1]
    assert again["id"] == first["id"], "a repeated nonce answers with the first message"
    server.nonce_window = 0.1
    await asyncio.sleep(0.2)
    later = (await _send(http, server, body))[1]
    assert later["id"] != first["id"], "after the window the same nonce makes a new message"


async def test_files_over_the_interactions_or_the_servers_limit_are_refused_with_40005(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    server.attachment_size_limit = 1000
    asked = await server.invoke("imagine", server.alice)
    callback = f"/interactions/{asked.id}/{asked.token}/callback"
    assert (await _request(http, server, "POST", callback, {"type": 5}, headers={}))[0] == 200
    followup = f"/webhooks/{server.application_id}/{asked.token}"
    status, answer = await _request(
        http, server, "POST", followup, {"content": "x"}, files=[("a.png", b"0" * 1001)]
    )
    assert (status, answer["code"]) == (413, 40005)
    edit = followup + "/messages/@original"
    status, answer = await _request(
        http, server, "PATCH", edit, {"content": "x"}, files=[("a.png", b"0" * 1001)]
    )
    assert (status, answer["code"]) == (413, 40005)
    status, _ = await _request(
        http, server, "PATCH", edit, {"content": "x"}, files=[("a.png", b"0" * 1000)]
    )
    assert status == 200

    # A channel takes what the server's boost tier allows: 10 MiB without boosts, 50 at tier 2.
    over = [("b.png", b"0" * (10 * 2**20 + 1))]
    status, answer = await _send(http, server, {"content": "x"}, files=over)
    assert (status, answer["code"]) == (413, 40005)
    await server.set_premium_tier(2)
    assert (await _send(http, server, {"content": "x"}, files=over))[0] == 200


async def _callback(
    http: aiohttp.ClientSession, server: LocalDiscord, asked: Interaction, body: dict[str, Any]
) -> tuple[int, Any]:
    path = f"/interactions/{asked.id}/{asked.token}/callback"
    return await _request(http, server, "POST", path, body, headers={})


async def test_a_first_response_later_than_3_s_after_the_interaction_is_unknown(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    # Counted from the interaction, not from its delivery: here no bot is connected, so it
    # waits to be replayed, and its time runs all the same.
    server.response_deadline = 0.2  # Discord's 3 s, shortened
    late = await server.invoke("imagine", server.alice)
    await asyncio.sleep(0.3)
    status, answer = await _callback(http, server, late, {"type": 5})
    assert (status, answer["code"]) == (404, 10062)
    followup = f"/webhooks/{server.application_id}/{late.token}"
    assert (await _request(http, server, "POST", followup, {"content": "x"}))[0] == 401

    in_time = await server.invoke("imagine", server.alice)
    assert (await _callback(http, server, in_time, {"type": 5}))[0] == 200

    server.response_deadline = None  # a test may switch the rule off
    slow = await server.invoke("imagine", server.alice)
    await asyncio.sleep(0.3)
    assert (await _callback(http, server, slow, {"type": 5}))[0] == 200


async def test_every_route_that_makes_or_edits_a_message_applies_the_limits(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    too_long = {"content": "a" * 2001}
    asked = await server.invoke("imagine", server.alice)
    status, answer = await _callback(http, server, asked, {"type": 4, "data": too_long})
    assert _refused(status, answer, "content") == "BASE_TYPE_MAX_LENGTH"
    assert asked.callback_type is None, "a refused answer does not acknowledge the interaction"
    assert (await _callback(http, server, asked, {"type": 4, "data": {"content": "ok"}}))[0] == 200

    webhook = f"/webhooks/{server.application_id}/{asked.token}"
    for method, path in [
        ("POST", webhook),
        ("PATCH", webhook + "/messages/@original"),
        ("POST", f"/channels/{server.channel_id}/messages"),
        ("PATCH", f"/channels/{server.channel_id}/messages/{asked.original_id}"),
    ]:
        status, answer = await _request(http, server, method, path, too_long)
        assert _refused(status, answer, "content") == "BASE_TYPE_MAX_LENGTH", (method, path)


async def test_bot_routes_need_the_bot_token_and_token_routes_do_not(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    path = f"/channels/{server.channel_id}"
    status, answer = await _request(http, server, "GET", path, headers={})
    assert (status, answer["message"]) == (401, "401: Unauthorized")
    wrong = {"Authorization": "Bot someone-elses-token"}
    assert (await _request(http, server, "GET", path, headers=wrong))[0] == 401
    assert (await _request(http, server, "GET", path))[0] == 200
    assert (await _send(http, server, {"content": "x"}, headers={}))[0] == 401
    asked = await server.invoke("imagine", server.alice)
    assert (await _callback(http, server, asked, {"type": 5}))[0] == 200


async def test_mentions_follow_allowed_mentions_and_default_to_everything(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    alice, bob = server.alice, server.bob
    content = f"<@{alice.id}> <@!{bob.id}> <@&{server.admin_role}> @everyone"
    status, pinged = await _send(http, server, {"content": content})
    assert status == 200
    assert [m["id"] for m in pinged["mentions"]] == [str(alice.id), str(bob.id)]
    assert pinged["mention_roles"] == [str(server.admin_role)]
    assert pinged["mention_everyone"] is True

    only_alice = {"parse": [], "users": [str(alice.id)]}
    _, quiet = await _send(http, server, {"content": content, "allowed_mentions": only_alice})
    assert [m["id"] for m in quiet["mentions"]] == [str(alice.id)]
    assert quiet["mention_roles"] == [] and quiet["mention_everyone"] is False
    _, silent = await _send(http, server, {"content": content, "allowed_mentions": {"parse": []}})
    assert silent["mentions"] == [] and silent["mention_everyone"] is False


async def test_a_reply_to_a_deleted_message_fails_unless_asked_not_to_then_is_plain(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    _, first = await _send(http, server, {"content": "first"})
    reference = {"message_id": first["id"], "channel_id": str(server.channel_id)}
    _, reply = await _send(http, server, {"content": "reply", "message_reference": reference})
    assert reply["type"] == 19 and reply["message_reference"]["message_id"] == first["id"]

    path = f"/channels/{server.channel_id}/messages/{first['id']}"
    assert (await _request(http, server, "DELETE", path))[0] == 204
    status, answer = await _send(http, server, {"content": "r", "message_reference": reference})
    assert _refused(status, answer, "message_reference") == "REPLIES_UNKNOWN_MESSAGE"
    lenient = {**reference, "fail_if_not_exists": False}
    status, plain = await _send(http, server, {"content": "r", "message_reference": lenient})
    assert status == 200
    assert plain["type"] == 0 and "message_reference" not in plain


async def test_an_edit_is_judged_by_the_message_it_would_leave(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    files = [(f"{n}.png", b"png") for n in range(6)]
    _, sent = await _send(http, server, {"content": "six files"}, files=files)
    path = f"/channels/{server.channel_id}/messages/{sent['id']}"
    # Six kept and six more: twelve attachments, over Discord's ten.
    status, answer = await _request(http, server, "PATCH", path, {}, files=files)
    assert _refused(status, answer, "attachments") == "BASE_TYPE_BAD_LENGTH"
    # Nothing left: no content, no files.
    emptied = {"content": "", "attachments": []}
    status, answer = await _request(http, server, "PATCH", path, emptied)
    assert (status, answer["code"]) == (400, 50006)
    status, answer = await _request(http, server, "PATCH", path, {"attachments": []})
    assert status == 200, "the content is still there"


async def test_blank_content_is_an_empty_message(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    status, answer = await _send(http, server, {"content": "   \n "})
    assert (status, answer["code"]) == (400, 50006)


async def test_an_ephemeral_message_is_not_in_the_channel_for_the_bot(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    asked = await server.invoke("imagine", server.alice)
    body = {"type": 4, "data": {"content": "only you", "flags": 64}}
    assert (await _callback(http, server, asked, body))[0] == 200
    path = f"/channels/{server.channel_id}/messages/{asked.original_id}"
    for method in ("GET", "PATCH", "DELETE"):
        status, answer = await _request(http, server, method, path, {"content": "x"})
        assert (status, answer["code"]) == (404, 10008), method
    webhook = f"/webhooks/{server.application_id}/{asked.token}/messages/@original"
    assert (await _request(http, server, "PATCH", webhook, {"content": "edited"}))[0] == 200


async def test_an_outage_answers_503_on_every_route_until_it_ends(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    server.outage(0.5)
    for method, path in [
        ("POST", f"/channels/{server.channel_id}/messages"),
        ("PATCH", f"/webhooks/{server.application_id}/token/messages/@original"),
        ("POST", "/users/@me/channels"),
        ("GET", "/users/@me"),
    ]:
        async with http.request(
            method, server.api_base + path, json={"content": "x"}, headers=AUTH
        ) as response:
            assert response.status == 503, (method, path)
            assert response.content_type == "text/plain", "the edge answers, not the API"
    await asyncio.sleep(0.6)
    assert (await _send(http, server, {"content": "back"}))[0] == 200


async def test_a_channel_the_bot_may_not_post_in_refuses_posts_but_not_the_response(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    asked = await server.invoke("imagine", server.alice)
    assert (await _callback(http, server, asked, {"type": 5}))[0] == 200
    server.forbid(server.channel_id)
    status, answer = await _send(http, server, {"content": "hello"})
    assert (status, answer["code"]) == (403, 50013)
    webhook = f"/webhooks/{server.application_id}/{asked.token}/messages/@original"
    status, _ = await _request(http, server, "PATCH", webhook, {"content": "done"})
    assert status == 200, "an interaction's response needs no channel permission"


async def test_a_deleted_channel_takes_its_messages_and_interaction_responses_with_it(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    asked = await server.invoke("imagine", server.alice)
    assert (await _callback(http, server, asked, {"type": 5}))[0] == 200
    original = asked.original_id
    server.delete_channel(server.channel_id)
    assert original not in server.messages
    status, answer = await _send(http, server, {"content": "hello"})
    assert (status, answer["code"]) == (404, 10003)
    path = f"/channels/{server.channel_id}/messages/{original}"
    assert (await _request(http, server, "PATCH", path, {"content": "x"}))[1]["code"] == 10003
    webhook = f"/webhooks/{server.application_id}/{asked.token}/messages/@original"
    status, answer = await _request(http, server, "PATCH", webhook, {"content": "done"})
    assert (status, answer["code"]) == (404, 10003)


async def test_a_member_who_closed_dms_can_be_opened_but_not_written_to(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    server.close_dms(server.alice)
    status, channel = await _request(
        http, server, "POST", "/users/@me/channels", {"recipient_id": str(server.alice.id)}
    )
    assert status == 200
    path = f"/channels/{channel['id']}/messages"
    status, answer = await _request(http, server, "POST", path, {"content": "your image"})
    assert (status, answer["code"]) == (403, 50007)
    status, channel = await _request(
        http, server, "POST", "/users/@me/channels", {"recipient_id": str(server.bob.id)}
    )
    path = f"/channels/{channel['id']}/messages"
    assert (await _request(http, server, "POST", path, {"content": "yours"}))[0] == 200


def test_a_command_past_discords_limits_is_refused_where_discord_refuses_it() -> None:
    choices = [{"name": f"choice {i}", "value": f"v{i}"} for i in range(26)]
    command = {
        "name": "imagine",
        "description": "Make images.",
        "options": [
            {"name": "seed", "description": "A seed.", "type": 4},
            {"name": "prompt", "description": "What to draw.", "type": 3, "required": True},
            {"name": "sampler", "description": "x" * 101, "type": 3, "choices": choices},
        ],
    }
    errors = rules.check_command(command).tree
    assert "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID" in str(errors["options"]["1"])
    assert errors["options"]["2"]["choices"]["_errors"][0]["code"] == "BASE_TYPE_BAD_LENGTH"
    assert errors["options"]["2"]["description"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
    assert not rules.check_command({**command, "options": command["options"][1:2]})
    assert rules.check_command({"name": "Imagine", "description": "x"})
    assert not rules.check_command({"name": "don't", "description": "x"})
    assert not rules.check_command({"name": "हिंदी", "description": "x"})
    assert not rules.check_command({"name": "Make variations", "type": 3})


def test_subcommands_nest_only_as_discord_allows() -> None:
    def sub(name: str, *options: dict[str, object]) -> dict[str, object]:
        return {"name": name, "description": "x", "type": 1, "options": list(options)}

    def group(name: str, *options: dict[str, object]) -> dict[str, object]:
        return {"name": name, "description": "x", "type": 2, "options": list(options)}

    plain = {"name": "text", "description": "x", "type": 3}
    good = {
        "name": "admin",
        "description": "x",
        "options": [sub("logs", plain), group("model", sub("add", plain))],
    }
    assert not rules.check_command(good)
    for options in (
        [group("model", group("inner", sub("add")))],  # a group in a group
        [sub("logs", sub("inner"))],  # a subcommand in a subcommand
        [sub("logs"), plain],  # subcommands beside a plain option
        [group("model", plain)],  # a plain option in a group
    ):
        assert rules.check_command({"name": "admin", "description": "x", "options": options}), (
            options
        )


def _text_input(**fields: Any) -> dict[str, Any]:
    return {"type": 4, "custom_id": "prompt", "style": 2, "label": "Prompt", **fields}


@pytest.mark.parametrize(
    ("change", "path", "code"),
    [
        ({"title": "t" * 46}, ("title",), "BASE_TYPE_MAX_LENGTH"),
        ({"components": []}, ("components",), "BASE_TYPE_BAD_LENGTH"),
        (
            {"components": [{"type": 1, "components": [_text_input()]}] * 6},
            ("components",),
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            {"components": [{"type": 1, "components": [_text_input(label="l" * 46)]}]},
            ("components", 0, "components", 0, "label"),
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            {"components": [{"type": 1, "components": [_text_input(value="v" * 4001)]}]},
            ("components", 0, "components", 0, "value"),
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            {
                "components": [
                    {"type": 1, "components": [_text_input(max_length=10, value="v" * 11)]}
                ]
            },
            ("components", 0, "components", 0, "value"),
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            {"components": [{"type": 1, "components": [_text_input(style=3)]}]},
            ("components", 0, "components", 0, "style"),
            "UNION_TYPE_CHOICES",
        ),
        (
            {"components": [{"type": 1, "components": [{"type": 2, "custom_id": "b"}]}]},
            ("components", 0, "components", 0, "type"),
            "UNION_TYPE_CHOICES",
        ),
        (
            {
                "components": [
                    {"type": 1, "components": [_text_input()]},
                    {"type": 1, "components": [_text_input()]},
                ]
            },
            ("components", 1, "components", 0, "custom_id"),
            "COMPONENT_CUSTOM_ID_DUPLICATED",
        ),
    ],
)
def test_a_modal_is_held_to_discords_limits(
    change: dict[str, Any], path: tuple[str | int, ...], code: str
) -> None:
    modal = {
        "custom_id": "remix",
        "title": "Remix",
        "components": [{"type": 1, "components": [_text_input()]}],
        **change,
    }
    errors = rules.check_modal(modal)
    node = errors.tree
    for part in path:
        node = node[str(part)]
    assert [error["code"] for error in node["_errors"]] == [code]
    base = {
        "custom_id": "remix",
        "title": "Remix",
        "components": [{"type": 1, "components": [_text_input()]}],
    }
    assert not rules.check_modal(base)


async def test_a_modal_answers_a_command_or_a_component_but_not_a_modal(
    server: LocalDiscord, http: aiohttp.ClientSession
) -> None:
    modal = {
        "custom_id": "remix",
        "title": "Remix",
        "components": [{"type": 1, "components": [_text_input(value="a fox")]}],
    }
    command = await server.invoke("imagine", server.alice)
    path = f"/interactions/{command.id}/{command.token}/callback"
    status, _ = await _request(http, server, "POST", path, {"type": 9, "data": modal}, headers={})
    assert status == 200
    assert server.modal_fields(command) == {"Prompt": "a fox"}
    submitted = await server.submit_modal(command, {"Prompt": "a cat"})
    assert submitted.type == 5
    path = f"/interactions/{submitted.id}/{submitted.token}/callback"
    status, answer = await _request(
        http, server, "POST", path, {"type": 9, "data": modal}, headers={}
    )
    assert status == 400 and answer["code"] == 50035
    # Not opened from a message: it cannot update one (6, 7).
    status, answer = await _request(http, server, "POST", path, {"type": 6}, headers={})
    assert status == 400 and answer["code"] == 50035
    assert (await _request(http, server, "POST", path, {"type": 5}, headers={}))[0] == 200


def test_a_string_select_takes_as_many_values_as_it_has_options() -> None:
    def select(**fields: Any) -> dict[str, Any]:
        options = [{"label": "a", "value": "a"}, {"label": "b", "value": "b"}]
        item = {"type": 3, "custom_id": "s", "options": options, **fields}
        return {"content": "x", "components": [{"type": 1, "components": [item]}]}

    assert not rules.check_message(select())
    assert not rules.check_message(select(min_values=0, max_values=2))
    assert rules.check_message(select(max_values=3))
    options = [
        {"label": "a", "value": "a", "default": True},
        {"label": "b", "value": "b", "default": True},
    ]
    assert rules.check_message(select(options=options))
    assert rules.check_message(select(options=[{"label": "a", "value": "a"}] * 2))
