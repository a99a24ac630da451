"""What each VM exit means, as functions of the exit and the buses.

``KVM_RUN`` returns when the guest does something KVM leaves to user space.
:class:`ExitHandler` turns each such exit into an effect: a port or MMIO
access carried out on a bus, an instruction the host's KVM could not
emulate completed (PVM hosts), or the end of the VM with the reason and
status it means (:class:`pyvmm.vmm.ending.Outcome`).

The handler sees a vCPU only through :class:`ExitSource` (the exit data KVM
left in ``struct kvm_run`` and the registers), so it can be driven with
fake exits and no KVM at all.

The common exit, one port access, arrives packed into one integer by the C
helper ``pyvmm_run`` (see csrc/kvm_helpers.h): :meth:`ExitHandler.port`
takes that integer, and the vCPU loop calls it without looking at
``struct kvm_run``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pyvmm.arch.x86_64 import regs as x86_regs
from pyvmm.devices.bus import Bus
from pyvmm.kvm import KvmError, lib
from pyvmm.vmm.coalesced import CoalescedRing
from pyvmm.vmm.ending import Ending, Outcome

EXIT_IO = lib.KVM_EXIT_IO
EXIT_MMIO = lib.KVM_EXIT_MMIO
EXIT_INTR = lib.KVM_EXIT_INTR
EXIT_INTERNAL_ERROR = lib.KVM_EXIT_INTERNAL_ERROR
RUN_PIO = lib.PYVMM_RUN_PIO
RUN_OUT = lib.PYVMM_RUN_OUT
RUN_ERROR = lib.PYVMM_RUN_ERROR


class ExitSource(Protocol):
    """What exit handling needs of a vCPU (:class:`pyvmm.kvm.Vcpu` has it)."""

    id: int
    #: The mapped ``struct kvm_run``.
    run_struct: Any
    #: The whole vCPU mapping, where port I/O data lives.
    run_page: memoryview

    def get_regs(self) -> Any: ...

    def get_sregs(self) -> Any: ...

    def emulation_failure_insn(self) -> bytes: ...


class EmulationHandler(Protocol):
    """Completes an instruction KVM could not emulate (PVM hosts)."""

    def handle(self, vcpu: Any) -> Any: ...


def port_io(
    bus: Bus, out: bool, port: int, size: int, count: int, page: memoryview, offset: int
) -> None:
    """Carry out a port I/O exit: ``count`` accesses of ``size`` bytes (more
    than one for ``rep outs``/``rep ins``), their data in ``page`` (the
    vCPU's kvm_run mapping) from ``offset``."""
    end = offset + size * count
    if not 0 <= offset <= end <= len(page):
        raise RuntimeError(f"KVM put port I/O data outside kvm_run ({offset:#x}+{end - offset})")
    if out:
        for i in range(offset, end, size):
            bus.write(port, bytes(page[i : i + size]))
    else:
        for i in range(offset, end, size):
            page[i : i + size] = bus.read(port, size)


def mmio_access(bus: Bus, mmio: Any) -> None:
    """Carry out an MMIO exit described by kvm_run's ``mmio`` member; its
    data array holds at most 8 bytes, whatever length KVM reports."""
    length = min(mmio.len, len(mmio.data))
    if mmio.is_write:
        bus.write(mmio.phys_addr, bytes(mmio.data[0:length]))
    else:
        data = bus.read(mmio.phys_addr, length)
        for i in range(length):
            mmio.data[i] = data[i]


class ExitHandler:
    """Carries out VM exits on the machine's buses; ``stop`` ends the VM.

    ``emulation``: where guest kernel mode is emulated (PVM), what completes
    instructions KVM refuses.
    """

    def __init__(
        self,
        pio: Bus,
        mmio: Bus,
        stop: Callable[[Outcome], None],
        emulation: EmulationHandler | None = None,
        debug: bool = False,
    ) -> None:
        self.pio = pio
        self.mmio = mmio
        self.stop = stop
        self.emulation = emulation
        self.debug = debug
        self.ring: CoalescedRing | None = None
        self._pio_read, self._pio_write = pio.read, pio.write
        #: What the vCPU loop calls for a packed port exit (see :meth:`use_ring`).
        self.port: Callable[[int, memoryview], None] = self._port

    def use_ring(self, ring: CoalescedRing) -> None:
        """Writes KVM batched are applied before each exit is handled."""
        self.ring = ring
        self.port = self._port_after_ring

    def _port_after_ring(self, packed: int, page: memoryview) -> None:
        ring = self.ring
        if ring is not None and ring.pending():
            ring.drain()
        self._port(packed, page)

    def _port(self, packed: int, page: memoryview) -> None:
        """One port access, as ``pyvmm_run`` packs it: port in bits 16-31,
        size in bits 12-15, for an out the value in bits 32-63, for an in
        the offset of its data in the vCPU mapping there."""
        size = packed >> 12 & 0xF
        if packed & RUN_OUT:
            self._pio_write(packed >> 16 & 0xFFFF, (packed >> 32).to_bytes(size, "little"))
        else:
            offset = packed >> 32
            page[offset : offset + size] = self._pio_read(packed >> 16 & 0xFFFF, size)

    def handle(self, vcpu: ExitSource, packed: int) -> str | None:
        """Any exit but a kick (KVM_EXIT_INTR, which the vCPU loop keeps for
        itself). Returns a note for ``--trace exits`` when there is one to
        make (what the PVM emulation did)."""
        if packed & RUN_PIO:
            self.port(packed, vcpu.run_page)
            return None
        ring = self.ring
        if ring is not None and ring.pending():
            ring.drain()
        reason = packed & 0xFF
        if reason == RUN_ERROR:
            raise KvmError("KVM_RUN", packed >> 8)
        run = vcpu.run_struct
        if reason == EXIT_IO:
            io = run.io
            out = io.direction == lib.KVM_EXIT_IO_OUT
            port_io(self.pio, out, io.port, io.size, io.count, vcpu.run_page, io.data_offset)
        elif reason == EXIT_MMIO:
            mmio_access(self.mmio, run.mmio)
        elif (
            reason == EXIT_INTERNAL_ERROR
            and run.internal.suberror == lib.KVM_INTERNAL_ERROR_EMULATION
        ):
            return self._emulation_failure(vcpu)
        else:
            self._fatal(vcpu, reason)
        return None

    def _fatal(self, vcpu: ExitSource, reason: int) -> None:
        """The exits that end the VM."""
        run = vcpu.run_struct
        if reason == lib.KVM_EXIT_HLT:
            self.stop(self._failure(vcpu, Ending.HALTED, "guest halted"))
        elif reason == lib.KVM_EXIT_SHUTDOWN:
            self.stop(self._failure(vcpu, Ending.TRIPLE_FAULT, "guest triple fault"))
        elif reason == lib.KVM_EXIT_FAIL_ENTRY:
            why = run.fail_entry.hardware_entry_failure_reason
            what = f"KVM could not enter the guest (reason {why:#x})"
            self.stop(self._failure(vcpu, Ending.INTERNAL_ERROR, what))
        elif reason == lib.KVM_EXIT_INTERNAL_ERROR:
            internal = run.internal
            words = " ".join(f"{internal.data[i]:#x}" for i in range(min(internal.ndata, 16)))
            what = f"KVM internal error {internal.suberror} (data: {words or 'none'})"
            self.stop(self._failure(vcpu, Ending.INTERNAL_ERROR, what))
        elif reason == lib.KVM_EXIT_SYSTEM_EVENT:
            event = run.system_event.type
            if event == lib.KVM_SYSTEM_EVENT_RESET:
                self.stop(Outcome(Ending.RESET, "guest reset"))
            elif event == lib.KVM_SYSTEM_EVENT_SHUTDOWN:
                self.stop(Outcome(Ending.POWEROFF, "guest powered off"))
            else:
                self.stop(self._failure(vcpu, Ending.INTERNAL_ERROR, f"system event {event}"))
        else:
            what = f"unexpected VM exit {reason}"
            self.stop(self._failure(vcpu, Ending.INTERNAL_ERROR, what))

    def _emulation_failure(self, vcpu: ExitSource) -> str:
        """KVM could not emulate an instruction. Where guest kernel mode is
        emulated (PVM) pyvmm may complete it, and the vCPU just runs on."""
        if self.emulation is not None:
            done = self.emulation.handle(vcpu)
            if done.unhandled is None:
                return f"emulation: {done.what}"
            what = f"KVM could not emulate an {done.unhandled}"
        else:
            insn = vcpu.emulation_failure_insn()
            shown = insn.hex(" ") if insn else "bytes not reported"
            rip = vcpu.get_regs().rip
            what = f"KVM could not emulate the instruction at rip {rip:#x} ({shown})"
        self.stop(self._failure(vcpu, Ending.EMULATION_FAILURE, what))
        return "emulation: failed"

    def _failure(self, vcpu: ExitSource, ending: Ending, message: str) -> Outcome:
        """An Outcome for a guest failure; with --debug it carries the registers."""
        detail = ""
        if self.debug:
            try:
                detail = x86_regs.format_registers(vcpu.get_regs(), vcpu.get_sregs())
            except KvmError as e:
                detail = f"(registers unavailable: {e})"
        return Outcome(ending, f"vCPU {vcpu.id}: {message}", detail)
