"""The boot identity map, checked by walking it like the MMU does."""

from __future__ import annotations

import struct

import pytest

from pyvmm.arch.x86_64.paging import PageFault, identity_map, translate
from pyvmm.boot import layout


def reader(tables: dict[int, bytes]):  # type: ignore[no-untyped-def]
    def read_u64(addr: int) -> int:
        page = addr & ~0xFFF
        value: int = struct.unpack_from("<Q", tables[page], addr - page)[0]
        return value

    return read_u64


def test_tables_sit_at_the_layout_addresses() -> None:
    tables = identity_map()
    assert sorted(tables) == [
        layout.PML4_ADDR,
        layout.PDPT_ADDR,
        layout.PD_ADDR,
        layout.PD_ADDR + 0x1000,
        layout.PD_ADDR + 0x2000,
        layout.PD_ADDR + 0x3000,
    ]
    assert all(len(t) == 4096 for t in tables.values())
    # The tables do not overlap the zero page, stack or command line.
    assert layout.PD_ADDR + 0x4000 <= layout.CMDLINE_ADDR
    assert layout.ZERO_PAGE_ADDR + 0x1000 <= layout.BOOT_STACK_TOP < layout.PML4_ADDR


@pytest.mark.parametrize(
    "vaddr",
    [0, 0x7000, 0x1FFFFF, 0x200000, 0x1000200, 0xBFFFFFFF, 0xFEE00000, 0xFFFFFFFF],
)
def test_first_4g_is_identity_mapped(vaddr: int) -> None:
    assert translate(reader(identity_map()), layout.PML4_ADDR, vaddr) == vaddr


@pytest.mark.parametrize("vaddr", [1 << 32, 0xFFFFFFFF81000000])
def test_nothing_else_is_mapped(vaddr: int) -> None:
    with pytest.raises(PageFault):
        translate(reader(identity_map()), layout.PML4_ADDR, vaddr)


def test_entries_are_present_writable_2m_pages() -> None:
    tables = identity_map()
    pd1 = struct.unpack("<512Q", tables[layout.PD_ADDR + 0x1000])
    assert pd1[3] == (512 + 3) * (2 << 20) | 0x83
    pml4 = struct.unpack("<512Q", tables[layout.PML4_ADDR])
    assert pml4[0] == layout.PDPT_ADDR | 0x3 and not any(pml4[1:])
