"""Watching a guest's console from Python: the text so far, waiting for a
pattern, typing into it. The half of :class:`pyvmm.Machine` that deals
with its console, as a mixin over the state the machine keeps."""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time

from pyvmm.console.text import ConsoleText
from pyvmm.vmm.ending import Outcome

#: How often a waiter looks at a console line still being printed.
RECHECK_SECONDS = 0.05
#: How many console lines a timeout error shows.
TAIL_LINES = 20
DEFAULT_TIMEOUT = 600.0


class GuestTimeout(TimeoutError):
    """A wait on the guest ran out of time; the message ends with its console."""


class GuestExited(RuntimeError):
    """The guest ended while something was still waiting on it."""


class ConsoleWaits:
    """Console text, waits and input for a machine; it sets ``_output``,
    ``_lock``, ``_result`` and ``_input_w``."""

    _output: ConsoleText
    _lock: threading.Condition
    _result: Outcome | None
    _input_w: int

    @property
    def exit_status(self) -> int | None:
        """pyvmm's exit status for how the guest ended (see README), or None
        while it runs."""
        with self._lock:
            return self._result.status if self._result is not None else None

    def _on_output(self, data: bytes) -> None:
        with self._lock:
            self._output.add(data)
            # Waiters look again at each new line, and at least every
            # RECHECK_SECONDS for a partial one (a prompt): the UART hands
            # over one byte at a time.
            if b"\n" in data:
                self._lock.notify_all()

    @property
    def console(self) -> str:
        """Everything the guest printed so far (CR LF as LF)."""
        with self._lock:
            return self._output.text()

    def _timeout_message(self, what: str) -> str:
        tail = "\n".join(self.console.splitlines()[-TAIL_LINES:])
        return f"{what}; last console lines:\n{tail}"

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = DEFAULT_TIMEOUT, start: int = 0
    ) -> re.Match[str]:
        """The first match of ``pattern`` (multiline) in the console from
        character ``start``; raises GuestTimeout, or GuestExited if the guest
        ends first. The console may end in a line still being printed: end a
        pattern with ``\\n`` rather than ``$`` to match only whole lines."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        searched = -1
        with self._lock:
            while True:
                if self._output.length != searched:
                    text = self._output.text()
                    searched = self._output.length
                    m = regex.search(text, start)
                    if m:
                        return m
                if self._result is not None:
                    raise GuestExited(
                        self._timeout_message(f"the guest ended ({self._result.message})")
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestTimeout(
                        self._timeout_message(f"no {regex.pattern!r} within {timeout} s")
                    )
                self._lock.wait(min(left, RECHECK_SECONDS))

    def send(self, text: str | bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Type ``text`` into the guest's console. Input waits in a pipe of
        64 KiB until the guest reads it; raises GuestTimeout if the guest
        has not taken it all within ``timeout``."""
        if self._input_w < 0:
            raise GuestExited("the machine is not running")
        view = memoryview(text.encode() if isinstance(text, str) else text)
        deadline = time.monotonic() + timeout
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestTimeout(
                    self._timeout_message(
                        f"the guest did not read {len(view)} bytes of input in {timeout} s"
                    )
                )
            _, writable, _ = select.select([], [self._input_w], [], min(left, RECHECK_SECONDS * 4))
            if writable:
                with contextlib.suppress(BlockingIOError):
                    view = view[os.write(self._input_w, view) :]
            elif self.exit_status is not None:
                raise GuestExited(self._timeout_message("the guest ended while input was pending"))
