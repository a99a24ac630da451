"""The boot identity map, checked by walking it like the MMU does."""

from __future__ import annotations

import struct

import pytest

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.paging import PageFault, identity_map, translate


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


def _tables_with_4k_page(pte_flags: int) -> dict[int, bytes]:
    """PML4 -> PDPT -> PD -> PT mapping virtual 0x400000 to physical 0x123000."""
    pml4, pdpt, pd, pt = 0x10000, 0x11000, 0x12000, 0x13000

    def table(index: int, entry: int) -> bytes:
        entries = [0] * 512
        entries[index] = entry
        return struct.pack("<512Q", *entries)

    return {
        pml4: table(0, pdpt | 0x3),
        pdpt: table(0, pd | 0x3),
        pd: table(2, pt | 0x3),
        pt: table(0, 0x123000 | pte_flags),
    }


def test_write_to_read_only_page_is_a_protection_fault() -> None:
    read = reader(_tables_with_4k_page(0x1))  # present, not writable
    assert translate(read, 0x10000, 0x400010) == 0x123010
    with pytest.raises(PageFault) as e:
        translate(read, 0x10000, 0x400010, write=True)
    assert (e.value.vaddr, e.value.error_code) == (0x400010, 0x3)  # present | write


def test_write_to_writable_page_and_unmapped_error_code() -> None:
    read = reader(_tables_with_4k_page(0x3))
    assert translate(read, 0x10000, 0x400FF8, write=True) == 0x123FF8
    with pytest.raises(PageFault) as e:
        translate(read, 0x10000, 0x401000, write=True)
    assert e.value.error_code == 0x2  # not present, write
