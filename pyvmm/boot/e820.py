"""The BIOS E820 memory map handed to the kernel in the zero page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyvmm.arch.x86_64 import layout
from pyvmm.memory import Range

# Address range types (ACPI spec, "Address Range Types"; Linux e820 types).
E820_RAM = 1
E820_RESERVED = 2

_TYPE_NAMES = {E820_RAM: "ram", E820_RESERVED: "reserved"}


@dataclass(frozen=True)
class E820Entry(Range):
    """A guest-physical range and what it is (RAM, reserved)."""

    type: int = E820_RAM

    def __str__(self) -> str:
        kind = _TYPE_NAMES.get(self.type, f"type {self.type}")
        return f"{self.start:#018x}-{self.end - 1:#018x} {kind}"


def build_e820(ram: Sequence[Range]) -> list[E820Entry]:
    """The map for guest RAM (see :func:`pyvmm.arch.x86_64.layout.ram_ranges`), lowest range first.

    The first range must start at 0 and reach past 1 MiB. Its legacy hole is
    carved out PC-style: RAM below the EBDA, the EBDA and the system BIOS area
    reserved, the VGA/ROM window left out, RAM again from 1 MiB.
    """
    low, *high = ram
    if low.start != 0 or low.size <= layout.HIMEM_START:
        raise ValueError("guest RAM must start at 0 and extend beyond 1 MiB")
    entries = [
        E820Entry(0, layout.EBDA_START, E820_RAM),
        E820Entry(layout.EBDA_START, layout.EBDA_END - layout.EBDA_START, E820_RESERVED),
        E820Entry(layout.BIOS_START, layout.HIMEM_START - layout.BIOS_START, E820_RESERVED),
        E820Entry(layout.HIMEM_START, low.size - layout.HIMEM_START, E820_RAM),
    ]
    entries += [E820Entry(r.start, r.size, E820_RAM) for r in high]
    return entries
