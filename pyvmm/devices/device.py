"""The device contract: what a device model does, and what it declares.

A device model answers register reads and writes at offsets into its own
range; the bus turns a guest's port or address into that offset and holds
the device's lock around each access, so no model needs locking of its own
for several vCPUs. Host-side entry points (console input, saving state)
take the same ``lock``.

Before the guest exists, a device declares what it needs from the machine
(:class:`Resources`): fixed I/O ports, a range of the MMIO device window, an
interrupt line. The device manager (:mod:`pyvmm.vmm.device_manager`)
allocates them, tells the device where it lives (:meth:`DeviceModel.attach`),
and then asks it for its piece of the ACPI DSDT and of the kernel command
line: that is how the guest learns about it. To be saved in a snapshot,
a device gives its state as plain data (:meth:`DeviceModel.state`) and
takes it back (:meth:`DeviceModel.restore`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyvmm.memory import Range

#: Drives a device's interrupt line: True raises it, False lowers it.
IrqLine = Callable[[bool], None]

#: A device's saved state: JSON-compatible data (numbers, strings, lists,
#: dicts, and bytes as hex strings).
State = dict[str, Any]


@dataclass(frozen=True)
class Resources:
    """What a device asks the machine for."""

    #: Fixed I/O ports (base, count), as ISA devices have.
    ports: tuple[int, int] | None = None
    #: Bytes of the MMIO device window, at an address the manager picks.
    mmio_size: int = 0
    #: A fixed ISA interrupt (0-15).
    isa_irq: int | None = None
    #: An interrupt line from the range the manager hands out.
    wants_irq: bool = False


@dataclass(frozen=True)
class Allocation:
    """Where the device manager put a device."""

    ports: tuple[int, int] | None = None
    mmio: Range | None = None
    #: The GSI (I/O APIC input) of its interrupt, if it has one.
    irq: int | None = None


class DeviceModel:
    """Base of every device model. Subclasses set ``name`` and implement
    ``resources``, ``read`` and ``write``; the rest is optional."""

    #: A short name for traces and state files ("COM1", "virtio-blk").
    name = "device"

    def __init__(self) -> None:
        #: Held by the bus around every guest access, and by host-side callers.
        self.lock = threading.Lock()
        self.allocation = Allocation()
        self.irq_line: IrqLine = _no_irq

    def resources(self) -> Resources:
        raise NotImplementedError

    def attach(self, allocation: Allocation, irq_line: IrqLine | None) -> None:
        """Called once the manager has placed the device."""
        self.allocation = allocation
        if irq_line is not None:
            self.irq_line = irq_line

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def aml(self) -> bytes:
        """The device's objects for the ACPI DSDT (none by default)."""
        return b""

    def cmdline(self) -> str:
        """Words the kernel command line needs for this device (none by default)."""
        return ""

    def coalesced(self) -> tuple[tuple[int, int], ...]:
        """(offset, size) of registers whose writes KVM may batch instead of
        exiting (they are applied, in order, before the next exit is handled)."""
        return ()

    def fadt(self) -> dict[str, int]:
        """FADT fields this device provides (the PM1 blocks)."""
        return {}

    def stats(self) -> str:
        """A line of what the device did, for ``--stats`` (none by default)."""
        return ""

    def state(self) -> State:
        """The device's state, for a snapshot. Called with the vCPUs paused."""
        return {}

    def restore(self, state: State) -> None:
        """Take back what :meth:`state` gave; raises ValueError if it makes no sense."""

    def close(self) -> None:
        """Release host resources (threads, descriptors) the device holds."""


def _no_irq(level: bool) -> None:
    pass


def fields(state: State, names: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Integer fields of a saved state, each checked to lie in [low, high];
    raises ValueError naming the first one missing or out of range."""
    out = {}
    for name, (low, high) in names.items():
        value = state.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"device state field {name!r} is missing or out of range")
        out[name] = value
    return out


def hex_bytes(state: State, name: str, limit: int) -> bytes:
    """A bytes field saved as hex, at most ``limit`` bytes long."""
    value = state.get(name)
    try:
        data = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        data = None
    if data is None or len(data) > limit:
        raise ValueError(f"device state field {name!r} is missing or malformed")
    return data
