"""The host side of the serial console: keyboard input, escapes, the terminal.

Input goes to the guest through the UART's receive FIFO, no faster than the
guest empties it and only once a driver has the port open (its receive
interrupt is on), so nothing is lost however much is pasted or piped in.
When standard input is a terminal it is put in raw mode (every key, Ctrl-C
included, goes to the guest) and QEMU's escapes apply: Ctrl-A x quits,
Ctrl-A h lists the escapes, Ctrl-A Ctrl-A sends a Ctrl-A. When it is a pipe
or a file, its bytes go to the guest as they are, and its end does not end
the VM.
"""

from __future__ import annotations

import os
import select
import termios
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

ESCAPE = 0x01  # Ctrl-A
HELP = (
    "\r\npyvmm console escapes (Ctrl-A, then):\r\n"
    "  x       quit pyvmm, stopping the guest\r\n"
    "  h       this help\r\n"
    "  Ctrl-A  send Ctrl-A to the guest\r\n"
)
QUIT = "quit"
SHOW_HELP = "help"
READ_CHUNK = 4096
#: How often a waiting input thread looks whether it should stop.
POLL_SECONDS = 0.2


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written (a pipe may take less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass
class EscapeFilter:
    """Splits terminal input into bytes for the guest and escape commands."""

    _after_escape: bool = field(default=False, init=False)

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        out = bytearray()
        actions: list[str] = []
        for byte in data:
            if self._after_escape:
                self._after_escape = False
                if byte == ESCAPE:
                    out.append(ESCAPE)
                elif byte in b"xX":
                    actions.append(QUIT)
                    break  # nothing typed after a quit matters
                elif byte in b"hH?":
                    actions.append(SHOW_HELP)
                # any other key after the escape is dropped, as QEMU does
            elif byte == ESCAPE:
                self._after_escape = True
            else:
                out.append(byte)
        return bytes(out), actions


class RawTerminal:
    """Raw mode on a terminal for as long as the context lasts; the saved
    settings come back on every way out, and :meth:`restore` may be called
    again from a signal handler or at exit (it only acts once)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    def __enter__(self) -> RawTerminal:
        self._saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSANOW)
        return self

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def __exit__(self, *exc: object) -> None:
        self.restore()


class Uart(Protocol):
    def listening(self) -> bool: ...

    def rx_room(self) -> int: ...

    def receive(self, data: bytes) -> int: ...


class InputPump:
    """A thread that feeds ``fd`` into ``uart`` at the rate the guest reads.

    ``space`` is set by the UART whenever the guest takes bytes from its FIFO.
    ``on_action`` receives escape commands (only when ``escapes`` is on).
    """

    def __init__(
        self,
        fd: int,
        uart: Uart,
        space: threading.Event,
        escapes: bool,
        on_action: Callable[[str], None],
    ) -> None:
        self.fd = fd
        self.uart = uart
        self.space = space
        self.filter = EscapeFilter() if escapes else None
        self.on_action = on_action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyvmm-console-in", daemon=True)
        #: True once the input reached its end (a pipe or file ran out).
        self.eof = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.space.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _read(self) -> bytes | None:
        """Some input, b"" at its end, or None when there is none yet."""
        ready, _, _ = select.select([self.fd], [], [], POLL_SECONDS)
        if not ready:
            return None
        try:
            return os.read(self.fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""  # a terminal that went away reads like the end of input

    def _run(self) -> None:
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
