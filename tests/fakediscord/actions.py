"""What a member does in the local Discord: run a slash command, click a button, react."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.fakediscord.payloads import ADMINISTRATOR, FakeUser, dm_channel, snowflake
from tests.fakediscord.server import EPHEMERAL, LOADING, FakeDiscord, Interaction

T = TypeVar("T")

OPTION_TYPES = {str: 3, int: 4, bool: 5, float: 10}
USER = 6
ATTACHMENT = 11


def _text(message: dict[str, Any]) -> str:
    titles = [embed.get("title") or "" for embed in message.get("embeds") or []]
    return "\n".join([str(message["content"]), *titles]).strip()


class CommandHidden(AssertionError):
    """Discord does not show this member the command, so they cannot run it."""


class LocalDiscord(FakeDiscord):
    """The local Discord with helpers that read like a user."""

    def show_to_everyone(self, command: str) -> None:
        """Each server's owner shows the command to every member (Server Settings →
        Integrations): only the bot's own checks stand in the way."""
        for guild_id in (self.guild_id, self.other_guild_id):
            self.command_roles.setdefault((guild_id, command), set()).add(guild_id)

    def channel_of(self, user: FakeUser) -> int:
        """The channel a user uses the bot in: their own server's."""
        home = self.home.get(user.id, self.guild_id)
        return next(c for c, g in self.channel_guilds.items() if g == home)

    def _interaction(
        self, kind: int, user: FakeUser, data: dict[str, Any], channel_id: int | None = None
    ) -> Interaction:
        channel_id = channel_id or self.channel_of(user)
        guild_id = self.channel_guilds.get(channel_id)
        if guild_id is not None and self.home.get(user.id) != guild_id:
            # Discord shows a server's messages (and their buttons) to its members only.
            raise AssertionError(f"{user.name} is not a member of the server of {channel_id}")
        interaction = Interaction(
            id=snowflake(),
            token=secrets.token_urlsafe(24),
            type=kind,
            user=user,
            channel_id=channel_id,
            created=time.monotonic(),
            attachment_size_limit=self.attachment_size_limit,
        )
        self.interactions[interaction.token] = interaction
        return interaction

    def _payload(self, interaction: Interaction, data: dict[str, Any]) -> dict[str, Any]:
        channel_id = interaction.channel_id
        if channel_id in self.dm_channels:  # a button on a message in the bot's DM
            return {
                "id": str(interaction.id),
                "application_id": str(self.application_id),
                "type": interaction.type,
                "token": interaction.token,
                "version": 1,
                "channel_id": str(channel_id),
                "channel": dm_channel(channel_id, interaction.user.payload()),
                "user": interaction.user.payload(),
                "data": data,
                "locale": "en-US",
                "app_permissions": str((1 << 53) - 1),
                "entitlements": [],
                "authorizing_integration_owners": {"0": str(self.guild_id)},
                "context": 1,
                "attachment_size_limit": interaction.attachment_size_limit,
            }
        guild_id = self.channel_guilds[channel_id]
        return {
            "id": str(interaction.id),
            "application_id": str(self.application_id),
            "type": interaction.type,
            "token": interaction.token,
            "version": 1,
            "guild_id": str(guild_id),
            "channel_id": str(channel_id),
            "channel": self.channel_payload(channel_id),
            "member": interaction.user.interaction_member(),
            "data": data,
            "locale": "en-US",
            "guild_locale": "en-US",
            "app_permissions": str((1 << 53) - 1),
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild_id)},
            "context": 0,
            "attachment_size_limit": interaction.attachment_size_limit,
        }

    async def invoke(
        self, command: str, user: FakeUser, /, channel_id: int | None = None, **options: Any
    ) -> Interaction:
        """Run ``/command`` (or ``/group sub``) as ``user`` (in their server's first channel,
        or ``channel_id``); an option given as an upload() dict is an attachment, a FakeUser a
        member."""
        top, *path = command.split(" ")
        registered = self.commands.get(top)
        if registered is None:
            raise AssertionError(f"/{top} was never registered; known: {sorted(self.commands)}")
        self._check_may_use(registered, user, channel_id or self.channel_of(user))
        declared_options = registered.get("options", [])
        kinds = []
        for depth, name in enumerate(path):
            # A subcommand group (type 2) holds subcommands (type 1); a subcommand, options.
            kind = 1 if depth == len(path) - 1 else 2
            found = [o for o in declared_options if o["name"] == name and o["type"] == kind]
            if not found:
                raise AssertionError(f"/{command}: {top} has no {name!r} there")
            declared_options = found[0].get("options", [])
            kinds.append(kind)
        declared = {o["name"]: o for o in declared_options}
        values = []
        resolved: dict[str, Any] = {}
        for name, value in options.items():
            # A Discord client sends only the options a command declares, and of an option
            # with choices, only one of its choices.
            if name not in declared:
                raise AssertionError(f"/{command} has no option {name!r}: {sorted(declared)}")
            choices = [choice["value"] for choice in declared[name].get("choices", [])]
            if choices and value not in choices:
                raise AssertionError(f"/{command} {name}: {value!r} is not one of {choices}")
            low, high = declared[name].get("min_value"), declared[name].get("max_value")
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and ((low is not None and value < low) or (high is not None and value > high))
            ):
                raise AssertionError(f"/{command} {name}: {value!r} is outside {low}..{high}")
            if isinstance(value, FakeUser):
                resolved.setdefault("users", {})[str(value.id)] = value.payload()
                member = {k: v for k, v in value.member().items() if k != "user"}
                resolved.setdefault("members", {})[str(value.id)] = {
                    **member,
                    "permissions": str(value.permissions),
                }
                values.append({"name": name, "type": USER, "value": str(value.id)})
                continue
            if isinstance(value, dict) and "filename" in value:
                resolved.setdefault("attachments", {})[value["id"]] = value
                values.append({"name": name, "type": ATTACHMENT, "value": value["id"]})
                continue
            kind = declared[name]["type"] if name in declared else OPTION_TYPES[type(value)]
            values.append({"name": name, "type": kind, "value": value})
        for name, kind in reversed(list(zip(path, kinds, strict=True))):
            values = [{"name": name, "type": kind, "options": values}]
        data = {
            "id": registered["id"],
            "name": top,
            "type": 1,
            "options": values,
            "guild_id": str(self.home.get(user.id, self.guild_id)),
        }
        if resolved:
            data["resolved"] = resolved
        interaction = self._interaction(2, user, data, channel_id)
        await self.dispatch("INTERACTION_CREATE", self._payload(interaction, data))
        return interaction

    async def suggestions(
        self, command: str, user: FakeUser, focused: str, text: str, **options: Any
    ) -> list[dict[str, Any]]:
        """What Discord shows ``user`` typing ``text`` into ``focused`` of ``/command`` (an
        autocomplete interaction; the bot answers with up to 25 choices)."""
        registered = self.commands.get(command)
        if registered is None:
            raise AssertionError(f"/{command} was never registered")
        self._check_may_use(registered, user, self.channel_of(user))
        declared = {o["name"]: o for o in registered.get("options", [])}
        if not declared.get(focused, {}).get("autocomplete"):
            raise AssertionError(f"/{command} {focused} does not suggest (no autocomplete)")
        values = [
            {"name": name, "type": declared[name]["type"], "value": value}
            for name, value in options.items()
        ]
        values.append(
            {"name": focused, "type": declared[focused]["type"], "value": text, "focused": True}
        )
        data = {"id": registered["id"], "name": command, "type": 1, "options": values}
        interaction = self._interaction(4, user, data)
        await self.dispatch("INTERACTION_CREATE", self._payload(interaction, data))
        await self.wait_for(
            lambda: interaction.callback_type is not None, 10, f"suggestions for {focused}"
        )
        body = next(b for i, _, b in reversed(self.callbacks) if i == interaction.id)
        return list(body.get("choices") or [])

    def _check_may_use(self, registered: dict[str, Any], user: FakeUser, channel_id: int) -> None:
        """Discord does not offer a command to a member who lacks its default permissions
        (unless the server's owner allowed one of their roles), nor a guild-only one in a DM."""
        guild_id = self.channel_guilds.get(channel_id)
        contexts = registered.get("contexts")
        if guild_id is None and (
            registered.get("dm_permission") is False or (contexts is not None and 1 not in contexts)
        ):
            raise CommandHidden(f"/{registered['name']} is not offered in a DM")
        needed = registered.get("default_member_permissions")
        if guild_id is None or needed is None:
            return
        bits = int(needed)
        allowed_roles = self.command_roles.get((guild_id, registered["name"]), set())
        if (
            user.permissions & ADMINISTRATOR
            or user.permissions & bits == bits
            or allowed_roles.intersection({*user.roles, user.id, guild_id})
        ):
            return
        raise CommandHidden(f"/{registered['name']} is not offered to {user.name}")

    async def click(self, message_id: int, label: str, user: FakeUser) -> Interaction:
        """Press the button labelled ``label`` (or with that emoji) on a message."""
        stored = self.messages[message_id]
        for row in stored["components"]:
            for component in row.get("components", []):
                emoji = (component.get("emoji") or {}).get("name")
                if label in (component.get("label"), emoji):
                    data = {"custom_id": component["custom_id"], "component_type": 2}
                    return await self._on_message(message_id, data, user)
        raise AssertionError(
            f"no button {label!r} on message {message_id}; it has {self.buttons(stored)}"
        )

    async def choose(
        self, message_id: int, placeholder: str, values: list[str], user: FakeUser
    ) -> Interaction:
        """Pick ``values`` (by label or value) in the string select with that placeholder (or
        custom id) on a message; Discord sends only values the select offers, as many as it
        allows."""
        stored = self.messages[message_id]
        for row in stored["components"]:
            for component in row.get("components", []):
                if component.get("type") != 3 or placeholder not in (
                    component.get("placeholder"),
                    component.get("custom_id"),
                ):
                    continue
                offered = {o["label"]: o["value"] for o in component["options"]}
                offered.update({o["value"]: o["value"] for o in component["options"]})
                unknown = [v for v in values if v not in offered]
                if unknown:
                    raise AssertionError(f"{placeholder!r} offers no {unknown}: {sorted(offered)}")
                low, high = component.get("min_values", 1), component.get("max_values", 1)
                if not low <= len(values) <= high:
                    raise AssertionError(f"{placeholder!r} takes {low} to {high} values")
                data = {
                    "custom_id": component["custom_id"],
                    "component_type": 3,
                    "values": [offered[v] for v in values],
                }
                return await self._on_message(message_id, data, user)
        raise AssertionError(f"no select {placeholder!r} on message {message_id}")

    async def _on_message(
        self, message_id: int, data: dict[str, Any], user: FakeUser
    ) -> Interaction:
        """A component interaction on a stored message, as Discord sends it."""
        stored = self.messages[message_id]
        interaction = self._interaction(3, user, data, int(stored["channel_id"]))
        interaction.message_id = message_id
        payload = self._payload(interaction, data)
        payload["message"] = stored
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    def modal_fields(self, interaction: Interaction) -> dict[str, str]:
        """The modal the interaction was answered with: each text input's label and its
        pre-filled value."""
        if interaction.modal is None:
            raise AssertionError(f"interaction {interaction.id} was not answered with a modal")
        fields = {}
        for row in interaction.modal["components"]:
            if row["type"] == 1:
                item = row["components"][0]
                fields[item["label"]] = item.get("value") or ""
            else:
                fields[row["label"]] = row["component"].get("value") or ""
        return fields

    async def submit_modal(
        self, opened: Interaction, values: dict[str, str], user: FakeUser | None = None
    ) -> Interaction:
        """Fill in the modal ``opened`` was answered with (``values`` by label; a field not
        given keeps its pre-filled value) and submit it, as its member (a required field left
        empty, or a value outside its lengths, the client does not send)."""
        modal = opened.modal
        if modal is None:
            raise AssertionError(f"interaction {opened.id} was not answered with a modal")
        user = user or opened.user
        submitted = []
        labels = set()
        for row in modal["components"]:
            item = row["components"][0] if row["type"] == 1 else row["component"]
            label = item["label"] if row["type"] == 1 else row["label"]
            labels.add(label)
            value = values.get(label, item.get("value") or "")
            if item.get("required", True) and not value:
                raise AssertionError(f"the modal's {label!r} is required")
            low, high = item.get("min_length") or 0, item.get("max_length") or 4000
            if value and not low <= len(value) <= high:
                raise AssertionError(f"the modal's {label!r} takes {low} to {high} characters")
            answer = {"type": 4, "custom_id": item["custom_id"], "value": value}
            if row["type"] == 1:
                submitted.append({"type": 1, "components": [answer]})
            else:
                submitted.append({"type": 18, "component": answer})
        unknown = set(values) - labels
        if unknown:
            raise AssertionError(f"the modal has no field {sorted(unknown)}: {sorted(labels)}")
        data = {"custom_id": modal["custom_id"], "components": submitted}
        interaction = self._interaction(5, user, data, opened.channel_id)
        interaction.message_id = opened.message_id  # a modal opened from a message's button
        payload = self._payload(interaction, data)
        if opened.message_id is not None and opened.message_id in self.messages:
            payload["message"] = self.messages[opened.message_id]
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    async def react(self, message_id: int, emoji: str, user: FakeUser) -> None:
        stored = self.messages.get(message_id)
        channel_id = int(stored["channel_id"]) if stored else self.channel_of(user)
        await self.dispatch(
            "MESSAGE_REACTION_ADD",
            {
                "user_id": str(user.id),
                "channel_id": str(channel_id),
                "message_id": str(message_id),
                "guild_id": str(self.channel_guilds[channel_id]),
                "member": user.member(),
                "emoji": {"id": None, "name": emoji},
                "message_author_id": stored["author"]["id"] if stored else None,
                "burst": False,
                "burst_colors": [],
                "type": 0,
            },
        )

    # -- reading what happened -------------------------------------------------------------

    async def wait_for(
        self, check: Callable[[], T | None], seconds: float = 60.0, what: str = "a condition"
    ) -> T:
        """Wait until ``check()`` returns something truthy, and return it."""
        deadline = time.monotonic() + seconds
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
            await asyncio.sleep(0.05)

    def original(self, interaction: Interaction) -> dict[str, Any] | None:
        """The interaction's response message as it stands now."""
        if interaction.original_id is None:
            return None
        return self.messages.get(interaction.original_id)

    def queued(self, interaction: Interaction) -> bool:
        """Whether the response says the job is stored: the bot answers ("thinking…"), then
        shows its place once the job is made ("queued, 2nd in line"), or "starting" when a
        worker took it first, or its progress."""
        stored = self.original(interaction)
        content = str(stored["content"]) if stored else ""
        return any(word in content for word in ("queued", ": starting", "step "))

    async def wait_for_result(
        self, interaction: Interaction, seconds: float = 60.0
    ) -> dict[str, Any]:
        """The interaction's response once it carries buttons (the finished grid)."""

        def check() -> dict[str, Any] | None:
            stored = self.original(interaction)
            if stored and stored["components"] and stored["attachments"]:
                return stored
            return None

        return await self.wait_for(check, seconds, "the result on the interaction's response")

    def ephemeral_answer(self, interaction: Interaction) -> str | None:
        """The text of an ephemeral answer to the interaction (its embeds' titles after the
        content), if it got one."""
        stored = self.original(interaction)
        if stored and stored["flags"] & EPHEMERAL and not stored["flags"] & LOADING:
            return _text(stored)
        for message in self.messages.values():
            meta = message.get("interaction_metadata") or {}
            if meta.get("id") == str(interaction.id) and message["flags"] & EPHEMERAL:
                return _text(message)
        return None

    def dms(self, user: FakeUser) -> list[dict[str, Any]]:
        channels = {cid for cid, uid in self.dm_channels.items() if uid == user.id}
        return [m for m in self.messages.values() if int(m["channel_id"]) in channels]

    def channel_messages(self) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if int(m["channel_id"]) == self.channel_id]

    @staticmethod
    def buttons(stored: dict[str, Any]) -> list[str]:
        """Each button's label, or its emoji when it has no label."""
        return [
            component.get("label") or (component.get("emoji") or {}).get("name", "")
            for row in stored["components"]
            for component in row.get("components", [])
        ]
