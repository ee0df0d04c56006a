"""The worker loop: claim the next job, run it (``generation.running``), claim the next.

Nothing one job does ends the loop, and no passing fault does: a claim that meets a database
that is away waits and tries again. Only a hung render (``RenderHung``) ends it, since its
pipeline thread cannot be stopped: the process exits and its supervisor starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from generation.errors import ModelUnavailable, RenderHung
from generation.events import EventBus, JobClaimed, JobFailed
from generation.faults import backoff, is_transient
from generation.model_info import ModelInfo, describe_model
from generation.presets import PresetBook
from generation.running import JobRun, Rendered, RunSettings
from generation.safety import SafetyChecker, SafetyPolicy
from generation.server_settings import ServerSettings
from generation.service import default_job_cost
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobStatus
from storage.queue import LEASE_EXPIRED_ERROR
from storage.records import JobRecord, Lease

if TYPE_CHECKING:  # the engine module imports torch: seconds the bot-only process never needs
    from generation.engine import Engine

logger = logging.getLogger(__name__)

# How often a worker looks again for the presets' models on this host (seconds).
MODELS_RECHECK = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    worker_id: str = dataclasses.field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:12]}")
    lease_seconds: float = 120.0
    poll_interval: float = 1.0
    preview_interval: float = 2.0
    # How often a running job renews its lease and looks for a cancel request.
    heartbeat_interval: float = 2.0
    # A job that makes no progress this long (or 5 × its expected time, if longer) is hung.
    hang_seconds: float = 60.0
    # An image API job that could not run this long (429s, a refused key) fails.
    api_give_up_seconds: float = 3600.0
    # Write a finished job's files and completion while the next job renders. None: only on a
    # GPU. On the CPU the two fight over the same cores and the GIL: benchmarks/overhead.py
    # measured the overlap slower there.
    overlap_completion: bool | None = None
    # A job for a model already loaded is taken before the fair-share order's next while its
    # start tag is within this many jobs of that next job's (0: always the fair order). A job
    # here is a 2×2 grid at the host model's defaults, for a member of weight 1.
    group_bound: float = 2.0


class Worker:
    """Runs jobs one at a time on one engine; ``burst`` drains the queue and returns."""

    def __init__(
        self,
        db: Database,
        engine: Engine,
        store: ImageStore,
        events: EventBus,
        config: WorkerConfig | None = None,
        *,
        checker: SafetyChecker | None = None,
        safety: SafetyPolicy | None = None,
        servers: ServerSettings | None = None,
        presets: PresetBook | None = None,
        models_dir: Path | None = None,
    ) -> None:
        self.db = db
        # The host's presets: those whose model this host has the files of are offered to
        # the engine, and announced (the claim takes only jobs for models announced).
        self.presets = presets
        self.models_dir = models_dir
        # The presets' models last wanted, those found here (by id and revision: found once,
        # they are not described again), and when the missing ones were last looked for.
        self._wanted: frozenset[tuple[str, str]] | None = None
        self._found: dict[tuple[str, str], ModelInfo] = {}
        self._looked_at = 0.0
        self._announced: frozenset[str] = frozenset()  # the models the workers table shows
        self.engine = engine
        self.store = store
        self.events = events
        self.config = config or WorkerConfig()
        self.settings = RunSettings(
            db=db,
            engine=engine,
            store=store,
            events=events,
            worker_id=self.config.worker_id,
            lease_seconds=self.config.lease_seconds,
            heartbeat_interval=self.config.heartbeat_interval,
            preview_interval=self.config.preview_interval,
            hang_seconds=self.config.hang_seconds,
            api_give_up_seconds=self.config.api_give_up_seconds,
            checker=checker,
            servers=servers or ServerSettings(db, safety=safety or SafetyPolicy()),
            pause_models=self.pause_models,
        )
        self._stopping = asyncio.Event()
        self._paused: dict[str, float] = {}  # model id -> time.monotonic() it may run again
        self._seconds_per_cost: float | None = None  # measured, for the hang budget
        self._finishing: asyncio.Task[None] | None = None  # a completion in flight

    @property
    def _overlap(self) -> bool:
        if self.config.overlap_completion is None:
            return self.engine.runtime.device_kind != "cpu"
        return self.config.overlap_completion

    @property
    def worker_id(self) -> str:
        return self.config.worker_id

    def stop(self) -> None:
        """Stop claiming; the job in hand finishes first."""
        self._stopping.set()

    # -- which models may be claimed -------------------------------------------------------

    def pause_models(self, model_id: str, seconds: float, *, alone: bool = False) -> None:
        """An engine is in trouble (an image API's 429 or refused key): its models wait
        ``seconds``; the other engine's keep running. ``alone``: only this model waits (it
        did not load here)."""
        siblings = getattr(self.engine, "siblings", None)
        if alone:
            models = [model_id]
        else:
            models = siblings(model_id) if siblings else list(self.engine.models)
        until = time.monotonic() + seconds
        for model in models:
            self._paused[model] = max(self._paused.get(model, 0.0), until)

    async def refresh_models(self) -> None:
        """Offer the engine the presets' models this host can load (the same files the preset
        was described from), and announce the change: when the presets change, and every
        ``MODELS_RECHECK`` seconds for those not found (files copied to this host since; one
        found is not described again: if its files go, its load fails the job back). A
        database that is away leaves the last offer as it was."""
        offer = getattr(self.engine, "offer", None)
        if offer is None or self.presets is None or self.models_dir is None:
            return
        try:
            snapshot = await self.presets.current()
        except Exception as error:
            if not is_transient(error):
                raise
            logger.warning("worker %s could not read the presets: %s", self.worker_id, error)
            return
        wanted = {
            (p.model.model_id, p.model.revision): (p.source, p.model)
            for p in snapshot.presets.values()
            if p.model is not None and p.model.engine == "diffusers"
        }
        missing = [key for key in wanted if key not in self._found]
        recheck = bool(missing) and time.monotonic() - self._looked_at > MODELS_RECHECK
        if frozenset(wanted) != self._wanted or recheck:
            new = await asyncio.to_thread(
                _loadable, [wanted[key] for key in missing], self.models_dir
            )
            self._looked_at = time.monotonic()
            found = {**self._found, **{(m.model_id, m.revision): m for m in new}}
            self._found = {key: model for key, model in found.items() if key in wanted}
            offer(list(self._found.values()))
            self._wanted = frozenset(wanted)
        if frozenset(self.engine.models) == self._announced:
            return
        logger.info(
            "worker %s runs %s",
            self.worker_id,
            ", ".join(m.name for m in self.engine.models.values()),
        )
        await self._announce()  # if the database is away: again at the next claim

    def _claimable(self) -> list[str]:
        now = time.monotonic()
        return [m for m in self.engine.models if self._paused.get(m, 0.0) <= now]

    # -- the loop --------------------------------------------------------------------------

    async def run(self, *, burst: bool = False) -> int:
        """Claim and run jobs until stopped (or, in burst mode, until the queue is empty).

        On a GPU a finished job's PNGs and completion are written while the next job renders,
        so the device never waits on disk or database; at most one completion is in flight.
        """
        done = 0
        self._finishing = None
        await self._announce()
        await self._measured()
        logger.info("worker %s started", self.worker_id)
        try:
            while not self._stopping.is_set():
                ran = await self._next(burst)
                if ran is None:
                    break
                done += ran
            await self._settle()
        except BaseException:
            finishing, self._finishing = self._finishing, None
            if finishing is not None:  # cut short (a stop past its grace): its job goes back
                finishing.cancel()
                await asyncio.gather(finishing, return_exceptions=True)
            raise
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat("stopped", None), 2)
        logger.info("worker %s stopped after %d jobs", self.worker_id, done)
        return done

    async def _next(self, burst: bool) -> int | None:
        """Claim and run one job: 1; 0 when there was none to run now; None when a burst has
        drained the queue."""
        await self.refresh_models()
        models = self._claimable()
        if not models:
            await self._pause(min(self._paused.values()) - time.monotonic())
            return 0
        claimed = await self._claim_or_wait(models, burst)
        if claimed is None:
            await self._settle()
            if burst and not await self._held_back():
                return None
            await self._pause()
            return 0
        if claimed is False or claimed is True:
            return 0
        run = self._start(*claimed)
        outcome = await self._render(run)
        try:
            await self._settle()
        except BaseException:  # the last job hung (or we stop): let this one go
            if isinstance(outcome, Rendered):
                await run.release()
                await run.close()
            raise
        if isinstance(outcome, Rendered):
            self._finishing = asyncio.create_task(
                self._finish(run, outcome), name=f"complete-{run.job.id}"
            )
            if not self._overlap:
                await self._settle()
        return 1

    async def _settle(self) -> None:
        """Wait for the completion in flight, if any (its errors, a hang, come out here)."""
        finishing, self._finishing = self._finishing, None
        if finishing is not None:
            await finishing

    async def _claim_or_wait(
        self, models: list[str], burst: bool
    ) -> tuple[JobRecord, Lease] | bool | None:
        """The next job; None when nothing waits; False when the database was away (waited)."""
        try:
            return await self.claim(models)
        except Exception as error:
            if burst or not is_transient(error):
                raise
            # The database went away for a moment: the queue is still there, wait and retry.
            logger.warning("worker %s could not claim (%s); retrying", self.worker_id, error)
            await self._pause(max(self.config.poll_interval, backoff(3)))
            return False

    def _start(self, job: JobRecord, lease: Lease) -> JobRun:
        self.events.publish(JobClaimed(job.id, self.worker_id, lease.attempt))
        return JobRun(self.settings, job, lease, self._budget(job))

    def _budget(self, job: JobRecord) -> float:
        """Seconds without progress before a job counts as hung: the setting, or 5 × what the
        job should take on this worker, whichever is longer."""
        expected = job.cost * self._seconds_per_cost if self._seconds_per_cost else 0.0
        return max(self.config.hang_seconds, 5 * expected)

    async def _render(self, run: JobRun) -> Rendered | JobStatus | None:
        """The render; an error that escapes it (the database away past the lease) costs the
        job its attempt, never the worker its loop."""
        try:
            outcome = await run.render()
        except (RenderHung, asyncio.CancelledError):
            await run.close()
            raise
        except Exception:
            logger.exception("job %s: its run broke; it goes back to the queue", run.job.id)
            await self._give_back(run)
            await run.close()
            return None
        if not isinstance(outcome, Rendered):
            await run.close()
        return outcome

    async def _finish(self, run: JobRun, rendered: Rendered) -> None:
        try:
            status = await run.complete(rendered)
            if status is JobStatus.SUCCEEDED and run.job.cost > 0 and run.calls_model:
                measured = rendered.gpu_seconds / run.job.cost
                known = self._seconds_per_cost
                self._seconds_per_cost = measured if known is None else 0.8 * known + 0.2 * measured
        except RenderHung:
            raise
        except Exception:
            logger.exception("job %s: recording it broke; it goes back to the queue", run.job.id)
            await self._give_back(run)
        finally:
            await run.close()

    @staticmethod
    async def _give_back(run: JobRun) -> None:
        with contextlib.suppress(Exception):  # if even this fails, the lease runs out instead
            await run.give_back(attempt_counts=True, error="its run broke (see the worker log)")

    async def _pause(self, seconds: float | None = None) -> None:
        """Wait one poll interval (or ``seconds``), or less if asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._stopping.wait(),
                self.config.poll_interval if seconds is None else max(0.0, seconds),
            )

    # -- the database ------------------------------------------------------------------------

    async def claim(self, models: list[str] | None = None) -> tuple[JobRecord, Lease] | None:
        """The next job for one of ``models`` (this engine's, by default), with a lease on
        the database's clock; the worker's row says what it is doing in the same transaction."""
        async with self.db.uow() as uow:
            now = await uow.now()
            claimed = await uow.queue.claim(
                self.worker_id,
                self.config.lease_seconds,
                now,
                model_ids=list(self.engine.models) if models is None else models,
                # Bound 0: the fair order alone (a tie goes to the older job, loaded or not).
                prefer=list(getattr(self.engine, "loaded", ())) if self.config.group_bound else [],
                bound=self.config.group_bound * default_job_cost(self.engine.model),
            )
            job_id = claimed[0].id if claimed else None
            await uow.workers.beat(self.worker_id, "busy" if claimed else "idle", job_id, now)
            await uow.commit()
        for failed in uow.queue.reaped:  # out of attempts: their users hear of it
            self.events.publish(JobFailed(failed, LEASE_EXPIRED_ERROR))
        return claimed

    async def _measured(self) -> None:
        """What a cost unit takes, from the jobs the workers finished lately: the hang budget
        of a worker that just started is the job's, not only the floor."""
        try:
            async with self.db.uow() as uow:
                self._seconds_per_cost = await uow.queue.seconds_per_cost(*self.engine.models)
        except Exception as error:
            logger.warning("worker %s could not read past timings: %s", self.worker_id, error)

    async def _held_back(self) -> bool:
        """Whether jobs for this engine still wait, only held back for now (a retry's wait, an
        image API's retry-after): a burst waits for them instead of ending."""
        async with self.db.uow() as uow:
            return await uow.queue.waiting_count(list(self.engine.models)) > 0

    async def _announce(self) -> None:
        """Say who this worker is (id, host, device, models) where `imagine-bot workers` looks
        (and the claims of the models it announces)."""
        try:
            async with self.db.uow() as uow:
                await uow.workers.announce(
                    self.worker_id,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    device=self.engine.runtime.device,
                    models=list(self.engine.models),
                    now=await uow.now(),
                )
                await uow.commit()
        except Exception as error:
            if not is_transient(error):
                raise
            logger.warning("worker %s could not announce itself: %s", self.worker_id, error)
            return
        self._announced = frozenset(self.engine.models)

    async def _beat(self, state: str, job_id: int | None) -> None:
        try:
            async with self.db.uow() as uow:
                await uow.workers.beat(self.worker_id, state, job_id, await uow.now())
                await uow.commit()
        except Exception as error:
            logger.warning("worker %s could not record its state: %s", self.worker_id, error)

    # -- one job at a time, for tests and the command line -----------------------------------

    async def run_once(self) -> bool:
        """Claim one job and run it; False when nothing was waiting."""
        claimed = await self.claim()
        if claimed is None:
            return False
        await self.execute(*claimed)
        return True

    async def execute(self, job: JobRecord, lease: Lease) -> JobStatus | None:
        """Run a claimed job to its end; None when the lease was lost and nothing was recorded."""
        run = self._start(job, lease)
        try:
            outcome = await run.render()
            if isinstance(outcome, Rendered):
                return await run.complete(outcome)
            return outcome
        finally:
            await run.close()


def _loadable(wanted: list[tuple[str, ModelInfo]], models_dir: Path) -> list[ModelInfo]:
    """The models whose source this host has, as they were when their preset was added."""
    found = []
    for source, model in wanted:
        try:
            here = describe_model(source, models_dir, None if model.local else model.revision)
        except ModelUnavailable as error:
            logger.info("%s is not on this host: %s", model.name, error)
            continue
        except Exception:  # unreadable files, a config of another version: not run here
            logger.exception("%s could not be described on this host", model.name)
            continue
        if (here.model_id, here.revision) != (model.model_id, model.revision):
            logger.warning(
                "%s here is not the one its preset was added with (revision %s, not %s): "
                "this worker does not run it",
                model.name,
                here.revision[:12],
                model.revision[:12],
            )
            continue
        found.append(model)
    return found
