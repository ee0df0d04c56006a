"""The web console in a real browser: headless Chromium from Debian's packages, driven by
Selenium through Debian's chromedriver (no download), against the console served by uvicorn
and the local Discord, both on real ports. Logs in with Discord, reviews (reveal, approve,
bulk delete), follows a lineage, downloads a full-size PNG and compares its pixels with the
store, and keeps a screenshot of each main page (``CONSOLE_SCREENSHOTS``: where to keep them;
by default under the test's own temporary folder), each checked to have rendered.

Needs ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them): skipped without them,
failing instead when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from PIL import Image

from storage.models import Review
from tests.ci import in_ci
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.payloads import FakeUser
from tests.web.test_console import SCRIPT, Console, _flag, console_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 20.0


@pytest.fixture
def chromium() -> None:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        message = "chromium and chromium-driver are not installed (apt-get install them)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


class Browser:
    """A headless Chromium; each call runs in a thread, so the event loop serving the console
    and the local Discord goes on meanwhile."""

    def __init__(self, base: str, downloads: Path, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,1000",
        ):
            options.add_argument(argument)
        options.add_experimental_option(
            "prefs",
            {"download.default_directory": str(downloads), "download.prompt_for_download": False},
        )
        self.driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        self.base, self.downloads, self.shots = base, downloads, shots

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(call, *args)

    async def get(self, path: str) -> None:
        await self.run(self.driver.get, self.base + path)

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        element = await self.run(self.driver.find_element, By.CSS_SELECTOR, css)
        await self.run(element.click)

    async def shows(self, text: str) -> None:
        """Wait for the page (a form's answer, say) to show this text."""
        for _ in range(int(WAIT / 0.05)):
            if text in await self.text():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the page never showed {text!r}: {await self.text()}")

    async def at(self, path: str) -> None:
        """Wait for the browser to have gone to this path (a link followed)."""
        for _ in range(int(WAIT / 0.05)):
            url = await self.run(lambda: self.driver.current_url)
            if url == self.base + path:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the browser is at {url}, not {path}")

    async def js(self, script: str) -> Any:
        return await self.run(self.driver.execute_script, script)

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return url[len(self.base) :] if url.startswith(self.base) else url

    async def text(self) -> str:
        return str(await self.js("return document.body.innerText"))

    async def log_in(self, discord: LocalDiscord, user: FakeUser, next_path: str = "/") -> None:
        """Through Discord's consent page and back, as a person's browser goes."""
        await self.run(self.driver.delete_all_cookies)
        discord.oauth.signed_in = user
        await self.get(f"/login?next={next_path}")
        assert self.path == next_path, self.driver.current_url

    async def shot(self, name: str) -> Path:
        """A screenshot of the page, checked to have rendered: not blank, not an error."""
        title = str(await self.js("return document.title"))
        assert not title.startswith(("Not found", "Refused", "Login failed")), (name, title)
        assert await self.js("return document.scripts.length") == 0, "no script on any page"
        path = self.shots / f"{name}.png"
        await self.run(self.driver.save_screenshot, str(path))
        with Image.open(path) as shot:
            pixels = np.asarray(shot.convert("L"), dtype=float)
        assert pixels.shape[1] >= 1000 and pixels.std() > 10, (name, pixels.std())
        return path

    async def images_loaded(self, css: str) -> list[int]:
        """The natural widths of the images the selector finds (0: not loaded)."""
        script = (
            f"return Array.from(document.querySelectorAll({css!r}))"
            ".map(i => i.complete ? i.naturalWidth : 0)"
        )
        deadline = time.monotonic() + WAIT
        while True:
            widths: list[int] = await self.js(script)
            if (widths and all(widths)) or time.monotonic() > deadline:
                return widths
            await asyncio.sleep(0.1)

    def quit(self) -> None:
        self.driver.quit()


@contextlib.asynccontextmanager
async def served(discord: LocalDiscord, data: Path, engine: Any) -> AsyncIterator[Console]:
    """The console with its four jobs, served by uvicorn on a port of its own."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with console_for(discord, data, engine, base=base) as console:
        config = uvicorn.Config(console.app, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        await _until(lambda: server.started, "uvicorn started")
        console.base = base  # type: ignore[attr-defined]
        try:
            yield console
        finally:
            server.should_exit = True
            await serving
            sock.close()


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(int(WAIT / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"waited {WAIT:g} s for: {what}")


async def test_moderators_and_members_use_the_console_in_a_real_browser(
    chromium: None, local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    discord = local_discord
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    downloads = tmp_path / "downloads"
    for folder in (shots, downloads):
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    async with served(discord, tmp_path / "data", engine) as console:
        browser = await asyncio.to_thread(
            Browser,
            console.base,  # type: ignore[attr-defined]
            downloads,
            shots,
        )
        try:
            await _member(browser, console)
            await _moderator(browser, console)
            await _host(browser, console)
        finally:
            await asyncio.to_thread(browser.quit)


async def _member(browser: Browser, console: Console) -> None:
    """Alice's gallery (her prompt with a script in it shows as text), a job's lineage, and a
    full-size download that is the stored image, pixel for pixel."""
    from selenium.common.exceptions import NoAlertPresentException

    public, child = console.jobs["public"], console.jobs["child"]
    await browser.log_in(console.server, console.server.alice)
    assert SCRIPT in await browser.text()
    with pytest.raises(NoAlertPresentException):
        _ = browser.driver.switch_to.alert
    assert all(await browser.images_loaded(".gallery img")), "thumbnails load"
    await browser.shot("gallery")

    await browser.get(f"/jobs/{child}")
    await browser.click(f'.lineage a[href="/jobs/{public}"]')
    await browser.at(f"/jobs/{public}")
    await browser.shot("job")
    await browser.click("a.download")
    saved = browser.downloads / f"job-{public}-1.png"
    await _until(saved.exists, "the download arrived")
    (image,) = (await console.runtime.service.job(public)).images
    with Image.open(io.BytesIO(console.runtime.store.get(image.path))) as stored:
        expected = np.asarray(stored.convert("RGB"))
    with Image.open(saved) as got:
        assert np.array_equal(np.asarray(got.convert("RGB")), expected)


async def _moderator(browser: Browser, console: Console) -> None:
    """The first server's moderator: the review (blurred, revealed on a click, approved in
    one, deleted in bulk), the logs and a user page."""
    discord = console.server
    public, private = await _flag(console, "public"), await _flag(console, "private")
    await browser.log_in(discord, discord.admin, "/review")
    assert len(await browser.images_loaded(".review img")) == 2
    assert all(await browser.images_loaded(".review img"))
    await browser.shot("review")

    # Reveal: the clear image opens in a tab of its own, through the authorised route.
    home = browser.driver.current_window_handle
    await browser.click(f"#image-{public} a")
    await _until(lambda: len(browser.driver.window_handles) == 2, "the image's own tab")
    tab = next(h for h in browser.driver.window_handles if h != home)
    await browser.run(browser.driver.switch_to.window, tab)
    assert await browser.images_loaded("img") != [0], "the clear image shows"
    await browser.run(browser.driver.close)
    await browser.run(browser.driver.switch_to.window, home)

    await browser.click(f'#image-{public} button[value="approve:{public}"]')
    await browser.shows("1 approved.")
    await browser.click(f'#image-{private} input[name="selected"]')
    await browser.click('button[name="action"][value="delete"]')
    await browser.shows("1 deleted.")
    await browser.shows("Nothing waits for review.")
    jobs = console.runtime.service
    assert (await jobs.job(console.jobs["private"])).job.status == "deleted"
    assert (await jobs.job(console.jobs["public"])).images[0].review == Review.APPROVED

    await browser.get("/logs?q=circle")
    assert f"{console.jobs['public']}" in await browser.text()
    await browser.shot("logs")
    await browser.click(f'#job-{console.jobs["public"]} a[href^="/users/"]')
    await browser.at(f"/users/{discord.alice.id}")
    await browser.shows("image_approved")
    await browser.shot("user")


async def _host(browser: Browser, console: Console) -> None:
    await browser.log_in(console.server, console.server.host, "/status")
    assert "Workers" in await browser.text()
    await browser.shot("status")
