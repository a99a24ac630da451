"""The terminal side of the console: raw mode and QEMU's escapes.

When standard input is a terminal it is put in raw mode (every key, Ctrl-C
included, goes to the guest) and QEMU's escapes apply: Ctrl-A x quits,
Ctrl-A h lists the escapes, Ctrl-A Ctrl-A sends a Ctrl-A. When it is a pipe
or a file, its bytes go to the guest as they are, and its end does not end
the VM.
"""

from __future__ import annotations

import os
import termios
import tty
from dataclasses import dataclass, field
from typing import Any

ESCAPE = 0x01  # Ctrl-A
HELP = (
    "\r\npyvmm console escapes (Ctrl-A, then):\r\n"
    "  x       quit pyvmm, stopping the guest\r\n"
    "  s       snapshot the guest into --snapshot DIR\r\n"
    "  h       this help\r\n"
    "  Ctrl-A  send Ctrl-A to the guest\r\n"
)
QUIT = "quit"
SHOW_HELP = "help"
SNAPSHOT = "snapshot"


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
                elif byte in b"sS":
                    actions.append(SNAPSHOT)
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
