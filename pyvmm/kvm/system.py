"""``/dev/kvm`` itself: API version, capabilities and what the host supports."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from pyvmm.kvm.ioctl import KvmError, ffi, ioctl, ioctl_val, lib
from pyvmm.kvm.vm import Vm

__all__ = ["CpuidEntry", "Kvm"]

#: The KVM API version this code was written for; KVM has reported 12 since 2007.
API_VERSION = 12


@dataclass
class CpuidEntry:
    """One ``struct kvm_cpuid_entry2``."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class Kvm:
    """An open ``/dev/kvm``. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            version = ioctl_val(self.fd, "KVM_GET_API_VERSION")
            if version != API_VERSION or lib.KVM_API_VERSION != API_VERSION:
                raise KvmError(
                    "KVM_GET_API_VERSION",
                    errno.EPROTO,
                    f"the kernel reports API version {version}, pyvmm needs {API_VERSION}",
                )
            self.vcpu_mmap_size = ioctl_val(self.fd, "KVM_GET_VCPU_MMAP_SIZE")
        except BaseException:
            os.close(self.fd)
            raise

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific value."""
        return ioctl_val(self.fd, "KVM_CHECK_EXTENSION", cap)

    def supported_cpuid(self) -> list[CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer until KVM stops saying E2BIG."""
        nent = 128
        while True:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": nent, "entries": nent})
            try:
                ioctl(self.fd, "KVM_GET_SUPPORTED_CPUID", cpuid)
            except KvmError as e:
                if e.errno == errno.E2BIG and nent < 4096:
                    nent *= 2
                    continue
                raise
            return [
                CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                for e in cpuid.entries[0 : cpuid.nent]
            ]

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU."""
        probe = ffi.new("struct kvm_msr_list *", {"nmsrs": 0, "indices": 0})
        try:
            ioctl(self.fd, "KVM_GET_MSR_INDEX_LIST", probe)
        except KvmError as e:
            if e.errno != errno.E2BIG:
                raise
        n = probe.nmsrs
        msrs = ffi.new("struct kvm_msr_list *", {"nmsrs": n, "indices": n})
        ioctl(self.fd, "KVM_GET_MSR_INDEX_LIST", msrs)
        return list(msrs.indices[0 : msrs.nmsrs])

    def create_vm(self) -> Vm:
        """KVM_CREATE_VM with the default machine type."""
        return Vm(ioctl_val(self.fd, "KVM_CREATE_VM", 0), self.vcpu_mmap_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
