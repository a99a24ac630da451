"""Address-range buses for port I/O and MMIO exits.

A device claims [base, base+length) and sees offsets into its range. Accesses
nobody claims read as all-ones and writes are dropped, which is what an
empty ISA or PCI bus does. The bus holds the device's lock around every
access, so device models are safe when several vCPUs reach them at once.
"""

from __future__ import annotations

import bisect

from pyvmm.devices.device import DeviceModel

#: Most (address, size) pairs a bus remembers the answer for.
_FOUND_MAX = 4096


class Bus:
    """Non-overlapping device ranges, looked up by bisection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._starts: list[int] = []
        self._entries: list[tuple[int, int, DeviceModel]] = []  # (start, end, device)
        # (addr << 4 | size) -> find()'s answer. A guest uses few distinct
        # ports, and a dict lookup is several times cheaper than bisection.
        self._found: dict[int, tuple[DeviceModel, int] | None] = {}

    def insert(self, base: int, length: int, device: DeviceModel) -> None:
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

    def ranges(self) -> list[tuple[int, int, DeviceModel]]:
        """(start, end, device) for each claimed range, in address order."""
        return list(self._entries)

    def find(self, addr: int, size: int) -> tuple[DeviceModel, int] | None:
        """The device whose range holds all of [addr, addr+size), with the offset."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        start, end, device = self._entries[i]
        if addr + size > end:
            return None
        return device, addr - start

    def _miss(self, addr: int, size: int) -> tuple[DeviceModel, int] | None:
        """find(), remembered for the next access of this size at this address."""
        hit = self.find(addr, size)
        if 0 <= size < 16 and len(self._found) < _FOUND_MAX:  # MMIO is unbounded: stop caching
            self._found[addr << 4 | size] = hit
        return hit

    # read() and write() run for every port access a guest makes: the cache
    # lookup is written out in each rather than called.

    def read(self, addr: int, size: int) -> bytes:
        try:
            hit = self._found[addr << 4 | size]
        except KeyError:
            hit = self._miss(addr, size)
        if hit is None:
            return b"\xff" * size
        device, offset = hit
        with device.lock:
            data = device.read(offset, size)
        if len(data) != size:  # a device model must answer exactly what was asked
            raise RuntimeError(f"{type(device).__name__} returned {len(data)} bytes, not {size}")
        return data

    def write(self, addr: int, data: bytes) -> None:
        try:
            hit = self._found[addr << 4 | len(data)]
        except KeyError:
            hit = self._miss(addr, len(data))
        if hit is not None:
            device, offset = hit
            with device.lock:
                device.write(offset, data)

    def owner(self, addr: int, size: int) -> str:
        """The name of the device answering an access, for traces."""
        hit = self.find(addr, size)
        return hit[0].name if hit is not None else "no device model"
