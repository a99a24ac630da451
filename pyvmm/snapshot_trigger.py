"""Snapshots on demand for ``pyvmm run``: ``--snapshot DIR`` is written when
the user presses Ctrl-A s, when pyvmm gets SIGUSR1, or when the console
first matches ``--snapshot-after REGEX``; with ``--snapshot-then exit``
the guest is stopped once it is saved.

A trigger may come from a vCPU thread (the console), an input thread or a
signal handler, none of which may wait for the vCPUs to pause: each only
sets an event, and a thread of its own takes the snapshot.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyvmm.console.text import ConsoleText
from pyvmm.snapshot.format import SnapshotError
from pyvmm.snapshot.take import take
from pyvmm.vmm.ending import Ending, Outcome
from pyvmm.vmm.lifecycle import Vmm


@dataclass(frozen=True)
class SnapshotPlan:
    path: Path
    #: Take it when the console first matches this.
    after: re.Pattern[str] | None = None
    #: Stop the guest once saved.
    then_exit: bool = False


class Snapshotter:
    """Takes ``plan``'s snapshot of ``vmm`` when asked; ``say`` reports."""

    def __init__(self, vmm: Vmm, plan: SnapshotPlan, say: Callable[[str], None]) -> None:
        self.vmm = vmm
        self.plan = plan
        self._say = say
        self._wanted = threading.Event()
        self._text = ConsoleText() if plan.after is not None else None
        self._matched = False
        self._thread = threading.Thread(target=self._run, name="pyvmm-snapshot", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self, *_: object) -> None:
        """Take the snapshot soon (also a signal handler: the arguments are ignored)."""
        self._wanted.set()

    def console(self, data: bytes) -> None:
        """Every byte the guest prints, while ``--snapshot-after`` waits."""
        if self._text is None or self._matched:
            return
        self._text.add(data)
        if b"\n" in data or b" " in data:
            assert self.plan.after is not None
            if self.plan.after.search(self._text.text()):
                self._matched = True
                self._text = None
                self._wanted.set()

    def _run(self) -> None:
        while True:
            if not self._wanted.wait(0.2):
                if self.vmm.ended:
                    return
                continue
            self._wanted.clear()
            if self.vmm.ended:
                return
            try:
                taken = take(self.vmm, self.plan.path, keep_paused=self.plan.then_exit)
            except SnapshotError as e:
                if self.plan.then_exit:
                    self.vmm.resume()
                self._say(f"pyvmm: {e}; the guest runs on\n")
                continue
            self._say(
                f"pyvmm: snapshot saved to {taken.path} ({taken.memory_written / 2**20:.1f} MiB "
                f"of memory written, guest paused {taken.paused_seconds * 1000:.0f} ms)\n"
            )
            if self.plan.then_exit:
                self.vmm.stop(Outcome(Ending.SNAPSHOT_EXIT, f"snapshot saved to {taken.path}"))
                return

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join(5)
