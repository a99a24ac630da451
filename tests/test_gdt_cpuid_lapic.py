"""GDT descriptors, the per-vCPU CPUID table and the LAPIC LINT set-up."""

from __future__ import annotations

import struct

from pyvmm.arch.x86_64 import cpuid, gdt, lapic
from pyvmm.kvm import CpuidEntry


def test_boot_descriptors_have_the_classic_encodings() -> None:
    # The flat descriptors every x86-64 boot loader uses (SDM Vol. 3A 3.4.5).
    assert gdt.CODE64.encode() == 0x00AF9B000000FFFF
    assert gdt.DATA.encode() == 0x00CF93000000FFFF
    assert gdt.TSS.encode() == 0x00008B0000000067


def test_gdt_selectors() -> None:
    table = struct.unpack("<6Q", gdt.gdt_bytes())
    assert table[gdt.BOOT_CS // 8] == gdt.CODE64.encode()
    assert table[gdt.BOOT_DS // 8] == gdt.DATA.encode()
    assert table[gdt.BOOT_TSS // 8] == gdt.TSS.encode()
    assert table[0] == 0


def test_segment_limit_is_scaled_by_granularity() -> None:
    class Seg:
        pass

    s = Seg()
    gdt.CODE64.load(s, gdt.BOOT_CS)
    assert (s.limit, s.selector, s.l, s.db, s.present) == (0xFFFFFFFF, 0x10, 1, 0, 1)  # type: ignore[attr-defined]
    gdt.TSS.load(s, gdt.BOOT_TSS)
    assert (s.limit, s.s, s.type) == (0x67, 0, 0xB)  # type: ignore[attr-defined]


SUPPORTED = [
    CpuidEntry(0, 0, 0, 0xD, 0, 0, 0),
    CpuidEntry(1, 0, 0, 0xA10F11, 0x01020800, 0x01202000, 0x178BFBFF),
    CpuidEntry(0xB, 0, 1, 0, 0, 0, 7),
    CpuidEntry(0xB, 1, 1, 0, 0, 0, 7),
]


def test_apic_id_and_hypervisor_bit() -> None:
    entries = cpuid.vcpu_cpuid(SUPPORTED, apic_id=3, nr_vcpus=4)
    leaf1 = next(e for e in entries if e.function == 1)
    assert leaf1.ebx >> 24 == 3
    assert (leaf1.ebx >> 16) & 0xFF == 4
    assert leaf1.ebx & 0xFFFF == 0x0800  # CLFLUSH size kept
    assert leaf1.ecx & (1 << 31)
    assert leaf1.edx & (1 << 28)
    assert [e.edx for e in entries if e.function == 0xB] == [3, 3]
    # The input table is not modified.
    assert SUPPORTED[1].ebx == 0x01020800


def test_single_vcpu_has_no_htt() -> None:
    leaf1 = next(e for e in cpuid.vcpu_cpuid(SUPPORTED, 0, 1) if e.function == 1)
    assert not leaf1.edx & (1 << 28)


def test_kvm_leaves_are_added_when_missing() -> None:
    entries = cpuid.vcpu_cpuid(SUPPORTED, 0, 1)
    sig = next(e for e in entries if e.function == 0x40000000)
    assert sig.eax == 0x40000001
    assert struct.pack("<3I", sig.ebx, sig.ecx, sig.edx) == b"KVMKVMKVM\0\0\0"
    assert any(e.function == 0x40000001 for e in entries)


def test_lint0_extint_lint1_nmi() -> None:
    regs = bytearray(1024)
    struct.pack_into("<I", regs, 0x350, 0x10000)  # masked, fixed
    struct.pack_into("<I", regs, 0x360, 0x10000)
    out = lapic.virtual_wire(bytes(regs))
    assert struct.unpack_from("<I", out, 0x350)[0] == 0x10700
    assert struct.unpack_from("<I", out, 0x360)[0] == 0x10400
    assert len(out) == 1024
