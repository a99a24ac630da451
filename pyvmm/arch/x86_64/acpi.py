"""ACPI tables: how the guest learns its CPUs and how to power itself off.

Debian's kernel has no MP-table parser, so its CPUs must be described with
an ACPI MADT; and Linux without ACPI has no way to power off. pyvmm builds a
small set of tables that does both: a FADT naming a PM1 event and control
register block, a DSDT with the \\_S5 (soft-off) sleep type and a pvpanic
device, a FACS, and a MADT. Linux writes SLP_TYPx and SLP_EN to PM1 control
to power off; :mod:`pyvmm.devices.acpi_pm` ends the VM when it does.

The machine is not "hardware-reduced" ACPI (Firecracker's choice): in that
mode Linux drops the 8259 PIC and the PIT, and with them the ISA interrupt
numbers the UART, the RTC and the i8042 rely on.

Layouts: ACPI Specification 6.5, chapter 5: RSDP (5.2.5.3), the common
table header (5.2.6), XSDT (5.2.8), FADT (5.2.9, table 5.9), FACS (5.2.10),
MADT (5.2.12), PM1 registers (4.8.3). The DSDT's objects are encoded by
:mod:`pyvmm.arch.x86_64.aml`; each device supplies its own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvmm.arch.x86_64 import aml

OEM_ID = b"PYVMM "  # 6 bytes
OEM_TABLE_ID = b"PYVMMTBL"  # 8 bytes
OEM_REVISION = 1
CREATOR_ID = b"PYVM"
CREATOR_REVISION = 1

HEADER_SIZE = 36  # every table but the RSDP starts with this header
RSDP_SIZE = 36  # ACPI 2.0+ RSDP, with the XSDT address
RSDP_V1_SIZE = 20  # the part covered by the first checksum
FADT_SIZE = 276  # ACPI 6.0 and later
FADT_REVISION = 6
FADT_MINOR_REVISION = 5
#: FADT Flags: no fixed-feature power or sleep button (bits 4, 5).
FADT_PWR_BUTTON = 1 << 4
FADT_SLP_BUTTON = 1 << 5
#: The SCI's ISA interrupt, as on PCs.
SCI_IRQ = 9
#: PM1 block lengths: event block (status + enable, 2 bytes each), control.
PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
FACS_SIZE = 64
FACS_VERSION = 2
#: FADT IA-PC boot architecture flags (table 5.10): an 8042 is present
#: (so Linux keeps its reset line), no VGA.
IAPC_8042 = 1 << 1
IAPC_VGA_NOT_PRESENT = 1 << 2

MADT_REVISION = 5
#: MADT flags bit 0: the machine also has dual 8259 PICs.
MADT_PCAT_COMPAT = 1 << 0
MADT_LOCAL_APIC = 0  # entry types (table 5.21)
MADT_IO_APIC = 1
MADT_INTERRUPT_OVERRIDE = 2
MADT_LOCAL_APIC_ENABLED = 1 << 0

#: \\_S5's sleep type: the value Linux writes, shifted, to SLP_TYPx.
S5_SLEEP_TYPE = 5
#: PM1 control register bits (table 4.13): SCI_EN in bit 0, SLP_TYPx in
#: bits 12:10, SLP_EN in bit 13.
PM1_SCI_EN = 1 << 0
SLEEP_TYPE_SHIFT = 10
SLEEP_TYPE_MASK = 0x7 << SLEEP_TYPE_SHIFT
SLEEP_ENABLE = 1 << 13
#: Room for the tables: up to the end of the BIOS area at 1 MiB.
MAX_SIZE = 0x20000
#: MADT interrupt source override flags (table 5.26): active high, level.
ISO_ACTIVE_HIGH_LEVEL = 0x1 | 0xC


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` sum to zero modulo 256."""
    return -sum(data) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: the common header, then ``body``."""
    if len(signature) != 4:
        raise ValueError(f"table signature {signature!r} is not 4 bytes")
    header = struct.pack(
        "<4sIBB6s8sI4sI",
        signature,
        HEADER_SIZE + len(body),
        revision,
        0,  # checksum, filled in below
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        CREATOR_ID,
        CREATOR_REVISION,
    )
    data = bytearray(header + body)
    data[9] = checksum(data)
    return bytes(data)


def rsdp(xsdt_addr: int) -> bytes:
    """Root System Description Pointer, revision 2 (points to the XSDT only)."""
    data = bytearray(
        struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, RSDP_SIZE, xsdt_addr, 0)
    )
    data[8] = checksum(data[:RSDP_V1_SIZE])
    data[32] = checksum(data)
    return bytes(data)


def xsdt(table_addrs: list[int]) -> bytes:
    return table(b"XSDT", 1, struct.pack(f"<{len(table_addrs)}Q", *table_addrs))


def fadt(dsdt_addr: int, facs_addr: int, pm1_evt_port: int, pm1_cnt_port: int) -> bytes:
    """Fixed ACPI Description Table: PM1 blocks in port I/O, no SMI command
    port (so ACPI mode is always on), no PM timer, no GPE blocks."""
    body = bytearray(FADT_SIZE - HEADER_SIZE)

    def put(offset: int, fmt: str, value: int) -> None:
        struct.pack_into(fmt, body, offset - HEADER_SIZE, value)

    put(36, "<I", facs_addr)  # FIRMWARE_CTRL
    put(40, "<I", dsdt_addr)  # DSDT (32-bit); X_DSDT below has it in full
    put(46, "<H", SCI_IRQ)  # SCI_INT
    put(56, "<I", pm1_evt_port)  # PM1a_EVT_BLK
    put(64, "<I", pm1_cnt_port)  # PM1a_CNT_BLK
    put(88, "<B", PM1_EVT_LEN)
    put(89, "<B", PM1_CNT_LEN)
    put(109, "<H", IAPC_8042 | IAPC_VGA_NOT_PRESENT)
    put(112, "<I", FADT_PWR_BUTTON | FADT_SLP_BUTTON)
    put(131, "<B", FADT_MINOR_REVISION)
    put(140, "<Q", dsdt_addr)  # X_DSDT
    return table(b"FACP", FADT_REVISION, bytes(body))


def facs() -> bytes:
    """Firmware ACPI Control Structure (5.2.10): no waking vector, no global
    lock owner; it has no checksum."""
    return struct.pack("<4sIIIIIQB31x", b"FACS", FACS_SIZE, 0, 0, 0, 0, 0, FACS_VERSION)


def dsdt(aml: bytes) -> bytes:
    # Revision 2: integers in the AML are 64 bits wide.
    return table(b"DSDT", 2, aml)


def madt(apic_ids: list[int], lapic_addr: int, ioapic_id: int, ioapic_addr: int) -> bytes:
    """Multiple APIC Description Table: one enabled local APIC per vCPU, the
    I/O APIC (inputs from GSI 0, ISA interrupts on the same-numbered inputs,
    as KVM routes them) and the SCI's trigger mode."""
    body = struct.pack("<II", lapic_addr, MADT_PCAT_COMPAT)
    for uid, apic_id in enumerate(apic_ids):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, uid, apic_id, MADT_LOCAL_APIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, ioapic_id, 0, ioapic_addr, 0)
    # The SCI is level-triggered, active high, on I/O APIC input 9.
    body += struct.pack(
        "<BBBBIH", MADT_INTERRUPT_OVERRIDE, 10, 0, SCI_IRQ, SCI_IRQ, ISO_ACTIVE_HIGH_LEVEL
    )
    return table(b"APIC", MADT_REVISION, body)


