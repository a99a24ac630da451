"""Hostile guests, memory side: every guest-physical address pyvmm follows is
checked against guest RAM.

Two places take addresses from a guest: :class:`GuestMemory` itself (every
access goes through its bounds check), and the instruction emulation used on
PVM hosts, which walks the guest's own page tables and operands. Both are
fuzzed here with addresses and page tables a guest could set up.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64 import pvm_emulation as pvm
from pyvmm.arch.x86_64.xsave import Layout
from pyvmm.kvm import ffi
from pyvmm.memory import GuestMemory, GuestMemoryError

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GiB, MiB = 1 << 30, 1 << 20

#: 3.5 GiB: RAM below the MMIO gap and 512 MiB above 4 GiB (nothing is touched up front).
SPLIT = GuestMemory(layout.ram_ranges(3 * GiB + 512 * MiB))

interesting = st.sampled_from(
    [0, 4096, layout.MMIO_GAP_START, layout.MMIO_GAP_END, SPLIT.size, 4 * GiB + 512 * MiB]
)
addresses = st.one_of(
    st.integers(-(1 << 64), 1 << 65),
    st.builds(lambda base, delta: base + delta, interesting, st.integers(-64, 64)),
)


@FUZZ
@given(addresses, st.integers(-16, 1 << 20))
def test_every_access_is_inside_one_ram_region(gpa: int, size: int) -> None:
    inside = size >= 0 and any(r.start <= gpa and gpa + size <= r.end for r in SPLIT.ranges)
    try:
        view = SPLIT.view(gpa, size)
    except GuestMemoryError:
        assert not inside
        return
    assert inside and len(view) == size
    if size:
        # The view is the guest's memory at gpa: what goes in comes out by address.
        view[0] = 0xA5
        assert SPLIT.read(gpa, 1) == b"\xa5"
        SPLIT.write(gpa, b"\0")


# -- the PVM instruction emulation, with a guest that controls everything ----


class FakeVcpu:
    """The vCPU calls EmulationAssist makes, on real KVM structures filled
    with what the guest chose (registers, control registers, the bytes KVM
    reported). A stand-in for KVM here exercises the address handling only."""

    def __init__(self, insn: bytes, regs: dict[str, int], sregs: dict[str, int]) -> None:
        self.insn = insn
        self.regs = ffi.new("struct kvm_regs *")
        for name, value in regs.items():
            setattr(self.regs, name, value)
        self.sregs = ffi.new("struct kvm_sregs *")
        for name, value in sregs.items():
            if name == "idt_base":
                self.sregs.idt.base = value
            else:
                setattr(self.sregs, name, value)
        self.fpu = ffi.new("struct kvm_fpu *")
        self.events = ffi.new("struct kvm_vcpu_events *")
        self.xsave = bytes(4096)
        self.injected: list[int] = []

    def emulation_failure_insn(self) -> bytes:
        return self.insn

    def get_regs(self) -> Any:
        return self.regs

    def set_regs(self, regs: Any) -> None:
        self.regs = regs

    def get_sregs(self) -> Any:
        return self.sregs

    def set_sregs(self, sregs: Any) -> None:
        self.sregs = sregs

    def get_fpu(self) -> Any:
        return self.fpu

    def set_fpu(self, fpu: Any) -> None:
        self.fpu = fpu

    def get_xsave(self) -> bytes:
        return self.xsave

    def set_xsave(self, image: bytes) -> None:
        assert len(image) == 4096
        self.xsave = image

    def get_xcr0(self) -> int:
        return 0xE7  # x87, SSE, AVX, AVX-512

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        return {i: 0xFFFF_8000_0000_0000 + i for i in indices}

    def get_vcpu_events(self) -> Any:
        return self.events

    def set_vcpu_events(self, events: Any) -> None:
        self.injected.append(events.exception.nr)


GUEST = GuestMemory(layout.ram_ranges(8 * MiB))
LAYOUT = Layout({2: (0x240, 0x100), 5: (0x340, 0x40), 6: (0x380, 0x200), 7: (0x580, 0x400)})

#: The instructions EmulationAssist carries out, with a ModRM byte that
#: selects them (memory operand, the right /reg) or any other, then random
#: SIB/displacement bytes; and wholly random bytes.
opcodes = st.sampled_from(
    [b"\xcc", b"\x9b", pvm.CLAC, pvm.STAC, b"\xf0\x48\x0f\xc7", b"\x48\x0f\xc7",
     b"\x0f\xae", b"\x48\x0f\xae", b"\x41\x0f\xae", b"\x67\x0f\xae", b"\x65\x48\x0f\xae", b""]
)  # fmt: skip
modrm = st.one_of(
    st.builds(lambda mod, reg, rm: mod << 6 | reg << 3 | rm,
              st.integers(0, 2), st.sampled_from([1, 2, 3, 4, 5]), st.integers(0, 7)),
    st.integers(0, 255),
).map(lambda b: bytes([b]))  # fmt: skip
instructions = st.builds(
    lambda op, m, tail: (op + m + tail)[:15], opcodes, modrm, st.binary(max_size=12)
)
#: Addresses a guest might put in a register or table: anything, or inside
#: the first 128 KiB where the fuzzed page tables live, or at RAM's edges.
u64 = st.one_of(
    st.integers(0, (1 << 64) - 1),
    st.integers(0, 0x20000),
    st.sampled_from([0, 0xFFF, 0x1000, 8 * MiB - 1, 8 * MiB, 0xFFFF_FFFF_FFFF_FFF0]),
)
table_pages = st.integers(0, 0x1F).map(lambda i: i * 0x1000)
#: Page-table entries: present or not, writable or not, large or not, pointing
#: at another table page, anywhere in RAM or beyond it.
ptes = st.builds(
    lambda addr, flags: (addr & 0x000F_FFFF_FFFF_F000) | flags,
    st.one_of(table_pages, u64),
    st.sampled_from([0, 1, 3, 0x81, 0x83, 0x8000_0000_0000_0003]),
)
register_names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip", "rflags"]
register_names += [f"r{i}" for i in range(8, 16)]


@FUZZ
@given(
    insn=instructions,
    reported=st.booleans(),
    regs=st.fixed_dictionaries({name: u64 for name in register_names}),
    cr0=st.sampled_from([0x11, 0x8005_0033]),
    cr3=st.one_of(table_pages, u64),
    cr4=st.sampled_from([0, 0x20, 0x1020]),
    idt_base=u64,
    tables=st.lists(st.tuples(st.integers(0, 0x3FFF), ptes), max_size=200),
    chain=st.one_of(
        st.none(), st.lists(st.sampled_from([0, 1, 3, 0x83, 0x81]), min_size=4, max_size=4)
    ),
    data_page=st.integers(0, 8 * MiB // 4096 + 4),
)
def test_emulation_follows_only_guest_ram(
    insn: bytes,
    reported: bool,
    regs: dict[str, int],
    cr0: int,
    cr3: int,
    cr4: int,
    idt_base: int,
    tables: list[tuple[int, int]],
    chain: list[int] | None,
    data_page: int,
) -> None:
    """Whatever the instruction, registers and page tables, handling the
    emulation failure either resolves it (maybe by raising an exception in
    the guest) or reports it; it never raises in pyvmm."""
    GUEST.fill(0, 0x20000)
    for slot, entry in tables:
        GUEST.write(slot * 8, struct.pack("<Q", entry))
    if chain is not None:
        # Four table pages, each entry of each pointing to the next level with
        # the drawn flags, so that every address walks all the way through;
        # the last level points to one page, inside RAM or just past it.
        cr3 = 0x10000
        for level, flags in enumerate(chain):
            target = cr3 + (level + 1) * 0x1000 if level < 3 else data_page * 0x1000
            GUEST.write(cr3 + level * 0x1000, struct.pack("<Q", target | flags) * 512)
    if not reported:
        # KVM did not say which bytes: pyvmm reads them at RIP itself.
        GUEST.write(regs["rip"] % (8 * MiB - 16), insn)
    vcpu = FakeVcpu(
        insn if reported else b"",
        regs,
        {"cr0": cr0, "cr3": cr3, "cr4": cr4, "cr2": 0, "idt_base": idt_base},
    )
    assist = pvm.EmulationAssist(GUEST, LAYOUT)
    result = assist.handle(vcpu)  # type: ignore[arg-type]
    assert result.unhandled is None or isinstance(result.unhandled, pvm.Unhandled)
    done = result.unhandled
    event("resolved" if done is None else f"reported: {done.hint.split(':')[0][:40]}")
    for vector in vcpu.injected:
        event(f"raised vector {vector} in the guest")
    assert set(vcpu.injected) <= {pvm.BP_VECTOR, pvm.GP_VECTOR, pvm.PF_VECTOR, pvm.MF_VECTOR}
