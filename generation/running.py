"""One claimed job, from its render to its recorded end.

Its lease is kept from the claim to the last write (``LeaseKeeper``); every write to the
database or the image store is retried through passing faults while the lease still holds;
the render and the work after it are watched, and one that makes no progress for the job's
budget is abandoned (``RenderHung``: the pipeline thread cannot be stopped, so the process
must go). What one job does wrong ends that job, never the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from generation.comparing import Comparison, cell
from generation.errors import ModelLoadFailed, RenderCancelled, RenderHung, Unrunnable
from generation.events import EventBus, JobCancelled, JobFailed, JobProgress, JobSucceeded
from generation.faults import backoff, is_transient, retrying
from generation.imaging import encode_png, encode_video, image_seed, make_grid, pixel_sha256
from generation.lease import LeaseKeeper
from generation.openai_engine import CONTENT_REFUSED, ContentRefused, EngineBusy, EngineRefusedKey
from generation.rendering import (
    attempt_prefix,
    finished,
    grid_key,
    image_key,
    load_init_image,
    render_plan,
    video_key,
)
from generation.requests import is_resize_only
from generation.safety import SafetyChecker, checker_name
from generation.server_settings import ServerSettings
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import EventKind, JobKind, JobStatus
from storage.records import JobRecord, Lease, NewImage

if TYPE_CHECKING:  # the engine module imports torch: seconds the bot-only process never needs
    from generation.engine import Engine, StepProgress

logger = logging.getLogger(__name__)

T = TypeVar("T")
# After an image API refused the host's key, that engine's models wait this long.
KEY_RETRY_SECONDS = 60.0
# A model's load (from disk, or a first download from the hub) may take this long before the
# job counts as hung; the step watchdog starts when it is loaded.
MAX_LOAD_SECONDS = 1800.0
# A model that did not load is not tried again on this worker for this long.
MODEL_RETRY_SECONDS = 300.0
WATCH_SECONDS = 0.5  # how often a running job looks at its lease, its cancel and its progress
HUNG_ERROR = "it hung: no progress for {seconds:.0f} s, with no attempt left"
HUNG_RECORD_SECONDS = 5.0  # a hung process tries this long to record the hang, then goes
CONFIRM_SECONDS = 30.0  # how long to ask whether a commit whose answer was lost went through
RELEASE_SECONDS = 3.0  # a shutdown's release is tried this long (SIGTERM must end in 30 s)


class _NoAnswer(Exception):
    """An image API's call made no progress for the job's budget: cancelled, the job goes
    back (the API client's own timeouts make this rare)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    images: list[Image.Image]
    gpu_seconds: float
    frames: list[Image.Image] = dataclasses.field(default_factory=list)  # --video: a grid a step


@dataclasses.dataclass(frozen=True, slots=True)
class RunSettings:
    """What a worker's jobs share: the worker's resources and its timings."""

    db: Database
    engine: Engine
    store: ImageStore
    events: EventBus
    worker_id: str
    lease_seconds: float
    heartbeat_interval: float
    preview_interval: float
    hang_seconds: float
    api_give_up_seconds: float
    checker: SafetyChecker | None
    servers: ServerSettings  # each server's safety policy (off: its images are not checked)
    # An engine's trouble: its models wait (``alone``: only that model, on this worker).
    pause_models: Callable[..., None]


class _Progress:
    """Shared between the pipeline thread and the event loop while one job runs."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.last_at = time.monotonic()
        self.last_preview_at = 0.0
        self.done = 0.0  # fraction of the denoising steps finished


class JobRun:
    """A claimed job in hand: ``render``, then ``complete``, then ``close``."""

    def __init__(self, settings: RunSettings, job: JobRecord, lease: Lease, budget: float) -> None:
        self.settings = settings
        self.job = job
        self.lease = lease
        self.budget = budget  # seconds without progress before the job counts as hung
        interval = min(settings.lease_seconds / 3, settings.heartbeat_interval)
        self.keeper = LeaseKeeper(
            settings.db, lease, settings.worker_id, settings.lease_seconds, interval
        ).start()
        self.progress = _Progress()
        # A diffusers render runs in a thread nothing can stop: a hang there ends the process.
        # An image API's call is a coroutine, which a hang only cancels.
        model = settings.engine.models.get(job.model_id)
        self.threaded = model is None or model.engine == "diffusers"
        # Whether its run is a model's work (its seconds feed the model's ETA rate): not a
        # resize, nor an image API's upscale (a resize made here).
        self.calls_model = not is_resize_only(job.kind, job.strength) and (
            self.threaded or job.kind != JobKind.UPSCALE
        )
        if not self.threaded:  # never cut a call short of its client's own timeouts
            engine = getattr(settings.engine, "engine_for", lambda _: settings.engine)(job.model_id)
            self.budget = max(budget, getattr(engine, "call_seconds", 0.0))

    async def close(self) -> None:
        await self.keeper.stop()

    # -- the render ------------------------------------------------------------------------

    def _on_step(
        self, loop: asyncio.AbstractEventLoop, frames: list[Image.Image]
    ) -> Callable[[StepProgress], None]:
        """What the pipeline thread calls after each step: stop if asked, note the progress,
        publish it (with a preview every ``preview_interval`` s), keep --video's frame."""
        job, state, keeper = self.job, self.progress, self.keeper
        preview_interval = self.settings.preview_interval

        def on_step(progress: StepProgress) -> None:  # runs in the pipeline thread
            # A cancel or a lost lease stops the render at the step after the lease keeper
            # hears of it, not when the watch next looks (a fast model runs many steps a beat).
            if state.stop.is_set() or keeper.cancel_requested or keeper.lost.is_set():
                raise RenderCancelled
            now = time.monotonic()
            state.last_at = now
            state.done = progress.step / max(1, progress.total)
            preview = None
            if progress.has_preview and now - state.last_preview_at >= preview_interval:
                state.last_preview_at = now
                image = progress.preview()
                preview = None if image is None else _png(image)
            event = JobProgress(job.id, progress.step, progress.total, preview)
            loop.call_soon_threadsafe(self.settings.events.publish, event)
            if job.video and progress.has_preview:
                shown = [progress.preview(index) for index in range(progress.count)]
                frames.append(make_grid([image for image in shown if image is not None]))

        return on_step

    async def render(self) -> Rendered | JobStatus | None:  # noqa: PLR0911 - one return an end
        """Run the pipeline; a cancel, failure or hand-back is recorded here, a success is left
        to ``complete``. None when the job is no longer this worker's."""
        job, state = self.job, self.progress
        frames: list[Image.Image] = []  # --video: a grid of the step's previews, a step
        on_step = self._on_step(asyncio.get_running_loop(), frames)

        started = time.perf_counter()
        try:
            init_image = await self._watched(
                self._write(
                    lambda: load_init_image(self.settings.db, self.settings.store, job),
                    "reading its start image",
                )
            )
            images = await self._images(init_image, on_step)
        except asyncio.CancelledError:
            # Shutting down mid-job: the pipeline thread stops at its next step, and the job
            # goes back to the queue at once instead of waiting out its lease.
            state.stop.set()
            await asyncio.shield(self.release())
            raise
        except RenderCancelled:
            if self.keeper.lost.is_set():
                logger.warning("job %s: %s; stopped", job.id, self.keeper.lost_because)
                return None
            return await self.end(JobStatus.CANCELLED, "cancelled on request", 1 - state.done)
        except ContentRefused as refused:
            return await self._refused(refused)
        except (EngineBusy, EngineRefusedKey) as trouble:
            return await self._engine_trouble(trouble)
        except RenderHung:
            raise
        except ModelLoadFailed as failure:
            # Its files broke or went on this host, or the GPU is full now: another worker
            # may run it; this one leaves the model alone a while (and looks at its files).
            logger.warning("job %s: %s; back to the queue", job.id, failure)
            self.settings.pause_models(job.model_id, MODEL_RETRY_SECONDS, alone=True)
            return await self.give_back(attempt_counts=True, error=str(failure))
        except Unrunnable as reason:  # no traceback: the reason is the whole story
            logger.warning("job %s: %s", job.id, reason)
            return await self.end(JobStatus.FAILED, str(reason), 1.0)
        except _NoAnswer as silent:
            return await self.give_back(attempt_counts=True, error=str(silent))
        except Exception as error:
            if is_transient(error):  # the store or the database was away: the job goes back
                logger.warning("job %s: %s; back to the queue", job.id, error)
                return await self.give_back(attempt_counts=True, error=_describe(error))
            logger.exception("job %s failed", job.id)
            return await self.end(JobStatus.FAILED, _describe(error), 1.0)
        # Loading the model is not the job's GPU time (what ETAs and the hang budget measure).
        loading = getattr(self.settings.engine, "last_load_seconds", 0.0)
        return Rendered(images, max(0.0, time.perf_counter() - started - loading), frames)

    async def _images(
        self, init_image: Image.Image | None, on_step: Callable[[StepProgress], None]
    ) -> list[Image.Image]:
        """The job's images: its pipeline calls one after another (a comparison's, a cell
        each), their steps counted across them all; an edit's composited on its parent."""
        specs, edit = render_plan(self.job, init_image)
        total, done = sum(spec.steps for spec in specs), 0
        images: list[Image.Image] = []
        for spec in specs:

            def shifted(
                progress: StepProgress, before: int = done, steps: int = spec.steps
            ) -> None:
                if len(specs) > 1:  # counted in the cells' steps (a sampler may call more)
                    within = round(progress.step * steps / max(1, progress.total))
                    progress.step, progress.total = before + min(steps, within), total
                on_step(progress)

            render = self.settings.engine.render_async(spec, shifted)
            images += await self._watched(render, threaded=self.threaded)
            done += spec.steps
        return finished(images, edit)

    async def _watched(self, work: Awaitable[T], *, threaded: bool = True) -> T:
        """``work``, watched: stopped at its next step when the lease is lost or a cancel is
        asked; after ``budget`` seconds without progress, abandoned as hung (``threaded``:
        work in a thread, which nothing can stop, so the process must go) or, for a coroutine
        (an image API's call), cancelled and the job given back."""
        task = asyncio.ensure_future(work)
        state = self.progress
        state.last_at = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=WATCH_SECONDS)
                if done:
                    return task.result()
                if self.keeper.lost.is_set() or self.keeper.cancel_requested:
                    state.stop.set()
                since = getattr(self.settings.engine, "loading_since", None)
                if since is not None and time.monotonic() - since < MAX_LOAD_SECONDS:
                    state.last_at = time.monotonic()  # loading its model is no hang
                if time.monotonic() - state.last_at > self.budget:
                    state.stop.set()
                    if not threaded:
                        task.cancel()
                        seconds = self.budget
                        raise _NoAnswer(f"the image service did not answer for {seconds:.0f} s")
                    await self._hung()
        except BaseException:
            task.add_done_callback(_ignore_result)  # it may end later; nobody waits for it
            raise

    async def _hung(self) -> None:
        """No progress for the budget: the attempt counts, the job goes back (or fails, out of
        attempts), and the process must go (``RenderHung``)."""
        seconds = self.budget
        logger.error("job %s: no progress for %.0f s; abandoning it", self.job.id, seconds)
        reason = f"it hung: no progress for {seconds:.0f} s"
        status = None
        try:
            async with asyncio.timeout(HUNG_RECORD_SECONDS):
                status = await self.give_back(
                    attempt_counts=True, error=reason, exhausted=HUNG_ERROR.format(seconds=seconds)
                )
        except Exception:  # the database is away too: its lease runs out and it comes back
            logger.exception("job %s: could not record the hang", self.job.id)
        raise RenderHung(self.job.id, seconds, status)  # whatever was recorded: the thread is stuck

    # -- the ends a job can have -----------------------------------------------------------

    async def _write(self, action: Callable[[], Awaitable[T]], what: str) -> T:
        """A read or write for this job, retried through passing faults while the lease holds
        and for one lease's length at most (each try is a sign of life: waiting out an outage
        is not a hang); not at all once the lease is lost or a cancel is asked."""
        budget = time.monotonic() + self.settings.lease_seconds

        def until() -> float:
            return min(self._until(), budget)

        return await retrying(
            action, what=f"job {self.job.id}: {what}", until=until, on_try=self._alive
        )

    def _alive(self) -> None:
        self.progress.last_at = time.monotonic()

    def _until(self) -> float:
        if self.keeper.lost.is_set() or self.keeper.cancel_requested:
            return 0.0
        return self.keeper.deadline

    async def end(self, status: JobStatus, error: str, unrun: float) -> JobStatus | None:
        """Record a cancel or failure; the ``unrun`` part of its cost goes back to the user."""

        async def record() -> bool:
            async with self.settings.db.uow() as uow:
                now = await uow.now()
                ended = await uow.queue.finish(self.lease, status, now, unrun=unrun, error=error)
                await uow.commit()
            return ended or await self._already(status)

        if not await self._write(record, f"recording it {status}"):
            logger.warning("job %s: lease lost before it could be marked %s", self.job.id, status)
            return None
        self._announce(status, error)
        return status

    async def give_back(
        self,
        *,
        attempt_counts: bool,
        run_counts: bool = True,
        wait: float | None = None,
        error: str | None = None,
        exhausted: str = "",
    ) -> JobStatus | None:
        """Put the job back in the queue (held back ``wait`` seconds, or a backoff when it
        failed), or fail it when it has had its attempts or runs; its user hears of a failure."""
        job = self.job

        async def record() -> JobStatus | None:
            async with self.settings.db.uow() as uow:
                now = await uow.now()
                pause = wait if wait is not None else backoff(job.attempts, 2.0, 60.0)
                status = await uow.queue.put_back(
                    self.lease,
                    now,
                    attempt_counts=attempt_counts,
                    run_counts=run_counts,
                    not_before=now + _seconds(pause) if error or wait else None,
                    error=error,
                    exhausted=exhausted,
                )
                await uow.commit()
            return status

        status = await self._write(record, "putting it back in the queue")
        if status is JobStatus.FAILED:
            async with self.settings.db.uow() as uow:
                failed = await uow.jobs.get(job.id)
            self._announce(status, (failed.error if failed else None) or error or "")
        elif status is not None and error:
            logger.info("job %s: back in the queue: %s", job.id, error)
        elif status is not None:
            logger.info("job %s: released back to the queue", job.id)
        return status

    async def release(self) -> None:
        """A clean shutdown: the job goes back at once, its attempt given back (its run
        counts, so a job released every time still ends). Tried for a few seconds only."""
        try:
            async with asyncio.timeout(RELEASE_SECONDS):
                await self.give_back(attempt_counts=False)
        except Exception as error:  # the lease expires and the job is taken up anyway
            logger.warning("job %s: could not release it (%s); it returns after its lease",
                           self.job.id, error)  # fmt: skip

    async def _already(self, status: JobStatus) -> bool:
        """Whether the job already stands as this attempt left it: a commit whose answer the
        connection lost may have gone through, and must not count as a lost lease. (A job
        this attempt finished may have been deleted since.)"""
        async with self.settings.db.uow() as uow:
            current = await uow.jobs.get(self.job.id)
        ended = {status, JobStatus.DELETED} if status is JobStatus.SUCCEEDED else {status}
        return (
            current is not None
            and current.status in ended
            and current.attempts == self.lease.attempt
            and current.lease_owner is None
        )

    async def _confirmed(self, status: JobStatus) -> bool | None:
        """``_already``, asked until the database answers (for a while, lease or not): None
        when it never did."""
        deadline = time.monotonic() + CONFIRM_SECONDS
        try:
            return await retrying(
                lambda: self._already(status),
                what=f"job {self.job.id}: reading how it stands",
                until=lambda: deadline,
            )
        except Exception:
            return None

    async def _discard_files(self) -> None:
        """This attempt's files, when the job is certainly not done by this attempt."""
        key = attempt_prefix(self.job.id, self.lease.attempt)
        try:
            await asyncio.to_thread(self.settings.store.delete_tree, key)
        except Exception as error:  # left for the host; the job's row never names them
            logger.warning("job %s: could not remove %s: %s", self.job.id, key, error)

    def _announce(self, status: JobStatus, error: str) -> None:
        events, job_id = self.settings.events, self.job.id
        if status is JobStatus.SUCCEEDED:
            events.publish(JobSucceeded(job_id))
        elif status is JobStatus.CANCELLED:
            events.publish(JobCancelled(job_id))
        elif status is JobStatus.FAILED:
            events.publish(JobFailed(job_id, error))

    # -- image APIs ------------------------------------------------------------------------

    async def _engine_trouble(self, trouble: Exception) -> JobStatus | None:
        """An image API asked to slow down (429) or refused the host's key: only that
        engine's models wait; the job goes back without losing an attempt, unless it has
        waited past ``api_give_up_seconds``, when it fails with the reason."""
        job = self.job
        pause = trouble.retry_after if isinstance(trouble, EngineBusy) else KEY_RETRY_SECONDS
        async with self.settings.db.uow() as uow:
            now = await uow.now()
        waited = (now - (job.deferred_since or now)).total_seconds()
        left = self.settings.api_give_up_seconds - waited
        if left <= 0:
            error = f"the image service could not take it for {_minutes(waited)}: {trouble}"
            return await self.end(JobStatus.FAILED, error, 1.0)
        pause = min(pause, left)  # tried once more at the give-up time, then failed
        self.settings.pause_models(job.model_id, pause)
        # A refused key is the host's to fix: said as an error. A 429 passes by itself.
        level = logging.WARNING if isinstance(trouble, EngineBusy) else logging.ERROR
        logger.log(level, "job %s: %s; back to the queue for %g s", job.id, trouble, pause)
        return await self.give_back(
            attempt_counts=False, run_counts=False, wait=pause, error=str(trouble)
        )

    async def _refused(self, refused: ContentRefused) -> JobStatus | None:
        """The image API refused the request: the job fails, and a moderation event keeps the
        API's reason (the user is told without it)."""
        job = self.job
        error = f"{CONTENT_REFUSED}: {refused.reason}"

        async def record() -> bool:
            async with self.settings.db.uow() as uow:
                now = await uow.now()
                ended = await uow.queue.finish(
                    self.lease, JobStatus.FAILED, now, unrun=1.0, error=error
                )
                if ended:
                    await uow.events.add(
                        kind=EventKind.CONTENT_REFUSED,
                        actor_id=None,
                        guild_id=job.guild_id,
                        target_user_id=job.user_id,
                        job_id=job.id,
                        reason=refused.reason,
                        details={"model": job.model_id, "prompt": job.prompt},
                        created_at=now,
                    )
                    await uow.commit()
            return ended or await self._already(JobStatus.FAILED)

        if not await self._write(record, "recording the refusal"):
            return None
        self._announce(JobStatus.FAILED, CONTENT_REFUSED)
        return JobStatus.FAILED

    # -- completion ------------------------------------------------------------------------

    async def complete(self, rendered: Rendered) -> JobStatus | None:
        """Write the images (checked, with their recipe) and record the job done, fenced on
        the lease; None (and the files removed) when another worker owns the job now. Cut
        short by a shutdown, the job goes back to the queue at once."""
        try:
            return await self._complete(rendered)
        except asyncio.CancelledError:
            await asyncio.shield(self.release())
            raise

    async def _complete(self, rendered: Rendered) -> JobStatus | None:
        settings, job = self.settings, self.job
        if self.keeper.cancel_requested:
            # Asked while the render could not stop (an image API's call): it is not kept.
            return await self.end(JobStatus.CANCELLED, "cancelled on request", 0.0)
        runtime_for = getattr(settings.engine, "runtime_for", None)
        runtime = runtime_for(job.model_id) if runtime_for else settings.engine.runtime
        ran = dataclasses.replace(
            job,
            dtype=runtime.dtype,
            device_kind=runtime.device_kind,
            torch_threads=runtime.torch_threads,
            library_versions=runtime.library_versions,
        )
        images = rendered.images
        try:
            policy = await self._write(
                lambda: settings.servers.safety_policy(job.guild_id), "reading its server's rules"
            )
            check = policy != "off"
            new_images = await self._watched(
                self._write(
                    lambda: asyncio.to_thread(
                        self._write_files, ran, images, check=check, frames=rendered.frames
                    ),
                    "writing its images",
                )
            )
        except Exception as error:
            if not is_transient(error):
                raise
            logger.warning("job %s: could not write its images (%s)", job.id, error)
            await self._discard_files()
            return await self.give_back(attempt_counts=True, error=_describe(error))

        async def record() -> bool:
            async with settings.db.uow() as uow:
                now = await uow.now()
                completed = await uow.queue.finish(
                    self.lease,
                    JobStatus.SUCCEEDED,
                    now,
                    dtype=ran.dtype,
                    device_kind=ran.device_kind,
                    torch_threads=ran.torch_threads,
                    library_versions=ran.library_versions,
                    engine_details=images[0].info.get("engine_details", {}) if images else {},
                    gpu_seconds=rendered.gpu_seconds,
                    error=None,
                    not_before=None,
                    measure=self.calls_model,
                )
                if not completed:
                    return await self._already(JobStatus.SUCCEEDED)
                await uow.images.add_many(job.id, new_images)
                for image in new_images:
                    if image.flagged:
                        await uow.events.add(**self._flag_event(image, now))
                await uow.usage.charge(
                    job.user_id,
                    now.date(),
                    images=len(new_images),
                    cost=job.cost,
                    gpu_seconds=rendered.gpu_seconds,
                )
                await uow.commit()
            return True

        try:
            completed: bool | None = await self._write(record, "recording it done")
        except Exception:
            logger.exception("job %s: could not record it done", job.id)
            completed = await self._confirmed(JobStatus.SUCCEEDED)
        if completed is None:
            # The database never said: the files stay (they may be a finished job's); the
            # lease runs out and, if the job was not recorded, it runs again.
            logger.error("job %s: cannot tell whether it was recorded done", job.id)
            return None
        if not completed:
            # Fenced out (or the lease ran out while the database was away): another worker
            # owns the job now. Our files are ours alone; remove them.
            logger.warning("job %s: completion refused, the lease was lost; discarding", job.id)
            await self._discard_files()
            return None
        self._announce(JobStatus.SUCCEEDED, "")
        logger.info("job %s done in %.2f s", job.id, rendered.gpu_seconds)
        return JobStatus.SUCCEEDED

    def _flag_event(self, image: NewImage, now: dt.datetime) -> dict[str, Any]:
        job, name = self.job, checker_name(self.settings.checker)
        reason = (
            f"the safety check ({name}) could not run: {image.check_error}"
            if image.check_error
            else f"flagged by the safety check ({name})"
        )
        return {
            "kind": EventKind.IMAGE_FLAGGED,
            "actor_id": None,
            "guild_id": job.guild_id,
            "target_user_id": job.user_id,
            "job_id": job.id,
            "reason": reason,
            "details": {"index": image.index, "scores": image.scores},
            "created_at": now,
        }

    def _write_files(
        self,
        job: JobRecord,
        images: list[Image.Image],
        *,
        check: bool,
        frames: Sequence[Image.Image] = (),
    ) -> list[NewImage]:
        """The PNGs (with their recipe) into the store, each image checked first, and --video's
        WebP (its last step's frame is the grid as made); runs in a thread. A checker that
        fails flags the image for review rather than pass it."""
        settings, attempt = self.settings, self.lease.attempt
        model = settings.engine.models.get(job.model_id)
        name = model.name if model else job.model_id
        checker = settings.checker
        written = []
        for index, image in enumerate(images):
            self.progress.last_at = time.monotonic()  # each image written is progress
            scores: dict[str, float] = {}
            check_error = None
            if check and checker is not None:
                try:
                    scores = checker.scores(image)
                except Exception as error:
                    logger.exception("job %s: the safety check failed on image %d", job.id, index)
                    check_error = _describe(error)
            recipe = cell(job, index)  # a comparison's image carries its own recipe
            key = settings.store.put(
                image_key(job.id, attempt, index), encode_png(image, recipe, index, name)
            )
            written.append(
                NewImage(
                    index=index,
                    seed=image_seed(job, index),
                    sha256=pixel_sha256(image),
                    path=key,
                    width=image.width,
                    height=image.height,
                    scores=scores,
                    flagged=check_error is not None or settings.servers.safety.flagged(scores),
                    check_error=check_error,
                )
            )
        labels = Comparison.from_dict(job.compare).labels() if job.compare else []
        grid = make_grid(images, labels)
        settings.store.put(grid_key(job.id, attempt), encode_png(grid, job, None, name))
        if frames:  # the video is an extra: without it, the images are still the job's
            try:
                settings.store.put(video_key(job.id, attempt), encode_video([*frames[:-1], grid]))
            except Exception:
                logger.exception("job %s: its video could not be written; kept without", job.id)
        return written


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # read, so an abandoned render's late error is not reported as lost


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
