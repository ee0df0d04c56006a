"""Which errors pass (a database failover, a dropped connection, a store's 5xx, a full disk for
a moment) and how to wait them out: exponential backoff with jitter, up to a deadline."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import exc as sqlalchemy_errors

logger = logging.getLogger(__name__)

T = TypeVar("T")

# asyncpg's own connection errors, when they surface unwrapped (at connect, mostly), and an
# object store's (botocore's EndpointConnectionError and timeouts, under s3fs).
_CONNECTION_WORDS = ("Connection", "CannotConnectNow", "TooManyConnections", "Timeout")
_DRIVERS = ("asyncpg", "botocore", "aiobotocore")


def is_transient(error: BaseException) -> bool:
    """Whether trying again later may work: the database or the store was away, not wrong."""
    if isinstance(
        error,
        sqlalchemy_errors.OperationalError
        | sqlalchemy_errors.InterfaceError
        | sqlalchemy_errors.DisconnectionError
        | sqlalchemy_errors.TimeoutError
        | OSError
        | TimeoutError,
    ):
        return True
    if isinstance(error, sqlalchemy_errors.DBAPIError) and error.connection_invalidated:
        return True
    return any(
        kind.__module__.startswith(_DRIVERS)
        and any(word in kind.__name__ for word in _CONNECTION_WORDS)
        for kind in type(error).__mro__
    )


def backoff(tries: int, base: float = 0.25, cap: float = 5.0) -> float:
    """Seconds to wait before try ``tries + 1``: doubling from ``base`` up to ``cap``, with
    full jitter so processes that failed together do not retry together."""
    return random.uniform(0, min(cap, base * 2**tries))


async def retrying(
    action: Callable[[], Awaitable[T]],
    *,
    what: str,
    until: Callable[[], float],
    base: float = 0.25,
    cap: float = 5.0,
    on_try: Callable[[], None] | None = None,
) -> T:
    """``await action()`` until it succeeds. A transient error waits (``backoff``) and tries
    again while ``time.monotonic()`` is before ``until()``; past it, or on any other error,
    the error is raised. ``on_try`` is called before each try (a watchdog's sign of life)."""
    tries = 0
    while True:
        if on_try is not None:
            on_try()
        try:
            return await action()
        except Exception as error:
            if not is_transient(error):
                raise
            pause = backoff(tries, base, cap)
            if time.monotonic() + pause >= until():
                logger.error("%s failed and there is no time left to retry: %s", what, error)
                raise
            tries += 1
            kind = type(error).__name__
            logger.warning(
                "%s failed (%s: %s); try %d in %.1f s", what, kind, error, tries + 1, pause
            )
            await asyncio.sleep(pause)
