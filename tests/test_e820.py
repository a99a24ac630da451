"""The E820 map for several memory sizes, around the 32-bit MMIO gap."""

from __future__ import annotations

import itertools

import pytest

from pyvmm.arch.x86_64.layout import ram_ranges
from pyvmm.boot.e820 import build_e820
from pyvmm.memory import Range

MiB, GiB = 1 << 20, 1 << 30

LOW = [
    "0x0000000000000000-0x000000000009fbff ram",
    "0x000000000009fc00-0x000000000009ffff reserved",
    "0x00000000000e0000-0x00000000000fffff reserved",
]


def e820(size: int) -> list[str]:
    return [str(e) for e in build_e820(ram_ranges(size))]


def test_128m() -> None:
    assert e820(128 * MiB) == [*LOW, "0x0000000000100000-0x0000000007ffffff ram"]


def test_3g_fills_exactly_up_to_the_gap() -> None:
    assert ram_ranges(3 * GiB) == [Range(0, 3 * GiB)]
    assert e820(3 * GiB) == [*LOW, "0x0000000000100000-0x00000000bfffffff ram"]


def test_5g_continues_above_4g() -> None:
    assert ram_ranges(5 * GiB) == [Range(0, 3 * GiB), Range(4 * GiB, 2 * GiB)]
    assert e820(5 * GiB) == [
        *LOW,
        "0x0000000000100000-0x00000000bfffffff ram",
        "0x0000000100000000-0x000000017fffffff ram",
    ]


def test_no_entries_overlap_and_ram_adds_up() -> None:
    for size in (2 * MiB, 128 * MiB, 3 * GiB, 3 * GiB + 4096, 64 * GiB):
        entries = build_e820(ram_ranges(size))
        for a, b in itertools.pairwise(entries):
            assert a.end <= b.start
        ram = sum(e.size for e in entries if e.type == 1)
        # Only the legacy hole (0x9fc00-0x100000) is taken out of RAM.
        assert ram == size - (0x100000 - 0x9FC00)


def test_ram_must_reach_past_1mib() -> None:
    with pytest.raises(ValueError):
        build_e820([Range(0, 1 * MiB)])
