"""Discord payloads as the API sends them: users, members, guilds, channels, messages."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from typing import Any

ADMINISTRATOR = 1 << 3
# What a plain member may do in a text channel (view, send, attach, read history, ...).
MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 15) | (1 << 16) | (1 << 6) | (1 << 31)

_ids = itertools.count(1_300_000_000_000_000_000)


def snowflake() -> int:
    """A new id; increasing, like Discord's."""
    return next(_ids)


def timestamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


@dataclasses.dataclass(frozen=True)
class FakeUser:
    id: int
    name: str
    bot: bool = False
    roles: tuple[int, ...] = ()
    permissions: int = MEMBER_PERMISSIONS

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }

    def member(self) -> dict[str, Any]:
        return {
            "user": self.payload(),
            "roles": [str(role) for role in self.roles],
            "joined_at": timestamp(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "pending": False,
            "communication_disabled_until": None,
        }

    def interaction_member(self) -> dict[str, Any]:
        return {**self.member(), "permissions": str(self.permissions)}


VIEW_CHANNEL = 1 << 10
TEXT, PUBLIC_THREAD, PRIVATE_THREAD, FORUM = 0, 11, 12, 15


def text_channel(
    channel_id: int,
    guild_id: int,
    name: str,
    *,
    nsfw: bool = False,
    private: bool = False,
    kind: int = TEXT,
) -> dict[str, Any]:
    """A text (or forum) channel; ``private``: @everyone may not view it (its members' roles
    may), ``nsfw``: marked age-restricted."""
    overwrites = (
        [{"id": str(guild_id), "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)}]
        if private
        else []
    )
    return {
        "id": str(channel_id),
        "type": kind,
        "guild_id": str(guild_id),
        "name": name,
        "position": 0,
        "permission_overwrites": overwrites,
        "nsfw": nsfw,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
    }


def thread_channel(
    channel_id: int, guild_id: int, parent_id: int, owner_id: int, name: str, *, private: bool
) -> dict[str, Any]:
    """A thread under a text channel, or a post in a forum (a thread whose parent is the
    forum). A thread has no nsfw flag of its own: its parent's holds."""
    return {
        "id": str(channel_id),
        "type": PRIVATE_THREAD if private else PUBLIC_THREAD,
        "guild_id": str(guild_id),
        "parent_id": str(parent_id),
        "owner_id": str(owner_id),
        "name": name,
        "last_message_id": None,
        "message_count": 0,
        "member_count": 1,
        "rate_limit_per_user": 0,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "archive_timestamp": timestamp(),
            "locked": False,
        },
    }


def dm_channel(channel_id: int, recipient: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(channel_id), "type": 1, "recipients": [recipient], "last_message_id": None}


def role(role_id: int, name: str, permissions: int, position: int) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": name,
        "permissions": str(permissions),
        "position": position,
        "color": 0,
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def message(
    *,
    message_id: int,
    channel_id: int,
    guild_id: int | None,
    author: dict[str, Any],
    body: dict[str, Any],
    attachments: list[dict[str, Any]],
    webhook_id: int | None = None,
    reference: dict[str, Any] | None = None,
    interaction: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A message as Discord stores it, from the JSON a client sent."""
    data: dict[str, Any] = {
        "id": str(message_id),
        "channel_id": str(channel_id),
        "author": author,
        "content": body.get("content") or "",
        "timestamp": timestamp(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": attachments,
        "embeds": body.get("embeds") or [],
        "pinned": False,
        "type": 19 if reference else 0,
        "flags": int(body.get("flags") or 0),
        "components": body.get("components") or [],
        "reactions": [],
    }
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
    if webhook_id is not None:
        data["webhook_id"] = str(webhook_id)
    if reference is not None:
        data["message_reference"] = reference
    if interaction is not None:
        data["interaction_metadata"] = interaction
    return data
