"""The guard's control-plane world, shared by the guard test files: a live OAuth
control plane with test_guard.py's base policy (search allowed) plus the policies a
file adds. The ``agent`` and ``guard`` fixtures on top of it are in this directory's
conftest.py."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tests.api.oauth_support import OAuthLive, oauth_live
from tests.api.test_guard import setup_policy


def put_policy(live: OAuthLive, name: str, text: str) -> None:
    with live.admin_client() as admin:
        r = admin.put(f"/v1/policies/{name}", json={"text": text})
        assert r.status_code == 200, r.text


@contextmanager
def guard_live(sqlite_url: str, policies: Mapping[str, str] | None = None) -> Iterator[OAuthLive]:
    """test_guard.py's control plane (``setup_policy``) with ``policies`` (id to Cedar
    text) put on top of it."""
    with oauth_live(sqlite_url) as server:
        setup_policy(server)
        for name, text in (policies or {}).items():
            put_policy(server, name, text)
        yield server
