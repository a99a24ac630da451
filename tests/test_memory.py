"""Guest memory: bounds checks and memory that is not resident until used."""

from __future__ import annotations

import pytest

from pyvmm.arch.x86_64.layout import ram_ranges
from pyvmm.memory import GuestMemory, GuestMemoryError, Range

MiB, GiB = 1 << 20, 1 << 30


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_read_write_round_trip() -> None:
    with GuestMemory(ram_ranges(4 * MiB)) as mem:
        mem.write(0x1234, b"hello")
        assert mem.read(0x1234, 5) == b"hello"
        mem.write_u64(0x2000, 0x1122334455667788)
        assert mem.read_u64(0x2000) == 0x1122334455667788
        assert mem.read(0x2000, 1) == b"\x88"


@pytest.mark.parametrize(
    ("gpa", "size"),
    [(4 * MiB, 1), (4 * MiB - 4, 8), (-1, 4), (0, -1), (1 << 64, 1), (0xFFFFFFFFFFFFFFF8, 16)],
)
def test_accesses_outside_ram_are_refused(gpa: int, size: int) -> None:
    with GuestMemory(ram_ranges(4 * MiB)) as mem, pytest.raises(GuestMemoryError):
        mem.view(gpa, size)


def test_the_mmio_gap_is_not_ram() -> None:
    with GuestMemory(ram_ranges(4 * GiB)) as mem:
        assert [(r.start, r.size) for r in mem.ranges] == [(0, 3 * GiB), (4 * GiB, 1 * GiB)]
        mem.write(4 * GiB, b"high")
        assert mem.read(4 * GiB, 4) == b"high"
        for gpa in (3 * GiB, 0xFEE00000, 5 * GiB):
            with pytest.raises(GuestMemoryError):
                mem.read(gpa, 1)
        with pytest.raises(GuestMemoryError):  # straddles the end of low RAM
            mem.read(3 * GiB - 2, 4)


def test_16g_is_not_resident() -> None:
    before = rss()
    with GuestMemory(ram_ranges(16 * GiB)) as mem:
        mem.write(0, b"x")
        mem.write(8 * GiB, b"y")
        grown = rss() - before
    assert grown < 32 * MiB, f"RSS grew by {grown >> 20} MiB for 16 GiB of guest memory"


def test_fill() -> None:
    with GuestMemory(ram_ranges(4 * MiB)) as mem:
        mem.fill(0x1000, 3 * MiB, 0xAB)
        assert mem.read(0x1000, 4) == b"\xab" * 4
        assert mem.read(0x1000 + 3 * MiB - 1, 2) == b"\xab\x00"
        mem.fill(0x1000, 0)  # nothing to do


def test_sizes_must_be_whole_pages() -> None:
    with pytest.raises(ValueError):
        GuestMemory([Range(0, 4097)])
    with pytest.raises(ValueError):
        GuestMemory([Range(0, 0)])
    with pytest.raises(ValueError):
        GuestMemory([])


def test_close_unmaps() -> None:
    mem = GuestMemory(ram_ranges(4 * MiB))
    mem.close()
    assert mem.ranges == []
    with pytest.raises(GuestMemoryError):
        mem.read(0, 1)


def test_file_backed_memory_is_private(tmp_path: object) -> None:
    """A restored guest maps its snapshot's memory file privately: it reads
    the file's bytes, and what it writes never reaches the file."""
    import os
    from pathlib import Path

    path = Path(str(tmp_path)) / "memory"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(0x5000)
        f.write(b"from the file")
    fd = os.open(path, os.O_RDONLY)
    try:
        with GuestMemory([Range(0, 4 * MiB), Range(6 * MiB, 2 * MiB)], backing=fd) as mem:
            assert mem.read(0x5000, 13) == b"from the file"
            mem.write(0x5000, b"by the guest!")
            mem.write(6 * MiB, b"high")
            assert mem.read(0x5000, 13) == b"by the guest!"
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data[0x5000:0x500D] == b"from the file"
    assert data[6 * MiB : 6 * MiB + 4] == bytes(4)
