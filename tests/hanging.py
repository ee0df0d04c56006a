"""A host's own safety checker that never answers (IMAGINE_SAFETY_CHECKER=tests.hanging:...):
for process tests of a job that hangs after its render, in a thread nothing can stop."""

from __future__ import annotations

import threading

from PIL import Image


class HangingChecker:
    """Hangs on every image, for good (a deadlocked classifier)."""

    def scores(self, image: Image.Image) -> dict[str, float]:
        threading.Event().wait()
        return {}
