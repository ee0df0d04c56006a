"""Where image files live: a folder on disk, addressed by keys relative to its root."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


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

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete_tree(self, prefix: str) -> None:
        """Remove every file under ``prefix`` (a folder key)."""
        shutil.rmtree(self.path(prefix), ignore_errors=True)
