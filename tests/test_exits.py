"""Exit handling driven with fake exits: no KVM, a kvm_run filled in by hand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pyvmm.devices.bus import Bus
from pyvmm.devices.device import DeviceModel
from pyvmm.kvm import ffi, lib
from pyvmm.vmm.ending import Ending, Outcome
from pyvmm.vmm.exits import RUN_ERROR, ExitHandler

PIO_DATA = 0x1000  # where KVM puts port data in the vCPU mapping


class Scratch(DeviceModel):
    """Remembers what was written at each offset; reads give it back."""

    name = "scratch"

    def __init__(self) -> None:
        super().__init__()
        self.regs = bytearray(16)
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.regs[offset : offset + size])

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))
        self.regs[offset : offset + len(data)] = data


@dataclass
class FakeVcpu:
    """What ExitHandler needs of a vCPU, without KVM."""

    id: int = 0
    run_struct: Any = field(default_factory=lambda: ffi.new("struct kvm_run *"))
    run_page: memoryview = field(default_factory=lambda: memoryview(bytearray(3 * 4096)))
    rip: int = 0x1234
    insn: bytes = b""

    def get_regs(self) -> Any:
        regs = ffi.new("struct kvm_regs *")
        regs.rip = self.rip
        return regs

    def get_sregs(self) -> Any:
        return ffi.new("struct kvm_sregs *")

    def emulation_failure_insn(self) -> bytes:
        return self.insn


@dataclass
class Rig:
    pio: Bus = field(default_factory=lambda: Bus("port I/O"))
    mmio: Bus = field(default_factory=lambda: Bus("MMIO"))
    dev: Scratch = field(default_factory=Scratch)
    mmio_dev: Scratch = field(default_factory=Scratch)
    ended: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pio.insert(0x500, 16, self.dev)
        self.mmio.insert(0xD000_0000, 16, self.mmio_dev)
        self.handler = ExitHandler(self.pio, self.mmio, self.ended.append, debug=True)


def packed_port(port: int, size: int, out: bool, value: int = 0) -> int:
    """An exit as ``pyvmm_run`` packs a single port access."""
    p = lib.KVM_EXIT_IO | lib.PYVMM_RUN_PIO | size << 12 | port << 16
    return p | lib.PYVMM_RUN_OUT | value << 32 if out else p | PIO_DATA << 32


def test_packed_port_out_and_in() -> None:
    rig, vcpu = Rig(), FakeVcpu()
    assert rig.handler.handle(vcpu, packed_port(0x502, 2, True, 0xBEEF)) is None
    assert rig.dev.writes == [(2, b"\xef\xbe")]
    rig.handler.handle(vcpu, packed_port(0x502, 2, False))
    assert vcpu.run_page[PIO_DATA : PIO_DATA + 2] == b"\xef\xbe"
    rig.handler.handle(vcpu, packed_port(0x700, 4, False))  # nobody there
    assert vcpu.run_page[PIO_DATA : PIO_DATA + 4] == b"\xff" * 4
    assert rig.ended == []


def test_rep_outs_from_kvm_run() -> None:
    rig, vcpu = Rig(), FakeVcpu()
    io = vcpu.run_struct.io
    io.direction, io.size, io.port, io.count, io.data_offset = (
        lib.KVM_EXIT_IO_OUT,
        1,
        0x500,
        3,
        0x1000,
    )
    vcpu.run_page[0x1000:0x1003] = b"abc"
    rig.handler.handle(vcpu, lib.KVM_EXIT_IO)
    assert rig.dev.writes == [(0, b"a"), (0, b"b"), (0, b"c")]


def test_rep_ins_outside_kvm_run_is_refused() -> None:
    rig, vcpu = Rig(), FakeVcpu()
    io = vcpu.run_struct.io
    io.direction, io.size, io.port, io.count, io.data_offset = (
        lib.KVM_EXIT_IO_IN,
        4,
        0x500,
        4096,
        0x1000,
    )
    with pytest.raises(RuntimeError, match="outside kvm_run"):
        rig.handler.handle(vcpu, lib.KVM_EXIT_IO)


def test_mmio_write_and_read() -> None:
    rig, vcpu = Rig(), FakeVcpu()
    mmio = vcpu.run_struct.mmio
    mmio.phys_addr, mmio.len, mmio.is_write = 0xD000_0004, 4, 1
    for i, b in enumerate(b"\x01\x02\x03\x04"):
        mmio.data[i] = b
    rig.handler.handle(vcpu, lib.KVM_EXIT_MMIO)
    assert rig.mmio_dev.writes == [(4, b"\x01\x02\x03\x04")]
    mmio.is_write, mmio.phys_addr, mmio.len = 0, 0xD000_0004, 2
    rig.handler.handle(vcpu, lib.KVM_EXIT_MMIO)
    assert bytes(mmio.data[0:2]) == b"\x01\x02"


@pytest.mark.parametrize(
    ("reason", "setup", "ending", "words"),
    [
        (lib.KVM_EXIT_SHUTDOWN, None, Ending.TRIPLE_FAULT, "triple fault"),
        (lib.KVM_EXIT_HLT, None, Ending.HALTED, "guest halted"),
        (lib.KVM_EXIT_FAIL_ENTRY, "fail_entry", Ending.INTERNAL_ERROR, "could not enter"),
        (lib.KVM_EXIT_SYSTEM_EVENT, "reset", Ending.RESET, "guest reset"),
        (lib.KVM_EXIT_SYSTEM_EVENT, "shutdown", Ending.POWEROFF, "powered off"),
        (lib.KVM_EXIT_INTERNAL_ERROR, "internal", Ending.INTERNAL_ERROR, "internal error 3"),
        (lib.KVM_EXIT_X86_RDMSR, None, Ending.INTERNAL_ERROR, "unexpected VM exit"),
    ],
)
def test_exits_that_end_the_vm(reason: int, setup: str | None, ending: Ending, words: str) -> None:
    rig, vcpu = Rig(), FakeVcpu()
    run = vcpu.run_struct
    if setup == "fail_entry":
        run.fail_entry.hardware_entry_failure_reason = 0x80000021
    elif setup in ("reset", "shutdown"):
        run.system_event.type = getattr(lib, f"KVM_SYSTEM_EVENT_{setup.upper()}")
    elif setup == "internal":
        run.internal.suberror, run.internal.ndata = 3, 0
    rig.handler.handle(vcpu, reason)
    assert [o.ending for o in rig.ended] == [ending]
    assert words in rig.ended[0].message
    if ending not in (Ending.RESET, Ending.POWEROFF):
        assert "rip=0000000000001234" in rig.ended[0].detail  # --debug: the registers


def test_emulation_failure_without_help_ends_the_vm_with_the_bytes() -> None:
    rig, vcpu = Rig(), FakeVcpu(insn=b"\x0f\x01\xca")
    vcpu.run_struct.internal.suberror = lib.KVM_INTERNAL_ERROR_EMULATION
    note = rig.handler.handle(vcpu, lib.KVM_EXIT_INTERNAL_ERROR)
    assert note == "emulation: failed"
    assert rig.ended[0].ending is Ending.EMULATION_FAILURE
    assert "rip 0x1234 (0f 01 ca)" in rig.ended[0].message


@dataclass
class Done:
    what: str
    unhandled: object = None


def test_emulation_failure_completed_by_the_assist_says_what_it_did() -> None:
    rig, vcpu = Rig(), FakeVcpu()
    seen: list[object] = []

    class Assist:
        def handle(self, v: object) -> Done:
            seen.append(v)
            return Done("clac")

    rig.handler.emulation = Assist()
    vcpu.run_struct.internal.suberror = lib.KVM_INTERNAL_ERROR_EMULATION
    assert rig.handler.handle(vcpu, lib.KVM_EXIT_INTERNAL_ERROR) == "emulation: clac"
    assert seen == [vcpu] and rig.ended == []


def test_a_failed_kvm_run_raises() -> None:
    rig, vcpu = Rig(), FakeVcpu()
    with pytest.raises(OSError, match="KVM_RUN failed"):
        rig.handler.handle(vcpu, RUN_ERROR | 14 << 8)  # EFAULT
