"""Which errors are worth waiting out, as the drivers raise them."""

from __future__ import annotations

import asyncpg
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
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
