"""Who may do what, decided from ids and permission bits alone: every front door (the Discord
bot, the command line, the web console to come) asks here, and none decides for itself.

- **Host admins** (``IMAGINE_ADMIN_USER_IDS``, and the host at the command line) see and act on
  everything, ban on every server, and alone set fair-share weights and quotas (host-wide).
- **Server moderators** (a role in ``IMAGINE_ADMIN_ROLE_IDS``, or Discord's Administrator
  permission, *in the server they act from*) see and act on that server's jobs, events and
  flagged images only, and ban in that server only.
- **Members** see their own jobs, and other members' jobs made in the server they are in, in
  a channel everyone there can see, except deleted ones and ones with an image held for
  review.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

from storage.models import JobStatus, Review
from storage.records import ImageRecord, JobRecord

ADMINISTRATOR = 1 << 3  # Discord's permission bit
HIDDEN_REVIEWS = frozenset({Review.PENDING, Review.DELETED})


@dataclasses.dataclass(frozen=True, slots=True)
class Actor:
    """Someone acting, and from where: ``guild_id`` None is a DM or the command line."""

    user_id: int | None
    guild_id: int | None = None
    host: bool = False  # a host admin
    moderator: bool = False  # a moderator of guild_id

    def moderates(self, guild_id: int | None) -> bool:
        """Whether they moderate that server's records (a job made outside any server: host
        admins only)."""
        if self.host:
            return True
        return self.moderator and guild_id is not None and guild_id == self.guild_id

    @property
    def may_moderate(self) -> bool:
        """Whether they may use the moderators' tools at all (from where they are)."""
        return self.host or self.moderator

    @property
    def scope(self) -> int | None:
        """The only server whose records they may list; None: every server (host admins).
        Someone who moderates nowhere lists server 0, which holds nothing."""
        if self.host:
            return None
        return self.guild_id if self.moderator and self.guild_id is not None else 0


# The host, at the command line.
HOST = Actor(user_id=None, host=True)


@dataclasses.dataclass(frozen=True, slots=True)
class Access:
    """Turns who someone is (ids and permission bits, as Discord or a login gives them) into an
    ``Actor``."""

    host_admin_ids: frozenset[int] = frozenset()
    moderator_role_ids: frozenset[int] = frozenset()

    @classmethod
    def of(cls, admin_user_ids: Iterable[int], admin_role_ids: Iterable[int]) -> Access:
        return cls(frozenset(admin_user_ids), frozenset(admin_role_ids))

    def actor(
        self,
        user_id: int,
        guild_id: int | None,
        role_ids: Collection[int] = (),
        permissions: int = 0,
    ) -> Actor:
        """``role_ids`` and ``permissions`` are the member's in ``guild_id`` (a role id belongs
        to one server, so a moderator role elsewhere never counts here)."""
        moderator = guild_id is not None and (
            bool(self.moderator_role_ids.intersection(role_ids))
            or bool(permissions & ADMINISTRATOR)
        )
        return Actor(user_id, guild_id, host=user_id in self.host_admin_ids, moderator=moderator)


def hidden(job: JobRecord, images: Iterable[ImageRecord] = ()) -> bool:
    """Deleted, or holding an image the safety check flagged that is not approved: for its
    server's moderators only (and its owner, who may see a flagged recipe of their own)."""
    return job.status == JobStatus.DELETED or any(i.review in HIDDEN_REVIEWS for i in images)


def may_see_job(actor: Actor, job: JobRecord, images: Iterable[ImageRecord] = ()) -> bool:
    """/job: the owner; the moderators of its server; members of the server it was made in,
    when it was made in a channel @everyone can see (not a private channel or thread, nor a
    job whose channel is not known), unless it is hidden or private."""
    if actor.user_id == job.user_id or actor.moderates(job.guild_id):
        return True
    return job.channel_public is True and may_use_result(actor, job, images)


def may_use_result(actor: Actor, job: JobRecord, images: Iterable[ImageRecord] = ()) -> bool:
    """A button or reaction on a result's message: whoever can see the message (a member of
    the server it is in; the channel's own permissions decided that) unless the job is
    hidden or private; its owner and its server's moderators always."""
    if actor.user_id == job.user_id or actor.moderates(job.guild_id):
        return True
    return (
        job.guild_id is not None
        and job.guild_id == actor.guild_id
        and not job.private
        and not hidden(job, images)
    )


def may_show_job(actor: Actor, job: JobRecord, images: Iterable[ImageRecord] = ()) -> bool:
    """/show: post a finished job's result again, in the server it was made in (a job made
    in a DM: there): its owner, or any member of that server for a job made in a channel
    @everyone can see, unless it is private. Never a deleted job, nor one holding a flagged
    image not approved."""
    if job.status != JobStatus.SUCCEEDED or hidden(job, images) or job.guild_id != actor.guild_id:
        return False
    if actor.user_id == job.user_id:
        return True
    return job.guild_id is not None and job.channel_public is True and not job.private


def may_act_on_job(actor: Actor, job: JobRecord) -> bool:
    """Cancel it, delete it, reproduce it: its owner or its server's moderators."""
    return actor.user_id == job.user_id or actor.moderates(job.guild_id)


def may_moderate_job(actor: Actor, job: JobRecord) -> bool:
    """Its full report, its review, a moderator's delete: its server's moderators."""
    return actor.moderates(job.guild_id)


def may_edit_settings(actor: Actor, guild_id: int | None) -> bool:
    """A server's own settings: its moderators and host admins (within the host's limits)."""
    return guild_id is not None and actor.moderates(guild_id)


def may_manage_users(actor: Actor) -> bool:
    """Host-wide bans, quotas and fair-share weights: host admins only (a server's
    moderators ban in their server)."""
    return actor.host
