"""Console output: from the UART to wherever the console goes, never blocking.

The UART hands each byte the guest transmits to :meth:`ConsoleOutput.write`
on a vCPU thread. That call never waits: each destination (a :class:`Sink`:
standard output, a file, a Unix socket client) has a bounded buffer and its
own writer thread. Two policies for a full buffer:

- a *flow-controlled* sink (standard output, ``--console file:``,
  ``--console-log``) makes the line slow: :meth:`ConsoleOutput.room` tells
  the UART how much is free, its transmitter reads as busy while less than
  a FIFO's worth is, and the writer calls ``on_room`` (the UART's
  ``tx_ready``) as it drains. Nothing is lost; a guest that waits for its
  transmitter, as Linux does, waits as on a slow serial line;
- a *lossy* sink (a socket client, which may stop reading at any time)
  drops what does not fit and counts it.

A writer waits for its descriptor to be writable before each write of at
most ``PIPE_BUF`` bytes, with a timeout, so it notices when it should stop;
ending the VM never waits for a writer longer than the flush deadline given
to :meth:`ConsoleOutput.close`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
import time
from collections.abc import Callable

#: Bytes a sink buffers.
CAPACITY = 64 * 1024
#: Largest single write: PIPE_BUF, which a pipe that polls writable takes whole.
CHUNK = 4096
#: How often a waiting writer looks whether it should stop.
POLL_SECONDS = 0.2
#: A writer woken by new output waits this long for more, to write it in
#: one go rather than a byte at a time (the UART delivers single bytes).
GATHER_SECONDS = 0.001


class Sink:
    """One destination with its buffer and writer thread. ``owns_fd``: close
    the descriptor when done. ``on_error`` gets the error that ended it."""

    def __init__(
        self,
        fd: int,
        name: str,
        *,
        lossy: bool = False,
        owns_fd: bool = False,
        on_error: Callable[[Sink, OSError], None] | None = None,
        capacity: int = CAPACITY,
    ) -> None:
        self.fd = fd
        self.name = name
        self.lossy = lossy
        self.owns_fd = owns_fd
        self.capacity = capacity
        self.on_error = on_error
        #: Bytes a lossy sink could not take.
        self.dropped = 0
        #: The error that ended the sink, if one did.
        self.error: OSError | None = None
        self.on_drained: Callable[[], None] = lambda: None
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._waiting = False
        self._closing = False
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._run, name=f"pyvmm-out-{name}", daemon=True)
        self._thread.start()

    def room(self) -> int:
        return self.capacity - len(self._buf)

    def put(self, data: bytes) -> None:
        with self._cond:
            if self._closing or self.error is not None:
                return
            free = self.capacity - len(self._buf)
            if len(data) > free:
                self.dropped += len(data) - max(free, 0)
                data = data[: max(free, 0)]
            self._buf += data
            if self._waiting:
                self._cond.notify()

    def close(self, flush_seconds: float) -> None:
        """Write what is buffered for at most ``flush_seconds``, then end."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + flush_seconds
            self._cond.notify()

    def join(self, timeout: float) -> bool:
        if self._thread is threading.current_thread():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _past_deadline(self) -> bool:
        return self._closing and time.monotonic() >= self._deadline

    def _run(self) -> None:
        try:
            self._write_loop()
        finally:
            if self.owns_fd:
                with contextlib.suppress(OSError):
                    os.close(self.fd)

    def _write_loop(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while True:
            with self._cond:
                while not self._buf and not self._closing:
                    self._waiting = True
                    self._cond.wait()
                    self._waiting = False
                if not self._buf or self._past_deadline():
                    return
            time.sleep(GATHER_SECONDS)
            with self._cond:
                chunk = bytes(self._buf[:CHUNK])
            events = poller.poll(POLL_SECONDS * 1000)
            if not events:
                continue
            if events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL) and not (
                events[0][1] & select.POLLOUT
            ):
                self._fail(OSError(errno.EPIPE, os.strerror(errno.EPIPE)))
                return
            try:
                n = os.write(self.fd, chunk)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                self._fail(e)
                return
            with self._cond:
                del self._buf[:n]
            self.on_drained()

    def _fail(self, error: OSError) -> None:
        with self._cond:
            self.error = error
            self._buf.clear()
        if self.on_error is not None:
            self.on_error(self, error)


class ConsoleOutput:
    """Everything the guest prints, fanned out to the sinks and to direct
    listeners (in-process functions that never block, such as the Python
    API's console text)."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self._direct: list[Callable[[bytes], None]] = []
        self._lock = threading.Lock()
        #: Called when a flow-controlled sink has drained (the UART's tx_ready).
        self.on_room: Callable[[], None] = lambda: None

    def add(self, sink: Sink) -> Sink:
        if not sink.lossy:
            sink.on_drained = self._drained
        with self._lock:
            self._sinks = [*self._sinks, sink]
        return sink

    def remove(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = [s for s in self._sinks if s is not sink]
        self._drained()  # a stuck sink no longer holds the line back

    def add_direct(self, listener: Callable[[bytes], None]) -> None:
        with self._lock:
            self._direct = [*self._direct, listener]

    def write(self, data: bytes) -> None:
        """From the UART: never blocks."""
        for listener in self._direct:
            listener(data)
        for sink in self._sinks:
            sink.put(data)

    def room(self) -> int:
        """What the flow-controlled sinks can all take now."""
        room = CAPACITY
        for sink in self._sinks:
            if not sink.lossy and sink.error is None:
                room = min(room, sink.room())
        return room

    def _drained(self) -> None:
        self.on_room()

    def close(self, flush_seconds: float = 1.0) -> None:
        """End every sink, letting each write what it holds for at most
        ``flush_seconds``; a writer still blocked after that is left behind
        (its thread is a daemon and holds nothing pyvmm needs)."""
        with self._lock:
            sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close(flush_seconds)
        deadline = time.monotonic() + flush_seconds + POLL_SECONDS
        for sink in sinks:
            sink.join(max(deadline - time.monotonic(), 0))
