"""The image store on an S3-compatible server (moto's, on 127.0.0.1), as scaled-out hosts use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.events import EventBus
from generation.requests import GenerationRequest
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ObjectImageStore, open_store


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


def test_a_presigned_url_reads_the_file_and_expires_when_asked(
    s3_options: dict[str, str], tmp_path: Path
) -> None:
    import time
    import urllib.parse
    import urllib.request

    store = open_store("s3://imagine/site-c", s3_options)
    store.put("images/9/0.png", b"the png")
    url = store.signed_url("images/9/0.png", 60, filename="job-9-1.png")
    assert url is not None and "Expires=" in url and "Signature=" in url
    with urllib.request.urlopen(url) as answer:
        assert answer.read() == b"the png"
        assert 'filename="job-9-1.png"' in answer.headers["Content-Disposition"]
    # moto does not refuse an expired URL (S3 does): the expiry asked for is checked instead.
    expires = int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["Expires"][0])
    assert abs(expires - (time.time() + 60)) < 5
    assert open_store(tmp_path).signed_url("images/9/0.png", 60) is None, "a folder: none"


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
