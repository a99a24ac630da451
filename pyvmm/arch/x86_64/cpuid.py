"""The CPUID table each vCPU sees, derived from KVM_GET_SUPPORTED_CPUID.

Leaf and bit positions: Intel SDM Vol. 2A, "CPUID"; the KVM leaves:
Documentation/virt/kvm/x86/cpuid.rst.
"""

from __future__ import annotations

import dataclasses
import struct

from pyvmm.kvm import CpuidEntry

LEAF_FEATURES = 0x1
LEAF_EXT_TOPOLOGY = 0xB
LEAF_V2_EXT_TOPOLOGY = 0x1F
LEAF_KVM_SIGNATURE = 0x40000000
LEAF_KVM_FEATURES = 0x40000001

ECX_HYPERVISOR = 1 << 31  # leaf 1: running under a hypervisor
EDX_HTT = 1 << 28  # leaf 1: EBX[23:16] is valid (more than one logical CPU)
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"


def vcpu_cpuid(supported: list[CpuidEntry], apic_id: int, nr_vcpus: int) -> list[CpuidEntry]:
    """The supported table, with this vCPU's APIC id and the KVM leaves filled in."""
    entries = [dataclasses.replace(e) for e in supported]
    for e in entries:
        if e.function == LEAF_FEATURES:
            # EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
            e.ebx = (e.ebx & 0xFFFF) | (nr_vcpus & 0xFF) << 16 | (apic_id & 0xFF) << 24
            e.ecx |= ECX_HYPERVISOR
            if nr_vcpus > 1:
                e.edx |= EDX_HTT
            else:
                e.edx &= ~EDX_HTT
        elif e.function in (LEAF_EXT_TOPOLOGY, LEAF_V2_EXT_TOPOLOGY):
            e.edx = apic_id  # x2APIC id, reported in every sub-leaf
    functions = {e.function for e in entries}
    if LEAF_KVM_SIGNATURE not in functions:
        ebx, ecx, edx = struct.unpack("<3I", KVM_SIGNATURE)
        entries.append(CpuidEntry(LEAF_KVM_SIGNATURE, 0, 0, LEAF_KVM_FEATURES, ebx, ecx, edx))
    if LEAF_KVM_FEATURES not in functions:
        entries.append(CpuidEntry(LEAF_KVM_FEATURES, 0, 0, 0, 0, 0, 0))
    return entries
