"""Guest RAM: anonymous host mappings registered as KVM memory slots.

Every access by guest-physical address is bounds-checked against the RAM
regions, so a guest-supplied address can never reach host memory outside
them. Mappings use MAP_NORESERVE and are never touched up front: a page of
host memory is used only once the guest (or pyvmm) writes to it.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from dataclasses import dataclass, field

from pyvmm.boot import layout
from pyvmm.kvm import Vm, ffi, lib

__all__ = ["GuestMemory", "GuestMemoryError", "RamRange", "ram_ranges"]

PAGE_SIZE = 4096


class GuestMemoryError(Exception):
    """A guest-physical range that is not entirely inside one RAM region."""


@dataclass(frozen=True)
class RamRange:
    """A contiguous range of guest-physical RAM."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


def ram_ranges(
    size: int,
    gap_start: int = layout.MMIO_GAP_START,
    gap_end: int = layout.MMIO_GAP_END,
) -> list[RamRange]:
    """Split ``size`` bytes of RAM around the 32-bit MMIO gap."""
    if size <= gap_start:
        return [RamRange(0, size)]
    return [RamRange(0, gap_start), RamRange(gap_end, size - gap_start)]


@dataclass
class _Region:
    range: RamRange
    mapping: mmap.mmap
    view: memoryview = field(repr=False)


class GuestMemory:
    """Guest RAM of ``size`` bytes (a multiple of the page size)."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"guest memory size must be a positive multiple of {PAGE_SIZE}")
        self.size = size
        self._regions: list[_Region] = []
        try:
            for r in ram_ranges(size):
                # Flags from <sys/mman.h> via the extension: Python's mmap
                # module has no MAP_NORESERVE.
                m = mmap.mmap(
                    -1,
                    r.size,
                    flags=lib.MAP_PRIVATE | lib.MAP_ANONYMOUS | lib.MAP_NORESERVE,
                    prot=lib.PROT_READ | lib.PROT_WRITE,
                )
                # A child process (a helper started with fork) must not inherit guest RAM.
                m.madvise(mmap.MADV_DONTFORK)
                self._regions.append(_Region(r, m, memoryview(m)))
        except BaseException:
            self.close()
            raise

    @property
    def ranges(self) -> list[RamRange]:
        return [r.range for r in self._regions]

    def slots(self) -> list[tuple[int, int, int, int]]:
        """(slot number, guest address, size, host address) for each region."""
        out = []
        for slot, region in enumerate(self._regions):
            with ffi.from_buffer(region.mapping) as buf:
                host_addr = int(ffi.cast("uintptr_t", buf))
            out.append((slot, region.range.start, region.range.size, host_addr))
        return out

    def register(self, vm: Vm) -> None:
        """Register each region as a KVM memory slot, numbered from 0."""
        for slot, gpa, size, host_addr in self.slots():
            vm.set_user_memory_region(slot, gpa, size, host_addr)

    def view(self, gpa: int, size: int) -> memoryview:
        """A writable view of guest RAM [gpa, gpa+size); raises if not all RAM."""
        if size < 0 or gpa < 0:
            raise GuestMemoryError(f"bad guest range {gpa:#x}+{size:#x}")
        for region in self._regions:
            r = region.range
            if r.start <= gpa and gpa + size <= r.end:
                off = gpa - r.start
                return region.view[off : off + size]
        raise GuestMemoryError(f"guest range {gpa:#x}-{gpa + size:#x} is not in RAM")

    def contains(self, gpa: int, size: int = 1) -> bool:
        return any(r.start <= gpa and gpa + size <= r.end for r in self.ranges)

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view(gpa, size))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        """Set [gpa, gpa+size) to ``byte`` (zeroing BSS, clearing a table)."""
        view = self.view(gpa, size)
        if size == 0:
            return
        chunk = bytes([byte]) * min(size, 1 << 20)
        for off in range(0, size, len(chunk)):
            n = min(len(chunk), size - off)
            view[off : off + n] = chunk[:n]

    def read_u64(self, gpa: int) -> int:
        value: int = struct.unpack("<Q", self.view(gpa, 8))[0]
        return value

    def write_u64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.view(gpa, 8), 0, value)

    def close(self) -> None:
        """Unmap all regions. KVM must no longer use them (close the VM first)."""
        for region in self._regions:
            region.view.release()
            # If a view into it is still alive somewhere, the mapping is
            # unmapped when the last one goes away.
            with contextlib.suppress(BufferError):
                region.mapping.close()
        self._regions.clear()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
