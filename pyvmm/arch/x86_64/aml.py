"""ACPI Machine Language: the few encodings pyvmm's DSDT uses.

A device tells the guest it exists with an ACPI ``Device`` object under
``\\_SB``: a hardware ID (``_HID``) that a driver matches, a unique ID
(``_UID``) when there are several, and the resources it decodes (``_CRS``:
I/O ports, a memory range, an interrupt). Each device model builds its own
object with these functions (see ``DeviceModel.aml``).

Encodings: ACPI Specification 6.5, chapter 20 (AML grammar) and 6.4
(resource descriptors).
"""

from __future__ import annotations

import struct

# AML opcodes and prefixes (20.2).
ZERO = 0x00
ONE = 0x01
NAME = 0x08
BYTE_PREFIX = 0x0A
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
SCOPE = 0x10
BUFFER = 0x11
PACKAGE = 0x12
EXT_PREFIX = 0x5B
DEVICE = 0x82  # after EXT_PREFIX
ROOT_PREFIX = 0x5C  # "\\"

# Resource descriptors (6.4): small I/O port (16-bit decode), the end tag;
# large 32-bit fixed memory range and extended interrupt.
RESOURCE_IO = 0x47
RESOURCE_IO_DECODE16 = 0x01
RESOURCE_END_TAG = 0x79
RESOURCE_MEMORY32_FIXED = 0x86
RESOURCE_EXTENDED_IRQ = 0x89
MEMORY_READ_WRITE = 0x01
#: Extended interrupt flags (6.4.3.6): consumer (bit 0), edge-triggered
#: (bit 1), active-low (bit 2), shared (bit 3).
IRQ_CONSUMER = 1 << 0
IRQ_EDGE = 1 << 1
IRQ_ACTIVE_LOW = 1 << 2
IRQ_SHARED = 1 << 3
#: _STA: present, enabled, shown in the UI, working.
STA_PRESENT = 0x0F


def pkg_length(length: int) -> bytes:
    """PkgLength (20.2.4) for ``length`` bytes of contents; the encoding
    counts its own bytes."""
    if length + 1 < 0x40:
        return bytes([length + 1])
    for extra in (1, 2, 3):
        total = length + 1 + extra
        if total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0xF)
            return bytes([lead]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError(f"AML package of {length} bytes is too long")


def name_seg(name: str) -> bytes:
    """A 4-character NameSeg, padded with underscores as ASL does."""
    if not 1 <= len(name) <= 4:
        raise ValueError(f"AML name {name!r} must be 1-4 characters")
    return name.ljust(4, "_").encode("ascii")


def name(label: str, value: bytes) -> bytes:
    """``Name (NAME, value)``; ``value`` is an already encoded data object."""
    return bytes([NAME]) + name_seg(label) + value


def string(text: str) -> bytes:
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def byte(value: int) -> bytes:
    return bytes([BYTE_PREFIX, value])


def integer(value: int) -> bytes:
    """The shortest encoding of a 32-bit integer constant."""
    if value in (0, 1):
        return bytes([ZERO if value == 0 else ONE])
    if value <= 0xFF:
        return byte(value)
    return bytes([DWORD_PREFIX]) + struct.pack("<I", value)


def buffer(data: bytes) -> bytes:
    contents = integer(len(data)) + data  # BufferSize, then the bytes
    return bytes([BUFFER]) + pkg_length(len(contents)) + contents


def device(label: str, body: bytes) -> bytes:
    contents = name_seg(label) + body
    return bytes([EXT_PREFIX, DEVICE]) + pkg_length(len(contents)) + contents


def scope(path: str, body: bytes) -> bytes:
    """``Scope (\\NAME) { body }`` for a name directly under the root."""
    contents = bytes([ROOT_PREFIX]) + name_seg(path.lstrip("\\")) + body
    return bytes([SCOPE]) + pkg_length(len(contents)) + contents


def io_port(port: int, length: int) -> bytes:
    """An I/O port descriptor (6.4.2.5): a fixed range of ``length`` ports."""
    return struct.pack("<BBHHBB", RESOURCE_IO, RESOURCE_IO_DECODE16, port, port, 1, length)


def memory32_fixed(base: int, size: int) -> bytes:
    """A 32-bit fixed memory range descriptor (6.4.3.4), read-write."""
    return struct.pack("<BHBII", RESOURCE_MEMORY32_FIXED, 9, MEMORY_READ_WRITE, base, size)


def extended_irq(gsi: int, flags: int) -> bytes:
    """An extended interrupt descriptor (6.4.3.6) with one interrupt number."""
    return struct.pack("<BHBBI", RESOURCE_EXTENDED_IRQ, 6, flags, 1, gsi)


def resource_template(*descriptors: bytes) -> bytes:
    """A ResourceTemplate for a _CRS: the descriptors, then the end tag
    (checksum 0: "treat as correct")."""
    return buffer(b"".join(descriptors) + bytes([RESOURCE_END_TAG, 0]))


def sleep_state(label: str, sleep_type: int) -> bytes:
    """``Name (\\_Sx, Package () { SLP_TYPa, SLP_TYPb, 0, 0 })`` (7.4.2)."""
    elements = bytes([BYTE_PREFIX, sleep_type, BYTE_PREFIX, sleep_type, ZERO, ZERO])
    contents = bytes([4]) + elements  # NumElements, then the elements
    return bytes([NAME]) + name_seg(label) + bytes([PACKAGE]) + pkg_length(len(contents)) + contents


def hardware_device(label: str, hid: str, resources: bytes, uid: int | None = None) -> bytes:
    """A device with a hardware ID, optional unique ID, its resources
    (a :func:`resource_template`) and _STA saying it is present."""
    body = name("_HID", string(hid))
    if uid is not None:
        body += name("_UID", integer(uid))
    body += name("_CRS", resources) + name("_STA", byte(STA_PRESENT))
    return device(label, body)
