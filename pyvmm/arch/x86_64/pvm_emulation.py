"""Completing, on a PVM host, the instructions KVM's emulator refuses in
guest kernel mode (see :mod:`pyvmm.arch.x86_64.pvm` for why and which).

:class:`EmulationAssist` is registered as the handler of emulation
failures (KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_EMULATION)
and says what it did with each, for ``--trace exits`` and ``--stats``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyvmm.arch.x86_64 import decode, paging, xsave
from pyvmm.arch.x86_64.msr import MSR_LSTAR, MSR_STAR
from pyvmm.arch.x86_64.msr import MSR_SYSCALL_MASK as MSR_FMASK
from pyvmm.arch.x86_64.regs import CR0_PG, CR4_LA57, RFLAGS_AC
from pyvmm.arch.x86_64.regs import RFLAGS_RESERVED as RFLAGS_FIXED
from pyvmm.kvm import Vcpu
from pyvmm.memory import GuestMemory, GuestMemoryError

BP_VECTOR = 3  # #BP, the breakpoint exception (SDM Vol. 3A, table 6-1)
GP_VECTOR = 13  # #GP, general protection
PF_VECTOR = 14  # #PF, page fault
MF_VECTOR = 16  # #MF, x87 floating-point error
FSW_ES = 1 << 7  # x87 status word: an unmasked exception is pending
MAX_INSN = 15  # the longest x86 instruction
CLAC = b"\x0f\x01\xca"
STAC = b"\x0f\x01\xcb"
#: Room before the CLAC in an exception entry point (an ENDBR64 under IBT).
ENTRY_SLACK = 8
#: Linear addresses and RIP wrap at 64 bits.
U64 = (1 << 64) - 1


def _advance(regs: Any, length: int) -> None:
    """Move RIP past an instruction carried out here."""
    regs.rip = (regs.rip + length) & U64


@dataclass(frozen=True)
class Unhandled:
    """An emulation failure pyvmm could not resolve, ready to report."""

    rip: int
    insn: bytes
    hint: str

    def __str__(self) -> str:
        shown = self.insn.hex(" ") if self.insn else "unreadable"
        return f"instruction at rip {self.rip:#x} ({shown}): {self.hint}"


@dataclass(frozen=True)
class Emulated:
    """What :meth:`EmulationAssist.handle` did: the instruction it carried
    out ("clac", "xsave", "syscall", ...), or why it could not."""

    what: str
    unhandled: Unhandled | None = None


class EmulationAssist:
    """Resolves KVM emulation failures for one machine's guest memory."""

    def __init__(self, memory: GuestMemory, xsave_layout: xsave.Layout) -> None:
        self._memory = memory
        self._xsave_layout = xsave_layout
        # (IDT base, address of the guest's page-fault handler) last read. One
        # entry: a guest that keeps moving its IDT must not grow pyvmm's memory.
        self._pf_handler: tuple[int, int] | None = None
        # Each handler carries out one instruction; it may return a better
        # name for what it did (a clac that was a system call's entry).
        self._handlers: list[tuple[Callable[[bytes], bool], Callable[..., str | None]]] = [
            (lambda insn: insn[:1] == b"\xcc", self._int3),
            (lambda insn: insn[:1] == b"\x9b", self._fwait),
            (lambda insn: insn[:3] == CLAC, self._clac),
            (lambda insn: insn[:3] == STAC, self._stac),
            (decode.is_cmpxchg16b, self._cmpxchg16b),
            (decode.is_ldmxcsr, self._ldmxcsr),
            (decode.is_stmxcsr, self._stmxcsr),
            (decode.is_xsave, self._xsave),
            (decode.is_xrstor, self._xrstor),
        ]

    def state(self) -> dict[str, Any]:
        """For a snapshot: the page-fault handler last found (a cache)."""
        return {"pf_handler": list(self._pf_handler) if self._pf_handler else None}

    def restore(self, state: dict[str, Any]) -> None:
        cached = state.get("pf_handler")
        self._pf_handler = None
        if isinstance(cached, list) and len(cached) == 2:
            base, handler = cached
            if all(isinstance(x, int) and 0 <= x <= U64 for x in (base, handler)):
                self._pf_handler = (base, handler)

    def handle(self, vcpu: Vcpu) -> Emulated:
        """Deal with the emulation failure in ``vcpu``'s kvm_run. When the
        result has no ``unhandled``, the vCPU can simply be run again."""
        regs = vcpu.get_regs()
        sregs = vcpu.get_sregs()
        insn = self._instruction(vcpu, regs, sregs)
        for matches, handler in self._handlers:
            if insn and matches(insn):
                what = handler.__name__.lstrip("_")
                try:
                    return Emulated(handler(vcpu, regs, sregs, insn) or what)
                except (GuestMemoryError, paging.PageFault, decode.DecodeError) as e:
                    return Emulated(what, Unhandled(regs.rip, insn, f"could not emulate it: {e}"))
        hint = (
            "this host's KVM cannot emulate it in guest kernel mode; if the guest is "
            "Linux, a command-line option that avoids it (as 'nofsgsbase' avoids WRGSBASE) "
            "may help"
        )
        return Emulated("unhandled instruction", Unhandled(regs.rip, insn, hint))

    def _instruction(self, vcpu: Vcpu, regs: Any, sregs: Any) -> bytes:
        """The failing instruction's bytes: from KVM when it supplies them,
        else read at RIP through the guest's page tables."""
        insn = vcpu.emulation_failure_insn()
        if insn:
            return insn
        try:
            return self._read_virtual(sregs, regs.rip, MAX_INSN)
        except (GuestMemoryError, paging.PageFault, decode.DecodeError):
            return b""

    def _read_virtual(self, sregs: Any, vaddr: int, size: int) -> bytes:
        """Read guest-virtual memory, page by page (it may cross a page boundary)."""
        out = bytearray()
        while len(out) < size:
            addr = (vaddr + len(out)) & U64
            chunk = min(size - len(out), 0x1000 - (addr & 0xFFF))
            out += self._memory.read(self._physical(sregs, addr), chunk)
        return bytes(out)

    def _writable(self, sregs: Any, vaddr: int, size: int) -> list[tuple[int, int]]:
        """The (physical address, length) pieces of a guest-virtual range, or the
        #PF a write to it raises, before anything is written."""
        pieces = []
        done = 0
        while done < size:
            addr = (vaddr + done) & U64
            chunk = min(size - done, 0x1000 - (addr & 0xFFF))
            pieces.append((self._physical(sregs, addr, write=True), chunk))
            done += chunk
        return pieces

    def _write_virtual(self, sregs: Any, vaddr: int, data: bytes) -> None:
        """Write guest-virtual memory; a #PF leaves it untouched."""
        self._write_pieces(self._writable(sregs, vaddr, len(data)), data)

    def _write_pieces(self, pieces: list[tuple[int, int]], data: bytes) -> None:
        done = 0
        for phys, size in pieces:
            self._memory.write(phys, data[done : done + size])
            done += size

    def _physical(self, sregs: Any, vaddr: int, write: bool = False) -> int:
        if not sregs.cr0 & CR0_PG:  # paging off
            return vaddr
        if sregs.cr4 & CR4_LA57:
            raise decode.DecodeError("5-level paging is not supported")
        return paging.translate(self._memory.read_u64, sregs.cr3, vaddr, write)

    # -- instructions ----------------------------------------------------

    @staticmethod
    def _inject(vcpu: Vcpu, vector: int, error_code: int | None = None) -> None:
        """Deliver an exception on the next KVM_RUN (RIP is left as it is)."""
        events = vcpu.get_vcpu_events()
        events.exception.injected = 1
        events.exception.nr = vector
        events.exception.has_error_code = int(error_code is not None)
        events.exception.error_code = error_code or 0
        events.flags = 0  # leave NMI, SIPI and interrupt-shadow state alone
        vcpu.set_vcpu_events(events)

    def _int3(self, vcpu: Vcpu, regs: Any, sregs: Any, insn: bytes) -> None:
        """int3 is a trap: #BP is delivered with RIP already past the instruction
        (Linux's int3_selftest checks exactly that on every boot)."""
        _advance(regs, 1)
        vcpu.set_regs(regs)
        self._inject(vcpu, BP_VECTOR)

    def _fwait(self, vcpu: Vcpu, regs: Any, sregs: Any, insn: bytes) -> None:
        """fwait: raise #MF (a fault, RIP unchanged) if an unmasked x87
        exception is pending, else do nothing (SDM Vol. 2B, WAIT/FWAIT)."""
        if vcpu.get_fpu().fsw & FSW_ES:
            self._inject(vcpu, MF_VECTOR)
            return
        _advance(regs, 1)
        vcpu.set_regs(regs)

    def _stac(self, vcpu: Vcpu, regs: Any, sregs: Any, insn: bytes) -> None:
        regs.rflags |= RFLAGS_AC
        _advance(regs, len(STAC))
        vcpu.set_regs(regs)

    def _clac(self, vcpu: Vcpu, regs: Any, sregs: Any, insn: bytes) -> str | None:
        if self._repair_syscall(vcpu, regs, sregs):
            return "syscall"
        regs.rflags &= ~RFLAGS_AC
        _advance(regs, len(CLAC))
        vcpu.set_regs(regs)
        return None

    def _page_fault_handler(self, sregs: Any) -> int:
        """Entry point of the guest's #PF handler, from its IDT (cached per IDT)."""
        base = sregs.idt.base
        if self._pf_handler is None or self._pf_handler[0] != base:
            # A 64-bit IDT gate: offset bits 15:0, 31:16 and 63:32 at bytes 0, 6 and 8.
            gate = self._read_virtual(sregs, base + PF_VECTOR * 16, 16)
            offset = int.from_bytes(gate[0:2], "little") | int.from_bytes(gate[6:8], "little") << 16
            offset |= int.from_bytes(gate[8:12], "little") << 32
            self._pf_handler = (base, offset)
        return self._pf_handler[1]

    def _repair_syscall(self, vcpu: Vcpu, regs: Any, sregs: Any) -> bool:
        """At the #PF entry for a user-mode fault at LSTAR, become the syscall
        that caused it (see the module docstring). False if it is anything else."""
        if not 0 <= regs.rip - self._page_fault_handler(sregs) < ENTRY_SLACK:
            return False
        # The frame the CPU pushed: error code, RIP, CS, RFLAGS, RSP, SS.
        frame = self._read_virtual(sregs, regs.rsp, 48)
        _, rip, cs, rflags, rsp, _ = (
            int.from_bytes(frame[i : i + 8], "little") for i in range(0, 48, 8)
        )
        if cs & 3 != 3 or sregs.cr2 != rip:
            return False
        msrs = vcpu.get_msrs([MSR_STAR, MSR_LSTAR, MSR_FMASK])
        if rip != msrs.get(MSR_LSTAR):
            return False
        regs.rip = rip
        regs.rsp = rsp
        regs.rflags = (rflags & ~msrs.get(MSR_FMASK, 0)) | RFLAGS_FIXED
        vcpu.set_regs(regs)  # RCX and R11 already hold what syscall put there
        # syscall loads SS from IA32_STAR[47:32] + 8 (SDM Vol. 2B, SYSCALL).
        sregs.ss.selector = ((msrs[MSR_STAR] >> 32) & 0xFFFC) + 8
        sregs.ss.type, sregs.ss.s, sregs.ss.present, sregs.ss.dpl = 3, 1, 1, 0
        sregs.ss.db, sregs.ss.g, sregs.ss.limit, sregs.ss.base = 1, 1, 0xFFFFFFFF, 0
        sregs.ss.unusable = 0
        vcpu.set_sregs(sregs)
        return True

    def _ldmxcsr(self, vcpu: Vcpu, regs: Any, sregs: Any, insn: bytes) -> None:
        """LDMXCSR: load MXCSR from m32; #GP if it sets reserved bits (SDM Vol. 2A)."""
        op = decode.decode_memory_operand(insn, regs, sregs)
        try:
            value = int.from_bytes(self._read_virtual(sregs, op.address, 4), "little")
        except paging.PageFault as fault:
            self._page_fault(vcpu, sregs, fault)
            return
        state = vcpu.get_xsave()
        mask = int.from_bytes(state[xsave.MXCSR_MASK_OFFSET :][:4], "little")
        if value & ~(mask or xsave.DEFAULT_MXCSR_MASK):
            self._inject(vcpu, GP_VECTOR, 0)
            return
        fpu = vcpu.get_fpu()
        fpu.mxcsr = value
        vcpu.set_fpu(fpu)
        _advance(regs, op.length)
        vcpu.set_regs(regs)

    def _stmxcsr(self, vcpu: Vcpu, regs: Any, sregs: Any, insn: bytes) -> None:
        """STMXCSR: store MXCSR to m32."""
        op = decode.decode_memory_operand(insn, regs, sregs)
        try:
            self._write_virtual(sregs, op.address, int(vcpu.get_fpu().mxcsr).to_bytes(4, "little"))
        except paging.PageFault as fault:
            self._page_fault(vcpu, sregs, fault)
            return
        _advance(regs, op.length)
        vcpu.set_regs(regs)

    def _page_fault(self, vcpu: Vcpu, sregs: Any, fault: paging.PageFault) -> None:
        """Raise the #PF the instruction met: CR2 holds the address."""
        sregs.cr2 = fault.vaddr
        vcpu.set_sregs(sregs)
        self._inject(vcpu, PF_VECTOR, fault.error_code)

    def _xsave_family(
        self,
        vcpu: Vcpu,
        regs: Any,
        sregs: Any,
        insn: bytes,
        perform: Callable[[int, int, int], None],
    ) -> None:
        """What XSAVE and XRSTOR share: the operand, RFBM = XCR0 AND EDX:EAX,
        the alignment check, #PF or #GP raised in the guest as the CPU would,
        else RIP past the instruction. ``perform(address, rfbm, xcr0)`` does
        the rest."""
        op = decode.decode_memory_operand(insn, regs, sregs)
        xcr0 = vcpu.get_xcr0()
        rfbm = xcr0 & ((regs.rdx & 0xFFFFFFFF) << 32 | regs.rax & 0xFFFFFFFF)
        try:
            if op.address % 64:
                raise xsave.XsaveFault("XSAVE area is not 64-byte aligned")
            perform(op.address, rfbm, xcr0)
        except paging.PageFault as fault:
            self._page_fault(vcpu, sregs, fault)
            return
        except xsave.XsaveFault:
            self._inject(vcpu, GP_VECTOR, 0)
            return
        _advance(regs, op.length)
        vcpu.set_regs(regs)

    def _xsave(self, vcpu: Vcpu, regs: Any, sregs: Any, insn: bytes) -> None:
        """XSAVE: store the vCPU's state components in RFBM to memory."""
        layout = self._xsave_layout

        def store(address: int, rfbm: int, xcr0: int) -> None:
            # Translated for writing first, so a #PF carries the write bit.
            pieces = self._writable(sregs, address, layout.size(rfbm))
            area = b"".join(self._memory.read(phys, size) for phys, size in pieces)
            self._write_pieces(pieces, xsave.store(vcpu.get_xsave(), rfbm, area, layout))

        self._xsave_family(vcpu, regs, sregs, insn, store)

    def _xrstor(self, vcpu: Vcpu, regs: Any, sregs: Any, insn: bytes) -> None:
        """XRSTOR: load the vCPU's state components in RFBM from memory."""
        layout = self._xsave_layout

        def restore(address: int, rfbm: int, xcr0: int) -> None:
            area = self._read_virtual(sregs, address, layout.size(rfbm))
            vcpu.set_xsave(xsave.load(vcpu.get_xsave(), rfbm, area, xcr0, layout))

        self._xsave_family(vcpu, regs, sregs, insn, restore)

    def _cmpxchg16b(self, vcpu: Vcpu, regs: Any, sregs: Any, insn: bytes) -> None:
        """Compare RDX:RAX with m128; if equal store RCX:RBX and set ZF, else
        load m128 into RDX:RAX and clear ZF (SDM Vol. 2A, CMPXCHG8B/CMPXCHG16B)."""
        op = decode.decode_memory_operand(insn, regs, sregs)
        if op.address % 16:
            raise decode.DecodeError("m128 operand is not 16-byte aligned (#GP)")
        phys = self._physical(sregs, op.address, write=True)
        view = self._memory.view(phys, 16)  # 16-aligned: never crosses a page
        ok, old_lo, old_hi = decode.atomic_cmpxchg16b(view, regs.rax, regs.rdx, regs.rbx, regs.rcx)
        self._memory.mark_written(phys, 16)
        zf = 1 << 6
        if ok:
            regs.rflags |= zf
        else:
            regs.rflags &= ~zf
            regs.rax, regs.rdx = old_lo, old_hi
        _advance(regs, op.length)
        vcpu.set_regs(regs)
