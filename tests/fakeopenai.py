"""A local OpenAI-compatible images API: generations, variations and edits, on 127.0.0.1.

Answers with ``b64_json`` PNGs of a plain colour (red unless the prompt names another), records
every request, and can inject a 429 with ``retry-after``, a content-policy 400 or a 401.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import random
import time
from typing import Any

from aiohttp import web
from PIL import Image

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
SIZES = {
    "dall-e-2": {"256x256", "512x512", "1024x1024"},
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
    "gpt-image-1": {"1024x1024", "1536x1024", "1024x1536", "auto"},
}


@dataclasses.dataclass
class Request:
    path: str
    fields: dict[str, Any]
    files: dict[str, bytes]
    status: int = 200


class FakeImagesAPI:
    """``async with FakeImagesAPI() as api: ...``; ``api.base_url`` ends in ``/v1``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.failures: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        # Real APIs return detailed pictures of a megabyte or more; plain colour compresses to
        # almost nothing. A test about file sizes turns detail on.
        self.detailed = False
        self.key_dead = False
        # While set to an unset event, every request waits for it (a slow API call).
        self.gate: asyncio.Event | None = None
        self.held = asyncio.Event()  # set once a request waits at the gate
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> FakeImagesAPI:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self._generations)
        app.router.add_post("/v1/images/variations", self._variations)
        app.router.add_post("/v1/images/edits", self._edits)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- injection -------------------------------------------------------------------------

    def rate_limit(self, retry_after: float = 1.0) -> None:
        self.failures.append(
            (
                429,
                {"error": {"message": "Rate limit reached", "type": "requests", "code": None}},
                {"retry-after": str(retry_after)},
            )
        )

    def refuse_content(self) -> None:
        self.failures.append(
            (
                400,
                {
                    "error": {
                        "message": "Your request was rejected as a result of our safety system.",
                        "type": "invalid_request_error",
                        "code": "content_policy_violation",
                    }
                },
                {},
            )
        )

    def reject_key(self) -> None:
        self.failures.append(
            (
                401,
                {"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}},
                {},
            )
        )

    # -- routes ----------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Request:
        fields: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.filename:  # type: ignore[union-attr]
                    files[part.name or ""] = bytes(await part.read())  # type: ignore[union-attr]
                else:
                    fields[part.name or ""] = await part.text()  # type: ignore[union-attr]
        else:
            fields = await request.json()
        recorded = Request(request.path, fields, files)
        self.requests.append(recorded)
        return recorded

    async def _begin(self, request: web.Request) -> tuple[Request, web.Response | None]:
        """Record the request; an injected failure to answer with, if one is waiting."""
        recorded = await self._record(request)
        if self.gate is not None:
            self.held.set()
            await self.gate.wait()
        return recorded, self._failure(recorded)

    def kill_key(self) -> None:
        """The host's key stops working for good (billing ran out): every request is 401."""
        self.key_dead = True

    def _failure(self, recorded: Request) -> web.Response | None:
        if self.key_dead:
            self.reject_key()
        if not self.failures:
            return None
        status, body, headers = self.failures.pop(0)
        recorded.status = status
        return web.json_response(body, status=status, headers=headers)

    def _picture(self, colour: str, width: int, height: int, number: int) -> Image.Image:
        if not self.detailed:
            return Image.new("RGB", (width, height), colour)
        rng = random.Random(number)
        texture = Image.frombytes("RGB", (48, 48), rng.randbytes(48 * 48 * 3))
        detail = texture.resize((width, height), Image.Resampling.BICUBIC)
        return Image.blend(Image.new("RGB", (width, height), colour), detail, 0.5)

    def _images(self, prompt: str, n: int, size: str, revised: bool) -> web.Response:
        colour = next((c for c in COLOURS if c in prompt.lower()), "red")
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        data = []
        for number in range(n):
            buffer = io.BytesIO()
            self._picture(colour, width, height, number).save(buffer, format="PNG")
            item: dict[str, Any] = {"b64_json": base64.b64encode(buffer.getvalue()).decode()}
            if revised:
                item["revised_prompt"] = f"A detailed picture: {prompt}"
            data.append(item)
        return web.json_response({"created": int(time.time()), "data": data})

    def _check(self, recorded: Request, model: str, size: str, n: int) -> web.Response | None:
        if size not in SIZES.get(model, set()):
            return self._invalid(recorded, f"Invalid size {size!r} for {model}", "size")
        if model == "dall-e-3" and n != 1:
            return self._invalid(recorded, "dall-e-3 makes one image a request (n=1)", "n")
        return None

    def _invalid(self, recorded: Request, message: str, param: str) -> web.Response:
        recorded.status = 400
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
        return web.json_response(body, status=400)

    async def _generations(self, request: web.Request) -> web.Response:
        recorded, failure = await self._begin(request)
        if failure is not None:
            return failure
        body = recorded.fields
        model, size, n = (
            body.get("model", "dall-e-2"),
            body.get("size", "1024x1024"),
            body.get("n", 1),
        )
        problem = self._check(recorded, model, size, n)
        return problem or self._images(body["prompt"], n, size, revised=model == "dall-e-3")

    async def _variations(self, request: web.Request) -> web.Response:
        recorded, failure = await self._begin(request)
        if failure is not None:
            return failure
        fields = recorded.fields
        model = fields.get("model", "dall-e-2")
        if model != "dall-e-2":
            return self._invalid(recorded, "variations are for dall-e-2 only", "model")
        if "image" not in recorded.files:
            return self._invalid(recorded, "image is required", "image")
        size, n = fields.get("size", "1024x1024"), int(fields.get("n", 1))
        return self._check(recorded, model, size, n) or self._images("", n, size, revised=False)

    async def _edits(self, request: web.Request) -> web.Response:
        recorded, failure = await self._begin(request)
        if failure is not None:
            return failure
        fields = recorded.fields
        model = fields.get("model", "dall-e-2")
        image = recorded.files.get("image") or recorded.files.get("image[]")
        if image is None:
            return self._invalid(recorded, "image is required", "image")
        with Image.open(io.BytesIO(image)) as picture:
            transparent = picture.mode == "RGBA"
        if model == "dall-e-2" and not transparent and "mask" not in recorded.files:
            return self._invalid(recorded, "the image needs transparency or a mask", "image")
        size, n = fields.get("size", "1024x1024"), int(fields.get("n", 1))
        problem = self._check(recorded, model, size, n)
        return problem or self._images(fields["prompt"], n, size, revised=False)
