"""The console's cookies: signed, read back as nobody when forged or too old."""

from __future__ import annotations

import time

from web.app import safe_next
from web.sessions import Login, Membership, Signer, cookie_name


def test_a_session_ends_its_lifetime_after_login_however_often_renewed() -> None:
    signer = Signer("k" * 40, max_age=3600)
    now = time.time()
    fresh = Login(1, "alice", {5: Membership((7,), 8)}, now, "t", issued_at=now)
    assert signer.read_session(signer.session(fresh)) == fresh
    renewed_long_after = Login(1, "alice", {}, now, "t", issued_at=now - 3601)
    assert signer.read_session(signer.session(renewed_long_after)) is None
    assert signer.read_session(signer.session(fresh) + "x") is None
    assert Signer("j" * 40, max_age=3600).read_session(signer.session(fresh)) is None
    assert fresh.checks("t") and not fresh.checks("u") and not fresh.checks(None)


def test_cookie_names_and_the_only_places_a_login_returns_to() -> None:
    assert cookie_name("imagine_session", secure=True) == "__Host-imagine_session"
    assert cookie_name("imagine_session", secure=False) == "imagine_session"
    assert safe_next("/jobs/5?x=1") == "/jobs/5?x=1"
    for evil in ("https://e.example", "//e.example", "/\\e.example", "javascript:x", "", None):
        assert safe_next(evil) == "/"
