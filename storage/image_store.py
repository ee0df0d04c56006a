"""Where image files live: a folder on disk, or an object store (fsspec: ``s3://bucket/prefix``)
when the bot and its workers do not share one; both are addressed by keys such as
``images/12/1/12-0.png``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


class ImageStore:
    """Stores bytes under keys such as ``images/12/1/12-0.png``; writes are atomic."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """The file behind ``key``; refuses keys that leave the store."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"key {key!r} points outside the image store")
        return path

    def put(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` (write to a temporary file, then rename) and return the key."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def location(self, key: str) -> str:
        """Where a person or another program finds the file: a path here, a URL there."""
        return str(self.path(key))

    def size(self, key: str) -> int:
        """The file's size in bytes, without reading it."""
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        """Remove one file, if it is there."""
        self.path(key).unlink(missing_ok=True)

    def signed_url(self, key: str, seconds: int, filename: str | None = None) -> str | None:
        """A URL that reads the file without us for ``seconds`` (as ``filename``, a
        download): None here, a local folder has none (its files go through the console)."""
        return None

    def delete_tree(self, prefix: str) -> None:
        """Remove every file under ``prefix`` (a folder key)."""
        shutil.rmtree(self.path(prefix), ignore_errors=True)


class ObjectImageStore(ImageStore):
    """The same keys in an fsspec file system: ``s3://bucket/prefix`` (with s3fs), ``gs://``, ...

    A put is one object write, so readers see a whole file or none.
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url, **(options or {}))
        self.root = Path(self.base)  # not a local folder: nothing reads it as one

    def _key(self, key: str) -> str:
        parts = [part for part in key.split("/") if part]
        if not parts or any(part in {".", ".."} for part in parts):
            raise ValueError(f"key {key!r} points outside the image store")
        return f"{self.base}/{'/'.join(parts)}"

    def path(self, key: str) -> Path:
        raise TypeError(f"{self.url} is not a local folder; use location({key!r})")

    def put(self, key: str, data: bytes) -> str:
        self.fs.pipe_file(self._key(key), data)
        return key

    def get(self, key: str) -> bytes:
        data: bytes = self.fs.cat_file(self._key(key))
        return data

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._key(key)))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._key(key)))

    def delete(self, key: str) -> None:
        path = self._key(key)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def delete_tree(self, prefix: str) -> None:
        path = self._key(prefix)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def location(self, key: str) -> str:
        return f"{self.url}/{key}"

    def signed_url(self, key: str, seconds: int, filename: str | None = None) -> str | None:
        """A presigned GET (S3 and the stores whose file system signs), or None."""
        extra = {"ResponseContentDisposition": f'attachment; filename="{filename}"'}
        try:
            url = self.fs.sign(self._key(key), expiration=seconds, **(extra if filename else {}))
        except NotImplementedError:
            return None
        return str(url)


def open_store(location: str | Path, options: dict[str, Any] | None = None) -> ImageStore:
    """A local folder, or an object store for a URL with a scheme (``s3://...``)."""
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        return ObjectImageStore(text, options)
    return ImageStore(Path(text.removeprefix("file://")))
