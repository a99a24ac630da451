"""Guest RAM: host mappings registered as KVM memory slots.

Every access by guest-physical address is bounds-checked against the RAM
regions, so a guest-supplied address can never reach host memory outside
them. Mappings use MAP_NORESERVE and are never touched up front: a page of
host memory is used only once the guest (or pyvmm) writes to it.

RAM is anonymous memory for a fresh boot. A restored guest maps a snapshot's
memory file instead, privately: pages are read from the file only when the
guest touches them, and its writes stay its own (copy-on-write), so any
number of clones share one file through the page cache.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pyvmm.kvm import Vm, ffi, lib

__all__ = ["PAGE_SIZE", "GuestMemory", "GuestMemoryError", "Range"]

PAGE_SIZE = 4096


class GuestMemoryError(Exception):
    """A guest-physical range that is not entirely inside one RAM region."""


@dataclass(frozen=True)
class Range:
    """A contiguous range of guest-physical addresses."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def contains(self, addr: int, size: int = 1) -> bool:
        return self.start <= addr and addr + size <= self.end


@dataclass
class _Region:
    range: Range
    mapping: mmap.mmap
    view: memoryview = field(repr=False)
    host_addr: int = 0


class GuestMemory:
    """Guest RAM made of ``ranges`` (page-aligned). With ``backing`` (an open
    file at least as long as the highest range's end), each range maps the
    file at the offset equal to its guest address, privately."""

    def __init__(self, ranges: Sequence[Range], backing: int | None = None) -> None:
        if not ranges or any(r.size <= 0 or (r.start | r.size) % PAGE_SIZE for r in ranges):
            raise ValueError(f"guest RAM ranges must be non-empty multiples of {PAGE_SIZE}")
        self.size = sum(r.size for r in ranges)
        self.file_backed = backing is not None
        self._regions: list[_Region] = []
        # Pages pyvmm itself wrote, while someone (a migration) wants to know:
        # KVM's dirty log sees only the guest's own writes.
        self._written: set[int] | None = None
        try:
            for r in ranges:
                # Flags from <sys/mman.h> via the extension: Python's mmap
                # module has no MAP_NORESERVE.
                prot = lib.PROT_READ | lib.PROT_WRITE
                if backing is None:
                    flags = lib.MAP_PRIVATE | lib.MAP_ANONYMOUS | lib.MAP_NORESERVE
                    m = mmap.mmap(-1, r.size, flags=flags, prot=prot)
                else:
                    flags = lib.MAP_PRIVATE | lib.MAP_NORESERVE
                    m = mmap.mmap(backing, r.size, flags=flags, prot=prot, offset=r.start)
                # A child process (a helper started with fork) must not inherit guest RAM.
                m.madvise(mmap.MADV_DONTFORK)
                with ffi.from_buffer(m) as buf:
                    host = int(ffi.cast("uintptr_t", buf))
                self._regions.append(_Region(r, m, memoryview(m), host))
        except BaseException:
            self.close()
            raise

    @property
    def ranges(self) -> list[Range]:
        return [r.range for r in self._regions]

    def slots(self) -> list[tuple[int, int, int, int]]:
        """(slot number, guest address, size, host address) for each region."""
        return [
            (slot, region.range.start, region.range.size, region.host_addr)
            for slot, region in enumerate(self._regions)
        ]

    def register(self, vm: Vm, flags: int = 0) -> None:
        """Register each region as a KVM memory slot, numbered from 0
        (again with new ``flags``, e.g. to start or stop dirty logging)."""
        for slot, gpa, size, host_addr in self.slots():
            vm.set_user_memory_region(slot, gpa, size, host_addr, flags)

    def regions(self) -> Iterator[tuple[int, Range, memoryview]]:
        """(slot, range, writable view of all of it) for each region."""
        for slot, region in enumerate(self._regions):
            yield slot, region.range, region.view

    def track_writes(self, on: bool) -> None:
        """Start (or stop) noting which pages pyvmm writes to."""
        self._written = set() if on else None

    def mark_written(self, gpa: int, size: int) -> None:
        """Note that pyvmm wrote [gpa, gpa+size) (by a view, say)."""
        if self._written is not None and size > 0:
            self._written.update(range(gpa // PAGE_SIZE, (gpa + size - 1) // PAGE_SIZE + 1))

    def take_written(self) -> set[int]:
        """The page numbers pyvmm wrote since the last call."""
        taken, self._written = self._written or set(), set() if self._written is not None else None
        return taken

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
        return any(r.contains(gpa, size) for r in self.ranges)

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view(gpa, size))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data
        if self._written is not None:
            self.mark_written(gpa, len(data))

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        """Set [gpa, gpa+size) to ``byte`` (zeroing BSS, clearing a table)."""
        view = self.view(gpa, size)
        if size == 0:
            return
        chunk = bytes([byte]) * min(size, 1 << 20)
        for off in range(0, size, len(chunk)):
            n = min(len(chunk), size - off)
            view[off : off + n] = chunk[:n]
        self.mark_written(gpa, size)

    def read_u64(self, gpa: int) -> int:
        value: int = struct.unpack("<Q", self.view(gpa, 8))[0]
        return value

    def write_u64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.view(gpa, 8), 0, value)
        self.mark_written(gpa, 8)

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
