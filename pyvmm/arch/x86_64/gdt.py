"""The boot GDT and the segment registers loaded from it.

Descriptor bit layout: Intel SDM Vol. 3A, 3.4.5 "Segment Descriptors"; the
selectors are the ones the Linux 64-bit boot protocol names: __BOOT_CS = 0x10,
__BOOT_DS = 0x18 (Documentation/arch/x86/boot.rst).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

BOOT_CS = 0x10
BOOT_DS = 0x18
BOOT_TSS = 0x20

# Descriptor types (S=1 code/data, S=0 system); SDM Vol. 3A tables 3-1 and 3-2.
TYPE_CODE_EXEC_READ_ACCESSED = 0xB
TYPE_DATA_READ_WRITE_ACCESSED = 0x3
TYPE_TSS64_BUSY = 0xB


@dataclass(frozen=True)
class Descriptor:
    """A flat segment: base 0, limit 4 GiB unless said otherwise."""

    type: int
    s: int = 1  # 1: code or data; 0: system (TSS, LDT)
    dpl: int = 0
    present: int = 1
    avl: int = 0
    l: int = 0  # 64-bit code  # noqa: E741
    db: int = 0  # default operation size 32-bit
    g: int = 1  # limit in 4 KiB units
    base: int = 0
    limit: int = 0xFFFFF

    def encode(self) -> int:
        """The 8-byte descriptor (for a TSS in long mode: its low half)."""
        access = self.type | self.s << 4 | self.dpl << 5 | self.present << 7
        flags = self.avl | self.l << 1 | self.db << 2 | self.g << 3
        return (
            (self.limit & 0xFFFF)
            | (self.base & 0xFFFFFF) << 16
            | access << 40
            | ((self.limit >> 16) & 0xF) << 48
            | flags << 52
            | ((self.base >> 24) & 0xFF) << 56
        )

    def load(self, seg: Any, selector: int) -> None:
        """Fill a ``struct kvm_segment`` as if ``selector`` had been loaded."""
        seg.base = self.base
        # The hidden limit is in bytes: scale by 4 KiB when G is set.
        seg.limit = (self.limit << 12 | 0xFFF) if self.g else self.limit
        seg.selector = selector
        seg.type = self.type
        seg.present = self.present
        seg.dpl = self.dpl
        seg.db = self.db
        seg.s = self.s
        seg.l = self.l
        seg.g = self.g
        seg.avl = self.avl
        seg.unusable = 0


CODE64 = Descriptor(type=TYPE_CODE_EXEC_READ_ACCESSED, l=1)
DATA = Descriptor(type=TYPE_DATA_READ_WRITE_ACCESSED, db=1)
# A minimal TSS: only needed so TR holds a usable 64-bit TSS, as VMX requires.
TSS = Descriptor(type=TYPE_TSS64_BUSY, s=0, g=0, limit=0x67)


def gdt_bytes() -> bytes:
    """Null, null, __BOOT_CS, __BOOT_DS, then the 16-byte long-mode TSS descriptor."""
    entries = [0, 0, CODE64.encode(), DATA.encode(), TSS.encode(), TSS.base >> 32]
    return struct.pack(f"<{len(entries)}Q", *entries)
