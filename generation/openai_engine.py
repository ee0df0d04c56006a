"""A second engine: DALL-E and other OpenAI-compatible image APIs, for hosts without a GPU.

The same queue, fair share, quotas, records and moderation; only the pictures come from an
API. U*i* upscales locally (the APIs do not upscale) and makes no call; V*i* sends the chosen
tile to the variations endpoint where the model has one, else to edits with the prompt.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import logging
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image

from generation.errors import GenerationError
from generation.model_info import ModelInfo

logger = logging.getLogger(__name__)

ENGINE = "openai"
# How a refused job's error begins; the bot tells only its requester, without the reason.
CONTENT_REFUSED = "content_refused"
PREFIX = "openai:"


@dataclasses.dataclass(frozen=True, slots=True)
class ApiModel:
    """What one API model accepts."""

    name: str
    sizes: tuple[tuple[int, int], ...]
    max_n: int
    variations: bool
    edits: bool
    # gpt-image-1 always answers base64 and refuses the response_format parameter.
    response_format: bool = True
    # dall-e-2 edits need a PNG with transparency or a mask.
    edit_needs_mask: bool = False


API_MODELS = {
    "dall-e-2": ApiModel(
        "dall-e-2",
        ((256, 256), (512, 512), (1024, 1024)),
        10,
        variations=True,
        edits=True,
        edit_needs_mask=True,
    ),
    "dall-e-3": ApiModel(
        "dall-e-3", ((1024, 1024), (1792, 1024), (1024, 1792)), 1, variations=False, edits=False
    ),
    "gpt-image-1": ApiModel(
        "gpt-image-1",
        ((1024, 1024), (1536, 1024), (1024, 1536)),
        10,
        variations=False,
        edits=True,
        response_format=False,
    ),
}


# List prices in USD per image (standard quality) as published when this was written; a host
# sets its own with IMAGINE_OPENAI_PRICES, by "model:WxH" or "model".
DEFAULT_PRICES = {
    "dall-e-2:256x256": 0.016,
    "dall-e-2:512x512": 0.018,
    "dall-e-2:1024x1024": 0.020,
    "dall-e-3:1024x1024": 0.040,
    "dall-e-3:1792x1024": 0.080,
    "dall-e-3:1024x1792": 0.080,
    "gpt-image-1": 0.042,
}
# A local upscale of an API image costs next to nothing; not zero, so it still counts.
LOCAL_UPSCALE_COST = 0.05


def api_job_cost(recipe: Any, prices: Mapping[str, float], per_dollar: float) -> float:
    """Fair-share cost of an API job: its price in dollars × the units a dollar is worth."""
    if recipe.kind == "upscale":
        return LOCAL_UPSCALE_COST
    name = str(recipe.model_id).removeprefix(PREFIX)
    size = f"{recipe.width}x{recipe.height}"
    table = {**DEFAULT_PRICES, **prices}
    price = table.get(f"{name}:{size}", table.get(name, 0.04))
    return float(price) * int(recipe.count) * per_dollar


class ContentRefused(GenerationError):
    """The API refused the prompt or image under its content policy."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            "The image service refused this request under its content policy, so nothing was made."
        )
        self.reason = reason


class EngineBusy(Exception):
    """The API asked us to slow down: the job goes back to the queue for ``retry_after``."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:g} s")
        self.retry_after = retry_after


class EngineRefusedKey(Exception):
    """The API refused the host's key (401/403): the host must fix the setting."""


def api_model(model_id: str) -> ApiModel:
    name = model_id.removeprefix(PREFIX)
    return API_MODELS.get(name) or ApiModel(name, ((1024, 1024),), 1, False, True)


def describe_api_model(name: str) -> ModelInfo:
    """The ModelInfo of an API model: its id is ``openai:<name>``; sizes are what it accepts."""
    model = api_model(name)
    width, height = model.sizes[-1] if name == "dall-e-2" else model.sizes[0]
    return ModelInfo(
        model_id=f"{PREFIX}{model.name}",
        path="",
        revision=model.name,
        native_width=width,
        native_height=height,
        default_steps=1,
        default_guidance=0.0,
        scheduler="api",
        local=False,
        sizes=model.sizes,
        engine=ENGINE,
    )


