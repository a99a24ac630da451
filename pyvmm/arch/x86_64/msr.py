"""Model-specific registers set before the first KVM_RUN.

Indices: Intel SDM Vol. 4, "Model-Specific Registers". The SYSCALL/SYSENTER
MSRs start at 0 and the TSC at 0; the kernel programs what it uses.
"""

from __future__ import annotations

from pyvmm.kvm import Vcpu

MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102

MISC_ENABLE_FAST_STRING = 1 << 0
#: MTRRs enabled (bit 11), default memory type write-back (6).
MTRR_ENABLE_WRITEBACK = 1 << 11 | 6


def boot_msrs() -> dict[int, int]:
    return {
        MSR_IA32_SYSENTER_CS: 0,
        MSR_IA32_SYSENTER_ESP: 0,
        MSR_IA32_SYSENTER_EIP: 0,
        MSR_STAR: 0,
        MSR_CSTAR: 0,
        MSR_KERNEL_GS_BASE: 0,
        MSR_SYSCALL_MASK: 0,
        MSR_LSTAR: 0,
        MSR_IA32_TSC: 0,
        MSR_IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
        MSR_MTRR_DEF_TYPE: MTRR_ENABLE_WRITEBACK,
    }


def setup_msrs(vcpu: Vcpu) -> None:
    msrs = boot_msrs()
    done = vcpu.set_msrs(msrs)
    if done != len(msrs):
        refused = list(msrs)[done]
        raise RuntimeError(f"KVM_SET_MSRS refused MSR {refused:#x}")
