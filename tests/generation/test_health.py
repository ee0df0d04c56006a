"""The queue's health as a host reads it, on both databases."""

from __future__ import annotations

from generation.health import failure_reason, percentile, read_health
from generation.requests import GenerationRequest
from generation.service import GenerationService


def test_percentiles_and_failure_reasons() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile(list(map(float, range(1, 101))), 0.95) == 95.0
    assert failure_reason("OutOfMemoryError: CUDA out of memory at 1024×1024 × 4") == (
        "OutOfMemoryError"
    )
    assert failure_reason("it hung: no progress for 60 s") == "it hung"
    assert failure_reason(None) == "unknown"
    assert failure_reason("job 123 could not start") == "job N could not start"


async def test_read_health_counts_each_models_queue_and_nothing_else(
    service: GenerationService,
) -> None:
    empty = await read_health(service.db)
    assert (empty.queues, empty.waits, empty.deliveries, empty.failures) == ([], [], {}, {})
    for user in (1, 1, 2):
        await service.submit(GenerationRequest("a red circle", user_id=user, steps=2))
    health = await read_health(service.db)
    (queue,) = health.queues
    assert (queue.model_id, queue.waiting, queue.running) == (service.model.model_id, 3, 0)
    assert queue.oldest_wait_seconds >= 0
    assert health.waits == [], "none has started"
