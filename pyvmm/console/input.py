"""Console input: bytes from a descriptor to the guest's UART.

Input goes to the guest through the UART's receive FIFO, no faster than the
guest empties it and only once a driver has the port open (its receive
interrupt is on), so nothing is lost however much is pasted or piped in.

An :class:`InputPump` owns the descriptor it reads: it closes it when it
ends, and nobody else closes it first, so a descriptor number can never be
closed, reused by something else, and then read here.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from typing import Protocol

from pyvmm.console.terminal import EscapeFilter

READ_CHUNK = 4096
#: How often a waiting input thread looks whether it should stop.
POLL_SECONDS = 0.2


class Uart(Protocol):
    rx_space: threading.Event

    def listening(self) -> bool: ...

    def rx_room(self) -> int: ...

    def receive(self, data: bytes) -> int: ...


class InputPump:
    """A thread that feeds ``fd`` (which it now owns) into ``uart`` at the
    rate the guest reads. ``on_action`` receives escape commands (only when
    ``escapes`` is on); ``on_end`` is called once the input has ended."""

    def __init__(
        self,
        fd: int,
        uart: Uart,
        escapes: bool = False,
        on_action: Callable[[str], None] = lambda action: None,
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        self.fd = fd
        self.uart = uart
        self.space = uart.rx_space
        self.filter = EscapeFilter() if escapes else None
        self.on_action = on_action
        self.on_end = on_end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyvmm-console-in", daemon=True)
        #: True once the input reached its end (a pipe or file ran out).
        self.eof = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end and wait for it (it closes its descriptor)."""
        self._stop.set()
        self.space.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _read(self) -> bytes | None:
        """Some input, b"" at its end, or None when there is none yet."""
        try:
            ready, _, _ = select.select([self.fd], [], [], POLL_SECONDS)
            if not ready:
                return None
            return os.read(self.fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""  # a terminal or client that went away reads like the end of input

    def _run(self) -> None:
        try:
            self._pump()
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.on_end()

    def _pump(self) -> None:
        pending = b""
        while not self._stop.is_set():
            if not pending:
                data = self._read()
                if data is None:
                    continue
                if not data:
                    self.eof = True
                    return
                if self.filter is not None:
                    data, actions = self.filter.feed(data)
                    for action in actions:
                        self.on_action(action)
                pending = data
                continue
            # Hold input until a driver listens: bytes sent earlier would be
            # flushed as the guest opens the port, and lost.
            room = self.uart.rx_room() if self.uart.listening() else 0
            if room <= 0:
                self.space.wait(POLL_SECONDS)
                self.space.clear()
                continue
            taken = self.uart.receive(pending[:room])
            pending = pending[taken:]
            if taken == 0:  # the UART is in loopback: the line is disconnected
                self.space.wait(POLL_SECONDS)
                self.space.clear()
