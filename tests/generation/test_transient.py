"""Which errors are worth waiting out, as the drivers raise them."""

from __future__ import annotations

import errno
import sqlite3

import asyncpg
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from PIL import UnidentifiedImageError
from sqlalchemy import exc

from generation.faults import is_transient


@pytest.mark.parametrize(
    "error",
    [
        exc.OperationalError("SELECT 1", {}, Exception("database is locked")),
        exc.DBAPIError("SELECT 1", {}, Exception("closed"), connection_invalidated=True),
        exc.InterfaceError("SELECT 1", {}, Exception("connection is closed")),
        ConnectionResetError(104, "Connection reset by peer"),
        OSError(28, "No space left on device"),
        TimeoutError(),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        EndpointConnectionError(endpoint_url="http://s3"),
        ReadTimeoutError(endpoint_url="http://s3"),
    ],
)
def test_passing_faults_are_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
        exc.DBAPIError("SELECT 1", {}, Exception("syntax"), connection_invalidated=False),
        ValueError("a bug"),
        RuntimeError("CUDA out of memory"),
        asyncpg.UniqueViolationError("duplicate key"),
        ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"),
    ],
)
def test_mistakes_are_not(error: BaseException) -> None:
    assert not is_transient(error)


def _sqlite(message: str) -> exc.OperationalError:
    return exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))


class _Coded(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _postgres(sqlstate: str) -> exc.DBAPIError:
    return exc.DBAPIError("SELECT 1", {}, _Coded(sqlstate))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_postgres("40001"), True),  # a serialization failure: try again
        (_postgres("40P01"), True),  # a deadlock
        (_postgres("25006"), True),  # a read-only transaction: a standby after a failover
        (_postgres("57P01"), True),  # the server is shutting down
        (_postgres("08006"), True),  # the connection failed
        (_postgres("22012"), False),  # division by zero: a mistake
        (_postgres("42P01"), False),  # no such table
        (_sqlite("database is locked"), True),
        (_sqlite("no such table: jobs"), False),  # a broken migration never passes
        (_sqlite("duplicate column name: runs"), False),
        (FileNotFoundError(2, "No such file"), False),  # s3fs: NoSuchKey
        (PermissionError(13, "Access denied"), False),  # s3fs: AccessDenied
        (OSError(errno.EIO, "InternalError"), True),  # s3fs: a 5xx
        (UnidentifiedImageError("cannot identify image file"), False),
    ],
)
def test_by_sqlstate_message_and_errno(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
