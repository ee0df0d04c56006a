"""``/metrics`` in Prometheus' text format: the figures of the status page, with no per-user
label (a user's waits are on the status page, for host admins only)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from generation.health import Health


class _Snapshot:
    """One scrape's figures, read once."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        health = self.health
        waiting = GaugeMetricFamily(
            "imagine_jobs_waiting", "Jobs waiting, by model", labels=["model"]
        )
        running = GaugeMetricFamily(
            "imagine_jobs_running", "Jobs running, by model", labels=["model"]
        )
        oldest = GaugeMetricFamily(
            "imagine_oldest_wait_seconds",
            "How long the oldest waiting job has waited",
            labels=["model"],
        )
        for queue in health.queues:
            waiting.add_metric([queue.model_id], queue.waiting)
            running.add_metric([queue.model_id], queue.running)
            oldest.add_metric([queue.model_id], queue.oldest_wait_seconds)
        yield from (waiting, running, oldest)
        waits = GaugeMetricFamily(
            "imagine_wait_seconds",
            "Wait from asking to starting over the newest jobs, by quantile",
            labels=["quantile"],
        )
        waits.add_metric(["0.5"], health.wait_p50_seconds)
        waits.add_metric(["0.95"], health.wait_p95_seconds)
        yield waits
        deliveries = GaugeMetricFamily(
            "imagine_deliveries", "Results still to go or that could not go", labels=["state"]
        )
        for state in ("pending", "undeliverable"):
            deliveries.add_metric([state], health.deliveries.get(state, 0))
        yield deliveries
        failures = GaugeMetricFamily(
            "imagine_failures_24h", "Jobs failed in the last 24 hours, by reason", labels=["reason"]
        )
        for reason, count in health.failures.items():
            failures.add_metric([reason], count)
        yield failures
        workers = GaugeMetricFamily(
            "imagine_worker_heartbeat_age_seconds",
            "Since a worker was last heard from",
            labels=["worker", "state"],
        )
        for worker in health.workers:
            workers.add_metric(
                [worker.worker.id, worker.worker.state], worker.heartbeat_age_seconds
            )
        yield workers


def exposition(health: Health) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Snapshot(health))
    return generate_latest(registry)
