"""Identity-mapped page tables for the boot, and a walker for 4-level tables.

Entry bits: Intel SDM Vol. 3A, 4.5 "4-Level Paging". The boot map covers the
first 4 GiB with 2 MiB pages: one PML4 entry, four PDPT entries, four page
directories of 512 entries each.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pyvmm.arch.x86_64 import layout

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_PAGE_SIZE = 1 << 7  # in a PDPT or PD entry: maps a 1 GiB or 2 MiB page
ADDR_MASK = 0x000F_FFFF_FFFF_F000  # physical address bits 51:12 of an entry

ENTRIES = 512
PAGE_2M = 2 << 20
#: Bytes identity-mapped by the boot tables.
IDENTITY_MAPPED = 4 << 30
_PDS = IDENTITY_MAPPED // (ENTRIES * PAGE_2M)


def identity_map() -> dict[int, bytes]:
    """Page-table pages by guest-physical address: PML4, PDPT, then the PDs."""
    flags = PTE_PRESENT | PTE_WRITABLE
    pml4 = [layout.PDPT_ADDR | flags] + [0] * (ENTRIES - 1)
    pdpt = [layout.PD_ADDR + i * 4096 | flags for i in range(_PDS)]
    pdpt += [0] * (ENTRIES - _PDS)
    tables = {
        layout.PML4_ADDR: struct.pack(f"<{ENTRIES}Q", *pml4),
        layout.PDPT_ADDR: struct.pack(f"<{ENTRIES}Q", *pdpt),
    }
    for i in range(_PDS):
        pd = [(i * ENTRIES + j) * PAGE_2M | flags | PTE_PAGE_SIZE for j in range(ENTRIES)]
        tables[layout.PD_ADDR + i * 4096] = struct.pack(f"<{ENTRIES}Q", *pd)
    return tables


#: #PF error-code bits (SDM Vol. 3A, 4.7 "Page-Fault Exceptions").
PF_PRESENT = 1 << 0  # the page was present: a protection fault
PF_WRITE = 1 << 1  # the access was a write


class PageFault(Exception):
    """An access the tables do not allow: the address is unmapped, or it is a
    write to a read-only page. ``error_code`` is what the CPU would report."""

    def __init__(self, message: str, vaddr: int = 0, error_code: int = 0) -> None:
        super().__init__(message)
        self.vaddr = vaddr
        self.error_code = error_code


def translate(read_u64: Callable[[int], int], cr3: int, vaddr: int, write: bool = False) -> int:
    """Walk 4-level tables rooted at ``cr3`` and return vaddr's physical address.

    ``read_u64`` reads guest-physical memory (and raises if outside RAM). With
    ``write``, every level must allow writing, as it must for a supervisor
    write with CR0.WP set (Linux always sets it): a copy-on-write page then
    faults rather than being changed under the processes that share it.
    """
    table = cr3 & ADDR_MASK
    fault = PF_WRITE if write else 0
    # Levels: PML4 (bits 47:39), PDPT (38:30), PD (29:21), PT (20:12).
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = read_u64(table + ((vaddr >> shift) & 0x1FF) * 8)
        if not entry & PTE_PRESENT:
            raise PageFault(f"{vaddr:#x} is not mapped", vaddr, fault)
        if write and not entry & PTE_WRITABLE:
            raise PageFault(f"{vaddr:#x} is read-only", vaddr, fault | PF_PRESENT)
        if level in (1, 2) and entry & PTE_PAGE_SIZE:
            page_mask = (1 << shift) - 1
            return (entry & ADDR_MASK & ~page_mask) | (vaddr & page_mask)
        table = entry & ADDR_MASK
    return table | (vaddr & 0xFFF)
