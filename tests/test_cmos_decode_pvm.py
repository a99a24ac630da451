"""The CMOS clock, the instruction decoder and the PVM command-line options."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pyvmm.arch.x86_64 import decode, pvm
from pyvmm.devices.cmos import CmosRtc

# -- CMOS RTC ----------------------------------------------------------------

FIXED = time.struct_time((2026, 11, 24, 18, 5, 59, 1, 328, 0))  # a Tuesday


def rtc_read(rtc: CmosRtc, reg: int) -> int:
    rtc.write(0, bytes([reg]))
    return rtc.read(1, 1)[0]


def test_time_is_bcd_24h() -> None:
    rtc = CmosRtc(now=lambda: FIXED)
    regs = {reg: rtc_read(rtc, reg) for reg in (0, 2, 4, 6, 7, 8, 9, 0x32)}
    assert regs == {0: 0x59, 2: 0x05, 4: 0x18, 6: 3, 7: 0x24, 8: 0x11, 9: 0x26, 0x32: 0x20}


def test_status_registers() -> None:
    rtc = CmosRtc(now=lambda: FIXED)
    assert rtc_read(rtc, 0x0A) & 0x80 == 0  # never "update in progress"
    assert rtc_read(rtc, 0x0B) == 0x02  # 24-hour, BCD
    assert rtc_read(rtc, 0x0D) == 0x80  # battery good


def test_binary_mode_and_nmi_bit() -> None:
    rtc = CmosRtc(now=lambda: FIXED)
    rtc.write(0, bytes([0x80 | 0x0B]))  # NMI-disable bit is not part of the index
    rtc.write(1, bytes([0x06]))
    assert rtc_read(rtc, 4) == 18


def test_ram_and_read_only_registers() -> None:
    rtc = CmosRtc(now=lambda: FIXED)
    rtc.write(0, b"\x40")
    rtc.write(1, b"\xab")
    assert rtc_read(rtc, 0x40) == 0xAB
    rtc.write(0, b"\x00")
    rtc.write(1, b"\x11")  # setting the time is ignored
    assert rtc_read(rtc, 0) == 0x59
    assert rtc.read(0, 1) == b"\xff"  # the index port reads as nothing


# -- decoder -----------------------------------------------------------------

REGS = SimpleNamespace(
    rax=1, rcx=0x100, rdx=2, rbx=0x2000, rsp=0x7000, rbp=0x3000, rsi=0x10, rdi=0x4000,
    r8=0x8000, r9=0, r10=0, r11=0, r12=0, r13=0x13000, r14=0, r15=0, rip=0xFFFF0000,
)  # fmt: skip
SREGS = SimpleNamespace(fs=SimpleNamespace(base=0x1_0000_0000), gs=SimpleNamespace(base=0x50000))


@pytest.mark.parametrize(
    ("insn", "address", "length"),
    [
        (bytes.fromhex("f0480fc74d20"), 0x3000 + 0x20, 6),  # lock cmpxchg16b 0x20(%rbp)
        (bytes.fromhex("480fc70f"), 0x4000, 4),  # cmpxchg16b (%rdi)
        (bytes.fromhex("f0490fc708"), 0x8000, 5),  # REX.B: (%r8)
        (bytes.fromhex("480fc70c8e"), 0x100 * 4 + 0x10, 5),  # (%rsi,%rcx,4)
        (bytes.fromhex("4b0fc74c2d10"), 2 * 0x13000 + 0x10, 6),  # REX.XB: 0x10(%r13,%r13)
        (bytes.fromhex("480fc70d10000000"), 0xFFFF0000 + 8 + 0x10, 8),  # RIP-relative
        (bytes.fromhex("65480fc70c2508000000"), 0x50000 + 8, 10),  # %gs:8, no base/index
        (bytes.fromhex("480fc74df0"), 0x3000 - 0x10, 5),  # negative disp8
    ],
)
def test_memory_operands(insn: bytes, address: int, length: int) -> None:
    assert decode.is_cmpxchg16b(insn)
    op = decode.decode_memory_operand(insn, REGS, SREGS)
    assert (op.address, op.length) == (address, length)


def test_not_cmpxchg16b() -> None:
    assert not decode.is_cmpxchg16b(bytes.fromhex("0fc70f"))  # cmpxchg8b (no REX.W)
    assert not decode.is_cmpxchg16b(bytes.fromhex("480fc7f8"))  # register form
    assert not decode.is_cmpxchg16b(bytes.fromhex("480fae2f"))  # xrstor64
    assert not decode.is_cmpxchg16b(b"")


@pytest.mark.parametrize(
    "hexbytes, xsave, xrstor",
    [
        ("480fae27", True, False),  # xsave64 (%rdi)
        ("0fae21", True, False),  # xsave (%rcx)
        ("480fae2f", False, True),  # xrstor64 (%rdi)
        ("410fae6d00", False, True),  # xrstor 0(%r13)
        ("0faee8", False, False),  # lfence: the register form of /5
        ("f3480fae27", False, False),  # ptwrite: F3 makes it another instruction
        ("660fae3f", False, False),  # clflushopt
        ("480fae37", False, False),  # xsaveopt64 (/6)
        ("480fc72f", False, False),  # xsaves64 is 0F C7 /5
        ("0fae542404", False, False),  # ldmxcsr 4(%rsp)
        ("", False, False),
    ],
)
def test_xsave_xrstor_recognised(hexbytes: str, xsave: bool, xrstor: bool) -> None:
    insn = bytes.fromhex(hexbytes)
    assert (decode.is_xsave(insn), decode.is_xrstor(insn)) == (xsave, xrstor)


def test_mxcsr_instructions_recognised() -> None:
    assert decode.is_ldmxcsr(bytes.fromhex("0fae542404"))  # ldmxcsr 4(%rsp)
    assert decode.is_stmxcsr(bytes.fromhex("0fae5c2404"))  # stmxcsr 4(%rsp)
    assert not decode.is_ldmxcsr(bytes.fromhex("f30faed0"))  # wrfsbase %eax
    assert not decode.is_stmxcsr(bytes.fromhex("0fae542404"))


def test_truncated_operand() -> None:
    with pytest.raises(decode.DecodeError):
        decode.decode_memory_operand(bytes.fromhex("480fc78d"), REGS, SREGS)


def test_atomic_cmpxchg16b() -> None:
    import mmap

    with mmap.mmap(-1, 4096) as m:
        view = memoryview(m)[16:32]
        view[:] = (5).to_bytes(8, "little") + (6).to_bytes(8, "little")
        assert decode.atomic_cmpxchg16b(view, 5, 6, 7, 8) == (True, 5, 6)
        assert bytes(view) == (7).to_bytes(8, "little") + (8).to_bytes(8, "little")
        assert decode.atomic_cmpxchg16b(view, 5, 6, 9, 9) == (False, 7, 8)
        with pytest.raises(decode.DecodeError, match="aligned"):
            decode.atomic_cmpxchg16b(memoryview(m)[8:24], 0, 0, 0, 0)
        view.release()


# -- PVM ---------------------------------------------------------------------


def test_pvm_detection(tmp_path: Path) -> None:
    assert not pvm.host_is_pvm(tmp_path / "kvm_pvm")
    (tmp_path / "kvm_pvm").mkdir()
    assert pvm.host_is_pvm(tmp_path / "kvm_pvm")


def test_guest_cmdline_appends_missing_options_once() -> None:
    assert pvm.guest_cmdline("") == " ".join(pvm.GUEST_CMDLINE)
    assert pvm.guest_cmdline("console=ttyS0") == "console=ttyS0 " + " ".join(pvm.GUEST_CMDLINE)
    full = pvm.guest_cmdline("a")
    assert pvm.guest_cmdline(full) == full
    # XSAVE stays on (guest user mode uses AVX natively); its optimised and
    # compacted forms, which pyvmm does not carry out, are switched off.
    assert "noxsave" not in pvm.GUEST_CMDLINE
    cleared = next(o for o in pvm.GUEST_CMDLINE if o.startswith("clearcpuid="))
    assert {"320", "321", "322", "323"} <= set(cleared.split("=")[1].split(","))
