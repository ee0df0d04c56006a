"""Shared fixtures: the embedded model and engine, and databases on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from generation.events import EventBus
from generation.model_info import ModelInfo, describe_model
from generation.requests import Limits
from generation.service import GenerationService
from storage.db import Database
from storage.image_store import ImageStore
from tests.ci import in_ci, isolate_environment
from tests.postgres import ADMIN_DSN, admin, url

isolate_environment()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model(models_dir: Path) -> ModelInfo:
    """The random-weight embedded model: fast, for tests that need a pipeline, not a picture."""
    return describe_model("embedded-random", models_dir)


@pytest.fixture(scope="session")
def engine(model: ModelInfo):  # type: ignore[no-untyped-def]
    from generation.engine import DiffusersEngine

    return DiffusersEngine(model, device="cpu", dtype="float32", torch_threads=1)


@pytest.fixture(scope="session")
def trained_model(models_dir: Path) -> ModelInfo:
    """The trained embedded model shipped in the package: for tests that look at pictures."""
    return describe_model("embedded", models_dir)


@pytest.fixture(scope="session")
def trained_engine(trained_model: ModelInfo):  # type: ignore[no-untyped-def]
    from generation.engine import DiffusersEngine

    return DiffusersEngine(trained_model, device="cpu", dtype="float32", torch_threads=1)


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated PostgreSQL database that each test copies; fails in CI when unreachable."""
    name = f"imagine_template_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError) as error:
        message = f"PostgreSQL is not reachable at {ADMIN_DSN}: {error}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)

    async def _migrate() -> None:
        database = Database(url(name))
        try:
            await database.upgrade()
        finally:
            await database.close()

    asyncio.run(_migrate())
    yield name
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, and a copy of the PostgreSQL template."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"imagine_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield url(name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, for tests that need PostgreSQL itself."""
    name = f"imagine_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    yield url(name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.upgrade()
    yield database
    await database.close()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def events() -> EventBus:
    return EventBus()


@pytest.fixture
def limits() -> Limits:
    return Limits(max_steps=50, max_width=256, max_height=256)


@pytest.fixture
def service(db: Database, model: ModelInfo, limits: Limits) -> GenerationService:
    return GenerationService(db, model, limits)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, str]]:
    """An S3-compatible server (moto's, on 127.0.0.1) with a bucket ``imagine``."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("imagine")
    yield options  # type: ignore[misc]
    server.stop()
