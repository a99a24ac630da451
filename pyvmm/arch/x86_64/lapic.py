"""Local APIC set-up: LINT0 delivers the PIC's interrupts, LINT1 NMIs.

Register offsets and delivery modes: Intel SDM Vol. 3A, 11.5.1 "Local
Vector Table" (the virtual-wire mode a PC BIOS leaves behind).
"""

from __future__ import annotations

import struct

APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
DELIVERY_MODE_MASK = 0x7 << 8
DELIVERY_NMI = 0x4 << 8
DELIVERY_EXTINT = 0x7 << 8


def _set_delivery(regs: bytearray, offset: int, mode: int) -> None:
    (value,) = struct.unpack_from("<I", regs, offset)
    struct.pack_into("<I", regs, offset, (value & ~DELIVERY_MODE_MASK) | mode)


def virtual_wire(regs: bytes) -> bytes:
    """The LAPIC register page with LINT0 = ExtINT and LINT1 = NMI."""
    out = bytearray(regs)
    _set_delivery(out, APIC_LVT_LINT0, DELIVERY_EXTINT)
    _set_delivery(out, APIC_LVT_LINT1, DELIVERY_NMI)
    return bytes(out)
