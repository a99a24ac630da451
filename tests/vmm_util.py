"""Building and running machines in-process from tests, below the Python API."""

from __future__ import annotations

from collections.abc import Callable

from pyvmm.vmm import builder
from pyvmm.vmm.config import MachineConfig
from pyvmm.vmm.ending import Outcome
from pyvmm.vmm.lifecycle import Console, Vmm


def collect(out: bytearray | None = None, room: Callable[[], int] = lambda: 1 << 30) -> Console:
    """A console that appends to ``out`` (or drops everything)."""
    return Console(out.extend if out is not None else (lambda data: None), room)


def boot(config: MachineConfig, out: bytearray | None = None) -> Vmm:
    """A built machine, not yet started."""
    return builder.build_for_boot(config, collect(out))


def run_to_end(config: MachineConfig, out: bytearray | None = None) -> Outcome:
    """Build, start and wait for the machine; release it whatever happens."""
    vmm = boot(config, out)
    try:
        vmm.start()
        outcome = vmm.wait()
        assert outcome is not None
        return outcome
    finally:
        vmm.close()
