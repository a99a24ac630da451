"""XSAVE/XRSTOR on standard-form images, without KVM."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from pyvmm.arch.x86_64 import xsave
from pyvmm.arch.x86_64.xsave import AVX, SSE, X87, XSTATE_BV, Layout, XsaveFault

# An AVX-512 machine's layout (CPUID 0DH sub-leaves 2, 5, 6, 7: size, offset).
LAYOUT = Layout({2: (0x240, 0x100), 5: (0x340, 0x40), 6: (0x380, 0x200), 7: (0x580, 0x400)})
XCR0 = 0xE7
SIZE = 0x980


def image(fill: int, bv: int, mxcsr: int = 0x1F80, mask: int = 0xFFFF) -> bytes:
    """A standard-form image whose every state byte is ``fill``."""
    data = bytearray([fill]) * SIZE
    data[512:576] = bytes(64)
    struct.pack_into("<QII", data, XSTATE_BV, bv, 0, 0)
    struct.pack_into("<II", data, 24, mxcsr, mask)
    return bytes(data)


@dataclass
class Entry:
    function: int
    index: int
    eax: int
    ebx: int


def test_layout_from_cpuid() -> None:
    entries = [Entry(0xD, 0, 0xE7, 0x980), Entry(0xD, 1, 0, 0), Entry(0xD, 2, 0x100, 0x240),
               Entry(0xD, 5, 0x40, 0x340), Entry(0xD, 6, 0x200, 0x380),
               Entry(0xD, 7, 0x400, 0x580), Entry(0x7, 2, 0x100, 0x240)]  # fmt: skip
    layout = Layout.from_cpuid(entries)
    assert layout == LAYOUT
    assert layout.size(X87 | SSE) == 576
    assert layout.size(X87 | SSE | AVX) == 0x340
    assert layout.size(XCR0) == SIZE


def test_store_writes_only_requested_components() -> None:
    state = image(0xAA, bv=X87 | SSE | AVX)
    area = image(0x11, bv=0x80)
    out = xsave.store(state, X87 | SSE, area, LAYOUT)
    assert out[32:416] == state[32:416]  # ST and XMM registers
    assert out[0:24] == state[0:24]
    assert out[0x240:0x340] == area[0x240:0x340]  # AVX not requested: untouched
    assert out[416:512] == area[416:512]  # XSAVE leaves the rest of the legacy region
    # XSTATE_BV: requested bits from the state, the others as memory had them.
    assert struct.unpack_from("<Q", out, XSTATE_BV)[0] == 0x80 | X87 | SSE


def test_store_then_load_round_trips() -> None:
    state = image(0x5A, bv=XCR0)
    area = xsave.store(state, XCR0, bytes(SIZE), LAYOUT)
    out = xsave.load(image(0, bv=0), XCR0, area, XCR0, LAYOUT)
    # Every register's bytes and XSTATE_BV; not MXCSR_MASK (read-only) nor
    # bytes 416-511 of the legacy region (not state).
    for start, end in ((0, 28), (32, 416), (512, 520), (576, SIZE)):
        assert out[start:end] == state[start:end], (start, end)


def test_load_initialises_components_absent_from_xstate_bv() -> None:
    state = image(0x77, bv=XCR0)
    area = image(0x33, bv=SSE)  # only SSE holds state in memory
    out = xsave.load(state, X87 | SSE | AVX, area, XCR0, LAYOUT)
    assert out[160:416] == area[160:416]
    assert out[0:2] == b"\x7f\x03" and not any(out[2:24]) and not any(out[32:160])  # x87 init
    assert not any(out[0x240:0x340])  # AVX init
    assert out[0x340:0x380] == state[0x340:0x380]  # opmask not requested: kept
    assert struct.unpack_from("<Q", out, XSTATE_BV)[0] == XCR0 & ~(X87 | AVX)


@pytest.mark.parametrize(
    "header, why",
    [
        (struct.pack("<QQ", X87, 1 << 63), "compacted"),
        (struct.pack("<QQ", X87, 1), "reserved"),
        (struct.pack("<QQQ", X87, 0, 1), "reserved"),
        (struct.pack("<QQ", 1 << 9, 0), "XCR0"),
    ],
)
def test_load_rejects_bad_headers(header: bytes, why: str) -> None:
    area = bytearray(image(0, bv=0))
    area[512 : 512 + len(header)] = header
    with pytest.raises(XsaveFault, match=why):
        xsave.load(image(0, bv=0), X87 | SSE, bytes(area), XCR0, LAYOUT)


def test_load_rejects_reserved_mxcsr_bits() -> None:
    with pytest.raises(XsaveFault, match="MXCSR"):
        xsave.load(image(0, bv=0, mask=0xFFBF), SSE, image(0, bv=SSE, mxcsr=0x40), XCR0, LAYOUT)


def test_components_cpuid_does_not_describe_fault() -> None:
    with pytest.raises(XsaveFault):
        xsave.store(image(0, bv=0), 1 << 9, bytes(SIZE), LAYOUT)
