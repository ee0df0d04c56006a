"""The web console's tests use the local Discord (its OAuth2 side) as the bot's tests do."""

from tests.bot.conftest import local_discord  # noqa: F401 - a fixture, shared
