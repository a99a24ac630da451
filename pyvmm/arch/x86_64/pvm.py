"""Help for hosts whose KVM emulates guest kernel mode in software (PVM).

On such a host guest user mode runs natively, but every instruction of the
guest kernel goes through KVM's instruction emulator, which refuses a few
that Linux executes on every boot. pyvmm does two things there, and nothing
on hardware-assisted KVM:

- it adds guest command-line options that keep Linux away from instructions
  the emulator cannot do (:data:`GUEST_CMDLINE`);
- it resolves the emulation failures KVM reports (KVM_EXIT_INTERNAL_ERROR,
  suberror KVM_INTERNAL_ERROR_EMULATION) that it can: ``int3`` is turned
  into the #BP exception the guest expects; ``fwait``, ``clac``, ``stac``,
  ``cmpxchg16b``, ``xsave`` and ``xrstor`` are carried out here on guest
  memory and registers (a fault they meet is raised in the guest, as the CPU
  would). Anything else ends the VM with the instruction's bytes, its address
  and a hint;
- it completes system calls. A ``syscall`` from guest user mode arrives at
  the guest's LSTAR with RCX and R11 set, but still in user mode (CPL 3,
  RFLAGS unmasked), so the kernel's entry code immediately takes a page fault
  on its own text. The kernel's exception entry starts with ``clac`` when
  SMAP is on, which KVM cannot emulate, so pyvmm sees every exception entry:
  when it is that page fault (user mode, faulting at LSTAR), pyvmm discards
  the exception frame and enters LSTAR the way ``syscall`` would have: in
  kernel mode, with the user's stack pointer and RFLAGS masked by
  IA32_FMASK. This is why SMAP is left on for the guest.

How the host is recognised: PVM is a KVM vendor module, ``kvm_pvm``, loaded
in place of kvm_intel or kvm_amd. The KVM API looks the same either way, but
the module shows up as /sys/module/kvm_pvm.
"""

from __future__ import annotations

from pathlib import Path

PVM_MODULE = Path("/sys/module/kvm_pvm")

#: Linux options for a PVM host. The guest sees the host's CPUID whatever
#: KVM_SET_CPUID2 says, so features are switched off on the kernel's command
#: line instead; each one otherwise leads Linux (through its alternatives) to
#: an instruction KVM's emulator does not implement:
#: - nofsgsbase: RDGSBASE/WRGSBASE on every entry and context switch;
#: - nopcid, noinvpcid: INVPCID in TLB flushes;
#: - clearcpuid= bits of arch/x86/include/asm/cpufeatures.h: 4*32+13 CX16
#:   (SLUB's lockless fast path, CMPXCHG16B), 4*32+23 POPCNT, 4*32+30 RDRAND,
#:   9*32+18 RDSEED, and 10*32+0..3 XSAVEOPT, XSAVEC, XGETBV1, XSAVES, which
#:   leaves Linux plain XSAVE/XRSTOR on the standard-form area: pyvmm carries
#:   those out (see xsave.py); 4*32+9 SSSE3 and 9*32+31 AVX512VL keep the
#:   kernel's BLAKE2s (its random number generator) on generic C code rather
#:   than PSHUFB or AVX-512, without dropping any XSAVE state component.
#: XSAVE itself stays on: guest user mode runs natively, sees AVX and AVX-512
#: in the host's CPUID and uses them (glibc does), so the guest kernel must
#: switch that state between processes; with only FXSAVE, the upper halves of
#: the vector registers leak from one process to the next.
#: SMAP stays on: its CLAC at each kernel entry is how system calls get repaired.
GUEST_CMDLINE = ("nofsgsbase", "nopcid", "noinvpcid",
                 "clearcpuid=137,141,151,158,306,319,320,321,322,323")  # fmt: skip


def host_is_pvm(module: Path = PVM_MODULE) -> bool:
    return module.is_dir()


#: With more than one vCPU, also ``nopv``: Linux as a KVM guest sends IPIs
#: with a hypercall (KVM_HC_SEND_IPI), and on this host the guest sees the
#: outer hypervisor's KVM feature leaf, whatever KVM_SET_CPUID2 says, so it
#: always does; KVM's emulator then tries to rewrite the VMCALL in the
#: guest's read-only kernel text, and the guest oopses. ``nopv`` makes Linux
#: a plain x86 guest: native IPIs through the local APIC, the TSC as its
#: clock instead of kvmclock.
SMP_CMDLINE = ("nopv",)


def guest_cmdline(cmdline: str, cpus: int = 1) -> str:
    """``cmdline`` with the PVM options it does not already have appended."""
    words = cmdline.split()
    wanted = GUEST_CMDLINE + (SMP_CMDLINE if cpus > 1 else ())
    extra = [opt for opt in wanted if opt not in words]
    return " ".join([cmdline, *extra]) if cmdline and extra else cmdline or " ".join(extra)
