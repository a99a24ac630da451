"""ACPI tables and the sleep registers, without KVM."""

from __future__ import annotations

import itertools
import struct

import pytest

from pyvmm.arch.x86_64 import acpi, aml
from pyvmm.devices.acpi_pm import CNT_PORT, EVT_PORT, AcpiPm
from pyvmm.devices.pvpanic import PvPanic

BASE = 0xE0000


def tables(cpus: int = 2) -> acpi.Tables:
    pvpanic = PvPanic(on_panic=lambda: None).aml()
    return acpi.build(BASE, cpus, 0xFEE00000, 0xFEC00000, EVT_PORT, CNT_PORT, pvpanic)


def memory(t: acpi.Tables) -> bytearray:
    mem = bytearray(t.end - BASE)
    for addr, blob in t.blobs.items():
        mem[addr - BASE : addr - BASE + len(blob)] = blob
    return mem


def find(t: acpi.Tables, signature: bytes) -> bytes:
    """Follow RSDP -> XSDT -> tables, as a guest does."""
    mem = memory(t)
    assert mem[0:8] == b"RSD PTR "
    xsdt_addr = struct.unpack_from("<Q", mem, 24)[0]
    xsdt_len = struct.unpack_from("<I", mem, xsdt_addr - BASE + 4)[0]
    xsdt = mem[xsdt_addr - BASE : xsdt_addr - BASE + xsdt_len]
    for (addr,) in struct.iter_unpack("<Q", xsdt[36:]):
        length = struct.unpack_from("<I", mem, addr - BASE + 4)[0]
        blob = bytes(mem[addr - BASE : addr - BASE + length])
        if blob[:4] == signature:
            return blob
        if signature == b"DSDT" and blob[:4] == b"FACP":
            dsdt = struct.unpack_from("<Q", blob, 140)[0]
            dlen = struct.unpack_from("<I", mem, dsdt - BASE + 4)[0]
            return bytes(mem[dsdt - BASE : dsdt - BASE + dlen])
    raise AssertionError(f"no {signature!r} table")


def test_rsdp_checksums_and_fields() -> None:
    rsdp = bytes(memory(tables())[:36])
    assert sum(rsdp[:20]) % 256 == 0  # ACPI 1.0 checksum: first 20 bytes
    assert sum(rsdp) % 256 == 0  # extended checksum: all 36
    assert rsdp[15] == 2  # revision 2: the XSDT address is valid
    assert struct.unpack_from("<I", rsdp, 20)[0] == 36
    assert BASE % 16 == 0


@pytest.mark.parametrize("signature", [b"XSDT", b"FACP", b"APIC", b"DSDT"])
def test_every_table_has_a_valid_header(signature: bytes) -> None:
    t = tables()
    blob = next(b for b in t.blobs.values() if b[:4] == signature)
    assert struct.unpack_from("<I", blob, 4)[0] == len(blob)
    assert sum(blob) % 256 == 0
    assert blob[10:16] == acpi.OEM_ID


def test_tables_do_not_overlap() -> None:
    spans = sorted((a, a + len(b)) for a, b in tables().blobs.items())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


def test_fadt_names_pm1_blocks_facs_and_dsdt() -> None:
    t = tables()
    fadt = find(t, b"FACP")
    assert len(fadt) == 276 and fadt[8] == 6
    assert not struct.unpack_from("<I", fadt, 112)[0] & (1 << 20)  # not HW_REDUCED_ACPI
    assert struct.unpack_from("<H", fadt, 46)[0] == 9  # SCI_INT
    assert struct.unpack_from("<I", fadt, 48)[0] == 0  # no SMI_CMD: always in ACPI mode
    assert struct.unpack_from("<I", fadt, 56)[0] == EVT_PORT  # PM1a_EVT_BLK
    assert struct.unpack_from("<I", fadt, 64)[0] == CNT_PORT  # PM1a_CNT_BLK
    assert fadt[88:90] == bytes([4, 2])  # PM1_EVT_LEN, PM1_CNT_LEN
    assert struct.unpack_from("<H", fadt, 109)[0] & 0x2  # an 8042 is present
    facs_addr = struct.unpack_from("<I", fadt, 36)[0]
    facs = t.blobs[facs_addr]
    assert facs_addr % 64 == 0 and facs[:4] == b"FACS" and len(facs) == 64
    assert struct.unpack_from("<I", facs, 4)[0] == 64
    dsdt_addr = struct.unpack_from("<I", fadt, 40)[0]
    assert struct.unpack_from("<Q", fadt, 140)[0] == dsdt_addr
    assert t.blobs[dsdt_addr][:4] == b"DSDT"


