"""An upstream that cannot be reached while the gateway learns what it declares
(``Upstream.learn_capabilities``, asked before every ``initialize`` answer while its
capabilities are unknown) is not asked again for ``LEARN_RETRY_SECONDS``: a down
upstream must not make every agent's session open wait for it."""

from __future__ import annotations

import socket
import threading

import anyio
import pytest

from agentiam.adapters.gateway import mcp_upstream
from agentiam.adapters.gateway.config import Timeouts
from agentiam.adapters.gateway.mcp_upstream import Upstream, UpstreamServer


class _Blackhole:
    """A real TCP listener that accepts and never answers (an upstream that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_an_unreachable_upstream_is_not_asked_again_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hole = _Blackhole()
    upstream = Upstream(
        UpstreamServer("down", f"http://127.0.0.1:{hole.port}/mcp", "down."),
        None,
        Timeouts(connect=0.2, read=0.2, total=1.0),
        60.0,
    )

    async def main() -> tuple[int, int]:
        async with anyio.create_task_group() as tg:
            upstream.attach(tg)
            await upstream.learn_capabilities(0.3)
            first = hole.accepted
            for _ in range(5):  # five more initialize answers while it is down
                await upstream.learn_capabilities(0.3)
            again = hole.accepted
            tg.cancel_scope.cancel()
        return first, again

    try:
        first, again = anyio.run(main)
        assert first >= 1  # it was asked once
        assert upstream.capabilities is None
        assert not upstream.completes
        assert again == first  # and not asked again within LEARN_RETRY_SECONDS

        # once the retry time has passed it is asked again
        monkeypatch.setattr(mcp_upstream, "LEARN_RETRY_SECONDS", 0.0)
        upstream._learn_after = 0.0

        async def later() -> None:
            async with anyio.create_task_group() as tg:
                upstream.attach(tg)
                await upstream.learn_capabilities(0.3)
                tg.cancel_scope.cancel()

        anyio.run(later)
        assert hole.accepted > again
    finally:
        hole.close()
