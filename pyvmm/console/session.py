"""The guest's console for one run, as ``pyvmm run`` and ``pyvmm.Machine``
wire it: the output fan-out and its sinks, the input readers, the terminal.

Built in two steps, because bad input must be refused before any console
file or socket exists: :meth:`ConsoleSession.port` is what the machine is
built with (the UART writes to it), and only once the build succeeded are
sinks and inputs added. :meth:`ConsoleSession.close` undoes everything, on
every way out, within a bounded time.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pyvmm.console import backends
from pyvmm.console.input import InputPump, Uart
from pyvmm.console.output import ConsoleOutput, Sink
from pyvmm.console.terminal import RawTerminal
from pyvmm.vmm.lifecycle import Console

#: How long output may take to drain when the VM has ended.
FLUSH_SECONDS = 1.0


def warn(message: str) -> None:
    """One line on standard error."""
    with contextlib.suppress(OSError):
        print(f"pyvmm: {message}", file=sys.stderr, flush=True)


class ConsoleSession:
    """Output sinks, input pumps and terminal mode for one machine's console."""

    def __init__(self) -> None:
        self.output = ConsoleOutput()
        self._stack = contextlib.ExitStack()
        self._uart: Uart | None = None
        self.pumps: list[InputPump] = []

    def port(self) -> Console:
        """What the machine's UART writes to."""
        return Console(self.output.write, self.output.room)

    def attach(self, uart: Uart, tx_ready: Callable[[], None]) -> None:
        """The machine is built: its UART takes input, and learns when output drains."""
        self._uart = uart
        self.output.on_room = tx_ready

    # -- output ----------------------------------------------------------

    def add_stdout(self, on_closed: Callable[[], None], fd: int = 1) -> None:
        """Standard output (or ``fd``: standard error); ``on_closed`` when its
        reader goes away (``| head``)."""

        def failed(sink: Sink, error: OSError) -> None:
            self.output.remove(sink)
            on_closed()

        self.output.add(Sink(fd, "stdout" if fd == 1 else f"fd {fd}", on_error=failed))

    def add_file(self, path: Path, append: bool, protect: tuple[Path, ...] = ()) -> None:
        """A file (``--console file:``, ``--console-log``). A write that fails
        (a full disk) stops this file with one line saying why; the guest
        goes on."""
        fd = backends.open_log(path, append, protect)

        def failed(sink: Sink, error: OSError) -> None:
            self.output.remove(sink)
            warn(f"console output to {path} stopped: {error.strerror or error}")

        self.output.add(Sink(fd, path.name, owns_fd=True, on_error=failed))

    def add_unix(self, path: Path) -> None:
        """A Unix socket whose client is the console."""
        server = backends.UnixConsole(path, self.output, self._start_client_input)
        self._stack.callback(server.close)

    def add_listener(self, listener: Callable[[bytes], None]) -> None:
        """A function that sees every byte as it is printed; it must not block."""
        self.output.add_direct(listener)

    # -- input -----------------------------------------------------------

    def add_input(
        self,
        fd: int,
        escapes: bool = False,
        on_action: Callable[[str], None] = lambda action: None,
    ) -> InputPump:
        """Read ``fd`` (now owned by the session's reader) into the guest."""
        assert self._uart is not None, "attach() first"
        pump = InputPump(fd, self._uart, escapes, on_action)
        self.pumps.append(pump)
        self._stack.callback(pump.stop)
        pump.start()
        return pump

    def _start_client_input(self, fd: int, on_end: Callable[[], None]) -> InputPump:
        assert self._uart is not None
        pump = InputPump(fd, self._uart, on_end=on_end)
        pump.start()
        return pump

    def raw_terminal(self, fd: int) -> None:
        """Raw mode on the terminal ``fd`` until the session closes."""
        self._stack.enter_context(RawTerminal(fd))

    def close(self, flush_seconds: float = FLUSH_SECONDS) -> None:
        """Stop input, give the terminal back, and let output drain for at
        most ``flush_seconds``."""
        self._stack.close()
        self.output.close(flush_seconds)


def stdin_fd() -> int | None:
    """Standard input's descriptor, or None when there is none."""
    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else None
    except (OSError, ValueError):  # closed, or not backed by a descriptor
        return None
    if fd is None:
        return None
    try:
        os.fstat(fd)
    except OSError:
        return None
    return fd
