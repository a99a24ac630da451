"""The pvpanic device: the guest kernel's way to say it has panicked.

A one-byte I/O port that QEMU defined and Linux's pvpanic driver uses once
ACPI describes it (hardware ID QEMU0001, see :meth:`PvPanic.aml`).
Reading it returns the events the host understands; the guest writes an
event when it happens (QEMU's docs/specs/pvpanic.rst).
"""

from __future__ import annotations

from collections.abc import Callable

from pyvmm.arch.x86_64 import aml
from pyvmm.devices.device import DeviceModel, Resources

#: The pvpanic device's ACPI hardware ID (QEMU's, which Linux's driver matches).
PVPANIC_HID = "QEMU0001"
#: The port QEMU uses for its ISA pvpanic device.
PORT = 0x505
PORT_COUNT = 1
PANICKED = 1 << 0  # the guest kernel panicked
CRASH_LOADED = 1 << 1  # the guest panicked and is starting its crash kernel
SUPPORTED = PANICKED | CRASH_LOADED


class PvPanic(DeviceModel):
    """Calls ``on_panic`` when the guest reports a panic. A crash kernel about
    to take over (CRASH_LOADED) is left to run."""

    name = "pvpanic"

    def __init__(self, on_panic: Callable[[], None]) -> None:
        super().__init__()
        self._on_panic = on_panic

    def resources(self) -> Resources:
        return Resources(ports=(PORT, PORT_COUNT))

    def aml(self) -> bytes:
        """An ACPI device with QEMU's hardware ID, which Linux's pvpanic driver matches."""
        return aml.hardware_device(
            "PEVT", PVPANIC_HID, aml.resource_template(aml.io_port(PORT, PORT_COUNT))
        )

    def read(self, offset: int, size: int) -> bytes:
        return bytes([SUPPORTED]) + bytes(size - 1)

    def write(self, offset: int, data: bytes) -> None:
        if offset == 0 and data and data[0] & PANICKED:
            self._on_panic()
