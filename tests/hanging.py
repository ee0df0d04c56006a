"""A host's own safety checker that never answers (IMAGINE_SAFETY_CHECKER=tests.hanging:...):
for process tests of a job that hangs after its render, in a thread nothing can stop."""

from __future__ import annotations

import contextlib
import os
import threading

from PIL import Image


class HangingChecker:
    """Hangs on every image, for good (a deadlocked classifier)."""

    def scores(self, image: Image.Image) -> dict[str, float]:
        threading.Event().wait()
        return {}


class HangOnceChecker:
    """Passes every image, except that when the file named by IMAGINE_CHAOS_HANG_FILE appears,
    the next check (in any process) takes it away and hangs for good: one hung job, on cue."""

    def scores(self, image: Image.Image) -> dict[str, float]:
        marker = os.environ.get("IMAGINE_CHAOS_HANG_FILE")
        if marker:
            with contextlib.suppress(FileNotFoundError):
                os.remove(marker)  # only one process wins the race, and hangs
                threading.Event().wait()
        return {}
