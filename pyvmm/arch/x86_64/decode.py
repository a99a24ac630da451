"""Just enough x86-64 instruction decoding to carry out an instruction the
host's KVM refused to emulate: prefixes, REX, ModRM/SIB memory operands.

Encodings: Intel SDM Vol. 2A, chapter 2 ("Instruction Format") and the
CMPXCHG8B/CMPXCHG16B page.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pyvmm.kvm import ffi, lib


class DecodeError(Exception):
    """An instruction this decoder does not understand, or cannot carry out."""


#: Legacy prefixes (SDM Vol. 2A, 2.1.1): lock/rep, segment overrides, sizes.
LOCK, REPNE, REP = 0xF0, 0xF2, 0xF3
SEG_FS, SEG_GS = 0x64, 0x65
OPERAND_SIZE, ADDRESS_SIZE = 0x66, 0x67
LEGACY_PREFIXES = {LOCK, REPNE, REP, 0x2E, 0x36, 0x3E, 0x26, SEG_FS, SEG_GS, OPERAND_SIZE,
                   ADDRESS_SIZE}  # fmt: skip

#: General-purpose registers in ModRM/SIB numbering (REX extends to 8-15).
GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip

MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Prefixes:
    segment: int | None
    address32: bool
    rex: int  # 0 when absent
    length: int  # bytes of prefixes and REX

    @property
    def rex_w(self) -> bool:
        return bool(self.rex & 8)


def prefixes(insn: bytes) -> Prefixes:
    i, segment, address32 = 0, None, False
    while i < len(insn) and insn[i] in LEGACY_PREFIXES:
        if insn[i] in (SEG_FS, SEG_GS):
            segment = insn[i]
        elif insn[i] == ADDRESS_SIZE:
            address32 = True
        i += 1
    rex = 0
    if i < len(insn) and 0x40 <= insn[i] <= 0x4F:
        rex = insn[i]
        i += 1
    return Prefixes(segment, address32, rex, i)


def is_cmpxchg16b(insn: bytes) -> bool:
    """REX.W 0F C7 /1 with a memory operand."""
    p = prefixes(insn)
    body = insn[p.length :]
    return (
        p.rex_w
        and len(body) >= 3
        and body[:2] == b"\x0f\xc7"
        and (body[2] >> 3) & 7 == 1
        and body[2] >> 6 != 3
    )


def _group15_memory(insn: bytes, reg: int) -> bool:
    """0F AE /reg with a memory operand and no mandatory prefix (66, F2, F3
    turn this opcode into other instructions)."""
    p = prefixes(insn)
    if any(b in (OPERAND_SIZE, REPNE, REP) for b in insn[: p.length]):
        return False
    body = insn[p.length :]
    return (
        len(body) >= 3
        and body[:2] == b"\x0f\xae"
        and (body[2] >> 3) & 7 == reg
        and body[2] >> 6 != 3
    )


def is_ldmxcsr(insn: bytes) -> bool:
    """LDMXCSR m32: 0F AE /2 (the kernel runs it in kernel_fpu_begin)."""
    return _group15_memory(insn, 2)


def is_stmxcsr(insn: bytes) -> bool:
    """STMXCSR m32: 0F AE /3."""
    return _group15_memory(insn, 3)


def is_xsave(insn: bytes) -> bool:
    """XSAVE / XSAVE64: [REX.W] 0F AE /4, memory operand."""
    return _group15_memory(insn, 4)


def is_xrstor(insn: bytes) -> bool:
    """XRSTOR / XRSTOR64: [REX.W] 0F AE /5, memory operand (with a register
    operand the same bytes are LFENCE)."""
    return _group15_memory(insn, 5)


@dataclass(frozen=True)
class MemoryOperand:
    address: int  # linear (guest-virtual) address
    length: int  # length of the whole instruction, up to the end of the displacement


def decode_memory_operand(insn: bytes, regs: Any, sregs: Any, opcode_len: int = 2) -> MemoryOperand:
    """The ModRM memory operand of an instruction whose opcode is ``opcode_len``
    bytes and that has no immediate (so the operand ends the instruction)."""
    p = prefixes(insn)
    i = p.length + opcode_len
    try:
        modrm = insn[i]
        i += 1
        mod, rm = modrm >> 6, modrm & 7
        if mod == 3:
            raise DecodeError("register operand where memory is required")
        rex_b, rex_x = (p.rex & 1) << 3, (p.rex & 2) << 2
        rip_relative = False
        if rm == 4:  # SIB byte follows
            sib = insn[i]
            i += 1
            scale, index, base = 1 << (sib >> 6), ((sib >> 3) & 7) | rex_x, sib & 7
            address = getattr(regs, GPRS[index]) * scale if index != 4 else 0
            if base == 5 and mod == 0:
                mod = 2  # no base register, 32-bit displacement
            else:
                address += getattr(regs, GPRS[base | rex_b])
        elif rm == 5 and mod == 0:
            rip_relative, address, mod = True, 0, 2
        else:
            address = getattr(regs, GPRS[rm | rex_b])
        if mod == 1:
            address += struct.unpack_from("<b", insn, i)[0]
            i += 1
        elif mod == 2:
            address += struct.unpack_from("<i", insn, i)[0]
            i += 4
    except (IndexError, struct.error):
        raise DecodeError("instruction bytes end inside the operand") from None
    if rip_relative:
        address += regs.rip + i  # relative to the next instruction
    if p.segment == SEG_FS:
        address += sregs.fs.base
    elif p.segment == SEG_GS:
        address += sregs.gs.base
    address &= 0xFFFFFFFF if p.address32 else MASK64
    return MemoryOperand(address, i)


def atomic_cmpxchg16b(
    view: memoryview, cmp_lo: int, cmp_hi: int, new_lo: int, new_hi: int
) -> tuple[bool, int, int]:
    """LOCK CMPXCHG16B on 16 bytes of guest RAM, atomically with respect to
    other vCPUs. Returns (swapped, old low quadword, old high quadword)."""
    if len(view) != 16:
        raise ValueError("cmpxchg16b works on exactly 16 bytes")
    old = ffi.new("uint64_t[2]", [cmp_lo, cmp_hi])
    with ffi.from_buffer(view, require_writable=True) as buf:
        swapped = lib.pyvmm_cmpxchg16b(buf, old, new_lo, new_hi)
    if swapped < 0:
        raise DecodeError("cmpxchg16b operand is not 16-byte aligned")
    return bool(swapped), int(old[0]), int(old[1])
