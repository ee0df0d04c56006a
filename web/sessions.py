"""Who is logged in: a signed cookie (itsdangerous), never a server-side store to lose.

The cookie holds the Discord user, the servers the bot serves that they are in (with their
roles and permission bits there, as last checked with the bot's token), when that was, and the
CSRF token of their forms. It is signed and timestamped: a forged, altered or expired cookie
reads as nobody (a logged-out visitor), never as an error.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import time
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "imagine_session"
LOGIN_COOKIE = "imagine_login"  # the OAuth2 state and PKCE verifier, while Discord asks
LOGIN_SECONDS = 600
MAX_SERVERS = 100  # servers kept in a session: the cookie stays within a browser's 4 KB


def cookie_name(name: str, secure: bool) -> str:
    """Behind HTTPS, the ``__Host-`` prefix: a sibling subdomain cannot set or shadow it."""
    return f"__Host-{name}" if secure else name


@dataclasses.dataclass(frozen=True, slots=True)
class Membership:
    """A member of a server the bot serves: their roles and permission bits there."""

    roles: tuple[int, ...] = ()
    permissions: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Login:
    user_id: int
    name: str
    servers: dict[int, Membership]
    checked_at: float  # time.time() of the last look at their servers and roles
    csrf: str
    issued_at: float = 0.0  # time.time() of the login: a session ends max_age after it

    def to_dict(self) -> dict[str, Any]:
        return {
            "u": str(self.user_id),
            "n": self.name,
            "s": {
                str(g): [list(map(str, m.roles)), m.permissions] for g, m in self.servers.items()
            },
            "c": self.checked_at,
            "x": self.csrf,
            "i": self.issued_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Login:
        servers = {
            int(guild): Membership(tuple(int(r) for r in roles), int(permissions))
            for guild, (roles, permissions) in data["s"].items()
        }
        return cls(
            int(data["u"]),
            str(data["n"]),
            servers,
            float(data["c"]),
            str(data["x"]),
            float(data["i"]),
        )

    def checks(self, token: str | None) -> bool:
        """Whether a form's CSRF token is this session's (in constant time)."""
        return bool(token) and hmac.compare_digest(str(token), self.csrf)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


class Signer:
    """Signs and reads the console's cookies, each kind under its own salt."""

    def __init__(self, secret: str, max_age: int) -> None:
        self._sessions = URLSafeTimedSerializer(secret, salt="imagine-web-session")
        self._logins = URLSafeTimedSerializer(secret, salt="imagine-web-login")
        self.max_age = max_age

    def session(self, login: Login) -> str:
        return self._sessions.dumps(login.to_dict())

    def read_session(self, text: str | None) -> Login | None:
        if not text:
            return None
        try:
            login = Login.from_dict(self._sessions.loads(text, max_age=self.max_age))
        except (BadSignature, KeyError, TypeError, ValueError):
            return None  # forged, altered, expired or from an older format: nobody
        # Renewed (its roles looked at again) or not, a session ends max_age after its login.
        return login if time.time() - login.issued_at <= self.max_age else None

    def login(self, state: str, verifier: str, next_path: str) -> str:
        return self._logins.dumps({"state": state, "verifier": verifier, "next": next_path})

    def read_login(self, text: str | None) -> dict[str, str] | None:
        if not text:
            return None
        try:
            data = self._logins.loads(text, max_age=LOGIN_SECONDS)
        except (BadSignature, TypeError, ValueError):
            return None
        return {key: str(data.get(key, "")) for key in ("state", "verifier", "next")}
