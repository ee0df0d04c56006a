"""The embedded default model: its world of simple scenes, its builder, and its detector."""

from generation.embedded.model import (
    EMBEDDED_MODEL_NAME,
    EMBEDDED_VERSION,
    build_embedded_pipeline,
    ensure_embedded_model,
    write_byte_level_tokenizer,
)

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "EMBEDDED_VERSION",
    "build_embedded_pipeline",
    "ensure_embedded_model",
    "write_byte_level_tokenizer",
]
