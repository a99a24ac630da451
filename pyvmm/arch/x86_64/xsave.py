"""XSAVE and XRSTOR on a vCPU's extended state, in the standard form.

When a host's KVM cannot emulate XSAVE or XRSTOR in guest kernel mode, pyvmm
carries them out itself: KVM hands over the vCPU's state as a standard-form
XSAVE image (KVM_GET_XSAVE) and takes one back (KVM_SET_XSAVE), so both
instructions become copies between that image and the guest's XSAVE area.
The functions here are that copying, with no KVM and no guest memory in
sight; the caller reads and writes the area.

Layout and rules: Intel SDM Vol. 1, chapter 13 ("Managing State Using the
XSAVE Feature Set"): 13.4 (the legacy region and the header), 13.7 (XSAVE)
and 13.8.1 (XRSTOR, standard form). Compacted forms (XSAVEC, XSAVES,
XRSTORS) are not handled; pyvmm hides those features from the guest.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

#: State components (bits of XCR0, RFBM and XSTATE_BV).
X87 = 1 << 0
SSE = 1 << 1
AVX = 1 << 2

#: The legacy region (the FXSAVE layout, SDM Vol. 1 table 13-1).
LEGACY_SIZE = 512
X87_CONTROL = (0, 24)  # FCW, FSW, abridged FTW, FOP, FIP, FDP
MXCSR = (24, 28)
MXCSR_AND_MASK = (24, 32)  # MXCSR and the read-only MXCSR_MASK
X87_REGISTERS = (32, 160)  # ST0-ST7 / MM0-MM7, 16 bytes each
XMM_REGISTERS = (160, 416)  # XMM0-XMM15, 16 bytes each
MXCSR_MASK_OFFSET = 28
DEFAULT_MXCSR_MASK = 0xFFBF  # what to assume when MXCSR_MASK reads as 0 (SDM 11.6.6)

#: The XSAVE header follows the legacy region.
XSTATE_BV = 512
XCOMP_BV = 520
HEADER_END = 576
#: x87 state after initialisation: FCW 037FH, everything else zero (SDM 13.6).
X87_INIT_CONTROL = struct.pack("<HHBBHQQ", 0x037F, 0, 0, 0, 0, 0, 0)

#: CPUID leaf that describes the XSAVE components (SDM Vol. 2A, CPUID 0DH).
CPUID_XSAVE_LEAF = 0xD


class XsaveFault(Exception):
    """The instruction would raise #GP(0) on real hardware."""


class _CpuidEntry(Protocol):
    function: int
    index: int
    eax: int
    ebx: int


@dataclass(frozen=True)
class Layout:
    """Where components 2 and up live in a standard-form area: bit -> (offset, size)."""

    components: dict[int, tuple[int, int]]

    @classmethod
    def from_cpuid(cls, entries: Iterable[_CpuidEntry]) -> Layout:
        """From CPUID leaf 0DH, sub-leaf i >= 2: EAX is the size, EBX the offset."""
        components = {
            e.index: (e.ebx, e.eax)
            for e in entries
            if e.function == CPUID_XSAVE_LEAF and 2 <= e.index < 63 and e.eax
        }
        return cls(components)

    def size(self, rfbm: int) -> int:
        """Bytes of the area that XSAVE or XRSTOR touch for ``rfbm``."""
        end = HEADER_END
        for bit, (offset, size) in self.components.items():
            if rfbm >> bit & 1:
                end = max(end, offset + size)
        return end

    def check(self, rfbm: int) -> None:
        unknown = rfbm & ~(X87 | SSE | sum(1 << bit for bit in self.components))
        if unknown:
            raise XsaveFault(f"state components {unknown:#x} are not described by CPUID")


def _bv(image: bytes | bytearray) -> int:
    value: int = struct.unpack_from("<Q", image, XSTATE_BV)[0]
    return value


def _copy(dst: bytearray, src: bytes | bytearray, span: tuple[int, int]) -> None:
    dst[span[0] : span[1]] = src[span[0] : span[1]]


def store(state: bytes, rfbm: int, area: bytes, layout: Layout) -> bytes:
    """The area after XSAVE writes the components in ``rfbm`` of ``state``
    (the vCPU's standard-form image) over ``area`` (what memory held)."""
    layout.check(rfbm)
    out = bytearray(area)
    if rfbm & X87:
        _copy(out, state, X87_CONTROL)
        _copy(out, state, X87_REGISTERS)
    if rfbm & (SSE | AVX):
        _copy(out, state, MXCSR_AND_MASK)
    if rfbm & SSE:
        _copy(out, state, XMM_REGISTERS)
    for bit, (offset, size) in layout.components.items():
        if rfbm >> bit & 1:
            _copy(out, state, (offset, offset + size))
    # Only XSTATE_BV of the header is written, and only its RFBM bits (SDM 13.7).
    struct.pack_into("<Q", out, XSTATE_BV, (_bv(area) & ~rfbm) | (_bv(state) & rfbm))
    return bytes(out)


def load(state: bytes, rfbm: int, area: bytes, xcr0: int, layout: Layout) -> bytes:
    """The vCPU's image after XRSTOR of the components in ``rfbm`` from ``area``:
    each is loaded when the area's XSTATE_BV says it holds state, else set to
    its initial value (SDM 13.8.1). Raises XsaveFault where XRSTOR raises #GP."""
    layout.check(rfbm)
    mem_bv = _bv(area)
    xcomp_bv, reserved = struct.unpack_from("<QQ", area, XCOMP_BV)
    if xcomp_bv >> 63:
        raise XsaveFault("compacted XSAVE area")
    if xcomp_bv or reserved:
        raise XsaveFault("reserved bytes of the XSAVE header are not zero")
    if mem_bv & ~xcr0:
        raise XsaveFault(f"XSTATE_BV {mem_bv:#x} has components not enabled in XCR0 {xcr0:#x}")
    out = bytearray(state)
    if rfbm & (SSE | AVX):
        mxcsr: int = struct.unpack_from("<I", area, MXCSR[0])[0]
        mask = struct.unpack_from("<I", state, MXCSR_MASK_OFFSET)[0] or DEFAULT_MXCSR_MASK
        if mxcsr & ~mask:
            raise XsaveFault(f"MXCSR {mxcsr:#x} sets reserved bits")
        _copy(out, area, MXCSR)
    if rfbm & X87:
        if mem_bv & X87:
            _copy(out, area, X87_CONTROL)
            _copy(out, area, X87_REGISTERS)
        else:
            out[X87_CONTROL[0] : X87_CONTROL[1]] = X87_INIT_CONTROL
            out[X87_REGISTERS[0] : X87_REGISTERS[1]] = bytes(X87_REGISTERS[1] - X87_REGISTERS[0])
    if rfbm & SSE:
        if mem_bv & SSE:
            _copy(out, area, XMM_REGISTERS)
        else:
            out[XMM_REGISTERS[0] : XMM_REGISTERS[1]] = bytes(XMM_REGISTERS[1] - XMM_REGISTERS[0])
    for bit, (offset, size) in layout.components.items():
        if rfbm >> bit & 1:
            if mem_bv >> bit & 1:
                _copy(out, area, (offset, offset + size))
            else:
                out[offset : offset + size] = bytes(size)
    struct.pack_into("<Q", out, XSTATE_BV, (_bv(state) & ~rfbm) | (mem_bv & rfbm))
    return bytes(out)
