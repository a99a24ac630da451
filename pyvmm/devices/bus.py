"""Address-range buses for port I/O and MMIO exits.

A device claims [base, base+length) and sees offsets into its range. Accesses
nobody claims read as all-ones and writes are dropped, which is what an
empty ISA or PCI bus does.
"""

from __future__ import annotations

import bisect
from typing import Protocol

#: Most (address, size) pairs a bus remembers the answer for.
_FOUND_MAX = 4096


class Device(Protocol):
    """A device model: byte-level register reads and writes at an offset."""

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


class Bus:
    """Non-overlapping device ranges, looked up by bisection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._starts: list[int] = []
        self._entries: list[tuple[int, int, Device]] = []  # (start, end, device)
        # (addr, size) -> find()'s answer. A guest uses few distinct ports, and
        # a dict lookup is several times cheaper than the bisection.
        self._found: dict[tuple[int, int], tuple[Device, int] | None] = {}

    def insert(self, base: int, length: int, device: Device) -> None:
        if length <= 0:
            raise ValueError("a device range must not be empty")
        end = base + length
        i = bisect.bisect_left(self._starts, base)
        overlaps_previous = i > 0 and self._entries[i - 1][1] > base
        overlaps_next = i < len(self._entries) and self._entries[i][0] < end
        if overlaps_previous or overlaps_next:
            raise ValueError(f"{self.name} range {base:#x}-{end:#x} overlaps another device")
        self._starts.insert(i, base)
        self._entries.insert(i, (base, end, device))
        self._found.clear()

    def ranges(self) -> list[tuple[int, int, Device]]:
        """(start, end, device) for each claimed range, in address order."""
        return list(self._entries)

    def find(self, addr: int, size: int) -> tuple[Device, int] | None:
        """The device whose range holds all of [addr, addr+size), with the offset."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        start, end, device = self._entries[i]
        if addr + size > end:
            return None
        return device, addr - start

    def _lookup(self, addr: int, size: int) -> tuple[Device, int] | None:
        key = (addr, size)
        try:
            return self._found[key]
        except KeyError:
            hit = self.find(addr, size)
            if len(self._found) < _FOUND_MAX:  # MMIO addresses are unbounded: stop caching
                self._found[key] = hit
            return hit

    def read(self, addr: int, size: int) -> bytes:
        hit = self._lookup(addr, size)
        if hit is None:
            return b"\xff" * size
        device, offset = hit
        data = device.read(offset, size)
        if len(data) != size:  # a device model must answer exactly what was asked
            raise RuntimeError(f"{type(device).__name__} returned {len(data)} bytes, not {size}")
        return data

    def write(self, addr: int, data: bytes) -> None:
        hit = self._lookup(addr, len(data))
        if hit is not None:
            device, offset = hit
            device.write(offset, data)
