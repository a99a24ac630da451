"""Saving and restoring what KVM holds for an x86 VM and its vCPUs.

Everything KVM keeps is read back through its state ioctls and written
again in an order that respects their dependencies (KVM API document,
"KVM_SET_*", and the order Firecracker and QEMU use):

- per vCPU: the CPUID it was given (KVM cannot give it back: pyvmm keeps
  it), the MP state, general registers, segment and control registers
  (sregs: before the LAPIC, since it holds the APIC base), the XSAVE area
  (x87, SSE, AVX and beyond), XCR0, debug registers, the local APIC page,
  every MSR KVM lists with KVM_GET_MSR_INDEX_LIST (after the LAPIC: the TSC
  deadline needs it), and last the pending events (exceptions, NMIs,
  interrupt shadow), which setting anything else could disturb;
- per VM: the two 8259 PICs and the I/O APIC (KVM_GET_IRQCHIP), the PIT
  (KVM_GET_PIT2), and the KVM clock (KVM_GET_CLOCK).

Each struct is kept as its bytes, as the kernel's x86-64 ABI lays it out:
there is nothing for pyvmm to interpret, and KVM checks what it is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pyvmm.arch.x86_64.msr import MSR_IA32_TSC
from pyvmm.kvm import CpuidEntry, KvmError, Vcpu, Vm, lib

#: The per-vCPU structs saved whole, in the order they are restored.
VCPU_STRUCTS = ("mp_state", "regs", "sregs", "xcrs", "debugregs", "lapic")
#: The interrupt controllers KVM_GET_IRQCHIP reads, by name.
IRQCHIPS = {
    "pic_master": lib.KVM_IRQCHIP_PIC_MASTER,
    "pic_slave": lib.KVM_IRQCHIP_PIC_SLAVE,
    "ioapic": lib.KVM_IRQCHIP_IOAPIC,
}


@dataclass
class VcpuState:
    """One vCPU, as :func:`save_vcpu` read it."""

    id: int
    cpuid: list[CpuidEntry]
    structs: dict[str, bytes]
    xsave: bytes
    msrs: dict[int, int]
    events: bytes
    tsc_khz: int = 0


@dataclass
class VmState:
    """The VM-wide state: interrupt controllers, PIT and clock."""

    irqchips: dict[str, bytes]
    pit: bytes
    clock: int
    clock_flags: int
    #: Host CLOCK_REALTIME (ns) when ``clock`` was read, if KVM said.
    realtime: int
    extra: dict[str, int] = field(default_factory=dict)


def read_msrs(vcpu: Vcpu, indices: list[int]) -> dict[int, int]:
    """Every MSR of ``indices`` this vCPU has. KVM_GET_MSRS stops at the
    first it cannot read; that one is left out and the rest read on."""
    values: dict[int, int] = {}
    left = list(dict.fromkeys(indices))
    while left:
        got = vcpu.get_msrs(left)
        values.update(got)
        left = left[len(got) + 1 :]  # skip the one KVM refused
    return values


def write_msrs(vcpu: Vcpu, values: dict[int, int]) -> list[int]:
    """Set every MSR KVM takes; returns those it refused."""
    refused = []
    left = list(values.items())
    while left:
        done = vcpu.set_msrs(dict(left))
        if done < len(left):
            refused.append(left[done][0])
        left = left[done + 1 :]
    return refused


def save_vcpu(vcpu: Vcpu, msr_indices: list[int], xsave_size: int) -> VcpuState:
    """Read a vCPU's whole state. Call it on the vCPU's own thread with the
    VM paused (``KVM_RUN`` returned after an ``immediate_exit``, so no
    port or MMIO access is half done)."""
    structs = {name: vcpu.get_state(name) for name in VCPU_STRUCTS}
    try:
        tsc_khz = vcpu.get_tsc_khz()
    except KvmError:
        tsc_khz = 0
    return VcpuState(
        id=vcpu.id,
        cpuid=list(vcpu.cpuid),
        structs=structs,
        xsave=vcpu.get_xsave_state(xsave_size),
        msrs=read_msrs(vcpu, msr_indices),
        events=vcpu.get_state("events"),
        tsc_khz=tsc_khz,
    )


def restore_vcpu(vcpu: Vcpu, state: VcpuState, away_ns: int = 0) -> list[int]:
    """Put a saved state into a vCPU that has its CPUID already; returns the
    MSRs KVM refused (none, on the same kind of host). ``away_ns``: how far
    to move the TSC on (:func:`time_away`)."""
    vcpu.set_state("mp_state", state.structs["mp_state"])
    vcpu.set_state("regs", state.structs["regs"])
    vcpu.set_state("sregs", state.structs["sregs"])
    vcpu.set_xsave_state(state.xsave)
    if xcr_count(state.structs["xcrs"]):  # none from a host without XSAVE, whose KVM refuses any
        vcpu.set_state("xcrs", state.structs["xcrs"])
    for name in ("debugregs", "lapic"):
        vcpu.set_state(name, state.structs[name])
    refused = write_msrs(vcpu, tsc_moved_on(state, away_ns))
    vcpu.set_state("events", state.events)
    return refused


def tsc_moved_on(state: VcpuState, away_ns: int) -> dict[int, int]:
    """The saved MSRs with the TSC moved on by ``away_ns`` at the vCPU's
    own rate. KVM sets the TSC to what the host writes (to the other
    vCPUs' when that is within a second of theirs, so they stay in step),
    so a guest that keeps time with the TSC, as Linux does where the CPU
    says its TSC is invariant, would otherwise miss the time spent saved,
    whatever the KVM clock says. The deadline of its TSC timer, now past,
    fires at once."""
    msrs = dict(state.msrs)
    if away_ns and state.tsc_khz and MSR_IA32_TSC in msrs:
        msrs[MSR_IA32_TSC] = (msrs[MSR_IA32_TSC] + away_ns * state.tsc_khz // 10**6) % 2**64
    return msrs


def xcr_count(xcrs: bytes) -> int:
    """``nr_xcrs`` of a saved ``struct kvm_xcrs`` (its first u32). KVM_GET_XCRS
    gives 0 on a host without XSAVE, where KVM_SET_XCRS fails with EINVAL."""
    return int.from_bytes(xcrs[:4], "little")


def save_vm(vm: Vm) -> VmState:
    """The VM's state. The clock's host wall-clock time comes from KVM when
    it can pair the two (KVM_CLOCK_REALTIME: a host whose clocksource is the
    TSC), else from reading CLOCK_REALTIME right after: a restore needs it
    to move the guest's clock on either way."""
    clock, flags, realtime = vm.get_clock()
    if not flags & lib.KVM_CLOCK_REALTIME:
        realtime = time.time_ns()
    return VmState(
        irqchips={name: vm.get_irqchip(chip) for name, chip in IRQCHIPS.items()},
        pit=vm.get_pit2(),
        clock=clock,
        clock_flags=flags,
        realtime=realtime,
    )


def restore_vm(vm: Vm, state: VmState) -> None:
    """Interrupt controllers and the PIT; the clock is set separately, last
    (:func:`restore_clock`), so that as little time as possible passes
    between setting it and running the guest."""
    for name in IRQCHIPS:
        vm.set_irqchip(state.irqchips[name])
    vm.set_pit2(state.pit)


#: The longest time a restored guest's clocks are moved forward by. Linux
#: 6.1 converts a clock reading into nanoseconds with a multiplication that
#: overflows beyond the clocksource's max_cycles (about 33 minutes for
#: kvm-clock, 16 for the TSC at 2.3 GHz), counted from the last tick, and
#: an idle CPU may go 15 minutes (7 with the TSC) between ticks: a larger
#: jump can read as garbage, even backwards, until the next tick, which a
#: restored guest takes at once. On PVM hosts, whose guests' TSC is the
#: host's, guests on the TSC ride through jumps of hours.
CLOCK_JUMP_MAX_NS = 15 * 60 * 10**9


def time_away(state: VmState, now_realtime: int) -> int:
    """How long (ns) the VM was saved, if its clocks may be moved on by it
    (at most CLOCK_JUMP_MAX_NS), else 0."""
    elapsed = now_realtime - state.realtime
    return elapsed if state.realtime and 0 <= elapsed <= CLOCK_JUMP_MAX_NS else 0


def restore_clock(vm: Vm, state: VmState, now_realtime: int) -> int:
    """Set the KVM clock. Returns how far (ns) the guest's clock is behind
    the host's wall clock afterwards: 0 when the clock could be moved
    forward by the time the snapshot spent on disk (:func:`time_away`),
    else that time, which the guest must catch up on itself (its monotonic
    clock simply continues). The sum is done here, not with KVM_SET_CLOCK's
    KVM_CLOCK_REALTIME, which kernels before 5.16 refuse."""
    away = time_away(state, now_realtime)
    vm.set_clock(state.clock + away)
    if away or not state.realtime:
        return 0
    return max(now_realtime - state.realtime, 0)
