"""Images users give to start from: checked before anything is queued, stored by content."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from generation.errors import InvalidRequest

ACCEPTED_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def check_start_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an uploaded image after checking its size and pixel count; names the ``image``
    option on every refusal."""
    if len(data) > max_bytes:
        raise InvalidRequest(
            "image", f"must be at most {max_bytes // 1024} KiB, not {len(data) // 1024} KiB"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # The header gives the size: refuse before decoding a pixel bomb.
            if image.width * image.height > max_pixels:
                raise InvalidRequest(
                    "image",
                    f"must have at most {max_pixels:,} pixels, not {image.width}×{image.height}",
                )
            if image.format not in ACCEPTED_TYPES.values():
                raise InvalidRequest("image", f"must be PNG, JPEG or WebP, not {image.format}")
            image.load()
    except InvalidRequest:
        raise
    except (
        OSError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as error:
        raise InvalidRequest(
            "image", "is not an image that can be read (PNG, JPEG or WebP)"
        ) from error
    return image.convert("RGB")
