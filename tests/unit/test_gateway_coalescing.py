"""The listener's write coalescing (adapters/gateway/coalescing.py): one send per
answer written in one turn of the event loop, order kept, bounded, and nothing held
past the turn that wrote it.

The first tests put :class:`CoalescingTransport` in front of a transport that records
each ``write`` it gets (the boundary under test is how many writes reach the socket);
the last ones serve a real application under uvicorn with the gateway's
:class:`ListenerProtocol` on a loopback port and read the answers with a raw socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from agentiam.adapters.gateway.coalescing import FLUSH_BYTES, CoalescingTransport
from agentiam.adapters.gateway.http_proxy import ListenerProtocol


class RecordingTransport:
    """Test double of an ``asyncio.Transport``: records each write it is given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_writes_in_one_turn_reach_the_socket_as_one_write() -> None:
    async def main() -> list[bytes]:
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        t.write(b"ok")
        t.write(b"")
        assert real.writes == []  # held until the turn ends
        await asyncio.sleep(0)
        return real.writes

    assert _run(main()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]


def test_what_is_written_after_a_yield_goes_out_at_the_end_of_that_turn() -> None:
    async def main() -> list[bytes]:
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"a")
        await asyncio.sleep(0)
        t.write(b"b")
        t.write(b"c")
        await asyncio.sleep(0)
        return real.writes

    assert _run(main()) == [b"a", b"bc"]


def test_past_the_bound_the_held_bytes_are_written_at_once() -> None:
    async def main() -> tuple[list[int], int]:
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        piece = b"x" * (FLUSH_BYTES // 4)
        for _ in range(9):
            t.write(piece)
        held_then = [len(w) for w in real.writes]
        await asyncio.sleep(0)
        return held_then, sum(len(w) for w in real.writes)

    held_then, total = _run(main())
    assert held_then == [FLUSH_BYTES, FLUSH_BYTES]  # never more than the bound held
    assert total == 9 * (FLUSH_BYTES // 4)


def test_close_writes_what_is_held_first_and_abort_drops_it() -> None:
    async def main() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed, aborted = RecordingTransport(), RecordingTransport()
        a = CoalescingTransport(closed, loop)  # type: ignore[arg-type]
        a.write(b"refused")
        a.close()
        b = CoalescingTransport(aborted, loop)  # type: ignore[arg-type]
        b.write(b"never")
        b.abort()
        await asyncio.sleep(0)  # the scheduled flush finds nothing (or a closed socket)
        return closed, aborted

    closed, aborted = _run(main())
    assert closed.writes == [b"refused"]
    assert closed.closed
    assert aborted.writes == []
    assert aborted.aborted


def test_nothing_is_written_to_a_transport_already_closing() -> None:
    async def main() -> list[bytes]:
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"late")
        real.closed = True  # the peer went away meanwhile
        await asyncio.sleep(0)
        return real.writes

    assert _run(main()) == []


# -- under uvicorn, with the gateway's listener -----------------------------------------


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/small``: an answer in one turn. ``/stream``: a first piece, then a pause, then
    the rest (server-sent events)."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/small":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"hello"})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
    await asyncio.sleep(3.0)
    await send({"type": "http.response.body", "body": b"data: last\n\n", "more_body": False})


@contextlib.asynccontextmanager
async def _served() -> AsyncIterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=ListenerProtocol, lifespan="off",
        log_level="warning", access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def _read_until(reader: asyncio.StreamReader, marker: bytes, seconds: float) -> bytes:
    data = b""
    async with asyncio.timeout(seconds):
        while marker not in data:
            piece = await reader.read(65536)
            if not piece:
                break
            data += piece
    return data


def test_answers_on_a_kept_alive_connection_arrive_whole_and_in_order() -> None:
    async def main() -> bytes:
        async with _served() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
            data = b""
            async with asyncio.timeout(5):
                while data.count(b"hello") < 3:
                    data += await reader.read(65536)
            writer.close()
            return data

    data = _run(main())
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.endswith(b"hello")


def test_a_streamed_answers_first_piece_is_not_held_until_the_stream_ends() -> None:
    async def main() -> bytes:
        async with _served() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
            # the last piece comes 3 s after the first: held back, both would come together
            first = await _read_until(reader, b"data: first", 10.0)
            writer.close()
            return first

    first = _run(main())
    assert b"200 OK" in first
    assert b"data: first" in first
    assert b"data: last" not in first
