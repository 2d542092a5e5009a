"""One send per answer: the listener's writes within one turn of the event loop are
joined into a single write on the socket.

uvicorn writes an answer's head (on ``http.response.start``) and each piece of its body
(on ``http.response.body``) to the transport at once, so a small answer costs the
gateway two or three ``send`` system calls where one would do. On the loopback and on
a busy host each of them is paid in full: the kernel runs the receiver's side of TCP in
the sender's call. :class:`CoalescingTransport` stands between uvicorn's protocol and
the real transport (:class:`~agentiam.adapters.gateway.http_proxy.ListenerProtocol`
installs it) and holds what is written until the end of the current turn of the event
loop (``loop.call_soon``), or until :data:`FLUSH_BYTES` are held, whichever comes
first; then it writes them as one.

What it keeps:

* **Order.** Every write of the connection, uvicorn's and the listener's own refusals
  alike, goes through it, so bytes reach the socket in the order they were written.
* **Bounds.** At most :data:`FLUSH_BYTES` plus one write are held; flow control is the
  real transport's, whose buffer sees the bytes within the same turn (uvicorn's
  ``pause_writing`` / ``drain`` work unchanged).
* **Closing.** :meth:`close` writes what is held first, then closes; :meth:`abort`
  drops it, as the real transport's ``abort`` drops its own buffer.
* **Timing.** Nothing waits for more data: what is held goes out when the code that
  wrote it yields to the loop, so a streamed answer (server-sent events) is not
  delayed beyond the turn that produced each piece.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["FLUSH_BYTES", "CoalescingTransport"]

# bytes held before they are written without waiting for the end of the turn
FLUSH_BYTES = 64 * 1024


class CoalescingTransport:
    """A write-coalescing stand-in for an ``asyncio.Transport`` (see the module's
    docstring). Only what uvicorn's HTTP protocol and its flow control use is
    provided; everything else is the real transport's."""

    __slots__ = ("_held", "_held_bytes", "_loop", "_scheduled", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what is held, as one write (nothing once the transport is closing:
        the connection is gone or being torn down)."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        self._held = []
        self._held_bytes = 0
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._held = []
        self._held_bytes = 0
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._held_bytes + self.transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        """Anything else (``set_protocol``, ``can_write_eof``, ...) is the real
        transport's; held bytes are written first, so nothing it does overtakes them."""
        self.flush()
        return getattr(self.transport, name)
