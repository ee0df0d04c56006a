"""The image store on an S3-compatible server (moto's, on 127.0.0.1), as scaled-out hosts use it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from generation.events import EventBus
from generation.requests import GenerationRequest
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ObjectImageStore, open_store


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, str]]:
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


def test_put_get_exists_size_delete_and_location(
    s3_options: dict[str, str], tmp_path: Path
) -> None:
    store = open_store("s3://imagine/site-a", s3_options)
    assert isinstance(store, ObjectImageStore)
    assert store.put("images/1/1/1-0.png", b"png bytes") == "images/1/1/1-0.png"
    assert store.get("images/1/1/1-0.png") == b"png bytes"
    assert store.exists("images/1/1/1-0.png") and not store.exists("images/2/1/2-0.png")
    assert store.size("images/1/1/1-0.png") == len(b"png bytes")
    assert (
        open_store(tmp_path).put("a/b.png", b"12345") and open_store(tmp_path).size("a/b.png") == 5
    )
    assert store.location("images/1/1/1-0.png") == "s3://imagine/site-a/images/1/1/1-0.png"
    store.delete_tree("images/1")
    assert not store.exists("images/1/1/1-0.png")
    with pytest.raises(ValueError, match="outside"):
        store.put("../escape.png", b"")


async def test_a_worker_writes_its_images_to_the_object_store(
    s3_options: dict[str, str], db: Database, service: GenerationService, engine: object
) -> None:
    store = open_store("s3://imagine/site-b", s3_options)
    job = (await service.submit(GenerationRequest("a red circle", user_id=1, steps=2))).job
    worker = Worker(db, engine, store, EventBus(), WorkerConfig(worker_id="s3"))  # type: ignore[arg-type]
    assert await worker.run(burst=True) == 1
    view = await service.job(job.id)
    assert view.job.status == "succeeded"
    for image in view.images:
        assert store.get(image.path).startswith(b"\x89PNG")
    assert store.exists(f"images/{job.id}/1/{job.id}-grid.png")
