"""A KVM vCPU file descriptor and its shared ``struct kvm_run`` page."""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

from pyvmm.kvm.ioctl import KvmError, ffi, get_struct, ioctl, lib, set_struct

__all__ = ["Vcpu"]

_KVM_RUN = lib.KVM_RUN

#: Per-vCPU state saved as whole structs: name -> (ioctl suffix, C type).
STATE_STRUCTS = {
    "regs": ("REGS", "struct kvm_regs"),
    "sregs": ("SREGS", "struct kvm_sregs"),
    "fpu": ("FPU", "struct kvm_fpu"),
    "lapic": ("LAPIC", "struct kvm_lapic_state"),
    "events": ("VCPU_EVENTS", "struct kvm_vcpu_events"),
    "mp_state": ("MP_STATE", "struct kvm_mp_state"),
    "debugregs": ("DEBUGREGS", "struct kvm_debugregs"),
    "xcrs": ("XCRS", "struct kvm_xcrs"),
}


class Vcpu:
    """One vCPU. Its register ioctls must come from the thread that runs it,
    or while it is not inside :meth:`run` (KVM serialises them anyway)."""

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        self.fd = fd
        self.id = vcpu_id
        self._mapping = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        #: The mmap'd ``struct kvm_run``: exit reason and per-exit data.
        self.run_struct: Any = ffi.from_buffer("struct kvm_run *", self._mapping)
        #: The whole mapping, for data KVM places after the struct (PIO data).
        self.run_page = memoryview(self._mapping)
        #: The CPUID table given with KVM_SET_CPUID2 (KVM cannot give it back).
        self.cpuid: list[Any] = []

    @property
    def cpuid_count(self) -> int:
        return len(self.cpuid)

    # -- running ---------------------------------------------------------

    def run(self) -> int:
        """KVM_RUN; returns the exit reason. A signal or ``immediate_exit``
        that interrupts the call is reported as KVM_EXIT_INTR."""
        while True:
            ret = lib.pyvmm_ioctl(self.fd, _KVM_RUN, ffi.NULL)
            if ret != -errno.EAGAIN:  # a vCPU woken while it waits for INIT/SIPI
                break
        if ret < 0:
            if ret == -errno.EINTR:
                return int(lib.KVM_EXIT_INTR)
            raise KvmError("KVM_RUN", -ret)
        return int(self.run_struct.exit_reason)

    def emulation_failure_insn(self) -> bytes:
        """After KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION: the bytes
        of the instruction KVM could not emulate, when KVM reports them."""
        failure = self.run_struct.emulation_failure
        has_bytes = failure.flags & lib.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
        # ndata counts the u64 words after ndata: flags plus the 16 instruction bytes.
        if failure.ndata < 3 or not has_bytes:
            return b""
        size = min(failure.insn_size, len(failure.insn_bytes))
        return bytes(failure.insn_bytes[0:size])

    # -- registers -------------------------------------------------------

    def get_regs(self) -> Any:
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, "KVM_GET_REGS", regs)
        return regs

    def set_regs(self, regs: Any) -> None:
        ioctl(self.fd, "KVM_SET_REGS", regs)

    def get_sregs(self) -> Any:
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, "KVM_GET_SREGS", sregs)
        return sregs

    def set_sregs(self, sregs: Any) -> None:
        ioctl(self.fd, "KVM_SET_SREGS", sregs)

    def get_fpu(self) -> Any:
        fpu = ffi.new("struct kvm_fpu *")
        ioctl(self.fd, "KVM_GET_FPU", fpu)
        return fpu

    def set_fpu(self, fpu: Any) -> None:
        ioctl(self.fd, "KVM_SET_FPU", fpu)

    def get_xsave(self) -> bytes:
        """KVM_GET_XSAVE: the vCPU's extended state as a standard-format XSAVE
        image (component offsets as in the host's CPUID leaf 0xD)."""
        xsave = ffi.new("struct kvm_xsave *")
        ioctl(self.fd, "KVM_GET_XSAVE", xsave)
        return bytes(ffi.buffer(xsave.region))

    def set_xsave(self, image: bytes) -> None:
        xsave = ffi.new("struct kvm_xsave *")
        region = ffi.buffer(xsave.region)
        if len(image) > len(region):
            raise ValueError(f"XSAVE image of {len(image)} bytes; KVM takes {len(region)}")
        region[: len(image)] = image
        ioctl(self.fd, "KVM_SET_XSAVE", xsave)

    def get_xcr0(self) -> int:
        """XCR0, the enabled XSAVE components (KVM_GET_XCRS)."""
        xcrs = ffi.new("struct kvm_xcrs *")
        ioctl(self.fd, "KVM_GET_XCRS", xcrs)
        for i in range(xcrs.nr_xcrs):
            if xcrs.xcrs[i].xcr == 0:
                return int(xcrs.xcrs[i].value)
        return 1  # x87 only: XCR0's value at reset

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS; MSRs KVM does not know are left out of the result."""
        n = len(indices)
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": n, "entries": n})
        for i, index in enumerate(indices):
            msrs.entries[i].index = index
        done = ioctl(self.fd, "KVM_GET_MSRS", msrs)
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(done)}

    def set_msrs(self, values: dict[int, int]) -> int:
        """KVM_SET_MSRS; returns how many were set (KVM stops at the first it refuses)."""
        n = len(values)
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": n, "entries": n})
        for i, (index, data) in enumerate(values.items()):
            msrs.entries[i].index = index
            msrs.entries[i].data = data
        return ioctl(self.fd, "KVM_SET_MSRS", msrs)

    def set_cpuid2(self, entries: list[Any]) -> None:
        """KVM_SET_CPUID2 from objects with function/index/flags/eax/ebx/ecx/edx."""
        n = len(entries)
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
        for i, e in enumerate(entries):
            c = cpuid.entries[i]
            c.function, c.index, c.flags = e.function, e.index, e.flags
            c.eax, c.ebx, c.ecx, c.edx = e.eax, e.ebx, e.ecx, e.edx
        ioctl(self.fd, "KVM_SET_CPUID2", cpuid)
        self.cpuid = list(entries)

    def get_lapic(self) -> bytes:
        """KVM_GET_LAPIC: the local APIC's register page."""
        state = ffi.new("struct kvm_lapic_state *")
        ioctl(self.fd, "KVM_GET_LAPIC", state)
        return bytes(ffi.buffer(state.regs))

    def set_lapic(self, regs: bytes) -> None:
        state = ffi.new("struct kvm_lapic_state *")
        buf = ffi.buffer(state.regs)
        if len(regs) != len(buf):
            raise ValueError(f"LAPIC state is {len(buf)} bytes, got {len(regs)}")
        buf[:] = regs
        ioctl(self.fd, "KVM_SET_LAPIC", state)

    def get_mp_state(self) -> int:
        state = ffi.new("struct kvm_mp_state *")
        ioctl(self.fd, "KVM_GET_MP_STATE", state)
        return int(state.mp_state)

    def set_mp_state(self, mp_state: int) -> None:
        ioctl(self.fd, "KVM_SET_MP_STATE", ffi.new("struct kvm_mp_state *", {"mp_state": mp_state}))

    def get_vcpu_events(self) -> Any:
        events = ffi.new("struct kvm_vcpu_events *")
        ioctl(self.fd, "KVM_GET_VCPU_EVENTS", events)
        return events

    def set_vcpu_events(self, events: Any) -> None:
        ioctl(self.fd, "KVM_SET_VCPU_EVENTS", events)

    # -- saved state: each struct as its bytes (the kernel's x86-64 ABI) -----

    def get_state(self, what: str) -> bytes:
        """One of :data:`STATE_STRUCTS` ("regs", "sregs", "fpu", "lapic",
        "events", "mp_state", "debugregs", "xcrs") as the struct's bytes."""
        request, ctype = STATE_STRUCTS[what]
        return get_struct(self.fd, f"KVM_GET_{request}", ctype)

    def set_state(self, what: str, data: bytes) -> None:
        request, ctype = STATE_STRUCTS[what]
        set_struct(self.fd, f"KVM_SET_{request}", ctype, data)

    def get_xsave_state(self, size: int) -> bytes:
        """The whole XSAVE area: KVM_GET_XSAVE2 when KVM_CAP_XSAVE2 says it is
        larger than struct kvm_xsave (AMX), else KVM_GET_XSAVE."""
        xsave = ffi.new("struct kvm_xsave *")
        base = ffi.sizeof(xsave[0])
        if size <= base:
            ioctl(self.fd, "KVM_GET_XSAVE", xsave)
            return bytes(ffi.buffer(xsave))
        buf = ffi.new("char[]", size)
        ioctl(self.fd, "KVM_GET_XSAVE2", buf)
        return bytes(ffi.buffer(buf))

    def set_xsave_state(self, data: bytes) -> None:
        base = ffi.sizeof("struct kvm_xsave")
        buf = ffi.new("char[]", max(len(data), base))
        ffi.buffer(buf)[0 : len(data)] = data
        ioctl(self.fd, "KVM_SET_XSAVE", ffi.cast("struct kvm_xsave *", buf))

    def get_tsc_khz(self) -> int:
        return ioctl(self.fd, "KVM_GET_TSC_KHZ")

    def set_tsc_khz(self, khz: int) -> None:
        lib.pyvmm_ioctl_val(self.fd, lib.KVM_SET_TSC_KHZ, khz)

    def kvmclock_ctrl(self) -> bool:
        """KVM_KVMCLOCK_CTRL: tell the guest it was paused (no soft-lockup
        warnings for the time it stood still); False if the guest has no kvmclock."""
        return bool(lib.pyvmm_ioctl(self.fd, lib.KVM_KVMCLOCK_CTRL, ffi.NULL) == 0)

    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        """KVM_SET_GUEST_DEBUG: single-stepping and hardware breakpoints
        (``debugreg`` = DR0-DR3, unused, unused, DR6, DR7)."""
        dbg = ffi.new("struct kvm_guest_debug *")
        dbg.control = control
        for i, value in enumerate(debugreg or []):
            dbg.arch.debugreg[i] = value
        ioctl(self.fd, "KVM_SET_GUEST_DEBUG", dbg)

    # -- teardown --------------------------------------------------------

    def close(self) -> None:
        if self.fd < 0:
            return
        self.run_page.release()
        ffi.release(self.run_struct)
        self._mapping.close()
        os.close(self.fd)
        self.fd = -1