@dataclass(frozen=True)
class Tables:
    """The tables placed in guest memory: RSDP address and every blob by address."""

    rsdp_addr: int
    blobs: dict[int, bytes]

    @property
    def end(self) -> int:
        return max(addr + len(blob) for addr, blob in self.blobs.items())


def _align(addr: int, to: int = 16) -> int:
    return (addr + to - 1) & ~(to - 1)


def build(
    base: int,
    nr_cpus: int,
    lapic_addr: int,
    ioapic_addr: int,
    pm1_evt_port: int,
    pm1_cnt_port: int,
    devices: bytes = b"",
) -> Tables:
    """Every table, laid out from ``base`` (16-byte aligned, RSDP first, as
    the RSDP must be when a guest scanning 0xE0000-0xFFFFF finds it).
    ``devices``: the devices' own AML objects, placed under \\_SB."""
    if base % 16:
        raise ValueError("the RSDP must be 16-byte aligned")
    blobs: dict[int, bytes] = {}
    addr = _align(base + RSDP_SIZE)
    body = aml.sleep_state("_S5", S5_SLEEP_TYPE) + (aml.scope("_SB", devices) if devices else b"")
    dsdt_addr, dsdt_blob = addr, dsdt(body)
    blobs[dsdt_addr] = dsdt_blob
    addr = _align(addr + len(dsdt_blob), 64)  # the FACS must be 64-byte aligned
    facs_addr = addr
    blobs[facs_addr] = facs()
    addr += FACS_SIZE
    fadt_addr, fadt_blob = addr, fadt(dsdt_addr, facs_addr, pm1_evt_port, pm1_cnt_port)
    blobs[fadt_addr] = fadt_blob
    addr = _align(addr + len(fadt_blob))
    madt_addr, madt_blob = addr, madt(list(range(nr_cpus)), lapic_addr, 0, ioapic_addr)
    blobs[madt_addr] = madt_blob
    addr = _align(addr + len(madt_blob))
    blobs[addr] = xsdt([fadt_addr, madt_addr])
    blobs[base] = rsdp(addr)
    if max(a + len(b) for a, b in blobs.items()) > base + MAX_SIZE:
        raise ValueError("the ACPI tables do not fit their area")
    return Tables(base, blobs)
