"""Discord's documented limits on a message, checked as Discord checks them.

Written from Discord's API reference (message, embed and component limits), not from the
bot's code: the local Discord refuses what Discord refuses, with the same error body, so a
bot that relies on leniency fails its tests. Lengths are counted in UTF-16 code units.
"""

from __future__ import annotations

import re
from typing import Any

CONTENT = 2000
EMBEDS = 10
EMBED_TOTAL = 6000
EMBED_TITLE = 256
EMBED_DESCRIPTION = 4096
EMBED_FIELDS = 25
FIELD_NAME = 256
FIELD_VALUE = 1024
FOOTER = 2048
AUTHOR_NAME = 256
ROWS = 5
BUTTONS_PER_ROW = 5
CUSTOM_ID = 100
BUTTON_LABEL = 80
SELECT_OPTIONS = 25
SELECT_PLACEHOLDER = 150
OPTION_TEXT = 100
NONCE = 25
ATTACHMENTS = 10
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024  # a server without boosts, and DMs

ACTION_ROW, BUTTON, LINK = 1, 2, 5
STRING_SELECT, TEXT_INPUT, LABEL = 3, 4, 18
SELECTS = {3, 5, 6, 7, 8}  # string, user, role, mentionable and channel selects
# A modal (interaction response type 9): its title, its 1-5 components (a text input in an
# action row, or a text input or string select in a label), a text input's label and lengths.
MODAL_TITLE = 45
MODAL_COMPONENTS = 5
INPUT_LABEL = 45
LABEL_DESCRIPTION = 100
INPUT_LENGTH = 4000
INPUT_PLACEHOLDER = 100


