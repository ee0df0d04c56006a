"""Typed errors raised where input is checked; the CLI and the bot turn them into messages."""

from __future__ import annotations

import datetime as dt


class GenerationError(Exception):
    """Base of every error a user can be shown as it is."""


class InvalidRequest(GenerationError):
    """An option is out of range; names the option and what is allowed."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


class UserBanned(GenerationError):
    def __init__(
        self, reason: str | None, until: dt.datetime | None, *, in_server: bool = False
    ) -> None:
        end = f"until {until:%Y-%m-%d %H:%M} UTC" if until else "with no end date"
        where = " in this server" if in_server else ""
        super().__init__(
            f"you are banned from generating images{where} {end}: {reason or 'no reason given'}"
        )
        self.reason = reason
        self.until = until


class JobNotFound(GenerationError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"there is no job {job_id}")
        self.job_id = job_id


class NotAllowed(GenerationError):
    """The user may not do this to this job."""


class JobStateError(GenerationError):
    """The job is not in a state that allows this (already ended, has no images yet)."""


class ModelUnavailable(GenerationError):
    """The configured model cannot be found or is not a diffusers pipeline."""


class Unrunnable(Exception):
    """This job cannot run, and trying again will not change that: it fails with this short
    reason (no traceback), and the worker goes on with the next."""


class TooLargeForDevice(Unrunnable):
    """The device ran out of memory for this job (the worker freed it)."""


class LoraUnavailable(Unrunnable):
    """A LoRA the job names is not on this worker, has changed since, or does not load onto
    the model."""


class ModelLoadFailed(Unrunnable):
    """A model this worker announced it could run did not load (its files changed or broke
    since): the job fails with the reason; the worker's other models go on."""


class RenderCancelled(Exception):
    """Raised from the pipeline's step callback to stop a job at the next step."""


class PromptBlocked(GenerationError):
    """The prompt filter refused the prompt; says nothing of which term, and where the user
    stands: a strike, or the automatic ban it led to."""

    def __init__(
        self,
        option: str,
        strikes: int,
        strikes_to_ban: int,
        banned_until: dt.datetime | None = None,
    ) -> None:
        where = "negative prompt" if option == "negative" else "prompt"
        if banned_until is not None:
            standing = (
                f"That was strike {strikes} of {strikes_to_ban}: you are banned from "
                f"generating images until {banned_until:%Y-%m-%d %H:%M} UTC."
            )
        else:
            standing = (
                f"Strike {strikes} of {strikes_to_ban}; at {strikes_to_ban} you are banned "
                "for a while."
            )
        super().__init__(
            f"Your {where} contains something this server does not allow, so nothing was "
            f"made. {standing}"
        )
        self.option = option
        self.strikes = strikes
        self.banned_until = banned_until


class RenderHung(Exception):
    """A job made no progress for its budget. Its attempt is recorded (``status``: where the
    job went); the pipeline thread cannot be stopped, so the process must exit (non-zero) and
    its supervisor start it again."""

    def __init__(self, job_id: int, seconds: float, status: object) -> None:
        super().__init__(f"job {job_id} made no progress for {seconds:.0f} s")
        self.job_id = job_id
        self.seconds = seconds
        self.status = status