def test_dsdt_holds_s5() -> None:
    dsdt = find(tables(), b"DSDT")
    # Name(_S5_, Package(4) {5, 5, 0, 0}): NameOp, name, PackageOp,
    # PkgLength 8 (itself included), NumElements 4, two BytePrefix 5, two Zero.
    assert dsdt[36:50] == bytes.fromhex("085f53355f12 08 04 0a05 0a05 00 00".replace(" ", ""))


def test_dsdt_describes_pvpanic() -> None:
    aml = find(tables(), b"DSDT")[50:]
    # Scope(\_SB_) { Device(PEVT) { Name(_HID, "QEMU0001"); Name(_CRS, ...
    assert aml[0] == 0x10 and aml[2:7] == b"\\_SB_"
    assert aml[aml[1] + 1 :] == b""  # the scope's PkgLength covers the rest
    assert aml[7:9] == b"\x5b\x82" and aml[10:14] == b"PEVT"
    assert b"\x08_HID\x0dQEMU0001\x00" in aml
    io = bytes.fromhex("4701 0505 0505 01 01 7900".replace(" ", ""))
    assert b"\x08_CRS\x11\x0d\x0a\x0a" + io in aml  # Buffer(10) { IO(...), EndTag }


def test_madt_lists_each_cpu_and_the_ioapic() -> None:
    madt = find(tables(cpus=3), b"APIC")
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)
    entries = madt[44:]
    lapics = [entries[i : i + 8] for i in range(0, 24, 8)]
    for uid, entry in enumerate(lapics):
        assert entry == struct.pack("<BBBBI", 0, 8, uid, uid, 1)
    assert entries[24:36] == struct.pack("<BBBBII", 1, 12, 0, 0, 0xFEC00000, 0)
    # Interrupt source override: ISA IRQ 9 (the SCI) on GSI 9, level, active high.
    assert entries[36:] == struct.pack("<BBBBIH", 2, 10, 0, 9, 9, 0xD)


@pytest.mark.parametrize(
    "length, encoded",
    [(6, "07"), (0x3E, "3f"), (0x3F, "4104"), (0x100, "4210"), (0xFFE, "810001")],
)
def test_aml_pkg_length(length: int, encoded: str) -> None:
    enc = aml.pkg_length(length)
    assert enc.hex() == encoded
    # Decoding per ACPI 20.2.4 gives back the contents length plus the encoding.
    lead = enc[0]
    total = lead & 63 if lead >> 6 == 0 else lead & 15 | int.from_bytes(enc[1:], "little") << 4
    assert total == length + len(enc)


def test_pm1_control_powers_off_only_for_s5() -> None:
    calls: list[str] = []
    dev = AcpiPm(on_poweroff=lambda: calls.append("off"))
    cnt = CNT_PORT - EVT_PORT
    assert dev.read(cnt, 2) == b"\x01\x00"  # SCI_EN: ACPI mode is on
    dev.write(cnt, (5 << 10).to_bytes(2, "little"))  # SLP_TYP=S5 without SLP_EN
    dev.write(cnt, ((3 << 10) | (1 << 13)).to_bytes(2, "little"))  # S3: not offered
    dev.write(0, b"\xff\xff\xff\xff")  # PM1 status and enable
    assert calls == []
    assert dev.read(0, 2) == b"\x00\x00"  # no event is ever pending
    assert dev.read(cnt, 2) == ((3 << 10) | 1).to_bytes(2, "little")  # SLP_EN reads as 0
    dev.write(cnt, ((5 << 10) | (1 << 13)).to_bytes(2, "little"))  # what Linux writes
    assert calls == ["off"]


def test_pm1_control_written_a_byte_at_a_time() -> None:
    calls: list[str] = []
    dev = AcpiPm(on_poweroff=lambda: calls.append("off"))
    cnt = CNT_PORT - EVT_PORT
    value = ((5 << 10) | (1 << 13)).to_bytes(2, "little")
    dev.write(cnt, value[:1])
    assert calls == []
    dev.write(cnt + 1, value[1:])
    assert calls == ["off"]
