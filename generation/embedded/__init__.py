"""The embedded models (trained and random), their world of simple scenes, and its detector."""

from generation.embedded.model import (
    EMBEDDED_MODEL_NAME,
    EMBEDDED_VERSION,
    RANDOM_MODEL_NAME,
    SHIPPED_WEIGHTS,
    build_embedded_pipeline,
    embedded_model_folder,
    write_byte_level_tokenizer,
)

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "EMBEDDED_VERSION",
    "RANDOM_MODEL_NAME",
    "SHIPPED_WEIGHTS",
    "build_embedded_pipeline",
    "embedded_model_folder",
    "write_byte_level_tokenizer",
]
