"""How a VM ends, and pyvmm's exit status for each way (README's table)."""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass


class Ending(enum.Enum):
    """Each way a VM can end: a summary and pyvmm's exit status."""

    RESET = ("guest reset", 0)
    POWEROFF = ("guest powered off", 0)
    VMM_ERROR = ("pyvmm failed", 1)
    HALTED = ("guest halted with interrupts disabled", 3)
    TRIPLE_FAULT = ("triple fault", 4)
    EMULATION_FAILURE = ("KVM could not emulate an instruction", 5)
    INTERNAL_ERROR = ("KVM internal error", 6)
    PANIC = ("guest kernel panicked", 7)
    #: The guest moved to another pyvmm process (live migration).
    MIGRATED = ("guest migrated", 8)
    #: An incoming migration failed before the guest ran here (the source's
    #: guest runs on there).
    INCOMING_FAILED = ("incoming migration failed", 9)
    #: Ctrl-A x on the console.
    QUIT = ("quit from the console", 0)
    #: ``pyvmm run --snapshot-then exit``: saved, then stopped.
    SNAPSHOT_EXIT = ("snapshot saved, guest stopped", 0)
    #: ``pyvmm run --timeout``: the command ran out of time (as timeout(1)).
    TIMEOUT = ("timed out", 124)
    #: Signals: the usual 128 + signal number; a console whose reader went
    #: away ends the VM as a hang-up would.
    HANGUP = ("hung up (SIGHUP)", 128 + signal.SIGHUP)
    INTERRUPTED = ("interrupted", 128 + signal.SIGINT)
    TERMINATED = ("terminated (SIGTERM)", 128 + signal.SIGTERM)

    @property
    def status(self) -> int:
        return self.value[1]

    @property
    def summary(self) -> str:
        return self.value[0]


@dataclass(frozen=True)
class Outcome:
    """How a VM ended, in words."""

    ending: Ending
    message: str
    #: Extra lines for --debug: a register dump, a traceback.
    detail: str = ""

    @property
    def status(self) -> int:
        return self.ending.status