def units(text: str) -> int:
    """A string's length as Discord counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le", errors="surrogatepass")) // 2


class FormErrors:
    """Errors by path, answered as Discord's 50035 body: ``{"embeds": {"0": {"title":
    {"_errors": [{"code": ..., "message": ...}]}}}}``."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}

    def add(self, path: tuple[str | int, ...], code: str, message: str) -> None:
        node = self.tree
        for part in path:
            node = node.setdefault(str(part), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def max_length(self, path: tuple[str | int, ...], value: Any, limit: int) -> None:
        if isinstance(value, str) and units(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def count(self, path: tuple[str | int, ...], items: list[Any], low: int, high: int) -> None:
        if not low <= len(items) <= high:
            self.add(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")

    def __bool__(self) -> bool:
        return bool(self.tree)


def check_message(body: dict[str, Any], *, files: int = 0) -> FormErrors:
    """Check a message body; an empty FormErrors if Discord would take it."""
    errors = FormErrors()
    errors.max_length(("content",), body.get("content"), CONTENT)
    embeds = body.get("embeds") or []
    if len(embeds) > EMBEDS:
        errors.count(("embeds",), embeds, 0, EMBEDS)
    total = sum(_check_embed(errors, index, embed) for index, embed in enumerate(embeds))
    if total > EMBED_TOTAL:
        errors.add(
            ("embeds",),
            "MAX_EMBED_SIZE_EXCEEDED",
            f"Embed size exceeds maximum size of {EMBED_TOTAL}",
        )
    _check_components(errors, body.get("components") or [])
    nonce = body.get("nonce")
    if nonce is not None:
        errors.max_length(("nonce",), str(nonce), NONCE)
    listed = body.get("attachments")
    if (len(listed) if listed is not None else files) > ATTACHMENTS:
        errors.count(("attachments",), listed or [None] * files, 0, ATTACHMENTS)
    return errors


# Application commands (Discord's documented limits on a command and its options).
# Letters and digits of any script (Devanagari and Thai with their marks), - _ and '.
COMMAND_NAME = re.compile(r"^[-_'\w\u0900-\u097f\u0e00-\u0e7f]{1,32}$")
COMMAND_DESCRIPTION = 100
COMMAND_OPTIONS = 25
CHOICES = 25
CHOICE_NAME = 100
CHOICE_STRING_VALUE = 100


def check_command(command: dict[str, Any]) -> FormErrors:
    """A command as the bot registers it; an empty FormErrors if Discord would take it.
    A context-menu command (type 2 or 3) is named as a person writes it and has no options."""
    errors = FormErrors()
    if command.get("type", 1) in (2, 3):
        errors.max_length(("name",), command.get("name"), 32)
        return errors
    _check_command_level(errors, (), command)
    return errors


def _check_command_level(
    errors: FormErrors, path: tuple[str | int, ...], item: dict[str, Any]
) -> None:
    name = item.get("name", "")
    if not COMMAND_NAME.match(name) or name != name.lower():
        errors.add((*path, "name"), "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
    errors.max_length((*path, "description"), item.get("description"), COMMAND_DESCRIPTION)
    options = item.get("options") or []
    if len(options) > COMMAND_OPTIONS:
        errors.count((*path, "options"), options, 0, COMMAND_OPTIONS)
    # Nesting as Discord allows it: a command holds subcommands and groups, or plain options
    # (never both); a group (at the top only) holds subcommands only; a subcommand, plain
    # options only.
    kinds = {1 if option.get("type") in (1, 2) else 0 for option in options}
    depth = sum(1 for part in path if part == "options")
    level = item.get("type") if depth else 0  # 0: the command itself
    nested = [option for option in options if option.get("type") in (1, 2)]
    if (
        len(kinds) > 1
        or (level == 2 and len(nested) != len(options))
        or (level == 1 and nested)
        or any(option.get("type") == 2 and depth > 0 for option in nested)
    ):
        errors.add(
            (*path, "options"),
            "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
            "Subcommands and subcommand groups are nested wrongly",
        )
    seen_optional = False
    for index, option in enumerate(options):
        where = (*path, "options", index)
        if option.get("type") in (1, 2):  # a subcommand (group): its own options
            _check_command_level(errors, where, option)
            continue
        _check_command_level(errors, where, {**option, "options": []})
        if option.get("required") and seen_optional:
            errors.add(
                where,
                "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                "Required options must be placed before non-required options",
            )
        seen_optional = seen_optional or not option.get("required")
        choices = option.get("choices") or []
        if option.get("autocomplete") and (choices or option.get("type") not in (3, 4, 10)):
            # Only string, integer and number options suggest; never with fixed choices.
            errors.add(
                (*where, "autocomplete"),
                "APPLICATION_COMMAND_OPTION_CHOICES_AUTOCOMPLETE",
                "Autocomplete cannot be set for options with choices or of this type",
            )
        _check_choices(errors, (*where, "choices"), choices)


def _check_choices(errors: FormErrors, where: tuple[str | int, ...], choices: list[Any]) -> None:
    if len(choices) > CHOICES:
        errors.count(where, choices, 0, CHOICES)
    for number, choice in enumerate(choices):
        name = choice.get("name")
        if not name:
            errors.add((*where, number, "name"), "BASE_TYPE_REQUIRED", "This field is required")
        errors.max_length((*where, number, "name"), name, CHOICE_NAME)
        if isinstance(choice.get("value"), str):
            errors.max_length((*where, number, "value"), choice["value"], CHOICE_STRING_VALUE)


def check_suggestions(body: dict[str, Any]) -> FormErrors:
    """An autocomplete answer (callback type 8): at most 25 choices, each named 1-100
    characters, a string value at most 100."""
    errors = FormErrors()
    _check_choices(errors, ("choices",), body.get("choices") or [])
    return errors


def is_empty(body: dict[str, Any], files: int) -> bool:
    """A message with nothing in it (Discord answers 50006); blank content is nothing."""
    return not (
        (body.get("content") or "").strip()
        or body.get("embeds")
        or body.get("components")
        or body.get("sticker_ids")
        or body.get("poll")
        or files
    )


def _check_embed(errors: FormErrors, index: int, embed: dict[str, Any]) -> int:
    """Check one embed; its size toward the 6,000 of a message."""
    path: tuple[str | int, ...] = ("embeds", index)
    size = 0
    for key, limit in (("title", EMBED_TITLE), ("description", EMBED_DESCRIPTION)):
        errors.max_length((*path, key), embed.get(key), limit)
        size += units(embed.get(key) or "")
    footer = (embed.get("footer") or {}).get("text")
    errors.max_length((*path, "footer", "text"), footer, FOOTER)
    author = (embed.get("author") or {}).get("name")
    errors.max_length((*path, "author", "name"), author, AUTHOR_NAME)
    size += units(footer or "") + units(author or "")
    fields = embed.get("fields") or []
    if len(fields) > EMBED_FIELDS:
        errors.count((*path, "fields"), fields, 0, EMBED_FIELDS)
    for number, field in enumerate(fields):
        for key, limit in (("name", FIELD_NAME), ("value", FIELD_VALUE)):
            value = field.get(key)
            if not value:
                errors.add(
                    (*path, "fields", number, key), "BASE_TYPE_REQUIRED", "This field is required"
                )
            errors.max_length((*path, "fields", number, key), value, limit)
            size += units(value or "")
    return size


def _check_components(errors: FormErrors, rows: list[dict[str, Any]]) -> None:
    if len(rows) > ROWS:
        errors.count(("components",), rows, 0, ROWS)
    seen: set[str] = set()
    for number, row in enumerate(rows):
        path: tuple[str | int, ...] = ("components", number)
        if row.get("type") != ACTION_ROW:
            errors.add((*path, "type"), "UNION_TYPE_CHOICES", "Value must be one of {1}.")
            continue
        items = row.get("components") or []
        errors.count((*path, "components"), items, 1, BUTTONS_PER_ROW)
        if any(item.get("type") in SELECTS for item in items) and len(items) > 1:
            errors.add(
                (*path, "components"),
                "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "The specified component exceeds the maximum width",
            )
        for place, item in enumerate(items):
            _check_item(errors, (*path, "components", place), item, seen)


def _check_item(
    errors: FormErrors, path: tuple[str | int, ...], item: dict[str, Any], seen: set[str]
) -> None:
    kind, style = item.get("type"), item.get("style")
    if kind == BUTTON:
        errors.max_length((*path, "label"), item.get("label"), BUTTON_LABEL)
        if not item.get("label") and not item.get("emoji"):
            errors.add((*path, "label"), "BASE_TYPE_REQUIRED", "This field is required")
        if style == LINK:
            if not re.match(r"^(https?|discord)://", item.get("url") or ""):
                errors.add((*path, "url"), "URL_TYPE_INVALID_URL", "Not a well formed URL.")
            return
    elif kind in SELECTS:
        _check_select(errors, path, item)
    _check_custom_id(errors, path, item, seen)


def _check_custom_id(
    errors: FormErrors, path: tuple[str | int, ...], item: dict[str, Any], seen: set[str]
) -> None:
    """A component's custom id: there, at most 100 long, unique in its message or modal."""
    custom_id = item.get("custom_id")
    if not custom_id:
        errors.add((*path, "custom_id"), "BASE_TYPE_REQUIRED", "This field is required")
        return
    errors.max_length((*path, "custom_id"), custom_id, CUSTOM_ID)
    if custom_id in seen:
        errors.add(
            (*path, "custom_id"),
            "COMPONENT_CUSTOM_ID_DUPLICATED",
            "Component custom id was already specified",
        )
    seen.add(custom_id)


def _check_select(errors: FormErrors, path: tuple[str | int, ...], item: dict[str, Any]) -> None:
    kind = item.get("type")
    errors.max_length((*path, "placeholder"), item.get("placeholder"), SELECT_PLACEHOLDER)
    options = item.get("options") or []
    if kind == STRING_SELECT:
        errors.count((*path, "options"), options, 1, SELECT_OPTIONS)
        low, high = item.get("min_values", 1), item.get("max_values", 1)
        if not 0 <= low <= high <= min(len(options), SELECT_OPTIONS):
            errors.add(
                (*path, "max_values"),
                "NUMBER_TYPE_MAX",
                "min_values and max_values must fit the options",
            )
        if sum(bool(option.get("default")) for option in options) > high:
            errors.add((*path, "options"), "SELECT_DEFAULTS", "More defaults than max_values")
        values = [option.get("value") for option in options]
        if len(set(values)) != len(values):
            errors.add((*path, "options"), "SELECT_DUPLICATE_VALUE", "Option values repeat")
    for number, option in enumerate(options):
        for key in ("label", "value", "description"):
            errors.max_length((*path, "options", number, key), option.get(key), OPTION_TEXT)


def check_modal(body: dict[str, Any]) -> FormErrors:
    """Check a modal's ``data`` as Discord does (its documented limits)."""
    errors = FormErrors()
    custom_id = body.get("custom_id")
    if not custom_id:
        errors.add(("custom_id",), "BASE_TYPE_REQUIRED", "This field is required")
    errors.max_length(("custom_id",), custom_id, CUSTOM_ID)
    title = body.get("title")
    if not title:
        errors.add(("title",), "BASE_TYPE_REQUIRED", "This field is required")
    errors.max_length(("title",), title, MODAL_TITLE)
    rows = body.get("components") or []
    errors.count(("components",), rows, 1, MODAL_COMPONENTS)
    seen: set[str] = set()
    for number, row in enumerate(rows):
        path: tuple[str | int, ...] = ("components", number)
        kind = row.get("type")
        if kind == ACTION_ROW:  # the older form: one text input with its own label
            items = row.get("components") or []
            errors.count((*path, "components"), items, 1, 1)
            for place, item in enumerate(items):
                where = (*path, "components", place)
                if item.get("type") != TEXT_INPUT:
                    errors.add((*where, "type"), "UNION_TYPE_CHOICES", "Value must be one of {4}.")
                    continue
                _check_label(errors, where, item.get("label"), INPUT_LABEL)
                _check_input(errors, where, item, seen)
        elif kind == LABEL:
            _check_label(errors, path, row.get("label"), INPUT_LABEL)
            errors.max_length((*path, "description"), row.get("description"), LABEL_DESCRIPTION)
            item = row.get("component") or {}
            where = (*path, "component")
            if item.get("type") == TEXT_INPUT:
                if "label" in item:
                    errors.add((*where, "label"), "BASE_TYPE_BAD", "A label's input has no label")
                _check_input(errors, where, item, seen)
            elif item.get("type") == STRING_SELECT:
                _check_item(errors, where, item, seen)
            else:
                errors.add((*where, "type"), "UNION_TYPE_CHOICES", "Value must be one of {3, 4}.")
        else:
            errors.add((*path, "type"), "UNION_TYPE_CHOICES", "Value must be one of {1, 18}.")
    return errors


def _check_label(errors: FormErrors, path: tuple[str | int, ...], label: Any, limit: int) -> None:
    if not label:
        errors.add((*path, "label"), "BASE_TYPE_REQUIRED", "This field is required")
    errors.max_length((*path, "label"), label, limit)


def _check_input(
    errors: FormErrors, path: tuple[str | int, ...], item: dict[str, Any], seen: set[str]
) -> None:
    """A text input: short (1) or paragraph (2), lengths within 0-4000, a value that fits them."""
    if item.get("style") not in (1, 2):
        errors.add((*path, "style"), "UNION_TYPE_CHOICES", "Value must be one of {1, 2}.")
    low, high = item.get("min_length"), item.get("max_length")
    if low is not None and not 0 <= int(low) <= INPUT_LENGTH:
        errors.add((*path, "min_length"), "NUMBER_TYPE_MAX", f"Must be 0 to {INPUT_LENGTH}.")
    if high is not None and not 1 <= int(high) <= INPUT_LENGTH:
        errors.add((*path, "max_length"), "NUMBER_TYPE_MAX", f"Must be 1 to {INPUT_LENGTH}.")
    value = item.get("value")
    errors.max_length((*path, "value"), value, int(high) if high is not None else INPUT_LENGTH)
    if value and low is not None and units(value) < int(low):
        errors.add((*path, "value"), "BASE_TYPE_MIN_LENGTH", f"Must be {low} or more in length.")
    errors.max_length((*path, "placeholder"), item.get("placeholder"), INPUT_PLACEHOLDER)
    _check_custom_id(errors, path, item, seen)


MENTION = re.compile(r"<@(?P<kind>[!&]?)(?P<id>\d+)>|@(?P<everyone>everyone|here)")


def mentions(
    content: str, allowed: dict[str, Any] | None, replied_user_id: int | None
) -> tuple[list[int], list[int], bool]:
    """Who a message pings: (user ids, role ids, @everyone), as ``allowed_mentions`` allows.

    With no ``allowed_mentions`` every mention in the content pings, as on Discord.
    """
    parse = {"users", "roles", "everyone"} if allowed is None else set(allowed.get("parse") or [])
    allowed_users = {int(u) for u in (allowed or {}).get("users") or []}
    allowed_roles = {int(r) for r in (allowed or {}).get("roles") or []}
    users: list[int] = []
    roles: list[int] = []
    everyone = False
    for match in MENTION.finditer(content or ""):
        if match["everyone"]:
            everyone = everyone or "everyone" in parse
        elif match["kind"] == "&":
            role_id = int(match["id"])
            if ("roles" in parse or role_id in allowed_roles) and role_id not in roles:
                roles.append(role_id)
        else:
            user_id = int(match["id"])
            if ("users" in parse or user_id in allowed_users) and user_id not in users:
                users.append(user_id)
    replied = allowed is None or bool(allowed.get("replied_user"))
    if replied_user_id is not None and replied and replied_user_id not in users:
        users.append(replied_user_id)
    return users, roles, everyone
