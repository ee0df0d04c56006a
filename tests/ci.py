"""Where the tests run: CI is any truthy ``CI`` (1, true, yes), as CI services set it."""

from __future__ import annotations

import os


def in_ci() -> bool:
    """True on CI: there, a test that needs PostgreSQL or an extra fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def isolate_environment() -> None:
    """The tests set every setting they need: none leaks in from the shell or a .env file (the
    processes they start inherit this), and every process renders on the CPU, GPU host or not."""
    for name in [name for name in os.environ if name.startswith("IMAGINE_")]:
        if name != "IMAGINE_TEST_POSTGRES_DSN":
            del os.environ[name]
    os.environ["IMAGINE_ENV_FILE"] = ""
    os.environ["IMAGINE_DEVICE"] = "cpu"
