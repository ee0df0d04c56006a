"""Which errors pass (a database failover, a dropped connection, a store's 5xx, a full disk for
a moment) and how to wait them out: exponential backoff with jitter, up to a deadline."""

from __future__ import annotations

import asyncio
import errno
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
_DRIVERS = ("asyncpg", "botocore", "aiobotocore", "aiohttp")
# An OS or store error worth waiting out: I/O, a busy or full device, the network. A missing
# file, a refused permission (s3fs: NoSuchKey, AccessDenied) or a bad image never passes.
_PASSING_ERRNOS = frozenset(
    {
        errno.EIO, errno.EREMOTEIO, errno.EBUSY, errno.EAGAIN, errno.ENOSPC, errno.EDQUOT,
        errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
        errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENOTCONN,
    }
)  # fmt: skip
# PostgreSQL SQLSTATEs of a failover or of load, not of a mistake: connection exceptions (08),
# serialization failures and deadlocks (40), a standby or a demoted primary (25006), a
# cancelled statement or a shutting-down server (57014, 57P01-57P03), no resources (53).
_PASSING_SQLSTATES = ("08", "40", "25006", "57014", "57P0", "53")
# SQLite's OperationalError covers "database is locked" and "no such table" alike.
_PASSING_SQLITE = ("locked", "busy", "disk i/o", "unable to open")


def is_transient(error: BaseException) -> bool:
    """Whether trying again later may work: the database or the store was away, not wrong."""
    if isinstance(error, sqlalchemy_errors.DBAPIError):
        return _database_passing(error)
    if isinstance(
        error,
        sqlalchemy_errors.DisconnectionError
        | sqlalchemy_errors.TimeoutError
        | TimeoutError
        | ConnectionError,
    ):
        return True
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno in _PASSING_ERRNOS
    return any(
        kind.__module__.startswith(_DRIVERS)
        and any(word in kind.__name__ for word in _CONNECTION_WORDS)
        for kind in type(error).__mro__
    )


def _database_passing(error: sqlalchemy_errors.DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    state = _sqlstate(error)
    if state is not None:
        return state.startswith(_PASSING_SQLSTATES)
    if isinstance(error, sqlalchemy_errors.OperationalError):
        sqlite = type(error.orig).__module__.startswith("sqlite3")
        message = str(error.orig).lower()
        return not sqlite or any(word in message for word in _PASSING_SQLITE)
    return isinstance(error, sqlalchemy_errors.InterfaceError)


def _sqlstate(error: sqlalchemy_errors.DBAPIError) -> str | None:
    """The PostgreSQL SQLSTATE behind a wrapped error, if there is one."""
    for cause in (error.orig, getattr(error.orig, "__cause__", None)):
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


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
