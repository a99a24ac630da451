"""``--trace virtio``: a line per request a virtio device serves, at most
:data:`LINES_PER_SECOND` a second per device (a guest formatting a disk
makes thousands); the lines left out are counted in the next one."""

from __future__ import annotations

import time
from collections.abc import Callable

LINES_PER_SECOND = 20


class Tracer:
    """Writes ``KEY: TEXT`` lines to ``out``, rate-limited."""

    def __init__(self, key: str, out: Callable[[str], None]) -> None:
        self.key = key
        self._out = out
        self._second = 0
        self._lines = 0
        self._left_out = 0

    def __call__(self, text: str) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._lines = second, 0
        if self._lines >= LINES_PER_SECOND:
            self._left_out += 1
            return
        self._lines += 1
        more = f" ({self._left_out} requests not shown before this)" if self._left_out else ""
        self._left_out = 0
        self._out(f"virtio {self.key}: {text}{more}\n")
