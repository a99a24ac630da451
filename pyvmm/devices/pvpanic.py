"""The pvpanic device: the guest kernel's way to say it has panicked.

A one-byte I/O port that QEMU defined and Linux's pvpanic driver uses once
ACPI describes it (hardware ID QEMU0001, see :func:`pyvmm.arch.x86_64.acpi.aml_pvpanic`).
Reading it returns the events the host understands; the guest writes an
event when it happens (QEMU's docs/specs/pvpanic.rst).
"""

from __future__ import annotations

from collections.abc import Callable

#: The port QEMU uses for its ISA pvpanic device.
PORT = 0x505
PORT_COUNT = 1
PANICKED = 1 << 0  # the guest kernel panicked
CRASH_LOADED = 1 << 1  # the guest panicked and is starting its crash kernel
SUPPORTED = PANICKED | CRASH_LOADED


class PvPanic:
    """Calls ``on_panic`` when the guest reports a panic. A crash kernel about
    to take over (CRASH_LOADED) is left to run."""

    def __init__(self, on_panic: Callable[[], None]) -> None:
        self._on_panic = on_panic

    def read(self, offset: int, size: int) -> bytes:
        return bytes([SUPPORTED]) + bytes(size - 1)

    def write(self, offset: int, data: bytes) -> None:
        if offset == 0 and data and data[0] & PANICKED:
            self._on_panic()