class ApiProgress:
    """One API call done, as a denoising step is for diffusers: the worker renews its lease."""

    has_preview = True

    def __init__(self, step: int, total: int, image: Image.Image) -> None:
        self.step, self.total, self._image = step, total, image

    def preview(self) -> Image.Image:
        return self._image.resize((64, 64))


def _png(image: Image.Image, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


class OpenAIEngine:
    """Renders a job's spec through the images API (``openai``'s async client)."""

    def __init__(
        self,
        names: list[str],
        *,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 45.0,
        max_retries: int = 1,
        quality: str | None = None,
        style: str | None = None,
    ) -> None:
        import openai

        from generation.engine import RuntimeInfo

        # Any: the client's overloads cannot follow options passed as a dict.
        self.client: Any = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )
        # The longest one call may take, the client's retries included: the worker's hang
        # watch gives a job on this engine at least this long.
        self.call_seconds = timeout * (1 + max_retries) + 10.0
        infos = [describe_api_model(name) for name in names]
        self.model = infos[0]
        self.models = {info.model_id: info for info in infos}
        self.runtime = RuntimeInfo(
            device="api",
            device_kind="api",
            dtype="none",
            torch_threads=1,
            library_versions={"openai": openai.__version__},
        )
        self.quality = quality
        self.style = style

    async def render_async(
        self, spec: Any, on_step: Callable[[Any], None] | None = None
    ) -> list[Image.Image]:
        """The job's images; raises EngineBusy, EngineRefusedKey or ContentRefused."""
        import openai

        model = api_model(spec.model_id or self.model.model_id)
        try:
            if spec.kind == "upscale":
                return [await asyncio.to_thread(self._upscale, spec)]
            return await self._call(model, spec, on_step)
        except openai.RateLimitError as error:
            raise EngineBusy(_retry_after(error)) from error
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            raise EngineRefusedKey(
                f"the image API refused the key ({error.status_code}): check IMAGINE_OPENAI_API_KEY"
            ) from error
        except openai.BadRequestError as error:
            if _content_policy(error):
                raise ContentRefused(_message(error)) from error
            raise

    @staticmethod
    def _upscale(spec: Any) -> Image.Image:
        """Made here: a Lanczos resize of the chosen tile; no API call, nothing billed."""
        image: Image.Image = spec.init_image
        return image.resize((spec.width, spec.height), Image.Resampling.LANCZOS)

    async def _call(
        self, model: ApiModel, spec: Any, on_step: Callable[[Any], None] | None
    ) -> list[Image.Image]:
        wanted = len(spec.seeds)
        size = f"{spec.width}x{spec.height}"
        images: list[Image.Image] = []
        revised: list[str] = []
        calls = -(-wanted // model.max_n)
        while len(images) < wanted:
            n = min(model.max_n, wanted - len(images))
            response = await self._request(model, spec, size, n)
            if not response.data:
                raise ValueError("the image API answered with no images")
            for item in response.data:
                # Decoding megapixel PNGs is for a thread: this runs on the worker's event loop.
                images.append(await asyncio.to_thread(_decode, item.b64_json))
                if getattr(item, "revised_prompt", None):
                    revised.append(item.revised_prompt)
            if on_step is not None:
                on_step(ApiProgress(-(-len(images) // model.max_n), calls, images[-1]))
        images = await asyncio.to_thread(
            lambda: [image.resize((spec.width, spec.height)) for image in images[:wanted]]
        )
        # What the job must record besides its images travels with the first one.
        images[0].info["engine_details"] = {
            "engine": ENGINE,
            "model": model.name,
            "size": size,
            "quality": self.quality,
            "style": self.style,
            "revised_prompts": revised,
            "endpoint": self._endpoint(model, spec),
        }
        return images

    @staticmethod
    def _endpoint(model: ApiModel, spec: Any) -> str:
        if spec.init_image is None:
            return "generations"
        if spec.kind == "variation" and model.variations:
            return "variations"
        return "edits"

    async def _request(self, model: ApiModel, spec: Any, size: str, n: int) -> Any:
        common: dict[str, Any] = {"model": model.name, "n": n, "size": size}
        if model.response_format:
            common["response_format"] = "b64_json"
        endpoint = self._endpoint(model, spec)
        if endpoint == "generations":
            extra = {k: v for k, v in (("quality", self.quality), ("style", self.style)) if v}
            return await self.client.images.generate(prompt=spec.prompt, **common, **extra)
        tile = spec.init_image.resize((spec.width, spec.height))
        if endpoint == "variations":
            png = await asyncio.to_thread(_png, tile)
            return await self.client.images.create_variation(image=("tile.png", png), **common)
        if not model.edits:
            raise ValueError(f"{model.name} cannot start from an image")  # refused at submit
        files: dict[str, Any] = {"image": ("tile.png", await asyncio.to_thread(_png, tile, "RGBA"))}
        if model.edit_needs_mask:
            # A fully transparent mask: the whole tile may change, guided by the prompt.
            mask = Image.new("RGBA", tile.size, (0, 0, 0, 0))
            files["mask"] = ("mask.png", await asyncio.to_thread(_png, mask, "RGBA"))
        return await self.client.images.edit(prompt=spec.prompt, **files, **common)

    def close(self) -> None:
        """Nothing to free here: ``aclose`` closes the HTTP client."""

    async def aclose(self) -> None:
        await self.client.close()


def _decode(b64: str | None) -> Image.Image:
    if not b64:
        raise ValueError("the image API answered without image data")
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.convert("RGB")


def _retry_after(error: Any) -> float:
    try:
        return max(0.5, float(error.response.headers.get("retry-after", "5")))
    except (TypeError, ValueError):
        return 5.0


def _message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error)


def _content_policy(error: Any) -> bool:
    return getattr(error, "code", None) == "content_policy_violation" or (
        "safety system" in _message(error).lower()
    )


class EngineSet:
    """Several engines behind one worker (a GPU pipeline and an image API): each job goes to
    the engine that has its model."""

    def __init__(self, *engines: Any) -> None:
        self.engines = engines
        self.model = engines[0].model
        self.runtime = engines[0].runtime
        self._last: Any = engines[0]  # the engine of the last render

    @property
    def loading_since(self) -> float | None:
        starts = [getattr(engine, "loading_since", None) for engine in self.engines]
        return min((start for start in starts if start is not None), default=None)

    @property
    def last_load_seconds(self) -> float:
        return float(getattr(self._last, "last_load_seconds", 0.0))

    @property
    def models(self) -> dict[str, Any]:
        return {mid: info for engine in self.engines for mid, info in engine.models.items()}

    @property
    def loaded(self) -> list[str]:
        """The models ready to run now: the pipelines' on the device, and an API's."""
        return [mid for engine in self.engines for mid in getattr(engine, "loaded", engine.models)]

    def offer(self, models: list[Any]) -> None:
        """The presets' models go to the engine that loads models (the pipeline's)."""
        for engine in self.engines:
            if hasattr(engine, "offer"):
                engine.offer(models)

    def _engine(self, model_id: str | None) -> Any:
        for engine in self.engines:
            if model_id is None or model_id in engine.models:
                return engine
        raise ValueError(f"the job needs model {model_id!r}; this worker has {list(self.models)}")

    def runtime_for(self, model_id: str) -> Any:
        return self._engine(model_id).runtime

    def engine_for(self, model_id: str) -> Any:
        return self._engine(model_id)

    def siblings(self, model_id: str) -> list[str]:
        """The models of the engine that runs ``model_id``: they share its troubles (a 429,
        a refused key); the other engines' do not."""
        return list(self._engine(model_id).models)

    async def render_async(
        self, spec: Any, on_step: Callable[[Any], None] | None = None
    ) -> list[Image.Image]:
        self._last = self._engine(spec.model_id)
        result: list[Image.Image] = await self._last.render_async(spec, on_step)
        return result

    def close(self) -> None:
        for engine in self.engines:
            engine.close()

    async def aclose(self) -> None:
        for engine in self.engines:
            if hasattr(engine, "aclose"):
                await engine.aclose()
