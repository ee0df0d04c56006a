"""Attachments users give /imagine: checked (type, bytes, pixels) before anything is queued."""

from __future__ import annotations

import asyncio
import io

import discord

from generation.errors import InvalidRequest
from generation.uploads import ACCEPTED_TYPES, check_start_image


def check_attachment(attachment: discord.Attachment, max_bytes: int, max_pixels: int) -> None:
    """What Discord says about the file (type, bytes, pixels), checked before downloading it."""
    kind = (attachment.content_type or "").split(";")[0].strip()
    if kind not in ACCEPTED_TYPES:
        raise InvalidRequest("image", f"must be a PNG, JPEG or WebP image, not {kind or 'unknown'}")
    if attachment.size > max_bytes:
        raise InvalidRequest(
            "image", f"must be at most {max_bytes // 1024} KiB, not {attachment.size // 1024} KiB"
        )
    if attachment.width and attachment.height and attachment.width * attachment.height > max_pixels:
        raise InvalidRequest(
            "image",
            f"must have at most {max_pixels:,} pixels, not {attachment.width}×{attachment.height}",
        )


async def read_start_image(
    attachment: discord.Attachment, max_bytes: int, max_pixels: int
) -> bytes:
    """The attachment as PNG bytes of its RGB pixels; InvalidRequest("image", ...) otherwise."""
    check_attachment(attachment, max_bytes, max_pixels)
    try:
        data = await asyncio.wait_for(attachment.read(), 30)
    except (discord.HTTPException, TimeoutError) as error:
        raise InvalidRequest("image", "could not be downloaded; attach it again") from error
    image = await asyncio.to_thread(check_start_image, data, max_bytes, max_pixels)
    buffer = io.BytesIO()
    await asyncio.to_thread(image.save, buffer, format="PNG")
    return buffer.getvalue()
